# version 5, FP8 cache, 16-row tiles fed by TMA: v5_fp8_mma.py with each page's bytes brought into shared memory
# by the copy engine instead of by each thread's loads (stage 5; forced with path "tma", not routed).
#
# What it changes against v5_fp8_mma.py (same products, softmax, schedule and semantics):
#   * the raw 656-byte rows (e4m3 values, scales, bf16 k_rope) come by TMA, half a page (32 rows, 21 KB) per copy,
#     into a ring of two raw slots on mbarriers, issued two half-pages ahead; the threads then read them from shared
#     memory, dequantize into the bf16 slot and copy k_rope into its box. No page bytes pass through registers in
#     flight, no cp.async groups, and the loads of a program no longer wait in the L1 pipeline behind each other.
#   * 32 keys per step instead of 64 (a half page), so that the bf16 slot (32 KB) and the raw ring (42 KB) fit two
#     programs per SM: Q 18 KB + 32 KB + 42 KB + k_rope 4 KB + P 1 KB = 97 KB.
#   Per step: wait for its raw slot -> dequantize it into the bf16 slot, k_rope into its box (rows past s_k, or of
#   a bad block id, as zeros) -> barrier -> the raw slot's next copy (two steps ahead) -> S [16, 32] -> softmax ->
#   P to shared memory -> barrier -> P·V [16, 512] -> barrier.
# Why (docs/results/v5_notes.md, sixth session): the 16-row tile's page loads alone (its MODE 3) take 0.140 ms at
#   h16 s_k 4k, 53 % of DRAM bandwidth, its warps stalled on the load queue (lg_throttle 2.0 and long scoreboard
#   6.9 cycles per issued instruction): the register-load path holds one page per program in flight and drains it
#   before the next, so it is the page work's floor (0.175 ms alone). Its dequantization alone takes 0.081-0.093.
#   TMA streamed bf16 pages at 0.99 of copy bandwidth with one 72 KB slot per SM (probes/page_stream_h200_*.json).
# Expected (H200, b 128, s_k 4096, h_q 16): loads near the copy ceiling (~0.08 ms for the 344 MB), so the page work
#   ~ the dequantization (~0.09) and the whole ~0.15-0.19 ms against 0.258 for v5_fp8_mma.py and 0.168 for FlashMLA
#   (FlashMLA / ours ~0.9-1.1; target 1.5). Risks: twice the steps (barriers, softmax) per page; ld.shared of the
#   raw rows with 2-way bank conflicts; one k_buf, so a program's dequantization still waits for its own P·V.
# sm_90a (scripts/compile_offline.py v5ftma): 188 registers, no spills, 98,576 B of shared memory.
# Bought (H200, 2026-12-02, docs/results/probes/fp8_tma_first_h200_2026-12-02.json, FlashMLA in the same run):
#   correct on its first run (the hostile matrix: h_q 1-128, s_q 1-2, poisoned bytes) and SLOWER: 0.301 ms at h16
#   s_k 4k (~N lengths 0.304) against 0.258 for v5_fp8_mma.py and 0.168 for FlashMLA. The loads were the floor of
#   the page work timed alone, not of the whole: in the whole tile they already overlapped the products, and what
#   stays serial in each program (dequantize, S, softmax, P·V, on one bf16 slot) now runs twice per page with its
#   three barriers. Not routed; kept as the measured step (its parts alone are not yet split).
"""Version 5 over an FP8 cache, 16-row tiles with mma.sync, pages by TMA into shared memory (Gluon, Triton 3.6)."""

from __future__ import annotations

import torch

from .launch import FastLauncher
from .v5_fp8_gluon import _fp8_chunk, _fp8_page, fp8_tile_launch_args
from .v5_fp8_mma import BLOCK_M16, _m16_scores, _m16_start, _m16_store, _m16_values
from .v5_gluon import (
    TensorDescriptor,
    _Address,
    _v5_load_q,
    _v5_next_part,
    _v5_online_softmax,
    _v5_part,
    _v5_request,
    cached_descriptors,
    fence_async_shared,
    gl,
    gluon,
    mbarrier,
    tma,
)

TMA_WARPS = 4  # warps per program
STEP = 32  # keys per step: half a page
ROW_WORDS = 164  # a 656-byte FP8 row as int32 words: 128 of e4m3 values, 4 scales, 32 of bf16 k_rope pairs
N_RAW = 2  # raw half-page slots in flight


