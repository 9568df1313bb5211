"""Stage 4 (Triton kernels): FlashMLA's test recipe for every kernel version, in the Triton interpreter.

Without a CUDA device the kernels run under TRITON_INTERPRET=1 on CPU tensors (set here before the
kernel modules are (re)loaded). The data is hostile, as in FlashMLA's tests (`mla_tutorial.testing`): block
tables are random permutations, every unused cache slot is NaN, unused block-table entries are huge sentinel ids,
lengths vary (0, page boundaries 63/64/65, random), s_q in {1, 2} (s_q = 2 causal), h_kv in {1, 2},
bf16 and fp16. Outputs and LSE are compared with FlashMLA's tolerances.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _load_kernels():
    """Import the kernel package; reload it if it was imported before TRITON_INTERPRET was set.

    @triton.jit decides at decoration time whether a kernel is interpreted, so modules imported
    earlier (e.g. through `import mla_tutorial` in conftest) must be reloaded, dependencies first.
    """
    import mla_tutorial.kernels as kernels
    from mla_tutorial.kernels import common

    if common.is_interpreter():
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction

        from mla_tutorial.kernels import v2_head_tiled

        if not isinstance(tl.standard.sum, InterpretedFunction):  # triton itself was imported first
            importlib.reload(tl.standard)  # its @jit helpers (tl.sum, tl.max, tl.cdiv, ...) too
            importlib.reload(tl)
        if not isinstance(v2_head_tiled._mla_decode_v2_kernel, InterpretedFunction):
            for name in ("common", "blocks", "schedule", "reference", "v2_head_tiled", "combine", "v1_naive",
                         "v3_split_kv", "v4_balanced", "v5_small", "api"):
                importlib.reload(sys.modules[f"mla_tutorial.kernels.{name}"])
            kernels = importlib.reload(kernels)
    return kernels


K = _load_kernels()
from mla_tutorial.contract import PAGE_SIZE  # noqa: E402
from mla_tutorial.fp8 import quantize_k_cache  # noqa: E402
from mla_tutorial.kernels import common  # noqa: E402
from mla_tutorial.kernels.v4_balanced import get_mla_metadata as metadata_with_knobs  # noqa: E402
from mla_tutorial.testing import make_paged_inputs, normal_lengths  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PAGE = PAGE_SIZE


# ---------------------------------------------------------------------------------------------
# hostile inputs (the shared generator, mla_tutorial.testing) and FlashMLA's comparison
# ---------------------------------------------------------------------------------------------
#: make_paged_inputs on this file's device: q, k_cache, block_table, cache_seqlens with NaN in every unused slot
#: and sentinel-like table entries past each request's pages.
make_inputs = functools.partial(make_paged_inputs, device=DEVICE)


def assert_close_flashmla(out, ref, name, abs_tol, rel_tol, cos_tol=None, p_bound=None):
    """FlashMLA's check: inf/NaN positions match; per element abs < abs_tol or rel < rel_tol; cosine.

    p_bound (optional, same shape): a per-element allowance for rounding P to 16 bits before P·V,
    which the kernels do exactly like FlashMLA. FlashMLA's element criterion was set for long
    contexts; at the short lengths the interpreter can afford (s_k ~ 100, so p_j ~ 0.01-0.3) that
    rounding alone moves ~0.1-0.3% of elements by 8e-4-1e-3 (measured: at s_k = 3000-4000 none).
    """
    out = out.float().cpu()
    ref = ref.float().cpu()
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), f"{name}: NaN positions differ"
    assert torch.equal(torch.isposinf(out), torch.isposinf(ref)), f"{name}: +inf positions differ"
    assert torch.equal(torch.isneginf(out), torch.isneginf(ref)), f"{name}: -inf positions differ"
    fin = torch.isfinite(ref)
    x, y = out[fin].double(), ref[fin].double()
    err = (x - y).abs()
    bad = (err >= abs_tol) & (err / y.abs().clamp_min(1e-30) >= rel_tol)
    if p_bound is not None:
        bad &= err >= p_bound.float().cpu()[fin].double()
    assert not bad.any(), (
        f"{name}: {int(bad.sum())} of {x.numel()} elements off, worst abs {err.max().item():.3g} "
        f"at ref {y[err.argmax()].item():.4g}"
    )
    if cos_tol is not None and x.numel():
        denom = (x * x + y * y).sum()
        cos_diff = (1 - 2 * (x * y).sum() / denom).item() if denom > 0 else 0.0
        assert cos_diff <= cos_tol, f"{name}: cosine diff {cos_diff:.3g} > {cos_tol}"


def check_against_reference(fn, q, k_cache, block_table, seqlens, causal, softmax_scale=None, **kw):
    out, lse = fn(q, k_cache, block_table, seqlens, 512, softmax_scale=softmax_scale, causal=causal, **kw)
    ref_out, ref_lse, p_abs_v = K.mla_decode_reference(q, k_cache, block_table, seqlens, 512, softmax_scale,
                                                       causal=causal, return_p_abs_v=True)
    b, s_q, h_q, _ = q.shape
    assert out.dtype == q.dtype and out.shape == (b, s_q, h_q, 512)
    assert lse.dtype == torch.float32 and lse.shape == (b, h_q, s_q)
    assert torch.isfinite(out).all(), "NaN/inf reached the output (unused slots must never be read)"
    assert_close_flashmla(out, ref_out.to(q.dtype), "out", 8e-4, 2.01 / 128, cos_tol=5e-6,
                          p_bound=p_rounding_bound(p_abs_v, ref_out, q.dtype))
    assert_close_flashmla(lse, ref_lse, "lse", 1e-6, 8.01 / 65536)
    return out, lse


def p_rounding_bound(p_abs_v, ref_out, dtype):
    """|Δout| from rounding P (eps·Σ p|v|) plus rounding the output itself (1 ulp), per element."""
    eps = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    return eps * p_abs_v + eps * ref_out.abs()


VERSIONS = ["v1_naive", "v2_head_tiled", "v3_split_kv", "v4_balanced", "v5"]

# (seqlens, s_q, h_q, h_kv, causal, dtype): every case covers something specific
CASES = {
    "page-boundaries-empty-h1": ([0, 63, 64, 65], 1, 1, 1, False, torch.bfloat16),
    "causal-sq2-h3-fp16": ([2, 64, 140], 2, 3, 1, True, torch.float16),
    "hkv2-h16": ([65, 130], 1, 16, 2, False, torch.bfloat16),
    "causal-sq2-h16-empty": ([20, 0, 129], 2, 16, 1, True, torch.bfloat16),
    "normal-lengths-h16-fp16": (normal_lengths(3, 96, 1, seed=3), 1, 16, 1, False, torch.float16),
    "causal-sq2-h64-hkv2": ([200, 1], 2, 64, 2, True, torch.bfloat16),  # M = 64: one full tile
    "h128-two-tiles": ([70, 33], 1, 128, 1, False, torch.bfloat16),  # M = 128: two tiles per request
}
HEAVY = {"causal-sq2-h64-hkv2", "h128-two-tiles"}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("version", VERSIONS)
def test_kernel_matches_reference(version, case):
    if version == "v1_naive" and case in HEAVY:
        pytest.skip("v1 at 64+ heads is slow in the interpreter; covered on the GPU")
    seqlens, s_q, h_q, h_kv, causal, dtype = CASES[case]
    q, k_cache, block_table, cache_seqlens = make_inputs(seqlens, s_q, h_q, h_kv, dtype, seed=list(CASES).index(case))
    check_against_reference(K.KERNEL_VERSIONS[version], q, k_cache, block_table, cache_seqlens, causal)


@pytest.mark.parametrize("version", ["v2_head_tiled", "v3_split_kv", "v4_balanced"])
@pytest.mark.parametrize("block_n,num_stages", [(32, 2), (16, 3)])
def test_smaller_key_steps_walk_pages_correctly(version, block_n, num_stages):
    """BLOCK_N < 64 (cards with little shared memory): two or four steps per page."""
    q, k_cache, block_table, seqlens = make_inputs([63, 64, 150], 2, 3, 1, torch.bfloat16, seed=5)
    cfg = common.TileConfig(16, block_n, 4, num_stages, 1)
    check_against_reference(K.KERNEL_VERSIONS[version], q, k_cache, block_table, seqlens, True, config=cfg)


@pytest.mark.parametrize("case", ["causal-sq2-h64-hkv2", "h128-two-tiles", "page-boundaries-empty-h1"])
def test_v5_small_tile_at_any_tile_height(case):
    """v5's plain-Triton small tile forced onto 64-row and 1-row tiles (the GPU picks it below 64 rows only)."""
    seqlens, s_q, h_q, h_kv, causal, dtype = CASES[case]
    q, k_cache, block_table, cache_seqlens = make_inputs(seqlens, s_q, h_q, h_kv, dtype, seed=17)
    check_against_reference(K.mla_decode_v5, q, k_cache, block_table, cache_seqlens, causal, path="small")


