# version 5, small tiles (fewer than 64 query rows per KV head, e.g. h_q = 16 at s_q = 1): plain Triton.
#
# v4's 16-row tile spills: with a 16-row tile Triton lays the warps along N ([1, 4]), so every warp holds
# the whole 16x512 query in registers (128 per thread), next to two register layouts of the key tile
# (Kᵀ for the scores, K as V), the 16x512 accumulator and the scores: 255 registers and 300-470 bytes of
# spills per thread at 4 warps (sm_90a compile reports, scripts/compile_offline.py).
# Here the 576 columns are walked in four 128-column chunks plus the 64 RoPE columns, and the query chunk is
# re-read from L1 at each key step instead of being held for the whole request; each key chunk is loaded once
# and serves both the score dot and, as V, the output chunk it belongs to. Live registers per thread: one query
# chunk, one key chunk, the scores and the four 16x128 accumulator chunks.
# Expected: no spills at 4 warps, two programs per SM (the probe recipe: 0.91 of copy at h16 sk4096).
# Measured: see docs/results/ and the docstring of mla_decode_v5.
#
# FP8 cache (IS_FP8, FlashMLA's 656-byte rows, mla_tutorial/fp8.py): each 128-column key chunk is one scale tile,
# so a chunk is loaded as 128 e4m3 bytes per key plus that key's float32 scale, multiplied and cast to bf16
# (exact: e4m3 values times a power of two fit bf16), and from there on the loop is the bf16 one; the 64 RoPE
# columns are read as bf16 from byte 528. Bytes per key: 656 instead of 1,152 (1.76x fewer); the extra work is
# one convert and one multiply per cached value, on the CUDA cores. The e4m3 bytes come by plain loads or, with
# FP8_LOADS = "tma", by tensor-descriptor copies (which Triton pipelines; see FP8_LOADS).
"""Version 5, small-tile path: v4's schedule with a register-lean key loop (plain Triton, runs in the interpreter)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..fp8 import ROPE_OFFSET, ROW_BYTES, SCALE_OFFSET
from .blocks import _cast, _visible_keys
from .common import (
    D_NOPE,
    D_ROPE,
    LOG2E,
    PAGE_SIZE,
    TileConfig,
    cdiv,
    interpreter_config,
    is_interpreter,
    tile_block_m,
)
from .launch import FastLauncher

FP8_SCALES_AT = tl.constexpr(SCALE_OFFSET)  # byte 512 of an FP8 row: 4 float32 scales, one per 128 values
FP8_ROPE_AT = tl.constexpr(ROPE_OFFSET)  # byte 528: the 64 RoPE values in bf16
FP8_ROW = tl.constexpr(ROW_BYTES)  # 656 bytes per row


@triton.jit
def _store_chunks(out_ptr, lse_ptr, slot, tok, head, row_ok, acc0, acc1, acc2, acc3, m_i, l_i, s_q, h_q,
                  FINAL: tl.constexpr, D_NOPE: tl.constexpr, CW: tl.constexpr, UPCAST: tl.constexpr):
    """_store_tile for an accumulator kept as four 128-column chunks."""
    has_keys = l_i > 0
    l_safe = tl.where(has_keys, l_i, 1.0)
    row = (slot.to(tl.int64) * s_q + tok) * h_q + head
    ptrs = out_ptr + row[:, None] * D_NOPE + tl.arange(0, CW)[None, :]
    dt = out_ptr.dtype.element_ty
    tl.store(ptrs, _cast(acc0 / l_safe[:, None], dt, UPCAST), mask=row_ok[:, None])
    tl.store(ptrs + CW, _cast(acc1 / l_safe[:, None], dt, UPCAST), mask=row_ok[:, None])
    tl.store(ptrs + 2 * CW, _cast(acc2 / l_safe[:, None], dt, UPCAST), mask=row_ok[:, None])
    tl.store(ptrs + 3 * CW, _cast(acc3 / l_safe[:, None], dt, UPCAST), mask=row_ok[:, None])
    lse = (m_i + tl.log2(l_safe)) * 0.6931471805599453
    if FINAL:
        tl.store(lse_ptr + (slot.to(tl.int64) * h_q + head) * s_q + tok, tl.where(has_keys, lse, float("inf")),
                 mask=row_ok)
    else:
        tl.store(lse_ptr + row, tl.where(has_keys, lse, float("-inf")), mask=row_ok)


@triton.jit
def _dot_chunk(q_base, k_rows, valid, q_ok, col0, s, CW: tl.constexpr, UPCAST: tl.constexpr):
    """s += Q[:, col0:col0+CW] · K[:, col0:col0+CW]ᵀ; returns (s, the key chunk)."""
    offs = col0 + tl.arange(0, CW)
    qc = tl.load(q_base[:, None] + offs[None, :], mask=q_ok[:, None], other=0.0)
    kc = tl.load(k_rows[:, None] + offs[None, :], mask=valid[:, None], other=0.0)
    if UPCAST:
        qc = qc.to(tl.float32)
        kc = kc.to(tl.float32)
    return tl.dot(qc, tl.trans(kc), s), kc


@triton.jit
def _dot_chunk_fp8(q_base, k_rows, scale_rows, valid, q_ok, tile, s, desc, page, row0, kv_head,
                   CW: tl.constexpr, UPCAST: tl.constexpr, TMA: tl.constexpr):
    """_dot_chunk for FP8 rows: key chunk `tile` = its 128 e4m3 values times the key's scale `tile`, as bf16.

    TMA: the chunk comes by one tensor-descriptor copy of the page's rows [row0, row0 + BLOCK_N), which Triton
    pipelines (a plain load converted before the dot is not turned into cp.async); rows past the request's length
    come along (they may hold NaN) and are zeroed here.
    """
    offs = tile * CW + tl.arange(0, CW)
    qc = tl.load(q_base[:, None] + offs[None, :], mask=q_ok[:, None], other=0.0)
    if TMA:
        k8 = desc.load([page, row0, kv_head, tile * CW]).reshape(k_rows.shape[0], CW)  # (BLOCK_N, CW) e4m3
    else:
        k8 = tl.load(k_rows[:, None] + offs[None, :], mask=valid[:, None], other=0.0)  # (BLOCK_N, CW) e4m3
    scale = tl.load(scale_rows + tile, mask=valid, other=0.0)  # (BLOCK_N,) float32, a power of two
    kc = k8.to(tl.float32) * scale[:, None]  # exact: 4 significant bits times a power of two
    if TMA:
        kc = tl.where(valid[:, None], kc, 0.0)
    if UPCAST:
        qc = qc.to(tl.float32)
    else:
        kc = kc.to(tl.bfloat16)  # exact too; from here on the chunk is a bf16 key (and value) tile
    return tl.dot(qc, tl.trans(kc), s), kc


@triton.jit
def _mla_decode_v5_small_kernel(
    q_ptr, kv_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr,
    meta_ptr, num_splits_ptr, ok_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kvb, stride_kvt, stride_kvh,
    stride_btb,
    s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks, max_blocks,
    qk_scale,
    CAUSAL: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    D_NOPE: tl.constexpr, D_ROPE: tl.constexpr,
    UPCAST: tl.constexpr, NUM_STAGES: tl.constexpr, META_COLS: tl.constexpr, IS_FP8: tl.constexpr = False,
    FP8_TMA: tl.constexpr = False,
):
    CW: tl.constexpr = 128  # latent columns per chunk: 4 chunks of 128 + the 64 RoPE columns (= FP8 scale tiles)
    part = tl.program_id(0)
    kv_head = tl.program_id(1) // m_tiles
    m_start = (tl.program_id(1) % m_tiles) * BLOCK_M
    meta = meta_ptr + part * META_COLS
    begin_req = tl.load(meta + 0)
    begin_block = tl.load(meta + 1)
    end_req = tl.load(meta + 2)
    end_block = tl.load(meta + 3)
    begin_split = tl.load(meta + 4)
    # where the next part starts: a fresh schedule hands a request cut here to it (stale-schedule check below)
    last_part = part == tl.num_programs(0) - 1
    next_req = tl.load(meta + META_COLS, mask=not last_part, other=-1)
    next_block = tl.load(meta + META_COLS + 1, mask=not last_part, other=-1)
    STEPS_PER_PAGE: tl.constexpr = PAGE // BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    if FP8_TMA:  # the FP8 pool [num_blocks, PAGE, h_kv, 656] as a TMA descriptor, one 128-byte chunk of BLOCK_N rows
        desc = tl.make_tensor_descriptor(kv_ptr, shape=[num_blocks, PAGE, h_q // heads_per_kv, FP8_ROW],
                                         strides=[stride_kvb, stride_kvt, stride_kvh, 1],
                                         block_shape=[1, BLOCK_N, 1, 128])
    else:
        desc = kv_ptr

    for req_i in range(begin_req, end_req + 1):
        req = tl.cast(req_i, tl.int32)
        s_k = tl.load(seqlens_ptr + req)
        n_pages = tl.cdiv(s_k, PAGE)
        # A schedule built for other lengths would skip pages or leave a partial unwritten: flag it, no wrong answer
        stale = (req == begin_req) & (begin_block > 0) & (begin_block >= n_pages)
        stale |= (req == end_req) & (end_block < n_pages) & ((next_req != req) | (next_block != end_block))
        stale |= (s_k < 0) | (n_pages > max_blocks)  # a length the block table cannot hold
        tl.store(ok_ptr, 0, mask=stale)
        n_pages = tl.minimum(n_pages, max_blocks)  # never read past the request's row of the table
        lo = tl.where(req == begin_req, begin_block, 0)
        hi = tl.minimum(tl.where(req == end_req, end_block, n_pages), n_pages)
        n_blocks = tl.cdiv(tl.minimum(s_k, n_pages * PAGE), BLOCK_N)  # key steps inside the readable pages
        n_lo = lo * STEPS_PER_PAGE
        n_hi = tl.minimum(hi * STEPS_PER_PAGE, n_blocks)
        split = tl.where(req == begin_req, begin_split, 0)
        first_slot = tl.load(num_splits_ptr + req)
        pieces = tl.load(num_splits_ptr + req + 1) - first_slot

        rows = m_start + tl.arange(0, BLOCK_M)
        row_ok = rows < rows_per_kv
        tok = rows // heads_per_kv
        head = kv_head * heads_per_kv + rows % heads_per_kv
        q_base = q_ptr + req.to(tl.int64) * stride_qb + tok * stride_qs + head * stride_qh  # (BLOCK_M,)
        n_visible = _visible_keys(s_k, tok, s_q, CAUSAL)
        bt_row = block_table_ptr + req.to(tl.int64) * stride_btb
        acc0 = tl.zeros([BLOCK_M, CW], tl.float32)
        acc1 = tl.zeros([BLOCK_M, CW], tl.float32)
        acc2 = tl.zeros([BLOCK_M, CW], tl.float32)
        acc3 = tl.zeros([BLOCK_M, CW], tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        for nb in tl.range(n_lo, n_hi, num_stages=NUM_STAGES):
            start = nb * BLOCK_N
            page = tl.load(bt_row + start // PAGE).to(tl.int64)
            bad = (page < 0) | (page >= num_blocks)  # never followed: reported through err_ptr instead
            tl.store(ok_ptr, 0, mask=bad)
            page = tl.where(bad, 0, page)
            k_rows = kv_ptr + page * stride_kvb + (start % PAGE + offs_n) * stride_kvt + kv_head * stride_kvh
            keys = start + offs_n
            valid = (keys < s_k) & (not bad)
            s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            if IS_FP8:  # k_rows point at bytes: 512 e4m3 values, 4 float32 scales, 64 bf16 RoPE values
                scale_rows = (k_rows + FP8_SCALES_AT).to(tl.pointer_type(tl.float32))
                rope_rows = (k_rows + FP8_ROPE_AT).to(tl.pointer_type(tl.bfloat16))
                page32, row0 = page.to(tl.int32), start % PAGE
                s, k0 = _dot_chunk_fp8(q_base, k_rows, scale_rows, valid, row_ok, 0, s, desc, page32, row0, kv_head,
                                       CW, UPCAST, FP8_TMA)
                s, k1 = _dot_chunk_fp8(q_base, k_rows, scale_rows, valid, row_ok, 1, s, desc, page32, row0, kv_head,
                                       CW, UPCAST, FP8_TMA)
                s, k2 = _dot_chunk_fp8(q_base, k_rows, scale_rows, valid, row_ok, 2, s, desc, page32, row0, kv_head,
                                       CW, UPCAST, FP8_TMA)
                s, k3 = _dot_chunk_fp8(q_base, k_rows, scale_rows, valid, row_ok, 3, s, desc, page32, row0, kv_head,
                                       CW, UPCAST, FP8_TMA)
                s, _ = _dot_chunk(q_base + D_NOPE, rope_rows, valid, row_ok, 0, s, D_ROPE, UPCAST)
            else:
                s, k0 = _dot_chunk(q_base, k_rows, valid, row_ok, 0, s, CW, UPCAST)
                s, k1 = _dot_chunk(q_base, k_rows, valid, row_ok, CW, s, CW, UPCAST)
                s, k2 = _dot_chunk(q_base, k_rows, valid, row_ok, 2 * CW, s, CW, UPCAST)
                s, k3 = _dot_chunk(q_base, k_rows, valid, row_ok, 3 * CW, s, CW, UPCAST)
                s, _ = _dot_chunk(q_base, k_rows, valid, row_ok, D_NOPE, s, D_ROPE, UPCAST)
            s = tl.where(keys[None, :] < n_visible[:, None], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_use)
            p = tl.exp2(s - m_use[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if UPCAST:  # P in q's dtype: the cache's, or bf16 over an FP8 cache
                p_op = _cast(p, q_ptr.dtype.element_ty, UPCAST).to(tl.float32)
            else:
                p_op = p.to(q_ptr.dtype.element_ty)
            acc0 = tl.dot(p_op, k0, acc0 * alpha[:, None])
            acc1 = tl.dot(p_op, k1, acc1 * alpha[:, None])
            acc2 = tl.dot(p_op, k2, acc2 * alpha[:, None])
            acc3 = tl.dot(p_op, k3, acc3 * alpha[:, None])
            m_i = m_new
        if pieces == 1:
            _store_chunks(out_ptr, lse_ptr, req, tok, head, row_ok, acc0, acc1, acc2, acc3, m_i, l_i, s_q, h_q,
                          True, D_NOPE, CW, UPCAST)
        else:
            _store_chunks(part_out_ptr, part_lse_ptr, first_slot + split, tok, head, row_ok, acc0, acc1, acc2, acc3,
                          m_i, l_i, s_q, h_q, False, D_NOPE, CW, UPCAST)


_LAUNCH = FastLauncher(_mla_decode_v5_small_kernel)

#: (BLOCK_N, warps, stages, programs per SM) per tile height, the fastest measured on the H200 (2026-12-01, b = 128,
#: h_q = 16: 0.187 ms at s_k = 4096 and 0.324 at 8192 against 0.217-0.23 and 0.37-0.42 for the other shapes tried).
#: It spills 64 bytes per thread (sm_90a compile report); the spill-free (16, 4, 4) ran 0.34 ms at s_k = 4096.
SMALL_TILE_CONFIGS = {16: (64, 4, 2, 2), 32: (64, 4, 2, 2), 64: (32, 8, 2, 1)}  # 64: 221 KB of shared memory


#: The same for an FP8 cache, chosen from sm_90a compile reports (Triton 3.6, scripts/compile_offline.py
#: v5s-fp8:...) and then timed on the H200 (b = 128, s_k = 4096; docs/results/probes/fp8_configs_h200_2026-12-02.json
#: and fp8_dequant_h200_2026-12-02.json): at 16 rows (64, 4, 2, 2) was the fastest of 13 configurations (0.370 ms);
#: at 64 rows (h_q 128) (64, 8, 1, 1) took 1.237 and 1.222 ms in two runs against 1.295 and 1.297 for (32, 8, 2, 1),
#: its output equal to (32, 8, 2, 1)'s within one bf16 ulp (0.00098). Compile reports: 16 rows (64, 4, 2): 255
#: registers, 108 B of spill stores, 109,568 B shared (two programs per SM); 32 rows (32, 8, 2): 64 B of spill stores,
#: 82,432 B shared; 64 rows (64, 8, 1): 420 B of spill stores (faster all the same), 81,920 B shared. The e4m3 bytes
#: are loaded with plain loads: Triton 3.6 does not turn a load whose value is converted before a dot into cp.async
#: (the scales, the RoPE part and q are pipelined, the 512 bytes of c_kv are not). Dequantizing by integer bit moves
#: instead of conversions was slower (commit 9f70922, docs/results/v5_notes.md).
FP8_SMALL_TILE_CONFIGS = {16: (64, 4, 2, 2), 32: (32, 8, 2, 1), 64: (64, 8, 1, 1)}

#: How the FP8 tile reads the 512 e4m3 bytes of each key: "pointer" (plain loads) or "tma" (a device-side tensor
#: descriptor, which Triton 3.6 pipelines; needs strides that are multiples of 16 bytes and a 16-byte aligned
#: cache, else "pointer" runs). Timed on the H200 (same file): plain loads were faster in every configuration
#: (h_q 16: 0.370 against 0.410 ms at best; h_q 128: 1.295 against 1.390).
FP8_LOADS = "pointer"

#: Launch configurations for FP8_LOADS = "tma", from the same compile reports: 16 rows (32, 4, 2): 16 B of spill
#: stores, 80,440 B shared (two programs per SM; (64, 4, 2) needs 142,392 B, one per SM); 32 rows (32, 8, 2): no
#: spills, 98,872 B; 64 rows (32, 8, 2): 196 B of spill stores, 205,368 B.
FP8_TMA_SMALL_TILE_CONFIGS = {16: (32, 4, 2, 2), 32: (32, 8, 2, 1), 64: (32, 8, 2, 1)}


def _tma_scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Global scratch for device-side tensor descriptors (Triton asks for it through triton.set_allocator)."""
    return torch.empty(size, dtype=torch.int8, device=_SCRATCH_DEVICE[0])


