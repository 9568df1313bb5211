"""The course helpers of notebooks 01–04 (`mla_tutorial.course.basics`) and their exercise solutions.

Every solution is checked against something independent of it: a measured tensor size, a stage's own method,
the allocator's behaviour, or a brute-force loop; the figures quoted in the notebooks are pinned here too.
Bad input raises an error that names the argument.
"""

from __future__ import annotations

import math

import pytest
import torch

import mla_tutorial.course
from mla_tutorial import MLAConfig, PagedLatentCache
from mla_tutorial.course import basics
from mla_tutorial.metrics import error_metrics
from mla_tutorial.testing import make_paged_inputs

V3, V2_LITE, TINY = MLAConfig.deepseek_v3(), MLAConfig.deepseek_v2_lite(), MLAConfig.tiny()
F64_REL = 1e-12  # float64: the stages differ only in the order of exact operations (measured ~1e-15)


def test_course_package_imports_its_modules_lazily():
    assert mla_tutorial.course.basics is basics
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mla_tutorial.course.nope  # noqa: B018


# ------------------------------------------------------------------------------------------------ decode loop
def test_prefill_and_decode_equals_one_causal_pass(tiny, ladder_factory, hidden_factory):
    stage0 = ladder_factory(tiny)[0]
    x = hidden_factory(tiny, 2, 16 + 5)
    out, cache = basics.prefill_and_decode(stage0, x[:, :16], x[:, 16:])
    with torch.no_grad():
        full, _ = stage0(x)
    assert out.shape == (2, 21, tiny.hidden_size) and cache.length == 21
    assert error_metrics(out, full).rel_frob < F64_REL


def test_prefill_and_decode_with_no_decode_step_is_a_prefill(tiny, ladder_factory, hidden_factory):
    stage1 = ladder_factory(tiny)[1]
    x = hidden_factory(tiny, 1, 7)
    out, cache = basics.prefill_and_decode(stage1, x, x[:, :0])
    assert out.shape == (1, 7, tiny.hidden_size) and cache.length == 7


def test_decode_steps_yields_one_output_and_a_longer_cache_per_token(tiny, ladder_factory, hidden_factory):
    stage0 = ladder_factory(tiny)[0]
    x = hidden_factory(tiny, 2, 10)
    _, cache = basics.prefill_and_decode(stage0, x[:, :7], x[:, :0])
    lengths = [(y.shape, c.length) for y, c in basics.decode_steps(stage0, cache, x[:, 7:])]
    assert lengths == [((2, 1, tiny.hidden_size), 8), ((2, 1, tiny.hidden_size), 9), ((2, 1, tiny.hidden_size), 10)]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_prefill_and_decode_agrees_across_the_ladder(tiny, ladder_factory, hidden_factory, stage):
    ladder = ladder_factory(tiny)
    x = hidden_factory(tiny, 2, 9)
    ref, _ = basics.prefill_and_decode(ladder[0], x[:, :6], x[:, 6:])
    out, _ = basics.prefill_and_decode(ladder[stage], x[:, :6], x[:, 6:])
    assert error_metrics(out, ref).rel_frob < F64_REL


def test_prefill_and_decode_refuses_bad_input(tiny, ladder_factory, hidden_factory):
    stage0 = ladder_factory(tiny)[0]
    x = hidden_factory(tiny, 2, 4)
    with pytest.raises(ValueError, match="new_tokens has batch 1 but the prompt has batch 2"):
        basics.prefill_and_decode(stage0, x, x[:1])
    with pytest.raises(ValueError, match=r"prompt must be a tensor \[batch, tokens, 256\]"):
        basics.prefill_and_decode(stage0, x[..., :5], x)
    with pytest.raises(ValueError, match="prompt must hold at least one token"):
        basics.prefill_and_decode(stage0, x[:, :0], x)
    with pytest.raises(TypeError, match="module must be an MLA stage"):
        basics.prefill_and_decode(torch.nn.Linear(2, 2), x, x)


