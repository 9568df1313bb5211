"""The paged-decode contract (`mla_tutorial.contract`) and its hostile-input generator (`mla_tutorial.testing`).

One home: the constants, the validator and DecodeDims exist once and every user re-exports the same objects.
One set of rules for stage 3 (kernel=False) and the kernels (kernel=True): int32 indices, bounds checked on the
host for CPU tensors, strides honoured by torch and refused by the kernels when they would be misread.
The generator follows FlashMLA's recipe exactly as its docstring says.
"""

from __future__ import annotations

import pytest
import torch

import mla_tutorial
from mla_tutorial import contract, paged_mla_attention, stage3_paged
from mla_tutorial.contract import (
    D_NOPE,
    D_QK,
    D_ROPE,
    KERNEL_DTYPES,
    PAGE_SIZE,
    SENTINEL_BLOCK,
    DecodeDims,
    check_block_table_on_device,
    check_block_table_on_host,
    validate_paged_decode,
)
from mla_tutorial.testing import SENTINEL_STRIDE, make_paged_inputs, normal_lengths, same_bits


# ------------------------------------------------------------------ one home
def test_constants_have_flashmla_values_and_one_home():
    assert (PAGE_SIZE, D_NOPE, D_ROPE, D_QK, SENTINEL_BLOCK) == (64, 512, 64, 576, 2**31 - 1)
    assert KERNEL_DTYPES == (torch.bfloat16, torch.float16)
    assert mla_tutorial.SENTINEL_BLOCK is stage3_paged.SENTINEL_BLOCK is contract.SENTINEL_BLOCK
    from mla_tutorial.kernels import api, common, reference

    for name in ("PAGE_SIZE", "D_NOPE", "D_ROPE", "D_QK", "SENTINEL_BLOCK", "KERNEL_DTYPES", "DecodeDims",
                 "is_interpreter"):
        assert getattr(common, name) is getattr(contract, name), name
    assert reference.paged_mla_attention is paged_mla_attention  # the kernels' reference is stage 3's attention
    assert api.validate_paged_decode is validate_paged_decode


def test_stage3_and_kernel_validators_agree_on_good_inputs():
    q, k_cache, table, lens = make_paged_inputs([0, 63, 64, 65], 2, 4, 2, torch.bfloat16, seed=1)
    general = validate_paged_decode(q, k_cache, table, lens, 512, causal=True)
    kernel = validate_paged_decode(q, k_cache, table, lens, 512, causal=True, kernel=True)
    assert general == kernel == DecodeDims(batch=4, s_q=2, h_q=4, h_kv=2, heads_per_kv=2, rows_per_kv=4,
                                           num_blocks=k_cache.shape[0], max_blocks=table.shape[1], head_dim_v=512,
                                           scale=576**-0.5, page_size=64, head_dim=576)


def test_general_mode_takes_any_float_dtype_page_and_width_the_kernel_mode_does_not():
    q, k_cache, table, lens = make_paged_inputs([5, 40], 1, 3, 1, torch.float32, page_size=16, head_dim=96, seed=2)
    dims = validate_paged_decode(q, k_cache, table, lens, 64)
    assert (dims.page_size, dims.head_dim, dims.head_dim_v, dims.scale) == (16, 96, 64, 96**-0.5)
    with pytest.raises(TypeError, match="q must have dtype torch.bfloat16 or torch.float16, got torch.float32"):
        validate_paged_decode(q, k_cache, table, lens, 64, kernel=True)
    with pytest.raises(ValueError, match=r"q.shape\[3\] \(head dim\) must be 576"):
        validate_paged_decode(q.half(), k_cache.half(), table, lens, 64, kernel=True)
    q, k_cache, table, lens = make_paged_inputs([5, 40], 1, 3, 1, torch.float16, page_size=16, seed=2)
    with pytest.raises(ValueError, match=r"k_cache.shape\[1\] \(page size\) must be 64, got 16"):
        validate_paged_decode(q, k_cache, table, lens, 512, kernel=True)
    with pytest.raises(ValueError, match="k_cache must be"):  # the kernels need the h_kv dim spelled out
        validate_paged_decode(q, k_cache[:, :, 0], table, lens, 512, kernel=True)


