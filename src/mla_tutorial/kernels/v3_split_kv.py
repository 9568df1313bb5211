# version 3: v2 + split-KV. Each request's keys are cut into S equal ranges, one program per
# (request, KV head, query tile, split); each writes an fp32 partial output and its log-sum-exp, and
# the combine kernel (combine.py) merges them with weights exp(lse_i − lse).
#
# Why: v2 launches b·h_kv·ceil(s_q·h_q/h_kv/64) programs. At b=1 that is ONE program streaming the
# whole cache through one SM (~20-25 GB/s of the H100's ~3000 GB/s). With S splits, S SMs stream in
# parallel: S is chosen so the grid fills every SM (S ≈ #SMs · programs-per-SM / (b·h_kv·tiles)).
# Bytes added: partials, S·s_q·h_q·(512+1)·4 B written and read back per request. At b=1, h_q=16,
#   s_k=32k: 37.7 MB of cache vs ~2 MB of partials; expected ~50-100x over v2 at b=1, ~1x at b=128
#   (where S=1 or 2, still one wave; its loss is the combine pass and uneven lengths: S is the same
#   for every request, so a long request still takes S times longer than a short one. v4 fixes that).
# Measured (H100, 2026-11-27): b=1 h_q=16 s_k=32768 0.122 ms (12x over v2); b=128 uneven lengths
#   h_q=16 s_k=4096 0.31 ms (v4 1.22x faster); fixed lengths within ±10% of v4.
"""Version 3 of the stage-4 kernel ladder: split-KV with a combine kernel."""

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
    device_limits,
    is_interpreter,
    launch_config,
    validate_decode_inputs,
)


@triton.jit
def _mla_decode_v3_kernel(
    q_ptr, kv_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kvb, stride_kvt, stride_kvh,
    stride_btb,
    s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_splits,
    qk_scale,
    CAUSAL: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    D_NOPE: tl.constexpr, D_ROPE: tl.constexpr,
    UPCAST: tl.constexpr, NUM_STAGES: tl.constexpr,
    FINAL: tl.constexpr,  # num_splits == 1: write out/lse directly, no combine
):
    req = tl.program_id(0)
    kv_head = tl.program_id(1) // m_tiles
    m_start = (tl.program_id(1) % m_tiles) * BLOCK_M
    split = tl.program_id(2)

    s_k = tl.load(seqlens_ptr + req)
    n_blocks = tl.cdiv(s_k, BLOCK_N)
    per_split = tl.cdiv(n_blocks, num_splits)  # this request's keys, cut into num_splits equal ranges
    n_lo = split * per_split
    n_hi = tl.minimum(n_lo + per_split, n_blocks)  # may be empty: then the partial has lse = -inf

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
    slot = req * num_splits + split  # FINAL: slot == req
    _store_tile(out_ptr, lse_ptr, slot, tok, head, row_ok, acc, m_i, l_i, s_q, h_q, FINAL, D_NOPE, UPCAST)


def choose_num_splits(batch: int, programs_per_split: int, max_blocks: int, cfg: TileConfig, device) -> int:
    """Splits per request so that the grid fills the GPU once (host-side: sizes only, no sync)."""
    limits = device_limits(device)
    slots = limits.sm_count * cfg.ctas_per_sm  # programs that run at once
    programs = batch * programs_per_split
    max_useful = max(1, max_blocks * PAGE_SIZE // cfg.block_n)  # no more splits than key blocks
    return max(1, min(cdiv(slots, programs), max_useful, 64))


def mla_decode_v3(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int = D_NOPE,
    softmax_scale: float | None = None,
    causal: bool = False,
    *,
    num_splits: int | None = None,
    config: TileConfig | None = None,
    check_bounds: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged MLA decode, version 3 (split-KV). Returns (out [b, s_q, h_q, 512] in q.dtype, lse [b, h_q, s_q])."""
    # check_bounds=False skips the device-side bounds assertion on a GPU (benchmarks; FlashMLA never checks)
    dims = validate_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                  check_values=check_bounds or not _on_gpu(q))
    cfg = config or launch_config(dims.rows_per_kv, q.device)
    b, s_q, h_q = dims.batch, dims.s_q, dims.h_q
    m_tiles = cdiv(dims.rows_per_kv, cfg.block_m)
    if num_splits is None:
        num_splits = choose_num_splits(b, dims.h_kv * m_tiles, dims.max_blocks, cfg, q.device)
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be a positive int, got {num_splits!r}")
    out = torch.empty(b, s_q, h_q, D_NOPE, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    final = num_splits == 1
    if final:
        part_out, part_lse = out, lse
    else:
        part_out = torch.empty(b * num_splits, s_q * h_q, D_NOPE, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(b * num_splits, s_q * h_q, dtype=torch.float32, device=q.device)
    _mla_decode_v3_kernel[(b, dims.h_kv * m_tiles, num_splits)](
        q, k_cache, block_table, cache_seqlens, part_out, part_lse,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_table.stride(0),
        s_q, h_q, dims.heads_per_kv, dims.rows_per_kv, m_tiles, num_splits,
        dims.scale * LOG2E,
        CAUSAL=causal, PAGE=PAGE_SIZE, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        D_NOPE=D_NOPE, D_ROPE=D_ROPE, UPCAST=is_interpreter(), NUM_STAGES=cfg.num_stages,
        FINAL=final, num_warps=cfg.num_warps,
    )
    if not final:
        split_offsets = torch.arange(0, (b + 1) * num_splits, num_splits, dtype=torch.int32, device=q.device)
        combine_splits(part_out, part_lse, split_offsets, out, lse)
    return out, lse
