"""Drawings for notebooks 05–07 (matplotlib): the head tile, the schedule, the combine, the Gluon tile's warpgroups,
the FP8 row byte by byte, and the committed results (the kernel ablation, rooflines, latency, capacity, cost).

Every function returns a matplotlib Figure (closed, so a notebook shows it once, as the cell's value) and draws
only what it is given: the schedule from a real `get_mla_metadata` output (read by `course.kernels.schedule_pieces`),
the FP8 row from real bytes, the results from `course.results` rows. Nothing is measured here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .kernels import HeadTiles, Piece, fp8_fields
from .results import (
    IMPL_LABELS,
    AblationStep,
    Capacity,
    Ceilings,
    DecodeRow,
    Fp8SpeedRow,
    HostPlanRow,
    KernelRun,
    PairPhase,
    ProbeTiming,
    WgrTrace,
)

TOKEN_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52"]
WG_COLORS = ["#4C72B0", "#DD8452"]  # warpgroup 0, warpgroup 1
STAGE_COLORS = {0: "#C44E52", 1: "#DD8452", 2: "#8172B3", 3: "#937860", 4: "#4C72B0", 5: "#55A868"}
IMPL_COLORS = {"torch_paged": "#937860", "v1": "#C44E52", "v2": "#DD8452", "v3": "#CCB974", "v4": "#8172B3",
               "v5": "#4C72B0", "v5_lockstep": "#55A868", "v5_checked": "#64B5CD", "flashmla": "#222222"}


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _done(fig):
    """Close the figure (pyplot keeps no reference) and return it: a notebook shows it once, as the cell's value."""
    fig.tight_layout()
    _plt().close(fig)
    return fig


def _box(ax, x, y, w, h, color, text=None, *, alpha=0.85, hatch=None, fontsize=8, textcolor="white", edge="black",
         lw=0.6):
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor=edge, linewidth=lw, alpha=alpha, hatch=hatch))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, color=textcolor)


def _arrow(ax, start, end, text=None, *, color="black", fontsize=8, rad=0.0):
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": color, "lw": 1.2,
                                                      "connectionstyle": f"arc3,rad={rad}"})
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, text, ha="center", va="bottom", fontsize=fontsize,
                color=color)


