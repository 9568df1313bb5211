# version 5, FP8 cache, 16-row tiles: the Gluon FP8 tile of v5_fp8_gluon.py cut to 16 query rows, with mma.sync
# (stage 5; forced with path "mma": v5 ran it for an FP8 cache at up to 16 query rows per KV head on sm_90 until
# v5_fp8_reg.py, which dequantizes into registers instead of into a bf16 page, measured 18 % faster).
#
# What it adds over v5_fp8_gluon.py (same schedule, semantics and page work):
#   * 16 query rows per program instead of 64. wgmma's smallest tile has 64 rows, so the Gluon FP8 tiles pad a
#     16-head call to 64 rows and do 4x its tensor-core work: at h_q 16 their consumers' math alone (0.212 ms at
#     b 128, s_k 4k) is slower than the whole call issue 9 asks for (0.111). Here both products are Ampere-style
#     mma.sync (m16n8k16, `mma_v2`), whose tile has 16 rows: S = Q·Kᵀ [16, 64] with the 4 warps splitting the keys,
#     O += P·V [16, 512] as four [16, 128] accumulators, the warps splitting each one's columns; the operands are
#     read from shared memory (Q's nine 64-column blocks and the page's for S, 128 value columns at a time for
#     P·V); P crosses the warps through shared memory.
#   * one page slot, 4 warps, so that two programs share an SM (Q 18 KB + one bf16 page 64 KB + two k_rope boxes
#     16 KB + P 2 KB): while one program dequantizes, the other multiplies. The page work is the lockstep FP8 tile's:
#     each page's e4m3 bytes are loaded one page ahead as packed words (_fp8_fetch), dequantized by the PTX sequence
#     and stored once into the slot both products read (_fp8_put); k_rope goes by cp.async (_fp8_rope_copy), two
#     pages ahead, into the box the page before last used.
#   Per page: S on the slot -> softmax -> P to shared memory -> barrier -> P·V on the slot -> barrier -> page i+1
#   (held in registers) into the slot -> page i+2's loads issued, its k_rope copied -> page i+1's k_rope waited
#   for -> barrier. S runs in two accumulators (even and odd 64-column chunks), two chains of dependent mma.
# Why (docs/fp8.md §5): h_q 16 is the shape an FP8 cache should win (bound by the bytes it reads), and at 16 rows
# the math is a quarter of the padded tile's. Expected (H200, b 128, s_k 4096, h_q 16): ~0.12-0.15 ms against 0.325
# for the warp-specialised FP8 tile and 0.166 for FlashMLA's bf16 call (FlashMLA / ours ~1.1-1.4; target 1.5).
# Risks: the dequantization of a page (~1,000 instructions per thread with 4 warps) not hidden by the other
# program's math; the per-page reloads of Q from shared memory; ptxas spills at 2 programs per SM (255 registers).
# Bought (H200, 2026-12-02, docs/results/fp8_bench_mma_h200_2026-12-02.json, FlashMLA in the same run): correct on
#   its first run (the hostile matrix, h_q 1-128, s_q 1-2); 0.267 ms at h16 s_k 4k as first written, 0.257 with the
#   k_rope copied two pages ahead and S in two chains (0.322 for the warp-specialised tile, 0.168 for FlashMLA:
#   0.65 of FlashMLA, target 1.5). Its page work alone takes 0.174 ms, its products alone 0.116, together 0.257:
#   each program is latency-bound on its own chain (2 warps per scheduler; Nsight Compute: 0.24 instructions issued
#   per cycle and scheduler), so the two programs per SM hide little of each other. Where its warps wait
#   (docs/results/probes/ncu_fp8_mma_sass_h200_2026-12-02.csv.gz): S's mma and their operand loads 21 % of the
#   samples, P·V 10 %, the dequantization and page loads ~38 %, a spilled loop counter reloaded from local memory at
#   each page's end 9 %, the block-table load each page's loads wait for 3 % (docs/fp8.md §5).
# Since then (H200, 2026-12-02, sixth session; docs/results/v5_notes.md):
#   * 8 warps per program (GluonConfig(warps=8), 128 registers, no spills, two programs of 8 warps per SM): correct,
#     and slower, 0.275 ms against 0.258 (predicted ~0.17); kept as a measured ablation.
#   * its parts split further (MODE 3 and 4): the page loads alone take 0.140 ms at 53 % of DRAM bandwidth (Nsight
#     Compute: the load queue full, long-scoreboard stalls), the dequantization alone 0.093. Fed by TMA instead
#     (v5_fp8_tma.py): correct and slower, 0.301 ms. Cached in L2 only (".cg") 0.346, L1 evict-first 0.269, block
#     ids a page early 0.264, loads at the top of the page before 0.258: none kept.
#   * (seventh session) the dequantization in three integer instructions per two values (v5_fp8_gluon.py): 0.247 ms.
"""Version 5 over an FP8 cache, 16-row tiles with mma.sync (Hopper and Ampere's tensor-core instruction; Gluon,
Triton 3.6)."""

