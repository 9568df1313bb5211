# version 2: head-tiled. One program per (request, latent KV head, tile of up to 64 query rows).
#
# In MLA every query head of a KV group attends to the SAME latent cache row (576 values: 512 latent +
# 64 RoPE). So the s_q·h_q/h_kv query rows of a group form the M dimension of a matrix tile, and each
# 64-token page is loaded ONCE per tile (instead of once per head as in v1) and used twice:
#   S = Q_nope·K_nopeᵀ + Q_rope·K_ropeᵀ   ([M,512]x[512,64] + [M,64]x[64,64]: 576 = 512 + 64, two
#                                          tensor-core dots because Triton block shapes are powers of 2)
#   O += P·V,  V = K_nope (the first 512 columns of the same tile, already in shared memory)
# Scores stay fp32; the online softmax works in base 2 with softmax_scale·log2(e) folded into one
# multiply; P is rounded to the input dtype for the second dot (as FlashMLA does).
# Bytes: b·(s_k·1152 + 2·s_q·h_q·(576+512)) per call, the ideal (cache read once per 64-row tile;
#   h_q=128 at s_q=1 is two tiles, the second read mostly hits L2).
# FLOPs: 2·b·h_q·s_q·s_k·1088 on tensor cores. Expected: at h_q=128, s_k=4096 ~20-40x over v1;
#   at b=128 memory-bound shapes ~0.6-0.7 of copy bandwidth: b·h_kv programs (128 at b=128) leave a
#   few of the 132 SMs idle and one program per SM cannot keep enough loads in flight. v3 fixes that.
# Measured (H100, 2026-11-27): b=128 fixed lengths h_q=16 s_k=4096 0.222 ms (0.91 of copy BW, faster
#   than v4 there: no split, no combine); uneven lengths 0.46 ms (v4 1.83x faster); b=1 s_k=32768
#   1.49 ms (one SM; v4 14.8x faster). h_q=128 s_k=4096 0.61 ms = 0.35 of the bf16 matmul rate.
"""Version 2 of the stage-4 kernel ladder: head-tiled tensor-core kernel (no split)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    D_NOPE,
    D_ROPE,
    LOG2E,
    PAGE_SIZE,
    TileConfig,
    cdiv,
    is_interpreter,
    launch_config,
    validate_decode_inputs,
)


# ---------------------------------------------------------------------------------------------
# building blocks shared by v2, v3 and v4
# ---------------------------------------------------------------------------------------------
@triton.jit
def _cast(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """x.to(dtype), rounding to nearest-even also in the interpreter.

    Triton's interpreter converts fp32 -> bf16 by truncation (seen on triton 3.9), which biases
    outputs by up to 1 bf16 ulp; on a GPU the conversion rounds to nearest-even. Do that by hand there.
    """
    if UPCAST and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)  # round the low 16 bits to nearest, ties to even
        x = ((bits >> 16) << 16).to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _load_q_tile(
    q_ptr, req, kv_head, m_start,
    stride_qb, stride_qs, stride_qh,
    heads_per_kv, rows_per_kv,
    BLOCK_M: tl.constexpr, D_NOPE: tl.constexpr, D_ROPE: tl.constexpr, UPCAST: tl.constexpr,
):
    """Load the tile's query rows. Row r of a KV group is (token r // heads_per_kv, head r % heads_per_kv)."""
    rows = m_start + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    row_ok = rows < rows_per_kv
    tok = rows // heads_per_kv  # query token in [0, s_q)
    head = kv_head * heads_per_kv + rows % heads_per_kv  # query head in [0, h_q)
    base = q_ptr + req.to(tl.int64) * stride_qb + tok * stride_qs + head * stride_qh  # (BLOCK_M,) pointers
    q_nope = tl.load(base[:, None] + tl.arange(0, D_NOPE)[None, :], mask=row_ok[:, None], other=0.0)
    q_rope = tl.load(base[:, None] + D_NOPE + tl.arange(0, D_ROPE)[None, :], mask=row_ok[:, None], other=0.0)
    if UPCAST:  # interpreter: bf16 tl.dot is wrong there, fp32 is right
        q_nope = q_nope.to(tl.float32)
        q_rope = q_rope.to(tl.float32)
    return q_nope, q_rope, tok, head, row_ok  # (BLOCK_M, 512), (BLOCK_M, 64), 3 x (BLOCK_M,)


