"""DeepSeek's decoupled RoPE with YaRN frequency scaling, in both memory layouts.

Why "decoupled": RoPE multiplies keys by a position-dependent rotation, which would stop W_UK from being
folded into the query (stage 2). MLA therefore gives each head a small extra query part q_rope and one extra
key part k_rope shared by all heads; only those 64 columns are rotated (DeepSeek-V2 paper, section 2.1.3).

YaRN (arXiv:2309.00071) stretches the context from `original_max_position_embeddings` to `rope_factor` times
that: dimensions that turn fewer than `beta_slow` times over the original context are interpolated (frequency
divided by the factor), dimensions that turn more than `beta_fast` times are kept, a linear ramp joins them.

Two layouts rotate different pairs of coordinates, and a checkpoint only works with the one it was trained in:
- interleaved (`interleave=True`, DeepSeek's own code, transformers V3 with `rope_interleave=True`, V2):
  pairs (x0, x1), (x2, x3), … are rotated, as in a complex-number view of the vector;
- rotate-half (`interleave=False`, Llama style): pairs (x_i, x_{i+d/2}).
Scores depend only on q·k, so a consistent permutation of q and k changes nothing downstream.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .config import MLAConfig, yarn_mscale


def _correction_dim(num_rotations: float, dim: int, base: float, max_pos: int) -> float:
    """The (fractional) dimension index whose frequency turns `num_rotations` times over `max_pos` tokens."""
    return dim * math.log(max_pos / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def rope_inv_freq(config: MLAConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [d^R_h/2] (float32) and the cos/sin scale (YaRN's attention factor, 1 for DeepSeek).

    Computed in float32, as DeepSeek's and transformers' code do, so results match theirs bit for bit.
    """
    dim, base = config.qk_rope_head_dim, config.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)  # [dim/2]: theta^(2i/d)
    inv_freq = 1.0 / pos_freqs  # [dim/2]
    if config.rope_type != "yarn":
        return inv_freq, 1.0
    factor = config.rope_factor
    orig = config.original_max_position_embeddings
    low = max(math.floor(_correction_dim(config.beta_fast, dim, base, orig)), 0)
    high = min(math.ceil(_correction_dim(config.beta_slow, dim, base, orig)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # [dim/2]
    keep = 1.0 - ramp  # 1: keep the original (extrapolated) frequency, 0: interpolate by the factor
    # 1/(factor·θ^(2i/d)), not inv_freq/factor: the two differ by one float32 ulp, and transformers uses this one.
    inv_freq = 1.0 / (factor * pos_freqs) * (1 - keep) + inv_freq * keep
    # transformers' YaRN multiplies cos/sin by mscale(m)/mscale(m_all) (1.0 for every DeepSeek release);
    # the remaining m_all² is folded into MLAConfig.softmax_scale.
    if config.mscale and config.mscale_all_dim:
        attention_factor = yarn_mscale(factor, config.mscale) / yarn_mscale(factor, config.mscale_all_dim)
    else:
        attention_factor = yarn_mscale(factor)
    return inv_freq, attention_factor


class RotaryEmbedding(torch.nn.Module):
    """cos/sin tables for given positions. Holds no learned weights and no state-dict entries."""

    def __init__(self, config: MLAConfig):
        super().__init__()
        inv_freq, self.attention_factor = rope_inv_freq(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [d^R_h/2], float32
        self.interleave = config.rope_interleave

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> RotaryEmbedding:
        """Let `.to(device)` move inv_freq but keep it float32 under `.to(dtype)`, `.double()`, `.half()`.

        Otherwise `module.to(torch.bfloat16)` would round the frequencies to 8 bits (angles off by whole radians
        at long positions) and `.double()` would make angles more precise than transformers' float32 ones.
        """
        inv_freq = self.inv_freq
        super()._apply(fn, recurse)
        self.inv_freq = inv_freq.to(self.inv_freq.device)  # float32 values, new device
        return self

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] (int) → cos, sin [B, T, d^R_h/2] in `dtype`."""
        angles = positions.to(self.inv_freq.device).float()[..., None] * self.inv_freq  # [B, T, d/2] float32
        cos = (angles.cos() * self.attention_factor).to(dtype)
        sin = (angles.sin() * self.attention_factor).to(dtype)
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate the last dimension of x [B, T, ..., d] by the angles behind cos/sin [B, T, d/2].

    Extra dimensions between T and d (heads) broadcast. The output keeps the input's layout.
    """
    while cos.dim() < x.dim():  # [B, T, d/2] → [B, T, 1, …, d/2]
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    if interleave:
        pairs = x.unflatten(-1, (-1, 2))  # [..., d/2, 2]: (x0, x1), (x2, x3), …
        x0, x1 = pairs[..., 0], pairs[..., 1]  # [..., d/2] each
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)  # [..., d/2, 2]
        return out.flatten(-2)  # [..., d]
    half = x.shape[-1] // 2
    x0, x1 = x[..., :half], x[..., half:]  # [..., d/2] each: pairs (x_i, x_{i+d/2})
    return torch.cat((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1)  # [..., d]
