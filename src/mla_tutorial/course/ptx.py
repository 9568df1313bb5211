"""The FP8 Gluon tiles' dequantization, readable and runnable on a CPU: a tiny interpreter of the six PTX instructions
their inline assembly uses, and the column maps of the register tile (kernels/v5_fp8_reg.py).

No GPU runs those kernels in CI or on a laptop (Gluon has no interpreter), so this is how a reader (notebook 07) and
the tests (tests/test_fp8_ptx.py) run the very PTX text the kernels carry:

    run_ptx(asm, {4: words})            the outputs ($n -> uint32 arrays) of one inline-PTX block over arrays of inputs
    e4m3_bits_to_fp16(codes)            what the K operand's block must give: torch's e4m3 value in fp16 (bits)
    register_tile_k_columns(t)          for lane pair t, the cache columns of its K operand in each k16 step
    register_tile_v_columns(w, g)       for warp w, lane group g, the cache columns of its four V n8 tiles

Understood instructions: mov.b32 (an immediate, or a 32-bit register split into two 16-bit outputs or registers),
prmt.b32 in its default mode (sign replication included), shl.b32, and.b32, mul.rn.bf16x2, and cvt.rn.f16x2.e4m3x2
(the hardware conversion of two e4m3 codes in a 16-bit register into two fp16). Anything else raises.
"""

from __future__ import annotations

import re

import numpy as np
import torch


def bf16_bits_to_float(bits: np.ndarray) -> torch.Tensor:
    """16-bit patterns (any integer array) as float32 values of the bf16 they encode."""
    return torch.from_numpy(np.asarray(bits).astype(np.int16)).view(torch.bfloat16).float()


def fp16_bits_to_float(bits: np.ndarray) -> torch.Tensor:
    """16-bit patterns (any integer array) as float32 values of the fp16 they encode."""
    return torch.from_numpy(np.asarray(bits).astype(np.int16)).view(torch.float16).float()


def float_to_bf16_bits(x: torch.Tensor) -> np.ndarray:
    """Round float values to bf16 (to nearest even, as torch does) and return the 16-bit patterns as uint32."""
    return x.to(torch.bfloat16).view(torch.int16).numpy().astype(np.uint32) & 0xFFFF


def e4m3_bits_to_fp16(codes: np.ndarray) -> np.ndarray:
    """Each e4m3 code's value (torch's float8_e4m3fn, NaN included) as fp16 bits (uint32): exact, e4m3 ⊂ fp16."""
    value = torch.from_numpy(np.asarray(codes).astype(np.uint8)).view(torch.float8_e4m3fn).to(torch.float16)
    return value.view(torch.int16).numpy().astype(np.uint32) & 0xFFFF


def _cvt_f16x2_e4m3x2(a: np.ndarray) -> np.ndarray:
    """cvt.rn.f16x2.e4m3x2: the two e4m3 codes of a 16-bit value (low byte -> low lane) as two fp16 lanes."""
    return e4m3_bits_to_fp16(a & 0xFF) | e4m3_bits_to_fp16((a >> 8) & 0xFF) << 16


def _mul_bf16x2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mul.rn.bf16x2: each 16-bit lane a bf16; the product of two bf16 is exact in float32, then rounded to bf16."""
    out = np.zeros_like(a)
    for shift in (0, 16):
        x = bf16_bits_to_float((a >> shift) & 0xFFFF) * bf16_bits_to_float((b >> shift) & 0xFFFF)
        out |= float_to_bf16_bits(x) << shift
    return out


def _prmt(a: np.ndarray, b: np.ndarray, sel: int) -> np.ndarray:
    """prmt.b32 (default mode): result byte i is byte sel[i] & 7 of {b, a} (a: bytes 0-3, b: bytes 4-7), or that
    byte's sign replicated over 8 bits when sel[i] & 8."""
    both = [(a >> (8 * k)) & 0xFF for k in range(4)] + [(b >> (8 * k)) & 0xFF for k in range(4)]
    out = np.zeros_like(a)
    for i in range(4):
        nib = (sel >> (4 * i)) & 0xF
        byte = both[nib & 7]
        if nib & 8:
            byte = np.where(byte & 0x80, 0xFF, 0x00).astype(np.uint32)
        out |= byte << (8 * i)
    return out


