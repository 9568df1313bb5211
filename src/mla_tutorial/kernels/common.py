"""Shared plumbing for the stage-4 Triton kernels: input checks, interpreter detection, launch configs.

Every kernel version (v1 ... v4) and the FlashMLA-compatible API call :func:`validate_decode_inputs`
before launching anything, so a bad argument fails with a message that names the argument, the
expected value and the received value, never with a Triton crash or a silent wrong answer.

Launch configurations are chosen from the device (shared memory per block, SM count) rather than
hard-coded for an H100, so the same code runs on an A100 (164 KB of shared memory per block) or a
consumer card (~100 KB).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch

from ..fp8 import validate_fp8_k_cache

# FlashMLA's fixed geometry: a 576-wide cache row = 512 latent ("nope") columns + 64 RoPE columns,
# V is the first 512 columns of the same row, pages hold 64 tokens.
D_QK = 576  # kv_lora_rank (512) + qk_rope_head_dim (64)
D_NOPE = 512  # kv_lora_rank: the latent part, also V
D_ROPE = 64  # qk_rope_head_dim: the decoupled RoPE part
PAGE_SIZE = 64  # tokens per cache page (FlashMLA's block size)
MAX_TILE_M = 64  # query rows per program tile (one wgmma M=64 tile)
SCHEDULE_OVERHEAD_BLOCKS = 5  # FlashMLA's fixed cost per request, in 64-token block units
METADATA_COLS = 8  # width of FlashMLA's tile_scheduler_metadata rows

LOG2E = 1.4426950408889634


def is_interpreter() -> bool:
    """True when Triton runs kernels in its numpy interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


# ---------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeDims:
    """Sizes read off validated inputs."""

    batch: int  # b
    s_q: int  # query tokens per request (1 for plain decode, >1 for speculative/MTP decode)
    h_q: int  # query heads
    h_kv: int  # latent KV heads (1 for DeepSeek MLA)
    heads_per_kv: int  # h_q // h_kv
    rows_per_kv: int  # s_q * h_q // h_kv: the M dimension of the head tile
    num_blocks: int  # pages in the cache
    max_blocks: int  # block-table columns
    head_dim_v: int  # 512
    scale: float  # softmax scale


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"tensor(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device})"
    return f"{type(t).__name__} {t!r}"


def _check_tensor(name: str, t, ndim: int, dtypes: tuple[torch.dtype, ...], what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor ({what}), got {_describe(t)}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims ({what}), got {t.dim()} dims: shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}, got {t.dtype}")


def _check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} must be on {device} (the device of q), got {t.device}")


