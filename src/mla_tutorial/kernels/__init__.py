"""Stage 4: fused Triton MLA decode over a paged latent cache, FlashMLA-compatible.

The kernel ladder (each version importable, tested and benchmarked; see each file's header):
    v1_naive       one program per (request, query token, head)
    v2_head_tiled  query heads of a latent KV head form the M dim of a tensor-core tile
    v3_split_kv    + split-KV with an LSE-weighted combine kernel
    v4_balanced    + FlashMLA-style load-balanced schedule computed on the GPU (graph-capturable)
    v5             the production kernel: v4's schedule with a Gluon 64-row tile on Hopper (TMA, async wgmma)
                   and a register-lean plain-Triton small tile; `kernel_choice` says which runs and why
and the public API: get_mla_metadata, flash_mla_with_kvcache in both of FlashMLA's forms (served by v5).
"""

import os
import warnings

import torch


class InterpreterFallbackWarning(UserWarning):
    """No CUDA device: the Triton kernels run in Triton's interpreter (numpy on the CPU), for correctness only."""


# Triton picks interpreter or compiler when a kernel is defined, so the choice is made here, before the kernel
# modules are imported: with no CUDA device (a laptop, CI), kernels run on CPU tensors in Triton's interpreter.
# Said once per process, when this module makes the choice (not when the caller set TRITON_INTERPRET itself):
# after the first import the variable is set, so a re-import stays quiet.
if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"
    warnings.warn("mla_tutorial.kernels: no CUDA device found, so the Triton kernels run in Triton's interpreter "
                  "on CPU tensors (TRITON_INTERPRET=1): correct but slow, for small shapes; set TRITON_INTERPRET=1 "
                  "yourself to silence this", InterpreterFallbackWarning, stacklevel=2)

from .api import (  # noqa: E402
    KERNEL_VERSIONS,
    FlashMLASchedMeta,
    flash_mla_with_kvcache,
    get_mla_metadata,
    kernel_choice,
    mla_decode_reference,
    mla_decode_v1,
    mla_decode_v2,
    mla_decode_v3,
    mla_decode_v4,
    mla_decode_v5,
)
from .common import TileConfig, choose_tile_config, device_limits  # noqa: E402

__all__ = [
    "InterpreterFallbackWarning",
    "KERNEL_VERSIONS",
    "FlashMLASchedMeta",
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
    "mla_decode_v5",
    "kernel_choice",
]
