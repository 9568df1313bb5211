"""The load-balanced split-KV schedule (FlashMLA's `get_mla_metadata`), computed on the GPU.

All work of a decode call is laid out on one line: request r costs ceil(s_k_r / 64) page units plus a fixed
overhead of 5 units (query load, output store), and the line is cut into num_sm_parts contiguous ranges of equal
cost, one per program of the kernel's single wave. A range may hold the tail of one request, several whole
requests and the head of the next; only requests cut by a range boundary are split and go through the combine.
Torch ops only, on cache_seqlens' device, with no host sync: the metadata and the kernels can be captured in a
CUDA graph and replayed with new lengths. Used by v4 and v5.
"""

from __future__ import annotations

import torch

from .common import MAX_TILE_M, METADATA_COLS, PAGE_SIZE, SCHEDULE_OVERHEAD_BLOCKS, cdiv, device_limits, launch_config

# tile_scheduler_metadata columns (int32), one row per SM part; "blocks" are 64-token pages
META_BEGIN_REQ = 0  # first request of the range
META_BEGIN_BLOCK = 1  # first page of that request
META_END_REQ = 2  # last request of the range (inclusive)
META_END_BLOCK = 3  # page after the last page of that request (exclusive)
META_BEGIN_SPLIT = 4  # split index of the first piece (0 unless the range starts inside a request)
# columns 5..7: zero (FlashMLA keeps the same 8-int row)


def default_num_sm_parts(num_heads_per_head_k: int, num_heads_k: int, device) -> int:
    """FlashMLA's count: #SMs / h_kv / ceil(s_q·h_q/h_kv / 64), times the programs that fit on one SM."""
    cfg = launch_config(num_heads_per_head_k, torch.device(device))
    m_tiles = cdiv(num_heads_per_head_k, MAX_TILE_M)
    limits = device_limits(device)
    return max(1, limits.sm_count * cfg.ctas_per_sm // (num_heads_k * m_tiles))


def get_mla_metadata(
    cache_seqlens: torch.Tensor,
    num_heads_per_head_k: int,
    num_heads_k: int,
    *,
    num_sm_parts: int | None = None,
    fixed_overhead: int = SCHEDULE_OVERHEAD_BLOCKS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced split-KV schedule, computed with torch ops on cache_seqlens' device (no host sync).

    Returns (tile_scheduler_metadata [num_sm_parts, 8] int32, num_splits [b+1] int32), where
    num_splits is the prefix sum of the number of pieces each request is cut into.
    `num_sm_parts` and `fixed_overhead` (units per request) are knobs for tests and tuning.
    """
    if num_sm_parts is None:
        num_sm_parts = default_num_sm_parts(num_heads_per_head_k, num_heads_k, cache_seqlens.device)
    if fixed_overhead < 1:  # an empty request must occupy at least one unit, or no part would own it
        raise ValueError(f"fixed_overhead must be >= 1, got {fixed_overhead}")
    device = cache_seqlens.device
    parts = int(num_sm_parts)
    b = cache_seqlens.shape[0]
    seqlens = cache_seqlens.to(torch.int64)
    blocks = (seqlens + PAGE_SIZE - 1) // PAGE_SIZE  # (b,) pages per request
    cost = blocks + fixed_overhead  # (b,) work units per request
    ends = torch.cumsum(cost, 0)  # (b,) where each request's units end on the line
    total = ends[-1:]  # (1,)
    starts = ends - cost
    payload = (total + parts - 1) // parts + fixed_overhead  # units per part (FlashMLA's rule)

    # range boundaries x_p = p·payload on the line of units, p = 0..parts -> (request, page) cut points
    x = torch.minimum(torch.arange(parts + 1, device=device, dtype=torch.int64) * payload, total)
    req = torch.searchsorted(ends, x, right=True)  # (parts+1,) request holding unit x; b at the end
    zero = torch.zeros(1, dtype=torch.int64, device=device)
    starts_pad = torch.cat([starts, total])  # (b+1,)
    blocks_pad = torch.cat([blocks, zero])
    # a request's first 5 units are its overhead: a cut there falls before its first page
    page = torch.clamp(x - starts_pad[req] - fixed_overhead, min=0)
    page = torch.minimum(page, blocks_pad[req])
    interior = (page > 0) & (page < blocks_pad[req])  # cut inside a request: it gets one more split

    # pieces per request = 1 + interior cuts in it -> num_splits (prefix sum)
    cuts_per_req = torch.zeros(b + 1, dtype=torch.int64, device=device)
    cuts_per_req.scatter_add_(0, req, interior.to(torch.int64))
    num_splits = torch.cat([zero, torch.cumsum(1 + cuts_per_req[:b], 0)]).to(torch.int32)
    # split index of the piece starting at each cut: its rank among the interior cuts of its request
    cuts_before_req = torch.cumsum(cuts_per_req, 0) - cuts_per_req  # (b+1,)
    rank = torch.cumsum(interior.to(torch.int64), 0) - cuts_before_req[req]
    begin_split = torch.where(interior, rank, zero)

    # part p runs from cut p (inclusive) to cut p+1 (exclusive)
    end_req_excl, end_page = req[1:], page[1:]
    end_req = torch.where(end_page > 0, end_req_excl, end_req_excl - 1)  # last request it touches
    pages_or_one = torch.clamp(blocks_pad, min=1)  # an empty request is one (empty) piece
    end_block = torch.where(end_page > 0, end_page, pages_or_one[end_req.clamp(min=0)])

    meta = torch.zeros(parts, METADATA_COLS, dtype=torch.int32, device=device)
    meta[:, META_BEGIN_REQ] = req[:-1].to(torch.int32)
    meta[:, META_BEGIN_BLOCK] = page[:-1].to(torch.int32)
    meta[:, META_END_REQ] = end_req.to(torch.int32)
    meta[:, META_END_BLOCK] = end_block.to(torch.int32)
    meta[:, META_BEGIN_SPLIT] = begin_split[:-1].to(torch.int32)
    return meta, num_splits
