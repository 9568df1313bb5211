"""Stage 3 — a paged latent cache: fixed-size pages, block tables, batches of different lengths.

What changed since stage 2: where the cached rows live. Stage 2 kept one contiguous [B, S, 576] tensor per
batch (grown with torch.cat, which copies the whole cache every step, or reserved whole up front), which forces
every sequence to hold room for the longest. A serving engine instead keeps one pool of pages shared by all
sequences (vLLM's PagedAttention, Kwon et al. 2023, arXiv:2309.06180):

    pool         [num_blocks, page_size, 576]   one row [c_kv | k_rope] per token, page_size = 64
    block_table  [B, max_blocks] int32          row b lists the pages of sequence b, in order
    cache_seqlens [B] int32                     how many tokens sequence b holds

Token t of sequence b lives at pool[block_table[b, t // 64], t % 64]. Pages are handed out from a free list
as sequences grow and returned when they end, so memory is committed 64 tokens at a time, sequences of any
length share one batch, and appending a token writes 1,152 bytes instead of copying the cache. The pool viewed
as [num_blocks, 64, 1, 576] is exactly FlashMLA's `k_cache` (one latent "KV head").

Who does what, as in a serving engine: handing out pages is a decision, made by host code (a free list, a list
of pages per sequence); the block table and the lengths that a decode step reads are device tensors, updated
in place. The step computes each new row's slot from them on the device and advances the lengths there, so the
host is needed only when a sequence starts a new page (it then writes the page's id into the table), and
engines reserve pages a few steps ahead so that most steps need none. A step that needs no page neither waits
for the device nor builds tensors from Python lists: that is what lets the GPU run ahead of Python, and what
lets the step be captured in a CUDA graph (`mla_tutorial.graphs`). Rebuilding the table from Python lists and
copying it to the GPU every step, as a first version of this file did, made the step host-bound: milliseconds of
Python per step at batch 64, far more than the attention itself.

The attention is stage 2's, over a contiguous copy of each sequence's pages (`PagedMLA.attend`);
`paged_mla_attention` computes the same with FlashMLA's arguments and results (`flash_mla_with_kvcache`), and is
stage 4's torch reference. Slots past a sequence's length may hold anything (NaN after a free): they are masked
*and* zeroed, because 0·NaN is NaN. Block-table entries past the last page are never read.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import torch

from .config import MLAConfig
from .contract import SENTINEL_BLOCK, validate_paged_decode
from .layers import causal_attention, check_hidden_states
from .stage1_latent import LatentMLA
from .stage2_absorbed import AbsorbedMLA, CacheFullError


class PagedLatentCache:
    """A pool of 64-token pages holding latent rows [c_kv | k_rope], shared by many sequences.

    Sequences are identified by integer ids: `allocate()` opens one, `append()` writes new tokens (taking pages
    from the free list as needed, all-or-nothing), `free()` returns a sequence's pages, `reserve()` takes pages
    ahead of the tokens that will fill them.

    What lives where, as in a serving engine (vLLM's block manager and its GPU block tables, SGLang's
    req_to_token pool): the *allocator* is host code (the free list and each sequence's page list, Python
    objects), because handing out pages is a decision; the *state a decode step reads and writes* lives on the
    device, in tensors updated in place:

        table    [max_seqs, max_pages] int32   row r lists the pages of the sequence in slot r (SENTINEL after)
        lengths  [max_seqs] int32              tokens held by the sequence in slot r

    A decode step finds the slot of each new row on the device (page = table[r, t // 64], slot = page·64 + t % 64
    for token t = lengths[r]), writes the rows there and adds to `lengths` in place. The host touches the
    allocator only when a sequence needs a new page: then it writes the new page ids into `table`. A step that
    needs no new page therefore has no host sync and builds no tensor from a Python list, and, since the tensors
    never move, it can be captured in a CUDA graph and replayed (`mla_tutorial.graphs`): replays read the
    lengths and the table as they are at replay time. Engines reserve pages a few steps ahead so that most steps
    need none (`reserve`).

    The host keeps a mirror of each length (it knows how many tokens every call appends), so that deciding
    whether a page is needed never reads the device.
    """

    def __init__(self, num_blocks: int, page_size: int = 64, latent_dim: int = 576, *,
                 dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
                 fill_value: float | None = None, shuffle: bool = False, seed: int = 0,
                 max_seqs: int | None = None, max_pages_per_seq: int | None = None):
        for name, value in (("num_blocks", num_blocks), ("page_size", page_size), ("latent_dim", latent_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, value in (("max_seqs", max_seqs), ("max_pages_per_seq", max_pages_per_seq)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.page_size = page_size
        shape = (num_blocks, page_size, latent_dim)
        self.pool = (torch.empty(shape, dtype=dtype, device=device) if fill_value is None
                     else torch.full(shape, fill_value, dtype=dtype, device=device))  # [N, 64, 576]
        order = (torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
                 if shuffle else list(range(num_blocks)))
        # host: the allocator
        self._free: deque[int] = deque(order)  # pages not owned by any sequence
        self._pages: dict[int, list[int]] = {}  # seq_id → its pages, in order
        self._lengths: dict[int, int] = {}  # seq_id → tokens written (a mirror of the device lengths)
        self._rows: dict[int, int] = {}  # seq_id → its slot (row) in the device tables
        self._row_index: dict[tuple[int, ...], slice | torch.Tensor] = {}  # batch → rows, built once per batch
        # device: what a decode step reads and writes
        device = self.pool.device
        self.table = torch.full((max_seqs or 8, max_pages_per_seq or min(num_blocks, 8)), SENTINEL_BLOCK,
                                dtype=torch.int32, device=device)  # [max_seqs, max_pages]
        self.lengths = torch.zeros(self.table.shape[0], dtype=torch.int32, device=device)  # [max_seqs]
        self._positions = torch.arange(page_size, device=device)  # [64]: token offsets 0, 1, … (grown on demand)
        self.layout_version = 0  # bumped when the device tables are reallocated (captured graphs hold the old ones)

    @classmethod
    def for_config(cls, config: MLAConfig, batch_size: int, max_seq_len: int | None = None,
                   **kwargs) -> PagedLatentCache:
        """A pool with room for `batch_size` sequences of `max_seq_len` tokens (config.max_cache_len if None)."""
        max_seq_len = config.max_cache_len if max_seq_len is None else max_seq_len
        pages = math.ceil(max_seq_len / config.page_size)
        kwargs = {"max_seqs": batch_size, "max_pages_per_seq": pages} | kwargs
        return cls(batch_size * pages, config.page_size, config.latent_dim, **kwargs)

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
    def latent_dim(self) -> int:
        return self.pool.shape[-1]

    @property
    def seq_ids(self) -> list[int]:
        """Live sequences, in the order they were allocated."""
        return list(self._pages)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole pool (what the cache reserves)."""
        return self.pool.numel() * self.pool.element_size()

    def seq_len(self, seq_id: int) -> int:
        self.check_known(seq_id, "seq_id")
        return self._lengths[seq_id]

    def lengths_of(self, seq_ids: Sequence[int]) -> tuple[int, ...]:
        """The host's mirror of these sequences' lengths (what `lengths[rows]` holds on the device), no sync."""
        return tuple(self._lengths[s] for s in seq_ids)

    def describe(self) -> str:
        """Its geometry in words, for error messages: rows, dtype, device, page size."""
        return (f"{self.latent_dim} wide in {self.pool.dtype} on {self.pool.device} "
                f"with {self.page_size}-token pages")

    # ---------------------------------------------------------------- allocation (host)
    def allocate(self, seq_id: int | None = None) -> int:
        """Open an empty sequence (pages come with the first append); returns its id."""
        if seq_id is None:
            seq_id = max(self._pages, default=-1) + 1
        if not isinstance(seq_id, int) or isinstance(seq_id, bool) or seq_id < 0:
            raise ValueError(f"seq_id must be a non-negative int, got {seq_id!r}")
        if seq_id in self._pages:
            raise ValueError(f"seq_id {seq_id} is already allocated")
        taken = set(self._rows.values())
        row = next(r for r in range(len(taken) + 1) if r not in taken)  # the lowest free slot
        self._grow(rows=row + 1)
        self._pages[seq_id], self._lengths[seq_id], self._rows[seq_id] = [], 0, row
        self._row_index.clear()
        return seq_id

    def free(self, seq_id: int) -> None:
        """Close a sequence and return its pages to the free list."""
        self.check_known(seq_id, "seq_id")
        row = self._rows.pop(seq_id)
        self._free.extend(self._pages.pop(seq_id))
        del self._lengths[seq_id]
        self._row_index.clear()
        self.table[row].fill_(SENTINEL_BLOCK)  # device: the slot is clean for its next sequence
        self.lengths[row].zero_()

    def check_known(self, seq_id: object, name: str = "seq_id") -> None:
        """KeyError naming `name` unless seq_id is a live sequence."""
        if seq_id not in self._pages:
            raise KeyError(f"{name}={seq_id!r} is not a live sequence of this cache "
                           f"(live: {sorted(self._pages)}); call allocate() first")

    def _grow(self, rows: int = 0, pages: int = 0) -> None:
        """Make the device tables at least `rows` × `pages` (doubling). Host decision, never in a plain step."""
        old_rows, old_pages = self.table.shape
        if rows <= old_rows and pages <= old_pages:
            return
        new_rows = max(old_rows, rows if rows <= old_rows else max(rows, 2 * old_rows))
        new_pages = max(old_pages, pages if pages <= old_pages else max(pages, 2 * old_pages))
        table = torch.full((new_rows, new_pages), SENTINEL_BLOCK, dtype=torch.int32, device=self.table.device)
        table[:old_rows, :old_pages] = self.table
        lengths = torch.zeros(new_rows, dtype=torch.int32, device=self.lengths.device)
        lengths[:old_rows] = self.lengths
        self.table, self.lengths = table, lengths
        self._row_index.clear()
        self.layout_version += 1

    def check_append(self, seq_ids: Sequence[int], tokens: int) -> list[int]:
        """Raise (KeyError, ValueError, CacheFullError) unless `tokens` more tokens fit for every sequence;
        changes nothing. Returns, per sequence, how many new pages the append will take."""
        seq_ids = list(seq_ids)
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"seq_ids must be distinct, got {seq_ids}")
        for s in seq_ids:
            self.check_known(s, "seq_ids entry")
        new_pages = [max(0, math.ceil((self._lengths[s] + tokens) / self.page_size) - len(self._pages[s]))
                     for s in seq_ids]
        if sum(new_pages) > len(self._free):
            raise CacheFullError(f"page pool full: appending {tokens} token(s) to {len(seq_ids)} sequence(s) needs "
                                 f"{sum(new_pages)} new page(s) of {self.page_size} tokens, but only "
                                 f"{len(self._free)} of {self.num_blocks} are free; free finished sequences "
                                 f"or build a larger cache")
        return new_pages

    def _take_pages(self, seq_ids: Sequence[int], new_pages: Sequence[int]) -> None:
        """Hand out pages (host) and write their ids into the device table: the only host-to-device traffic."""
        entries = []  # (row, column, page)
        for s, n in zip(seq_ids, new_pages, strict=True):
            for _ in range(n):
                self._pages[s].append(self._free.popleft())
                entries.append((self._rows[s], len(self._pages[s]) - 1, self._pages[s][-1]))
        if entries:
            self._grow(pages=max(col for _, col, _ in entries) + 1)
            where = torch.tensor(entries, dtype=torch.long).to(self.table.device)  # [n, 3]
            self.table[where[:, 0], where[:, 1]] = where[:, 2].to(torch.int32)

    def reserve(self, seq_ids: Sequence[int] | None = None, tokens: int = 1) -> None:
        """Own the pages for `tokens` more tokens of every sequence now, so that the next appends need none.

        All-or-nothing, like `append`. Serving engines do this a few steps ahead (and a captured decode step
        needs it: a graph replay cannot ask the host for a page).
        """
        seq_ids = self.seq_ids if seq_ids is None else list(seq_ids)
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise ValueError(f"tokens must be a non-negative int, got {tokens!r}")
        self._take_pages(seq_ids, self.check_append(seq_ids, tokens))

    # ---------------------------------------------------------------- writing (device)
    def rows(self, seq_ids: Sequence[int] | None = None) -> slice | torch.Tensor:
        """The device-table rows of these sequences: a slice when they are consecutive (a view, no copy), else
        an index tensor, built on the first use of that batch and kept (no tensor from a list in later steps)."""
        key = tuple(self.seq_ids if seq_ids is None else seq_ids)
        if not key:
            return slice(0, 0)
        if key not in self._row_index:
            for s in key:
                self.check_known(s, "seq_ids entry")
            rows = [self._rows[s] for s in key]
            if rows == list(range(rows[0], rows[0] + len(rows))):
                self._row_index[key] = slice(rows[0], rows[0] + len(rows))
            else:
                self._row_index[key] = torch.tensor(rows, dtype=torch.long, device=self.table.device)
        return self._row_index[key]

    def width(self, seq_ids: Sequence[int] | None = None) -> int:
        """Block-table columns these sequences need: the most pages any of them owns (at least 1)."""
        seq_ids = self.seq_ids if seq_ids is None else seq_ids
        return max([len(self._pages[s]) for s in seq_ids] + [1])

    def append(self, seq_ids: Sequence[int], kv: torch.Tensor) -> None:
        """Write kv [B, T, 576] as the next T tokens of sequences seq_ids[0..B-1].

        All-or-nothing: if the pool lacks free pages for the whole batch, CacheFullError is raised before any
        page is taken or any row written, so the other sequences' data and the pool are unchanged. Pages are taken
        only when a sequence needs one; then the slot of every row is computed on the device.
        """
        seq_ids = list(seq_ids)
        width, dtype = self.row_width, self.row_dtype
        if not isinstance(kv, torch.Tensor) or kv.dim() != 3 or kv.shape[-1] != width:
            got = list(kv.shape) if isinstance(kv, torch.Tensor) else type(kv).__name__
            raise ValueError(f"kv must be a tensor [batch, tokens, {width}], got {got}")
        if kv.shape[1] < 1:
            raise ValueError(f"kv must hold at least one token per sequence, got shape {list(kv.shape)}")
        if kv.shape[0] != len(seq_ids):
            raise ValueError(f"kv has batch {kv.shape[0]} but {len(seq_ids)} seq_ids were given")
        if kv.dtype != dtype or kv.device != self.pool.device:
            like = "like the pool" if dtype == self.pool.dtype else f"(the pool holds them as {self.pool.dtype})"
            raise TypeError(f"kv must be {dtype} on {self.pool.device} {like}, got {kv.dtype} on {kv.device}")
        new_pages = self.check_append(seq_ids, kv.shape[1])
        self._take_pages(seq_ids, new_pages)
        self._write(self.rows(seq_ids), kv)
        for s in seq_ids:
            self._lengths[s] += kv.shape[1]

    @property
    def row_width(self) -> int:
        """The width of the rows that `append` takes (576 here; stage 5 stores them as 656 bytes)."""
        return self.latent_dim

    @property
    def row_dtype(self) -> torch.dtype:
        """The dtype of the rows that `append` takes (the pool's here; stage 5 takes bf16 and stores FP8)."""
        return self.pool.dtype

    def _write(self, rows: slice | torch.Tensor, kv: torch.Tensor) -> None:
        """Device only: rows kv [B, T, 576] go after each sequence's last token; lengths grow by T in place."""
        B, T, _ = kv.shape
        if T > self._positions.numel():
            self._positions = torch.arange(T, device=self.pool.device)
        positions = self.lengths[rows][:, None].long() + self._positions[:T]  # [B, T] token index in its sequence
        pages = self.table[rows].gather(1, positions // self.page_size)  # [B, T] page of each new row
        slots = pages.long() * self.page_size + positions % self.page_size  # [B, T] row index into the flat pool
        flat, rows_in = self.pool.view(-1, self.latent_dim), kv.reshape(B * T, -1)  # [N·64, 576], [B·T, 576]
        if flat.element_size() == 1:  # FP8 rows (stage 5): index_copy_ has no float8 kernels, the bytes are the same
            flat, rows_in = flat.view(torch.uint8), rows_in.view(torch.uint8)
        flat.index_copy_(0, slots.flatten(), rows_in)
        if isinstance(rows, slice):
            self.lengths[rows].add_(T)  # in place, on a view
        else:
            self.lengths.index_add_(0, rows, self.lengths.new_full((B,), T))

    # ---------------------------------------------------------------- what a kernel needs
    def block_table(self, seq_ids: Sequence[int] | None = None) -> torch.Tensor:
        """A copy of the block table, int32 [B, max_pages]; entries past a sequence's pages are SENTINEL_BLOCK."""
        seq_ids = self.seq_ids if seq_ids is None else list(seq_ids)
        for s in seq_ids:
            self.check_known(s, "seq_ids entry")
        if not seq_ids:
            return torch.full((0, 1), SENTINEL_BLOCK, dtype=torch.int32, device=self.table.device)
        return self.table[self.rows(seq_ids), : self.width(seq_ids)].clone()

    def cache_seqlens(self, seq_ids: Sequence[int] | None = None) -> torch.Tensor:
        """A copy of the token counts, int32 [B], on the pool's device."""
        seq_ids = self.seq_ids if seq_ids is None else list(seq_ids)
        for s in seq_ids:
            self.check_known(s, "seq_ids entry")
        if not seq_ids:
            return self.lengths.new_zeros(0)
        return self.lengths[self.rows(seq_ids)].clone()

    def poison_unused(self, value: float = float("nan")) -> None:
        """Fill every slot that holds no live token with `value` (tests: unused slots must never leak)."""
        used = torch.zeros(self.pool.shape[:2], dtype=torch.bool)  # [N, 64]
        for s, pages in self._pages.items():
            for i, page in enumerate(pages):
                used[page, : max(0, min(self.page_size, self._lengths[s] - i * self.page_size))] = True
        self.pool[~used.to(self.pool.device)] = value

    # ---------------------------------------------------------------- saving and restoring the bookkeeping
    def state(self) -> dict:
        """Everything but the pool's rows: allocator (host) and tables (device copies, no sync)."""
        return {"free": list(self._free), "pages": {s: list(p) for s, p in self._pages.items()},
                "lengths": dict(self._lengths), "rows": dict(self._rows), "table": self.table.clone(),
                "device_lengths": self.lengths.clone(), "layout_version": self.layout_version}

    def restore(self, state: dict) -> None:
        """Go back to `state()`: rows written since stay in the pool, past the restored lengths, where no step
        reads them. Used to time many steps from one prefix, and around graph capture."""
        if state["table"].shape != self.table.shape:
            raise ValueError(f"cannot restore a state of tables {tuple(state['table'].shape)} into tables "
                             f"{tuple(self.table.shape)} (they grew since)")
        self._free = deque(state["free"])
        self._pages = {s: list(p) for s, p in state["pages"].items()}
        self._lengths, self._rows = dict(state["lengths"]), dict(state["rows"])
        self._row_index.clear()
        self.table.copy_(state["table"])
        self.lengths.copy_(state["device_lengths"])

    def host_lengths(self) -> dict[int, int]:
        """The host's mirror of every live sequence's length."""
        return dict(self._lengths)

    def advance_host(self, tokens: dict[int, int]) -> None:
        """Add tokens to the host mirror: a captured step's replay appended them on the device."""
        for s, n in tokens.items():
            self._lengths[s] += n

    def room(self, seq_id: int) -> int:
        """Tokens sequence `seq_id` can still take without a new page."""
        return len(self._pages[seq_id]) * self.page_size - self._lengths[seq_id]


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


def gather_pages(pool: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor) -> torch.Tensor:
    """The rows of every sequence, contiguous: pool [N, page, D], block_table [B, W], lengths [B] → [B, W·page, D].

    Entries past a sequence's last page are replaced by page 0 before indexing (a sentinel is never followed),
    and every row past its sequence's length is zeroed: it may hold NaN, and 0·NaN = NaN in p·V. The width W is
    the block table's, so the shape depends on no value on the device (no sync; capturable).
    """
    W, page = block_table.shape[1], pool.shape[1]
    columns = torch.arange(W, device=pool.device)  # [W]
    page_live = columns[None, :] * page < cache_seqlens[:, None]  # [B, W]
    table = torch.where(page_live, block_table, 0).long()  # [B, W]
    rows = pool[table].flatten(1, 2)  # [B, W·page, D]
    key_pos = torch.arange(W * page, device=pool.device)  # [W·page]
    return torch.where((key_pos[None, :] < cache_seqlens[:, None])[..., None], rows, 0)  # [B, W·page, D]


class PagedMLA(AbsorbedMLA):
    """Stage 3: stage 2's absorbed attention over a PagedLatentCache; sequences may differ in length.

    `forward(hidden_states, cache=None, seq_ids=None)`: row i of hidden_states continues sequence seq_ids[i]
    (default: all live sequences in allocation order). With no cache, a cache for B sequences of up to
    max(config.max_cache_len, T) tokens is made and B sequences allocated. To batch sequences of different
    lengths, prefill them one by one into one cache (seq_ids=[k]), then decode them together.

    Every check comes before the cache is touched (`validate`): a refused call leaves the cache exactly as it was.
    """

    def cache_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        return LatentMLA.cache_bytes_per_token(self, dtype)

    #: the cache `new_cache` makes (stage 4: its append one kernel; stage 5: FP8 rows)
    cache_class: type[PagedLatentCache] = PagedLatentCache

    def new_cache(self, batch_size: int, max_seq_len: int | None = None, **kwargs) -> PagedLatentCache:
        """An empty `cache_class` cache in the weights' dtype and device with `batch_size` sequences allocated."""
        weight = next(self.parameters())
        kwargs = {"dtype": weight.dtype, "device": weight.device} | kwargs
        cache = self.cache_class.for_config(self.config, batch_size, max_seq_len, **kwargs)
        for _ in range(batch_size):
            cache.allocate()
        return cache

    def attend(self, q: torch.Tensor, cache: PagedLatentCache, block_table: torch.Tensor,
               cache_seqlens: torch.Tensor, seq_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Latent attention q [B, T, H, 576] → [B, T, H, d_c] over the paged cache (stage 4 replaces this).
        `seq_ids`: the batch's sequences (stage 4 keys a decoder step's shared schedule by their lengths; unused here).

        Stage 2's attention over a contiguous copy of each sequence's pages: query t of sequence b sits at
        position cache_seqlens[b] − T + t and sees the keys up to it. `paged_mla_attention` computes the same
        with FlashMLA's arguments and results (and the log-sum-exp); it is the torch reference of stage 4.
        """
        T = q.shape[1]
        kv = gather_pages(cache.pool, block_table, cache_seqlens)  # [B, S, 576], zero past each length
        o = causal_attention(q.transpose(1, 2), kv[:, None], kv[:, None, :, : self.config.kv_lora_rank],
                             self.config.softmax_scale, cache_seqlens - T)  # [B, H, T, d_c]
        return o.transpose(1, 2)  # [B, T, H, d_c]

    def validate(self, hidden_states: torch.Tensor, cache: PagedLatentCache | None,
                 seq_ids: Sequence[int] | None) -> tuple[torch.Tensor, PagedLatentCache | None, list[int] | None]:
        """Every check of a call, before anything changes: inputs, the cache's kind and geometry, the sequences,
        and room for the new tokens (CacheFullError). Returns x, the cache and the sequence ids (None, None when
        no cache was given: forward makes one)."""
        x = check_hidden_states(hidden_states, self, self.config.hidden_size)
        B, T, _ = x.shape
        if cache is None:
            if seq_ids is not None:
                raise ValueError(f"seq_ids={seq_ids!r} given without a cache")
            return x, None, None
        self.check_cache(cache, x)
        seq_ids = cache.seq_ids if seq_ids is None else list(seq_ids)
        if len(seq_ids) != B:
            raise ValueError(f"hidden_states has batch {B} but {len(seq_ids)} sequences were given "
                             f"(seq_ids={seq_ids})")
        for s in seq_ids:
            cache.check_known(s)
        cache.check_append(seq_ids, T)
        return x, cache, seq_ids

    def check_cache(self, cache: object, x: torch.Tensor) -> None:
        """Refuse a cache this stage cannot use (another kind, row width, dtype, device or page size), naming both."""
        if not isinstance(cache, PagedLatentCache):
            raise TypeError(f"cache must be a PagedLatentCache or None, got {type(cache).__name__}")
        c = self.config
        if (cache.latent_dim, cache.pool.dtype, cache.pool.device, cache.page_size) != \
                (c.latent_dim, x.dtype, x.device, c.page_size):
            raise ValueError(f"cache rows must be {c.latent_dim} wide in {x.dtype} on {x.device} with "
                             f"{c.page_size}-token pages (this {type(self).__name__}, config {c.name!r}), got a "
                             f"cache {cache.describe()}")

    def forward(self, hidden_states: torch.Tensor, cache: PagedLatentCache | None = None,
                seq_ids: Sequence[int] | None = None) -> tuple[torch.Tensor, PagedLatentCache]:
        """hidden_states [B, T, hidden] → (output [B, T, hidden], the cache, now holding T more tokens per row)."""
        x, cache, seq_ids = self.validate(hidden_states, cache, seq_ids)
        B, T, _ = x.shape
        if cache is None:
            cache = self.new_cache(B, max(self.config.max_cache_len, T))
            seq_ids = cache.seq_ids
        rows = cache.rows(seq_ids)  # NEW: the sequences' slots in the device tables (a slice, usually)
        positions = cache.lengths[rows][:, None] + torch.arange(T, device=x.device)  # [B, T], on the device

        q = self.absorb_query(*self.project_query(x, positions))  # [B, T, H, 576]
        c_kv, k_rope = self.project_latent(x, positions)  # [B, T, d_c], [B, T, d^R_h]
        cache.append(seq_ids, torch.cat([c_kv, k_rope], dim=-1))  # NEW: written into pages, no copy of the rest
        block_table = cache.table[rows, : cache.width(seq_ids)]  # [B, pages] views of the device state
        o_latent = self.attend(q, cache, block_table, cache.lengths[rows], seq_ids=seq_ids)
        return self.unabsorb_output(o_latent), cache  # [B, T, hidden]
