"""The FP8 Gluon tiles' dequantization sequences (inline PTX in kernels/v5_fp8_gluon.py and kernels/v5_fp8_reg.py),
run on the CPU by a small interpreter of the five instructions they use, against torch's e4m3 -> float conversion.

No GPU runs them in CI (Gluon has no interpreter), so this is where the bit tricks are checked: every e4m3 code,
sign, subnormal and zero, times every scale the quantizer can write from 2^-20 to 2^20, and for the register tile's
pair sequence every pair of codes in each of the four byte positions.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

v5_fp8_gluon = pytest.importorskip("mla_tutorial.kernels.v5_fp8_gluon")
v5_fp8_reg = pytest.importorskip("mla_tutorial.kernels.v5_fp8_reg")
if not hasattr(v5_fp8_gluon, "_E4M3X4_TIMES_SCALE"):  # pragma: no cover - a Triton without Gluon
    pytest.skip("this Triton has no Gluon: the PTX constants are not defined", allow_module_level=True)

NAN_CODES = (0x7F, 0xFF)  # e4m3's NaN: the sequences read it as ±480; a tile holding one has a NaN scale


def _bf16_bits_to_float(bits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(bits.astype(np.int16)).view(torch.bfloat16).float()


def _float_to_bf16_bits(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.bfloat16).view(torch.int16).numpy().astype(np.uint32) & 0xFFFF


def _mul_bf16x2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mul.rn.bf16x2: each 16-bit lane a bf16; the product of two bf16 is exact in float32, then rounded to bf16."""
    out = np.zeros_like(a)
    for shift in (0, 16):
        x = _bf16_bits_to_float((a >> shift) & 0xFFFF) * _bf16_bits_to_float((b >> shift) & 0xFFFF)
        out |= _float_to_bf16_bits(x) << shift
    return out


def _prmt(a: np.ndarray, b: np.ndarray, sel: int) -> np.ndarray:
    """prmt.b32 (default mode): result byte i is byte sel[i] & 7 of {b, a} (a: bytes 0-3), or that byte's sign
    replicated over 8 bits when sel[i] & 8."""
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
    """Run one of the tiles' PTX blocks over arrays of uint32 inputs ($n -> array); returns the outputs as uint32
    arrays ($n -> 16-bit values for "=h" outputs). Only the instructions the blocks use are understood."""
    regs: dict[str, np.ndarray] = {f"${n}": v.astype(np.uint32) for n, v in inputs.items()}
    outs: dict[int, np.ndarray] = {}

    def val(tok: str) -> np.ndarray | int:
        tok = tok.strip()
        return int(tok, 0) if re.fullmatch(r"0x[0-9A-Fa-f]+|\d+", tok) else regs[tok]

    for line in asm.strip().strip("{}").split(";"):
        line = line.strip()
        if not line or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        args = [t.strip() for t in re.split(r",(?![^{]*})", rest)]
        if op == "mov.b32" and args[0].startswith("{"):  # split a 32-bit register into two 16-bit outputs
            lo, hi = (int(t.strip()[1:]) for t in args[0].strip("{}").split(","))
            outs[lo], outs[hi] = regs[args[1]] & 0xFFFF, regs[args[1]] >> 16
        elif op == "mov.b32":
            regs[args[0]] = np.uint32(val(args[1])) * np.ones_like(next(iter(inputs.values())), dtype=np.uint32)
        elif op == "prmt.b32":
            a = val(args[1])
            b = val(args[2])
            b = b if isinstance(b, np.ndarray) else np.full_like(a, b)
            regs[args[0]] = _prmt(a, b, val(args[3]))
        elif op == "shl.b32":
            regs[args[0]] = (val(args[1]) << val(args[2])) & 0xFFFFFFFF
        elif op == "and.b32":
            regs[args[0]] = val(args[1]) & val(args[2])
        elif op == "mul.rn.bf16x2":
            regs[args[0]] = _mul_bf16x2(val(args[1]), val(args[2]))
        else:  # pragma: no cover - a new instruction in a block: teach the interpreter first
            raise NotImplementedError(f"PTX instruction {op!r} in {line!r}")
    return outs


