# version 1: naive. One program per (request, query token, query head), fp32 math on CUDA cores.
#
# Each program walks its request's pages through the block table, 16 keys at a time:
#   scores = K·q (a [16,576]x[576] matrix-vector product, done as multiply + row sum),
#   an online softmax in base 2, acc += pᵀ·V with V = the first 512 columns of the same rows.
# Bytes: every head re-reads the whole latent cache, so the traffic is h_q·s_q times the ideal:
#   b·h_q·s_q·s_k·1152 B instead of b·s_k·1152 B (h_q=128, s_k=4096, b=128: 77 GB instead of 0.6 GB;
#   L2 absorbs part of it, since heads of one request run close together).
# FLOPs: the same 2·b·h_q·s_q·s_k·1088 as every version, but on CUDA cores (~60 TFLOP/s fp32 on H100)
#   instead of tensor cores. Expect ~50-100x slower than FlashMLA; it is the correctness baseline.
# Measured (H100 80GB HBM3, 2026-11-27, docs/results/kernels_h100_2026-11-27.json): b=128, h_q=16,
#   s_k=4096: 12.0 ms (v4: 0.255 ms, 47x faster); b=1, h_q=16, s_k=32768: 7.8 ms.
"""Version 1 of the stage-4 kernel ladder: one program per (request, query token, head)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .blocks import _cast
from .common import D_NOPE, D_ROPE, LOG2E, PAGE_SIZE, _on_gpu, is_interpreter, validate_decode_inputs


@triton.jit
def _mla_decode_v1_kernel(
    q_ptr, kv_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qs, stride_qh,  # q [b, s_q, h_q, 576]
    stride_kvb, stride_kvt, stride_kvh,  # k_cache [num_blocks, 64, h_kv, 576]
    stride_btb,  # block_table [b, max_blocks]
    s_q, h_q, heads_per_kv,
    qk_scale,  # softmax_scale * log2(e): scores go straight to base 2
    CAUSAL: tl.constexpr,
    PAGE: tl.constexpr,  # 64 tokens per page
    BLOCK_N: tl.constexpr,  # keys per step (divides PAGE)
    D_NOPE: tl.constexpr,  # 512
    D_ROPE: tl.constexpr,  # 64
    UPCAST: tl.constexpr,  # interpreter: round bf16 stores by hand
):
    pid = tl.program_id(0)  # request * s_q + query token
    head = tl.program_id(1)
    req = pid // s_q
    tok = pid % s_q
    kv_head = head // heads_per_kv

    offs_d = tl.arange(0, D_NOPE)  # (512,)
    offs_r = tl.arange(0, D_ROPE)  # (64,)
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)

    s_k = tl.load(seqlens_ptr + req)
    # keys visible to this query token: all s_k, or [0, s_k - s_q + tok] when causal (bottom-right aligned)
    if CAUSAL:
        n_visible = s_k - s_q + 1 + tok
    else:
        n_visible = s_k

    q_row = q_ptr + req.to(tl.int64) * stride_qb + tok * stride_qs + head * stride_qh
    q_nope = tl.load(q_row + offs_d).to(tl.float32)  # (512,)
    q_rope = tl.load(q_row + D_NOPE + offs_r).to(tl.float32)  # (64,)

    m_i = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), axis=0)  # running max (base 2)
    l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)  # running sum of exp2
    acc = tl.zeros([D_NOPE], tl.float32)  # (512,) running sum of p * V

    bt_row = block_table_ptr + req.to(tl.int64) * stride_btb
    for start in range(0, n_visible, BLOCK_N):
        keys = start + offs_n
        valid = keys < n_visible  # never touch rows past s_k: they may hold NaN
        page = tl.load(bt_row + start // PAGE).to(tl.int64)  # one page per step (BLOCK_N divides PAGE)
        rows = kv_ptr + page * stride_kvb + (start % PAGE + offs_n) * stride_kvt + kv_head * stride_kvh
        k_nope = tl.load(rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        k_rope = tl.load(rows[:, None] + D_NOPE + offs_r[None, :], mask=valid[:, None], other=0.0)
        k_rope = k_rope.to(tl.float32)
        s = tl.sum(k_nope * q_nope[None, :], axis=1) + tl.sum(k_rope * q_rope[None, :], axis=1)  # (BLOCK_N,)
        s = tl.where(valid, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))  # finite: at least one key of the step is valid
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new)  # (BLOCK_N,)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * k_nope, axis=0)  # V = latent columns of the same rows
        m_i = m_new

    has_keys = l_i > 0
    o = acc / tl.where(has_keys, l_i, 1.0)  # 0 for a request with no visible key
    lse = tl.where(has_keys, (m_i + tl.log2(tl.where(has_keys, l_i, 1.0))) * 0.6931471805599453, float("inf"))
    out_row = out_ptr + ((req.to(tl.int64) * s_q + tok) * h_q + head) * D_NOPE
    tl.store(out_row + offs_d, _cast(o, out_ptr.dtype.element_ty, UPCAST))
    tl.store(lse_ptr + (req * h_q + head) * s_q + tok, lse)


def mla_decode_v1(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int = D_NOPE,
    softmax_scale: float | None = None,
    causal: bool = False,
    *,
    check_bounds: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged MLA decode, version 1. Returns (out [b, s_q, h_q, 512] in q.dtype, lse [b, h_q, s_q] fp32)."""
    # check_bounds=False skips the device-side bounds assertion on a GPU (benchmarks; FlashMLA never checks)
    dims = validate_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                  check_values=check_bounds or not _on_gpu(q))
    b, s_q, h_q = dims.batch, dims.s_q, dims.h_q
    out = torch.empty(b, s_q, h_q, D_NOPE, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    grid = (b * s_q, h_q)
    _mla_decode_v1_kernel[grid](
        q, k_cache, block_table, cache_seqlens, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_table.stride(0),
        s_q, h_q, dims.heads_per_kv,
        dims.scale * LOG2E,
        CAUSAL=causal, PAGE=PAGE_SIZE, BLOCK_N=16, D_NOPE=D_NOPE, D_ROPE=D_ROPE, UPCAST=is_interpreter(),
        num_warps=4,
    )
    return out, lse
