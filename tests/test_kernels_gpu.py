"""Stage 4 on a real GPU: the full FlashMLA-style matrix for every kernel version, and CUDA-graph capture.

Run on a GPU machine with `pytest -m gpu tests/test_kernels_gpu.py`; skipped without CUDA.
Every case holds all lengths {0, 1, 20, 63, 64, 65, 140, 4096} in one batch, so each length meets
every (h_q, s_q, h_kv, version) combination; h_q in {1, 3, 9, 16, 63, 64, 128} x s_q in {1, 2, 4},
with h_kv = 2 wherever h_q is even (and s_q != 2) and fp16 on every third case.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

if torch.cuda.is_available():
    from test_kernels import check_against_reference

    import mla_tutorial.kernels as K
    from mla_tutorial.testing import make_paged_inputs, normal_lengths

LENGTHS = [0, 1, 20, 63, 64, 65, 140, 4096]
VERSIONS = ["v1_naive", "v2_head_tiled", "v3_split_kv", "v4_balanced", "v5"]


def _cases():
    cases = []
    for i, h_q in enumerate([1, 3, 9, 16, 63, 64, 128]):
        for j, s_q in enumerate([1, 2, 4]):
            h_kv = 2 if h_q % 2 == 0 and s_q != 2 else 1
            causal = s_q > 1 and not (s_q == 4 and i % 2)  # s_q = 4 also without the causal mask
            dtype = torch.float16 if (i + j) % 3 == 0 else torch.bfloat16
            cases.append(pytest.param(h_q, s_q, h_kv, causal, dtype,
                                      id=f"hq{h_q}-sq{s_q}-hkv{h_kv}-{'causal' if causal else 'full'}-"
                                         f"{str(dtype).split('.')[-1]}"))
    return cases


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("h_q,s_q,h_kv,causal,dtype", _cases())
def test_gpu_matrix(version, h_q, s_q, h_kv, causal, dtype):
    seed = h_q * 10 + s_q
    q, k_cache, block_table, seqlens = make_paged_inputs(LENGTHS, s_q, h_q, h_kv, dtype, seed=seed, device="cuda")
    check_against_reference(K.KERNEL_VERSIONS[version], q, k_cache, block_table, seqlens, causal)


@pytest.mark.parametrize("path,options", [("seesaw", {}), ("seesaw", {"fine": True}), ("seesaw", {"max_first": True}),
                                          ("seesaw", {"max_first": False}), ("seesaw", {"opaque_views": False}),
                                          ("seesaw", {"q_async": False}), ("seesaw", {"store_lines": False}),
                                          ("seesaw", {"lines_partials": False}),
                                          ("seesaw", {"q_tma": False}),
                                          ("gluon", {}), ("gluon", {"fine": True}),
                                          ("small", None), ("m16", None)], ids=str)
@pytest.mark.parametrize("h_q,s_q,causal", [(16, 1, False), (64, 2, True), (126, 1, False), (128, 2, True)])
def test_v5_each_tile(path, options, h_q, s_q, causal):
    """v5's tiles forced at every tile height (kernel_choice picks one per height; both must be right), each of the
    seesaw tile's switches turned away from its default."""
    from mla_tutorial.kernels.v5_gluon import GluonConfig

    q, k_cache, block_table, seqlens = make_paged_inputs(LENGTHS, s_q, h_q, 1, torch.bfloat16, seed=h_q + s_q,
                                                         device="cuda")
    config = None if options is None else GluonConfig(**options)
    flag = torch.ones(1, dtype=torch.int32, device="cuda")
    check_against_reference(K.mla_decode_v5, q, k_cache, block_table, seqlens, causal, path=path, config=config,
                            error_flag=flag)
    assert int(flag) == 1, "a valid call raised the bounds / stale-schedule flag"


@pytest.mark.parametrize("q_tma", [False, True])
@pytest.mark.parametrize("row", [576, 577, 584, 592])
def test_v5_seesaw_q_views(row, q_tma):
    """The seesaw tile copies Q by cp.async only where every row of q is provably 16-byte aligned (its address and
    outer strides multiples of 16 elements): q as a view of wider rows (577, 584: the loads; 592: cp.async on a
    non-contiguous q) gives the reference's answer either way."""
    q, k_cache, block_table, seqlens = make_paged_inputs(LENGTHS, 2, 64, 1, torch.bfloat16, seed=row, device="cuda")
    wide = torch.full((*q.shape[:3], row), float("nan"), dtype=q.dtype, device="cuda")
    wide[..., :576] = q
    from mla_tutorial.kernels.v5_gluon import GluonConfig

    check_against_reference(K.mla_decode_v5, wide[..., :576], k_cache, block_table, seqlens, True, path="seesaw",
                            config=GluonConfig(q_tma=q_tma))  # (Q_TMA: by the producer's TMA only at row 576)


def _m16_variants():
    from mla_tutorial.kernels.v5_m16 import M16_VARIANTS

    return list(M16_VARIANTS)


@pytest.mark.parametrize("variant", _m16_variants() if torch.cuda.is_available() else [])
@pytest.mark.parametrize("h_q,s_q,causal,dtype", [(16, 1, False, torch.bfloat16), (1, 1, False, torch.float16),
                                                  (9, 2, True, torch.bfloat16), (64, 1, False, torch.bfloat16)])
