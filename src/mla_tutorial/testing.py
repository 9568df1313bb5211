"""Hostile inputs for the paged-decode contract (FlashMLA's recipe): the one generator of tests, benchmarks, notebooks.

What makes them hostile (deepseek-ai/FlashMLA's tests do the same):
- pages are handed out in a random permutation, so consecutive pages of a request are far apart in the pool;
- every cache slot that holds no key is NaN: whole spare pages and the tail of each request's last page, so one
  slot read past a length, or a masked score multiplied by an unmasked NaN value, shows up as NaN in the output;
- block-table entries past each request's pages are huge sentinel-like ids (SENTINEL_BLOCK, SENTINEL_BLOCK − 7919,
  …, never a valid page), so following one reads far outside the pool;
- lengths vary (`normal_lengths`: Normal(s_k, s_k / 2) clipped at ≥ s_q, optionally with empty requests), and
  may sit on page boundaries (63, 64, 65) or be 0.

Everything is seeded: the same arguments give the same tensors on the same device. Block tables and the NaN mask
are built on the CPU (small); the cache and the queries are drawn directly on `device` in `dtype`, so benchmark
shapes (b = 128, s_k = 32k: a 4.8 GB bf16 pool) need no host copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from .contract import D_QK, PAGE_SIZE, SENTINEL_BLOCK

#: Step between the sentinel-like ids of one block-table row (a prime, so no two rows collide).
SENTINEL_STRIDE = 7919


class PagedInputs(NamedTuple):
    """The four tensors of a paged decode call (unpacks as q, k_cache, block_table, cache_seqlens)."""

    q: torch.Tensor  # [b, s_q, h_q, head_dim]
    k_cache: torch.Tensor  # [num_blocks, page_size, h_kv, head_dim]
    block_table: torch.Tensor  # [b, max_blocks] int32
    cache_seqlens: torch.Tensor  # [b] int32


def normal_lengths(b: int, mean: float, s_q: int = 1, seed: int = 0, *, num_empty: int = 0) -> list[int]:
    """b lengths ~ Normal(mean, mean / 2), rounded and clipped at ≥ s_q (FlashMLA's variable-length recipe);
    `num_empty` of them (chosen at random) set to 0."""
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"b must be a positive int, got {b!r}")
    if not 0 <= num_empty <= b:
        raise ValueError(f"num_empty must be in 0..{b}, got {num_empty!r}")
    gen = torch.Generator().manual_seed(seed)
    lens = torch.normal(float(mean), mean / 2, (b,), generator=gen).round().clamp(min=s_q)
    if num_empty:
        lens[torch.randperm(b, generator=gen)[:num_empty]] = 0
    return [int(x) for x in lens]


def make_paged_inputs(seqlens: Sequence[int] | torch.Tensor, s_q: int = 1, h_q: int = 16, h_kv: int = 1,
                      dtype: torch.dtype = torch.bfloat16, *, device: torch.device | str = "cpu", seed: int = 0,
                      page_size: int = PAGE_SIZE, head_dim: int = D_QK, spare_blocks: int = 3,
                      spare_cols: int = 1) -> PagedInputs:
    """q, k_cache, block_table, cache_seqlens for requests of the given lengths, FlashMLA's hostile recipe.

    seqlens: one length per request (b = len(seqlens) ≥ 1), each ≥ 0. The pool has ⌈len / page⌉ pages per
    request plus `spare_blocks` pages nobody owns (all NaN); the table has `spare_cols` columns more than the
    longest request needs, so every row ends in sentinel-like ids. q and the live cache rows are N(0, 1).
    """
    lengths = torch.as_tensor(seqlens, dtype=torch.int64).cpu()
    if lengths.dim() != 1 or lengths.numel() < 1:
        raise ValueError(f"seqlens must be a non-empty list of lengths, got shape {list(lengths.shape)}")
    if (lengths < 0).any() or (lengths > 2**31 - 1).any():
        raise ValueError(f"seqlens must be in 0..2^31-1 (int32), got {lengths.tolist()}")
    for name, value, low in (("s_q", s_q, 1), ("h_q", h_q, 1), ("h_kv", h_kv, 1), ("page_size", page_size, 1),
                             ("head_dim", head_dim, 1), ("spare_blocks", spare_blocks, 0),
                             ("spare_cols", spare_cols, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int ≥ {low}, got {value!r}")
    if h_q % h_kv:
        raise ValueError(f"h_q = {h_q} must be divisible by h_kv = {h_kv}")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)  # structure: on the CPU
    b = lengths.numel()
    pages = (lengths + page_size - 1) // page_size  # [b] pages each request owns
    width = max(1, int(pages.max()) + spare_cols)  # block-table columns
    total = int(pages.sum())
    num_blocks = max(1, total + spare_blocks)

    col = torch.arange(width)  # [width]
    owned = col[None, :] < pages[:, None]  # [b, width]: entries that point at a page
    row = torch.arange(b)[:, None]  # [b, 1]
    sentinels = SENTINEL_BLOCK - (col[None, :] - pages[:, None]).clamp(min=0) * SENTINEL_STRIDE - row  # [b, width]
    block_table = sentinels.clamp(min=num_blocks)  # huge, never a valid page (num_blocks ≪ 2^31)
    block_table[owned] = torch.randperm(num_blocks, generator=gen)[:total]  # random physical placement
    rows_used = torch.zeros(num_blocks, dtype=torch.int64)  # live rows per physical page
    rows_used[block_table[owned]] = (lengths[:, None] - page_size * col[None, :]).clamp(0, page_size)[owned]
    unused = torch.arange(page_size)[None, :] >= rows_used[:, None]  # [num_blocks, page]: every slot with no key

    dgen = torch.Generator(device=device).manual_seed(seed)  # values: drawn where they live
    k_cache = torch.randn(num_blocks, page_size, h_kv, head_dim, generator=dgen, dtype=dtype, device=device)
    k_cache.masked_fill_(unused.to(device)[:, :, None, None], float("nan"))
    q = torch.randn(b, s_q, h_q, head_dim, generator=dgen, dtype=dtype, device=device)
    return PagedInputs(q, k_cache, block_table.to(torch.int32).to(device), lengths.to(torch.int32).to(device))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b have the same shape, dtype and bytes (NaN-safe, any strides): "nothing changed"."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.bool or not (a.is_floating_point() or a.is_complex()):
        return torch.equal(a, b)
    return torch.equal(a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8))


__all__ = ["PagedInputs", "make_paged_inputs", "normal_lengths", "same_bits", "SENTINEL_STRIDE"]
