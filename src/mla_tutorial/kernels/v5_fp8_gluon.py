# version 5, FP8 cache: the 64-row Gluon tile of v5_gluon.py reading FlashMLA's 656-byte rows (stage 5).
#
# What changes against v5_gluon.py (the lockstep tile): a page no longer arrives by TMA as bf16. Each of the 256
# threads loads its share of the page's c_kv into registers (16-byte loads of the e4m3 bytes, as int32 words, by
# 64-column chunk, and the rows' four float32 scales), dequantizes there, and stores the bf16 page into the same
# shared-memory slot layout the bf16 tile fills by TMA; k_rope, bf16 already, goes into its slot by cp.async. From
# there on the tile is the bf16 one (Q·Kᵀ and P·V by async wgmma, no score work repeated, V = the first 512 columns
# of the page).
# The register path is software-pipelined one page ahead: page i+2's loads are issued while P·V of page i runs,
# and page i+1 is dequantized into the other slot while S = Q·Kᵀ of page i runs, so the loads' latency and the
# dequantization sit beside the tensor-core work instead of in front of it. Rows past s_k (which may hold NaN bytes
# and NaN scales) and pages past the request's end are never loaded (masked loads give 0), so no zeroing pass.
#
# Why (docs/results/v5_notes.md, FP8 dequantization): the plain-Triton small tile spends 4,224 instructions per
# 64-key step and thread on an FP8 page against 2,576 on a bf16 one, mostly moving a key tile made in registers into
# shared memory once per dot; here a page is written to shared memory once, for both dots, and its dequantization
# (a conversion-free PTX sequence per four values, 128 values per thread per page) is spread over 8 warps.
# Expected (H200, b 128, s_k 4096): near the bf16 lockstep tile's compute time, 0.20 ms at h64 and 0.34 at h128
# (the FP8 small tile: 0.675 and 1.114; FlashMLA's bf16 kernel 0.170 and 0.234); at h16, padded to 64 rows like
# FlashMLA's kernel, about the same as h64.
# Measured (H200, 2026-12-02, whole call; docs/results/probes/fp8_gluon_probe1_h200_2026-12-02.json): h64 0.313 ms,
# h128 0.560, h16 0.343: twice as fast as the FP8 small tile at 64 and 128 heads (0.611, 1.114), a little faster
# at 16 (0.368), slower than the bf16 tiles (0.244, 0.380, 0.183). The dequantization (~700 instructions per thread
# and page) overlaps only the short S = Q·Kᵀ; spreading half of it over P·V as well was slower (0.337 / 0.603 /
# 0.368: the stores then compete with P·V's shared-memory reads), see docs/results/v5_notes.md.
"""Version 5 over an FP8 cache: the 64-row Gluon tile with each page dequantized through registers (Hopper)."""

from __future__ import annotations

from ..fp8 import ROPE_OFFSET, ROW_BYTES, SCALE_OFFSET
from .common import LOG2E
from .launch import FastLauncher
from .v5_gluon import (
    BLOCK_M,
    NUM_WARPS,
    O_LAYOUT,
    S_LAYOUT,
    async_copy,
    fence_async_shared,
    gl,
    gluon,
    warpgroup_mma,
    warpgroup_mma_wait,
)

