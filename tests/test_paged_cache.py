"""Stage 3's paged latent cache and `paged_mla_attention`, on FlashMLA-style hostile data.

Decoding through pages must match stage 2 whatever the page layout: lengths at page boundaries, batches of
different lengths, shuffled block tables, NaN in every slot no live token owns. `paged_mla_attention`, the
contract's one reference implementation, is checked against a plain per-request loop (FlashMLA's own test recipe)
on the shared hostile generator's data, and the page allocator's bookkeeping against its documented semantics,
including all-or-nothing appends when the pool is full.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mla_tutorial import SENTINEL_BLOCK, CacheFullError, PagedLatentCache, paged_mla_attention
from mla_tutorial.metrics import error_metrics
from mla_tutorial.testing import make_paged_inputs

F64_REL_FROB = 1e-10  # float64: paging only changes where rows live; measured ≤ 2e-15 vs stage 2


def assert_close_f64(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert torch.isfinite(out).all(), f"{what}: non-finite output"
    m = error_metrics(out, ref)
    assert m.rel_frob <= F64_REL_FROB, f"{what}: {m}"


def stage2_alone(absorbed, x: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Stage 2 on one batch fed in chunks of the given lengths; outputs [B, sum(chunks), hidden]."""
    outs, cache, start = [], None, 0
    for n in chunks:
        out, cache = absorbed(x[:, start : start + n], cache)
        outs.append(out)
        start += n
    return torch.cat(outs, dim=1)


# ------------------------------------------------------------------ decode through pages == stage 2
@pytest.mark.parametrize("length", [63, 64, 65, 127, 128, 129])
def test_paged_decode_matches_absorbed_at_page_boundaries(tiny, length, ladder_factory, hidden_factory, chunked):
    """Prefill `length` tokens, then decode 2: the cache crosses or fills a 64-token page on the way."""
    _, _, absorbed, paged = ladder_factory(tiny)
    x = hidden_factory(tiny, 2, length + 2)
    out, cache = chunked(paged, x, [length, 1, 1])
    assert cache.cache_seqlens().tolist() == [length + 2] * 2
    assert cache.block_table().shape[1] == math.ceil((length + 2) / 64)
    assert_close_f64(out, stage2_alone(absorbed, x, [length, 1, 1]), f"length {length}")


def test_paged_batches_sequences_of_different_lengths(tiny, ladder_factory, hidden_factory):
    """Prefill four sequences one by one into one cache, decode them together (in a shuffled row order), and
    compare every sequence with stage 2 run on it alone."""
    _, _, absorbed, paged = ladder_factory(tiny)
    lengths = [5, 64, 37, 130]
    steps = 3
    cache = PagedLatentCache.for_config(tiny, len(lengths), 160, dtype=torch.float64, shuffle=True,
                                        fill_value=float("nan"))
    xs = [hidden_factory(tiny, 1, n + steps, seed=10 + i) for i, n in enumerate(lengths)]  # [1, n + steps, hidden]
    outs = [[] for _ in lengths]
    for i, (x, n) in enumerate(zip(xs, lengths, strict=True)):
        seq = cache.allocate()
        out, cache = paged(x[:, :n], cache, seq_ids=[seq])  # prefill one sequence
        outs[i].append(out)
    order = [2, 0, 3, 1]  # decode rows need not follow allocation order
    for step in range(steps):
        x_step = torch.cat([xs[i][:, lengths[i] + step : lengths[i] + step + 1] for i in order])  # [4, 1, hidden]
        out, cache = paged(x_step, cache, seq_ids=order)
        for row, i in enumerate(order):
            outs[i].append(out[row : row + 1])
    assert cache.cache_seqlens().tolist() == [n + steps for n in lengths]
    for i, n in enumerate(lengths):
        ref = stage2_alone(absorbed, xs[i], [n] + [1] * steps)
        assert_close_f64(torch.cat(outs[i], dim=1), ref, f"sequence {i} (length {n})")


