"""The tour: climb the ladder stage by stage, checking and measuring each step.

    python -m mla_tutorial tour                          # tiny config, CPU, float32, seed 0: under a minute
    python -m mla_tutorial tour --quick                  # shorter contexts and fewer repetitions (seconds)
    python -m mla_tutorial tour --config deepseek-v3     # bf16: 81,920 B/token/layer (stage 0), 1,152 (1–4)
    python -m mla_tutorial tour --config deepseek-v3 --device cuda --context 1024 4096 16384

For each stage, in ladder order (stage 0 NaiveMHA … stage 3 PagedMLA, and stage 4 TritonMLA when it imports):

1. build it: stage 0 with random weights (`linear_init_`, fixed seed), every later stage with
   `Stage.from_previous(previous)`, so all of them hold the same weights;
2. check it against the previous stage on the same inputs: a batch of 2 random prompts of 2·page_size − 4
   tokens, then 4 decode steps, so the paged cache fills exactly two pages. All outputs (prompt and decode) are
   compared with `error_metrics`; the stage passes when the relative Frobenius error and the cosine are within
   the tolerance of the dtype (`TOLERANCES`). The check runs in the dtype of the run: float32 for the tiny
   config on CPU (the default), bf16 for the DeepSeek presets and on CUDA (their serving dtype), or --dtype;
3. measure its cache: bytes per token per layer, analytic (`cache_bytes_per_token`) and measured (bytes the
   actual cache object holds ÷ tokens it holds, after the check);
4. time one decode step at each context length (median after warm-up; `measure.timing.time_decode`) and measure
   the step's peak memory (`measure.memory.peak_memory`).

Then it prints a table and writes `tour.json`, `tour_cache_size.png` (cache bytes against context length per
stage) and `tour_latency.png` into `--out` (default out/tour/). It exits 1 if any stage fails its check.

Big presets on a CPU: a DeepSeek-V3 attention layer has 187M weights; five copies of it (one per stage) and
prefilling thousands of tokens through them is too much for a laptop. So on CPU, when a layer's weights exceed
`--max-weight-mb`, the checks and timings run on a *narrowed twin*: the same heads, head dims and latent width,
hence the same cache, with hidden_size (and q_lora_rank) cut to 512. The table says so. The cache-size rows
for the full preset are computed on PyTorch's "meta" device (shapes, no storage), so they are exact and free.
`--full-weights` turns the narrowing off.

Stage 4 on a CPU runs its Triton kernel in Triton's interpreter (TRITON_INTERPRET=1, set by the tour before
importing it): correct but slow, so it is timed at the shortest context only, and its timings are labelled.
A stage whose kernel rejects the tour's dtype (FlashMLA-style kernels take bf16/fp16 only) is checked and timed
in bf16, against the previous stage cast to bf16, with bf16's tolerance; the table marks it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import STAGES
from .config import MLAConfig
from .layers import linear_init_
from .measure.cost import decode_kind, element_size, estimate_step_memory, weight_count
from .measure.memory import cache_footprint
from .measure.stage_bench import profile_decode
from .metrics import error_metrics

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}

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

def dtype_name(dtype: torch.dtype) -> str:
    """The short name the command line uses: "bf16", "fp32", …"""
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))


CHECK_BATCH = 2  # two sequences, so batching bugs show
KERNEL_DTYPE = torch.bfloat16  # a stage whose kernel rejects the tour's dtype is checked and timed in this
CHECK_DECODE_STEPS = 4
NARROW_HIDDEN = 512  # hidden_size of the narrowed twin of a big preset on CPU


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


def ladder(device: torch.device) -> tuple[list[Stage], list[str]]:
    """The stages to run, in order, and notes about any that could not join.

    Stage 4 (TritonMLA) joins when `mla_tutorial.stage4_triton` imports. On a CPU its kernels can only run in
    Triton's interpreter, which must be switched on before Triton compiles anything, so it is switched on here.
    """
    stages = [Stage(i, cls) for i, cls in enumerate(STAGES)]
    notes = []
    interpreter = device.type != "cuda"
    if not any(s.cls.__name__ == "TritonMLA" for s in stages):
        if interpreter:
            os.environ.setdefault("TRITON_INTERPRET", "1")
        try:
            module = importlib.import_module("mla_tutorial.stage4_triton")
            stages.append(Stage(len(stages), module.TritonMLA))
        except (ImportError, AttributeError) as err:
            notes.append(f"stage 4 (TritonMLA) is not part of this tour: {type(err).__name__}: {err}")
    for stage in stages:
        stage.interpreter = interpreter and stage.cls.__name__ == "TritonMLA"
    return stages, notes


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


@torch.inference_mode()
def run_check_inputs(module: nn.Module, prompt: torch.Tensor, steps: list[torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """Prefill the prompt, decode the steps; returns every output [B, T_prompt + steps, hidden] and the cache."""
    out, cache = module(prompt)
    outputs = [out]
    for x in steps:
        out, cache = module(x, cache)
        outputs.append(out)
    return torch.cat(outputs, dim=1), cache


def compare(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> dict[str, Any]:
    """error_metrics of out against ref, and whether they meet the dtype's tolerance."""
    m = error_metrics(out, ref)
    max_rel, min_cos = TOLERANCES[dtype]
    return m.as_dict() | {"passed": bool(m.rel_frob <= max_rel and m.cosine >= min_cos)}


