"""The tour: climb the ladder stage by stage, checking and measuring each step.

    python -m mla_tutorial tour                          # CPU: tiny config, float32, seed 0: about a minute
    python -m mla_tutorial tour --quick                  # shorter contexts and fewer repetitions (seconds)
    python -m mla_tutorial tour --config deepseek-v3     # bf16: 81,920 B/token/layer (stage 0), 1,152 (1–4), 656 (5)
    python -m mla_tutorial tour --device cuda            # serving shapes: DeepSeek-V3 at 128 and 16 heads per GPU,
                                                         # batch 64, contexts 4k and 16k, CUDA graphs on

For each number of heads per GPU, and each stage in ladder order (stage 0 NaiveMHA … stage 3 PagedMLA, and
stage 4 TritonMLA and stage 5 FP8MLA when they import):

1. build it: stage 0 with random weights (`linear_init_`, fixed seed), every later stage with
   `Stage.from_previous(previous)`, so all of them hold the same weights;
2. check it against the previous stage on the same inputs: a batch of 2 random prompts of 2·page_size − 4
   tokens, then 4 decode steps, so the paged cache fills exactly two pages. All outputs (prompt and decode) are
   compared with `error_metrics`; the stage passes when the relative Frobenius error and the cosine are within
   the tolerance of the dtype (`TOLERANCES`, printed with the table), or the stage's own where its cache is
   lossy by design (stage 5's FP8 rows: `TOLERANCES_FP8`, stated in its row of the table and in the JSON). The
   check runs in the dtype of the run: float32 for the tiny config on CPU (the default), bf16 for the DeepSeek
   presets and on CUDA, or --dtype;
3. measure its cache: bytes per token per layer, analytic (`cache_bytes_per_token`) and measured (bytes the
   actual cache object holds ÷ tokens it holds, after the check);
4. time one decode step at each context length over a cache of random rows (`measure.stage_bench`): median
   latency with its p10–p90 spread, tokens/s, the fraction of the roofline measured in the same run
   (`measure.roofline`), the step's peak memory. Stages 2–5 run as replays of a CUDA graph when graphs are on
   (the GPU default); stages 0 and 1 grow their caches by concatenation and always run eagerly. Stage 5's
   bytes count its 656-byte rows (`measure.cost`, kind "fp8").

Then it prints a table and writes `tour.json`, `tour_cache_size.png` and `tour_latency.png` into `--out`
(default out/tour/). It exits 1 if any stage fails its check.

Trustworthy CPU timings: a fixed number of threads (`--threads`, default half the cores, at most 4), enough
repetitions (at least `--reps`, more until the timed steps add up to 0.2 s), median and p10–p90 spread shown,
and a warning for every timing whose spread is wider than a quarter of its median.

Big presets on a CPU: a DeepSeek-V3 attention layer has 187M weights; five copies of it (one per stage) are
too much for a laptop. So on CPU, when a layer's weights exceed `--max-weight-mb`, the checks and timings run on a
*narrowed twin*: the same heads, head dims and latent width, hence the same cache, with hidden_size (and
q_lora_rank) cut to 512. The table says so. The cache-size rows for the full preset are computed on PyTorch's
"meta" device (shapes, no storage), so they are exact and free. `--full-weights` turns the narrowing off.

Stages 4 and 5 on a CPU run their Triton kernel in Triton's interpreter (TRITON_INTERPRET=1, set by the tour
before importing them): correct but slow, so they are timed at the shortest context only, and their timings are
labelled. A stage whose kernel rejects the tour's dtype (FlashMLA-style kernels take bf16/fp16 only; the FP8
path bf16 only) is checked and timed in bf16, against the previous stage cast to bf16, with bf16's tolerance
(stage 5: its own); the table marks it. A stage built from one that already runs in bf16 (stage 5 from stage 4
in an fp32 tour) starts in bf16 and is checked against that stage's bf16 outputs, with no second run of it.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import STAGES
from .config import MLAConfig
from .course.basics import prefill_and_decode
from .layers import linear_init_
from .measure.cost import MODELS, decode_kind, element_size, estimate_step_memory, weight_count
from .measure.memory import cache_footprint
from .measure.report import device_name, fmt_bytes, fmt_ms
from .measure.roofline import device_info, measure_ceilings
from .measure.stage_bench import (
    DTYPES,
    GRAPH_STAGES,
    default_options,
    dtype_name,
    is_kernel_stage,
    memory_budget,
    profile_decode,
    with_heads,
)
from .metrics import error_metrics

#: Pass criteria of a stage against the previous one: (largest relative Frobenius error, smallest cosine).
#: Measured on the tiny config the stages differ by ~5e-7 (fp32) and ~3e-3 (bf16); these bounds leave room for
#: larger shapes and a different summation order in the Triton kernel, and are still far below what a real
#: mistake gives (a wrong scale or a dropped RoPE part gives errors of order 1e-1 to 1).
TOLERANCES = {
    torch.float64: (1e-10, 1 - 1e-12),
    torch.float32: (1e-4, 1 - 1e-7),
    torch.float16: (1e-2, 1 - 1e-4),
    torch.bfloat16: (3e-2, 1 - 5e-4),
}

#: Stage 5 (FP8MLA) against stage 4, whatever the dtype: its cache rounds every c_kv value to e4m3 (3 mantissa
#: bits), by design, so it is held to what that rounding costs, not to bf16's. Measured (docs/fp8.md §3,
#: scripts/fp8_accuracy.py, tiny config, same weights, prompts 1–300 + 2 decode steps): rel_frob 0.025–0.042 and
#: cosine ≥ 0.9991 at the tests' weights (std 0.1; 0.025–0.027 and ≥ 0.99963 at linear_init_'s std 0.02, the
#: tour's). The bounds leave ~1.5x room over the worst measured error (tests/test_stage5.py's FP8_BOUNDS are the
#: same) and are still far below a real mistake (a wrong scale or a dropped RoPE part: errors of order 0.1 to 1).
TOLERANCES_FP8 = (0.065, 0.998)

#: Stages held to their own tolerance instead of their dtype's (a subclass counts as its stage): the bounds, their
#: name, and why (printed under the table).
STAGE_TOLERANCES = {"FP8MLA": {"bounds": TOLERANCES_FP8, "name": "FP8 cache",
                               "why": "its cache rounds every c_kv value to e4m3 by design (docs/fp8.md §3 measures "
                                      "rel_frob 0.025–0.042 and cosine ≥ 0.9991 against stage 4)"}}

CHECK_BATCH = 2  # two sequences, so batching bugs show
KERNEL_DTYPE = torch.bfloat16  # a stage whose kernel rejects the tour's dtype is checked and timed in this
CHECK_DECODE_STEPS = 4
NARROW_HIDDEN = 512  # hidden_size of the narrowed twin of a big preset on CPU


def default_threads() -> int:
    """CPU threads for timing: half the cores (the rest for the OS and other work), at least 1, at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