@triton.jit
def _attend_blocks(
    q_nope, q_rope, acc, m_i, l_i,
    kv_ptr, bt_row_ptr, kv_head,
    stride_kvb, stride_kvt, stride_kvh,
    n_lo, n_hi,  # key blocks [n_lo, n_hi) of BLOCK_N keys each
    s_k,  # keys in the cache for this request (rows >= s_k are never loaded: they may hold NaN)
    n_visible,  # (BLOCK_M,) keys visible to each row (s_k, or s_k - s_q + 1 + token when causal)
    qk_scale,  # softmax_scale * log2(e)
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, D_NOPE: tl.constexpr, D_ROPE: tl.constexpr,
    UPCAST: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """Online-softmax attention of one query tile over key blocks [n_lo, n_hi). Returns (acc, m_i, l_i).

    Per BLOCK_N keys: load BLOCK_N x 576 cache values once (BLOCK_N·1152 bytes), two dots for S
    (2·M·BLOCK_N·576 FLOPs), one dot for P·V (2·M·BLOCK_N·512 FLOPs).
    """
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_NOPE)
    offs_r = tl.arange(0, D_ROPE)
    for nb in tl.range(n_lo, n_hi, num_stages=NUM_STAGES):
        start = nb * BLOCK_N
        page = tl.load(bt_row_ptr + start // PAGE).to(tl.int64)  # BLOCK_N divides PAGE: one page per step
        rows = kv_ptr + page * stride_kvb + (start % PAGE + offs_n) * stride_kvt + kv_head * stride_kvh
        keys = start + offs_n  # (BLOCK_N,) key positions
        valid = keys < s_k
        k_nope = tl.load(rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)  # (BLOCK_N, 512)
        k_rope = tl.load(rows[:, None] + D_NOPE + offs_r[None, :], mask=valid[:, None], other=0.0)  # (BLOCK_N, 64)
        if UPCAST:
            k_nope = k_nope.to(tl.float32)
            k_rope = k_rope.to(tl.float32)
        s = tl.dot(q_nope, tl.trans(k_nope))  # (BLOCK_M, BLOCK_N) fp32
        s = tl.dot(q_rope, tl.trans(k_rope), s)
        s = tl.where(keys[None, :] < n_visible[:, None], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # (BLOCK_M,)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw no key yet: avoid inf - inf
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])  # (BLOCK_M, BLOCK_N)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        if UPCAST:
            p_op = _cast(p, kv_ptr.dtype.element_ty, UPCAST).to(tl.float32)  # same rounding of P as on the GPU
        else:
            p_op = p.to(k_nope.dtype)
        acc = tl.dot(p_op, k_nope, acc)  # (BLOCK_M, 512): V = latent columns of the same tile
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _store_tile(
    out_ptr, lse_ptr, slot, tok, head, row_ok, acc, m_i, l_i, s_q, h_q,
    FINAL: tl.constexpr, D_NOPE: tl.constexpr, UPCAST: tl.constexpr,
):
    """Normalise and store a tile.

    FINAL: out [b, s_q, h_q, 512] (out_ptr's dtype) and lse [b, h_q, s_q], natural log, +inf if no key.
    else:  fp32 partials, out [slots, s_q*h_q, 512] and lse [slots, s_q*h_q], -inf if no key.
    """
    has_keys = l_i > 0
    l_safe = tl.where(has_keys, l_i, 1.0)
    o = acc / l_safe[:, None]  # 0 where no key was visible
    row = (slot.to(tl.int64) * s_q + tok) * h_q + head  # (BLOCK_M,) row of [slots, s_q, h_q]
    out_ptrs = out_ptr + row[:, None] * D_NOPE + tl.arange(0, D_NOPE)[None, :]
    tl.store(out_ptrs, _cast(o, out_ptr.dtype.element_ty, UPCAST), mask=row_ok[:, None])
    lse = (m_i + tl.log2(l_safe)) * 0.6931471805599453  # base 2 -> natural log
    if FINAL:
        lse = tl.where(has_keys, lse, float("inf"))
        tl.store(lse_ptr + (slot.to(tl.int64) * h_q + head) * s_q + tok, lse, mask=row_ok)
    else:
        lse = tl.where(has_keys, lse, float("-inf"))
        tl.store(lse_ptr + row, lse, mask=row_ok)