# ------------------------------------------------------------------------------------------------ the tour
@dataclass
class TourOptions:
    """Everything the tour can be told; `from_args` fills in the defaults that depend on the device."""

    config: str = "tiny"
    device: str = "cpu"
    dtype: str | None = None  # bf16 on CUDA and for the DeepSeek presets (their serving dtype); tiny on CPU: fp32
    seed: int = 0
    contexts: list[int] | None = None
    batch: int = 1
    warmup: int | None = None
    reps: int | None = None
    out: str = "out/tour"
    quick: bool = False
    full_weights: bool = False
    max_weight_mb: float = 128.0
    max_memory_gb: float | None = None
    no_stage4: bool = False


def default_contexts(device: torch.device, quick: bool, big_on_cpu: bool) -> list[int]:
    if quick:
        return [64, 256]
    if device.type == "cuda":
        return [1024, 4096, 16384]
    return [256, 1024] if big_on_cpu else [256, 1024, 4096]


def memory_budget(device: torch.device, max_memory_gb: float | None) -> int:
    """Bytes one decode step may need before its shape is skipped: 70 % of free GPU memory, or 4 GB on CPU."""
    if max_memory_gb is not None:
        return int(max_memory_gb * 2**30)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.7 * free)
    return 4 * 2**30


def run_tour(opts: TourOptions, console: Any = None) -> dict[str, Any]:
    """Run the tour; returns the summary written to tour.json (its "passed" says whether every check passed)."""
    from rich.console import Console

    console = console or Console()
    device = torch.device(opts.device)
    preset = MLAConfig.preset(opts.config)
    dtype = DTYPES[opts.dtype or ("fp32" if device.type != "cuda" and preset.name == "tiny" else "bf16")]
    notes: list[str] = []

    layer_mb = weight_count(preset) * element_size(dtype) / 2**20
    big_on_cpu = device.type != "cuda" and layer_mb > opts.max_weight_mb and not opts.full_weights
    config = narrowed(preset) if big_on_cpu else preset
    if big_on_cpu:
        notes.append(f"{preset.name}: one layer's weights are {layer_mb:,.0f} MB in {dtype} (> --max-weight-mb "
                     f"{opts.max_weight_mb:g}); checks and timings run on a twin with hidden_size "
                     f"{config.hidden_size} and q_lora_rank {config.q_lora_rank}: same heads, head dims and cache "
                     f"(use --full-weights to run the full layer)")
    contexts = sorted(set(opts.contexts or default_contexts(device, opts.quick, big_on_cpu)))
    warmup = opts.warmup if opts.warmup is not None else (1 if opts.quick else 10 if device.type == "cuda" else 2)
    reps = opts.reps if opts.reps is not None else (3 if opts.quick else 50 if device.type == "cuda" else 10)
    budget = memory_budget(device, opts.max_memory_gb)

    stages, ladder_notes = ladder(device)
    if opts.no_stage4:
        stages = [s for s in stages if s.index < 4]
    notes += ladder_notes
    max_rel, min_cos = TOLERANCES[dtype]
    console.print(f"[bold]MLA tour[/bold]: config [cyan]{config.name}[/cyan], {device} ({device_name(device)}), "
                  f"{dtype_name(dtype)}, seed {opts.seed}, batch {opts.batch}, contexts {contexts}, "
                  f"{warmup} warm-up + {reps} timed steps")
    console.print(f"checks: each stage against the previous one on {CHECK_BATCH} sequences of "
                  f"{2 * config.page_size - CHECK_DECODE_STEPS} prompt tokens + {CHECK_DECODE_STEPS} decode steps; "
                  f"pass: rel_frob ≤ {max_rel:g} and cosine ≥ {min_cos!r}")
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")

    prompt, steps = check_inputs(config, dtype, device, opts.seed)
    results: list[dict[str, Any]] = []
    previous: nn.Module | None = None
    reference: torch.Tensor | None = None  # stage 0's outputs
    previous_out: torch.Tensor | None = None
    for stage in stages:
        started = time.perf_counter()
        tag = f"[{stage.index + 1}/{len(stages)}] stage {stage.label}"
        row: dict[str, Any] = {"stage": stage.index, "name": stage.cls.__name__, "interpreter": stage.interpreter}
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
            check_dtype, previous_ref = dtype, previous_out
            try:
                out, cache = run_check_inputs(module, prompt, steps)
            except TypeError as err:  # a kernel that takes half precision only: check it in bf16
                if previous is None or "dtype" not in str(err) or dtype in (torch.bfloat16, torch.float16):
                    raise
                check_dtype = KERNEL_DTYPE
                row["dtype_note"] = (f"does not run in {dtype_name(dtype)} ({err}); checked and timed in "
                                     f"{dtype_name(check_dtype)}, against stage {stage.index - 1} cast to "
                                     f"{dtype_name(check_dtype)}")
                console.print(f"  [yellow]note:[/yellow] {row['dtype_note']}")
                module = module.to(check_dtype)
                prompt16, steps16 = prompt.to(check_dtype), [x.to(check_dtype) for x in steps]
                out, cache = run_check_inputs(module, prompt16, steps16)
                previous16 = type(previous).from_previous(previous).to(check_dtype)
                previous_ref, _ = run_check_inputs(previous16, prompt16, steps16)
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
            row["check"] = (compare(out, previous_ref, check_dtype)
                            | {"vs_stage0": compare(out, reference, check_dtype)})
            verdict = "[green]PASS[/green]" if row["check"]["passed"] else "[red]FAIL[/red]"
            console.print(f"  check vs stage {stage.index - 1}: max_abs {row['check']['max_abs']:.2e}, "
                          f"rel_frob {row['check']['rel_frob']:.2e}, cosine {row['check']['cosine']:.9f} {verdict}")

        held = cache_footprint(cache)
        row["cache"] = {"analytic_bytes_per_token": int(module.cache_bytes_per_token()),
                        "measured_bytes_per_token": held["bytes"] / held["tokens"],
                        "tokens_held": held["tokens"], "bytes_held": held["bytes"], "bytes_reserved": held["reserved"]}
        console.print(f"  cache: {row['cache']['analytic_bytes_per_token']:,} B/token/layer analytic, "
                      f"{row['cache']['measured_bytes_per_token']:,.0f} measured ({held['bytes']:,} B for "
                      f"{held['tokens']} tokens)")

        row["decode"], row["skipped"] = [], []
        stage_contexts = contexts[:1] if stage.interpreter else contexts
        if stage.interpreter and len(contexts) > 1:
            row["skipped"].append({"contexts": contexts[1:], "reason": "Triton interpreter: shortest context only"})
        for context in stage_contexts:
            need = estimate_step_memory(config, row["kind"], context, opts.batch, element_size(check_dtype))
            if need > budget:
                reason = f"needs ~{need / 2**30:.1f} GiB > budget {budget / 2**30:.1f} GiB"
                row["skipped"].append({"contexts": [context], "reason": reason})
                console.print(f"  context {context}: [yellow]skipped[/yellow] ({reason})")
                continue
            try:
                record = profile_decode(module, context, opts.batch, warmup=min(warmup, 1) if stage.interpreter
                                        else warmup, reps=min(reps, 3) if stage.interpreter else reps, seed=opts.seed)
            except torch.OutOfMemoryError as err:
                row["skipped"].append({"contexts": [context], "reason": f"out of memory: {err}"})
                console.print(f"  context {context}: [yellow]skipped[/yellow] (out of memory)")
                torch.cuda.empty_cache()
                continue
            record["timing_label"] = "interpreter" if stage.interpreter else record["timing"]["method"]
            row["decode"].append(record)
            mem = record["step_peak_memory_bytes"]
            console.print(f"  context {context:>6}: {record['latency_ms']:9.3f} ms/step"
                          f"{' (interpreter)' if stage.interpreter else ''}, "
                          f"{record['tokens_per_s']:,.0f} tokens/s, step peak memory {fmt_bytes(mem)}")
        row["seconds"] = time.perf_counter() - started
        results.append(row)
        previous, previous_out = module, out

    passed = all(r["check"]["passed"] for r in results)
    summary = {
        "tour": "mla_tutorial", "passed": passed,
        "preset": preset.name, "config": config.to_dict(), "narrowed": big_on_cpu,
        "device": str(device), "device_name": device_name(device), "dtype": dtype_name(dtype),
        "seed": opts.seed, "batch": opts.batch, "contexts": contexts, "warmup": warmup, "reps": reps,
        "check": {"batch": CHECK_BATCH, "prompt_tokens": 2 * config.page_size - CHECK_DECODE_STEPS,
                  "decode_steps": CHECK_DECODE_STEPS, "max_rel_frob": max_rel, "min_cosine": min_cos},
        "cache_size": {"preset": preset.name, "dtype": dtype_name(dtype),
                       "rows": cache_size_rows(preset, dtype, stages)},
        "stages": results, "notes": notes, "environment": environment(),
    }
    return summary


