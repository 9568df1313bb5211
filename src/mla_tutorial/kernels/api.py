"""FlashMLA's decode API in both its public forms, served by the stage-4 Triton kernels (version 5).

    # first form
    tile_scheduler_metadata, num_splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512,
                                      tile_scheduler_metadata, num_splits, causal=True)
    # current form (FlashMLA @9241ae3): an empty metadata object, filled by the first call, reused by later ones
    sched_meta, _ = get_mla_metadata()
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, sched_meta, None, causal=True)

Same argument order, shapes and dtypes as deepseek-ai/FlashMLA's `flash_mla_interface`:
q [b, s_q, h_q, 576] bf16/fp16; k_cache [num_blocks, 64, h_kv, 576] (or, with is_fp8_kvcache=True, FlashMLA's FP8
cache [num_blocks, 64, h_kv, 656] float8_e4m3fn, q bf16); block_table [b, max_blocks] int32;
cache_seqlens [b] int32 -> out [b, s_q, h_q, 512] (q's dtype), softmax_lse [b, h_q, s_q] fp32 (natural log;
+inf for a request with no keys). Bad arguments raise TypeError/ValueError naming the argument before anything is
launched. The metadata is computed on the GPU without a host sync, so
both calls can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..contract import check_contiguous, validate_paged_decode
from .common import _check_tensor, validate_metadata
from .plan import replay, signature
from .reference import mla_decode_reference
from .schedule import get_mla_metadata as _get_mla_metadata
from .v1_naive import mla_decode_v1
from .v2_head_tiled import mla_decode_v2
from .v3_split_kv import mla_decode_v3
from .v4_balanced import mla_decode_v4
from .v5 import _launch_v5, kernel_choice, mla_decode_v5, on_gpu

__all__ = [
    "FlashMLASchedMeta",
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


@dataclass
class FlashMLASchedMeta:
    """Scheduler metadata in FlashMLA's current API form: made empty by `get_mla_metadata()`, filled on the device by
    the first `flash_mla_with_kvcache` call that receives it, and reused by later calls.

    It records what it was built for (batch, s_q, h_q, h_kv, page size, causal, FP8 cache); a call with anything else
    raises ValueError naming what changed, as FlashMLA does. Reuse is valid only while cache_seqlens keeps its
    values (FlashMLA's rule): the kernels check the schedule against the lengths on the device and fail the call's
    device-side assertion when they disagree (a stale schedule), instead of returning a wrong answer.
    """

    tile_scheduler_metadata: torch.Tensor | None = None
    num_splits: torch.Tensor | None = None
    built_for: dict | None = None

    @property
    def filled(self) -> bool:
        return self.tile_scheduler_metadata is not None


def get_mla_metadata(
    cache_seqlens: torch.Tensor | None = None, num_heads_per_head_k: int | None = None, num_heads_k: int | None = None
):
    """Schedule for flash_mla_with_kvcache, in either of FlashMLA's two API forms.

    First form: `get_mla_metadata(cache_seqlens, num_heads_per_head_k, num_heads_k)` with cache_seqlens [b] int32,
    num_heads_per_head_k = s_q * h_q // h_kv, num_heads_k = h_kv returns (tile_scheduler_metadata [num_sm_parts, 8]
    int32, num_splits [b + 1] int32), computed now on the lengths' device.
    Current form: `get_mla_metadata()` returns (FlashMLASchedMeta(), None); pass both to flash_mla_with_kvcache.
    """
    given = [a is not None for a in (cache_seqlens, num_heads_per_head_k, num_heads_k)]
    if not any(given):
        return FlashMLASchedMeta(), None
    if not all(given):
        raise TypeError("get_mla_metadata takes either no arguments (FlashMLA's current form) or all three of "
                        "cache_seqlens, num_heads_per_head_k and num_heads_k (its first form)")
    _check_tensor("cache_seqlens", cache_seqlens, 1, (torch.int32,), "[batch] int32")
    if cache_seqlens.shape[0] < 1:
        raise ValueError(f"cache_seqlens must hold at least one request, got shape {tuple(cache_seqlens.shape)}")
    _check_positive_int("num_heads_per_head_k", num_heads_per_head_k)
    _check_positive_int("num_heads_k", num_heads_k)
    return _get_mla_metadata(cache_seqlens, num_heads_per_head_k, num_heads_k)


def _sched_meta_tensors(meta: FlashMLASchedMeta, num_splits, cache_seqlens, dims, causal: bool, is_fp8: bool):
    """Fill (first use) or check (reuse) a FlashMLASchedMeta; returns its two tensors."""
    if num_splits is not None:
        raise ValueError("num_splits must be None when tile_scheduler_metadata is a FlashMLASchedMeta "
                         "(FlashMLA's current API form); got a tensor")
    built_for = {"batch": dims.batch, "s_q": dims.s_q, "h_q": dims.h_q, "h_kv": dims.h_kv, "page_size": 64,
                 "causal": causal, "is_fp8_kvcache": is_fp8, "device": cache_seqlens.device}
    if not meta.filled:
        meta.tile_scheduler_metadata, meta.num_splits = _get_mla_metadata(cache_seqlens, dims.rows_per_kv, dims.h_kv)
        meta.built_for = built_for
    elif meta.built_for != built_for:
        changed = [f"{k} {meta.built_for[k]} -> {v}" for k, v in built_for.items() if meta.built_for[k] != v]
        raise ValueError(f"tile_scheduler_metadata was filled for another call shape ({'; '.join(changed)}); make a "
                         f"new one with get_mla_metadata() for each distinct (batch, s_q, h_q, h_kv, causal) shape")
    return meta.tile_scheduler_metadata, meta.num_splits


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    tile_scheduler_metadata: torch.Tensor | FlashMLASchedMeta,
    num_splits: torch.Tensor | None,
    softmax_scale: float | None = None,
    causal: bool = False,
    *,
    check_bounds: bool = True,
    is_fp8_kvcache: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged MLA decode (FlashMLA-compatible, both API forms). Returns (out [b, s_q, h_q, 512], lse [b, h_q, s_q]).

    Every argument is checked against the paged-decode contract (`mla_tutorial.contract`) before anything is
    launched. Bounds (block ids in [0, num_blocks), lengths >= 0 that fit the table) and a schedule built for
    other lengths: on the CPU (interpreter) on the host; on a GPU inside the v5 kernels, which never follow a bad
    id and clear a flag that one device-side assertion checks (no host sync). `check_bounds=False` (not in
    FlashMLA, which never checks) drops that assertion; the kernels still never read outside the pool.
    is_fp8_kvcache (FlashMLA's keyword): k_cache is FlashMLA's FP8 cache, float8_e4m3fn [num_blocks, 64, h_kv, 656]
    (`mla_tutorial.quantize_k_cache`), and q is bf16; the output is bf16 as for a bf16 cache.
    On a GPU the first call of each argument signature (shapes, strides, dtypes, devices, scalars) leaves a call plan
    that later calls with that signature replay: the checks, the routing and the launch packing are done once
    (`mla_tutorial.kernels.plan`; the outputs are new tensors at every call).
    """
    sched = tile_scheduler_metadata if isinstance(tile_scheduler_metadata, FlashMLASchedMeta) else None
    if sched is None:
        tensors = (q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits)
    else:  # (an unfilled one is filled by the full path; num_splits must be None, which the full path checks)
        tensors = (q, k_cache, block_table, cache_seqlens, sched.tile_scheduler_metadata, sched.num_splits)
    key = None
    if tensors[4] is not None and (sched is None or num_splits is None):
        key = signature((*tensors, None), (head_dim_v, softmax_scale, causal, check_bounds, None, None,
                                           is_fp8_kvcache, sched is not None))
        # (a FlashMLASchedMeta must also have been filled for this call's shape, as the full path checks)
        result = replay(key, tensors, built_for=None if sched is None else sched.built_for)
        if result is not None:
            return result
    dims = validate_paged_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                 kernel=True, check_values=not on_gpu(q), fp8_cache=is_fp8_kvcache)
    if sched is not None:
        tile_scheduler_metadata, num_splits = _sched_meta_tensors(tile_scheduler_metadata, num_splits,
                                                                  cache_seqlens, dims, causal, is_fp8_kvcache)
    validate_metadata(tile_scheduler_metadata, num_splits, dims.batch, q.device)
    check_contiguous("tile_scheduler_metadata", tile_scheduler_metadata)  # the kernels read both as dense arrays
    check_contiguous("num_splits", num_splits)
    return _launch_v5(q, k_cache, block_table, cache_seqlens, dims, causal, tile_scheduler_metadata, num_splits,
                      check_bounds=check_bounds, is_fp8=is_fp8_kvcache, plan_key=key,
                      built_for=None if sched is None else sched.built_for)
