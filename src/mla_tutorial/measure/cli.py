"""Command line: `python -m mla_tutorial {tour,bench,memory,roofline}` (also installed as `mla-tutorial`).

    mla-tutorial tour [--device cuda] ...                     build, check and measure every stage (tour.py)
    mla-tutorial bench [--heads 128 16] [--batch 1 64] ...    decode benchmark of every stage at serving shapes
    mla-tutorial bench --kernel [--out F.json] [--quick]      the Triton kernel benchmark (measure/kernel_bench.py)
    mla-tutorial memory --config deepseek-v3 --context 32768 --gpu-memory-gb 141 [--json]    capacity per stage
    mla-tutorial roofline [--batch 64 --context 4096]         measured ceilings, every stage as a point under them

Every number is checked by its argparse type, every output path is checked (and created) before any work
starts, and a mistake in the options exits with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

import torch

from ..config import MLAConfig
from .cost import DEFAULT_USD_PER_GPU_HOUR

PRESETS = ["tiny", "deepseek-v2-lite", "deepseek-v2", "deepseek-v3"]
DTYPE_NAMES = ["bf16", "fp16", "fp32", "fp64"]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: `mla-tutorial bench: error: --batch: expected a positive integer, ...`."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# ------------------------------------------------------------------------------------------------ argument types
def _number(kind: type, text: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return value


def context_length(text: str) -> int:
    value = _number(int, text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"a context length must be ≥ 2 (prefix + new token), got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = _number(float, text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def on_off(text: str) -> list[bool]:
    choices = {"on": [True], "off": [False], "both": [True, False]}
    if text not in choices:
        raise argparse.ArgumentTypeError(f"expected on, off or both, got {text!r}")
    return choices[text]


# ------------------------------------------------------------------------------------------------ checks
def writable_dir(parser: argparse.ArgumentParser, option: str, path: str | Path) -> Path:
    """Create the directory if needed and prove it writable, before any work; else a usage error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        parser.error(f"{option}: {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        parser.error(f"{option}: cannot write to {str(path)!r} ({err.strerror or err})")
    return path


def writable_file(parser: argparse.ArgumentParser, option: str, path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        parser.error(f"{option}: {str(path)!r} is a directory; give a file name")
    writable_dir(parser, option, path.parent if str(path.parent) else ".")
    return path


def check_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """The device, or a usage error (exit 2) for one that does not exist here."""
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
    return device


def check_heads(parser: argparse.ArgumentParser, preset: str, heads: list[int] | None) -> None:
    total = MLAConfig.preset(preset).num_heads
    for h in heads or []:
        if h > total or total % h:
            parser.error(f"--heads: {h} does not divide {preset}'s {total} heads (tensor parallelism splits them "
                         f"evenly: {[total // d for d in (1, 2, 4, 8, 16) if total % d == 0 and total // d >= 1]})")


def check_stages(parser: argparse.ArgumentParser, device: torch.device, stages: list[int] | None) -> None:
    if stages is None:
        return
    from ..tour import ladder

    available = [s.index for s in ladder(device)[0]]
    unknown = sorted(set(stages) - set(available))
    if unknown:
        parser.error(f"--stages: no stage {unknown} here; available: {available}")


# ------------------------------------------------------------------------------------------------ parsers
def _shared(p: argparse.ArgumentParser, *, device_default: str | None) -> None:
    p.add_argument("--device", default=device_default,
                   help="cpu or cuda[:N] (default: " + (device_default or "cuda when available") + ")")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                   help="dtype of weights and cache (default: bf16 on CUDA and for the DeepSeek presets, else fp32)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the weights and inputs (default: 0)")
    p.add_argument("--warmup", type=nonnegative_int, default=None, help="untimed steps before timing")
    p.add_argument("--reps", type=positive_int, default=None, help="timed steps per shape (at least)")
    p.add_argument("--max-memory-gb", type=positive_float, default=None,
                   help="skip shapes whose step would need more (default: 90%% of free GPU memory, 4 GiB on CPU)")
    p.add_argument("--bandwidth-gbs", type=positive_float, default=None,
                   help="memory-bandwidth ceiling in GB/s (default: measured with a large copy, now)")
    p.add_argument("--peak-tflops", type=positive_float, default=None,
                   help="FLOP-rate ceiling in TFLOP/s (default: measured with a large matmul, now)")


def build_parser() -> Parser:
    from .. import tour

    doc = __doc__ or ""
    parser = Parser(prog="mla-tutorial", description=doc.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", metavar="{tour,bench,memory,roofline}", parser_class=Parser)
    commands.required = True

    t = commands.add_parser("tour", help="build, check and measure every stage of the ladder",
                            description=(tour.__doc__ or "").split("\n\n")[0])
    t.add_argument("--config", default=None, choices=PRESETS,
                   help="model preset (default: deepseek-v3 on CUDA, tiny on CPU)")
    _shared(t, device_default="cpu")
    t.add_argument("--context", type=context_length, nargs="+", metavar="S", dest="contexts",
                   help="context lengths to time (default: 4096 16384 on CUDA, 256 1024 4096 on CPU)")
    t.add_argument("--batch", type=positive_int, default=None, help="sequences per decode step (default: 64 on "
                                                                     "CUDA, 1 on CPU)")
    t.add_argument("--heads", type=positive_int, nargs="+", default=None,
                   help="heads per GPU (tensor parallelism; default: 128 16 for DeepSeek-V3 on CUDA, all otherwise)")
    t.add_argument("--graphs", type=on_off, default=None, help="CUDA graphs for stages 2–5: on or off "
                                                                "(default: on with CUDA)")
    t.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for the timings (default: half the cores, at most 4)")
    t.add_argument("--out", default="out/tour", help="directory for tour.json and the plots (default: out/tour)")
    t.add_argument("--quick", action="store_true", help="tiny config, contexts 64 and 256, few repetitions")
    t.add_argument("--full-weights", action="store_true",
                   help="on CPU, build the full layer even when it exceeds --max-weight-mb")
    t.add_argument("--max-weight-mb", type=positive_float, default=128.0,
                   help="on CPU, narrow the hidden size of presets whose layer weights exceed this (default 128)")
    t.add_argument("--no-stage4", action="store_true",
                   help="leave the Triton stages out (4, and 5 which is built from it)")
    t.set_defaults(parser=t)

    b = commands.add_parser("bench", help="decode benchmark of every stage (or, with --kernel, of the kernels)",
                            description="Decode benchmark of every stage at serving shapes on one device; with "
                                        "--kernel, the Triton kernel benchmark (remaining options go to it).")
    b.add_argument("--kernel", action="store_true",
                   help="run mla_tutorial.measure.kernel_bench instead; other options are passed to it")
    b.add_argument("--config", default=None, choices=PRESETS,
                   help="model preset (default: deepseek-v3 on CUDA, tiny on CPU)")
    _shared(b, device_default=None)
    b.add_argument("--heads", type=positive_int, nargs="+", default=None,
                   help="heads per GPU: DeepSeek-V3's 128 over 1 or 8 GPUs gives 128 or 16 (default: 128 16 on "
                        "CUDA, the preset's on CPU)")
    b.add_argument("--batch", type=positive_int, nargs="+", default=None, dest="batches",
                   help="sequences per decode step (default: 64 on CUDA, 1 on CPU)")
    b.add_argument("--context", type=context_length, nargs="+", metavar="S", dest="contexts",
                   help="context lengths (default: 4096 16384 on CUDA, 256 1024 4096 on CPU)")
    b.add_argument("--stages", type=nonnegative_int, nargs="+", default=None, help="stage numbers (default: all)")
    b.add_argument("--graphs", type=on_off, default=None,
                   help="CUDA graphs for stages 2–5: on, off or both (default: on with CUDA)")
    b.add_argument("--usd-per-gpu-hour", type=positive_float, default=DEFAULT_USD_PER_GPU_HOUR,
                   help=f"GPU rental price for the cost per million tokens (default: ${DEFAULT_USD_PER_GPU_HOUR:.2f}, "
                        f"an assumption: an on-demand H100)")
    b.add_argument("--profile", action="store_true", help="also record a torch.profiler breakdown of each step")
    b.add_argument("--out", default="out/bench/stages.json",
                   help="JSON output; the plot goes next to it as .png (default: out/bench/stages.json)")
    b.add_argument("--quick", action="store_true", help="tiny config, contexts 64 and 256, few repetitions")
    b.set_defaults(parser=b)

    m = commands.add_parser("memory", help="capacity: sequences and context that fit in one GPU, per stage",
                            description="Capacity per stage for a GPU memory budget (measure/capacity.py).")
    m.add_argument("--config", default="deepseek-v3", choices=PRESETS, help="model preset (default: deepseek-v3)")
    m.add_argument("--context", type=context_length, default=32768, help="tokens per sequence (default: 32768)")
    m.add_argument("--gpu-memory-gb", type=positive_float, default=141.0,
                   help="memory of one GPU in GB (10⁹ bytes; default: 141, an H200)")
    m.add_argument("--tp", type=positive_int, default=None,
                   help="tensor-parallel GPUs (default: the fewest whose share of the weights fits)")
    m.add_argument("--batch", type=positive_int, default=1, help="sequences for the longest-context column")
    m.add_argument("--usable-fraction", type=fraction, default=0.9,
                   help="share of the memory for weights and cache (default: 0.9, like vLLM)")
    m.add_argument("--cache-dtype", choices=["bf16", "fp16", "fp32", "fp8"], default="bf16",
                   help="element type of the cache (default: bf16)")
    m.add_argument("--weight-bytes", type=positive_float, default=None,
                   help="bytes per weight (default: as released: 1 for DeepSeek-V3's FP8, 2 for V2's bf16)")
    m.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout, only")
    m.add_argument("--out", default="out/memory", help="directory for memory.json and memory.png")
    m.set_defaults(parser=m)

    r = commands.add_parser("roofline", help="measure the ceilings; every stage as a point under them",
                            description="Measure copy bandwidth and matmul rate on this device, time every stage "
                                        "at one shape, plot arithmetic intensity against achieved FLOP/s.")
    r.add_argument("--config", default=None, choices=PRESETS, help="default: deepseek-v3 on CUDA, tiny on CPU")
    _shared(r, device_default=None)
    r.add_argument("--heads", type=positive_int, default=None, help="heads per GPU (default: the preset's)")
    r.add_argument("--batch", type=positive_int, default=None, help="default: 64 on CUDA, 1 on CPU")
    r.add_argument("--context", type=context_length, default=None, help="default: 4096 on CUDA, 1024 on CPU")
    r.add_argument("--stages", type=nonnegative_int, nargs="+", default=None, help="stage numbers (default: all)")
    r.add_argument("--graphs", type=on_off, default=None, help="CUDA graphs for stages 2–5 (default: on with CUDA)")
    r.add_argument("--out", default="out/roofline", help="directory for roofline.json and roofline.png")
    r.set_defaults(parser=r)
    return parser


# ------------------------------------------------------------------------------------------------ commands
def run_tour(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .. import tour
    from .report import wide_console

    device = check_device(parser, args.device)
    config = args.config or ("tiny" if args.quick else "deepseek-v3" if device.type == "cuda" else "tiny")
    check_heads(parser, config, args.heads)
    out_dir = writable_dir(parser, "--out", args.out)
    console = wide_console()
    started = time.perf_counter()
    opts = tour.TourOptions(config=args.config, device=args.device, dtype=args.dtype, seed=args.seed,
                            contexts=args.contexts, batch=args.batch, heads=args.heads,
                            graphs=None if args.graphs is None else args.graphs[0], warmup=args.warmup,
                            reps=args.reps, threads=args.threads, out=args.out, quick=args.quick,
                            full_weights=args.full_weights, max_weight_mb=args.max_weight_mb,
                            max_memory_gb=args.max_memory_gb, no_stage4=args.no_stage4,
                            bandwidth_gbs=args.bandwidth_gbs, peak_tflops=args.peak_tflops)
    summary = tour.run_tour(opts, console)
    summary["seconds"] = time.perf_counter() - started
    tour.print_table(summary, console)
    paths = tour.write_outputs(summary, out_dir)
    console.print("wrote " + ", ".join(str(p) for p in paths) + f" ({summary['seconds']:.1f} s)")
    if not summary["passed"]:
        failed = [f"stage {r['stage']} {r['name']}" for r in summary["stages"] if not r["check"]["passed"]]
        console.print(f"[red]check failed[/red]: {', '.join(failed)}")
        return 1
    console.print("[green]all stages agree[/green]")
    return 0


def run_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .plots import bench_plot
    from .report import bench_table, wide_console
    from .stage_bench import BenchOptions, default_options, run_stage_bench

    device = check_device(parser, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    defaults = default_options(device, args.quick)
    config = args.config or defaults["config"]
    check_heads(parser, config, args.heads)
    check_stages(parser, device, args.stages)
    out = writable_file(parser, "--out", args.out)
    dtype = args.dtype or ("fp32" if device.type != "cuda" and config == "tiny" else "bf16")
    graphs = args.graphs if args.graphs is not None else defaults["graphs"]
    if any(graphs) and device.type != "cuda":
        parser.error("--graphs on: CUDA graphs need a CUDA device")
    opts = BenchOptions(config=config, device=str(device), dtype=dtype,
                        heads=args.heads or (defaults["heads"] if config == defaults["config"] else [None]),
                        batches=sorted(set(args.batches or defaults["batches"])),
                        contexts=sorted(set(args.contexts or defaults["contexts"])), stages=args.stages,
                        graphs=graphs, warmup=defaults["warmup"] if args.warmup is None else args.warmup,
                        reps=args.reps or defaults["reps"], seed=args.seed, usd_per_gpu_hour=args.usd_per_gpu_hour,
                        bandwidth_gbs=args.bandwidth_gbs, peak_tflops=args.peak_tflops,
                        max_memory_gb=args.max_memory_gb, profile=args.profile)
    console = wide_console()
    threads_before = torch.get_num_threads()
    if device.type != "cuda":
        from ..tour import default_threads

        torch.set_num_threads(default_threads())
    try:
        result = run_stage_bench(opts, console)
    finally:
        torch.set_num_threads(threads_before)
    bench_table(result, console)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    png = bench_plot(result, out.with_suffix(".png"))
    console.print(f"wrote {out}, {png}")
    return 0


def run_memory(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .capacity import capacity
    from .plots import capacity_plot
    from .report import capacity_table, wide_console

    config = MLAConfig.preset(args.config)
    if args.tp is not None and config.num_heads % args.tp:
        parser.error(f"--tp: {args.tp} does not divide {args.config}'s {config.num_heads} heads")
    out_dir = None if args.json else writable_dir(parser, "--out", args.out)
    element = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1}[args.cache_dtype]
    result = capacity(args.config, gpu_memory_bytes=args.gpu_memory_gb * 1e9, context=args.context, tp=args.tp,
                      batch=args.batch, element_bytes=element, usable_fraction=args.usable_fraction,
                      weight_bytes_per_parameter=args.weight_bytes)
    if args.json:
        print(json.dumps(result))
        return 0
    console = wide_console()
    capacity_table(result, console)
    (out_dir / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    png = capacity_plot(result, out_dir / "memory.png")
    console.print(f"wrote {out_dir / 'memory.json'}, {png}")
    return 0


def run_roofline(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .plots import roofline_plot
    from .report import bench_table, wide_console
    from .stage_bench import BenchOptions, default_options, run_stage_bench

    device = check_device(parser, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    defaults = default_options(device)
    config = args.config or defaults["config"]
    if args.heads:
        check_heads(parser, config, [args.heads])
    check_stages(parser, device, args.stages)
    out_dir = writable_dir(parser, "--out", args.out)
    graphs = args.graphs if args.graphs is not None else [device.type == "cuda"]
    if any(graphs) and device.type != "cuda":
        parser.error("--graphs on: CUDA graphs need a CUDA device")
    opts = BenchOptions(config=config, device=str(device),
                        dtype=args.dtype or ("fp32" if device.type != "cuda" and config == "tiny" else "bf16"),
                        heads=[args.heads], batches=[args.batch or defaults["batches"][0]],
                        contexts=[args.context or (4096 if device.type == "cuda" else 1024)], stages=args.stages,
                        graphs=graphs[:1], warmup=defaults["warmup"] if args.warmup is None else args.warmup,
                        reps=args.reps or defaults["reps"], seed=args.seed, bandwidth_gbs=args.bandwidth_gbs,
                        peak_tflops=args.peak_tflops, max_memory_gb=args.max_memory_gb)
    console = wide_console()
    result = run_stage_bench(opts, console)
    bench_table(result, console)
    (out_dir / "roofline.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    png = roofline_plot(result, out_dir / "roofline.png")
    console.print(f"wrote {out_dir / 'roofline.json'}, {png}")
    return 0


def run_kernel_bench(rest: list[str]) -> int:
    """Hand the remaining arguments to `mla_tutorial.measure.kernel_bench.main`."""
    import importlib

    try:
        kernel_bench = importlib.import_module("mla_tutorial.measure.kernel_bench")
    except ImportError as err:
        print(f"mla-tutorial bench --kernel: the kernel benchmark is not available here "
              f"(import mla_tutorial.measure.kernel_bench failed: {err})", file=sys.stderr)
        return 2
    code = kernel_bench.main(rest)
    return 0 if code is None else int(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m mla_tutorial` and the `mla-tutorial` script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and "--kernel" in argv:
        return run_kernel_bench([a for a in argv[1:] if a != "--kernel"])
    parser = build_parser()
    args = parser.parse_args(argv)
    run = {"tour": run_tour, "bench": run_bench, "memory": run_memory, "roofline": run_roofline}[args.command]
    return run(args, args.parser)


__all__ = ["build_parser", "main"]