def test_paged_gives_identical_results_with_shuffled_block_tables(tiny, ladder_factory, hidden_factory):
    paged = ladder_factory(tiny)[3]
    x = hidden_factory(tiny, 3, 150)
    outputs, tables = {}, {}
    for shuffle in (False, True):
        cache = paged.new_cache(3, 192, shuffle=shuffle, seed=7)  # 3 sequences × 3 pages
        pieces = []
        for a, b in ((0, 130), (130, 131), (131, 150)):  # prefill, one decode step, a chunk
            out, cache = paged(x[:, a:b], cache)
            pieces.append(out)
        outputs[shuffle], tables[shuffle] = torch.cat(pieces, dim=1), cache.block_table()
    contiguous = torch.arange(9, dtype=torch.int32).view(3, 3)
    assert torch.equal(tables[False], contiguous)
    assert not torch.equal(tables[True], contiguous), "shuffle=True should hand pages out in a permuted order"
    assert torch.equal(outputs[True], outputs[False])


# ------------------------------------------------------------------ NaN in unused slots never leaks
def test_paged_ignores_nan_in_unused_slots(tiny, ladder_factory, hidden_factory):
    paged = ladder_factory(tiny)[3]
    lengths = [37, 70]
    xs = [hidden_factory(tiny, 1, n + 2, seed=20 + i) for i, n in enumerate(lengths)]
    outputs = {}
    for name, fill in (("clean", 0.0), ("poisoned", float("nan"))):
        cache = paged.new_cache(2, 192, fill_value=fill, shuffle=True)
        pieces = [paged(x[:, :n], cache, seq_ids=[i])[0] for i, (x, n) in enumerate(zip(xs, lengths, strict=True))]
        if name == "poisoned":
            cache.poison_unused()  # NaN in every slot no live token owns (tails of pages, unowned pages)
            assert torch.isnan(cache.pool).any()
        for step in range(2):
            x_step = torch.cat([x[:, n + step : n + step + 1] for x, n in zip(xs, lengths, strict=True)])
            pieces.append(paged(x_step, cache)[0])
        outputs[name] = torch.cat([p.flatten() for p in pieces])
    assert torch.isfinite(outputs["poisoned"]).all()
    assert torch.equal(outputs["poisoned"], outputs["clean"])


def test_paged_ignores_nan_left_by_a_freed_sequence(tiny, ladder_factory, hidden_factory):
    """Free one sequence, poison its pages with NaN; the other sequence decodes as before, and a new sequence
    that reuses the poisoned pages (NaN in the rest of its last page) matches stage 2."""
    _, _, absorbed, paged = ladder_factory(tiny)
    cache = paged.new_cache(2, 100, fill_value=float("nan"))  # 4 pages: A takes 2, B takes 2
    x_a, x_b, x_c = (hidden_factory(tiny, 1, n, seed=30 + i) for i, n in enumerate((100, 69, 12)))
    paged(x_a, cache, seq_ids=[0])
    out_b = [paged(x_b[:, :67], cache, seq_ids=[1])[0]]
    cache.free(0)
    cache.poison_unused()
    out_b += [paged(x_b[:, t : t + 1], cache, seq_ids=[1])[0] for t in (67, 68)]
    assert_close_f64(torch.cat(out_b, dim=1), stage2_alone(absorbed, x_b, [67, 1, 1]), "sequence beside a freed one")
    c = cache.allocate()
    out_c = [paged(x_c[:, :10], cache, seq_ids=[c])[0]]
    assert cache.block_table([c])[0, 0] in (0, 1), "the new sequence should reuse a freed (poisoned) page"
    out_c += [paged(x_c[:, t : t + 1], cache, seq_ids=[c])[0] for t in (10, 11)]
    assert_close_f64(torch.cat(out_c, dim=1), stage2_alone(absorbed, x_c, [10, 1, 1]), "sequence on freed pages")


