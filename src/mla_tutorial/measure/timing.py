"""Timing a decode step: caches to decode from, and the median latency of one step with its spread.

Every timed step starts from the same prefix: stages 0 and 1 return a new cache and leave the one passed in
alone; the in-place caches (StaticLatentCache, PagedLatentCache) are restored after each step (`state()` /
`restore()`, device copies outside the timed region). So each step attends to exactly `context` keys.

On CUDA each step is timed with a pair of CUDA events (GPU time from the step's first launch to its last
kernel's end, which includes any time the GPU waits for the host), and the host's own time for the call is
taken with perf_counter (no sync inside the loop). With `graph=True` (stages 2–5) the step is captured once in a
CUDA graph (`mla_tutorial.graphs`) and each replay is timed. On a CPU, perf_counter around each step, with a
fixed thread count (`cpu_threads`), and the spread of the repetitions is reported so that a noisy run shows.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..stage0_naive import MHACache, NaiveMHA
from ..stage1_latent import LatentCache, LatentMLA

#: (p90 − p10) / median above which a timing is flagged as noisy.
WIDE_SPREAD = 0.25


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
    `max_score_bytes`. A stage with an in-place cache (2–5) gets one with room for `capacity` tokens per sequence
    (default length + 64).
    """
    gen = torch.Generator().manual_seed(seed)
    c = module.config
    chunk = max(1, min(length, max_score_bytes // (4 * batch * c.num_heads * length)))
    cache = module.new_cache(batch, capacity or length + 64) if hasattr(module, "new_cache") else None
    for start in range(0, length, chunk):
        x = random_hidden(module, batch, min(chunk, length - start), gen)
        _, cache = module(x, cache)
    return cache


@torch.inference_mode()
def random_cache(module: nn.Module, batch: int, length: int, *, capacity: int | None = None, seed: int = 0,
                 chunk_tokens: int = 1 << 22) -> Any:
    """A cache of the stage's own kind holding `length` tokens of random rows ~ N(0, 1) per sequence.

    For timing: what a decode step costs does not depend on the values, and writing random rows is far cheaper
    than prefilling through the stage (thousands of tokens through a DeepSeek-V3 layer, with quadratic
    attention). Stage 0 gets per-head keys and values, stage 1 a latent cache, stages 2–5 their in-place
    caches (room for `capacity` tokens, default length + 64), written `chunk_tokens` rows at a time.
    """
    w = _weights(module)
    c = module.config
    gen = torch.Generator(device=w.device).manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:  # drawn in the cache's dtype: no float32 copy of a large cache
        return torch.empty(*shape, device=w.device, dtype=w.dtype).normal_(generator=gen)

    if not hasattr(module, "new_cache"):
        if isinstance(module, LatentMLA):  # stage 1: [B, S, 576]
            return LatentCache(randn(batch, length, c.latent_dim), c.kv_lora_rank)
        if isinstance(module, NaiveMHA):  # stage 0: [B, H, S, 192] and [B, H, S, 128]
            return MHACache(randn(batch, c.num_heads, length, c.qk_head_dim),
                            randn(batch, c.num_heads, length, c.v_head_dim))
        raise TypeError(f"no random cache for {type(module).__name__}")
    cache = module.new_cache(batch, capacity or length + 64)
    step = max(1, chunk_tokens // (batch * c.latent_dim))
    for start in range(0, length, step):
        rows = randn(batch, min(step, length - start), c.latent_dim)  # [B, t, 576]
        if hasattr(cache, "append"):  # PagedLatentCache
            cache.append(cache.seq_ids, rows)
        else:  # StaticLatentCache
            positions = cache.lengths[:, None].long() + torch.arange(rows.shape[1], device=w.device)
            cache.write(positions, rows)
    return cache


def cache_batch(cache: Any) -> int:
    """How many sequences a stage's cache holds."""
    if hasattr(cache, "seq_ids"):  # paged
        return len(cache.seq_ids)
    return int((cache.k if hasattr(cache, "k") else cache.kv).shape[0])  # MHACache k [B, H, S, D]; kv [B, S, 576]


def in_place(cache: Any) -> bool:
    """Whether a step extends this cache in place (then timing restores it after every step)."""
    return hasattr(cache, "state") and hasattr(cache, "restore")


@dataclass(frozen=True)
class DecodeTiming:
    """Latency of one decode step over `reps` steps after `warmup` untimed ones, in seconds."""

    median_s: float
    p10_s: float
    p90_s: float
    reps: int
    warmup: int
    method: str  # "cuda-events", "cuda-graph" or "perf_counter"
    graph: bool  # replays of a captured CUDA graph
    host_median_s: float | None  # CUDA: the host's time to issue one step, or one replay (perf_counter, no sync)
    threads: int | None  # CPU: torch's intra-op threads during the timing
    context_growth: int = 0  # tokens the cache grew by during the timing (0: every step at the same context)

    @property
    def spread(self) -> float:
        """(p90 − p10) / median: the relative width of the middle 80 % of the repetitions."""
        return (self.p90_s - self.p10_s) / self.median_s

    @property
    def wide(self) -> bool:
        return self.spread > WIDE_SPREAD

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"spread": self.spread, "wide_spread": self.wide}


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@torch.inference_mode()
def time_decode(module: nn.Module, cache: Any = None, *, context: int | None = None, batch: int = 1,
                warmup: int = 5, reps: int = 50, seed: int = 0, graph: bool = False,
                min_time_s: float = 0.2) -> DecodeTiming:
    """Latency of one decode step (one new token per sequence) that attends to `context` keys.

    Pass a filled `cache`, or `context` and `batch` to have a prefix of context − 1 tokens made by `prefill`.
    Inputs are random (8 sets, in turn); every step starts from the same prefix. `graph=True` (CUDA, stages
    2–5) times replays of the step captured in a CUDA graph. On a CPU, steps are repeated beyond `reps` (up to
    10×) until the timed ones add up to `min_time_s`, so that short steps are not judged on a few noisy samples.
    """
    if cache is None:
        if context is None:
            raise ValueError("time_decode needs a prefilled cache or a context length")
        cache = prefill(module, batch, context - 1, seed=seed)
    if warmup < 0 or reps < 1:
        raise ValueError(f"need warmup ≥ 0 and reps ≥ 1, got warmup={warmup}, reps={reps}")
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = [random_hidden(module, cache_batch(cache), 1, gen) for _ in range(min(warmup + reps, 8))]  # [B,1,h]
    device = _weights(module).device
    on_cuda = device.type == "cuda"
    if graph and not (on_cuda and in_place(cache)):
        raise ValueError("graph=True needs CUDA and a stage whose cache is written in place (stages 2–5)")
    step: Any = None
    if graph:
        from ..graphs import CapturedDecodeStep

        step = CapturedDecodeStep(module, inputs[0], cache, max_steps=1)
        saved = step.state()
        rewind = lambda: step.restore(saved)  # noqa: E731
    elif in_place(cache):
        saved = cache.state()
        rewind = lambda: cache.restore(saved)  # noqa: E731
    else:
        rewind = None
    times: list[float] = []
    host: list[float] = []
    events: list[tuple[Any, Any]] = []
    growth = 0
    i, max_reps = -1, 10 * reps
    while i + 1 < warmup + reps:
        i += 1
        x = inputs[i % len(inputs)]
        if on_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            new_cache = cache if graph else module(x, cache)[1]
            if graph:
                step(x)
            t1 = time.perf_counter()
            end.record()
            if i >= warmup:
                events.append((start, end))
                host.append(t1 - t0)
        else:
            t0 = time.perf_counter()
            _, new_cache = module(x, cache)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        if rewind is not None:
            rewind()
        elif new_cache is cache:  # a cache type we cannot rewind was extended in place: it grows, and we say so
            growth += 1
        if not on_cuda and i == warmup + reps - 1 and sum(times) < min_time_s and len(times) < max_reps:
            reps += 1  # short steps on a CPU: repeat until the timed steps add up to min_time_s (at most 10×)
    if on_cuda:
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) / 1e3 for s, e in events]
    ordered = sorted(times)
    return DecodeTiming(statistics.median(times), _quantile(ordered, 0.1), _quantile(ordered, 0.9), len(times),
                        warmup,
                        "cuda-graph" if graph else "cuda-events" if on_cuda else "perf_counter", graph,
                        statistics.median(host) if on_cuda else None,
                        None if on_cuda else torch.get_num_threads(), growth)


__all__ = ["DecodeTiming", "WIDE_SPREAD", "cache_batch", "in_place", "prefill", "random_cache", "random_hidden",
           "time_decode"]
