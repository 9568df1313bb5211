"""GPU probe of v5's warp-specialised seesaw tile: correctness first (FlashMLA's recipe, every case in one process,
each with a sync so that a hang or a wrong answer is named), then its speed beside FlashMLA, whole call and graph
replay, with the ceilings measured in the same run; its compute alone (`GluonConfig(mode=2)`: no copies, outputs
meaningless), and its VARIANTS (checked like the tile first). Earlier probes' variants (the lockstep tile's parts,
FINE, EARLY) are in git before this docstring.

    PYTHONPATH=.peers/flashmla:src:tests python3 scripts/gpu_seesaw_probe.py --out probe.json [--skip-check]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import traceback

import torch

from mla_tutorial.kernels import mla_decode_v5
from mla_tutorial.kernels.schedule import get_mla_metadata
from mla_tutorial.kernels.v5_gluon import GluonConfig
from mla_tutorial.measure.kernel_bench import _flash_mla, bench_ms, cos_diff, graph_ms, shape_bytes, shape_inputs
from mla_tutorial.measure.roofline import device_info, measure_copy_bandwidth, measure_matmul_tflops
from mla_tutorial.testing import make_paged_inputs, normal_lengths

# (lengths, s_q, h_q, causal, dtype): odd and even page counts, page boundaries, empty requests, two m-tiles
LENGTHS = [0, 1, 20, 63, 64, 65, 127, 128, 129, 140, 191, 192, 193, 4096, 4097]
CASES = [(LENGTHS, 1, 64, False, torch.bfloat16), (LENGTHS, 2, 128, True, torch.bfloat16),
         (LENGTHS, 1, 126, False, torch.float16), (LENGTHS, 2, 64, True, torch.bfloat16),
         (LENGTHS, 4, 16, False, torch.bfloat16), (normal_lengths(64, 4096, 2, seed=3), 2, 128, True, torch.bfloat16),
         ([5000] * 3 + [0] * 2, 1, 128, False, torch.bfloat16)]


#: the seesaw tile's variants checked and timed beside it (GluonConfig fields; results correct): each of its default
#: switches turned off (v5_seesaw._ss_consumer_at): MAX_FIRST, OPAQUE ("hoist": the slot views' descriptors hoisted
#: out of the loops and spilled), Q_ASYNC ("syncq": Q by loads and stores, one 64-column block after the other); and
#: FINE (one mbarrier per 64-column box, each multiplied as it lands: FlashMLA's "fine-grained TMA copy - GEMM
#: pipelining"; 45 % slower at h_q 64, s_k 4k in the thirteenth session). Earlier variants: Q_FIRST, A_FIRST
#: (docs/results/v5_notes.md, twelfth session) in git at bfcadde; START_SYNC, PIECE_EARLY (thirteenth session) at
#: 5e38d3b; Q_AHEAD (the same session) at ab7d0d7. "noqtma": Q_TMA off (each request's Q copied by the consumers
#: after their store, as before the sixteenth session; it was the variant "qtma" while off by default).
VARIANTS = {"nomf": {"max_first": False}, "hoist": {"opaque_views": False}, "syncq": {"q_async": False},
            "narrow": {"store_lines": False}, "outonly": {"lines_partials": False}, "fine": {"fine": True},
            "noqtma": {"q_tma": False}}


def config_tag(config, sep: str = "-") -> str:
    """The GluonConfig fields that differ from the defaults, as "sep" + "name=value,...", or "" for none."""
    return "" if config is None else sep + ",".join(f"{k}={v}" for k, v in vars(config).items()
                                                    if v != getattr(GluonConfig(), k))


def checked_case(name: str, run) -> dict:
    """Run one GPU check, run(error_flag=flag) with a fresh ok flag, synced so that a hang or an error is named: the
    case's result {"case", "ok", "error", "s"}, printed as PASS / FAIL."""
    flag = torch.ones(1, dtype=torch.int32, device="cuda")
    t0 = time.perf_counter()
    try:
        run(error_flag=flag)
        torch.cuda.synchronize()
        ok, err = int(flag) == 1, None if int(flag) == 1 else "the ok flag was cleared on valid input"
    except Exception as e:
        ok, err = False, f"{type(e).__name__}: {str(e)[:600]}"
    print(f"{'PASS' if ok else 'FAIL'} {name} ({time.perf_counter() - t0:.1f} s){'' if ok else ': ' + err}",
          flush=True)
    return {"case": name, "ok": ok, "error": err, "s": time.perf_counter() - t0}


def check(path: str, config=None) -> list[dict]:
    from test_kernels import check_against_reference

    results = []
    for i, (lens, s_q, h_q, causal, dtype) in enumerate(CASES):
        name = f"{path}{config_tag(config)} b={len(lens)} s_q={s_q} h_q={h_q} causal={causal} {str(dtype)[6:]}"
        q, k, bt, sl = make_paged_inputs(lens, s_q, h_q, 1, dtype, seed=i, device="cuda")
        results.append(checked_case(name, functools.partial(check_against_reference, mla_decode_v5, q, k, bt, sl,
                                                            causal, path=path, config=config)))
    return results


SHAPES = [(128, 64, 1, 1024, "fixed"), (128, 64, 1, 4096, "fixed"), (128, 64, 1, 8192, "fixed"),
          (128, 128, 1, 1024, "fixed"), (128, 128, 1, 4096, "fixed"), (128, 128, 1, 8192, "fixed"),
          (128, 128, 2, 4096, "fixed")]


