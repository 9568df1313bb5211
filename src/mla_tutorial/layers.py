"""Pieces every stage shares: RMSNorm, MLA's projections, and a causal softmax-attention helper.

All four torch stages hold the *same* weights (transformers' `DeepseekV3Attention` names, so a checkpoint's
state dict loads directly). They differ only in what they cache and in how attention is computed from it,
so the projections live here once, and each stage file holds only what is new in that stage.

Paper symbol → attribute (DeepSeek-V2 paper, eqs. 9–19):
    W_DQ                q_a_proj            hidden → d'_c               (query down-projection)
    (norm of c_Q)       q_a_layernorm
    W_UQ and W_QR       q_b_proj            d'_c → H·(d_h + d^R_h)      (or q_proj from hidden, V2-Lite)
    W_DKV and W_KR      kv_a_proj_with_mqa  hidden → d_c + d^R_h        (latent c_kv and the shared k_rope)
    (norm of c_KV)      kv_a_layernorm
    W_UK and W_UV       kv_b_proj           d_c → H·(d_h + d_v); viewed [H, d_h + d_v, d_c]
    W_O                 o_proj              H·d_v → hidden
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

from .config import MLAConfig
from .rope import RotaryEmbedding, apply_rope

T = TypeVar("T", bound="MLAProjections")


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019) as in DeepSeek: normalise in at least float32, scale by `weight`."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64
        xc = x.to(compute)
        xc = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xc.to(x.dtype)


def check_hidden_states(hidden_states: object, module: nn.Module, hidden_size: int) -> torch.Tensor:
    """Raise a clear error unless hidden_states is a [batch, seq, hidden] tensor matching the module's weights."""
    if not isinstance(hidden_states, torch.Tensor):
        raise TypeError(f"hidden_states must be a torch.Tensor, got {type(hidden_states).__name__}")
    if hidden_states.dim() != 3 or hidden_states.shape[-1] != hidden_size:
        raise ValueError(f"hidden_states must have shape [batch, seq, {hidden_size}], "
                         f"got {list(hidden_states.shape)}")
    if hidden_states.shape[0] == 0 or hidden_states.shape[1] == 0:
        raise ValueError(f"hidden_states must have batch ≥ 1 and seq ≥ 1, got {list(hidden_states.shape)}")
    weight = next(module.parameters())
    if hidden_states.dtype != weight.dtype:
        raise TypeError(f"hidden_states has dtype {hidden_states.dtype} but the module's weights are "
                        f"{weight.dtype}; convert one of them (module.to(dtype))")
    if hidden_states.device != weight.device:
        raise ValueError(f"hidden_states is on {hidden_states.device} but the module's weights are on "
                         f"{weight.device}")
    return hidden_states


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     start: int | torch.Tensor) -> torch.Tensor:
    """Softmax attention of T new queries over S = start + T keys, bottom-right causal.

    q [B, Hq, T, D], k [B, Hk, S, D], v [B, Hk, S, Dv] with Hk = Hq (MHA) or Hk = 1 (MQA, broadcast).
    Query i sits at position start + i and sees keys 0 … start + i. Scores and softmax in float32 (or
    float64), as DeepSeek's and transformers' eager code do. Returns [B, Hq, T, Dv] in q's dtype.
    `start` may be a tensor [B] on q's device (sequences of different lengths, in a buffer of S ≥ start + T
    rows whose rows past start + T are masked; they must be finite, since 0·NaN is NaN).
    """
    B, Hq, T, _ = q.shape
    S, out_dtype = k.shape[-2], q.dtype
    compute = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    if k.shape[1] == 1 and Hq > 1:
        # MQA: fold the heads into the rows, [B, Hq·T, D] @ [B, D, S]; a broadcast matmul would copy the one
        # shared key tensor once per head.
        scores = torch.bmm(q.flatten(1, 2), k[:, 0].transpose(-1, -2)).unflatten(1, (Hq, T))  # [B, Hq, T, S]
    else:
        scores = torch.matmul(q, k.transpose(-1, -2))  # [B, Hq, T, S]
    scores = scores * scale
    last = start + torch.arange(T, device=q.device) if isinstance(start, int) \
        else start[:, None, None] + torch.arange(T, device=q.device)  # [T] or [B, 1, T]: last key each query sees
    allowed = torch.arange(S, device=q.device) <= last[..., None]  # [T, S] or [B, 1, T, S]
    scores = scores.masked_fill(~allowed, float("-inf"))  # mask broadcast over B and H
    probs = torch.softmax(scores, dim=-1)
    if v.shape[1] == 1 and Hq > 1:
        out = torch.bmm(probs.flatten(1, 2), v[:, 0]).unflatten(1, (Hq, T))  # [B, Hq, T, Dv]
    else:
        out = torch.matmul(probs, v)  # [B, Hq, T, Dv]
    return out.to(out_dtype)