@pytest.mark.parametrize("prompt_lengths", [[5, 70, 130], [1, 63, 64, 65], [128]])
def test_decode_together_equals_each_sequence_alone(tiny, ladder_factory, prompt_lengths):
    """Stage 3 over one shuffled, NaN-poisoned pool = stage 2 one sequence at a time (page boundaries 64 ± 1)."""
    _, _, stage2, stage3 = ladder_factory(tiny)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randn(1, n, tiny.hidden_size, generator=gen, dtype=torch.float64) for n in prompt_lengths]
    new = torch.randn(len(prompts), 3, tiny.hidden_size, generator=gen, dtype=torch.float64)
    together, cache = basics.decode_together(stage3, prompts, new, seed=3)
    alone = basics.decode_each_alone(stage2, prompts, new)
    assert together.shape == alone.shape == (len(prompts), 3, tiny.hidden_size)
    assert together.isfinite().all()
    assert error_metrics(together, alone).rel_frob < F64_REL
    assert [cache.seq_len(s) for s in cache.seq_ids] == [n + 3 for n in prompt_lengths]
    assert cache.pool.isnan().any()  # the unused slots were poisoned, and nothing read them


def test_decode_together_refuses_bad_input(tiny, ladder_factory, hidden_factory):
    _, _, stage2, stage3 = ladder_factory(tiny)
    x = hidden_factory(tiny, 2, 4)
    with pytest.raises(TypeError, match="stage3 must be a PagedMLA"):
        basics.decode_together(stage2, [x[:1]], x[:1])
    with pytest.raises(ValueError, match=r"prompts\[0\] must be one sequence"):
        basics.decode_together(stage3, [x], x)
    with pytest.raises(ValueError, match="new_tokens has batch 2 but the prompt has batch 1"):
        basics.decode_together(stage3, [x[:1]], x)
    with pytest.raises(ValueError, match="prompts must hold at least one prompt"):
        basics.decode_together(stage3, [], x)
    with pytest.raises(ValueError, match="new_tokens has batch 2 but 1 prompts were given"):
        basics.decode_each_alone(stage2, [x[:1]], x)
    with pytest.raises(ValueError, match="new_tokens must be a tensor"):
        basics.decode_each_alone(stage2, [x[:1]], [1.0])


# ------------------------------------------------------------------------------------------------ measurements
def test_measured_cache_bytes_match_the_formula(tiny, ladder_factory):
    stage0, stage1 = ladder_factory(tiny)[:2]
    lengths = [1, 64, 100]
    assert basics.measured_cache_bytes(stage0, lengths, batch=2) == [2 * S * stage0.cache_bytes_per_token()
                                                                     for S in lengths]
    assert basics.measured_cache_bytes(stage1, lengths) == [S * 576 * 8 for S in lengths]
    with pytest.raises(ValueError, match=r"lengths\[1\] must be an int ≥ 1, got 0"):
        basics.measured_cache_bytes(stage0, [3, 0])


def test_decode_step_peak_bytes_counts_the_new_cache_and_the_temporaries(tiny, ladder_factory):
    stage0, stage1, stage2 = ladder_factory(tiny, torch.float32)[:3]
    from mla_tutorial.measure.timing import prefill

    S = 128
    cache0, cache1, static = prefill(stage0, 1, S), prefill(stage1, 1, S), prefill(stage2, 1, S)
    peak0, peak1 = basics.decode_step_peak_bytes(stage0, cache0), basics.decode_step_peak_bytes(stage1, cache1)
    assert peak0 >= cache0.nbytes  # torch.cat builds a new cache of S + 1 tokens
    expanded = S * tiny.num_heads * (tiny.qk_nope_head_dim + tiny.v_head_dim) * 4
    assert peak1 >= cache1.nbytes + expanded  # the new latent cache and the re-expanded K and V
    lengths = static.lengths.clone()
    assert basics.decode_step_peak_bytes(stage2, static) > 0
    assert torch.equal(static.lengths, lengths)  # an in-place cache is put back


def test_decode_step_times_has_one_positive_time_per_stage_and_context(tiny, ladder_factory):
    threads = torch.get_num_threads()
    stages = {"stage 0": ladder_factory(tiny, torch.float32)[0], "stage 2": ladder_factory(tiny, torch.float32)[2]}
    times = basics.decode_step_times(stages, [8, 33], warmup=0, reps=1)
    assert list(times) == ["stage 0", "stage 2"]
    assert all(len(v) == 2 and all(t > 0 for t in v) for v in times.values())  # no claim about the values
    assert torch.get_num_threads() == threads  # restored
    with pytest.raises(ValueError, match="threads must be an int ≥ 1"):
        basics.decode_step_times(stages, [8], threads=0)
    with pytest.raises(ValueError, match=r"contexts\[0\] must be an int ≥ 1, got -1"):
        basics.decode_step_times(stages, [-1])


