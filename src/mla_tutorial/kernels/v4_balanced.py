# version 4 (production): v3 + a load-balanced schedule computed on the GPU (FlashMLA's scheme).
#
# v3 cuts every request into the same number of splits, so with uneven lengths (s_k ~ N(4096, 2048))
# the program holding the longest request's split finishes last while other SMs idle, and short
# requests pay the partial/combine traffic for nothing. v4 instead gives every program of one wave the same
# amount of work (get_mla_metadata, FlashMLA's walk; schedule.py): a piece of request r costs its pages plus a
# fixed overhead (q load, output store; 5 units for 64-row tiles, 2 for the small tile), each of num_sm_parts ≈
# #SMs·(programs per SM) / h_kv / ceil(s_q·h_q/h_kv / 64) parts gets the even share plus one overhead, and parts
# take whole requests in order, cutting one only where at least a page fits. A part may cover the tail of one
# request, several whole requests and the head of the next; only cut requests are split and need the combine.
# One wave of programs (grid = num_sm_parts x h_kv·tiles). (Until 2026-12-03 the schedule cut one line of units
# into exact even shares: the measurements below were made on that.) The schedule is computed on the device by one
# small kernel: no host sync, so the metadata and the kernels can be captured in a CUDA graph and replayed with new
# lengths.
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

from .blocks import _attend_blocks, _load_q_tile, _store_tile, _visible_keys
from .combine import combine_splits
from .common import (
    D_NOPE,
    D_ROPE,
    LOG2E,
    PAGE_SIZE,
    TileConfig,
    _on_gpu,
    cdiv,
    is_interpreter,
    launch_config,
    validate_decode_inputs,
    validate_metadata,
)
from .schedule import get_mla_metadata


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
    check_bounds: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged MLA decode, version 4 (balanced schedule). Computes the metadata if not given."""
    # check_bounds=False skips the device-side bounds assertion on a GPU (benchmarks; FlashMLA never checks)
    dims = validate_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                  check_values=check_bounds or not _on_gpu(q))
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
