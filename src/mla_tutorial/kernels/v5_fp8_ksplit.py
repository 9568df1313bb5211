# version 5, FP8 cache, 16-row register tile with the warps splitting the reduction: v5_fp8_reg.py's page work and
# TMA ring, each warp owning one scale tile (stage 5; forced with path "ksplit", not routed).
#
# What it changes against v5_fp8_reg.py (same TMA ring, dequantization into the operand registers, fp16 S, bf16 V,
# schedule and semantics):
#   * the warps split S's reduction instead of its keys: warp w multiplies Q's scale tile w (columns 128w .. 128w +
#     127, fp16) and 16 of the 64 RoPE columns by all 64 keys, a batched mma.sync ([4 warps, 16, 64]): Q's share of
#     each warp (36 registers) is loaded once per request and stays in registers (v5_fp8_reg.py reloads all of Q from
#     shared memory every page: 36 LDSM a warp). Each warp's partial S, already times its tile's scale per key, goes
#     through shared memory (16 KB); after one barrier every warp sums the four and holds the whole S [16, 64]: the
#     row max, P and the row sums need no other exchange;
#   * P·V: warp w computes the output slice of its own tile (columns 128w .. 128w + 127, all 64 keys), with P times
#     its tile's scales straight from registers (the accumulator of S turned into mma's A operand): no scaled copies
#     of P in shared memory, no P barrier. Two barriers a page (the page is in, the partial scores), not three;
#   * the two raw slots are allocations of their own and the page loop is unrolled by two (_ks_page), page i + 1's
#     copies issued right after page i's first barrier (in flight for the whole page): with one allocation indexed by
#     slot, or the copies issued after the partial scores' barrier, Triton's barrier analysis adds a third barrier;
#   * the price: each warp computes the softmax of the whole S (4x the exp2 of v5_fp8_reg.py) and reads 16 KB of
#     partial scores a page from shared memory.
# Why (docs/results/v5_notes.md, tenth session): Nsight Compute's samples on v5_fp8_reg.py sit on S's and P·V's
#   operand chains (34 % and 30 %), the page's mbarrier waits (6.5 %) and the request's prologue and stores (~10 %);
#   three barriers a page of 4 warps and the per-page Q reloads are what this removes.
# sm_90a (scripts/compile_offline.py v5fksplit): 232 registers, no spills, 110,680 B of shared memory (two programs
#   per SM; Q's 16 KB double as the partial scores'), a page loop of ~1,760 instructions a warp (v5_fp8_reg.py:
#   ~1,280): 136 HMMA, 128 F2FP, 128 PRMT, 128 HMUL2, 34 MUFU.EX2, 88 LDS.64 (the partial scores), 2 BAR.SYNC.
# Expected (H200, b 128, s_k 4096, h_q 16): 0.140-0.165 ms against 0.154 for v5_fp8_reg.py (FlashMLA ~0.167): the
#   tile is latency-bound, so a barrier and the Q reloads fewer may pay for ~40 % more instructions, or not.
# Bought (H200, 2026-12-02, tenth session; docs/results/v5_notes.md, FlashMLA in the same run): its first GPU run
#   failed every case (a quarter of the output right): the scales had been read through a permuted view of the
#   non-swizzled slot; read as v5_fp8_reg.py reads them, the hostile matrix (h_q 1-128, s_q 1-2) and the wide-range
#   test pass. And it is SLOWER: 0.242 ms at h16 s_k 4k (~N 0.244) against 0.154 (0.157) for v5_fp8_reg.py and 0.165
#   for FlashMLA (probes/fp8_ksplit_h200_2026-12-02.json). Nsight Compute (probes/ncu_fp8_ksplit_sass_h200_*):
#   58 % of the samples in the stretch after the partial scores' barrier, the FADD chain summing the four partials
#   waiting on their 88 LDS.64 (FADD 21 % of all samples, short scoreboard; LDS 12.5 %, MIO throttle): every warp
#   reads all four partials, 64 KB of shared memory a page a program, in a dependent chain. 1.74 active and 0.41
#   eligible warps per scheduler, issue slots busy 33 % of cycles, DRAM at 32 %. Not routed; kept as the measured step.
"""Version 5 over an FP8 cache, 16-row register tile whose warps split the reduction (Gluon, Triton 3.6)."""

