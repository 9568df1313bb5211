"""Console output of the measurements (rich tables): the tour's, the benchmark's, capacity and the roofline."""

from __future__ import annotations

import platform
from typing import Any

import torch


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_ms(record: dict[str, Any]) -> str:
    """Median latency and the p10–p90 spread: "1.234 ms ±12%" (half the spread, as a share of the median)."""
    return f"{record['latency_ms']:.3f} ±{record['spread'] / 2:.0%}"


def wide_console() -> Any:
    """A rich Console; 160 columns when writing to a file or pipe (rich would assume 80 and squeeze the tables)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def spread_warnings(records: list[dict[str, Any]]) -> list[str]:
    """One line per timing whose p10–p90 spread is wider than `timing.WIDE_SPREAD` of its median."""
    return [f"stage {r['stage']} {r['name']} at b={r['batch']}, S={r['context']}: p10–p90 spread "
            f"{r['spread']:.0%} of the median ({r['latency_p10_ms']:.3f}–{r['latency_p90_ms']:.3f} ms): noisy, "
            f"compare with care" for r in records if r.get("wide_spread")]


def bench_table(result: dict[str, Any], console: Any) -> None:
    """Every measured (stage, shape), then every shape that was not run and why."""
    from rich.table import Table

    roof = result.get("roofline") or {}
    table = Table(title=f"decode step, one layer: {result['preset']}, {result['dtype']}, "
                        f"{result['environment'].get('card', result['device'])}; roofline "
                        f"{roof.get('bytes_per_s', 0) / 1e9:,.0f} GB/s, {roof.get('flops_per_s', 0) / 1e12:,.3g} "
                        f"TFLOP/s", title_justify="left")
    layers = result.get("layers")
    columns = ["stage", "heads", "b", "S", "graph", "ms ±½(p90−p10)", "tokens/s", "MB moved", "GFLOP", "GB/s",
               "TFLOP/s", "roofline (×floor)", "peak mem", "host ms", "$/M tok layer",
               f"$/M tok ×{layers} layers" if layers else "$/M tok model"]
    for col in columns:
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in result["records"]:
        frac = (f"{r['roofline_fraction']:.0%} {r['bound'][:3]} (×{r['times_floor']:.1f})"
                if "roofline_fraction" in r else "–")
        table.add_row(f"{r['stage']} {r['name']}" + (" ⁱ" if r.get("interpreter") else ""), str(r["heads"]),
                      str(r["batch"]), f"{r['context']:,}", "on" if r["graph"] else "off", fmt_ms(r),
                      f"{r['tokens_per_s']:,.0f}", f"{r['bytes'] / 1e6:,.1f}", f"{r['flops'] / 1e9:,.3g}",
                      f"{r['achieved_gb_per_s']:,.3g}", f"{r['achieved_tflop_per_s']:.3g}", frac,
                      fmt_bytes(r["step_peak_memory_bytes"]), "–" if r["host_ms"] is None else f"{r['host_ms']:.3f}",
                      f"{r['usd_per_million_tokens']:,.3g}",
                      f"{r['usd_per_million_tokens_model']:,.3g}" if "usd_per_million_tokens_model" in r else "–")
    for s in result["skipped"]:
        table.add_row(f"{s['stage']} {s['name']}", str(s["heads"]), str(s["batch"]), f"{s['context']:,}",
                      "on" if s["graph"] else "off", f"[yellow]{s['reason'][:70]}[/yellow]", *[""] * 10)
    console.print(table)
    if any(r.get("interpreter") for r in result["records"]):
        console.print("ⁱ Triton interpreter on CPU: a correctness run, not a speed.")
    console.print("MB moved / GFLOP: what the step must read, write and compute (weights + cache + activations; "
                  "measure.cost.decode_step_cost). roofline: the least time those allow at the measured ceilings "
                  "÷ the time measured (×floor: its inverse). host ms: the host's time to issue one eager step. "
                  f"$/M tok at ${result['usd_per_gpu_hour']:.2f}/GPU-hour"
                  + (" (assumed; --usd-per-gpu-hour)" if result.get("usd_per_gpu_hour_is_assumption") else "")
                  + "; the model column multiplies one layer's attention by the layers (attention only; stages 4-5 "
                    "compute their schedule in that layer, which a decoder does once a step: ~10-13 µs a layer "
                    "less on an H200, docs/kernel.md §6).")
    for line in spread_warnings(result["records"]):
        console.print(f"[yellow]warning:[/yellow] {line}")


def capacity_table(result: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    gb = result["gpu_memory_bytes"] / 1e9
    table = Table(title=f"capacity: {result['preset']} on a {gb:g} GB GPU, tp={result['tp']} "
                        f"({result['heads_per_gpu']} heads/GPU), all {result['layers']} layers; weights "
                        f"{result['weights_per_gpu_bytes'] / 1e9:,.1f} GB/GPU, cache budget "
                        f"{result['cache_budget_bytes'] / 1e9:,.1f} GB", title_justify="left")
    for col in ("stage", "cache", "B/token (all layers)", f"sequences of {result['context']:,} tokens",
                f"longest context at batch {result['batch']}"):
        table.add_column(col, justify="left" if col in ("stage", "cache") else "right")
    for r in result["stages"]:
        table.add_row(f"{r['stage']} {r['name']}", r["cache"] + (", paged" if r["paged"] else ""),
                      f"{r['bytes_per_token']:,}", f"{r['max_sequences']:,}", f"{r['longest_context']:,}")
    console.print(table)
    for line in result["assumptions"]:
        console.print(f"assumption: {line}")


def tour_table(summary: dict[str, Any], console: Any = None) -> None:
    """The tour's table: per stage (and heads count), the check, the cache size and, per context, the step's
    latency, tokens/s and fraction of the roofline; then the peak memory of the last context's step."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    full = {r["stage"]: r["bytes_per_token_per_layer"] for r in summary["cache_size"]["rows"]}
    title = (f"MLA ladder — {summary['config']['name']}, {summary['dtype']}, {summary['device']} "
             f"({summary['device_name']}), batch {summary['batch']}, graphs {'on' if summary['graphs'] else 'off'}")
    table = Table(title=title, title_justify="left")
    table.add_column("stage")
    table.add_column("heads", justify="right")
    table.add_column(f"check vs previous\nrel_frob / cosine\n(≤ {summary['check']['max_rel_frob']:g} / "
                     f"≥ {summary['check']['min_cosine']:.10g})", justify="right")
    table.add_column(f"cache B/token/layer\n{summary['preset']} {summary['dtype']}", justify="right")
    table.add_column("measured\nB/token", justify="right")
    contexts = summary["contexts"]
    for context in contexts:
        table.add_column(f"S={context:,}\nms ±½(p90−p10)\ntokens/s\nroofline", justify="right")
    table.add_column(f"step peak mem\nS={contexts[-1]:,}", justify="right")
    for row in summary["stages"]:
        check = row["check"]
        if "error" in row:
            verdict = f"[red]ERROR[/red] {row['error'][:60]}"
        elif check.get("reference"):
            verdict = "reference"
        else:
            mark = "[green]PASS[/green]" if check["passed"] else "[red]FAIL[/red]"
            verdict = f"{check['rel_frob']:.1e} / {check['cosine']:.7f} {mark}"
            bounds = (check.get("max_rel_frob"), check.get("min_cosine"))
            if bounds != (summary["check"]["max_rel_frob"], summary["check"]["min_cosine"]) and None not in bounds:
                verdict += f"\n(≤ {bounds[0]:g} / ≥ {bounds[1]:.10g},\n{check.get('tolerance', 'its own')})"
        cache = row.get("cache", {})
        measured = f"{cache['measured_bytes_per_token']:,.0f}" if cache else "–"
        by_context = {r["context"]: r for r in row.get("decode", [])}
        skipped = {c: s["reason"] for s in row.get("skipped", []) for c in s["contexts"]}
        cells = []
        for context in contexts:
            r = by_context.get(context)
            if r is None:
                reason = skipped.get(context, "–")
                cells.append("–" if reason == "–" else f"[yellow]{reason.split(' (budget')[0]}[/yellow]")
                continue
            mark = "ⁱ" if row["interpreter"] else "ᵍ" if r["graph"] else ""
            cells.append(f"{fmt_ms(r)}{mark}\n{r['tokens_per_s']:,.0f}\n{r.get('roofline_fraction', 0):.1%}")
        last = by_context.get(contexts[-1])
        label = f"{row['stage']} {row['name']}"
        if row.get("dtype", summary["dtype"]) != summary["dtype"]:
            label += f" ({row['dtype']})"
        table.add_row(label, str(row["heads"]), verdict,
                      f"{full.get(row['stage'], 0):,}" if row["heads"] == summary["cache_size"]["heads"] else "″",
                      measured, *cells, fmt_bytes(last["step_peak_memory_bytes"] if last else None))
    console.print(table)
    roof = summary["roofline"]
    console.print(f"roofline: the least time the step's bytes and FLOPs allow at the ceilings measured in this run "
                  f"({roof['bytes_per_s'] / 1e9:,.1f} GB/s, {roof['flops_per_s'] / 1e12:,.3g} TFLOP/s; "
                  f"{roof['source']}) ÷ the measured time")
    if any(r["interpreter"] for r in summary["stages"]):
        console.print("ⁱ Triton interpreter on CPU: correct, but orders of magnitude slower than a GPU; not a speed.")
    if any(r.get("graph") for r in summary["stages"]):
        console.print("ᵍ replays of the step captured in a CUDA graph; stages 0 and 1 grow their caches by "
                      "concatenation and run eagerly")
    console.print("measured B/token: bytes the stage's cache object holds after the check ÷ tokens it holds "
                  "(stage 3's pool is counted by the pages in use; the check fills exactly two pages)")
    for row in summary["stages"]:
        if row.get("dtype_note"):
            console.print(f"stage {row['stage']} {row['name']} {row['dtype_note']}"
                          + ("" if row.get("kind") == "fp8" else  # FP8 rows are 656 bytes whatever the dtype
                             f"; its measured B/token is for {row.get('dtype', summary['dtype'])}"))
    for label, own in summary["check"].get("stage_tolerances", {}).items():
        console.print(f"stage {label} is held to the {own['tolerance']} tolerance (rel_frob ≤ {own['max_rel_frob']:g}, "
                      f"cosine ≥ {own['min_cosine']:g}), not its dtype's: {own.get('why', '')}")
    if summary["narrowed"]:
        console.print(f"cache column: the full {summary['preset']} layer (meta device); the other columns: the "
                      f"narrowed twin ({summary['config']['name']})")
    for line in spread_warnings([r for row in summary["stages"] for r in row.get("decode", [])]):
        console.print(f"[yellow]warning:[/yellow] {line}")


__all__ = ["bench_table", "capacity_table", "device_name", "fmt_bytes", "fmt_ms", "spread_warnings", "tour_table",
           "wide_console"]
