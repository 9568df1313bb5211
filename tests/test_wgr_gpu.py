"""The wgmma register tile's parts on one page (kernels/v5_fp8_wgr.py), on a GPU: a probe kernel lands one page of
an FP8 cache by the tile's own TMA copies, then runs the tile's own functions on it (its scales, S^T = K·Q^T with
the page dequantized into wgmma's register operand, O^T = V^T·P^T for a given P, the store that undoes the columns'
permutation), and each result is checked against torch on the dequantized page.

Where test_fp8.py's cases check the whole tile, these say which part is wrong if one is.
"""

from __future__ import annotations

import pytest
import torch

from mla_tutorial.fp8 import dequantize_k_cache, quantize_k_cache

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

W = pytest.importorskip("mla_tutorial.kernels.v5_fp8_wgr")
R = pytest.importorskip("mla_tutorial.kernels.v5_fp8_reg")
G = pytest.importorskip("mla_tutorial.kernels.v5_gluon")
gl, gluon = G.gl, G.gluon

if gluon is not None and hasattr(W, "WGR_LAYOUT"):
    @gluon.jit(do_not_specialize=["page", "n_rows", "stride_qh"])  # (page 1, n_rows 1: runtime values, not constants)
    def _wgr_page_probe(q_ptr, kv_desc, sc_desc, kr_desc, p_ptr, s_ptr, out_ptr, lse_ptr, page, n_rows, stride_qh,
                        num_warps: gl.constexpr):
        """One page (block `page`, n_rows of it keys) through the tile's functions: S^T [64, 16] (Q's scaling into
        fp16 undone) to s_ptr, and O = P^T·V [16, 512] for the P [64 keys, 16 rows] at p_ptr, through the tile's
        store (one piece: O / 1, LSE 0) to out_ptr."""
        layout: gl.constexpr = W.WGR_LAYOUT
        a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=layout, k_width=2)
        rows_l: gl.constexpr = gl.SliceLayout(0, layout)
        keys_l: gl.constexpr = gl.SliceLayout(1, layout)
        q_smem, qr_smem, p0_smem, p1_smem, p2_smem, p3_smem, kv_raw, sc_raw, kr_raw, bw, bs, br = R._reg_smem(
            kv_desc, sc_desc, kr_desc, gl.bfloat16, 16, 1)
        R._reg_expect_tma(bw, bs, br, 0)
        R._reg_issue_tma(kv_desc, sc_desc, kr_desc, kv_raw, sc_raw, kr_raw, bw, bs, br, 0, page)
        req = gl.program_id(0)  # (0: one request of 16 rows, one token each)
        down = R._reg_load_q16(q_ptr, q_smem, qr_smem, req, 0, 0, 0, stride_qh, 16, 16, rows_l, num_warps)
        G.fence_async_shared()
        cur = R._reg_page_in(kv_raw, sc_raw, kr_raw, bw, bs, br, 0, n_rows, 1, num_warps)
        sc0, sc1, sc2, sc3 = W._wgr_scales(sc_raw.index(cur), keys_l)
        s = W._wgr_scores(q_smem, qr_smem, kv_raw, kr_raw, cur, sc0, sc1, sc2, sc3, a_op, 0) * down[None, :]
        keys = gl.arange(0, 64, layout=keys_l)
        rows = gl.arange(0, 16, layout=rows_l)
        gl.store(s_ptr + keys[:, None] * 16 + rows[None, :], s)
        p = gl.load(p_ptr + keys[:, None] * 16 + rows[None, :])
        p0_smem.store(gl.permute((p * sc0[:, None]).to(gl.bfloat16), (1, 0)))
        p1_smem.store(gl.permute((p * sc1[:, None]).to(gl.bfloat16), (1, 0)))
        p2_smem.store(gl.permute((p * sc2[:, None]).to(gl.bfloat16), (1, 0)))
        p3_smem.store(gl.permute((p * sc3[:, None]).to(gl.bfloat16), (1, 0)))
        G.fence_async_shared()
        gl.thread_barrier()
        zero = gl.zeros([64, 16], gl.float32, layout=layout)
        one = gl.full([16], 1.0, gl.float32, layout=rows_l)
        o00, o01, o10, o11, o20, o21, o30, o31 = W._wgr_outputs(kv_raw, cur, p0_smem, p1_smem, p2_smem, p3_smem, zero,
                                                                zero, zero, zero, zero, zero, zero, zero, one, a_op, 0)
        m_i = one * 0.0
        tok = rows * 0
        W._wgr_store(o00, o01, 0, m_i, one, rows, tok, req, 0, 1, out_ptr, lse_ptr, out_ptr, lse_ptr, 1, 16, 16, 16, 0)
        W._wgr_store(o10, o11, 1, m_i, one, rows, tok, req, 0, 1, out_ptr, lse_ptr, out_ptr, lse_ptr, 1, 16, 16, 16, 0)
        W._wgr_store(o20, o21, 2, m_i, one, rows, tok, req, 0, 1, out_ptr, lse_ptr, out_ptr, lse_ptr, 1, 16, 16, 16, 0)
        W._wgr_store(o30, o31, 3, m_i, one, rows, tok, req, 0, 1, out_ptr, lse_ptr, out_ptr, lse_ptr, 1, 16, 16, 16, 0)
        R._reg_drop_bars(bw, bs, br, 1)


