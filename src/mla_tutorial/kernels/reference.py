"""fp32 torch reference for paged MLA decode, following FlashMLA's test recipe.

One request at a time: gather the request's pages through its block-table row, keep the first
s_k cache rows, compute Q·Kᵀ·scale in fp32, apply the bottom-right causal mask (query token j of
s_q sees keys [0, s_k - s_q + j]), softmax, multiply by V (the first 512 columns of the same rows).
Returns (out [b, s_q, h_q, 512] fp32, lse [b, h_q, s_q] fp32, natural log).

A request with no keys (s_k = 0), or a query row whose causal window is empty, gets out = 0 and
lse = +inf, as in FlashMLA. With h_kv > 1 latent heads, query head h uses KV head h // (h_q / h_kv).

Slow on purpose: it is the yardstick every kernel version is tested against.
"""

from __future__ import annotations

import torch

from .common import D_NOPE, validate_decode_inputs


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
    """Returns (out, lse), plus Σ_j p_j·|v_j| ([b, s_q, h_q, 512]) with return_p_abs_v=True.

    Σ p·|V| bounds how much rounding the probabilities P to a 16-bit type before the P·V product
    can move each output element: |Δout| <= eps·Σ_j p_j·|v_j| (eps = 2^-8 for bf16, 2^-11 for fp16).
    """
    dims = validate_decode_inputs(
        q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
        allow_cpu=True, dtypes=(torch.bfloat16, torch.float16, torch.float32),
    )
    b, s_q, h_q, _ = q.shape
    page = k_cache.shape[1]
    h_kv = k_cache.shape[2]
    group = h_q // h_kv  # query heads per latent head
    out = torch.zeros(b, s_q, h_q, head_dim_v, dtype=torch.float32, device=q.device)
    lse = torch.full((b, h_q, s_q), float("inf"), dtype=torch.float32, device=q.device)
    p_abs_v = torch.zeros_like(out) if return_p_abs_v else None
    seqlens = cache_seqlens.tolist()
    for i in range(b):
        s_k = int(seqlens[i])
        if s_k == 0:
            continue
        n_pages = -(-s_k // page)
        pages = block_table[i, :n_pages].long()  # only the pages that hold keys
        kv = k_cache[pages].reshape(n_pages * page, h_kv, -1)[:s_k].float()  # (s_k, h_kv, 576)
        kv = kv.repeat_interleave(group, dim=1).transpose(0, 1)  # (h_q, s_k, 576)
        qi = q[i].float().transpose(0, 1)  # (h_q, s_q, 576)
        scores = torch.matmul(qi, kv.transpose(1, 2)) * dims.scale  # (h_q, s_q, s_k)
        if causal:
            # bottom-right aligned: query j sees keys [0, s_k - s_q + j]
            allowed = torch.ones(s_q, s_k, dtype=torch.bool, device=q.device).tril(diagonal=s_k - s_q)
            scores = scores.masked_fill(~allowed, float("-inf"))
        lse_i = torch.logsumexp(scores, dim=-1)  # (h_q, s_q); -inf for rows with no visible key
        empty = torch.isneginf(lse_i)
        probs = torch.exp(scores - torch.where(empty, 0.0, lse_i)[..., None])  # (h_q, s_q, s_k)
        o = torch.matmul(probs, kv[..., :head_dim_v])  # (h_q, s_q, 512)
        out[i] = o.transpose(0, 1)
        lse[i] = torch.where(empty, float("inf"), lse_i)
        if return_p_abs_v:
            p_abs_v[i] = torch.matmul(probs, kv[..., :head_dim_v].abs()).transpose(0, 1)
    if return_p_abs_v:
        return out, lse, p_abs_v
    return out, lse
