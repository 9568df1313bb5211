"""`@triton.jit` building blocks shared by the head-tiled kernels (v2, v3, v4, v5's small tile) and the combine.

Each kernel version imports from here and from nowhere else in the ladder, so each version file reads on its own:
the query tile load, the online-softmax walk over key blocks (two dots for the 512 + 64 columns of a latent row,
one for P·V), the normalise-and-store of a tile, the causal window, and a bf16 cast that rounds to nearest-even
also in Triton's interpreter.
"""

from __future__ import annotations

import triton
import triton.language as tl


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
