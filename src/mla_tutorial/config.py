"""`MLAConfig`: every shape and constant of one MLA attention layer, with DeepSeek presets.

Names follow the DeepSeek-V2 paper (arXiv:2405.04434, section 2.1) and, where they differ, the
Hugging Face `DeepseekV3Config` field names, so `MLAConfig.from_hf(hf_config)` is a field-by-field copy.

    paper symbol     field                 DeepSeek-V3 value
    d                hidden_size           7168
    n_h              num_heads             128
    d'_c             q_lora_rank           1536   (None: plain q_proj, as in V2-Lite)
    d_c              kv_lora_rank          512    (the width of the cached latent c_kv)
    d_h              qk_nope_head_dim      128    (per-head key/query part without RoPE)
    d^R_h            qk_rope_head_dim      64     (decoupled RoPE part, one key shared by all heads)
    d_h (values)     v_head_dim            128
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace
from typing import Any


def _is_int(value: Any) -> bool:
    """An int that is not a bool (True is an int in Python; as a size it is a mistake)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> int:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"MLAConfig.{name} must be a positive int, got {value!r}")
    return int(value)


def _set(config: Any, name: str, value: Any) -> None:
    """Store a normalised value (numpy ints become ints, ints given for float fields become floats)."""
    object.__setattr__(config, name, value)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature correction m = 0.1·mscale·ln(factor) + 1 (1 when factor ≤ 1).

    DeepSeek's code calls this `yarn_get_mscale`; YaRN paper (arXiv:2309.00071) eq. 22.
    """
    if factor <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


@dataclass
class MLAConfig:
    """Shapes and constants of one MLA attention layer.

    The defaults are DeepSeek-V3's (HF `DeepseekV3Config` defaults); use the presets below.
    """

    hidden_size: int = 7168  # d: model width (V3: 7168, V2: 5120, V2-Lite: 2048)
    num_heads: int = 128  # n_h: attention heads (128 for V2/V3; 16 for V2-Lite)
    q_lora_rank: int | None = 1536  # d'_c: query compression rank; None = plain q_proj (V2-Lite)
    kv_lora_rank: int = 512  # d_c: width of the cached latent c_kv (4·d_h in the paper)
    qk_nope_head_dim: int = 128  # d_h: per-head query/key width without position information
    qk_rope_head_dim: int = 64  # d^R_h: decoupled RoPE width (d_h / 2 in the paper)
    v_head_dim: int = 128  # per-head value width
    rms_norm_eps: float = 1e-6  # epsilon of the RMSNorms on c_q and c_kv (HF default)
    rope_theta: float = 10000.0  # RoPE base (all DeepSeek releases)
    rope_interleave: bool = True  # True: RoPE rotates pairs (x0,x1),(x2,x3)… as DeepSeek's checkpoints
    #                               expect; False: rotate-half layout (x_i, x_{i+d/2})
    # YaRN context extension (arXiv:2309.00071); rope_type None means plain RoPE.
    rope_type: str | None = "yarn"
    rope_factor: float = 40.0  # s: context extension factor (4k → 160k)
    original_max_position_embeddings: int = 4096  # context length the model was pre-trained with
    beta_fast: float = 32.0  # YaRN ramp: dims rotating more than beta_fast times keep their frequency
    beta_slow: float = 1.0  # YaRN ramp: dims rotating fewer than beta_slow times are interpolated by s
    mscale: float = 1.0  # YaRN mscale for cos/sin (V3 1.0; V2 0.707)
    mscale_all_dim: float = 1.0  # YaRN mscale folded into the softmax scale (V3 1.0; V2 0.707)
    max_position_embeddings: int = 163840  # 4096 · 40
    page_size: int = 64  # tokens per page of the paged latent cache (FlashMLA's block size)
    max_cache_len: int = 4096  # capacity per sequence when a stage creates its own paged cache
    name: str = "deepseek-v3"  # label used in the tour's output

    # ---------------------------------------------------------------- derived sizes
    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width seen by the softmax: d_h + d^R_h (192 for DeepSeek)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        """Width of one cached latent row: c_kv and k_rope side by side (576 for DeepSeek)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """1/sqrt(d_h + d^R_h), times YaRN's m² when YaRN is on (0.1352338 for V3, 0.1147214 for V2).

        Both query and key carry one factor m (cos/sin are scaled by mscale/mscale_all_dim, which is 1 for
        every DeepSeek release), so DeepSeek folds m² into the scale instead.
        """
        scale = self.qk_head_dim**-0.5
        if self.rope_type == "yarn" and self.mscale_all_dim:
            m = yarn_mscale(self.rope_factor, self.mscale_all_dim)
            scale = scale * m * m
        return scale

    def cache_bytes_per_token(self, stage: str, element_size: int = 2) -> int:
        """Bytes one token adds to one layer's cache.

        "mha": every head keeps its own key (d_h + d^R_h) and value (v_head_dim): 128·320·2 = 81,920 B (V3, bf16).
        "latent": one c_kv row and one shared k_rope row: 576·2 = 1,152 B (V3, bf16).
        """
        if stage == "mha":
            return self.num_heads * (self.qk_head_dim + self.v_head_dim) * element_size
        if stage == "latent":
            return self.latent_dim * element_size
        raise ValueError(f"stage must be 'mha' or 'latent', got {stage!r}")

    def __post_init__(self) -> None:
        """Refuse values that would give NaN, ZeroDivisionError or an error from deep inside torch later on.

        Sizes are positive ints (not bools, not floats); the RoPE/YaRN parameters are finite and in range; errors
        name the field and the value.
        """
        for name in ("hidden_size", "num_heads", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim",
                     "page_size", "max_cache_len", "original_max_position_embeddings", "max_position_embeddings"):
            _set(self, name, _positive_int(name, getattr(self, name)))
        rope_dim = self.qk_rope_head_dim
        if not _is_int(rope_dim) or rope_dim <= 0 or rope_dim % 2:
            raise ValueError(f"MLAConfig.qk_rope_head_dim must be a positive even int, got {rope_dim!r}")
        _set(self, "qk_rope_head_dim", int(rope_dim))
        if self.q_lora_rank is not None:
            if not _is_int(self.q_lora_rank) or self.q_lora_rank <= 0:
                raise ValueError(f"MLAConfig.q_lora_rank must be None or a positive int, got {self.q_lora_rank!r}")
            _set(self, "q_lora_rank", int(self.q_lora_rank))
        if self.rope_type not in (None, "default", "yarn"):
            raise ValueError(f"MLAConfig.rope_type must be None, 'default' or 'yarn', got {self.rope_type!r}")
        if self.rope_type == "default":
            self.rope_type = None
        # name: (lowest allowed, whether the lowest itself is allowed, why)
        ranges = {
            "rms_norm_eps": (0.0, False, "RMSNorm divides by sqrt(mean(x²) + eps)"),
            "rope_theta": (1.0, False, "RoPE frequencies are theta^(-2i/d); theta ≤ 1 does not rotate or divides by 0"),
            "rope_factor": (0.0, False, "YaRN divides frequencies by the factor"),
            "beta_fast": (0.0, False, "YaRN's ramp takes log(positions / beta)"),
            "beta_slow": (0.0, False, "YaRN's ramp takes log(positions / beta)"),
            "mscale": (0.0, True, "0 means absent"),
            "mscale_all_dim": (0.0, True, "0 means absent"),
        }
        for name, (low, inclusive, why) in ranges.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value < low or (value == low and not inclusive):
                bound = f"≥ {low:g}" if inclusive else f"> {low:g}"
                raise ValueError(f"MLAConfig.{name} must be a finite number {bound} ({why}), got {value!r}")
            _set(self, name, float(value))
        if self.rope_type == "yarn" and self.rope_factor < 1:
            raise ValueError(f"MLAConfig.rope_factor must be ≥ 1 with YaRN (it extends the trained context by that "
                             f"factor; below 1 its frequency ramp divides by ~0), got {self.rope_factor!r}")
        if self.beta_fast <= self.beta_slow:
            raise ValueError(f"MLAConfig.beta_fast must be greater than MLAConfig.beta_slow (YaRN keeps dims rotating "
                             f"more than beta_fast times, interpolates those below beta_slow), got "
                             f"beta_fast={self.beta_fast!r} and beta_slow={self.beta_slow!r}")
        if not isinstance(self.rope_interleave, bool):
            raise ValueError(f"MLAConfig.rope_interleave must be a bool, got {self.rope_interleave!r}")
        if not isinstance(self.name, str):
            raise ValueError(f"MLAConfig.name must be a str, got {self.name!r}")

    # ---------------------------------------------------------------- presets
    @classmethod
    def tiny(cls, **overrides: Any) -> MLAConfig:
        """A config that runs in seconds on a laptop CPU but keeps DeepSeek's latent shapes.

        kv_lora_rank 512 and qk_rope_head_dim 64 are kept so the cache rows are 576 wide, as on the real model
        (the Triton kernel is written for that width); heads and head dims shrink. 8 heads × (64+64+64) = 1,536
        values per token for the per-head cache against 576 for the latent one, so the saving is visible.
        YaRN stays on (factor 4 over 256 positions) so every code path runs.
        """
        base = dict(hidden_size=256, num_heads=8, q_lora_rank=96, kv_lora_rank=512, qk_nope_head_dim=64,
                    qk_rope_head_dim=64, v_head_dim=64, rope_type="yarn", rope_factor=4.0,
                    original_max_position_embeddings=256, max_position_embeddings=1024, mscale=1.0,
                    mscale_all_dim=1.0, max_cache_len=1024, name="tiny")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def deepseek_v3(cls, **overrides: Any) -> MLAConfig:
        """DeepSeek-V3 / R1 (671B) attention: 7168 wide, 128 heads, q_lora_rank 1536, YaRN ×40, mscale 1.0."""
        return cls(**overrides)

    @classmethod
    def deepseek_v2(cls, **overrides: Any) -> MLAConfig:
        """DeepSeek-V2 (236B) attention: 5120 wide, 128 heads, q_lora_rank 1536, YaRN ×40, mscale 0.707."""
        base = dict(hidden_size=5120, mscale=0.707, mscale_all_dim=0.707, name="deepseek-v2")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def deepseek_v2_lite(cls, **overrides: Any) -> MLAConfig:
        """DeepSeek-V2-Lite (16B) attention: 2048 wide, 16 heads, no query compression, mscale 0.707."""
        base = dict(hidden_size=2048, num_heads=16, q_lora_rank=None, mscale=0.707, mscale_all_dim=0.707,
                    name="deepseek-v2-lite")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MLAConfig:
        """Look a preset up by name: 'tiny', 'deepseek-v2-lite', 'deepseek-v2', 'deepseek-v3'."""
        presets = {"tiny": cls.tiny, "deepseek-v2-lite": cls.deepseek_v2_lite, "deepseek-v2": cls.deepseek_v2,
                   "deepseek-v3": cls.deepseek_v3}
        key = name.lower().replace("_", "-")
        if key not in presets:
            raise ValueError(f"unknown config preset {name!r}; expected one of {sorted(presets)}")
        return presets[key](**overrides)

    @classmethod
    def from_hf(cls, hf_config: Any) -> MLAConfig:
        """Build from a transformers `DeepseekV2Config` / `DeepseekV3Config` (or any object with those fields).

        Reads `rope_scaling` (transformers 4.x) or `rope_parameters` (transformers 5.x) for YaRN. Follows what
        transformers' attention does, which differs from a plain field copy in four places: the q/kv RMSNorms use
        eps 1e-6 whatever `rms_norm_eps` says; DeepseekV2 always rotates interleaved pairs; a YaRN `factor` of None
        means max_position_embeddings / original_max_position_embeddings; and a missing `mscale` makes the cos/sin
        factor 0.1·ln(factor) + 1 (stored here as mscale = 0).
        """
        get = lambda key, default=None: getattr(hf_config, key, default)
        rope = get("rope_parameters") or get("rope_scaling") or {}
        rope = dict(rope)
        rope_type = rope.get("rope_type", rope.get("type"))
        if rope_type in (None, "default"):
            rope_type = None
        elif rope_type != "yarn":
            raise ValueError(f"hf_config has rope_type {rope_type!r}; only plain RoPE and 'yarn' are supported")
        if rope_type == "yarn" and (rope.get("attention_factor") is not None or rope.get("truncate") is False):
            raise ValueError(f"hf_config's YaRN sets attention_factor={rope.get('attention_factor')!r} or "
                             f"truncate={rope.get('truncate')!r}; MLAConfig supports neither (DeepSeek uses none)")
        theta = rope.get("rope_theta", get("rope_theta", 10000.0))
        max_pos = get("max_position_embeddings", 163840)
        kwargs = dict(
            hidden_size=get("hidden_size"),
            num_heads=get("num_attention_heads"),
            q_lora_rank=get("q_lora_rank"),
            kv_lora_rank=get("kv_lora_rank"),
            qk_nope_head_dim=get("qk_nope_head_dim"),
            qk_rope_head_dim=get("qk_rope_head_dim"),
            v_head_dim=get("v_head_dim"),
            # transformers (like DeepSeek's code) builds q_a_layernorm and kv_a_layernorm with the default eps 1e-6;
            # config.rms_norm_eps only reaches the decoder-layer norms.
            rms_norm_eps=1e-6,
            rope_theta=float(theta),
            # DeepseekV2 in transformers always uses the interleaved (complex-number) layout.
            rope_interleave=get("model_type") == "deepseek_v2" or bool(get("rope_interleave", True)),
            rope_type=rope_type,
            max_position_embeddings=max_pos,
            name=str(get("model_type", "hf")),
        )
        if rope_type == "yarn":
            orig = int(rope.get("original_max_position_embeddings", get("original_max_position_embeddings", 4096)))
            kwargs.update(
                rope_factor=float(rope.get("factor") or max_pos / orig),  # transformers' fallback for factor None
                original_max_position_embeddings=orig,
                beta_fast=float(rope.get("beta_fast") or 32.0),
                beta_slow=float(rope.get("beta_slow") or 1.0),
                mscale=float(rope.get("mscale") or 0.0),  # 0 = absent: cos/sin then scale by yarn_mscale(factor)
                mscale_all_dim=float(rope.get("mscale_all_dim") or 0.0),
            )
        missing = [k for k, v in kwargs.items() if v is None and k not in ("q_lora_rank", "rope_type")]
        if missing:
            raise ValueError(f"hf_config lacks the fields {missing}; is it a DeepseekV2/V3 config?")
        return cls(**kwargs)

    def replace(self, **changes: Any) -> MLAConfig:
        """A copy with some fields changed (dataclasses.replace)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"softmax_scale": self.softmax_scale}


__all__ = ["MLAConfig", "yarn_mscale"]