from __future__ import annotations

from .launch import FastLauncher
from .v5_fp8_gluon import _fp8_fetch, _fp8_page, _fp8_put, _fp8_rope_copy, async_copy, fp8_tile_launch_args
from .v5_gluon import (
    _v5_load_q,
    _v5_next_part,
    _v5_online_softmax,
    _v5_part,
    _v5_request,
    _v5_start,
    _v5_store,
    gl,
    gluon,
)

BLOCK_M16 = 16  # query rows per program
MMA_WARPS = 4  # warps per program, the tile as measured
#: The ablation GluonConfig(warps=8): 8 warps per program capped at 128 registers, two programs of 8 warps per SM
#: (sm_90a: no spills, 102,912 B of shared memory). Measured slower than 4 warps (0.275 against 0.258 ms at h16 s_k 4k).
WIDE_WARPS = 8
WIDE_MAXNREG = 128

try:  # Ampere's warp-level MMA (mma.sync), in Gluon
    from triton.experimental.gluon.language.nvidia.ampere import mma_v2
except Exception:  # pragma: no cover - depends on the installed Triton
    mma_v2 = None


if gluon is not None:

    @gluon.jit
    def _m16_scores(q_smem, qr_smem, k_buf, kr_buf, KEYS: gl.constexpr, mma: gl.constexpr, a_op: gl.constexpr,
                    b_op: gl.constexpr):
        """S = Q·Kᵀ [16, KEYS] from shared memory over the 576 columns, 64 at a time (the warps split the keys), in
        two accumulators (even and odd chunks) so that each mma waits for half as many before it."""
        s = gl.zeros([16, KEYS], gl.float32, layout=mma)
        s_odd = gl.zeros([16, KEYS], gl.float32, layout=mma)
        for c in gl.static_range(8):
            qa = q_smem.slice(c * 64, 64, dim=1).load(a_op)
            kb = k_buf.slice(c * 64, 64, dim=1).permute((1, 0)).load(b_op)
            if c % 2 == 0:
                s = mma_v2(qa, kb, s)
            else:
                s_odd = mma_v2(qa, kb, s_odd)
        return mma_v2(qr_smem.load(a_op), kr_buf.permute((1, 0)).load(b_op), s) + s_odd

    @gluon.jit
    def _m16_values(p_smem, k_buf, acc0, acc1, acc2, acc3, alpha, a_op: gl.constexpr, b_op: gl.constexpr):
        """O = O·alpha + P·V [16, 512] with V = k_buf's 512 columns, 128 output columns at a time (the warps split
        each 128): the four accumulators."""
        pa = p_smem.load(a_op)
        acc0 = mma_v2(pa, k_buf.slice(0, 128, dim=1).load(b_op), acc0 * alpha[:, None])
        acc1 = mma_v2(pa, k_buf.slice(128, 128, dim=1).load(b_op), acc1 * alpha[:, None])
        acc2 = mma_v2(pa, k_buf.slice(256, 128, dim=1).load(b_op), acc2 * alpha[:, None])
        acc3 = mma_v2(pa, k_buf.slice(384, 128, dim=1).load(b_op), acc3 * alpha[:, None])
        return acc0, acc1, acc2, acc3

    @gluon.jit
    def _m16_start(m_start, heads_per_kv, s_k, s_q, CAUSAL: gl.constexpr, rows_l: gl.constexpr, mma: gl.constexpr):
        """A 16-row tile's state at the start of a request (_v5_start), its output O [16, 512] as four [16, 128]
        accumulators (a value operand of 128 columns is 32 registers a thread; the whole page's would be 128):
        (rows, tok, n_visible, m_i, l_i, acc0, acc1, acc2, acc3)."""
        rows, tok, n_visible, m_i, l_i, _ = _v5_start(m_start, heads_per_kv, s_k, s_q, CAUSAL, rows_l, mma, 16)
        acc = gl.zeros([16, 128], gl.float32, layout=mma)
        return rows, tok, n_visible, m_i, l_i, acc, acc, acc, acc

    @gluon.jit
    def pick4(x0, x1, x2, x3, c: gl.constexpr):
        """x_c of four values, c static (a static loop's pick among four accumulators or scales)."""
        if c == 0:
            r = x0
        elif c == 1:
            r = x1
        elif c == 2:
            r = x2
        else:
            r = x3
        return r

    @gluon.jit
    def _m16_store(acc0, acc1, acc2, acc3, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr, part_out_ptr,
                   part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start, rows_l: gl.constexpr,
                   cols_l: gl.constexpr, PERM32: gl.constexpr = False):
        """A 16-row tile's end of a request (_v5_store), its output as four 128-column accumulators (PERM32: each
        slice's columns in v5_fp8_reg.py's order, un-permuted here)."""
        for c in gl.static_range(4):  # (static: picks accumulator c)
            _v5_store(pick4(acc0, acc1, acc2, acc3, c), m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr,
                      part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start, rows_l, cols_l, 128 * c,
                      128, c == 0, 16, PERM32)

    @gluon.jit
    def _v5_fp8_mma_kernel(
        q_ptr, kv_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr,
        meta_ptr, num_splits_ptr, ok_ptr,
        stride_qb, stride_qs, stride_qh, stride_kvb, stride_btb,
        s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks, max_blocks,
        qk_scale,
        CAUSAL: gl.constexpr, META_COLS: gl.constexpr, MODE: gl.constexpr, num_warps: gl.constexpr,
    ):
        # MODE (timing probes, results meaningless): 0 the kernel; 1 the page work alone (no products); 2 the
        # products alone (the slot is filled once per request, then no page loads, dequantization or k_rope copies);
        # 3 the page loads alone (c_kv words and scales, folded into a checksum: no dequantization, stores, k_rope
        # copies or products); 4 the dequantization alone (the same words, loaded once per request, dequantized
        # and stored into the slot for every page: no page loads, k_rope copies or products)
        PRODUCTS: gl.constexpr = MODE == 0 or MODE == 2
        LOADS: gl.constexpr = MODE == 0 or MODE == 1 or MODE == 3
        DEQUANT: gl.constexpr = MODE == 0 or MODE == 1 or MODE == 4
        BM: gl.constexpr = 16
        PAGE: gl.constexpr = 64
        CHUNK: gl.constexpr = 64
        D_V: gl.constexpr = 512
        # one mma.sync layout for both products: the warps split the columns (S: keys, O: output columns)
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, num_warps],
                                                      instr_shape=[16, 8])
        a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        b_op: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        rows_l: gl.constexpr = gl.SliceLayout(1, mma)
        cols_l: gl.constexpr = gl.SliceLayout(0, mma)
        smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        # a page's loads: 4 words (16 bytes) per thread and row of a 64-byte chunk; k_rope: 8 bf16 per thread
        ldw: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [num_warps, 1], [1, 0])
        ldr: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        dtype: gl.constexpr = q_ptr.dtype.element_ty

        q_smem = gl.allocate_shared_memory(dtype, [BM, D_V], smem_layout)  # Q's latent part
        qr_smem = gl.allocate_shared_memory(dtype, [BM, CHUNK], smem_layout)  # Q's RoPE part
        k_buf = gl.allocate_shared_memory(dtype, [PAGE, D_V], smem_layout)  # the dequantized page: c_kv (K, V)
        kr_bufs = gl.allocate_shared_memory(dtype, [2, PAGE, CHUNK], smem_layout)  # and k_rope, two pages of it
        p_smem = gl.allocate_shared_memory(dtype, [BM, PAGE], smem_layout)

        m_start = (gl.program_id(1) % m_tiles) * BM
        begin_req, begin_block, end_req, end_block, begin_split = _v5_part(meta_ptr, META_COLS)
        next_req, next_block = _v5_next_part(meta_ptr, META_COLS)

        for req in range(begin_req, end_req + 1):
            s_k, lo, hi, part_slot, pieces, bt_row = _v5_request(
                seqlens_ptr, ok_ptr, num_splits_ptr, block_table_ptr, stride_btb, req, begin_req, begin_block, end_req,
                end_block, begin_split, next_req, next_block, max_blocks)

            gl.thread_barrier()  # every warp is done with the previous request's Q and page
            # prologue: page lo into the slot, page lo + 1's words in flight, the k_rope of both copied, Q into
            # shared memory
            page, n_rows = _fp8_page(bt_row, lo, hi, s_k, num_blocks, ok_ptr)
            _fp8_rope_copy(kr_bufs.index(0), kv_ptr, page, n_rows, stride_kvb, ldr)
            b0, b1, b2, b3, b4, b5, b6, b7, s0, s1, s2, s3 = _fp8_fetch(kv_ptr, page, n_rows, stride_kvb, ldw)
            _fp8_put(k_buf, b0, b1, b2, b3, b4, b5, b6, b7, s0, s1, s2, s3, dtype)
            page, n_rows = _fp8_page(bt_row, lo + 1, hi, s_k, num_blocks, ok_ptr)
            b0, b1, b2, b3, b4, b5, b6, b7, s0, s1, s2, s3 = _fp8_fetch(kv_ptr, page, n_rows, stride_kvb, ldw)
            if lo + 1 < hi:
                _fp8_rope_copy(kr_bufs.index(1), kv_ptr, page, n_rows, stride_kvb, ldr)
            _v5_load_q(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv,
                       rows_per_kv, 0, 9, CHUNK, BM, num_warps)
            async_copy.wait_group(0)
            gl.thread_barrier()

            rows, tok, n_visible, m_i, l_i, acc0, acc1, acc2, acc3 = _m16_start(m_start, heads_per_kv, s_k, s_q,
                                                                                CAUSAL, rows_l, mma)
            chk = gl.zeros([PAGE, 16], gl.int32, layout=ldw)  # MODE 3's checksum of the loaded words
            for i in range(lo, hi):
                kr_buf = kr_bufs.index((i - lo) % 2)  # page i's k_rope (page i+1's lands in the other box)
                # S = Q·Kᵀ [16, 64]: warp w computes keys 16w .. 16w + 15
                if PRODUCTS:
                    s = _m16_scores(q_smem, qr_smem, k_buf, kr_buf, PAGE, mma, a_op, b_op)
                else:
                    s = gl.zeros([BM, PAGE], gl.float32, layout=mma)
                p, alpha, m_i, l_i = _v5_online_softmax(s, i * PAGE, n_visible, m_i, l_i, qk_scale, cols_l, PAGE)
                p_smem.store(p.to(dtype))
                gl.thread_barrier()  # every warp's keys of P are in; every warp's S is done with page i's k_rope

                # O = O·alpha + P·V [16, 512], 128 output columns at a time (the warps split each 128)
                if PRODUCTS:
                    acc0, acc1, acc2, acc3 = _m16_values(p_smem, k_buf, acc0, acc1, acc2, acc3, alpha, a_op, b_op)
                gl.thread_barrier()  # every warp is done with the page and with P
                if MODE != 2 and i + 1 < hi:  # page i+1 (its words in registers) into the slot, page i+2's loads
                    if DEQUANT:
                        _fp8_put(k_buf, b0, b1, b2, b3, b4, b5, b6, b7, s0, s1, s2, s3, dtype)
                    else:
                        words = b0 ^ b1 ^ b2 ^ b3 ^ b4 ^ b5 ^ b6 ^ b7
                        chk = chk ^ (words + (s0 + s1 + s2 + s3).to(gl.int32)[:, None])
                    page, n_rows = _fp8_page(bt_row, i + 2, hi, s_k, num_blocks, ok_ptr)
                    if i + 2 < hi and MODE != 3 and MODE != 4:  # page i+2's k_rope into page i's box (no copy
                        # past the end: a masked cp.async writes zeros, which could land after the next request's
                        # copy there)
                        _fp8_rope_copy(kr_buf, kv_ptr, page, n_rows, stride_kvb, ldr)
                    if LOADS:
                        b0, b1, b2, b3, b4, b5, b6, b7, s0, s1, s2, s3 = _fp8_fetch(kv_ptr, page, n_rows,
                                                                                    stride_kvb, ldw)
                    if i + 2 < hi:
                        async_copy.wait_group(1)  # page i+1's k_rope (copied one page ago) has landed
                    else:
                        async_copy.wait_group(0)
                    gl.thread_barrier()  # page i+1 is in the slot, its k_rope in the other box

            if MODE == 3:  # keep the checksum (and so the loads) alive: a store that never happens in practice
                gl.store(ok_ptr + gl.zeros([PAGE, 16], gl.int32, layout=ldw), 1, mask=chk == 0x5EED1234)
            _m16_store(acc0, acc1, acc2, acc3, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr,
                       part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start, rows_l, cols_l)