# ------------------------------------------------------------------------------------------------ the ladder
@dataclass
class Stage:
    """One rung of the ladder: its number, class, and whether it runs in Triton's interpreter."""

    index: int
    cls: type[nn.Module]
    interpreter: bool = False

    @property
    def label(self) -> str:
        return f"{self.index} {self.cls.__name__}"


#: The kernel stages, in ladder order: (module, class). Each is built from the one before it.
KERNEL_LADDER = (("stage4_triton", "TritonMLA"), ("stage5_fp8", "FP8MLA"))


def ladder(device: torch.device) -> tuple[list[Stage], list[str]]:
    """The stages to run, in order, and notes about any that could not join.

    Stage 4 (TritonMLA) joins when `mla_tutorial.stage4_triton` imports, stage 5 (FP8MLA) when stage 4 did and
    `mla_tutorial.stage5_fp8` imports. On a CPU their kernels can only run in Triton's interpreter, which must be
    switched on before Triton compiles anything, so it is switched on here.
    """
    stages = [Stage(i, cls) for i, cls in enumerate(STAGES)]
    notes = []
    interpreter = device.type != "cuda"
    for k, (module_name, class_name) in enumerate(KERNEL_LADDER):
        if any(s.cls.__name__ == class_name for s in stages):
            continue
        label = f"stage {len(stages)} ({class_name})"
        if k and stages[-1].cls.__name__ != KERNEL_LADDER[k - 1][1]:
            notes.append(f"{label} is not part of this tour: it is built from {KERNEL_LADDER[k - 1][1]}, which is "
                         f"not")
            continue
        if interpreter:
            os.environ.setdefault("TRITON_INTERPRET", "1")
        try:
            module = importlib.import_module(f"mla_tutorial.{module_name}")
            stages.append(Stage(len(stages), getattr(module, class_name)))
        except (ImportError, AttributeError) as err:
            notes.append(f"{label} is not part of this tour: {type(err).__name__}: {err}")
    for stage in stages:
        stage.interpreter = interpreter and is_kernel_stage(stage.cls)
    return stages, notes


