"""Bad input fails early with a TypeError/ValueError (KeyError for unknown sequence ids) naming the argument.

Covers every stage's forward, MLAConfig's fields and presets, PagedLatentCache, and paged_mla_attention.
"""

from __future__ import annotations

import pytest
import torch

from mla_tutorial import (
    SENTINEL_BLOCK,
    AbsorbedMLA,
    LatentCache,
    LatentMLA,
    MHACache,
    MLAConfig,
    NaiveMHA,
    PagedLatentCache,
    PagedMLA,
    paged_mla_attention,
)

STAGES = [NaiveMHA, LatentMLA, AbsorbedMLA, PagedMLA]  # the torch stages 0–3 (stage 4, Triton, is tested on its own)
STAGE_NAMES = [cls.__name__ for cls in STAGES]


@pytest.fixture(params=range(len(STAGES)), ids=STAGE_NAMES)
def stage(request, tiny, ladder_factory):
    """Each stage in turn, float64 weights on the CPU."""
    return ladder_factory(tiny)[request.param]


# ------------------------------------------------------------------ every stage: hidden_states
@pytest.mark.parametrize("bad, error, match", [
    ([[0.0] * 256], TypeError, "hidden_states must be a torch.Tensor, got list"),
    (torch.zeros(3, 256, dtype=torch.float64), ValueError, r"hidden_states must have shape \[batch, seq, 256\]"),
    (torch.zeros(1, 2, 3, 256, dtype=torch.float64), ValueError, r"hidden_states must have shape"),
    (torch.zeros(1, 3, 255, dtype=torch.float64), ValueError, r"hidden_states must have shape .* got \[1, 3, 255\]"),
    (torch.zeros(0, 3, 256, dtype=torch.float64), ValueError, "hidden_states must have batch ≥ 1 and seq ≥ 1"),
    (torch.zeros(1, 0, 256, dtype=torch.float64), ValueError, "hidden_states must have batch ≥ 1 and seq ≥ 1"),
    (torch.zeros(1, 3, 256, dtype=torch.float32), TypeError, "hidden_states has dtype torch.float32 but"),
    (torch.zeros(1, 3, 256, dtype=torch.int64), TypeError, "hidden_states has dtype torch.int64 but"),
    (torch.zeros(1, 3, 256, dtype=torch.float64, device="meta"), ValueError, "hidden_states is on meta but"),
], ids=["list", "rank-2", "rank-4", "hidden-255", "batch-0", "seq-0", "float32", "int64", "meta-device"])
def test_stage_rejects_bad_hidden_states(stage, bad, error, match):
    with pytest.raises(error, match=match):
        stage(bad)


# ------------------------------------------------------------------ every stage: cache
def foreign_caches(batch: int) -> dict[str, object]:
    """One cache of each kind (and a bare tensor), for batch sequences of 4 tokens, tiny shapes, float64."""
    f64 = torch.float64
    paged = PagedLatentCache(batch, 64, 576, dtype=f64)
    for _ in range(batch):
        paged.allocate()
    return {"MHACache": MHACache(torch.zeros(batch, 8, 4, 128, dtype=f64), torch.zeros(batch, 8, 4, 64, dtype=f64)),
            "LatentCache": LatentCache(torch.zeros(batch, 4, 576, dtype=f64), 512),
            "PagedLatentCache": paged, "Tensor": torch.zeros(batch, 4, 576, dtype=f64)}


#: The cache kinds each stage accepts; every other kind must raise a TypeError naming `cache`.
ACCEPTED_CACHE = {NaiveMHA: "MHACache", LatentMLA: "LatentCache", AbsorbedMLA: "LatentCache",
                  PagedMLA: "PagedLatentCache"}


def test_stage_rejects_a_cache_of_another_kind(stage, hidden_factory, tiny):
    x = hidden_factory(tiny, 2, 3)
    for kind, cache in foreign_caches(2).items():
        if kind == ACCEPTED_CACHE[type(stage)]:
            stage(x, cache)  # the right kind works
            continue
        with pytest.raises(TypeError, match=f"cache must be an? .* got {kind}"):
            stage(x, cache)


def test_stage_rejects_a_cache_of_another_batch(stage, hidden_factory, tiny):
    _, cache = stage(hidden_factory(tiny, 2, 5))
    match = "hidden_states has batch 3 but 2 sequences" if isinstance(stage, PagedMLA) else \
        "cache holds batch 2 but hidden_states has batch 3"
    with pytest.raises(ValueError, match=match):
        stage(hidden_factory(tiny, 3, 1), cache)


