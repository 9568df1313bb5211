"""The FP8 Gluon tiles' dequantization sequences (inline PTX in kernels/v5_fp8_gluon.py and kernels/v5_fp8_reg.py),
run on the CPU by a small interpreter of the five instructions they use, against torch's e4m3 -> float conversion.

No GPU runs them in CI (Gluon has no interpreter), so this is where the bit tricks are checked: every e4m3 code,
sign, subnormal and zero, times every scale the quantizer can write from 2^-20 to 2^20, and for the register tile's
pair sequence every pair of codes in each of the four byte positions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mla_tutorial.course.ptx import (
    bf16_bits_to_float,
    e4m3_bits_to_fp16,
    float_to_bf16_bits,
    pack_words,
    register_tile_k_columns,
    register_tile_v_columns,
    run_ptx,
)

v5_fp8_gluon = pytest.importorskip("mla_tutorial.kernels.v5_fp8_gluon")
v5_fp8_reg = pytest.importorskip("mla_tutorial.kernels.v5_fp8_reg")
v5_gluon = pytest.importorskip("mla_tutorial.kernels.v5_gluon")
if not hasattr(v5_fp8_gluon, "_E4M3X4_TIMES_SCALE"):  # pragma: no cover - a Triton without Gluon
    pytest.skip("this Triton has no Gluon: the PTX constants are not defined", allow_module_level=True)

NAN_CODES = (0x7F, 0xFF)  # e4m3's NaN: the sequences read it as ±480; a tile holding one has a NaN scale


def _e4m3_value(codes: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(codes.astype(np.uint8)).view(torch.float8_e4m3fn).float()


SCALES = [2.0**e for e in range(-20, 21, 5)] + [0.0]  # powers of two as the quantizer writes them; 0 for padding rows


@pytest.mark.parametrize("scale", SCALES)
def test_one_key_sequence_is_exact_on_every_code(scale):
    """_E4M3X4_TIMES_SCALE (every Gluon FP8 tile's dequantization): four codes of a word times the row's scale are
    bf16(value * scale) exactly, for every code but NaN, in each of the word's four bytes."""
    codes = np.array([c for c in range(256) if c not in NAN_CODES], dtype=np.uint32)
    words = np.stack([np.roll(codes, k) for k in range(4)], axis=1)  # each code in each byte position
    word = pack_words(words)
    scale_bits = np.full_like(word, np.float32(scale).view(np.uint32))
    out = run_ptx(v5_fp8_gluon._E4M3X4_TIMES_SCALE.value, {4: word, 5: scale_bits})
    for k in range(4):
        want = (_e4m3_value(words[:, k]) * scale).to(torch.bfloat16)
        got = torch.from_numpy(out[k].astype(np.int16)).view(torch.bfloat16)
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), f"byte {k}, scale {scale}"


def test_k_sequence_is_the_value_in_fp16():
    """_E4M3X4_F16 (the register tile's K operand, the scale applied to S instead): fp16(value) by the hardware
    conversion, exactly, for every code (NaN as NaN) in each of the word's four bytes."""
    codes = np.arange(256, dtype=np.uint32)
    words = np.stack([np.roll(codes, 3 * k) for k in range(4)], axis=1)
    word = pack_words(words)
    out = run_ptx(v5_fp8_reg._E4M3X4_F16.value, {4: word})
    for k in range(4):
        assert np.array_equal(out[k], e4m3_bits_to_fp16(words[:, k])), f"byte {k}"
        got = torch.from_numpy(out[k].astype(np.int16)).view(torch.float16).float()
        assert torch.equal(got.nan_to_num(7.0), _e4m3_value(words[:, k]).nan_to_num(7.0)), f"byte {k}"


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
        assert np.array_equal(got_even, float_to_bf16_bits(_e4m3_value(even))), f"position {e}, even key"
        assert np.array_equal(got_odd, float_to_bf16_bits(_e4m3_value(odd))), f"position {e}, odd key"



