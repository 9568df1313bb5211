"""The append kernel (kernels.append_rows): a step's new rows written into their pages in one launch (stage 4),
quantized on the way (stage 5), against stage 3's torch write and fp8.quantize_rows, byte for byte.

On the CPU it runs in Triton's interpreter; the `cuda` cases (marked gpu) run the compiled kernel. Shapes: decode's
one row, a few, and more rows than one program writes (40: three programs a sequence, the lengths grown after
them); sequences whose lengths sit at page boundaries (63, 64, 65, 127); consecutive sequences (a slice of the
table) and others (an index); a shuffled pool. Rows hold what the quantizer must get right: NaN and inf, a zero
tile, a tile whose amax / 448 is a power of two, values at the scale's floor, ties of e4m3's rounding, subnormals.
"""

from __future__ import annotations

import pytest
import torch

from mla_tutorial.fp8 import ROW_BYTES, SCALE_OFFSET, quantize_rows
from mla_tutorial.stage3_paged import PagedLatentCache
from mla_tutorial.stage4_triton import TritonLatentCache
from mla_tutorial.stage5_fp8 import FP8LatentCache

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # (inf / inf: NaN)
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]
START = [63, 64, 65, 127, 0]  # tokens each sequence holds before the appends (page boundaries, an empty one)


