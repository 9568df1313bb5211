"""The FP8 cache row (FlashMLA's 656-byte "V32" layout): quantizer, dequantizer, and the kernel that reads it.

1. `quantize_k_cache` is checked byte for byte against an independent quantizer written here from the spec, one
   token at a time with Python floats and `struct` (no torch, no FP8 dtype): scale = the smallest power of two
   >= max(amax / 448, 1e-4) found by doubling and halving, e4m3 encoding with round-to-nearest-even by hand,
   scales as little-endian float32, RoPE as the top half of each value's float32 bits (bf16). Inputs include
   zeros, -0.0, tiny and huge values, e4m3 subnormals and ties, NaN and inf.
2. Round-trip error bounds that follow from the format, and the inverse (`dequantize_k_cache`).
3. The decode kernel with `is_fp8_kvcache=True` against the fp32 reference applied to `dequantize_k_cache(k_fp8)`,
   on FlashMLA's hostile recipe (tests/test_kernels.py's generator: permuted pages, NaN in every unused slot, hence
   NaN bytes and NaN scales in unused rows, sentinel block ids, empty requests, causal s_q = 2), at the bf16
   tolerances: the dequantization in the kernel is exact, so only the kernel's own rounding is left.
"""

from __future__ import annotations

import math
import os
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import K, check_against_reference, make_inputs, metadata_with_knobs

from mla_tutorial.fp8 import (
    ROW_BYTES,
    dequantize_k_cache,
    dequantize_rows,
    quantize_k_cache,
    quantize_rows,
    tile_scales,
)
from mla_tutorial.kernels import v5_fp8_reg

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------
# an independent quantizer, from the spec
# ---------------------------------------------------------------------------------------------
def spec_scale(amax: float) -> float:
    """The smallest power of two >= max(amax / 448, 1e-4) (NaN and inf pass through)."""
    y = max(amax / 448.0, 1e-4) if not math.isnan(amax) else amax
    if not math.isfinite(y):
        return y
    s = 1.0
    while s < y:
        s *= 2.0
    while s / 2.0 >= y:
        s /= 2.0
    return s


def spec_e4m3(v: float) -> int:
    """float8_e4m3fn byte of v (exact in a double): sign, 4 exponent bits (bias 7), 3 mantissa bits, no inf,
    0x7F/0xFF = NaN, largest finite 448 (0x7E), subnormals k·2^-9; round to nearest, ties to even."""
    sign = 0x80 if math.copysign(1.0, v) < 0 else 0
    a = abs(v)
    if math.isnan(a):
        return 0x7F
    if a >= 480.0:  # no inf in e4m3fn: torch's cast gives NaN from 480 up ...
        return sign | 0x7F
    if a > 448.0:  # ... and 448 below it (never reached by the quantizer: x / scale <= 448)
        return sign | 0x7E
    exp = max(math.frexp(a)[1] - 1, -6) if a > 0 else -6  # a in [2^exp, 2^(exp+1)); subnormals share 2^-6
    quantum = 2.0 ** (exp - 3)  # spacing of e4m3 values there
    k = round(a / quantum)  # Python rounds halves to even
    value = k * quantum
    if value == 0:
        return sign
    if value < 2.0**-6:  # subnormal: exponent field 0, mantissa = value / 2^-9
        return sign | int(value / 2.0**-9)
    m, e = math.frexp(value)  # value = (2m)·2^(e-1), 2m in [1, 2)
    return sign | ((e - 1 + 7) << 3) | int((2 * m - 1) * 8)


def spec_row(values: list[float]) -> list:
    """656 expected bytes for one token [c_kv (512) | k_rope (64)] given as Python floats (bf16 values).

    A byte that must be some NaN is "nan8" (e4m3) or part of "nan32"/"nan16" (a NaN scale or RoPE value)."""
    out: list = []
    scales = []
    for t in range(4):
        tile = values[128 * t : 128 * (t + 1)]
        amax = float("nan") if any(math.isnan(x) for x in tile) else max(abs(x) for x in tile)
        scale = spec_scale(amax)
        scales.append(scale)
        for x in tile:
            v = x / scale
            out.append("nan8" if math.isnan(v) else spec_e4m3(v))
    for scale in scales:
        out.extend(["nan32"] * 4 if math.isnan(scale) else list(struct.pack("<f", scale)))
    for x in values[512:]:
        out.extend(["nan16"] * 2 if math.isnan(x) else list(struct.pack("<f", x)[2:]))  # bf16 = top 2 bytes
    return out


