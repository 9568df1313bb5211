# version 5, seesaw tile: the Gluon 64-row tile, warp-specialised, with FlashMLA's "seesaw" schedule.
#
# What it adds over v5_gluon.py's tile (same schedule, same semantics, same shared memory):
#   * a producer warp (`gl.warp_specialize`, 24 registers) issues every page copy, nine 64x64 TMA boxes through
#     the block table, into a ring of two page slots (Q is copied by the consumers, half each, once per
#     request). Each slot is released in two halves (columns 0-255 and 256-575) by the warpgroup that reads that
#     half last, so the next page starts arriving while the other half is still being multiplied;
#   * the two consumer warpgroups (240 registers each, partitions of their own) are no longer in lockstep.
#     Pages come in pairs (A, B). Warpgroup 0 computes the scores of A over all 576 columns, warpgroup 1 those
#     of B, at the same time; each owns half of the output columns (0-255, 256-511):
#         WG0: S_A = Q·K_Aᵀ; m_A = max(m, rowmax S_A); P_A = exp(S_A - m_A); O_L = O_L·e^(m-m_A) + P_A·V_A[:, :256]
#         WG1: S_B = Q·K_Bᵀ; (waits for P_A, m_A) m_B = max(m_A, rowmax S_B); P_B = exp(S_B - m_B);
#              O_R = O_R·e^(m-m_B) + P_B·V_B[:, 256:] + (P_A·e^(m_A-m_B))·V_A[:, 256:]   (P_A rescaled in registers)
#         WG0: (waits for P_B, m_B) O_L = O_L·e^(m_A-m_B) + P_B·V_B[:, :256]
#     so one warpgroup's softmax overlaps the other's matrix products, and the row max crosses between the two
#     warpgroups once per page (as a 64-float vector in shared memory) instead of a CTA barrier per page.
#     (Multiplying P_A·V_A[:, 256:] first, to free page A's slot half-way through the pair, was measured slower:
#     docs/results/v5_notes.md, seesaw probe 2.)
#     P_A and P_B go to shared memory in place of their page's RoPE box (64x64 bf16, no longer needed once the
#     scores are computed): no extra shared memory.
#   Shared memory: Q 72 KB + 2 pages 144 KB + row statistics 1.5 KB.
# Should buy (H200, b = 128): v5_gluon's tile overlaps its loads (0.187 ms alone at h64 sk4k) and compute (0.188
#   alone) poorly (0.25 together); with the loads on their own warp and the softmax hidden under the other
#   warpgroup's MMAs, toward max(loads, MMAs) ≈ 0.19 ms: h64 from 0.66 toward 0.9 of FlashMLA.
# Bought (H200, 2026-12-02, docs/results/kernels_v5_seesaw_h200_2026-12-02.json, FlashMLA in the same run): at 128
#   heads 12-20 % over the lockstep tile (s_k 4k 0.447 → 0.393 ms, 0.60 of FlashMLA; s_q 2 causal 0.851 → 0.679, 0.65);
#   at 64 heads 3-4 % (s_k 4k 0.253 → 0.244, 0.69). Its compute alone (MODE 2) takes 0.159 ms there and the pages
#   alone stream at the copy ceiling (0.145): what is left is their overlap (docs/kernel.md §11).
# Since then (H200, 2026-12-02, docs/results/probes/seesaw_early_h200_2026-12-02.json): warpgroup 1 releases page
#   B's right half as soon as its product is done (EARLY 1, now the default), ~0.5 µs before the pair ends.
#   Predicted 4 % at h64 sk4k (0.244 → 0.235); bought nothing there (0.2456 against 0.2442) and 1-4 % at 128 heads
#   (s_k 4k 0.382 → 0.377, s_q 2 causal 0.679 → 0.647, means of two runs each).
# Twelfth session (H200, 2026-12-02, docs/kernel.md §14, docs/results/v5_notes.md): three changes, each predicted from
#   the tile's own cycle stamps (TRACE, scripts/gpu_seesaw_trace.py) or its SASS, each on by default:
#   * MAX_FIRST: m_A crosses to warpgroup 1 before P_A is computed, and warpgroup 1 multiplies P_B·V_B before it
#     waits for P_A (the compute alone 4-11 % faster);
#   * OPAQUE: warpgroup 0's slot views rebuilt every pair, so its wgmma descriptors are no longer spilled and reloaded
#     from local memory behind the page copies (h_q 64, s_k 4k 0.249 → 0.209 ms; 10-17 % of the whole call);
#   * Q_ASYNC: Q by cp.async, all blocks at once (1-6 %).
#   Bought: FlashMLA / v5 at b = 128 0.67 → 0.83 (h_q 64, s_k 4k), 0.70 → 0.87 (8k), 0.59 → 0.70 (h_q 128, 4k),
#   0.60 → 0.74 (8k), 0.68 → 0.75 (s_q 2 causal) (docs/results/kernels_v5_qasync_h200_2026-12-02.json).
# Thirteenth/fourteenth session: the tile's stamps found 7-21 % of its programs idle (the schedule's payload, FlashMLA's
#   share + 5 units over a line of units, ran out before the last parts); an even cut of that line bought
#   FlashMLA / v5 0.62 → 0.77 (h_q 64, s_k 1k), 0.63 → 0.67 (h_q 128, 1k), 0.83 → 0.85 (64, 4k), within the runs'
#   spread at 8k (docs/results/kernels_v5_even_h200_2026-12-03.json, FlashMLA's rule timed beside it).
#   LINES (store_lines): O moved by one in-warp shuffle exchange to 16-byte stores: h_q 64, s_k 1k 0.77 → 0.84 of
#   FlashMLA (the end's output store 14,900 → 6,000 cycles); 1-3 % slower at 4k / 8k in two of three paired rounds
#   (docs/results/kernels_v5_lines_h200_2026-12-03.json, v5_notes.md fourteenth session).
# Fifteenth session: not the tile but its schedule. FlashMLA's walk (schedule.py) holds a whole request (two at 128
#   heads) a program where the even cut had split nearly every request between two programs: FlashMLA / v5 0.84 →
#   0.94 (h_q 64, s_k 4k), 0.85 → 0.92 (8k), 0.67 → 0.77 (h_q 128, 1k), 0.69 → 0.75 (4k), 0.72 → 0.78 (s_q 2 causal)
#   (docs/results/kernels_v5_walk_h200_2026-12-03.json).
# Sixteenth session: Q_TMA (GluonConfig(q_tma=True), the default): the producer copies each request's Q by TMA as
#   soon as both consumers are done with the previous request's pages, so the next Q lands while they store (a
#   request boundary waited ~8,300 cycles for the consumers' own Q copies after the store). Predicted ~5 % where a
#   program holds two or more requests (h_q 128 at 1k, s_q 2), nothing where it holds one. Bought (seesaw probe,
#   b 128, FlashMLA / tile): h_q 128 1k 0.76 → 0.79, s_q 2 causal 0.80 → 0.85, h_q 64 1k 0.84 → 0.88, 4k-8k +1-3 %;
#   the boundary (pages done to the next request's first pair) 15,500 → 13,900 cycles, not the ~9,000 predicted:
#   the next request's first pages now wait for the last pair, and a pair takes 6 % longer with the producer's
#   extra copies (docs/results/v5_notes.md, sixteenth session).
"""Version 5's warp-specialised Gluon tile: a producer warp and FlashMLA's seesaw schedule (Hopper, Triton 3.6)."""

