"""Our LatentMLA against transformers' own DeepseekV3Attention / DeepseekV2Attention, and checkpoint loading.

Every case builds a tiny random transformers attention in float64, converts it with `mla_tutorial.hf`, and feeds
both the same hidden states: prefill, then token-by-token decode with transformers' DynamicCache against ours.

Tolerances. float64 cannot give 1e-15 here, because transformers computes three things in lower precision
whatever the input dtype: its RMSNorm casts to float32 (`hidden_states.to(torch.float32)`), the eager softmax
runs in float32, and V2's RoPE runs in complex64. Those roundings move the output by ~1e-7 of its size, so the
grid below uses TOL = 1e-6 (relative to the largest output); a wrong RoPE pair, YaRN factor or softmax scale is
off by 1e-2 or more. `test_v3_is_exact_when_transformers_norms_run_in_float64` then swaps in a float64 RMSNorm and
SDPA's float64 softmax and finds 1e-16: nothing else differs. (cos/sin come from float32 angles on both sides.)
"""

from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from safetensors.torch import save_file  # noqa: E402
from transformers import DeepseekV2Config, DeepseekV3Config, DynamicCache  # noqa: E402
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as mv2  # noqa: E402
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as mv3  # noqa: E402

from mla_tutorial import LatentMLA, MLAConfig  # noqa: E402
from mla_tutorial.hf import (  # noqa: E402
    CheckpointMismatchError,
    from_transformers,
    load_attention_state_dict,
    load_safetensors,
    mla_config,
)
from mla_tutorial.rope import rope_inv_freq  # noqa: E402
from mla_tutorial.stage1_latent import LatentCache  # noqa: E402

TOL = 1e-6  # float64 against transformers' float32 RMSNorm / softmax / V2 complex64 RoPE (measured ≤ 1.7e-7)
EXACT = 1e-12  # float64 against transformers with its RMSNorm in float64 and SDPA (measured ~2e-16)

ROPES = {
    "plain": {"rope_type": "default", "rope_theta": 10000.0},
    # mscale ≠ mscale_all_dim, so cos/sin carry a factor ≠ 1 (0.9 → 1.022) as well as the softmax scale.
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
             "beta_fast": 32, "beta_slow": 1, "mscale": 0.9, "mscale_all_dim": 0.75},
}

#: (version, q_lora_rank, rope_interleave, rope): V3 in both layouts; V2 is always interleaved (complex numbers).
CASES = [("v3", q, inter, rope) for q in (24, None) for inter in (True, False) for rope in ROPES] + \
        [("v2", q, True, rope) for q in (24, None) for rope in ROPES]
CASE_IDS = [f"{v}-{'q_lora' if q else 'q_proj'}-{'interleave' if i else 'rotate_half'}-{r}" for v, q, i, r in CASES]


# ------------------------------------------------------------------------------------------------ helpers
def hf_config(version: str = "v3", q_lora_rank: int | None = 24, interleave: bool = True, rope: str | dict = "yarn",
              *, hidden: int = 64, heads: int = 4, kv_lora_rank: int = 32, rope_dim: int = 16, nope: int = 16,
              v_dim: int = 24, layers: int = 1, attn: str = "eager", **extra):
    """A tiny transformers DeepseekV3Config / DeepseekV2Config (dense MLPs, eager attention unless told)."""
    cls = DeepseekV3Config if version == "v3" else DeepseekV2Config
    if version == "v3":
        extra["rope_interleave"] = interleave
    extra.setdefault("max_position_embeddings", 256)  # = 64 · 4, the tiny YaRN's extended context
    config = cls(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=heads, q_lora_rank=q_lora_rank,
                 kv_lora_rank=kv_lora_rank, qk_rope_head_dim=rope_dim, qk_nope_head_dim=nope, v_head_dim=v_dim,
                 rope_parameters=dict(ROPES[rope] if isinstance(rope, str) else rope),
                 num_hidden_layers=layers, first_k_dense_replace=layers,
                 intermediate_size=32, vocab_size=32, **extra)
    config._attn_implementation = attn
    return config


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Linear weights ~ N(0, std²), RMSNorm weights ~ 1 + N(0, 0.1²), so that attention is peaked."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.copy_(1 + 0.1 * noise if "layernorm" in name else std * noise)
    return module


