"""The validation chain: every stage gives its predecessor's outputs from the same weights.

For each adjacent pair (0→1, 1→2, 2→3):
- float64 on CPU: the stages differ only in the order of exact operations, so they agree to rounding
  (relative Frobenius error ≤ 1e-10), for a lone decode token, a T=37 prefill, and a prefill followed by decodes;
- bfloat16: the three error metrics against the predecessor's float64 reference (its bf16 weights and inputs,
  computed in float64) and against the predecessor run in bf16, each under a bound measured below.
Then: prefill and incremental decode agree for every stage, cache sizes per token, the presets' softmax scales,
and a property test over random batch / prefix / length.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mla_tutorial import AbsorbedMLA, LatentMLA, MLAConfig, MLAProjections, NaiveMHA, PagedMLA
from mla_tutorial.metrics import ErrorMetrics, error_metrics

BATCH = 2
#: Chunk lengths fed one call at a time: a lone token into an empty cache, a prefill of 37 (not a power of two),
#: and that prefill followed by three single-token decode steps.
SCHEDULES = {"decode-1": [1], "prefill-37": [37], "prefill-37+decode-3": [37, 1, 1, 1]}
STAGES = [NaiveMHA, LatentMLA, AbsorbedMLA, PagedMLA]  # the torch stages 0–3 (stage 4, Triton, is tested on its own)
STAGE_NAMES = [cls.__name__ for cls in STAGES]

# ------------------------------------------------------------------ float64 bounds
#: Required by the ladder's contract. Measured (all configs and schedules below): ≤ 3.3e-16 for 0→1,
#: ≤ 1.9e-15 for 1→2, ≤ 1.4e-15 for 2→3, ≤ 1.7e-15 for incremental vs full prefill.
F64_REL_FROB = 1e-10
#: Outputs have std ≈ 2.6 and |max| ≈ 19 with WEIGHT_STD = 0.1; measured max_abs ≤ 5.6e-14.
F64_MAX_ABS = 1e-9

# ------------------------------------------------------------------ bfloat16 bounds
# Measured over the 4 configs × {prefill-37, prefill-37+decode-3} × weight seeds 0–2, batch 2 (CPU, torch 2.13),
# with WEIGHT_STD = 0.1 (outputs up to ≈ 15, where one bf16 ulp is 0.0625). Bounds: rel_frob and max_abs about
# 1.5–2× the worst measurement, 1 − cosine about 2×.
#: Any stage in bf16 vs its predecessor in float64 (same bf16 weights and inputs): the cost of bf16 arithmetic.
#: Measured worst: max_abs 0.183, rel_frob 7.4e-3, cosine 0.9999723.
BF16_VS_F64 = ErrorMetrics(max_abs=0.3, rel_frob=1.2e-2, cosine=0.99994)
#: Stage 1 vs stage 0, both bf16: the same operations, but stage 1 expands the whole cache through kv_b_proj
#: where stage 0 expanded one step's tokens, so a matmul of another shape may round K/V one ulp differently.
#: Measured worst: max_abs 0.0156, rel_frob 5.4e-5, cosine 0.999999999 (bit-identical for a single prefill).
BF16_LATENT_VS_NAIVE = ErrorMetrics(max_abs=0.03, rel_frob=1e-4, cosine=0.999999995)
#: Stage 2 vs stage 1, both bf16: absorption rounds different intermediates (a 512-wide latent query and
#: output instead of per-head 64-wide keys and values). Measured worst: max_abs 0.125, rel_frob 5.0e-3,
#: cosine 0.9999874.
BF16_ABSORBED_VS_LATENT = ErrorMetrics(max_abs=0.25, rel_frob=7.5e-3, cosine=0.99997)
#: Stage 3 vs stage 2, both bf16: the same attention read through pages; only the einsum order differs.
#: Measured worst: max_abs 0.0625, rel_frob 4.2e-4, cosine 0.99999991.
BF16_PAGED_VS_ABSORBED = ErrorMetrics(max_abs=0.125, rel_frob=7e-4, cosine=0.9999998)
BF16_VS_BF16_PREDECESSOR = {1: BF16_LATENT_VS_NAIVE, 2: BF16_ABSORBED_VS_LATENT, 3: BF16_PAGED_VS_ABSORBED}


def assert_within(metrics: ErrorMetrics, bound: ErrorMetrics, what: str) -> None:
    """Every metric on the right side of its bound (NaN fails)."""
    ok = metrics.max_abs <= bound.max_abs and metrics.rel_frob <= bound.rel_frob and metrics.cosine >= bound.cosine
    assert ok, f"{what}: {metrics} exceeds bound {bound}"


def float64_reference(module: MLAProjections) -> MLAProjections:
    """A fresh module of the same stage holding module's (e.g. bf16) weights in float64."""
    reference = type(module)(module.config).double()
    reference.load_state_dict(module.state_dict())
    return reference


