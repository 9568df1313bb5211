# version 5, FP8 cache, 16-row tiles dequantized into registers: v5_fp8_mma.py's products and schedule with no bf16
# copy of the page in shared memory (stage 5; path "reg": v5 ran it for an FP8 cache at up to 16 query rows per KV head
# on sm_90 until 2026-12-03, when its form on wgmma, v5_fp8_wgr.py, measured 5 % faster; its helpers serve both).
#
# What it changes against v5_fp8_mma.py (same mma.sync products on 16 rows, softmax, schedule and semantics):
#   * the page's raw 656-byte rows come by TMA into a ring of two raw slots (e4m3 words 32 KB as [4 scale tiles,
#     64 rows, 32 words] in the 128-byte swizzle, scales 1 KB, k_rope 8 KB): three copies a page issued by one
#     thread, each on its own mbarrier; page i + 1 in flight from S's row max of page i on; nothing is held in
#     registers in flight. TMA copies whole pages, so the rows past a request's keys are zeroed once they land.
#   * no dequantized page in shared memory. Each warp reads the e4m3 words its mma operands need straight from the
#     raw slot and dequantizes them, unscaled, into the operand registers (_E4M3X4_F16 for K, _E4M3_PAIRS for V):
#       - K, the B operand of S = Q·Kᵀ [16, 64]: a thread's k pairs (2t, 2t+1) and (2t+8, 2t+9) of each k16 step are
#         made four consecutive columns of the cache by permuting the 576 columns inside each 64-column block (the
#         same permutation on Q, applied once per request when Q is loaded: _reg_perm64): one 32-bit word of one key
#         is one thread's operand of one k16 step, and a scale tile's 32 words per key are 8 per thread (two LDS.128).
#         S's latent part is an fp16 product: the hardware conversion (cvt.rn.f16x2.e4m3x2) turns two codes into two
#         fp16 in one instruction, exactly. Q's latent part is stored in fp16 once per request, each row times the
#         power of two that puts its largest |q| in [2^14, 2^15) (_reg_load_q16; the RoPE part times the same, in
#         bf16), and qk_scale undoes it.
#       - V, the B operand of O += P·V [16, 512]: a thread needs consecutive key pairs of one column, i.e. bytes of
#         two rows; prmt takes byte e of the even key's word and byte e of the odd key's word, sign-extended, then a
#         shift, a mask and a multiply by 2^120 make the bf16 pair (P stays bf16: an fp16 P·V measured no faster).
#         The output columns are permuted inside each 128-column slice (a thread's four n8 tiles = the four columns
#         of one word), undone where O is stored (_v5_store's PERM32).
#     The reshape/permute from the words to each operand is a relabelling: Gluon checks it moves no data
#     (convert_layout(assert_trivial=True)).
#   * each tile's scale (a power of two) multiplies S and P per key instead of every value: S = Σ_T scale_T[key] ·
#     Q_T·K8_Tᵀ + Q_rope·k_ropeᵀ, and P·V_T = (P·scale_T[key])·V8_T with four scaled copies of P in shared memory
#     (the same bf16 products as P times the dequantized V).
#   * 255 registers a thread allowed (REG_MAXNREG): shared memory holds two programs per SM anyway.
#   * three barriers a page: page i is in (and page i - 1's slot free) -> S (four scale tiles of words, then k_rope),
#     page i + 1's mbarriers armed -> S's row max across the warps (_reg_row_max: one barrier) -> page i + 1's
#     copies into page i - 1's slot, P times each tile's scales to four shared allocations -> P's barrier -> P·V
#     (four 128-column slices). The row sums stay per key in each warp until the request ends.
# Why (docs/results/v5_notes.md, seventh session): the 16-row tile moves ~280 KB through shared memory per page (the
#   bf16 page stored once, 64 KB, and read by both products, ~136 KB, besides Q) for a page of 42 KB, and its
#   page work (the dequantization into the slot and its barrier) stays serial with the products. Here a page
#   costs ~190 KB of shared-memory traffic (the raw copy, its words read twice, Q, P) and no bf16 stores; the price
#   is dequantizing every value twice (once for K, once for V): ~4 integer instructions per word more per page.
# Expected (H200, b 128, s_k 4096, h_q 16): ~0.15-0.20 ms against 0.247 for v5_fp8_mma.py and 0.168 for FlashMLA
#   (FlashMLA / ours ~0.85-1.1; target 1.5). Risks: the K words' LDS.128 meet 2-way bank conflicts (two keys of a
#   quarter-warp share the swizzle's chunk set); cp.async's ~21 copies per thread per page load the LSU like the
#   register loads did; the doubled dequantization on the integer pipe.
# Bought (H200, 2026-12-02, seventh session; docs/results/v5_notes.md, FlashMLA in each run): correct on its first
#   run (the hostile matrix, h_q 1-128, s_q 1-2) and faster: 0.211 ms at h16 s_k 4k against 0.247 for v5_fp8_mma.py;
#   the scales moved from every value to S and P: 0.201; 240 registers instead of ptxas's 168: 0.190 (0.203 at 168
#   in the same run): 1.04x bf16 v5 (0.182), FlashMLA / ours 0.87 (target 1.5). Nsight Compute (first version):
#   issue-bound on the dequantization with 1.7 warps per scheduler (0.5 eligible), DRAM at 36 % of peak. Eighth
#   session: the raw words in RAW_PAIR_SWIZZLE (K's 16-byte reads conflict-free): 0.1906 -> 0.1853 ms (bf16 v5
#   0.184, FlashMLA / ours 0.91); one raw slot for three programs per SM (0.207 at 168 registers) and each page's
#   block id loaded before S (0.195) measured slower and removed. Then 11 barriers a page -> 5 (Triton 3.6's barrier
#   analysis put one after each of P's scaled copies in one allocation indexed four times, and the row sums crossed
#   the warps every page) with 255 registers: 0.179; -> 3 (the row max through 256 bytes of shared memory with one
#   barrier, the next page's copy issued before P's barrier): 0.177 ms at s_k 4k, 0.295 at 8k (FlashMLA / ours 0.95,
#   1.07; bf16 v5 0.185 / 0.321). The multiply by 2^120 folded into Q, the scales and O instead (no HMUL2, but ptxas
#   added ~140 register moves to pair the operands) was 6 % slower, and removed; it did show that the tensor cores
#   take bf16 subnormal inputs as they are (the same output to the bit on a cache of half e4m3 subnormals). Ninth
#   session: S's latent part in fp16 by the hardware conversion (page loop 1,651 -> 1,274 instructions): 0.1775 ->
#   0.1713 ms (predicted 0.160-0.172), in the full benchmark 0.173 at s_k 4k, 0.286 at 8k (FlashMLA / ours 0.96,
#   1.08); P·V in fp16 as well (1,089 instructions, P's copies against each tile's running largest scale) 0.1704,
#   alone 0.1861, and the next page's cp.async copy issued a page earlier 0.1848: removed. The instruction count is
#   not the limit: Nsight Compute's samples sat on the operand chains (short scoreboard), the copies' issue (21
#   cp.async a thread, the load-store queue throttled: 16 % of them) and the block id's load. The copies by TMA
#   instead (one thread, three copies, in flight from the row max on; K's 16-byte reads now meet 2-way bank
#   conflicts, which the cp.async ring's own swizzle had removed for 2.8 %): 0.1707 -> 0.1533 ms in the same run
#   (predicted 0.160-0.172), 0.154 at s_k 4k and 0.249 at 8k in the full benchmark: FlashMLA / ours 1.09 and 1.26,
#   0.83 of bf16 v5's time.
"""Version 5 over an FP8 cache, 16-row tiles with mma.sync, each page dequantized straight into the operand registers
(Gluon, Triton 3.6)."""