def assert_bytes_match(k8: torch.Tensor, k_bf16: torch.Tensor) -> None:
    raw = k8.view(torch.uint8).reshape(-1, ROW_BYTES).cpu()
    rows = k_bf16.reshape(-1, 576).float().cpu().tolist()
    for i, row in enumerate(rows):
        expected = spec_row(row)
        got = raw[i].tolist()
        scale_f = struct.unpack("<4f", bytes(got[512:528]))
        rope_f = [struct.unpack("<f", b"\0\0" + bytes(got[528 + 2 * j : 530 + 2 * j]))[0] for j in range(64)]
        for j, (e, g) in enumerate(zip(expected, got, strict=True)):
            if e == "nan8":
                ok = g & 0x7F == 0x7F
            elif e == "nan32":
                ok = math.isnan(scale_f[(j - 512) // 4])
            elif e == "nan16":
                ok = math.isnan(rope_f[(j - 528) // 2])
            else:
                ok = e == g
            assert ok, f"token {i}, byte {j}: expected {e}, got {g} (input row {row[:4]}...)"


def special_rows() -> torch.Tensor:
    """Tokens built to hit the corners of the format, [14, 576] bf16."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(14, 576, generator=gen)
    rows[0] = 0.0  # zero tiles: the 1e-4 floor, scale 2^-13
    rows[1] = -0.0
    rows[2] *= 1e-7  # below the floor: values far under 448·2^-13
    rows[3, :128] = 448.0 * 2.0**-5  # amax / 448 exactly a power of two
    rows[3, 128:256] = torch.linspace(-1, 1, 128) * 448 * 2.0**-5 * 1.01  # just above one
    rows[4] *= 1e30  # huge
    rows[5, :128] = 3.0e38  # near bf16's top
    rows[6, 5] = float("nan")  # a NaN poisons tile 0 only
    rows[7, 300] = float("inf")  # an inf: tile 2 -> NaN values, inf scale
    rows[8, 520] = float("nan")  # NaN in RoPE: stored as is
    rows[9] = float("nan")  # a poisoned row, as in the tests' unused slots
    # e4m3 ties: with amax 448 the scale is 1, so values are e4m3 codes and midpoints between them
    rows[10, :128] = torch.tensor([448.0, 0.5 + 1 / 32, 0.5 + 3 / 32, 17.0, 19.0, 2.0**-10, 3 * 2.0**-10,
                                   2.0**-9 + 2.0**-11, 232.0, 240.0 + 8] * 12 + [448.0] * 8)
    rows[11] = rows[11] * torch.logspace(-6, 2, 576)  # every magnitude in one row
    rows[12, 128:256] *= 1e-3  # tiles of different magnitudes in one row
    rows[13, 512:] *= 50  # a large RoPE part next to a small c_kv (the reason it stays bf16)
    return rows.to(torch.bfloat16)


def test_quantize_k_cache_matches_independent_quantizer_byte_for_byte():
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(2, 64, 1, 576, generator=gen) * torch.logspace(-3, 1, 2 * 64)[:, None].reshape(2, 64, 1, 1)
    k = k.to(torch.bfloat16)
    k.view(-1, 576)[:14] = special_rows()
    k8 = quantize_k_cache(k.to(DEVICE))
    assert k8.shape == (2, 64, 1, ROW_BYTES) and k8.dtype == torch.float8_e4m3fn
    assert_bytes_match(k8, k)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), exponents=st.lists(st.integers(-30, 30), min_size=5, max_size=5),
       specials=st.lists(st.tuples(st.integers(0, 575), st.sampled_from(
           [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 3.0e38, -1e-30, 448.0, 2.0**-9])), max_size=3))
def test_quantize_rows_matches_independent_quantizer_for_any_magnitudes(seed, exponents, specials):
    """One token whose four c_kv tiles and RoPE part have magnitudes 2^-30 .. 2^30 apart, plus special values."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.tensor([2.0**e for e in exponents]).repeat_interleave(torch.tensor([128, 128, 128, 128, 64]))
    row = (torch.randn(576, generator=gen, dtype=torch.float64) * scale).to(torch.bfloat16)
    for index, value in specials:
        row[index] = value
    assert_bytes_match(quantize_rows(row[None]), row[None])


def test_independent_quantizer_agrees_with_torch_e4m3_on_every_code_and_midpoint():
    """The test's own e4m3 encoder against torch's cast: every finite code and every midpoint between two."""
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    finite = codes[torch.isfinite(codes)].unique()  # sorted, -448 .. 448 (+0 and -0 collapse)
    mids = (finite[1:].double() + finite[:-1].double()) / 2
    values = torch.cat([finite.double(), mids, torch.tensor([-0.0, 449.0, 479.0])])
    got = values.float().to(torch.float8_e4m3fn).view(torch.uint8).tolist()
    expected = [spec_e4m3(v) for v in values.tolist()]
    assert got == expected


def test_scales_are_the_next_power_of_two():
    amax = [0.0, 1e-9, 448 * 2.0**-13, 448 * 2.0**-13 * 1.001, 0.05, 1.0, 447.9, 448.0, 448.5, 1e30, 3.3e38]
    amax += [448 * 2.0**k for k in range(-14, 110, 7)] + [1.75 * 2.0**k for k in range(-20, 120, 3)]
    got = tile_scales(torch.tensor(amax, dtype=torch.float32)).tolist()
    assert got == [spec_scale(float(torch.tensor(a, dtype=torch.float32))) for a in amax]
    special = tile_scales(torch.tensor([float("nan"), float("inf")]))
    assert math.isnan(special[0]) and special[1] == float("inf")


def test_round_trip_error_is_within_e4m3s_rounding():
    """|x - deq(q(x))| <= max(2^-4·|x|, 2^-10·scale) per value (3 mantissa bits; subnormals below 2^-6·scale),
    RoPE exact. Measured on N(0, 1) rows: max relative error 0.0625, relative Frobenius error 0.021."""
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(4, 64, 1, 576, generator=gen) * torch.logspace(-4, 3, 64)[None, :, None, None])
    x = x.to(torch.bfloat16)
    d = dequantize_k_cache(quantize_k_cache(x))
    assert d.shape == x.shape and d.dtype == torch.bfloat16
    assert torch.equal(d[..., 512:], x[..., 512:])
    xf, df = x[..., :512].double(), d[..., :512].double()
    scale = tile_scales(xf.float().unflatten(-1, (4, 128)).abs().amax(-1)).double()  # [..., 4]
    bound = torch.maximum(xf.abs() * 2.0**-4, scale.repeat_interleave(128, dim=-1) * 2.0**-10)
    assert ((xf - df).abs() <= bound).all()
    unit = torch.randn(64, 576, generator=gen).to(torch.bfloat16)
    du = dequantize_rows(quantize_rows(unit)).double()
    rel = (du - unit.double()).norm() / unit.double().norm()
    assert rel < 0.03, rel


def test_dequantized_values_survive_a_second_round_trip():
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(300, 576, generator=gen) * 3).to(torch.bfloat16)
    once = dequantize_rows(quantize_rows(x))
    assert torch.equal(dequantize_rows(quantize_rows(once)), once)


def test_non_finite_values_poison_their_tile_only():
    x = torch.ones(3, 576, dtype=torch.bfloat16)
    x[0, 3] = float("nan")
    x[1, 200] = float("inf")
    x[2, 600 - 64] = float("-inf")  # RoPE keeps its inf
    d = dequantize_rows(quantize_rows(x)).float()
    assert torch.isnan(d[0, :128]).all() and (d[0, 128:] == 1).all()
    assert torch.isnan(d[1, 128:256]).all() and (d[1, :128] == 1).all() and (d[1, 256:] == 1).all()
    assert (d[2, :536] == 1).all() and d[2, 536] == float("-inf")


def test_quantize_rejects_bad_input_naming_it():
    good = torch.zeros(1, 64, 1, 576, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="k_cache must be bfloat16"):
        quantize_k_cache(good.half())
    with pytest.raises(ValueError, match=r"k_cache must be \[num_blocks, page_size, h_kv, 576\]"):
        quantize_k_cache(good[..., :512])
    with pytest.raises(ValueError, match="k_cache"):
        quantize_k_cache(good[0])
    with pytest.raises(TypeError, match="k_cache must be a torch.Tensor"):
        quantize_k_cache([[0.0] * 576])
    with pytest.raises(ValueError, match=r"rows must be a tensor \[\.\.\., 576\]"):
        quantize_rows(torch.zeros(3, 575, dtype=torch.bfloat16))
    k8 = quantize_k_cache(good)
    with pytest.raises(TypeError, match=r"k_fp8 must have dtype torch.float8_e4m3fn \(a uint8 buffer"):
        dequantize_k_cache(k8.view(torch.uint8))
    with pytest.raises(ValueError, match=r"k_fp8 must be \[num_blocks, page_size, h_kv, 656\]"):
        dequantize_k_cache(k8[..., :576])


# ---------------------------------------------------------------------------------------------
# the kernel reads the FP8 cache: FlashMLA's recipe against the reference on the dequantized cache
# ---------------------------------------------------------------------------------------------
def fp8_inputs(seqlens, s_q, h_q, h_kv=1, seed=0, poison_bytes=False):
    """FlashMLA's hostile inputs with the cache quantized: unused rows hold NaN values and NaN scales (or, with
    poison_bytes, 0xFF in every byte: NaN e4m3 values, NaN float32 scales, NaN bf16 RoPE)."""
    q, k_cache, block_table, cache_seqlens = make_inputs(seqlens, s_q, h_q, h_kv, torch.bfloat16, seed=seed)
    k8 = quantize_k_cache(k_cache)
    if poison_bytes:
        unused = torch.isnan(k_cache.float()).all(-1)  # [num_blocks, 64, h_kv]: the NaN rows
        k8.view(torch.uint8)[unused] = 0xFF
    return q, k8, block_table, cache_seqlens


def check_fp8(q, k8, block_table, seqlens, causal, softmax_scale=None, fn=None, **kw):
    """The FP8 path against the fp32 reference on dequantize_k_cache(k8), with FlashMLA's bf16 tolerances."""
    fn = fn or K.mla_decode_v5

    def call(q, _k_cache, block_table, seqlens, head_dim_v, softmax_scale=None, causal=False):
        return fn(q, k8, block_table, seqlens, head_dim_v, softmax_scale=softmax_scale, causal=causal,
                  is_fp8_kvcache=True, **kw)

    return check_against_reference(call, q, dequantize_k_cache(k8), block_table, seqlens, causal, softmax_scale)


# (seqlens, s_q, h_q, h_kv, causal): the cases of test_kernels.CASES that the small tile sees, in bf16
FP8_CASES = {
    "page-boundaries-empty-h1": ([0, 63, 64, 65], 1, 1, 1, False),
    "causal-sq2-h16-empty": ([20, 0, 129], 2, 16, 1, True),
    "hkv2-h16": ([65, 130], 1, 16, 2, False),
    "causal-sq2-h3": ([2, 64, 140], 2, 3, 1, True),
    "h64-one-full-tile": ([1, 127], 1, 64, 1, False),
}


@pytest.mark.parametrize("case", list(FP8_CASES))
def test_fp8_kernel_matches_reference_on_dequantized_cache(case):
    seqlens, s_q, h_q, h_kv, causal = FP8_CASES[case]
    q, k8, block_table, cache_seqlens = fp8_inputs(seqlens, s_q, h_q, h_kv, seed=list(FP8_CASES).index(case))
    check_fp8(q, k8, block_table, cache_seqlens, causal)


@pytest.mark.parametrize("case", ["causal-sq2-h16-empty", "hkv2-h16"])
def test_fp8_kernel_with_tma_loads(case, monkeypatch):
    """FP8_LOADS = "tma": the e4m3 chunks come by tensor-descriptor copies of whole page rows, NaN rows included,
    which the kernel must zero (the pointer loads mask them instead)."""
    from mla_tutorial.kernels import v5_small

    monkeypatch.setattr(v5_small, "FP8_LOADS", "tma")
    seqlens, s_q, h_q, h_kv, causal = FP8_CASES[case]
    q, k8, block_table, cache_seqlens = fp8_inputs(seqlens, s_q, h_q, h_kv, seed=23, poison_bytes=h_kv == 2)
    assert v5_small.fp8_tma_usable(k8)
    check_fp8(q, k8, block_table, cache_seqlens, causal)


def test_fp8_kernel_never_reads_poisoned_bytes_of_unused_rows():
    q, k8, block_table, cache_seqlens = fp8_inputs([1, 65, 100], 2, 16, seed=5, poison_bytes=True)
    assert torch.isnan(dequantize_k_cache(k8).float()).any()
    check_fp8(q, k8, block_table, cache_seqlens, True, softmax_scale=0.1352338)


@pytest.mark.parametrize("parts,overhead", [(3, 1), (40, 1)])
def test_fp8_kernel_any_schedule_cut(parts, overhead):
    seqlens = [0, 190, 64, 1, 257]
    q, k8, block_table, cache_seqlens = fp8_inputs(seqlens, 2, 3, seed=11)
    meta, splits = metadata_with_knobs(cache_seqlens, 2 * 3, 1, num_sm_parts=parts, fixed_overhead=overhead)
    check_fp8(q, k8, block_table, cache_seqlens, True, tile_scheduler_metadata=meta, num_splits=splits)


def test_flash_mla_with_kvcache_reads_fp8_cache():
    q, k8, block_table, cache_seqlens = fp8_inputs([70, 0, 129], 2, 16, seed=13)
    meta, splits = K.get_mla_metadata(cache_seqlens, 2 * 16, 1)

    def api(q, k_cache, block_table, seqlens, head_dim_v, softmax_scale=None, causal=False, is_fp8_kvcache=False):
        return K.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, head_dim_v, meta, splits,
                                        softmax_scale=softmax_scale, causal=causal, is_fp8_kvcache=is_fp8_kvcache)

    out, lse = check_fp8(q, k8, block_table, cache_seqlens, True, fn=api)
    assert torch.equal(out[1].float(), torch.zeros_like(out[1].float())) and torch.isposinf(lse[1]).all()


def test_kernel_choice_routes_fp8_to_the_small_tile():
    q, k8, _, _ = fp8_inputs([5], 1, 128, seed=1)
    path, reason = K.kernel_choice(q, k8, 128, 1)
    assert path == "small" and "FP8" in reason and "Gluon" in reason


@pytest.mark.parametrize("rows,expected", [(1, "wgr"), (15, "wgr"), (16, "wgr"), (17, "fp8ss"), (64, "fp8ss"),
                                           (256, "fp8ss")])
def test_kernel_choice_routes_fp8_by_rows_where_gluon_runs(rows, expected, monkeypatch):
    """Where the Gluon tiles can run (sm_90, Triton 3.6: faked here), an FP8 cache at up to FP8_REG_MAX_ROWS query
    rows per KV head goes to the 16-row Gluon FP8 tile that dequantizes into registers, on wgmma (path "wgr"), more to
    the FP8 seesaw tile (path "fp8ss"); the reason says which and why."""
    from mla_tutorial.kernels import v5

    monkeypatch.setattr(v5, "gluon_unavailable", lambda q, k, h_kv: None)
    q, k8, _, _ = fp8_inputs([5], 1, 16, seed=1)
    path, reason = K.kernel_choice(q, k8, rows, 1)
    assert v5.FP8_REG_MAX_ROWS == 16 and path == expected and "FP8" in reason
    assert ("FP8 seesaw tile" in reason) == (expected == "fp8ss")
    assert ("16-row Gluon FP8 tile dequantizing into registers, on wgmma" in reason) == (expected == "wgr")


def test_kernel_choice_routes_fp8_to_the_wgmma_tile_without_mma_v2(monkeypatch):
    """The routed 16-row tile is on wgmma (v5_fp8_wgr.py): a Triton without Gluon's mma_v2 (which only the forced
    "reg", "ksplit" and "mma" tiles need) routes as one with it."""
    from mla_tutorial.kernels import v5, v5_fp8_mma

    monkeypatch.setattr(v5, "gluon_unavailable", lambda q, k, h_kv: None)
    monkeypatch.setattr(v5_fp8_mma, "mma_v2", None)
    q, k8, _, _ = fp8_inputs([5], 1, 16, seed=1)
    assert K.kernel_choice(q, k8, 16, 1)[0] == "wgr"
    assert K.kernel_choice(q, k8, 8, 1)[0] == "wgr"


def _fp8_good():
    q, k8, block_table, seqlens = fp8_inputs([10, 70], 1, 4, seed=29)
    meta, splits = K.get_mla_metadata(seqlens, 4, 1)
    return dict(q=q, k_cache=k8, block_table=block_table, cache_seqlens=seqlens, head_dim_v=512,
                tile_scheduler_metadata=meta, num_splits=splits, is_fp8_kvcache=True)


def misaligned(k8: torch.Tensor) -> torch.Tensor:
    """A copy of k8 that starts 2 bytes into its buffer (its float32 scales would be misaligned)."""
    buf = torch.empty(k8.numel() + 16, dtype=torch.uint8, device=k8.device)[2 : 2 + k8.numel()]
    return buf.view(torch.float8_e4m3fn).view(k8.shape).copy_(k8)


FP8_BAD_ARGS = {
    "fp8-without-flag": (dict(is_fp8_kvcache=False), TypeError, "pass is_fp8_kvcache=True"),
    "flag-with-bf16-cache": (dict(k_cache=lambda a: dequantize_k_cache(a["k_cache"])), TypeError,
                             "k_cache must have dtype torch.float8_e4m3fn"),
    "fp16-q": (dict(q=lambda a: a["q"].half()), TypeError, "q must be bfloat16 with is_fp8_kvcache"),
    "576-wide": (dict(k_cache=lambda a: a["k_cache"][..., :576].contiguous()), ValueError, "656"),
    "uint8-cache": (dict(k_cache=lambda a: a["k_cache"].view(torch.uint8)), TypeError, "uint8 buffer"),
    "misaligned": (dict(k_cache=lambda a: misaligned(a["k_cache"])), ValueError, "4-byte aligned"),
    "page-32": (dict(k_cache=lambda a: a["k_cache"][:, :32].contiguous()), ValueError, "page size"),
    "flag-not-bool": (dict(is_fp8_kvcache="yes"), TypeError, "is_fp8_kvcache must be a bool"),
}


@pytest.mark.parametrize("bad", list(FP8_BAD_ARGS))
def test_fp8_bad_argument_raises_naming_it(bad):
    change, exc, match = FP8_BAD_ARGS[bad]
    args = _fp8_good()
    for name, value in change.items():
        args[name] = value(args) if callable(value) else value
    with pytest.raises(exc, match=match):
        K.flash_mla_with_kvcache(**args)


def test_fp8_refuses_a_tile_that_cannot_read_it():
    args = _fp8_good()
    with pytest.raises(ValueError, match="cannot read an FP8 cache"):
        K.mla_decode_v5(args["q"], args["k_cache"], args["block_table"], args["cache_seqlens"], 512,
                        is_fp8_kvcache=True, path="v4")


@pytest.mark.skipif(DEVICE != "cpu", reason="on an sm_90 GPU the forced Gluon FP8 tiles run")
@pytest.mark.parametrize("path", ["seesaw", "mma", "fp8ss"])
def test_fp8_forcing_a_gluon_fp8_tile_where_it_cannot_run_says_why(path, monkeypatch):
    """path="seesaw" / "mma" / "fp8ss" with an FP8 cache forces the warp-specialised Gluon FP8 tile (v5_fp8_ws.py) /
    the 16-row one (v5_fp8_mma.py) / the FP8 seesaw (v5_fp8_seesaw.py), which need CUDA, sm_90 and Triton 3.6:
    elsewhere a ValueError that says why, before any output buffer is allocated."""
    from mla_tutorial.kernels import v5

    class NoAlloc:  # v5's view of torch, with the allocation the launch path makes first turned into a failure
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def empty(*args, **kwargs):
            raise AssertionError("allocated before refusing the forced tile")

    monkeypatch.setattr(v5, "torch", NoAlloc())
    args = _fp8_good()
    with pytest.raises(ValueError, match=f"path '{path}' cannot run these inputs here: .+"):
        K.mla_decode_v5(args["q"], args["k_cache"], args["block_table"], args["cache_seqlens"], 512,
                        is_fp8_kvcache=True, path=path)


def test_the_16_row_fp8_tile_reads_only_an_fp8_cache():
    """path="mma" is the 16-row FP8 tile: on a bf16 cache it is refused by name, wherever it runs (as the other
    FP8-only tiles)."""
    q, k, block_table, seqlens = make_inputs([10, 70], 1, 4, 1, torch.bfloat16, seed=3)
    for path in ("mma", "tma", "ws16", "reg", "ksplit", "wgr", "fp8ss"):
        with pytest.raises(ValueError, match=f"path '{path}' .+ reads only an FP8 cache"):
            K.mla_decode_v5(q, k, block_table, seqlens, 512, path=path)


# ---------------------------------------------------------------------------------------------
# on a GPU (pytest -m gpu): the compiled FP8 path at real lengths, and a capturable decode step
# ---------------------------------------------------------------------------------------------
GPU_LENGTHS = [0, 1, 20, 63, 64, 65, 140, 4096]

#: The register tile's prepared variants (v5_fp8_reg.REG_VARIANTS) have not yet run on a GPU: their cases run when
#: asked for (MLA_FP8_REG_VARIANTS=1) until a GPU run has checked them.
UNVERIFIED_REG_VARIANTS = pytest.mark.skipif(os.environ.get("MLA_FP8_REG_VARIANTS") != "1",
                                             reason="v5_fp8_reg.py's variant not yet run on a GPU: set "
                                                    "MLA_FP8_REG_VARIANTS=1")
REG_VARIANTS = {f"reg-{name}": knobs for name, knobs in v5_fp8_reg.REG_VARIANTS.items()}




@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("path", ["small-pointer", "small-tma", "gluon", "seesaw", "fp8ss", "fp8ss-t1", "mma", "mma8",
                                  "tma", "ws16", "ws16w", "reg", "ksplit", "wgr",
                                  *(pytest.param(v, marks=UNVERIFIED_REG_VARIANTS) for v in REG_VARIANTS)])
@pytest.mark.parametrize("h_q,s_q", [(1, 1), (16, 1), (16, 2), (64, 1), (128, 1), (128, 2)])
def test_gpu_fp8_matrix(h_q, s_q, path, monkeypatch):
    """The FP8 tiles on FlashMLA's hostile lengths: the small tile with plain and TMA loads, the Gluon FP8 tile, its
    warp-specialised form (path "seesaw"; both pad fewer than 64 rows, as FlashMLA's kernel does), the bf16 seesaw
    tile's consumers fed by a producer that dequantizes each page in place (path "fp8ss", v5's choice above 16 rows;
    padded too; "fp8ss-t1": with 1 scale tile's words a producer step instead of 4) and the 16-row
    Gluon FP8 tile (path "mma": 16 rows per program, m_tiles of them; "mma8": with 8 warps per program; "tma": fed
    by TMA; "ws16": warp-specialised, "ws16w" with an 8-warp producer; "reg": dequantizing into its operand
    registers, "reg-NAME" its prepared variants; "ksplit": that tile with the warps splitting S's reduction; "wgr":
    that tile with both products transposed on wgmma)."""
    from mla_tutorial.kernels import v5_fp8_reg, v5_fp8_seesaw, v5_small
    from mla_tutorial.kernels.v5_gluon import GluonConfig

    for knob, value in REG_VARIANTS.get(path, {}).items():
        monkeypatch.setattr(v5_fp8_reg, knob, value)
    if path == "fp8ss-t1":  # the FP8 seesaw tile with 1 scale tile's words a producer step (not planned: the call
        # builds its own schedule)
        monkeypatch.setattr(v5_fp8_seesaw, "TILES_PER_STEP", 1)
        path = "fp8ss"
    tile, _, loads = ("reg", "", "") if path in REG_VARIANTS else path.partition("-")
    monkeypatch.setattr(v5_small, "FP8_LOADS", loads or "pointer")
    q, k8, block_table, seqlens = fp8_inputs(GPU_LENGTHS, s_q, h_q, seed=h_q * 10 + s_q, poison_bytes=True)
    config = GluonConfig(warps=8) if tile in ("mma8", "ws16w") else None  # (ws16w: an 8-warp producer)
    check_fp8(q, k8, block_table, seqlens, s_q > 1, path={"mma8": "mma", "ws16w": "ws16"}.get(tile, tile),
              config=config)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("path", ["reg", "ksplit", "wgr",
                                  *(pytest.param(v, marks=UNVERIFIED_REG_VARIANTS) for v in REG_VARIANTS)])
def test_gpu_fp8_reg_wide_ranges(path, monkeypatch):
    """The register tile on values far from 1: query rows with |q| from 2^-20 to 2^20 (past fp16's 65,504) and cache
    rows whose tile scales span 2^-31 .. 2^5 within each request (S's latent part is an fp16 product: Q's rows are
    scaled into fp16's range by powers of two, and the scores scaled back)."""
    from mla_tutorial.kernels import v5_fp8_reg

    for knob, value in REG_VARIANTS.get(path, {}).items():
        monkeypatch.setattr(v5_fp8_reg, knob, value)
    q, k_cache, block_table, seqlens = make_inputs([1, 65, 300, 4096], 1, 16, 1, torch.bfloat16, seed=31)
    gen = torch.Generator().manual_seed(31)
    q_exp = torch.randint(-20, 21, q.shape[:3], generator=gen).float()  # [b, s_q, h_q]: a power of two per row
    q = (q.float() * torch.exp2(q_exp)[..., None].to(q.device)).bfloat16()
    k_exp = torch.randint(-24, 13, k_cache.shape[:3], generator=gen).float()  # [num_blocks, 64, h_kv]: per token
    k8 = quantize_k_cache((k_cache.float() * torch.exp2(k_exp)[..., None].to(k_cache.device)).bfloat16())
    check_fp8(q, k8, block_table, seqlens, False, path=path if path in ("ksplit", "wgr") else "reg")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode,guard", [(0, 1), (4, 0), (4, 1)])
def test_gpu_fp8_wgr_scales_past_its_first_page(mode, guard, monkeypatch):
    """The wgmma tile on requests whose every third page has scales 2^18 times the others' (~10 pages a program: parts
    that start on a small page and on a large one). The tile's page work in bf16 (MODE 0) matches the reference. Its
    fp16 page work (MODE 4, v5's default: P·scale in fp16, each part's scales times a power of two from its first page's
    largest) passes fp16's range on such a part's first large page: without its guard (WGR_GUARD 0) the outputs hold
    inf or NaN; with it such a part is computed again, its factor from all its pages' scales, and matches the
    reference. Unused rows are 0xFF bytes (NaN scales, which the guard's reading of the scales must skip)."""
    from mla_tutorial.kernels import v5_fp8_wgr

    monkeypatch.setattr(v5_fp8_wgr, "WGR_MODE", mode)
    monkeypatch.setattr(v5_fp8_wgr, "WGR_GUARD", guard)
    lens = [1, 65, 200, 3001] + [4096] * 40
    q, k_cache, block_table, seqlens = make_inputs(lens, 1, 16, 1, torch.bfloat16, seed=41)
    exp = torch.zeros(k_cache.shape[0])  # a power of two per block, by its page's place in its request
    for r, n in enumerate(lens):
        for p in range(-(-n // 64)):
            exp[int(block_table[r, p])] = 12.0 if p % 3 == 2 else -6.0
    k8 = quantize_k_cache((k_cache.float() * torch.exp2(exp).to(k_cache.device)[:, None, None, None]).bfloat16())
    k8.view(torch.uint8)[torch.isnan(k_cache.float()).all(-1)] = 0xFF  # the unused rows
    if guard:
        check_fp8(q, k8, block_table, seqlens, False, path="wgr")
    else:
        out, _ = K.mla_decode_v5(q, k8, block_table, seqlens, 512, is_fp8_kvcache=True, path="wgr")
        assert not torch.isfinite(out.float()).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fp8_normal_lengths_b64_api():
    gen = torch.Generator().manual_seed(3)
    lens = torch.normal(4096.0, 2048.0, (64,), generator=gen).round().clamp(min=2).int().tolist()
    q, k8, block_table, seqlens = fp8_inputs(lens, 2, 16, seed=5)
    meta, splits = K.get_mla_metadata(seqlens, 2 * 16, 1)

    def api(q, k_cache, block_table, seqlens, head_dim_v, softmax_scale=None, causal=False, is_fp8_kvcache=False):
        return K.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, head_dim_v, meta, splits,
                                        softmax_scale=softmax_scale, causal=causal, is_fp8_kvcache=is_fp8_kvcache)

    check_fp8(q, k8, block_table, seqlens, True, fn=api)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fp8_decode_step_is_capturable():
    """Quantize the new rows, write them into their slots, schedule, attend: one CUDA graph, replayed with new
    rows and lengths, equals the reference on the dequantized cache."""
    q, k8, block_table, seqlens = fp8_inputs([100, 2000, 60, 1, 4000], 1, 16, seed=9)  # room in each last page
    new = torch.randn(5, 576, device="cuda").bfloat16()  # one new token per request
    slots = torch.zeros(5, dtype=torch.long, device="cuda")

    def place():  # the new token goes at position seqlens (those rows are NaN now), then lengths advance
        pos = seqlens.long()
        slots.copy_(block_table.gather(1, (pos // 64)[:, None])[:, 0].long() * 64 + pos % 64)

    def step():
        k8.view(-1, ROW_BYTES)[slots] = quantize_rows(new)
        seqlens.add_(1)
        meta, splits = K.get_mla_metadata(seqlens, 16, 1)
        return K.flash_mla_with_kvcache(q, k8, block_table, seqlens, 512, meta, splits, is_fp8_kvcache=True)

    place()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compile outside the capture (it also appends one token)
        place()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = step()
    for _ in range(2):
        place()
        new.copy_(torch.randn(5, 576, device="cuda").bfloat16())
        graph.replay()
        torch.cuda.synchronize()
        ref, ref_lse = K.mla_decode_reference(q, dequantize_k_cache(k8), block_table, seqlens, 512)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)


def test_the_gluon_fp8_tiles_share_the_launch_arguments_of_fp8_tile_launch_args():
    """The three Gluon FP8 tiles (lockstep, warp-specialised, 16-row) are launched with one argument list
    (v5_fp8_gluon.fp8_tile_launch_args): their run-time parameters must be the same, in the same order, and as many
    as it builds. Checked on the signatures, so that a drift shows here and not as a wrong launch on a GPU."""
    import inspect
    from types import SimpleNamespace

    from mla_tutorial.kernels import v5_fp8_gluon, v5_fp8_mma, v5_fp8_ws

    if v5_fp8_gluon.gluon is None:
        pytest.skip("Gluon does not import here")
    kernels = [v5_fp8_gluon._v5_fp8_kernel, v5_fp8_ws._v5_fp8_ws_kernel, v5_fp8_mma._v5_fp8_mma_kernel]
    runtime = [[p.name for p in inspect.signature(k.fn).parameters.values() if "constexpr" not in str(p.annotation)]
               for k in kernels]
    assert runtime[0] == runtime[1] == runtime[2]
    q, k8, block_table, seqlens = fp8_inputs([70, 5], 2, 16, seed=3)
    meta, splits = K.get_mla_metadata(seqlens, 32, 1)
    dims = SimpleNamespace(rows_per_kv=32, s_q=2, h_q=16, heads_per_kv=16, num_blocks=k8.shape[0], max_blocks=2,
                           scale=0.1)
    for block_m, m_tiles in ((64, 1), (16, 2)):
        grid, args = v5_fp8_gluon.fp8_tile_launch_args(block_m, q, k8, block_table, seqlens, dims, meta, splits, q,
                                                       seqlens, q, seqlens, seqlens)
        assert grid == (meta.shape[0], m_tiles) and len(args) == len(runtime[0])
        assert args[runtime[0].index("m_tiles")] == m_tiles and args[runtime[0].index("kv_ptr")] is k8


def test_fp8_seesaw_register_split_fits_its_launch():
    """The FP8 seesaw tile's setmaxnreg split (v5_fp8_seesaw.STEP_REGS): two consumer warpgroups and the producer
    warpgroup within the 12 warps' registers at launch (WS_REGS each), multiples of 8 within setmaxnreg's 24-256."""
    from mla_tutorial.kernels import v5_fp8_seesaw as fs

    assert fs.TILES_PER_STEP in fs.STEP_REGS
    for tps, (consumer, producer) in fs.STEP_REGS.items():
        assert 2 * 128 * consumer + 128 * producer <= 384 * fs.WS_REGS, tps
        assert all(r % 8 == 0 and 24 <= r <= 256 for r in (consumer, producer)), tps
