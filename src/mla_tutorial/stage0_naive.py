"""Stage 0 — naive multi-head attention with a per-head K/V cache (the baseline).

What this stage is: the MLA model's attention computed and cached the way ordinary multi-head attention is.
Every new token's key and value are expanded for every head (k = [W_UK·c_kv, k_rope], v = W_UV·c_kv) and
stored, per head, in the cache. This is what the first public DeepSeek-V2 code in transformers did, and what
DeepSeek-V3's `attn_impl="naive"` does. It is correct, and it is the yardstick: every later stage must give
the same outputs from the same weights.

What it costs: H·(d_h + d^R_h + d_v) numbers per token per layer: 128·(192 + 128)·2 B = 81,920 B in bf16 for
DeepSeek-V3, so 100k tokens of context take 8 GB per layer. Decoding reads all of that for every new token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layers import MLAProjections, causal_attention, check_hidden_states


@dataclass
class MHACache:
    """Per-head keys [B, H, S, d_h + d^R_h] and values [B, H, S, d_v] of the S tokens seen so far."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def length(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class NaiveMHA(MLAProjections):
    """Stage 0: MLA's weights, used as plain multi-head attention with a per-head K/V cache."""

    def cache_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        dtype = dtype or next(self.parameters()).dtype
        return self.config.cache_bytes_per_token("mha", torch.empty((), dtype=dtype).element_size())

    def forward(self, hidden_states: torch.Tensor, cache: MHACache | None = None) -> tuple[torch.Tensor, MHACache]:
        """hidden_states [B, T, hidden] → (output [B, T, hidden], cache holding S = start + T tokens)."""
        x = check_hidden_states(hidden_states, self, self.config.hidden_size)
        c = self.config
        B, T, _ = x.shape
        if cache is not None and not isinstance(cache, MHACache):
            raise TypeError(f"cache must be an MHACache (from NaiveMHA) or None, got {type(cache).__name__}")
        if cache is not None:
            H, D, Dv = c.num_heads, c.qk_head_dim, c.v_head_dim
            got = (cache.k.shape[1], cache.k.shape[-1], cache.v.shape[-1], cache.k.dtype, cache.k.device)
            if got != (H, D, Dv, x.dtype, x.device) or cache.v.dtype != x.dtype:
                raise ValueError(f"cache must hold {H} heads of {D}-wide keys and {Dv}-wide values in {x.dtype} on "
                                 f"{x.device} (this NaiveMHA, config {c.name!r}), got {got[0]} heads of "
                                 f"{got[1]}-wide keys and {got[2]}-wide values in {cache.k.dtype}/{cache.v.dtype} "
                                 f"on {cache.k.device}")
            if cache.k.shape[0] != B:
                raise ValueError(f"cache holds batch {cache.k.shape[0]} but hidden_states has batch {B}")
        start = 0 if cache is None else cache.length
        positions = self.positions(B, start, T, x.device)  # [B, T]

        q_nope, q_rope = self.project_query(x, positions)  # [B, T, H, d_h], [B, T, H, d^R_h]
        c_kv, k_rope = self.project_latent(x, positions)  # [B, T, d_c], [B, T, d^R_h]
        # Expand the latent into per-head keys and values right away: this is what gets cached.
        kv = self.kv_b_proj(c_kv).unflatten(-1, (c.num_heads, c.qk_nope_head_dim + c.v_head_dim))  # [B,T,H,d_h+d_v]
        k_nope, v = kv.split([c.qk_nope_head_dim, c.v_head_dim], dim=-1)  # [B, T, H, d_h], [B, T, H, d_v]
        k = torch.cat([k_nope, k_rope[:, :, None, :].expand(-1, -1, c.num_heads, -1)], dim=-1)  # [B, T, H, 192]
        q = torch.cat([q_nope, q_rope], dim=-1)  # [B, T, H, d_h + d^R_h]

        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, ·]: the cache layout
        if cache is not None:
            k = torch.cat([cache.k, k], dim=2)  # [B, H, S, d_h + d^R_h]
            v = torch.cat([cache.v, v], dim=2)  # [B, H, S, d_v]
        o = causal_attention(q.transpose(1, 2), k, v, c.softmax_scale, start)  # [B, H, T, d_v]
        return self.output(o.transpose(1, 2)), MHACache(k, v)  # [B, T, hidden]
