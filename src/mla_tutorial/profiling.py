"""Measuring a decode step: latency, peak memory, cache footprint, and the bytes and FLOPs it must move.

Decoding generates one token per sequence per step. Each step of one attention layer reads the layer's weights
once (shared by the batch) and each sequence's whole cache once, and does little arithmetic per byte: it is
limited by memory bandwidth unless the batch is large or the attention is wide (DeepSeek's 128 heads). So next to
every measured time we put what the step *had* to move and compute, derived from the shapes below, and the
roofline time those numbers imply on a given machine: time ≥ max(bytes / bandwidth, FLOPs / peak FLOP rate).

One decode step of one layer, B sequences, S keys each (the S − 1 cached tokens and the new one); e bytes per
element; d hidden, H heads, d_c = kv_lora_rank (512), d_r = qk_rope_head_dim (64), d_h = qk_nope_head_dim (128),
d_v = v_head_dim (128), D = d_h + d_r (192):

    kind        cache read per token          attention FLOPs per key, per head        kv_b_proj work
    "mha"       H·(D + d_v)·e  (81,920 B)     2·(D + d_v)          (640)               1 token
    "latent"    (d_c + d_r)·e  (1,152 B)      2·(D + d_v)          (640)               S tokens (re-expansion)
    "absorbed"  (d_c + d_r)·e  (1,152 B)      2·(d_c + d_r + d_c)  (2,176)             1 token's worth

(V3 numbers in bf16.) Stage 0 is "mha", stage 1 "latent", stages 2, 3 and 4 "absorbed". Stage 1 also writes the
expanded per-head keys and values out and reads them back (an unfused implementation has to), which is counted
in its bytes. Projections (q, kv_a, kv_b, o) cost 2 FLOPs per weight per token, and their weights are read once
per step. The attention-only numbers (`attention_bytes`, `attention_flops`) follow FlashMLA's benchmark formulas:
cache read + queries read + outputs written, and 2·H·S·(576 + 512) FLOPs per sequence.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .config import MLAConfig

#: Assumed rental price of one GPU for an hour, in US dollars, used for "cost per million tokens". An order of
#: magnitude for an on-demand H100 from a cloud provider (2025 list prices run from about $2 to $4); pass your own.
DEFAULT_USD_PER_GPU_HOUR = 2.50

KINDS = ("mha", "latent", "absorbed")


# --------------------------------------------------------------------------------------------- what a stage is
def decode_kind(module: nn.Module) -> str:
    """Which cost model a stage module follows: "mha" (stage 0), "latent" (stage 1) or "absorbed" (stages 2–4)."""
    from .stage0_naive import NaiveMHA
    from .stage1_latent import LatentMLA
    from .stage2_absorbed import AbsorbedMLA

    if isinstance(module, AbsorbedMLA) or hasattr(module, "absorb_query"):  # PagedMLA and TritonMLA too
        return "absorbed"
    if isinstance(module, LatentMLA):
        return "latent"
    if isinstance(module, NaiveMHA):
        return "mha"
    raise TypeError(f"module must be an MLA stage (NaiveMHA, LatentMLA, AbsorbedMLA, ...), got {type(module).__name__}")


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of a dtype (2 for bf16)."""
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------------------------- analytic cost
def weight_count(config: MLAConfig) -> int:
    """Parameters of one MLA attention layer (187,107,328 for DeepSeek-V3), without building it."""
    c, H = config, config.num_heads
    if c.q_lora_rank is None:
        q = c.hidden_size * H * c.qk_head_dim  # q_proj
    else:
        q = c.hidden_size * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * H * c.qk_head_dim  # q_a, norm, q_b
    kv_a = c.hidden_size * c.latent_dim + c.kv_lora_rank  # kv_a_proj_with_mqa and kv_a_layernorm
    kv_b = c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim)
    o = H * c.v_head_dim * c.hidden_size
    return q + kv_a + kv_b + o