# ------------------------------------------------------------------ float64: each stage matches its predecessor
def check_stage_matches_previous_f64(index, config, schedule, ladder_factory, hidden_factory, chunked):
    chunks = SCHEDULES[schedule]
    ladder = ladder_factory(config)
    x = hidden_factory(config, BATCH, sum(chunks))  # [B, T, hidden]
    out, _ = chunked(ladder[index], x, chunks)
    ref, _ = chunked(ladder[index - 1], x, chunks)
    m = error_metrics(out, ref)
    assert torch.isfinite(out).all()
    assert m.rel_frob <= F64_REL_FROB and m.max_abs <= F64_MAX_ABS, \
        f"{STAGE_NAMES[index]} vs {STAGE_NAMES[index - 1]} ({config.name}, {schedule}): {m}"


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_latent_matches_naive(config, schedule, ladder_factory, hidden_factory, chunked):
    check_stage_matches_previous_f64(1, config, schedule, ladder_factory, hidden_factory, chunked)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_absorbed_matches_latent(config, schedule, ladder_factory, hidden_factory, chunked):
    check_stage_matches_previous_f64(2, config, schedule, ladder_factory, hidden_factory, chunked)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_paged_matches_absorbed(config, schedule, ladder_factory, hidden_factory, chunked):
    check_stage_matches_previous_f64(3, config, schedule, ladder_factory, hidden_factory, chunked)


# ------------------------------------------------------------------ bfloat16: stated bounds
def bf16_metrics(index, config, schedule, ladder_factory, hidden_factory, chunked, seed=0):
    """(stage `index` in bf16 vs its predecessor's float64 reference, vs its predecessor in bf16)."""
    chunks = SCHEDULES[schedule]
    ladder = ladder_factory(config, torch.bfloat16, seed=seed)
    x = hidden_factory(config, BATCH, sum(chunks), torch.bfloat16)  # [B, T, hidden] bf16
    out, _ = chunked(ladder[index], x, chunks)
    prev_bf16, _ = chunked(ladder[index - 1], x, chunks)
    prev_f64, _ = chunked(float64_reference(ladder[index - 1]), x.double(), chunks)
    return error_metrics(out, prev_f64), error_metrics(out, prev_bf16)


def check_stage_matches_previous_bf16(index, config, schedule, ladder_factory, hidden_factory, chunked):
    vs_f64, vs_bf16 = bf16_metrics(index, config, schedule, ladder_factory, hidden_factory, chunked)
    pair = f"{STAGE_NAMES[index]} vs {STAGE_NAMES[index - 1]} ({config.name}, {schedule})"
    assert_within(vs_f64, BF16_VS_F64, f"{pair}, bf16 vs float64 reference")
    assert_within(vs_bf16, BF16_VS_BF16_PREDECESSOR[index], f"{pair}, both bf16")


BF16_SCHEDULES = ["prefill-37", "prefill-37+decode-3"]


@pytest.mark.parametrize("schedule", BF16_SCHEDULES)
def test_latent_matches_naive_in_bf16(config, schedule, ladder_factory, hidden_factory, chunked):
    check_stage_matches_previous_bf16(1, config, schedule, ladder_factory, hidden_factory, chunked)