def _own_entry(cls: type) -> dict[str, Any] | None:
    return next((STAGE_TOLERANCES[c.__name__] for c in cls.__mro__ if c.__name__ in STAGE_TOLERANCES), None)


def own_tolerance(cls: type) -> tuple[tuple[float, float], str] | None:
    """A stage's own tolerance ((largest rel_frob, smallest cosine), its name) from `STAGE_TOLERANCES`, or None."""
    own = _own_entry(cls)
    return None if own is None else (own["bounds"], own["name"])


def stage_tolerance(cls: type, dtype: torch.dtype) -> tuple[tuple[float, float], str]:
    """What a stage is held to against the previous one: its own tolerance (stage 5's FP8 cache) or its dtype's."""
    return own_tolerance(cls) or (TOLERANCES[dtype], dtype_name(dtype))


def own_tolerances(stages: list[Stage]) -> dict[str, dict[str, Any]]:
    """The stages held to their own tolerance, for the summary: {"5 FP8MLA": {max_rel_frob, min_cosine, tolerance,
    why}}."""
    return {s.label: {"max_rel_frob": own["bounds"][0], "min_cosine": own["bounds"][1], "tolerance": own["name"],
                      "why": own["why"]} for s in stages if (own := _own_entry(s.cls))}


def cache_size_rows(config: MLAConfig, dtype: torch.dtype, stages: list[Stage] | None = None) -> list[dict]:
    """Analytic cache bytes per token per layer of every stage for `config`, without allocating any weights.

    The modules are built on PyTorch's meta device (parameters with shapes but no storage), so this costs
    nothing even for DeepSeek-V3. Each stage's own `cache_bytes_per_token` gives the number.
    """
    stages = stages if stages is not None else [Stage(i, cls) for i, cls in enumerate(STAGES)]
    rows = []
    for stage in stages:
        with torch.device("meta"):
            module = stage.cls(config)
        rows.append({"stage": stage.index, "name": stage.cls.__name__,
                     "bytes_per_token_per_layer": int(module.cache_bytes_per_token(dtype))})
    return rows


def narrowed(config: MLAConfig) -> MLAConfig:
    """A twin of `config` with the same cache (heads, head dims, latent width) but hidden_size cut to 512."""
    q_rank = None if config.q_lora_rank is None else min(config.q_lora_rank, NARROW_HIDDEN)
    return config.replace(hidden_size=min(config.hidden_size, NARROW_HIDDEN), q_lora_rank=q_rank,
                          name=f"{config.name}, narrowed to hidden {NARROW_HIDDEN}")


