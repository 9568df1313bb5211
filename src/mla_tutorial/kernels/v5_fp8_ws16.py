# version 5, FP8 cache, 16-row tiles, warp-specialised: the three parts of the 16-row FP8 tile (page loads,
# dequantization, products) in partitions of their own, overlapped (stage 5; forced with path "ws16", not routed).
#
# What it changes against v5_fp8_mma.py (same products, softmax, schedule and semantics), after the sixth session's
# split of that tile's time (docs/results/v5_notes.md): at h16 s_k 4k its page loads alone take 0.140 ms, its
# dequantization alone 0.093, its products alone 0.117, the whole 0.258, because each program runs them in series
# and its second program per SM hides little. Here, one program per SM:
#   * the copy engine brings each half page (32 rows: e4m3 words, scales, bf16 k_rope, three TMA boxes as in
#     v5_fp8_tma.py) into a raw ring of two half-page slots, one page ahead;
#   * a producer partition (4 warps, 96 registers) dequantizes each page from the raw ring into a ring of two bf16
#     page slots (64 keys, K and V, and k_rope) on mbarriers: FULL when both halves are in, EMPTY when read;
#   * two consumer warpgroups (the default partition and one worker, 208 registers each) take the pages in turn
#     (even pages: warpgroup 0, odd: warpgroup 1), each with the 16-row tile's products, softmax and accumulators
#     (mma.sync), so two pages are multiplied at once; at a request's end warpgroup 1 hands its (max, sum, O) to
#     warpgroup 0 through shared memory, in two halves of 256 columns, and warpgroup 0 merges and stores.
#   Shared memory: Q 18 KB + two bf16 slots 144 KB + raw ring 41 KB + P 4 KB + merge 16 KB = 223 KB.
# Expected (H200, b 128, s_k 4096, h_q 16): the slowest part, if they overlap: loads by TMA ~0.08 ms, products on
#   two pages at a time ~0.12, dequantization by 4 warps per SM ~0.1-0.19 (0.093 with 8 warps per SM): ~0.13-0.19 ms
#   against 0.258 for v5_fp8_mma.py and 0.168 for FlashMLA (target 1.5x FlashMLA: 0.112). Risk: the producer binds;
#   hence the variant with an 8-warp producer (GluonConfig(warps=8): 176 registers per consumer thread, 80 per
#   producer thread), prepared beside it.
# Its barrier protocol (phases, slots, the merge's handover) is modelled on the CPU in tests/test_ws16_protocol.py:
# every random interleaving finishes and reads each page in place; a wrong phase there fails (a hang here).
# Bought (H200, 2026-12-02, seventh session; docs/results/probes/fp8_ws16_first_h200_2026-12-02.json): correct on its
#   first run (the hostile matrix, no hang) and slower: 0.289 ms at h16 s_k 4k (the 8-warp producer 0.407) against
#   0.260 for v5_fp8_mma.py; 0.271 after the three-instruction dequantization. One program per SM leaves one 4-warp
#   producer to dequantize for two consumer warpgroups, and the raw ring holds one page. Not routed.
"""Version 5 over an FP8 cache, 16-row tiles, warp-specialised: TMA, dequantizing and multiplying partitions
(Gluon, Triton 3.6)."""

from __future__ import annotations

import triton.language as tl

from .launch import FastLauncher
from .v5_fp8_gluon import _fp8_page
from .v5_fp8_mma import _m16_scores, _m16_start, _m16_store, _m16_values
from .v5_fp8_tma import _raw_dequant, _tma_issue, tma_tile_launch_args
from .v5_gluon import (
    _v5_flag_stale,
    _v5_load_q,
    _v5_next_part,
    _v5_online_softmax,
    _v5_pages,
    _v5_part,
    _v5_piece,
    fence_async_shared,
    gl,
    gluon,
    mbarrier,
)

