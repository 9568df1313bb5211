# version 5, FP8 cache, 16-row register tile on wgmma: v5_fp8_reg.py's page work with both products transposed, so
# that the dequantized page is wgmma's register A operand (stage 5; path "wgr": v5 runs it for an FP8 cache at up to
# 16 query rows per KV head on sm_90 since 2026-12-03).
#
# What it changes against v5_fp8_reg.py (same TMA ring of raw rows, same dequantization into the operand registers,
# fp16 S with Q's rows scaled into fp16's range, bf16 V, each tile's scale on S and P per key, schedule, semantics):
#   * the products are one warpgroup's asynchronous wgmma instead of each warp's mma.sync, on the transposes:
#       - S^T = K·Q^T [64 keys, 16 rows] (m64n16k16): A = K, each scale tile's e4m3 words dequantized (fp16, by
#         the hardware conversion) into the A operand registers; B = Q^T, Q's latent part in fp16 in shared memory
#         (_reg_load_q16: the same columns' permutation). RoPE: A = k_rope from the raw slot, columns permuted as
#         Q's, B = Q_rope^T. One wgmma a 64-column half of a scale tile, issued as soon as its operand is built,
#         the next half dequantized under it; each tile's product (8 registers) is scaled per key and added to S^T
#         once it is in;
#       - O^T = V^T·P^T [512 columns, 16 rows] (m64n16k16, two m64 blocks a scale tile): A = V^T from pairs of
#         keys' words (_E4M3_PAIRS_LO / _HI: byte e of the even key's and of the odd key's word are one bf16 pair,
#         two of the four bytes an m64 block), B = P^T
#         times the tile's scales, four [16, 64] copies in shared memory as before. Each of the 512 output rows of
#         a tile is a column of the cache permuted inside its tile (rows 64·e_hi + 16·w + 8·e_lo + g hold column
#         4·(8w + g) + 2·e_hi + e_lo), put back in v5_fp8_reg.py's order by a relabelling before the store.
#     N is the tile's 16 rows: nothing is padded (FlashMLA's bf16 kernel and the seesaw tiles compute 64 rows).
#   * the softmax runs down S^T's columns: each warp holds 16 keys of every row, so the running max crosses the
#     four warps through 256 bytes of shared memory with one barrier (_wgr_col_max), as v5_fp8_reg.py's row max
#     does; the row sums stay per key (8 registers) until the request ends.
#   * three barriers a page, as v5_fp8_reg.py: the page is in (and page i - 1's slot free), S's max, P.
# Why (docs/results/v5_notes.md, "A plan for 64 and 128 heads"; docs/fp8.md §5): v5_fp8_reg.py is latency-bound on
#   its operand chains (issue slots 33 % busy, 0.5 eligible warps per scheduler) with 136 mma.sync a warp a page,
#   each waiting on its operands; a 16-row tile's products alone took 0.099-0.116 ms, about what issue 9's 1.5 at
#   h16 allows for the whole call. wgmma is issued once per warpgroup for 16x the work of an mma.sync (68 a page
#   instead of 544), runs asynchronously while the warps dequantize the next operand, and its accumulators are
#   O^T's 64 registers a thread and S^T's 8 each (at most three live) against v5_fp8_reg.py's 64 + 16.
# sm_90a (scripts/compile_offline.py v5fwgr, Triton 3.6): 255 registers, 156 bytes of spills (loop-invariant
#   descriptors and pointers; ~8 LDL a page), 111,152 B of shared memory (two programs per SM), a page loop of ~1,600
#   instructions a warp (v5_fp8_reg.py: ~1,280): 68 HGMMA.64x16x16, 128 F2FP, 160 PRMT, 128 HMUL2, 119 LDS, 12 MUFU,
#   3 BAR.SYNC. Each product is issued per 16 registers of operand (half a scale tile for S^T, one m64 block for
#   O^T), at most two in flight: with a whole tile's operand per wgmma the first version spilled 372 bytes.
# Expected (H200, b 128, s_k 4096, h_q 16): 0.115-0.160 ms against 0.134 for v5_fp8_reg.py and ~0.166 for FlashMLA
#   (FlashMLA / ours 1.04-1.44; target 1.5); no confident direction: the dequantization and its shared-memory reads
#   are the same, the products' issue and waiting are what changes.
# Bought (H200, twenty-first session; docs/results/fp8_bench_wgr_h200_2026-12-03.json): 0.128 ms at s_k 4k against
#   0.134 for v5_fp8_reg.py and 0.168 for FlashMLA (FlashMLA / ours 1.32), 0.226 / 0.231 at 8k (1.39), 0.142 / 0.146
#   at ~N(4096, 2048) (1.24), 0.056 / 0.062 at 1k; correct on its first GPU run. On the GPU image's ptxas: 255
#   registers, 32 bytes of spills. Without its dequantization (mode 3) it takes 0.118 ms at 4k: issue 9's 1.5 asks
#   0.112 for the whole call. Nsight Compute (probes/ncu_fp8_wgr_*): two programs per SM, 0.64 eligible warps per
#   scheduler, one issue every 2.1 cycles, DRAM at 61 % of peak: latency-bound at 12.5 % occupancy.
# Where its fixed ~23 µs go (twenty-second session; its TRACE stamps, scripts/gpu_wgr_trace.py, h16 b 128 s_k 4k): ~10
#   µs from a program's entry to its first page landed (the schedule row and the request's length 2.4, the block-table
#   entry 0.9, the first copy's flight 6.4: every program's first 41 KB asked for at once), ~4.5 µs of row sums,
#   stores and exit, ~8 µs between the median program's exit and the last one's (each program's own variation in its
#   pages' work: neither a request's two halves nor an SM's two programs end together, once the 8 SMs holding one
#   program are set apart; twenty-third session). Tried there and not kept: page i + 1's copy issued as soon as
#   page i has landed (page waits fell, p90 0.77 -> 0.29 µs, but each page's work rose 0.22 µs: one bar.sync more a
#   page; the call 7 % slower, 0.137 against 0.128 ms at 4k), the request's first block-table entry read beside its
#   length (~0.1 µs), and the request's end through shared memory (row sums with one barrier, O / l staged in the
#   free raw slot, 16-byte stores: the end 1.3 µs shorter, 7 % faster at one page a request, but the GPU's ptxas then
#   spilled in the page loop, 9 local loads a page against 2, and the call was 11-17 % slower at 1k-8k, in one store
#   or a store a tile).
# MODE 4, the page work without bf16 (twenty-third session; v5's default since the twenty-fourth, WGR_MODE = 4): V's
#   operand by one prmt a word of pairs and the hardware's e4m3x2 -> f16x2 conversion instead of the bf16 bit trick
#   (prmt, shift, mask, multiply: 564 of the page loop's 1,649 instructions a warp), P·scale then in fp16 (one wgmma
#   type): 1,329 instructions. P·scale as it is: 3.0 % faster at 4k, 4.7 % at 8k, but it leans on the scales' range.
#   P divided by the request's largest scale so far, a reduction across the warps each page: the GPU's ptxas spilled
#   in the page loop, 33 % slower. Kept: each request part's scales times one power of two from its first page's
#   largest scale (_wgr_first_scale, read once before the page loop, every warp reducing the whole block alone):
#   0.1241 / 0.2181 ms at 4k / 8k against the bf16 page work's 0.1269 / 0.2261 (FlashMLA / it 1.33 / 1.41 against
#   1.30 / 1.36), ~N 1.22 as before, and nearer the fp32 reference (rel. Frobenius 1.66e-3 against 1.81e-3: fp16 P
#   carries 3 more bits). No dequantization at all (MODE 3) reaches 1.41 at 4k, 1.50 at 8k: the dequantization is not
#   what keeps 4k from 1.5.
# MODE 4's guard (twenty-fourth session; WGR_GUARD): a part whose scales reach 2^16 times its first page's largest
#   would give inf / NaN. After a part's pages each thread tests its accumulators' exponent bits and adds to a
#   per-device counter where one is all ones (_wgr_overflowed); after a barrier all read it, and if it moved the part
#   runs its pages again with the factor from all its pages' scales (_wgr_scan_factor, read from the cache). Tried
#   first: the rerun as a second copy of the page loop (the GPU's page loop 25 local loads a page against 12, the
#   call 33 % slower) and a reduction across the threads after the loop (offline 27): both spill. Kept: the request
#   loop a while loop that runs the same page loop again (13 local loads a page), the counter in global memory (one
#   volatile load a program and one a part). Bought (probes/wgr_guard_h200_2026-12-04.json, same rounds): 0.1249 /
#   0.2190 ms at 4k / 8k against 0.1247 / 0.2179 without the guard and the bf16 page work's 0.1275 / 0.2262 (FlashMLA
#   / it 1.32 / 1.41 against 1.30 / 1.36), ~N 1.22 each, 1k 0.93 against 0.94; the full FP8 benchmark then read
#   FlashMLA / v5 1.33 / 1.43 / 1.25 at 4k / 8k / ~N (fp8_bench_wgr4_h200_2026-12-04.json). Off under TRACE (its
#   buffer takes the counter's place).
"""Version 5 over an FP8 cache, 16-row register tile on wgmma: both products transposed, the dequantized page the
register A operand (Gluon, Triton 3.6)."""

