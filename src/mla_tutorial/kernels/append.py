# The append: a decode step's new cache rows written into their pages by one kernel (stages 4 and 5).
#
# Stage 3 writes the new rows with torch: the rows' positions from the lengths, their pages from the block table,
# their slots, an index_copy_, the lengths' update: ~10 small kernels. Stage 5 first quantized the rows with torch
# (fp8.quantize_rows: ~18 more: amax, the scale's power of two, the division, the cast, the concatenation), so its
# decode step launched ~28 kernels to write 64 rows of 656 bytes, each a few µs of launch and ramp even in a CUDA
# graph: 0.298 ms a step against stage 4's 0.281 at 16 heads (decode_bench_fp8wgr4_*), though its attention kernel
# alone took 0.76 of stage 4's. Here one program per sequence (per 16 of its new rows) reads the sequence's length,
# finds each row's page and slot, and writes the row: stage 4's bf16 row as it is, stage 5's quantized on the way
# (FlashMLA's 656-byte layout, fp8.py). Where one program holds all of a sequence's new rows (decode: one row) it
# also adds them to the length, so a decode step's append is one launch.
#
# The quantization is bit for bit fp8.quantize_rows's (tests/test_append.py, in the interpreter and on the GPU):
# amax / 448 and x / scale by correctly rounded division (div_rn, as torch's), the scale's power of two from the
# bits of max(amax / 448, 1e-4), and the cast to e4m3 written out in integer operations (round to nearest even,
# subnormals, NaN as 0x7F): Triton's own fp8 cast rounds differently in its interpreter (ties away from zero, no
# subnormals), and a tutorial's CI must check the same bytes the GPU writes. A NaN anywhere in a tile makes its
# scale NaN and every value of the tile NaN, as in fp8.py.
"""One kernel for a decode step's append: the new rows into their pages (stage 4), quantized to FP8 (stage 5)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import FastLauncher

ROWS_PER_PROGRAM = 16  # new rows a program writes (a power of two; decode writes 1 a sequence)


@triton.jit
def _e4m3_bits(v):
    """float32 v -> its float8_e4m3fn byte (int32) as torch's cast gives it, rounded to nearest even, in integer
    operations: normals (|v| >= 2^-6) with the exponent rebased and the mantissa rounded in one add; subnormals,
    k · 2^-9, from the 24-bit significand shifted with the bits it drops rounded; |v| >= 464 (past 448's rounding
    range) and inf as NaN with v's sign, NaN as 0x7F."""
    bits = v.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = bits & 0x7FFFFFFF
    e = a >> 23  # fp32 biased exponent
    # normal e4m3 (fp32 exponent >= 121): bias 127 -> 7, 23 mantissa bits -> 3, nearest even
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - (120 << 3)
    # subnormal e4m3 (fp32 exponent <= 120): k = the significand (1.m · 2^23) shifted right by 141 - e
    sh = tl.maximum(tl.minimum(141 - e, 25), 1)  # 21.. here; at 25 every bit drops, with a half above them
    sig = (a & 0x7FFFFF) | 0x800000
    k = sig >> sh
    rem = sig - (k << sh)
    half = 1 << (sh - 1)
    k += ((rem > half) | ((rem == half) & ((k & 1) == 1))).to(tl.int32)
    k = tl.where(e == 0, 0, k)  # fp32 zero and subnormals: 0
    code = tl.where(e >= 121, normal, k)
    code = tl.where(a >= 0x43E80000, 0x7F, code)  # 464.0 and up, inf
    return tl.where(a > 0x7F800000, 0x7F, code | sign)