@pytest.mark.parametrize("parts,overhead", [(3, 1), (40, 1)])
def test_v5_balanced_schedule_any_cut(parts, overhead):
    seqlens = [0, 190, 64, 1, 257]
    q, k_cache, block_table, cache_seqlens = make_inputs(seqlens, 2, 3, 1, torch.float16, seed=11)
    meta, splits = metadata_with_knobs(cache_seqlens, 2 * 3, 1, num_sm_parts=parts, fixed_overhead=overhead)
    check_against_reference(K.mla_decode_v5, q, k_cache, block_table, cache_seqlens, True,
                            tile_scheduler_metadata=meta, num_splits=splits)


def test_kernel_choice_says_which_tile_runs_and_why():
    q, k_cache, _, _ = make_inputs([5], 1, 16, 1, torch.bfloat16, seed=1)
    path, reason = K.kernel_choice(q, k_cache, 16, 1)
    assert path == "small" and "16 query rows" in reason
    path, reason = K.kernel_choice(q, k_cache, 128, 1)
    if DEVICE == "cpu":
        assert path == "v4" and "v4's plain-Triton 64-row tile" in reason


@pytest.mark.skipif(DEVICE != "cpu", reason="on an sm_90 GPU the Gluon tiles run")
@pytest.mark.parametrize("path", ["seesaw", "gluon"])
def test_forcing_a_gluon_tile_where_it_cannot_run_says_why(path):
    """path="seesaw" or "gluon" (the Gluon tiles v5 runs at 64+ rows on Hopper) needs CUDA, sm_90 and Triton 3.6:
    elsewhere a clear error, before anything is launched."""
    q, k_cache, block_table, seqlens = make_inputs([70, 3], 1, 64, 1, torch.bfloat16, seed=2)
    with pytest.raises(ValueError, match=f"path '{path}' cannot run these inputs here"):
        K.mla_decode_v5(q, k_cache, block_table, seqlens, 512, path=path)