if gluon is not None:
    FP8_ROW = gl.constexpr(ROW_BYTES)  # 656 bytes per token: 512 e4m3 values, 4 float32 scales, 64 bf16 values
    FP8_SCALES_AT = gl.constexpr(SCALE_OFFSET)  # byte 512
    FP8_ROPE_AT = gl.constexpr(ROPE_OFFSET)  # byte 528
    #: Four e4m3 values (one int32 word, $4) times their row's float32 scale ($5, a power of two) to four bf16 ($0-$3),
    #: exactly, with one conversion-free sequence: each pair of bytes is sign-extended into two 16-bit lanes (prmt's
    #: sign-replicating selectors), shifted left by 4 and masked, which keeps each byte's sign at bit 15 and puts its
    #: 7 magnitude bits at bits 4..10 (a bf16 worth the value times 2^-120, subnormals and 0 included); two packed
    #: bf16 multiplies, by 2^120 and by the scale (whose bf16 is its float32's top half), give the value times the
    #: scale. Three integer instructions per two values (the sequence before it took four and a half: prmt, two ands,
    #: a shift and an or per pair; the same bits). The e4m3 NaN code (0x7F) would read 480, but a tile holding a NaN
    #: has a NaN scale, which the multiply passes on; rows past s_k load as 0 with scale 0.
    _E4M3X4_TIMES_SCALE = gl.constexpr("""{
.reg .b32 lo, hi, k, sc;
mov.b32 k, 0x7B807B80;
prmt.b32 sc, $5, $5, 0x3232;
prmt.b32 lo, $4, 0, 0x9180;
prmt.b32 hi, $4, 0, 0xB3A2;
shl.b32 lo, lo, 4;
shl.b32 hi, hi, 4;
and.b32 lo, lo, 0x87F087F0;
and.b32 hi, hi, 0x87F087F0;
mul.rn.bf16x2 lo, lo, k;
mul.rn.bf16x2 hi, hi, k;
mul.rn.bf16x2 lo, lo, sc;
mul.rn.bf16x2 hi, hi, sc;
mov.b32 {$0, $1}, lo;
mov.b32 {$2, $3}, hi;
}""")
    from .v5_gluon import (
        _v5_load_q,
        _v5_next_part,
        _v5_online_softmax,
        _v5_part,
        _v5_request,
        _v5_start,
        _v5_store,
    )

    @gluon.jit
    def _fp8_page(bt_row, i, hi, s_k, num_blocks, ok_ptr):
        """(block id, rows that hold keys) of page i of a request, the i-th entry of its block-table row: no rows
        for i >= hi; a block id outside [0, num_blocks) is not followed (the ok flag is cleared, no rows)."""
        page = gl.load(bt_row + i, mask=i < hi, other=0)
        bad = (page < 0) | (page >= num_blocks)
        gl.store(ok_ptr, 0, mask=bad & (i < hi))
        n_rows = gl.where(bad | (i >= hi), 0, s_k - i * 64)
        return gl.where(bad, 0, page).to(gl.int64), n_rows

    @gluon.jit
    def _fp8_words(kv_ptr, page, n_rows, stride_kvb, C: gl.constexpr, ldw: gl.constexpr):
        """Issue the loads of chunk C of a page's c_kv into registers: the e4m3 bytes of columns 64·C .. 64·C + 63
        of its 64 rows as (64, 16) int32 words (four values each: held packed until they are dequantized). Rows from
        n_rows on load as 0 (they may hold NaN bytes)."""
        rows = gl.arange(0, 64, layout=gl.SliceLayout(1, ldw))
        words = gl.arange(0, 16, layout=gl.SliceLayout(0, ldw))
        base = kv_ptr + page * stride_kvb + rows * FP8_ROW  # (64,) byte pointers to the rows
        ptrs = base.to(gl.pointer_type(gl.int32))[:, None] + words[None, :]  # (64, 16) words of chunk 0
        return gl.load(ptrs + 16 * C, mask=(rows < n_rows)[:, None], other=0)

    @gluon.jit
    def _fp8_scale(kv_ptr, page, n_rows, stride_kvb, T: gl.constexpr, ldw: gl.constexpr):
        """Issue the load of scale T (columns 128·T .. 128·T + 127) of a page's 64 rows, (64,) float32; rows from
        n_rows on load as 0 (they may hold NaN scales)."""
        rows = gl.arange(0, 64, layout=gl.SliceLayout(1, ldw))
        base = kv_ptr + page * stride_kvb + rows * FP8_ROW
        sc = (base + FP8_SCALES_AT).to(gl.pointer_type(gl.float32))  # (64,) float32 pointers: scale t at sc + t
        return gl.load(sc + T, mask=rows < n_rows, other=0.0)

    @gluon.jit
    def _fp8_fetch(kv_ptr, page, n_rows, stride_kvb, ldw: gl.constexpr):
        """Issue the loads of a whole page's c_kv into registers: its eight 64-column chunks (_fp8_words) and the
        rows' four scales (_fp8_scale)."""
        w0 = _fp8_words(kv_ptr, page, n_rows, stride_kvb, 0, ldw)
        w1 = _fp8_words(kv_ptr, page, n_rows, stride_kvb, 1, ldw)
        w2 = _fp8_words(kv_ptr, page, n_rows, stride_kvb, 2, ldw)
        w3 = _fp8_words(kv_ptr, page, n_rows, stride_kvb, 3, ldw)
        w4 = _fp8_words(kv_ptr, page, n_rows, stride_kvb, 4, ldw)
        w5 = _fp8_words(kv_ptr, page, n_rows, stride_kvb, 5, ldw)
        w6 = _fp8_words(kv_ptr, page, n_rows, stride_kvb, 6, ldw)
        w7 = _fp8_words(kv_ptr, page, n_rows, stride_kvb, 7, ldw)
        s0 = _fp8_scale(kv_ptr, page, n_rows, stride_kvb, 0, ldw)
        s1 = _fp8_scale(kv_ptr, page, n_rows, stride_kvb, 1, ldw)
        s2 = _fp8_scale(kv_ptr, page, n_rows, stride_kvb, 2, ldw)
        s3 = _fp8_scale(kv_ptr, page, n_rows, stride_kvb, 3, ldw)
        return w0, w1, w2, w3, w4, w5, w6, w7, s0, s1, s2, s3

    @gluon.jit
    def _fp8_rope_copy(kr_buf, kv_ptr, page, n_rows, stride_kvb, ldr: gl.constexpr):
        """Start the asynchronous copy (cp.async, no registers) of a page's k_rope, bf16 already, into kr_buf
        [64, 64]; rows from n_rows on are not read but written as zeros (cp.async's zero fill: their scores are
        masked), so a copy with no rows still writes the whole box when it lands."""
        rows = gl.arange(0, 64, layout=gl.SliceLayout(1, ldr))
        cols = gl.arange(0, 64, layout=gl.SliceLayout(0, ldr))
        base = (kv_ptr + page * stride_kvb + rows * FP8_ROW + FP8_ROPE_AT).to(gl.pointer_type(gl.bfloat16))
        async_copy.async_copy_global_to_shared(kr_buf, base[:, None] + cols[None, :], mask=(rows < n_rows)[:, None])
        async_copy.commit_group()

    @gluon.jit
    def _fp8_chunk(view, w, scale, dtype: gl.constexpr):
        """A chunk of int32 words [rows, n] (four e4m3 values each; 16 words for a 64-column box), times its rows'
        scale, as bf16 into a [rows, 4·n] shared-memory view: _E4M3X4_TIMES_SCALE per word, its four results put back
        in column order."""
        v0, v1, v2, v3 = gl.inline_asm_elementwise(
            _E4M3X4_TIMES_SCALE, "=h,=h,=h,=h,r,r", [w, scale.to(gl.int32, bitcast=True)[:, None] + w * 0],
            dtype=(gl.bfloat16, gl.bfloat16, gl.bfloat16, gl.bfloat16), is_pure=True, pack=1)
        # word j's k-th value: column 4j + k
        x = gl.reshape(gl.join(gl.join(v0, v2), gl.join(v1, v3)), [w.shape[0], 4 * w.shape[1]])
        view.store(x)

    @gluon.jit
    def _fp8_put(k_buf, b0, b1, b2, b3, b4, b5, b6, b7, s0, s1, s2, s3, dtype: gl.constexpr):
        """The fetched c_kv, dequantized, into a bf16 slot k_buf [64, 512] (K's latent part and V). Scale t covers
        columns 128·t .. 128·t + 127, i.e. chunks 2t and 2t + 1."""
        _fp8_chunk(k_buf.slice(0, 64, dim=1), b0, s0, dtype)
        _fp8_chunk(k_buf.slice(64, 64, dim=1), b1, s0, dtype)
        _fp8_chunk(k_buf.slice(128, 64, dim=1), b2, s1, dtype)
        _fp8_chunk(k_buf.slice(192, 64, dim=1), b3, s1, dtype)
        _fp8_chunk(k_buf.slice(256, 64, dim=1), b4, s2, dtype)
        _fp8_chunk(k_buf.slice(320, 64, dim=1), b5, s2, dtype)
        _fp8_chunk(k_buf.slice(384, 64, dim=1), b6, s3, dtype)
        _fp8_chunk(k_buf.slice(448, 64, dim=1), b7, s3, dtype)

    @gluon.jit
    def _v5_fp8_kernel(
        q_ptr, kv_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr,
        meta_ptr, num_splits_ptr, ok_ptr,
        stride_qb, stride_qs, stride_qh, stride_kvb, stride_btb,
        s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks, max_blocks,
        qk_scale,
        CAUSAL: gl.constexpr, META_COLS: gl.constexpr, num_warps: gl.constexpr,
    ):
        BLOCK_M: gl.constexpr = 64
        PAGE: gl.constexpr = 64
        CHUNK: gl.constexpr = 64
        N_CHUNKS: gl.constexpr = 9
        D_V: gl.constexpr = 512
        # S and O split over the two warpgroups along their columns (keys, output columns), as in v5_gluon.py
        s_layout: gl.constexpr = S_LAYOUT
        o_layout: gl.constexpr = O_LAYOUT
        s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
        s_cols: gl.constexpr = gl.SliceLayout(0, s_layout)
        o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
        o_cols: gl.constexpr = gl.SliceLayout(0, o_layout)
        smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        # a page's loads: 4 words (16 bytes) per thread and row of a 64-byte chunk (4 threads a row, 64 rows over
        # 8 warps);
        # k_rope: 8 bf16 per thread, 8 threads a row, 2 rows per thread
        ldw: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [num_warps, 1], [1, 0])
        ldr: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        dtype: gl.constexpr = q_ptr.dtype.element_ty

        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, D_V], smem_layout)  # Q's latent part
        qr_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, CHUNK], smem_layout)  # Q's RoPE part
        k_smem = gl.allocate_shared_memory(dtype, [2, PAGE, D_V], smem_layout)  # two dequantized pages: c_kv
        kr_smem = gl.allocate_shared_memory(dtype, [2, PAGE, CHUNK], smem_layout)  # and k_rope
        p_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, PAGE], smem_layout)

        m_start = (gl.program_id(1) % m_tiles) * BLOCK_M
        begin_req, begin_block, end_req, end_block, begin_split = _v5_part(meta_ptr, META_COLS)
        next_req, next_block = _v5_next_part(meta_ptr, META_COLS)

        it = 0  # pages consumed by this program: slot it % 2
        for req in range(begin_req, end_req + 1):
            s_k, lo, hi, part_slot, pieces, bt_row = _v5_request(
                seqlens_ptr, ok_ptr, num_splits_ptr, block_table_ptr, stride_btb, req, begin_req, begin_block, end_req,
                end_block, begin_split, next_req, next_block, max_blocks)

            # the last copy of the previous request (page hi + 1's k_rope: masked, so cp.async writes zeros into the
            # box page lo + 1's copy goes to) has landed before a new copy targets the box: copies in flight are not
            # ordered among themselves
            async_copy.wait_group(0)
            gl.thread_barrier()  # every warp is done with the previous request's buffers
            # prologue: page lo dequantized into this program's current slot, page lo + 1 in registers; both pages'
            # k_rope copied asynchronously into their slots
            page, n_rows = _fp8_page(bt_row, lo, hi, s_k, num_blocks, ok_ptr)
            _fp8_rope_copy(kr_smem.index(it % 2), kv_ptr, page, n_rows, stride_kvb, ldr)
            b0, b1, b2, b3, b4, b5, b6, b7, s0, s1, s2, s3 = _fp8_fetch(kv_ptr, page, n_rows, stride_kvb, ldw)
            _fp8_put(k_smem.index(it % 2), b0, b1, b2, b3, b4, b5, b6, b7, s0, s1, s2, s3, dtype)
            page, n_rows = _fp8_page(bt_row, lo + 1, hi, s_k, num_blocks, ok_ptr)
            _fp8_rope_copy(kr_smem.index((it + 1) % 2), kv_ptr, page, n_rows, stride_kvb, ldr)
            b0, b1, b2, b3, b4, b5, b6, b7, s0, s1, s2, s3 = _fp8_fetch(kv_ptr, page, n_rows, stride_kvb, ldw)
            _v5_load_q(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv,
                       rows_per_kv, 0, N_CHUNKS, CHUNK, BLOCK_M, num_warps)
            async_copy.wait_group(1)  # page lo's k_rope has landed (page lo + 1's may still be in flight)
            fence_async_shared()
            gl.thread_barrier()

            rows, tok, n_visible, m_i, l_i, acc = _v5_start(m_start, heads_per_kv, s_k, s_q, CAUSAL, s_rows, o_layout)
            for i in range(lo, hi):
                slot = it % 2
                k_buf = k_smem.index(slot)
                # S = Q·Kᵀ over the 576 columns: warpgroup w computes keys 32w .. 32w + 31
                s = gl.zeros([BLOCK_M, PAGE], gl.float32, layout=s_layout)
                s = warpgroup_mma(q_smem, k_buf.permute((1, 0)), s, use_acc=False, is_async=True)
                s = warpgroup_mma(qr_smem, kr_smem.index(slot).permute((1, 0)), s, is_async=True)
                if i + 1 < hi:  # while S runs: page i+1 into the other slot (P·V of page i-1 is done with it)
                    _fp8_put(k_smem.index(1 - slot), b0, b1, b2, b3, b4, b5, b6, b7, s0, s1, s2, s3, dtype)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                p, alpha, m_i, l_i = _v5_online_softmax(s, i * PAGE, n_visible, m_i, l_i, qk_scale, s_cols, PAGE)
                p_smem.store(p.to(dtype))
                async_copy.wait_group(0)  # page i+1's k_rope (copied during the previous step) has landed
                fence_async_shared()
                gl.thread_barrier()  # P, page i+1's slot, and every warpgroup's S of this slot are done

                # O = O·alpha + P·V: warpgroup w owns output columns 256w .. 256w + 255
                acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
                acc = warpgroup_mma(p_smem, k_buf, acc, is_async=True)
                # while P·V runs (it reads k_buf, not this slot's k_rope): page i+2's k_rope into this slot, its
                # c_kv into registers (dequantized during the next step's S)
                page, n_rows = _fp8_page(bt_row, i + 2, hi, s_k, num_blocks, ok_ptr)
                _fp8_rope_copy(kr_smem.index(slot), kv_ptr, page, n_rows, stride_kvb, ldr)
                b0, b1, b2, b3, b4, b5, b6, b7, s0, s1, s2, s3 = _fp8_fetch(kv_ptr, page, n_rows, stride_kvb, ldw)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                gl.thread_barrier()  # both warpgroups are done with this slot and with P
                it += 1

            _v5_store(acc, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr, part_out_ptr,
                      part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start, o_rows, o_cols, 0, D_V, True)
        async_copy.wait_group(0)  # no copy into shared memory outlives the program


