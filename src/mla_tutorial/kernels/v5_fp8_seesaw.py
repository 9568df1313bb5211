# version 5, FP8 cache, seesaw: v5_seesaw.py's consumers, unchanged, fed by a producer that dequantizes (stage 5).
#
# What it adds over v5_fp8_ws.py (the warp-specialised FP8 tile, whose consumers run the lockstep tile's math):
#   * the consumers are the bf16 seesaw tile's two warpgroups (_ss_consumer_at: pages in pairs, one warpgroup's
#     softmax under the other's products, MAX_FIRST, OPAQUE, LINES, Q by the producer's TMA), reading bf16 page slots
#     through the same mbarriers and releasing them in the same halves. At h_q 64, s_k 4k their math alone took
#     124 µs where v5_fp8_ws.py's consumers took 196 (docs/fp8.md §5; v5_notes.md, sixteenth session);
#   * the producer is a warpgroup (4 warps, 24-56 registers: STEP_REGS) instead of one TMA warp. The seesaw's shared
#     memory (Q 72 KB + two 72 KB bf16 slots) leaves 9 KB, no room for a raw FP8 page, so each page's raw rows are
#     copied by TMA *into the bf16 slot they will become*: the 32 KB of e4m3 words into the half of the slot that
#     the consumers release first (slot 0 (A): columns 0-255, released by warpgroup 0 mid-pair; slot 1 (B): columns
#     256-511, released by warpgroup 1 mid-pair), the scales (1 KB) beside them, k_rope (bf16 already) straight into
#     the slot's RoPE box once the other half is released. Once that half is free too, the producer dequantizes the
#     four 128-column scale tiles into the whole slot, in an order that never overwrites a raw word before it is
#     read: a tile's bf16 (16 KB) covers two raw tiles' words (8 KB each), so slot 0 goes tile 3, 2, 1, 0 and slot 1
#     tile 0, 1, 2, 3, and the last tile of each overwrites its own words. Each warp owns the same 4 rows of every
#     16-row step of every tile, and a tile's bf16 stays in its raw rows, so within a warp program order keeps each
#     read before the write over it. Then fence, partition barrier, and the halves' READY mbarriers: the consumers
#     cannot tell the slots were filled otherwise than by TMA.
#   Shared memory: the seesaw's 223,208 B + the scales 2 KB + 2 mbarriers.
# Should buy (H200, b 128, FlashMLA's bf16 dense kernel in the same run): v5_fp8_ws.py takes 0.276 / 0.459 ms at
#   h_q 64 / 128, s_k 4k (FlashMLA / it 0.62 / 0.53). With the seesaw's math (124 µs at h64 4k, 240 at h128 4k, alone)
#   and a producer whose page (512 values per thread: 16 steps of one 16-byte shared load, ~40 integer and bf16
#   instructions and two 16-byte stores) takes ~1,500-2,500 cycles, after the later half's release, where the bf16
#   seesaw's copy of that half took ~1,500: h64 4k ~0.16-0.20 ms, h128 4k ~0.30-0.36 (FlashMLA / it ~0.85-1.05 and
#   0.67-0.80), against issue 9's 1.2 and 0.8.
# Bought (H200, 2026-12-03, docs/fp8.md §5, docs/results/probes/fp8_seesaw_*_h200_2026-12-03.json, FlashMLA / it in the
#   same runs): correct on its first run (8 hostile cases, the FP8 GPU matrix), and no faster than v5_fp8_ws.py: h_q 64
#   s_k 4k 0.248 ms (0.68-0.69; v5_fp8_ws 0.247), 8k 0.68, 1k 0.66; h_q 128 4k 0.473 (0.53; v5_fp8_ws 0.436), s_q 2
#   0.53. Its parts say why: the consumers alone (mode 2) 0.130 ms at h64 4k (1.31) and 0.247 at h128 (1.01); the
#   producer copying the raw rows but dequantizing nothing (mode 3) 0.161 (1.06) and 0.287 (0.87); dequantizing a
#   quarter of each page (mode 4) 0.167 (1.02) and 0.308 (0.81). A slot can take its next page's words only once the
#   consumers release its first half, and be dequantized only once they release the rest, so the ~4,000 cycles a page's
#   dequantization takes (16 steps, each a chain of ~45 instructions on a warp that shares its scheduler with two
#   consumer warps) sit between one pair's products and the next pair's scores. Loading 2 or 4 tiles' words per step
#   (TILES_PER_STEP: 20 barriers a page instead of 32, four loads in flight) took h64 4k 0.247 → 0.225 → 0.215 ms
#   (FlashMLA / it 0.77 with 4, against v5's choice 0.68 in the same run; probes/fp8_seesaw_steps_replanned_*);
#   warpgroup 1 releasing A's right half first (GluonConfig(early=2)) cost 4 % (0.258). With 4 tiles a step (the
#   default since) at every shape timed above 16 rows (eighteenth session, probes/fp8_seesaw_tps4_*): h64 4k / 8k / 1k
#   0.214 / 0.405 / 0.073 ms (FlashMLA / it 0.81 / 0.80 / 0.75), h128 4k / 8k 0.405 / 0.788 (0.64 / 0.66), s_q 2 0.827
#   (0.58): 3-19 % ahead of v5_fp8_ws.py in the same run, so v5 routes an FP8 cache above 16 rows here; in
#   bench --kernel, three rounds, FlashMLA / v5 FP8 0.77 / 0.74 at h64 4k / 8k, 0.57 at h128 4k
#   (kernels_v5_fp8ss_*). Even with the dequantization free (mode 3) the tile reaches 1.06 of FlashMLA at h64 4k,
#   short of issue 9's 1.2: the shared memory that keeps the raw words inside the slots also keeps their copies in
#   series with the slots' release. Pages dequantized into fp16 instead (nineteenth session: the hardware conversion,
#   4 instructions per four values, or shifts, 8, against bf16's 11; Q in fp16 per row) were slower: 0.223 / 0.233 ms
#   against 0.213 at h_q 64 s_k 4k, the page's chain of steps and not its instruction count being what it costs;
#   removed (docs/fp8.md §5; last in commit f575e24).
"""Version 5 over an FP8 cache on the seesaw tile: its consumers, and a producer warpgroup that dequantizes each page
in place into the bf16 slot it was copied to (Hopper, Triton 3.6)."""

