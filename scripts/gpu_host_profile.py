"""Where a v5 call's host time goes, on the GPU machine: cProfile over many calls (no sync inside the loop), per
tile, at b = 128, s_k = 1024 (where the host time is not hidden behind the GPU).

    PYTHONPATH=src python3 scripts/gpu_host_profile.py [--fp8]

--fp8: the FP8 cache at h16 instead, v5's routed call beside the same tile forced (path="reg"), each timed on the host
and profiled (the ninth session's routed call took 0.164 ms at s_k 1k against 0.075 forced, both 0.074 replayed).
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
from mla_tutorial.measure.kernel_bench import shape_inputs


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