def hf_attention(config, seed: int = 0) -> torch.nn.Module:
    """A random float64 DeepseekV3Attention / DeepseekV2Attention for layer 0."""
    cls = mv3.DeepseekV3Attention if config.model_type == "deepseek_v3" else mv2.DeepseekV2Attention
    return randomize_(cls(config, layer_idx=0).double(), seed)


def hf_rotary(config) -> torch.nn.Module:
    cls = mv3.DeepseekV3RotaryEmbedding if config.model_type == "deepseek_v3" else mv2.DeepseekV2RotaryEmbedding
    return cls(config)


def hf_step(attn, rotary, x: torch.Tensor, cache, start: int) -> torch.Tensor:
    """transformers' attention on x [B, T, hidden] at positions start…start+T−1, as its model calls it."""
    B, T, _ = x.shape
    positions = (start + torch.arange(T))[None].expand(B, T)  # [B, T]
    S = start + T
    future = torch.arange(S)[None, :] > (start + torch.arange(T))[:, None]  # [T, S]: key after query
    mask = torch.zeros(T, S, dtype=x.dtype).masked_fill(future, float("-inf"))[None, None]  # [1, 1, T, S] additive
    out, _ = attn(hidden_states=x, position_embeddings=rotary(x, positions), attention_mask=mask, cache=cache)
    return out  # [B, T, hidden]


def hidden(config, batch: int, length: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, config.hidden_size, generator=gen, dtype=torch.float64)  # [B, T, hidden]


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours − ref| / max |ref|."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def hf_k_rope_layout(k_rope: torch.Tensor, config) -> torch.Tensor:
    """Our cached k_rope [..., d^R_h] in transformers' column order: V3 with rope_interleave writes the rotated
    pairs de-interleaved (evens, then odds); V2 (complex numbers) and rotate-half keep ours."""
    if config.model_type == "deepseek_v3" and config.rope_interleave:
        return torch.cat([k_rope[..., 0::2], k_rope[..., 1::2]], dim=-1)
    return k_rope


# ------------------------------------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "original_max_position_embeddings": 4096,
     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},  # DeepSeek-V3
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "original_max_position_embeddings": 4096,
     "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},  # DeepSeek-V2
    {"rope_type": "yarn", "rope_theta": 50000.0, "factor": 7.3, "original_max_position_embeddings": 256,
     "mscale": 0.9, "mscale_all_dim": 0.75},  # odd factor, cos/sin factor ≠ 1, default betas
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 512,
     "mscale_all_dim": 0.707},  # no mscale: transformers scales cos/sin by 0.1·ln(8) + 1
], ids=["plain", "v3-yarn", "v2-yarn", "odd-yarn", "yarn-without-mscale"])
@pytest.mark.parametrize("rope_dim", [16, 64])
def test_rope_frequencies_and_cos_sin_factor_equal_transformers_bit_for_bit(rope, rope_dim):
    max_pos = int(rope.get("original_max_position_embeddings", 4096) * rope.get("factor", 1))
    config = hf_config("v3", rope=rope, rope_dim=rope_dim, max_position_embeddings=max_pos)
    theirs = hf_rotary(config)
    inv_freq, factor = rope_inv_freq(MLAConfig.from_hf(config))
    assert torch.equal(inv_freq, theirs.inv_freq)
    assert factor == theirs.attention_scaling
    assert MLAConfig.from_hf(config).softmax_scale == hf_attention(config).scaling


@pytest.mark.parametrize("version, q_lora_rank, interleave, rope", CASES, ids=CASE_IDS)
def test_prefill_matches_transformers(version, q_lora_rank, interleave, rope):
    config = hf_config(version, q_lora_rank, interleave, rope)
    attn, rotary = hf_attention(config), hf_rotary(config)
    ours = from_transformers(attn)
    assert ours.config.rope_interleave == interleave
    x = hidden(config, 2, 24)  # [2, 24, hidden]: positions 0…23
    ref = hf_step(attn, rotary, x, None, 0)
    out, cache = ours(x)
    assert rel_err(out, ref) <= TOL
    assert cache.length == 24


