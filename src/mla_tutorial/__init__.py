"""mla-tutorial: Multi-head Latent Attention (DeepSeek-V2/V3) decoding, from the math down to a Triton kernel.

The ladder, one module per stage, each built from the previous one with the same weights:

    stage 0  NaiveMHA      per-head K/V cache                       (stage0_naive.py)
    stage 1  LatentMLA     cache c_kv + shared k_rope only          (stage1_latent.py)
    stage 2  AbsorbedMLA   W_UK/W_UV absorbed: MQA in latent space  (stage2_absorbed.py)
    stage 3  PagedMLA      paged latent cache, block tables         (stage3_paged.py)
    stage 4  TritonMLA     fused Triton decode kernel               (stage4_triton.py)
    stage 5  FP8MLA        FP8 cache rows, FlashMLA's 656 bytes     (stage5_fp8.py, fp8.py)
"""

from .config import MLAConfig, yarn_mscale
from .layers import MLAProjections, RMSNorm, linear_init_
from .rope import RotaryEmbedding, apply_rope
from .stage0_naive import MHACache, NaiveMHA
from .stage1_latent import LatentCache, LatentMLA
from .stage2_absorbed import AbsorbedMLA, StaticLatentCache
from .stage3_paged import SENTINEL_BLOCK, CacheFullError, PagedLatentCache, PagedMLA, paged_mla_attention

__version__ = "0.1.0"

#: The torch stages in ladder order; stages 4 and 5 (TritonMLA, FP8MLA) are imported on first use.
STAGES: list[type[MLAProjections]] = [NaiveMHA, LatentMLA, AbsorbedMLA, PagedMLA]

# Names imported on first use, so that `import mla_tutorial` neither needs Triton nor imports it before the
# caller has chosen between GPU and interpreter (mla_tutorial.kernels sets TRITON_INTERPRET=1 without CUDA).
_LAZY = {
    "TritonMLA": "stage4_triton",
    "FP8MLA": "stage5_fp8",
    "FP8LatentCache": "stage5_fp8",
    "quantize_k_cache": "fp8",
    "dequantize_k_cache": "fp8",
    "get_mla_metadata": "kernels",
    "flash_mla_with_kvcache": "kernels",
    "TinyDecoder": "decoder",
    "CapturedDecodeStep": "graphs",
    "error_metrics": "metrics",
}
_LAZY_MODULES = ("hf", "kernels", "decoder", "metrics", "measure", "tour", "graphs", "contract", "testing", "fp8")


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mla_tutorial' has no attribute {name!r}")

__all__ = [
    "MLAConfig", "yarn_mscale", "MLAProjections", "RMSNorm", "linear_init_", "RotaryEmbedding", "apply_rope",
    "MHACache", "NaiveMHA", "LatentCache", "LatentMLA", "AbsorbedMLA", "StaticLatentCache", "SENTINEL_BLOCK",
    "CacheFullError", "PagedLatentCache", "PagedMLA", "paged_mla_attention", "STAGES", "TritonMLA", "get_mla_metadata",
    "flash_mla_with_kvcache", "TinyDecoder", "CapturedDecodeStep", "error_metrics", "FP8MLA", "FP8LatentCache",
    "quantize_k_cache", "dequantize_k_cache",
]