# ------------------------------------------------------------------------------------------------ output
def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def wide_console() -> Any:
    """A rich Console; 150 columns when writing to a file or pipe (rich would assume 80 and squeeze the table)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=150)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def environment() -> dict[str, str]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    env["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if torch.cuda.is_available():  # card, driver, CUDA: what a GPU result must be labelled with
        from .measure.roofline import device_info

        env["gpu"] = device_info()
    return env


def print_table(summary: dict[str, Any], console: Any = None) -> None:
    """The tour's table: check, cache size and decode latency of every stage."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    full = {r["stage"]: r["bytes_per_token_per_layer"] for r in summary["cache_size"]["rows"]}
    title = (f"MLA ladder — {summary['config']['name']}, {summary['dtype']}, {summary['device']} "
             f"({summary['device_name']}), batch {summary['batch']}")
    table = Table(title=title, title_justify="left")
    table.add_column("stage")
    table.add_column("check vs previous\nrel_frob / cosine", justify="right")
    table.add_column(f"cache B/token/layer\n{summary['preset']} {summary['dtype']}", justify="right")
    table.add_column("measured\nB/token", justify="right")
    contexts = summary["contexts"]
    for context in contexts:
        table.add_column(f"decode ms\nS={context}", justify="right")
    table.add_column(f"step peak mem\nS={contexts[-1]}", justify="right")
    for row in summary["stages"]:
        check = row["check"]
        if "error" in row:
            verdict = f"[red]ERROR[/red] {row['error'][:60]}"
        elif check.get("reference"):
            verdict = "reference"
        else:
            mark = "[green]PASS[/green]" if check["passed"] else "[red]FAIL[/red]"
            verdict = f"{check['rel_frob']:.1e} / {check['cosine']:.7f} {mark}"
        cache = row.get("cache", {})
        measured = f"{cache['measured_bytes_per_token']:,.0f}" if cache else "–"
        by_context = {r["context"]: r for r in row.get("decode", [])}
        latencies = []
        for context in contexts:
            r = by_context.get(context)
            latencies.append("–" if r is None else f"{r['latency_ms']:.3f}" + ("ⁱ" if row["interpreter"] else ""))
        last = by_context.get(contexts[-1])
        label = f"{row['stage']} {row['name']}"
        if row.get("dtype", summary["dtype"]) != summary["dtype"]:
            label += f" ({row['dtype']})"
        table.add_row(label, verdict, f"{full.get(row['stage'], 0):,}", measured,
                      *latencies, fmt_bytes(last["step_peak_memory_bytes"] if last else None))
    console.print(table)
    if any(r["interpreter"] for r in summary["stages"]):
        console.print("ⁱ Triton interpreter on CPU: correct, but orders of magnitude slower than a GPU; not a speed.")
    console.print("measured B/token: bytes the stage's cache object holds after the check ÷ tokens it holds "
                  "(stage 3's pool is counted by the pages in use; the check fills exactly two pages)")
    for row in summary["stages"]:
        if row.get("dtype_note"):
            console.print(f"stage {row['stage']} {row['name']} {row['dtype_note']}; its measured B/token is "
                          f"for {row.get('dtype', summary['dtype'])}")
    if summary["narrowed"]:
        console.print(f"cache column: the full {summary['preset']} layer (meta device); the other columns: the "
                      f"narrowed twin ({summary['config']['name']})")