# ------------------------------------------------------------------------------------------------ 01
def test_mha_cache_bytes_is_what_stage_0_holds(tiny, ladder_factory, hidden_factory):
    stage0 = ladder_factory(tiny)[0]
    _, cache = basics.prefill_and_decode(stage0, hidden_factory(tiny, 3, 13), hidden_factory(tiny, 3, 2))
    assert basics.mha_cache_bytes(tiny, cache.length, element_size=8) * 3 == cache.nbytes
    assert basics.mha_cache_bytes(V3, 1) == V3.cache_bytes_per_token("mha") == 81_920
    assert basics.mha_cache_bytes(V3, 32_768, layers=61) / 2**30 == pytest.approx(152.5, abs=0.05)
    assert basics.mha_cache_bytes(V2_LITE, 1) == 10_240
    with pytest.raises(ValueError, match="layers must be an int ≥ 1, got 0"):
        basics.mha_cache_bytes(V3, 1, layers=0)
    with pytest.raises(TypeError, match="config must be an MLAConfig"):
        basics.mha_cache_bytes("deepseek-v3", 1)


@pytest.mark.parametrize("kind", ["mha", "latent"])
@pytest.mark.parametrize("memory", [0, 1, 81_919, 81_920 * 61, 80e9])
def test_max_cached_tokens_is_the_largest_that_fits(kind, memory):
    n = basics.max_cached_tokens(V3, memory, layers=61, kind=kind)
    per_token = V3.cache_bytes_per_token(kind) * 61
    assert n * per_token <= memory < (n + 1) * per_token


def test_max_cached_tokens_figures():
    assert basics.max_cached_tokens(V3, 80e9, layers=61) == 16_009  # notebook 01
    assert basics.max_cached_tokens(V3, 80e9, layers=61, kind="latent") == 1_138_433  # notebook 02
    with pytest.raises(ValueError, match="memory_bytes must be a number ≥ 0"):
        basics.max_cached_tokens(V3, -1)
    with pytest.raises(ValueError, match="stage must be 'mha' or 'latent'"):
        basics.max_cached_tokens(V3, 1e9, kind="paged")


@pytest.mark.parametrize(("prompt", "new"), [(0, 1), (1, 0), (16, 8), (63, 65)])
def test_decode_bytes_read_is_the_sum_over_steps(prompt, new):
    per_token = V3.cache_bytes_per_token("mha")
    brute = sum((prompt + i) * per_token for i in range(1, new + 1))
    assert basics.decode_bytes_read(V3, prompt, new) == brute
    assert basics.decode_bytes_read(V3, prompt, new, layers=3, kind="latent") == \
        3 * sum((prompt + i) * 1152 for i in range(1, new + 1))


def test_decode_bytes_read_matches_the_caches_a_decode_loop_reads(tiny, ladder_factory, hidden_factory):
    stage0 = ladder_factory(tiny)[0]
    prompt, new = hidden_factory(tiny, 2, 16), hidden_factory(tiny, 2, 8, seed=2)
    _, cache = basics.prefill_and_decode(stage0, prompt, new[:, :0])
    read = sum(c.nbytes for _, c in basics.decode_steps(stage0, cache, new))  # each step reads its whole cache
    assert basics.decode_bytes_read(tiny, 16, 8, element_size=8) * 2 == read


# ------------------------------------------------------------------------------------------------ 02
def test_latent_saving():
    assert basics.latent_saving(V3) == pytest.approx(128 * 320 / 576) and round(basics.latent_saving(V3), 1) == 71.1
    assert round(basics.latent_saving(V2_LITE), 1) == 8.9
    assert basics.latent_saving(TINY) == pytest.approx(8 / 3)


def test_latent_saving_is_the_measured_ratio(tiny, ladder_factory):
    stage0, stage1 = ladder_factory(tiny)[:2]
    mha, latent = basics.measured_cache_bytes(stage0, [50]), basics.measured_cache_bytes(stage1, [50])
    assert mha[0] / latent[0] == pytest.approx(basics.latent_saving(tiny))


def test_expand_latent_cache_rebuilds_stage_0s_cache(config, ladder_factory, hidden_factory):
    stage0, stage1 = ladder_factory(config)[:2]
    prompt, new = hidden_factory(config, 2, 11), hidden_factory(config, 2, 3, seed=5)
    _, cache0 = basics.prefill_and_decode(stage0, prompt, new)
    _, cache1 = basics.prefill_and_decode(stage1, prompt, new)
    rebuilt = basics.expand_latent_cache(stage1, cache1)
    assert rebuilt.k.shape == cache0.k.shape and rebuilt.v.shape == cache0.v.shape
    assert error_metrics(rebuilt.k, cache0.k).rel_frob < F64_REL
    assert error_metrics(rebuilt.v, cache0.v).rel_frob < F64_REL
    assert not rebuilt.k.requires_grad
    with pytest.raises(TypeError, match="cache must be a LatentCache"):
        basics.expand_latent_cache(stage1, cache0)