_SCRATCH_DEVICE: list = [None]


def fp8_tma_usable(k_cache: torch.Tensor) -> bool:
    """Whether a TMA descriptor can address this FP8 cache: 16-byte aligned start and strides."""
    return k_cache.data_ptr() % 16 == 0 and all(st % 16 == 0 for st in k_cache.stride()[:-1])


def small_tile_config(rows_per_kv: int, device, is_fp8: bool = False) -> TileConfig:
    """The small tile's launch configuration (the interpreter's cheap one on CPU)."""
    if device.type != "cuda":
        return interpreter_config(rows_per_kv)
    block_m = tile_block_m(rows_per_kv)
    if not is_fp8:
        return TileConfig(block_m, *SMALL_TILE_CONFIGS[block_m])
    return TileConfig(block_m, *(FP8_TMA_SMALL_TILE_CONFIGS if FP8_LOADS == "tma" else FP8_SMALL_TILE_CONFIGS)[block_m])


def launch_v5_small(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                    part_lse, ok_flag, cfg, is_fp8=False):
    """Launch the small-tile kernel over the schedule `meta` with launch configuration `cfg` (a TileConfig).

    is_fp8: k_cache is FlashMLA's FP8 cache (float8_e4m3fn [num_blocks, 64, h_kv, 656]; strides in bytes)."""
    m_tiles = cdiv(dims.rows_per_kv, cfg.block_m)
    tma = is_fp8 and FP8_LOADS == "tma" and fp8_tma_usable(k_cache)
    if tma:  # device-side descriptors need global scratch (128 bytes per program), asked of this allocator
        _SCRATCH_DEVICE[0] = k_cache.device
        triton.set_allocator(_tma_scratch)
    _LAUNCH(
        (meta.shape[0], dims.h_kv * m_tiles),
        q, k_cache, block_table, cache_seqlens, out, lse, part_out, part_lse, meta, num_splits, ok_flag,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_table.stride(0),
        dims.s_q, dims.h_q, dims.heads_per_kv, dims.rows_per_kv, m_tiles, dims.num_blocks, dims.max_blocks,
        dims.scale * LOG2E,
        CAUSAL=causal, PAGE=PAGE_SIZE, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        D_NOPE=D_NOPE, D_ROPE=D_ROPE, UPCAST=is_interpreter(), NUM_STAGES=cfg.num_stages,
        META_COLS=meta.shape[1], IS_FP8=is_fp8, FP8_TMA=tma, num_warps=cfg.num_warps,
    )