@pytest.mark.parametrize("field,value", [("mode", 5), ("mode", -1), ("early", 4), ("early", -1), ("warps", 6),
                                         ("warps", 16), ("max_first", 2), ("max_first", None), ("opaque_views", 1),
                                         ("fine", 0.0), ("q_async", 0), ("store_lines", 1),
                                         ("lines_partials", 1), ("q_tma", 1)])
def test_gluon_config_refuses_probe_values_the_kernels_do_not_know(field, value):
    """GluonConfig's probe knobs (mode, early, warps, and the seesaw tile's switches) are checked when the config is
    made: an unknown mode or early would compile a tile that never releases its buffers, a hang on the GPU, not an
    error; the 16-row FP8 tile's layouts are written for 4 or 8 warps; a switch that is not a bool would be a
    constexpr the kernels were never compiled or measured with."""
    from mla_tutorial.kernels.v5_gluon import GluonConfig

    with pytest.raises(ValueError, match=f"GluonConfig.{field} must be .+, got {value}"):
        GluonConfig(**{field: value})
    assert GluonConfig(mode=2, early=3).early == 3 and GluonConfig(warps=8).warps == 8


@pytest.mark.parametrize("path", ["small", "seesaw", "tma", "ws16", "reg"])
def test_part_alone_modes_are_refused_where_the_tile_has_none(path):
    """GluonConfig modes 3 and 4 (page loads alone, dequantization alone) exist in the 16-row FP8 tile only (path
    "mma"): any other path refuses them by name instead of compiling a tile that would read them as something else."""
    from mla_tutorial.kernels.v5_gluon import GluonConfig

    q, k_cache, block_table, seqlens = make_inputs([10, 70], 1, 16, 1, torch.bfloat16, seed=3)
    k8 = quantize_k_cache(k_cache)
    with pytest.raises(ValueError, match=f"mode 3 .+ is not a mode of path '{path}'"):
        K.mla_decode_v5(q, k8, block_table, seqlens, 512, path=path, config=GluonConfig(mode=3),
                        is_fp8_kvcache=True)