_LAUNCH = FastLauncher(_v5_fp8_mma_kernel) if gluon is not None else None


def launch_v5_fp8_mma(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                      part_lse, ok_flag, mode: int = 0, warps: int = MMA_WARPS):
    """Launch the 16-row FP8 tile over the schedule `meta` (k_cache: FlashMLA's FP8 cache, rows contiguous). mode 1:
    the page work alone, 2: the products alone (results meaningless, for timing the parts, as GluonConfig.mode);
    warps: MMA_WARPS, or WIDE_WARPS with WIDE_MAXNREG registers (the measured-slower ablation, GluonConfig.warps)."""
    if warps not in (MMA_WARPS, WIDE_WARPS):
        raise ValueError(f"the 16-row FP8 tile runs {MMA_WARPS} or {WIDE_WARPS} warps per program, got {warps!r}")
    grid, args = fp8_tile_launch_args(BLOCK_M16, q, k_cache, block_table, cache_seqlens, dims, meta, num_splits,
                                      out, lse, part_out, part_lse, ok_flag)
    extra = {"maxnreg": WIDE_MAXNREG} if warps == WIDE_WARPS else {}
    _LAUNCH(grid, *args, CAUSAL=causal, META_COLS=meta.shape[1], MODE=mode, num_warps=warps, **extra)
