"""Shared plumbing for the stage-4 Triton kernels: input checks, interpreter detection, launch configs.

Every kernel version (v1 ... v4) and the FlashMLA-compatible API call :func:`validate_decode_inputs`
before launching anything, so a bad argument fails with a message that names the argument, the
expected value and the received value, never with a Triton crash or a silent wrong answer. The rules
live in one place, `mla_tutorial.contract` (shared with stage 3's torch attention): this module
re-exports its constants and applies its validator with the kernels' fixed geometry.

Launch configurations are chosen from the device (shared memory per block, SM count) rather than
hard-coded for an H100, so the same code runs on an A100 (164 KB of shared memory per block) or a
consumer card (~100 KB).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

# FlashMLA's fixed geometry comes from the contract (re-exported here for the kernels): a 576-wide cache row =
# 512 latent ("nope") columns + 64 RoPE columns, V is the first 512 columns of the same row, pages hold 64 tokens.
from ..contract import (
    D_NOPE,  # noqa: F401
    D_QK,  # noqa: F401
    D_ROPE,  # noqa: F401
    KERNEL_DTYPES,  # noqa: F401
    PAGE_SIZE,  # noqa: F401
    SENTINEL_BLOCK,  # noqa: F401
    DecodeDims,  # noqa: F401
    is_interpreter,  # noqa: F401
    validate_paged_decode,
)
from ..contract import check_device as _check_device
from ..contract import check_tensor as _check_tensor
from ..contract import describe as _describe  # noqa: F401

MAX_TILE_M = 64  # query rows per program tile (one wgmma M=64 tile)
SCHEDULE_OVERHEAD_BLOCKS = 5  # FlashMLA's fixed cost per piece of a request, in 64-token page units
SCHEDULE_OVERHEAD_BLOCKS_SMALL = 2  # the same for the small tile (below 64 query rows): schedule.py says why
METADATA_COLS = 8  # width of FlashMLA's tile_scheduler_metadata rows

LOG2E = 1.4426950408889634


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


# ---------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------
def _on_gpu(q) -> bool:
    """True for a CUDA tensor (where bounds are checked by a device-side assertion, which callers may skip)."""
    return isinstance(q, torch.Tensor) and q.device.type == "cuda"


def validate_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale=None, causal=False, *,
                           dtypes: tuple[torch.dtype, ...] | None = None, check_values: bool = True,
                           fp8_cache: bool = False) -> DecodeDims:
    """The contract's validator with the kernels' geometry: `validate_paged_decode(..., kernel=True)`.

    q [b, s_q, h_q, 576] bf16/fp16; k_cache [num_blocks, 64, h_kv, 576] same dtype; block_table
    [b, max_blocks] int32; cache_seqlens [b] int32, contiguous; head_dim_v == 512; CUDA tensors, or CPU
    tensors under the interpreter. With check_values, block ids and lengths are bounds-checked (host check on
    the CPU, a device-side assertion on a GPU: no host sync).
    """
    return validate_paged_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                 dtypes=dtypes, kernel=True, check_values=check_values, fp8_cache=fp8_cache)


def validate_metadata(tile_scheduler_metadata, num_splits, batch: int, device: torch.device) -> None:
    """Check the (tile_scheduler_metadata, num_splits) pair made by get_mla_metadata."""
    _check_tensor(
        "tile_scheduler_metadata", tile_scheduler_metadata, 2, (torch.int32,), "[num_sm_parts, 8] int32"
    )
    if tile_scheduler_metadata.shape[1] != METADATA_COLS or tile_scheduler_metadata.shape[0] < 1:
        raise ValueError(
            f"tile_scheduler_metadata must have shape [num_sm_parts >= 1, {METADATA_COLS}], "
            f"got {tuple(tile_scheduler_metadata.shape)}"
        )
    _check_device("tile_scheduler_metadata", tile_scheduler_metadata, device)
    _check_tensor("num_splits", num_splits, 1, (torch.int32,), "[batch + 1] int32")
    if num_splits.shape[0] != batch + 1:
        raise ValueError(f"num_splits must have shape [batch + 1] = [{batch + 1}], got {tuple(num_splits.shape)}")
    _check_device("num_splits", num_splits, device)


# ---------------------------------------------------------------------------------------------
# device limits and launch configurations
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceLimits:
    name: str
    sm_count: int  # streaming multiprocessors
    smem_per_block: int  # bytes one program may use (opt-in maximum)
    smem_per_sm: int  # bytes per SM, shared by resident programs


# Used under the interpreter (CPU tensors): a small imaginary GPU, so schedules still split work.
INTERPRETER_LIMITS = DeviceLimits("triton-interpreter", sm_count=8, smem_per_block=232448, smem_per_sm=233472)


@functools.lru_cache(maxsize=16)
def _cuda_limits(index: int) -> DeviceLimits:
    props = torch.cuda.get_device_properties(index)
    smem_block = getattr(props, "shared_memory_per_block_optin", 0) or 0
    smem_sm = getattr(props, "shared_memory_per_multiprocessor", 0) or 0
    if not smem_block:  # older torch: ask Triton's driver
        try:
            import triton

            smem_block = int(triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"])
        except Exception:  # pragma: no cover - best effort
            smem_block = 48 * 1024
    if not smem_sm:
        smem_sm = smem_block + 1024
    return DeviceLimits(props.name, int(props.multi_processor_count), int(smem_block), int(smem_sm))


def device_limits(device: torch.device | str | None = None) -> DeviceLimits:
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda":
        return INTERPRETER_LIMITS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_limits(index)


@dataclass(frozen=True)
class TileConfig:
    """Launch parameters of the head-tiled kernels (v2, v3, v4)."""

    block_m: int  # query rows per tile (16, 32 or 64)
    block_n: int  # keys per inner step (divides the 64-token page)
    num_warps: int
    num_stages: int  # software-pipelining depth of the key loop
    ctas_per_sm: int  # programs resident per SM (from the shared-memory estimate)

    def smem_bytes(self, elem: int = 2) -> int:
        return tile_smem_bytes(self.block_m, self.block_n, self.num_stages, elem)


def tile_block_m(rows_per_kv: int) -> int:
    """M tile: next power of two of s_q*h_q/h_kv, at least 16 (the smallest MMA tile), at most 64."""
    return min(MAX_TILE_M, max(16, next_pow2(rows_per_kv)))


def tile_smem_bytes(block_m: int, block_n: int, num_stages: int, elem: int = 2) -> int:
    """Upper estimate of one head-tile program's shared memory: Q tile, key buffers, P tile.

    Q: block_m x 576, K/V: block_n x 576 per buffer (V is the first 512 columns of the same tile),
    P: block_m x block_n. Triton's pipeliner keeps at most num_stages - 1 key tiles in flight
    (fewer when the indirect page-id load takes a stage: compiled sm_90 kernels showed 1-2 buffers).
    """
    q = block_m * D_QK * elem
    kv = max(1, num_stages - 1) * block_n * D_QK * elem
    p = block_m * block_n * elem
    return q + kv + p


# Preferred (block_n, num_warps, num_stages, ctas_per_sm) per BLOCK_M, best first; the first that fits
# the device's shared memory wins. 16/32-row tiles use mma.sync (Ampere-style MMA), 64-row tiles
# wgmma on Hopper; a 64x512 fp32 accumulator needs 8 warps (128 registers per thread).
# Order from the sm_90 compile reports (registers, spills, buffers) and the H100 tuning run.
PREFERRED_CONFIGS: dict[int, list[tuple[int, int, int, int]]] = {
    # H100 tuning run (2026-11-27, b=128, s_k=4096, ms): (32,4,5,2) 0.255/0.095 at h_q=16 s_k=4096/1024
    16: [(32, 4, 5, 2), (64, 4, 2, 2), (32, 4, 3, 2), (16, 4, 4, 2), (16, 4, 2, 1)],
    # (64,8,3,1) 0.324 = (32,4,5,2) 0.324 < (64,4,2,1) 0.433 at h_q=32
    32: [(64, 8, 3, 1), (32, 4, 5, 2), (64, 4, 2, 1), (32, 4, 3, 1), (16, 4, 4, 1), (16, 4, 2, 1)],
    # (64,8,2,1) 0.368/0.664/1.194 at h_q=64/128/128x2 vs (32,8,3,1) 0.507/0.902/1.692
    64: [(64, 8, 2, 1), (32, 8, 3, 1), (64, 8, 1, 1), (32, 8, 2, 1), (16, 8, 3, 1), (16, 8, 2, 1)],
}


def choose_tile_config(rows_per_kv: int, device: torch.device | str | None = None) -> TileConfig:
    """Pick (BLOCK_M, BLOCK_N, warps, stages, programs per SM) for a head tile that fits the device.

    BLOCK_M from s_q*h_q/h_kv; then the first preferred config whose shared memory fits the
    device's per-block limit (227 KB on H100, 163 KB on A100, ~99 KB on consumer cards).
    """
    limits = device_limits(device)
    block_m = tile_block_m(rows_per_kv)
    budget = limits.smem_per_block - 2048  # leave room for Triton's barriers/scratch
    for block_n, warps, stages, ctas in PREFERRED_CONFIGS[block_m]:
        need = tile_smem_bytes(block_m, block_n, stages)
        if need <= budget:
            # programs per SM: judged with two key buffers, what the compiled kernels hold
            resident = block_m * D_QK * 2 + 2 * block_n * D_QK * 2 + 1024
            ctas = max(1, min(ctas, limits.smem_per_sm // resident))
            return TileConfig(block_m, block_n, warps, stages, ctas)
    return TileConfig(block_m, 16, 8 if block_m >= 64 else 4, 1, 1)


def interpreter_config(rows_per_kv: int) -> TileConfig:
    """Small tiles for the interpreter (numpy): same code paths, cheaper arrays."""
    return TileConfig(tile_block_m(rows_per_kv), 64, 4, 1, 1)


def launch_config(rows_per_kv: int, device: torch.device) -> TileConfig:
    """The launch configuration for this tile height on this device (pass `config=` to a kernel to try another)."""
    if device.type != "cuda":
        return interpreter_config(rows_per_kv)
    return choose_tile_config(rows_per_kv, device)


def default_scale() -> float:
    return D_QK**-0.5
