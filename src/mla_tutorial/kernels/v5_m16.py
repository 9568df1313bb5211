# version 5, bf16 cache, 16-row tiles fed by TMA: the FP8 register tile's schedule (v5_fp8_reg.py) on a bf16 cache
# (stage 4; forced with path "m16", not routed: measured slower than the plain-Triton small tile, v5_small.py, which
# v5 runs at up to 16 query rows per KV head).
#
# What it changes against v5_small.py, the tile v5 runs at h_q 16 today (same schedule, combine and semantics):
#   * Gluon instead of plain Triton: mma.sync on 16 query rows (v5_fp8_mma.py's products, _m16_scores and
#     _m16_values: S = Q·Kᵀ [16, KEYS] with the warps splitting the keys, O += P·V [16, 512] as four [16, 128]
#     accumulators with the warps splitting each one's columns), operands read from shared memory;
#   * each step's KEYS cache rows come by TMA, two copies issued by one thread: c_kv as one [8 chunks, KEYS rows, 64]
#     box (a 3-D descriptor over the cache whose chunk stride is 64 values and row stride 576: the bytes of the
#     [KEYS, 512] slot in the 128-byte swizzle, chunk after chunk) and k_rope as a [KEYS, 64] box. A ring of SLOTS
#     slots on mbarriers, one mbarrier allocation per copy (Triton 3.6's barrier analysis puts a bar.sync between two
#     operations on one mbarrier allocation: kernel.md §12), step t + 1's mbarriers armed before S's row-max barrier
#     and its copies issued right after it (in flight during the softmax, P and P·V), as v5_fp8_reg.py does;
#   * S's row max crosses the warps through num_warps floats a row with one barrier (_m16_row_max), the row sums stay
#     per key in each warp until the request ends: three barriers a step (the step is in, the row max, P);
#   * TMA copies whole steps: the rows past a request's keys (or all of a bad block id's, block 0 read instead) are
#     zeroed once they land (the last step of a request only).
# Variants (M16_VARIANTS, read at launch; the benchmark times each): KEYS 32 with 4 warps and two slots (91 KB of
# shared memory: two programs per SM) or KEYS 64 with 8 warps and two slots (164 KB: one program per SM, which
# wants a schedule of one part per SM).
# Why (docs/results/v5_notes.md, tenth session): the FP8 register tile at h16 (0.154 ms at b 128, s_k 4k) already beats
#   bf16 v5's small tile (0.184) and FlashMLA's bf16 call (0.168) while dequantizing every value twice; its page loop
#   minus the dequantization is this tile's, on 1.76x the bytes. The TMA copies took 10 % off that tile.
# Expected (H200, b 128, s_k 4096, h_q 16): bound by the 604 MB it reads (0.141 ms at the copy ceiling); ~0.15-0.17
#   ms against 0.184 for the small tile and ~0.168 for FlashMLA (FlashMLA / ours ~1.0-1.1; issue 8's target 0.95).
#   Risks: the products alone of the 16-row tile took 0.117 ms (v5_fp8_mma.py, sixth session), so the tile is not
#   far from compute-bound; 32-key steps double the per-key barriers and softmax.
# sm_90a (scripts/compile_offline.py m16:k32w4 / m16:k64w8): 234 / 165 registers, no spills, 93,728 / 168,992 B of
#   shared memory, 3 barriers a step.
# Bought (H200, 2026-12-02, tenth session; docs/results/probes/m16_first_h200_2026-12-02.json, FlashMLA in the same
#   run, copy 4,272 GB/s): correct on its first run (12 GPU cases: the hostile lengths, h_q 1-128, s_q 1-2, fp16, a
#   bad block id) and SLOWER than the small tile it would replace: b 128, h16, s_k 4k 0.194 ms (k32w4) and 0.202
#   (k64w8) against 0.184 for v5's small tile and 0.168 for FlashMLA; 8k 0.336 / 0.364 against 0.321 / 0.315; ~N
#   0.196 / 0.210 against 0.187 / 0.175. At 0.74 of the copy ceiling it streams less than the small tile (0.77) and
#   FlashMLA (0.85): one 32-key step (36 KB) in flight per program, two programs per SM, is less than the bytes in
#   flight the copy ceiling needs, and a 64-key step leaves room for one program per SM only. Not routed; kept as the
#   measured step (path "m16").
"""Version 5 over a bf16 cache, 16-row tiles with mma.sync, steps brought in by TMA (Gluon, Triton 3.6)."""

from __future__ import annotations

import torch

