"""The serving-shape benchmark: every stage at every shape, and everything reported for one (stage, shape).

    python -m mla_tutorial bench --config deepseek-v3 --heads 128 16 --batch 1 64 --context 4096 16384

A shape is (heads per GPU, batch, context). Heads per GPU is tensor parallelism: DeepSeek-V3's 128 heads over
1 or 8 GPUs leave 128 or 16 on each (the layer's weights shrink with them; the latent cache does not). For each
stage and shape, `profile_decode` fills a cache of context − 1 random rows per sequence (`timing.random_cache`),
times one decode step (`timing.time_decode`: eager, or replays of a CUDA graph for stages 2–5), measures the
step's peak memory, and puts next to the time what the step must move and compute (`cost.decode_step_cost`),
the roofline time that implies on this machine (`roofline.measure_ceilings`, measured in the same run), and what
a million tokens cost at an assumed GPU price, for one layer and for the whole model (× its layers; attention
only). A shape whose step would not fit in memory is not run: its row says "does not fit: needs X GiB".

Stage 5 (FP8MLA) reads FlashMLA's 656-byte FP8 rows: its bytes, GB/s and roofline fraction are counted with
656 bytes per cached token (`cost.decode_step_cost`, kind "fp8"). It runs in bf16 only: at another dtype its
shapes are listed as skipped with the stage's own error. The kernel stages (4 and 5) run in Triton's interpreter
on a CPU, timed at the shortest context only.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import MLAConfig
from .cost import (
    DEFAULT_USD_PER_GPU_HOUR,
    MODELS,
    cost_per_million_tokens,
    decode_kind,
    decode_step_cost,
    element_size,
    estimate_step_memory,
    tokens_per_second,
)
from .memory import cache_footprint, peak_memory
from .timing import _weights, in_place, random_cache, random_hidden, time_decode

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
GRAPH_STAGES = ("AbsorbedMLA", "PagedMLA", "TritonMLA", "FP8MLA")  # stages whose decode step can be captured
KERNEL_STAGES = ("TritonMLA", "FP8MLA")  # stages that call the Triton kernel (the interpreter's, on a CPU)


def is_kernel_stage(cls: type) -> bool:
    """Whether a stage class calls the Triton kernel (TritonMLA, FP8MLA or a subclass): found by name, so that
    nothing here imports Triton."""
    return any(c.__name__ in KERNEL_STAGES for c in cls.__mro__)


def dtype_name(dtype: torch.dtype) -> str:
    """The short name the command line uses: "bf16", "fp32", …"""
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))


def with_heads(config: MLAConfig, heads: int | None) -> MLAConfig:
    """The config one GPU holds when the heads are split over GPUs (tensor parallelism): `heads` of them."""
    if heads is None or heads == config.num_heads:
        return config
    if not 0 < heads <= config.num_heads or config.num_heads % heads:
        raise ValueError(f"heads per GPU must divide {config.name}'s {config.num_heads} heads, got {heads}")
    return config.replace(num_heads=heads, name=f"{config.name}, {heads} heads/GPU")


def memory_budget(device: torch.device, max_memory_gb: float | None = None) -> int:
    """Bytes a decode step may need before its shape is skipped: 90 % of free GPU memory, or 4 GiB on CPU."""
    if max_memory_gb is not None:
        return int(max_memory_gb * 2**30)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # blocks cached by the allocator count as free
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.9 * free)
    return 4 * 2**30


@torch.inference_mode()
def profile_decode(module: nn.Module, context: int, batch: int = 1, *, warmup: int = 5, reps: int = 50,
                   seed: int = 0, usd_per_gpu_hour: float = DEFAULT_USD_PER_GPU_HOUR,
                   ceilings: dict[str, Any] | None = None, measure_memory: bool = True, graph: bool = False,
                   layers: int | None = None) -> dict[str, Any]:
    """Everything the tour and the benchmark report for one stage at one (batch, context).

    A cache of `context − 1` random rows per sequence is made, so each timed step attends to `context` keys.
    `ceilings` ({"bytes_per_s", "flops_per_s"}, the machine's measured roofline) adds the roofline time and the
    fraction of it reached; `layers` (the whole model's) adds the whole model's cost per million tokens.
    """
    w = _weights(module)
    kind = decode_kind(module)
    if not isinstance(context, int) or context < 2:
        raise ValueError(f"context must be an int ≥ 2 (a prefix of context − 1 tokens and the new one), "
                         f"got {context!r}")
    cost = decode_step_cost(module.config, kind, context, batch, element_size(w.dtype))
    if hasattr(module, "validate"):  # the paged stages' own checks first: a kernel stage refuses a dtype in its words
        module.validate(random_hidden(module, batch, 1, torch.Generator().manual_seed(seed)), None, None)
    cache = random_cache(module, batch, context - 1, capacity=context + 64, seed=seed)
    footprint = cache_footprint(cache)
    timing = time_decode(module, cache, batch=batch, warmup=warmup, reps=reps, seed=seed, graph=graph)
    step_memory = None
    if measure_memory:
        x = random_hidden(module, batch, 1, torch.Generator().manual_seed(seed + 2))
        saved = cache.state() if in_place(cache) else None
        step_memory = peak_memory(lambda: module(x, cache), w.device)
        if saved is not None:
            cache.restore(saved)
    tps = tokens_per_second(batch, timing.median_s)
    record: dict[str, Any] = {
        "kind": kind, "batch": batch, "context": context, "heads": module.config.num_heads,
        "dtype": dtype_name(w.dtype), "device": str(w.device), "graph": graph,
        "latency_ms": timing.median_s * 1e3, "latency_p10_ms": timing.p10_s * 1e3,
        "latency_p90_ms": timing.p90_s * 1e3, "spread": timing.spread, "wide_spread": timing.wide,
        "host_ms": None if timing.host_median_s is None else timing.host_median_s * 1e3,
        "timing": timing.as_dict(), "tokens_per_s": tps, "usd_per_gpu_hour": usd_per_gpu_hour,
        "usd_per_million_tokens": cost_per_million_tokens(tps, usd_per_gpu_hour),
        "bytes": cost.bytes, "flops": cost.flops, "intensity_flop_per_byte": cost.intensity,
        "attention_bytes": cost.attention_bytes, "attention_flops": cost.attention_flops,
        "achieved_gb_per_s": cost.bytes / timing.median_s / 1e9,
        "achieved_tflop_per_s": cost.flops / timing.median_s / 1e12,
        "cost": cost.as_dict(),
        "cache_bytes_held": footprint["bytes"], "cache_bytes_reserved": footprint["reserved"],
        "cache_tokens_held": footprint["tokens"], "step_peak_memory_bytes": step_memory,
    }
    if layers:
        record |= {"layers": layers, "usd_per_million_tokens_model": record["usd_per_million_tokens"] * layers}
    if ceilings:
        best = cost.roofline_seconds(ceilings["bytes_per_s"], ceilings["flops_per_s"])
        record |= {"roofline_ms": best * 1e3, "roofline_fraction": best / timing.median_s,
                   "times_floor": timing.median_s / best,
                   "bound": "memory" if cost.bytes / ceilings["bytes_per_s"] >= cost.flops / ceilings["flops_per_s"]
                   else "compute"}
    return record


@torch.inference_mode()
def kernel_profile(module: nn.Module, context: int, batch: int, *, graph: bool = False, steps: int = 5,
                   seed: int = 0, top: int = 10) -> dict[str, Any]:
    """Where one decode step's time goes, by torch.profiler: device time per step, host time per step, launches
    per step, and the `top` kernels (eager) — the profile that explains a miss."""
    from torch.profiler import ProfilerActivity, profile

    cache = random_cache(module, batch, context - 1, capacity=context + 64, seed=seed)
    x = random_hidden(module, batch, 1, torch.Generator().manual_seed(seed + 3))
    on_cuda = x.device.type == "cuda"
    step: Any = None
    if graph:
        from ..graphs import CapturedDecodeStep

        step = CapturedDecodeStep(module, x, cache, max_steps=1)
    saved = step.state() if graph else cache.state() if in_place(cache) else None
    restore = (step.restore if graph else cache.restore) if saved is not None else (lambda _: None)
    for _ in range(2):  # warm
        step(x) if graph else module(x, cache)
        restore(saved)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    if on_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(x) if graph else module(x, cache)
            restore(saved)
        if on_cuda:
            torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps
    events = prof.key_averages()

    def device_us(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    kernels = [e for e in events if device_us(e) > 0] if on_cuda else []
    kernels.sort(key=device_us, reverse=True)
    cpu_ops = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: e.self_cpu_time_total,
                     reverse=True)
    return {
        "graph": graph, "steps": steps, "wall_ms_per_step_profiled": wall * 1e3,
        "device_ms_per_step": sum(device_us(e) for e in kernels) / 1e3 / steps if on_cuda else None,
        "device_launches_per_step": sum(e.count for e in kernels) / steps if on_cuda else None,
        "top_kernels": [{"name": e.key[:120], "ms_per_step": device_us(e) / 1e3 / steps, "calls_per_step":
                         e.count / steps} for e in kernels[:top]],
        "aten_ops_per_step": sum(e.count for e in cpu_ops) / steps,
        "aten_self_cpu_ms_per_step": sum(e.self_cpu_time_total for e in cpu_ops) / 1e3 / steps,
        "top_aten_ops": [{"name": e.key, "calls_per_step": e.count / steps,
                          "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps} for e in cpu_ops[:top]],
        "note": "state restores between steps are inside the profile (a few small copies per step)",
    }


# ------------------------------------------------------------------------------------------------ the benchmark
@dataclass
class BenchOptions:
    """Everything `bench` can be told; the defaults depend on the device (`for_device`)."""

    config: str = "tiny"
    device: str = "cpu"
    dtype: str = "fp32"
    heads: list[int | None] = field(default_factory=lambda: [None])  # None: the preset's
    batches: list[int] = field(default_factory=lambda: [1])
    contexts: list[int] = field(default_factory=lambda: [256, 1024])
    stages: list[int] | None = None
    graphs: list[bool] = field(default_factory=lambda: [False])
    warmup: int = 2
    reps: int = 10
    seed: int = 0
    usd_per_gpu_hour: float = DEFAULT_USD_PER_GPU_HOUR
    bandwidth_gbs: float | None = None
    peak_tflops: float | None = None
    max_memory_gb: float | None = None
    profile: bool = False


def default_options(device: torch.device, quick: bool = False) -> dict[str, Any]:
    """The shapes and repetitions `bench` and the tour use when not told: serving shapes on a GPU (DeepSeek-V3
    with 128 and 16 heads per GPU, batch 64, contexts 4k and 16k, graphs on), the tiny config on a CPU."""
    if quick:
        return {"config": "tiny", "contexts": [64, 256], "batches": [1], "heads": [None], "warmup": 1, "reps": 5,
                "graphs": [device.type == "cuda"], "dtype": "bf16" if device.type == "cuda" else "fp32"}
    if device.type == "cuda":
        return {"config": "deepseek-v3", "contexts": [4096, 16384], "batches": [64], "heads": [128, 16],
                "warmup": 10, "reps": 50, "graphs": [True], "dtype": "bf16"}
    return {"config": "tiny", "contexts": [256, 1024, 4096], "batches": [1], "heads": [None], "warmup": 5,
            "reps": 30, "graphs": [False], "dtype": "fp32"}


def build_stages(stage_classes: list[tuple[int, type[nn.Module]]], config: MLAConfig, dtype: torch.dtype,
                 device: torch.device, seed: int) -> Iterator[tuple[int, nn.Module]]:
    """Each stage in turn, the first with seeded random weights, every later one built from it (same weights)."""
    from ..layers import linear_init_

    first = None
    for index, cls in stage_classes:
        if first is None:
            with torch.device(device):
                module = cls(config)
            first = module = linear_init_(module, seed=seed).to(dtype=dtype)
        else:
            module = cls.from_previous(first)
        yield index, module


def run_stage_bench(opts: BenchOptions, console: Any = None, stage_classes: list | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-able result (records, skipped shapes, ceilings, environment)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .roofline import device_info, measure_ceilings

    device = torch.device(opts.device)
    dtype = DTYPES[opts.dtype]
    preset = MLAConfig.preset(opts.config)
    if stage_classes is None:
        from ..tour import ladder

        ladder_stages, notes = ladder(device)
        stage_classes = [(s.index, s.cls) for s in ladder_stages]
    else:
        notes = []
    if opts.stages is not None:
        stage_classes = [(i, cls) for i, cls in stage_classes if i in opts.stages]
    ceilings = measure_ceilings(device, opts.bandwidth_gbs, opts.peak_tflops)
    facts = MODELS.get(preset.name)
    layers = facts.layers if facts else None
    interpreter = device.type != "cuda"
    shapes = list(itertools.product(opts.batches, opts.contexts))
    modes = {name: [g for g in opts.graphs if not g or name in GRAPH_STAGES] for name in
             {cls.__name__ for _, cls in stage_classes}}
    total = len(opts.heads) * len(shapes) * sum(len(modes[cls.__name__]) for _, cls in stage_classes)
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    e = element_size(dtype)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("bench", total=total)
        for heads in opts.heads:
            config = with_heads(preset, heads)
            for index, module in build_stages(stage_classes, config, dtype, device, opts.seed):
                name = type(module).__name__
                slow = is_kernel_stage(type(module)) and interpreter
                for (batch, context), graph in itertools.product(shapes, modes[name]):
                    where = {"stage": index, "name": name, "heads": config.num_heads, "batch": batch,
                             "context": context, "graph": graph}
                    progress.update(task, description=f"stage {index} {name}, {config.num_heads} heads, b={batch}, "
                                                      f"S={context}{', graph' if graph else ''}")
                    need = estimate_step_memory(config, type(module), context, batch, e)
                    budget = memory_budget(device, opts.max_memory_gb)
                    if need > budget:
                        skipped.append(where | {"reason": f"does not fit: needs {need / 2**30:.1f} GiB",
                                                "needs_bytes": need, "budget_bytes": budget})
                    elif slow and context > min(opts.contexts):
                        skipped.append(where | {"reason": "Triton interpreter on CPU: timed at the shortest context"})
                    else:
                        try:
                            record = profile_decode(module, context, batch, warmup=min(opts.warmup, 1) if slow
                                                    else opts.warmup, reps=min(opts.reps, 3) if slow else opts.reps,
                                                    seed=opts.seed, usd_per_gpu_hour=opts.usd_per_gpu_hour,
                                                    ceilings=ceilings, graph=graph, layers=layers)
                            if opts.profile:
                                try:
                                    record["profile"] = kernel_profile(module, context, batch, graph=graph,
                                                                       seed=opts.seed)
                                except Exception as err:  # the profiler's own failure must not lose the timing
                                    record["profile"] = {"error": f"{type(err).__name__}: {err}"}
                        except torch.OutOfMemoryError:
                            skipped.append(where | {"reason": f"out of memory (estimated {need / 2**30:.1f} GiB)"})
                            torch.cuda.empty_cache()
                        except (TypeError, ValueError, RuntimeError) as err:  # a kernel that takes bf16/fp16 only
                            skipped.append(where | {"reason": f"{type(err).__name__}: {err}"})
                        else:
                            records.append(where | record | {"interpreter": slow})
                    progress.advance(task)
                del module
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return {"benchmark": "mla_tutorial stage decode", "preset": preset.name, "config": preset.to_dict(),
            "device": str(device), "dtype": opts.dtype, "heads": [h or preset.num_heads for h in opts.heads],
            "batches": opts.batches, "contexts": opts.contexts, "graphs": opts.graphs, "warmup": opts.warmup,
            "reps": opts.reps, "seed": opts.seed, "layers": layers, "model_facts": facts.source if facts else None,
            "usd_per_gpu_hour": opts.usd_per_gpu_hour, "usd_per_gpu_hour_is_assumption":
                opts.usd_per_gpu_hour == DEFAULT_USD_PER_GPU_HOUR,
            "roofline": ceilings, "records": records, "skipped": skipped, "notes": notes,
            "method": {"cache": "random rows (timing.random_cache), context − 1 per sequence",
                       "timer": "CUDA events per step (graph replays for graph=True), median, p10, p90"
                                if device.type == "cuda" else "perf_counter per step, median, p10, p90",
                       "bytes_flops": "cost.decode_step_cost: weights + cache + activations; attention alone too",
                       "eager_stages": "stages 0 and 1 grow their caches by concatenation: always eager"},
            "environment": device_info(device)}


__all__ = ["BenchOptions", "DTYPES", "GRAPH_STAGES", "KERNEL_STAGES", "build_stages", "default_options", "dtype_name",
           "is_kernel_stage", "kernel_profile", "memory_budget", "profile_decode", "run_stage_bench", "with_heads"]
