"""Stage 4: fused Triton MLA decode over a paged latent cache, FlashMLA-compatible.

The kernel ladder (each version importable, tested and benchmarked; see each file's header):
    v1_naive       one program per (request, query token, head)
    v2_head_tiled  query heads of a latent KV head form the M dim of a tensor-core tile
    v3_split_kv    + split-KV with an LSE-weighted combine kernel
    v4_balanced    + FlashMLA-style load-balanced schedule computed on the GPU (graph-capturable)
and the public API: get_mla_metadata, flash_mla_with_kvcache (served by v4).
"""

from .api import (
    KERNEL_VERSIONS,
    flash_mla_with_kvcache,
    get_mla_metadata,
    mla_decode_reference,
    mla_decode_v1,
    mla_decode_v2,
    mla_decode_v3,
    mla_decode_v4,
)
from .common import TileConfig, choose_tile_config, device_limits

__all__ = [
    "KERNEL_VERSIONS",
    "TileConfig",
    "choose_tile_config",
    "device_limits",
    "flash_mla_with_kvcache",
    "get_mla_metadata",
    "mla_decode_reference",
    "mla_decode_v1",
    "mla_decode_v2",
    "mla_decode_v3",
    "mla_decode_v4",
]
