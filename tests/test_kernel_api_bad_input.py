"""The kernel API no longer trusts the block table, the lengths or the strides (issue 7, on the CPU).

Before, a block id out of the pool, a sentinel inside a request's length, a negative length or a length past the
table's width made the kernels read outside the cache (SIGSEGV in the interpreter, foreign memory on a GPU), and a
strided cache_seqlens or num_splits was read as if it were contiguous. Now every entry point — the FlashMLA-style
`flash_mla_with_kvcache` and every `mla_decode_vN` — refuses them with a ValueError naming the entry or the stride,
before anything is launched. Strides the kernels do take as arguments (q, k_cache and block_table rows) are
honoured: a strided view gives the contiguous result.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels import DEVICE, K

from mla_tutorial.contract import SENTINEL_BLOCK
from mla_tutorial.testing import make_paged_inputs, same_bits

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="host-side checks: the GPU path is in test_contract_gpu.py")

VERSIONS = ["v1_naive", "v2_head_tiled", "v3_split_kv", "v4_balanced"]
LENGTHS = [70, 5, 0]  # pages 2, 1, 0


def _inputs():
    return make_paged_inputs(LENGTHS, 1, 4, 1, torch.bfloat16, seed=31)


def _api(q, k_cache, block_table, cache_seqlens, meta_seqlens=None):
    """flash_mla_with_kvcache with metadata built for `meta_seqlens` (default: the lengths given)."""
    meta, splits = K.get_mla_metadata(cache_seqlens if meta_seqlens is None else meta_seqlens, 4, 1)
    return K.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, meta, splits)


ENTRY_POINTS = {name: (lambda *a, _f=K.KERNEL_VERSIONS[name]: _f(*a, 512)) for name in VERSIONS}
ENTRY_POINTS["flash_mla_with_kvcache"] = _api


def _bad(case: str):
    q, k_cache, table, lens = _inputs()
    n = k_cache.shape[0]
    width = table.shape[1]
    if case == "block-id-past-pool":
        table[0, 1] = n
        return (q, k_cache, table, lens), rf"block_table\[0, 1\] = {n} is out of range for a pool of {n} blocks"
    if case == "block-id-negative":
        table[1, 0] = -2
        return (q, k_cache, table, lens), r"block_table\[1, 0\] = -2 is out of range"
    if case == "sentinel-inside-length":
        table[0, 1] = SENTINEL_BLOCK
        return (q, k_cache, table, lens), rf"block_table\[0, 1\] = {SENTINEL_BLOCK} is out of range"
    if case == "negative-length":
        lens[1] = -1
        return (q, k_cache, table, lens), r"cache_seqlens must be ≥ 0, got cache_seqlens\[1\] = -1"
    if case == "length-past-table":
        lens[2] = width * 64 + 1
        return (q, k_cache, table, lens), rf"block_table has {width} columns but a sequence of {width * 64 + 1}"
    if case == "huge-length":
        lens[0] = 2**31 - 1
        return (q, k_cache, table, lens), r"block_table has .* columns but a sequence of 2147483647 tokens"
    if case == "strided-cache_seqlens":
        lens = torch.stack([lens, torch.full_like(lens, 10**6)], dim=-1)[:, 0]
        return (q, k_cache, table, lens), r"cache_seqlens must be contiguous, got stride \(2,\)"
    if case == "q-last-dim-strided":
        q = torch.stack([q, q], dim=-1)[..., 0]
        return (q, k_cache, table, lens), r"q must have stride 1 in its last dim, got stride"
    if case == "k_cache-last-dim-strided":
        k_cache = torch.stack([k_cache, k_cache], dim=-1)[..., 0]
        return (q, k_cache, table, lens), "k_cache must have stride 1 in its last dim"
    if case == "block_table-column-major":
        table = table.t().contiguous().t()
        return (q, k_cache, table, lens), "block_table must have stride 1 in its last dim"
    raise AssertionError(case)


CASES = ["block-id-past-pool", "block-id-negative", "sentinel-inside-length", "negative-length", "length-past-table",
         "huge-length", "strided-cache_seqlens", "q-last-dim-strided", "k_cache-last-dim-strided",
         "block_table-column-major"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_kernel_entry_points_refuse_what_they_would_misread(entry, case):
    args, match = _bad(case)
    before = [t.clone() for t in args]
    with pytest.raises(ValueError, match=match):
        ENTRY_POINTS[entry](*args)
    assert all(same_bits(a, b) for a, b in zip(args, before, strict=True)), "a refused call changed its inputs"


def test_api_refuses_strided_metadata():
    q, k_cache, table, lens = _inputs()
    meta, splits = K.get_mla_metadata(lens, 4, 1)
    strided_splits = torch.stack([splits, torch.full_like(splits, 10**6)], dim=-1)[:, 0]
    with pytest.raises(ValueError, match=r"num_splits must be contiguous, got stride \(2,\)"):
        K.flash_mla_with_kvcache(q, k_cache, table, lens, 512, meta, strided_splits)
    column_major = meta.t().contiguous().t()
    if meta.shape[0] > 1:
        with pytest.raises(ValueError, match="tile_scheduler_metadata must be contiguous"):
            K.flash_mla_with_kvcache(q, k_cache, table, lens, 512, column_major, splits)


@pytest.mark.parametrize("entry", ["v2_head_tiled", "flash_mla_with_kvcache"])
def test_kernels_honour_the_strides_they_take(entry):
    """q, k_cache and block_table with non-unit strides outside the last dim give the contiguous result."""
    q, k_cache, table, lens = _inputs()
    ref_out, ref_lse = ENTRY_POINTS[entry](q, k_cache, table, lens)
    q_view = torch.stack([q, torch.zeros_like(q)], dim=2)[:, :, 0]  # head stride doubled
    k_view = torch.stack([k_cache, torch.full_like(k_cache, float("nan"))], dim=1)[:, 0]  # page stride doubled
    t_view = torch.cat([table, torch.full_like(table, -1)], dim=1)[:, : table.shape[1]]  # row stride doubled
    assert not (q_view.is_contiguous() or k_view.is_contiguous() or t_view.is_contiguous())
    out, lse = ENTRY_POINTS[entry](q_view, k_view, t_view, lens)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def test_check_values_false_skips_only_the_bounds():
    """validate_decode_inputs(check_values=False) is the switch for a kernel that checks bounds itself."""
    from mla_tutorial.kernels.common import validate_decode_inputs

    (q, k_cache, table, lens), _ = _bad("block-id-past-pool")
    with pytest.raises(ValueError, match="out of range"):
        validate_decode_inputs(q, k_cache, table, lens, 512)
    assert validate_decode_inputs(q, k_cache, table, lens, 512, check_values=False).num_blocks == k_cache.shape[0]
    with pytest.raises(TypeError, match="block_table must be int32"):
        validate_decode_inputs(q, k_cache, table.long(), lens, 512, check_values=False)
