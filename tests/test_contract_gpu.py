"""The contract's checks on a GPU: bounds checked by a device-side assertion, and no host sync anywhere.

Run with `pytest -m gpu tests/test_contract_gpu.py` on a machine with CUDA; skipped elsewhere. A failed device-side
assertion leaves the CUDA context unusable, so the calls expected to fail run in a fresh Python process each.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

if torch.cuda.is_available():
    import mla_tutorial.kernels as K
    from mla_tutorial import paged_mla_attention
    from mla_tutorial.contract import validate_paged_decode
    from mla_tutorial.testing import make_paged_inputs


def test_validator_stage3_and_kernel_api_add_no_host_sync():
    """Under torch.cuda.set_sync_debug_mode("error") any host sync raises: the checks and stage 3 have none."""
    q, k_cache, table, lens = make_paged_inputs([70, 0, 4096, 65], 2, 16, 1, torch.bfloat16, device="cuda", seed=1)
    meta, splits = K.get_mla_metadata(lens, 2 * 16, 1)
    ref = paged_mla_attention(q, k_cache, table, lens, 512, causal=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        validate_paged_decode(q, k_cache, table, lens, 512, causal=True, kernel=True)
        out3, lse3 = paged_mla_attention(q, k_cache, table, lens, 512, causal=True)
        K.flash_mla_with_kvcache(q, k_cache, table, lens, 512, meta, splits, causal=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    # stage 3 gathers the table's full width on a GPU (no max-length sync): same results as on the CPU path
    cpu_out, cpu_lse = paged_mla_attention(q.cpu(), k_cache.cpu(), table.cpu(), lens.cpu(), 512, causal=True)
    assert torch.equal(out3, ref[0]) and torch.equal(lse3, ref[1])
    torch.testing.assert_close(out3.cpu().float(), cpu_out.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse3.cpu(), cpu_lse, atol=1e-4, rtol=1e-4)


BAD = {
    "block-id-past-pool": "table[0, 1] = k_cache.shape[0]",
    "negative-block-id": "table[3, 0] = -1",
    "sentinel-inside-length": "table[2, 5] = 2**31 - 1",
    "negative-length": "lens[1] = -1",
    "length-past-table": "lens[1] = table.shape[1] * 64 + 1",
}


@pytest.mark.parametrize("entry", ["paged_mla_attention", "flash_mla_with_kvcache", "flash_mla_with_kvcache_fp8",
                                   "mla_decode_v2"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_block_table_trips_the_device_side_assertion(entry, case):
    """v5's calls (bf16 and FP8) assert the flag their kernels clear in the combine kernel, with its message."""
    script = textwrap.dedent(f"""
        import torch
        import mla_tutorial.kernels as K
        from mla_tutorial import paged_mla_attention
        from mla_tutorial.fp8 import quantize_k_cache
        from mla_tutorial.testing import make_paged_inputs

        q, k_cache, table, lens = make_paged_inputs([70, 0, 4096, 65], 1, 16, 1, torch.bfloat16, device="cuda")
        meta, splits = K.get_mla_metadata(lens, 16, 1)
        torch.cuda.synchronize()
        {BAD[case]}
        calls = {{
            "paged_mla_attention": lambda: paged_mla_attention(q, k_cache, table, lens, 512),
            "flash_mla_with_kvcache": lambda: K.flash_mla_with_kvcache(q, k_cache, table, lens, 512, meta, splits),
            "flash_mla_with_kvcache_fp8": lambda: K.flash_mla_with_kvcache(q, quantize_k_cache(k_cache), table, lens,
                                                                          512, meta, splits, is_fp8_kvcache=True),
            "mla_decode_v2": lambda: K.mla_decode_v2(q, k_cache, table, lens, 512),
        }}
        calls["{entry}"]()
        torch.cuda.synchronize()
        print("NO ERROR")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "NO ERROR" not in run.stdout, run.stdout + run.stderr
    assert "device-side assert" in run.stderr or "Assertion" in run.stderr, run.stderr[-2000:]
    if entry.startswith("flash_mla_with_kvcache"):  # (the combine's device_assert prints the call's message)
        assert "a block_table entry inside a request's length" in run.stdout + run.stderr, run.stderr[-2000:]