CONSUMER_WARPS = 4  # the default partition: consumer warpgroup 0 (the launch's num_warps)
PRODUCER_WARPS = 4  # the dequantizing partition (WIDE_PRODUCER_WARPS: the variant with 8)
WS16_REGS = 168  # registers per thread at launch (12 warps · 32 · 168 ≤ 65,536); setmaxnreg then moves them:
CONSUMER_REGS = tl.constexpr(208)  # each consumer warpgroup
PRODUCER_REGS = tl.constexpr(96)  # the dequantizing partition ((65,536 - 2 · 128 · 208) / 128 = 96)
#: The variant with an 8-warp producer (GluonConfig(warps=8) on path "ws16"): 16 warps, 128 registers at launch,
#: then 176 per consumer thread and 80 per producer thread (2 · 128 · 176 + 256 · 80 = 65,536).
WIDE_PRODUCER_WARPS = 8
WIDE_REGS = 128
WIDE_CONSUMER_REGS = tl.constexpr(176)
WIDE_PRODUCER_REGS = tl.constexpr(80)

# mbarriers, by index (module constants read inside the kernels must be constexpr)
RAW0 = tl.constexpr(0)  # raw half-page slot h landed (TMA): RAW0 + h
FULL0 = tl.constexpr(2)  # bf16 slot j holds a page (the producer): FULL0 + j
EMPTY0 = tl.constexpr(4)  # bf16 slot j was read (its consumer warpgroup): EMPTY0 + j
Q_READY, Q_EMPTY = tl.constexpr(6), tl.constexpr(7)  # a request's Q is in (warpgroup 0) / both are done with it
MERGE_READY, MERGE_FREE = tl.constexpr(8), tl.constexpr(9)  # warpgroup 1's half of (max, sum, O) is in / was read
N_BARS = tl.constexpr(10)


