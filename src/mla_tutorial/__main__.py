"""Command line: `python -m mla_tutorial {tour,bench}` (also installed as the `mla-tutorial` script).

    mla-tutorial tour [--config tiny] [--device cpu] ...      build, check and measure every stage (tour.py)
    mla-tutorial bench [--context 1024 4096] ...              decode benchmark of every stage on this device
    mla-tutorial bench --kernel [--out F.json] [--quick]      the Triton kernel benchmark (measure/kernel_bench.py)

`bench` (without --kernel) times one decode step of each stage for every context length and writes JSON with,
per stage and shape: latency, throughput (tokens/s), the bytes and FLOPs the step must move and compute
(`measure.cost.decode_step_cost`), the bandwidth and FLOP rate that implies, the step's peak memory, the cost per
million tokens at an assumed GPU rental price, and, on CUDA, the fraction of this machine's measured roofline
(`measure.roofline`) the step reaches.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import tour
from .measure.cost import DEFAULT_USD_PER_GPU_HOUR, estimate_step_memory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mla-tutorial", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split(
                                         "\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", metavar="{tour,bench}")
    commands.required = True
    tour_parser = commands.add_parser("tour", help="build, check and measure every stage of the ladder",
                                      description=tour.__doc__.split("\n\n")[0])
    tour.add_arguments(tour_parser)
    tour_parser.set_defaults(parser=tour_parser)  # usage errors name the subcommand

    bench = commands.add_parser("bench", help="decode benchmark of every stage (or, with --kernel, of the kernels)",
                                description="Decode benchmark of every stage on one device; with --kernel, "
                                            "the Triton kernel benchmark (remaining options go to it).")
    bench.add_argument("--kernel", action="store_true",
                       help="run mla_tutorial.measure.kernel_bench instead; other options are passed to it")
    bench.add_argument("--config", default=None, choices=["tiny", "deepseek-v2-lite", "deepseek-v2", "deepseek-v3"],
                       help="model preset (default: deepseek-v3 on CUDA, tiny on CPU)")
    bench.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    bench.add_argument("--dtype", choices=sorted(tour.DTYPES), default=None,
                       help="default: bf16 on CUDA, fp32 on CPU")
    bench.add_argument("--context", type=tour.context_length, nargs="+", metavar="S", dest="contexts",
                       help="context lengths (default: 1024 4096 16384 on CUDA, 256 1024 on CPU)")
    bench.add_argument("--batch", type=tour.positive_int, default=1, help="sequences per decode step (default: 1)")
    bench.add_argument("--stages", type=int, nargs="+", default=None, help="stage numbers (default: all)")
    bench.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 10 on CUDA, 2 on CPU)")
    bench.add_argument("--reps", type=tour.positive_int, default=None,
                       help="timed steps (default: 50 on CUDA, 10 on CPU)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--usd-per-gpu-hour", type=float, default=DEFAULT_USD_PER_GPU_HOUR,
                       help=f"assumed GPU rental price for cost per million tokens (default: "
                            f"${DEFAULT_USD_PER_GPU_HOUR:.2f}, an on-demand H100)")
    bench.add_argument("--bandwidth-gbs", type=float, default=None,
                       help="memory bandwidth ceiling in GB/s (default on CUDA: measured with a device copy)")
    bench.add_argument("--peak-tflops", type=float, default=None,
                       help="FLOP-rate ceiling in TFLOP/s (default on CUDA: measured with a large matmul)")
    bench.add_argument("--max-memory-gb", type=float, default=None,
                       help="skip shapes needing more (default: 70%% of free GPU memory, 4 GB on CPU)")
    bench.add_argument("--out", default="out/bench/stages.json", help="JSON output (default: out/bench/stages.json)")
    bench.add_argument("--quick", action="store_true", help="contexts 64 and 256, 1 warm-up + 3 timed steps")
    bench.set_defaults(parser=bench)
    return parser


# ------------------------------------------------------------------------------------------------ bench
def measured_ceilings(device: torch.device, args: argparse.Namespace) -> dict[str, Any] | None:
    """The roofline of this machine: {"bytes_per_s", "flops_per_s", "source", ...}, or None when unknown.

    Given values (--bandwidth-gbs, --peak-tflops) win; otherwise, on CUDA, `mla_tutorial.measure.roofline` measures a
    device-to-device copy (bytes read + written) and an 8192³ bf16 matmul on this card, now.
    """
    ceilings: dict[str, Any] = {"source": "given"}
    bandwidth = None if args.bandwidth_gbs is None else args.bandwidth_gbs * 1e9
    flops = None if args.peak_tflops is None else args.peak_tflops * 1e12
    if (bandwidth is None or flops is None) and device.type == "cuda":
        try:
            roofline = importlib.import_module("mla_tutorial.measure.roofline")
        except ImportError as err:
            print(f"note: no measured roofline ({err}); pass --bandwidth-gbs and --peak-tflops", file=sys.stderr)
            return None
        ceilings = {"source": "measured: device copy and 8192³ bf16 matmul (mla_tutorial.measure.roofline)",
                    "device_info": roofline.device_info(device)}
        if bandwidth is None:
            copy = roofline.measure_copy_bandwidth(device)
            bandwidth, ceilings["copy"] = copy["gbps"] * 1e9, copy
        if flops is None:
            matmul = roofline.measure_matmul_tflops(device)
            flops, ceilings["matmul"] = matmul["tflops"] * 1e12, matmul
    if bandwidth is None or flops is None:
        return None
    return ceilings | {"bytes_per_s": bandwidth, "flops_per_s": flops}


def run_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Stage-level decode benchmark; writes args.out and prints a table."""
    from rich.table import Table

    from .config import MLAConfig
    from .layers import linear_init_
    from .measure.cost import decode_kind, element_size
    from .measure.stage_bench import profile_decode

    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tour.check_device(parser, device_name)
    device = torch.device(device_name)
    on_cuda = device.type == "cuda"
    dtype = tour.DTYPES[args.dtype or ("bf16" if on_cuda else "fp32")]
    config = MLAConfig.preset(args.config or ("deepseek-v3" if on_cuda else "tiny"))
    contexts = sorted(set(args.contexts or ([64, 256] if args.quick else [1024, 4096, 16384] if on_cuda
                                            else [256, 1024])))
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10 if on_cuda else 2)
    reps = args.reps if args.reps is not None else (3 if args.quick else 50 if on_cuda else 10)
    if warmup < 0:
        parser.error(f"--warmup must be ≥ 0, got {warmup}")
    console = tour.wide_console()
    stages, notes = tour.ladder(device)
    if args.stages is not None:
        unknown = sorted(set(args.stages) - {s.index for s in stages})
        if unknown:
            parser.error(f"--stages: no stage {unknown} here; available: {[s.index for s in stages]}")
        stages = [s for s in stages if s.index in args.stages]
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    ceilings = measured_ceilings(device, args)
    if ceilings:
        console.print(f"roofline ({ceilings['source']}): {ceilings['bytes_per_s'] / 1e9:,.0f} GB/s, "
                      f"{ceilings['flops_per_s'] / 1e12:,.0f} TFLOP/s")
    budget = tour.memory_budget(device, args.max_memory_gb)
    console.print(f"bench: {config.name}, {device} ({tour.device_name(device)}), {tour.dtype_name(dtype)}, "
                  f"batch {args.batch}, contexts {contexts}, {warmup} warm-up + {reps} timed steps, "
                  f"${args.usd_per_gpu_hour:.2f}/GPU-hour (assumed)")

    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    first = None
    for stage in stages:
        if first is None:
            with torch.device(device):
                module = stage.cls(config)
            first = module = linear_init_(module, seed=args.seed).to(dtype=dtype)
        else:
            module = stage.cls.from_previous(first)  # same weights as stage 0
        kind = decode_kind(module)
        for context in (contexts[:1] if stage.interpreter else contexts):
            need = estimate_step_memory(config, kind, context, args.batch, element_size(dtype))
            if need > budget:
                skipped.append({"stage": stage.index, "context": context,
                                "reason": f"needs ~{need / 2**30:.1f} GiB > {budget / 2**30:.1f} GiB"})
                console.print(f"stage {stage.label}, S={context}: skipped ({skipped[-1]['reason']})")
                continue
            started = time.perf_counter()
            try:
                record = profile_decode(module, context, args.batch, warmup=warmup, reps=reps, seed=args.seed,
                                        usd_per_gpu_hour=args.usd_per_gpu_hour, ceilings=ceilings)
            except torch.OutOfMemoryError:
                skipped.append({"stage": stage.index, "context": context, "reason": "out of memory"})
                console.print(f"stage {stage.label}, S={context}: skipped (out of memory)")
                torch.cuda.empty_cache()
                continue
            except (TypeError, ValueError, RuntimeError) as err:  # e.g. a kernel that takes bf16/fp16 only
                skipped.append({"stage": stage.index, "context": context, "reason": f"{type(err).__name__}: {err}"})
                console.print(f"stage {stage.label}, S={context}: [yellow]skipped[/yellow] ({skipped[-1]['reason']})")
                continue
            record |= {"stage": stage.index, "name": stage.cls.__name__, "interpreter": stage.interpreter}
            records.append(record)
            console.print(f"stage {stage.label}, S={context}: {record['latency_ms']:.3f} ms "
                          f"({time.perf_counter() - started:.1f} s)")
        if module is not first:
            del module
        if on_cuda:
            torch.cuda.empty_cache()

    table = Table(title=f"decode step, one layer: {config.name}, {tour.dtype_name(dtype)}, "
                        f"{tour.device_name(device)}, batch {args.batch}", title_justify="left")
    for col in ("stage", "S", "ms", "tokens/s", "MB moved", "GFLOP", "GB/s", "TFLOP/s", "peak mem",
                "$/M tok", "roofline"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in records:
        frac = f"{r['roofline_fraction']:.0%} ({r['bound'][:3]})" if "roofline_fraction" in r else "–"
        table.add_row(f"{r['stage']} {r['name']}" + (" ⁱ" if r["interpreter"] else ""), str(r["context"]),
                      f"{r['latency_ms']:.3f}", f"{r['tokens_per_s']:,.0f}", f"{r['bytes'] / 1e6:,.1f}",
                      f"{r['flops'] / 1e9:,.3g}", f"{r['achieved_gb_per_s']:,.3g}", f"{r['achieved_tflop_per_s']:.3g}",
                      tour.fmt_bytes(r["step_peak_memory_bytes"]), f"{r['usd_per_million_tokens']:,.2f}", frac)
    console.print(table)
    if any(r["interpreter"] for r in records):
        console.print("ⁱ Triton interpreter on CPU: a correctness run, not a speed.")
    console.print("MB moved / GFLOP: what the step must read, write and compute (weights included; "
                  "measure.cost.decode_step_cost). $/M tok: this layer only, at the assumed price.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "mla_tutorial stage decode", "config": config.to_dict(), "device": str(device),
              "device_name": tour.device_name(device), "dtype": tour.dtype_name(dtype),
              "batch": args.batch, "contexts": contexts, "warmup": warmup, "reps": reps,
              "usd_per_gpu_hour": args.usd_per_gpu_hour, "usd_per_gpu_hour_is_assumption": True,
              "roofline": ceilings, "records": records, "skipped": skipped, "notes": notes,
              "environment": tour.environment()}
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    console.print(f"wrote {out}")
    return 0


def run_kernel_bench(rest: list[str]) -> int:
    """Hand the remaining arguments to `mla_tutorial.measure.kernel_bench.main`."""
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
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and "--kernel" in argv:
        return run_kernel_bench([a for a in argv[1:] if a != "--kernel"])
    args = parser.parse_args(argv)
    if args.command == "tour":
        return tour.run(args, args.parser)
    return run_bench(args, args.parser)


if __name__ == "__main__":
    raise SystemExit(main())