@dataclass(frozen=True)
class StepCost:
    """What one decode step of one layer must compute and move (see the module docstring for the formulas)."""

    kind: str
    batch: int
    context: int  # S: keys each new token attends to
    attention_flops: int  # QKᵀ and P·V
    projection_flops: int  # q, kv_a, kv_b (or W_UK/W_UV), o
    cache_bytes: int  # cache rows read, plus the new rows written
    expansion_bytes: int  # stage 1 only: per-head K/V built from the latent, written and read back
    weight_bytes: int  # every weight of the layer, read once per step
    activation_bytes: int  # hidden states in and out, per-head queries and attention outputs
    attention_bytes: int  # FlashMLA's definition: cache read + queries read + outputs written

    @property
    def flops(self) -> int:
        return self.attention_flops + self.projection_flops

    @property
    def bytes(self) -> int:
        return self.cache_bytes + self.expansion_bytes + self.weight_bytes + self.activation_bytes

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved: below the machine's FLOP-rate / bandwidth ratio the step is memory-bound."""
        return self.flops / self.bytes

    def roofline_seconds(self, bytes_per_s: float, flops_per_s: float) -> float:
        """The least time this step can take on a machine with these ceilings."""
        return max(self.bytes / bytes_per_s, self.flops / flops_per_s)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"flops": self.flops, "bytes": self.bytes, "intensity": self.intensity}


def decode_step_cost(config: MLAConfig, kind: str, context: int, batch: int = 1,
                     element_bytes: int = 2) -> StepCost:
    """The analytic cost of one decode step: `batch` sequences each add one token and attend to `context` keys."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    for name, value in (("context", context), ("batch", batch), ("element_bytes", element_bytes)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    c, H, B, S, e = config, config.num_heads, batch, context, element_bytes
    d_c, d_r, d_h, d_v, D = c.kv_lora_rank, c.qk_rope_head_dim, c.qk_nope_head_dim, c.v_head_dim, c.qk_head_dim

    dense = weight_count(c) - c.kv_lora_rank * H * (d_h + d_v)  # every weight but kv_b_proj's
    kv_b_per_token = 2 * d_c * H * (d_h + d_v)  # FLOPs to push one token through kv_b_proj (or W_UK and W_UV)
    projection = B * 2 * dense + B * kv_b_per_token * (S if kind == "latent" else 1)

    if kind == "mha":
        row = H * (D + d_v) * e  # one token's per-head keys and values
        attention = B * 2 * H * S * (D + d_v)
        q_and_o = B * H * (D + d_v) * e
    else:
        row = (d_c + d_r) * e  # one latent row [c_kv | k_rope]
        if kind == "latent":
            attention = B * 2 * H * S * (D + d_v)
            q_and_o = B * H * (D + d_v) * e
        else:
            attention = B * 2 * H * S * (d_c + d_r + d_c)
            q_and_o = B * H * (d_c + d_r + d_c) * e
    cache = B * S * row + B * row  # read S rows (the new one included), write the new one
    expansion = 2 * B * S * H * (D + d_v) * e if kind == "latent" else 0
    return StepCost(kind=kind, batch=B, context=S, attention_flops=attention, projection_flops=projection,
                    cache_bytes=cache, expansion_bytes=expansion, weight_bytes=weight_count(c) * e,
                    activation_bytes=2 * B * c.hidden_size * e + q_and_o, attention_bytes=B * S * row + q_and_o)


def estimate_step_memory(config: MLAConfig, kind: str, context: int, batch: int = 1, element_bytes: int = 2) -> int:
    """A rough upper bound on the bytes a decode step of our torch stages holds at its peak (cache included).

    Used only to skip shapes that cannot fit. Counts the cache twice (stages 0–2 grow it with torch.cat, a copy),
    float32 copies of what attention reads, the float32 scores and probabilities, and stage 1's expansion.
    """
    c, H, B, S, e = config, config.num_heads, batch, context, element_bytes
    per_head_row = H * (c.qk_head_dim + c.v_head_dim)
    if kind == "mha":
        cache, work = B * S * per_head_row * e, B * S * per_head_row * 4
    elif kind == "latent":
        cache, work = B * S * c.latent_dim * e, B * S * per_head_row * (2 * e + 4)
    else:
        cache, work = B * S * c.latent_dim * e, B * S * c.latent_dim * 4
    scores = 2 * B * H * S * 4
    return 2 * cache + work + scores + weight_count(c) * e


# --------------------------------------------------------------------------------------------- throughput and price
def tokens_per_second(batch: int, seconds_per_step: float) -> float:
    """Decode throughput: every step produces one token for each of `batch` sequences."""
    return batch / seconds_per_step


def cost_per_million_tokens(tokens_per_s: float, usd_per_gpu_hour: float = DEFAULT_USD_PER_GPU_HOUR) -> float:
    """US dollars to produce a million tokens at this throughput on a GPU rented at `usd_per_gpu_hour`.

    For one attention layer, this is that layer's share only; a whole model multiplies by its layers (61 for V3)
    and adds the feed-forward (MoE) work.
    """
    return usd_per_gpu_hour / 3600.0 * 1e6 / tokens_per_s


# --------------------------------------------------------------------------------------------- caches
def cache_footprint(cache: Any) -> dict[str, int]:
    """Bytes a stage's cache object holds for its tokens: {"bytes": in use, "tokens": held, "reserved": allocated}.

    MHACache and LatentCache hold exactly their tokens. A paged cache reserves a whole pool up front; "bytes" then
    counts the pages its sequences own (a partly filled last page counts whole), "reserved" the pool.
    """
    if hasattr(cache, "block_table") and hasattr(cache, "cache_seqlens"):  # PagedLatentCache (stages 3, 4)
        from .stage3_paged import SENTINEL_BLOCK

        if not cache.seq_ids:
            return {"bytes": 0, "tokens": 0, "reserved": cache.nbytes}
        pages = int((cache.block_table() != SENTINEL_BLOCK).sum())
        page_bytes = cache.pool[0].numel() * cache.pool.element_size()  # page_size rows of 576
        return {"bytes": pages * page_bytes, "tokens": int(cache.cache_seqlens().sum()), "reserved": cache.nbytes}
    if hasattr(cache, "k") and hasattr(cache, "v"):  # MHACache: k [B, H, S, D]
        tokens = cache.k.shape[0] * cache.k.shape[2]
    elif hasattr(cache, "kv"):  # LatentCache: kv [B, S, 576]
        tokens = cache.kv.shape[0] * cache.kv.shape[1]
    else:
        raise TypeError(f"unknown cache type {type(cache).__name__}")
    return {"bytes": cache.nbytes, "tokens": tokens, "reserved": cache.nbytes}


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


class AllocationTracker(TorchDispatchMode):
    """Counts the bytes of tensor storage alive, and its peak, while active (any device; used on CPU).

    Every aten operator passes through `__torch_dispatch__`. An output whose storage is not one of the inputs'
    storages is a new allocation; a view of a tracked storage adds a reference to it. When the last tensor
    referring to a storage is garbage-collected, its bytes are subtracted. Tensors that existed before (weights,
    the cache passed in) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, list[int]] = {}  # storage address → [tensors referring to it, bytes]
        self.live = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                self.live -= entry[1]
                del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0:  # an empty tensor
                continue
            if key in self.refs:  # a view of something allocated in here
                self.refs[key][0] += 1
            elif key in inputs:  # a view of (or an in-place result on) a tensor from outside
                continue
            else:
                self.refs[key] = [1, storage.nbytes()]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, key)
        return out