from __future__ import annotations

from .launch import FastLauncher
from .v5_fp8_gluon import _fp8_page
from .v5_fp8_mma import _m16_start, _m16_store, mma_v2
from .v5_fp8_tma import tma_tile_launch_args
from .v5_gluon import (
    _v5_masked_scores,
    _v5_next_part,
    _v5_part,
    _v5_probs,
    _v5_q_rows,
    _v5_request,
    fence_async_shared,
    gl,
    gluon,
    mbarrier,
    tma,
)

REG_WARPS = 4  # warps per program (two programs per SM: ~110 KB of shared memory each)
#: Registers per thread: shared memory holds two programs per SM, whose 256 threads may use up to 255 each (the
#: register file's 64 K). Left to itself ptxas caps the tile at 168 (three programs' worth) and spills; 240 bought
#: 6 % (seventh session); 255 and 240 measured the same on the eighth session's tile (0.1809 / 0.1797 ms).
REG_MAXNREG = 255
REG_RAW_SLOTS = 2  # raw page slots in the ring (one slot, with cp.async copies, measured slower)
#: The prepared variants by name, with the knobs each sets: the GPU tests (ids "reg-NAME", opt-in with
#: MLA_FP8_REG_VARIANTS=1) and the FP8 benchmark (impls "fp8_reg_NAME") read this table (empty: none prepared). Of
#: the ninth and tenth sessions' ones, S in fp16 and the copies by TMA became the tile; the next page's cp.async copy
#: a page earlier, P·V in fp16 and the next page's TMA copies right after the page's first barrier (0.1570 against
#: 0.1538 ms) measured slower or no faster and were removed (docs/results/v5_notes.md; commits 8e29e30, b5262e7 and
#: the tenth session's); the warps splitting S's reduction instead of its keys is a tile of its own, measured slower
#: (v5_fp8_ksplit.py, path "ksplit").
REG_VARIANTS: dict[str, dict] = {}