from __future__ import annotations

import torch

from .launch import FastLauncher
from .plan import PERSISTENT
from .v5_fp8_gluon import _fp8_page, _fp8_scale
from .v5_fp8_mma import pick4
from .v5_fp8_reg import (
    _E4M3X4_F16,
    _reg_drop_bars,
    _reg_expect_tma,
    _reg_first_copy,
    _reg_issue_tma,
    _reg_load_q16,
    _reg_page_in,
    _reg_smem,
    _reg_words,
    _scales_as,
)
from .v5_fp8_tma import tma_tile_launch_args
from .v5_gluon import (
    _probe_smid,
    _probe_time,
    _v5_next_part,
    _v5_part,
    _v5_request,
    _v5_start,
    _v5_store,
    fence_async_shared,
    gl,
    gluon,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

WGR_WARPS = 4  # one warpgroup (two programs per SM: ~110 KB of shared memory each)
WGR_MAXNREG = 255  # two programs' 256 threads may use the register file's 64 K
WGR_RAW_SLOTS = 2  # raw page slots in the ring: page i + 1 in flight while page i is computed
#: the tile's MODE where the caller asks for none (a knob): 4, the default since 2026-12-04, V dequantized to fp16
#: by the hardware conversion and P·scale in fp16, each request part's scales times a power of two read from its
#: first page (_wgr_first_scale); 0 the page work in bf16 (the tile until then); 3 no dequantization (timing only)
WGR_MODE = 4
#: MODE 4's guard of fp16's range (1): a request part whose outputs came out inf or NaN is computed once more with
#: its scales' factor from all its pages (_wgr_overflowed, _wgr_scan_factor); 0: none (a timing knob). Off while the
#: TRACE probe runs (its buffer takes the overflow counter's place).
WGR_GUARD = 1
#: the TRACE probe's buffer (scripts/gpu_wgr_trace.py): int64 [programs, TRACE_ROWS, TRACE_COLS]; row 0 the program
#: (entry, exit in ns; the same in SM cycles; its SM), rows 1-4 its first four requests (start, first page issued, Q
#: ready, pages done, stored, then the row sums done and half the output stored; ns), rows 5-68 its first 64 pages
#: (begin, landed, end in ns; the same in cycles from column 4)
TRACE_REQS, TRACE_PAGES, TRACE_COLS = 4, 64, 8
TRACE_ROWS = 1 + TRACE_REQS + TRACE_PAGES
#: an int64 tensor of at least [programs, TRACE_ROWS, TRACE_COLS] that the tile's launches fill with time stamps
#: while it is set (None: the tile, no stamps)
TRACE_BUFFER = None


def _e4m3_pairs_asm(sel0: int, sel1: int) -> str:
    """The PTX of v5_fp8_reg._E4M3_PAIRS for the two bytes that prmt selectors sel0 and sel1 pick from the even key's
    word ($4) and the odd key's ($5): two bf16 pairs each ($0, $1 and $2, $3)."""
    return "\n".join(["{", ".reg .b32 k, x0, x1;", "mov.b32 k, 0x7B807B80;",
                      f"prmt.b32 x0, $4, $5, 0x{sel0:04X};", f"prmt.b32 x1, $4, $5, 0x{sel1:04X};",
                      "shl.b32 x0, x0, 4;", "shl.b32 x1, x1, 4;",
                      "and.b32 x0, x0, 0x87F087F0;", "and.b32 x1, x1, 0x87F087F0;",
                      "mul.rn.bf16x2 x0, x0, k;", "mul.rn.bf16x2 x1, x1, k;",
                      "mov.b32 {$0, $1}, x0;", "mov.b32 {$2, $3}, x1;", "}"])

def _e4m3_pairs_f16_asm(sel: int) -> str:
    """MODE 4's V operand: bytes e and e + 1 of the even key's word ($4) and of the odd key's ($5), gathered by one
    prmt (selector sel) into [even e, odd e, even e + 1, odd e + 1], then each half converted by cvt.rn.f16x2.e4m3x2:
    ($0, $1) the fp16 pair (even, odd) of byte e, ($2, $3) of byte e + 1 (the order of _E4M3_PAIRS_LO / _HI)."""
    return "\n".join(["{", ".reg .b32 x, lo, hi;", ".reg .b16 l, h;", f"prmt.b32 x, $4, $5, 0x{sel:04X};",
                      "mov.b32 {l, h}, x;", "cvt.rn.f16x2.e4m3x2 lo, l;", "cvt.rn.f16x2.e4m3x2 hi, h;",
                      "mov.b32 {$0, $1}, lo;", "mov.b32 {$2, $3}, hi;", "}"])


if gluon is not None:
    #: The products' layout: wgmma's accumulator for one warpgroup, N = the tile's 16 rows. S^T [64 keys, 16] and
    #: each scale tile's O^T [128 columns, 16] hold it: warp w the keys (columns) 16w .. 16w + 15 of each 64.
    #: v5_fp8_reg._E4M3_PAIRS for two of the four bytes: $4 the even key's word, $5 the odd key's; $0-$3 the bf16
    #: pairs (even key, odd key) of bytes 0 and 1 (_LO) or 2 and 3 (_HI): prmt, shift, mask, one multiply by 2^120.
    _E4M3_PAIRS_LO = gl.constexpr(_e4m3_pairs_asm(0xC480, 0xD591))
    _E4M3_PAIRS_HI = gl.constexpr(_e4m3_pairs_asm(0xE6A2, 0xF7B3))
    #: MODE 3 (timing only, results meaningless): the operands are the raw words' bits, moved, not dequantized.
    _RAW_AS_4 = gl.constexpr("mov.b32 {$0, $1}, $4; mov.b32 {$2, $3}, $4;")
    _RAW_AS_4_PAIRS = gl.constexpr("mov.b32 {$0, $1}, $4; mov.b32 {$2, $3}, $5;")
    #: MODE 4: _E4M3_PAIRS_LO / _HI's pairs in fp16 by the hardware conversion, one prmt a word of pairs
    _E4M3_PAIRS_F16_LO = gl.constexpr(_e4m3_pairs_f16_asm(0x5140))
    _E4M3_PAIRS_F16_HI = gl.constexpr(_e4m3_pairs_f16_asm(0x7362))
    WGR_LAYOUT = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 16, 16]))
    _T_ROWS = gl.constexpr(TRACE_ROWS)
    _T_COLS = gl.constexpr(TRACE_COLS)
    _T_REQS = gl.constexpr(TRACE_REQS)
    #: a page's scales [64 rows, 4 tiles] with every warp holding all of them (MODE 4's scale factor: each warp
    #: reduces them alone, no reduction across warps)
    _WHOLE_SCALES = gl.constexpr(gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [0, 2], [32, 0]], lane_bases=[[1, 0], [2, 0], [4, 0], [8, 0], [16, 0]],
        warp_bases=[[0, 0], [0, 0]], block_bases=[], shape=[64, 4]))

    @gluon.jit
    def _wgr_stamp(trace_ptr, row, ok, COL: gl.constexpr, TRACE: gl.constexpr, CLOCK: gl.constexpr = False):
        """TRACE (a probe, off in the tile): the GPU's nanosecond timer (%globaltimer, one time base for all SMs), or
        with CLOCK the SM's cycle counter, into trace[program, row, COL] where `ok`."""
        if TRACE:
            prog = gl.program_id(1) * gl.num_programs(0) + gl.program_id(0)
            gl.store(trace_ptr + (prog * _T_ROWS + row) * _T_COLS + COL, _probe_time(not CLOCK), mask=ok)

    @gluon.jit
    def _wgr_stamp_sm(trace_ptr, TRACE: gl.constexpr):
        """TRACE: the program's SM (%smid) into trace[program, 0, 4]."""
        if TRACE:
            prog = gl.program_id(1) * gl.num_programs(0) + gl.program_id(0)
            gl.store(trace_ptr + prog * _T_ROWS * _T_COLS + 4, _probe_smid())

    @gluon.jit
    def _wgr_stamp_page(trace_ptr, g, COL: gl.constexpr, TRACE: gl.constexpr):
        """TRACE: page g's event COL (0 begin, 1 landed, 2 end) in ns and in cycles (COL + 4), for its first pages."""
        ok = g < _T_ROWS - 1 - _T_REQS
        _wgr_stamp(trace_ptr, 1 + _T_REQS + g, ok, COL, TRACE)
        _wgr_stamp(trace_ptr, 1 + _T_REQS + g, ok, COL + 4, TRACE, True)

    @gluon.jit
    def _wgr_words_k(kv_raw, slot, tile: gl.constexpr):
        """Scale tile T's e4m3 words as S^T's A operand reads them, [64 keys, 2 halves, 16 words]: thread (g = lane //
        4, t = lane % 4) of warp w holds keys 16w + g and 16w + 8 + g, words 16h + 4t + j (two LDS.128 a key)."""
        lk: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 1], [0, 2], [0, 16], [8, 0]], lane_bases=[[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]],
            warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[64, 32])
        return gl.reshape(_reg_words(kv_raw, slot, tile).load(lk), [64, 2, 16])  # [64 keys, 32 words] int32

    @gluon.jit
    def _wgr_keys(words, half: gl.constexpr, a_op: gl.constexpr, MODE: gl.constexpr = 0):
        """K8 [64 keys, 64] of one half (64 columns) of a scale tile, its e4m3 values unscaled, in fp16 as S^T's
        register A operand (words: _wgr_words_k's), one word per k16 step j of the columns' permutation
        (_reg_perm64: logical column 16j + 8a + 2t + b is the half's column 16t + 4j + 2a + b)."""
        w0, w1 = gl.split(gl.permute(words, (0, 2, 1)))  # [64 keys, 16 words] of each half
        w = w1 if half else w0
        if MODE == 3:  # (timing: no dequantization)
            v0, v1, v2, v3 = gl.inline_asm_elementwise(
                _RAW_AS_4, "=h,=h,=h,=h,r", [w], dtype=(gl.float16,) * 4, is_pure=True, pack=1)
        else:
            v0, v1, v2, v3 = gl.inline_asm_elementwise(
                _E4M3X4_F16, "=h,=h,=h,=h,r", [w], dtype=(gl.float16,) * 4, is_pure=True, pack=1)
        x = gl.join(gl.join(v0, v2), gl.join(v1, v3))  # [key, word, a, b]: value 2a + b of the word
        x = gl.reshape(x, [64, 4, 4, 2, 2])  # [key, t, j, a, b]
        x = gl.reshape(gl.permute(x, (0, 2, 3, 1, 4)), [64, 64])  # [key, j, a, t, b]: logical order
        return gl.convert_layout(x, a_op, assert_trivial=True)  # (a relabelling: no data moves)

    @gluon.jit
    def _wgr_rope(kr_slot, a_op: gl.constexpr):
        """k_rope [64 keys, 64] (bf16, a raw slot's) as S^T's register A operand, columns in _reg_perm64's order (Q's
        RoPE part is stored so): thread (g, t) of warp w reads columns 16t .. 16t + 15 of keys 16w + g, + 8."""
        lr: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 1], [0, 2], [0, 4], [0, 8], [8, 0]], lane_bases=[[0, 16], [0, 32], [1, 0], [2, 0], [4, 0]],
            warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[64, 64])
        r = gl.reshape(kr_slot.load(lr), [64, 4, 4, 2, 2])  # [key, t, j, a, b]
        r = gl.reshape(gl.permute(r, (0, 2, 3, 1, 4)), [64, 64])  # [key, j, a, t, b]
        return gl.convert_layout(r, a_op, assert_trivial=True)

    @gluon.jit
    def _wgr_words_v(kv_raw, slot, tile: gl.constexpr):
        """Scale tile T's e4m3 words as O^T's A operand reads them, (even keys', odd keys') [32 pairs, 32 words] each:
        thread (g, t) of warp w holds word 8w + g of keys 2t + b + 8a + 16j."""
        lv: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[1, 0], [8, 0], [16, 0], [32, 0]], lane_bases=[[2, 0], [4, 0], [0, 1], [0, 2], [0, 4]],
            warp_bases=[[0, 8], [0, 16]], block_bases=[], shape=[64, 32])
        w = _reg_words(kv_raw, slot, tile).load(lv)  # [64 keys, 32 words]
        return gl.split(gl.permute(gl.reshape(w, [32, 2, 32]), (0, 2, 1)))

    @gluon.jit
    def _wgr_values(w_even, w_odd, e_hi: gl.constexpr, a_op: gl.constexpr, MODE: gl.constexpr = 0):
        """One m64 block of V8_T^T [64, 64 keys] (a scale tile's e4m3 values unscaled, bf16) as O^T's register A
        operand: per key pair, bytes 2·e_hi and 2·e_hi + 1 of the two keys' words as bf16 pairs; operand row 16w +
        8·e_lo + g is the tile's column 4·(8w + g) + 2·e_hi + e_lo."""
        if MODE == 3:  # (timing: no dequantization)
            y0, y1, y2, y3 = gl.inline_asm_elementwise(
                _RAW_AS_4_PAIRS, "=h,=h,=h,=h,r,r", [w_even, w_odd], dtype=(gl.bfloat16,) * 4, is_pure=True, pack=1)
        elif MODE == 4:  # (V in fp16, and P·scale: WGR_MODE 4)
            y0, y1, y2, y3 = gl.inline_asm_elementwise(
                _E4M3_PAIRS_F16_HI if e_hi else _E4M3_PAIRS_F16_LO, "=h,=h,=h,=h,r,r", [w_even, w_odd],
                dtype=(gl.float16,) * 4, is_pure=True, pack=1)
        elif e_hi:
            y0, y1, y2, y3 = gl.inline_asm_elementwise(
                _E4M3_PAIRS_HI, "=h,=h,=h,=h,r,r", [w_even, w_odd], dtype=(gl.bfloat16,) * 4, is_pure=True, pack=1)
        else:
            y0, y1, y2, y3 = gl.inline_asm_elementwise(
                _E4M3_PAIRS_LO, "=h,=h,=h,=h,r,r", [w_even, w_odd], dtype=(gl.bfloat16,) * 4, is_pure=True, pack=1)
        z = gl.join(gl.join(y0, y1), gl.join(y2, y3))  # [pair, word, b, e_lo]
        z = gl.reshape(z, [32, 4, 8, 2, 2])  # [pair, w, g, b, e_lo]
        z = gl.reshape(gl.permute(z, (1, 4, 2, 0, 3)), [64, 64])  # [w, e_lo, g, pair, b]
        return gl.convert_layout(z, a_op, assert_trivial=True)

    @gluon.jit
    def _wgr_scales(sc_slot, keys_l: gl.constexpr):
        """A raw slot's scales (sc_slot [64, 4], float32 bits as int32) as four [64] vectors, one per tile, in keys_l
        (S^T's row layout: thread (g, t) of warp w holds keys 16w + g, + 8)."""
        l4: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 1], [0, 2], [8, 0]], lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]],
            warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[64, 4])
        return _scales_as(sc_slot, l4, keys_l)

    @gluon.jit
    def _wgr_first_scale(sc_raw, bs, g, n_cur, SLOTS: gl.constexpr):
        """MODE 4, before a request's first page (the program's g-th): once its scales have landed, 2^(127 - k) with
        2^(k - 127) the largest scale of its n_cur rows that hold keys, at least 2^-13 (FlashMLA's quantizer's
        floor): the factor every page of the request multiplies its scales by, so that P·scale·factor stays in fp16's
        range (at most 1 on the first page, under 65,504 while the request's scales stay under 2^16 times its first
        page's largest; the quantizer's floor keeps the small ones at 2^-13 and up). Read once a request, outside
        the page loop."""
        mbarrier.wait(bs.index(g % SLOTS), (g // SLOTS) % 2)  # (the page's own wait, in _reg_page_in, is then done)
        x = sc_raw.index(g % SLOTS).load(_WHOLE_SCALES).to(gl.float32, bitcast=True)  # [64 rows, 4 tiles]
        row = gl.arange(0, 64, layout=gl.SliceLayout(1, _WHOLE_SCALES))
        x = gl.where(row[:, None] < n_cur, x, 0.0)  # (rows past the keys: not yet zeroed, maybe NaN)
        return _wgr_factor(gl.max(gl.max(x, axis=1), axis=0))

    @gluon.jit
    def _wgr_pages(lo, hi, kv_raw, sc_raw, kr_raw, bw, bs, br, g, q_smem, qr_smem, p0_smem, p1_smem, p2_smem, p3_smem,
                   mx_smem, bt_row, s_k, num_blocks, ok_ptr, n_visible, q_scale, m_i, sc_factor, kv_desc, sc_desc,
                   kr_desc, n_cur, a_op: gl.constexpr, rows_l: gl.constexpr, keys_l: gl.constexpr,
                   num_warps: gl.constexpr, SLOTS: gl.constexpr, MODE: gl.constexpr, trace_ptr, TRACE: gl.constexpr):
        """A request's pages lo .. hi - 1 (page lo in flight, n_cur of its rows keys; the program's g-th page), from
        empty sums and outputs and the running max m_i. Returns the running max, the per-key row sums [64, 16], the
        eight output accumulators and the program's pages so far."""
        BM: gl.constexpr = 16
        PAGE: gl.constexpr = 64
        l_keys = gl.zeros([PAGE, BM], gl.float32, layout=WGR_LAYOUT)  # each row's sums per key, per request
        o00 = gl.zeros([64, BM], gl.float32, layout=WGR_LAYOUT)  # O^T, two [64, 16] blocks a scale tile
        o01 = o00
        o10 = o00
        o11 = o00
        o20 = o00
        o21 = o00
        o30 = o00
        o31 = o00
        for i in range(lo, hi):
            _wgr_stamp_page(trace_ptr, g, 0, TRACE)
            m_i, l_keys, o00, o01, o10, o11, o20, o21, o30, o31, n_cur = _wgr_page(
                i, hi, kv_raw, sc_raw, kr_raw, bw, bs, br, g, q_smem, qr_smem, p0_smem, p1_smem, p2_smem, p3_smem,
                mx_smem, bt_row, s_k, num_blocks, ok_ptr, n_visible, q_scale, m_i, l_keys, o00, o01, o10, o11,
                o20, o21, o30, o31, sc_factor, kv_desc, sc_desc, kr_desc, n_cur, a_op, rows_l, keys_l, num_warps,
                SLOTS, MODE, trace_ptr, TRACE)
            _wgr_stamp_page(trace_ptr, g, 2, TRACE)
            g += 1
        return m_i, l_keys, o00, o01, o10, o11, o20, o21, o30, o31, g

    @gluon.jit
    def _wgr_overflowed(o00, o01, o10, o11, o20, o21, o30, o31, count_ptr):
        """MODE 4, after a request part's pages: the call's overflow counter at count_ptr once each thread whose
        accumulators hold an inf or NaN (some P·scale·factor passed fp16's range: an inf operand makes its products
        inf or NaN, and the fp32 sums keep them so; an integer test on the exponent bits) has added 1 to it and a
        barrier has passed. The part overflowed if it moved since the program last read it (another program's
        overflow in between moves it too: that part is then computed twice, right both times). (A reduction across
        the threads here, by the compiler or through shared memory, made the page loop spill: offline 27 local
        loads a page against 12.)"""
        e = _wgr_exponent(o00)
        e = gl.maximum(e, _wgr_exponent(o01))
        e = gl.maximum(e, _wgr_exponent(o10))
        e = gl.maximum(e, _wgr_exponent(o11))
        e = gl.maximum(e, _wgr_exponent(o20))
        e = gl.maximum(e, _wgr_exponent(o21))
        e = gl.maximum(e, _wgr_exponent(o30))
        e = gl.maximum(e, _wgr_exponent(o31))
        bad = e == 0x7F800000
        gl.atomic_add(count_ptr + e * 0, bad.to(gl.int32), mask=bad, sem="relaxed")
        gl.thread_barrier()
        return gl.load(count_ptr, volatile=True)

    @gluon.jit
    def _wgr_exponent(x):
        """float32 x's exponent bits in place (0x7F800000: inf or NaN)."""
        return x.to(gl.int32, bitcast=True) & 0x7F800000

    @gluon.jit
    def _wgr_factor(top):
        """2^(127 - k) for a largest scale `top` of 2^(k - 127) .. 2^(k - 126), k at least 127 - 13 (FlashMLA's
        quantizer's floor, 2^-13): what a request's scales are multiplied by, so that they are at most 2 (1 for
        powers of two)."""
        k = gl.maximum((top.to(gl.int32, bitcast=True) >> 23) & 0xFF, 127 - 13)
        return ((254 - k) << 23).to(gl.float32, bitcast=True)

    @gluon.jit
    def _wgr_scan_factor(kv_ptr, stride_kvb, bt_row, lo, hi, s_k, num_blocks, ok_ptr):
        """MODE 4's second pass over a request (_wgr_overflowed): _wgr_factor of the largest scale of all its pages
        lo .. hi - 1, read from the cache (its rows that hold keys, four scales each; a bad block id reads none).
        Every warp reads and reduces all of them alone: no barrier. Then no P·scale·factor passes 2."""
        top = gl.zeros([64], gl.float32, layout=gl.SliceLayout(1, _WHOLE_SCALES))
        for i in range(lo, hi):
            page, n_rows = _fp8_page(bt_row, i, hi, s_k, num_blocks, ok_ptr)
            for t in gl.static_range(4):
                top = gl.maximum(top, _fp8_scale(kv_ptr, page, n_rows, stride_kvb, t, _WHOLE_SCALES))
        return _wgr_factor(gl.max(top, axis=0))

    @gluon.jit
    def _wgr_col_max(s, scratch, rows_l: gl.constexpr):
        """S^T's column max [16] (each row's max over the page's keys) across the four warps with one barrier: each
        warp's partial over its 16 keys into scratch [4, 16], a barrier, then every thread reads its columns' four
        partials. (The scratch is written again only after the next page's first barrier.)"""
        scratch.store(gl.max(gl.reshape(s, [4, 16, 16]), axis=1))  # [warp, row]: within each warp only
        gl.thread_barrier()
        cl: gl.constexpr = gl.DistributedLinearLayout(  # a thread's columns (2t, 2t + 1, + 8), all four partials
            reg_bases=[[1, 0], [2, 0], [0, 1], [0, 8]], lane_bases=[[0, 2], [0, 4], [0, 0], [0, 0], [0, 0]],
            warp_bases=[[0, 0], [0, 0]], block_bases=[], shape=[4, 16])
        return gl.convert_layout(gl.max(scratch.load(cl), axis=0), rows_l, assert_trivial=True)

    @gluon.jit
    def _wgr_scores(q_smem, qr_smem, kv_raw, kr_raw, slot, sc0, sc1, sc2, sc3, a_op: gl.constexpr,
                    MODE: gl.constexpr):
        """S^T = K·Q^T [64 keys, 16 rows] = Σ_T scale_T[key] · K8_T·Q_T^T + k_rope·Q_rope^T: asynchronous wgmma, one
        a 64-column half of a scale tile (four k16 steps), each half's operand (16 registers) dequantized while the
        half before it is multiplied: at most two in flight, so two operands live."""
        zero = gl.zeros([64, 16], gl.float32, layout=WGR_LAYOUT)
        kr = _wgr_rope(kr_raw.index(slot), a_op)
        s = warpgroup_mma(kr, qr_smem.permute((1, 0)), zero, is_async=True)
        w = _wgr_words_k(kv_raw, slot, 0)
        k = _wgr_keys(w, 0, a_op, MODE)
        t = warpgroup_mma(k, q_smem.slice(0, 64, dim=1).permute((1, 0)), zero, is_async=True)
        s, kr = warpgroup_mma_wait(1, deps=[s, kr])
        t_prev = t
        k_prev = k
        for c in gl.static_range(1, 8):  # half c % 2 of tile c // 2
            if c % 2 == 0:
                w = _wgr_words_k(kv_raw, slot, c // 2)
            k = _wgr_keys(w, c % 2, a_op, MODE)
            if c % 2:  # the tile's second half, on its first
                t = warpgroup_mma(k, q_smem.slice(64 * c, 64, dim=1).permute((1, 0)), t, is_async=True)
            else:
                t = warpgroup_mma(k, q_smem.slice(64 * c, 64, dim=1).permute((1, 0)), zero, is_async=True)
            if c % 2 == 0:  # tile c // 2 - 1 is complete once the new chain's first product is all that is left
                t_prev, k_prev = warpgroup_mma_wait(1, deps=[t_prev, k_prev])
                s = s + t_prev * pick4(sc0, sc1, sc2, sc3, c // 2 - 1)[:, None]
            else:
                k_prev = warpgroup_mma_wait(1, deps=[k_prev])
            t_prev = t
            k_prev = k
        t, k = warpgroup_mma_wait(0, deps=[t, k])
        return s + t * sc3[:, None]

    @gluon.jit
    def _wgr_block(w_even, w_odd, e_hi: gl.constexpr, p_smem, o, alpha, o_prev, v_prev, a_op: gl.constexpr,
                   MODE: gl.constexpr):
        """One m64 block of O^T: its operand dequantized (_wgr_values) while the block before it (o_prev, operand
        v_prev) is multiplied, o·alpha + V8^T·p_smem^T issued, then the block before it waited for. Returns (the block
        in flight, its operand, the block before it, complete)."""
        v = _wgr_values(w_even, w_odd, e_hi, a_op, MODE)
        o = warpgroup_mma(v, p_smem.permute((1, 0)), o * alpha[None, :], is_async=True)
        o_prev, v_prev = warpgroup_mma_wait(1, deps=[o_prev, v_prev])
        return o, v, o_prev

    @gluon.jit
    def _wgr_outputs(kv_raw, slot, p0_smem, p1_smem, p2_smem, p3_smem, o00, o01, o10, o11, o20, o21, o30, o31, alpha,
                     a_op: gl.constexpr, MODE: gl.constexpr):
        """O^T = O^T·alpha + V8^T·(P·scale_T)^T, scale tile T's two m64 blocks (o_T0, o_T1: [64, 16] each, rows
        16w + 8·e_lo + g the tile's columns 4·(8w + g) + 2·e_hi + e_lo): asynchronous wgmma, one a block (four k16
        steps), each block's operand (16 registers) dequantized while the block before it is multiplied
        (_wgr_block); all complete on return (the next page rescales them)."""
        we, wo = _wgr_words_v(kv_raw, slot, 0)
        v = _wgr_values(we, wo, 0, a_op, MODE)
        o00 = warpgroup_mma(v, p0_smem.permute((1, 0)), o00 * alpha[None, :], is_async=True)
        o01, v, o00 = _wgr_block(we, wo, 1, p0_smem, o01, alpha, o00, v, a_op, MODE)
        we, wo = _wgr_words_v(kv_raw, slot, 1)
        o10, v, o01 = _wgr_block(we, wo, 0, p1_smem, o10, alpha, o01, v, a_op, MODE)
        o11, v, o10 = _wgr_block(we, wo, 1, p1_smem, o11, alpha, o10, v, a_op, MODE)
        we, wo = _wgr_words_v(kv_raw, slot, 2)
        o20, v, o11 = _wgr_block(we, wo, 0, p2_smem, o20, alpha, o11, v, a_op, MODE)
        o21, v, o20 = _wgr_block(we, wo, 1, p2_smem, o21, alpha, o20, v, a_op, MODE)
        we, wo = _wgr_words_v(kv_raw, slot, 3)
        o30, v, o21 = _wgr_block(we, wo, 0, p3_smem, o30, alpha, o21, v, a_op, MODE)
        o31, v, o30 = _wgr_block(we, wo, 1, p3_smem, o31, alpha, o30, v, a_op, MODE)
        o31, v = warpgroup_mma_wait(0, deps=[o31, v])
        return o00, o01, o10, o11, o20, o21, o30, o31

    @gluon.jit
    def _wgr_page(i, hi, kv_raw, sc_raw, kr_raw, bw, bs, br, g, q_smem, qr_smem, p0_smem, p1_smem, p2_smem, p3_smem,
                  mx_smem, bt_row, s_k, num_blocks, ok_ptr, n_visible, q_scale, m_i, l_keys, o00, o01, o10, o11, o20,
                  o21, o30, o31, sc_factor, kv_desc, sc_desc, kr_desc, n_cur, a_op: gl.constexpr, rows_l: gl.constexpr,
                  keys_l: gl.constexpr, num_warps: gl.constexpr, SLOTS: gl.constexpr, MODE: gl.constexpr, trace_ptr,
                  TRACE: gl.constexpr):
        """Page i of a request, the program's g-th page (v5_fp8_reg._reg_page's ring, copies and barriers; the
        products transposed): its raw rows in slot g % SLOTS, n_cur of them keys. Returns the running max, the
        per-key row sums [64, 16], the eight output accumulators and page i + 1's rows that hold keys."""
        PAGE: gl.constexpr = 64
        dtype: gl.constexpr = p0_smem.dtype  # (P's)
        cur = _reg_page_in(kv_raw, sc_raw, kr_raw, bw, bs, br, g, n_cur, SLOTS, num_warps)  # (and P's copies free)
        _wgr_stamp_page(trace_ptr, g, 1, TRACE)
        sc0, sc1, sc2, sc3 = _wgr_scales(sc_raw.index(cur), keys_l)
        s = _wgr_scores(q_smem, qr_smem, kv_raw, kr_raw, cur, sc0, sc1, sc2, sc3, a_op, MODE)
        keys = i * PAGE + gl.arange(0, PAGE, layout=keys_l)
        s = gl.where(keys[:, None] < n_visible[None, :], s * q_scale[None, :], float("-inf"))  # (log2 units)
        nxt = (g + 1) % SLOTS
        page_n, n_next = _fp8_page(bt_row, i + 1, hi, s_k, num_blocks, ok_ptr)  # (none past the slice: masked)
        if i + 1 < hi:
            _reg_expect_tma(bw, bs, br, nxt)
        m_new = gl.maximum(m_i, _wgr_col_max(s, mx_smem, rows_l))
        if i + 1 < hi:  # page i + 1, in flight from here
            _reg_issue_tma(kv_desc, sc_desc, kr_desc, kv_raw, sc_raw, kr_raw, bw, bs, br, nxt, page_n)
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)  # (0 for a row that has seen no key yet)
        p = gl.exp2(s - m_use[None, :])
        alpha = gl.exp2(m_i - m_use)  # (the old sums' and outputs' rescale)
        l_keys = l_keys * alpha[None, :] + p
        if MODE == 4:  # (P·scale in fp16: the request's scale factor, _wgr_first_scale)
            sc0 = sc0 * sc_factor
            sc1 = sc1 * sc_factor
            sc2 = sc2 * sc_factor
            sc3 = sc3 * sc_factor
        p0_smem.store(gl.permute((p * sc0[:, None]).to(dtype), (1, 0)))  # P [16, 64] times tile 0's scales
        p1_smem.store(gl.permute((p * sc1[:, None]).to(dtype), (1, 0)))
        p2_smem.store(gl.permute((p * sc2[:, None]).to(dtype), (1, 0)))
        p3_smem.store(gl.permute((p * sc3[:, None]).to(dtype), (1, 0)))
        fence_async_shared()  # (generic stores before wgmma reads them)
        gl.thread_barrier()  # every warp's keys of P are in
        o00, o01, o10, o11, o20, o21, o30, o31 = _wgr_outputs(kv_raw, cur, p0_smem, p1_smem, p2_smem, p3_smem, o00,
                                                              o01, o10, o11, o20, o21, o30, o31, alpha, a_op, MODE)
        return m_new, l_keys, o00, o01, o10, o11, o20, o21, o30, o31, n_next

    @gluon.jit
    def _wgr_store(o_lo, o_hi, T: gl.constexpr, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr,
                   part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start):
        """Scale tile T's output, its two blocks O_T^T [64, 16] (o_lo: e_hi 0, o_hi: 1), to O [16, 128] in
        v5_fp8_reg.py's column order (a relabelling: row 16w + 8·e_lo + g of block e_hi becomes 32·(2·e_hi + e_lo) +
        8w + g), then _v5_store (the LSE with tile 0)."""
        o = gl.permute(gl.join(o_lo, o_hi), (2, 0, 1))  # [e_hi, 64, 16]
        o = gl.reshape(gl.permute(gl.reshape(o, [2, 4, 2, 8, 16]), (0, 2, 1, 3, 4)), [128, 16])
        o = gl.permute(o, (1, 0))  # [16 rows, 128 logical columns]
        o_l: gl.constexpr = o.type.layout
        _v5_store(o, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, s_q,
                  h_q, heads_per_kv, rows_per_kv, m_start, gl.SliceLayout(1, o_l), gl.SliceLayout(0, o_l), 128 * T,
                  128, T == 0, 16, True)

    @gluon.jit
    def _wgr_part(req, again, q_ptr, kv_ptr, stride_kvb, kv_desc, sc_desc, kr_desc, block_table_ptr, seqlens_ptr,
                  ok_ptr, num_splits_ptr, stride_qb, stride_qs, stride_qh, stride_btb, s_q, heads_per_kv, rows_per_kv,
                  num_blocks, max_blocks, qk_scale, m_start, begin_req, begin_block, end_req, end_block, begin_split,
                  next_req, next_block, g, kv_raw, sc_raw, kr_raw, bw, bs, br, q_smem, qr_smem, p0_smem, p1_smem,
                  p2_smem, p3_smem, mx_smem, trace_ptr, a_op: gl.constexpr, rows_l: gl.constexpr,
                  keys_l: gl.constexpr, num_warps: gl.constexpr, CAUSAL: gl.constexpr, RAW: gl.constexpr,
                  MODE: gl.constexpr, TRACE: gl.constexpr):
        """The program's part of request `req`: its pages' copies, Q, then its pages (_wgr_pages) from an empty
        state. MODE 4: the scales' factor from its first page's largest (_wgr_first_scale), or with `again` from all
        its pages' (_wgr_scan_factor). Returns what the store needs, the scales' factor and the program's pages so
        far."""
        BM: gl.constexpr = 16
        s_k, lo, hi, part_slot, pieces, bt_row = _v5_request(
            seqlens_ptr, ok_ptr, num_splits_ptr, block_table_ptr, stride_btb, req, begin_req, begin_block, end_req,
            end_block, begin_split, next_req, next_block, max_blocks)
        t_row = 1 + req - begin_req  # (TRACE: the request's row)
        t_ok = req - begin_req < _T_REQS
        _wgr_stamp(trace_ptr, t_row, t_ok, 0, TRACE)
        n_cur = _reg_first_copy(bt_row, lo, hi, s_k, num_blocks, ok_ptr, g, kv_desc, sc_desc, kr_desc, kv_raw,
                                sc_raw, kr_raw, bw, bs, br, RAW)  # page lo in flight
        _wgr_stamp(trace_ptr, t_row, t_ok, 1, TRACE)
        q_scale = qk_scale * _reg_load_q16(q_ptr, q_smem, qr_smem, req, m_start, stride_qb, stride_qs, stride_qh,
                                           heads_per_kv, rows_per_kv, rows_l, num_warps)
        fence_async_shared()  # (Q's generic stores before wgmma reads them; the page's barrier orders the warps)
        _wgr_stamp(trace_ptr, t_row, t_ok, 2, TRACE)
        rows, tok, n_visible, m_i, l_i, _ = _v5_start(m_start, heads_per_kv, s_k, s_q, CAUSAL, rows_l, WGR_LAYOUT,
                                                      BM)
        sc_factor = 1.0
        if MODE == 4:
            if again:
                sc_factor = _wgr_scan_factor(kv_ptr, stride_kvb, bt_row, lo, hi, s_k, num_blocks, ok_ptr)
            elif lo < hi:
                sc_factor = _wgr_first_scale(sc_raw, bs, g, n_cur, RAW)
        m_i, l_keys, o00, o01, o10, o11, o20, o21, o30, o31, g = _wgr_pages(
            lo, hi, kv_raw, sc_raw, kr_raw, bw, bs, br, g, q_smem, qr_smem, p0_smem, p1_smem, p2_smem, p3_smem,
            mx_smem, bt_row, s_k, num_blocks, ok_ptr, n_visible, q_scale, m_i, sc_factor, kv_desc, sc_desc, kr_desc,
            n_cur, a_op, rows_l, keys_l, num_warps, RAW, MODE, trace_ptr, TRACE)
        _wgr_stamp(trace_ptr, t_row, t_ok, 3, TRACE)
        return part_slot, pieces, rows, tok, m_i, l_keys, o00, o01, o10, o11, o20, o21, o30, o31, sc_factor, g

    @gluon.jit
    def _wgr_finish(o00, o01, o10, o11, o20, o21, o30, o31, m_i, l_keys, sc_factor, rows, tok, req, part_slot, pieces,
                    out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start,
                    trace_ptr, t_row, t_ok, MODE: gl.constexpr, TRACE: gl.constexpr):
        """A request part's end: the row sums, MODE 4's scales' factor undone, the four scale tiles' outputs stored
        (_wgr_store)."""
        l_i = gl.sum(l_keys, axis=0)
        if MODE == 4:  # (the outputs back from the request's scale factor: exact, a power of two)
            inv = ((254 << 23) - sc_factor.to(gl.int32, bitcast=True)).to(gl.float32, bitcast=True)
            o00 = o00 * inv
            o01 = o01 * inv
            o10 = o10 * inv
            o11 = o11 * inv
            o20 = o20 * inv
            o21 = o21 * inv
            o30 = o30 * inv
            o31 = o31 * inv
        _wgr_stamp(trace_ptr, t_row, t_ok, 5, TRACE)
        _wgr_store(o00, o01, 0, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr, part_out_ptr,
                   part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start)
        _wgr_store(o10, o11, 1, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr, part_out_ptr,
                   part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start)
        _wgr_stamp(trace_ptr, t_row, t_ok, 6, TRACE)
        _wgr_store(o20, o21, 2, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr, part_out_ptr,
                   part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start)
        _wgr_store(o30, o31, 3, m_i, l_i, rows, tok, req, part_slot, pieces, out_ptr, lse_ptr, part_out_ptr,
                   part_lse_ptr, s_q, h_q, heads_per_kv, rows_per_kv, m_start)
        _wgr_stamp(trace_ptr, t_row, t_ok, 4, TRACE)

    @gluon.jit
    def _v5_fp8_wgr_kernel(
        q_ptr, kv_ptr, kv_desc, sc_desc, kr_desc, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, part_out_ptr,
        part_lse_ptr, meta_ptr, num_splits_ptr, ok_ptr,
        stride_qb, stride_qs, stride_qh, stride_kvb, stride_btb,
        s_q, h_q, heads_per_kv, rows_per_kv, m_tiles, num_blocks, max_blocks,
        qk_scale, trace_ptr,
        CAUSAL: gl.constexpr, META_COLS: gl.constexpr, RAW: gl.constexpr, MODE: gl.constexpr, TRACE: gl.constexpr,
        GUARD: gl.constexpr, num_warps: gl.constexpr,
    ):
        # v5_fp8_reg.py's signature and ring (RAW raw page slots; kv_ptr and stride_kvb are not read), then the TRACE
        # probe's buffer (stamps only with TRACE; else MODE 4's overflow counter, or the ok flag, unread). MODE: 0 the
        # page work in bf16; 3 (timing only) no dequantization (each operand is its raw words' bits: results
        # meaningless); 4 (v5's default) V in fp16 by the hardware conversion, P·scale in fp16, the scales times a
        # power of two per request part (_wgr_first_scale), with GUARD its rerun where that overflowed
        BM: gl.constexpr = 16
        a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=WGR_LAYOUT, k_width=2)
        rows_l: gl.constexpr = gl.SliceLayout(0, WGR_LAYOUT)  # the tile's rows: S^T's and O^T's columns
        keys_l: gl.constexpr = gl.SliceLayout(1, WGR_LAYOUT)
        dtype: gl.constexpr = q_ptr.dtype.element_ty

        # v5_fp8_reg.py's: Q (S^T's B operands), P times each tile's scales (O^T's), the raw ring
        q_smem, qr_smem, p0_smem, p1_smem, p2_smem, p3_smem, kv_raw, sc_raw, kr_raw, bw, bs, br = _reg_smem(
            kv_desc, sc_desc, kr_desc, dtype, BM, RAW, gl.float16 if MODE == 4 else dtype)
        mx_smem = gl.allocate_shared_memory(gl.float32, [4, BM], gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0]))
        _wgr_stamp(trace_ptr, 0, True, 0, TRACE)
        _wgr_stamp(trace_ptr, 0, True, 2, TRACE, True)
        _wgr_stamp_sm(trace_ptr, TRACE)

        m_start = (gl.program_id(1) % m_tiles) * BM
        begin_req, begin_block, end_req, end_block, begin_split = _v5_part(meta_ptr, META_COLS)
        next_req, next_block = _v5_next_part(meta_ptr, META_COLS)
        g = 0  # the program's pages so far, across requests: page g's slot g % RAW and its mbarriers' phase

        if GUARD:  # (MODE 4, no TRACE) a request part whose outputs came out inf or NaN is done once more, the
            # scales' factor from all its pages: the same page loop run again (a second copy of it in the kernel
            # made the GPU's page loop spill)
            req = begin_req
            again = 0
            count = gl.load(trace_ptr, volatile=True)  # (the call's overflow counter as last read: _wgr_overflowed)
            while req <= end_req:
                (part_slot, pieces, rows, tok, m_i, l_keys, o00, o01, o10, o11, o20, o21, o30, o31, sc_factor,
                 g) = _wgr_part(
                    req, again, q_ptr, kv_ptr, stride_kvb, kv_desc, sc_desc, kr_desc, block_table_ptr, seqlens_ptr,
                    ok_ptr, num_splits_ptr, stride_qb, stride_qs, stride_qh, stride_btb, s_q, heads_per_kv,
                    rows_per_kv, num_blocks, max_blocks, qk_scale, m_start, begin_req, begin_block, end_req,
                    end_block, begin_split, next_req, next_block, g, kv_raw, sc_raw, kr_raw, bw, bs, br, q_smem,
                    qr_smem, p0_smem, p1_smem, p2_smem, p3_smem, mx_smem, trace_ptr, a_op, rows_l, keys_l,
                    num_warps, CAUSAL, RAW, MODE, TRACE)
                now = _wgr_overflowed(o00, o01, o10, o11, o20, o21, o30, o31, trace_ptr)
                moved = now != count
                count = now
                if moved & (again == 0):
                    again = 1
                else:
                    _wgr_finish(o00, o01, o10, o11, o20, o21, o30, o31, m_i, l_keys, sc_factor, rows, tok, req,
                                part_slot, pieces, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, s_q, h_q,
                                heads_per_kv, rows_per_kv, m_start, trace_ptr, 1 + req - begin_req, False, MODE,
                                TRACE)
                    again = 0
                    req += 1
        else:
            for req in range(begin_req, end_req + 1):
                (part_slot, pieces, rows, tok, m_i, l_keys, o00, o01, o10, o11, o20, o21, o30, o31, sc_factor,
                 g) = _wgr_part(
                    req, 0, q_ptr, kv_ptr, stride_kvb, kv_desc, sc_desc, kr_desc, block_table_ptr, seqlens_ptr,
                    ok_ptr, num_splits_ptr, stride_qb, stride_qs, stride_qh, stride_btb, s_q, heads_per_kv,
                    rows_per_kv, num_blocks, max_blocks, qk_scale, m_start, begin_req, begin_block, end_req,
                    end_block, begin_split, next_req, next_block, g, kv_raw, sc_raw, kr_raw, bw, bs, br, q_smem,
                    qr_smem, p0_smem, p1_smem, p2_smem, p3_smem, mx_smem, trace_ptr, a_op, rows_l, keys_l,
                    num_warps, CAUSAL, RAW, MODE, TRACE)
                t_row = 1 + req - begin_req  # (TRACE: the request's row)
                _wgr_finish(o00, o01, o10, o11, o20, o21, o30, o31, m_i, l_keys, sc_factor, rows, tok, req,
                            part_slot, pieces, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, s_q, h_q, heads_per_kv,
                            rows_per_kv, m_start, trace_ptr, t_row, req - begin_req < _T_REQS, MODE, TRACE)
        _reg_drop_bars(bw, bs, br, RAW)
        _wgr_stamp(trace_ptr, 0, True, 1, TRACE)
        _wgr_stamp(trace_ptr, 0, True, 3, TRACE, True)