def peak_memory(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Bytes of tensors allocated at the peak of `fn()`, above what was allocated before it.

    CUDA: `torch.cuda.max_memory_allocated` after resetting the peak, minus the allocation before the call.
    CPU: PyTorch keeps no allocation counter there, so `AllocationTracker` (a TorchDispatchMode) watches every
    operator's outputs and their lifetimes. It counts tensor storage only: not Python objects, not allocator
    slack, and not Triton's interpreter, which computes in NumPy arrays.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    tracker = AllocationTracker()
    with tracker:
        fn()
    return tracker.peak


# --------------------------------------------------------------------------------------------- one stage, one shape
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
        rewind = _rewind_point(cache)
        step_memory = peak_memory(lambda: module(x, cache), w.device)
        if rewind is not None:
            rewind()
    tps = tokens_per_second(batch, timing.median_s)
    record: dict[str, Any] = {
        "kind": kind, "batch": batch, "context": context, "dtype": str(w.dtype).removeprefix("torch."),
        "device": str(w.device),
        "latency_ms": timing.median_s * 1e3, "latency_p20_ms": timing.p20_s * 1e3,
        "latency_p80_ms": timing.p80_s * 1e3, "timing": timing.as_dict(),
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


__all__ = [
    "AllocationTracker", "DEFAULT_USD_PER_GPU_HOUR", "KINDS", "DecodeTiming", "StepCost", "cache_batch",
    "cache_footprint", "cost_per_million_tokens", "decode_kind", "decode_step_cost", "element_size",
    "estimate_step_memory", "peak_memory", "prefill", "profile_decode", "random_hidden", "time_decode",
    "tokens_per_second", "weight_count",
]
