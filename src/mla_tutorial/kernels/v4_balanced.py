# version 4 (production): v3 + a load-balanced schedule computed on the GPU (FlashMLA's scheme).
#
# v3 cuts every request into the same number of splits, so with uneven lengths (s_k ~ N(4096, 2048))
# the program holding the longest request's split finishes last while other SMs idle, and short
# requests pay the partial/combine traffic for nothing. v4 instead lays all work out on one line:
#   request r costs ceil(s_k_r / 64) page units + 5 units of fixed overhead (q load, output store),
# and cuts that line into num_sm_parts ≈ #SMs·(programs per SM) / h_kv / ceil(s_q·h_q/h_kv / 64)
# contiguous ranges of equal cost. A range may cover the tail of one request, several whole requests
# and the head of the next; only requests cut by a range boundary are split and need the combine.
# One wave of programs (grid = num_sm_parts x h_kv·tiles), each with the same amount of work.
# The schedule (get_mla_metadata) uses only torch ops on the device: no host sync, so the metadata
# and the kernels can be captured in a CUDA graph and replayed with new lengths.
# Bytes/FLOPs: as v2, plus partials only for the <= num_sm_parts requests that are cut.
# Expected: ~1.0-1.3x over v3 for uneven lengths at b=128 (the tail wave disappears), equal for fixed
#   lengths; at b=1..8 like v3.
# Measured (H100, 2026-11-27): h_q=16 s_k=4096 uneven 0.253 ms (0.78 of copy), fixed s_k=32768
#   0.98 of copy; h_q=64 s_k=4096 0.56 of copy; h_q=128 0.32-0.36 of matmul; 10-46x over torch.
"""Version 4 of the stage-4 kernel ladder: load-balanced split-KV schedule (FlashMLA-style metadata)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .combine import combine_splits
from .common import (
    D_NOPE,
    D_ROPE,
    LOG2E,
    MAX_TILE_M,
    METADATA_COLS,
    PAGE_SIZE,
    SCHEDULE_OVERHEAD_BLOCKS,
    TileConfig,
    cdiv,
    device_limits,
    is_interpreter,
    launch_config,
    validate_decode_inputs,
    validate_metadata,
)
from .v2_head_tiled import _attend_blocks, _load_q_tile, _store_tile, _visible_keys

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


@triton.jit
def _mla_decode_v4_kernel(
    q_ptr, kv_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr,
    meta_ptr, num_splits_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kvb, stride_kvt, stride_kvh,
    stride_btb,
    s_q, h_q, heads_per_kv, rows_per_kv, m_tiles,
    qk_scale,
    CAUSAL: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    D_NOPE: tl.constexpr, D_ROPE: tl.constexpr,
    UPCAST: tl.constexpr, NUM_STAGES: tl.constexpr, META_COLS: tl.constexpr,
):
    part = tl.program_id(0)
    kv_head = tl.program_id(1) // m_tiles
    m_start = (tl.program_id(1) % m_tiles) * BLOCK_M
    meta = meta_ptr + part * META_COLS
    begin_req = tl.load(meta + 0)
    begin_block = tl.load(meta + 1)
    end_req = tl.load(meta + 2)
    end_block = tl.load(meta + 3)
    begin_split = tl.load(meta + 4)
    STEPS_PER_PAGE: tl.constexpr = PAGE // BLOCK_N

    for req_i in range(begin_req, end_req + 1):
        req = tl.cast(req_i, tl.int32)  # a tensor also in the interpreter (where range yields ints)
        s_k = tl.load(seqlens_ptr + req)
        n_blocks = tl.cdiv(s_k, BLOCK_N)
        # this range's piece of the request, in pages, then in BLOCK_N steps
        lo = tl.where(req == begin_req, begin_block, 0)
        hi = tl.where(req == end_req, end_block, tl.cdiv(s_k, PAGE))
        n_lo = lo * STEPS_PER_PAGE
        n_hi = tl.minimum(hi * STEPS_PER_PAGE, n_blocks)
        split = tl.where(req == begin_req, begin_split, 0)
        first_slot = tl.load(num_splits_ptr + req)
        pieces = tl.load(num_splits_ptr + req + 1) - first_slot

        q_nope, q_rope, tok, head, row_ok = _load_q_tile(
            q_ptr, req, kv_head, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv, rows_per_kv,
            BLOCK_M, D_NOPE, D_ROPE, UPCAST,
        )
        n_visible = _visible_keys(s_k, tok, s_q, CAUSAL)
        acc = tl.zeros([BLOCK_M, D_NOPE], tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc, m_i, l_i = _attend_blocks(
            q_nope, q_rope, acc, m_i, l_i,
            kv_ptr, block_table_ptr + req.to(tl.int64) * stride_btb, kv_head,
            stride_kvb, stride_kvt, stride_kvh,
            n_lo, n_hi, s_k, n_visible, qk_scale,
            PAGE, BLOCK_N, D_NOPE, D_ROPE, UPCAST, NUM_STAGES,
        )
        if pieces == 1:  # the whole request is ours: final output, no combine
            _store_tile(out_ptr, lse_ptr, req, tok, head, row_ok, acc, m_i, l_i, s_q, h_q, True, D_NOPE, UPCAST)
        else:
            _store_tile(part_out_ptr, part_lse_ptr, first_slot + split, tok, head, row_ok, acc, m_i, l_i,
                        s_q, h_q, False, D_NOPE, UPCAST)


def mla_decode_v4(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int = D_NOPE,
    softmax_scale: float | None = None,
    causal: bool = False,
    *,
    tile_scheduler_metadata: torch.Tensor | None = None,
    num_splits: torch.Tensor | None = None,
    config: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged MLA decode, version 4 (balanced schedule). Computes the metadata if not given."""
    dims = validate_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal)
    if (tile_scheduler_metadata is None) != (num_splits is None):
        raise ValueError("tile_scheduler_metadata and num_splits must be given together (from get_mla_metadata)")
    if tile_scheduler_metadata is None:
        tile_scheduler_metadata, num_splits = get_mla_metadata(cache_seqlens, dims.rows_per_kv, dims.h_kv)
    validate_metadata(tile_scheduler_metadata, num_splits, dims.batch, q.device)
    return _launch_v4(q, k_cache, block_table, cache_seqlens, dims, causal, tile_scheduler_metadata, num_splits,
                      config)