# ============================================================================================= 05: the head tile
def head_tile(tiles: HeadTiles) -> Any:
    """Which query rows share one page read: v1 (one program per query row, each reading the page) against the
    head tile of v2 onwards (every row of a tile multiplies the same page, loaded once), for one request."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5.8), gridspec_kw={"width_ratios": [1, 1.7]})
    rows = tiles.rows_per_kv
    shown = min(rows, 64)
    row_h = 8.0 / max(shown, 16)
    group = tiles.h_q // tiles.h_kv

    def token_brackets(ax, x):
        for token in range(-(-shown // group)):
            first, last = token * group, min((token + 1) * group, shown) - 1
            top, bottom = 8.0 - first * row_h, 8.0 - (last + 1) * row_h
            ax.plot([x, x - 0.1, x - 0.1, x], [top - 0.03, top - 0.03, bottom + 0.03, bottom + 0.03], color="black",
                    lw=0.8)
            ax.text(x - 0.18, (top + bottom) / 2, f"token {token}\nheads\n{first % group}–{last % group}",
                    ha="right", va="center", fontsize=7.5)

    def head_label(i):
        return f"h{i % group}" if row_h >= 0.2 else None

    # v1: one program per (token, head); every program loads the whole page for its one row
    ax1.set_title(f"v1: one program per query row\neach page is read {tiles.page_reads_v1}× (once per row)",
                  fontsize=10)
    for i in range(shown):
        y = 8.0 - (i + 1) * row_h
        _box(ax1, 0.5, y, 2.2, row_h * 0.85, "#777777", "page" if row_h >= 0.2 else None, fontsize=6, lw=0.3)
        _box(ax1, 3.0, y, 2.4, row_h * 0.85, TOKEN_COLORS[(i // group) % 4], head_label(i), fontsize=6,
             textcolor="black", alpha=0.6, lw=0.3)
    ax1.text(1.6, 8.15, "loaded by the program", ha="center", fontsize=8)
    ax1.text(4.2, 8.15, "its query row", ha="center", fontsize=8)
    token_brackets(ax1, 0.35)
    if rows > shown:
        ax1.text(2.9, 8.0 - shown * row_h - 0.15, f"… and {rows - shown} more rows", ha="center", va="top", fontsize=8)
    ax1.text(2.9, -0.45, "matrix–vector products on CUDA cores; intensity ≈ 2 FLOP/byte",
             ha="center", va="top", fontsize=8)
    ax1.set(xlim=(-1.4, 5.8), ylim=(-1.0, 9.0))
    ax1.axis("off")

    # v2+: the tile
    ax2.set_title(f"v2 onwards: the s_q·h_q/h_kv = {rows} query rows form {tiles.tiles} tile(s) of BLOCK_M = "
                  f"{tiles.block_m} rows\neach page is loaded once per tile: read {tiles.page_reads}×", fontsize=10)
    for i in range(shown):
        y = 8.0 - (i + 1) * row_h
        tile_index = i // tiles.block_m
        _box(ax2, 0.0, y, 2.6, row_h * 0.95, TOKEN_COLORS[(i // group) % 4], head_label(i), fontsize=6,
             textcolor="black", alpha=0.45 + 0.3 * (tile_index % 2), lw=0.3)
    pad_rows = min(tiles.block_m * tiles.tiles, 64) - shown
    if pad_rows > 0:  # the tile is taller than the rows it holds: masked padding
        _box(ax2, 0.0, 8.0 - (shown + pad_rows) * row_h, 2.6, pad_rows * row_h, "white", "padding (masked)",
             hatch="//", textcolor="black", alpha=1.0)
    bottom = 8.0 - min(max(shown, tiles.block_m), 64) * row_h
    for t in range(1, min(tiles.tiles, 64 // tiles.block_m)):
        y = 8.0 - t * tiles.block_m * row_h
        ax2.plot([-0.1, 2.7], [y, y], color="black", lw=1.8)
        ax2.text(2.75, y, f"tile {t} starts: it reads the page again\n(mostly an L2 hit)", fontsize=7, va="center")
    token_brackets(ax2, -0.1)
    if rows > shown:
        ax2.text(1.3, bottom - 0.15, f"… and {rows - shown} more rows in {tiles.tiles - 64 // tiles.block_m} more "
                                     f"tile(s)", ha="center", va="top", fontsize=8)
    ax2.text(1.3, 8.15, "Q tile: rows × 576", ha="center", fontsize=8)
    _box(ax2, 4.0, 8.5, 5.4, 0.9, "#555555", "one 64-token page: 64 keys × 576,\nloaded once into shared memory",
         fontsize=8)
    _box(ax2, 4.0, 4.6, 1.9, 2.8, "#8172B3", "S = Q·Kᵀ\n[rows × 64]\ntwo dots:\n512 + 64\ncolumns", fontsize=8)
    _box(ax2, 6.9, 4.6, 2.5, 2.8, "#55A868", "O += P·V\n[rows × 512]\nV = the first\n512 columns of\nthe same page",
         fontsize=8)
    _arrow(ax2, (2.7, 6.0), (3.95, 6.0), "× Kᵀ")
    _arrow(ax2, (5.95, 6.0), (6.85, 6.0), "P")
    _arrow(ax2, (4.95, 8.45), (4.95, 7.45))
    _arrow(ax2, (8.15, 8.45), (8.15, 7.45))
    ax2.text(4.0, 3.9, f"tensor-core dots; arithmetic intensity ≈ 2·s_q·h_q = {2 * tiles.s_q * tiles.h_q} FLOP per "
                       f"byte read", fontsize=8, va="top")
    ax2.set(xlim=(-1.9, 9.6), ylim=(min(bottom - 0.8, -1.0), 9.6))
    ax2.axis("off")
    return _done(fig)


# ============================================================================================= 05: the schedule
def _request_colors(n: int) -> list:
    cmap = _plt().get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


def schedule_timeline(pieces: Sequence[Piece], num_parts: int, lengths: Sequence[int], overhead: int = 5,
                      payload: float | None = None, title: str | None = None) -> Any:
    """The split-KV schedule from a real `get_mla_metadata` output.

    Top: one row per SM part (one program of the kernel's single wave), its pieces laid left to right on a time
    axis in work units (a page is one unit, a piece's fixed cost `overhead` units, hatched). Bottom: one row per
    request, its pages coloured by the part that reads them; a request cut into several pieces goes through the
    combine."""
    plt = _plt()
    batch = len(lengths)  # colours: one per request, in both panels
    colors = _request_colors(batch)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 2.2 + 0.32 * (num_parts + batch)),
                                   gridspec_kw={"height_ratios": [max(num_parts, 2), max(batch, 2)]})
    for part in range(num_parts):
        x = 0.0
        for piece in (p for p in pieces if p.part == part):
            c = colors[piece.request]
            _box(ax1, x, part - 0.4, overhead, 0.8, c, f"r{piece.request}", alpha=0.35, hatch="///", lw=0.4,
                 fontsize=7, textcolor="black")  # every piece loads its Q and stores its output
            x += overhead
            if piece.pages:
                whole = piece.starts_request and piece.end_page >= -(-piece.s_k // 64)
                label = f"r{piece.request}" + ("" if whole else f" piece {piece.split}")
                _box(ax1, x, part - 0.4, piece.pages, 0.8, c, label if piece.pages >= 4 else None, fontsize=7)
                x += piece.pages
        if x == 0:
            ax1.text(0.3, part, "idle: no work left", va="center", fontsize=7, color="#777777")
    if payload:
        ax1.axvline(payload, color="black", ls="--", lw=1)
        ax1.text(payload, num_parts - 0.6, f" payload: {payload:g} units per part", fontsize=7, va="bottom")
    ax1.set(ylim=(num_parts - 0.5, -0.6), xlabel="work units ≈ time (a page = 1 unit; a piece's fixed cost = "
                                                 f"{overhead} units, hatched)", ylabel="SM part (one program)")
    ax1.set_yticks(range(num_parts))
    ax1.set_xlim(left=0)
    ax1.set_title(title or f"The schedule: {batch} requests on {num_parts} SM parts (one wave)", fontsize=10)

    for r, s_k in enumerate(lengths):
        mine = sorted((p for p in pieces if p.request == r), key=lambda p: p.split)
        for piece in mine:
            lo, hi = piece.first_page, piece.first_page + piece.pages
            if hi > lo:
                _box(ax2, lo, r - 0.4, hi - lo, 0.8, colors[r], f"part {piece.part}" if hi - lo >= 4 else
                     f"{piece.part}", fontsize=7 if hi - lo >= 4 else 6, alpha=0.85)
        pages = -(-s_k // 64)
        note = f"{s_k:,} tokens, {pages} page{'s' if pages != 1 else ''}" + (
            f" (part {mine[0].part}): empty, out = 0, lse = +inf" if s_k == 0 else "")
        if len(mine) > 1:
            note += f"  → {len(mine)} pieces on parts {', '.join(str(p.part) for p in mine)} → combine"
        ax2.text(pages + 0.4, r, note, va="center", fontsize=7)
    ax2.set(ylim=(batch - 0.5, -0.5), xlabel="page of the request (label: the SM part that reads it)",
            ylabel="request")
    ax2.set_yticks(range(batch))
    ax2.set_xlim(0, max(-(-s // 64) for s in lengths) * 1.6 + 2)
    return _done(fig)


def combine_weights(lse_parts, heads: Sequence[int] = (0, 1, 2, 3), request: int | None = None) -> Any:
    """The combine of one split request: each piece's log-sum-exp (left) and its weight exp(lse_i − lse) in the
    merged output (right, one stacked bar per head: the weights sum to 1). lse_parts [n, s_q, h_q] (float)."""
    import torch

    plt = _plt()
    lse_parts = torch.as_tensor(lse_parts, dtype=torch.float64)[:, 0, :]  # [n, h_q] (first query token)
    lse = torch.logsumexp(lse_parts, dim=0)  # [h_q]
    weights = torch.exp(lse_parts - lse)  # [n, h_q]
    n = lse_parts.shape[0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    for h in heads:
        ax1.plot(range(n), lse_parts[:, h].tolist(), "o-", label=f"head {h}")
        ax1.axhline(float(lse[h]), color=ax1.lines[-1].get_color(), ls=":", lw=0.8)
    ax1.set(xlabel="piece (split index)", ylabel="lse_i (natural log)", xticks=range(n),
            title="each piece's log-sum-exp; dotted: the merged lse = log Σ exp(lse_i)")
    ax1.title.set_fontsize(9)
    ax1.legend(fontsize=7)
    bottom = torch.zeros(len(heads), dtype=torch.float64)
    colors = _plt().get_cmap("tab10")
    for i in range(n):
        w = weights[i, list(heads)]
        ax2.bar([f"head {h}" for h in heads], w.tolist(), bottom=bottom.tolist(), color=colors(i % 10),
                label=f"piece {i}")
        bottom += w
    ax2.set(ylabel="weight exp(lse_i − lse)", ylim=(0, 1.05),
            title="o = Σ_i exp(lse_i − lse)·o_i: each piece's share of the output" +
                  (f" (request {request})" if request is not None else ""))
    ax2.title.set_fontsize(9)
    ax2.legend(fontsize=7, loc="lower right")
    return _done(fig)


# ============================================================================================= 05: v5's Gluon tile
def warpgroup_split() -> Any:
    """v4's 64-row tile against v5's Gluon tile: who computes what in one 64-key page step (two warpgroups)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    duplicated = (2 * 576 + 512) / (576 + 512)  # v4: both warpgroups compute the whole 64×64 score tile
    for ax, version in zip(axes, ("v4", "v5"), strict=True):
        ax.set(xlim=(-1.2, 13.5), ylim=(-2.0, 6.4))
        ax.axis("off")
        # S [64 rows × 64 keys] at (0..3.4, 0..4); O [64 rows × 512 columns] at (5..13, 0..4)
        if version == "v4":
            _box(ax, 0.0, 0.0, 3.4, 4.0, WG_COLORS[0], None, alpha=0.5)
            _box(ax, 0.2, -0.2, 3.4, 4.0, WG_COLORS[1], "all 64 × 64\nscores, twice:\nby warpgroup 0\nand by\n"
                 "warpgroup 1", alpha=0.5, fontsize=7.5, textcolor="black")
            ax.set_title(f"v4 (plain Triton 3.6): the score dot gets warps [8, 1], so both warpgroups compute all "
                         f"of S\n→ {duplicated:.2f}× the useful tensor-core work; 255 registers, 224–232 spills",
                         fontsize=9)
        else:
            _box(ax, 0.0, 0.0, 1.7, 4.0, WG_COLORS[0], "WG 0:\nkeys\n0–31", fontsize=8)
            _box(ax, 1.7, 0.0, 1.7, 4.0, WG_COLORS[1], "WG 1:\nkeys\n32–63", fontsize=8)
            ax.set_title("v5 (Gluon): scores split by keys (warps [4, 2], instruction N = 32), output by columns "
                         "(N = 256)\n→ no repeated work: 40 wgmma per page and warpgroup (v4: 76), no spills",
                         fontsize=9)
            ax.text(1.7, 4.5, "row max and row sum: combined across\nthe warpgroups through shared memory",
                    ha="center", fontsize=7)
        ax.text(-0.15, 2.0, "64 query rows", rotation=90, ha="right", va="center", fontsize=8)
        ax.text(1.7, -0.6, "S = Q·Kᵀ [64 × 64 keys]\nover all 576 columns", ha="center", va="top", fontsize=8)
        _box(ax, 5.0, 0.0, 4.0, 4.0, WG_COLORS[0], "O columns 0–255:\nwarpgroup 0\n(128 fp32 registers\nper thread)",
             fontsize=8)
        _box(ax, 9.0, 0.0, 4.0, 4.0, WG_COLORS[1], "O columns 256–511:\nwarpgroup 1", fontsize=8)
        ax.text(9.0, -0.6, "O += P·V [64 × 512]: P (bf16, through shared memory)\n× V [64 keys × 512] = the page's "
                           "first 512 columns", ha="center", va="top", fontsize=8)
        _arrow(ax, (3.7, 2.0), (4.9, 2.0), "P")
    return _done(fig)


# ============================================================================================= 07: the FP8 row
FIELD_COLORS = {"e4m3": ["#DEEBF7", "#C6DBEF", "#9ECAE1", "#6BAED6"], "float32": ["#FDAE6B", "#FD8D3C"],
                "bf16": ["#A1D99B"]}


def fp8_row(row8=None, columns: int = 16) -> Any:
    """The 656-byte FP8 row, byte by byte (`columns` bytes per line): c_kv's four 128-value e4m3 tiles, the four
    float32 scales, the 64 bf16 k_rope values; with the bytes of `row8` (a real row, [656]) written in hex."""
    import torch

    plt = _plt()
    fields = fp8_fields()
    total = fields[-1].end
    raw = None
    if row8 is not None:
        raw = row8.reshape(-1).view(torch.uint8).tolist()
        if len(raw) != total:
            raise ValueError(f"row8 must hold one {total}-byte row, got {len(raw)} bytes")
    lines = -(-total // columns)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 0.2 * lines + 1.6), gridspec_kw={"width_ratios": [3, 1.3]})
    count = {"e4m3": 0, "float32": 0, "bf16": 0}
    for f in fields:
        shades = FIELD_COLORS[f.dtype]
        color = shades[count[f.dtype] % len(shades)]
        count[f.dtype] += 1
        for byte in range(f.start, f.end):
            x, y = byte % columns, byte // columns
            _box(ax, x, y, 1, 1, color, f"{raw[byte]:02x}" if raw is not None else None, fontsize=5.5,
                 textcolor="black", lw=0.3, alpha=1.0)
    notes = [(0, 128, "c_kv tile 0: 128 e4m3 values (1 byte each)"), (128, 256, "c_kv tile 1"),
             (256, 384, "c_kv tile 2"), (384, 512, "c_kv tile 3"),
             (512, 528, "4 float32 scales, one per tile (4 bytes each)"),
             (528, 656, "k_rope: 64 bf16 values (2 bytes each)")]
    for start, end, text in notes:
        y_mid = ((start // columns) + (end - 1) // columns + 1) / 2
        ax.text(columns + 0.3, y_mid, f"bytes {start}–{end - 1}: {text}", va="center", fontsize=7.5)
    ax.set(xlim=(0, columns + 10), ylim=(lines, 0))
    ax.set_yticks([y + 0.5 for y in range(0, lines, 4)], [str(y * columns) for y in range(0, lines, 4)], fontsize=7)
    ax.set_xticks([x + 0.5 for x in range(columns)], [f"+{x}" for x in range(columns)], fontsize=6)
    ax.tick_params(length=0)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"One token's FP8 row: {total} bytes" + (" (the bytes of a real row, hex)" if raw else ""),
                 fontsize=10)

    # the same token in bf16 and in FP8
    bf16 = [("c_kv", 1024, "#9ECAE1"), ("k_rope", 128, "#A1D99B")]
    fp8 = [("c_kv e4m3", 512, "#9ECAE1"), ("scales", 16, "#FD8D3C"), ("k_rope", 128, "#A1D99B")]
    for y, parts, name in ((1, bf16, "bf16: 1,152 B"), (0, fp8, f"FP8: {total} B")):
        x = 0
        for label, n, color in parts:
            ax2.barh(y, n, left=x, color=color, edgecolor="black", linewidth=0.5)
            if n >= 100:
                ax2.text(x + n / 2, y, f"{label}\n{n} B", ha="center", va="center", fontsize=7)
            x += n
        ax2.text(x + 20, y, name, va="center", fontsize=8)
    ax2.set(xlim=(0, 1700), ylim=(-0.8, 1.8), yticks=[], xlabel="bytes per token per layer",
            title=f"{1152 / total:.2f}× fewer bytes per token")
    ax2.set_box_aspect(0.45)
    ax2.title.set_fontsize(10)
    return _done(fig)


# ============================================================================================= results: kernels
def ablation_chart(steps: Sequence[AblationStep], runs: Sequence[KernelRun] = ()) -> Any:
    """Left: each rung's speedup at the shape where it pays (and one where it does not, in grey), from the
    committed files. Right: every implementation measured at the ablation shapes of `runs` (log ms)."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 0.55 * len(steps) + 2.4),
                                   gridspec_kw={"width_ratios": [1.25, 1]})
    labels = [f"{s.idea}: {s.before.impl} → {s.after.impl}\n{s.after.shape} ({s.after.card.removeprefix('NVIDIA ')})"
              for s in steps]
    y = list(range(len(steps)))[::-1]
    ax1.barh(y, [s.speedup for s in steps], color=["#4C72B0" if s.pays else "#BBBBBB" for s in steps])
    for yi, s in zip(y, steps, strict=True):
        ax1.text(s.speedup * 1.08, yi, f"×{s.speedup:.2f}  ({s.before.ms:.3f} → {s.after.ms:.3f} ms)",
                 va="center", fontsize=7.5)
    ax1.set_yticks(y, labels, fontsize=7.5)
    ax1.set_xscale("log")
    ax1.axvline(1, color="black", lw=0.8)
    ax1.set_xlim(0.8, max(s.speedup for s in steps) * 8)
    ax1.set(xlabel="speedup of the rung (time before / after, whole call)", title="Where each idea pays")
    ax1.title.set_fontsize(10)

    shapes = []
    for run in runs:
        for key in sorted({(r.b, r.h_q, r.s_q, r.s_k, r.lengths) for r in run.rows if r.impl == "v1"}):
            shapes.append((run, key))
    impls = [k for k in IMPL_LABELS if k != "v5_checked"]
    for i, (run, (b, h_q, s_q, s_k, lengths)) in enumerate(shapes):
        at = {r.impl: r for r in run.select(b=b, h_q=h_q, s_q=s_q, s_k=s_k, lengths=lengths)}
        for j, impl in enumerate(impls):
            if impl in at:
                ax2.scatter(at[impl].ms, i + (j - len(impls) / 2) * 0.07, color=IMPL_COLORS[impl], s=28,
                            label=IMPL_LABELS[impl] if i == 0 else None, zorder=3)
    ax2.set_yticks(range(len(shapes)), [f"b={b}, h_q={h}, s_k={s:,}" + (", uneven" if d != "fixed" else "") +
                                        f"\n{run.card.removeprefix('NVIDIA ')}, {run.date}"
                                        for run, (b, h, _sq, s, d) in shapes], fontsize=7.5)
    ax2.set_xscale("log")
    ax2.set(xlabel="ms per call (log)", title="Every version at the ablation shapes")
    ax2.title.set_fontsize(10)
    ax2.grid(True, axis="x", which="both", alpha=0.3)
    ax2.legend(fontsize=7, loc="lower right")
    return _done(fig)


def _roof(ax, ceilings: Ceilings, lo: float, hi: float, label: str | None = None) -> None:
    import numpy as np

    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.plot(x, np.minimum(x * ceilings.copy_gbps / 1e3, ceilings.matmul_tflops), "k--", lw=1,
            label=label or f"roofline: {ceilings.copy_gbps:,.0f} GB/s, {ceilings.matmul_tflops:,.0f} TFLOP/s")
    ax.axvline(ceilings.ridge, color="#999999", lw=0.6, ls=":")
    ax.set(xscale="log", yscale="log")
    ax.grid(True, which="both", alpha=0.25)


def kernel_roofline(runs: Sequence[KernelRun], b: int = 128) -> Any:
    """Each implementation's achieved TFLOP/s against its arithmetic intensity, at batch `b`, under the roofline
    of each run's own measured ceilings (one panel per run)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.6), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        for impl in run.impls:
            pts = [(r.intensity, r.tflops) for r in run.select(impl=impl, b=b)]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=14, color=IMPL_COLORS.get(impl), label=IMPL_LABELS.get(impl,
                                                                                                         impl))
        _roof(ax, run.ceilings, 1, 3000)
        ax.set(xlabel="FLOP / byte", ylabel="TFLOP/s", title=f"{run.source}\n{run.card}, b = {b}, every shape")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    return _done(fig)


# ============================================================================================= results: 06
def stage_roofline(rows: Sequence[DecodeRow], ceilings: Ceilings, kernel_rows: Sequence[Fp8SpeedRow] = (),
                   kernel_ceilings: Ceilings | None = None) -> Any:
    """Left: every stage's decode step (one layer: weights + cache + activations) as a point under the roofline
    of its run. Right (with `kernel_rows`): the attention call alone, bf16 (stage 4) against FP8 (stage 5)."""
    plt = _plt()
    panels = 2 if kernel_rows else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 5.2), squeeze=False)
    ax = axes[0][0]
    markers = {128: "o", 16: "s", 64: "^", 32: "D"}
    for r in rows:
        ax.scatter(r.intensity, r.achieved_tflops, color=STAGE_COLORS.get(r.stage), marker=markers.get(r.heads, "o"),
                   s=45, zorder=3, edgecolor="black", linewidth=0.4)
        ax.annotate(f"{r.stage}", (r.intensity, r.achieved_tflops), xytext=(4, 3), textcoords="offset points",
                    fontsize=7)
    for stage in sorted({r.stage for r in rows}):
        name = next(r.name for r in rows if r.stage == stage)
        ax.scatter([], [], color=STAGE_COLORS.get(stage), label=f"stage {stage} {name}")
    for heads in sorted({r.heads for r in rows}, reverse=True):
        ax.scatter([], [], color="white", edgecolor="black", marker=markers.get(heads, "o"), label=f"{heads} heads")
    _roof(ax, ceilings, 1, 3000)
    shapes = sorted({(r.batch, r.context) for r in rows})
    ax.set(xlabel="FLOP / byte of the whole step", ylabel="achieved TFLOP/s",
           title="One decode step (one DeepSeek-V3 layer), " + ", ".join(f"b={b}, S={s:,}" for b, s in shapes))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left")
    if kernel_rows:
        ax = axes[0][1]
        names = {"bf16_v5": ("stage 4: v5, bf16 cache", STAGE_COLORS[4]), "fp8": ("stage 5: FP8 cache",
                                                                                  STAGE_COLORS[5]),
                 "flashmla": ("FlashMLA (bf16)", "#222222")}
        for r in kernel_rows:
            label, color = names.get(r.impl, (r.impl, "#777777"))
            ax.scatter(r.flops / r.bytes, r.flops / r.ms / 1e9, color=color, marker=markers.get(r.h_q, "o"), s=45,
                       zorder=3, edgecolor="black", linewidth=0.4)
            ax.annotate(f"h{r.h_q}" + (" uneven" if r.lengths != "fixed" else ""), (r.flops / r.bytes,
                        r.flops / r.ms / 1e9), xytext=(4, -9), textcoords="offset points", fontsize=6.5)
        for key, (label, color) in names.items():
            if any(r.impl == key for r in kernel_rows):
                ax.scatter([], [], color=color, label=label)
        _roof(ax, kernel_ceilings or ceilings, 10, 2000)
        ax.set(xlabel="FLOP / byte the call reads (656 B per cached token for FP8, 1,152 for bf16)",
               ylabel="TFLOP/s", title="The attention call alone, b = 128, s_k = 4,096")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="upper left")
    return _done(fig)


