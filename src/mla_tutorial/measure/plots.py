"""Figures of the measurements (matplotlib, Agg): the tour's, the benchmark's, the roofline and capacity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]  # one per stage, 0-5
MARKERS = ["o", "s", "^", "D", "v", "P"]


def _marker(stage: int) -> str:
    return MARKERS[stage % len(MARKERS)]


def _style(stage: int) -> Any:
    return STYLES[stage % len(STYLES)]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_ms_axis(ax: Any) -> None:
    import matplotlib.ticker

    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    low, high = ax.get_ylim()  # label the in-between ticks only when the plot spans less than ~a decade
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g") if high / low < 20
                                 else matplotlib.ticker.NullFormatter())


def tour_plots(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """tour_cache_size.png (cache bytes against context length per stage) and tour_latency.png (median step
    latency with its p10–p90 range, per stage and heads count)."""
    plt = _plt()
    contexts = [2**k for k in range(6, 18)]  # 64 … 131,072 tokens
    rows = summary["cache_size"]["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(rows):
        per_token = r["bytes_per_token_per_layer"]
        ax.plot(contexts, [per_token * s for s in contexts], linestyle=_style(i), linewidth=max(0.6, 2 - 0.3 * i),
                label=f"stage {r['stage']} {r['name']}: {per_token:,} B/token")
    if not summary["narrowed"]:  # measured points are only comparable when the run used the preset itself
        for i, row in enumerate(summary["stages"]):
            if row.get("heads") not in (None, summary["cache_size"].get("heads")):
                continue
            points = [(d["cache_tokens_held"] / d["batch"], d["cache_bytes_held"] / d["batch"])
                      for d in row.get("decode", []) if d["cache_tokens_held"]]
            if points:
                ax.scatter(*zip(*points, strict=True), marker=_marker(i), s=30, zorder=3,
                           label=f"stage {row['stage']} measured")
    sizes = [r["bytes_per_token_per_layer"] for r in rows]
    if len(sizes) > 1 and min(sizes) < max(sizes):  # say how much smaller the latent cache is
        ax.annotate(f"{max(sizes) / min(sizes):.1f}× smaller", xy=(contexts[-3], min(sizes) * contexts[-3]),
                    xytext=(contexts[-3], max(sizes) * contexts[-3]), ha="center", va="top",
                    arrowprops={"arrowstyle": "->"})
    ax.set(xscale="log", yscale="log", xlabel="context length (tokens)", ylabel="cache bytes per sequence, one layer",
           title=f"KV cache size: {summary['cache_size']['preset']}, {summary['cache_size']['dtype']}"
                 + (f", {summary['cache_size']['heads']} heads" if summary["cache_size"].get("heads") else ""))
    ax.set_xscale("log", base=2)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [out_dir / "tour_cache_size.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    multi_heads = len({row.get("heads") for row in summary["stages"]}) > 1
    for row in summary["stages"]:
        points = [(d["context"], d["latency_ms"], d["latency_p10_ms"], d["latency_p90_ms"])
                  for d in row.get("decode", [])]
        if not points:
            continue
        x, y, lo, hi = zip(*points, strict=True)
        label = f"stage {row['stage']} {row['name']}" + (f", {row['heads']} heads" if multi_heads else "") + \
            (" (interpreter)" if row["interpreter"] else "") + (" (graph)" if row.get("graph") else "")
        below, above = [a - b for a, b in zip(y, lo, strict=True)], [b - a for a, b in zip(y, hi, strict=True)]
        ax.errorbar(x, y, yerr=[below, above],
                    marker=_marker(row["stage"]), linestyle=_style(row["stage"]), capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    timed = sorted({d["context"] for row in summary["stages"] for d in row.get("decode", [])})
    if timed:
        ax.set_xticks(timed, [f"{s:,}" for s in timed])
    _log_ms_axis(ax)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode step latency (ms): median, bars p10–p90")
    ax.set_title(f"Decode latency: {summary['preset']}, {summary['dtype']}, batch {summary['batch']}, "
                 f"{summary['device_name']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "tour_latency.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def bench_plot(result: dict[str, Any], path: Path) -> Path:
    """One column per heads count: step latency per stage over the shapes (top) and the fraction of the roofline
    reached (bottom); shapes that did not fit are marked on the axis."""
    plt = _plt()
    heads = result["heads"]
    shapes = [(b, s) for b in result["batches"] for s in result["contexts"]]
    fig, axes = plt.subplots(2, len(heads), figsize=(5.5 * len(heads), 7), squeeze=False, sharex=True)
    for col, h in enumerate(heads):
        top, bottom = axes[0][col], axes[1][col]
        series: dict[tuple, list] = {}
        for r in result["records"]:
            if r["heads"] == h:
                series.setdefault((r["stage"], r["name"], r["graph"]), []).append(r)
        for (stage, name, graph), recs in sorted(series.items()):
            xs = [shapes.index((r["batch"], r["context"])) for r in recs]
            style = {"marker": _marker(stage), "linestyle": "-" if graph else "--"}
            label = f"{stage} {name}" + (" graph" if graph else " eager")
            top.plot(xs, [r["latency_ms"] for r in recs], label=label, **style)
            if recs[0].get("roofline_fraction") is not None:
                bottom.plot(xs, [r["roofline_fraction"] for r in recs], label=label, **style)
        missing = sorted({shapes.index((s["batch"], s["context"])) for s in result["skipped"]
                          if s["heads"] == h and "does not fit" in s["reason"]})
        for x in missing:
            top.axvline(x, color="0.8", linewidth=0.8, zorder=0)
        top.set(yscale="log", ylabel="step latency (ms, median)", title=f"{result['preset']}, {h} heads/GPU, "
                f"{result['dtype']}")
        _log_ms_axis(top)
        bottom.set(ylabel="fraction of the roofline", ylim=(0, 1.05))
        bottom.set_xticks(range(len(shapes)), [f"b={b}\nS={s:,}" for b, s in shapes], fontsize=8)
        for ax in (top, bottom):
            ax.grid(True, which="both", alpha=0.3)
        if series:  # a column whose every shape was skipped has nothing to label
            top.legend(fontsize=7)
    roof = result.get("roofline") or {}
    fig.suptitle(f"decode step, one layer, {result['environment'].get('card', result['device'])}; ceilings "
                 f"{roof.get('bytes_per_s', 0) / 1e9:,.0f} GB/s, {roof.get('flops_per_s', 0) / 1e12:,.1f} TFLOP/s "
                 f"({roof.get('source', '')}); grey lines: does not fit", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def roofline_plot(result: dict[str, Any], path: Path) -> Path:
    """Every stage as a point (arithmetic intensity, achieved FLOP/s) under the two measured ceilings."""
    plt = _plt()
    roof = result["roofline"]
    bw, peak = roof["bytes_per_s"], roof["flops_per_s"]
    records = result["records"]
    fig, ax = plt.subplots(figsize=(7, 5))
    xs = [r["intensity_flop_per_byte"] for r in records] or [1.0]
    lo, hi = min(xs + [peak / bw]) / 4, max(xs + [peak / bw]) * 4
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(grid, [min(x * bw, peak) / 1e12 for x in grid], "k-", linewidth=1.5,
            label=f"roofline: {bw / 1e9:,.0f} GB/s, {peak / 1e12:,.1f} TFLOP/s")
    for r in records:
        ax.scatter(r["intensity_flop_per_byte"], r["achieved_tflop_per_s"], marker=_marker(r["stage"]), s=50,
                   zorder=3, label=f"{r['stage']} {r['name']}{' (graph)' if r['graph'] else ''}: "
                                   f"{r.get('roofline_fraction', 0):.0%} of the roofline")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte the step must move)",
           ylabel="achieved TFLOP/s",
           title=f"{result['preset']}, {result['heads'][0]} heads, b={result['batches'][0]}, "
                 f"S={result['contexts'][0]:,}, {result['dtype']}\n"
                 f"{result['environment'].get('card', result['device'])} ({roof.get('source', '')})")
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def capacity_plot(result: dict[str, Any], path: Path) -> Path:
    """Sequences of `context` tokens that fit on one GPU, per stage (the MHA-versus-MLA picture)."""
    plt = _plt()
    rows = result["stages"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bars = ax.bar([f"{r['stage']} {r['name']}" for r in rows], [r["max_sequences"] for r in rows],
                  color=["tab:red"] + ["tab:blue"] * (len(rows) - 1))
    for bar, r in zip(bars, rows, strict=True):
        ax.annotate(f"{r['max_sequences']:,}\n{r['bytes_per_token']:,} B/token", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8)
    gb = result["gpu_memory_bytes"] / 1e9
    ax.set(ylabel=f"sequences of {result['context']:,} tokens", title=f"Sequences per {gb:g} GB GPU at "
           f"{result['context']:,} tokens: {result['preset']}, tp={result['tp']} ({result['heads_per_gpu']} "
           f"heads/GPU), all {result['layers']} layers")
    ax.title.set_fontsize(9)
    ax.margins(y=0.2)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["bench_plot", "capacity_plot", "roofline_plot", "tour_plots"]
