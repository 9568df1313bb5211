# version 5, FP8 cache, warp-specialised: the Gluon FP8 tile of v5_fp8_gluon.py with the dequantization moved
# into warps of its own (stage 5).
#
# What it adds over v5_fp8_gluon.py (the lockstep FP8 tile; same schedule, semantics and shared memory):
#   * a dequantizing producer partition (`gl.warp_specialize`, 4 warps, PRODUCER_REGS registers) does all the
#     page work: block ids (bad ones not followed: ok flag cleared, page read as zeros), the 16-byte loads of the
#     e4m3 bytes and scales into registers, the e4m3 -> bf16 conversion times the scale (_fp8_chunk), the stores
#     into a bf16 page slot [64, 512], and the cp.async of k_rope into the slot's [64, 64] RoPE box. Its loads are
#     issued one page ahead, chunk by chunk: as soon as chunk c of page i is stored, chunk c of page i+1 is
#     requested into the same registers (scale t after chunks 2t and 2t+1), so every load has a whole producer
#     iteration (in the steady state: one consumer step, ~3 µs) to arrive, with one page (41 KB per SM) in flight;
#   * the default partition, two consumer warpgroups (8 warps, the rest of the registers), only does the math of
#     the lockstep tile: S = Q·Kᵀ (async wgmma, warps [4, 2]), the masked softmax, P to shared memory, O += P·V
#     (warps [4, 2], N = 256), the store; it copies Q itself, once per request, as before.
#   Shared memory: Q 72 KB + 2 bf16 page slots 144 KB + P 8 KB + 4 mbarriers, as v5_fp8_gluon.py + 36 bytes.
#   Compiled for sm_90a (scripts/compile_offline.py v5fws, Triton 3.6): 229,924 B of shared memory, 12 warps at 168
#   registers, setmaxnreg 192 (consumers) / 120 (producer); ptxas spills 36 / 48 bytes (causal: 68 / 80), none
#   inside the consumers' page loop, a few words per page in the producer's (its 64 words + 8 scales in flight).
#   MODE (launch_v5_fp8_ws's mode; 1 and 2 are timing probes, results meaningless): 0 the kernel; 1 the producer
#   alone; 2 the consumers alone. (Modes 3-5, a producer doing only part of its work beside the consumers, were
#   measured once and removed: commit 39d97be has them, docs/fp8.md §5 their results.)
#
# Barrier protocol. Both partitions walk the same pages in the same order (the schedule slice of _v5_part, each
# request's pages [lo, hi) of _v5_pages) and count them in `it`, which runs on across requests: page `it` of the
# program goes through slot it % 2, the k = it // 2-th use of that slot. Four mbarriers, each with count 1:
#   READY[s] (bars 0, 1): arrived on once by the producer (one thread, after its 4 warps stored their share of the
#       bf16 page, waited for their k_rope cp.async, issued fence.proxy.async and met at a partition barrier) when
#       slot s holds its page. The consumers wait READY[it % 2] at phase (it // 2) & 1 before the S product.
#   EMPTY[s] (bars 2, 3): arrived on once by the consumers (one thread, after both warpgroups waited for their
#       P·V wgmma and met at their partition barrier) when slot s is no longer read (S read K and k_rope, P·V read
#       V). The producer waits EMPTY[it % 2] at phase ((it // 2) & 1) ^ 1 before its first write into the slot:
#       for k = 0 that is the phase before a fresh barrier's first one, which counts as complete (no wait).
#   Use k of a slot needs READY's k-th completion (producer) and, before use k + 1 is written, EMPTY's k-th
#   (consumers): the producer is at most one use, i.e. two pages, ahead, so no barrier is ever two phases ahead of
#   its waiter (the parity wait cannot alias). Q and P are the consumers' own (their partition barriers, as in the
#   lockstep tile).
#   Checked by hand:
#     0 pages (an empty request, or hi <= lo in the slice): neither partition enters its page loop, `it` does not
#       move, no barrier is touched; the consumers store l = 0 (output 0, LSE +inf / a -inf partial) as before.
#     1 page: producer: wait EMPTY[s] (free, or released by the consumers' previous step), fill, arrive READY[s];
#       consumers: wait READY[s], compute, arrive EMPTY[s]. The next page (of this or a later request) uses the
#       other slot with the same phases' logic, whatever request it belongs to.
#     odd / even page counts, several requests per program: `it` is one counter for the whole slice in both
#       partitions, so slot and phase never depend on a request's page count or parity.
#     a slice that starts or ends mid-request: both partitions get the same lo / hi from _v5_pages, so they walk
#       the same pages; the split's partial is stored by the consumers as in the lockstep tile.
#     the last page: its READY completion is waited on by the consumers; its (and the one before's) EMPTY arrive
#       is never waited on, which is harmless (the program ends; barriers are not reused by another program).
#     the producer's look-ahead past the slice (page hi of each request, its block id, page hi + 1) is masked:
#       no rows, no memory traffic, no flag.
#
# Why (docs/results/v5_notes.md, the Gluon FP8 tile): the lockstep FP8 tile spends ~700 instructions per thread and
# page on the dequantization in the same warps as the tensor-core work and overlaps it only with the short
# S = Q·Kᵀ (h64 0.313 ms against 0.25 for the bf16 lockstep tile, whose compute alone takes ~0.19). Here it runs
# in its own warps while the consumers' wgmma and softmax run: a page's dequantization is ~5,600 warp-instructions
# (1,400 per scheduler) against ~6,000 cycles of consumer work per page, so it fits beside them if the producer's
# warps reach ~0.25 instructions per cycle (its eight chunks' conversions are independent: ample ILP).
# Expected (H200, b 128, s_k 4096): near the bf16 lockstep tile's compute time, limited by the consumers' own
# serial S -> softmax -> P·V chain: h64 ~0.22 ms (0.313 lockstep FP8), h128 ~0.41 (0.560), h16 (padded to 64 rows)
# ~0.25 (0.343). Risks: the producer's shared-memory stores competing with the wgmma reads (seen when half the
# dequantization moved under P·V), and a producer slower than predicted (then ~0.27 / 0.50).
# Measured (H200, 2026-12-02, docs/fp8.md §5, results/fp8_bench_ws_h200_2026-12-02.json): correct on its first run;
# h64 0.299 ms, h128 0.510, h16 0.325 (lockstep FP8 0.316 / 0.564 / 0.346): 5-10 % bought, not the ~30 % expected.
# Its parts alone (MODES 1, 2): consumers 0.195 at h64 (the bf16 lockstep tile's math, already slower than every FP8
# target asks for the whole call), producer 0.222; together they overlap ~60 %: beside the consumers (modes 3-5)
# the producer's stores cost +5 %, its loads +22 %, its loads and dequantization +57 % (its instruction stream on
# the same schedulers as the consumers' serial chain). The risk named above (the stores) was not what bound it.
"""Version 5 over an FP8 cache, warp-specialised: a dequantizing producer partition and two consumer warpgroups
(Hopper, Triton 3.6)."""