# ------------------------------------------------------------------------------------------------ one stage
def check_inputs(config: MLAConfig, dtype: torch.dtype, device: torch.device,
                 seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random prompt [2, 2·page − 4, hidden] and 4 decode inputs [2, 1, hidden]: two full pages in the end."""
    gen = torch.Generator().manual_seed(seed + 1000)
    total = 2 * config.page_size
    x = torch.randn(CHECK_BATCH, total, config.hidden_size, generator=gen).to(device=device, dtype=dtype)
    prompt = total - CHECK_DECODE_STEPS
    return x[:, :prompt], [x[:, t : t + 1] for t in range(prompt, total)]


def _cast(prompt: torch.Tensor, steps: list[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, list]:
    return prompt.to(dtype), [x.to(dtype) for x in steps]


def rejects_dtype(err: TypeError) -> bool:
    """Whether a stage's TypeError says it does not run in this dtype (the kernels': bf16/fp16 only, FP8: bf16)."""
    return any(word in str(err) for word in ("dtype", "bf16", "bfloat16"))


@torch.inference_mode()
def run_check_inputs(module: nn.Module, prompt: torch.Tensor, steps: list[torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """Prefill the prompt, decode the steps; returns every output [B, T_prompt + steps, hidden] and the cache."""
    return prefill_and_decode(module, prompt, torch.cat(steps, dim=1))


def compare(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype,
            tolerance: tuple[tuple[float, float], str] | None = None) -> dict[str, Any]:
    """error_metrics of out against ref, and whether they meet the tolerance (default: the dtype's; a stage's own
    from `stage_tolerance`), stated in the result with its name."""
    m = error_metrics(out, ref)
    (max_rel, min_cos), name = tolerance or (TOLERANCES[dtype], dtype_name(dtype))
    return m.as_dict() | {"passed": bool(m.rel_frob <= max_rel and m.cosine >= min_cos),
                          "max_rel_frob": max_rel, "min_cosine": min_cos, "tolerance": name}


# ------------------------------------------------------------------------------------------------ the tour
@dataclass
class TourOptions:
    """Everything the tour can be told; None means the device's default (`measure.stage_bench.default_options`)."""

    config: str | None = None
    device: str = "cpu"
    dtype: str | None = None  # bf16 on CUDA and for the DeepSeek presets (their serving dtype); tiny on CPU: fp32
    seed: int = 0
    contexts: list[int] | None = None
    batch: int | None = None
    heads: list[int] | None = None
    graphs: bool | None = None
    warmup: int | None = None
    reps: int | None = None
    threads: int | None = None
    out: str = "out/tour"
    quick: bool = False
    full_weights: bool = False
    max_weight_mb: float = 128.0
    max_memory_gb: float | None = None
    no_stage4: bool = False
    bandwidth_gbs: float | None = None
    peak_tflops: float | None = None


def run_tour(opts: TourOptions, console: Any = None) -> dict[str, Any]:
    """Run the tour; returns the summary written to tour.json (its "passed" says whether every check passed)."""
    from rich.console import Console

    console = console or Console()
    device = torch.device(opts.device)
    threads_before = torch.get_num_threads()
    threads = None
    if device.type != "cuda":
        threads = opts.threads or default_threads()
        torch.set_num_threads(threads)
    try:
        return _tour(opts, console, device, threads)
    finally:
        torch.set_num_threads(threads_before)