if gluon is not None:
    #: Four e4m3 values (one int32 word, $4) to four fp16 ($0-$3) by the hardware conversion (cvt.rn.f16x2.e4m3x2, two
    #: values an instruction), exactly: e4m3 is a subset of fp16. Unscaled: each tile's scale is applied to S per key.
    _E4M3X4_F16 = gl.constexpr("""{
.reg .b16 l, h;
.reg .b32 lo, hi;
mov.b32 {l, h}, $4;
cvt.rn.f16x2.e4m3x2 lo, l;
cvt.rn.f16x2.e4m3x2 hi, h;
mov.b32 {$0, $1}, lo;
mov.b32 {$2, $3}, hi;
}""")
    #: Two keys' words ($8: the even key's four e4m3 values of columns 4x .. 4x+3, $9: the odd key's) to four bf16
    #: pairs ($0-$7: for column 4x + e, (even key, odd key)), exactly: prmt takes byte e of both words sign-extended
    #: into the two 16-bit lanes; shifted left by 4 and masked, each lane holds the byte's sign and 7 magnitude bits
    #: as a bf16 of the value times 2^-120 (e4m3's exponent bias is 7, bf16's 127; subnormals included), and one
    #: packed multiply by 2^120 makes it the value.
    _E4M3_PAIRS = gl.constexpr("""{
.reg .b32 k, x0, x1, x2, x3;
mov.b32 k, 0x7B807B80;
prmt.b32 x0, $8, $9, 0xC480;
prmt.b32 x1, $8, $9, 0xD591;
prmt.b32 x2, $8, $9, 0xE6A2;
prmt.b32 x3, $8, $9, 0xF7B3;
shl.b32 x0, x0, 4;
shl.b32 x1, x1, 4;
shl.b32 x2, x2, 4;
shl.b32 x3, x3, 4;
and.b32 x0, x0, 0x87F087F0;
and.b32 x1, x1, 0x87F087F0;
and.b32 x2, x2, 0x87F087F0;
and.b32 x3, x3, 0x87F087F0;
mul.rn.bf16x2 x0, x0, k;
mul.rn.bf16x2 x1, x1, k;
mul.rn.bf16x2 x2, x2, k;
mul.rn.bf16x2 x3, x3, k;
mov.b32 {$0, $1}, x0;
mov.b32 {$2, $3}, x1;
mov.b32 {$4, $5}, x2;
mov.b32 {$6, $7}, x3;
}""")

    @gluon.jit
    def _reg_row_max(s, scratch, rows_l: gl.constexpr):
        """S's row max [16] across the four warps with one barrier: each warp's partial max over its 16 keys (S's
        columns 8w .. 8w + 7 and 32 + 8w .. 32 + 8w + 7) into scratch [16, 4], a barrier, then every thread reads its
        rows' four partials. (The scratch is written again only after the next page's first barrier.)"""
        x = gl.reshape(s, [16, 2, 4, 8])  # [row, 32-key half, warp, key of 8]: (a relabelling of S's layout)
        scratch.store(gl.max(gl.max(x, axis=3), axis=1))  # [16, 4]: within each warp only
        gl.thread_barrier()
        rl: gl.constexpr = gl.DistributedLinearLayout(  # a thread's two rows (g, g + 8), all four partials of each
            reg_bases=[[0, 1], [0, 2], [8, 0]], lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]],
            warp_bases=[[0, 0], [0, 0]], block_bases=[], shape=[16, 4])
        return gl.convert_layout(gl.max(scratch.load(rl), axis=1), rows_l, assert_trivial=True)

    @gluon.jit
    def _reg_perm64(n):
        """The cache column that logical column n of S's reduction holds here, inside each 64-column block: logical
        16j + 8a + 2t + b (a thread t's k16 step j, pair a, element b) is column 16t + 4j + 2a + b, so that a thread's
        operands of four k16 steps are four consecutive words."""
        j = (n // 16) % 4
        a = (n // 8) % 2
        t = (n // 2) % 4
        return (n // 64) * 64 + 16 * t + 4 * j + 2 * a + n % 2

    @gluon.jit
    def _reg_load_q16(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv,
                      rows_per_kv, rows_l: gl.constexpr, num_warps: gl.constexpr):
        """Q for S's fp16 product: the tile's 16 rows times 2^k_row (k_row such that the row's largest |q| lands in
        [2^14, 2^15): exact, and inside fp16's range) into shared memory, the latent part in fp16 (q_smem), the RoPE
        part in bf16 (qr_smem), columns in _reg_perm64's order; rows past rows_per_kv are 0. Returns 2^-k_row [16]
        (rows_l), which multiplies the scores back."""
        ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        base, row_ok = _v5_q_rows(q_ptr, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv, rows_per_kv, 16,
                                  ld)  # (16,) pointers
        cols = _reg_perm64(gl.arange(0, 64, layout=gl.SliceLayout(0, ld)))
        amax = gl.zeros([16], gl.float32, layout=gl.SliceLayout(1, ld))
        for c in gl.static_range(9):  # the row's largest |q|, latent and RoPE parts
            x = gl.load(base[:, None] + (c * 64 + cols)[None, :], mask=row_ok[:, None], other=0.0)
            amax = gl.maximum(amax, gl.max(gl.abs(x.to(gl.float32)), axis=1))
        # amax = 1.f·2^(E - 127) (E its biased exponent): times 2^(141 - E) it is in [2^14, 2^15); the factor's
        # biased exponent 268 - E kept in [1, 253] (a zero row: 2^126; inf or NaN: 2^-114, which keeps them)
        up_e = gl.minimum(gl.maximum(268 - ((amax.to(gl.int32, bitcast=True) >> 23) & 0xFF), 1), 253)
        up = (up_e << 23).to(gl.float32, bitcast=True)
        down = ((254 - up_e) << 23).to(gl.float32, bitcast=True)  # 1 / up, exactly
        for c in gl.static_range(9):  # (the second read of each chunk hits in L1)
            x = gl.load(base[:, None] + (c * 64 + cols)[None, :], mask=row_ok[:, None], other=0.0)
            x = x.to(gl.float32) * up[:, None]
            if c < 8:
                q_smem.slice(c * 64, 64, dim=1).store(x.to(gl.float16))
            else:
                qr_smem.store(x.to(qr_smem.dtype))
        return gl.convert_layout(down, rows_l)

    @gluon.jit
    def _reg_smem(kv_desc, sc_desc, kr_desc, dtype: gl.constexpr, BM: gl.constexpr, RAW: gl.constexpr,
                  P_DTYPE: gl.constexpr = None):
        """A 16-row register tile's shared memory: Q's latent part in fp16 (each row scaled into fp16's range) and its
        RoPE part in Q's dtype (columns permuted: _reg_load_q16), P times each tile's scales as four allocations
        (Triton's barrier analysis cannot tell the copies of one allocation indexed four times apart and puts a
        barrier after each store), and the raw ring as the copies land: [4 tiles, 64, 32] words a slot, the scales,
        k_rope, three mbarriers a slot (_reg_expect_tma), initialised (P in P_DTYPE where given, else in Q's dtype).
        Returns (q_smem, qr_smem, p0_smem .. p3_smem, kv_raw, sc_raw, kr_raw, bw, bs, br)."""
        PAGE: gl.constexpr = 64
        p_dtype: gl.constexpr = dtype if P_DTYPE is None else P_DTYPE
        smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        q_smem = gl.allocate_shared_memory(gl.float16, [BM, 512], smem_layout)
        qr_smem = gl.allocate_shared_memory(dtype, [BM, 64], smem_layout)
        p0_smem = gl.allocate_shared_memory(p_dtype, [BM, PAGE], smem_layout)
        p1_smem = gl.allocate_shared_memory(p_dtype, [BM, PAGE], smem_layout)
        p2_smem = gl.allocate_shared_memory(p_dtype, [BM, PAGE], smem_layout)
        p3_smem = gl.allocate_shared_memory(p_dtype, [BM, PAGE], smem_layout)
        kv_raw = gl.allocate_shared_memory(gl.int32, [RAW, 4, PAGE, 32], kv_desc.layout)
        sc_raw = gl.allocate_shared_memory(gl.int32, [RAW, PAGE, 4], sc_desc.layout)
        kr_raw = gl.allocate_shared_memory(dtype, [RAW, PAGE, 64], kr_desc.layout)
        bw = gl.allocate_shared_memory(gl.int64, [RAW, 1], mbarrier.MBarrierLayout())
        bs = gl.allocate_shared_memory(gl.int64, [RAW, 1], mbarrier.MBarrierLayout())
        br = gl.allocate_shared_memory(gl.int64, [RAW, 1], mbarrier.MBarrierLayout())
        _reg_init_bars(bw, bs, br, RAW)
        return q_smem, qr_smem, p0_smem, p1_smem, p2_smem, p3_smem, kv_raw, sc_raw, kr_raw, bw, bs, br

    @gluon.jit
    def _reg_init_bars(bw, bs, br, SLOTS: gl.constexpr):
        """Initialise the three mbarrier allocations of a raw ring (_reg_expect_tma), SLOTS slots each."""
        for k in gl.static_range(SLOTS):
            mbarrier.init(bw.index(k), count=1)
            mbarrier.init(bs.index(k), count=1)
            mbarrier.init(br.index(k), count=1)

    @gluon.jit
    def _reg_drop_bars(bw, bs, br, SLOTS: gl.constexpr):
        """Invalidate what _reg_init_bars initialised."""
        for k in gl.static_range(SLOTS):
            mbarrier.invalidate(bw.index(k))
            mbarrier.invalidate(bs.index(k))
            mbarrier.invalidate(br.index(k))

    @gluon.jit
    def _reg_expect_tma(bw, bs, br, slot):
        """Arm raw slot `slot`'s three mbarriers for a page's copies (_reg_issue_tma): its e4m3 words, its
        scales, its k_rope. Three barriers, one per copy, in three allocations: Triton's barrier analysis puts a
        bar.sync between two operations on one mbarrier allocation (an expect and a copy, or two copies)."""
        mbarrier.expect(bw.index(slot), 64 * 512)
        mbarrier.expect(bs.index(slot), 64 * 16)
        mbarrier.expect(br.index(slot), 64 * 128)

    @gluon.jit
    def _reg_issue_tma(kv_desc, sc_desc, kr_desc, kv_raw, sc_raw, kr_raw, bw, bs, br, slot, page):
        """Start the TMA copies of a page's 64 raw rows into raw slot `slot` (armed by _reg_expect_tma):
        the e4m3 words as one [4 tiles, 64 rows, 32 words] box (the 128-byte swizzle), the scales [64, 4], k_rope
        [64, 64]. Every row is copied; the rows past the request's keys (all of a bad block id's, block 0 read
        instead) are zeroed once they land (_reg_zero_tail)."""
        row = (page * 64).to(gl.int32)
        tma.async_copy_global_to_shared(kv_desc, [0, row, 0], bw.index(slot), kv_raw.index(slot))
        tma.async_copy_global_to_shared(sc_desc, [row, 128], bs.index(slot), sc_raw.index(slot))
        tma.async_copy_global_to_shared(kr_desc, [row, 264], br.index(slot), kr_raw.index(slot))

    @gluon.jit
    def _reg_first_copy(bt_row, lo, hi, s_k, num_blocks, ok_ptr, g, kv_desc, sc_desc, kr_desc, kv_raw, sc_raw, kr_raw,
                        bw, bs, br, SLOTS: gl.constexpr):
        """A request's prologue in a raw ring: once every warp is done with the previous request's Q and slots, page
        lo's copies into slot g % SLOTS (page lo + 1 goes during page lo). Returns page lo's rows that hold keys (0
        when the program has no page of this request)."""
        gl.thread_barrier()  # every warp is done with the previous request's Q and slots
        n_cur = 0
        if lo < hi:
            page, n_cur = _fp8_page(bt_row, lo, hi, s_k, num_blocks, ok_ptr)
            first = g % SLOTS
            _reg_expect_tma(bw, bs, br, first)
            _reg_issue_tma(kv_desc, sc_desc, kr_desc, kv_raw, sc_raw, kr_raw, bw, bs, br, first, page)
        return n_cur

    @gluon.jit
    def _reg_zero_tail(kv_raw, sc_raw, kr_raw, slot, n_rows, num_warps: gl.constexpr):
        """Rows n_rows .. 63 of raw slot `slot` as zeros (TMA copies whole pages: past a request's keys they may hold
        NaN bytes; their scores are masked, but P·V must multiply zeros, and their scales must be 0)."""
        lw: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [num_warps, 1], [1, 0])  # [64, 32] words, [64, 64] bf16
        rows = gl.arange(0, 64, layout=gl.SliceLayout(1, lw))
        keep = (rows < n_rows)[:, None]
        for t in gl.static_range(4):
            box = _reg_words(kv_raw, slot, t)
            box.store(gl.where(keep, box.load(lw), 0))
        ls: gl.constexpr = gl.BlockedLayout([1, 4], [32, 1], [num_warps, 1], [1, 0])  # [64, 4] scales
        keep_s = (gl.arange(0, 64, layout=gl.SliceLayout(1, ls)) < n_rows)[:, None]
        sc = sc_raw.index(slot)
        sc.store(gl.where(keep_s, sc.load(ls), 0))
        kr = kr_raw.index(slot)
        kr.store(gl.where(keep, kr.load(lw), 0.0))
        fence_async_shared()  # (these generic stores before the slot's next TMA write)

    @gluon.jit
    def _reg_page_in(kv_raw, sc_raw, kr_raw, bw, bs, br, g, n_cur, SLOTS: gl.constexpr, num_warps: gl.constexpr):
        """The program's g-th page into its raw slot g % SLOTS (returned): its three copies waited for (phase
        (g // SLOTS) % 2), its rows from n_cur on zeroed (the request's last page, or a bad block id), then the page's
        first barrier: for every thread the page is in, Q is in, and the slot the page before left is free."""
        PAGE: gl.constexpr = 64
        cur = g % SLOTS
        phase = (g // SLOTS) % 2
        mbarrier.wait(bw.index(cur), phase)  # the page has landed: its words, scales and k_rope
        mbarrier.wait(bs.index(cur), phase)
        mbarrier.wait(br.index(cur), phase)
        if n_cur < PAGE:  # the request's last page (or a bad block id): its rows past the keys as zeros
            _reg_zero_tail(kv_raw, sc_raw, kr_raw, cur, n_cur, num_warps)
        gl.thread_barrier()
        return cur

    @gluon.jit
    def _reg_scales(sc_slot, keys_l: gl.constexpr):
        """A raw slot's scales (sc_slot [64, 4], float32 bits as int32) as four [64] vectors, one per tile, in keys_l
        (S's column layout: thread t of warp w holds keys 8w + 2t, + 1, + 32, + 33)."""
        l4: gl.constexpr = gl.DistributedLinearLayout(  # the tiles in registers, the keys as S's columns hold them
            reg_bases=[[0, 1], [0, 2], [1, 0], [32, 0]], lane_bases=[[2, 0], [4, 0], [0, 0], [0, 0], [0, 0]],
            warp_bases=[[8, 0], [16, 0]], block_bases=[], shape=[64, 4])
        return _scales_as(sc_slot, l4, keys_l)

    @gluon.jit
    def _scales_as(sc_slot, l4: gl.constexpr, keys_l: gl.constexpr):
        """The four tiles' scales of a raw slot (sc_slot [64, 4], float32 bits as int32) read in l4 (the four tiles
        in each thread's registers, the keys as keys_l holds them) and split into four [64] vectors in keys_l."""
        x = sc_slot.load(l4).to(gl.float32, bitcast=True)
        lo, hi = gl.split(gl.reshape(x, [64, 2, 2]))  # tiles (0, 2), (1, 3)
        s0, s2 = gl.split(lo)
        s1, s3 = gl.split(hi)
        return (gl.convert_layout(s0, keys_l, assert_trivial=True), gl.convert_layout(s1, keys_l, assert_trivial=True),
                gl.convert_layout(s2, keys_l, assert_trivial=True), gl.convert_layout(s3, keys_l, assert_trivial=True))

    @gluon.jit
    def _reg_words(kv_raw, slot, tile: gl.constexpr):
        """Raw slot `slot`'s e4m3 words of scale tile `tile`, [64 keys, 32 words]: the word ring [slots, 4 tiles, 64,
        32] (the copies' rank-3 layout) seen as [slots · 4, 64, 32] blocks of the same bytes in the same 128-byte
        swizzle, indexed."""
        layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=2)
        return kv_raw._reinterpret(gl.int32, [kv_raw.shape[0] * 4, 64, 32], layout).index(4 * slot + tile)

    @gluon.jit
    def _reg_tile_scores(q_smem, words, tile: gl.constexpr, mma: gl.constexpr, a_op: gl.constexpr,
                         b_op: gl.constexpr):
        """Q_T·K8_Tᵀ [16, 64] for scale tile T with K8 the e4m3 values unscaled: a thread's two keys' 8 words
        (columns 128T + 16h + 4t .. + 3, h the 64-column half, t its lane's pair) are its operands of 8 k16 steps,
        in fp16 (Q's latent part is fp16 in shared memory: _reg_load_q16)."""
        # the words: [64 keys, 32 words] of a scale tile, thread (g = lane // 4, t = lane % 4) of warp w holding keys
        # 8w + g and 32 + 8w + g (the keys S's B operand gives it), words 16h + 4t + j
        lk: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 1], [0, 2], [0, 16], [32, 0]], lane_bases=[[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]],
            warp_bases=[[8, 0], [16, 0]], block_bases=[], shape=[64, 32])
        w = words.load(lk)  # [64, 32] int32 (the tile's words: _reg_words)
        v0, v1, v2, v3 = gl.inline_asm_elementwise(
            _E4M3X4_F16, "=h,=h,=h,=h,r", [w], dtype=(gl.float16,) * 4, is_pure=True, pack=1)
        x = gl.join(gl.join(v0, v2), gl.join(v1, v3))  # [64 keys, 32 words, a, b]: column 4·word + 2a + b
        x = gl.reshape(x, [64, 2, 4, 4, 2, 2])  # [key, h, t, j, a, b]
        x = gl.reshape(gl.permute(x, (1, 3, 4, 2, 5, 0)), [128, 64])  # [h, j, a, t, b, key]: logical order
        kb = gl.convert_layout(x, b_op, assert_trivial=True)  # (a relabelling: no data moves)
        return mma_v2(q_smem.slice(128 * tile, 128, dim=1).load(a_op), kb, gl.zeros([16, 64], gl.float32, layout=mma))

    @gluon.jit
    def _reg_scores(q_smem, qr_smem, kv_raw, kr_raw, slot, sc0, sc1, sc2, sc3, mma: gl.constexpr, a_op: gl.constexpr,
                    b_op: gl.constexpr):
        """S = Q·Kᵀ [16, 64] (keys in order; the warps split them) = Σ_T scale_T[key] · Q_T·K8_Tᵀ + Q_rope·k_ropeᵀ,
        each tile's product on the unscaled e4m3 values (_reg_tile_scores), k_rope's from the raw slot (bf16)."""
        # k_rope: [64 keys, 64 bf16], the same keys, columns 16t .. 16t + 15
        lr: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 1], [0, 2], [0, 4], [0, 8], [32, 0]], lane_bases=[[0, 16], [0, 32], [1, 0], [2, 0], [4, 0]],
            warp_bases=[[8, 0], [16, 0]], block_bases=[], shape=[64, 64])
        r = kr_raw.index(slot).load(lr)  # [64 keys, 64] bf16
        r = gl.reshape(gl.permute(gl.reshape(r, [64, 4, 4, 2, 2]), (2, 3, 1, 4, 0)), [64, 64])
        s = mma_v2(qr_smem.load(a_op), gl.convert_layout(r, b_op, assert_trivial=True),
                   gl.zeros([16, 64], gl.float32, layout=mma))
        s = s + _reg_tile_scores(q_smem, _reg_words(kv_raw, slot, 0), 0, mma, a_op, b_op) * sc0[None, :]
        s = s + _reg_tile_scores(q_smem, _reg_words(kv_raw, slot, 1), 1, mma, a_op, b_op) * sc1[None, :]
        s = s + _reg_tile_scores(q_smem, _reg_words(kv_raw, slot, 2), 2, mma, a_op, b_op) * sc2[None, :]
        return s + _reg_tile_scores(q_smem, _reg_words(kv_raw, slot, 3), 3, mma, a_op, b_op) * sc3[None, :]

    @gluon.jit
    def _reg_values(pa, kv_raw, slot, sl: gl.constexpr, acc, alpha, b_op: gl.constexpr):
        """O_sl = O_sl·alpha + (P·scale_sl)·V8_sl for the 128-column slice sl (= scale tile sl; pa: P times the keys'
        tile-sl scales, the A operand), V8 the unscaled e4m3 values dequantized from the raw slot into the B operand
        [64 keys, 128]: thread (g, t) of warp w reads word 8w + g of its 16 keys (2t + b + 8a + 16j) and makes, per
        key pair, four bf16 pairs: logical column 32e + 8w + g of the slice is cache column 4(8w + g) + e."""
        lv: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[1, 0], [8, 0], [16, 0], [32, 0]], lane_bases=[[2, 0], [4, 0], [0, 1], [0, 2], [0, 4]],
            warp_bases=[[0, 8], [0, 16]], block_bases=[], shape=[64, 32])
        w = _reg_words(kv_raw, slot, sl).load(lv)  # [64 keys, 32 words]
        w_even, w_odd = gl.split(gl.permute(gl.reshape(w, [32, 2, 32]), (0, 2, 1)))  # [32 pairs, 32 words] each
        y00, y01, y10, y11, y20, y21, y30, y31 = gl.inline_asm_elementwise(
            _E4M3_PAIRS, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [w_even, w_odd],
            dtype=(gl.bfloat16,) * 8, is_pure=True, pack=1)
        z = gl.join(gl.join(gl.join(y00, y01), gl.join(y20, y21)), gl.join(gl.join(y10, y11), gl.join(y30, y31)))
        # [pair, word, b, e_hi, e_lo] -> [pair, b, e_hi, e_lo, word] = [64 keys, 128 logical columns]
        z = gl.reshape(gl.permute(z, (0, 2, 3, 4, 1)), [64, 128])
        vb = gl.convert_layout(z, b_op, assert_trivial=True)
        return mma_v2(pa, vb, acc * alpha[:, None])

    @gluon.jit
    def _reg_page(i, hi, kv_raw, sc_raw, kr_raw, bw, bs, br, g, q_smem, qr_smem, p0_smem, p1_smem, p2_smem, p3_smem,
                  mx_smem, bt_row, s_k, num_blocks, ok_ptr, n_visible, qk_scale, m_i, l_keys, acc0, acc1, acc2, acc3,
                  kv_desc, sc_desc, kr_desc, n_cur, mma: gl.constexpr, a_op: gl.constexpr, b_op: gl.constexpr,
                  rows_l: gl.constexpr, cols_l: gl.constexpr, num_warps: gl.constexpr, SLOTS: gl.constexpr):
        """Page i of a request, the program's g-th page: its raw rows in slot g % SLOTS of the ring (kv_raw, sc_raw,
        kr_raw), landed on that slot's mbarriers (bw, bs, br) at phase (g // SLOTS) % 2, n_cur of them keys. Page
        i + 1's copies go into slot (g + 1) % SLOTS, which page i - 1 has left: its mbarriers armed before S's row-max
        barrier, its copies issued right after it (Triton's barrier analysis then adds none: nothing touches that
        slot, each copy has its own mbarrier allocation, and the ring's next read is past P's barrier), in flight
        during the softmax, P and P·V. Three barriers a page: the page is in (and page i - 1's slot free), S's row
        max, P. Returns the running max, the per-key row sums, the four output accumulators and page i + 1's rows
        that hold keys."""
        PAGE: gl.constexpr = 64
        dtype: gl.constexpr = qr_smem.dtype  # (Q's dtype, P's: q_smem holds Q's latent part in fp16)
        cur = _reg_page_in(kv_raw, sc_raw, kr_raw, bw, bs, br, g, n_cur, SLOTS, num_warps)
        sc0, sc1, sc2, sc3 = _reg_scales(sc_raw.index(cur), cols_l)
        s = _reg_scores(q_smem, qr_smem, kv_raw, kr_raw, cur, sc0, sc1, sc2, sc3, mma, a_op, b_op)
        s = _v5_masked_scores(s, i * PAGE, n_visible, qk_scale, cols_l, PAGE)
        nxt = (g + 1) % SLOTS
        page_n, n_next = _fp8_page(bt_row, i + 1, hi, s_k, num_blocks, ok_ptr)  # (none past the slice: masked)
        if i + 1 < hi:
            _reg_expect_tma(bw, bs, br, nxt)
        row_max = _reg_row_max(s, mx_smem, rows_l)
        if i + 1 < hi:  # page i + 1, in flight from here
            _reg_issue_tma(kv_desc, sc_desc, kr_desc, kv_raw, sc_raw, kr_raw, bw, bs, br, nxt, page_n)
        p, m_new, m_use = _v5_probs(s, m_i, row_max)
        alpha = gl.exp2(m_i - m_use)  # (the old sums' and outputs' rescale)
        l_keys = l_keys * alpha[:, None] + p
        p0_smem.store((p * sc0[None, :]).to(dtype))  # (a power of two: P's bf16, scaled)
        p1_smem.store((p * sc1[None, :]).to(dtype))
        p2_smem.store((p * sc2[None, :]).to(dtype))
        p3_smem.store((p * sc3[None, :]).to(dtype))
        gl.thread_barrier()  # every warp's keys of P are in
        acc0 = _reg_values(p0_smem.load(a_op), kv_raw, cur, 0, acc0, alpha, b_op)
        acc1 = _reg_values(p1_smem.load(a_op), kv_raw, cur, 1, acc1, alpha, b_op)
        acc2 = _reg_values(p2_smem.load(a_op), kv_raw, cur, 2, acc2, alpha, b_op)
        acc3 = _reg_values(p3_smem.load(a_op), kv_raw, cur, 3, acc3, alpha, b_op)
        return m_new, l_keys, acc0, acc1, acc2, acc3, n_next

    @gluon.jit
    def _v5_fp8_reg_kernel(
        q_ptr, kv_ptr, kv_desc, sc_desc, kr_desc, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr,
        part_lse_ptr, meta_ptr, num_splits_ptr, ok_ptr,
        stride_qb, stride_qs, stride_qh, stride_kvb, stride_btb,
        s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks, max_blocks,
        qk_scale,
        CAUSAL: gl.constexpr, META_COLS: gl.constexpr, RAW: gl.constexpr, num_warps: gl.constexpr,
    ):
        # RAW: raw page slots in the ring (2: page i + 1 in flight while page i is computed). The raw rows come by
        # TMA through kv_desc (the e4m3 words, [4 tiles, 64 rows, 32 words] a box), sc_desc (the scales) and kr_desc
        # (k_rope); kv_ptr and stride_kvb are not read (the FP8 tiles' shared signature)
        BM: gl.constexpr = 16
        PAGE: gl.constexpr = 64
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, num_warps],
                                                      instr_shape=[16, 8])
        a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        b_op: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        rows_l: gl.constexpr = gl.SliceLayout(1, mma)
        cols_l: gl.constexpr = gl.SliceLayout(0, mma)
        dtype: gl.constexpr = q_ptr.dtype.element_ty

        q_smem, qr_smem, p0_smem, p1_smem, p2_smem, p3_smem, kv_raw, sc_raw, kr_raw, bw, bs, br = _reg_smem(
            kv_desc, sc_desc, kr_desc, dtype, BM, RAW)
        sc_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
        mx_smem = gl.allocate_shared_memory(gl.float32, [BM, 4], sc_layout)
        # (mx_smem: each warp's partial row max, _reg_row_max)

        m_start = (gl.program_id(1) % m_tiles) * BM
        begin_req, begin_block, end_req, end_block, begin_split = _v5_part(meta_ptr, META_COLS)
        next_req, next_block = _v5_next_part(meta_ptr, META_COLS)
        g = 0  # the program's pages so far, across requests: page g's slot g % 2 and its mbarriers' phase

        for req in range(begin_req, end_req + 1):
            s_k, lo, hi, part_slot, pieces, bt_row = _v5_request(
                seqlens_ptr, ok_ptr, num_splits_ptr, block_table_ptr, stride_btb, req, begin_req, begin_block, end_req,
                end_block, begin_split, next_req, next_block, max_blocks)

            n_cur = _reg_first_copy(bt_row, lo, hi, s_k, num_blocks, ok_ptr, g, kv_desc, sc_desc, kr_desc, kv_raw,
                                    sc_raw, kr_raw, bw, bs, br, RAW)  # page lo in flight
            # Q's rows scaled into fp16's range; the scale is undone with qk_scale ([16, 1])
            q_scale = qk_scale * _reg_load_q16(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh,
                                               heads_per_kv, rows_per_kv, rows_l, num_warps)[:, None]

            rows, tok, n_visible, m_i, l_i, acc0, acc1, acc2, acc3 = _m16_start(m_start, heads_per_kv, s_k, s_q,
                                                                                CAUSAL, rows_l, mma)
            # each warp's row sums per key, summed across the warps once per request (not a reduction every page)
            l_keys = gl.zeros([BM, PAGE], gl.float32, layout=mma)
            for i in range(lo, hi):
                m_i, l_keys, acc0, acc1, acc2, acc3, n_cur = _reg_page(
                    i, hi, kv_raw, sc_raw, kr_raw, bw, bs, br, g, q_smem, qr_smem, p0_smem, p1_smem, p2_smem, p3_smem,
                    mx_smem, bt_row, s_k, num_blocks, ok_ptr, n_visible, q_scale, m_i, l_keys, acc0, acc1, acc2, acc3,
                    kv_desc, sc_desc, kr_desc, n_cur, mma, a_op, b_op, rows_l, cols_l, num_warps, RAW)
                g += 1
            l_i = gl.sum(l_keys, axis=1)

            _m16_store(acc0, acc1, acc2, acc3, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr,
                       part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start, rows_l, cols_l,
                       True)  # (each slice's columns un-permuted)
        _reg_drop_bars(bw, bs, br, RAW)


