"""The FP8 latent cache row: FlashMLA's 656-byte "V32" layout, its quantizer and its inverse.

A bf16 cache row is 576 values = 1,152 bytes: c_kv (512) then k_rope (64). The FP8 row keeps the same numbers in
656 bytes (1.76x fewer), laid out as in deepseek-ai/FlashMLA (`flash_mla_interface.py`, `tests/quant.py`):

    bytes   0 .. 511   c_kv as 512 float8_e4m3fn values, quantized in 4 tiles of 128
    bytes 512 .. 527   4 float32 scales, scale i for values 128·i .. 128·i + 127
    bytes 528 .. 655   k_rope as 64 bf16 values, not quantized

Per tile: amax = max |x| over its 128 values, scale = 2^⌈log2(max(amax / 448, 1e-4))⌉ (448 is e4m3's largest
finite value; a power of two makes x / scale and value · scale exact, only the cast to e4m3 rounds), stored
value = (x / scale) cast to e4m3 with round-to-nearest-even; the dequantized value is stored value · scale.
The 1e-4 floor applies to amax / 448, as FlashMLA's code does (`clamp_min(amax / 448, 1e-4)`): the smallest
scale is 2^-13, so values below about 2^-22 (e4m3's smallest subnormal, 2^-9, times 2^-13) read back as 0.

Why tiles, and why RoPE stays bf16: e4m3 has 3 mantissa bits (relative error up to 2^-4 per value) and a range
of 2^-9 .. 448, so a scale must follow the magnitude of what it covers. c_kv comes out of an RMSNorm and is
small and even; k_rope is a rotated projection whose magnitude differs from c_kv's and from position to position,
and it enters every score undamped ("sensitive to precision loss", FlashMLA's docs). One scale per 128 values per
token keeps each tile's largest value near 448; RoPE's 64 values cost 128 bytes in bf16, 20 % of the row.
docs/fp8.md measures both choices.

Non-finite input: a NaN in a tile makes its scale NaN and the whole tile reads back NaN; an inf makes the scale
inf and the tile reads back NaN (0 · inf); FlashMLA's quantizer does the same. That is how the tests poison unused
rows. A value within 1/16 of bf16's largest (|x| >= 2^127 · 1.9375) can round up to 2^128 and read back inf.

`quantize_rows` / `dequantize_rows` work on any leading shape. Stage 5's append quantizes its new rows in the
kernel that writes them (kernels/append.py), bit for bit as `quantize_rows`, which is its reference.
"""

from __future__ import annotations

import torch

D_NOPE = 512  # c_kv values per row (kv_lora_rank), quantized
D_ROPE = 64  # k_rope values per row (qk_rope_head_dim), kept in bf16
D_ROW = D_NOPE + D_ROPE  # 576: the bf16 row this format stores
TILE = 128  # values per scale
NUM_TILES = D_NOPE // TILE  # 4
FP8_MAX = 448.0  # largest finite float8_e4m3fn
SCALE_FLOOR = 1e-4  # amax / 448 is clamped to at least this before rounding up to a power of two
SCALE_OFFSET = D_NOPE  # byte 512: the 4 float32 scales
ROPE_OFFSET = SCALE_OFFSET + 4 * NUM_TILES  # byte 528: the 64 bf16 RoPE values
ROW_BYTES = ROPE_OFFSET + 2 * D_ROPE  # 656 bytes per token per layer
FP8_DTYPE = torch.float8_e4m3fn

__all__ = [
    "D_ROW", "ROW_BYTES", "TILE", "NUM_TILES", "SCALE_OFFSET", "ROPE_OFFSET", "FP8_DTYPE",
    "tile_scales", "quantize_rows", "dequantize_rows", "quantize_k_cache", "dequantize_k_cache",
    "validate_fp8_k_cache",
]


def tile_scales(amax: torch.Tensor) -> torch.Tensor:
    """Scale per tile from its amax (float32): 2^⌈log2(max(amax / 448, 1e-4))⌉; NaN stays NaN, inf stays inf.

    The exponent comes from frexp (y = m·2^e with m in [0.5, 1): ⌈log2 y⌉ = e - 1 if m = 0.5, else e), which is
    exact on every device, where a float log2 may round a value just above a power of two down onto it.
    """
    y = (amax.float() / FP8_MAX).clamp_min(SCALE_FLOOR)  # NaN propagates through both
    mantissa, exponent = torch.frexp(y)
    exponent = exponent - (mantissa == 0.5).to(exponent.dtype)  # exact powers of two keep their exponent
    scale = torch.ldexp(torch.ones_like(y), exponent)
    return torch.where(torch.isfinite(y), scale, y)