from __future__ import annotations

import triton.language as tl

from .launch import FastLauncher
from .v5_fp8_gluon import (
    _fp8_chunk,
    _fp8_fetch,
    _fp8_page,
    _fp8_rope_copy,
    _fp8_scale,
    _fp8_words,
    async_copy,
    fp8_tile_launch_args,
)
from .v5_gluon import (
    BLOCK_M,
    O_LAYOUT,
    S_LAYOUT,
    _v5_flag_stale,
    _v5_load_q,
    _v5_next_part,
    _v5_online_softmax,
    _v5_pages,
    _v5_part,
    _v5_piece,
    _v5_start,
    _v5_store,
    fence_async_shared,
    gl,
    gluon,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

READY0 = tl.constexpr(0)  # READY[s] = READY0 + s: slot s holds its page (bf16 c_kv and k_rope)
EMPTY0 = tl.constexpr(2)  # EMPTY[s] = EMPTY0 + s: the consumers are done reading slot s
N_BARS = tl.constexpr(4)

CONSUMER_WARPS = 8  # the default partition: two warpgroups
PRODUCER_WARPS = tl.constexpr(4)  # the dequantizing partition
WS_REGS = 168  # registers per thread at launch (12 warps · 32 · 168 ≤ 65,536); setmaxnreg then moves them:
PRODUCER_REGS = tl.constexpr(120)  # the producer's; the consumers get the rest, (168·384 - 120·128) / 256 = 192


if gluon is not None:

    @gluon.jit
    def _ws_put_pair(k_buf, T: gl.constexpr, wa, wb, s, kv_ptr, page, n_rows, stride_kvb, ldw: gl.constexpr,
                     dtype: gl.constexpr):
        """Chunks 2T and 2T + 1 of the current page (words wa, wb; scale s) dequantized into the bf16 slot k_buf;
        each chunk's registers then take the loads of the same chunk of the next page (page, n_rows), and s its
        scale T once both chunks are converted. Returns the next page's (wa, wb, s)."""
        _fp8_chunk(k_buf.slice(128 * T, 64, dim=1), wa, s, dtype)
        wa = _fp8_words(kv_ptr, page, n_rows, stride_kvb, 2 * T, ldw)
        _fp8_chunk(k_buf.slice(128 * T + 64, 64, dim=1), wb, s, dtype)
        wb = _fp8_words(kv_ptr, page, n_rows, stride_kvb, 2 * T + 1, ldw)
        s = _fp8_scale(kv_ptr, page, n_rows, stride_kvb, T, ldw)
        return wa, wb, s

    @gluon.jit
    def _ws_producer(kv_ptr, block_table_ptr, seqlens_ptr, meta_ptr, ok_ptr, stride_kvb, stride_btb, num_blocks,
                     max_blocks, k_smem, kr_smem, bars, META_COLS: gl.constexpr, MODE: gl.constexpr):
        """The dequantizing partition: every page of the slice into the slots, in the consumers' order (MODE 2: hands
        the slots over untouched)."""
        # a chunk's loads: 4 words (16 bytes) per thread and row (4 threads a row, 32 rows per pass over 4 warps);
        # k_rope: 8 bf16 per thread, 8 threads a row
        ldw: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [PRODUCER_WARPS, 1], [1, 0])
        ldr: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [PRODUCER_WARPS, 1], [1, 0])
        dtype: gl.constexpr = k_smem.dtype
        begin_req, begin_block, end_req, end_block, _ = _v5_part(meta_ptr, META_COLS)
        next_req, next_block = _v5_next_part(meta_ptr, META_COLS)

        it = 0  # pages of this program so far: slot it % 2, that slot's use it // 2
        for req in range(begin_req, end_req + 1):
            s_k, lo, hi = _v5_pages(seqlens_ptr, req, begin_req, begin_block, end_req, end_block, max_blocks)
            _v5_flag_stale(ok_ptr, req, s_k, gl.cdiv(s_k, 64), begin_req, begin_block, end_req, end_block,
                           next_req, next_block, max_blocks)
            bt_row = block_table_ptr + req.to(gl.int64) * stride_btb
            # page lo's words in flight (while the slot it goes to may still be read), page lo + 1's block id
            page, n_rows = _fp8_page(bt_row, lo, hi, s_k, num_blocks, ok_ptr)
            w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3 = _fp8_fetch(kv_ptr, page, n_rows, stride_kvb, ldw)
            nxt, nxt_rows = _fp8_page(bt_row, lo + 1, hi, s_k, num_blocks, ok_ptr)
            for i in range(lo, hi):
                slot = it % 2
                k_buf = k_smem.index(slot)
                mbarrier.wait(bars.index(EMPTY0 + slot), ((it // 2) & 1) ^ 1)  # the consumers are done with it
                if MODE != 2:
                    _fp8_rope_copy(kr_smem.index(slot), kv_ptr, page, n_rows, stride_kvb, ldr)
                    # page i into the slot, chunk by chunk; page i + 1's loads behind them (none past the slice)
                    w0, w1, s0 = _ws_put_pair(k_buf, 0, w0, w1, s0, kv_ptr, nxt, nxt_rows, stride_kvb, ldw, dtype)
                    w2, w3, s1 = _ws_put_pair(k_buf, 1, w2, w3, s1, kv_ptr, nxt, nxt_rows, stride_kvb, ldw, dtype)
                    w4, w5, s2 = _ws_put_pair(k_buf, 2, w4, w5, s2, kv_ptr, nxt, nxt_rows, stride_kvb, ldw, dtype)
                    w6, w7, s3 = _ws_put_pair(k_buf, 3, w6, w7, s3, kv_ptr, nxt, nxt_rows, stride_kvb, ldw, dtype)
                page = nxt
                n_rows = nxt_rows
                nxt, nxt_rows = _fp8_page(bt_row, i + 2, hi, s_k, num_blocks, ok_ptr)
                async_copy.wait_group(0)  # this thread's k_rope rows have landed
                fence_async_shared()  # this thread's stores, visible to the tensor cores (async proxy)
                gl.thread_barrier()  # every producer thread's share is in
                mbarrier.arrive(bars.index(READY0 + slot))
                it += 1

    @gluon.jit
    def _ws_consumer(q_ptr, seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr,
                     stride_qb, stride_qs, stride_qh, s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, max_blocks,
                     qk_scale, q_smem, qr_smem, k_smem, kr_smem, p_smem, bars, CAUSAL: gl.constexpr,
                     META_COLS: gl.constexpr, MODE: gl.constexpr):
        """The default partition, two warpgroups: the lockstep tile's math on the pages the producer hands over (MODE
        1: hands them back unread)."""
        NW: gl.constexpr = 8
        PAGE: gl.constexpr = 64
        s_layout: gl.constexpr = S_LAYOUT
        o_layout: gl.constexpr = O_LAYOUT
        s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
        s_cols: gl.constexpr = gl.SliceLayout(0, s_layout)
        o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
        o_cols: gl.constexpr = gl.SliceLayout(0, o_layout)
        dtype: gl.constexpr = q_smem.dtype

        m_start = (gl.program_id(1) % m_tiles) * 64
        begin_req, begin_block, end_req, end_block, begin_split = _v5_part(meta_ptr, META_COLS)
        it = 0  # as the producer counts
        for req in range(begin_req, end_req + 1):
            s_k, lo, hi = _v5_pages(seqlens_ptr, req, begin_req, begin_block, end_req, end_block, max_blocks)
            part_slot, pieces = _v5_piece(num_splits_ptr, req, begin_req, begin_split)

            gl.thread_barrier()  # both warpgroups are done with the previous request's Q
            _v5_load_q(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv,
                       rows_per_kv, 0, 9, 64, 64, NW)
            fence_async_shared()
            gl.thread_barrier()

            rows, tok, n_visible, m_i, l_i, acc = _v5_start(m_start, heads_per_kv, s_k, s_q, CAUSAL, s_rows, o_layout)
            for i in range(lo, hi):
                slot = it % 2
                k_buf = k_smem.index(slot)
                mbarrier.wait(bars.index(READY0 + slot), (it // 2) & 1)  # page i is in the slot
                if MODE != 1:
                    # S = Q·Kᵀ over the 576 columns: warpgroup w computes keys 32w .. 32w + 31
                    s = gl.zeros([64, PAGE], gl.float32, layout=s_layout)
                    s = warpgroup_mma(q_smem, k_buf.permute((1, 0)), s, use_acc=False, is_async=True)
                    s = warpgroup_mma(qr_smem, kr_smem.index(slot).permute((1, 0)), s, is_async=True)
                    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                    p, alpha, m_i, l_i = _v5_online_softmax(s, i * PAGE, n_visible, m_i, l_i, qk_scale, s_cols, PAGE)
                    p_smem.store(p.to(dtype))
                    fence_async_shared()
                    gl.thread_barrier()  # both halves of P are in shared memory

                    # O = O·alpha + P·V: warpgroup w owns output columns 256w .. 256w + 255
                    acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
                    acc = warpgroup_mma(p_smem, k_buf, acc, is_async=True)
                    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                gl.thread_barrier()  # both warpgroups are done with this slot and with P
                mbarrier.arrive(bars.index(EMPTY0 + slot))  # the producer may refill it
                it += 1

            _v5_store(acc, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr, part_out_ptr,
                      part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start, o_rows, o_cols, 0, 512, True)

    @gluon.jit
    def _v5_fp8_ws_kernel(
        q_ptr, kv_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr,
        meta_ptr, num_splits_ptr, ok_ptr,
        stride_qb, stride_qs, stride_qh, stride_kvb, stride_btb,
        s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks, max_blocks,
        qk_scale,
        CAUSAL: gl.constexpr, META_COLS: gl.constexpr, MODE: gl.constexpr, num_warps: gl.constexpr,
    ):
        smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        dtype: gl.constexpr = q_ptr.dtype.element_ty
        q_smem = gl.allocate_shared_memory(dtype, [64, 512], smem_layout)  # Q's latent part
        qr_smem = gl.allocate_shared_memory(dtype, [64, 64], smem_layout)  # Q's RoPE part
        k_smem = gl.allocate_shared_memory(dtype, [2, 64, 512], smem_layout)  # two dequantized pages: c_kv
        kr_smem = gl.allocate_shared_memory(dtype, [2, 64, 64], smem_layout)  # and k_rope
        p_smem = gl.allocate_shared_memory(dtype, [64, 64], smem_layout)
        bars = gl.allocate_shared_memory(gl.int64, [N_BARS, 1], mbarrier.MBarrierLayout())
        for b in gl.static_range(N_BARS):
            mbarrier.init(bars.index(b), count=1)
        fence_async_shared()

        gl.warp_specialize([
            (_ws_consumer, (q_ptr, seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr, part_out_ptr,
                            part_lse_ptr, stride_qb, stride_qs, stride_qh, s_q, h_q, heads_per_kv, rows_per_kv,
                            m_tiles, max_blocks, qk_scale, q_smem, qr_smem, k_smem, kr_smem, p_smem, bars, CAUSAL,
                            META_COLS, MODE)),
            (_ws_producer, (kv_ptr, block_table_ptr, seqlens_ptr, meta_ptr, ok_ptr, stride_kvb, stride_btb,
                            num_blocks, max_blocks, k_smem, kr_smem, bars, META_COLS, MODE)),
        ], [PRODUCER_WARPS], [PRODUCER_REGS])


_LAUNCH = FastLauncher(_v5_fp8_ws_kernel) if gluon is not None else None


def launch_v5_fp8_ws(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                     part_lse, ok_flag, mode: int = 0):
    """Launch the warp-specialised Gluon FP8 tile over the schedule `meta` (k_cache: FlashMLA's FP8 cache, rows
    contiguous). mode 1: the producer alone (the consumers hand each page back unread); mode 2: the consumers alone
    (the producer hands each slot over untouched); results meaningless, for timing the parts (as
    GluonConfig.mode)."""
    grid, args = fp8_tile_launch_args(BLOCK_M, q, k_cache, block_table, cache_seqlens, dims, meta, num_splits, out,
                                      lse, part_out, part_lse, ok_flag)
    _LAUNCH(grid, *args, CAUSAL=causal, META_COLS=meta.shape[1], MODE=mode, num_warps=CONSUMER_WARPS,
            maxnreg=WS_REGS)
