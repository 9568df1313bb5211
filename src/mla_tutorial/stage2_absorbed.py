"""Stage 2 — weight absorption: attention runs in the latent space, as MQA over the cache itself.

What changed since stage 1: where W_UK and W_UV are applied. A score is linear in the key, and the key is
W_UK·c_kv, so (DeepSeek-V2 paper, section 2.1.2, "we can absorb W_UK into W_UQ"):

    q_nope[h] · (W_UK[h] c_kv)  =  (W_UK[h]ᵀ q_nope[h]) · c_kv  =  q_latent[h] · c_kv

and the output is linear in the values, so Σ_s p_s (W_UV[h] c_kv_s) = W_UV[h] (Σ_s p_s c_kv_s). The query is
moved into the latent space once per new token (d_h → d_c), attention reads the cached rows [c_kv | k_rope]
directly as keys (576 wide) and their first 512 columns as values, and W_UV is applied once to the 512-wide
attention output. Every head reads the same cached row: multi-query attention with 576-wide keys.

What that buys: per decode step, the cache is read once and nothing of size S·H is built; the W_UK/W_UV work
no longer grows with the context (stage 1 re-expanded S tokens each step). The price: attention FLOPs per
token grow from H·(192 + 128) to H·(576 + 512) per key — cheap next to moving 71× fewer bytes, which is what
decode is limited by. DeepSeek-V3's inference code calls this `attn_impl="absorb"`.
"""

from __future__ import annotations

import torch

from .layers import causal_attention
from .stage1_latent import LatentCache, LatentMLA


class AbsorbedMLA(LatentMLA):
    """Stage 2: same weights and the same LatentCache as stage 1; W_UK folded into q, W_UV after attention."""

    def absorb_query(self, q_nope: torch.Tensor, q_rope: torch.Tensor) -> torch.Tensor:
        """q_nope [B, T, H, d_h], q_rope [B, T, H, d^R_h] → latent query [B, T, H, d_c + d^R_h] (576 wide)."""
        q_latent = torch.einsum("bthd,hdr->bthr", q_nope, self.W_UK)  # [B, T, H, d_c]: W_UK[h]ᵀ q_nope[h]
        return torch.cat([q_latent, q_rope], dim=-1)  # [B, T, H, d_c + d^R_h]

    def unabsorb_output(self, o_latent: torch.Tensor) -> torch.Tensor:
        """Attention output in latent space [B, T, H, d_c] → [B, T, hidden] through W_UV then W_O."""
        o = torch.einsum("bthr,hvr->bthv", o_latent, self.W_UV)  # [B, T, H, d_v]: W_UV[h] o_latent[h]
        return self.output(o)

    def forward(self, hidden_states: torch.Tensor,
                cache: LatentCache | None = None) -> tuple[torch.Tensor, LatentCache]:
        """hidden_states [B, T, hidden] → (output [B, T, hidden], cache holding S = start + T tokens)."""
        x, cache = self._start(hidden_states, cache)
        c = self.config
        B, T, _ = x.shape
        start = cache.length
        positions = self.positions(B, start, T, x.device)  # [B, T]
        q = self.absorb_query(*self.project_query(x, positions))  # NEW: [B, T, H, 576]
        cache = cache.appended(*self.project_latent(x, positions))  # same cache as stage 1: [B, S, 576]

        # NEW: MQA over the cached rows: one 576-wide key and one 512-wide value per token, shared by all heads.
        k = cache.kv[:, None]  # [B, 1, S, 576]
        v = cache.c_kv[:, None]  # [B, 1, S, d_c]
        o_latent = causal_attention(q.transpose(1, 2), k, v, c.softmax_scale, start)  # [B, H, T, d_c]
        return self.unabsorb_output(o_latent.transpose(1, 2)), cache  # [B, T, hidden]
