"""GPU probe of the FP8 seesaw tile (path "fp8ss", v5_fp8_seesaw.py): correctness first (FlashMLA's recipe on an FP8
cache with every unused byte 0xFF, each case synced so that a hang or a wrong answer is named), then its speed beside
FlashMLA's bf16 dense kernel, bf16 v5 and v5's FP8 choice, whole call and graph replay, the ceilings measured in the
same run, and its consumers alone (GluonConfig(mode=2): the producer copies and dequantizes nothing; outputs
meaningless). Each shape is timed in two rounds, forward and reversed order, and each implementation keeps the mean
of its two medians (the order moved ratios by up to 10 % at 128 heads: docs/results/v5_notes.md).

    PYTHONPATH=.peers/flashmla:src:tests python3 scripts/gpu_fp8_seesaw_probe.py --out probe.json [--skip-check]
"""

from __future__ import annotations

import functools
import sys

import torch
from gpu_seesaw_probe import checked_case, config_tag, probe_parser, run_probe, summarize

from mla_tutorial import quantize_k_cache
from mla_tutorial.kernels import mla_decode_v5, v5_fp8_seesaw
from mla_tutorial.kernels.plan import clear_plans
from mla_tutorial.kernels.schedule import get_mla_metadata
from mla_tutorial.kernels.v5_gluon import GluonConfig
from mla_tutorial.measure.kernel_bench import _flash_mla, bench_ms, cos_diff, graph_ms, shape_inputs
from mla_tutorial.testing import normal_lengths

# (lengths, s_q, h_q, causal): odd and even page counts, page boundaries, empty requests, two m-tiles, padded rows
LENGTHS = [0, 1, 20, 63, 64, 65, 127, 128, 129, 140, 191, 192, 193, 4096, 4097]
CASES = [(LENGTHS, 1, 64, False), (LENGTHS, 2, 128, True), (LENGTHS, 1, 128, False), (LENGTHS, 2, 64, True),
         (LENGTHS, 4, 16, False), (LENGTHS, 1, 16, False), (normal_lengths(64, 4096, 2, seed=3), 2, 128, True),
         ([5000] * 3 + [0] * 2, 1, 128, False)]


def check(path: str = "fp8ss", config=None, tps: int = 1) -> list[dict]:
    from test_fp8 import check_fp8, fp8_inputs

    results = []
    v5_fp8_seesaw.TILES_PER_STEP = tps
    for i, (lens, s_q, h_q, causal) in enumerate(CASES):
        name = f"{path}{config_tag(config, ' ')} tps={tps} b={len(lens)} s_q={s_q} h_q={h_q} causal={causal}"
        q, k8, bt, sl = fp8_inputs(lens, s_q, h_q, seed=i, poison_bytes=True)
        results.append(checked_case(name, functools.partial(check_fp8, q, k8, bt, sl, causal, path=path,
                                                            config=config)))
    return results


SHAPES = [(128, 64, 1, 4096, "fixed"), (128, 64, 1, 8192, "fixed"), (128, 128, 1, 4096, "fixed"),
          (128, 128, 1, 8192, "fixed"), (128, 128, 2, 4096, "fixed"), (128, 64, 1, 1024, "fixed"),
          (128, 16, 1, 4096, "fixed")]


#: fp8ss variants timed beside it with --variants (GluonConfig fields): "early2", warpgroup 1 multiplies and releases
#: A's right half first (slot 0 free for the next page's dequantization earlier; results correct, checked with
#: --check-early2); "nodeq", the producer copies the raw rows but dequantizes nothing (mode 3); "quarter", it
#: dequantizes each page's first 16 rows only (mode 4): timing probes, results meaningless
VARIANTS = {"early2": {"early": 2}, "nodeq": {"mode": 3}, "quarter": {"mode": 4}}


def _with_tps(tps, fn):
    """fn with v5_fp8_seesaw.TILES_PER_STEP = tps during the call (read at launch). A call plan (kernels/plan.py)
    replays the launches it recorded, whatever the knob says now, so the plans are dropped whenever the knob changes
    (the next call of each shape takes the full path again and records a plan with the new value)."""
    def run():
        if v5_fp8_seesaw.TILES_PER_STEP != tps:
            clear_plans()
            v5_fp8_seesaw.TILES_PER_STEP = tps
        return fn()
    return run


