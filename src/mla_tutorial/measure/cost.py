"""The cost model of a decode step: the bytes it must move and the FLOPs it must compute, and what they cost.

Decoding generates one token per sequence per step. Each step of one attention layer reads the layer's weights
once (shared by the batch) and each sequence's whole cache once, and does little arithmetic per byte: it is
limited by memory bandwidth unless the batch is large or the attention is wide (DeepSeek's 128 heads). So next to
every measured time we put what the step *had* to move and compute, derived from the shapes below, and the
roofline time those numbers imply on a given machine: time ≥ max(bytes / bandwidth, FLOPs / peak FLOP rate).

One decode step of one layer, B sequences, S keys each (the S − 1 cached tokens and the new one); e bytes per
element; d hidden, H heads, d_c = kv_lora_rank (512), d_r = qk_rope_head_dim (64), d_h = qk_nope_head_dim (128),
d_v = v_head_dim (128), D = d_h + d_r (192):

    kind        cache read per token          attention FLOPs per key, per head        kv_b_proj work
    "mha"       H·(D + d_v)·e  (81,920 B)     2·(D + d_v)          (640)               1 token
    "latent"    (d_c + d_r)·e  (1,152 B)      2·(D + d_v)          (640)               S tokens (re-expansion)
    "absorbed"  (d_c + d_r)·e  (1,152 B)      2·(d_c + d_r + d_c)  (2,176)             1 token's worth
    "fp8"       d_c + 4·d_c/128 + 2·d_r       2·(d_c + d_r + d_c)  (2,176)             1 token's worth
                (656 B, whatever e)

(V3 numbers in bf16.) Stage 0 is "mha", stage 1 "latent", stages 2, 3 and 4 "absorbed", stage 5 "fp8": the
absorbed attention over FlashMLA's FP8 rows (512 e4m3 values of c_kv, a float32 scale per 128 of them, k_rope in
bf16; `mla_tutorial.fp8`), dequantized on load, so its FLOPs are stage 4's and only the cache's bytes change
(queries, outputs and weights stay in e). Stage 1 also writes the expanded per-head keys and values out and
reads them back (an unfused implementation has to), which is counted in its bytes. Projections (q, kv_a, kv_b,
o) cost 2 FLOPs per weight per token, and their weights are read once per step. Only matrix products count as
FLOPs (RMSNorm, RoPE, softmax, stage 5's quantization and dequantization and the other elementwise work do not),
so the count equals torch's FLOP counter (`torch.utils.flop_counter`) on the torch stages. The attention-only
numbers (`attention_bytes`, `attention_flops`) follow FlashMLA's benchmark formulas: cache read + queries read
+ outputs written, and 2·H·S·(576 + 512) FLOPs per sequence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..config import MLAConfig

#: Assumed rental price of one GPU for an hour, in US dollars, used for "cost per million tokens". An order of
#: magnitude for an on-demand H100 from a cloud provider (2025 list prices run from about $2 to $4); pass your own.
DEFAULT_USD_PER_GPU_HOUR = 2.50

KINDS = ("mha", "latent", "absorbed", "fp8")

#: Stages whose cache holds FlashMLA's FP8 rows (kind "fp8"); a subclass counts as its stage.
FP8_STAGES = ("FP8MLA",)


@dataclass(frozen=True)
class ModelFacts:
    """What the whole model adds to one attention layer: its layer count and its released weights."""

    layers: int  # attention layers (all MLA)
    parameters: float | None  # every parameter of the released checkpoint (MoE experts included)
    weight_bytes: float | None  # bytes per parameter as released
    source: str


#: Published figures for the presets (the model cards and papers); "tiny" is the tutorial's TinyDecoder.
MODELS = {
    "deepseek-v3": ModelFacts(61, 671e9, 1.0, "DeepSeek-V3 (arXiv:2412.19437): 61 layers, 671B parameters; "
                                              "weights released in FP8 (1 byte per parameter, block scales aside)"),
    "deepseek-v2": ModelFacts(60, 236e9, 2.0, "DeepSeek-V2 (arXiv:2405.04434): 60 layers, 236B parameters, bf16"),
    "deepseek-v2-lite": ModelFacts(27, 15.7e9, 2.0, "DeepSeek-V2-Lite model card: 27 layers, 15.7B parameters, bf16"),
    "tiny": ModelFacts(2, None, None, "the tutorial's TinyDecoder default: 2 layers; only its attention weights"),
}


def model_facts(preset: str) -> ModelFacts:
    if preset not in MODELS:
        raise ValueError(f"no whole-model figures for preset {preset!r}; known: {sorted(MODELS)}")
    return MODELS[preset]


# --------------------------------------------------------------------------------------------- what a stage is
def decode_kind(module: nn.Module) -> str:
    """Which cost model a stage module follows: "mha" (stage 0), "latent" (stage 1), "absorbed" (stages 2–4) or
    "fp8" (stage 5: FP8MLA and its subclasses, found by name so that this module never imports Triton)."""
    from ..stage0_naive import NaiveMHA
    from ..stage1_latent import LatentMLA
    from ..stage2_absorbed import AbsorbedMLA

    if any(cls.__name__ in FP8_STAGES for cls in type(module).__mro__):
        return "fp8"
    if isinstance(module, AbsorbedMLA) or hasattr(module, "absorb_query"):  # PagedMLA and TritonMLA too
        return "absorbed"
    if isinstance(module, LatentMLA):
        return "latent"
    if isinstance(module, NaiveMHA):
        return "mha"
    raise TypeError(f"module must be an MLA stage (NaiveMHA, LatentMLA, AbsorbedMLA, ...), got {type(module).__name__}")


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of a dtype (2 for bf16)."""
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------------------------- analytic cost
def cache_row_bytes(config: MLAConfig, kind: str, element_bytes: int = 2) -> int:
    """Bytes of one token's cache row in one layer: H·(D + d_v)·e ("mha"), (d_c + d_r)·e ("latent", "absorbed"),
    or FlashMLA's FP8 row d_c + 4·⌈d_c/128⌉ + 2·d_r ("fp8": e4m3 values, float32 scales, bf16 RoPE; 656 bytes)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    c = config
    if kind == "mha":
        return c.num_heads * (c.qk_head_dim + c.v_head_dim) * element_bytes
    if kind == "fp8":
        return c.kv_lora_rank + 4 * -(-c.kv_lora_rank // 128) + 2 * c.qk_rope_head_dim
    return (c.kv_lora_rank + c.qk_rope_head_dim) * element_bytes


def weight_count(config: MLAConfig) -> int:
    """Parameters of one MLA attention layer (187,107,328 for DeepSeek-V3), without building it."""
    c, H = config, config.num_heads
    if c.q_lora_rank is None:
        q = c.hidden_size * H * c.qk_head_dim  # q_proj
    else:
        q = c.hidden_size * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * H * c.qk_head_dim  # q_a, norm, q_b
    kv_a = c.hidden_size * c.latent_dim + c.kv_lora_rank  # kv_a_proj_with_mqa and kv_a_layernorm
    kv_b = c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim)
    o = H * c.v_head_dim * c.hidden_size
    return q + kv_a + kv_b + o


@dataclass(frozen=True)
class StepCost:
    """What one decode step of one layer must compute and move (see the module docstring for the formulas)."""

    kind: str
    batch: int
    context: int  # S: keys each new token attends to
    attention_flops: int  # QKᵀ and P·V
    projection_flops: int  # q, kv_a, kv_b (or W_UK/W_UV), o
    cache_bytes: int  # cache rows read, plus the new rows written
    expansion_bytes: int  # stage 1 only: per-head K/V built from the latent, written and read back
    weight_bytes: int  # every weight of the layer, read once per step
    activation_bytes: int  # hidden states in and out, per-head queries and attention outputs
    attention_bytes: int  # FlashMLA's definition: cache read + queries read + outputs written

    @property
    def flops(self) -> int:
        return self.attention_flops + self.projection_flops

    @property
    def bytes(self) -> int:
        return self.cache_bytes + self.expansion_bytes + self.weight_bytes + self.activation_bytes

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved: below the machine's FLOP-rate / bandwidth ratio the step is memory-bound."""
        return self.flops / self.bytes

    def roofline_seconds(self, bytes_per_s: float, flops_per_s: float) -> float:
        """The least time this step can take on a machine with these ceilings."""
        return max(self.bytes / bytes_per_s, self.flops / flops_per_s)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"flops": self.flops, "bytes": self.bytes, "intensity": self.intensity}