@pytest.mark.parametrize("version, q_lora_rank, interleave, rope", CASES, ids=CASE_IDS)
def test_token_by_token_decode_matches_transformers(version, q_lora_rank, interleave, rope):
    config = hf_config(version, q_lora_rank, interleave, rope)
    attn, rotary = hf_attention(config, seed=2), hf_rotary(config)
    ours = from_transformers(attn)
    x = hidden(config, 2, 12, seed=3)  # prefill 5 tokens, then 7 single-token steps
    hf_cache, cache = DynamicCache(), None
    ref = hf_step(attn, rotary, x[:, :5], hf_cache, 0)
    out, cache = ours(x[:, :5], cache)
    assert rel_err(out, ref) <= TOL
    for t in range(5, 12):
        ref = hf_step(attn, rotary, x[:, t : t + 1], hf_cache, t)  # [2, 1, hidden]
        out, cache = ours(x[:, t : t + 1], cache)
        assert rel_err(out, ref) <= TOL, f"decode step at position {t}"
    # Both caches hold the same latent: c_kv [B, S, d_c] and the rotated, shared k_rope [B, S, d^R_h].
    assert rel_err(cache.c_kv, hf_cache.layers[0].keys[:, 0]) <= TOL
    assert rel_err(hf_k_rope_layout(cache.k_rope, config), hf_cache.layers[0].values[:, 0]) <= TOL


