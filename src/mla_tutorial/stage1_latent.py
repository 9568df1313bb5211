"""Stage 1 — latent compression: cache only c_kv and the shared RoPE key (DeepSeek-V2 paper, section 2.1.2).

What changed since stage 0: the cache. Keys and values are low-rank by construction (k_nope = W_UK·c_kv,
v = W_UV·c_kv), so the 512-wide latent c_kv determines them all. Stage 1 caches c_kv and the 64-wide
decoupled RoPE key k_rope, which every head shares (section 2.1.3), and expands per-head keys and values from
the cached latent at every step.

What that buys and costs: the cache shrinks from H·(d_h + d^R_h + d_v) to d_c + d^R_h numbers per token:
81,920 B → 1,152 B per token per layer for DeepSeek-V3 in bf16 (71× smaller). But every decode step now
re-expands the *whole* context through W_UK and W_UV: 2·S·d_c·H·(d_h + d_v) extra FLOPs and an H-times larger
temporary, which makes naive MLA decoding slower than MHA. Stage 2 removes that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layers import MLAProjections, causal_attention, check_hidden_states


@dataclass
class LatentCache:
    """The compressed cache: one row [c_kv | k_rope] of d_c + d^R_h numbers per token, `kv` [B, S, 576].

    Stored side by side because that row is exactly what stage 2 uses as an MQA key (576 wide) whose first
    d_c columns are also the value; stage 3 pages the same rows.
    """

    kv: torch.Tensor  # [B, S, d_c + d^R_h]
    kv_lora_rank: int  # d_c: where c_kv ends and k_rope begins

    @property
    def c_kv(self) -> torch.Tensor:
        return self.kv[..., : self.kv_lora_rank]  # [B, S, d_c]

    @property
    def k_rope(self) -> torch.Tensor:
        return self.kv[..., self.kv_lora_rank :]  # [B, S, d^R_h]

    @property
    def length(self) -> int:
        return self.kv.shape[1]

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def appended(self, c_kv: torch.Tensor, k_rope: torch.Tensor) -> LatentCache:
        """A cache with T more tokens: c_kv [B, T, d_c] and k_rope [B, T, d^R_h]."""
        new = torch.cat([c_kv, k_rope], dim=-1)  # [B, T, d_c + d^R_h]
        return LatentCache(torch.cat([self.kv, new], dim=1), self.kv_lora_rank)  # [B, S + T, 576]


class LatentMLA(MLAProjections):
    """Stage 1: MLA as in the DeepSeek-V2 paper; caches the latent, re-expands K and V every step."""

    def cache_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        dtype = dtype or next(self.parameters()).dtype
        return self.config.cache_bytes_per_token("latent", torch.empty((), dtype=dtype).element_size())

    def _start(self, hidden_states: torch.Tensor, cache: LatentCache | None) -> tuple[torch.Tensor, LatentCache]:
        """Check the inputs; return them with the cache to extend (an empty one when none was given)."""
        x = check_hidden_states(hidden_states, self, self.config.hidden_size)
        B, T, _ = x.shape
        if cache is not None and not isinstance(cache, LatentCache):
            raise TypeError(f"cache must be a LatentCache (from LatentMLA/AbsorbedMLA) or None, "
                            f"got {type(cache).__name__}")
        if cache is not None:
            c = self.config
            if (cache.kv.shape[-1], cache.kv_lora_rank, cache.kv.dtype, cache.kv.device) != \
                    (c.latent_dim, c.kv_lora_rank, x.dtype, x.device):
                raise ValueError(f"cache rows must be {c.latent_dim} wide ({c.kv_lora_rank} latent) in {x.dtype} on "
                                 f"{x.device} (this {type(self).__name__}, config {c.name!r}), got "
                                 f"{cache.kv.shape[-1]} wide ({cache.kv_lora_rank} latent) in {cache.kv.dtype} "
                                 f"on {cache.kv.device}")
            if cache.kv.shape[0] != B:
                raise ValueError(f"cache holds batch {cache.kv.shape[0]} but hidden_states has batch {B}")
        if cache is None:
            empty = x.new_zeros(B, 0, self.config.latent_dim)  # [B, 0, 576]
            cache = LatentCache(empty, self.config.kv_lora_rank)
        return x, cache

    def forward(self, hidden_states: torch.Tensor,
                cache: LatentCache | None = None) -> tuple[torch.Tensor, LatentCache]:
        """hidden_states [B, T, hidden] → (output [B, T, hidden], cache holding S = start + T tokens)."""
        x, cache = self._start(hidden_states, cache)
        c = self.config
        B, T, _ = x.shape
        start = cache.length
        positions = self.positions(B, start, T, x.device)  # [B, T]
        q_nope, q_rope = self.project_query(x, positions)  # [B, T, H, d_h], [B, T, H, d^R_h]
        cache = cache.appended(*self.project_latent(x, positions))  # NEW: only c_kv and k_rope are kept

        # NEW: re-expand the whole cached latent into per-head keys and values, every step.
        kv = self.kv_b_proj(cache.c_kv).unflatten(-1, (c.num_heads, c.qk_nope_head_dim + c.v_head_dim))
        k_nope, v = kv.split([c.qk_nope_head_dim, c.v_head_dim], dim=-1)  # [B, S, H, d_h], [B, S, H, d_v]
        k_rope = cache.k_rope[:, :, None, :].expand(-1, -1, c.num_heads, -1)  # [B, S, H, d^R_h] (shared)
        k = torch.cat([k_nope, k_rope], dim=-1)  # [B, S, H, d_h + d^R_h]
        q = torch.cat([q_nope, q_rope], dim=-1)  # [B, T, H, d_h + d^R_h]
        o = causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), c.softmax_scale, start)
        return self.output(o.transpose(1, 2)), cache  # o [B, H, T, d_v] → [B, T, hidden]
