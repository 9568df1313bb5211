"""Where a decode call's GPU time goes, kernel by kernel: torch.profiler's device time of each kernel of v5's call
(the tile, the combine, the bounds assertion) and of FlashMLA's (when importable), with the L2 flushed before each
call, at the shapes where the whole call is furthest from FlashMLA's after the host's share was removed (call plans):
short contexts at b 128 and one long request.

    PYTHONPATH=.peers/flashmla:src python3 scripts/gpu_kernel_split.py [--out FILE.json]
    PYTHONPATH=src python3 scripts/gpu_kernel_split.py --combine     (the combine's shapes inside the call)
    ... scripts/gpu_kernel_split.py --fp8-h16 --out F.json   (v5's FP8 call at h16, b 128, s_k 1k-8k, beside FlashMLA's
                                                               bf16 call: each kernel's fixed and per-page share)
"""

from __future__ import annotations

import sys

import torch

from mla_tutorial.fp8 import quantize_k_cache
from mla_tutorial.kernels import flash_mla_with_kvcache
from mla_tutorial.kernels.schedule import get_mla_metadata
from mla_tutorial.measure.kernel_bench import save_probe, shape_inputs

try:
    import flash_mla
except ImportError:  # (timed beside ours only where it is installed)
    flash_mla = None

SHAPES = [  # (b, h_q, s_k, fp8)
    (128, 16, 1024, False), (128, 16, 1024, True), (1, 16, 32768, False), (128, 64, 1024, False),
    (128, 128, 1024, False), (128, 16, 4096, False),
]
#: --fp8-h16: the 16-row FP8 tile's call at s_k 1k-8k, so that each kernel's time splits into a fixed part and a part
#: per page (a line through them), and at 1 and 4 pages a request, where the fixed part is most of the call (launch,
#: ramp, each request's prologue and stores); FlashMLA's bf16 call at the same shapes beside it
FP8_H16_SHAPES = [(128, 16, s_k, True) for s_k in (64, 256, 1024, 2048, 4096, 8192)]
REPS = 30


def kernel_times(call) -> dict[str, dict]:
    """Average device µs and count per call of each kernel `call()` launches (the L2 flush between calls left out)."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    for _ in range(5):
        call()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(REPS):
            flush.zero_()
            call()
        torch.cuda.synchronize()
    times: dict[str, dict] = {}
    for evt in prof.key_averages():
        total = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
        if not total or "fill" in evt.key.lower() or "memset" in evt.key.lower() or evt.count < REPS:
            continue
        times[evt.key[:90]] = {"us": round(total / REPS, 2), "per_call": evt.count / REPS}
    return times


def _ours(q, k, bt, sl, meta, splits, fp8: bool):
    return lambda: flash_mla_with_kvcache(q, k, bt, sl, 512, meta, splits, is_fp8_kvcache=fp8)


def combine_sweep() -> None:
    """--combine: the combine kernel's device time inside the whole call (after the main kernel, PDL) for each of its
    shapes, at the calls where each kind of shape is chosen."""
    from mla_tutorial.kernels import combine, plan

    few, many = combine.FEW_SPLITS_SHAPE, combine.MANY_SPLITS_SHAPE
    sweep = {"few": [(8, 512, 2), (8, 512, 1), (8, 256, 4), (4, 128, 4), (4, 128, 8)],
             "many": [(4, 128, 16), (4, 128, 8), (8, 128, 8), (2, 128, 16)]}
    for b, h_q, s_k in [(128, 16, 1024), (128, 64, 1024), (128, 128, 1024), (1, 16, 32768), (8, 64, 16384)]:
        (q, k, bt, sl), _ = shape_inputs(b, h_q, 1, s_k, "fixed", 0)
        meta, splits = get_mla_metadata(sl, h_q, 1)
        kind = "many" if combine.combine_shape(b, b + int(meta.shape[0])) == many else "few"
        for shape in sweep[kind]:
            combine.FEW_SPLITS_SHAPE = combine.MANY_SPLITS_SHAPE = shape
            plan.clear_plans()
            times = kernel_times(_ours(q, k, bt, sl, meta, splits, False))
            us = next((t["us"] for name, t in times.items() if "combine" in name), None)
            print(f"combine b{b} h{h_q} sk{s_k} ({kind} splits) {shape}: {us} us", flush=True)
        combine.FEW_SPLITS_SHAPE, combine.MANY_SPLITS_SHAPE = few, many
        plan.clear_plans()


def main() -> None:
    if "--combine" in sys.argv:
        combine_sweep()
        return
    rows = []
    for b, h_q, s_k, fp8 in FP8_H16_SHAPES if "--fp8-h16" in sys.argv else SHAPES:
        (q, k, bt, sl), _ = shape_inputs(b, h_q, 1, s_k, "fixed", 0)
        k8 = quantize_k_cache(k) if fp8 else k
        meta, splits = get_mla_metadata(sl, h_q, 1)
        label = f"b{b} h{h_q} sk{s_k}{' fp8' if fp8 else ''}"
        row = {"b": b, "h_q": h_q, "s_k": s_k, "fp8": fp8, "parts": int(meta.shape[0]),
               "ours": kernel_times(_ours(q, k8, bt, sl, meta, splits, fp8))}
        if flash_mla is not None:  # (its bf16 call: FlashMLA's dense decode has no FP8 cache)
            sched, _ = flash_mla.get_mla_metadata()
            row["flashmla"] = kernel_times(lambda args=(q, k, bt, sl, 512, sched, None):
                                           flash_mla.flash_mla_with_kvcache(*args))
        rows.append(row)
        for who in ("ours", "flashmla"):
            for name, t in row.get(who, {}).items():
                print(f"{label:22s} {who:8s} {t['us']:8.2f} us  x{t['per_call']:.0f}  {name}", flush=True)
    save_probe(rows)


if __name__ == "__main__":
    main()