def test_reexpansion_bytes_is_what_kv_b_proj_builds(tiny, ladder_factory):
    stage1 = ladder_factory(tiny, torch.float32)[1]
    S = 40
    cache = basics.prefill_and_decode(stage1, torch.randn(2, S, tiny.hidden_size), torch.zeros(2, 0, 256))[1]
    with torch.no_grad():
        expanded = stage1.kv_b_proj(cache.c_kv)  # what LatentMLA.forward builds every step
    assert basics.reexpansion_bytes(tiny, S, batch=2, element_size=4) == expanded.numel() * expanded.element_size()
    assert basics.reexpansion_bytes(V3, 32_768) == 2 * 2**30  # 2 GiB per layer per step (notebook 02)


# ------------------------------------------------------------------------------------------------ 03
def test_absorb_query_nope_is_the_stage_2_query(config, ladder_factory, hidden_factory):
    stage2 = ladder_factory(config)[2]
    x = hidden_factory(config, 2, 3)
    q_nope, q_rope = stage2.project_query(x, stage2.positions(2, 0, 3, x.device))
    ours = basics.absorb_query_nope(q_nope, stage2.W_UK)  # [2, 3, H, d_c]
    assert torch.equal(torch.cat([ours, q_rope], dim=-1), stage2.absorb_query(q_nope, q_rope))
    with pytest.raises(ValueError, match="q_nope must be"):
        basics.absorb_query_nope(q_nope[..., :-1], stage2.W_UK)


def test_latent_output_to_heads_equals_attention_over_expanded_values(tiny, ladder_factory):
    stage1 = ladder_factory(tiny)[1]
    gen = torch.Generator().manual_seed(0)
    c_kv = torch.randn(30, tiny.kv_lora_rank, generator=gen, dtype=torch.float64)  # [S, d_c]
    p = torch.softmax(torch.randn(tiny.num_heads, 30, generator=gen, dtype=torch.float64), dim=-1)  # [H, S]
    v = torch.einsum("hvc,sc->hsv", stage1.W_UV, c_kv)  # expanded values [H, S, d_v]
    expected = torch.einsum("hs,hsv->hv", p, v)  # [H, d_v]
    ours = basics.latent_output_to_heads(p @ c_kv, stage1.W_UV)  # õ [H, d_c] → [H, d_v]
    assert error_metrics(ours, expected).rel_frob < F64_REL
    with pytest.raises(ValueError, match="o_latent must be"):
        basics.latent_output_to_heads(p, stage1.W_UV)


@pytest.mark.parametrize("config", [TINY, MLAConfig.tiny(q_lora_rank=None)], ids=["q_lora", "q_proj"])
def test_fused_query_weight_gives_the_latent_query(config, ladder_factory, hidden_factory):
    stage2 = ladder_factory(config)[2]
    x = hidden_factory(config, 1, 4)
    with torch.no_grad():
        c_q = x if config.q_lora_rank is None else stage2.q_a_layernorm(stage2.q_a_proj(x))  # [1, 4, d'_c]
        q_nope, _ = stage2.project_query(x, stage2.positions(1, 0, 4, x.device))
    fused = basics.fused_query_weight(stage2)  # [H, d_c, d'_c]
    d_in = config.q_lora_rank or config.hidden_size
    assert fused.shape == (config.num_heads, config.kv_lora_rank, d_in)
    via_fused = torch.einsum("hcq,btq->bthc", fused, c_q)  # [1, 4, H, d_c]
    assert error_metrics(via_fused, basics.absorb_query_nope(q_nope, stage2.W_UK)).rel_frob < F64_REL
    assert basics.W_UQ(stage2).shape == (config.num_heads, config.qk_nope_head_dim, d_in)


def test_query_absorb_macs():
    assert basics.query_absorb_macs(V3) == {"fused": 1536 * 512, "sequential": 1536 * 128 + 128 * 512}
    assert basics.query_absorb_macs(V3)["fused"] == 3 * basics.query_absorb_macs(V3)["sequential"]
    assert basics.query_absorb_macs(V2_LITE)["fused"] == 512 * 2048  # no query compression: from hidden