@pytest.mark.parametrize("q_lora_rank", [24, None])
@pytest.mark.parametrize("interleave", [True, False])
def test_v3_is_exact_when_transformers_norms_run_in_float64(monkeypatch, interleave, q_lora_rank):
    """With transformers' RMSNorm computing in the input's dtype and SDPA's float64 softmax, we agree to 1e-12:
    the ~1e-7 of the other tests is transformers' float32 arithmetic, not a difference in the computation."""
    def rms_norm_in_input_dtype(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(mv3.DeepseekV3RMSNorm, "forward", rms_norm_in_input_dtype)
    config = hf_config("v3", q_lora_rank, interleave, "yarn", attn="sdpa")
    attn, rotary = hf_attention(config, seed=4), hf_rotary(config)
    ours = from_transformers(attn)
    x = hidden(config, 2, 9, seed=5)
    hf_cache = DynamicCache()
    # SDPA applies its own causal mask when given none and T > 1 (prefill from position 0); decode needs none.
    positions = torch.arange(6)[None].expand(2, 6)
    ref, _ = attn(hidden_states=x[:, :6], position_embeddings=rotary(x, positions), attention_mask=None,
                  cache=hf_cache)
    out, cache = ours(x[:, :6])
    assert rel_err(out, ref) <= EXACT
    for t in range(6, 9):
        pos = torch.full((2, 1), t)
        ref, _ = attn(hidden_states=x[:, t : t + 1], position_embeddings=rotary(x, pos), attention_mask=None,
                      cache=hf_cache)
        out, cache = ours(x[:, t : t + 1], cache)
        assert rel_err(out, ref) <= EXACT


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_real_latent_shapes_at_long_positions_match_transformers(version):
    """DeepSeek's real latent width (d_c 512, d^R_h 64, d_h 128, d_v 128) and YaRN (×40 over 4096, the V3 or V2
    mscales), decoding past the original context: a shared random history of 4,200 latent rows sits in both
    caches, then a 3-token chunk and 2 single tokens at positions 4,200…4,204."""
    mscale = 1.0 if version == "v3" else 0.707
    rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "original_max_position_embeddings": 4096,
            "beta_fast": 32, "beta_slow": 1, "mscale": mscale, "mscale_all_dim": mscale}
    config = hf_config(version, 48 if version == "v3" else None, True, rope, hidden=96, heads=2, kv_lora_rank=512,
                       rope_dim=64, nope=128, v_dim=128, max_position_embeddings=163840)
    attn, rotary = hf_attention(config, seed=6), hf_rotary(config)
    ours = from_transformers(attn)
    m = 0.1 * mscale * math.log(40.0) + 1  # YaRN's m for mscale_all_dim: 1.3689 (V3), 1.2608 (V2)
    assert ours.config.softmax_scale == pytest.approx(192**-0.5 * m * m, rel=1e-12) == attn.scaling
    B, S0 = 2, 4200
    gen = torch.Generator().manual_seed(7)
    c_kv = torch.randn(B, S0, 512, generator=gen, dtype=torch.float64)  # [B, S0, d_c]
    k_rope = torch.randn(B, S0, 64, generator=gen, dtype=torch.float64)  # [B, S0, d^R_h], our column order
    cache = LatentCache(torch.cat([c_kv, k_rope], dim=-1), 512)  # [B, S0, 576]
    hf_cache = DynamicCache()
    hf_cache.update(c_kv[:, None], hf_k_rope_layout(k_rope, config)[:, None], 0)  # [B, 1, S0, ·] each
    x = hidden(config, B, 5, seed=8)
    for start, stop in [(0, 3), (3, 4), (4, 5)]:
        ref = hf_step(attn, rotary, x[:, start:stop], hf_cache, S0 + start)
        out, cache = ours(x[:, start:stop], cache)
        assert rel_err(out, ref) <= TOL, f"tokens {start}:{stop} after {S0} cached"


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_matches_attention_inside_a_transformers_model(version):
    """The whole call path of a real model (position ids from the cache, create_causal_mask, SDPA): a 1-layer
    DeepseekV3Model / DeepseekV2Model prefills and decodes; a hook records its attention's inputs and outputs."""
    config = hf_config(version, 24, True, "yarn", attn="sdpa")
    model_cls = transformers.DeepseekV3Model if version == "v3" else transformers.DeepseekV2Model
    model = model_cls(config).double().eval()
    randomize_(model.layers[0].self_attn, seed=9)
    seen = []
    model.layers[0].self_attn.register_forward_hook(
        lambda module, args, kwargs, output: seen.append((kwargs["hidden_states"], output[0])), with_kwargs=True)
    embeds = hidden(config, 2, 10, seed=10)
    hf_cache = DynamicCache(config=config)
    with torch.no_grad():
        model(inputs_embeds=embeds[:, :6], cache=hf_cache, use_cache=True)
        for t in range(6, 10):
            model(inputs_embeds=embeds[:, t : t + 1], cache=hf_cache, use_cache=True)
    ours, cache = from_transformers(model, layer=0), None
    assert len(seen) == 5
    for x, ref in seen:
        out, cache = ours(x, cache)
        assert rel_err(out, ref) <= TOL


# ------------------------------------------------------------------------------------------------ loading
#: The attention fields of the released config.json files (transformers 4.x style `rope_scaling`).
RELEASE_JSON = {
    "deepseek-v3": {"model_type": "deepseek_v3", "hidden_size": 7168, "num_attention_heads": 128,
                    "q_lora_rank": 1536, "mscale": 1.0},
    "deepseek-v2": {"model_type": "deepseek_v2", "hidden_size": 5120, "num_attention_heads": 128,
                    "q_lora_rank": 1536, "mscale": 0.707},
    "deepseek-v2-lite": {"model_type": "deepseek_v2", "hidden_size": 2048, "num_attention_heads": 16,
                         "q_lora_rank": None, "mscale": 0.707},
}


@pytest.mark.parametrize("preset", list(RELEASE_JSON))
def test_release_config_json_gives_the_preset(preset):
    """A release's config.json, read raw or through transformers' config class, gives our preset."""
    fields = dict(RELEASE_JSON[preset])
    mscale = fields.pop("mscale")
    raw = fields | {"num_key_value_heads": fields["num_attention_heads"], "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                    "qk_rope_head_dim": 64, "v_head_dim": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000,
                    "max_position_embeddings": 163840, "attention_bias": False,
                    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                     "beta_fast": 32, "beta_slow": 1, "mscale": mscale, "mscale_all_dim": mscale}}
    hf_cls = DeepseekV3Config if raw["model_type"] == "deepseek_v3" else DeepseekV2Config
    via_transformers = MLAConfig.from_hf(hf_cls(**{k: v for k, v in raw.items() if k != "model_type"}))
    want = MLAConfig.preset(preset)
    for got in (mla_config(raw), via_transformers):
        assert got.replace(name=want.name) == want
    assert want.softmax_scale == pytest.approx({"deepseek-v3": 0.1352338}.get(preset, 0.1147214), abs=1e-7)