def _launch_v4(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, config=None):
    cfg = config or launch_config(dims.rows_per_kv, q.device)
    b, s_q, h_q = dims.batch, dims.s_q, dims.h_q
    parts = meta.shape[0]
    m_tiles = cdiv(dims.rows_per_kv, cfg.block_m)
    out = torch.empty(b, s_q, h_q, D_NOPE, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    # at most b + parts - 1 pieces in all (each of the parts-1 inner cuts adds one): no sync needed
    slots = b + parts
    part_out = torch.empty(slots, s_q * h_q, D_NOPE, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(slots, s_q * h_q, dtype=torch.float32, device=q.device)
    _mla_decode_v4_kernel[(parts, dims.h_kv * m_tiles)](
        q, k_cache, block_table, cache_seqlens, out, lse, part_out, part_lse,
        meta, num_splits,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_table.stride(0),
        s_q, h_q, dims.heads_per_kv, dims.rows_per_kv, m_tiles,
        dims.scale * LOG2E,
        CAUSAL=causal, PAGE=PAGE_SIZE, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        D_NOPE=D_NOPE, D_ROPE=D_ROPE, UPCAST=is_interpreter(), NUM_STAGES=cfg.num_stages,
        META_COLS=meta.shape[1], num_warps=cfg.num_warps,
    )
    combine_splits(part_out, part_lse, num_splits, out, lse)
    return out, lse