from .common import LOG2E
from .launch import FastLauncher
from .v5_fp8_gluon import _fp8_page
from .v5_fp8_mma import _m16_scores, _m16_start, _m16_store, _m16_values
from .v5_gluon import (
    TensorDescriptor,
    _Address,
    _k_descriptor,
    _v5_load_q,
    _v5_masked_scores,
    _v5_next_part,
    _v5_part,
    _v5_probs,
    _v5_request,
    cached_descriptors,
    fence_async_shared,
    gl,
    gluon,
    mbarrier,
    tma,
)

#: The tile's variants by name: (keys a step, slots in the ring, warps a program, programs an SM). The benchmark
#: (scripts/gpu_m16_probe.py) times each; M16_DEFAULT is what path "m16" runs.
M16_VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "k32w4": (32, 2, 4, 2),
    "k64w8": (64, 2, 8, 1),
}
M16_DEFAULT = "k32w4"
M16_MAXNREG = 255  # two programs of 4 warps (or one of 8) may use the whole register file


if gluon is not None:

    @gluon.jit
    def _m16_row_max(s, scratch, rows_l: gl.constexpr, KEYS: gl.constexpr, num_warps: gl.constexpr):
        """S's row max [16] across the warps with one barrier: each warp's partial max over its keys (S's columns
        8w .. 8w + 7 of each 8·num_warps) into scratch [16, num_warps], a barrier, then every thread reads its two
        rows' partials. (The scratch is written again only after the next step's first barrier.)"""
        x = gl.reshape(s, [16, KEYS // (8 * num_warps), num_warps, 8])  # [row, repeat, warp, key of 8]
        scratch.store(gl.max(gl.max(x, axis=3), axis=1))  # [16, num_warps]: within each warp only
        gl.thread_barrier()
        if num_warps == 4:
            rl4: gl.constexpr = gl.DistributedLinearLayout(  # a thread's rows (g, g + 8), all partials of each
                reg_bases=[[0, 1], [0, 2], [8, 0]], lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]],
                warp_bases=[[0, 0], [0, 0]], block_bases=[], shape=[16, 4])
            return gl.convert_layout(gl.max(scratch.load(rl4), axis=1), rows_l, assert_trivial=True)
        else:
            rl8: gl.constexpr = gl.DistributedLinearLayout(
                reg_bases=[[0, 1], [0, 2], [0, 4], [8, 0]], lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]],
                warp_bases=[[0, 0], [0, 0], [0, 0]], block_bases=[], shape=[16, 8])
            return gl.convert_layout(gl.max(scratch.load(rl8), axis=1), rows_l, assert_trivial=True)

    @gluon.jit
    def _m16_expect(bk, br, slot, KEYS: gl.constexpr):
        """Arm slot `slot`'s two mbarriers (one allocation each) for a step's copies: c_kv, k_rope."""
        mbarrier.expect(bk.index(slot), KEYS * 512 * 2)
        mbarrier.expect(br.index(slot), KEYS * 64 * 2)

    @gluon.jit
    def _m16_issue(ckv_desc, kr_desc, ckv_ring, kr_ring, bk, br, slot, row):
        """Start the TMA copies of cache rows row .. row + KEYS - 1 into slot `slot` (armed by _m16_expect): c_kv as
        one [8, KEYS, 64] box (chunk-major, the [KEYS, 512] slot's bytes), k_rope [KEYS, 64]."""
        tma.async_copy_global_to_shared(ckv_desc, [0, row, 0], bk.index(slot), ckv_ring.index(slot))
        tma.async_copy_global_to_shared(kr_desc, [row, 512], br.index(slot), kr_ring.index(slot))

    @gluon.jit
    def _m16_zero_tail(k_buf, kr_buf, n_rows, KEYS: gl.constexpr, num_warps: gl.constexpr):
        """Rows n_rows .. KEYS - 1 of a slot (k_buf [KEYS, 512], kr_buf [KEYS, 64]) as zeros: TMA copies whole steps,
        and past a request's keys they may hold NaN (their scores are masked, but P·V must multiply zeros)."""
        lz: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        keep = (gl.arange(0, KEYS, layout=gl.SliceLayout(1, lz)) < n_rows)[:, None]
        for c in gl.static_range(8):
            chunk = k_buf.slice(64 * c, 64, dim=1)
            chunk.store(gl.where(keep, chunk.load(lz), 0.0))
        kr_buf.store(gl.where(keep, kr_buf.load(lz), 0.0))
        fence_async_shared()  # (these generic stores before the slot's next TMA write)

    @gluon.jit
    def _m16_row(bt_row, t, hi, s_k, num_blocks, ok_ptr, KEYS: gl.constexpr):
        """(first cache row, rows that hold keys) of step t of a request (KEYS keys a step, 64 a page): a bad block
        id is not followed (the ok flag is cleared; block 0 is copied and all its rows zeroed)."""
        spp: gl.constexpr = 64 // KEYS
        page, n_page = _fp8_page(bt_row, t // spp, hi, s_k, num_blocks, ok_ptr)
        return (page * 64 + (t % spp) * KEYS).to(gl.int32), n_page - (t % spp) * KEYS

    @gluon.jit
    def _v5_m16_kernel(
        q_ptr, ckv_desc, kr_desc, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr,
        meta_ptr, num_splits_ptr, ok_ptr,
        stride_qb, stride_qs, stride_qh, stride_btb,
        s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks, max_blocks,
        qk_scale,
        CAUSAL: gl.constexpr, META_COLS: gl.constexpr, KEYS: gl.constexpr, SLOTS: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        BM: gl.constexpr = 16
        SPP: gl.constexpr = 64 // KEYS  # steps a page
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, num_warps],
                                                      instr_shape=[16, 8])
        a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        b_op: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        rows_l: gl.constexpr = gl.SliceLayout(1, mma)
        cols_l: gl.constexpr = gl.SliceLayout(0, mma)
        smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        p_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=KEYS * 2 if KEYS < 64 else 128,
                                                      element_bitwidth=16, rank=2)
        dtype: gl.constexpr = q_ptr.dtype.element_ty

        q_smem = gl.allocate_shared_memory(dtype, [BM, 512], smem_layout)  # Q's latent part
        qr_smem = gl.allocate_shared_memory(dtype, [BM, 64], smem_layout)  # Q's RoPE part
        p_smem = gl.allocate_shared_memory(dtype, [BM, KEYS], p_layout)
        # the ring as the copies land: c_kv [8 chunks, KEYS, 64] a slot (seen as [KEYS, 512]: the same bytes), k_rope
        ckv_ring = gl.allocate_shared_memory(dtype, [SLOTS, 8, KEYS, 64], ckv_desc.layout)
        kr_ring = gl.allocate_shared_memory(dtype, [SLOTS, KEYS, 64], kr_desc.layout)
        ckv_view = ckv_ring._reinterpret(dtype, [SLOTS, KEYS, 512], smem_layout)
        bk = gl.allocate_shared_memory(gl.int64, [SLOTS, 1], mbarrier.MBarrierLayout())
        br = gl.allocate_shared_memory(gl.int64, [SLOTS, 1], mbarrier.MBarrierLayout())
        for k in gl.static_range(SLOTS):
            mbarrier.init(bk.index(k), count=1)
            mbarrier.init(br.index(k), count=1)
        mx_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
        mx_smem = gl.allocate_shared_memory(gl.float32, [BM, num_warps], mx_layout)  # the warps' partial row maxima

        m_start = (gl.program_id(1) % m_tiles) * BM
        begin_req, begin_block, end_req, end_block, begin_split = _v5_part(meta_ptr, META_COLS)
        next_req, next_block = _v5_next_part(meta_ptr, META_COLS)
        g = 0  # the program's steps so far, across requests: step g's slot g % SLOTS, its mbarriers' phase

        for req in range(begin_req, end_req + 1):
            s_k, lo, hi, part_slot, pieces, bt_row = _v5_request(
                seqlens_ptr, ok_ptr, num_splits_ptr, block_table_ptr, stride_btb, req, begin_req, begin_block, end_req,
                end_block, begin_split, next_req, next_block, max_blocks)
            t_lo = lo * SPP
            t_hi = gl.minimum(hi * SPP, gl.cdiv(s_k, KEYS))  # (no step wholly past the request's keys)

            fence_async_shared()  # every thread's reads and writes of the slots come before the copy engine's
            gl.thread_barrier()  # writes, and every warp is done with the previous request's Q and slots
            n_cur = 0
            if t_lo < t_hi:  # prologue: step t_lo in flight (step t + 1 goes during step t)
                row, n_cur = _m16_row(bt_row, t_lo, hi, s_k, num_blocks, ok_ptr, KEYS)
                _m16_expect(bk, br, g % SLOTS, KEYS)
                _m16_issue(ckv_desc, kr_desc, ckv_ring, kr_ring, bk, br, g % SLOTS, row)
            _v5_load_q(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv,
                       rows_per_kv, 0, 9, 64, BM, num_warps)

            rows, tok, n_visible, m_i, l_i, acc0, acc1, acc2, acc3 = _m16_start(m_start, heads_per_kv, s_k, s_q,
                                                                                CAUSAL, rows_l, mma)
            # each warp's row sums per key, summed across the warps once per request (not a reduction every step)
            l_keys = gl.zeros([BM, KEYS], gl.float32, layout=mma)
            for t in range(t_lo, t_hi):
                cur = g % SLOTS
                mbarrier.wait(bk.index(cur), (g // SLOTS) % 2)  # step t has landed: c_kv and k_rope
                mbarrier.wait(br.index(cur), (g // SLOTS) % 2)
                k_buf = ckv_view.index(cur)
                kr_buf = kr_ring.index(cur)
                if n_cur < KEYS:  # the request's last step (or a bad block id): its rows past the keys as zeros
                    _m16_zero_tail(k_buf, kr_buf, n_cur, KEYS, num_warps)
                gl.thread_barrier()  # ... for every thread, Q is in, and step t - 1's slot is free

                s = _m16_scores(q_smem, qr_smem, k_buf, kr_buf, KEYS, mma, a_op, b_op)
                s = _v5_masked_scores(s, t * KEYS, n_visible, qk_scale, cols_l, KEYS)
                nxt = (g + 1) % SLOTS
                row_n, n_next = _m16_row(bt_row, t + 1, hi, s_k, num_blocks, ok_ptr, KEYS)
                if t + 1 < t_hi:
                    _m16_expect(bk, br, nxt, KEYS)
                row_max = _m16_row_max(s, mx_smem, rows_l, KEYS, num_warps)
                if t + 1 < t_hi:  # step t + 1, in flight from here (its slot was step t + 1 - SLOTS's)
                    _m16_issue(ckv_desc, kr_desc, ckv_ring, kr_ring, bk, br, nxt, row_n)
                p, m_new, m_use = _v5_probs(s, m_i, row_max)
                alpha = gl.exp2(m_i - m_use)  # (the old sums' and outputs' rescale)
                l_keys = l_keys * alpha[:, None] + p
                m_i = m_new
                p_smem.store(p.to(dtype))
                gl.thread_barrier()  # every warp's keys of P are in
                acc0, acc1, acc2, acc3 = _m16_values(p_smem, k_buf, acc0, acc1, acc2, acc3, alpha, a_op, b_op)
                n_cur = n_next
                g += 1
            l_i = gl.sum(l_keys, axis=1)

            _m16_store(acc0, acc1, acc2, acc3, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr,
                       part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start, rows_l, cols_l)
        for k in gl.static_range(SLOTS):
            mbarrier.invalidate(bk.index(k))
            mbarrier.invalidate(br.index(k))


_LAUNCH = FastLauncher(_v5_m16_kernel) if gluon is not None else None


def ckv_descriptor(k_cache: torch.Tensor, keys: int):
    """TMA descriptor over a bf16 (or fp16) cache [num_blocks, 64, 1, 576] (rows contiguous) as [8 chunks,
    num_blocks·64 rows, 64]: chunk stride 64 values, row stride 576, one [8, keys, 64] box in the 128-byte swizzle (the
    bytes of a [keys, 512] slot, chunk after chunk). Cached (v5_gluon.cached_descriptors)."""
    n = k_cache.shape[0]

    def build():
        layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=3)
        return TensorDescriptor(_Address(k_cache.data_ptr(), k_cache.dtype), [8, n * 64, 64], [64, 576, 1],
                                [8, keys, 64], layout)
    return cached_descriptors(("ckv", k_cache.data_ptr(), n, k_cache.dtype, keys), build)


def m16_variant(name: str | None = None) -> tuple[int, int, int, int]:
    """(keys a step, slots, warps, programs an SM) of variant `name` (default M16_DEFAULT)."""
    name = name or M16_DEFAULT
    if name not in M16_VARIANTS:
        raise ValueError(f"unknown 16-row bf16 tile variant {name!r}: expected one of {sorted(M16_VARIANTS)}")
    return M16_VARIANTS[name]


def launch_v5_m16(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                  part_lse, ok_flag, variant: str | None = None):
    """Launch the TMA-fed 16-row bf16 tile over the schedule `meta` (k_cache bf16 or fp16, rows contiguous and
    16-byte aligned: gluon_unavailable checks it)."""
    keys, slots, warps, _ = m16_variant(variant)
    m_tiles = -(-dims.rows_per_kv // 16)
    _LAUNCH(
        (meta.shape[0], m_tiles),
        q, ckv_descriptor(k_cache, keys), _k_descriptor(k_cache, keys), block_table, cache_seqlens, out, lse,
        part_out, part_lse, meta, num_splits, ok_flag,
        q.stride(0), q.stride(1), q.stride(2), block_table.stride(0),
        dims.s_q, dims.h_q, dims.heads_per_kv, dims.rows_per_kv, m_tiles, dims.num_blocks, dims.max_blocks,
        dims.scale * LOG2E,
        CAUSAL=causal, META_COLS=meta.shape[1], KEYS=keys, SLOTS=slots, num_warps=warps, maxnreg=M16_MAXNREG,
    )