def test_from_transformers_keeps_dtype_device_mode_and_weights():
    attn = hf_attention(hf_config("v3")).to(torch.bfloat16).train()
    ours = from_transformers(attn)
    assert isinstance(ours, LatentMLA) and ours.training
    assert ours.q_b_proj.weight.dtype == torch.bfloat16 and ours.q_b_proj.weight.device == attn.q_b_proj.weight.device
    assert ours.rotary.inv_freq.dtype == torch.float32  # angles stay float32, as in transformers
    for name, tensor in attn.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name
    assert from_transformers(hf_attention(hf_config("v2")).float()).o_proj.weight.dtype == torch.float32


def test_from_transformers_takes_config_values_transformers_uses():
    """eps of the q/kv norms is 1e-6 in transformers whatever rms_norm_eps says; V2 is always interleaved."""
    config = hf_config("v3", rms_norm_eps=1e-2)
    assert from_transformers(hf_attention(config)).kv_a_layernorm.eps == 1e-6
    assert MLAConfig.from_hf(config).rms_norm_eps == 1e-6
    v2 = hf_config("v2", rope="plain")
    assert MLAConfig.from_hf(v2).rope_interleave and MLAConfig.from_hf(v2).rope_type is None


def test_state_dict_with_full_model_names_layer_or_bare_names(tmp_path):
    config = hf_config("v3", layers=2)
    model = transformers.DeepseekV3ForCausalLM(config).double()
    randomize_(model.model.layers[1].self_attn, seed=11)
    state = model.state_dict()  # model.layers.{0,1}.self_attn.*, model.embed_tokens.weight, lm_head.weight, …
    assert "model.layers.1.self_attn.kv_b_proj.weight" in state
    want = from_transformers(model.model.layers[1].self_attn)
    x = hidden(config, 1, 7)
    for got in [load_attention_state_dict(LatentMLA, state, layer=1, config=config),
                load_attention_state_dict(LatentMLA(MLAConfig.from_hf(config)).double(), state, layer=1),
                load_attention_state_dict(LatentMLA, state, prefix="model.layers.1.self_attn", config=config),
                load_attention_state_dict(LatentMLA, model.model.layers[1].state_dict(), config=config),  # self_attn.
                load_attention_state_dict(LatentMLA, model.model.layers[1].self_attn.state_dict(), config=config)]:
        assert got.kv_b_proj.weight.dtype == torch.float64
        assert torch.equal(got(x)[0], want(x)[0])
    with pytest.raises(CheckpointMismatchError, match="2 MLA attentions.*pass layer= or prefix="):
        load_attention_state_dict(LatentMLA, state, config=config)
    with pytest.raises(CheckpointMismatchError, match=r"layer=5.*'model\.layers\.0\.self_attn\.'"):
        load_attention_state_dict(LatentMLA, state, layer=5, config=config)


