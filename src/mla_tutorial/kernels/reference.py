"""The yardstick every kernel version is tested against: stage 3's `paged_mla_attention`, with fp32 output.

The paged-decode contract has one torch implementation, `mla_tutorial.stage3_paged.paged_mla_attention`
(FlashMLA's test recipe, vectorised: gather each request's pages through its block-table row, keep the first
s_k rows, Q·Kᵀ·scale in fp32, bottom-right causal mask, softmax, ·V with V = the first 512 columns of the same
rows, natural-log LSE; out = 0 and lse = +inf for a query row with no visible key; query head h reads latent
head h // (h_q / h_kv)). `mla_decode_reference` is a thin alias that returns its output in fp32 (fp64 for fp64
inputs) instead of q's dtype, so a kernel's bf16/fp16 output can be compared with an unrounded reference.
tests/test_paged_cache.py checks that implementation against an obviously correct per-request loop.
"""

from __future__ import annotations

import torch

from ..contract import D_NOPE
from ..stage3_paged import paged_mla_attention


@torch.no_grad()
def mla_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int = D_NOPE,
    softmax_scale: float | None = None,
    causal: bool = False,
    *,
    return_p_abs_v: bool = False,
):
    """(out [b, s_q, h_q, head_dim_v] fp32, lse [b, h_q, s_q] fp32), plus Σ_j p_j·|v_j| with return_p_abs_v=True.

    Σ p·|V| bounds how much rounding the probabilities P to a 16-bit type before the P·V product
    can move each output element: |Δout| <= eps·Σ_j p_j·|v_j| (eps = 2^-8 for bf16, 2^-11 for fp16).
    """
    out_dtype = torch.promote_types(q.dtype, torch.float32) if isinstance(q, torch.Tensor) else None
    return paged_mla_attention(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                               out_dtype=out_dtype, return_p_abs_v=return_p_abs_v)
