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

The cache is stage 1's LatentCache, grown by torch.cat: every step copies the whole cache. A serving engine
reserves the room up front instead and writes each new row in place, keeping the lengths on the device:
`StaticLatentCache` (from `new_cache`). Then a decode step allocates nothing whose size depends on the context and
never reads a length back to the host, so it can be captured in a CUDA graph (`mla_tutorial.graphs`). Its price:
attention runs over the whole reserved buffer, with the rows past each length masked. Stage 3 goes further
and commits memory one page at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layers import causal_attention, check_hidden_states
from .stage1_latent import LatentCache, LatentMLA


class CacheFullError(RuntimeError):
    """A cache has too little room for an append (a full page pool, a full StaticLatentCache); nothing was written."""


@dataclass
class StaticLatentCache:
    """Stage 2's cache with its room reserved: rows written in place, lengths kept on the device.

    kv [B, capacity, 576] holds row t of sequence b at kv[b, t]; lengths [B] int32 (on kv's device) says how
    many rows each holds. Rows past a length are never attended to (they are masked); they start as zeros.
    `host_max_length` mirrors the longest length on the host (every call appends the same number of tokens to
    every row), so that the room check needs no sync.
    """

    kv: torch.Tensor  # [B, capacity, d_c + d^R_h]
    lengths: torch.Tensor  # [B] int32
    kv_lora_rank: int  # d_c: where c_kv ends and k_rope begins
    host_max_length: int = 0

    @classmethod
    def empty(cls, batch: int, capacity: int, latent_dim: int, kv_lora_rank: int, dtype: torch.dtype,
              device: torch.device | str) -> StaticLatentCache:
        kv = torch.zeros(batch, capacity, latent_dim, dtype=dtype, device=device)  # [B, capacity, 576]
        return cls(kv, torch.zeros(batch, dtype=torch.int32, device=kv.device), kv_lora_rank)

    @property
    def capacity(self) -> int:
        return self.kv.shape[1]

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def describe(self) -> str:
        return f"{self.kv.shape[-1]} wide in {self.kv.dtype} on {self.kv.device}"

    def write(self, positions: torch.Tensor, rows: torch.Tensor) -> None:
        """Device only: rows [B, T, 576] at positions [B, T] (each sequence's next T); lengths grow by T."""
        B, T, D = rows.shape
        self.kv.scatter_(1, positions[..., None].expand(B, T, D), rows)  # kv[b, positions[b, t]] = rows[b, t]
        self.lengths += T
        self.host_max_length += T

    def state(self) -> dict:
        return {"lengths": self.lengths.clone(), "host_max_length": self.host_max_length}

    def restore(self, state: dict) -> None:
        """Back to `state()` (rows written since stay past the lengths, masked)."""
        self.lengths.copy_(state["lengths"])
        self.host_max_length = state["host_max_length"]


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

    def new_cache(self, batch_size: int, max_seq_len: int | None = None) -> StaticLatentCache:
        """An empty StaticLatentCache with room for `max_seq_len` tokens (config.max_cache_len if None)."""
        weight = next(self.parameters())
        c = self.config
        return StaticLatentCache.empty(batch_size, c.max_cache_len if max_seq_len is None else max_seq_len,
                                       c.latent_dim, c.kv_lora_rank, weight.dtype, weight.device)

    def forward(self, hidden_states: torch.Tensor,
                cache: LatentCache | StaticLatentCache | None = None) -> tuple[torch.Tensor, LatentCache]:
        """hidden_states [B, T, hidden] → (output [B, T, hidden], cache holding S = start + T tokens)."""
        if isinstance(cache, StaticLatentCache):
            return self._forward_in_place(hidden_states, cache)
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

    def _forward_in_place(self, hidden_states: torch.Tensor,
                          cache: StaticLatentCache) -> tuple[torch.Tensor, StaticLatentCache]:
        """The same step over a StaticLatentCache: rows written in place, positions from the device lengths."""
        x = check_hidden_states(hidden_states, self, self.config.hidden_size)
        c = self.config
        B, T, _ = x.shape
        if (cache.kv.shape[-1], cache.kv_lora_rank, cache.kv.dtype, cache.kv.device) != \
                (c.latent_dim, c.kv_lora_rank, x.dtype, x.device):
            raise ValueError(f"cache rows must be {c.latent_dim} wide in {x.dtype} on {x.device} (this "
                             f"{type(self).__name__}, config {c.name!r}), got a cache {cache.describe()}")
        if cache.kv.shape[0] != B:
            raise ValueError(f"cache holds batch {cache.kv.shape[0]} but hidden_states has batch {B}")
        if cache.host_max_length + T > cache.capacity:
            raise CacheFullError(f"StaticLatentCache full: {cache.host_max_length} + {T} tokens exceed its "
                                 f"capacity of {cache.capacity}; make a larger one (new_cache(batch, max_seq_len))")
        positions = cache.lengths[:, None] + torch.arange(T, device=x.device)  # [B, T], on the device
        q = self.absorb_query(*self.project_query(x, positions))  # [B, T, H, 576]
        cache.write(positions, torch.cat(self.project_latent(x, positions), dim=-1))  # in place, [B, T, 576]
        k = cache.kv[:, None]  # [B, 1, capacity, 576]: rows past each length are masked below
        v = cache.kv[:, None, :, : c.kv_lora_rank]  # [B, 1, capacity, d_c]
        o_latent = causal_attention(q.transpose(1, 2), k, v, c.softmax_scale, positions[:, 0])  # [B, H, T, d_c]
        return self.unabsorb_output(o_latent.transpose(1, 2)), cache  # [B, T, hidden]