from __future__ import annotations

import torch
import triton.language as tl

from .common import LOG2E
from .launch import FastLauncher
from .v5_gluon import (
    DEFAULT_GLUON_CONFIG,
    GluonConfig,
    _k_descriptor,
    _probe_time,
    _v5_flag_stale,
    _v5_load_q,
    _v5_masked_scores,
    _v5_next_part,
    _v5_pages,
    _v5_part,
    _v5_piece,
    _v5_probs,
    _v5_softmax,
    _v5_store,
    fence_async_shared,
    gl,
    gluon,
    mbarrier,
    rows_descriptor,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)

# mbarriers, by index (module constants read inside the kernels must be constexpr)
READY0L, READY0R, READY1L, READY1R = (tl.constexpr(i) for i in range(4))  # slot s's half L (boxes 0-3) / R
EMPTY0L, EMPTY0R, EMPTY1L, EMPTY1R = (tl.constexpr(i) for i in range(4, 8))  # (4-7), + RoPE box: landed/released
Q_READY, Q_EMPTY = tl.constexpr(8), tl.constexpr(9)  # Q of a request landed / both warpgroups are done with it
P_A_READY, P_B_READY = tl.constexpr(10), tl.constexpr(11)  # a pair's P_A (and m_A) / P_B (and m_B) are in smem
L_READY = tl.constexpr(12)  # both warpgroups' row sums of a request are in shared memory
CHUNK_READY = tl.constexpr(13)  # FINE: box c of slot s landed, at CHUNK_READY + 9·s + c (instead of READY*)
M_A_READY = tl.constexpr(31)  # MAX_FIRST: a pair's m_A is in shared memory (before P_A is)
N_BARS = tl.constexpr(32)
# row statistics in shared memory (64 floats each): m_A, m_B, then the row sums at STAT_L + 2·(request parity) + WG
STAT_M_A, STAT_M_B, STAT_L = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
N_STATS = tl.constexpr(6)
# the TRACE probe's buffer: int64 [programs, TRACE_PAIRS, TRACE_EVENTS] (events: scripts/gpu_seesaw_trace.py;
# 0-31 and 34-35 cycle stamps, 32-33 nanoseconds: warpgroup 0's entry and its last store, at pair 0, as 21 and 15 in
# cycles)
TRACE_PAIRS, TRACE_EVENTS = tl.constexpr(48), tl.constexpr(36)

WS_REGS = 168  # registers per thread at launch (12 warps · 32 · 168 ≤ 65,536); setmaxnreg then moves them:
CONSUMER_REGS = tl.constexpr(240)  # each consumer warpgroup
PRODUCER_REGS = tl.constexpr(24)  # the producer warp's warpgroup