@triton.jit
def _append_kernel(
    kv_ptr,  # [B, T, 576] new rows (stride 1 in the last dim)
    table_ptr,  # int32 [rows, W] block table of the cache (table row `row` is sequence b's)
    lengths_ptr,  # int32 [rows] tokens held before this append
    rows_ptr,  # int64 [B] table rows of the batch's sequences (INDEXED), else unused
    out_ptr,  # the pool [N·64, OUT] in kv's dtype (QUANT False) or as bytes (QUANT: OUT = 656)
    out_f32_ptr,  # QUANT: the pool as float32 [N·64, 164] (the scales), else unused
    out_bf16_ptr,  # QUANT: the pool as bf16 [N·64, 328] (k_rope), else unused
    stride_kb, stride_kt, stride_tb, row0, T,
    PAGE: tl.constexpr, BLOCK_T: tl.constexpr, QUANT: tl.constexpr, INDEXED: tl.constexpr, UPDATE: tl.constexpr,
):
    b = tl.program_id(0)
    if INDEXED:
        row = tl.load(rows_ptr + b)
    else:
        row = row0 + b
    length = tl.load(lengths_ptr + row)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T] new rows
    t_ok = t < T
    pos = length + t  # token index in the sequence
    page = tl.load(table_ptr + row.to(tl.int64) * stride_tb + pos // PAGE, mask=t_ok, other=0)
    slot = page.to(tl.int64) * PAGE + pos % PAGE  # [BLOCK_T] row of the flat pool
    src = kv_ptr + b.to(tl.int64) * stride_kb + t.to(tl.int64) * stride_kt  # [BLOCK_T]
    rope = tl.arange(0, 64)
    r = tl.load(src[:, None] + 512 + rope[None, :], mask=t_ok[:, None])  # [BLOCK_T, 64] k_rope, stored as it is
    if QUANT:
        tiles = tl.arange(0, 4)
        col = tiles[:, None] * 128 + tl.arange(0, 128)[None, :]  # [4, 128] c_kv column
        x = tl.load(src[:, None, None] + col[None], mask=t_ok[:, None, None], other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=2)  # [BLOCK_T, 4]
        amax = tl.where(tl.max((x != x).to(tl.int32), axis=2) > 0, float("nan"), amax)  # (max drops NaN)
        y = tl.math.div_rn(amax, 448.0)
        y = tl.where(y < 1e-4, 1e-4, y)  # clamp_min (NaN stays NaN)
        yb = y.to(tl.int32, bitcast=True)
        up = ((yb >> 23) + 1) << 23  # 2^(⌊log2 y⌋ + 1); y itself where y is a power of two, inf or NaN
        scale = tl.where(((yb & 0x7FFFFF) == 0) | ((yb >> 23) == 255), yb, up).to(tl.float32, bitcast=True)
        q = _e4m3_bits(tl.math.div_rn(x, scale[:, :, None]))  # [BLOCK_T, 4, 128]
        tl.store(out_ptr + slot[:, None, None] * 656 + col[None], q.to(tl.uint8), mask=t_ok[:, None, None])
        tl.store(out_f32_ptr + slot[:, None] * 164 + 128 + tiles[None, :], scale, mask=t_ok[:, None])
        tl.store(out_bf16_ptr + slot[:, None] * 328 + 264 + rope[None, :], r, mask=t_ok[:, None])
    else:
        nope = tl.arange(0, 512)
        v = tl.load(src[:, None] + nope[None, :], mask=t_ok[:, None])
        tl.store(out_ptr + slot[:, None] * 576 + nope[None, :], v, mask=t_ok[:, None])
        tl.store(out_ptr + slot[:, None] * 576 + 512 + rope[None, :], r, mask=t_ok[:, None])
    if UPDATE:  # this program holds all of the sequence's new rows (its length read above, by it alone)
        tl.store(lengths_ptr + row, length + T)


_LAUNCH = FastLauncher(_append_kernel)


def append_rows(pool: torch.Tensor, kv: torch.Tensor, table: torch.Tensor, lengths: torch.Tensor,
                rows: slice | torch.Tensor, page_size: int, quantize: bool) -> None:
    """Write kv [B, T, 576] as the next T tokens of the sequences in table rows `rows` (a slice of consecutive rows
    or an int64 index tensor [B]) and add T to their `lengths` (int32, the device copy): one launch where T <= 16.

    pool: [num_blocks, page_size, 576] in kv's dtype, or with `quantize` FlashMLA's FP8 pool [num_blocks,
    page_size, 656] (float8_e4m3fn) and kv bf16, each row quantized as fp8.quantize_rows does. The caller has taken
    the pages (the table holds every new row's page; PagedLatentCache.append) and checked the shapes: nothing here
    is validated again (a Triton kernel, on the GPU or in the interpreter)."""
    B, T, _ = kv.shape
    if kv.stride(-1) != 1:
        kv = kv.contiguous()
    block_t = min(triton.next_power_of_2(T), ROWS_PER_PROGRAM)
    chunks = triton.cdiv(T, block_t)
    indexed = not isinstance(rows, slice)
    rows_arg = rows if indexed else lengths
    row0 = 0 if indexed else rows.start
    flat = pool.view(-1, pool.shape[-1])  # [N·64, 656 or 576]
    if quantize:
        outs = (flat.view(torch.uint8), flat.view(torch.float32), flat.view(torch.bfloat16))
    else:
        outs = (flat, flat, flat)
    _LAUNCH((B, chunks), kv, table, lengths, rows_arg, *outs, kv.stride(0), kv.stride(1), table.stride(0), row0, T,
            PAGE=page_size, BLOCK_T=block_t, QUANT=quantize, INDEXED=indexed, UPDATE=chunks == 1, num_warps=4)
    if chunks > 1:  # (programs of one sequence read its length: added once they are all done)
        if indexed:
            lengths.index_add_(0, rows, lengths.new_full((B,), T))
        else:
            lengths[rows].add_(T)
