"""Timing a decode step: caches to decode from, and the median latency of one step with its spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


def _weights(module: nn.Module) -> torch.Tensor:
    return next(module.parameters())


def random_hidden(module: nn.Module, batch: int, tokens: int, generator: torch.Generator) -> torch.Tensor:
    """Random hidden states [batch, tokens, hidden] ~ N(0, 1) in the module's dtype and device (never zeros)."""
    w = _weights(module)
    x = torch.randn(batch, tokens, module.config.hidden_size, generator=generator, dtype=torch.float32)
    return x.to(device=w.device, dtype=w.dtype)


@torch.inference_mode()
def prefill(module: nn.Module, batch: int, length: int, *, seed: int = 0, capacity: int | None = None,
            max_score_bytes: int = 1 << 30) -> Any:
    """A cache holding `length` tokens of random hidden states per sequence, built by the stage itself.

    The prompt goes through in chunks small enough that the float32 score matrix [B, H, chunk, S] stays under
    `max_score_bytes`. A paged stage gets a cache with room for `capacity` tokens per sequence (default length + 64).
    """
    gen = torch.Generator().manual_seed(seed)
    c = module.config
    chunk = max(1, min(length, max_score_bytes // (4 * batch * c.num_heads * length)))
    cache = module.new_cache(batch, capacity or length + 64) if hasattr(module, "new_cache") else None
    for start in range(0, length, chunk):
        x = random_hidden(module, batch, min(chunk, length - start), gen)
        _, cache = module(x, cache)
    return cache


def _rewind_point(cache: Any) -> Callable[[], None] | None:
    """For a cache that a step extends in place, a function that undoes the step; None for value-like caches.

    Stages 0–2 return a *new* cache object and leave the one passed in untouched, so every timed step can start
    from the same prefix. A PagedLatentCache is extended in place; its new rows land in free slots, so restoring
    its page bookkeeping (free list, page lists, lengths) returns it to the prefix state without copying rows.
    """
    if not all(hasattr(cache, name) for name in ("_free", "_pages", "_lengths")):
        return None
    free, pages, lengths = list(cache._free), {s: list(p) for s, p in cache._pages.items()}, dict(cache._lengths)

    def rewind() -> None:
        cache._free = type(cache._free)(free)
        cache._pages = {s: list(p) for s, p in pages.items()}
        cache._lengths = dict(lengths)

    return rewind


# --------------------------------------------------------------------------------------------- timing and memory
@dataclass(frozen=True)
class DecodeTiming:
    """Latency of one decode step: the median over `reps` steps after `warmup` untimed ones, in seconds."""

    median_s: float
    p20_s: float
    p80_s: float
    reps: int
    warmup: int
    method: str  # "cuda-events" or "perf_counter"
    context_growth: int  # 0 when every step ran at the same context; else tokens added during the timing

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.inference_mode()
def time_decode(module: nn.Module, cache: Any = None, *, context: int | None = None, batch: int = 1,
                warmup: int = 5, reps: int = 50, seed: int = 0) -> DecodeTiming:
    """Median latency of one decode step (one new token per sequence) that attends to `context` keys.

    Pass a prefilled `cache`, or `context` and `batch` to have a prefix of context − 1 tokens made by `prefill`.
    Each step's input is fresh random data. Every timed step starts from the same prefix (see `_rewind_point`).
    On CUDA each step is timed with a pair of CUDA events (GPU time, no host synchronisation inside the loop);
    on CPU with perf_counter.
    """
    if cache is None:
        if context is None:
            raise ValueError("time_decode needs a prefilled cache or a context length")
        cache = prefill(module, batch, context - 1, seed=seed)
    if warmup < 0 or reps < 1:
        raise ValueError(f"need warmup ≥ 0 and reps ≥ 1, got warmup={warmup}, reps={reps}")
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = [random_hidden(module, cache_batch(cache), 1, gen) for _ in range(warmup + reps)]  # [B, 1, hidden]
    rewind = _rewind_point(cache)
    device = _weights(module).device
    on_cuda = device.type == "cuda"
    times: list[float] = []
    events: list[tuple[Any, Any]] = []
    growth = 0
    for i, x in enumerate(inputs):
        if on_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            _, new_cache = module(x, cache)
            end.record()
            if i >= warmup:
                events.append((start, end))
        else:
            t0 = time.perf_counter()
            _, new_cache = module(x, cache)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        if rewind is not None:
            rewind()
        elif new_cache is cache:  # a cache type we cannot rewind was extended in place: it grows, and we say so
            growth += 1
    if on_cuda:
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) / 1e3 for s, e in events]
    q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return DecodeTiming(statistics.median(times), q[0], q[3], reps, warmup,
                        "cuda-events" if on_cuda else "perf_counter", growth)


def cache_batch(cache: Any) -> int:
    """How many sequences a stage's cache holds."""
    if hasattr(cache, "seq_ids"):  # paged
        return len(cache.seq_ids)
    return int((cache.k if hasattr(cache, "k") else cache.kv).shape[0])  # MHACache k [B, H, S, D]; kv [B, S, 576]



__all__ = ["DecodeTiming", "cache_batch", "prefill", "random_hidden", "time_decode"]