from __future__ import annotations

import triton.language as tl

from .common import LOG2E
from .launch import FastLauncher
from .v5_fp8_gluon import _fp8_chunk
from .v5_fp8_tma import checked_raw_descriptors
from .v5_gluon import (
    DEFAULT_GLUON_CONFIG,
    GluonConfig,
    _v5_flag_stale,
    _v5_next_part,
    _v5_pages,
    _v5_part,
    fence_async_shared,
    gl,
    gluon,
    mbarrier,
    tma,
)
from .v5_seesaw import (
    EMPTY0L,
    EMPTY0R,
    EMPTY1L,
    EMPTY1R,
    L_READY,
    N_BARS,
    N_STATS,
    Q_EMPTY,
    Q_READY,
    READY0L,
    READY0R,
    READY1L,
    READY1R,
    WS_REGS,
    _q_descriptor,
    _ss_consumer_at,
    _ss_copy_q,
    _ss_row,
    consumer_switches,
)

PRODUCER_WARPS = tl.constexpr(4)
#: Scale tiles whose words the producer loads before it stores them (1, 2 or 4; read at launch): 12 warps at WS_REGS
#: (168) registers hold 168·384 = 2·128·C + 128·P, so the producer's P grows by 16 per 8 that each consumer warpgroup
#: gives up: (consumers, producer) registers for each. 1: the seesaw's consumers keep their 240 and the producer
#: has setmaxnreg's floor, 24. 4 (the default since 2026-12-03) was the fastest at every shape timed (b 128, h_q 64
#: s_k 1k/4k/8k, h_q 128 s_k 4k/8k, s_q 2): 10-18 % faster than 1 (docs/results/probes/fp8_seesaw_tps4_*).
TILES_PER_STEP = 4
STEP_REGS = {1: (240, 24), 2: (232, 40), 4: (224, 56)}
RAW_BAR = tl.constexpr(N_BARS)  # RAW_BAR + s: slot s's raw words and scales landed
N_ALL_BARS = tl.constexpr(N_BARS + 2)


