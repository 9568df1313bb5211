"""The schedule's two knobs timed on v5's whole call, beside FlashMLA: how many SM parts the work line is cut into
(`num_sm_parts`, default: FlashMLA's count, 264 for the small tile on an H200, 132 for the seesaw tile at 64 rows)
and the units a request's fixed work costs on it (`fixed_overhead`, FlashMLA's 5).

    PYTHONPATH=.peers/flashmla:src python scripts/gpu_parts_sweep.py --out sweep.json [--grid wide --rounds 2]

Why (docs/results/v5_notes.md, fourteenth session): at h_q 16, b 128, s_k 1k the small tile's 264 parts cut every
request in two (21 units a request, a payload of 11), so the combine runs for all of them, where 132 parts would
hold one whole request each and need no combine, at one program an SM instead of two. Which wins is a measurement.
Each row: the knobs, the parts with work, the pieces (requests cut + 1 each), the whole call's median ms (do_bench,
L2 flushed) and FlashMLA's time / ours. Tests and checks stay elsewhere: the outputs are compared with the default
knobs' output (a cosine difference), not with a reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

from mla_tutorial.kernels import mla_decode_v5
from mla_tutorial.kernels.schedule import default_num_sm_parts, get_mla_metadata
from mla_tutorial.measure.kernel_bench import _flash_mla, bench_ms, cos_diff, shape_inputs
from mla_tutorial.measure.roofline import device_info, measure_copy_bandwidth

#: (b, h_q, s_q, s_k): the target shapes where the fixed costs weigh most
SHAPES = [(128, 16, 1, 1024), (128, 16, 1, 4096), (128, 64, 1, 1024), (128, 128, 1, 1024)]
#: the knobs tried at every shape: a fraction of the default part count, and fixed_overhead at the default count
PART_FRACTIONS = (1.0, 0.75, 0.5)
OVERHEADS = (5, 2, 10)
#: --grid wide (fifteenth session, after the first sweep put fixed_overhead 2 ahead for the small tile): per shape
#: (b, h_q, s_q, s_k, lengths), the (num_sm_parts or None for the default count, fixed_overhead) pairs to time;
#: 128 / 64 parts are "one whole request (two at 128 heads) a part, no combine"
WIDE = {
    (128, 16, 1, 1024, "fixed"): [(None, 5), (None, 1), (None, 2), (None, 3), (None, 4), (256, 2), (128, 5)],
    (128, 16, 1, 4096, "fixed"): [(None, 5), (None, 1), (None, 2), (None, 3), (256, 2)],
    (128, 16, 1, 8192, "fixed"): [(None, 5), (None, 2), (None, 3)],
    (128, 16, 1, 4096, "normal"): [(None, 5), (None, 2), (None, 3)],
    (128, 64, 1, 1024, "fixed"): [(None, 5), (None, 2), (128, 5)],
    (128, 64, 1, 4096, "fixed"): [(None, 5), (None, 2), (None, 10), (128, 5)],
    (128, 64, 1, 8192, "fixed"): [(None, 5), (None, 2), (128, 5)],
    (128, 128, 1, 1024, "fixed"): [(None, 5), (None, 2), (64, 5)],
    (128, 128, 1, 4096, "fixed"): [(None, 5), (None, 2), (64, 5)],
}


def knob_grid(default_parts: int) -> list[tuple[int, int]]:
    """(num_sm_parts, fixed_overhead) pairs: the default first, then each fraction of the parts, then each overhead."""
    grid = [(default_parts, OVERHEADS[0])]
    grid += [(max(1, round(default_parts * f)), OVERHEADS[0]) for f in PART_FRACTIONS[1:]]
    grid += [(default_parts, o) for o in OVERHEADS[1:]]
    return list(dict.fromkeys(grid))


def sweep(shapes=SHAPES, *, device="cuda", timer=bench_ms, flash_mla=None, log=print, grid=None,
          round_=0) -> list[dict]:
    """Every shape with every knob pair: parts with work, pieces, ms, FlashMLA / ours, agreement with the default.
    `grid` maps a shape (b, h_q, s_q, s_k, lengths) to its knob pairs (WIDE); without it, `shapes` (fixed lengths)
    each with knob_grid's pairs."""
    rows = []
    items = list(grid.items()) if grid is not None else [(tuple(s) + ("fixed",), None) for s in shapes]
    for i, ((b, h_q, s_q, s_k, dist), pairs) in enumerate(items):
        (q, k, bt, sl), _ = shape_inputs(b, h_q, s_q, s_k, dist, i, device)
        args = (q, k, bt, sl, 512)
        causal = s_q > 1
        default_parts = default_num_sm_parts(s_q * h_q, 1, sl.device)
        fm_ms = None
        if flash_mla is not None:
            fm_meta, _ = flash_mla.get_mla_metadata()
            fm_ms = timer(partial(flash_mla.flash_mla_with_kvcache, *args, fm_meta, None, causal=causal))
        ref = None
        pairs = knob_grid(default_parts) if pairs is None else [(p or default_parts, o) for p, o in pairs]
        for parts, overhead in pairs:
            meta, splits = get_mla_metadata(sl, s_q * h_q, 1, num_sm_parts=parts, fixed_overhead=overhead)
            busy = int((meta[:, 0] < b).sum())
            pieces = int(splits[-1])
            call = partial(mla_decode_v5, *args, causal=causal, tile_scheduler_metadata=meta, num_splits=splits,
                           check_bounds=False)
            out = call()[0]
            ref = out if ref is None else ref
            ms = timer(call)
            row = {"round": round_, "b": b, "h_q": h_q, "s_q": s_q, "s_k": s_k, "lengths": dist,
                   "num_sm_parts": parts, "fixed_overhead": overhead,
                   "default": (parts, overhead) == (default_parts, OVERHEADS[0]), "busy_parts": busy,
                   "pieces": pieces, "ms": ms, "flashmla_ms": fm_ms,
                   "flashmla_over_ours": None if fm_ms is None else fm_ms / ms,
                   "cos_diff_vs_default": cos_diff(out, ref)}
            rows.append(row)
            ratio = "" if fm_ms is None else f"  FlashMLA/ours {fm_ms / ms:.3f}"
            log(f"h{h_q} s_q{s_q} sk{s_k} {dist}: parts {parts:>3} overhead {overhead:>2}: busy {busy:>3}, "
                f"pieces {pieces:>3}, {ms:.4f} ms{ratio}  cos_diff {row['cos_diff_vs_default']:.1e}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--grid", choices=["first", "wide"], default="first",
                    help="first: SHAPES x knob_grid (the fourteenth session's); wide: WIDE's shapes and pairs")
    ap.add_argument("--rounds", type=int, default=1, help="time the whole grid this many times (the spread)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    copy = measure_copy_bandwidth("cuda")
    print(f"copy {copy['gbps']:.0f} GB/s", flush=True)
    rows, fm = [], _flash_mla()
    for r in range(args.rounds):
        print(f"round {r + 1} of {args.rounds}", flush=True)
        rows += sweep(flash_mla=fm, log=lambda m: print(m, flush=True), grid=WIDE if args.grid == "wide" else None,
                      round_=r)
    with open(args.out, "w") as f:
        json.dump({"device": device_info(), "copy": copy, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