@pytest.mark.parametrize("n_rows", [64, 40, 1])
def test_gpu_wgr_page_parts_match_torch(n_rows):
    """S^T and O for one page of 16 rows, n_rows of its 64 rows keys (the rest NaN bytes, zeroed by the tile), against
    torch on the dequantized page: S^T to fp32 rounding (fp16 products of exact operands), O to bf16 rounding."""
    from mla_tutorial.kernels.v5_fp8_tma import raw_descriptors

    dev = "cuda"
    gen = torch.Generator().manual_seed(n_rows)
    cache = (torch.randn(3, 64, 1, 576, generator=gen) * torch.exp2(torch.randint(-6, 3, (3, 64, 1, 1),
                                                                                  generator=gen))).bfloat16()
    k8 = quantize_k_cache(cache.to(dev))
    page = 1
    k8.view(torch.uint8)[page, n_rows:] = 0xFF  # rows past the keys: NaN codes and NaN scales, never to be read
    k = dequantize_k_cache(k8)[page, :, 0].double()  # [64, 576]
    k[n_rows:] = 0.0
    q = torch.randn(16, 576, generator=gen).bfloat16().to(dev)  # 16 rows (heads), one token
    p = torch.rand(64, 16, generator=gen).bfloat16().float().to(dev)  # exact in bf16, as the tile's P copies
    s = torch.full((64, 16), float("nan"), device=dev)
    out = torch.full((16, 512), float("nan"), dtype=torch.bfloat16, device=dev)
    lse = torch.full((16,), float("nan"), device=dev)
    kv_desc, sc_desc, kr_desc = raw_descriptors(k8, 64, tiled_words=True)
    _wgr_page_probe[(1,)](q, kv_desc, sc_desc, kr_desc, p, s, out, lse, page, n_rows, q.stride(0),
                          num_warps=W.WGR_WARPS)
    torch.cuda.synchronize()
    s_ref = k @ q.double().T  # [64 keys, 16 rows]
    torch.testing.assert_close(s.double(), s_ref, rtol=1e-5, atol=1e-5 * float(s_ref.abs().max()))
    o_ref = p.double().T @ k[:, :512]  # [16 rows, 512]
    torch.testing.assert_close(out.double(), o_ref, rtol=2 ** -7, atol=2 ** -7 * float(o_ref.abs().max()))
    assert torch.equal(lse, torch.zeros_like(lse))