def test_paged_stage_rejects_a_cache_of_another_dtype_or_width(tiny, ladder_factory, hidden_factory):
    paged = ladder_factory(tiny)[3]
    x = hidden_factory(tiny, 1, 2)
    for cache in (PagedLatentCache(4, 64, 576, dtype=torch.float32), PagedLatentCache(4, 64, 512, dtype=torch.float64)):
        cache.allocate()
        with pytest.raises(ValueError, match="cache rows must be 576 wide in torch.float64"):
            paged(x, cache)


def test_paged_stage_rejects_unknown_seq_ids(tiny, ladder_factory, hidden_factory):
    paged = ladder_factory(tiny)[3]
    cache = paged.new_cache(2, 64)
    with pytest.raises(KeyError, match="seq_id=5"):
        paged(hidden_factory(tiny, 1, 2), cache, seq_ids=[5])
    with pytest.raises(ValueError, match=r"hidden_states has batch 1 but 2 sequences were given \(seq_ids=\[0, 1\]\)"):
        paged(hidden_factory(tiny, 1, 2), cache, seq_ids=[0, 1])


@pytest.mark.parametrize("stage_cls", STAGES, ids=STAGE_NAMES)
def test_stage_rejects_a_config_or_previous_that_is_not_one(stage_cls):
    with pytest.raises(TypeError, match="config must be an MLAConfig, got dict"):
        stage_cls({"hidden_size": 256})
    with pytest.raises(TypeError, match="previous must be an MLA stage module, got Linear"):
        stage_cls.from_previous(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------ MLAConfig
@pytest.mark.parametrize("field", ["hidden_size", "num_heads", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim",
                                   "page_size", "max_cache_len"])
@pytest.mark.parametrize("value", [0, -4, 64.0, "64"])
def test_config_rejects_a_non_positive_or_non_int_size(field, value):
    with pytest.raises(ValueError, match=f"MLAConfig.{field} must be a positive int, got {value!r}"):
        MLAConfig.tiny(**{field: value})


@pytest.mark.parametrize("value", [0, 63, -64, 64.0])
def test_config_rejects_an_odd_or_non_positive_rope_head_dim(value):
    with pytest.raises(ValueError, match="MLAConfig.qk_rope_head_dim must be a positive even int"):
        MLAConfig.tiny(qk_rope_head_dim=value)


@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_config_rejects_a_bad_q_lora_rank(value):
    with pytest.raises(ValueError, match="MLAConfig.q_lora_rank must be None or a positive int"):
        MLAConfig.tiny(q_lora_rank=value)


def test_config_rejects_an_unknown_rope_type_and_maps_default_to_none():
    with pytest.raises(ValueError, match="MLAConfig.rope_type must be None, 'default' or 'yarn', got 'linear'"):
        MLAConfig.tiny(rope_type="linear")
    assert MLAConfig.tiny(rope_type="default").rope_type is None


def test_config_preset_rejects_an_unknown_name():
    with pytest.raises(ValueError, match=r"unknown config preset 'nope'; expected one of \['deepseek-v2'"):
        MLAConfig.preset("nope")
    assert MLAConfig.preset("DeepSeek_V2_Lite").name == "deepseek-v2-lite"  # case and _ vs - do not matter


def test_config_cache_bytes_rejects_an_unknown_stage():
    with pytest.raises(ValueError, match="stage must be 'mha' or 'latent', got 'paged'"):
        MLAConfig.tiny().cache_bytes_per_token("paged")


# ------------------------------------------------------------------ PagedLatentCache
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_blocks=0), ValueError, "num_blocks must be a positive int, got 0"),
    (dict(page_size=-64), ValueError, "page_size must be a positive int, got -64"),
    (dict(latent_dim=True), ValueError, "latent_dim must be a positive int, got True"),
    (dict(dtype=torch.int32), TypeError, "dtype must be a floating-point torch.dtype"),
])
def test_paged_cache_rejects_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        PagedLatentCache(**(dict(num_blocks=4, page_size=64, latent_dim=576) | kwargs))


def test_paged_cache_append_rejects_bad_kv():
    cache = PagedLatentCache(4, 64, 576, dtype=torch.float64)
    s = cache.allocate()
    with pytest.raises(ValueError, match=r"kv must be a tensor \[batch, tokens, 576\], got \[1, 3, 512\]"):
        cache.append([s], torch.zeros(1, 3, 512, dtype=torch.float64))
    with pytest.raises(ValueError, match="kv has batch 2 but 1 seq_ids were given"):
        cache.append([s], torch.zeros(2, 3, 576, dtype=torch.float64))
    with pytest.raises(TypeError, match="kv must be torch.float64 on cpu like the pool, got torch.float32"):
        cache.append([s], torch.zeros(1, 3, 576))
    assert cache.seq_len(s) == 0 and cache.num_free_blocks == 4