@triton.jit
def _visible_keys(s_k, tok, s_q, CAUSAL: tl.constexpr):
    """Keys each row may see: all s_k, or [0, s_k - s_q + tok] (bottom-right causal)."""
    if CAUSAL:
        return s_k - s_q + 1 + tok
    else:
        return tok * 0 + s_k


# ---------------------------------------------------------------------------------------------
# the v2 kernel
# ---------------------------------------------------------------------------------------------
@triton.jit
def _mla_decode_v2_kernel(
    q_ptr, kv_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kvb, stride_kvt, stride_kvh,
    stride_btb,
    s_q, h_q, heads_per_kv, rows_per_kv, m_tiles,
    qk_scale,
    CAUSAL: tl.constexpr, PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    D_NOPE: tl.constexpr, D_ROPE: tl.constexpr,
    UPCAST: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    req = tl.program_id(0)
    kv_head = tl.program_id(1) // m_tiles
    m_start = (tl.program_id(1) % m_tiles) * BLOCK_M

    s_k = tl.load(seqlens_ptr + req)
    q_nope, q_rope, tok, head, row_ok = _load_q_tile(
        q_ptr, req, kv_head, m_start, stride_qb, stride_qs, stride_qh, heads_per_kv, rows_per_kv,
        BLOCK_M, D_NOPE, D_ROPE, UPCAST,
    )
    n_visible = _visible_keys(s_k, tok, s_q, CAUSAL)
    acc = tl.zeros([BLOCK_M, D_NOPE], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc, m_i, l_i = _attend_blocks(
        q_nope, q_rope, acc, m_i, l_i,
        kv_ptr, block_table_ptr + req.to(tl.int64) * stride_btb, kv_head,
        stride_kvb, stride_kvt, stride_kvh,
        0, tl.cdiv(s_k, BLOCK_N), s_k, n_visible, qk_scale,
        PAGE, BLOCK_N, D_NOPE, D_ROPE, UPCAST, NUM_STAGES,
    )
    _store_tile(out_ptr, lse_ptr, req, tok, head, row_ok, acc, m_i, l_i, s_q, h_q, True, D_NOPE, UPCAST)


def mla_decode_v2(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int = D_NOPE,
    softmax_scale: float | None = None,
    causal: bool = False,
    *,
    config: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged MLA decode, version 2. Returns (out [b, s_q, h_q, 512] in q.dtype, lse [b, h_q, s_q] fp32)."""
    dims = validate_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal)
    cfg = config or launch_config(dims.rows_per_kv, q.device)
    b, s_q, h_q = dims.batch, dims.s_q, dims.h_q
    out = torch.empty(b, s_q, h_q, D_NOPE, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    m_tiles = cdiv(dims.rows_per_kv, cfg.block_m)
    _mla_decode_v2_kernel[(b, dims.h_kv * m_tiles)](
        q, k_cache, block_table, cache_seqlens, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_table.stride(0),
        s_q, h_q, dims.heads_per_kv, dims.rows_per_kv, m_tiles,
        dims.scale * LOG2E,
        CAUSAL=causal, PAGE=PAGE_SIZE, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        D_NOPE=D_NOPE, D_ROPE=D_ROPE, UPCAST=is_interpreter(), NUM_STAGES=cfg.num_stages,
        num_warps=cfg.num_warps,
    )
    return out, lse