if gluon is not None:

    @gluon.jit
    def _fs_raw(kv_desc, sc_desc, k_smem, sc_smem, bars, SLOT: gl.constexpr, row, MODE: gl.constexpr):
        """Start the TMA copies of the page at cache row `row` (negative: a bad block id, copied as zeros) into slot
        SLOT: its e4m3 words into the half the consumers release first (slot 0: boxes 0-3, slot 1: boxes 4-7), as one
        [4 scale tiles, 64 rows, 32 words] box; its scales into sc_smem[SLOT]. MODE 2: only the barrier's arrival."""
        bar = bars.index(RAW_BAR + SLOT)
        if MODE == 2:
            mbarrier.arrive(bar)
        else:
            mbarrier.expect(bar, 64 * 512 + 64 * 16)
            # the two slots' halves as [slot·2 + half, 4 tiles, 64, 32] words, the copies' rank-3 layout
            halves = k_smem._reinterpret(gl.int32, [4, 4, 64, 32], kv_desc.layout)
            tma.async_copy_global_to_shared(kv_desc, [0, row, 0], bar, halves.index(3 * SLOT))
            tma.async_copy_global_to_shared(sc_desc, [row, 128], bar, sc_smem.index(SLOT))

    @gluon.jit
    def _fs_rope(kr_desc, kr_buf, bar, row, MODE: gl.constexpr):
        """k_rope of the page at cache row `row` (bf16 in the cache) by TMA into the slot's RoPE box, on `bar` (the
        half's READY barrier, whose other arrival is the dequantization's). MODE 2: only the arrival."""
        if MODE == 2:
            mbarrier.arrive(bar)
        else:
            mbarrier.expect(bar, 64 * 64 * 2)
            tma.async_copy_global_to_shared(kr_desc, [row, 264], bar, kr_buf)

    @gluon.jit
    def _fs_scales(sc_slot, rb: gl.constexpr, rows_l: gl.constexpr):
        """The four scale tiles' float32 scales (int32 bits in shared memory) of rows 16·rb .. 16·rb + 15, each as a
        [16] vector in rows_l."""
        l4: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [PRODUCER_WARPS, 1], [1, 0])  # a row's 4 in a thread
        x = sc_slot.slice(16 * rb, 16, dim=0).load(l4).to(gl.float32, bitcast=True)  # [16, 4]
        lo, hi = gl.split(gl.reshape(x, [16, 2, 2]))  # tiles (0, 2), (1, 3)
        s0, s2 = gl.split(lo)
        s1, s3 = gl.split(hi)
        return (gl.convert_layout(s0, rows_l), gl.convert_layout(s1, rows_l), gl.convert_layout(s2, rows_l),
                gl.convert_layout(s3, rows_l))

    @gluon.jit
    def _fs_words(boxes, SLOT: gl.constexpr, T: gl.constexpr, RB: gl.constexpr, ldw: gl.constexpr):
        """Rows 16·RB .. 16·RB + 15 of scale tile T's words of slot SLOT ([16, 32]; box 12·SLOT + T of `boxes`, where
        _fs_raw put them)."""
        return boxes.index(12 * SLOT + T).slice(16 * RB, 16, dim=0).load(ldw)

    @gluon.jit
    def _fs_put(page, w, sc, T: gl.constexpr, RB: gl.constexpr):
        """Words w of rows 16·RB .. 16·RB + 15 of scale tile T times the rows' scales `sc`, into columns
        128·T .. 128·T + 127 of the bf16 page."""
        _fp8_chunk(page.slice(128 * T, 128, dim=1).slice(16 * RB, 16, dim=0), w, sc, page.dtype)

    @gluon.jit
    def _fs_step(boxes, page, sc_a, sc_b, sc_c, sc_d, SLOT: gl.constexpr, A: gl.constexpr, B: gl.constexpr,
                 C: gl.constexpr, D: gl.constexpr, RB: gl.constexpr, TPS: gl.constexpr, ldw: gl.constexpr):
        """Tiles A, B, C, D (in this order) of a 16-row block, TPS tiles' words loaded before their stores (Triton's
        barrier analysis puts a barrier between a step's loads and its stores, and between its stores and the next
        step's loads: the words and the page are one allocation)."""
        if TPS == 1:
            _fs_put(page, _fs_words(boxes, SLOT, A, RB, ldw), sc_a, A, RB)
            _fs_put(page, _fs_words(boxes, SLOT, B, RB, ldw), sc_b, B, RB)
            _fs_put(page, _fs_words(boxes, SLOT, C, RB, ldw), sc_c, C, RB)
            _fs_put(page, _fs_words(boxes, SLOT, D, RB, ldw), sc_d, D, RB)
        elif TPS == 2:
            wa = _fs_words(boxes, SLOT, A, RB, ldw)
            wb = _fs_words(boxes, SLOT, B, RB, ldw)
            _fs_put(page, wa, sc_a, A, RB)
            _fs_put(page, wb, sc_b, B, RB)
            wc = _fs_words(boxes, SLOT, C, RB, ldw)
            wd = _fs_words(boxes, SLOT, D, RB, ldw)
            _fs_put(page, wc, sc_c, C, RB)
            _fs_put(page, wd, sc_d, D, RB)
        else:
            wa = _fs_words(boxes, SLOT, A, RB, ldw)
            wb = _fs_words(boxes, SLOT, B, RB, ldw)
            wc = _fs_words(boxes, SLOT, C, RB, ldw)
            wd = _fs_words(boxes, SLOT, D, RB, ldw)
            _fs_put(page, wa, sc_a, A, RB)
            _fs_put(page, wb, sc_b, B, RB)
            _fs_put(page, wc, sc_c, C, RB)
            _fs_put(page, wd, sc_d, D, RB)

    @gluon.jit
    def _fs_dequant(k_smem, sc_smem, SLOT: gl.constexpr, MODE: gl.constexpr, TPS: gl.constexpr):
        """Slot SLOT's raw words (in the half _fs_raw put them) and scales into its bf16 [64, 512] page, in place:
        16 rows at a time, scale tile by scale tile in the order that reads every word before it is overwritten
        (slot 0: tiles 3, 2, 1, 0, its words in boxes 0-3; slot 1: 0, 1, 2, 3, its words in boxes 4-7), TPS tiles'
        words at a time."""
        if MODE != 2 and MODE != 3:  # (mode 4: the first 16-row block only)
            # a 16-row step of a tile: 4 words (16 e4m3 values, one 16-byte load) a thread, 8 threads a row, each
            # warp 4 rows; the words' rows are the bf16 rows written (a tile's words never move to another row)
            ldw: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [PRODUCER_WARPS, 1], [1, 0])
            words_l: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=2)
            boxes = k_smem._reinterpret(gl.int32, [16, 64, 32], words_l)  # box c of slot s: [64 rows, 32 words]
            page = k_smem.index(SLOT)
            for rb in gl.static_range(1 if MODE == 4 else 4):
                s0, s1, s2, s3 = _fs_scales(sc_smem.index(SLOT), rb, gl.SliceLayout(1, ldw))
                if SLOT == 0:
                    _fs_step(boxes, page, s3, s2, s1, s0, SLOT, 3, 2, 1, 0, rb, TPS, ldw)
                else:
                    _fs_step(boxes, page, s0, s1, s2, s3, SLOT, 0, 1, 2, 3, rb, TPS, ldw)

    @gluon.jit
    def _fs_ready(bars, FIRST: gl.constexpr, SECOND: gl.constexpr):
        """Every producer thread's stores into a slot, visible to the consumers' wgmma (async proxy); then both of
        its halves' READY barriers get the dequantization's arrival."""
        fence_async_shared()
        gl.thread_barrier()
        mbarrier.arrive(bars.index(FIRST))
        mbarrier.arrive(bars.index(SECOND))

    @gluon.jit
    def _fs_producer(kv_desc, sc_desc, kr_desc, block_table_ptr, seqlens_ptr, meta_ptr, ok_ptr, stride_btb,
                     num_blocks, max_blocks, k_smem, kr_smem, sc_smem, bars, META_COLS: gl.constexpr,
                     MODE: gl.constexpr, q_desc, q_smem, qr_smem, rows_per_kv, m_tiles, Q_TMA: gl.constexpr,
                     TPS: gl.constexpr):
        """The producer warpgroup: Q (Q_TMA) and every page of the slice into the slots, in the order the consumers
        release them (v5_seesaw._ss_producer's order), each page copied raw into its slot's first-released half and
        dequantized once the other half is released too."""
        begin_req, begin_block, end_req, end_block, _ = _v5_part(meta_ptr, META_COLS)
        next_req, next_block = _v5_next_part(meta_ptr, META_COLS)
        n0 = 0  # pages that went through slot 0 / slot 1 so far: their barriers' phases
        n1 = 0
        for req in range(begin_req, end_req + 1):
            if Q_TMA:
                _ss_copy_q(q_desc, q_smem, qr_smem, bars, req, begin_req, rows_per_kv, m_tiles)
            s_k, lo, hi = _v5_pages(seqlens_ptr, req, begin_req, begin_block, end_req, end_block, max_blocks)
            _v5_flag_stale(ok_ptr, req, s_k, gl.cdiv(s_k, 64), begin_req, begin_block, end_req, end_block, next_req,
                           next_block, max_blocks)
            bt_row = block_table_ptr + req.to(gl.int64) * stride_btb
            for a in range(lo, hi, 2):  # page pairs (a, a + 1); the last may be a single page
                has_b = a + 1 < hi
                row_a = _ss_row(bt_row, a, num_blocks, ok_ptr)
                row_b = _ss_row(bt_row, gl.where(has_b, a + 1, a), num_blocks, ok_ptr)
                ph0 = (n0 & 1) ^ 1
                ph1 = (n1 & 1) ^ 1
                # the raw words into the halves released first: A's columns 0-255 (warpgroup 0, after P_A·V_A's),
                # B's columns 256-511 (warpgroup 1, after P_B·V_B's)
                mbarrier.wait(bars.index(EMPTY0L), ph0)
                _fs_raw(kv_desc, sc_desc, k_smem, sc_smem, bars, 0, row_a, MODE)
                if has_b:
                    mbarrier.wait(bars.index(EMPTY1R), ph1)
                    _fs_raw(kv_desc, sc_desc, k_smem, sc_smem, bars, 1, row_b, MODE)
                # A: its other half (and the RoPE box, which held P_A) released, k_rope copied, the page dequantized
                mbarrier.wait(bars.index(EMPTY0R), ph0)
                _fs_rope(kr_desc, kr_smem.index(0), bars.index(READY0R), row_a, MODE)
                mbarrier.wait(bars.index(RAW_BAR), n0 & 1)
                _fs_dequant(k_smem, sc_smem, 0, MODE, TPS)
                _fs_ready(bars, READY0R, READY0L)
                if has_b:  # B: the same once warpgroup 0 releases its columns 0-255 and the RoPE box (P_B)
                    mbarrier.wait(bars.index(EMPTY1L), ph1)
                    _fs_rope(kr_desc, kr_smem.index(1), bars.index(READY1L), row_b, MODE)
                    mbarrier.wait(bars.index(RAW_BAR + 1), n1 & 1)
                    _fs_dequant(k_smem, sc_smem, 1, MODE, TPS)
                    _fs_ready(bars, READY1L, READY1R)
                    n1 += 1
                n0 += 1

    @gluon.jit
    def _fs_kernel(
        q_ptr, kv_desc, sc_desc, kr_desc, q_desc, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr,
        part_lse_ptr, meta_ptr, num_splits_ptr, ok_ptr,
        stride_qb, stride_qs, stride_qh, stride_btb, s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks,
        max_blocks,
        qk_scale,
        CAUSAL: gl.constexpr, META_COLS: gl.constexpr, MODE: gl.constexpr, MAX_FIRST: gl.constexpr,
        OPAQUE: gl.constexpr, Q_ASYNC: gl.constexpr, STORE_LINES: gl.constexpr, Q_TMA: gl.constexpr,
        TPS: gl.constexpr, C_REGS: gl.constexpr, P_REGS: gl.constexpr, EARLY: gl.constexpr, num_warps: gl.constexpr,
    ):
        smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        dtype: gl.constexpr = q_ptr.dtype.element_ty
        q_smem = gl.allocate_shared_memory(dtype, [64, 512], smem_layout)
        qr_smem = gl.allocate_shared_memory(dtype, [64, 64], smem_layout)
        k_smem = gl.allocate_shared_memory(dtype, [2, 64, 512], smem_layout)  # bf16 pages (raw words first)
        kr_smem = gl.allocate_shared_memory(dtype, [2, 64, 64], smem_layout)  # k_rope rows, then P
        sc_smem = gl.allocate_shared_memory(gl.int32, [2, 64, 4], sc_desc.layout)  # the raw scales
        stats = gl.allocate_shared_memory(gl.float32, [N_STATS, 64],
                                          gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0]))
        bars = gl.allocate_shared_memory(gl.int64, [N_ALL_BARS, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(N_ALL_BARS):
            # the consumers' signals: both warpgroups where both take part; the second half of each slot (A's
            # columns 256-511, B's 0-255: the halves that hold the RoPE box) gets k_rope's TMA and the dequantization
            mbarrier.init(bars.index(i), count=2 if ((i == Q_READY and not Q_TMA) or i == Q_EMPTY or i == L_READY
                                                     or i == READY0R or i == READY1L) else 1)
        fence_async_shared()

        gl.warp_specialize([
            (_ss_consumer_at, (0, q_ptr, stride_qb, stride_qs, stride_qh, seqlens_ptr, meta_ptr, num_splits_ptr,
                               out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv,
                               m_tiles, max_blocks, qk_scale, q_smem, qr_smem, k_smem, kr_smem, stats, bars,
                               CAUSAL, META_COLS, False, EARLY, ok_ptr, False, MAX_FIRST, OPAQUE,
                               Q_ASYNC, STORE_LINES, Q_TMA)),
            (_ss_consumer_at, (1, q_ptr, stride_qb, stride_qs, stride_qh, seqlens_ptr, meta_ptr, num_splits_ptr,
                               out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv,
                               m_tiles, max_blocks, qk_scale, q_smem, qr_smem, k_smem, kr_smem, stats, bars,
                               CAUSAL, META_COLS, False, EARLY, ok_ptr, False, MAX_FIRST, OPAQUE,
                               Q_ASYNC, STORE_LINES, Q_TMA)),
            (_fs_producer, (kv_desc, sc_desc, kr_desc, block_table_ptr, seqlens_ptr, meta_ptr, ok_ptr, stride_btb,
                            num_blocks, max_blocks, k_smem, kr_smem, sc_smem, bars, META_COLS, MODE, q_desc, q_smem,
                            qr_smem, rows_per_kv, m_tiles, Q_TMA, TPS)),
        ], [4, PRODUCER_WARPS], [C_REGS, P_REGS])


_LAUNCH = FastLauncher(_fs_kernel) if gluon is not None else None


def launch_v5_fp8_seesaw(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                         part_lse, ok_flag, config: GluonConfig | None = None):
    """Launch the FP8 seesaw tile over the schedule `meta` (k_cache: FlashMLA's FP8 cache, rows contiguous and
    16-byte aligned, as quantize_k_cache makes it). From `config` (GluonConfig): mode 2 (the consumers alone, the
    producer hands the slots over untouched), 3 (the producer copies the raw rows but dequantizes nothing), 4 (it
    dequantizes the first 16 rows of each page only) — timing probes, results meaningless; early 1 or 2 (when
    warpgroup 1 releases a pair's right halves: v5_seesaw._ss_consumer_at; others run as 1), max_first,
    opaque_views, q_async, store_lines, lines_partials and q_tma as for v5_seesaw's tile (fine is off)."""
    cfg = config or DEFAULT_GLUON_CONFIG
    kv_desc, sc_desc, kr_desc = checked_raw_descriptors("FP8 seesaw tile", k_cache, 64, tiled_words=True)
    m_tiles = -(-dims.rows_per_kv // 64)
    switches = consumer_switches(cfg, q, dims)
    if TILES_PER_STEP not in STEP_REGS:
        raise ValueError(f"v5_fp8_seesaw.TILES_PER_STEP must be one of {sorted(STEP_REGS)}, got {TILES_PER_STEP!r}")
    c_regs, p_regs = STEP_REGS[TILES_PER_STEP]
    _LAUNCH(
        (meta.shape[0], m_tiles),
        q, kv_desc, sc_desc, kr_desc, _q_descriptor(q) if switches["Q_TMA"] else kr_desc, block_table, cache_seqlens,
        out, lse, part_out, part_lse, meta, num_splits, ok_flag,
        q.stride(0), q.stride(1), q.stride(2), block_table.stride(0), dims.s_q, dims.h_q, dims.heads_per_kv,
        dims.rows_per_kv, m_tiles, dims.num_blocks, dims.max_blocks, dims.scale * LOG2E,
        CAUSAL=causal, META_COLS=meta.shape[1], MODE=cfg.mode, **switches,
        TPS=TILES_PER_STEP, C_REGS=c_regs, P_REGS=p_regs, EARLY=cfg.early if cfg.early in (1, 2) else 1,
        num_warps=4, maxnreg=WS_REGS,
    )