# ------------------------------------------------------------------------------------------------ 04
def _filled_pool(lengths: list[int]) -> tuple[PagedLatentCache, dict[int, torch.Tensor]]:
    pool = PagedLatentCache(num_blocks=16, dtype=torch.float32, shuffle=True, seed=0)
    gen = torch.Generator().manual_seed(1)
    rows = {}
    for n in lengths:
        s = pool.allocate()
        rows[s] = torch.randn(n, 576, generator=gen)
        pool.append([s], rows[s][None])  # [1, n, 576]
    return pool, rows


def test_token_row_finds_every_token():
    pool, rows = _filled_pool([5, 63, 64, 65, 130])
    table, lens = pool.block_table(), pool.cache_seqlens()
    flat = pool.pool.view(-1, 576)
    for b, written in enumerate(rows.values()):
        for t in range(len(written)):
            assert torch.equal(flat[basics.token_row(table, lens, b, t)], written[t])
    with pytest.raises(ValueError, match=r"t must be below cache_seqlens\[0\] = 5"):
        basics.token_row(table, lens, 0, 5)
    with pytest.raises(ValueError, match="b must be in 0..4"):
        basics.token_row(table, lens, 5, 0)
    with pytest.raises(ValueError, match="cache_seqlens must be a tensor"):
        basics.token_row(table, lens[:2], 0, 0)


@pytest.mark.parametrize("new_tokens", [0, 1, 2, 63, 64, 65, 200])
def test_pages_to_take_is_what_the_allocator_takes(new_tokens):
    lengths = [0, 1, 63, 64, 65, 127, 128, 129]
    pool = PagedLatentCache(num_blocks=64, dtype=torch.float32)
    for n in lengths:
        s = pool.allocate()
        if n:
            pool.append([s], torch.zeros(1, n, 576))
    expected = basics.pages_to_take(lengths, new_tokens)
    for s, need in zip(pool.seq_ids, expected, strict=True):
        free = pool.num_free_blocks
        if new_tokens:
            pool.append([s], torch.zeros(1, new_tokens, 576))
        assert free - pool.num_free_blocks == need


def test_pages_to_take_figures_and_bad_input():
    assert basics.pages_to_take([64, 65, 0], 1) == [1, 0, 1]
    assert basics.pages_to_take([], 5) == []
    with pytest.raises(ValueError, match=r"lengths\[1\] must be an int ≥ 0, got -1"):
        basics.pages_to_take([3, -1], 1)
    with pytest.raises(ValueError, match="page_size must be an int ≥ 1"):
        basics.pages_to_take([3], 1, page_size=0)


def test_gather_sequence_reads_only_live_rows_in_order():
    pool, rows = _filled_pool([5, 64, 130])
    pool.poison_unused()  # NaN in every slot that holds no live token
    table, lens = pool.block_table(), pool.cache_seqlens()
    for b, written in enumerate(rows.values()):
        got = basics.gather_sequence(pool.k_cache, table, lens, b)  # [L, 576]
        assert torch.equal(got, written)
    assert torch.equal(basics.gather_sequence(pool.pool, table, lens, 2), rows[2])  # [N, 64, 576] works too


def test_gather_sequence_on_hostile_inputs():
    """FlashMLA's recipe: sentinel ids past each request's pages, NaN in every unused slot, an empty request."""
    lengths = [1, 63, 64, 65, 0, 129]
    _, k_cache, table, lens = make_paged_inputs(lengths, h_q=1, dtype=torch.float32, seed=4)
    for b, n in enumerate(lengths):
        got = basics.gather_sequence(k_cache, table, lens, b)
        assert got.shape == (n, 576) and got.isfinite().all()
        if n:
            assert torch.equal(got[-1], k_cache[table[b, (n - 1) // 64], (n - 1) % 64, 0])


def test_gather_sequence_refuses_a_page_outside_the_pool():
    pool, _ = _filled_pool([130])
    table = pool.block_table().clone()
    table[0, 1] = 99
    with pytest.raises(ValueError, match=r"block_table\[0\] points outside the pool of 16 pages"):
        basics.gather_sequence(pool.k_cache, table, pool.cache_seqlens(), 0)
    with pytest.raises(ValueError, match="k_cache must be a tensor"):
        basics.gather_sequence(pool.pool[0], table, pool.cache_seqlens(), 0)


def test_page_boundaries_in_the_formulas():
    assert [math.ceil(n / 64) for n in (63, 64, 65)] == [1, 1, 2]
    assert basics.pages_to_take([63, 64, 65], 1) == [0, 1, 0]
    assert basics.pages_to_take([0], 0) == [0]