class MLAProjections(nn.Module):
    """MLA's weights and the two projections every stage starts with (query path and latent path)."""

    def __init__(self, config: MLAConfig):
        super().__init__()
        if not isinstance(config, MLAConfig):
            raise TypeError(f"config must be an MLAConfig, got {type(config).__name__}")
        self.config = c = config
        H = c.num_heads
        if c.q_lora_rank is None:  # V2-Lite: one dense query projection
            self.q_proj = nn.Linear(c.hidden_size, H * c.qk_head_dim, bias=False)
        else:  # low-rank query path: hidden → c_Q (d'_c) → per-head queries
            self.q_a_proj = nn.Linear(c.hidden_size, c.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, c.rms_norm_eps)
            self.q_b_proj = nn.Linear(c.q_lora_rank, H * c.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, c.rms_norm_eps)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, H * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        self.o_proj = nn.Linear(H * c.v_head_dim, c.hidden_size, bias=False)
        self.rotary = RotaryEmbedding(c)

    # ------------------------------------------------------------------ building one stage from another
    @classmethod
    def from_previous(cls: type[T], previous: MLAProjections) -> T:
        """This stage with the previous stage's config and weights (same dtype and device)."""
        if not isinstance(previous, MLAProjections):
            raise TypeError(f"previous must be an MLA stage module, got {type(previous).__name__}")
        weight = next(previous.parameters())
        module = cls(previous.config).to(device=weight.device, dtype=weight.dtype)
        module.load_state_dict(previous.state_dict())
        return module.train(previous.training)

    # ------------------------------------------------------------------ the absorbed weights, as views
    @property
    def W_UK(self) -> torch.Tensor:
        """Key up-projection [H, d_h, d_c]: k_nope[h] = W_UK[h] @ c_kv (a view of kv_b_proj.weight)."""
        c = self.config
        w = self.kv_b_proj.weight.view(c.num_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
        return w[:, : c.qk_nope_head_dim]  # [H, d_h, d_c]

    @property
    def W_UV(self) -> torch.Tensor:
        """Value up-projection [H, d_v, d_c]: v[h] = W_UV[h] @ c_kv (a view of kv_b_proj.weight)."""
        c = self.config
        w = self.kv_b_proj.weight.view(c.num_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
        return w[:, c.qk_nope_head_dim :]  # [H, d_v, d_c]

    # ------------------------------------------------------------------ the two input projections
    def project_query(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, hidden], positions [B, T] → q_nope [B, T, H, d_h], q_rope [B, T, H, d^R_h] (rotated)."""
        c = self.config
        if c.q_lora_rank is None:
            q = self.q_proj(x)  # [B, T, H·(d_h + d^R_h)]
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))  # c_Q [B, T, d'_c] → [B, T, H·(d_h+d^R_h)]
        q = q.unflatten(-1, (c.num_heads, c.qk_head_dim))  # [B, T, H, d_h + d^R_h]
        q_nope, q_rope = q.split([c.qk_nope_head_dim, c.qk_rope_head_dim], dim=-1)
        cos, sin = self.rotary(positions, x.dtype)  # [B, T, d^R_h/2] each
        return q_nope, apply_rope(q_rope, cos, sin, c.rope_interleave)

    def project_latent(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, hidden] → c_kv [B, T, d_c] (normalised) and k_rope [B, T, d^R_h] (rotated, shared by heads).

        These two are all MLA needs to cache: d_c + d^R_h = 576 numbers per token for DeepSeek.
        """
        c = self.config
        c_kv, k_rope = self.kv_a_proj_with_mqa(x).split([c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
        cos, sin = self.rotary(positions, x.dtype)
        return self.kv_a_layernorm(c_kv), apply_rope(k_rope, cos, sin, c.rope_interleave)

    def output(self, o: torch.Tensor) -> torch.Tensor:
        """Per-head attention outputs o [B, T, H, d_v] → [B, T, hidden] through W_O."""
        return self.o_proj(o.flatten(-2))  # [B, T, H·d_v] → [B, T, hidden]

    @staticmethod
    def positions(batch: int, start: int, length: int, device: torch.device) -> torch.Tensor:
        """Positions [B, T] = start … start + T − 1 for every row."""
        return (start + torch.arange(length, device=device)).expand(batch, length)

    def cache_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        """Bytes one token adds to this stage's cache, for this layer (weights' dtype unless given)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"config={self.config.name!r}"


def linear_init_(module: nn.Module, std: float = 0.02, seed: int | None = None) -> nn.Module:
    """Re-initialise every Linear weight ~ N(0, std²) and every RMSNorm weight ~ 1 + N(0, 0.1²).

    DeepSeek's own initialisation (std 0.006) makes scores nearly uniform on random inputs; tests and the
    tour use this instead, so that attention is peaked enough for mistakes to show.
    """
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            w = torch.randn(sub.weight.shape, generator=gen, dtype=torch.float64) * std
            with torch.no_grad():
                sub.weight.copy_(w)
        elif isinstance(sub, RMSNorm):
            w = 1 + 0.1 * torch.randn(sub.weight.shape, generator=gen, dtype=torch.float64)
            with torch.no_grad():
                sub.weight.copy_(w)
    return module


__all__ = ["RMSNorm", "MLAProjections", "causal_attention", "check_hidden_states", "linear_init_"]
