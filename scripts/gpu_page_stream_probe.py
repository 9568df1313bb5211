"""How many 72 KB pages must be in flight per SM for TMA page loads to reach the copy bandwidth? (H200, Gluon)

A Gluon kernel that only streams cache pages the way v5's Gluon tiles do (nine 64x64 TMA boxes per 64-token page,
through a random block table), with a ring of STAGES page slots per CTA and one CTA per SM, no compute: each CTA
waits for the oldest page and immediately reuses its slot for the next one. Timed for STAGES = 1, 2, 3 (3 slots =
216 KB, what the Gluon tiles cannot afford next to Q's 72 KB) at b = 128, s_k = 4096 (604 MB), beside a device copy.

    PYTHONPATH=src python3 scripts/gpu_page_stream_probe.py
"""

from __future__ import annotations

import json
import sys

import torch
import triton

from mla_tutorial.kernels.v5_gluon import _k_descriptor, gl, gluon, mbarrier, tma
from mla_tutorial.measure.kernel_bench import bench_ms, shape_inputs
from mla_tutorial.measure.roofline import measure_copy_bandwidth


@gluon.jit
def _stream_kernel(k_desc, block_table_ptr, out_ptr, pages_per_cta, n_table, STAGES: gl.constexpr):
    layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    k_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, 64, 576 - 64], layout)
    kr_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, 64, 64], layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(bars.index(s), count=1)
    first = gl.program_id(0) * pages_per_cta
    for d in gl.static_range(STAGES):  # prologue: STAGES pages in flight
        page = gl.load(block_table_ptr + (first + d) % n_table)
        mbarrier.expect(bars.index(d), 64 * 576 * 2)
        for c in gl.static_range(8):
            tma.async_copy_global_to_shared(k_desc, [page * 64, c * 64], bars.index(d),
                                            k_smem.index(d).slice(c * 64, 64, dim=1))
        tma.async_copy_global_to_shared(k_desc, [page * 64, 512], bars.index(d), kr_smem.index(d))
    for i in range(pages_per_cta):
        slot = i % STAGES
        mbarrier.wait(bars.index(slot), (i // STAGES) & 1)
        gl.thread_barrier()
        if i + STAGES < pages_per_cta:
            page = gl.load(block_table_ptr + (first + i + STAGES) % n_table)
            mbarrier.expect(bars.index(slot), 64 * 576 * 2)
            for c in gl.static_range(8):
                tma.async_copy_global_to_shared(k_desc, [page * 64, c * 64], bars.index(slot),
                                                k_smem.index(slot).slice(c * 64, 64, dim=1))
            tma.async_copy_global_to_shared(k_desc, [page * 64, 512], bars.index(slot), kr_smem.index(slot))
    x = kr_smem.index(0).load(gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0]))
    gl.store(out_ptr + gl.program_id(0), gl.sum(gl.sum(x.to(gl.float32), axis=1), axis=0))


def main() -> int:
    (q, k, bt, sl), _ = shape_inputs(128, 16, 1, 4096, "fixed", 0)
    table = bt[:, :64].reshape(-1).contiguous()  # 128 · 64 live pages, in random order
    n_pages = table.numel()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    per_cta = triton.cdiv(n_pages, sms)
    out = torch.empty(sms, device="cuda", dtype=torch.float32)
    desc = _k_descriptor(k, 64)
    copy = measure_copy_bandwidth("cuda")
    result = {"copy_gbps": copy["gbps"], "pages": n_pages, "ctas": sms, "pages_per_cta": per_cta, "stages": {}}
    nbytes = sms * per_cta * 64 * 576 * 2
    for stages in (1, 2, 3):
        def run(stages=stages):
            _stream_kernel[(sms,)](desc, table, out, per_cta, n_pages, STAGES=stages, num_warps=4)
        run()
        torch.cuda.synchronize()
        ms = bench_ms(run)
        gbps = nbytes / ms / 1e6
        result["stages"][stages] = {"ms": ms, "gbps": gbps, "frac_copy": gbps / copy["gbps"],
                                    "us_per_page_per_sm": ms * 1e3 / per_cta}
        print(f"STAGES={stages}: {ms:.4f} ms, {gbps:.0f} GB/s = {gbps / copy['gbps']:.2f} of copy, "
              f"{ms * 1e3 / per_cta:.2f} us per page and SM", flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