def test_the_fp8_seesaw_tile_refuses_mode_1():
    """GluonConfig mode 1 (loads alone) is not a part the FP8 seesaw tile (path "fp8ss") has: refused by name, where
    its producer would otherwise have run the whole tile under a part's label."""
    from mla_tutorial.kernels.v5_gluon import GluonConfig

    q, k_cache, block_table, seqlens = make_inputs([10, 70], 1, 64, 1, torch.bfloat16, seed=3)
    with pytest.raises(ValueError, match=r"mode 1 .+ is not a mode of path 'fp8ss': its modes are \(0, 2, 3, 4\)"):
        K.mla_decode_v5(q, quantize_k_cache(k_cache), block_table, seqlens, 512, path="fp8ss",
                        config=GluonConfig(mode=1), is_fp8_kvcache=True)


@pytest.mark.parametrize("num_splits", [1, 3, 8])
def test_split_kv_any_number_of_splits(num_splits):
    """More splits than pages leaves some splits empty (lse = -inf partials): the combine must ignore them."""
    q, k_cache, block_table, seqlens = make_inputs([0, 5, 130, 300], 1, 16, 1, torch.bfloat16, seed=7)
    check_against_reference(K.mla_decode_v3, q, k_cache, block_table, seqlens, False, num_splits=num_splits)


@pytest.mark.parametrize("parts,overhead", [(1, 5), (3, 1), (7, 1), (40, 1), (5, 5)])
def test_balanced_schedule_any_cut(parts, overhead):
    """v4 with schedules that cut requests anywhere (overhead 1, many parts): every piece is merged right."""
    seqlens = [0, 190, 64, 1, 257]
    q, k_cache, block_table, cache_seqlens = make_inputs(seqlens, 2, 3, 1, torch.float16, seed=11)
    meta, splits = metadata_with_knobs(cache_seqlens, 2 * 3, 1, num_sm_parts=parts, fixed_overhead=overhead)
    check_against_reference(K.mla_decode_v4, q, k_cache, block_table, cache_seqlens, True,
                            tile_scheduler_metadata=meta, num_splits=splits)


def test_flash_mla_with_kvcache_matches_reference():
    seqlens = normal_lengths(4, 128, 2, seed=2)
    q, k_cache, block_table, cache_seqlens = make_inputs(seqlens, 2, 16, 1, torch.bfloat16, seed=13)
    meta, splits = K.get_mla_metadata(cache_seqlens, 2 * 16, 1)
    out, lse = K.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, meta, splits, causal=True)
    ref_out, ref_lse, p_abs_v = K.mla_decode_reference(q, k_cache, block_table, cache_seqlens, 512, causal=True,
                                                       return_p_abs_v=True)
    assert_close_flashmla(out, ref_out.to(q.dtype), "out", 8e-4, 2.01 / 128, cos_tol=5e-6,
                          p_bound=p_rounding_bound(p_abs_v, ref_out, q.dtype))
    assert_close_flashmla(lse, ref_lse, "lse", 1e-6, 8.01 / 65536)


def test_softmax_scale_is_used():
    q, k_cache, block_table, seqlens = make_inputs([100], 1, 16, 1, torch.bfloat16, seed=17)
    check_against_reference(K.mla_decode_v4, q, k_cache, block_table, seqlens, False, softmax_scale=0.1352338)


def test_empty_request_gives_zero_and_inf_lse():
    q, k_cache, block_table, seqlens = make_inputs([0, 0], 2, 3, 1, torch.bfloat16, seed=19)
    for fn in K.KERNEL_VERSIONS.values():
        out, lse = fn(q, k_cache, block_table, seqlens, 512, causal=True)
        assert torch.equal(out.float(), torch.zeros_like(out.float()))
        assert torch.isposinf(lse).all()