_LAUNCH = FastLauncher(_v5_fp8_kernel) if gluon is not None else None


def fp8_tile_launch_args(block_m, q, k_cache, block_table, cache_seqlens, dims, meta, num_splits, out, lse,
                         part_out, part_lse, ok_flag) -> tuple[tuple[int, int], tuple]:
    """(grid, run-time arguments) of the Gluon FP8 tiles (all three share one signature) for tiles of block_m query
    rows over the schedule `meta`."""
    m_tiles = -(-dims.rows_per_kv // block_m)
    return (meta.shape[0], m_tiles), (
        q, k_cache, block_table, cache_seqlens, out, lse, part_out, part_lse, meta, num_splits, ok_flag,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), block_table.stride(0),
        dims.s_q, dims.h_q, dims.heads_per_kv, dims.rows_per_kv, m_tiles, dims.num_blocks, dims.max_blocks,
        dims.scale * LOG2E)


def launch_v5_fp8_gluon(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                        part_lse, ok_flag):
    """Launch the Gluon FP8 tile over the schedule `meta` (k_cache: FlashMLA's FP8 cache, rows contiguous)."""
    grid, args = fp8_tile_launch_args(BLOCK_M, q, k_cache, block_table, cache_seqlens, dims, meta, num_splits, out,
                                      lse, part_out, part_lse, ok_flag)
    _LAUNCH(grid, *args, CAUSAL=causal, META_COLS=meta.shape[1], num_warps=NUM_WARPS)
