"""Capacity: how many sequences, and how long, fit in one GPU's memory with each stage's cache.

    python -m mla_tutorial memory --config deepseek-v3 --context 32768 --gpu-memory-gb 141 --tp 8 [--json]

Per GPU, for a whole model (every layer) served with tensor parallelism over `tp` GPUs:

    weights     parameters × bytes per parameter / tp          (DeepSeek-V3's released FP8 weights: 1 byte each;
                                                                the whole model split evenly, experts included)
    budget      gpu_memory × usable_fraction − weights         (the rest of `usable_fraction`, like vLLM's
                                                                gpu_memory_utilization = 0.9, is left for
                                                                activations and the runtime)
    per token   stage 0:    layers · (H/tp)·(d_h + d^R_h + d_v)·e   (the heads split over GPUs: each keeps its own)
                stages 1–4: layers · (d_c + d^R_h)·e              (the latent is shared by every head, so every
                                                                   tensor-parallel GPU keeps all of it)
                stage 5:    layers · 656                          (FlashMLA's FP8 row: 512 e4m3 + 4 float32 scales
                                                                   + 64 bf16, whatever e)

Stages 0–2 keep each sequence's cache contiguous: a sequence of S tokens takes S·per_token. Stages 3–4 commit
memory a page (64 tokens) at a time: ceil(S/64)·64·per_token. So

    max_sequences   = floor(budget / per_sequence(context))
    longest_context = the largest S with batch · per_sequence(S) ≤ budget

Nothing else is counted: no activations, no second copy of the cache while torch.cat grows it (stages 0–1 need
one layer's cache twice during a step), no fragmentation. The answer is an upper bound, exact for the formula.
"""

from __future__ import annotations

from typing import Any

from ..config import MLAConfig
from .cost import model_facts, weight_count

STAGES = [(0, "NaiveMHA", "mha", False), (1, "LatentMLA", "latent", False), (2, "AbsorbedMLA", "latent", False),
          (3, "PagedMLA", "latent", True), (4, "TritonMLA", "latent", True),
          (5, "FP8MLA", "fp8", True)]  # (stage, class, cache, paged)
DEFAULT_USABLE_FRACTION = 0.9


def smallest_tp(preset: str, gpu_memory_bytes: float, usable_fraction: float = DEFAULT_USABLE_FRACTION,
                weight_bytes_per_parameter: float | None = None) -> int:
    """The fewest GPUs (a power of two dividing the heads) whose share of the weights fits in usable memory."""
    config, facts = MLAConfig.preset(preset), model_facts(preset)
    if facts.parameters is None:
        return 1
    wbytes = facts.weight_bytes if weight_bytes_per_parameter is None else weight_bytes_per_parameter
    tp = 1
    while facts.parameters * wbytes / tp > gpu_memory_bytes * usable_fraction and tp < config.num_heads:
        tp *= 2
    return tp


def capacity(preset: str, *, gpu_memory_bytes: float, context: int, tp: int | None = None, batch: int = 1,
             element_bytes: int = 2, usable_fraction: float = DEFAULT_USABLE_FRACTION,
             weight_bytes_per_parameter: float | None = None) -> dict[str, Any]:
    """Per stage: cache bytes per token (all layers, one GPU), the most sequences of `context` tokens that fit,
    and the longest context at `batch` sequences. See the module docstring for the formulas. `tp` None: the
    fewest GPUs whose share of the weights fits (`smallest_tp`)."""
    config = MLAConfig.preset(preset)
    facts = model_facts(preset)
    tp_note = "given"
    if tp is None:
        tp, tp_note = smallest_tp(preset, gpu_memory_bytes, usable_fraction, weight_bytes_per_parameter), \
            "the fewest GPUs (a power of two) whose share of the weights fits"
    if config.num_heads % tp:
        raise ValueError(f"--tp {tp} does not divide the {config.num_heads} heads of {preset}")
    wbytes = facts.weight_bytes if weight_bytes_per_parameter is None else weight_bytes_per_parameter
    if facts.parameters is None:  # the tiny model: its attention layers only, in the cache's dtype
        weights = facts.layers * weight_count(config) * (wbytes or element_bytes) / tp
        weights_note = (f"{facts.layers} attention layers of {weight_count(config):,} weights, "
                        f"{wbytes or element_bytes} B each")
    else:
        weights = facts.parameters * wbytes / tp
        weights_note = f"{facts.parameters / 1e9:g}B parameters × {wbytes:g} B, split evenly over {tp} GPU(s)"
    budget = gpu_memory_bytes * usable_fraction - weights
    heads = config.num_heads // tp
    page = config.page_size
    rows = []
    for stage, name, kind, paged in STAGES:
        if kind == "fp8":
            from ..fp8 import ROW_BYTES

            per_layer = ROW_BYTES  # 656: the FP8 row has its own byte layout
        else:
            per_layer = (heads * (config.qk_head_dim + config.v_head_dim) if kind == "mha" else config.latent_dim) \
                * element_bytes
        per_token = facts.layers * per_layer

        def per_sequence(tokens: int, per_token: int = per_token, paged: bool = paged) -> int:
            return per_token * (-(-tokens // page) * page if paged else tokens)

        max_sequences = max(0, int(budget // per_sequence(context))) if budget > 0 else 0
        longest = max(0, int(budget // (batch * per_token))) if budget > 0 else 0
        if paged:
            longest = longest // page * page
        rows.append({"stage": stage, "name": name,
                     "cache": {"mha": "per-head K/V", "latent": "latent", "fp8": "latent, FP8 (656-byte rows)"}[kind],
                     "paged": paged, "bytes_per_token": per_token, "bytes_per_token_per_layer": per_layer,
                     "bytes_per_sequence": per_sequence(context), "max_sequences": max_sequences,
                     "longest_context": longest})
    return {
        "preset": preset, "gpu_memory_bytes": gpu_memory_bytes, "usable_fraction": usable_fraction, "tp": tp,
        "tp_source": tp_note,
        "heads_per_gpu": heads, "context": context, "batch": batch, "element_bytes": element_bytes,
        "layers": facts.layers, "weights_per_gpu_bytes": weights, "cache_budget_bytes": budget,
        "assumptions": [
            f"weights: {weights_note} ({facts.source})",
            f"usable memory: {usable_fraction:g} of {gpu_memory_bytes / 1e9:g} GB; the rest for activations/runtime",
            f"cache in {element_bytes}-byte elements; stages 1–4 keep the whole latent on every GPU",
            "stages 3–5 commit whole 64-token pages; activations and torch.cat's transient copy are not counted",
            "stage 5 keeps FlashMLA's 656-byte FP8 row per token and layer, whatever the element size",
            "tensor parallelism splits the heads, not the latent: every GPU of a group holds every sequence's "
            "latent cache, so these are sequences per group of tp GPUs (engines shard sequences across GPUs with "
            "data-parallel attention instead)",
        ],
        "stages": rows,
    }


__all__ = ["DEFAULT_USABLE_FRACTION", "capacity", "smallest_tp"]