# ------------------------------------------------------------------ paged_mla_attention
def good_paged_inputs() -> dict[str, object]:
    """Valid inputs: 2 requests of 70 and 5 tokens over a 4-page pool, h_q = 3, float64."""
    f64 = torch.float64
    table = torch.tensor([[2, 0], [1, SENTINEL_BLOCK]], dtype=torch.int32)
    return dict(q=torch.randn(2, 1, 3, 576, dtype=f64), k_cache=torch.randn(4, 64, 1, 576, dtype=f64),
                block_table=table, cache_seqlens=torch.tensor([70, 5], dtype=torch.int32), head_dim_v=512)


def test_paged_attention_accepts_the_good_inputs():
    out, lse = paged_mla_attention(**good_paged_inputs())
    assert out.shape == (2, 1, 3, 512) and lse.shape == (2, 3, 1)


@pytest.mark.parametrize("change, error, match", [
    (dict(q=[[0.0]]), TypeError, "q must be a torch.Tensor, got list"),
    (dict(q=torch.zeros(2, 3, 576, dtype=torch.float64)), ValueError, r"q must be \[batch, s_q, h_q, head_dim\]"),
    (dict(k_cache=torch.zeros(4, 64, 2, 576, dtype=torch.float64)), ValueError,
     r"h_q \(q.shape\[2\] = 3\) must be divisible by h_kv \(k_cache.shape\[2\] = 2\)"),
    (dict(k_cache=torch.zeros(4, 64, 1, 512, dtype=torch.float64)), ValueError, r"k_cache must be \[num_blocks"),
    (dict(k_cache=torch.zeros(4, 64, 1, 576)), TypeError, "k_cache dtype torch.float32 differs from q dtype"),
    (dict(k_cache=torch.zeros(4, 64, 1, 576, dtype=torch.float64, device="meta")), ValueError,
     "k_cache is on meta but q is on cpu"),
    (dict(head_dim_v=0), ValueError, "head_dim_v must be in 1..576, got 0"),
    (dict(head_dim_v=577), ValueError, "head_dim_v must be in 1..576, got 577"),
    (dict(block_table=torch.zeros(3, 2, dtype=torch.int32)), ValueError, r"block_table must be \[batch=2, max_blocks"),
    (dict(block_table=torch.zeros(2, dtype=torch.int32)), ValueError, r"block_table must be \[batch=2, max_blocks"),
    (dict(block_table=torch.zeros(2, 2)), TypeError, "block_table must be int32 .* got torch.float32"),
    (dict(cache_seqlens=torch.tensor([70], dtype=torch.int32)), ValueError, r"cache_seqlens must be \[batch=2\]"),
    (dict(cache_seqlens=torch.tensor([70.0, 5.0])), TypeError, "cache_seqlens must be int32 .* got torch.float32"),
    (dict(cache_seqlens=torch.tensor([70, -1], dtype=torch.int32)), ValueError, "cache_seqlens must be ≥ 0"),
    (dict(cache_seqlens=torch.tensor([70, 129], dtype=torch.int32)), ValueError,
     "block_table has 2 columns but a sequence of 129 tokens needs 3 pages"),
    (dict(block_table=torch.tensor([[2, 4], [1, 0]], dtype=torch.int32)), ValueError,
     r"block_table\[0, 1\] = 4 is out of range for a pool of 4 blocks"),
    (dict(block_table=torch.tensor([[2, 0], [-1, 0]], dtype=torch.int32)), ValueError,
     r"block_table\[1, 0\] = -1 is out of range"),
    (dict(block_table=torch.tensor([[2, SENTINEL_BLOCK], [1, 0]], dtype=torch.int32)), ValueError,
     rf"block_table\[0, 1\] = {SENTINEL_BLOCK} is out of range"),
], ids=["q-list", "q-rank-3", "k-cache-heads-not-dividing-h_q", "k-cache-width", "k-cache-dtype", "k-cache-device",
        "head-dim-v-0", "head-dim-v-577", "table-batch", "table-rank-1", "table-float", "seqlens-shape",
        "seqlens-float", "seqlens-negative", "seqlen-past-table", "entry-past-pool", "entry-negative",
        "sentinel-in-a-live-page"])
def test_paged_attention_rejects_bad_inputs(change, error, match):
    with pytest.raises(error, match=match):
        paged_mla_attention(**(good_paged_inputs() | change))