def latency_panels(by_context: Sequence[DecodeRow], by_batch: Sequence[DecodeRow]) -> Any:
    """Step latency and tokens/s against context (left two) and batch (right two), one line per stage and heads
    count (solid 128 heads, dashed 16)."""
    import matplotlib.ticker

    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for rows, x_of, axs, xlabel in ((by_context, "context", axes[:2], "context (tokens)"),
                                    (by_batch, "batch", axes[2:], "batch (sequences)")):
        keys = sorted({(r.stage, r.heads, r.name, r.kernel) for r in rows}, key=lambda k: (-k[1], k[0]))
        for stage, heads, name, kernel in keys:
            mine = [r for r in rows if (r.stage, r.heads, r.kernel) == (stage, heads, kernel)]
            pts = sorted(((getattr(r, x_of), r) for r in mine), key=lambda p: p[0])
            xs = [x for x, _ in pts]
            style = {"color": STAGE_COLORS.get(stage), "ls": "-" if heads == 128 else "--", "marker": "o", "ms": 4}
            label = f"{stage} {name}" + (f" ({kernel})" if stage == 4 and kernel else "") + f", {heads} h"
            axs[0].plot(xs, [r.latency_ms for _, r in pts], label=label, **style)
            axs[1].plot(xs, [r.tokens_per_s for _, r in pts], **style)
        ticks = sorted({getattr(r, x_of) for r in rows})
        for ax, ylabel in zip(axs, ("ms per step (one layer)", "tokens/s (one layer)"), strict=True):
            ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel)
            ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.10g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.grid(True, which="both", alpha=0.25)
        axs[0].legend(fontsize=6.5)
    shapes = sorted({r.batch for r in by_context})
    axes[0].set_title(f"latency vs context, b = {'/'.join(map(str, shapes))}", fontsize=9)
    axes[1].set_title("tokens/s vs context", fontsize=9)
    contexts = sorted({r.context for r in by_batch})
    axes[2].set_title(f"latency vs batch, S = {'/'.join(f'{c:,}' for c in contexts)}", fontsize=9)
    axes[3].set_title("tokens/s vs batch", fontsize=9)
    return _done(fig)