# ---------------------------------------------------------------------------------------------
# reference sanity: the yardstick itself
# ---------------------------------------------------------------------------------------------
def test_reference_matches_dense_attention():
    """On a contiguous layout, the paged reference equals plain softmax attention with V = K[..., :512]."""
    q, k_cache, block_table, seqlens = make_inputs([70], 2, 4, 1, torch.float16, seed=23)
    out, lse = K.mla_decode_reference(q, k_cache, block_table, seqlens, 512, causal=True)
    kv = k_cache[block_table[0, :2].long()].reshape(128, 576)[:70].double()
    s = q[0].double().transpose(0, 1) @ kv.T * 576**-0.5  # (h, s_q, s_k)
    s[:, 0, 69] = float("-inf")  # query 0 of 2 sees keys [0, 68]
    torch.testing.assert_close(lse[0].double(), torch.logsumexp(s, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0].double(), (torch.softmax(s, -1) @ kv[:, :512]).transpose(0, 1),
                               rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------------------------
def pieces_from_metadata(meta, splits, seqlens):
    """Walk the schedule like the kernel does: {(request, page): part} and {(request, split): (lo, hi)}."""
    covered, pieces = {}, {}
    for p, (r0, b0, r1, b1, s0, *_rest) in enumerate(meta.tolist()):
        for r in range(r0, r1 + 1):
            n = max(1, -(-seqlens[r] // PAGE))
            lo = b0 if r == r0 else 0
            hi = b1 if r == r1 else n
            split = s0 if r == r0 else 0
            assert lo < hi, f"part {p} has an empty piece of request {r}"
            assert (r, split) not in pieces, f"split {split} of request {r} written twice"
            pieces[(r, split)] = (lo, hi)
            for blk in range(lo, hi):
                assert (r, blk) not in covered, f"page {blk} of request {r} in parts {covered[(r, blk)]} and {p}"
                covered[(r, blk)] = p
    return covered, pieces


@pytest.mark.parametrize("parts,overhead", [(1, 5), (8, 5), (132, 5), (5, 1), (64, 1)])
def test_metadata_covers_every_page_once(parts, overhead):
    seqlens = [0, 1, 63, 64, 65, 4096, 700, 0, 3000]
    cache_seqlens = torch.tensor(seqlens, dtype=torch.int32)
    meta, splits = metadata_with_knobs(cache_seqlens, 16, 1, num_sm_parts=parts, fixed_overhead=overhead)
    assert meta.shape == (parts, 8) and meta.dtype == torch.int32
    assert splits.shape == (len(seqlens) + 1,) and splits.dtype == torch.int32
    covered, pieces = pieces_from_metadata(meta, splits, seqlens)
    for r, s in enumerate(seqlens):
        n = max(1, -(-s // PAGE))
        assert all((r, blk) in covered for blk in range(n)), f"request {r} not fully covered"
        n_pieces = int(splits[r + 1] - splits[r])
        assert sorted(k[1] for k in pieces if k[0] == r) == list(range(n_pieces))
    assert (meta[:, 5:] == 0).all()


@pytest.mark.parametrize("overhead", [5, 2])
@pytest.mark.parametrize("lengths", ["normal", "fixed1k", "fixed4k"])
def test_metadata_balances_work(lengths, overhead):
    """FlashMLA's walk: with its cost (pages + the overhead per piece: every piece, a continued request's too, loads
    a Q and stores an output), no part gets more than its payload, the even share plus one overhead; a part stops
    early only with at most one overhead left, so the busy parts hold all but that much of their payload."""
    seqlens = {"normal": normal_lengths(128, 4096, 1, seed=0), "fixed1k": [1024] * 128,
               "fixed4k": [4096] * 128}[lengths]
    cache_seqlens = torch.tensor(seqlens, dtype=torch.int32)
    parts = 132
    meta, splits = metadata_with_knobs(cache_seqlens, 16, 1, num_sm_parts=parts, fixed_overhead=overhead)
    covered, pieces = pieces_from_metadata(meta, splits, seqlens)
    work = [0] * parts
    for (r, _split), (lo, hi) in pieces.items():
        work[covered[(r, lo)]] += hi - lo + overhead
    total = sum(-(-s // PAGE) + overhead for s in seqlens)
    payload = -(-total // parts) + overhead
    assert max(work) <= payload, (max(work), payload)
    busy = [w for w in work if w > 0]
    assert all(w >= payload - overhead for w in busy[:-1]), min(busy[:-1])  # (the last busy part takes the rest)
    assert int(splits[-1]) <= len(seqlens) + parts - 1


def test_get_mla_metadata_default_parts():
    cache_seqlens = torch.tensor([10, 2000], dtype=torch.int32)
    meta, splits = K.get_mla_metadata(cache_seqlens, 128, 1)  # s_q*h_q/h_kv = 128: two 64-row tiles
    limits = common.device_limits(cache_seqlens.device)
    assert meta.shape[0] >= 1 and meta.shape[0] <= limits.sm_count * 4
    assert int(splits[0]) == 0 and int(splits[-1]) >= 2


# ---------------------------------------------------------------------------------------------
# API: errors name the argument, before any launch
# ---------------------------------------------------------------------------------------------
def _good():
    q, k_cache, block_table, seqlens = make_inputs([10, 70], 1, 4, 1, torch.bfloat16, seed=29)
    meta, splits = K.get_mla_metadata(seqlens, 4, 1)
    return dict(q=q, k_cache=k_cache, block_table=block_table, cache_seqlens=seqlens, head_dim_v=512,
                tile_scheduler_metadata=meta, num_splits=splits)


BAD_ARGS = {
    "q-rank": ("q", lambda a: a["q"][0], ValueError),
    "q-dtype": ("q", lambda a: a["q"].float(), TypeError),
    "q-headdim": ("q", lambda a: a["q"][..., :512].contiguous(), ValueError),
    "q-not-tensor": ("q", lambda a: a["q"].tolist(), TypeError),
    "k_cache-dtype": ("k_cache", lambda a: a["k_cache"].half(), TypeError),
    "k_cache-page": ("k_cache", lambda a: a["k_cache"][:, :32].contiguous(), ValueError),
    "k_cache-heads": ("k_cache", lambda a: a["k_cache"].expand(-1, -1, 3, -1).contiguous(), ValueError),
    "k_cache-rank": ("k_cache", lambda a: a["k_cache"][0], ValueError),
    "block_table-dtype": ("block_table", lambda a: a["block_table"].long(), TypeError),
    "block_table-batch": ("block_table", lambda a: a["block_table"][:1], ValueError),
    "cache_seqlens-dtype": ("cache_seqlens", lambda a: a["cache_seqlens"].long(), TypeError),
    "cache_seqlens-batch": ("cache_seqlens", lambda a: a["cache_seqlens"][:1], ValueError),
    "head_dim_v": ("head_dim_v", lambda a: 256, ValueError),
    "head_dim_v-type": ("head_dim_v", lambda a: 512.0, TypeError),
    "metadata-shape": ("tile_scheduler_metadata", lambda a: a["tile_scheduler_metadata"][:, :4], ValueError),
    "metadata-dtype": ("tile_scheduler_metadata", lambda a: a["tile_scheduler_metadata"].long(), TypeError),
    "num_splits-shape": ("num_splits", lambda a: a["num_splits"][:-1], ValueError),
    "num_splits-dtype": ("num_splits", lambda a: a["num_splits"].long(), TypeError),
}


@pytest.mark.parametrize("bad", list(BAD_ARGS))
def test_bad_argument_raises_naming_it(bad):
    name, make_bad, exc = BAD_ARGS[bad]
    args = _good()
    received = make_bad(args)
    args[name] = received
    with pytest.raises(exc, match=name):
        K.flash_mla_with_kvcache(**args)


def test_bad_scale_and_causal():
    args = _good()
    with pytest.raises(ValueError, match="softmax_scale"):
        K.flash_mla_with_kvcache(**args, softmax_scale=-1.0)
    with pytest.raises(TypeError, match="causal"):
        K.flash_mla_with_kvcache(**args, causal="yes")


def test_error_message_has_expected_and_received():
    args = _good()
    args["head_dim_v"] = 256
    with pytest.raises(ValueError, match=r"must be 512.*got 256"):
        K.flash_mla_with_kvcache(**args)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_validates(version):
    args = _good()
    with pytest.raises(ValueError, match="h_kv"):
        K.KERNEL_VERSIONS[version](args["q"][:, :, :3].contiguous(), args["k_cache"].expand(-1, -1, 2, -1)
                                   .contiguous(), args["block_table"], args["cache_seqlens"])


def test_get_mla_metadata_errors():
    with pytest.raises(TypeError, match="cache_seqlens"):
        K.get_mla_metadata(torch.tensor([1, 2]), 16, 1)
    with pytest.raises(ValueError, match="num_heads_k"):
        K.get_mla_metadata(torch.tensor([1, 2], dtype=torch.int32), 16, 0)
    with pytest.raises(TypeError, match="num_heads_per_head_k"):
        K.get_mla_metadata(torch.tensor([1, 2], dtype=torch.int32), 16.0, 1)


# ---------------------------------------------------------------------------------------------
# FlashMLA's current API form and stale schedules
# ---------------------------------------------------------------------------------------------
def test_current_api_form_fills_the_metadata_once_and_reuses_it():
    q, k_cache, block_table, seqlens = make_inputs([70, 0, 130], 2, 16, 1, torch.bfloat16, seed=21)
    meta, none = K.get_mla_metadata()
    assert none is None and not meta.filled
    out1, lse1 = K.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, meta, None, causal=True)
    assert meta.filled
    first = meta.tile_scheduler_metadata
    out2, lse2 = K.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, meta, None, causal=True)
    assert meta.tile_scheduler_metadata is first  # reused, not rebuilt
    assert torch.equal(out1, out2) and torch.equal(lse1, lse2)
    check_against_reference(
        lambda *a, **kw: K.flash_mla_with_kvcache(*a[:5], meta, None, **kw), q, k_cache, block_table, seqlens, True)


@pytest.mark.parametrize("change", ["batch", "h_q", "s_q", "causal"])
def test_current_api_form_refuses_reuse_with_another_shape(change):
    q, k_cache, block_table, seqlens = make_inputs([70, 5, 130], 2, 16, 1, torch.bfloat16, seed=22)
    meta, _ = K.get_mla_metadata()
    K.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, meta, None, causal=True)
    causal = True
    if change == "batch":
        q, block_table, seqlens = q[:2], block_table[:2], seqlens[:2]
    elif change == "h_q":
        q = q[:, :, :8].contiguous()
    elif change == "s_q":
        q = q[:, :1].contiguous()
    else:
        causal = False
    with pytest.raises(ValueError, match=change):
        K.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, meta, None, causal=causal)


def test_current_api_form_argument_errors():
    q, k_cache, block_table, seqlens = make_inputs([70], 1, 16, 1, torch.bfloat16, seed=23)
    meta, _ = K.get_mla_metadata()
    with pytest.raises(ValueError, match="num_splits must be None"):
        K.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, meta, seqlens)
    with pytest.raises(TypeError, match="either no arguments"):
        K.get_mla_metadata(seqlens)


def test_v5_flags_a_schedule_built_for_other_lengths():
    """A schedule cut inside a request that has since shrunk, or built before a request grew, is flagged."""
    q, k_cache, block_table, _ = make_inputs([300, 300, 450], 1, 16, 1, torch.bfloat16, seed=24)  # real pages
    then = torch.tensor([300, 300, 300], dtype=torch.int32, device=DEVICE)  # 5 pages each
    meta, splits = metadata_with_knobs(then, 16, 1, num_sm_parts=5, fixed_overhead=1)  # cuts inside requests
    for now, stale in (([300, 300, 300], False), ([300, 40, 300], True), ([300, 300, 450], True)):
        flag = torch.ones(1, dtype=torch.int32, device=DEVICE)
        K.mla_decode_v5(q, k_cache, block_table, torch.tensor(now, dtype=torch.int32, device=DEVICE), 512,
                        tile_scheduler_metadata=meta, num_splits=splits, error_flag=flag)
        assert int(flag) == (0 if stale else 1), f"lengths {now}: flag {int(flag)}"


def test_fast_launcher_key_is_the_jit_specialization_key():
    """FastLauncher's per-launch key takes shortcuts for tensors and ints; it must equal the plain per-argument spec
    (dtype and 16-byte alignment of tensors; 1, multiple of 16 and 32-bit range of ints; bools, floats and TMA
    descriptors by kind), else a launch could reuse a binary compiled for other arguments."""
    from mla_tutorial.kernels.launch import _key, _spec

    base = torch.empty(8, dtype=torch.bfloat16)
    args = [base, base[1:], torch.empty(3, dtype=torch.int32), torch.nn.Parameter(torch.empty(2)), 0, 1, 16, 17,
            2**31, -(2**31) - 1, True, False, 0.5, None]
    assert _key(args) == tuple(_spec(a) for a in args)
    assert _key([base])[0] != _key([base[1:]])[0]  # a misaligned view is another specialization
    distinct = [1, 16, 17, 2**31, True, False, 0.5, None, base, base[1:], base.float()]  # (0 specializes as 16)
    specs = [_key([a])[0] for a in distinct]
    assert len(set(specs)) == len(specs), specs  # each of these is its own specialization


def test_fast_launcher_launches_the_cached_binary_with_its_constexprs(monkeypatch):
    """FastLauncher's fast path, with a stand-in for the JIT function (no GPU here): the first call of a specialization
    goes through the JIT dispatch; later ones call the binary with the runtime arguments followed by the constexprs
    the kernel declares after them, in the kernel's order (not the caller's); another specialization (an int that
    becomes 1, another constexpr value) goes through the dispatch again."""
    import mla_tutorial.kernels.launch as L

    runs, dispatches = [], []

    class Binary:
        function, packed_metadata = "fn", "md"

        def _init_handles(self):
            pass

        def run(self, g0, g1, g2, stream, function, packed_metadata, *rest):
            runs.append(((g0, g1, g2), stream, rest[3:]))  # (rest[:3]: the launcher's hooks, None here)

    class Kernel:
        @staticmethod
        def fn(x_ptr, n, A: int, B: int):  # the signature FastLauncher reads
            pass

        def __getitem__(self, grid):
            def dispatch(*args, **meta):
                dispatches.append((grid, args, meta))
                return Binary()
            return dispatch

    monkeypatch.setattr(L, "is_interpreter", lambda: False)
    launcher = L.FastLauncher(Kernel())
    launcher._device_and_stream = (lambda: 0, lambda device: 7)
    x = torch.empty(4)
    launcher((2,), x, 5, B=3, A=9, num_warps=4)  # dispatch
    launcher((2,), x, 5, B=3, A=9, num_warps=4)  # the binary: args, then A, B in the kernel's order
    assert len(dispatches) == 1 and runs == [((2, 1, 1), 7, (x, 5, 9, 3))]
    launcher((2, 3), x, 6, B=3, A=9, num_warps=4)  # 6 specializes like 5: the same binary
    assert len(dispatches) == 1 and runs[-1] == ((2, 3, 1), 7, (x, 6, 9, 3))
    launcher((2,), x, 1, B=3, A=9, num_warps=4)  # n = 1 is another specialization
    launcher((2,), x, 5, B=4, A=9, num_warps=4)  # so is another constexpr
    assert len(dispatches) == 3 and len(runs) == 2


def test_seesaw_q_by_tma_only_where_q_is_one_matrix_of_rows():
    """GluonConfig(q_tma=True) copies Q by TMA only where q [b, s_q, h_q, 576] is one row-major [b·s_q·h_q, 576]
    matrix (one kv head, 16-byte aligned); anything else keeps the consumers' copies (v5_seesaw._q_rows_2d)."""
    from types import SimpleNamespace

    from mla_tutorial.kernels.v5_seesaw import _q_rows_2d

    one = SimpleNamespace(h_kv=1)
    q = torch.zeros(3, 2, 16, 576, dtype=torch.bfloat16)
    assert _q_rows_2d(q, one)
    assert not _q_rows_2d(q, SimpleNamespace(h_kv=2))
    assert not _q_rows_2d(torch.zeros(3, 2, 16, 584, dtype=torch.bfloat16)[..., :576], one)  # rows of a wider tensor
    assert not _q_rows_2d(q.transpose(1, 2).contiguous().transpose(1, 2), one)  # heads outer
    assert not _q_rows_2d(q.float(), one)
    assert not _q_rows_2d(torch.zeros(3 * 2 * 16 * 576 + 1, dtype=torch.bfloat16)[1:].view(3, 2, 16, 576), one)