@pytest.mark.parametrize("name", ["block_table", "cache_seqlens"])
@pytest.mark.parametrize("kernel", [False, True], ids=["stage3", "kernel"])
def test_int64_indices_are_refused_in_both_modes(name, kernel):
    """FlashMLA's rule, now also stage 3's: block_table and cache_seqlens are int32."""
    args = dict(zip(("q", "k_cache", "block_table", "cache_seqlens"),
                    make_paged_inputs([10, 70], 1, 4, 1, torch.bfloat16), strict=True))
    args[name] = args[name].long()
    with pytest.raises(TypeError, match=rf"{name} must be int32 \(FlashMLA's index type\), got torch.int64; "
                                        rf"convert with {name}.int\(\)"):
        validate_paged_decode(**args, head_dim_v=512, kernel=kernel)


def test_kernel_mode_needs_cuda_or_the_interpreter(monkeypatch):
    q, k_cache, table, lens = make_paged_inputs([10], 1, 4)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"q must be on a CUDA device \(or on the CPU with TRITON_INTERPRET=1\)"):
        validate_paged_decode(q, k_cache, table, lens, 512, kernel=True)
    validate_paged_decode(q, k_cache, table, lens, 512)  # stage 3 runs anywhere
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    validate_paged_decode(q, k_cache, table, lens, 512, kernel=True)


# ------------------------------------------------------------------ bounds
def _bad_tables():
    q, k_cache, table, lens = make_paged_inputs([70, 5, 0], 1, 4, seed=3)  # pages: 2, 1, 0
    n = k_cache.shape[0]
    cases = {}
    entries = {"past-pool": (0, 1, n), "negative": (1, 0, -1), "sentinel": (0, 0, SENTINEL_BLOCK)}
    for tag, (i, j, value) in entries.items():
        t = table.clone()
        t[i, j] = value
        cases[tag] = (t, lens, rf"block_table\[{i}, {j}\] = {value} is out of range for a pool of {n} blocks")
    cases["negative-length"] = (table, torch.tensor([70, -3, 0], dtype=torch.int32),
                                r"cache_seqlens must be ≥ 0, got cache_seqlens\[1\] = -3")
    width = table.shape[1]
    cases["length-past-table"] = (table, torch.tensor([70, 5, width * 64 + 1], dtype=torch.int32),
                                  rf"block_table has {width} columns but a sequence of {width * 64 + 1} tokens "
                                  rf"needs {width + 1} pages of 64 \(cache_seqlens\[2\]")
    return q, k_cache, cases


@pytest.mark.parametrize("case", ["past-pool", "negative", "sentinel", "negative-length", "length-past-table"])
def test_bounds_are_checked_on_the_host_naming_the_entry(case):
    q, k_cache, cases = _bad_tables()
    table, lens, match = cases[case]
    with pytest.raises(ValueError, match=match):
        validate_paged_decode(q, k_cache, table, lens, 512)
    with pytest.raises(ValueError, match=match):
        check_block_table_on_host(table, lens, k_cache.shape[0], 64)
    with pytest.raises(RuntimeError, match="paged decode: a block id covered by cache_seqlens is outside the pool"):
        check_block_table_on_device(table, lens, k_cache.shape[0], 64)  # on the CPU torch asserts at once
    validate_paged_decode(q, k_cache, table, lens, 512, check_values=False)  # for a kernel that checks itself


def test_entries_past_a_request_are_never_checked_or_read():
    q, k_cache, table, lens = make_paged_inputs([70, 5, 0], 1, 4, seed=3)
    table[2, :] = -7  # request 2 is empty: its whole row is free
    table[1, 1:] = 10**9
    validate_paged_decode(q, k_cache, table, lens, 512)
    check_block_table_on_device(table, lens, k_cache.shape[0], 64)
    out, lse = paged_mla_attention(q, k_cache, table, lens, 512)
    assert torch.isfinite(out).all() and torch.isposinf(lse[2]).all()