def capacity_and_cost(capacity: Capacity, rows: Sequence[DecodeRow]) -> Any:
    """Left: sequences per GPU, per stage (the capacity file). Right: dollars per million tokens per stage and
    heads count (attention only, all layers, the rows' assumed GPU-hour price)."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.4))
    names = [f"{r.stage} {r.name}" for r in capacity.rows]
    bars = ax1.bar(names, [r.max_sequences for r in capacity.rows],
                   color=[STAGE_COLORS.get(r.stage) for r in capacity.rows])
    for bar, r in zip(bars, capacity.rows, strict=True):
        ax1.annotate(f"{r.max_sequences}\n({r.bytes_per_token_per_layer:,} B)",
                     (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax1.set(ylabel=f"sequences of {capacity.context:,} tokens per GPU\n(cache bytes per token and layer)",
            title=f"{capacity.preset}: {capacity.gpu_memory_bytes / 1e9:g} GB GPU, TP {capacity.tp} "
                  f"({capacity.heads_per_gpu} heads/GPU), all {capacity.layers} layers")
    ax1.title.set_fontsize(9)
    ax1.margins(y=0.25)
    ax1.tick_params(axis="x", labelsize=7)
    heads = sorted({r.heads for r in rows}, reverse=True)
    stages = sorted({r.stage for r in rows})
    width = 0.8 / len(heads)
    for i, h in enumerate(heads):
        vals = [next((r.usd_per_million_tokens for r in rows if r.stage == s and r.heads == h), 0) for s in stages]
        ax2.bar([s + (i - (len(heads) - 1) / 2) * width for s in stages], vals, width, label=f"{h} heads/GPU")
        for s, v in zip(stages, vals, strict=True):
            ax2.text(s + (i - (len(heads) - 1) / 2) * width, v * 1.05, f"${v:.2f}", ha="center", fontsize=6.5)
    price = rows[0].usd_per_gpu_hour if rows else 0
    ax2.set_xticks(stages, [f"{s} {next(r.name for r in rows if r.stage == s)}" for s in stages], fontsize=7)
    ax2.set(yscale="log", ylabel="$ per million tokens (attention, 61 layers)",
            title=f"at ${price:.2f} per GPU-hour (an assumption), b = {rows[0].batch if rows else '?'}, "
                  f"S = {rows[0].context if rows else '?':,}")
    ax2.title.set_fontsize(9)
    ax2.legend(fontsize=7)
    return _done(fig)


def _fp8_bars(ax, rows: Sequence[Fp8SpeedRow] | Sequence[ProbeTiming], impls: list[tuple[str, str, str]],
              shapes: list[tuple], text, fontsize: int, shape_of=lambda r: (r.h_q, r.lengths),
              rotation: int = 0) -> float:
    """Grouped bars of the FP8 benchmark or an FP8 probe: a group per shape (shape_of(row): by default (h_q,
    lengths)), a bar per (impl, label, color) of impls where the rows have it (ms per call), each labelled text(row);
    returns the bar width."""
    width = 0.8 / len(impls)
    for i, (key, label, color) in enumerate(impls):
        labelled = False  # (the legend names each impl once, at the first shape that has it)
        for j, shape in enumerate(shapes):
            row = next((r for r in rows if r.impl == key and shape_of(r) == tuple(shape)), None)
            if row is None:
                continue
            x = j + (i - (len(impls) - 1) / 2) * width
            ax.bar(x, row.ms, width, color=color, label=None if labelled else label)
            labelled = True
            ax.text(x, row.ms * 1.02, text(row), ha="center", va="bottom", fontsize=fontsize, rotation=rotation)
    return width


def fp8_speed_bars(rows: Sequence[Fp8SpeedRow], ideal: dict[tuple[int, str], float] | None = None) -> Any:
    """The FP8 benchmark: ms per call of FlashMLA (bf16), v5 on the bf16 cache (stage 4) and on the FP8 cache
    (stage 5; and its small tile alone where the file has it) at each shape, with the FP8 call's time if it read its
    bytes as fast as bf16 v5 does (`ideal`, keyed by (h_q, lengths)); the label on each bar is its fraction of the
    copy bandwidth."""
    plt = _plt()
    shapes = sorted({(r.h_q, r.lengths) for r in rows})
    impls = [("flashmla", "FlashMLA (bf16)", "#222222"), ("bf16_v5", "stage 4: v5, bf16 cache", STAGE_COLORS[4]),
             ("fp8", "stage 5: v5, FP8 cache", STAGE_COLORS[5]),
             ("fp8_small", "stage 5: the small tile alone", "#c9b3e6")]
    impls = [i for i in impls if any(r.impl == i[0] for r in rows)]
    fig, ax = plt.subplots(figsize=(9, 4))
    keys = [key for key, _, _ in impls]
    fp8_at = keys.index("fp8") if "fp8" in keys else 0  # the bar the dashed "ideal" line sits on
    width = _fp8_bars(ax, rows, impls, shapes, lambda r: f"{r.fraction_of_copy:.2f}", 7)
    for j, shape in enumerate(shapes):
        if ideal and shape in ideal:
            x = j + (fp8_at - (len(impls) - 1) / 2) * width
            ax.plot([x - width / 2, x + width / 2], [ideal[shape]] * 2, color="black", ls="--", lw=1.2,
                    label="FP8 if it read at bf16 v5's GB/s" if j == 0 else None)
    ax.set_xticks(range(len(shapes)), [f"h_q = {h}" + (", uneven lengths" if d != "fixed" else "")
                                       for h, d in shapes], fontsize=8)
    ax.set(ylabel="ms per call (whole call, b = 128, s_k = 4,096)", title="Stage 5's kernel today: slower than bf16 "
                                                    "(bar labels: fraction of the copy bandwidth)")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    return _done(fig)


#: The parts of each FP8 tile timed alone (the benchmark's impl names): its math, its page work, its math with the raw
#: copies but no dequantization, the tile as it runs (None: not timed for that tile).
_FP8_PARTS = {"mma": ("fp8_mma_products_alone", "fp8_mma_page_work_alone", None, "fp8_mma"),
              "seesaw": ("fp8_ws_consumers_alone", "fp8_ws_producer_alone", None, "fp8_ws"),
              "fp8ss": ("fp8_ss_consumers_alone", None, "fp8_ss_no_dequant_alone", "fp8_ss"),
              "wgr": (None, None, "fp8_wgr_no_dequant_alone", "fp8_wgr")}
_FP8_TILE_NAMES = {"mma": "16-row tile", "seesaw": "warp-specialised tile", "fp8ss": "FP8 seesaw tile",
                   "wgr": "wgmma register tile"}
#: A tile whose parts were not timed apart, and the tile whose parts stand for its own: v5_fp8_reg.py (v5's choice at
#: up to 16 rows until 2026-12-03) runs the 16-row tile's mma.sync products on the same 16 rows; its page work is not
#: split.
_FP8_PARTS_OF = {"reg": "mma"}


def fp8_tile_parts(rows: Sequence[Fp8SpeedRow], targets: dict[tuple[int, str], float] | None = None) -> Any:
    """Where the FP8 tile stage 5 runs at each shape (b = 128, s_k = 4,096) spends its time: its math alone, its
    page work (loads and dequantization) alone, both together (the tile as it runs), the bf16 lockstep tile's math
    alone and FlashMLA's bf16 call; `targets` (FlashMLA ms / ours, keyed by (h_q, lengths)) draws the time each
    target asks for. The parts alone are drawn at their GPU time (Fp8SpeedRow.kernel_ms: a short part's whole call
    can be host-bound), the tile and FlashMLA at their whole call's. The tile is the one v5 chose (the "fp8" rows'
    `tile`: the wgmma register tile at h_q 16 since 2026-12-03, the register tile before; the FP8 seesaw above since
    2026-12-03, the warp-specialised tile before; where v5 runs a tile whose parts were not timed apart, _FP8_PARTS_OF
    names the tile whose parts are drawn: for the register tile the 16-row tile's, v5_fp8_mma.py). The FP8 seesaw's
    page work cannot run alone (it copies into the slots the consumers release): its bar in that place is its math with
    the raw copies and no dequantization; the wgmma register tile has only that bar (its mode 3). Rows come from
    fp8_speed_rows(..., parts=True)."""
    plt = _plt()
    chosen = {(r.h_q, r.lengths): _FP8_PARTS_OF.get(r.tile, r.tile) for r in rows if r.impl == "fp8"}
    chosen = {shape: tile for shape, tile in chosen.items() if tile in _FP8_PARTS}
    shapes = sorted(chosen)
    generic = [("math_alone", "the math alone (the products)", "#9ecae1"),
               ("page_work_alone", "the page work alone (loads, dequantization)", "#fdae6b"),
               ("copies_no_dequant", "the math and the raw copies, no dequantization", "#9467bd"),
               ("tile", "all of it: the FP8 tile as it runs", STAGE_COLORS[5]),
               ("bf16_lockstep_compute_alone", "bf16 lockstep tile, math alone", STAGE_COLORS[4]),
               ("flashmla", "FlashMLA (bf16), whole call", "#222222")]
    picked = []  # each shape's rows under the generic names: the chosen tile's parts, then the references
    for r in rows:
        tile = chosen.get((r.h_q, r.lengths))
        if tile is None:
            continue
        ms = r.kernel_ms if r.impl.endswith("_alone") else r.ms  # a part alone: the GPU's time
        if r.impl in _FP8_PARTS[tile]:
            picked.append(replace(r, impl=generic[_FP8_PARTS[tile].index(r.impl)][0], ms=ms))
        elif r.impl in ("bf16_lockstep_compute_alone", "flashmla"):
            picked.append(replace(r, ms=ms))
    fig, ax = plt.subplots(figsize=(9, 4))
    _fp8_bars(ax, picked, generic, shapes, lambda r: f"{r.ms:.3f}", 6)
    for j, shape in enumerate(shapes):
        flash = next((r for r in rows if (r.impl, r.h_q, r.lengths) == ("flashmla", *shape)), None)
        if targets and shape in targets and flash is not None:
            ax.plot([j - 0.4, j + 0.4], [flash.ms / targets[shape]] * 2, color="red", ls="--", lw=1.2,
                    label="the time the issue's target asks for" if j == 0 else None)
    ax.set_xticks(range(len(shapes)), [f"h_q = {h}" + (", uneven lengths" if d != "fixed" else "")
                                       + f"\n{_FP8_TILE_NAMES[chosen[h, d]]}" for h, d in shapes], fontsize=8)
    ax.set(ylabel="ms per call (b = 128, s_k = 4,096)",
           title="The FP8 tiles' parts, each timed alone, beside the tile as it runs and the targets' times")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    return _done(fig)


#: The 16-row FP8 tile's parts, each alone (the benchmark's impl names), then the tile and FlashMLA.
_FP8_SPLIT_BARS = [("fp8_mma_loads_alone", "its page loads alone (into registers)", "#fdd0a2"),
                   ("fp8_mma_dequant_alone", "its dequantization alone", "#e6550d"),
                   ("fp8_mma_page_work_alone", "its page work alone (both)", "#fdae6b"),
                   ("fp8_mma_products_alone", "its products alone", "#9ecae1"),
                   ("fp8_mma", "the 16-row tile as it runs", STAGE_COLORS[5]),
                   ("flashmla", "FlashMLA (bf16), whole call", "#222222")]


def fp8_page_work_split(rows: Sequence[Fp8SpeedRow], shapes: Sequence[tuple[int, str]] = ((16, "fixed"),)) -> Any:
    """The 16-row FP8 tile's time at h_q 16 (b = 128, s_k = 4,096) split into its parts, each timed alone: the page
    loads, the dequantization, both (the page work), the products; beside the tile as it runs and FlashMLA's bf16
    call. Rows come from results.fp8_page_work_rows()."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4))
    _fp8_bars(ax, rows, _FP8_SPLIT_BARS, list(shapes), lambda r: f"{r.ms:.3f}", 7)
    ax.set_xticks(range(len(shapes)), [f"h_q = {h}" + (", uneven lengths" if d != "fixed" else "")
                                       for h, d in shapes], fontsize=8)
    ax.set(ylabel="ms per call (b = 128, s_k = 4,096)",
           title="The 16-row FP8 tile's parts alone: its loads bind its page work, and the parts run in series")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    return _done(fig)


