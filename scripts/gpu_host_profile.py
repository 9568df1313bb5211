"""Where a v5 call's host time goes, on the GPU machine: cProfile over many calls (no sync inside the loop), per
tile, at b = 128, s_k = 1024 (where the host time is not hidden behind the GPU).

    PYTHONPATH=src python3 scripts/gpu_host_profile.py
"""

from __future__ import annotations

import cProfile
import pstats
import time

import torch

from mla_tutorial.kernels import mla_decode_v5
from mla_tutorial.kernels.schedule import get_mla_metadata
from mla_tutorial.measure.kernel_bench import shape_inputs


def make_call(h_q: int):
    (q, k, bt, sl), _ = shape_inputs(128, h_q, 1, 1024, "fixed", 0)
    meta, splits = get_mla_metadata(sl, h_q, 1)

    def call(checked: bool = False):
        return mla_decode_v5(q, k, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits,
                             check_bounds=checked)
    return call


for h_q in (16, 64):
    call = make_call(h_q)

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
        print(f"h{h_q} sk1k check_bounds={checked}: host {host * 1e6:.1f} us/call, host+drain {gpu * 1e6:.1f} us/call")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        call()
    prof.disable()
    torch.cuda.synchronize()
    print(f"--- h{h_q}: cProfile over 300 calls (tottime)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)