def run_ptx(asm: str, inputs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Run one inline-PTX block of the FP8 tiles over arrays: inputs maps an operand number ($n) to a uint32 array
    (one element per invocation); returns the 16-bit outputs ($n -> uint32 array) that the block writes with
    `mov.b32 {$i, $j}, reg` (low half to $i)."""
    shape = np.asarray(next(iter(inputs.values()))).shape
    regs: dict[str, np.ndarray] = {f"${n}": np.asarray(v).astype(np.uint32) for n, v in inputs.items()}
    outs: dict[int, np.ndarray] = {}

    def val(tok: str) -> np.ndarray:
        tok = tok.strip()
        if re.fullmatch(r"0x[0-9A-Fa-f]+|\d+", tok):
            return np.full(shape, int(tok, 0), dtype=np.uint32)
        return regs[tok]

    for line in asm.strip().strip("{}").split(";"):
        line = line.strip()
        if not line or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        args = [t.strip() for t in re.split(r",(?![^{]*})", rest)]
        if op == "mov.b32" and args[0].startswith("{"):  # split a 32-bit register into two 16-bit halves
            lo, hi = (t.strip() for t in args[0].strip("{}").split(","))
            x = val(args[1])
            for name, half in ((lo, x & 0xFFFF), (hi, x >> 16)):
                if name.startswith("$"):  # an output operand
                    outs[int(name[1:])] = half
                else:  # a .b16 register of the block
                    regs[name] = half
        elif op == "mov.b32":
            regs[args[0]] = val(args[1])
        elif op == "prmt.b32":
            regs[args[0]] = _prmt(val(args[1]), val(args[2]), int(args[3], 0))
        elif op == "shl.b32":
            regs[args[0]] = (val(args[1]) << val(args[2])) & 0xFFFFFFFF
        elif op == "and.b32":
            regs[args[0]] = val(args[1]) & val(args[2])
        elif op == "mul.rn.bf16x2":
            regs[args[0]] = _mul_bf16x2(val(args[1]), val(args[2]))
        elif op == "cvt.rn.f16x2.e4m3x2":
            regs[args[0]] = _cvt_f16x2_e4m3x2(val(args[1]))
        else:
            raise NotImplementedError(f"PTX instruction {op!r} (in {line!r}) is not one this interpreter knows")
    return outs


def pack_words(codes: np.ndarray) -> np.ndarray:
    """Rows of four byte codes [n, 4] -> n little-endian 32-bit words (byte 0 lowest), as the tiles load them."""
    codes = np.asarray(codes).astype(np.uint32)
    return codes[:, 0] | codes[:, 1] << 8 | codes[:, 2] << 16 | codes[:, 3] << 24


def register_tile_k_columns(t: int) -> list[list[int]]:
    """The register tile's K operand (kernels/v5_fp8_reg.py): for lane pair t (lane % 4), the cache columns it holds
    in each of the four k16 steps of a 64-column block. mma.sync gives thread t the reduction indices 2t, 2t+1,
    2t+8, 2t+9 of a step; the tile permutes the columns (logical 16j + 8a + 2t + b is column 16t + 4j + 2a + b, on Q
    too) so that those four are one 32-bit word of the key's row: columns 16t + 4j .. 16t + 4j + 3."""
    if t not in range(4):
        raise ValueError(f"t is a lane's pair index, lane % 4, in 0..3, got {t!r}")
    perm = lambda n: (n // 64) * 64 + 16 * ((n // 2) % 4) + 4 * ((n // 16) % 4) + 2 * ((n // 8) % 2) + n % 2
    return [[perm(16 * j + k) for k in (2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9)] for j in range(4)]


def register_tile_v_columns(w: int, g: int) -> list[int]:
    """The register tile's V operand: for warp w (0..3) and lane group g (lane // 4, 0..7), the cache column of
    each of its four n8 tiles in a 128-column slice. mma.sync gives it output column 8w + g of each tile (32 apart);
    the tile makes logical column 32e + x cache column 4x + e, so the four are one 32-bit word: 4(8w + g) .. + 3."""
    if w not in range(4) or g not in range(8):
        raise ValueError(f"w is a warp in 0..3 and g a lane group (lane // 4) in 0..7, got {w!r}, {g!r}")
    return [4 * ((32 * e + 8 * w + g) % 32) + (32 * e + 8 * w + g) // 32 for e in range(4)]