def _tour(opts: TourOptions, console: Any, device: torch.device, threads: int | None) -> dict[str, Any]:
    defaults = default_options(device, opts.quick)
    preset = MLAConfig.preset(opts.config or defaults["config"])
    dtype = DTYPES[opts.dtype or ("fp32" if device.type != "cuda" and preset.name == "tiny" else "bf16")]
    notes: list[str] = []
    layer_mb = weight_count(preset) * element_size(dtype) / 2**20
    big_on_cpu = device.type != "cuda" and layer_mb > opts.max_weight_mb and not opts.full_weights
    if big_on_cpu:
        notes.append(f"{preset.name}: one layer's weights are {layer_mb:,.0f} MB in {dtype} (> --max-weight-mb "
                     f"{opts.max_weight_mb:g}); checks and timings run on a twin with hidden_size "
                     f"{min(preset.hidden_size, NARROW_HIDDEN)}: same heads, head dims and cache "
                     f"(use --full-weights to run the full layer)")
    heads_list = opts.heads or (defaults["heads"] if preset.name == defaults["config"] else [None])
    contexts = sorted(set(opts.contexts or ([256, 1024] if big_on_cpu and not opts.quick else defaults["contexts"])))
    batch = opts.batch or defaults["batches"][0]
    graphs = defaults["graphs"][0] if opts.graphs is None else opts.graphs
    if graphs and device.type != "cuda":
        notes.append("CUDA graphs need a GPU: every stage runs eagerly here")
        graphs = False
    warmup = opts.warmup if opts.warmup is not None else defaults["warmup"]
    reps = opts.reps if opts.reps is not None else defaults["reps"]
    budget = memory_budget(device, opts.max_memory_gb)

    stages, ladder_notes = ladder(device)
    if opts.no_stage4:  # the Triton stages: 4 and 5, which is built from it
        stages = [s for s in stages if s.index < 4]
    notes += ladder_notes
    max_rel, min_cos = TOLERANCES[dtype]
    console.print(f"[bold]MLA tour[/bold]: {preset.name}, heads/GPU {[h or preset.num_heads for h in heads_list]}, "
                  f"{device} ({device_name(device)}), {dtype_name(dtype)}, seed {opts.seed}, batch {batch}, contexts "
                  f"{contexts}, {warmup} warm-up + ≥{reps} timed steps, graphs {'on' if graphs else 'off'}"
                  + (f", {threads} CPU thread(s)" if threads else ""))
    console.print(f"checks: each stage against the previous one on {CHECK_BATCH} sequences of "
                  f"{2 * preset.page_size - CHECK_DECODE_STEPS} prompt tokens + {CHECK_DECODE_STEPS} decode steps; "
                  f"pass: rel_frob ≤ {max_rel:g} and cosine ≥ {min_cos!r} ({dtype_name(dtype)})"
                  + "".join(f"; stage {label}: ≤ {t['max_rel_frob']:g} and ≥ {t['min_cosine']:g} ({t['tolerance']})"
                            for label, t in own_tolerances(stages).items()))
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    ceilings = measure_ceilings(device, opts.bandwidth_gbs, opts.peak_tflops)
    console.print(f"roofline ({ceilings['source']}): {ceilings['bytes_per_s'] / 1e9:,.1f} GB/s, "
                  f"{ceilings['flops_per_s'] / 1e12:,.3g} TFLOP/s")
    layers = MODELS[preset.name].layers if preset.name in MODELS else None

    results: list[dict[str, Any]] = []
    first_config = None
    for heads in heads_list:
        config = with_heads(preset, heads)
        config = narrowed(config) if big_on_cpu else config
        first_config = first_config or config
        prompt, steps = check_inputs(config, dtype, device, opts.seed)
        previous: nn.Module | None = None
        reference: torch.Tensor | None = None  # stage 0's outputs
        previous_out: torch.Tensor | None = None
        for stage in stages:
            started = time.perf_counter()
            tag = f"[{stage.index + 1}/{len(stages)}] stage {stage.label}, {config.num_heads} heads"
            row: dict[str, Any] = {"stage": stage.index, "name": stage.cls.__name__, "heads": config.num_heads,
                                   "interpreter": stage.interpreter}
            try:
                if previous is None:
                    with torch.device(device):
                        module = stage.cls(config)
                    module = linear_init_(module, seed=opts.seed).to(dtype=dtype)
                    console.print(f"{tag}: built with random weights (linear_init_, seed {opts.seed})")
                else:
                    module = stage.cls.from_previous(previous)
                    console.print(f"{tag}: built from stage {stage.index - 1} (same weights)")
                row["kind"] = decode_kind(module)
                # A stage runs in the dtype of the stage it was built from: the run's, or bf16 after a kernel stage
                # that had to switch (stage 5 from stage 4 in an fp32 tour), whose bf16 outputs are then the
                # reference, with no second run.
                check_dtype = dtype if previous is None else next(module.parameters()).dtype
                previous_ref = previous_out
                if check_dtype != dtype:
                    row["dtype_note"] = (f"built from stage {stage.index - 1}, which runs in {dtype_name(check_dtype)}"
                                         f": checked and timed in {dtype_name(check_dtype)}, against stage "
                                         f"{stage.index - 1}'s {dtype_name(check_dtype)} outputs")
                    console.print(f"  [yellow]note:[/yellow] {row['dtype_note']}")
                try:
                    out, cache = run_check_inputs(module, *_cast(prompt, steps, check_dtype))
                except TypeError as err:  # a kernel that takes half precision (FP8: bf16) only: check it in bf16
                    if previous is None or not rejects_dtype(err) or check_dtype == KERNEL_DTYPE:
                        raise
                    check_dtype = KERNEL_DTYPE
                    row["dtype_note"] = (f"does not run in {dtype_name(dtype)} ({err}); checked and timed in "
                                         f"{dtype_name(check_dtype)}, against stage {stage.index - 1} cast to "
                                         f"{dtype_name(check_dtype)}")
                    console.print(f"  [yellow]note:[/yellow] {row['dtype_note']}")
                    module = module.to(check_dtype)
                    inputs16 = _cast(prompt, steps, check_dtype)
                    out, cache = run_check_inputs(module, *inputs16)
                    previous16 = type(previous).from_previous(previous).to(check_dtype)
                    previous_ref, _ = run_check_inputs(previous16, *inputs16)
                row["dtype"] = dtype_name(check_dtype)
            except Exception as err:  # a stage that cannot even run fails its check, visibly
                row["error"] = f"{type(err).__name__}: {err}"
                row["check"] = {"passed": False}
                console.print(f"  [red]FAILED to run[/red]: {row['error']}")
                results.append(row)
                continue

            if previous_ref is None:
                row["check"] = {"passed": True, "reference": True}
                reference = out
                console.print("  reference for the checks")
            else:
                tolerance = stage_tolerance(stage.cls, check_dtype)
                row["check"] = (compare(out, previous_ref, check_dtype, tolerance)
                                | {"vs_stage0": compare(out, reference, check_dtype, tolerance)})
                verdict = "[green]PASS[/green]" if row["check"]["passed"] else "[red]FAIL[/red]"
                console.print(f"  check vs stage {stage.index - 1}: max_abs {row['check']['max_abs']:.2e}, rel_frob "
                              f"{row['check']['rel_frob']:.2e} (≤ {row['check']['max_rel_frob']:g}), cosine "
                              f"{row['check']['cosine']:.9f} (≥ {row['check']['min_cosine']:.10g}, "
                              f"{tolerance[1]} tolerance) {verdict}")

            held = cache_footprint(cache)
            row["cache"] = {"analytic_bytes_per_token": int(module.cache_bytes_per_token()),
                            "measured_bytes_per_token": held["bytes"] / held["tokens"], "tokens_held": held["tokens"],
                            "bytes_held": held["bytes"], "bytes_reserved": held["reserved"]}
            console.print(f"  cache: {row['cache']['analytic_bytes_per_token']:,} B/token/layer analytic, "
                          f"{row['cache']['measured_bytes_per_token']:,.0f} measured ({held['bytes']:,} B for "
                          f"{held['tokens']} tokens)")
            del cache
            row["graph"] = graphs and stage.cls.__name__ in GRAPH_STAGES
            row["decode"], row["skipped"] = [], []
            stage_contexts = contexts[:1] if stage.interpreter else contexts
            if stage.interpreter and len(contexts) > 1:
                row["skipped"].append({"contexts": contexts[1:], "reason": "Triton interpreter: shortest context only"})
            for context in stage_contexts:
                need = estimate_step_memory(config, stage.cls, context, batch, element_size(check_dtype))
                if need > budget:
                    reason = f"does not fit: needs {need / 2**30:.1f} GiB (budget {budget / 2**30:.1f} GiB)"
                    row["skipped"].append({"contexts": [context], "reason": reason, "needs_bytes": need})
                    console.print(f"  context {context}: [yellow]{reason}[/yellow]")
                    continue
                try:
                    record = profile_decode(module, context, batch, warmup=min(warmup, 1) if stage.interpreter
                                            else warmup, reps=min(reps, 3) if stage.interpreter else reps,
                                            seed=opts.seed, ceilings=ceilings, graph=row["graph"], layers=layers)
                except torch.OutOfMemoryError as err:
                    row["skipped"].append({"contexts": [context], "reason": f"out of memory: {str(err)[:200]}"})
                    console.print(f"  context {context}: [yellow]skipped[/yellow] (out of memory)")
                    torch.cuda.empty_cache()
                    continue
                record |= {"stage": stage.index, "name": stage.cls.__name__}
                record["timing_label"] = "interpreter" if stage.interpreter else record["timing"]["method"]
                row["decode"].append(record)
                console.print(f"  context {context:>6}: {fmt_ms(record)} ms/step ({record['timing_label']}), "
                              f"{record['tokens_per_s']:,.0f} tokens/s, {record['roofline_fraction']:.1%} of the "
                              f"roofline, step peak memory {fmt_bytes(record['step_peak_memory_bytes'])}")
            row["seconds"] = time.perf_counter() - started
            results.append(row)
            previous, previous_out = module, out
        del previous
        if device.type == "cuda":
            torch.cuda.empty_cache()

    passed = all(r["check"]["passed"] for r in results)
    size_config = with_heads(preset, heads_list[0])
    return {
        "tour": "mla_tutorial", "passed": passed,
        "preset": preset.name, "config": first_config.to_dict(), "narrowed": big_on_cpu,
        "device": str(device), "device_name": device_name(device), "dtype": dtype_name(dtype),
        "seed": opts.seed, "batch": batch, "heads": [h or preset.num_heads for h in heads_list],
        "contexts": contexts, "graphs": graphs, "warmup": warmup, "reps": reps, "threads": threads,
        "check": {"batch": CHECK_BATCH, "prompt_tokens": 2 * preset.page_size - CHECK_DECODE_STEPS,
                  "decode_steps": CHECK_DECODE_STEPS, "max_rel_frob": max_rel, "min_cosine": min_cos,
                  "stage_tolerances": own_tolerances(stages)},
        "cache_size": {"preset": preset.name, "dtype": dtype_name(dtype), "heads": size_config.num_heads,
                       "rows": cache_size_rows(size_config, dtype, stages)},
        "roofline": ceilings, "layers": layers,
        "stages": results, "notes": notes, "environment": device_info(device),
    }


# ------------------------------------------------------------------------------------------------ output
def print_table(summary: dict[str, Any], console: Any = None) -> None:
    """The tour's table (`measure.report.tour_table`)."""
    from .measure.report import tour_table

    tour_table(summary, console)


def write_outputs(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """tour.json and the two plots."""
    import json

    from .measure.plots import tour_plots

    (out_dir / "tour.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return [out_dir / "tour.json", *tour_plots(summary, out_dir)]


__all__ = ["CHECK_BATCH", "KERNEL_LADDER", "STAGE_TOLERANCES", "Stage", "TOLERANCES", "TOLERANCES_FP8",
           "TourOptions", "cache_size_rows", "check_inputs", "compare", "ladder", "narrowed", "own_tolerance",
           "own_tolerances", "print_table", "rejects_dtype", "run_check_inputs", "run_tour", "stage_tolerance",
           "write_outputs"]