if gluon is not None:

    @gluon.jit
    def _ws16_put_half(kv_raw, sc_raw, kr_raw, k_buf, kr_buf, n_rows, dtype: gl.constexpr, PW: gl.constexpr):
        """Raw half-page slot (kv_raw [32, 128] words, sc_raw [32, 4] scale bits, kr_raw [32, 64] bf16) -> 32 rows
        of a bf16 page slot (k_buf [32, 512] by _raw_dequant, kr_buf [32, 64] copied), by the producer's PW warps;
        rows from n_rows on as zeros."""
        _raw_dequant(kv_raw, sc_raw, k_buf, n_rows, dtype, PW)
        ldr: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [PW, 1], [1, 0])
        rows_r = gl.arange(0, 32, layout=gl.SliceLayout(1, ldr))
        x = kr_raw.load(ldr)
        kr_buf.store(gl.where((rows_r < n_rows)[:, None], x, gl.zeros_like(x)))

    @gluon.jit
    def _ws16_producer(kv_desc, sc_desc, kr_desc, block_table_ptr, seqlens_ptr, meta_ptr, ok_ptr, stride_btb,
                       num_blocks, max_blocks, kv_raw, sc_raw, kr_raw, k_smem, kr_smem, bars,
                       META_COLS: gl.constexpr, PW: gl.constexpr):
        """The dequantizing partition: every page of the program's slice, by half pages, from the raw ring into the
        bf16 slots, in the consumers' order; it also issues the copies (one page ahead, within a request)."""
        dtype: gl.constexpr = k_smem.dtype
        begin_req, begin_block, end_req, end_block, _ = _v5_part(meta_ptr, META_COLS)
        next_req, next_block = _v5_next_part(meta_ptr, META_COLS)
        it = 0  # pages of this program so far: bf16 slot it % 2, its use it // 2; raw slot h's use it
        for req in range(begin_req, end_req + 1):
            s_k, lo, hi = _v5_pages(seqlens_ptr, req, begin_req, begin_block, end_req, end_block, max_blocks)
            _v5_flag_stale(ok_ptr, req, s_k, gl.cdiv(s_k, 64), begin_req, begin_block, end_req, end_block,
                           next_req, next_block, max_blocks)
            bt_row = block_table_ptr + req.to(gl.int64) * stride_btb
            if lo < hi:  # the request's first page in flight (the raw slots are free: every copy was read)
                for h in gl.static_range(2):  # (half h of page i is step 2i + h of _tma_issue, into raw slot h)
                    _tma_issue(kv_desc, sc_desc, kr_desc, kv_raw.index(h), sc_raw.index(h), kr_raw.index(h),
                               bars.index(RAW0 + h), bt_row, 2 * lo + h, hi, s_k, num_blocks, ok_ptr)
            for i in range(lo, hi):
                slot = it % 2
                n_rows = _fp8_page(bt_row, i, hi, s_k, num_blocks, ok_ptr)[1]  # 0 for a bad block id
                mbarrier.wait(bars.index(EMPTY0 + slot), ((it // 2) & 1) ^ 1)  # its consumer is done with it
                for h in gl.static_range(2):
                    mbarrier.wait(bars.index(RAW0 + h), it & 1)
                    _ws16_put_half(kv_raw.index(h), sc_raw.index(h), kr_raw.index(h),
                                   k_smem.index(slot).slice(32 * h, 32, dim=0),
                                   kr_smem.index(slot).slice(32 * h, 32, dim=0), n_rows - 32 * h, dtype, PW)
                    fence_async_shared()  # this thread's reads of the raw slot before the copy engine's writes
                    gl.thread_barrier()  # every producer thread is done with raw slot h and has stored its rows
                    if i + 1 < hi:
                        _tma_issue(kv_desc, sc_desc, kr_desc, kv_raw.index(h), sc_raw.index(h), kr_raw.index(h),
                                   bars.index(RAW0 + h), bt_row, 2 * i + 2 + h, hi, s_k, num_blocks, ok_ptr)
                mbarrier.arrive(bars.index(FULL0 + slot))
                it += 1

    @gluon.jit
    def _ws16_consumer(WG: gl.constexpr, q_ptr, seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr,
                       part_out_ptr, part_lse_ptr, stride_qb, stride_qs, stride_qh, s_q, h_q, heads_per_kv,
                       rows_per_kv, m_tiles, max_blocks, qk_scale, q_smem, qr_smem, k_smem, kr_smem, p_smem, merge,
                       stats, bars, CAUSAL: gl.constexpr, META_COLS: gl.constexpr):
        """Consumer warpgroup WG (0: the default partition, 1: a worker): the 16-row tile's math on pages it, it + 2,
        ... with it % 2 == WG; at a request's end warpgroup 1 hands its state to warpgroup 0, which merges, stores."""
        NW: gl.constexpr = 4
        BM: gl.constexpr = 16
        PAGE: gl.constexpr = 64
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, NW], instr_shape=[16, 8])
        a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        b_op: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        rows_l: gl.constexpr = gl.SliceLayout(1, mma)
        cols_l: gl.constexpr = gl.SliceLayout(0, mma)
        dtype: gl.constexpr = q_smem.dtype
        p_buf = p_smem.index(WG)

        m_start = (gl.program_id(1) % m_tiles) * BM
        begin_req, begin_block, end_req, end_block, begin_split = _v5_part(meta_ptr, META_COLS)
        it = 0  # as the producer counts
        r = 0  # requests so far (Q's and the merge's phases)
        for req in range(begin_req, end_req + 1):
            s_k, lo, hi = _v5_pages(seqlens_ptr, req, begin_req, begin_block, end_req, end_block, max_blocks)
            if WG == 0:  # Q into shared memory once both warpgroups are done with the previous request's
                mbarrier.wait(bars.index(Q_EMPTY), (r & 1) ^ 1)
                _v5_load_q(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv,
                           rows_per_kv, 0, 9, 64, BM, NW)
                gl.thread_barrier()
                mbarrier.arrive(bars.index(Q_READY))
            mbarrier.wait(bars.index(Q_READY), r & 1)

            rows, tok, n_visible, m_i, l_i, acc0, acc1, acc2, acc3 = _m16_start(m_start, heads_per_kv, s_k, s_q,
                                                                                CAUSAL, rows_l, mma)
            for i in range(lo, hi):
                if it % 2 == WG:  # this warpgroup's page (its slot is WG)
                    mbarrier.wait(bars.index(FULL0 + WG), (it // 2) & 1)
                    k_buf = k_smem.index(WG)
                    s = _m16_scores(q_smem, qr_smem, k_buf, kr_smem.index(WG), PAGE, mma, a_op, b_op)
                    p, alpha, m_i, l_i = _v5_online_softmax(s, i * PAGE, n_visible, m_i, l_i, qk_scale, cols_l,
                                                            PAGE)
                    p_buf.store(p.to(dtype))
                    gl.thread_barrier()  # every warp's keys of P are in
                    acc0, acc1, acc2, acc3 = _m16_values(p_buf, k_buf, acc0, acc1, acc2, acc3, alpha, a_op, b_op)
                    gl.thread_barrier()  # every warp is done with the slot and with P
                    mbarrier.arrive(bars.index(EMPTY0 + WG))
                it += 1
            gl.thread_barrier()
            mbarrier.arrive(bars.index(Q_EMPTY))  # (count 2: both warpgroups)

            # warpgroup 1's (max, sum, O) -> warpgroup 0, in two halves of 256 columns
            for half in gl.static_range(2):
                if half == 0:
                    xa = acc0
                    xb = acc1
                else:
                    xa = acc2
                    xb = acc3
                if WG == 1:
                    mbarrier.wait(bars.index(MERGE_FREE), ((2 * r + half) & 1) ^ 1)
                    if half == 0:
                        stats.index(0).store(m_i)
                        stats.index(1).store(l_i)
                    merge.slice(0, 128, dim=1).store(xa)
                    merge.slice(128, 128, dim=1).store(xb)
                    gl.thread_barrier()
                    mbarrier.arrive(bars.index(MERGE_READY))
                else:
                    mbarrier.wait(bars.index(MERGE_READY), (2 * r + half) & 1)
                    m_1 = stats.index(0).load(rows_l)
                    l_1 = stats.index(1).load(rows_l)
                    m_new = gl.maximum(m_i, m_1)
                    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
                    a_0 = gl.exp2(m_i - m_use)
                    a_1 = gl.exp2(m_1 - m_use)
                    ya = xa * a_0[:, None] + merge.slice(0, 128, dim=1).load(mma) * a_1[:, None]
                    yb = xb * a_0[:, None] + merge.slice(128, 128, dim=1).load(mma) * a_1[:, None]
                    if half == 0:
                        acc0 = ya
                        acc1 = yb
                    else:
                        acc2 = ya
                        acc3 = yb
                        m_i = m_new
                        l_i = l_i * a_0 + l_1 * a_1
                    gl.thread_barrier()
                    mbarrier.arrive(bars.index(MERGE_FREE))
            if WG == 0:
                part_slot, pieces = _v5_piece(num_splits_ptr, req, begin_req, begin_split)
                _m16_store(acc0, acc1, acc2, acc3, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr,
                           lse_ptr, part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start, rows_l,
                           cols_l)
            r += 1

    @gluon.jit
    def _v5_fp8_ws16_kernel(
        q_ptr, kv_ptr, kv_desc, sc_desc, kr_desc, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr,
        part_lse_ptr, meta_ptr, num_splits_ptr, ok_ptr,
        stride_qb, stride_qs, stride_qh, stride_kvb, stride_btb,
        s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks, max_blocks,
        qk_scale,
        CAUSAL: gl.constexpr, META_COLS: gl.constexpr, PW: gl.constexpr, num_warps: gl.constexpr,
    ):
        # PW: the producer's warps, 4 (consumers 208 registers, producer 96) or 8 (176 and 80)
        C_REGS: gl.constexpr = CONSUMER_REGS if PW == 4 else WIDE_CONSUMER_REGS
        P_REGS: gl.constexpr = PRODUCER_REGS if PW == 4 else WIDE_PRODUCER_REGS
        smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
        dtype: gl.constexpr = q_ptr.dtype.element_ty
        q_smem = gl.allocate_shared_memory(dtype, [16, 512], smem_layout)  # Q's latent part
        qr_smem = gl.allocate_shared_memory(dtype, [16, 64], smem_layout)  # Q's RoPE part
        k_smem = gl.allocate_shared_memory(dtype, [2, 64, 512], smem_layout)  # two dequantized pages: c_kv
        kr_smem = gl.allocate_shared_memory(dtype, [2, 64, 64], smem_layout)  # and k_rope
        p_smem = gl.allocate_shared_memory(dtype, [2, 16, 64], smem_layout)  # each consumer warpgroup's P
        kv_raw = gl.allocate_shared_memory(gl.int32, [2, 32, 128], kv_desc.layout)  # the raw ring: e4m3 words,
        sc_raw = gl.allocate_shared_memory(gl.int32, [2, 32, 4], sc_desc.layout)  # scales,
        kr_raw = gl.allocate_shared_memory(dtype, [2, 32, 64], kr_desc.layout)  # k_rope
        merge = gl.allocate_shared_memory(gl.float32, [16, 256], plain)  # warpgroup 1's O, half at a time
        stats = gl.allocate_shared_memory(gl.float32, [2, 16], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))  # and
        #                                                                                  its max and sum
        bars = gl.allocate_shared_memory(gl.int64, [N_BARS, 1], mbarrier.MBarrierLayout())
        for b in gl.static_range(N_BARS):
            mbarrier.init(bars.index(b), count=2 if b == Q_EMPTY else 1)
        fence_async_shared()

        gl.warp_specialize([  # (the consumers' arguments as literals: a tuple in a variable loses its constexprs)
            (_ws16_consumer, (0, q_ptr, seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr, part_out_ptr,
                              part_lse_ptr, stride_qb, stride_qs, stride_qh, s_q, h_q, heads_per_kv, rows_per_kv,
                              m_tiles, max_blocks, qk_scale, q_smem, qr_smem, k_smem, kr_smem, p_smem, merge, stats,
                              bars, CAUSAL, META_COLS)),
            (_ws16_consumer, (1, q_ptr, seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr, part_out_ptr,
                              part_lse_ptr, stride_qb, stride_qs, stride_qh, s_q, h_q, heads_per_kv, rows_per_kv,
                              m_tiles, max_blocks, qk_scale, q_smem, qr_smem, k_smem, kr_smem, p_smem, merge, stats,
                              bars, CAUSAL, META_COLS)),
            (_ws16_producer, (kv_desc, sc_desc, kr_desc, block_table_ptr, seqlens_ptr, meta_ptr, ok_ptr, stride_btb,
                              num_blocks, max_blocks, kv_raw, sc_raw, kr_raw, k_smem, kr_smem, bars, META_COLS,
                              PW)),
        ], [4, PW], [C_REGS, P_REGS])


_LAUNCH = FastLauncher(_v5_fp8_ws16_kernel) if gluon is not None else None


def launch_v5_fp8_ws16(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                       part_lse, ok_flag, producer_warps: int = PRODUCER_WARPS):
    """Launch the warp-specialised 16-row FP8 tile over the schedule `meta` (k_cache: FlashMLA's FP8 cache, rows
    contiguous and 16-byte aligned, as quantize_k_cache makes it; one program per SM fits, so a schedule of one part
    per SM suits it). producer_warps: PRODUCER_WARPS, or WIDE_PRODUCER_WARPS with WIDE_REGS registers at launch."""
    if producer_warps not in (PRODUCER_WARPS, WIDE_PRODUCER_WARPS):
        raise ValueError(f"the warp-specialised 16-row FP8 tile's producer has {PRODUCER_WARPS} or "
                         f"{WIDE_PRODUCER_WARPS} warps, got {producer_warps!r}")
    grid, args = tma_tile_launch_args("warp-specialised 16-row FP8 tile", q, k_cache, block_table, cache_seqlens, dims,
                                      meta, num_splits, out, lse, part_out, part_lse, ok_flag)
    _LAUNCH(grid, *args, CAUSAL=causal, META_COLS=meta.shape[1], PW=producer_warps, num_warps=CONSUMER_WARPS,
            maxnreg=WS16_REGS if producer_warps == PRODUCER_WARPS else WIDE_REGS)
