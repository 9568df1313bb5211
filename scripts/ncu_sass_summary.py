"""Where a kernel's warps wait, from Nsight Compute's source page (one row per SASS instruction, warp-state samples):
the share of samples per opcode and per stretch of code between two barriers or branches, each with its top stall
reasons. Input: the csv that `ncu -i REPORT --page source --csv --print-source sass` prints (scripts/gpu_final.sh's
sass step writes it to sass.log; gzip is fine).

    python scripts/ncu_sass_summary.py docs/results/probes/ncu_fp8_mma_sass_h200_2026-12-02.csv.gz [--top 14]
        [--hot 20 [--context 2]]
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
from pathlib import Path

SAMPLES = "Warp Stall Sampling (All Samples)"


def read_rows(path: Path) -> list[dict[str, str]]:
    """The csv's instruction rows (ncu's log lines before the header are skipped)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"Address"'))
    return list(csv.DictReader(lines[start:]))


def _num(x: str) -> float:
    try:
        return float(x)
    except ValueError:
        return 0.0


def _opcode(source: str) -> str:
    words = [w for w in source.split() if not w.startswith("@")]  # drop a predicate
    return words[0].split(".")[0] if words else ""


def summary(rows: list[dict[str, str]], top: int = 14) -> str:
    stalls = [k for k in rows[0] if k.startswith("stall_") and "Not Issued" not in k]
    total = sum(_num(r[SAMPLES]) for r in rows) or 1.0
    by_op, op_stalls = collections.Counter(), collections.defaultdict(collections.Counter)
    by_region, region_ops, region_start = collections.Counter(), collections.defaultdict(collections.Counter), {}
    region = 0
    for i, r in enumerate(rows):
        op, s = _opcode(r["Source"]), _num(r[SAMPLES])
        by_op[op] += s
        for k in stalls:
            op_stalls[op][k] += _num(r[k])
        by_region[region] += s
        region_ops[region][op] += 1
        region_start.setdefault(region, i)
        if "BAR.SYNC" in r["Source"] or "BRA" in r["Source"]:
            region += 1
    pct = lambda v: f"{100 * v / total:5.1f} %"
    out = [f"{len(rows)} instructions, {total:.0f} samples", "", "by opcode (top stall reasons, % of all samples):"]
    for op, s in by_op.most_common(top):
        why = ", ".join(f"{k[6:]} {100 * v / total:.1f}" for k, v in op_stalls[op].most_common(3) if v > 0)
        out.append(f"  {op:8s} {pct(s)}   {why}")
    out += ["", "by stretch between barriers / branches (its instruction mix):"]
    for g, s in by_region.most_common(top):
        mix = ", ".join(f"{k} {v}" for k, v in region_ops[g].most_common(6))
        out.append(f"  from instruction {region_start[g]:5d}: {pct(s)}   [{mix}]")
    return "\n".join(out)


def hottest(rows: list[dict[str, str]], n: int = 20, context: int = 0) -> str:
    """The n instructions with the most samples, in program order, each with its share, its top two stall reasons
    and `context` instructions before it (what it waits on is usually just above)."""
    stalls = [k for k in rows[0] if k.startswith("stall_") and "Not Issued" not in k]
    total = sum(_num(r[SAMPLES]) for r in rows) or 1.0
    hot = sorted(sorted(range(len(rows)), key=lambda i: -_num(rows[i][SAMPLES]))[:n])
    out = [f"the {len(hot)} instructions with the most samples (% of all samples; top stall reasons):"]
    for i in hot:
        for j in range(max(0, i - context), i):
            out.append(f"        {j:5d}        {rows[j]['Source'].strip()[:90]}")
        r = rows[i]
        why = ", ".join(f"{k[6:]} {100 * _num(r[k]) / total:.1f}"
                        for k in sorted(stalls, key=lambda k: -_num(r[k]))[:2] if _num(r[k]) > 0)
        out.append(f"  ->    {i:5d} {100 * _num(r[SAMPLES]) / total:5.1f} % {r['Source'].strip()[:90]}   [{why}]")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv", type=Path)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--hot", type=int, default=0, help="also list the N instructions with the most samples")
    ap.add_argument("--context", type=int, default=2, help="with --hot: instructions shown before each")
    args = ap.parse_args()
    rows = read_rows(args.csv)
    print(summary(rows, args.top))
    if args.hot:
        print()
        print(hottest(rows, args.hot, args.context))


if __name__ == "__main__":
    main()