def _e4m3_value(codes: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(codes.astype(np.uint8)).view(torch.float8_e4m3fn).float()


SCALES = [2.0**e for e in range(-20, 21, 5)] + [0.0]  # powers of two as the quantizer writes them; 0 for padding rows


@pytest.mark.parametrize("scale", SCALES)
def test_one_key_sequence_is_exact_on_every_code(scale):
    """_E4M3X4_TIMES_SCALE (every Gluon FP8 tile's dequantization): four codes of a word times the row's scale are
    bf16(value * scale) exactly, for every code but NaN, in each of the word's four bytes."""
    codes = np.array([c for c in range(256) if c not in NAN_CODES], dtype=np.uint32)
    words = np.stack([np.roll(codes, k) for k in range(4)], axis=1)  # each code in each byte position
    word = words[:, 0] | words[:, 1] << 8 | words[:, 2] << 16 | words[:, 3] << 24
    scale_bits = np.full_like(word, np.float32(scale).view(np.uint32))
    out = run_ptx(v5_fp8_gluon._E4M3X4_TIMES_SCALE.value, {4: word, 5: scale_bits})
    for k in range(4):
        want = (_e4m3_value(words[:, k]) * scale).to(torch.bfloat16)
        got = torch.from_numpy(out[k].astype(np.int16)).view(torch.bfloat16)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), f"byte {k}, scale {scale}"


def test_unscaled_sequence_is_the_value_in_bf16():
    """_E4M3X4 (the register tile's K operand, the scale applied to S instead): bf16(value), exactly."""
    codes = np.array([c for c in range(256) if c not in NAN_CODES], dtype=np.uint32)
    words = np.stack([np.roll(codes, 3 * k) for k in range(4)], axis=1)
    word = words[:, 0] | words[:, 1] << 8 | words[:, 2] << 16 | words[:, 3] << 24
    out = run_ptx(v5_fp8_reg._E4M3X4.value, {4: word})
    for k in range(4):
        want = _e4m3_value(words[:, k]).to(torch.bfloat16)
        assert torch.equal(torch.from_numpy(out[k].astype(np.int16)), want.view(torch.int16)), f"byte {k}"


def test_pair_sequence_is_exact_on_every_pair_of_codes():
    """_E4M3_PAIRS (the register tile's V operand): byte e of the even key's word and byte e of the odd key's word
    become the bf16 pair (even, odd) of output e, for every pair of non-NaN codes in each of the four positions."""
    codes = np.array([c for c in range(256) if c not in NAN_CODES], dtype=np.uint32)
    even, odd = (g.ravel() for g in np.meshgrid(codes, codes, indexing="ij"))
    junk = np.uint32(0x5A)  # the other bytes of the words: must not leak into the pair
    for e in range(4):
        def word(c, e=e):
            w = np.full_like(c, junk | junk << 8 | junk << 16 | junk << 24)
            return (w & ~np.uint32(0xFF << (8 * e))) | (c << (8 * e))

        out = run_ptx(v5_fp8_reg._E4M3_PAIRS.value, {8: word(even), 9: word(odd)})
        got_even, got_odd = out[2 * e], out[2 * e + 1]
        assert np.array_equal(got_even, _float_to_bf16_bits(_e4m3_value(even))), f"position {e}, even key"
        assert np.array_equal(got_odd, _float_to_bf16_bits(_e4m3_value(odd))), f"position {e}, odd key"


def test_nan_codes_read_as_480_and_a_nan_scale_passes_through():
    """The documented edge: e4m3's NaN code reads ±480 (no NaN check in the sequences); the quantizer gives a tile
    holding a NaN a NaN scale, which the multiply passes on."""
    word = np.array([0x7F | 0xFF << 8], dtype=np.uint32)
    out = run_ptx(v5_fp8_gluon._E4M3X4_TIMES_SCALE.value, {4: word, 5: np.array([np.float32(1).view(np.uint32)])})
    assert _bf16_bits_to_float(out[0]).item() == 480.0 and _bf16_bits_to_float(out[1]).item() == -480.0
    nan = np.array([np.float32("nan").view(np.uint32)], dtype=np.uint32)
    out = run_ptx(v5_fp8_gluon._E4M3X4_TIMES_SCALE.value, {4: np.array([0x38], dtype=np.uint32), 5: nan})
    assert torch.isnan(_bf16_bits_to_float(out[0])).all()