def test_safetensors_round_trip_single_file_and_sharded(tmp_path):
    """HF attention weights saved under HF names (plus unrelated tensors) load into a LatentMLA that reproduces
    transformers' output; config.json next to the weights is enough; sharded checkpoints read the index."""
    config = hf_config("v2", None, True, "yarn", layers=2)
    attns = [hf_attention(config, seed=12), hf_attention(config, seed=13)]
    tensors = {f"model.layers.{i}.self_attn.{k}": v.contiguous() for i, a in enumerate(attns)
               for k, v in a.state_dict().items()}
    tensors["model.embed_tokens.weight"] = torch.randn(32, 64, dtype=torch.float64)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    config.save_pretrained(tmp_path)  # config.json
    x = hidden(config, 2, 9)
    ref = hf_step(attns[1], hf_rotary(config), x, None, 0)

    loaded = load_safetensors(tmp_path, layer=1)  # config from config.json
    assert loaded.kv_b_proj.weight.dtype == torch.float64 and loaded.config.q_lora_rank is None
    assert rel_err(loaded(x)[0], ref) <= TOL
    explicit = load_safetensors(tmp_path / "model.safetensors", MLAConfig.from_hf(config), layer=1)
    assert torch.equal(explicit(x)[0], loaded(x)[0])
    assert load_safetensors(tmp_path, layer=1, dtype=torch.float32).o_proj.weight.dtype == torch.float32

    shards = tmp_path / "sharded"
    shards.mkdir()
    weight_map = {}
    for i in range(2):
        part = {k: v for k, v in tensors.items() if k.startswith(f"model.layers.{i}.")}
        save_file(part, str(shards / f"model-0000{i + 1}-of-00002.safetensors"))
        weight_map |= dict.fromkeys(part, f"model-0000{i + 1}-of-00002.safetensors")
    (shards / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(shards)
    assert torch.equal(load_safetensors(shards, layer=1)(x)[0], loaded(x)[0])

    bare = tmp_path / "attention.safetensors"  # one attention under bare names: no layer number needed
    save_file({k: v.contiguous() for k, v in attns[0].state_dict().items()}, str(bare))
    ref0 = hf_step(attns[0], hf_rotary(config), x, None, 0)
    assert rel_err(load_safetensors(bare, config)(x)[0], ref0) <= TOL


# ------------------------------------------------------------------------------------------------ errors
def test_errors_name_the_key_and_both_shapes():
    config = hf_config("v3")
    state = {f"model.layers.0.self_attn.{k}": v for k, v in hf_attention(config).state_dict().items()}
    ours = LatentMLA(MLAConfig.from_hf(config)).double()

    missing = {k: v for k, v in state.items() if not k.endswith("kv_b_proj.weight")}
    with pytest.raises(CheckpointMismatchError) as err:
        load_attention_state_dict(ours, missing)
    assert "missing 'model.layers.0.self_attn.kv_b_proj.weight': expected shape [160, 32]" in str(err.value)
    assert "num_heads·(qk_nope_head_dim + v_head_dim), kv_lora_rank" in str(err.value)

    wrong = LatentMLA(MLAConfig.from_hf(config).replace(kv_lora_rank=48)).double()
    with pytest.raises(CheckpointMismatchError) as err:
        load_attention_state_dict(wrong, state)
    message = str(err.value)
    assert "'model.layers.0.self_attn.kv_b_proj.weight' has shape [160, 32], expected [160, 48]" in message
    assert "'model.layers.0.self_attn.kv_a_proj_with_mqa.weight' has shape [48, 64], expected [64, 64]" in message
    assert "kv_lora_rank=48" in message

    extra = state | {"model.layers.0.self_attn.o_proj.bias": torch.zeros(64, dtype=torch.float64),
                     "model.layers.0.self_attn.q_a_proj.weight_scale_inv": torch.ones(1, 1)}
    with pytest.raises(CheckpointMismatchError) as err:
        load_attention_state_dict(ours, extra)
    assert "unexpected 'model.layers.0.self_attn.o_proj.bias' (shape [64])" in str(err.value)
    assert "no biases" in str(err.value) and "FP8" in str(err.value)

    no_lora = LatentMLA(MLAConfig.from_hf(config).replace(q_lora_rank=None)).double()
    with pytest.raises(CheckpointMismatchError, match="q_lora_rank=None"):
        load_attention_state_dict(no_lora, state)

    with pytest.raises(CheckpointMismatchError, match="no key ends with 'kv_a_proj_with_mqa.weight'"):
        load_attention_state_dict(ours, {"model.embed_tokens.weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="config is required"):
        load_attention_state_dict(LatentMLA, state)
    with pytest.raises(TypeError, match="DeepseekV3Attention"):
        from_transformers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="attention_bias=True"):
        from_transformers(hf_attention(hf_config("v3", attention_bias=True)))
