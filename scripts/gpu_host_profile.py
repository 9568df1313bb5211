"""Where a v5 call's host time goes, on the GPU machine: cProfile over many calls (no sync inside the loop), per
tile, at b = 128, s_k = 1024 (where the host time is not hidden behind the GPU).

    PYTHONPATH=src python3 scripts/gpu_host_profile.py [--fp8]

--fp8: the FP8 cache at h16 instead, v5's routed call beside the same tile forced (path="reg"), each timed on the host
and profiled (the ninth session's routed call took 0.164 ms at s_k 1k against 0.075 forced, both 0.074 replayed).
--parts: the FP8 call at h16 and each piece of its host path alone, many times with no sync (µs a call): the
validation, the routing, the four output allocations, the register tile's launch, the combine's launch, the bounds
assertion, and the Triton launcher of the tile with its specialisation key and TMA descriptors already made.
--plans [--out FILE.json]: the call replayed from its call plan (kernels/plan.py) against the full path, bf16 and
FP8 at h16, bf16 at h64, with the plan's pieces.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

import torch

from mla_tutorial.fp8 import quantize_k_cache
from mla_tutorial.kernels import mla_decode_v5
from mla_tutorial.kernels.schedule import get_mla_metadata
from mla_tutorial.measure.kernel_bench import save_probe, shape_inputs


def make_call(h_q: int, fp8_path: str | None = None):
    (q, k, bt, sl), _ = shape_inputs(128, h_q, 1, 1024, "fixed", 0)
    meta, splits = get_mla_metadata(sl, h_q, 1)
    fp8 = fp8_path is not None
    if fp8:
        k = quantize_k_cache(k)
    path = None if fp8_path in (None, "routed") else fp8_path

    def call(checked: bool = False):
        return mla_decode_v5(q, k, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits,
                             check_bounds=checked, is_fp8_kvcache=fp8, path=path)
    return call


def host_parts() -> None:
    """--parts: each piece of v5's FP8 call at h16, s_k 1k, alone on the host."""
    from mla_tutorial.contract import validate_paged_decode
    from mla_tutorial.kernels import v5, v5_fp8_reg
    from mla_tutorial.kernels.combine import combine_splits
    from mla_tutorial.kernels.launch import _key
    from mla_tutorial.kernels.v5_fp8_tma import tma_tile_launch_args

    (q, k, bt, sl), _ = shape_inputs(128, 16, 1, 1024, "fixed", 0)
    k8 = quantize_k_cache(k)
    meta, splits = get_mla_metadata(sl, 16, 1)
    dims = validate_paged_decode(q, k8, bt, sl, 512, None, False, kernel=True, check_values=False, fp8_cache=True)
    out = torch.empty(128, 1, 16, 512, dtype=q.dtype, device=q.device)
    lse = torch.empty(128, 16, 1, dtype=torch.float32, device=q.device)
    part_out = torch.empty(128 + meta.shape[0], 16, 512, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(128 + meta.shape[0], 16, dtype=torch.float32, device=q.device)
    flag = v5.ok_flag(q.device)
    grid, args = tma_tile_launch_args("register FP8 tile", q, k8, bt, sl, dims, meta, splits, out, lse, part_out,
                                      part_lse, flag, rows=64, tiled_words=True)
    consts = dict(CAUSAL=False, META_COLS=meta.shape[1], RAW=v5_fp8_reg.REG_RAW_SLOTS,
                  num_warps=v5_fp8_reg.REG_WARPS, maxnreg=v5_fp8_reg.REG_MAXNREG)
    v5_fp8_reg._LAUNCH(grid, *args, **consts)  # (compiled and cached)
    compiled, tail = next(iter(v5_fp8_reg._LAUNCH._cache.values()))  # (FastLauncher's entry: binary, constexprs)
    from triton.runtime import driver

    stream = driver.active.get_current_stream(q.device.index or 0)
    full = [*args, *tail]
    pieces = {
        "whole call (mla_decode_v5, check_bounds)": lambda: mla_decode_v5(
            q, k8, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits, is_fp8_kvcache=True),
        "validate_paged_decode": lambda: validate_paged_decode(q, k8, bt, sl, 512, None, False, kernel=True,
                                                               check_values=False, fp8_cache=True),
        "kernel_choice": lambda: v5.kernel_choice(q, k8, 16, 1),
        "four torch.empty": lambda: [torch.empty(128, 1, 16, 512, dtype=q.dtype, device=q.device),
                                     torch.empty(128, 16, 1, dtype=torch.float32, device=q.device),
                                     torch.empty(392, 16, 512, dtype=torch.float32, device=q.device),
                                     torch.empty(392, 16, dtype=torch.float32, device=q.device)],
        "tma_tile_launch_args (descriptors cached)": lambda: tma_tile_launch_args(
            "register FP8 tile", q, k8, bt, sl, dims, meta, splits, out, lse, part_out, part_lse, flag, rows=64,
            tiled_words=True),
        "FastLauncher key (_key)": lambda: _key(args),
        "register tile launch (FastLauncher, whole)": lambda: v5_fp8_reg._LAUNCH(grid, *args, **consts),
        "register tile launch (Triton's launcher only)": lambda: compiled.run(
            grid[0], grid[1], 1, stream, compiled.function, compiled.packed_metadata, None, None, None, *full),
        "combine_splits launch": lambda: combine_splits(part_out, part_lse, splits, out, lse),
        "torch._assert_async(flag)": lambda: torch._assert_async(flag, "x"),
    }
    for name, fn in pieces.items():
        print(f"{name:48s} {_per_call(fn):7.1f} us/call", flush=True)


def _per_call(fn, n: int = 500) -> float:
    """µs of host time a call of fn, many calls with no sync in between (after 50 to warm up)."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t0) / n
    torch.cuda.synchronize()
    return dt * 1e6


def host_plans() -> None:
    """--plans: v5's call replayed from its call plan (kernels/plan.py) against the full path (plans dropped before
    each call), at b 128, s_k 1k: bf16 h16 (the small tile), FP8 h16 (the register tile), bf16 h64 (the seesaw
    tile); and the plan's pieces (its key, the replay)."""
    rows = [_plan_case(label, h_q, fp8) for label, h_q, fp8 in
            (("bf16 h16", 16, False), ("fp8 h16", 16, True), ("bf16 h64", 64, False))]
    save_probe(rows)  # (--out FILE: the rows of docs/results/host_time_plans_*, without the kernels' device time)