#: the FP8 seesaw probe's bars: (impl, label, color)
_FP8_SEESAW_BARS = [("fp8ss_compute", "its consumers alone (no page copied)", "#9ecae1"),
                    ("fp8ss_nodeq", "raw rows copied, nothing dequantized", "#4292c6"),
                    ("fp8ss_quarter", "a quarter of each page dequantized", "#2171b5"),
                    ("fp8ss", "the FP8 seesaw tile", "#d62728"),
                    ("v5_fp8", "warp-specialised tile (v5's FP8 choice then)", "#ff9896"),
                    ("v5", "bf16 v5", "#2ca02c"),
                    ("flashmla", "FlashMLA, bf16", "#7f7f7f")]


def fp8_seesaw_parts(rows: Sequence[ProbeTiming], targets: dict[int, float] | None = None) -> Any:
    """The FP8 seesaw tile (v5_fp8_seesaw.py) at each shape of its probe, beside its parts (consumers alone, the raw
    copies with no dequantization, a quarter of the dequantization), v5's FP8 choice, bf16 v5 and FlashMLA; with
    `targets` ({h_q: issue 9's FlashMLA / ours at s_k 4k}) a dashed line at the time each target asks for. Rows come
    from results.fp8_seesaw_parts()."""
    plt = _plt()
    shapes = sorted({(r.h_q, r.s_q, r.s_k) for r in rows}, key=lambda k: (k[2] != 4096, k))
    fig, ax = plt.subplots(figsize=(10, 4.2))
    _fp8_bars(ax, rows, _FP8_SEESAW_BARS, shapes, lambda r: f"{r.vs_flashmla:.2f}", 6,
              shape_of=lambda r: (r.h_q, r.s_q, r.s_k), rotation=90)
    for i, (h_q, s_q, s_k) in enumerate(shapes):
        fm = next((r.ms for r in rows if r.impl == "flashmla" and (r.h_q, r.s_q, r.s_k) == (h_q, s_q, s_k)), None)
        if targets and h_q in targets and s_k == 4096 and s_q == 1 and fm is not None:
            ax.hlines(fm / targets[h_q], i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                      label="issue 9's target" if i == 0 else None)
    ax.set_xticks(range(len(shapes)), [f"h_q {h}, s_k {k // 1024}k" + (f", s_q {q}" if q > 1 else "")
                                       for h, q, k in shapes], fontsize=8)
    ax.set_ylim(0, max(r.ms for r in rows) * 1.3)
    ax.set(ylabel="ms per call (b = 128); above each bar: FlashMLA / it",
           title="The FP8 seesaw tile: free dequantization would still miss 1.2× at 64 heads")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    return _done(fig)


