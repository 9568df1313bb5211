"""Stage 3 — a paged latent cache: fixed-size pages, block tables, batches of different lengths.

What changed since stage 2: where the cached rows live. Stage 2 kept one contiguous [B, S, 576] tensor per
batch and grew it with torch.cat, which copies the whole cache every step and forces every sequence in a batch
to the same length. A serving engine instead keeps one pool of pages shared by all sequences (vLLM's
PagedAttention, Kwon et al. 2023, arXiv:2309.06180):

    pool         [num_blocks, page_size, 576]   one row [c_kv | k_rope] per token, page_size = 64
    block_table  [B, max_blocks] int32          row b lists the pages of sequence b, in order
    cache_seqlens [B] int32                     how many tokens sequence b holds

Token t of sequence b lives at pool[block_table[b, t // 64], t % 64]. Pages are handed out from a free list
as sequences grow and returned when they end, so memory is committed 64 tokens at a time, sequences of any
length share one batch, and appending a token writes 1,152 bytes instead of copying the cache. The pool viewed
as [num_blocks, 64, 1, 576] is exactly FlashMLA's `k_cache` (one latent "KV head").

The attention is stage 2's, read through the block table (`paged_mla_attention`, same arguments and results
as FlashMLA's `flash_mla_with_kvcache`). Slots past a sequence's length may hold anything (NaN after a free):
they are masked *and* zeroed, because 0·NaN is NaN. Block-table entries past the last page are never read.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import torch

from .config import MLAConfig
from .contract import SENTINEL_BLOCK, validate_paged_decode
from .layers import check_hidden_states
from .stage1_latent import LatentMLA
from .stage2_absorbed import AbsorbedMLA


class CacheFullError(RuntimeError):
    """The page pool has too few free pages for an append; nothing was written."""


class PagedLatentCache:
    """A pool of 64-token pages holding latent rows [c_kv | k_rope], shared by many sequences.

    Sequences are identified by integer ids: `allocate()` opens one, `append()` writes new tokens (taking pages
    from the free list as needed, all-or-nothing), `free()` returns a sequence's pages.
    """

    def __init__(self, num_blocks: int, page_size: int = 64, latent_dim: int = 576, *,
                 dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
                 fill_value: float | None = None, shuffle: bool = False, seed: int = 0):
        for name, value in (("num_blocks", num_blocks), ("page_size", page_size), ("latent_dim", latent_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.page_size = page_size
        shape = (num_blocks, page_size, latent_dim)
        self.pool = (torch.empty(shape, dtype=dtype, device=device) if fill_value is None
                     else torch.full(shape, fill_value, dtype=dtype, device=device))  # [N, 64, 576]
        order = (torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
                 if shuffle else list(range(num_blocks)))
        self._free: deque[int] = deque(order)  # pages not owned by any sequence
        self._pages: dict[int, list[int]] = {}  # seq_id → its pages, in order
        self._lengths: dict[int, int] = {}  # seq_id → tokens written

    @classmethod
    def for_config(cls, config: MLAConfig, batch_size: int, max_seq_len: int | None = None,
                   **kwargs) -> PagedLatentCache:
        """A pool with room for `batch_size` sequences of `max_seq_len` tokens (config.max_cache_len if None)."""
        max_seq_len = config.max_cache_len if max_seq_len is None else max_seq_len
        pages = batch_size * math.ceil(max_seq_len / config.page_size)
        return cls(pages, config.page_size, config.latent_dim, **kwargs)

    # ---------------------------------------------------------------- views and sizes
    @property
    def k_cache(self) -> torch.Tensor:
        """The pool as FlashMLA's k_cache: [num_blocks, page_size, 1, 576] (a view, no copy)."""
        return self.pool.unsqueeze(2)

    @property
    def num_blocks(self) -> int:
        return self.pool.shape[0]

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def seq_ids(self) -> list[int]:
        """Live sequences, in the order they were allocated."""
        return list(self._pages)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole pool (what the cache reserves)."""
        return self.pool.numel() * self.pool.element_size()

    def seq_len(self, seq_id: int) -> int:
        self._check_known(seq_id, "seq_id")
        return self._lengths[seq_id]

    # ---------------------------------------------------------------- allocation
    def allocate(self, seq_id: int | None = None) -> int:
        """Open an empty sequence (pages come with the first append); returns its id."""
        if seq_id is None:
            seq_id = max(self._pages, default=-1) + 1
        if not isinstance(seq_id, int) or isinstance(seq_id, bool) or seq_id < 0:
            raise ValueError(f"seq_id must be a non-negative int, got {seq_id!r}")
        if seq_id in self._pages:
            raise ValueError(f"seq_id {seq_id} is already allocated")
        self._pages[seq_id], self._lengths[seq_id] = [], 0
        return seq_id

    def free(self, seq_id: int) -> None:
        """Close a sequence and return its pages to the free list."""
        self._check_known(seq_id, "seq_id")
        self._free.extend(self._pages.pop(seq_id))
        del self._lengths[seq_id]

    def _check_known(self, seq_id: object, name: str) -> None:
        if seq_id not in self._pages:
            raise KeyError(f"{name}={seq_id!r} is not a live sequence of this cache "
                           f"(live: {sorted(self._pages)}); call allocate() first")

    def append(self, seq_ids: Sequence[int], kv: torch.Tensor) -> None:
        """Write kv [B, T, 576] as the next T tokens of sequences seq_ids[0..B-1].

        All-or-nothing: if the pool lacks free pages for the whole batch, CacheFullError is raised before any
        page is taken or any row written, so the other sequences' data and the pool are unchanged.
        """
        seq_ids = list(seq_ids)
        if not isinstance(kv, torch.Tensor) or kv.dim() != 3 or kv.shape[-1] != self.pool.shape[-1]:
            got = list(kv.shape) if isinstance(kv, torch.Tensor) else type(kv).__name__
            raise ValueError(f"kv must be a tensor [batch, tokens, {self.pool.shape[-1]}], got {got}")
        if kv.shape[0] != len(seq_ids):
            raise ValueError(f"kv has batch {kv.shape[0]} but {len(seq_ids)} seq_ids were given")
        if kv.dtype != self.pool.dtype or kv.device != self.pool.device:
            raise TypeError(f"kv must be {self.pool.dtype} on {self.pool.device} like the pool, "
                            f"got {kv.dtype} on {kv.device}")
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"seq_ids must be distinct, got {seq_ids}")
        for s in seq_ids:
            self._check_known(s, "seq_ids entry")
        T = kv.shape[1]
        new_pages = [math.ceil((self._lengths[s] + T) / self.page_size) - len(self._pages[s]) for s in seq_ids]
        if sum(new_pages) > len(self._free):
            raise CacheFullError(f"page pool full: appending {T} token(s) to {len(seq_ids)} sequence(s) needs "
                                 f"{sum(new_pages)} new page(s) of {self.page_size} tokens, but only "
                                 f"{len(self._free)} of {self.num_blocks} are free; free finished sequences "
                                 f"or build a larger cache")
        slots = []
        for s, n in zip(seq_ids, new_pages, strict=True):
            self._pages[s].extend(self._free.popleft() for _ in range(n))
            pos = torch.arange(self._lengths[s], self._lengths[s] + T)  # [T] token positions
            pages = torch.tensor(self._pages[s], dtype=torch.long)[pos // self.page_size]  # [T]
            slots.append(pages * self.page_size + pos % self.page_size)  # [T] flat row index into the pool
            self._lengths[s] += T
        flat = self.pool.view(-1, self.pool.shape[-1])  # [N·64, 576]
        flat[torch.cat(slots).to(self.pool.device)] = kv.reshape(-1, kv.shape[-1])  # [B·T, 576]

    # ---------------------------------------------------------------- what a kernel needs
    def block_table(self, seq_ids: Sequence[int] | None = None) -> torch.Tensor:
        """int32 [B, max_pages] on the pool's device; entries past a sequence's pages are SENTINEL_BLOCK."""
        seq_ids = self.seq_ids if seq_ids is None else list(seq_ids)
        for s in seq_ids:
            self._check_known(s, "seq_ids entry")
        width = max([len(self._pages[s]) for s in seq_ids] + [1])
        table = torch.full((len(seq_ids), width), SENTINEL_BLOCK, dtype=torch.int32)
        for row, s in enumerate(seq_ids):
            table[row, : len(self._pages[s])] = torch.tensor(self._pages[s], dtype=torch.int32)
        return table.to(self.pool.device)

    def cache_seqlens(self, seq_ids: Sequence[int] | None = None) -> torch.Tensor:
        """int32 [B] token counts on the pool's device."""
        seq_ids = self.seq_ids if seq_ids is None else list(seq_ids)
        for s in seq_ids:
            self._check_known(s, "seq_ids entry")
        return torch.tensor([self._lengths[s] for s in seq_ids], dtype=torch.int32, device=self.pool.device)

    def poison_unused(self, value: float = float("nan")) -> None:
        """Fill every slot that holds no live token with `value` (tests: unused slots must never leak)."""
        used = torch.zeros(self.pool.shape[:2], dtype=torch.bool)  # [N, 64]
        for s, pages in self._pages.items():
            for i, page in enumerate(pages):
                used[page, : max(0, min(self.page_size, self._lengths[s] - i * self.page_size))] = True
        self.pool[~used.to(self.pool.device)] = value