@pytest.mark.parametrize("schedule", BF16_SCHEDULES)
def test_absorbed_matches_latent_in_bf16(config, schedule, ladder_factory, hidden_factory, chunked):
    check_stage_matches_previous_bf16(2, config, schedule, ladder_factory, hidden_factory, chunked)


@pytest.mark.parametrize("schedule", BF16_SCHEDULES)
def test_paged_matches_absorbed_in_bf16(config, schedule, ladder_factory, hidden_factory, chunked):
    check_stage_matches_previous_bf16(3, config, schedule, ladder_factory, hidden_factory, chunked)


def test_bf16_stages_keep_float32_rope_frequencies(tiny, ladder_factory):
    """module.to(bf16) and from_previous must not round RoPE's inverse frequencies to bf16 (up to 0.3 % off)."""
    expected = type(ladder_factory(tiny)[0])(tiny).rotary.inv_freq  # a fresh module's float32 frequencies
    for module in ladder_factory(tiny, torch.bfloat16):
        assert module.rotary.inv_freq.dtype == torch.float32, type(module).__name__
        assert torch.equal(module.rotary.inv_freq, expected), type(module).__name__


#: NaiveMHA in bf16 vs float64 at positions 1000–1007 (after a 1000-token prefill). Measured rel_frob 8.9e-3 with
#: float32 RoPE frequencies; 0.125 with the frequencies rounded to bf16 (what module.to(bf16) once did).
BF16_LONG_CONTEXT_REL_FROB = 1.5e-2


def test_bf16_naive_stays_accurate_at_long_positions(tiny, ladder_factory, hidden_factory, chunked):
    module = ladder_factory(tiny, torch.bfloat16)[0]
    x = hidden_factory(tiny, 1, 1008, torch.bfloat16)
    out, _ = chunked(module, x, [1000, 8])
    ref, _ = chunked(float64_reference(module), x.double(), [1000, 8])
    m = error_metrics(out[:, 1000:], ref[:, 1000:])
    assert m.rel_frob <= BF16_LONG_CONTEXT_REL_FROB, f"NaiveMHA at positions 1000+: {m}"


# ------------------------------------------------------------------ prefill vs incremental decode, every stage
#: Ways to feed the same 37 tokens: all at once is the reference.
INCREMENTAL_SCHEDULES = {
    "prefill-21+decode-1x16": [21] + [1] * 16,
    "chunks-8,8,8,8,5": [8, 8, 8, 8, 5],
    "decode-1-from-empty+chunk-36": [1, 36],
}