def host_time_bars(rows: Sequence[HostPlanRow]) -> Any:
    """Per call shape: the host time of a v5 call through the full path and replayed from its call plan, beside the
    device time of the call's kernels (and FlashMLA's). While the host takes longer than the device, the GPU waits for
    Python; below it, the launches run ahead and the whole call costs what its kernels cost. Rows come from
    results.host_plan_rows()."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4))
    bars = [("full_path_us", "host, full path (checks, routing, launch packing)", "#d62728"),
            ("planned_us", "host, replayed from the call plan", "#2ca02c"),
            ("gpu_us", "GPU, the call's kernels", "#1f77b4"),
            ("flashmla_gpu_us", "GPU, FlashMLA's kernels", "#7f7f7f")]
    width = 0.8 / len(bars)
    for j, (field, label, color) in enumerate(bars):
        xs = [i + (j - (len(bars) - 1) / 2) * width for i in range(len(rows))]
        values = [getattr(r, field) for r in rows]
        shown = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        ax.bar([x for x, _ in shown], [v for _, v in shown], width, color=color, label=label)
        for x, v in shown:
            ax.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), [r.label for r in rows], fontsize=8)
    top = max(v for r in rows for v in (r.full_path_us, r.planned_us, r.gpu_us, r.flashmla_gpu_us) if v is not None)
    ax.set_ylim(0, top * 1.4)  # (room for the legend above the bars)
    ax.set(ylabel="µs per call (b = 128, s_k = 1,024)",
           title="A v5 call: Python on the host against the kernels on the GPU")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7, ncol=2, loc="upper center")
    return _done(fig)


#: the seesaw pair's phases, by kind: (color, hatch)
PHASE_STYLE = {"waits for pages": ("#bbbbbb", None), "scores": ("#4C72B0", None), "softmax": ("#DD8452", None),
               "products": ("#55A868", None), "waits for the other warpgroup": ("#e8e8e8", "//")}


def seesaw_pair_timeline(phases: Sequence[PairPhase], periods: dict[str, int]) -> Any:
    """One page pair of the seesaw tile per traced config, one lane per partition, from the tile's own cycle stamps
    (results.seesaw_pair_phases): what each warpgroup does when, and when the producer asks for the next pair's half
    pages (triangles). The dashed line is where warpgroup 0 starts the next pair. Boxes marked ¹: the scores' first
    half, issued while the second half's copy is still awaited (so they include that wait)."""
    plt = _plt()
    configs = [c for c in ("hoist", "tile") if c in periods] + [c for c in periods if c not in ("hoist", "tile")]
    lanes = ["warpgroup 0", "warpgroup 1", "producer"]
    end = max(max(p.end for p in phases), max(periods.values())) * 1.05
    fig, axes = plt.subplots(len(configs), 1, figsize=(10, 1.7 * len(configs) + 0.8), sharex=True, squeeze=False)
    titles = {"hoist": "descriptors spilled and reloaded (before)", "tile": "descriptors rebuilt where used (now)"}
    for ax, config in zip(axes[:, 0], configs, strict=True):
        for p in (p for p in phases if p.config == config):
            y = len(lanes) - 1 - lanes.index(p.lane)
            if p.kind == "asks":
                ax.plot([p.start], [y + 0.5], marker="v", color="black", markersize=6)
                ax.text(p.start, y + 0.8, p.label, ha="center", va="bottom", fontsize=7)
                continue
            color, hatch = PHASE_STYLE[p.kind]
            wide = p.end - p.start > 0.06 * end
            _box(ax, p.start, y + 0.1, p.end - p.start, 0.8, color, p.label if wide else None, hatch=hatch,
                 fontsize=7, textcolor="black" if p.kind.startswith("waits") else "white")
        ax.axvline(periods[config], color="black", linestyle="--", linewidth=1)
        ax.text(periods[config], len(lanes) + 0.05, f" next pair: {periods[config]:,} cycles", fontsize=8,
                va="bottom")
        ax.set_yticks([len(lanes) - 1 - i + 0.5 for i in range(len(lanes))], lanes, fontsize=8)
        ax.set_ylim(0, len(lanes) + 0.6)
        ax.set_title(titles.get(config, config), fontsize=9, loc="left")
    axes[-1, 0].set_xlim(0, end)
    axes[-1, 0].set_xlabel("SM cycles from warpgroup 0's start of the pair")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, hatch=h, edgecolor="black", label=k) for k, (c, h) in PHASE_STYLE.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("The seesaw tile, one page pair at h_q 64, s_k 4k, b 128 (its own %clock64 stamps)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    plt.close(fig)
    return fig


def program_timeline(trace: WgrTrace, flashmla_us: float | None = None, target: float | None = None) -> Any:
    """Every program of a stamped call of the wgmma register tile (results.wgr_trace), one thin bar each, sorted by
    when it ends: from its entry until its first page is in (orange), then its pages and its stores (green). The
    dashed lines mark the median program's end and the last one's (the kernel's end); `flashmla_us`, if given, marks
    FlashMLA's bf16 kernel at the same shape (results.kernel_split_us) and with `target` (a ratio, FlashMLA / ours)
    the time that ratio asks of the tile (FlashMLA's kernel over the ratio)."""
    plt = _plt()
    spans = trace.spans
    fig, ax = plt.subplots(figsize=(10, 4.2))
    y = list(range(len(spans)))
    ax.barh(y, [p.first_landed - p.entry for p in spans], left=[p.entry for p in spans], height=1.0,
            color=STAGE_COLORS[1], label="entry to its first page in (schedule row, length, block id, the copy)")
    ax.barh(y, [p.exit - p.first_landed for p in spans], left=[p.first_landed for p in spans], height=1.0,
            color=STAGE_COLORS[5], label=f"its pages ({spans[len(spans) // 2].pages} here), then its stores")
    median_exit = sorted(p.exit for p in spans)[len(spans) // 2]
    last = spans[-1].exit
    for x, text in ((median_exit, f"median program ends: {median_exit:.1f} µs"), (last, f"last ends: {last:.1f} µs")):
        ax.axvline(x, color="black", linestyle="--", linewidth=1)
        ax.text(x, len(spans) * (0.06 if x == last else 0.16), f" {text}", fontsize=8, ha="right" if x == last else
                "left" if x < last * 0.8 else "right", rotation=0)
    target_us = flashmla_us / target if flashmla_us and target else None
    for x, text, color, at in ((flashmla_us, "FlashMLA's bf16 kernel", "#222222", 0.55),
                               (target_us, f"FlashMLA's kernel / {target}", "#C44E52", 0.75)):
        if x is not None:
            ax.axvline(x, color=color, linewidth=1.5)
            ax.text(x, len(spans) * at, f"{text}: {x:.0f} µs ", fontsize=8, color=color, ha="right",
                    backgroundcolor="white")
    ax.set_ylim(-0.5, len(spans) - 0.5)
    ax.set_yticks([])
    ax.set_ylabel(f"{len(spans)} programs, by end")
    ax.set_xlim(0, max(last, flashmla_us or 0, target_us or 0) * 1.05)
    ax.set_xlabel("µs from the first program's entry (the tile's own %globaltimer stamps; they slow it by a few %)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"The wgmma register FP8 tile, h_q 16, b 128, s_k {trace.s_k:,} ({trace.lengths} lengths): "
                 "when each program works", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


__all__ = ["ablation_chart", "capacity_and_cost", "combine_weights", "fp8_page_work_split", "fp8_row",
           "fp8_speed_bars", "fp8_tile_parts",
           "head_tile", "host_time_bars", "kernel_roofline", "latency_panels", "program_timeline", "schedule_timeline",
           "seesaw_pair_timeline", "stage_roofline", "warpgroup_split"]