def paged_mla_attention(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor,
                        cache_seqlens: torch.Tensor, head_dim_v: int = 512, softmax_scale: float | None = None,
                        causal: bool = False, *, out_dtype: torch.dtype | None = None, return_p_abs_v: bool = False):
    """MQA of latent queries over a paged latent cache, in torch; FlashMLA's arguments and results.

    q [b, s_q, h_q, d]; k_cache [num_blocks, page, (h_kv,) d]; block_table [b, max_blocks] int32; cache_seqlens [b]
    int32 (the contract, checked by `contract.validate_paged_decode`). Query head h reads latent head
    h // (h_q / h_kv) (h_kv = 1 for DeepSeek). Returns out [b, s_q, h_q, head_dim_v] (q's dtype, or `out_dtype`)
    and lse [b, h_q, s_q] (natural log). With causal, query j of s_q sees keys 0 … s_k − s_q + j (bottom-right
    aligned). A query row with no visible key gives out = 0 and lse = +inf. Computed in float32 (float64 for
    float64 inputs); lse comes in that dtype.

    This is the reference implementation of the paged-decode contract: the kernels are tested against it with
    out_dtype=torch.float32 (`kernels.mla_decode_reference`). return_p_abs_v=True also returns Σ_j p_j·|v_j|
    [b, s_q, h_q, head_dim_v] (compute dtype), which bounds how far rounding the probabilities to 16 bits before
    P·V can move each output element: |Δout| ≤ eps·Σ_j p_j·|v_j| (eps = 2^-8 for bf16, 2^-11 for fp16).

    On a GPU nothing here waits for the device: bounds are checked by a device-side assertion and the gather
    covers the block table's full width (on the CPU, only the pages of the longest request).
    """
    dims = validate_paged_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal)
    if out_dtype is not None and not (isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point):
        raise TypeError(f"out_dtype must be None or a floating-point torch.dtype, got {out_dtype!r}")
    b, s_q, h_q, d = q.shape
    page, h_kv, group = dims.page_size, dims.h_kv, dims.heads_per_kv
    if k_cache.dim() == 3:
        k_cache = k_cache.unsqueeze(2)  # [num_blocks, page, 1, d]
    compute = torch.promote_types(q.dtype, torch.float32)
    lengths = cache_seqlens.long()  # [b]
    if q.device.type == "cpu":  # the pages of the longest sequence (0 if every request is empty)
        n_pages = -(-int(lengths.max()) // page)
    else:  # no host sync: every column of the table; pages past a length are masked below, so results are equal
        n_pages = block_table.shape[1]

    # Gather: pages past a sequence's end are replaced by page 0 before indexing (never follow a sentinel),
    # then every row past its length is zeroed (it may hold NaN, and 0·NaN = NaN in p·V).
    page_live = torch.arange(n_pages, device=q.device)[None, :] * page < lengths[:, None]  # [b, n_pages]
    table = torch.where(page_live, block_table[:, :n_pages].long(), 0)  # [b, n_pages]
    kv = k_cache[table].flatten(1, 2)  # [b, S = n_pages·page, h_kv, d]
    key_pos = torch.arange(n_pages * page, device=q.device)  # [S]
    kv = torch.where((key_pos[None, :] < lengths[:, None])[..., None, None], kv, 0).to(compute)  # [b, S, h_kv, d]

    q_grouped = q.to(compute).reshape(b, s_q, h_kv, group, d)  # [b, s_q, h_kv, g, d]: head h = kv head h // g
    scores = torch.einsum("bqkgd,bskd->bkgqs", q_grouped, kv).reshape(b, h_q, s_q, -1) * dims.scale  # [b, h_q, s_q, S]
    last = lengths[:, None] - (s_q - 1 - torch.arange(s_q, device=q.device))[None, :] if causal \
        else lengths[:, None].expand(b, s_q)  # [b, s_q]: query j sees keys < last[b, j]
    visible = key_pos[None, None, :] < last[:, :, None]  # [b, s_q, S]
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [b, h_q, s_q]; −inf where nothing is visible
    empty = torch.isneginf(lse)
    probs = torch.exp(scores - torch.where(empty, 0, lse)[..., None])  # exp(−inf) = 0 on empty rows
    probs = probs.reshape(b, h_kv, group, s_q, -1)  # [b, h_kv, g, s_q, S]
    v = kv[..., :head_dim_v]  # [b, S, h_kv, head_dim_v]
    out = torch.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(b, s_q, h_q, head_dim_v)  # [b, s_q, h_q, d_v]
    out = out.to(q.dtype if out_dtype is None else out_dtype)
    lse = torch.where(empty, float("inf"), lse)
    if return_p_abs_v:
        p_abs_v = torch.einsum("bkgqs,bskd->bqkgd", probs, v.abs()).reshape(b, s_q, h_q, head_dim_v)
        return out, lse, p_abs_v
    return out, lse


class PagedMLA(AbsorbedMLA):
    """Stage 3: stage 2's absorbed attention over a PagedLatentCache; sequences may differ in length.

    `forward(hidden_states, cache=None, seq_ids=None)`: row i of hidden_states continues sequence seq_ids[i]
    (default: all live sequences in allocation order). With no cache, a cache for B sequences of up to
    max(config.max_cache_len, T) tokens is made and B sequences allocated. To batch sequences of different
    lengths, prefill them one by one into one cache (seq_ids=[k]), then decode them together.
    """

    def cache_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        return LatentMLA.cache_bytes_per_token(self, dtype)

    def new_cache(self, batch_size: int, max_seq_len: int | None = None, **kwargs) -> PagedLatentCache:
        """An empty PagedLatentCache in the weights' dtype and device with `batch_size` sequences allocated."""
        weight = next(self.parameters())
        kwargs = {"dtype": weight.dtype, "device": weight.device} | kwargs
        cache = PagedLatentCache.for_config(self.config, batch_size, max_seq_len, **kwargs)
        for _ in range(batch_size):
            cache.allocate()
        return cache

    def attend(self, q: torch.Tensor, cache: PagedLatentCache, block_table: torch.Tensor,
               cache_seqlens: torch.Tensor) -> torch.Tensor:
        """Latent attention q [B, T, H, 576] → [B, T, H, d_c] over the paged cache (stage 4 replaces this)."""
        out, _ = paged_mla_attention(q, cache.k_cache, block_table, cache_seqlens, self.config.kv_lora_rank,
                                     self.config.softmax_scale, causal=True)
        return out

    def forward(self, hidden_states: torch.Tensor, cache: PagedLatentCache | None = None,
                seq_ids: Sequence[int] | None = None) -> tuple[torch.Tensor, PagedLatentCache]:
        """hidden_states [B, T, hidden] → (output [B, T, hidden], the cache, now holding T more tokens per row)."""
        x = check_hidden_states(hidden_states, self, self.config.hidden_size)
        B, T, _ = x.shape
        if cache is None:
            cache = self.new_cache(B, max(self.config.max_cache_len, T))
        elif not isinstance(cache, PagedLatentCache):
            raise TypeError(f"cache must be a PagedLatentCache or None, got {type(cache).__name__}")
        if cache.pool.shape[-1] != self.config.latent_dim or cache.pool.dtype != x.dtype:
            raise ValueError(f"cache rows must be {self.config.latent_dim} wide in {x.dtype}, got "
                             f"{cache.pool.shape[-1]} wide in {cache.pool.dtype}")
        seq_ids = cache.seq_ids if seq_ids is None else list(seq_ids)
        if len(seq_ids) != B:
            raise ValueError(f"hidden_states has batch {B} but {len(seq_ids)} sequences were given "
                             f"(seq_ids={seq_ids})")
        starts = torch.tensor([cache.seq_len(s) for s in seq_ids], device=x.device)  # [B]
        positions = starts[:, None] + torch.arange(T, device=x.device)  # [B, T]: each sequence its own

        q = self.absorb_query(*self.project_query(x, positions))  # [B, T, H, 576]
        c_kv, k_rope = self.project_latent(x, positions)  # [B, T, d_c], [B, T, d^R_h]
        cache.append(seq_ids, torch.cat([c_kv, k_rope], dim=-1))  # NEW: written into pages, no copy of the rest
        o_latent = self.attend(q, cache, cache.block_table(seq_ids), cache.cache_seqlens(seq_ids))
        return self.unabsorb_output(o_latent), cache  # [B, T, hidden]