def _plan_case(label: str, h_q: int, fp8: bool) -> dict:
    from mla_tutorial.kernels import flash_mla_with_kvcache, plan

    plan.clear_plans()  # (the case's plan is then the only one)
    (q, k, bt, sl), _ = shape_inputs(128, h_q, 1, 1024, "fixed", 0)
    k = quantize_k_cache(k) if fp8 else k
    meta, splits = get_mla_metadata(sl, h_q, 1)

    def call():
        return flash_mla_with_kvcache(q, k, bt, sl, 512, meta, splits, is_fp8_kvcache=fp8)

    def full():
        plan.clear_plans()
        return call()

    call()
    call_plan = next((p for p in plan.PLANS.values() if p is not None), None)

    def replay():  # (the plan alive when the piece runs: `full` replaces it at every call)
        return next(p for p in plan.PLANS.values() if p is not None).run(tensors, None)
    tensors = (q, k, bt, sl, meta, splits)
    scalars = (512, None, False, True, None, None, fp8, False)
    pieces = {
        "planned call (flash_mla_with_kvcache)": call,
        "full path (plans dropped before each call)": full,
    }
    if call_plan is not None:
        pieces["plan.signature"] = lambda: plan.signature((*tensors, None), scalars)
        pieces["CallPlan.run (allocations, launches, assertion)"] = replay
        pieces["planned call again"] = call
    print(f"--- {label}: {'planned' if call_plan else 'NOT planned'}, "
          f"{len(call_plan.launches) if call_plan else 0} launches", flush=True)
    us = {}
    for name, fn in pieces.items():
        us[name] = _per_call(fn)
        print(f"{label:9s} {name:50s} {us[name]:7.1f} us/call", flush=True)
    return {"run": "this run", "b": 128, "h_q": h_q, "s_q": 1, "s_k": 1024, "cache": "fp8" if fp8 else "bf16",
            "planned_us": us["planned call (flash_mla_with_kvcache)"],
            "full_path_us": us["full path (plans dropped before each call)"],
            "signature_us": us.get("plan.signature"),
            "replay_us": us.get("CallPlan.run (allocations, launches, assertion)"),
            "planned_again_us": us.get("planned call again")}


if "--plans" in sys.argv:
    host_plans()
    sys.exit(0)
if "--parts" in sys.argv:
    host_parts()
    sys.exit(0)

CASES = [(16, "routed"), (16, "reg")] * 2 if "--fp8" in sys.argv else [(16, None), (64, None)]
for h_q, fp8_path in CASES:
    call = make_call(h_q, fp8_path)
    label = f"h{h_q}" + (f" fp8 {fp8_path}" if fp8_path else "")

    for checked in (False, True):
        for _ in range(20):
            call(checked)
        torch.cuda.synchronize()
        n = 300
        t0 = time.perf_counter()
        for _ in range(n):
            call(checked)
        host = (time.perf_counter() - t0) / n
        torch.cuda.synchronize()
        gpu = (time.perf_counter() - t0) / n
        print(f"{label} sk1k check_bounds={checked}: host {host * 1e6:.1f} us/call, host+drain {gpu * 1e6:.1f} us/call")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        call()
    prof.disable()
    torch.cuda.synchronize()
    print(f"--- {label}: cProfile over 300 calls (tottime)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)