@pytest.mark.parametrize("schedule", INCREMENTAL_SCHEDULES)
@pytest.mark.parametrize("stage_index", range(len(STAGES)), ids=STAGE_NAMES)
def test_incremental_decode_matches_full_prefill(config, stage_index, schedule, ladder_factory, hidden_factory,
                                                 chunked):
    module = ladder_factory(config)[stage_index]
    x = hidden_factory(config, BATCH, 37)
    full, full_cache = module(x)
    stepped, stepped_cache = chunked(module, x, INCREMENTAL_SCHEDULES[schedule])
    m = error_metrics(stepped, full)
    assert m.rel_frob <= F64_REL_FROB and m.max_abs <= F64_MAX_ABS, f"{STAGE_NAMES[stage_index]} {schedule}: {m}"
    if stage_index < 3:  # contiguous caches: the cached tensors themselves agree
        for name in ("k", "v") if stage_index == 0 else ("kv",):
            assert torch.allclose(getattr(stepped_cache, name), getattr(full_cache, name), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ sanity of the test data itself
def test_test_weights_make_attention_peaked(tiny, ladder_factory, hidden_factory):
    """With linear_init_'s default std the tiny model attends almost uniformly, which hides mask bugs."""
    module = ladder_factory(tiny)[0]
    x = hidden_factory(tiny, 1, 200)
    positions = module.positions(1, 0, 200, x.device)
    q_nope, q_rope = module.project_query(x, positions)  # [1, T, H, d_h], [1, T, H, d^R_h]
    c_kv, k_rope = module.project_latent(x, positions)
    k_nope = torch.einsum("bsr,hdr->bshd", c_kv, module.W_UK)  # [1, S, H, d_h]
    scores = (torch.einsum("bthd,bshd->bhts", q_nope, k_nope)
              + torch.einsum("bthd,bsd->bhts", q_rope, k_rope)) * tiny.softmax_scale  # [1, H, T, S]
    probs = scores.masked_fill(torch.ones(200, 200, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(-1)[..., 100:]  # rows that see ≥ 101 keys
    effective_keys = float(entropy.exp().mean())
    assert effective_keys < 40, f"attention spreads over ~{effective_keys:.0f} keys: test weights too small"


# ------------------------------------------------------------------ cache sizes and scales
def test_cache_bytes_per_token_tiny(tiny, ladder_factory):
    # per-head cache: 8 heads × (64 + 64 + 64) = 1,536 numbers; latent: 512 + 64 = 576 numbers
    expected_bf16 = [3072, 1152, 1152, 1152]
    ladder = ladder_factory(tiny)
    assert [m.cache_bytes_per_token(torch.bfloat16) for m in ladder] == expected_bf16
    assert [m.cache_bytes_per_token() for m in ladder] == [4 * n for n in expected_bf16]  # float64 weights


def test_cache_bytes_per_token_deepseek_v3_on_meta_device():
    config = MLAConfig.deepseek_v3()
    with torch.device("meta"):  # shapes only: no 7168-wide weights are allocated
        ladder = [stage_cls(config).to(torch.bfloat16) for stage_cls in STAGES]
    assert [m.cache_bytes_per_token() for m in ladder] == [81_920, 1_152, 1_152, 1_152]
    assert config.cache_bytes_per_token("mha") == 81_920 and config.cache_bytes_per_token("latent") == 1_152


@pytest.mark.parametrize("stage_index", range(len(STAGES)), ids=STAGE_NAMES)
def test_cache_bytes_per_token_is_what_the_cache_stores(tiny, stage_index, ladder_factory, hidden_factory):
    module = ladder_factory(tiny, torch.bfloat16)[stage_index]
    _, cache = module(hidden_factory(tiny, BATCH, 128, torch.bfloat16))  # 128 tokens = 2 whole pages
    if stage_index == 3:  # the pool reserves whole pages; count only the pages the two sequences own
        stored = (cache.num_blocks - cache.num_free_blocks) * cache.pool[0].numel() * cache.pool.element_size()
    else:
        stored = cache.nbytes
    assert stored == module.cache_bytes_per_token() * BATCH * 128


@pytest.mark.parametrize("preset, scale", [("deepseek-v3", 0.1352338), ("deepseek-v2", 0.1147214),
                                           ("deepseek-v2-lite", 0.1147214)])
def test_softmax_scale_of_presets(preset, scale):
    assert MLAConfig.preset(preset).softmax_scale == pytest.approx(scale, abs=5e-8)


def test_softmax_scale_without_yarn_is_inverse_sqrt_head_dim():
    assert MLAConfig.tiny(rope_type=None).softmax_scale == pytest.approx(128**-0.5, rel=1e-15)


# ------------------------------------------------------------------ property: any batch, prefix and length
@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 3), start=st.integers(0, 70), length=st.integers(1, 9), seed=st.integers(0, 1))
def test_every_stage_matches_naive_after_any_prefix(batch, start, length, seed, ladder_factory, hidden_factory,
                                                     chunked):
    config = MLAConfig.tiny()
    ladder = ladder_factory(config, seed=seed)
    x = hidden_factory(config, batch, start + length, seed=seed + 10)
    chunks = [start, length] if start else [length]
    ref, _ = chunked(ladder[0], x, chunks)
    for index in range(1, len(STAGES)):
        out, _ = chunked(ladder[index], x, chunks)
        m = error_metrics(out, ref)
        assert m.rel_frob <= F64_REL_FROB, f"{STAGE_NAMES[index]} vs NaiveMHA: {m}"