def _hostile_rows(b: int, t: int, seed: int = 0) -> torch.Tensor:
    """bf16 rows [b, t, 576]: every magnitude from 2^-30 to 2^12, and the cases named in the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 576, generator=gen) * torch.logspace(-9, 3.6, 576)[torch.randperm(576, generator=gen)]
    x = x.bfloat16()
    flat = x.view(-1, 576)
    n = flat.shape[0]
    flat[0, 5] = float("nan")  # a NaN tile (0)
    flat[min(1, n - 1), 300] = float("inf")  # an inf tile (2)
    flat[min(2, n - 1), 128:256] = 0  # a zero tile (1): its scale is the floor, 2^-13
    flat[min(3, n - 1), :128] = (448 * 2.0 ** -13 * torch.linspace(-1, 1, 128)).bfloat16()  # amax / 448 = 2^-13
    flat[min(4, n - 1), 384:512] = (torch.tensor([17.0, 19.0, 0.00146, 1e-9] * 32) * 2.0 ** -8).bfloat16()  # ties
    flat[min(5, n - 1), 256:384] = (torch.linspace(-1, 1, 128) * 2.0 ** -24).bfloat16()  # under the floor
    flat[min(6, n - 1), :128] = -3.0e38  # near bf16's largest
    return x


def _filled(cls, device: str, seq_ids: list[int], dtype=torch.bfloat16, **kwargs):
    """A cache of `cls` whose sequences seq_ids hold START[i] rows each (from stage 3's write: the reference)."""
    cache = cls(24, 64, dtype=dtype, device=device, max_seqs=8, max_pages_per_seq=4, shuffle=True, seed=3, **kwargs)
    for _ in range(8):
        cache.allocate()
    for s, n in zip(seq_ids, START, strict=False):
        if n:
            rows = _hostile_rows(1, n, seed=100 + s).to(device=device, dtype=dtype)
            PagedLatentCache.append(cache, [s], rows)  # (the class's own write: stage 3's or the kernel's)
    return cache


def _live(cache, seq_ids: list[int]) -> torch.Tensor:
    """Every live row of seq_ids in order, as bytes [tokens, row bytes]."""
    table, lengths = cache.block_table(seq_ids).cpu(), cache.cache_seqlens(seq_ids).cpu()
    rows = [cache.pool[int(table[i, t // 64]), t % 64] for i in range(len(seq_ids)) for t in range(int(lengths[i]))]
    return torch.stack(rows).cpu().view(torch.uint8)


def _same_fp8_rows(got: torch.Tensor, want: torch.Tensor) -> None:
    """FP8 rows [n, 656] bytes equal, a NaN value byte (0x7F or 0xFF: the sign of a NaN differs between the CPU's
    and the GPU's arithmetic) matching any NaN, the scales equal as float32 with NaN equal to NaN."""
    nan = lambda v: (v & 0x7F) == 0x7F  # noqa: E731
    values_g, values_w = got[:, :SCALE_OFFSET], want[:, :SCALE_OFFSET]
    assert torch.equal(nan(values_g), nan(values_w))
    assert torch.equal(torch.where(nan(values_g), 0, values_g), torch.where(nan(values_w), 0, values_w))
    sc_g = got[:, SCALE_OFFSET:SCALE_OFFSET + 16].contiguous().view(torch.float32)
    sc_w = want[:, SCALE_OFFSET:SCALE_OFFSET + 16].contiguous().view(torch.float32)
    torch.testing.assert_close(sc_g, sc_w, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(got[:, SCALE_OFFSET + 16:], want[:, SCALE_OFFSET + 16:])  # k_rope, bf16 as given


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tokens", [1, 3, 40])
@pytest.mark.parametrize("seq_ids", [[0, 1, 2, 3, 4], [6, 1, 4]], ids=["slice", "index"])
def test_fp8_append_writes_the_quantizers_bytes(device, tokens, seq_ids):
    cache = _filled(FP8LatentCache, device, seq_ids)
    before = _live(cache, seq_ids)
    kv = _hostile_rows(len(seq_ids), tokens, seed=tokens).to(device)
    cache.append(seq_ids, kv)
    lengths = cache.cache_seqlens(seq_ids).cpu().tolist()
    assert lengths == [n + tokens for n in START[:len(seq_ids)]]
    assert lengths == [cache.seq_len(s) for s in seq_ids]  # the device copy grew as the host's
    # the old rows untouched, the new ones quantize_rows's, sequence by sequence
    want, got, k_old = [], _live(cache, seq_ids), 0
    for i, n in enumerate(START[:len(seq_ids)]):
        want += [before[k_old:k_old + n], quantize_rows(kv[i].cpu()).view(torch.uint8)]
        k_old += n
    want = torch.cat(want)
    assert got.shape == (sum(lengths), ROW_BYTES)
    _same_fp8_rows(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_e4m3_rounding_of_every_bf16_value_under_448(device):
    """Tiles whose amax is 448 (scale 1): every bf16 value of magnitude under 448, either sign, cast as torch
    casts it (nearest even, subnormals, the ties between e4m3 values)."""
    bits = torch.arange(0, 0x43E0, dtype=torch.int32).to(torch.int16)  # bf16 0 .. just under 448
    vals = bits.view(torch.bfloat16)
    vals = torch.cat([vals, -vals])
    per_tile = 127
    tiles = -(-vals.numel() // per_tile)
    x = torch.zeros(tiles * per_tile, dtype=torch.bfloat16)
    x[:vals.numel()] = vals
    x = torch.cat([torch.full((tiles, 1), 448.0, dtype=torch.bfloat16), x.view(tiles, per_tile)], dim=1)
    rows = -(-tiles // 4)
    nope = torch.full((rows * 4, 128), 448.0, dtype=torch.bfloat16)
    nope[:tiles] = x
    kv = torch.cat([nope.view(rows, 512), torch.zeros(rows, 64, dtype=torch.bfloat16)], dim=1)
    cache = FP8LatentCache(rows // 64 + 2, 64, device=device, max_seqs=1, max_pages_per_seq=rows // 64 + 2)
    cache.allocate()
    cache.append([0], kv[None].to(device))
    _same_fp8_rows(_live(cache, [0]), quantize_rows(kv).view(torch.uint8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 40])
def test_bf16_append_kernel_writes_what_stage3_writes(device, dtype, tokens):
    """Stage 4's cache (its append one kernel) against stage 3's (torch), same pages, same rows: the same pool rows
    and lengths; sequences given out of order (an index into the table)."""
    seq_ids = [3, 0, 5]
    caches = [_filled(cls, device, seq_ids, dtype=dtype) for cls in (TritonLatentCache, PagedLatentCache)]
    kv = _hostile_rows(len(seq_ids), tokens, seed=9).to(device=device, dtype=dtype)
    for cache in caches:
        cache.append(seq_ids, kv)
    ours, ref = caches
    assert torch.equal(ours.cache_seqlens(), ref.cache_seqlens())
    assert torch.equal(ours.block_table(), ref.block_table())
    assert torch.equal(_live(ours, seq_ids), _live(ref, seq_ids))


def test_stage4_and_stage5_modules_make_the_kernel_caches():
    from mla_tutorial import MLAConfig, TritonMLA
    from mla_tutorial.stage5_fp8 import FP8MLA

    config = MLAConfig.tiny()
    assert type(TritonMLA(config).bfloat16().new_cache(2, 70)) is TritonLatentCache
    assert type(FP8MLA(config).bfloat16().new_cache(2, 70)) is FP8LatentCache


@pytest.mark.parametrize("cache_class", [TritonLatentCache, FP8LatentCache])
@pytest.mark.parametrize("without", ["interpreter", "APPEND_KERNEL"])
def test_torch_write_where_the_kernel_cannot_run(monkeypatch, cache_class, without):
    """CPU tensors outside Triton's interpreter, or the timing knob off: stage 3's write (stage 5 quantizing with
    quantize_rows first) gives the kernel's rows and lengths."""
    import mla_tutorial.stage4_triton as stage4_module

    seq_ids = [2, 0]
    kernel = _filled(cache_class, "cpu", seq_ids)
    kernel.append(seq_ids, _hostile_rows(2, 3, seed=5))
    if without == "interpreter":
        monkeypatch.setattr(stage4_module, "is_interpreter", lambda: False)
    else:
        monkeypatch.setattr(stage4_module, "APPEND_KERNEL", False)
    monkeypatch.setattr(stage4_module, "append_rows", None)  # (not called)
    torch_write = _filled(cache_class, "cpu", seq_ids)
    torch_write.append(seq_ids, _hostile_rows(2, 3, seed=5))
    assert torch.equal(torch_write.cache_seqlens(), kernel.cache_seqlens())
    if cache_class is FP8LatentCache:
        _same_fp8_rows(_live(torch_write, seq_ids), _live(kernel, seq_ids))
    else:
        assert torch.equal(_live(torch_write, seq_ids), _live(kernel, seq_ids))