if gluon is not None:

    @gluon.jit
    def _ss_copy(k_desc, row, bars, SLOT: gl.constexpr, HALF_BAR: gl.constexpr, k_buf, kr_buf, FIRST: gl.constexpr,
                 LAST: gl.constexpr, ROPE: gl.constexpr, FINE: gl.constexpr, MODE: gl.constexpr):
        """TMA boxes FIRST..LAST-1 (64 columns each) of the page starting at cache row `row`, and the RoPE box if
        ROPE, into slot SLOT: all on the half's barrier HALF_BAR, or (FINE) each box on its own. MODE 2 copies
        nothing and only signals the barrier (the consumers compute on whatever the slot holds: timing only)."""
        if MODE == 2:
            if FINE:
                for c in gl.static_range(FIRST, LAST):
                    mbarrier.arrive(bars.index(CHUNK_READY + 9 * SLOT + c))
                if ROPE:
                    mbarrier.arrive(bars.index(CHUNK_READY + 9 * SLOT + 8))
            else:
                mbarrier.arrive(bars.index(HALF_BAR))
        elif FINE:
            for c in gl.static_range(FIRST, LAST):
                bar = bars.index(CHUNK_READY + 9 * SLOT + c)
                mbarrier.expect(bar, 64 * 64 * 2)
                tma.async_copy_global_to_shared(k_desc, [row, c * 64], bar, k_buf.slice(c * 64, 64, dim=1))
            if ROPE:
                bar = bars.index(CHUNK_READY + 9 * SLOT + 8)
                mbarrier.expect(bar, 64 * 64 * 2)
                tma.async_copy_global_to_shared(k_desc, [row, 512], bar, kr_buf)
        else:
            bar = bars.index(HALF_BAR)
            mbarrier.expect(bar, (LAST - FIRST + (1 if ROPE else 0)) * 64 * 64 * 2)
            for c in gl.static_range(FIRST, LAST):
                tma.async_copy_global_to_shared(k_desc, [row, c * 64], bar, k_buf.slice(c * 64, 64, dim=1))
            if ROPE:
                tma.async_copy_global_to_shared(k_desc, [row, 512], bar, kr_buf)

    @gluon.jit
    def _ss_wait_half(bars, SLOT: gl.constexpr, HALF_BAR: gl.constexpr, phase, FIRST: gl.constexpr,
                      LAST: gl.constexpr, FINE: gl.constexpr):
        """Wait until boxes FIRST..LAST-1 of slot SLOT have landed (their half's barrier, or each box's)."""
        if FINE:
            for c in gl.static_range(FIRST, LAST):
                mbarrier.wait(bars.index(CHUNK_READY + 9 * SLOT + c), phase)
        else:
            mbarrier.wait(bars.index(HALF_BAR), phase)

    @gluon.jit
    def _ss_row(bt_row, page_idx, num_blocks, ok_ptr):
        """Cache row of the request's page page_idx; a bad block id is reported and replaced by a row out of
        bounds, which the copy engine fills with zeros (never followed)."""
        page = gl.load(bt_row + page_idx)
        bad = (page < 0) | (page >= num_blocks)
        gl.store(ok_ptr, 0, mask=bad)
        return gl.where(bad, -64, page * 64)

    @gluon.jit
    def _ss_stamp(trace_ptr, pair, EVENT: gl.constexpr, TRACE: gl.constexpr, NS: gl.constexpr = False):
        """TRACE (a probe, off in the tile): the SM's cycle counter at event EVENT of the program's pair `pair`, in
        trace[program, pair, EVENT] (TRACE_PAIRS pairs of TRACE_EVENTS events a program; later pairs are not kept).
        NS: the GPU's nanosecond timer instead (%globaltimer: one time base for every SM, and with the cycles of the
        same moments, the SM clock during the kernel)."""
        if TRACE:
            prog = gl.program_id(1) * gl.num_programs(0) + gl.program_id(0)
            gl.store(trace_ptr + (prog * TRACE_PAIRS + pair) * TRACE_EVENTS + EVENT, _probe_time(NS),
                     mask=pair < TRACE_PAIRS)

    @gluon.jit
    def _ss_copy_q(q_desc, q_smem, qr_smem, bars, req, begin_req, rows_per_kv, m_tiles):
        """Q_TMA: request req's Q rows m_start .. m_start + 63 by TMA from `q_desc` (q as [b·s_q·h_q rows, 576]) into
        q_smem / qr_smem on Q_READY, once both consumers are done with the previous request's (Q_EMPTY). Rows past
        the request's own are the next request's or, past the tensor, zeros: scores of rows the store skips."""
        mbarrier.wait(bars.index(Q_EMPTY), ((req - begin_req) & 1) ^ 1)  # a fresh barrier counts as released
        q_row = req * rows_per_kv + (gl.program_id(1) % m_tiles) * 64
        q_bar = bars.index(Q_READY)
        mbarrier.expect(q_bar, 9 * 64 * 64 * 2)
        for c in gl.static_range(8):
            tma.async_copy_global_to_shared(q_desc, [q_row, c * 64], q_bar, q_smem.slice(c * 64, 64, dim=1))
        tma.async_copy_global_to_shared(q_desc, [q_row, 512], q_bar, qr_smem)

    @gluon.jit
    def _ss_producer(k_desc, block_table_ptr, seqlens_ptr, meta_ptr, ok_ptr, stride_btb, num_blocks, max_blocks,
                     k_smem, kr_smem, bars, META_COLS: gl.constexpr, FINE: gl.constexpr, MODE: gl.constexpr,
                     trace_ptr, TRACE: gl.constexpr, q_desc=None, q_smem=None, qr_smem=None, rows_per_kv=0,
                     m_tiles=1, Q_TMA: gl.constexpr = False):
        """The producer warp: every copy into shared memory, in the order the consumers release the buffers. Q_TMA:
        each request's Q too, by TMA from `q_desc` (q as [b·s_q·h_q rows, 576]), once both consumers are done with
        the previous request's (Q_EMPTY), before the request's pages."""
        _ss_stamp(trace_ptr, 0, 23, TRACE)
        begin_req, begin_block, end_req, end_block, _ = _v5_part(meta_ptr, META_COLS)
        next_req, next_block = _v5_next_part(meta_ptr, META_COLS)
        k0, kr0, k1, kr1 = k_smem.index(0), kr_smem.index(0), k_smem.index(1), kr_smem.index(1)
        n0 = 0  # pages that went through slot 0 / slot 1 so far: their barriers' phases
        n1 = 0
        for req in range(begin_req, end_req + 1):
            if Q_TMA:
                _ss_copy_q(q_desc, q_smem, qr_smem, bars, req, begin_req, rows_per_kv, m_tiles)
            s_k, lo, hi = _v5_pages(seqlens_ptr, req, begin_req, begin_block, end_req, end_block, max_blocks)
            n_pages = gl.cdiv(s_k, 64)
            _v5_flag_stale(ok_ptr, req, s_k, n_pages, begin_req, begin_block, end_req, end_block, next_req,
                           next_block, max_blocks)

            bt_row = block_table_ptr + req.to(gl.int64) * stride_btb
            for a in range(lo, hi, 2):  # page pairs (a, a + 1); the last may be a single page
                has_b = a + 1 < hi
                row_a = _ss_row(bt_row, a, num_blocks, ok_ptr)
                row_b = _ss_row(bt_row, gl.where(has_b, a + 1, a), num_blocks, ok_ptr)
                ph0 = (n0 & 1) ^ 1
                ph1 = (n1 & 1) ^ 1
                # slot 0 holds A: boxes 0-3 are released by WG0 (after P_A·V_A[:, :256]), boxes 4-7 and the RoPE
                # box (which held P_A) by WG1 (after P_A·V_A[:, 256:]). Slot 1 holds B: boxes 4-7 are released by
                # WG1 (after P_B·V_B[:, 256:]), boxes 0-3 and the RoPE box (P_B) by WG0 (after P_B·V_B[:, :256]).
                # Waiting in this order also keeps each RoPE box (a P) until both warpgroups have read it.
                _ss_stamp(trace_ptr, n0, 16, TRACE)
                mbarrier.wait(bars.index(EMPTY0L), ph0)
                _ss_stamp(trace_ptr, n0, 17, TRACE)
                _ss_copy(k_desc, row_a, bars, 0, READY0L, k0, kr0, 0, 4, False, FINE, MODE)
                if has_b:
                    mbarrier.wait(bars.index(EMPTY1R), ph1)
                    _ss_stamp(trace_ptr, n0, 18, TRACE)
                    _ss_copy(k_desc, row_b, bars, 1, READY1R, k1, kr1, 4, 8, False, FINE, MODE)
                mbarrier.wait(bars.index(EMPTY0R), ph0)
                _ss_stamp(trace_ptr, n0, 19, TRACE)
                _ss_copy(k_desc, row_a, bars, 0, READY0R, k0, kr0, 4, 8, True, FINE, MODE)
                if has_b:
                    mbarrier.wait(bars.index(EMPTY1L), ph1)
                    _ss_stamp(trace_ptr, n0, 20, TRACE)
                    _ss_copy(k_desc, row_b, bars, 1, READY1L, k1, kr1, 0, 4, True, FINE, MODE)
                    n1 += 1
                n0 += 1

    @gluon.jit
    def _ss_scores(q_smem, qr_smem, k_buf, kr_buf, bars, SLOT: gl.constexpr, BAR_FIRST: gl.constexpr,
                   BAR_SECOND: gl.constexpr, phase, s_layout: gl.constexpr, FIRST_HALF: gl.constexpr,
                   FINE: gl.constexpr, trace_ptr, pair, EV: gl.constexpr, TRACE: gl.constexpr):
        """S = Q·Kᵀ [64, 64] over the 576 columns of one page slot, starting on the half that lands first:
        columns 0-255 (FIRST_HALF = 0) or 256-511 (1); the RoPE box arrives with the second half. FINE: box by box,
        each as soon as it lands (FlashMLA's fine-grained TMA-GEMM pipelining)."""
        s = warpgroup_mma_init(gl.zeros([64, 64], gl.float32, layout=s_layout))
        if FINE:
            for j in gl.static_range(8):  # box (j + 4·FIRST_HALF) % 8
                mbarrier.wait(bars.index(CHUNK_READY + 9 * SLOT + (j + 4 * FIRST_HALF) % 8), phase)
                s = warpgroup_mma(q_smem.slice(((j + 4 * FIRST_HALF) % 8) * 64, 64, dim=1),
                                  k_buf.slice(((j + 4 * FIRST_HALF) % 8) * 64, 64, dim=1).permute((1, 0)),
                                  s, use_acc=j > 0, is_async=True)
            mbarrier.wait(bars.index(CHUNK_READY + 9 * SLOT + 8), phase)
        else:
            mbarrier.wait(bars.index(BAR_FIRST), phase)
            _ss_stamp(trace_ptr, pair, EV, TRACE)
            s = warpgroup_mma(q_smem.slice(256 * FIRST_HALF, 256, dim=1),
                              k_buf.slice(256 * FIRST_HALF, 256, dim=1).permute((1, 0)), s, use_acc=False,
                              is_async=True)
            mbarrier.wait(bars.index(BAR_SECOND), phase)
            _ss_stamp(trace_ptr, pair, EV + 1, TRACE)
            s = warpgroup_mma(q_smem.slice(256 - 256 * FIRST_HALF, 256, dim=1),
                              k_buf.slice(256 - 256 * FIRST_HALF, 256, dim=1).permute((1, 0)), s, is_async=True)
        s = warpgroup_mma(qr_smem, kr_buf.permute((1, 0)), s, is_async=True)
        return warpgroup_mma_wait(num_outstanding=0, deps=(s,))

    @gluon.jit
    def _ss_zero_tail(k_buf, valid):
        """Zero the V columns of rows >= valid of a page in shared memory (they may hold NaN; 0·NaN = NaN)."""
        zl: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        zr = gl.arange(0, 64, layout=gl.SliceLayout(1, zl))
        for c in gl.static_range(8):
            view = k_buf.slice(c * 64, 64, dim=1)
            x = view.load(zl)
            view.store(gl.where((zr < valid)[:, None], x, gl.zeros_like(x)))

    @gluon.jit
    def _ss_rescaled_p(p_smem, scale, s_layout: gl.constexpr, pa_layout: gl.constexpr):
        """P_A from shared memory times a per-row scale, as the register operand of a wgmma."""
        p = p_smem.load(s_layout).to(gl.float32) * scale[:, None]
        return gl.convert_layout(p.to(p_smem.dtype), pa_layout)

    @gluon.jit
    def _ss_publish(bar):
        """Make this warpgroup's shared-memory stores visible to the other partitions (and to the tensor cores),
        then signal `bar`."""
        gl.thread_barrier()
        fence_async_shared()
        mbarrier.arrive(bar)

    @gluon.jit
    def _ss_consumer(WG: gl.constexpr, q_ptr, stride_qb, stride_qs, stride_qh, seqlens_ptr, meta_ptr,
                     num_splits_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv,
                     rows_per_kv, m_tiles, max_blocks, qk_scale,
                     q_smem, qr_smem, k_smem, kr_smem, stats, bars, CAUSAL: gl.constexpr, META_COLS: gl.constexpr,
                     FINE: gl.constexpr):
        """Consumer warpgroup WG (0 or 1): the scores of every other page, output columns 256·WG .. 256·WG+255
        (_ss_consumer_at, releasing a pair's right halves at its end)."""
        _ss_consumer_at(WG, q_ptr, stride_qb, stride_qs, stride_qh, seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr,
                        lse_ptr, part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, max_blocks,
                        qk_scale, q_smem, qr_smem, k_smem, kr_smem, stats, bars, CAUSAL, META_COLS, FINE, 0,
                        num_splits_ptr, False, False, False, False)

    @gluon.jit
    def _ss_consumer_at(WG: gl.constexpr, q_ptr, stride_qb, stride_qs, stride_qh, seqlens_ptr, meta_ptr,
                        num_splits_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv,
                        rows_per_kv, m_tiles, max_blocks, qk_scale,
                        q_smem, qr_smem, k_smem, kr_smem, stats, bars, CAUSAL: gl.constexpr, META_COLS: gl.constexpr,
                        FINE: gl.constexpr, EARLY: gl.constexpr, trace_ptr, TRACE: gl.constexpr,
                        MAX_FIRST: gl.constexpr, OPAQUE: gl.constexpr, Q_ASYNC: gl.constexpr,
                        LINES: gl.constexpr = 0, Q_TMA: gl.constexpr = False,
                        ):
        """Consumer warpgroup WG, EARLY choosing when warpgroup 1 releases a pair's right halves after its two last
        products, P_B·V_B[:, 256:] and P_A·V_A[:, 256:] (1 is the default; the others are probes, results correct):
        0 waits for both, then releases both; 1 releases B's right half as soon as its product is done; 2 issues A's
        first and releases A's right half (and P_A's box) as soon as it is done; 3 as 0 (launched with every
        constexpr argument kept constant, which 0 is not: the kernel's note on warp_specialize).
        MAX_FIRST: warpgroup 0 publishes m_A as soon as S_A's row max is known, before computing and storing P_A,
        and warpgroup 1 takes m_A (not P_A) before its softmax of B and multiplies P_B·V_B[:, 256:] before it waits
        for P_A: the pair's chain S_A → softmax A → softmax B → products no longer holds WG0's exponentials and
        P_A's store. OPAQUE: warpgroup 0 rebuilds the page slots' views at every pair from an index the compiler
        cannot fold, so that their wgmma descriptors are computed where they are used instead of hoisted out of the
        loops and spilled (it reloaded ~20 spilled descriptors from local memory before every S_A, behind the page
        copies' traffic; sm_90a spills 328 → 168 bytes a thread, none left in either consumer's pair loop).
        Q_ASYNC: each request's Q copied by cp.async, all its blocks in flight at once (_v5_load_q's ASYNC), instead
        of one load-and-store round trip per 64-column block.
        LINES: the output (or its fp32 partial) moved by shuffles to 16-byte stores first (_v5_store's LINES).
        Q_TMA: each request's Q is copied by the producer warp (TMA, issued as soon as both warpgroups are done with
        the previous request's pages, so it lands while they store): the consumers only wait for it.
        """
        _ss_stamp(trace_ptr, 0, 21 + WG, TRACE)
        if WG == 0:
            _ss_stamp(trace_ptr, 0, 32, TRACE, NS=True)
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, 64, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, 256, 16])
        s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
        s_cols: gl.constexpr = gl.SliceLayout(0, s_layout)
        o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
        o_cols: gl.constexpr = gl.SliceLayout(0, o_layout)
        pa_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        dtype: gl.constexpr = q_smem.dtype

        begin_req, begin_block, end_req, end_block, begin_split = _v5_part(meta_ptr, META_COLS)
        m_start = (gl.program_id(1) % m_tiles) * 64
        rows = m_start + gl.arange(0, 64, layout=s_rows)
        tok = rows // heads_per_kv
        k_a = k_smem.index(0)  # slot 0 holds the even pages (A), slot 1 the odd ones (B)
        k_b = k_smem.index(1)
        p_a = kr_smem.index(0)  # page A's RoPE box, reused for P_A once S_A is computed
        p_b = kr_smem.index(1)
        n0 = 0  # as the producer counts them
        n1 = 0
        for req in range(begin_req, end_req + 1):
            _ss_stamp(trace_ptr, n0, 34 + WG, TRACE)  # (the loop is entered once the schedule row has come)
            s_k, lo, hi = _v5_pages(seqlens_ptr, req, begin_req, begin_block, end_req, end_block, max_blocks)
            if CAUSAL:
                n_visible = s_k - s_q + 1 + tok
            else:
                n_visible = tok * 0 + s_k
            m_i = gl.full([64], float("-inf"), gl.float32, layout=s_rows)
            l_i = gl.zeros([64], gl.float32, layout=s_rows)
            acc = gl.zeros([64, 256], gl.float32, layout=o_layout)
            # Q: each warpgroup copies half of its columns, once both are done with the previous request's
            r = req - begin_req
            _ss_stamp(trace_ptr, n0, 24 + 4 * WG, TRACE)
            if not Q_TMA:
                mbarrier.wait(bars.index(Q_EMPTY), (r & 1) ^ 1)  # a fresh barrier counts as released
                _v5_load_q(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv,
                           rows_per_kv, 4 * WG, 4 + 5 * WG, 64, 64, 4, ASYNC=Q_ASYNC)
                _ss_publish(bars.index(Q_READY))
            mbarrier.wait(bars.index(Q_READY), r & 1)
            _ss_stamp(trace_ptr, n0, 25 + 4 * WG, TRACE)
            for a in range(lo, hi, 2):
                has_b = a + 1 < hi
                ph0 = n0 & 1
                ph1 = n1 & 1
                if OPAQUE and WG == 0:  # the slots' views rebuilt from a value the compiler cannot fold (OPAQUE)
                    zero = gl.inline_asm_elementwise("mov.u32 $0, 0;", "=r", [], dtype=gl.int32, is_pure=False,
                                                     pack=1)
                    k_a = k_smem.index(zero)
                    k_b = k_smem.index(zero + 1)
                    p_a = kr_smem.index(zero)
                    p_b = kr_smem.index(zero + 1)
                _ss_stamp(trace_ptr, n0, 8 * WG, TRACE)
                if WG == 0:
                    s = _ss_scores(q_smem, qr_smem, k_a, p_a, bars, 0, READY0L, READY0R, ph0, s_layout, 0, FINE,
                                   trace_ptr, n0, 6, TRACE)
                    _ss_stamp(trace_ptr, n0, 1, TRACE)
                    if MAX_FIRST:  # m_A to warpgroup 1 first
                        s = _v5_masked_scores(s, a * 64, n_visible, qk_scale, s_cols, 64)
                        m_tile = gl.max(s, axis=1)
                        stats.index(STAT_M_A).store(gl.maximum(m_i, m_tile))
                        _ss_publish(bars.index(M_A_READY))
                        p, m_a, m_a_use = _v5_probs(s, m_i, m_tile)
                    else:
                        p, m_a, m_a_use = _v5_softmax(s, a * 64, n_visible, m_i, qk_scale, s_cols, 64)
                    alpha = gl.exp2(m_i - m_a_use)
                    l_i = l_i * alpha + gl.sum(p, axis=1)
                    acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
                    if s_k - a * 64 < 64:
                        _ss_zero_tail(k_a, s_k - a * 64)
                    p_a.store(p.to(dtype))
                    if not MAX_FIRST:
                        stats.index(STAT_M_A).store(m_a)
                    _ss_publish(bars.index(P_A_READY))
                    _ss_stamp(trace_ptr, n0, 2, TRACE)
                    acc = warpgroup_mma(p_a, k_a.slice(0, 256, dim=1), acc, is_async=True)
                    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                    mbarrier.arrive(bars.index(EMPTY0L))
                    _ss_stamp(trace_ptr, n0, 3, TRACE)  # A's columns 0-255: the next even page may come
                    m_b = m_a
                    if has_b:
                        mbarrier.wait(bars.index(P_B_READY), ph1)
                        _ss_stamp(trace_ptr, n0, 4, TRACE)
                        m_b = stats.index(STAT_M_B).load(s_rows)
                        sc = gl.exp2(m_a - gl.where(m_b == float("-inf"), 0.0, m_b))
                        l_i = l_i * sc
                        acc = acc * gl.convert_layout(sc, o_rows)[:, None]
                        _ss_wait_half(bars, 1, READY1L, ph1, 0, 4, FINE)  # (landed before WG1 computed S_B)
                        acc = warpgroup_mma(p_b, k_b.slice(0, 256, dim=1), acc, is_async=True)
                        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                        mbarrier.arrive(bars.index(EMPTY1L))
                        _ss_stamp(trace_ptr, n0, 5, TRACE)
                        n1 += 1
                    m_i = m_b
                else:  # warpgroup 1
                    s = gl.zeros([64, 64], gl.float32, layout=s_layout)
                    if has_b:
                        s = _ss_scores(q_smem, qr_smem, k_b, p_b, bars, 1, READY1R, READY1L, ph1, s_layout, 1, FINE,
                                       trace_ptr, n0, 13, TRACE)
                    _ss_stamp(trace_ptr, n0, 9, TRACE)
                    # m_A: on a barrier of its own with MAX_FIRST (P_A comes later), else with P_A
                    mbarrier.wait(bars.index(M_A_READY if MAX_FIRST else P_A_READY), ph0)
                    _ss_stamp(trace_ptr, n0, 10, TRACE)
                    m_a = stats.index(STAT_M_A).load(s_rows)
                    m_b = m_a
                    m_b_use = gl.where(m_a == float("-inf"), 0.0, m_a)
                    if has_b:
                        p, m_b, m_b_use = _v5_softmax(s, (a + 1) * 64, n_visible, m_a, qk_scale, s_cols, 64)
                        alpha = gl.exp2(m_i - m_b_use)
                        l_i = l_i * alpha + gl.sum(p, axis=1)
                        acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
                        if s_k - (a + 1) * 64 < 64:
                            _ss_zero_tail(k_b, s_k - (a + 1) * 64)
                        p_b.store(p.to(dtype))
                        stats.index(STAT_M_B).store(m_b)
                        _ss_publish(bars.index(P_B_READY))
                        _ss_stamp(trace_ptr, n0, 11, TRACE)
                        if EARLY == 2:  # A's right half first, released as soon as its product is done
                            if MAX_FIRST:
                                mbarrier.wait(bars.index(P_A_READY), ph0)
                            pa = _ss_rescaled_p(p_a, gl.exp2(m_a - m_b_use), s_layout, pa_layout)
                            _ss_wait_half(bars, 0, READY0R, ph0, 4, 8, FINE)
                            acc = warpgroup_mma(pa, k_a.slice(256, 256, dim=1), acc, is_async=True)
                            acc = warpgroup_mma(p_b, k_b.slice(256, 256, dim=1), acc, is_async=True)
                            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                            mbarrier.arrive(bars.index(EMPTY0R))
                            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                            mbarrier.arrive(bars.index(EMPTY1R))
                        else:
                            acc = warpgroup_mma(p_b, k_b.slice(256, 256, dim=1), acc, is_async=True)
                            if MAX_FIRST:  # (P_A is published after m_A)
                                mbarrier.wait(bars.index(P_A_READY), ph0)
                            # P_A, brought to the scale of m_B, as a register operand
                            pa = _ss_rescaled_p(p_a, gl.exp2(m_a - m_b_use), s_layout, pa_layout)
                            _ss_wait_half(bars, 0, READY0R, ph0, 4, 8, FINE)  # (landed before WG0 computed S_A)
                            acc = warpgroup_mma(pa, k_a.slice(256, 256, dim=1), acc, is_async=True)
                            if EARLY == 1:  # B's right half released as soon as its product is done
                                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                                mbarrier.arrive(bars.index(EMPTY1R))
                            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                            if EARLY == 1:
                                mbarrier.arrive(bars.index(EMPTY0R))
                    else:
                        alpha = gl.exp2(m_i - m_b_use)
                        l_i = l_i * alpha
                        acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
                        if MAX_FIRST:
                            mbarrier.wait(bars.index(P_A_READY), ph0)
                        pa = _ss_rescaled_p(p_a, gl.exp2(m_a - m_b_use), s_layout, pa_layout)
                        _ss_wait_half(bars, 0, READY0R, ph0, 4, 8, FINE)
                        acc = warpgroup_mma(pa, k_a.slice(256, 256, dim=1), acc, is_async=True)
                        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                    if EARLY == 0 or EARLY == 3:
                        mbarrier.arrive(bars.index(EMPTY0R))
                        if has_b:
                            mbarrier.arrive(bars.index(EMPTY1R))
                    elif not has_b:  # (with B, released above)
                        mbarrier.arrive(bars.index(EMPTY0R))
                    if has_b:
                        n1 += 1
                    m_i = m_b
                    _ss_stamp(trace_ptr, n0, 12, TRACE)
                n0 += 1
            mbarrier.arrive(bars.index(Q_EMPTY))
            _ss_stamp(trace_ptr, n0, 26 + 4 * WG, TRACE)

            # the row sum is split between the warpgroups (each summed the P it computed): exchange it
            stats.index(STAT_L + 2 * (r & 1) + WG).store(l_i)
            _ss_publish(bars.index(L_READY))
            mbarrier.wait(bars.index(L_READY), r & 1)
            l_i += stats.index(STAT_L + 2 * (r & 1) + 1 - WG).load(s_rows)

            # store: final output, or an fp32 partial for the combine kernel
            part_slot, pieces = _v5_piece(num_splits_ptr, req, begin_req, begin_split)
            _v5_store(acc, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr, part_out_ptr,
                      part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start, o_rows, o_cols, 256 * WG, 256,
                      WG == 0, LINES=LINES)
            _ss_stamp(trace_ptr, n0, 27 + 4 * WG, TRACE)
            if WG == 0:  # (overwritten at each request: the last one's stays, whatever the pair count)
                _ss_stamp(trace_ptr, 0, 15, TRACE)
                _ss_stamp(trace_ptr, 0, 33, TRACE, NS=True)

    @gluon.jit
    def _ss_kernel(
        q_ptr, k_desc, q_desc, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr,
        meta_ptr, num_splits_ptr, ok_ptr, trace_ptr,
        stride_qb, stride_qs, stride_qh, stride_btb, s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks,
        max_blocks,
        qk_scale,
        CAUSAL: gl.constexpr, META_COLS: gl.constexpr, FINE: gl.constexpr, MODE: gl.constexpr,
        EARLY: gl.constexpr, TRACE: gl.constexpr, MAX_FIRST: gl.constexpr, OPAQUE: gl.constexpr,
        Q_ASYNC: gl.constexpr, STORE_LINES: gl.constexpr, Q_TMA: gl.constexpr, num_warps: gl.constexpr,
    ):
        smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        dtype: gl.constexpr = q_ptr.dtype.element_ty
        # block shapes must be powers of two: the 576 columns are kept as 512 (latent, also V) + 64 (RoPE)
        q_smem = gl.allocate_shared_memory(dtype, [64, 512], smem_layout)
        qr_smem = gl.allocate_shared_memory(dtype, [64, 64], smem_layout)
        k_smem = gl.allocate_shared_memory(dtype, [2, 64, 512], smem_layout)  # page slots: c_kv rows (K, V)
        kr_smem = gl.allocate_shared_memory(dtype, [2, 64, 64], smem_layout)  # k_rope rows, then P
        stats = gl.allocate_shared_memory(gl.float32, [N_STATS, 64],
                                          gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0]))
        bars = gl.allocate_shared_memory(gl.int64, [N_BARS, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(N_BARS):
            # the consumers' signals are arrived on by both warpgroups where both take part
            # (Q_READY: the producer's one arrival with its bytes where it copies Q, Q_TMA)
            mbarrier.init(bars.index(i), count=2 if ((i == Q_READY and not Q_TMA) or i == Q_EMPTY or i == L_READY)
                          else 1)
        fence_async_shared()

        if EARLY == 0:  # the first release order, kept as a probe, launched as it was first measured:
            # (a tuple assigned to a variable reaches the partitions with its constexprs, here CAUSAL, META_COLS and
            # FINE, turned into run-time scalars: both sides of their branches are compiled, as measured)
            consumer_args = (q_ptr, stride_qb, stride_qs, stride_qh, seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr,
                             lse_ptr, part_out_ptr, part_lse_ptr,
                             s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, max_blocks, qk_scale,
                             q_smem, qr_smem, k_smem, kr_smem, stats, bars, CAUSAL, META_COLS, FINE)
            gl.warp_specialize([
                (_ss_consumer, (0,) + consumer_args),
                (_ss_consumer, (1,) + consumer_args),
                (_ss_producer, (k_desc, block_table_ptr, seqlens_ptr, meta_ptr, ok_ptr, stride_btb, num_blocks,
                                max_blocks, k_smem, kr_smem, bars, META_COLS, FINE, MODE, ok_ptr, False)),
            ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
        else:  # the tile (EARLY 1) and the other EARLY probes: the consumers' arguments as literals, so that every
            # constexpr stays one
            gl.warp_specialize([
                (_ss_consumer_at, (0, q_ptr, stride_qb, stride_qs, stride_qh, seqlens_ptr, meta_ptr, num_splits_ptr,
                                   out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv,
                                   m_tiles, max_blocks, qk_scale, q_smem, qr_smem, k_smem, kr_smem, stats, bars,
                                   CAUSAL, META_COLS, FINE, EARLY, trace_ptr, TRACE, MAX_FIRST, OPAQUE,
                                   Q_ASYNC, STORE_LINES, Q_TMA)),
                (_ss_consumer_at, (1, q_ptr, stride_qb, stride_qs, stride_qh, seqlens_ptr, meta_ptr, num_splits_ptr,
                                   out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv,
                                   m_tiles, max_blocks, qk_scale, q_smem, qr_smem, k_smem, kr_smem, stats, bars,
                                   CAUSAL, META_COLS, FINE, EARLY, trace_ptr, TRACE, MAX_FIRST, OPAQUE,
                                   Q_ASYNC, STORE_LINES, Q_TMA)),
                (_ss_producer, (k_desc, block_table_ptr, seqlens_ptr, meta_ptr, ok_ptr, stride_btb, num_blocks,
                                max_blocks, k_smem, kr_smem, bars, META_COLS, FINE, MODE, trace_ptr, TRACE, q_desc,
                                q_smem, qr_smem, rows_per_kv, m_tiles, Q_TMA)),
            ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


# ---------------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------------
_LAUNCH = FastLauncher(_ss_kernel) if gluon is not None else None
#: the TRACE probe (scripts/gpu_seesaw_trace.py): an int64 tensor of at least [programs, TRACE_PAIRS, TRACE_EVENTS]
#: that the tile's launches fill with cycle stamps while it is set (None: the tile, no stamps)
TRACE_BUFFER = None


def launch_v5_seesaw(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                     part_lse, ok_flag, config: GluonConfig | None = None):
    """Launch the seesaw tile over the schedule `meta`; partials of split requests go to part_out/part_lse. The
    tile's switches come from `config` (GluonConfig, its defaults where None): fine, each 64-column box on its own
    mbarrier, multiplied as soon as it lands (else one barrier per half); mode 2, no page copies, the compute alone
    (results meaningless: for timing the parts); early, when warpgroup 1 releases a pair's right halves
    (_ss_consumer_at's EARLY; 1, the default, B's as soon as its product is done; 0 both at the pair's end);
    max_first, opaque_views, q_async: _ss_consumer_at's MAX_FIRST, OPAQUE and Q_ASYNC (on by default; early 0
    compiles without them); store_lines and lines_partials, its LINES (1: on for the output and the partials,
    the default; 2: for the output only; 0: off)."""
    cfg = config or DEFAULT_GLUON_CONFIG
    m_tiles = -(-dims.rows_per_kv // 64)
    if TRACE_BUFFER is not None:  # the probe's buffer: refused before the kernel could write past it
        need = meta.shape[0] * m_tiles * int(TRACE_PAIRS) * int(TRACE_EVENTS)
        buf = TRACE_BUFFER
        if buf.dtype != torch.int64 or buf.device != q.device or not buf.is_contiguous() or buf.numel() < need:
            raise ValueError(f"v5_seesaw.TRACE_BUFFER must be a contiguous int64 tensor on {q.device} of at least "
                             f"{need} elements ([programs, TRACE_PAIRS, TRACE_EVENTS]), got {buf.dtype} on "
                             f"{buf.device} with {buf.numel()}")
    k_desc = _k_descriptor(k_cache, 64)
    switches = consumer_switches(cfg, q, dims)
    _LAUNCH(
        (meta.shape[0], m_tiles),
        q, k_desc, _q_descriptor(q) if switches["Q_TMA"] else k_desc, block_table, cache_seqlens, out, lse, part_out,
        part_lse, meta, num_splits, ok_flag, ok_flag if TRACE_BUFFER is None else TRACE_BUFFER,
        q.stride(0), q.stride(1), q.stride(2), block_table.stride(0), dims.s_q, dims.h_q, dims.heads_per_kv,
        dims.rows_per_kv, m_tiles, dims.num_blocks, dims.max_blocks, dims.scale * LOG2E,
        CAUSAL=causal, META_COLS=meta.shape[1], FINE=cfg.fine, MODE=cfg.mode, EARLY=cfg.early,
        TRACE=TRACE_BUFFER is not None, **switches, num_warps=4, maxnreg=WS_REGS,
    )


def consumer_switches(cfg: GluonConfig, q: torch.Tensor, dims) -> dict:
    """_ss_consumer_at's switches for a launch over q, from `cfg`: MAX_FIRST, OPAQUE, Q_ASYNC, STORE_LINES and Q_TMA
    (the kernel's keyword arguments; the seesaw tiles that run these consumers, bf16 and FP8, take them alike)."""
    return dict(
        MAX_FIRST=cfg.max_first, OPAQUE=cfg.opaque_views,
        # cp.async copies 16 bytes a thread: only where Triton's specialization proves each row of q 16-byte aligned
        # (its address and its three outer strides multiples of 16 elements, as for a contiguous q; else the loads)
        Q_ASYNC=cfg.q_async and not q.data_ptr() & 15 and all(st % 16 == 0 for st in q.stride()[:3]),
        STORE_LINES=(1 if cfg.lines_partials else 2) if cfg.store_lines else 0,
        # Q by TMA (the producer): where q's rows of one kv head are [b·s_q·h_q, 576] rows of one 2-D tensor
        Q_TMA=cfg.q_tma and _q_rows_2d(q, dims),
    )


def _q_rows_2d(q: torch.Tensor, dims) -> bool:
    """Whether q [b, s_q, h_q, 576] is one [b·s_q·h_q, 576] row-major matrix whose rows a TMA descriptor can walk
    (one kv head, contiguous rows, 16-byte aligned): then a request's Q tile is 64 consecutive rows of it."""
    b, s_q, h_q, d = q.shape
    return (dims.h_kv == 1 and q.stride() == (s_q * h_q * d, h_q * d, d, 1) and not q.data_ptr() & 15
            and q.dtype in (torch.bfloat16, torch.float16))


def _q_descriptor(q: torch.Tensor):
    """TMA descriptor over q as [b·s_q·h_q rows, 576]: 64 x 64 boxes, as the cache's (rows_descriptor)."""
    return rows_descriptor("q", q, q.shape[0] * q.shape[1] * q.shape[2], 64)