# ------------------------------------------------------------------ paged_mla_attention vs a per-request loop
def reference_paged_attention(q, k_cache, block_table, cache_seqlens, head_dim_v, scale, causal):
    """The obviously correct loop that tests the contract's reference (`paged_mla_attention`) itself, in float64:
    per request and query token gather its pages, QKᵀ·scale, bottom-right causal mask, softmax, ·V, log-sum-exp.
    Empty rows: out 0, lse +inf. k_cache [num_blocks, page, h_kv, d]; query head h reads latent head h // (h_q/h_kv).
    Only tests use it: every other comparison goes through `paged_mla_attention` (or its fp32 alias
    `kernels.mla_decode_reference`)."""
    b, s_q, h_q, d = q.shape
    page, h_kv = k_cache.shape[1], k_cache.shape[2]
    group = h_q // h_kv
    out = torch.zeros(b, s_q, h_q, head_dim_v, dtype=torch.float64)
    lse = torch.full((b, h_q, s_q), float("inf"), dtype=torch.float64)
    for i in range(b):
        n = int(cache_seqlens[i])
        pages = [k_cache[int(block_table[i, j])] for j in range(math.ceil(n / page))]  # each [page, h_kv, d]
        rows = torch.cat(pages)[:n].double() if pages else k_cache.new_zeros(0, h_kv, d).double()  # [n, h_kv, d]
        for j in range(s_q):
            visible = n - (s_q - 1 - j) if causal else n  # query j sees keys 0 … visible − 1
            if visible <= 0:
                continue
            for h in range(h_q):
                keys = rows[:visible, h // group]  # [visible, d]
                scores = q[i, j, h].double() @ keys.T * scale  # [visible]
                lse[i, h, j] = torch.logsumexp(scores, dim=-1)
                out[i, j, h] = torch.softmax(scores, dim=-1) @ keys[:, :head_dim_v]
    return out, lse


def hostile_inputs(lengths, s_q, h_q=5, h_kv=1, dtype=torch.float64, seed=0, spare_blocks=3, spare_cols=2):
    """The shared generator (`mla_tutorial.testing.make_paged_inputs`, FlashMLA's recipe) in float64: pages handed
    out in a random permutation, every unused slot NaN, sentinel-like block-table entries past each sequence's
    pages (the first one SENTINEL_BLOCK)."""
    return make_paged_inputs(lengths, s_q, h_q, h_kv, dtype, seed=seed, spare_blocks=spare_blocks,
                             spare_cols=spare_cols)


LENGTHS = [20, 140, 0, 64, 1, 65]  # includes an empty request, one key, and both sides of a page boundary


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("s_q", [1, 2, 4])
def test_paged_attention_matches_per_request_loop(s_q, causal):
    q, k_cache, table, seqlens = hostile_inputs(LENGTHS, s_q)
    scale = 0.1
    out, lse = paged_mla_attention(q, k_cache, table, seqlens, 512, scale, causal=causal)
    ref_out, ref_lse = reference_paged_attention(q, k_cache, table, seqlens, 512, scale, causal)
    assert out.shape == (len(LENGTHS), s_q, 5, 512) and lse.shape == (len(LENGTHS), 5, s_q)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, ref_out, rtol=0, atol=1e-12)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    assert torch.allclose(lse, ref_lse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("h_q,h_kv", [(4, 2), (6, 3), (4, 4)])
def test_paged_attention_with_several_latent_heads_matches_per_request_loop(h_q, h_kv):
    """h_kv > 1 (FlashMLA's layout allows it; DeepSeek uses 1): query head h reads latent head h // (h_q / h_kv)."""
    q, k_cache, table, seqlens = hostile_inputs(LENGTHS, 2, h_q=h_q, h_kv=h_kv, seed=h_q + h_kv)
    out, lse = paged_mla_attention(q, k_cache, table, seqlens, 512, 0.1, causal=True)
    ref_out, ref_lse = reference_paged_attention(q, k_cache, table, seqlens, 512, 0.1, True)
    assert torch.isfinite(out).all() and torch.allclose(out, ref_out, rtol=0, atol=1e-12)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)) and torch.allclose(lse, ref_lse, rtol=0, atol=1e-12)


def test_paged_attention_fp32_output_lse_and_p_abs_v_on_request():
    """out_dtype and return_p_abs_v (what the kernels' tests need): unrounded output, and Σ_j p_j·|v_j|."""
    q, k_cache, table, seqlens = hostile_inputs([70, 0, 3], 2, h_q=4, dtype=torch.bfloat16, seed=9)
    out, lse, p_abs_v = paged_mla_attention(q, k_cache, table, seqlens, 512, causal=True, out_dtype=torch.float32,
                                            return_p_abs_v=True)
    ref_out, ref_lse = reference_paged_attention(q, k_cache, table, seqlens, 512, 576**-0.5, True)
    assert out.dtype == lse.dtype == p_abs_v.dtype == torch.float32 and p_abs_v.shape == out.shape
    assert torch.allclose(out.double(), ref_out, rtol=0, atol=1e-5)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    fin = torch.isfinite(ref_lse)
    assert torch.allclose(lse.double()[fin], ref_lse[fin], rtol=0, atol=1e-5)
    assert (p_abs_v >= out.abs() - 1e-6).all()  # |Σ p v| ≤ Σ p |v|
    assert torch.equal(p_abs_v[1], torch.zeros_like(p_abs_v[1]))  # the empty request