def decode_step_cost(config: MLAConfig, kind: str, context: int, batch: int = 1,
                     element_bytes: int = 2) -> StepCost:
    """The analytic cost of one decode step: `batch` sequences each add one token and attend to `context` keys."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    for name, value in (("context", context), ("batch", batch), ("element_bytes", element_bytes)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    c, H, B, S, e = config, config.num_heads, batch, context, element_bytes
    d_c, d_r, d_h, d_v, D = c.kv_lora_rank, c.qk_rope_head_dim, c.qk_nope_head_dim, c.v_head_dim, c.qk_head_dim

    norms = c.kv_lora_rank + (c.q_lora_rank or 0)  # RMSNorm weights: elementwise, not counted as FLOPs
    dense = weight_count(c) - c.kv_lora_rank * H * (d_h + d_v) - norms  # every matrix but kv_b_proj's
    kv_b_per_token = 2 * d_c * H * (d_h + d_v)  # FLOPs to push one token through kv_b_proj (or W_UK and W_UV)
    projection = B * 2 * dense + B * kv_b_per_token * (S if kind == "latent" else 1)

    row = cache_row_bytes(c, kind, e)  # one token's per-head K and V, latent row [c_kv | k_rope], or its FP8 form
    if kind in ("mha", "latent"):  # per-head attention over keys of D and values of d_v
        attention = B * 2 * H * S * (D + d_v)
        q_and_o = B * H * (D + d_v) * e
    else:  # "absorbed", "fp8": MQA over the 576-wide latent rows (stage 5's dequantized on load), 512-wide outputs
        attention = B * 2 * H * S * (d_c + d_r + d_c)
        q_and_o = B * H * (d_c + d_r + d_c) * e
    cache = B * S * row + B * row  # read S rows (the new one included), write the new one
    expansion = 2 * B * S * H * (D + d_v) * e if kind == "latent" else 0
    return StepCost(kind=kind, batch=B, context=S, attention_flops=attention, projection_flops=projection,
                    cache_bytes=cache, expansion_bytes=expansion, weight_bytes=weight_count(c) * e,
                    activation_bytes=2 * B * c.hidden_size * e + q_and_o, attention_bytes=B * S * row + q_and_o)


#: How each stage holds its cache and computes attention, for the memory estimate: (grows by torch.cat, attention).
STAGE_MEMORY = {"NaiveMHA": ("concat", "torch"), "LatentMLA": ("concat", "expand"),
                "AbsorbedMLA": ("in-place", "torch"), "PagedMLA": ("in-place", "gather"),
                "TritonMLA": ("in-place", "kernel"), "FP8MLA": ("in-place", "kernel")}


def estimate_step_memory(config: MLAConfig, stage: str | type, context: int, batch: int = 1,
                         element_bytes: int = 2) -> int:
    """A rough upper bound on the bytes one decode step of a stage holds at its peak: weights, cache, temporaries.

    `stage` is a stage class or its name (NaiveMHA … FP8MLA; a subclass counts as its stage). Used only to
    skip shapes that cannot fit (and say by how much). Stages 0 and 1 grow the cache with torch.cat, so it
    exists twice; stage 1 also builds the expanded keys and values; the torch attentions (stages 0–3) make
    float32 copies of what they read, and stage 3 first gathers the pages into a contiguous copy; the kernel
    (stages 4 and 5) reads the pages where they are; stage 5's rows are 656 bytes whatever e.
    """
    if isinstance(stage, type):
        stage = next((c.__name__ for c in stage.__mro__ if c.__name__ in STAGE_MEMORY), stage.__name__)
    if stage not in STAGE_MEMORY:
        raise ValueError(f"stage must be one of {sorted(STAGE_MEMORY)}, got {stage!r}")
    growth, attention = STAGE_MEMORY[stage]
    c, H, B, S, e = config, config.num_heads, batch, context, element_bytes
    per_head_row = H * (c.qk_head_dim + c.v_head_dim)  # numbers per token of the per-head K and V
    latent_row = c.latent_dim
    row_bytes = cache_row_bytes(c, "fp8" if stage in FP8_STAGES else "latent", e)  # one cached token, paged stages
    if stage == "NaiveMHA":
        cache, work = B * S * per_head_row * e, B * S * per_head_row * 4
    elif stage == "LatentMLA":
        cache, work = B * S * latent_row * e, B * S * per_head_row * (2 * e + 4)
    else:
        cache = B * (S + 64) * row_bytes  # room for the context and one page more
        work = {"torch": B * S * (latent_row + c.kv_lora_rank) * 4,
                "gather": B * S * (latent_row * e + (latent_row + c.kv_lora_rank) * 4),
                "kernel": 0}[attention]
    scores = 2 * B * H * S * 4 if attention != "kernel" else 0  # float32 scores and probabilities
    return (2 if growth == "concat" else 1) * cache + work + scores + weight_count(c) * e


# --------------------------------------------------------------------------------------------- throughput and price
def tokens_per_second(batch: int, seconds_per_step: float) -> float:
    """Decode throughput: every step produces one token for each of `batch` sequences."""
    return batch / seconds_per_step


def cost_per_million_tokens(tokens_per_s: float, usd_per_gpu_hour: float = DEFAULT_USD_PER_GPU_HOUR) -> float:
    """US dollars to produce a million tokens at this throughput on a GPU rented at `usd_per_gpu_hour`.

    For one attention layer, this is that layer's share only; a whole model multiplies by its layers (61 for V3)
    and adds the feed-forward (MoE) work.
    """
    return usd_per_gpu_hour / 3600.0 * 1e6 / tokens_per_s


__all__ = ["DEFAULT_USD_PER_GPU_HOUR", "FP8_STAGES", "KINDS", "MODELS", "ModelFacts", "STAGE_MEMORY", "StepCost",
           "cache_row_bytes", "cost_per_million_tokens", "decode_kind", "decode_step_cost", "element_size",
           "estimate_step_memory", "model_facts", "tokens_per_second", "weight_count"]