_LAUNCH = FastLauncher(_v5_fp8_reg_kernel) if gluon is not None else None


def launch_page_tile(launcher, tile: str, q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits,
                     out, lse, part_out, part_lse, ok_flag, **consts):
    """Launch a 16-row FP8 tile that takes whole pages' raw rows by TMA (this one, v5_fp8_ksplit.py's) over the
    schedule `meta`: the three descriptors of 64-row boxes, the words as [4 tiles, 64, 32] (`tile` names it in the
    error on a cache TMA cannot read); consts: its constexprs and launch options."""
    grid, args = tma_tile_launch_args(tile, q, k_cache, block_table, cache_seqlens, dims, meta, num_splits, out, lse,
                                      part_out, part_lse, ok_flag, rows=64, tiled_words=True)
    launcher(grid, *args, CAUSAL=causal, META_COLS=meta.shape[1], **consts)


def launch_v5_fp8_reg(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                      part_lse, ok_flag):
    """Launch the register-dequantizing 16-row FP8 tile over the schedule `meta` (k_cache: FlashMLA's FP8 cache,
    rows contiguous)."""
    launch_page_tile(_LAUNCH, "register FP8 tile", q, k_cache, block_table, cache_seqlens, dims, causal, meta,
                     num_splits, out, lse, part_out, part_lse, ok_flag, RAW=REG_RAW_SLOTS, num_warps=REG_WARPS,
                     maxnreg=REG_MAXNREG)