def test_paged_attention_causal_is_bottom_right_aligned():
    """s_q = 3 queries over 5 keys: query j sees keys 0 … 2 + j, so changing key 3 moves queries 1, 2 only."""
    q, k_cache, table, seqlens = hostile_inputs([5], s_q=3)
    pool = k_cache[:, :, 0]  # [num_blocks, 64, 576]: a 3-dim pool means one latent head
    out, _ = paged_mla_attention(q, pool, table, seqlens, 512, causal=True)
    pool[int(table[0, 0]), 3] += 1.0
    moved, _ = paged_mla_attention(q, pool, table, seqlens, 512, causal=True)
    changed = (moved != out).flatten(2).any(-1)[0]  # [s_q]
    assert changed.tolist() == [False, True, True]


def test_paged_attention_empty_requests_give_zero_output_and_infinite_lse():
    # request 0 has no keys; in request 1 (one key, causal, s_q = 2) query 0 sees nothing and query 1 the key
    q, k_cache, table, seqlens = hostile_inputs([0, 1], s_q=2)
    pool = k_cache[:, :, 0]  # [num_blocks, 64, 576]
    out, lse = paged_mla_attention(q, pool, table, seqlens, 512, causal=True)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(out[1, 0], torch.zeros_like(out[1, 0]))
    assert torch.isposinf(lse[0]).all() and torch.isposinf(lse[1, :, 0]).all()
    assert torch.isfinite(lse[1, :, 1]).all() and torch.allclose(out[1, 1], pool[int(table[1, 0]), 0, :512]
                                                                   .expand(5, 512), rtol=0, atol=1e-12)


def test_paged_attention_with_every_request_empty_and_an_empty_block_table():
    q = torch.randn(2, 1, 4, 576, dtype=torch.float64)
    pool = torch.full((1, 64, 576), float("nan"), dtype=torch.float64)
    table = torch.zeros(2, 0, dtype=torch.int32)  # no request owns a page
    out, lse = paged_mla_attention(q, pool, table, torch.zeros(2, dtype=torch.int32), 512)
    assert torch.equal(out, torch.zeros(2, 1, 4, 512, dtype=torch.float64)) and torch.isposinf(lse).all()


def test_paged_attention_never_reads_block_table_entries_past_a_sequence():
    """Entries past a sequence's pages are SENTINEL_BLOCK and other huge ids (reading one would raise); pointing
    them all at a real page full of NaN instead gives exactly the same result."""
    q, k_cache, table, seqlens = hostile_inputs(LENGTHS, s_q=2, spare_blocks=1)
    assert (table == SENTINEL_BLOCK).any()
    out, lse = paged_mla_attention(q, k_cache, table, seqlens, 512, causal=True)
    nan_page = int(torch.isnan(k_cache).flatten(1).all(1).nonzero()[0])  # the spare page: NaN everywhere
    outside = (table < 0) | (table >= k_cache.shape[0])
    out2, lse2 = paged_mla_attention(q, k_cache, torch.where(outside, nan_page, table), seqlens, 512, causal=True)
    assert torch.isfinite(out).all() and torch.equal(out, out2) and torch.equal(lse, lse2)