def _impls(fm, args, k8, causal, meta, splits, tps_variants=(), variants=()) -> dict:
    kw = dict(causal=causal, tile_scheduler_metadata=meta, num_splits=splits, check_bounds=False)
    fargs = (args[0], k8, *args[2:])
    impls = {
        "fp8ss": _with_tps(1, lambda: mla_decode_v5(*fargs, path="fp8ss", is_fp8_kvcache=True, **kw)),
        **{f"fp8ss_t{t}": _with_tps(t, lambda: mla_decode_v5(*fargs, path="fp8ss", is_fp8_kvcache=True, **kw))
           for t in tps_variants},
        **{f"fp8ss_{n}": _with_tps(1, lambda c=VARIANTS[n]: mla_decode_v5(*fargs, path="fp8ss", is_fp8_kvcache=True,
                                                                           config=GluonConfig(**c), **kw))
           for n in variants},
        "fp8ss_compute": _with_tps(1, lambda: mla_decode_v5(*fargs, path="fp8ss", is_fp8_kvcache=True,
                                                             config=GluonConfig(mode=2), **kw)),
        "v5_fp8": lambda: mla_decode_v5(*fargs, is_fp8_kvcache=True, **kw),
        "v5": lambda: mla_decode_v5(*args, **kw),
    }
    if fm is not None:
        fm_meta, _ = fm.get_mla_metadata()
        impls["flashmla"] = lambda: fm.flash_mla_with_kvcache(*args, fm_meta, None, causal=causal)
    return impls


def timing(roof: dict, shapes=SHAPES, tps_variants=(), variants=()) -> list[dict]:
    fm = _flash_mla()
    rows = []
    for i, (b, h_q, s_q, s_k, dist) in enumerate(shapes):
        causal = s_q > 1
        (q, k, bt, sl), mean_sk = shape_inputs(b, h_q, s_q, s_k, dist, i)
        k8 = quantize_k_cache(k)
        meta, splits = get_mla_metadata(sl, s_q * h_q, 1)
        impls = _impls(fm, (q, k, bt, sl, 512), k8, causal, meta, splits, tps_variants, variants)
        row = {"b": b, "h_q": h_q, "s_q": s_q, "s_k": s_k, "lengths": dist, "impl": {}}
        outs, times = {}, {n: [] for n in impls}
        for name, fn in impls.items():
            try:
                outs[name] = fn()[0]
                torch.cuda.synchronize()
            except Exception as e:
                row["impl"][name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        ok = [n for n in impls if n in outs]
        for order in (ok, ok[::-1]):
            for name in order:
                times[name].append(bench_ms(impls[name]))
        for name in ok:
            row["impl"][name] = {"ms": sum(times[name]) / len(times[name]), "ms_rounds": times[name],
                                 "graph_ms": graph_ms(impls[name])}
        for a, b_ in (("fp8ss", "v5_fp8"), ("fp8ss", "v5"), ("fp8ss", "flashmla")):
            if a in outs and b_ in outs:
                row[f"{a}_vs_{b_}_cos_diff"] = cos_diff(outs[a], outs[b_])
        summarize(row, roof, mean_sk, lambda name: 656 if name.startswith(("fp8", "v5_fp8")) else 1152)
        rows.append(row)
        del q, k, k8, bt, sl
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    ap = probe_parser()
    ap.add_argument("--tps", default="", help="TILES_PER_STEP values (besides 1) checked on every case and "
                                              "timed as fp8ss_tN, comma-separated")
    ap.add_argument("--shapes", default="", help="indices into SHAPES to time (default: all)")
    ap.add_argument("--variants", default="", help=f"VARIANTS timed as fp8ss_NAME, comma-separated: {list(VARIANTS)}")
    ap.add_argument("--check-early2", action="store_true", help="also check fp8ss with early=2 on all cases")
    args = ap.parse_args()
    tps = [int(t) for t in args.tps.split(",") if t]
    shapes = [SHAPES[int(i)] for i in args.shapes.split(",") if i] or SHAPES
    variants = [n for n in args.variants.split(",") if n]
    if any(n not in VARIANTS for n in variants):
        ap.error(f"--variants: unknown {[n for n in variants if n not in VARIANTS]}; VARIANTS are {list(VARIANTS)}")
    return run_probe(args, "fp8ss", lambda: check() + sum((check(tps=t) for t in tps), []) + (
        check(config=GluonConfig(early=2)) if args.check_early2 else []),
        lambda roof: timing(roof, shapes, tps, variants))


if __name__ == "__main__":
    sys.exit(main())
