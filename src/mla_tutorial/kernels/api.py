"""FlashMLA's first public decode API, served by the stage-4 Triton kernels (version 4).

    tile_scheduler_metadata, num_splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512,
                                      tile_scheduler_metadata, num_splits, causal=True)

Same argument order, shapes and dtypes as deepseek-ai/FlashMLA's `flash_mla_interface`:
q [b, s_q, h_q, 576] bf16/fp16; k_cache [num_blocks, 64, h_kv, 576] (or, with is_fp8_kvcache=True, FlashMLA's FP8
cache [num_blocks, 64, h_kv, 656] float8_e4m3fn, q bf16); block_table [b, max_blocks] int32;
cache_seqlens [b] int32 -> out [b, s_q, h_q, 512] (q's dtype), softmax_lse [b, h_q, s_q] fp32 (natural log;
+inf for a request with no keys). Bad arguments raise TypeError/ValueError naming the argument before anything is
launched. The metadata is computed on the GPU without a host sync, so
both calls can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from .common import _check_tensor, validate_decode_inputs, validate_metadata
from .reference import mla_decode_reference
from .schedule import get_mla_metadata as _get_mla_metadata
from .v1_naive import mla_decode_v1
from .v2_head_tiled import mla_decode_v2
from .v3_split_kv import mla_decode_v3
from .v4_balanced import mla_decode_v4
from .v5 import _launch_v5, kernel_choice, mla_decode_v5

__all__ = [
    "get_mla_metadata",
    "flash_mla_with_kvcache",
    "mla_decode_reference",
    "mla_decode_v1",
    "mla_decode_v2",
    "mla_decode_v3",
    "mla_decode_v4",
    "mla_decode_v5",
    "kernel_choice",
    "KERNEL_VERSIONS",
]

# the ladder, in order: name -> entry point with the plain signature
# (q, k_cache, block_table, cache_seqlens, head_dim_v=512, softmax_scale=None, causal=False) -> (out, lse)
KERNEL_VERSIONS = {
    "v1_naive": mla_decode_v1,
    "v2_head_tiled": mla_decode_v2,
    "v3_split_kv": mla_decode_v3,
    "v4_balanced": mla_decode_v4,
    "v5": mla_decode_v5,
}


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def get_mla_metadata(
    cache_seqlens: torch.Tensor, num_heads_per_head_k: int, num_heads_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Schedule for flash_mla_with_kvcache.

    cache_seqlens [b] int32; num_heads_per_head_k = s_q * h_q // h_kv; num_heads_k = h_kv.
    Returns (tile_scheduler_metadata [num_sm_parts, 8] int32, num_splits [b + 1] int32).
    """
    _check_tensor("cache_seqlens", cache_seqlens, 1, (torch.int32,), "[batch] int32")
    if cache_seqlens.shape[0] < 1:
        raise ValueError(f"cache_seqlens must hold at least one request, got shape {tuple(cache_seqlens.shape)}")
    _check_positive_int("num_heads_per_head_k", num_heads_per_head_k)
    _check_positive_int("num_heads_k", num_heads_k)
    return _get_mla_metadata(cache_seqlens, num_heads_per_head_k, num_heads_k)


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    tile_scheduler_metadata: torch.Tensor,
    num_splits: torch.Tensor,
    softmax_scale: float | None = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged MLA decode (FlashMLA-compatible). Returns (out [b, s_q, h_q, 512], softmax_lse [b, h_q, s_q]).

    is_fp8_kvcache (FlashMLA's keyword): k_cache is FlashMLA's FP8 cache, float8_e4m3fn [num_blocks, 64, h_kv, 656]
    (`mla_tutorial.quantize_k_cache`), and q is bf16; the output is bf16 as for a bf16 cache.
    """
    dims = validate_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                  fp8_cache=is_fp8_kvcache)
    validate_metadata(tile_scheduler_metadata, num_splits, dims.batch, q.device)
    return _launch_v5(q, k_cache, block_table, cache_seqlens, dims, causal, tile_scheduler_metadata, num_splits,
                      is_fp8=is_fp8_kvcache)