def test_gpu_m16_variants(variant, h_q, s_q, causal, dtype, monkeypatch):
    """The TMA-fed 16-row bf16 tile (path "m16"), each variant (keys a step, warps), on every length of the matrix
    (page boundaries, an empty request, NaN in unused slots) and on a bad block id: the flag is cleared and the other
    requests stay right."""
    from mla_tutorial.kernels import v5_m16

    monkeypatch.setattr(v5_m16, "M16_DEFAULT", variant)
    q, k_cache, block_table, seqlens = make_paged_inputs(LENGTHS, s_q, h_q, 1, dtype, seed=h_q + 7 * s_q,
                                                         device="cuda")
    flag = torch.ones(1, dtype=torch.int32, device="cuda")
    check_against_reference(K.mla_decode_v5, q, k_cache, block_table, seqlens, causal, path="m16", error_flag=flag)
    assert int(flag) == 1, "a valid call raised the bounds / stale-schedule flag"
    bad = block_table.clone()
    bad[7, 3] = k_cache.shape[0]  # inside request 7's 4,096 keys
    out, _ = K.mla_decode_v5(q, k_cache, bad, seqlens, 512, causal=causal, path="m16", error_flag=flag)
    ref, _ = K.mla_decode_reference(q, k_cache, block_table, seqlens, 512, causal=causal)
    assert int(flag) == 0, "a bad block id did not clear the flag"
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:7].float(), ref[:7].float(), atol=2e-2, rtol=2e-2)


def test_current_api_form_on_the_gpu():
    lens = normal_lengths(32, 2048, 1, seed=4)
    q, k_cache, block_table, seqlens = make_paged_inputs(lens, 1, 128, 1, torch.bfloat16, seed=6, device="cuda")
    meta, _ = K.get_mla_metadata()
    call = lambda *a, **kw: K.flash_mla_with_kvcache(*a[:5], meta, None, **kw)  # noqa: E731
    check_against_reference(call, q, k_cache, block_table, seqlens, False)
    check_against_reference(call, q, k_cache, block_table, seqlens, False)  # reused


def test_gpu_normal_lengths_b64_api():
    """FlashMLA's recipe at b = 64, lengths ~ N(4096, 2048), h_q = 128, s_q = 2 causal, via the API."""
    lens = normal_lengths(64, 4096, 2, seed=3)
    q, k_cache, block_table, seqlens = make_paged_inputs(lens, 2, 128, 1, torch.bfloat16, seed=5, device="cuda")
    meta, splits = K.get_mla_metadata(seqlens, 2 * 128, 1)

    def call(q, k_cache, block_table, seqlens, head_dim_v, softmax_scale=None, causal=False):
        return K.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, head_dim_v, meta, splits,
                                        softmax_scale=softmax_scale, causal=causal)

    check_against_reference(call, q, k_cache, block_table, seqlens, True)


def test_v4_cuda_graph_capture_and_replay():
    """Metadata + kernel captured in one CUDA graph, replayed with new lengths, queries and cache contents."""
    s_q, h_q = 2, 16
    lens_a = [100, 2000, 64, 0, 1, 900, 4096, 333]
    lens_b = [4096, 5, 0, 65, 1024, 3000, 17, 2047]  # same longest request, different everything else
    q, k_cache, block_table, seqlens = make_paged_inputs(lens_a, s_q, h_q, 1, torch.bfloat16, seed=1, device="cuda")
    q2, k_cache2, block_table2, seqlens2 = make_paged_inputs(lens_b, s_q, h_q, 1, torch.bfloat16, seed=2,
                                                             device="cuda")
    assert block_table2.shape == block_table.shape
    # static buffers sized for either input set
    k_static = torch.full((max(k_cache.shape[0], k_cache2.shape[0]), *k_cache.shape[1:]), float("nan"),
                          dtype=k_cache.dtype, device="cuda")
    k_static[: k_cache.shape[0]] = k_cache

    def step():
        meta, splits = K.get_mla_metadata(seqlens, s_q * h_q, 1)
        return K.flash_mla_with_kvcache(q, k_static, block_table, seqlens, 512, meta, splits, causal=True)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # compile and warm up outside the capture
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = step()

    graph.replay()
    torch.cuda.synchronize()
    ref_out, ref_lse = K.mla_decode_reference(q, k_static, block_table, seqlens, 512, causal=True)
    torch.testing.assert_close(out.float(), ref_out, atol=2e-2, rtol=2e-2)

    # new data in the same buffers, then replay: the schedule must follow the new lengths
    q.copy_(q2)
    seqlens.copy_(seqlens2)
    block_table.copy_(block_table2)
    k_static.fill_(float("nan"))
    k_static[: k_cache2.shape[0]] = k_cache2
    graph.replay()
    torch.cuda.synchronize()
    ref_out, ref_lse = K.mla_decode_reference(q, k_static, block_table, seqlens, 512, causal=True)
    assert torch.isfinite(out).all()
    cos = 1 - 2 * (out.double() * ref_out.double()).sum() / (out.double() ** 2 + ref_out.double() ** 2).sum()
    assert cos < 5e-6, cos
    torch.testing.assert_close(out.float(), ref_out, atol=2e-2, rtol=2e-2)
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
    torch.testing.assert_close(lse[fin], ref_lse[fin], atol=1e-4, rtol=1e-4)