if gluon is not None:

    @gluon.jit
    def _tma_issue(kv_desc, sc_desc, kr_desc, kv_buf, sc_buf, kr_buf, bar, bt_row, t, hi, s_k, num_blocks, ok_ptr):
        """Start the TMA copies of step t (half t % 2 of page t // 2: 32 rows) landing on bar: the e4m3 values as
        int32 words into kv_buf [32, 128], the scales into sc_buf [32, 4], k_rope (bf16, 128-byte swizzle: the
        layout the products read) into kr_buf [32, 64]. A block id outside [0, num_blocks) is not followed (the ok
        flag is cleared; block 0 is copied instead and its rows are zeroed where they are read, _tma_put)."""
        page = _fp8_page(bt_row, t // 2, hi, s_k, num_blocks, ok_ptr)[0]
        row = (page * 64 + (t % 2) * 32).to(gl.int32)
        mbarrier.expect(bar, 32 * 656)
        tma.async_copy_global_to_shared(kv_desc, [row, 0], bar, kv_buf)
        tma.async_copy_global_to_shared(sc_desc, [row, 128], bar, sc_buf)
        tma.async_copy_global_to_shared(kr_desc, [row, 264], bar, kr_buf)

    @gluon.jit
    def _raw_dequant(kv_raw, sc_raw, k_buf, n_rows, dtype: gl.constexpr, num_warps: gl.constexpr):
        """32 raw rows in shared memory (kv_raw [32, 128] int32 words of four e4m3 values, sc_raw [32, 4] float32
        bits) -> c_kv dequantized into k_buf [32, 512] bf16; rows from n_rows on as zeros (past s_k they may hold
        NaN bytes)."""
        # one row per lane (the 512-byte row stride puts 8 rows' 16-byte pieces on 8 bank groups... twice: 2-way
        # conflicts), the warps split the words (4 or 8 warps: 4 or 2 words a thread)
        ldw: gl.constexpr = gl.BlockedLayout([1, 16 // num_warps], [32, 1], [1, num_warps], [1, 0])
        rows = gl.arange(0, 32, layout=gl.SliceLayout(1, ldw))
        ok = rows < n_rows
        sc_cols = gl.arange(0, 4, layout=gl.SliceLayout(0, ldw))
        scales = sc_raw.load(ldw).to(gl.float32, bitcast=True)  # [32, 4] (the warps hold copies)
        scales = gl.where(ok[:, None], scales, 0.0)
        for c in gl.static_range(8):
            w = kv_raw.slice(16 * c, 16, dim=1).load(ldw)  # [32, 16] words of chunk c
            scale = gl.sum(gl.where(sc_cols[None, :] == c // 2, scales, 0.0), axis=1)  # the chunk's tile scale
            _fp8_chunk(k_buf.slice(64 * c, 64, dim=1), gl.where(ok[:, None], w, 0), scale, dtype)

    @gluon.jit
    def _tma_put(kv_raw, sc_raw, kr_buf, k_buf, n_rows, dtype: gl.constexpr, num_warps: gl.constexpr):
        """A step's raw rows -> c_kv dequantized into k_buf (_raw_dequant); rows from n_rows on as zeros, in k_rope's
        box kr_buf [32, 64] too."""
        _raw_dequant(kv_raw, sc_raw, k_buf, n_rows, dtype, num_warps)
        if n_rows < 32:  # the request's last step (or a bad block id): k_rope's rows past it as zeros too
            ldr: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
            rows_r = gl.arange(0, 32, layout=gl.SliceLayout(1, ldr))
            x = kr_buf.load(ldr)
            kr_buf.store(gl.where((rows_r < n_rows)[:, None], x, gl.zeros_like(x)))

    @gluon.jit
    def _v5_fp8_tma_kernel(
        q_ptr, kv_ptr, kv_desc, sc_desc, kr_desc, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr,
        part_lse_ptr, meta_ptr, num_splits_ptr, ok_ptr,
        stride_qb, stride_qs, stride_qh, stride_kvb, stride_btb,
        s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks, max_blocks,
        qk_scale,
        CAUSAL: gl.constexpr, META_COLS: gl.constexpr, num_warps: gl.constexpr,
    ):
        BM: gl.constexpr = 16
        KEYS: gl.constexpr = 32
        CHUNK: gl.constexpr = 64
        D_V: gl.constexpr = 512
        NRAW: gl.constexpr = 2
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, num_warps],
                                                      instr_shape=[16, 8])
        a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        b_op: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        rows_l: gl.constexpr = gl.SliceLayout(1, mma)
        cols_l: gl.constexpr = gl.SliceLayout(0, mma)
        smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        dtype: gl.constexpr = q_ptr.dtype.element_ty

        q_smem = gl.allocate_shared_memory(dtype, [BM, D_V], smem_layout)  # Q's latent part
        qr_smem = gl.allocate_shared_memory(dtype, [BM, CHUNK], smem_layout)  # Q's RoPE part
        k_buf = gl.allocate_shared_memory(dtype, [KEYS, D_V], smem_layout)  # the step's dequantized c_kv (K, V)
        p_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=64, element_bitwidth=16, rank=2)
        p_smem = gl.allocate_shared_memory(dtype, [BM, KEYS], p_layout)  # (a 64-byte row: 64-byte swizzle)
        kv_raw = gl.allocate_shared_memory(gl.int32, [NRAW, KEYS, 128], kv_desc.layout)  # steps in flight: e4m3,
        sc_raw = gl.allocate_shared_memory(gl.int32, [NRAW, KEYS, 4], sc_desc.layout)  # scales,
        kr_bufs = gl.allocate_shared_memory(dtype, [NRAW + 1, KEYS, CHUNK], smem_layout)  # k_rope (one more box:
        #                                                       a step's copy is issued before S reads the box before)
        bars = gl.allocate_shared_memory(gl.int64, [NRAW, 1], mbarrier.MBarrierLayout())
        for k in gl.static_range(NRAW):
            mbarrier.init(bars.index(k), count=1)

        m_start = (gl.program_id(1) % m_tiles) * BM
        begin_req, begin_block, end_req, end_block, begin_split = _v5_part(meta_ptr, META_COLS)
        next_req, next_block = _v5_next_part(meta_ptr, META_COLS)
        g = 0  # steps consumed so far by this program: step g is in raw slot g % NRAW, phase (g // NRAW) % 2

        for req in range(begin_req, end_req + 1):
            s_k, lo, hi, part_slot, pieces, bt_row = _v5_request(
                seqlens_ptr, ok_ptr, num_splits_ptr, block_table_ptr, stride_btb, req, begin_req, begin_block, end_req,
                end_block, begin_split, next_req, next_block, max_blocks)

            fence_async_shared()  # every thread's reads and writes of the slots come before the copy engine's
            gl.thread_barrier()  # writes, and every warp is done with the previous request's Q and slots
            for k in gl.static_range(NRAW):  # prologue: the request's first two steps in flight
                if 2 * lo + k < 2 * hi:
                    sl = (g + k) % NRAW
                    _tma_issue(kv_desc, sc_desc, kr_desc, kv_raw.index(sl), sc_raw.index(sl),
                               kr_bufs.index((g + k) % (NRAW + 1)), bars.index(sl), bt_row, 2 * lo + k, hi, s_k,
                               num_blocks, ok_ptr)
            _v5_load_q(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv,
                       rows_per_kv, 0, 9, CHUNK, BM, num_warps)

            rows, tok, n_visible, m_i, l_i, acc0, acc1, acc2, acc3 = _m16_start(m_start, heads_per_kv, s_k, s_q,
                                                                                CAUSAL, rows_l, mma)
            for t in range(2 * lo, 2 * hi):
                slot = g % NRAW
                first_key = t * KEYS
                page_rows = _fp8_page(bt_row, t // 2, hi, s_k, num_blocks, ok_ptr)[1]  # 0 for a bad block id
                mbarrier.wait(bars.index(slot), (g // NRAW) % 2)
                kr_buf = kr_bufs.index(g % (NRAW + 1))
                _tma_put(kv_raw.index(slot), sc_raw.index(slot), kr_buf, k_buf, page_rows - (t % 2) * KEYS, dtype,
                         num_warps)
                fence_async_shared()  # (this thread's reads of the raw slot before the copy engine's writes)
                gl.thread_barrier()  # the step is in k_buf; every warp is done with its raw words
                if t + NRAW < 2 * hi:  # the step two ahead into the raw slot just read; its k_rope into the box
                    #                    the step before this one's S has read
                    _tma_issue(kv_desc, sc_desc, kr_desc, kv_raw.index(slot), sc_raw.index(slot),
                               kr_bufs.index((g + NRAW) % (NRAW + 1)), bars.index(slot), bt_row, t + NRAW, hi, s_k,
                               num_blocks, ok_ptr)

                # S = Q·Kᵀ [16, 32]: warp w computes keys 8w .. 8w + 7
                s = _m16_scores(q_smem, qr_smem, k_buf, kr_buf, KEYS, mma, a_op, b_op)
                p, alpha, m_i, l_i = _v5_online_softmax(s, first_key, n_visible, m_i, l_i, qk_scale, cols_l, KEYS)
                p_smem.store(p.to(dtype))
                gl.thread_barrier()  # every warp's keys of P are in

                # O = O·alpha + P·V [16, 512], 128 output columns at a time (the warps split each 128)
                acc0, acc1, acc2, acc3 = _m16_values(p_smem, k_buf, acc0, acc1, acc2, acc3, alpha, a_op, b_op)
                gl.thread_barrier()  # every warp is done with the step's slots and with P
                g += 1

            _m16_store(acc0, acc1, acc2, acc3, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr,
                       part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start, rows_l, cols_l)
        for k in gl.static_range(NRAW):
            mbarrier.invalidate(bars.index(k))


_LAUNCH = FastLauncher(_v5_fp8_tma_kernel) if gluon is not None else None


def raw_descriptors(k_cache: torch.Tensor, rows: int = STEP, tiled_words: bool = False):
    """TMA descriptors over an FP8 cache [num_blocks, 64, 1, 656] (rows contiguous), `rows` rows a box: its e4m3
    values as int32 [num_blocks·64, 128] (no swizzle; tiled_words: as [4 scale tiles, num_blocks·64, 32], one
    [4, rows, 32] box in the 128-byte swizzle), its scales as int32 [.., 4] (row stride 164 words; no swizzle), its
    k_rope as bf16 [.., 64] (row stride 328; 128-byte swizzle, the products' layout). Cached by (address, blocks,
    box), as v5_gluon's bf16 descriptors (cached_descriptors)."""
    n = k_cache.shape[0]

    def build():
        words = _Address(k_cache.data_ptr(), torch.int32)
        halves = _Address(k_cache.data_ptr(), torch.bfloat16)
        plain = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
        swizzled = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        if tiled_words:  # (a tile's 32 words of a row are 128 bytes: the swizzle's span)
            tiles = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=3)
            word_desc = TensorDescriptor(words, [4, n * 64, 32], [32, ROW_WORDS, 1], [4, rows, 32], tiles)
        else:
            word_desc = TensorDescriptor(words, [n * 64, 128], [ROW_WORDS, 1], [rows, 128], plain)
        return (word_desc,
                TensorDescriptor(words, [n * 64, 132], [ROW_WORDS, 1], [rows, 4], plain),
                TensorDescriptor(halves, [n * 64, 2 * ROW_WORDS], [2 * ROW_WORDS, 1], [rows, 64], swizzled))
    return cached_descriptors(("raw", k_cache.data_ptr(), n, rows, tiled_words), build)


def tma_tile_launch_args(tile: str, q, k_cache, block_table, cache_seqlens, dims, meta, num_splits, out, lse,
                         part_out, part_lse, ok_flag, rows: int = STEP,
                         tiled_words: bool = False) -> tuple[tuple[int, int], tuple]:
    """(grid, run-time arguments) of the TMA-fed 16-row FP8 tiles: fp8_tile_launch_args with the raw rows' three
    descriptors (raw_descriptors': `rows` rows a box, `tiled_words`) after the cache pointer. The cache must be as
    quantize_k_cache makes it (`tile` names the caller in the error)."""
    descs = checked_raw_descriptors(tile, k_cache, rows, tiled_words)
    grid, args = fp8_tile_launch_args(BLOCK_M16, q, k_cache, block_table, cache_seqlens, dims, meta, num_splits,
                                      out, lse, part_out, part_lse, ok_flag)
    return grid, args[:2] + descs + args[2:]


def checked_raw_descriptors(tile: str, k_cache: torch.Tensor, rows: int = STEP, tiled_words: bool = False):
    """raw_descriptors, after checking that the cache is as quantize_k_cache makes it (rows contiguous, 16-byte
    aligned: what a TMA descriptor needs); `tile` names the caller in the error."""
    if k_cache.stride(1) != 656 or k_cache.stride(0) != 64 * 656 or k_cache.data_ptr() % 16:
        raise ValueError(f"the {tile} reads its rows by TMA: k_cache must be contiguous [num_blocks, 64, 1, 656] and "
                         f"16-byte aligned, got strides {tuple(k_cache.stride())}")
    return raw_descriptors(k_cache, rows, tiled_words)


def launch_v5_fp8_tma(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                      part_lse, ok_flag):
    """Launch the TMA-fed 16-row FP8 tile over the schedule `meta` (k_cache: FlashMLA's FP8 cache, rows contiguous
    and 16-byte aligned, as quantize_k_cache makes it)."""
    grid, args = tma_tile_launch_args("TMA-fed FP8 tile", q, k_cache, block_table, cache_seqlens, dims, meta,
                                      num_splits, out, lse, part_out, part_lse, ok_flag)
    _LAUNCH(grid, *args, CAUSAL=causal, META_COLS=meta.shape[1], num_warps=TMA_WARPS)