def _impls(fm, args, causal, meta, splits, variants) -> dict:
    kw = dict(causal=causal, tile_scheduler_metadata=meta, num_splits=splits, check_bounds=False)
    impls = {"seesaw": lambda: mla_decode_v5(*args, path="seesaw", **kw),
             "seesaw_compute": lambda: mla_decode_v5(*args, path="seesaw", config=GluonConfig(mode=2), **kw),
             **{f"seesaw_{n}": (lambda c=c: mla_decode_v5(*args, path="seesaw", config=GluonConfig(**c), **kw))
                for n, c in VARIANTS.items() if n in variants},
             }
    if fm is not None:
        fm_meta, _ = fm.get_mla_metadata()
        impls["flashmla"] = lambda: fm.flash_mla_with_kvcache(*args, fm_meta, None, causal=causal)
    return impls


def summarize(row: dict, roof: dict, mean_sk: float, row_bytes=lambda name: 1152) -> None:
    """Each timed implementation's roofline fraction (row_bytes(name) bytes a cached token) and FlashMLA's time over
    its, into the shape's row; printed on one line."""
    b, h_q, s_q = row["b"], row["h_q"], row["s_q"]
    flops = 2 * b * h_q * s_q * mean_sk * 1088
    for name, e in row["impl"].items():
        if "ms" in e:
            e["roofline_fraction"] = max(shape_bytes(b, h_q, s_q, mean_sk, row_bytes(name)) / e["ms"] / 1e6
                                         / roof["copy_gbps"], flops / e["ms"] / 1e9 / roof["matmul_tflops"])
    fmt = " ".join(f"{n} {e['ms']:.4f}/{e['graph_ms']:.4f}" if "ms" in e else f"{n} ERR"
                   for n, e in row["impl"].items())
    if "ms" in row["impl"].get("flashmla", {}):
        fm_ms = row["impl"]["flashmla"]["ms"]
        row["flashmla_over"] = {n: fm_ms / e["ms"] for n, e in row["impl"].items() if "ms" in e}
        fmt += "  FlashMLA/ours: " + " ".join(f"{n} {r:.2f}" for n, r in row["flashmla_over"].items())
    print(f"h{h_q} s_q{s_q} sk{row['s_k']}: {fmt}", flush=True)


def timing(roof: dict, variants=tuple(VARIANTS)) -> list[dict]:
    fm = _flash_mla()
    rows = []
    for i, (b, h_q, s_q, s_k, dist) in enumerate(SHAPES):
        causal = s_q > 1
        (q, k, bt, sl), mean_sk = shape_inputs(b, h_q, s_q, s_k, dist, i)
        meta, splits = get_mla_metadata(sl, s_q * h_q, 1)
        impls = _impls(fm, (q, k, bt, sl, 512), causal, meta, splits, variants)
        row = {"b": b, "h_q": h_q, "s_q": s_q, "s_k": s_k, "lengths": dist, "impl": {}}
        outs = {}
        for name, fn in impls.items():
            try:
                outs[name] = fn()[0]
                torch.cuda.synchronize()
                row["impl"][name] = {"ms": bench_ms(fn), "graph_ms": graph_ms(fn)}
            except Exception as e:
                row["impl"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        if "flashmla" in outs and "seesaw" in outs:
            row["seesaw_vs_flashmla_cos_diff"] = cos_diff(outs["seesaw"], outs["flashmla"])
        summarize(row, roof, mean_sk)
        rows.append(row)
        del q, k, bt, sl
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    ap = probe_parser()
    ap.add_argument("--check-variants", default=",".join(VARIANTS), help="VARIANTS checked after the default")
    ap.add_argument("--time-variants", default=",".join(VARIANTS), help="VARIANTS timed beside the default")
    args = ap.parse_args()
    unknown = [n for n in (args.check_variants + "," + args.time_variants).split(",") if n and n not in VARIANTS]
    if unknown:
        ap.error(f"--check-variants / --time-variants: unknown {unknown}; VARIANTS are {sorted(VARIANTS)}")
    return run_probe(args, "seesaw", lambda: check("seesaw") + sum(
        (check("seesaw", GluonConfig(**VARIANTS[n])) for n in args.check_variants.split(",") if n), []),
        lambda roof: timing(roof, [n for n in args.time_variants.split(",") if n]))


def probe_parser() -> argparse.ArgumentParser:
    """The probes' common options: --out (the JSON), --skip-check, --check-only."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--check-only", action="store_true")
    return ap


def run_probe(args, label: str, checks, timed) -> int:
    """A probe's run: checks() (unless args.skip_check; the JSON written right after, and the run stops there with
    args.check_only), then the ceilings and timed(roofline) as the JSON's rows, into args.out."""
    result = {"device_info": device_info(), "date": time.strftime("%Y-%m-%d")}
    if not args.skip_check:
        try:
            result["check"] = checks()
        except Exception:
            traceback.print_exc()
        json.dump(result, open(args.out, "w"), indent=1)
        if not all(c["ok"] for c in result.get("check", [{"ok": False}])):
            print(f"{label} check failed", flush=True)
        if args.check_only:
            return 0
    copy, mm = measure_copy_bandwidth("cuda"), measure_matmul_tflops("cuda", 8192)
    result["roofline"] = {"copy_gbps": copy["gbps"], "matmul_tflops": mm["tflops"]}
    print(f"roofline: copy {copy['gbps']:.0f} GB/s, matmul {mm['tflops']:.0f} TFLOP/s", flush=True)
    result["rows"] = timed(result["roofline"])
    json.dump(result, open(args.out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