def validate_decode_inputs(
    q,
    k_cache,
    block_table,
    cache_seqlens,
    head_dim_v,
    softmax_scale=None,
    causal=False,
    *,
    allow_cpu: bool | None = None,
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16),
    fp8_cache: bool = False,
) -> DecodeDims:
    """Check every argument of a decode call; return the sizes. Raises TypeError/ValueError, never launches.

    q [b, s_q, h_q, 576] bf16/fp16; k_cache [num_blocks, 64, h_kv, 576] same dtype; block_table
    [b, max_blocks] int32; cache_seqlens [b] int32; head_dim_v == 512.
    CPU tensors are accepted only under the interpreter (or with allow_cpu=True, for the reference).
    fp8_cache: k_cache is FlashMLA's FP8 cache instead, float8_e4m3fn [num_blocks, 64, h_kv, 656], q bf16
    (`mla_tutorial.fp8.validate_fp8_k_cache`).
    """
    if not isinstance(fp8_cache, bool):
        raise TypeError(f"is_fp8_kvcache must be a bool, got {_describe(fp8_cache)}")
    _check_tensor("q", q, 4, dtypes, "[batch, s_q, h_q, 576]")
    b, s_q, h_q, d = q.shape
    if d != D_QK:
        raise ValueError(f"q.shape[3] (head dim) must be {D_QK} (512 latent + 64 RoPE), got {d}")
    if b < 1 or s_q < 1 or h_q < 1:
        raise ValueError(f"q must have batch, s_q and h_q >= 1, got shape {tuple(q.shape)}")
    if q.stride(-1) != 1:
        raise ValueError(f"q must be contiguous in its last dim (stride 1), got stride {q.stride(-1)}")
    device = q.device
    if allow_cpu is None:
        allow_cpu = is_interpreter()
    if device.type != "cuda" and not allow_cpu:
        raise ValueError(
            f"q must be on a CUDA device (or run with TRITON_INTERPRET=1 for CPU tensors), got {device}"
        )

    if fp8_cache:
        validate_fp8_k_cache(k_cache, q)
    elif isinstance(k_cache, torch.Tensor) and k_cache.dtype == torch.float8_e4m3fn:
        raise TypeError("k_cache has dtype torch.float8_e4m3fn: pass is_fp8_kvcache=True for FlashMLA's FP8 cache")
    else:
        _check_tensor("k_cache", k_cache, 4, (q.dtype,), "[num_blocks, 64, h_kv, 576], same dtype as q")
    num_blocks, page, h_kv, dk = k_cache.shape
    if page != PAGE_SIZE:
        raise ValueError(f"k_cache.shape[1] (page size) must be {PAGE_SIZE}, got {page}")
    if not fp8_cache and dk != D_QK:
        raise ValueError(f"k_cache.shape[3] (head dim) must be {D_QK} to match q, got {dk}")
    if h_kv < 1 or h_q % h_kv != 0:
        raise ValueError(
            f"h_q (q.shape[2] = {h_q}) must be divisible by h_kv (k_cache.shape[2] = {h_kv}), got {h_q} % {h_kv}"
        )
    if k_cache.stride(-1) != 1:
        raise ValueError(f"k_cache must be contiguous in its last dim, got stride {k_cache.stride(-1)}")
    _check_device("k_cache", k_cache, device)

    _check_tensor("block_table", block_table, 2, (torch.int32,), "[batch, max_blocks_per_seq] int32")
    if block_table.shape[0] != b:
        raise ValueError(f"block_table.shape[0] must equal the batch size {b} of q, got {block_table.shape[0]}")
    if block_table.shape[1] < 1:
        raise ValueError(f"block_table must have at least 1 column, got shape {tuple(block_table.shape)}")
    if block_table.stride(-1) != 1:
        raise ValueError(f"block_table must be contiguous in its last dim, got stride {block_table.stride(-1)}")
    _check_device("block_table", block_table, device)

    _check_tensor("cache_seqlens", cache_seqlens, 1, (torch.int32,), "[batch] int32")
    if cache_seqlens.shape[0] != b:
        raise ValueError(
            f"cache_seqlens.shape[0] must equal the batch size {b} of q, got {cache_seqlens.shape[0]}"
        )
    _check_device("cache_seqlens", cache_seqlens, device)

    if isinstance(head_dim_v, bool) or not isinstance(head_dim_v, int):
        raise TypeError(f"head_dim_v must be an int, got {_describe(head_dim_v)}")
    if head_dim_v != D_NOPE:
        raise ValueError(f"head_dim_v must be {D_NOPE} (V = the latent part of the cache row), got {head_dim_v}")

    if softmax_scale is None:
        scale = D_QK**-0.5
    else:
        if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
            raise TypeError(f"softmax_scale must be a float or None, got {_describe(softmax_scale)}")
        scale = float(softmax_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"softmax_scale must be a finite positive number, got {softmax_scale}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {_describe(causal)}")

    return DecodeDims(
        batch=b,
        s_q=s_q,
        h_q=h_q,
        h_kv=h_kv,
        heads_per_kv=h_q // h_kv,
        rows_per_kv=s_q * (h_q // h_kv),
        num_blocks=num_blocks,
        max_blocks=block_table.shape[1],
        head_dim_v=head_dim_v,
        scale=scale,
    )


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


# Tuning hook: block_m -> TileConfig used instead of choose_tile_config (set by the benchmark's --tune).
_CONFIG_OVERRIDES: dict[int, TileConfig] = {}


def set_tile_config_override(block_m: int, config: TileConfig | None) -> None:
    """Force (or with None, stop forcing) the launch config of every head tile with this BLOCK_M."""
    if config is None:
        _CONFIG_OVERRIDES.pop(block_m, None)
    else:
        if config.block_m != block_m:
            raise ValueError(f"config.block_m must be {block_m}, got {config.block_m}")
        _CONFIG_OVERRIDES[block_m] = config


def launch_config(rows_per_kv: int, device: torch.device) -> TileConfig:
    if device.type != "cuda":
        return interpreter_config(rows_per_kv)
    override = _CONFIG_OVERRIDES.get(tile_block_m(rows_per_kv))
    return override or choose_tile_config(rows_per_kv, device)


def default_scale() -> float:
    return D_QK**-0.5
