# version 5: v4's schedule and semantics, with the 64-row tile written in Gluon for Hopper (sm_90).
#
# What Gluon adds over `tl`: explicit layouts, TMA copies completing on mbarriers, and async wgmma.
# v4's 64-row tile in plain Triton has two structural losses on Hopper (see ../shared/REFERENCE.md):
#   * Triton gives the score dot S = Q·Kᵀ the warp layout [8, 1]: with a 64-row tile and 8 warps, BOTH
#     warpgroups compute the whole 64x64 score tile, 1.53x the useful tensor-core work;
#   * page loads are pointer loads that the pipeliner keeps 1-2 deep, and with 221 KB of shared memory
#     and 255 registers (spilling) one program per SM cannot overlap them with the MMAs.
# Here the layouts are chosen by hand:
#   * S [64 rows, 64 keys] has the wgmma layout warps [4, 2]: warpgroup 0 computes keys 0-31 and
#     warpgroup 1 keys 32-63, each over all 576 columns: no score work is repeated. The row max and
#     row sum cross the two warpgroups through shared memory (the reduction's own scratch).
#   * P [64, 64] goes to shared memory once (bf16, as FlashMLA rounds it), and O += P·V has the layout
#     warps [4, 2] with instruction N = 256: warpgroup 0 owns output columns 0-255, warpgroup 1 columns
#     256-511, each a 64x256 fp32 accumulator (128 registers per thread).
#   * each 64-token page [64, 576] arrives by TMA (nine 64x64 boxes, one per 128-byte column block)
#     through the block table into a 2-stage shared-memory ring on mbarriers; the next page is in
#     flight while the current one is multiplied. V is the first 512 columns of the same buffer.
#   Shared memory: Q 72 KB + 2 pages 144 KB + P 8 KB = 224 KB: one program per SM, 8 warps.
# Rows of a partial last page past s_k may hold anything (NaN): they are zeroed in shared memory
# before P·V (0·NaN = NaN), and their scores are masked to -inf.
# A block id outside [0, num_blocks) is never dereferenced: its TMA box is placed out of bounds
# (zero-filled by the copy engine) and the error flag is raised for the caller to assert on.
# Bytes and FLOPs: as v4. Expected (H200): h64/h128 from v4's 0.47/0.38 of FlashMLA toward 0.8-0.9
#   (no duplicated score work, loads overlapped with MMAs).
# Measured: see the docstring of `mla_decode_v5` and docs/results/.
"""Version 5 of the stage-4 kernel ladder: the 64-row tile in Gluon (Hopper: TMA, mbarriers, async wgmma)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .common import LOG2E
from .launch import FastLauncher

try:  # Gluon's Hopper API as of Triton 3.6 (its names moved between 3.4, 3.6 and 3.9)
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_init,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    GLUON_IMPORT_ERROR: str | None = None
except Exception as err:  # pragma: no cover - depends on the installed Triton
    gluon = gl = fence_async_shared = mbarrier = tma = warpgroup_mma = warpgroup_mma_init = warpgroup_mma_wait = None
    TensorDescriptor = None
    GLUON_IMPORT_ERROR = f"{type(err).__name__}: {err}"

try:  # cp.async (Ampere's asynchronous copy, on Hopper too): k_rope in the FP8 tiles, Q in the seesaw tile
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
except Exception:  # pragma: no cover - depends on the installed Triton
    async_copy = None

BLOCK_M = 64  # query rows per tile: one wgmma M
PAGE = 64  # tokens per page
CHUNK = 64  # columns per TMA box / 128-byte swizzle block (bf16)
N_CHUNKS = 9  # 576 / 64
D_NOPE = 512
NUM_WARPS = 8  # two consumer warpgroups
NUM_STAGES = 2  # pages in the shared-memory ring


S_LAYOUT = O_LAYOUT = None  # (below, where Gluon imports)
if gluon is not None:
    #: The layouts of a 64-row, 64-key step over two warpgroups (8 warps): S [64 rows, 64 keys] split between them
    #: by keys (warpgroup w: keys 32w .. 32w + 31), O [64, 512] by output columns (256w .. 256w + 255).
    S_LAYOUT = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, 32, 16]))
    O_LAYOUT = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                      instr_shape=[16, 256, 16]))

    @gluon.jit
    def _v5_q_rows(q_ptr, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv, rows_per_kv,
                   BLOCK_M: gl.constexpr, ld: gl.constexpr):
        """(pointers to the starts of the tile's BLOCK_M query rows of request req, which of them exist) in the rows'
        slice of ld: row m_start + r is token r // heads_per_kv, head r % heads_per_kv."""
        rows = m_start + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ld))  # (BLOCK_M,)
        row_ok = rows < rows_per_kv
        tok = rows // heads_per_kv
        head = rows % heads_per_kv  # h_kv = 1: the KV head's query heads are all heads
        return q_ptr + req.to(gl.int64) * stride_qb + tok * stride_qs + head * stride_qh, row_ok

    @gluon.jit
    def _v5_load_q(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv, rows_per_kv,
                   FIRST: gl.constexpr, LAST: gl.constexpr, CHUNK: gl.constexpr, BLOCK_M: gl.constexpr,
                   num_warps: gl.constexpr, ASYNC: gl.constexpr = False):
        """Q tile rows -> shared memory [64, 576], 64-column blocks FIRST..LAST-1 of the nine (block 8: RoPE);
        rows past rows_per_kv are 0. ASYNC: by cp.async, every block in flight at once (no registers), waited for
        before returning; else each block loaded into registers and stored, one round trip after the other."""
        ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        base, row_ok = _v5_q_rows(q_ptr, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv, rows_per_kv,
                                  BLOCK_M, ld)
        cols = gl.arange(0, CHUNK, layout=gl.SliceLayout(0, ld))
        if ASYNC:  # (masked rows are written as zeros by cp.async's zero fill)
            for c in gl.static_range(FIRST, LAST):
                ptrs = base[:, None] + (c * CHUNK + cols)[None, :]
                if c < 8:
                    async_copy.async_copy_global_to_shared(q_smem.slice(c * CHUNK, CHUNK, dim=1), ptrs,
                                                           mask=row_ok[:, None])
                else:
                    async_copy.async_copy_global_to_shared(qr_smem, ptrs, mask=row_ok[:, None])
            async_copy.commit_group()
            async_copy.wait_group(0)
        else:
            for c in gl.static_range(FIRST, LAST):
                x = gl.load(base[:, None] + (c * CHUNK + cols)[None, :], mask=row_ok[:, None], other=0.0)
                if c < 8:
                    q_smem.slice(c * CHUNK, CHUNK, dim=1).store(x)
                else:
                    qr_smem.store(x)

    @gluon.jit
    def _probe_time(NS: gl.constexpr):
        """A time stamp for a tile's TRACE probe (v5_seesaw.py, v5_fp8_wgr.py): with NS the GPU's nanosecond timer
        (%globaltimer: one time base for every SM), else the SM's cycle counter (%clock64), as an int64."""
        if NS:
            t = gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=gl.int64, is_pure=False, pack=1)
        else:
            t = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l", [], dtype=gl.int64, is_pure=False, pack=1)
        return t

    @gluon.jit
    def _probe_smid():
        """The SM a program runs on (%smid), as an int64: for a tile's TRACE probe (which programs share an SM)."""
        return gl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=gl.int32, is_pure=False,
                                         pack=1).to(gl.int64)

    @gluon.jit
    def _v5_part(meta_ptr, META_COLS: gl.constexpr):
        """This program's slice of the schedule: (begin_req, begin_block, end_req, end_block, begin_split)."""
        meta = meta_ptr + gl.program_id(0) * META_COLS
        return gl.load(meta + 0), gl.load(meta + 1), gl.load(meta + 2), gl.load(meta + 3), gl.load(meta + 4)

    @gluon.jit
    def _v5_next_part(meta_ptr, META_COLS: gl.constexpr):
        """(next_req, next_block): where the next program's slice starts, -1 for the last program. A fresh schedule
        hands a request cut at this program's end to the next one (the stale-schedule check, _v5_flag_stale)."""
        last_part = gl.program_id(0) == gl.num_programs(0) - 1
        meta = meta_ptr + gl.program_id(0) * META_COLS
        return (gl.load(meta + META_COLS, mask=not last_part, other=-1),
                gl.load(meta + META_COLS + 1, mask=not last_part, other=-1))

    @gluon.jit
    def _v5_pages(seqlens_ptr, req, begin_req, begin_block, end_req, end_block, max_blocks):
        """(s_k, lo, hi): request req's length and the pages [lo, hi) this program computes (none if hi <= lo)."""
        s_k = gl.load(seqlens_ptr + req)
        n_pages = gl.minimum(gl.cdiv(s_k, 64), max_blocks)  # never read past the request's row of the table
        lo = gl.where(req == begin_req, begin_block, 0)
        hi = gl.minimum(gl.where(req == end_req, end_block, n_pages), n_pages)
        return s_k, lo, hi

    @gluon.jit
    def _v5_piece(num_splits_ptr, req, begin_req, begin_split):
        """(partial slot, pieces) of this program's piece of request req: the request is cut into `pieces` (the
        prefix sum num_splits says how many and where their partial slots start); this program's piece is the
        first of its slice's first request at index begin_split, else index 0."""
        first_slot = gl.load(num_splits_ptr + req)
        pieces = gl.load(num_splits_ptr + req + 1) - first_slot
        return first_slot + gl.where(req == begin_req, begin_split, 0), pieces

    @gluon.jit
    def _v5_softmax(s, first_key, n_visible, m_prev, qk_scale, s_cols: gl.constexpr, N: gl.constexpr):
        """Mask and scale N keys' scores; (P, new running max, the max to subtract (0 for an all -inf row))."""
        s = _v5_masked_scores(s, first_key, n_visible, qk_scale, s_cols, N)
        return _v5_probs(s, m_prev, gl.max(s, axis=1))  # (in the Gluon tiles the max crosses the two warpgroups)

    @gluon.jit
    def _v5_masked_scores(s, first_key, n_visible, qk_scale, s_cols: gl.constexpr, N: gl.constexpr):
        """N keys' scores scaled (log2 units), -inf past each row's visible keys."""
        keys = first_key + gl.arange(0, N, layout=s_cols)
        return gl.where(keys[None, :] < n_visible[:, None], s * qk_scale, float("-inf"))

    @gluon.jit
    def _v5_probs(s, m_prev, m_tile):
        """(P, new running max, the max to subtract (0 for an all -inf row)) from masked scores and their row max."""
        m_new = gl.maximum(m_prev, m_tile)
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
        return gl.exp2(s - m_use[:, None]), m_new, m_use

    @gluon.jit
    def _v5_online_softmax(s, first_key, n_visible, m_i, l_i, qk_scale, s_cols: gl.constexpr, N: gl.constexpr):
        """One step of the online softmax over N keys' scores: (P, alpha (the old sums' and outputs' rescale), the
        new running max, the new running sum)."""
        p, m_new, m_use = _v5_softmax(s, first_key, n_visible, m_i, qk_scale, s_cols, N)
        alpha = gl.exp2(m_i - m_use)
        return p, alpha, m_new, l_i * alpha + gl.sum(p, axis=1)

    @gluon.jit
    def _v5_start(m_start, heads_per_kv, s_k, s_q, CAUSAL: gl.constexpr, s_rows: gl.constexpr,
                  o_layout: gl.constexpr, BLOCK_M: gl.constexpr = 64):
        """A BLOCK_M-row tile's state at the start of a request: its rows, their tokens and visible keys (all s_k,
        or bottom-right causal), the running max and sum, and the [BLOCK_M, 512] output accumulator."""
        rows = m_start + gl.arange(0, BLOCK_M, layout=s_rows)
        tok = rows // heads_per_kv
        if CAUSAL:
            n_visible = s_k - s_q + 1 + tok
        else:
            n_visible = tok * 0 + s_k
        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=s_rows)
        l_i = gl.zeros([BLOCK_M], gl.float32, layout=s_rows)
        return rows, tok, n_visible, m_i, l_i, gl.zeros([BLOCK_M, 512], gl.float32, layout=o_layout)

    @gluon.jit
    def _v5_page_id(block_table_row, i, hi, SUB: gl.constexpr, PAGE: gl.constexpr):
        """Block id of key step i (0 past the request's last step: such an id is never used)."""
        return gl.load(block_table_row + (i * SUB) // PAGE, mask=i < hi, other=0)

    @gluon.jit
    def _v5_issue(k_desc, page, i, num_blocks, ok_ptr, bars, slot, k_buf, kr_buf,
                  SUB: gl.constexpr, CHUNK: gl.constexpr, PAGE: gl.constexpr, FINE: gl.constexpr):
        """Start the TMA copies of key step i (keys i·SUB .. i·SUB+SUB-1 of a request, in block `page`) into
        k_buf [SUB, 512] and kr_buf [SUB, 64]: nine SUB x 64 boxes. FINE: box c completes on bars[slot·9 + c], so
        the score products can start on the first columns while the rest is still arriving; else all nine on
        bars[slot·9] (one wait per step)."""
        bad = (page < 0) | (page >= num_blocks)
        gl.store(ok_ptr, 0, mask=bad)  # a bad id is reported (the ok flag cleared), never followed
        row = gl.where(bad, -PAGE, page * PAGE + (i * SUB) % PAGE)  # out of bounds: the copy engine fills zeros
        if not FINE:
            mbarrier.expect(bars.index(slot * 9), SUB * 9 * CHUNK * 2)
        for c in gl.static_range(9):
            bar = bars.index(slot * 9 + c) if FINE else bars.index(slot * 9)
            if FINE:
                mbarrier.expect(bar, SUB * CHUNK * 2)
            if c < 8:
                tma.async_copy_global_to_shared(k_desc, [row, c * CHUNK], bar, k_buf.slice(c * CHUNK, CHUNK, dim=1))
            else:
                tma.async_copy_global_to_shared(k_desc, [row, 8 * CHUNK], bar, kr_buf)

    @gluon.jit
    def _v5_flag_stale(ok_ptr, req, s_k, n_pages, begin_req, begin_block, end_req, end_block, next_req, next_block,
                       max_blocks):
        """Clear the ok flag if this program's part of the schedule cannot have been built for request req's length
        s_k (n_pages pages): it would skip pages or leave a partial unwritten; or if the length is negative or more
        than the block table holds. next_req / next_block: where the next part starts (-1 for the last part)."""
        stale = (req == begin_req) & (begin_block > 0) & (begin_block >= n_pages)
        stale |= (req == end_req) & (end_block < n_pages) & ((next_req != req) | (next_block != end_block))
        stale |= (s_k < 0) | (n_pages > max_blocks)  # a length the block table cannot hold
        gl.store(ok_ptr, 0, mask=stale)

    @gluon.jit
    def _v5_request(seqlens_ptr, ok_ptr, num_splits_ptr, block_table_ptr, stride_btb, req, begin_req, begin_block,
                    end_req, end_block, begin_split, next_req, next_block, max_blocks):
        """A page-at-a-time tile's start of request req: (s_k, lo, hi, part_slot, pieces, bt_row), its length and the
        pages this program computes (_v5_pages), its partial slot and pieces (_v5_piece) and its block-table row,
        after the stale-schedule check (_v5_flag_stale)."""
        s_k, lo, hi = _v5_pages(seqlens_ptr, req, begin_req, begin_block, end_req, end_block, max_blocks)
        _v5_flag_stale(ok_ptr, req, s_k, gl.cdiv(s_k, 64), begin_req, begin_block, end_req, end_block, next_req,
                       next_block, max_blocks)
        part_slot, pieces = _v5_piece(num_splits_ptr, req, begin_req, begin_split)
        return s_k, lo, hi, part_slot, pieces, block_table_ptr + req.to(gl.int64) * stride_btb

    @gluon.jit
    def _v5_store(acc, m_i, l_i, rows, tok, req, slot, pieces, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, s_q, h_q,
                  heads_per_kv, rows_per_kv, m_start, o_rows: gl.constexpr, o_cols: gl.constexpr, COL0: gl.constexpr,
                  NCOLS: gl.constexpr, WRITE_LSE: gl.constexpr, BLOCK_M: gl.constexpr = 64,
                  PERM32: gl.constexpr = False, LINES: gl.constexpr = 0):
        """A tile's end of a request: O / l for output columns COL0 .. COL0+NCOLS-1 (and, if WRITE_LSE, the LSE) to
        the output when the request is one piece, else as an fp32 partial in partial slot `slot` for the combine
        kernel. rows / tok: the tile's query rows and their tokens, in the layout of m_i and l_i. PERM32: acc's
        column n is output column COL0 + 4·(n % 32) + n // 32 (v5_fp8_reg.py's order inside a 128-column slice).
        LINES (a [64, 256] tile of one warpgroup, acc in the wgmma layout, where a thread holds 2 adjacent columns):
        O is first moved by shuffles inside each warp (one lane bit swapped with one register bit, the one exchange
        Triton 3.6 lowers without shared memory) so that a thread holds 4 adjacent columns: half the store
        instructions, 16 bytes each for the fp32 partial (8 for the bf16 output). LINES 0: the accumulator's layout;
        1: moved for the output and the partials; 2: for the output only."""
        has_keys = l_i > 0
        l_safe = gl.where(has_keys, l_i, 1.0)
        o = acc / gl.convert_layout(l_safe, o_rows)[:, None]
        lse = (m_i + gl.log2(l_safe)) * 0.6931471805599453
        if LINES != 0:  # the moved layout below is written for one warpgroup's [64, 256] accumulator
            gl.static_assert(BLOCK_M == 64 and NCOLS == 256, "_v5_store: LINES needs BLOCK_M 64 and NCOLS 256")
        st: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 1], [0, 2], [8, 0], [0, 16], [0, 32], [0, 64], [0, 128]],
            lane_bases=[[0, 8], [0, 4], [1, 0], [2, 0], [4, 0]], warp_bases=[[16, 0], [32, 0]], block_bases=[],
            shape=[64, 256])
        if LINES == 1 or (LINES == 2 and pieces == 1):
            _v5_store_o(gl.convert_layout(o, st), req, slot, pieces, out_ptr, part_out_ptr, s_q, h_q, heads_per_kv,
                        rows_per_kv, m_start, gl.SliceLayout(1, st), gl.SliceLayout(0, st), COL0, NCOLS, BLOCK_M,
                        PERM32)
        else:
            _v5_store_o(o, req, slot, pieces, out_ptr, part_out_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start,
                        o_rows, o_cols, COL0, NCOLS, BLOCK_M, PERM32)
        if WRITE_LSE:
            row_ok = rows < rows_per_kv
            head = rows % heads_per_kv
            if pieces == 1:
                gl.store(lse_ptr + (req.to(gl.int64) * h_q + head) * s_q + tok, gl.where(has_keys, lse, float("inf")),
                         mask=row_ok)
            else:
                gl.store(part_lse_ptr + (slot.to(gl.int64) * s_q + tok) * h_q + head,
                         gl.where(has_keys, lse, float("-inf")), mask=row_ok)

    @gluon.jit
    def _v5_store_o(o, req, slot, pieces, out_ptr, part_out_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start,
                    o_rows: gl.constexpr, o_cols: gl.constexpr, COL0: gl.constexpr, NCOLS: gl.constexpr,
                    BLOCK_M: gl.constexpr, PERM32: gl.constexpr):
        """_v5_store's output columns: o (O / l, in the layout whose row and column slices are o_rows, o_cols) to the
        output (one piece) or to partial slot `slot` (fp32)."""
        D_V: gl.constexpr = 512
        o_rows_idx = m_start + gl.arange(0, BLOCK_M, layout=o_rows)
        o_ok = o_rows_idx < rows_per_kv
        o_tok = o_rows_idx // heads_per_kv
        o_head = o_rows_idx % heads_per_kv
        cols = gl.arange(0, NCOLS, layout=o_cols)
        if PERM32:
            cols = 4 * (cols % 32) + cols // 32
        cols = COL0 + cols
        if pieces == 1:
            orow = (req.to(gl.int64) * s_q + o_tok) * h_q + o_head
            gl.store(out_ptr + orow[:, None] * D_V + cols[None, :], o.to(out_ptr.dtype.element_ty),
                     mask=o_ok[:, None])
        else:
            orow = (slot.to(gl.int64) * s_q + o_tok) * h_q + o_head
            gl.store(part_out_ptr + orow[:, None] * D_V + cols[None, :], o, mask=o_ok[:, None])

    @gluon.jit
    def _v5_kernel(
        q_ptr, k_desc, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr,
        meta_ptr, num_splits_ptr, ok_ptr,
        stride_qb, stride_qs, stride_qh, stride_btb,
        s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks, max_blocks,
        qk_scale,
        CAUSAL: gl.constexpr, META_COLS: gl.constexpr, SUB: gl.constexpr, STAGES: gl.constexpr,
        MODE: gl.constexpr, FINE: gl.constexpr, num_warps: gl.constexpr,
    ):
        # SUB keys per step (64: a page; 32 or 16: part of one), STAGES steps in the shared-memory ring.
        # MODE 0 computes; 1 only loads (no MMA, no softmax); 2 only computes (no copies): for timing the parts.
        # FINE: each 64-column box of a step is multiplied as soon as it lands (FlashMLA's fine-grained TMA-GEMM
        # pipelining), instead of after the whole step.
        BLOCK_M: gl.constexpr = 64
        PAGE: gl.constexpr = 64
        CHUNK: gl.constexpr = 64
        N_CHUNKS: gl.constexpr = 9
        D_V: gl.constexpr = 512
        STEPS_PER_PAGE: gl.constexpr = PAGE // SUB
        # layouts: S and O both split over the two warpgroups along their columns (keys, output columns)
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                           instr_shape=[16, SUB // 2, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                           instr_shape=[16, 256, 16])
        s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
        s_cols: gl.constexpr = gl.SliceLayout(0, s_layout)
        o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
        o_cols: gl.constexpr = gl.SliceLayout(0, o_layout)
        smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        p_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=SUB * 2 if SUB < 64 else 128,
                                                      element_bitwidth=16, rank=2)
        zl: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        dtype: gl.constexpr = q_ptr.dtype.element_ty

        # block shapes must be powers of two: the 576 columns are kept as 512 (latent, also V) + 64 (RoPE)
        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, D_V], smem_layout)  # Q's latent part
        qr_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, CHUNK], smem_layout)  # Q's RoPE part
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, SUB, D_V], smem_layout)  # c_kv rows: K's latent part, V
        kr_smem = gl.allocate_shared_memory(dtype, [STAGES, SUB, CHUNK], smem_layout)  # k_rope rows
        p_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, SUB], p_layout)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES * 9, 1], mbarrier.MBarrierLayout())  # per box
        for st in gl.static_range(STAGES * 9):
            mbarrier.init(bars.index(st), count=1)

        m_start = (gl.program_id(1) % m_tiles) * BLOCK_M
        begin_req, begin_block, end_req, end_block, begin_split = _v5_part(meta_ptr, META_COLS)
        next_req, next_block = _v5_next_part(meta_ptr, META_COLS)

        it = 0  # key steps consumed by this program: ring slot it % STAGES, mbarrier phase (it // STAGES) % 2
        for req in range(begin_req, end_req + 1):
            s_k = gl.load(seqlens_ptr + req)
            n_pages = gl.cdiv(s_k, PAGE)
            _v5_flag_stale(ok_ptr, req, s_k, n_pages, begin_req, begin_block, end_req, end_block, next_req,
                           next_block, max_blocks)
            n_pages = gl.minimum(n_pages, max_blocks)  # never read past the request's row of the table
            lo = gl.where(req == begin_req, begin_block, 0) * STEPS_PER_PAGE
            hi_page = gl.minimum(gl.where(req == end_req, end_block, n_pages), n_pages)  # an empty request: none
            hi = gl.minimum(hi_page * STEPS_PER_PAGE, gl.cdiv(gl.minimum(s_k, n_pages * PAGE), SUB))
            part_slot, pieces = _v5_piece(num_splits_ptr, req, begin_req, begin_split)
            bt_row = block_table_ptr + req.to(gl.int64) * stride_btb

            gl.thread_barrier()  # every warp is done with the previous request's buffers
            if MODE != 2:
                for d in gl.static_range(STAGES - 1):  # prologue: the first STAGES-1 steps in flight
                    if lo + d < hi:
                        slot_d = (it + d) % STAGES
                        _v5_issue(k_desc, _v5_page_id(bt_row, lo + d, hi, SUB, PAGE), lo + d, num_blocks, ok_ptr,
                                  bars, slot_d, k_smem.index(slot_d), kr_smem.index(slot_d), SUB, CHUNK, PAGE, FINE)
            # the block id of the next step to issue is loaded one step ahead: its latency leaves the loop's path
            next_page = _v5_page_id(bt_row, lo + STAGES - 1, hi, SUB, PAGE)
            _v5_load_q(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv,
                       rows_per_kv, 0, N_CHUNKS, CHUNK, BLOCK_M, num_warps)
            fence_async_shared()
            gl.thread_barrier()

            rows, tok, n_visible, m_i, l_i, acc = _v5_start(m_start, heads_per_kv, s_k, s_q, CAUSAL, s_rows, o_layout)
            for i in range(lo, hi):
                slot = it % STAGES
                k_buf = k_smem.index(slot)
                if MODE != 2:
                    if i + STAGES - 1 < hi:  # that slot was released by the barrier that closed the last step
                        nslot = (it + STAGES - 1) % STAGES
                        _v5_issue(k_desc, next_page, i + STAGES - 1, num_blocks, ok_ptr, bars, nslot,
                                  k_smem.index(nslot), kr_smem.index(nslot), SUB, CHUNK, PAGE, FINE)
                    next_page = _v5_page_id(bt_row, i + STAGES, hi, SUB, PAGE)
                phase = (it // STAGES) % 2
                if MODE == 1 and FINE:
                    for c in gl.static_range(9):
                        mbarrier.wait(bars.index(slot * 9 + c), phase)
                if MODE != 2 and not FINE:  # the whole step, one barrier, before any product
                    mbarrier.wait(bars.index(slot * 9), phase)
                if MODE != 1:
                    # S = Q·Kᵀ over all 576 columns, box by box as the boxes land: warpgroup w computes keys
                    # w·SUB/2 .. (w+1)·SUB/2 - 1
                    s = gl.zeros([BLOCK_M, SUB], gl.float32, layout=s_layout)
                    if MODE == 0 and FINE:
                        for c in gl.static_range(8):
                            mbarrier.wait(bars.index(slot * 9 + c), phase)
                            s = warpgroup_mma(q_smem.slice(c * CHUNK, CHUNK, dim=1),
                                              k_buf.slice(c * CHUNK, CHUNK, dim=1).permute((1, 0)), s,
                                              use_acc=c > 0, is_async=True)
                    else:
                        s = warpgroup_mma(q_smem, k_buf.permute((1, 0)), s, use_acc=False, is_async=True)
                    if MODE == 0 and FINE:
                        mbarrier.wait(bars.index(slot * 9 + 8), phase)
                    s = warpgroup_mma(qr_smem, kr_smem.index(slot).permute((1, 0)), s, is_async=True)
                    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                    p, alpha, m_i, l_i = _v5_online_softmax(s, i * SUB, n_visible, m_i, l_i, qk_scale, s_cols, SUB)
                    p_smem.store(p.to(dtype))
                    valid = s_k - i * SUB  # rows of this step that hold keys (< SUB only at the end)
                    if valid < SUB:  # zero the rows past s_k in the V columns before P·V: they may hold NaN
                        zr = gl.arange(0, SUB, layout=gl.SliceLayout(1, zl))  # (their scores are masked above)
                        for c in gl.static_range(N_CHUNKS - 1):
                            view = k_buf.slice(c * CHUNK, CHUNK, dim=1)
                            x = view.load(zl)
                            view.store(gl.where((zr < valid)[:, None], x, gl.zeros_like(x)))
                    fence_async_shared()
                    gl.thread_barrier()  # both halves of P, and the zeroed rows, are in shared memory

                    # O = O·alpha + P·V: warpgroup w owns output columns 256w .. 256w+255
                    acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
                    acc = warpgroup_mma(p_smem, k_buf, acc, is_async=True)
                    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                gl.thread_barrier()  # both warpgroups are done with this slot and with P
                it += 1

            _v5_store(acc, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr, part_out_ptr,
                      part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start, o_rows, o_cols, 0, D_V, True)

        for st in gl.static_range(STAGES * 9):
            mbarrier.invalidate(bars.index(st))


# ---------------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------------
#: The Triton release whose Gluon Hopper API this kernel was written and tested against.
GLUON_TRITON = (3, 6)


@functools.lru_cache(maxsize=1)
def _triton_version() -> tuple[int, int]:
    import triton

    major, minor = (int(x) for x in triton.__version__.split(".")[:2])
    return major, minor


def gluon_unavailable(q: torch.Tensor, k_cache: torch.Tensor, h_kv: int) -> str | None:
    """Why the Gluon tile cannot run these inputs here (None when it can). Sizes and attributes only, no sync."""
    if GLUON_IMPORT_ERROR is not None:
        return f"Gluon's Hopper API does not import here ({GLUON_IMPORT_ERROR})"
    if _triton_version() != GLUON_TRITON:
        return (f"v5's Gluon tile was written for the Gluon API of Triton {GLUON_TRITON[0]}.{GLUON_TRITON[1]}; "
                f"this is Triton {'.'.join(map(str, _triton_version()))}")
    if q.device.type != "cuda":
        return "Gluon kernels need a CUDA device (they have no interpreter)"
    if _capability(q.device.index if q.device.index is not None else torch.cuda.current_device()) != (9, 0):
        return "the Gluon tile uses wgmma and TMA: it needs an sm_90 (Hopper) GPU"
    if h_kv != 1:
        return f"h_kv = {h_kv}: the Gluon tile reads one latent KV head (DeepSeek's MLA has one)"
    n, page, _, d = k_cache.shape
    if k_cache.stride(1) != d or k_cache.stride(0) != page * d or k_cache.data_ptr() % 16:
        return "k_cache's rows must be contiguous and 16-byte aligned for TMA"
    return None


_CAPABILITY: dict[int, tuple[int, int]] = {}


def _capability(index: int) -> tuple[int, int]:
    if index not in _CAPABILITY:
        _CAPABILITY[index] = torch.cuda.get_device_capability(index)
    return _CAPABILITY[index]


@dataclass(frozen=True)
class GluonConfig:
    """Launch parameters of the Gluon tile: keys per step and steps in the shared-memory ring."""

    sub: int = 64  # keys per step: 64 (one page), 32 or 16
    stages: int = 2  # steps in flight + 1; shared memory 72 KB (Q) + stages·sub·1152 B + 64·sub·2 B (P)
    mode: int = 0  # 0: compute; 1: loads only; 2: MMAs only (timing the parts, results meaningless; the seesaw
    #                tile reads `fine` and mode 2 from this too); the 16-row FP8 tile only: 3 its page loads alone,
    #                4 its dequantization alone; the FP8 seesaw tile (v5_fp8_seesaw.py): 3 no dequantization, 4 a
    #                quarter of it
    fine: bool = False  # multiply each 64-column box as soon as it lands
    early: int = 1  # the seesaw tile: when warpgroup 1 releases a pair's right halves (v5_seesaw._ss_consumer_at;
    #                 1, B's as soon as its product is done, measured 1-4 % faster than 0 at h_q 128, even at 64)
    max_first: bool = True  # the seesaw tile: warpgroup 0 publishes the row max before P (v5_seesaw's MAX_FIRST)
    opaque_views: bool = True  # the seesaw tile: its page slots' views rebuilt at every pair (v5_seesaw's OPAQUE)
    q_async: bool = True  # the seesaw tile: Q copied by cp.async (v5_seesaw's Q_ASYNC)
    store_lines: bool = True  # the seesaw tile: O moved to 16-byte stores first (v5_gluon._v5_store's LINES)
    lines_partials: bool = True  # with store_lines: the fp32 partials moved too, not only the output (probe: off)
    q_tma: bool = True  # the seesaw tile: each request's Q copied by the producer warp's TMA, issued once the
    #                     previous request's pages are done (v5_seesaw's Q_TMA; 3-6 % faster at h_q 64 and 128, 1k)
    warps: int = 0  # the 16-row FP8 tile: warps per program (0: its default, 4; 8: v5_fp8_mma.WIDE_WARPS, slower);
    #                 the warp-specialised 16-row tile (path "ws16"): its producer's warps (0: 4; 8: prepared)

    def __post_init__(self):
        # a value the kernels do not know would compile a tile that never releases its buffers (a hang), not an error
        if self.mode not in (0, 1, 2, 3, 4):
            raise ValueError(f"GluonConfig.mode must be 0, 1, 2, 3 or 4 (3 and 4: the 16-row FP8 tile and the FP8 "
                             f"seesaw tile only), got {self.mode!r}")
        if self.early not in (0, 1, 2, 3):
            raise ValueError(f"GluonConfig.early must be 0, 1, 2 or 3, got {self.early!r}")
        for name in ("fine", "max_first", "opaque_views", "q_async", "store_lines", "lines_partials", "q_tma"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GluonConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.warps not in (0, 4, 8):
            raise ValueError(f"GluonConfig.warps must be 0 (the tile's default), 4 or 8, got {self.warps!r}")

    def smem_bytes(self) -> int:
        return 64 * 576 * 2 + self.stages * self.sub * 576 * 2 + 64 * self.sub * 2


#: The configuration v5 launches (the fastest measured on the H200; see docs/results/).
DEFAULT_GLUON_CONFIG = GluonConfig()


_DESCRIPTORS: dict[tuple, object] = {}


@dataclass(frozen=True)
class _Address:
    """What a TMA descriptor needs of its tensor: the address and the dtype."""

    address: int
    dtype: torch.dtype

    def data_ptr(self) -> int:
        return self.address


def cached_descriptors(key: tuple, build):
    """The TMA descriptor(s) `build()` makes for `key` (the cache's address first, then what else shapes them), built
    once: a descriptor holds only the address, shape and strides, so one made for the same key is the same
    descriptor, and a serving engine's cache tensor gets it built once. The cache keeps the address, not the tensor
    (it must not keep gigabytes of freed caches alive), and forgets everything past 64 keys."""
    desc = _DESCRIPTORS.get(key)
    if desc is None:
        if len(_DESCRIPTORS) >= 64:
            _DESCRIPTORS.clear()
        desc = _DESCRIPTORS[key] = build()
    return desc


def rows_descriptor(name: str, t: torch.Tensor, rows: int, box_rows: int):
    """TMA descriptor over `t` (16-bit, contiguous rows of 576) as one [rows, 576] matrix: box_rows x 64 boxes,
    128-byte swizzle; cached by `name`, address, rows, dtype and box (cached_descriptors)."""
    d = t.shape[-1]

    def build():
        layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        return TensorDescriptor(_Address(t.data_ptr(), t.dtype), [rows, d], [d, 1], [box_rows, CHUNK], layout)
    return cached_descriptors((name, t.data_ptr(), rows, t.dtype, box_rows), build)


def _k_descriptor(k_cache: torch.Tensor, sub: int):
    """TMA descriptor over the cache as [num_blocks·64 rows, 576]: sub x 64 boxes (rows_descriptor)."""
    n, page = k_cache.shape[:2]
    return rows_descriptor("k", k_cache, n * page, sub)


_LAUNCH = FastLauncher(_v5_kernel) if gluon is not None else None


def launch_v5_gluon(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                    part_lse, ok_flag, config: GluonConfig | None = None):
    """Launch the Gluon tile over the schedule `meta`; partials of split requests go to part_out/part_lse."""
    cfg = config or DEFAULT_GLUON_CONFIG
    m_tiles = -(-dims.rows_per_kv // BLOCK_M)
    _LAUNCH(
        (meta.shape[0], m_tiles),
        q, _k_descriptor(k_cache, cfg.sub), block_table, cache_seqlens, out, lse, part_out, part_lse, meta,
        num_splits, ok_flag,
        q.stride(0), q.stride(1), q.stride(2), block_table.stride(0),
        dims.s_q, dims.h_q, dims.heads_per_kv, dims.rows_per_kv, m_tiles, dims.num_blocks, dims.max_blocks,
        dims.scale * LOG2E,
        CAUSAL=causal, META_COLS=meta.shape[1], SUB=cfg.sub, STAGES=cfg.stages, MODE=cfg.mode, FINE=cfg.fine,
        num_warps=NUM_WARPS,
    )