_LAUNCH = FastLauncher(_v5_fp8_wgr_kernel) if gluon is not None else None


def launch_v5_fp8_wgr(q, k_cache, block_table, cache_seqlens, dims, causal, meta, num_splits, out, lse, part_out,
                      part_lse, ok_flag, mode: int = 0):
    """Launch the 16-row FP8 tile on wgmma with register operands over the schedule `meta` (k_cache: FlashMLA's FP8
    cache, rows contiguous; mode 0: WGR_MODE's, 3: no dequantization, for timing). MODE 4's guard (WGR_GUARD) takes
    the device's overflow counter where the TRACE probe's buffer would go."""
    grid, args = tma_tile_launch_args("wgmma register FP8 tile", q, k_cache, block_table, cache_seqlens, dims, meta,
                                      num_splits, out, lse, part_out, part_lse, ok_flag, rows=64, tiled_words=True)
    trace = TRACE_BUFFER
    if trace is not None:  # the probe's buffer: refused before the kernel could write past it
        need = grid[0] * grid[1] * TRACE_ROWS * TRACE_COLS
        if trace.dtype != torch.int64 or trace.device != q.device or not trace.is_contiguous() or trace.numel() < need:
            raise ValueError(f"v5_fp8_wgr.TRACE_BUFFER must be a contiguous int64 tensor on {q.device} of at least "
                             f"{need} elements ([programs, TRACE_ROWS, TRACE_COLS]), got {trace.dtype} on "
                             f"{trace.device} with {trace.numel()}")
    mode = mode or WGR_MODE
    guard = guard_for(mode, trace is not None)
    _LAUNCH(grid, *args, trace if trace is not None else overflow_counter(q.device) if guard else ok_flag,
            CAUSAL=causal, META_COLS=meta.shape[1], RAW=WGR_RAW_SLOTS, MODE=mode, TRACE=trace is not None,
            GUARD=guard, num_warps=WGR_WARPS, maxnreg=WGR_MAXNREG)


def guard_for(mode: int, traced: bool) -> int:
    """The kernel's GUARD for a launch in `mode`: WGR_GUARD in MODE 4 without the TRACE probe (whose buffer takes the
    overflow counter's place), else 0."""
    return int(WGR_GUARD) if mode == 4 and not traced else 0


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def overflow_counter(device: torch.device) -> torch.Tensor:
    """The per-device int32 [1] counter that MODE 4's guard adds to where a request part's outputs came out inf or
    NaN (_wgr_overflowed: a part redoes its pages when the counter moved while it ran; never reset)."""
    counter = _COUNTERS.get(device)
    if counter is None:
        counter = _COUNTERS[device] = torch.zeros(1, dtype=torch.int32, device=device)
        PERSISTENT[counter.data_ptr()] = counter  # (call plans replay a launch that takes it)
    return counter