def test_paged_attention_default_scale_is_inverse_sqrt_of_576():
    q, k_cache, table, seqlens = hostile_inputs([30, 70], s_q=1)
    out, lse = paged_mla_attention(q, k_cache, table, seqlens, 512)
    ref_out, ref_lse = reference_paged_attention(q, k_cache, table, seqlens, 512, 576**-0.5, causal=False)
    assert torch.allclose(out, ref_out, rtol=0, atol=1e-12) and torch.allclose(lse, ref_lse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_paged_attention_in_half_precision_meets_flashmla_tolerances(dtype):
    """FlashMLA's pass criteria against a float64 reference on the same half-precision values."""
    q, k_cache, table, seqlens = hostile_inputs([20, 140, 0, 4096 // 16, 65], s_q=2, h_q=16, dtype=dtype)
    out, lse = paged_mla_attention(q, k_cache, table, seqlens, 512, causal=True)
    ref_out, ref_lse = reference_paged_attention(q, k_cache, table, seqlens, 512, 576**-0.5, causal=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    x, y = out.double(), ref_out
    cos_diff = 1 - 2 * (x * y).sum() / (x * x + y * y).sum()
    assert cos_diff <= 5e-6, f"cosine diff {float(cos_diff):.2e}"
    abs_err = (x - y).abs()
    assert ((abs_err < 8e-4) | (abs_err < 2.01 / 128 * y.abs())).all()
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    finite = torch.isfinite(ref_lse)
    lse_err = (lse.double() - ref_lse)[finite].abs()
    assert ((lse_err < 1e-6) | (lse_err < 8.01 / 65536 * ref_lse[finite].abs())).all()


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(0, 150), min_size=1, max_size=4), s_q=st.integers(1, 3), causal=st.booleans(),
       seed=st.integers(0, 2**16))
def test_paged_attention_matches_per_request_loop_for_random_requests(lengths, s_q, causal, seed):
    q, k_cache, table, seqlens = hostile_inputs(lengths, s_q, h_q=3, seed=seed)
    out, lse = paged_mla_attention(q, k_cache, table, seqlens, 512, 0.05, causal=causal)
    ref_out, ref_lse = reference_paged_attention(q, k_cache, table, seqlens, 512, 0.05, causal)
    assert torch.allclose(out, ref_out, rtol=0, atol=1e-12)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    assert torch.allclose(lse, ref_lse, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ the page allocator
def small_cache(num_blocks=6, page_size=4, **kwargs) -> PagedLatentCache:
    """Pages of 4 tokens, rows 3 wide: small enough to check every slot by hand."""
    return PagedLatentCache(num_blocks, page_size, 3, dtype=torch.float64, **kwargs)


def rows(n: int, start: float) -> torch.Tensor:
    """[1, n, 3] rows whose values say which token they are: token t of the append holds start + t."""
    return (start + torch.arange(n, dtype=torch.float64))[None, :, None].expand(1, n, 3).contiguous()


def pool_snapshot(cache: PagedLatentCache) -> tuple:
    """Everything an append must leave alone: pool bytes (bitwise, NaN-safe), free list, pages and lengths."""
    return (cache.pool.clone().view(torch.uint8), list(cache._free),  # the free list is private: read it here only
            {s: cache.block_table([s]).tolist() for s in cache.seq_ids}, cache.cache_seqlens().tolist())


def assert_unchanged(before: tuple, after: tuple) -> None:
    assert torch.equal(before[0], after[0]), "pool bytes changed"
    assert before[1:] == after[1:], "free list, block tables or lengths changed"


def test_allocate_hands_out_ids_and_rejects_a_live_or_negative_id():
    cache = small_cache()
    assert [cache.allocate(), cache.allocate(), cache.allocate(5), cache.allocate()] == [0, 1, 5, 6]
    assert cache.seq_ids == [0, 1, 5, 6] and cache.seq_len(5) == 0 and cache.num_free_blocks == 6
    with pytest.raises(ValueError, match="seq_id 1 is already allocated"):
        cache.allocate(1)
    with pytest.raises(ValueError, match="seq_id must be a non-negative int"):
        cache.allocate(-1)


def test_append_takes_pages_only_when_needed_and_stores_token_t_at_its_slot():
    cache = small_cache()
    a, b = cache.allocate(), cache.allocate()
    cache.append([a], rows(5, 0))  # 5 tokens: 2 pages
    cache.append([b], rows(3, 100))  # 1 page
    assert cache.num_free_blocks == 3
    cache.append([a], rows(3, 5))  # 8 tokens: still 2 pages
    assert cache.num_free_blocks == 3
    cache.append([a, b], torch.cat([rows(1, 8), rows(1, 103)]))  # a: 9 tokens → 3rd page; b: 4 tokens, 1 page
    assert cache.num_free_blocks == 2
    assert cache.cache_seqlens().tolist() == [9, 4]
    table = cache.block_table()
    assert table.dtype == torch.int32 and table.tolist() == [[0, 1, 3], [2, SENTINEL_BLOCK, SENTINEL_BLOCK]]
    for s, (n, first) in enumerate(((9, 0), (4, 100))):
        for t in range(n):
            assert cache.pool[table[s, t // 4], t % 4].tolist() == [first + t] * 3, f"sequence {s} token {t}"


def test_free_returns_pages_for_reuse_and_forgets_the_sequence():
    cache = small_cache()
    a, b = cache.allocate(), cache.allocate()
    cache.append([a], rows(6, 0))
    cache.append([b], rows(1, 0))
    cache.free(a)
    assert cache.seq_ids == [b] and cache.num_free_blocks == 5
    with pytest.raises(KeyError, match="seq_id=0"):
        cache.seq_len(a)
    c = cache.allocate()
    cache.append([c], rows(20, 0))  # all five free pages, the freed ones among them
    assert cache.num_free_blocks == 0 and sorted(cache.block_table([c])[0].tolist()) == [0, 1, 3, 4, 5]


def test_free_of_an_unknown_or_already_freed_sequence_raises_key_error_naming_seq_id():
    cache = small_cache()
    with pytest.raises(KeyError, match="seq_id=42 is not a live sequence"):
        cache.free(42)
    s = cache.allocate()
    cache.free(s)
    with pytest.raises(KeyError, match=f"seq_id={s} is not a live sequence"):
        cache.free(s)


def test_append_to_an_unknown_sequence_or_the_same_one_twice_raises():
    cache = small_cache()
    s = cache.allocate()
    with pytest.raises(KeyError, match="seq_ids entry=7"):
        cache.append([7], rows(1, 0))
    with pytest.raises(ValueError, match="seq_ids must be distinct"):
        cache.append([s, s], torch.cat([rows(1, 0), rows(1, 0)]))


def test_append_of_no_tokens_is_refused_and_changes_nothing():
    cache = small_cache(fill_value=float("nan"))
    s = cache.allocate()
    cache.append([s], rows(3, 0))
    before = pool_snapshot(cache)
    with pytest.raises(ValueError, match=r"at least one token per sequence, got shape \[1, 0, "):
        cache.append([s], rows(3, 0)[:, :0])
    assert_unchanged(before, pool_snapshot(cache))


def test_full_pool_raises_cache_full_error_and_changes_nothing():
    cache = small_cache(num_blocks=3, fill_value=float("nan"))
    a, b = cache.allocate(), cache.allocate()
    cache.append([a], rows(5, 0))  # 2 pages
    cache.append([b], rows(2, 100))  # 1 page: the pool is now full
    cache.append([b], rows(2, 102))  # fits in b's page: no new page needed
    before = pool_snapshot(cache)
    with pytest.raises(CacheFullError, match=r"page pool full: .* needs 1 new page\(s\) of 4 tokens, but only 0 of 3"):
        cache.append([b], rows(1, 104))
    assert_unchanged(before, pool_snapshot(cache))


def test_full_pool_batch_append_is_all_or_nothing():
    """One free page, two sequences each needing one: the first must not be written either."""
    cache = small_cache(num_blocks=3, fill_value=float("nan"))
    a, b = cache.allocate(), cache.allocate()
    cache.append([a, b], torch.cat([rows(4, 0), rows(4, 100)]))  # one full page each, one page free
    before = pool_snapshot(cache)
    with pytest.raises(CacheFullError, match="needs 2 new page"):
        cache.append([a, b], torch.cat([rows(1, 4), rows(1, 104)]))
    assert_unchanged(before, pool_snapshot(cache))
    cache.append([a], rows(1, 4))  # the free page is still there
    assert cache.num_free_blocks == 0


def test_paged_mla_on_a_full_pool_raises_and_leaves_the_cache_unchanged(tiny, ladder_factory, hidden_factory):
    _, _, absorbed, paged = ladder_factory(tiny)
    cache = paged.new_cache(2, 64, fill_value=float("nan"))  # 2 pages in all
    x = hidden_factory(tiny, 2, 65)
    paged(x[:1, :64], cache, seq_ids=[0])  # sequence 0 fills its page
    out_1 = [paged(x[1:, :30], cache, seq_ids=[1])[0]]
    before = pool_snapshot(cache)
    with pytest.raises(CacheFullError):
        paged(x[:, 64:65], cache)  # sequence 0 needs a third page
    assert_unchanged(before, pool_snapshot(cache))
    out_1.append(paged(x[1:, 30:31], cache, seq_ids=[1])[0])  # sequence 1 carries on
    assert_close_f64(torch.cat(out_1, dim=1), stage2_alone(absorbed, x[1:, :31], [30, 1]), "sequence 1")