def plot(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """tour_cache_size.png (cache bytes per sequence per layer against context) and tour_latency.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    styles = ["-", "--", "-.", ":", (0, (5, 1))]
    markers = ["o", "s", "^", "D", "v"]
    contexts = [2**k for k in range(6, 18)]  # 64 … 131,072 tokens
    rows = summary["cache_size"]["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(rows):
        per_token = r["bytes_per_token_per_layer"]
        ax.plot(contexts, [per_token * s for s in contexts], linestyle=styles[i % 5], linewidth=2 - 0.3 * i,
                label=f"stage {r['stage']} {r['name']}: {per_token:,} B/token")
    if not summary["narrowed"]:  # measured points are only comparable when the run used the preset itself
        for i, row in enumerate(summary["stages"]):
            points = [(d["cache_tokens_held"] / d["batch"], d["cache_bytes_held"] / d["batch"])
                      for d in row.get("decode", []) if d["cache_tokens_held"]]
            if points:
                ax.scatter(*zip(*points, strict=True), marker=markers[i % 5], s=30, zorder=3,
                           label=f"stage {row['stage']} measured")
    sizes = [r["bytes_per_token_per_layer"] for r in rows]
    if len(sizes) > 1 and min(sizes) < max(sizes):  # say how much smaller the latent cache is
        ax.annotate(f"{max(sizes) / min(sizes):.1f}× smaller", xy=(contexts[-3], min(sizes) * contexts[-3]),
                    xytext=(contexts[-3], max(sizes) * contexts[-3]), ha="center", va="top",
                    arrowprops={"arrowstyle": "->"})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("cache bytes per sequence, one layer")
    ax.set_title(f"KV cache size: {summary['cache_size']['preset']}, {summary['cache_size']['dtype']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [out_dir / "tour_cache_size.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, row in enumerate(summary["stages"]):
        points = [(d["context"], d["latency_ms"]) for d in row.get("decode", [])]
        if points:
            label = f"stage {row['stage']} {row['name']}" + (" (interpreter)" if row["interpreter"] else "")
            ax.plot(*zip(*points, strict=True), marker=markers[i % 5], linestyle=styles[i % 5], label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    timed = sorted({d["context"] for row in summary["stages"] for d in row.get("decode", [])})
    ax.set_xticks(timed, [f"{s:,}" for s in timed])
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    low, high = ax.get_ylim()  # label the in-between ticks only when the plot spans less than ~a decade
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g") if high / low < 20
                                 else matplotlib.ticker.NullFormatter())
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode step latency (ms, median)")
    ax.set_title(f"Decode latency: {summary['config']['name']}, {summary['dtype']}, {summary['device_name']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "tour_latency.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------------------ command line
def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def context_length(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"a context length must be ≥ 2 (prefix + new token), got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The tour's options (shared by `python -m mla_tutorial tour` and `python -m mla_tutorial.tour`)."""
    parser.add_argument("--config", default="tiny", choices=["tiny", "deepseek-v2-lite", "deepseek-v2", "deepseek-v3"],
                        help="model preset (default: tiny)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="dtype of weights, cache and checks (default: bf16; fp32 for the tiny config on CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")
    parser.add_argument("--context", type=context_length, nargs="+", metavar="S", dest="contexts",
                        help="context lengths to time (default: 256 1024 4096 on CPU, 1024 4096 16384 on CUDA)")
    parser.add_argument("--batch", type=positive_int, default=1, help="sequences per timed decode step (default: 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before timing")
    parser.add_argument("--reps", type=positive_int, default=None, help="timed steps per shape")
    parser.add_argument("--out", default="out/tour", help="directory for tour.json and the plots (default: out/tour)")
    parser.add_argument("--quick", action="store_true", help="contexts 64 and 256, 1 warm-up + 3 timed steps")
    parser.add_argument("--full-weights", action="store_true",
                        help="on CPU, build the full layer even when it exceeds --max-weight-mb")
    parser.add_argument("--max-weight-mb", type=float, default=128.0,
                        help="on CPU, narrow the hidden size of presets whose layer weights exceed this (default 128)")
    parser.add_argument("--max-memory-gb", type=float, default=None,
                        help="skip shapes whose decode step would need more (default: 70%% of free GPU memory, "
                             "4 GB on CPU)")
    parser.add_argument("--no-stage4", action="store_true", help="leave the Triton stage out")


def options_from_args(args: argparse.Namespace) -> TourOptions:
    return TourOptions(config=args.config, device=args.device, dtype=args.dtype, seed=args.seed,
                       contexts=args.contexts, batch=args.batch, warmup=args.warmup, reps=args.reps, out=args.out,
                       quick=args.quick, full_weights=args.full_weights, max_weight_mb=args.max_weight_mb,
                       max_memory_gb=args.max_memory_gb, no_stage4=args.no_stage4)


def check_device(parser: argparse.ArgumentParser, name: str) -> None:
    """Fail with a usage error (exit 2) for a device that does not exist here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device: expected cpu or cuda[:N], got {name!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device: expected cpu or cuda[:N], got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        parser.error(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the tour from parsed arguments; 0 when every stage passes its check, 1 otherwise."""

    check_device(parser, args.device)
    if args.warmup is not None and args.warmup < 0:
        parser.error(f"--warmup must be ≥ 0, got {args.warmup}")
    console = wide_console()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary = run_tour(options_from_args(args), console)
    summary["seconds"] = time.perf_counter() - started
    print_table(summary, console)
    (out_dir / "tour.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    paths = plot(summary, out_dir)
    console.print(f"wrote {out_dir / 'tour.json'}, " + ", ".join(str(p) for p in paths)
                  + f" ({summary['seconds']:.1f} s)")
    if not summary["passed"]:
        failed = [f"stage {r['stage']} {r['name']}" for r in summary["stages"] if not r["check"]["passed"]]
        console.print(f"[red]check failed[/red]: {', '.join(failed)}")
        return 1
    console.print("[green]all stages agree[/green]")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mla-tutorial tour", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv), parser)


if __name__ == "__main__":
    raise SystemExit(main())
