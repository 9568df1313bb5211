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

from .blocks import _attend_blocks, _load_q_tile, _store_tile, _visible_keys
from .common import (
    D_NOPE,
    D_ROPE,
    LOG2E,
    PAGE_SIZE,
    TileConfig,
    _on_gpu,
    cdiv,
    is_interpreter,
    launch_config,
    validate_decode_inputs,
)


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
    check_bounds: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged MLA decode, version 2. Returns (out [b, s_q, h_q, 512] in q.dtype, lse [b, h_q, s_q] fp32)."""
    # check_bounds=False skips the device-side bounds assertion on a GPU (benchmarks; FlashMLA never checks)
    dims = validate_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                  check_values=check_bounds or not _on_gpu(q))
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