# ------------------------------------------------------------------ strides
def test_stage3_honours_any_strides():
    """Strided views of every tensor argument give exactly the contiguous result (torch reads strides)."""
    q, k_cache, table, lens = make_paged_inputs([70, 5, 130], 2, 4, 1, torch.float64, seed=4)
    ref_out, ref_lse = paged_mla_attention(q, k_cache, table, lens, 512, causal=True)
    q_view = torch.stack([q, torch.zeros_like(q)], dim=-1)[..., 0]  # last-dim stride 2
    k_view = torch.stack([k_cache, torch.zeros_like(k_cache)], dim=2)[:, :, 0]  # page/row strides doubled
    t_view = torch.stack([table, torch.zeros_like(table)], dim=-1)[..., 0]  # stride (2·width, 2)
    l_view = torch.stack([lens, torch.full_like(lens, -1)], dim=-1)[:, 0]  # stride (2,), junk in between
    assert not any(t.is_contiguous() for t in (q_view, k_view, t_view, l_view))
    out, lse = paged_mla_attention(q_view, k_view, t_view, l_view, 512, causal=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


@pytest.mark.parametrize("name,make,match", [
    ("q", lambda a: torch.stack([a["q"], a["q"]], -1)[..., 0], r"q must have stride 1 in its last dim, got stride"),
    ("k_cache", lambda a: torch.stack([a["k_cache"], a["k_cache"]], -1)[..., 0],
     "k_cache must have stride 1 in its last dim"),
    ("block_table", lambda a: a["block_table"].t().contiguous().t(), "block_table must have stride 1 in its last dim"),
    ("cache_seqlens", lambda a: torch.stack([a["cache_seqlens"], a["cache_seqlens"]], -1)[:, 0],
     r"cache_seqlens must be contiguous, got stride \(2,\)"),
])
def test_kernel_mode_refuses_strides_it_would_misread(name, make, match):
    args = dict(zip(("q", "k_cache", "block_table", "cache_seqlens"),
                    make_paged_inputs([10, 70, 1], 1, 4, 1, torch.bfloat16), strict=True))
    args[name] = make(args)
    with pytest.raises(ValueError, match=match):
        validate_paged_decode(**args, head_dim_v=512, kernel=True)
    validate_paged_decode(**args, head_dim_v=512)  # stage 3 reads any strides


# ------------------------------------------------------------------ the generator
@pytest.mark.parametrize("h_kv", [1, 2])
def test_generator_follows_flashmla_recipe(h_kv):
    lengths = [0, 1, 63, 64, 65, 130]
    q, k_cache, table, lens = make_paged_inputs(lengths, 2, 4, h_kv, torch.float16, seed=5, spare_blocks=2,
                                                spare_cols=2)
    pages = [-(-n // 64) for n in lengths]
    assert q.shape == (6, 2, 4, 576) and k_cache.shape == (sum(pages) + 2, 64, h_kv, 576)
    assert table.dtype == lens.dtype == torch.int32 and lens.tolist() == lengths
    assert table.shape == (6, max(pages) + 2)
    owned = torch.cat([table[i, :p] for i, p in enumerate(pages)])
    assert sorted(owned.tolist()) == sorted(set(owned.tolist())) and int(owned.max()) < k_cache.shape[0]
    assert owned.tolist() != sorted(owned.tolist()), "pages should be handed out in a random permutation"
    for i, p in enumerate(pages):  # past each request's pages: huge sentinel-like ids, the first SENTINEL_BLOCK − i
        rest = table[i, p:].long()
        assert int(rest[0]) == SENTINEL_BLOCK - i and (rest[1:] == rest[:-1] - SENTINEL_STRIDE).all()
    live = torch.zeros(k_cache.shape[:2], dtype=torch.bool)
    for i, (n, p) in enumerate(zip(lengths, pages, strict=True)):
        for j in range(p):
            live[int(table[i, j]), : min(64, n - 64 * j)] = True
    assert torch.isnan(k_cache[~live]).all() and torch.isfinite(k_cache[live]).all()  # NaN exactly where no key
    again = make_paged_inputs(lengths, 2, 4, h_kv, torch.float16, seed=5, spare_blocks=2, spare_cols=2)
    assert all(same_bits(a, b) for a, b in zip((q, k_cache, table, lens), again, strict=True))


def test_normal_lengths_recipe():
    lens = normal_lengths(200, 1000, 3, seed=1)
    t = torch.tensor(lens, dtype=torch.float64)
    assert min(lens) >= 3 and 850 < float(t.mean()) < 1150 and 380 < float(t.std()) < 620
    assert normal_lengths(200, 1000, 3, seed=1) == lens
    with_empty = normal_lengths(10, 100, 1, seed=2, num_empty=3)
    assert with_empty.count(0) == 3 and all(n >= 1 for n in with_empty if n)


@pytest.mark.parametrize("kwargs,match", [
    (dict(seqlens=[]), "seqlens must be a non-empty list"),
    (dict(seqlens=[3, -1]), r"seqlens must be in 0..2\^31-1 \(int32\), got \[3, -1\]"),
    (dict(seqlens=[3], h_q=3, h_kv=2), "h_q = 3 must be divisible by h_kv = 2"),
    (dict(seqlens=[3], s_q=0), "s_q must be an int ≥ 1, got 0"),
])
def test_generator_rejects_bad_requests(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_paged_inputs(**kwargs)