@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_half_pair_sequences_are_exact_on_every_pair_of_codes(kind):
    """_E4M3_PAIRS_LO / _HI (the wgmma register tile's V^T operand, kernels/v5_fp8_wgr.py): _E4M3_PAIRS for bytes 0-1
    or 2-3 only, outputs (byte 2h's even, odd), (byte 2h + 1's even, odd), on every pair of non-NaN codes; "fp16":
    _E4M3_PAIRS_F16_LO / _HI (its MODE 4: one prmt a word of pairs, then the hardware conversion), the same pairs in
    the same order as fp16, NaN codes included (the conversion keeps them)."""
    v5_fp8_wgr = pytest.importorskip("mla_tutorial.kernels.v5_fp8_wgr")
    if kind == "bf16":
        codes = np.array([c for c in range(256) if c not in NAN_CODES], dtype=np.uint32)
        asms = (v5_fp8_wgr._E4M3_PAIRS_LO, v5_fp8_wgr._E4M3_PAIRS_HI)
        want = lambda c: float_to_bf16_bits(_e4m3_value(c))  # noqa: E731
    else:
        codes = np.arange(256, dtype=np.uint32)
        asms, want = (v5_fp8_wgr._E4M3_PAIRS_F16_LO, v5_fp8_wgr._E4M3_PAIRS_F16_HI), e4m3_bits_to_fp16
    even, odd = (g.ravel() for g in np.meshgrid(codes, codes, indexing="ij"))
    junk = np.uint32(0x5A)
    for half, asm in enumerate(asms):
        for i in range(2):
            e = 2 * half + i

            def word(c, e=e):
                w = np.full_like(c, junk | junk << 8 | junk << 16 | junk << 24)
                return (w & ~np.uint32(0xFF << (8 * e))) | (c << (8 * e))

            out = run_ptx(asm.value, {4: word(even), 5: word(odd)})
            assert np.array_equal(out[2 * i], want(even)), f"byte {e}, even key"
            assert np.array_equal(out[2 * i + 1], want(odd)), f"byte {e}, odd key"


def test_nan_codes_read_as_480_and_a_nan_scale_passes_through():
    """The documented edge: e4m3's NaN code reads ±480 (no NaN check in the sequences); the quantizer gives a tile
    holding a NaN a NaN scale, which the multiply passes on."""
    word = np.array([0x7F | 0xFF << 8], dtype=np.uint32)
    out = run_ptx(v5_fp8_gluon._E4M3X4_TIMES_SCALE.value, {4: word, 5: np.array([np.float32(1).view(np.uint32)])})
    assert bf16_bits_to_float(out[0]).item() == 480.0 and bf16_bits_to_float(out[1]).item() == -480.0
    nan = np.array([np.float32("nan").view(np.uint32)], dtype=np.uint32)
    out = run_ptx(v5_fp8_gluon._E4M3X4_TIMES_SCALE.value, {4: np.array([0x38], dtype=np.uint32), 5: nan})
    assert torch.isnan(bf16_bits_to_float(out[0])).all()


def test_register_tile_column_maps_are_the_kernels_and_make_each_operand_one_word():
    """The register tile's permutations (course/ptx.py's maps, the kernel's _v5_perm64 and _v5_store's PERM32): a lane
    pair's K operands of a k16 step are four consecutive cache columns (one word), a lane's four V n8 tiles too, and
    each map is a permutation."""
    k = [register_tile_k_columns(t) for t in range(4)]
    assert all(k[t][j] == list(range(16 * t + 4 * j, 16 * t + 4 * j + 4)) for t in range(4) for j in range(4))
    assert sorted(c for t in range(4) for cols in k[t] for c in cols) == list(range(64))
    column = {16 * j + o: k[t][j][i] for t in range(4) for j in range(4)  # logical reduction index -> cache column
              for i, o in enumerate((2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9))}
    perm = getattr(getattr(v5_gluon, "_v5_perm64", None), "fn", None)  # the kernel's own formula, run as Python
    if perm is not None:
        assert all(perm(64 * c + n) == 64 * c + column[n] for c in range(9) for n in range(64))
    v = {(w, g): register_tile_v_columns(w, g) for w in range(4) for g in range(8)}
    assert all(cols == list(range(4 * (8 * w + g), 4 * (8 * w + g) + 4)) for (w, g), cols in v.items())
    assert sorted(c for cols in v.values() for c in cols) == list(range(128))
    with pytest.raises(ValueError, match="lane's pair index"):
        register_tile_k_columns(4)