from __future__ import annotations

from .launch import FastLauncher
from .v5_fp8_gluon import _fp8_page
from .v5_fp8_mma import mma_v2
from .v5_fp8_reg import (
    _E4M3_PAIRS,
    _E4M3X4_F16,
    _reg_drop_bars,
    _reg_expect_tma,
    _reg_init_bars,
    _reg_issue_tma,
    _reg_load_q16,
    _reg_zero_tail,
    launch_page_tile,
)
from .v5_gluon import _v5_next_part, _v5_part, _v5_probs, _v5_request, gl, gluon, mbarrier

KS_WARPS = 4  # one warp per scale tile
KS_MAXNREG = 255  # two programs per SM (~110 KB of shared memory each)

if gluon is not None:

    @gluon.jit
    def _ks_scales(sc_slot, parent: gl.constexpr):
        """A raw slot's scales (sc_slot [64 keys, 4 tiles], float32 bits as int32) as [4 tiles, 64 keys] in
        SliceLayout(1, parent) (parent: the [4, 16, 64] batch's mma layout, warp w holding tile w): loaded in that
        layout's transpose from the slot as it lies, then transposed in registers (no data moves)."""
        lt: gl.constexpr = gl.DistributedLinearLayout(  # keys as S's columns hold them, warp w: tile w
            reg_bases=[[1, 0], [8, 0], [16, 0], [32, 0]], lane_bases=[[2, 0], [4, 0], [0, 0], [0, 0], [0, 0]],
            warp_bases=[[0, 1], [0, 2]], block_bases=[], shape=[64, 4])
        x = sc_slot.load(lt).to(gl.float32, bitcast=True)
        return gl.convert_layout(gl.permute(x, (1, 0)), gl.SliceLayout(1, parent), assert_trivial=True)

    @gluon.jit
    def _ks_scores(q3, qr3, kv_raw, kr_raw, sc_slot, slot, mma3: gl.constexpr, b3: gl.constexpr):
        """Warp w's partial S_w [16, 64] = scale_w[key] · Q_w·K8_wᵀ + Qr_w·Kr_wᵀ as a [4, 16, 64] batch (warp w: batch
        w): Q_w its tile's 128 columns (fp16, in registers), K8_w the tile's e4m3 words dequantized unscaled to fp16
        (columns in _reg_perm64's order, as Q's), Qr_w / Kr_w 16 of the 64 RoPE columns (bf16)."""
        # the words [4 tiles, 64 keys, 32 words]: thread (g, t) of warp w holds keys 8n + g (n = 0..7), words 16h +
        # 4t + j of tile w (its k pairs of 8 k16 steps)
        lk: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 0, 1], [0, 0, 2], [0, 0, 16], [0, 8, 0], [0, 16, 0], [0, 32, 0]],
            lane_bases=[[0, 0, 4], [0, 0, 8], [0, 1, 0], [0, 2, 0], [0, 4, 0]],
            warp_bases=[[1, 0, 0], [2, 0, 0]], block_bases=[], shape=[4, 64, 32])
        w = kv_raw.index(slot).load(lk)  # [4, 64, 32] int32
        v0, v1, v2, v3 = gl.inline_asm_elementwise(
            _E4M3X4_F16, "=h,=h,=h,=h,r", [w], dtype=(gl.float16,) * 4, is_pure=True, pack=1)
        x = gl.join(gl.join(v0, v2), gl.join(v1, v3))  # [tile, key, word, a, b]: column 4·word + 2a + b
        x = gl.reshape(x, [4, 64, 2, 4, 4, 2, 2])  # [tile, key, h, t, j, a, b]
        x = gl.reshape(gl.permute(x, (0, 2, 4, 5, 3, 6, 1)), [4, 128, 64])  # [tile, (h, j, a, t, b), key]
        kb = gl.convert_layout(x, b3, assert_trivial=True)
        # k_rope [64 keys, 64 columns]: warp w's k16 step is logical RoPE columns 16w .. 16w + 15 (cache columns 16t
        # + 4w + 2a + b), thread (g, t) holding keys 8n + g
        lr: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 1], [0, 2], [8, 0], [16, 0], [32, 0]], lane_bases=[[0, 16], [0, 32], [1, 0], [2, 0], [4, 0]],
            warp_bases=[[0, 4], [0, 8]], block_bases=[], shape=[64, 64])
        r = kr_raw.index(slot).load(lr)  # [64 keys, 64] bf16
        r = gl.reshape(gl.permute(gl.reshape(r, [64, 4, 4, 2, 2]), (2, 3, 1, 4, 0)), [4, 16, 64])  # [j, (a, t, b), key]
        s = mma_v2(qr3, gl.convert_layout(r, b3, assert_trivial=True), gl.zeros([4, 16, 64], gl.float32, layout=mma3))
        sc = _ks_scales(sc_slot, mma3)  # [4 tiles, 64 keys]
        return s + mma_v2(q3, kb, gl.zeros([4, 16, 64], gl.float32, layout=mma3)) * gl.expand_dims(sc, 1)

    @gluon.jit
    def _ks_values(p3, kv_raw, slot, acc, alpha3, b3: gl.constexpr):
        """O_w = O_w·alpha + (P·scale_w)·V8_w [4, 16, 128] (warp w: its tile's 128 output columns, all 64 keys): V8_w
        the tile's e4m3 values dequantized unscaled by key pairs (_E4M3_PAIRS); logical column 32e + 8m + g of the
        slice is cache column 4(8m + g) + e (v5_fp8_reg.py's order, undone at the store)."""
        # the words [4 tiles, 64 keys, 32 words]: thread (g, t) of warp w holds words 8m + g (m = 0..3) of keys 2t + b
        # + 8a + 16j of tile w
        lv: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 1, 0], [0, 8, 0], [0, 16, 0], [0, 32, 0], [0, 0, 8], [0, 0, 16]],
            lane_bases=[[0, 2, 0], [0, 4, 0], [0, 0, 1], [0, 0, 2], [0, 0, 4]],
            warp_bases=[[1, 0, 0], [2, 0, 0]], block_bases=[], shape=[4, 64, 32])
        w = kv_raw.index(slot).load(lv)  # [4, 64, 32]
        w_even, w_odd = gl.split(gl.permute(gl.reshape(w, [4, 32, 2, 32]), (0, 1, 3, 2)))  # [4, 32 pairs, 32 words]
        y00, y01, y10, y11, y20, y21, y30, y31 = gl.inline_asm_elementwise(
            _E4M3_PAIRS, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [w_even, w_odd],
            dtype=(gl.bfloat16,) * 8, is_pure=True, pack=1)
        z = gl.join(gl.join(gl.join(y00, y01), gl.join(y20, y21)), gl.join(gl.join(y10, y11), gl.join(y30, y31)))
        # [tile, pair, word, b, e_hi, e_lo] -> [tile, pair, b, e_hi, e_lo, word] = [4, 64 keys, 128 logical columns]
        z = gl.reshape(gl.permute(z, (0, 1, 3, 4, 5, 2)), [4, 64, 128])
        return mma_v2(p3, gl.convert_layout(z, b3, assert_trivial=True), acc * alpha3)

    @gluon.jit
    def _ks_store(acc, m_i, l_i, req, slot, pieces, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, s_q,
                  h_q, heads_per_kv, rows_per_kv, m_start, mma3: gl.constexpr, rows_l: gl.constexpr):
        """The request's end (v5_gluon._v5_store's, for the [4, 16, 128] batch of slices): O / l to the output when
        the request is one piece, else an fp32 partial in slot `slot` for the combine kernel; the LSE likewise."""
        D_V: gl.constexpr = 512
        has_keys = l_i > 0
        l_safe = gl.where(has_keys, l_i, 1.0)
        r3_l: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(2, mma3))
        o = acc / gl.expand_dims(gl.expand_dims(gl.convert_layout(l_safe, r3_l, assert_trivial=True), 0), 2)
        lse = (m_i + gl.log2(l_safe)) * 0.6931471805599453
        rows3 = m_start + gl.arange(0, 16, layout=r3_l)
        ok3 = gl.expand_dims(gl.expand_dims(rows3 < rows_per_kv, 0), 2)
        orow = gl.expand_dims(gl.expand_dims((rows3 // heads_per_kv) * h_q + rows3 % heads_per_kv, 0), 2)
        tile = gl.expand_dims(gl.expand_dims(gl.arange(0, 4, layout=gl.SliceLayout(1, gl.SliceLayout(2, mma3))), 1), 2)
        n = gl.arange(0, 128, layout=gl.SliceLayout(0, gl.SliceLayout(1, mma3)))
        cols = 128 * tile + gl.expand_dims(gl.expand_dims(4 * (n % 32) + n // 32, 0), 1)  # (the permuted columns)
        rows = m_start + gl.arange(0, 16, layout=rows_l)
        row_ok = rows < rows_per_kv
        tok = rows // heads_per_kv
        head = rows % heads_per_kv
        if pieces == 1:
            base = req.to(gl.int64) * s_q * h_q
            gl.store(out_ptr + (base + orow) * D_V + cols, o.to(out_ptr.dtype.element_ty), mask=ok3)
            gl.store(lse_ptr + (req.to(gl.int64) * h_q + head) * s_q + tok, gl.where(has_keys, lse, float("inf")),
                     mask=row_ok)
        else:
            base = slot.to(gl.int64) * s_q * h_q
            gl.store(part_out_ptr + (base + orow) * D_V + cols, o, mask=ok3)
            gl.store(part_lse_ptr + (slot.to(gl.int64) * s_q + tok) * h_q + head,
                     gl.where(has_keys, lse, float("-inf")), mask=row_ok)

    @gluon.jit
    def _ks_page(i, hi, kv_c, sc_c, kr_c, bw_c, bs_c, br_c, u, kv_n, sc_n, kr_n, bw_n, bs_n, br_n, q3, q3r, ps_smem,
                 ps_each, bt_row, s_k, num_blocks, ok_ptr, n_visible, q_scale, m_i, l_i, acc, kv_desc, sc_desc, kr_desc,
                 n_cur, mma3: gl.constexpr, a3: gl.constexpr, b3: gl.constexpr, num_warps: gl.constexpr):
        """Page i of a request in the slot of allocations (kv_c, sc_c, kr_c), landed on (bw_c, bs_c, br_c) at phase
        u % 2 (u: the pages that slot has held), n_cur of its rows keys; page i + 1's copies go into the other slot's
        allocations (kv_n, ...), which page i - 1 has left: armed before the page's first barrier, issued right after
        it (in flight for the whole page). Triton's barrier analysis puts a bar.sync between a copy and any later
        access of its destination or mbarrier allocations that no barrier already parts from it: here the partial
        scores' barrier parts the copies from page i + 1's waits, and the two slots are separate allocations so that
        nothing of this page touches the copies' destination (one allocation indexed by slot would need one more
        barrier a page). Two barriers a page: the page is in (and page i - 1's slot free), the partial scores.
        Returns the running max and sum, the output slices and page i + 1's key rows."""
        PAGE: gl.constexpr = 64
        dtype: gl.constexpr = kr_c.dtype
        s_l: gl.constexpr = gl.SliceLayout(0, mma3)  # the whole S [16, 64], in every warp
        page_n, n_next = _fp8_page(bt_row, i + 1, hi, s_k, num_blocks, ok_ptr)  # (none past the slice: masked)
        mbarrier.wait(bw_c.index(0), u % 2)  # page i has landed: its words, scales and k_rope
        mbarrier.wait(bs_c.index(0), u % 2)
        mbarrier.wait(br_c.index(0), u % 2)
        if n_cur < PAGE:  # the request's last page (or a bad block id): its rows past the keys as zeros
            _reg_zero_tail(kv_c, sc_c, kr_c, 0, n_cur, num_warps)
        if i + 1 < hi:
            _reg_expect_tma(bw_n, bs_n, br_n, 0)
        gl.thread_barrier()  # ... for every thread, and page i - 1's slot is free
        if i + 1 < hi:  # page i + 1, in flight from here (the partial scores' barrier parts it from its wait)
            _reg_issue_tma(kv_desc, sc_desc, kr_desc, kv_n, sc_n, kr_n, bw_n, bs_n, br_n, 0, page_n)
        ps_smem.store(_ks_scores(q3, q3r, kv_c, kr_c, sc_c.index(0), 0, mma3, b3))
        gl.thread_barrier()  # every warp's partial scores are in
        s = ps_each.index(0).load(s_l) + ps_each.index(1).load(s_l)
        s = s + ps_each.index(2).load(s_l) + ps_each.index(3).load(s_l)
        keys = i * PAGE + gl.arange(0, PAGE, layout=gl.SliceLayout(0, s_l))
        s = gl.where(keys[None, :] < n_visible[:, None], s * q_scale, float("-inf"))
        p, m_new, m_use = _v5_probs(s, m_i, gl.max(s, axis=1))
        alpha = gl.exp2(m_i - m_use)
        l_i = l_i * alpha + gl.sum(p, axis=1)
        # P times each warp's tile scales, the A operand of its P·V (from the registers of S: no shared memory)
        sc = _ks_scales(sc_c.index(0), mma3)
        p3 = gl.convert_layout((gl.expand_dims(p, 0) * gl.expand_dims(sc, 1)).to(dtype), a3)
        r3_l: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(2, mma3))
        alpha3 = gl.expand_dims(gl.expand_dims(gl.convert_layout(alpha, r3_l, assert_trivial=True), 0), 2)
        return m_new, l_i, _ks_values(p3, kv_c, 0, acc, alpha3, b3), n_next

    @gluon.jit
    def _v5_fp8_ksplit_kernel(
        q_ptr, kv_ptr, kv_desc, sc_desc, kr_desc, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr,
        part_lse_ptr, meta_ptr, num_splits_ptr, ok_ptr,
        stride_qb, stride_qs, stride_qh, stride_kvb, stride_btb,
        s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks, max_blocks,
        qk_scale,
        CAUSAL: gl.constexpr, META_COLS: gl.constexpr, num_warps: gl.constexpr,
    ):
        # the raw rows come by TMA as in v5_fp8_reg.py (kv_ptr and stride_kvb are not read: the shared signature)
        BM: gl.constexpr = 16
        PAGE: gl.constexpr = 64
        mma3: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[4, 1, 1],
                                                       instr_shape=[1, 16, 8])
        a3: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma3, k_width=2)
        b3: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma3, k_width=2)
        s_l: gl.constexpr = gl.SliceLayout(0, mma3)  # the whole S [16, 64], in every warp
        rows_l: gl.constexpr = gl.SliceLayout(1, s_l)
        smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        dtype: gl.constexpr = q_ptr.dtype.element_ty

        q_smem = gl.allocate_shared_memory(gl.float16, [BM, 512], smem_layout)  # (Q's way into the registers)
        qr_smem = gl.allocate_shared_memory(dtype, [BM, 64], smem_layout)
        # two raw slots, A and B, each in allocations of its own (_ks_page): words, scales, k_rope, three mbarriers
        kv_a = gl.allocate_shared_memory(gl.int32, [1, 4, PAGE, 32], kv_desc.layout)
        sc_a = gl.allocate_shared_memory(gl.int32, [1, PAGE, 4], sc_desc.layout)
        kr_a = gl.allocate_shared_memory(dtype, [1, PAGE, 64], kr_desc.layout)
        kv_b = gl.allocate_shared_memory(gl.int32, [1, 4, PAGE, 32], kv_desc.layout)
        sc_b = gl.allocate_shared_memory(gl.int32, [1, PAGE, 4], sc_desc.layout)
        kr_b = gl.allocate_shared_memory(dtype, [1, PAGE, 64], kr_desc.layout)
        bw_a = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        bs_a = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        br_a = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        bw_b = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        bs_b = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        br_b = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
        _reg_init_bars(bw_a, bs_a, br_a, 1)
        _reg_init_bars(bw_b, bs_b, br_b, 1)
        # the warps' partial scores [4, 16, 64] fp32, row-major, in Q's bytes (Q is in the registers from a request's
        # first barrier on, and the next request's Q comes after its own); ps_each: the same as four [16, 64]
        ps_smem = q_smem._reinterpret(gl.float32, [4, BM, PAGE], gl.SwizzledSharedLayout(1, 1, 1, order=[2, 1, 0]))
        ps_each = ps_smem._reinterpret(gl.float32, [4, BM, PAGE], gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0]))

        m_start = (gl.program_id(1) % m_tiles) * BM
        begin_req, begin_block, end_req, end_block, begin_split = _v5_part(meta_ptr, META_COLS)
        next_req, next_block = _v5_next_part(meta_ptr, META_COLS)
        u_a = 0  # the pages slot A and slot B have held so far (their mbarriers' phases)
        u_b = 0

        for req in range(begin_req, end_req + 1):
            s_k, lo, hi, part_slot, pieces, bt_row = _v5_request(
                seqlens_ptr, ok_ptr, num_splits_ptr, block_table_ptr, stride_btb, req, begin_req, begin_block, end_req,
                end_block, begin_split, next_req, next_block, max_blocks)

            gl.thread_barrier()  # every warp is done with the previous request's Q and slots
            n_cur = 0
            if lo < hi:  # prologue: page lo in flight into slot A (page lo + 1 goes into slot B during page lo)
                page, n_cur = _fp8_page(bt_row, lo, hi, s_k, num_blocks, ok_ptr)
                _reg_expect_tma(bw_a, bs_a, br_a, 0)
                _reg_issue_tma(kv_desc, sc_desc, kr_desc, kv_a, sc_a, kr_a, bw_a, bs_a, br_a, 0, page)
            # Q's rows scaled into fp16's range (undone with qk_scale), then each warp's share into its registers
            q_scale = qk_scale * _reg_load_q16(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh,
                                               heads_per_kv, rows_per_kv, rows_l, num_warps)[:, None]
            gl.thread_barrier()  # Q is in shared memory
            ql: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [1, num_warps], [1, 0])
            q3 = gl.convert_layout(gl.permute(gl.reshape(q_smem.load(ql), [BM, 4, 128]), (1, 0, 2)), a3)
            q3r = gl.convert_layout(gl.permute(gl.reshape(qr_smem.load(ql), [BM, 4, 16]), (1, 0, 2)), a3)

            rows = m_start + gl.arange(0, BM, layout=rows_l)
            if CAUSAL:
                n_visible = s_k - s_q + 1 + rows // heads_per_kv
            else:
                n_visible = rows * 0 + s_k
            m_i = gl.full([BM], float("-inf"), gl.float32, layout=rows_l)
            l_i = gl.zeros([BM], gl.float32, layout=rows_l)
            acc = gl.zeros([4, BM, 128], gl.float32, layout=mma3)
            for i in range(lo, hi, 2):  # two pages a turn: slot A's, then slot B's
                m_i, l_i, acc, n_cur = _ks_page(
                    i, hi, kv_a, sc_a, kr_a, bw_a, bs_a, br_a, u_a, kv_b, sc_b, kr_b, bw_b, bs_b, br_b, q3, q3r,
                    ps_smem, ps_each, bt_row, s_k, num_blocks, ok_ptr, n_visible, q_scale, m_i, l_i, acc, kv_desc,
                    sc_desc, kr_desc, n_cur, mma3, a3, b3, num_warps)
                u_a += 1
                if i + 1 < hi:
                    m_i, l_i, acc, n_cur = _ks_page(
                        i + 1, hi, kv_b, sc_b, kr_b, bw_b, bs_b, br_b, u_b, kv_a, sc_a, kr_a, bw_a, bs_a, br_a, q3,
                        q3r, ps_smem, ps_each, bt_row, s_k, num_blocks, ok_ptr, n_visible, q_scale, m_i, l_i, acc,
                        kv_desc, sc_desc, kr_desc, n_cur, mma3, a3, b3, num_warps)
                    u_b += 1

            _ks_store(acc, m_i, l_i, req, part_slot, pieces, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr,
                      s_q, h_q, heads_per_kv, rows_per_kv, m_start, mma3, rows_l)
        _reg_drop_bars(bw_a, bs_a, br_a, 1)
        _reg_drop_bars(bw_b, bs_b, br_b, 1)


_LAUNCH = FastLauncher(_v5_fp8_ksplit_kernel) if gluon is not None else None


def launch_v5_fp8_ksplit(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                         part_lse, ok_flag):
    """Launch the reduction-split 16-row FP8 register tile over the schedule `meta` (k_cache: FlashMLA's FP8 cache,
    rows contiguous)."""
    launch_page_tile(_LAUNCH, "reduction-split FP8 tile", q, k_cache, block_table, cache_seqlens, dims, causal, meta,
                     num_splits, out, lse, part_out, part_lse, ok_flag, num_warps=KS_WARPS, maxnreg=KS_MAXNREG)