def quantize_rows(rows: torch.Tensor) -> torch.Tensor:
    """bf16 rows [..., 576] = [c_kv | k_rope] -> their 656-byte FP8 form [..., 656] (dtype float8_e4m3fn).

    Torch ops only, no host sync: the reference of stage 5's append kernel (kernels/append.py, the same bytes) and
    stage 5's append where no kernel can run (CPU tensors outside Triton's interpreter); a CUDA graph can capture it.
    """
    if not isinstance(rows, torch.Tensor) or rows.dim() < 1 or rows.shape[-1] != D_ROW:
        got = list(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
        raise ValueError(f"rows must be a tensor [..., {D_ROW}] ([c_kv (512) | k_rope (64)]), got {got}")
    if rows.dtype != torch.bfloat16:
        raise TypeError(f"rows must be bfloat16 (the FP8 layout keeps k_rope in bf16), got {rows.dtype}")
    lead = rows.shape[:-1]
    nope = rows[..., :D_NOPE].float().unflatten(-1, (NUM_TILES, TILE))  # [..., 4, 128]
    scale = tile_scales(nope.abs().amax(dim=-1))  # [..., 4] float32 (amax propagates NaN)
    values = (nope / scale[..., None]).to(FP8_DTYPE).flatten(-2)  # [..., 512]: exact division, one rounding
    rope = rows[..., D_NOPE:].contiguous()  # [..., 64] bf16, unquantized
    parts = [values.view(torch.uint8), scale.contiguous().view(torch.uint8), rope.view(torch.uint8)]
    out = torch.cat(parts, dim=-1)  # [..., 512 + 16 + 128] bytes
    return out.view(FP8_DTYPE).reshape(*lead, ROW_BYTES)


def dequantize_rows(rows8: torch.Tensor) -> torch.Tensor:
    """[..., 656] FP8 rows -> bf16 [..., 576]: c_kv = value · scale (exact in bf16), k_rope as stored."""
    _check_fp8_rows("rows8", rows8)
    raw = rows8.view(torch.uint8)
    values = raw[..., :D_NOPE].view(FP8_DTYPE).float().unflatten(-1, (NUM_TILES, TILE))  # [..., 4, 128]
    scale = raw[..., SCALE_OFFSET:ROPE_OFFSET].contiguous().view(torch.float32)  # [..., 4]
    nope = (values * scale[..., None]).flatten(-2).to(torch.bfloat16)  # [..., 512]
    rope = raw[..., ROPE_OFFSET:].contiguous().view(torch.bfloat16)  # [..., 64]
    return torch.cat([nope, rope], dim=-1)  # [..., 576]


def _check_fp8_rows(name: str, t) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[-1] != ROW_BYTES:
        got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a tensor [..., {ROW_BYTES}] (FlashMLA's FP8 rows), got {got}")
    if t.dtype != FP8_DTYPE:
        hint = " (a uint8 buffer: .view(torch.float8_e4m3fn))" if t.dtype == torch.uint8 else ""
        raise TypeError(f"{name} must have dtype torch.float8_e4m3fn{hint}, got {t.dtype}")


def _check_cache_rank(name: str, t, width: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [num_blocks, page_size, h_kv, {width}], "
                        f"got {type(t).__name__}")
    if t.dim() != 4 or t.shape[-1] != width:
        raise ValueError(f"{name} must be [num_blocks, page_size, h_kv, {width}], got shape {list(t.shape)}")


def quantize_k_cache(k_cache: torch.Tensor) -> torch.Tensor:
    """A bf16 cache [num_blocks, 64, 1, 576] -> FlashMLA's FP8 cache [num_blocks, 64, 1, 656] (float8_e4m3fn).

    Every row is quantized on its own (any page size and number of latent heads work); unused rows come along
    as they are (NaN rows become NaN rows). See the module docstring for the layout.
    """
    _check_cache_rank("k_cache", k_cache, D_ROW)
    if k_cache.dtype != torch.bfloat16:
        raise TypeError(f"k_cache must be bfloat16 (FlashMLA's FP8 layout stores k_rope as bf16), "
                        f"got {k_cache.dtype}")
    return quantize_rows(k_cache)


def dequantize_k_cache(k_fp8: torch.Tensor) -> torch.Tensor:
    """FlashMLA's FP8 cache [num_blocks, 64, 1, 656] -> bf16 [num_blocks, 64, 1, 576] (the inverse of
    quantize_k_cache up to e4m3's rounding)."""
    _check_cache_rank("k_fp8", k_fp8, ROW_BYTES)
    _check_fp8_rows("k_fp8", k_fp8)
    return dequantize_rows(k_fp8)


def validate_fp8_k_cache(k_cache, q) -> None:
    """The FP8 cache as the decode kernel takes it (`is_fp8_kvcache=True`); raises TypeError/ValueError.

    k_cache float8_e4m3fn [num_blocks, 64, h_kv, 656] whose strides are multiples of 4 bytes and whose start is
    4-byte aligned (the kernel reads the scales as float32 and k_rope as bf16 from the same rows); q bfloat16
    (k_rope is bf16 in the row, and the kernel's tensor-core work is bf16).
    """
    if not isinstance(k_cache, torch.Tensor):
        raise TypeError(f"k_cache must be a torch.Tensor [num_blocks, 64, h_kv, {ROW_BYTES}] float8_e4m3fn, "
                        f"got {type(k_cache).__name__}")
    if k_cache.dtype != FP8_DTYPE:
        hint = " (a uint8 buffer: .view(torch.float8_e4m3fn))" if k_cache.dtype == torch.uint8 else ""
        raise TypeError(f"k_cache must have dtype torch.float8_e4m3fn with is_fp8_kvcache=True{hint}, "
                        f"got {k_cache.dtype}")
    if k_cache.dim() != 4 or k_cache.shape[-1] != ROW_BYTES:
        raise ValueError(f"k_cache must be [num_blocks, 64, h_kv, {ROW_BYTES}] with is_fp8_kvcache=True "
                         f"(FlashMLA's FP8 rows), got shape {tuple(k_cache.shape)}")
    if q.dtype != torch.bfloat16:
        raise TypeError(f"q must be bfloat16 with is_fp8_kvcache=True (the FP8 rows hold k_rope in bf16), "
                        f"got {q.dtype}")
    if k_cache.stride(-1) != 1 or any(s % 4 for s in k_cache.stride()[:-1]) or k_cache.data_ptr() % 4:
        raise ValueError(f"k_cache (FP8) must have unit stride in its last dim and strides that are multiples of "
                         f"4 bytes from a 4-byte aligned start, got strides {k_cache.stride()}")
