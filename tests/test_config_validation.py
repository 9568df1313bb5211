"""MLAConfig validates every field on construction (issue 7): a bad value is a ValueError naming the field and the
value, raised at once, instead of NaN, ZeroDivisionError or an error from deep inside torch later on.

Presets, `from_hf`, `tiny(...)` overrides and `replace(...)` still work (they all go through the same check).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mla_tutorial import MLAConfig, RotaryEmbedding

SIZES = ["hidden_size", "num_heads", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim", "page_size", "max_cache_len",
         "original_max_position_embeddings", "max_position_embeddings"]


@pytest.mark.parametrize("field", SIZES)
@pytest.mark.parametrize("value", [0, -4, True, False, 64.0, "64", None, 2.5])
def test_sizes_must_be_positive_ints_not_bools(field, value):
    with pytest.raises(ValueError, match=rf"MLAConfig.{field} must be a positive int, got {value!r}"):
        MLAConfig.tiny(**{field: value})


@pytest.mark.parametrize("value", [True, 63, 0, -64, 64.0])
def test_rope_head_dim_must_be_a_positive_even_int(value):
    with pytest.raises(ValueError, match=rf"MLAConfig.qk_rope_head_dim must be a positive even int, got {value!r}"):
        MLAConfig.tiny(qk_rope_head_dim=value)


@pytest.mark.parametrize("value", [True, 0, -1, 1.5])
def test_q_lora_rank_must_be_none_or_a_positive_int(value):
    with pytest.raises(ValueError, match=rf"MLAConfig.q_lora_rank must be None or a positive int, got {value!r}"):
        MLAConfig.tiny(q_lora_rank=value)


@pytest.mark.parametrize("field,value", [
    ("rms_norm_eps", 0.0), ("rms_norm_eps", -1e-6), ("rms_norm_eps", math.nan),
    ("rope_theta", 1.0), ("rope_theta", 0.5), ("rope_theta", -10000.0), ("rope_theta", math.inf),
    ("rope_factor", 0.0), ("rope_factor", -40.0), ("rope_factor", math.nan),
    ("beta_fast", 0.0), ("beta_slow", -1.0), ("beta_slow", 0.0),
    ("mscale", -0.5), ("mscale_all_dim", -1.0), ("mscale", math.inf),
    ("rope_theta", "10000"), ("rms_norm_eps", None), ("rope_factor", True),
])
def test_rope_and_norm_parameters_must_be_in_range(field, value):
    with pytest.raises(ValueError, match=rf"MLAConfig.{field} must be a finite number [≥>] .* got {value!r}"):
        MLAConfig.tiny(**{field: value})


@pytest.mark.parametrize("factor", [1e-300, 0.5])
def test_yarn_factor_below_one_is_refused(factor):
    """Found by the hostile sweep: a YaRN factor of 1e-300 made every RoPE frequency inf or NaN."""
    with pytest.raises(ValueError, match=rf"MLAConfig.rope_factor must be ≥ 1 with YaRN .* got {factor!r}"):
        MLAConfig.tiny(rope_factor=factor)
    assert MLAConfig.tiny(rope_type=None, rope_factor=factor).rope_factor == factor  # unused without YaRN


def test_beta_fast_must_exceed_beta_slow():
    with pytest.raises(ValueError, match=r"MLAConfig.beta_fast must be greater than MLAConfig.beta_slow .* got "
                                         r"beta_fast=1.0 and beta_slow=1.0"):
        MLAConfig.tiny(beta_fast=1.0, beta_slow=1.0)


@pytest.mark.parametrize("field,value", [("rope_interleave", 1), ("rope_interleave", "yes"), ("name", 3)])
def test_flags_and_name_have_their_types(field, value):
    with pytest.raises(ValueError, match=rf"MLAConfig.{field} must be a"):
        MLAConfig.tiny(**{field: value})


def test_replace_is_validated_too():
    with pytest.raises(ValueError, match="MLAConfig.num_heads must be a positive int, got 0"):
        MLAConfig.tiny().replace(num_heads=0)


@pytest.mark.parametrize("name", ["tiny", "deepseek-v2-lite", "deepseek-v2", "deepseek-v3"])
def test_presets_are_valid_and_unchanged(name):
    config = MLAConfig.preset(name)
    expected = {"tiny": 0.11459345915594751, "deepseek-v2-lite": 0.1147213867929261,
                "deepseek-v2": 0.1147213867929261, "deepseek-v3": 0.1352337788608801}[name]
    assert config.softmax_scale == pytest.approx(expected, rel=1e-12)
    assert torch.isfinite(RotaryEmbedding(config).inv_freq).all()


def test_tiny_overrides_and_boundary_values_still_work():
    c = MLAConfig.tiny(num_heads=4, q_lora_rank=None, rope_type=None, rope_factor=0.5, mscale=0.0, max_cache_len=1)
    assert (c.num_heads, c.q_lora_rank, c.rope_type, c.rope_factor, c.mscale) == (4, None, None, 0.5, 0.0)
    assert MLAConfig.tiny(rope_type="default").rope_type is None


def test_numpy_numbers_are_accepted_and_normalised():
    """Configs read with numpy (or from JSON as ints for float fields) come out as plain ints and floats."""
    c = MLAConfig.tiny(num_heads=np.int64(4), rope_theta=10000, rope_factor=np.float32(4.0))
    assert type(c.num_heads) is int and c.num_heads == 4
    assert type(c.rope_theta) is float and type(c.rope_factor) is float and c.rope_factor == 4.0


def test_from_hf_still_builds_and_refuses_bad_fields():
    fields = dict(hidden_size=2048, num_attention_heads=16, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128,
                  qk_rope_head_dim=64, v_head_dim=128, rope_theta=10000.0, max_position_embeddings=163840,
                  model_type="deepseek_v2",
                  rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707})
    config = MLAConfig.from_hf(SimpleNamespace(**fields))
    assert config.softmax_scale == pytest.approx(MLAConfig.deepseek_v2_lite().softmax_scale, rel=1e-12)
    with pytest.raises(ValueError, match="MLAConfig.num_heads must be a positive int, got 0"):
        MLAConfig.from_hf(SimpleNamespace(**(fields | {"num_attention_heads": 0})))
    with pytest.raises(ValueError, match=r"MLAConfig.rope_theta must be a finite number > 1"):
        MLAConfig.from_hf(SimpleNamespace(**(fields | {"rope_theta": 1.0})))
