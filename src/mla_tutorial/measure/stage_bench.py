"""One stage at one shape: everything the tour and the benchmark report (latency, throughput, bytes, FLOPs,
roofline fraction, memory, cost)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .cost import (
    DEFAULT_USD_PER_GPU_HOUR,
    cost_per_million_tokens,
    decode_kind,
    decode_step_cost,
    element_size,
    tokens_per_second,
)
from .memory import cache_footprint, peak_memory
from .timing import _weights, in_place, prefill, random_hidden, time_decode


@torch.inference_mode()
def profile_decode(module: nn.Module, context: int, batch: int = 1, *, warmup: int = 5, reps: int = 50,
                   seed: int = 0, usd_per_gpu_hour: float = DEFAULT_USD_PER_GPU_HOUR,
                   ceilings: dict[str, float] | None = None, measure_memory: bool = True) -> dict[str, Any]:
    """Everything the tour and the benchmark report for one stage at one (batch, context).

    A cache of `context − 1` tokens is prefilled, so each timed step attends to `context` keys. `ceilings`
    ({"bytes_per_s": ..., "flops_per_s": ...}, the machine's measured roofline) adds the roofline time and the
    fraction of it reached.
    """
    w = _weights(module)
    kind = decode_kind(module)
    if not isinstance(context, int) or context < 2:
        raise ValueError(f"context must be an int ≥ 2 (a prefix of context − 1 tokens and the new one), "
                         f"got {context!r}")
    cost = decode_step_cost(module.config, kind, context, batch, element_size(w.dtype))
    cache = prefill(module, batch, context - 1, seed=seed, capacity=context + 64)
    footprint = cache_footprint(cache)
    timing = time_decode(module, cache, batch=batch, warmup=warmup, reps=reps, seed=seed)
    step_memory = None
    if measure_memory:
        x = random_hidden(module, batch, 1, torch.Generator().manual_seed(seed + 2))
        saved = cache.state() if in_place(cache) else None
        step_memory = peak_memory(lambda: module(x, cache), w.device)
        if saved is not None:
            cache.restore(saved)
    tps = tokens_per_second(batch, timing.median_s)
    record: dict[str, Any] = {
        "kind": kind, "batch": batch, "context": context, "dtype": str(w.dtype).removeprefix("torch."),
        "device": str(w.device),
        "latency_ms": timing.median_s * 1e3, "latency_p10_ms": timing.p10_s * 1e3,
        "latency_p90_ms": timing.p90_s * 1e3, "timing": timing.as_dict(),
        "tokens_per_s": tps, "usd_per_gpu_hour": usd_per_gpu_hour,
        "usd_per_million_tokens": cost_per_million_tokens(tps, usd_per_gpu_hour),
        "bytes": cost.bytes, "flops": cost.flops, "intensity_flop_per_byte": cost.intensity,
        "achieved_gb_per_s": cost.bytes / timing.median_s / 1e9,
        "achieved_tflop_per_s": cost.flops / timing.median_s / 1e12,
        "cost": cost.as_dict(),
        "cache_bytes_held": footprint["bytes"], "cache_bytes_reserved": footprint["reserved"],
        "cache_tokens_held": footprint["tokens"], "step_peak_memory_bytes": step_memory,
    }
    if ceilings:
        best = cost.roofline_seconds(ceilings["bytes_per_s"], ceilings["flops_per_s"])
        record |= {"roofline_ms": best * 1e3, "roofline_fraction": best / timing.median_s,
                   "bound": "memory" if cost.bytes / ceilings["bytes_per_s"] >= cost.flops / ceilings["flops_per_s"]
                   else "compute"}
    return record


__all__ = ["profile_decode"]
