"""The committed GPU results (`docs/results/*.json`) as tidy rows, for notebooks 05–07.

Each benchmark writes its own JSON layout (docs/results/README.md lists them). This module reads them into flat,
typed rows so that a notebook cell is one loop over rows, not a walk through nested dictionaries:

    kernel_run(name)        a kernel benchmark, either format: v4-era (`kernels_h100/h200_2026-11-27`, the API's
                            kernel under `flash_mla_with_kvcache`) or current (`kernels_v5_*`, `flashmla`/`v5`/...);
                            implementation names are normalised to v1 … v5, flashmla, torch_paged
    decode_rows(name)       one decode step of a stage (the tour's file and the stage benchmark's files alike)
    capacity_rows(name)     sequences per GPU, per stage (arithmetic, stage 5 included)
    fp8_speed_rows(name)    the FP8 path beside bf16 v5 and FlashMLA (fp8_bench_*)
    fp8_row_errors(name), fp8_attention_errors(name), fp8_decoder_rows(name)    fp8_accuracy_* (CPU)
    ablation_steps()        the kernel ladder v1 → v5 told at the shapes where each idea pays

`name` is a file name under docs/results (found from the working directory upwards, or from this package's
checkout), a path, or an already-loaded dict (what `python -m mla_tutorial bench` returns, for live runs).
A missing file raises `ResultsMissing` saying where it looked and how the file is produced; a file of another
format raises ValueError naming the file and what was expected. Nothing here measures anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------- the committed files
KERNELS_V5 = "kernels_v5_h200_2026-12-02.json"  # v5 beside FlashMLA; v1–v5 and torch at the ablation shapes
KERNELS_V5_SEESAW = "kernels_v5_seesaw_h200_2026-12-02.json"  # v5 with its seesaw tile, the lockstep tile, FlashMLA
KERNELS_V5_PLANS = "kernels_v5_plans_h200_2026-12-02.json"  # the same with call plans and the combine's two shapes
#: the same after the twelfth session's seesaw changes (no spilled descriptors, m_A first, Q by cp.async)
KERNELS_V5_QASYNC = "kernels_v5_qasync_h200_2026-12-02.json"
#: the same on the schedule's even cut of one line of units (the schedule then), FlashMLA's payload rule beside it
KERNELS_V5_EVEN = "kernels_v5_even_h200_2026-12-03.json"
#: the same with the seesaw tile's 16-byte stores (store_lines, the default since)
KERNELS_V5_LINES = "kernels_v5_lines_h200_2026-12-03.json"
#: the same on FlashMLA's walk (the schedule since; 5 units a piece for 64-row tiles, 2 for the small tile)
KERNELS_V5_WALK = "kernels_v5_walk_h200_2026-12-03.json"
#: the same with Q copied by the seesaw tile's producer (Q_TMA), every implementation timed in three rounds of
#: changing order (the median kept): the newest
KERNELS_V5_QTMA = "kernels_v5_qtma_h200_2026-12-03.json"
#: v5 and v5 on the FP8 cache at issue 8's and 9's shapes with an FP8 cache above 16 rows on the FP8 seesaw tile
#: (eighteenth session; three rounds): issue 9's targets as the docs quote them
KERNELS_V5_FP8SS = "kernels_v5_fp8ss_h200_2026-12-03.json"
#: the same with an FP8 cache at up to 16 rows on the wgmma register tile (v5_fp8_wgr.py) with its page work in fp16
#: and the guard of fp16's range (MODE 4, v5's default since the twenty-fourth session; three rounds): issue 9's
#: targets as the docs quote them now (the tile's page work in bf16: kernels_v5_fp8wgr_h200_2026-12-03.json)
KERNELS_V5_FP8WGR = "kernels_v5_fp8wgr4_h200_2026-12-04.json"
HOST_PLANS = "host_time_plans_h200_2026-12-02.json"  # host time of a v5 call, planned against the full path
#: the seesaw tile's cycle stamps at h_q 64, s_k 4k, b 128: the tile and `hoist` (its descriptors spilled, as before
#: the twelfth session), in docs/results/probes (scripts/gpu_seesaw_trace.py)
SEESAW_TRACE = "seesaw_trace_opaque_h200_2026-12-02.json"
#: the wgmma register tile's own %globaltimer stamps at h_q 16, b 128, s_k 64 / 256 / 1k / 4k (twenty-second session),
#: in docs/results/probes (scripts/gpu_wgr_trace.py)
WGR_TRACE = "wgr_trace_h200_2026-12-03.json"
#: torch.profiler's device time of each kernel of v5's FP8 call and FlashMLA's bf16 call at h_q 16, b 128, s_k 64-8k
#: (twenty-second session), in docs/results/probes (scripts/gpu_kernel_split.py --fp8-h16)
KERNEL_SPLIT_FP8_H16 = "kernel_split_fp8_h16_rerun_h200_2026-12-03.json"
#: the wgmma register tile's page work in fp16 (MODE 4, opt-in then) and with no dequantization (MODE 3) timed beside
#: it and FlashMLA in rounds, and their errors against the fp32 reference (scripts/gpu_wgr_trace.py, twenty-third
#: session)
WGR_MODES = "wgr_f16_first_page_h200_2026-12-04.json"
WGR_MODES_ACCURACY = "wgr_f16_first_page_accuracy_h200_2026-12-04.json"
#: the same rounds with MODE 4's guard of fp16's range on and off (twenty-fourth session; "_normal_" beside it: the
#: ~N(4096, 2048) lengths): what made MODE 4 v5's default
WGR_GUARD_RUN = "wgr_guard_h200_2026-12-04.json"
WGR_GUARD_RUN_NORMAL = "wgr_guard_normal_h200_2026-12-04.json"
KERNELS_V4_H100 = "kernels_h100_2026-11-27.json"  # v1–v4 on FlashMLA's shape grid, H100
KERNELS_V4_H200 = "kernels_h200_2026-11-27.json"  # the same on an H200
DECODE_TOUR = "decode_tour_deepseek-v3_h200_2026-12-01.json"  # stages 0–4, b 64, S 4k/16k, 128 and 16 heads
DECODE_BENCH_V4 = "decode_bench_deepseek-v3_h200_2026-12-01.json"  # stages 2, 4 (v4), b 1/8/64, S 4k, graphs on/off
DECODE_BENCH_V5 = "decode_bench_v5_deepseek-v3_h200_2026-12-02.json"  # the same with stage 4 on v5
#: the same again with v5's seesaw tile on FlashMLA's walk and Q_TMA (sixteenth session): the newest decode step
DECODE_BENCH_V5_QTMA = "decode_bench_v5qtma_deepseek-v3_h200_2026-12-03.json"
#: stages 4 and 5, b 64, S 4k, 128 and 16 heads, with stage 5 on the FP8 seesaw above 16 rows (the README's stage 5)
DECODE_BENCH_FP8SS = "decode_bench_fp8ss_deepseek-v3_h200_2026-12-03.json"
#: the same with stage 5 on the wgmma register tile at 16 heads, its page work in fp16 (MODE 4; the README's stage 5
#: now; with the page work in bf16: decode_bench_fp8wgr_deepseek-v3_h200_2026-12-03.json)
DECODE_BENCH_FP8WGR = "decode_bench_fp8wgr4_deepseek-v3_h200_2026-12-04.json"
#: the same shapes with the append as one kernel in stages 4 and 5 (kernels/append.py, twenty-fifth session: the
#: README's stages 4 and 5 now), and from the same call just before it, the torch append (in docs/results/probes)
DECODE_BENCH_APPEND = "decode_bench_append_deepseek-v3_h200_2026-12-04.json"
DECODE_BENCH_TORCH_APPEND = "decode_bench_torch_append_deepseek-v3_h200_2026-12-04.json"
#: both appends profiled at 16 heads (torch.profiler, eager: kernels and device time per step; docs/results/probes)
DECODE_PROFILE_APPEND = "decode_profile_append_h200_2026-12-04.json"
DECODE_PROFILE_TORCH_APPEND = "decode_profile_torch_append_h200_2026-12-04.json"
DECODE_COVERAGE = "decode_coverage_deepseek-v3_h200_2026-12-02.json"  # stages 2, 4 (v4), b 8/64, S 1k/16k
DECODE_PROFILE = "decode_profile_deepseek-v3_h200_2026-12-02.json"  # torch.profiler per step, b 1/64
ROOFLINE = "roofline_deepseek-v3_h200_2026-12-01.json"  # stages 2–4 under the measured ceilings
CAPACITY = "capacity_deepseek-v3_141GB.json"  # sequences per 141 GB GPU at 32k tokens (arithmetic)
FP8_ACCURACY = "fp8_accuracy_cpu_2026-12-01.json"  # scripts/fp8_accuracy.py (CPU)
#: scripts/gpu_fp8_bench.py --mma --parts (H200; v5 on the wgmma register tile at up to 16 rows, its page work in
#: fp16 with the guard (MODE 4), the FP8 seesaw above; with the page work in bf16: fp8_bench_wgr_h200_2026-12-03)
FP8_BENCH = "fp8_bench_wgr4_h200_2026-12-04.json"
#: The 16-row FP8 tile's page work split into its loads and its dequantization, each alone (docs/results/probes/;
#: scripts/gpu_fp8_bench.py --quick --mma --parts --heads 16, H200)
FP8_SPLIT = "fp8_mma_page_work_split_h200_2026-12-02.json"
#: The FP8 seesaw tile (v5_fp8_seesaw.py) and its parts beside v5's FP8 choice, bf16 v5 and FlashMLA (docs/results/
#: probes/; scripts/gpu_fp8_seesaw_probe.py --variants early2,nodeq,quarter, H200)
FP8_SEESAW_PARTS = "fp8_seesaw_parts_h200_2026-12-03.json"
#: A 4-layer decoder's step with the kernel's schedule made once a step (mla_tutorial.step) against once a layer
#: (scripts/gpu_step_schedule.py, H200)
STEP_SCHEDULE = "step_schedule_h200_2026-12-03.json"

#: How each committed file is produced (said when it is missing).
PRODUCED_BY = {
    "kernels_": "`make bench` / `python -m mla_tutorial bench --kernel --out ...` on a GPU",
    "decode_tour": "`python -m mla_tutorial tour --device cuda` (scripts/gpu_decode.sh)",
    "decode_": "`python -m mla_tutorial bench --heads 128 16 ... --out ...` (scripts/gpu_decode.sh)",
    "roofline_": "`python -m mla_tutorial roofline` on a GPU (scripts/gpu_decode.sh)",
    "capacity_": "`python -m mla_tutorial memory --config deepseek-v3 --context 32768 --gpu-memory-gb 141 --json`",
    "fp8_accuracy": "`scripts/fp8_accuracy.py` (CPU)",
    "fp8_bench": "`scripts/gpu_fp8_bench.py` on a GPU",
    "fp8_seesaw": "`scripts/gpu_fp8_seesaw_probe.py` on a GPU",
    "host_time": "`scripts/gpu_host_profile.py --plans` and `scripts/gpu_kernel_split.py` on a GPU",
    "step_schedule": "`scripts/gpu_step_schedule.py` on a GPU",
}

#: Which stage-4 kernel served the decode-step files (the README's provenance: branch issue6-decode ran v4).
STAGE4_KERNEL = {DECODE_BENCH_V5: "v5", DECODE_BENCH_V5_QTMA: "v5", DECODE_BENCH_FP8SS: "v5", DECODE_BENCH_FP8WGR: "v5",
                 DECODE_BENCH_APPEND: "v5", DECODE_BENCH_TORCH_APPEND: "v5", DECODE_PROFILE_APPEND: "v5",
                 DECODE_PROFILE_TORCH_APPEND: "v5"}

#: v4-era implementation names -> the names used everywhere here.
IMPL_ALIASES = {"flash_mla_with_kvcache": "v4", "v3_split_kv": "v3", "v2_head_tiled": "v2", "v1_naive": "v1"}

#: Display names, in ladder order.
IMPL_LABELS = {
    "torch_paged": "stage 3 (torch)",
    "v1": "v1 naive",
    "v2": "v2 head-tiled",
    "v3": "v3 split-KV",
    "v4": "v4 balanced",
    "v5_lockstep": "v5 (lockstep tile)",
    "v5": "v5",
    "v5_checked": "v5 (bounds checked)",
    "flashmla": "FlashMLA",
}


class ResultsMissing(FileNotFoundError):
    """A committed results file (or docs/results itself) is not where it should be."""


# --------------------------------------------------------------------------------------------- finding and loading
def results_dir(start: Path | str | None = None) -> Path:
    """docs/results: searched from `start` (default: the working directory) upwards, then from this checkout."""
    here = Path(start) if start is not None else Path.cwd()
    candidates = [d / "docs" / "results" for d in [here, *here.parents]]
    candidates.append(Path(__file__).resolve().parents[3] / "docs" / "results")  # src/mla_tutorial/course -> root
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise ResultsMissing(f"no docs/results folder above {here} or in this package's checkout "
                         f"({candidates[-1]}): the committed GPU results live there (docs/results/README.md)")


def _produced_by(name: str) -> str:
    return next((how for prefix, how in PRODUCED_BY.items() if name.startswith(prefix)),
                "the command given in docs/results/README.md")


def load(source: str | Path | dict, directory: Path | str | None = None) -> dict:
    """The parsed JSON of `source`: a file name in docs/results, a path, or a dict (returned as it is)."""
    if isinstance(source, dict):
        return source
    if not isinstance(source, (str, Path)):
        raise TypeError(f"source must be a file name, a path or a dict, got {type(source).__name__}")
    path = Path(source)
    if not path.is_absolute() and not path.exists():
        path = Path(directory) / path if directory is not None else results_dir() / path.name
    if not path.is_file():
        raise ResultsMissing(f"{path.name}: no such file in {path.parent}; it is produced by "
                             f"{_produced_by(path.name)} (docs/results/README.md lists the committed files)")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _name(source: str | Path | dict) -> str:
    return Path(source).name if isinstance(source, (str, Path)) else str(source.get("name", "(a result dict)"))


def _need(data: dict, keys: tuple[str, ...], name: str, what: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{name}: not {what} (missing key(s) {missing}; top-level keys {sorted(data)[:10]})")


# --------------------------------------------------------------------------------------------- ceilings
@dataclass(frozen=True)
class Ceilings:
    """The two roofs measured in the same run as the numbers under them."""

    copy_gbps: float  # a large device-to-device copy, bytes read + written per second / 1e9
    matmul_tflops: float  # an 8192³ bf16 matmul
    card: str

    @property
    def ridge(self) -> float:
        """FLOP per byte above which a kernel is compute-bound on this machine."""
        return self.matmul_tflops * 1e12 / (self.copy_gbps * 1e9)

    def floor_ms(self, flops: float, nbytes: float) -> float:
        """The least time a call of `flops` and `nbytes` can take under these roofs."""
        return max(nbytes / (self.copy_gbps * 1e9), flops / (self.matmul_tflops * 1e12)) * 1e3


def ceilings(source: str | Path | dict) -> Ceilings:
    """The ceilings of any committed file (kernel benchmarks, decode benchmarks, the FP8 benchmark)."""
    data, name = load(source), _name(source)
    card = (data.get("device_info") or data.get("environment") or data.get("env", {}).get("info") or {}).get(
        "card", data.get("device_name", "?"))
    roof = data.get("roofline")
    if isinstance(roof, dict) and "copy_gbps" in roof:
        return Ceilings(float(roof["copy_gbps"]), float(roof["matmul_tflops"]), card)
    if isinstance(roof, dict) and "bytes_per_s" in roof:
        return Ceilings(roof["bytes_per_s"] / 1e9, roof["flops_per_s"] / 1e12, card)
    env = data.get("env")
    if isinstance(env, dict) and "copy_gbps" in env:
        return Ceilings(float(env["copy_gbps"]), float(env["matmul_tflops"]), card)
    raise ValueError(f"{name}: no measured ceilings (expected 'roofline' with copy_gbps/matmul_tflops or "
                     f"bytes_per_s/flops_per_s, or 'env' with copy_gbps)")


# --------------------------------------------------------------------------------------------- kernel benchmarks
@dataclass(frozen=True)
class KernelRow:
    """One implementation at one shape of a kernel benchmark (whole call, do_bench median, L2 flushed)."""

    source: str
    card: str
    impl: str  # v1 … v5, v5_checked, flashmla, torch_paged
    b: int
    h_q: int
    s_q: int
    causal: bool
    s_k: int
    lengths: str  # "fixed" or "normal" (~ N(s_k, s_k/2))
    mean_sk: float
    bytes: float  # FlashMLA's formula: b·(s_q·h_q·576·2 + mean_sk·576·2 + s_q·h_q·512·2)
    flops: float  # 2·b·h_q·s_q·mean_sk·(576 + 512)
    ms: float
    graph_ms: float | None  # a CUDA-graph replay of the same call (v5 and FlashMLA in the current format)
    gbps: float
    tflops: float
    frac_copy: float
    frac_matmul: float
    tile: str | None = None  # which v5 tile ran ("small", "gluon", "v4"), for v5 rows

    @property
    def intensity(self) -> float:
        """FLOP per byte of the call."""
        return self.flops / self.bytes

    @property
    def roofline_fraction(self) -> float:
        """The larger of its fractions of the copy bandwidth and of the matmul rate: of whichever roof binds."""
        return max(self.frac_copy, self.frac_matmul)

    @property
    def shape(self) -> str:
        text = f"b={self.b}, h_q={self.h_q}, s_q={self.s_q}, s_k={self.s_k:,}"
        return text + (", uneven" if self.lengths != "fixed" else "") + (", causal" if self.causal else "")

    def matches(self, **where: Any) -> bool:
        return all(getattr(self, key) == value for key, value in where.items())


@dataclass(frozen=True)
class KernelRun:
    """A kernel benchmark file: its card, date, ceilings, rows and targets."""

    source: str
    card: str
    date: str
    ceilings: Ceilings
    rows: list[KernelRow]
    targets: list[dict] = field(default_factory=list)
    fmt: str = "v5"  # "v5" (kernels_v5_*) or "v4" (the v4-era files)

    @property
    def impls(self) -> list[str]:
        """The implementations present, in ladder order."""
        present = {r.impl for r in self.rows}
        return [k for k in IMPL_LABELS if k in present] + sorted(present - set(IMPL_LABELS))

    def select(self, **where: Any) -> list[KernelRow]:
        return [r for r in self.rows if r.matches(**where)]

    def find(self, impl: str, **where: Any) -> KernelRow:
        """The one row of `impl` at the shape `where` (b=, h_q=, s_q=, s_k=, lengths=); KeyError if none."""
        where = {"s_q": 1, "lengths": "fixed"} | where
        rows = self.select(impl=impl, **where)
        if len(rows) != 1:
            have = sorted({(r.b, r.h_q, r.s_q, r.s_k, r.lengths) for r in self.select(impl=impl)})
            raise KeyError(f"{self.source}: {len(rows)} rows of {impl!r} at {where}; "
                           f"{impl!r} was measured at (b, h_q, s_q, s_k, lengths) = {have}")
        return rows[0]


def kernel_run(source: str | Path | dict = KERNELS_V5) -> KernelRun:
    """A kernel-benchmark file (either format) as a KernelRun."""
    data, name = load(source), _name(source)
    _need(data, ("rows", "roofline"), name, "a kernel-benchmark file")
    rows_in = data["rows"]
    if not isinstance(rows_in, list) or not all(isinstance(r, dict) and isinstance(r.get("impl"), dict)
                                                for r in rows_in):
        raise ValueError(f"{name}: not a kernel-benchmark file ('rows' must be a list of objects with 'impl')")
    info = data.get("device_info", {})
    card = info.get("card", "?")
    fmt = "v4" if any("flash_mla_with_kvcache" in r["impl"] for r in rows_in) else "v5"
    rows = []
    for r in rows_in:
        tile = r.get("v5_tile", [None])[0] if isinstance(r.get("v5_tile"), list) else None
        for impl_name, m in r["impl"].items():
            if not isinstance(m, dict) or "ms" not in m:
                continue  # skipped at this shape (the reason is in the file)
            impl = IMPL_ALIASES.get(impl_name, impl_name)
            rows.append(KernelRow(
                source=name, card=card, impl=impl, b=int(r["b"]), h_q=int(r["h_q"]), s_q=int(r.get("s_q", 1)),
                causal=bool(r.get("causal", False)), s_k=int(r["s_k"]), lengths=str(r.get("lengths", "fixed")),
                mean_sk=float(r.get("mean_sk", r["s_k"])), bytes=float(r["bytes"]), flops=float(r["flops"]),
                ms=float(m["ms"]), graph_ms=float(m["graph_ms"]) if m.get("graph_ms") is not None else None,
                gbps=float(m.get("gbps", 0.0)), tflops=float(m.get("tflops", 0.0)),
                frac_copy=float(m.get("frac_copy", 0.0)), frac_matmul=float(m.get("frac_matmul", 0.0)),
                tile="gluon" if impl == "v5_lockstep" else tile if impl.startswith("v5") else None))
    targets = [t for t in data.get("targets", []) if isinstance(t, dict)]
    return KernelRun(source=name, card=card, date=str(info.get("date_utc", "?"))[:10], ceilings=ceilings(data),
                     rows=rows, targets=targets, fmt=fmt)


# --------------------------------------------------------------------------------------------- the ablation
@dataclass(frozen=True)
class AblationStep:
    """One rung of the ladder at a shape where it pays (or, for `pays=False`, where it does not)."""

    idea: str
    before: KernelRow
    after: KernelRow
    why: str
    pays: bool = True

    @property
    def speedup(self) -> float:
        return self.before.ms / self.after.ms


#: (idea, file, shape, before, after, why, pays): each rung at the shape where the committed results show it pay.
ABLATION: list[tuple[str, str, dict, str, str, str, bool]] = [
    ("head tiling", KERNELS_V4_H200, {"b": 128, "h_q": 16, "s_k": 4096}, "v1", "v2",
     "v1 reads every page once per query head (16 times here); v2 stacks the 16 heads into one tile and reads each "
     "page once, with tensor-core dots", True),
    ("split-KV", KERNELS_V5, {"b": 1, "h_q": 16, "s_k": 32768}, "v2", "v3",
     "one request is one program: v2 streams 512 pages through one of 132 SMs; v3 cuts the keys into splits that "
     "run on many SMs and merges them by log-sum-exp", True),
    ("split-KV", KERNELS_V5, {"b": 1, "h_q": 128, "s_k": 32768}, "v2", "v3",
     "the same at 128 heads: two 64-row tiles are still only two programs", True),
    ("balanced schedule", KERNELS_V5, {"b": 128, "h_q": 16, "s_k": 4096, "lengths": "normal"}, "v3", "v4",
     "lengths ~ N(4096, 2048): v3 gives every request the same number of splits, so the longest requests finish "
     "last; v4 cuts the batch's total work into equal pieces, one per program", True),
    ("Gluon tile", KERNELS_V5, {"b": 128, "h_q": 128, "s_k": 4096}, "v4", "v5",
     "v4's 64-row tile computes the score tile twice (both warpgroups) and spills; v5's Gluon tile splits the "
     "scores by keys and the output by columns between the warpgroups: 40 wgmma per page against 76, no spills",
     True),
    ("warp specialisation (seesaw)", KERNELS_V5_SEESAW, {"b": 128, "h_q": 128, "s_k": 4096}, "v5_lockstep", "v5",
     "the lockstep tile's two warpgroups do every phase of every page together; the seesaw tile gives the copies "
     "to a producer warp and lets each warpgroup compute the scores of its own page while the other runs its "
     "softmax", True),
    ("small tile", KERNELS_V5, {"b": 128, "h_q": 16, "s_k": 4096}, "v4", "v5",
     "at 16 rows v5 runs a register-lean plain-Triton tile that walks the 576 columns in chunks", True),
    ("split-KV and schedule at a full, even batch", KERNELS_V4_H200, {"b": 128, "h_q": 16, "s_k": 4096}, "v2", "v4",
     "128 equal requests already fill the GPU: splitting adds partial results and a combine, and buys nothing",
     False),
]


def ablation_steps() -> list[AblationStep]:
    """The ladder v1 → v5, each idea at a shape where it pays (and one where it does not), from the files."""
    runs: dict[str, KernelRun] = {}
    steps = []
    for idea, name, where, before, after, why, pays in ABLATION:
        run = runs.setdefault(name, kernel_run(name))
        steps.append(AblationStep(idea, run.find(before, **where), run.find(after, **where), why, pays))
    return steps


# --------------------------------------------------------------------------------------------- decode steps
@dataclass(frozen=True)
class DecodeRow:
    """One decode step of one stage (one DeepSeek-V3 attention layer) at one shape, from a stage benchmark."""

    source: str
    card: str
    stage: int
    name: str  # NaiveMHA, LatentMLA, AbsorbedMLA, PagedMLA, TritonMLA (FP8MLA when benchmarked)
    heads: int
    batch: int
    context: int
    graph: bool  # replayed from a CUDA graph
    latency_ms: float  # median step time
    host_ms: float | None  # host time per step (eager runs)
    tokens_per_s: float
    usd_per_million_tokens: float  # this layer × the model's layers (61), at usd_per_gpu_hour
    usd_per_gpu_hour: float
    roofline_ms: float  # the floor: max(bytes / copy, FLOPs / matmul) of the whole step
    times_floor: float
    roofline_fraction: float
    intensity: float  # FLOP per byte of the whole step (weights + cache + activations)
    achieved_tflops: float
    achieved_gbps: float
    bound: str  # "memory" or "compute"
    step_bytes: float
    step_flops: float
    kernel: str | None = None  # the stage-4 kernel version behind this file (v4 or v5)
    device_ms: float | None = None  # profile files: GPU time per step
    launches: float | None = None  # profile files: GPU kernels per step
    attention_kernel_ms: float | None = None  # profile files: the attention kernel's share

    @property
    def label(self) -> str:
        return f"stage {self.stage} {self.name}" + (f" ({self.kernel})" if self.kernel and self.stage == 4 else "")


def _decode_row(record: dict, name: str, card: str, kernel: str | None) -> DecodeRow:
    profile = record.get("profile") if isinstance(record.get("profile"), dict) else {}
    attention = next((k["ms_per_step"] for k in profile.get("top_kernels", []) if "mla_decode" in k.get("name", "")),
                     None)
    return DecodeRow(
        source=name, card=card, stage=int(record["stage"]), name=str(record["name"]), heads=int(record["heads"]),
        batch=int(record["batch"]), context=int(record["context"]), graph=bool(record["graph"]),
        latency_ms=float(record["latency_ms"]),
        host_ms=float(record["host_ms"]) if record.get("host_ms") is not None else None,
        tokens_per_s=float(record["tokens_per_s"]),
        usd_per_million_tokens=float(record.get("usd_per_million_tokens_model") or record["usd_per_million_tokens"]),
        usd_per_gpu_hour=float(record["usd_per_gpu_hour"]), roofline_ms=float(record["roofline_ms"]),
        times_floor=float(record["times_floor"]), roofline_fraction=float(record["roofline_fraction"]),
        intensity=float(record["intensity_flop_per_byte"]), achieved_tflops=float(record["achieved_tflop_per_s"]),
        achieved_gbps=float(record["achieved_gb_per_s"]), bound=str(record["bound"]),
        step_bytes=float(record["bytes"]), step_flops=float(record["flops"]),
        kernel=kernel if int(record["stage"]) >= 4 else None,
        device_ms=profile.get("device_ms_per_step"), launches=profile.get("device_launches_per_step"),
        attention_kernel_ms=attention)


def decode_rows(source: str | Path | dict = DECODE_TOUR, *, kernel: str | None = None) -> list[DecodeRow]:
    """Every measured decode step of a tour file (`stages[].decode[]`) or stage-benchmark file (`records`).

    `kernel` labels stage 4's kernel; by default v5 for the v5 decode file and v4 for the others committed."""
    data, name = load(source), _name(source)
    env = data.get("environment", {})
    card = env.get("card", data.get("device_name", "?"))
    kernel = kernel or STAGE4_KERNEL.get(name, "v4" if isinstance(source, (str, Path)) else None)
    if "records" in data:
        records = data["records"]
    elif isinstance(data.get("stages"), list) and all(isinstance(s, dict) and "decode" in s for s in data["stages"]):
        records = [d | {"stage": s["stage"], "name": s["name"], "heads": d.get("heads", s.get("heads")),
                        "graph": d.get("graph", s.get("graph", False))}
                   for s in data["stages"] for d in s.get("decode", [])]
    else:
        raise ValueError(f"{name}: not a decode-step file (expected 'records' from `bench` or 'stages' from "
                         f"`tour`; top-level keys {sorted(data)[:10]})")
    return [_decode_row(r, name, card, kernel) for r in records]


def _append_pairs(kernel, torch_append, graph: bool) -> dict[tuple[int, int], tuple[DecodeRow, DecodeRow]]:
    """{(stage, heads): (the torch append's row, the append kernel's row)} of two decode files of one call (rows with
    `graph`); a file name not found in docs/results is read from docs/results/probes."""
    def rows(src):
        if isinstance(src, str) and not (results_dir() / src).exists():
            src = results_dir() / "probes" / src
        return {(r.stage, r.heads): r for r in decode_rows(src, kernel="v5") if r.graph == graph}

    ours, before = rows(kernel), rows(torch_append)
    if ours.keys() != before.keys():
        raise ValueError(f"the two decode files measured other shapes: {sorted(ours)} against {sorted(before)}")
    return {k: (before[k], ours[k]) for k in ours}


def append_step_ms(kernel: str | Path | dict = DECODE_BENCH_APPEND,
                   torch_append: str | Path | dict = DECODE_BENCH_TORCH_APPEND) -> dict[tuple[int, int], dict]:
    """The decode step with the torch append against the append kernel, same call (graphs, b 64): {(stage, heads):
    {"torch_ms", "kernel_ms", "saved_us"}}."""
    return {k: {"torch_ms": t.latency_ms, "kernel_ms": o.latency_ms, "saved_us": (t.latency_ms - o.latency_ms) * 1e3}
            for k, (t, o) in _append_pairs(kernel, torch_append, graph=True).items()}


def append_profile(kernel: str | Path | dict = DECODE_PROFILE_APPEND,
                   torch_append: str | Path | dict = DECODE_PROFILE_TORCH_APPEND) -> dict[tuple[int, int], dict]:
    """The same two appends profiled (eager, torch.profiler; the state restores between steps in both): {(stage,
    heads): {"torch_launches", "kernel_launches", "torch_device_ms", "kernel_device_ms"}} per step."""
    return {k: {"torch_launches": t.launches, "kernel_launches": o.launches, "torch_device_ms": t.device_ms,
                "kernel_device_ms": o.device_ms}
            for k, (t, o) in _append_pairs(kernel, torch_append, graph=False).items()}


def decode_skipped(source: str | Path | dict = DECODE_TOUR) -> list[dict]:
    """The shapes a decode file did not measure, with the reason (e.g. 'does not fit: needs 321.3 GiB')."""
    data = load(source)
    if isinstance(data.get("stages"), list) and all(isinstance(s, dict) and "decode" in s for s in data["stages"]):
        return [{"stage": s["stage"], "name": s["name"], "heads": s.get("heads"), "contexts": k.get("contexts"),
                 "reason": k.get("reason")} for s in data["stages"] for k in s.get("skipped", [])]
    return list(data.get("skipped", []))


# --------------------------------------------------------------------------------------------- capacity
@dataclass(frozen=True)
class CapacityRow:
    stage: int
    name: str
    cache: str
    bytes_per_token_per_layer: int
    bytes_per_token: int  # all layers
    bytes_per_sequence: int  # at the file's context
    max_sequences: int
    longest_context: int  # at the file's batch


@dataclass(frozen=True)
class Capacity:
    """The capacity file: its assumptions and one row per stage."""

    preset: str
    gpu_memory_bytes: float
    usable_fraction: float
    tp: int
    heads_per_gpu: int
    context: int
    layers: int
    weights_per_gpu_bytes: float
    cache_budget_bytes: float
    assumptions: list[str]
    rows: list[CapacityRow]

    def row(self, stage: int) -> CapacityRow:
        return next(r for r in self.rows if r.stage == stage)


def capacity_rows(source: str | Path | dict = CAPACITY) -> Capacity:
    """The capacity file (or the dict `measure.capacity.capacity` returns) as a Capacity."""
    data, name = load(source), _name(source)
    _need(data, ("stages", "cache_budget_bytes", "context", "tp"), name, "a capacity file")
    rows = [CapacityRow(int(s["stage"]), str(s["name"]), str(s["cache"]), int(s["bytes_per_token_per_layer"]),
                        int(s["bytes_per_token"]), int(s["bytes_per_sequence"]), int(s["max_sequences"]),
                        int(s["longest_context"])) for s in data["stages"]]
    return Capacity(str(data["preset"]), float(data["gpu_memory_bytes"]), float(data["usable_fraction"]),
                    int(data["tp"]), int(data["heads_per_gpu"]), int(data["context"]), int(data["layers"]),
                    float(data["weights_per_gpu_bytes"]), float(data["cache_budget_bytes"]),
                    list(data.get("assumptions", [])), rows)


# --------------------------------------------------------------------------------------------- FP8
@dataclass(frozen=True)
class Fp8SpeedRow:
    """One implementation at one shape of the FP8 benchmark (b = 128, s_q = 1, whole call)."""

    impl: str  # "fp8" (stage 5's path), "fp8_small" / "fp8_small_tma" / "fp8_gluon" / "fp8_ws" / "fp8_mma" (its tiles,
    #            forced), "bf16_v5" (stage 4's), "flashmla" (bf16); parts timed alone end in "_alone" (fp8_speed_rows'
    #            `parts`)
    b: int
    h_q: int
    s_k: int
    lengths: str
    ms: float
    graph_ms: float | None
    bytes: float  # what it reads: 656 bytes per cached token for fp8, 1,152 for bf16
    flops: float
    fraction_of_copy: float
    tile: str | None  # the v5 tile that ran

    @property
    def gbps(self) -> float:
        return self.bytes / self.ms / 1e6

    @property
    def kernel_ms(self) -> float:
        """The GPU's time alone: replayed from a CUDA graph where the file has it, else the whole call. A part timed
        alone is short enough for its whole call to be host-bound on a slow host (the products alone at h_q 16 in
        fp8_bench_f16k_*: 0.142 ms a call, 0.116 replayed)."""
        return self.ms if self.graph_ms is None else self.graph_ms


#: The FP8 benchmark's implementations that force a tile (the others ran v5's choice, recorded in the file).
_FORCED_TILES = {"fp8_small": "small", "fp8_small_tma": "small", "fp8_tma": "small", "fp8_gluon": "gluon",
                 "fp8_ws": "seesaw", "fp8_ws_producer_alone": "seesaw", "fp8_ws_consumers_alone": "seesaw",
                 "fp8_ss": "fp8ss", "fp8_ss_consumers_alone": "fp8ss", "fp8_ss_no_dequant_alone": "fp8ss",
                 "fp8_mma": "mma", "fp8_mma_page_work_alone": "mma", "fp8_mma_products_alone": "mma",
                 "fp8_mma_loads_alone": "mma", "fp8_mma_dequant_alone": "mma",
                 "fp8_mma8": "mma", "fp8_mma8_page_work_alone": "mma", "fp8_mma8_products_alone": "mma",
                 "fp8_tma16": "tma", "fp8_ws16": "ws16", "fp8_ws16w": "ws16", "fp8_reg": "reg",
                 "fp8_reg_ptxas_regs": "reg", "fp8_ksplit": "ksplit", "fp8_wgr": "wgr",
                 "fp8_wgr_no_dequant_alone": "wgr",
                 "bf16_lockstep_compute_alone": "gluon"}


def fp8_speed_rows(source: str | Path | dict = FP8_BENCH, s_k: int | None = 4096,
                   parts: bool = False) -> list[Fp8SpeedRow]:
    """The FP8 benchmark's whole-call times at cache length `s_k` (None: every length in the file); the parts of a
    tile timed alone (impls ending in "_alone": results meaningless, times for the profile) only with `parts`."""
    data, name = load(source), _name(source)
    _need(data, ("timing",), name, "an FP8 benchmark file")
    rows = []
    for t in data["timing"]:
        if "ms" not in t or (s_k is not None and int(t["s_k"]) != s_k):
            continue  # a shape that failed (its error is in the file), or another length
        for impl, ms in t["ms"].items():
            if impl.endswith("_alone") and not parts:
                continue
            nbytes = t["bytes"]["fp8" if impl.startswith("fp8") else "bf16"]
            choice = t.get("choice_fp8" if impl.startswith("fp8") else "choice_bf16")
            tile = _FORCED_TILES.get(impl, choice[0] if impl != "flashmla" and choice else None)
            rows.append(Fp8SpeedRow(impl, int(t["b"]), int(t["h_q"]), int(t["s_k"]), str(t["lengths"]), float(ms),
                                    t.get("graph_ms", {}).get(impl), float(nbytes), float(t["flops"]),
                                    float(t["fraction_of_copy"][impl]), tile))
    return rows


def fp8_page_work_rows(source: str | Path | dict = FP8_SPLIT, s_k: int = 4096) -> list[Fp8SpeedRow]:
    """The probe that split the 16-row FP8 tile's page work (h_q 16, b = 128): its page loads alone
    ("fp8_mma_loads_alone"), its dequantization alone ("fp8_mma_dequant_alone"), both ("fp8_mma_page_work_alone"),
    its products alone, the tile as it runs and FlashMLA, as fp8_speed_rows(..., parts=True) gives them. A file name
    is looked up in docs/results/probes/."""
    return fp8_speed_rows(load(source, results_dir() / "probes"), s_k, parts=True)


@dataclass(frozen=True)
class ProbeTiming:
    """One implementation at one shape of a probe that timed it beside FlashMLA (b = 128, whole call)."""

    impl: str  # the probe's name for it, e.g. "fp8ss", "fp8ss_nodeq", "v5_fp8", "v5", "flashmla"
    h_q: int
    s_q: int
    s_k: int
    ms: float
    vs_flashmla: float  # FlashMLA's bf16 ms in the same run / this one's


def fp8_seesaw_parts(source: str | Path | dict = FP8_SEESAW_PARTS) -> list[ProbeTiming]:
    """The FP8 seesaw tile's probe (docs/fp8.md §5): the tile ("fp8ss"), its consumers alone ("fp8ss_compute"), the
    raw rows copied with no dequantization ("fp8ss_nodeq"), a quarter of each page dequantized ("fp8ss_quarter"),
    warpgroup 1 releasing A's right half first ("fp8ss_early2"), v5's FP8 choice ("v5_fp8"), bf16 v5 ("v5") and
    FlashMLA. A file name is looked up in docs/results/probes/."""
    data = load(source, results_dir() / "probes")
    _need(data, ("rows", "roofline"), _name(source), "a probe file of scripts/gpu_fp8_seesaw_probe.py")
    return [ProbeTiming(impl, int(r["h_q"]), int(r["s_q"]), int(r["s_k"]), float(e["ms"]),
                        float(r["flashmla_over"][impl]))
            for r in data["rows"] for impl, e in r["impl"].items() if "ms" in e]


def fp8_targets(s_k: int = 4096) -> dict[tuple[int, str], float]:
    """Issue 9's targets at cache length s_k (FlashMLA's bf16 ms / the FP8 path's, b = 128, s_q = 1), keyed by
    (h_q, lengths) as the rows of fp8_speed_rows are."""
    from ..measure.kernel_bench import FP8_RATIO_TARGETS

    return {(h_q, lengths): v for (h_q, s_q, sk, lengths), v in FP8_RATIO_TARGETS.items() if sk == s_k and s_q == 1}


def fp8_correctness(source: str | Path | dict = FP8_BENCH) -> dict[str, bool]:
    """Case -> passed, for the FP8 benchmark's GPU correctness section (checked before anything was timed)."""
    data = load(source)
    return {case: bool(v.get("ok")) for case, v in data.get("correctness", {}).items()}


@dataclass(frozen=True)
class Fp8RowError:
    """Quantization error of the cached rows under one scaling scheme (fp8_accuracy's "rows" section)."""

    config: str  # "tiny" or "deepseek-v3" (shapes)
    weight_std: float
    sigma: float  # std of the hidden states fed to project_latent
    scheme: str  # "tile" (FlashMLA's), "token", "tensor_ckv", "tensor_ckv_rope_fp8", ...
    c_kv_rel_frob: float
    k_rope_rel_frob: float
    k_rope_saturated_fraction: float
    c_kv_rms: float
    k_rope_rms: float
    k_rope_amax: float


#: The scaling schemes of fp8_accuracy's rows section, in words.
FP8_SCHEMES = {
    "tile": "FlashMLA: a scale per token and 128 values, RoPE in bf16",
    "token": "one scale per token for c_kv, RoPE in bf16",
    "tensor_ckv": "one scale per tensor from c_kv, RoPE in bf16",
    "tensor_ckv_rope_fp8": "one scale per tensor from c_kv, also used for RoPE in FP8",
    "tensor_all_rope_fp8": "one scale per tensor from the whole row (both parts), RoPE in FP8",
    "static_tensor_all_rope_fp8": "the same, fixed beforehand from the σ = 1 rows (calibrated)",
}


@dataclass(frozen=True)
class HostPlanRow:
    """Host time of one v5 call, µs, replayed from its call plan and through the full path, beside the device time of
    the call's kernels (kernels/plan.py; one GPU call of host_time_plans_*)."""

    run: str  # which device call ("call 1", "call 2": two lent machines)
    h_q: int
    cache: str  # "bf16" or "fp8"
    planned_us: float  # a whole call replayed from its plan
    full_path_us: float  # the same call with no plan (checks, routing, launches packed anew)
    signature_us: float  # the plan's key alone
    replay_us: float | None  # CallPlan.run alone (allocations, launches, the bounds assertion)
    gpu_us: float | None  # device time of the call's kernels (None where not measured in that call)
    flashmla_gpu_us: float | None  # FlashMLA's kernels, the same way

    @property
    def label(self) -> str:
        return f"h_q {self.h_q}, {self.cache} cache"


def host_plan_rows(source: str | Path | dict = HOST_PLANS, run: str | None = "call 2") -> list[HostPlanRow]:
    """The host-time rows of one device call (`run`; None: all), b = 128, s_k = 1,024."""
    data = load(source)
    name = _name(source)
    _need(data, ("rows", "device"), name, "a host-time file (host_time_plans_*)")
    rows = [HostPlanRow(run=r["run"], h_q=int(r["h_q"]), cache=r["cache"], planned_us=float(r["planned_us"]),
                        full_path_us=float(r["full_path_us"]), signature_us=float(r["signature_us"]),
                        replay_us=r.get("replay_us"), gpu_us=r.get("gpu_us"), flashmla_gpu_us=r.get("flashmla_gpu_us"))
            for r in data["rows"] if run is None or r["run"] == run]
    if not rows:
        raise ValueError(f"{name}: no rows of run {run!r} (runs: {sorted({r['run'] for r in data['rows']})})")
    return rows


@dataclass(frozen=True)
class StepScheduleRow:
    """One decode step of an L-layer decoder (CUDA graph, ms): the kernel's schedule made once a step and shared by
    the layers (mla_tutorial.step), against made by every layer (one step_schedule_* row)."""

    stage: int  # 4 or 5
    heads: int
    layers: int
    batch: int
    context: int
    shared_ms: float
    per_layer_ms: float

    @property
    def saved_per_layer_us(self) -> float:
        """What each layer that no longer makes the schedule saves, µs."""
        return (self.per_layer_ms - self.shared_ms) / (self.layers - 1) * 1e3


def step_schedule_rows(source: str | Path | dict = STEP_SCHEDULE) -> list[StepScheduleRow]:
    """The rows of a step_schedule_* file, as measured."""
    data = load(source)
    name = _name(source)
    _need(data, ("rows", "device_info", "roofline"), name, "a step-schedule file (step_schedule_*)")
    return [StepScheduleRow(stage=int(r["stage"].split()[-1]), heads=int(r["heads"]), layers=int(r["layers"]),
                            batch=int(r["batch"]), context=int(r["context"]), shared_ms=float(r["shared_ms"]),
                            per_layer_ms=float(r["per_layer_ms"])) for r in data["rows"]]


@dataclass(frozen=True)
class PairPhase:
    """One stretch of one page pair of the seesaw tile, from its cycle stamps (v5_seesaw's TRACE): cycles counted from
    warpgroup 0's start of the pair. The producer's rows are instants (start == end): when it asked for a half page
    of the next pair."""

    config: str  # "hoist" (the descriptors spilled: before the twelfth session) or "tile" (as it runs now)
    lane: str  # "warpgroup 0", "warpgroup 1" or "producer"
    kind: str  # "waits for pages", "scores", "softmax", "products", "waits for the other warpgroup", "asks"
    label: str
    start: int
    end: int


#: (lane, kind, label, from event, to event) of a pair (events: scripts/gpu_seesaw_trace.py's EVENTS)
_PAIR_PHASES = (
    ("warpgroup 0", "waits for pages", "A left", 0, 6), ("warpgroup 0", "scores", "S_A ¹", 6, 7),
    ("warpgroup 0", "scores", "S_A", 7, 1), ("warpgroup 0", "softmax", "softmax A", 1, 2),
    ("warpgroup 0", "products", "P_A·V_A", 2, 3), ("warpgroup 0", "waits for the other warpgroup", "P_B", 3, 4),
    ("warpgroup 0", "products", "P_B·V_B", 4, 5),
    ("warpgroup 1", "waits for pages", "B right", 8, 13), ("warpgroup 1", "scores", "S_B ¹", 13, 14),
    ("warpgroup 1", "scores", "S_B", 14, 9), ("warpgroup 1", "waits for the other warpgroup", "m_A", 9, 10),
    ("warpgroup 1", "softmax", "softmax B", 10, 11), ("warpgroup 1", "products", "P·V", 11, 12),
)
#: the producer's stamps when it asked for the next pair's halves
_NEXT_PAIR_ASKS = ((17, "A left"), (18, "B right"), (19, "A right"), (20, "B left"))


def seesaw_pair_phases(source: str | Path | dict = SEESAW_TRACE, program: int = 0) -> tuple[list[PairPhase],
                                                                                               dict[str, int]]:
    """(phases, period per config) of one steady-state page pair of each traced config (the pair of `program` whose
    period is the median of its pairs 4-27 without a request edge): what each warpgroup does when, and when the
    producer asks for the next pair's pages. ¹ marks the scores' first half, which runs while the second half's
    copy is still awaited."""
    data = load(source, results_dir() / "probes")  # (a probe file: docs/results/probes)
    name = _name(source)
    _need(data, ("rows",), name, "a seesaw trace (scripts/gpu_seesaw_trace.py)")
    phases, periods = [], {}
    for row in data["rows"]:
        if "raw_first_programs" not in row or row.get("mode", 0) != 0:
            continue
        stamps = row["raw_first_programs"][program]
        config = "hoist" if row["config"] == "hoist" else "tile" if row["config"] == "base" else row["config"]
        steady = [p for p in range(4, 28) if all(stamps[q][0] and not stamps[q][24] for q in (p, p + 1))]
        if not steady:
            raise ValueError(f"{name}: no steady-state pair in program {program} of config {row['config']!r}")
        by_period = sorted(steady, key=lambda p: stamps[p + 1][0] - stamps[p][0])
        pair = by_period[len(by_period) // 2]
        t0 = stamps[pair][0]
        periods[config] = stamps[pair + 1][0] - t0
        for lane, kind, label, a, b in _PAIR_PHASES:
            phases.append(PairPhase(config, lane, kind, label, stamps[pair][a] - t0, stamps[pair][b] - t0))
        for event, label in _NEXT_PAIR_ASKS:
            t = stamps[pair + 1][event] - t0
            phases.append(PairPhase(config, "producer", "asks", label, t, t))
    if not periods:
        raise ValueError(f"{name}: no traced config with copies (mode 0) and raw stamps")
    return phases, periods


@dataclass(frozen=True)
class ProgramSpan:
    """One program of a stamped call of the wgmma register tile (v5_fp8_wgr's TRACE): µs after the first program's
    entry."""

    program: int
    pages: int
    entry: float
    first_landed: float  # its first page in shared memory (the first request's first page)
    exit: float


@dataclass(frozen=True)
class WgrTrace:
    """A stamped call of the wgmma register tile: the programs that had pages, sorted by exit, and the medians over
    the programs (µs, scripts/gpu_wgr_trace.py's summary of the same call) of the parts of a program's time."""

    s_k: int
    lengths: str
    spans: list[ProgramSpan]
    medians: dict[str, float]
    kernel_span: float  # the first entry to the last exit (µs; the stamps make the kernel a few % slower)
    plain_ms: float  # the same call without stamps, whole call (do_bench)


#: the parts of a program's time WgrTrace.medians keeps (the summary's names)
WGR_TRACE_PARTS = ("entry_to_request_start", "request_start_to_first_copy_issued", "first_copy_issued_to_q_ready",
                   "q_ready_to_first_page_landed", "entry_to_first_page_landed", "first_landed_to_last_page_end",
                   "page_period_steady", "pages_done_to_stored", "last_page_end_to_exit",
                   "program_exit_before_last_exit")


def wgr_trace(source: str | Path | dict = WGR_TRACE, s_k: int = 4096, lengths: str = "fixed") -> WgrTrace:
    """The stamped call of the wgmma register tile at `s_k` (b 128, h_q 16): each program's entry, first page landed
    and exit, and the medians of the parts of a program's time, both from the last of the five stamped calls."""
    data = load(source, results_dir() / "probes")  # (a probe file: docs/results/probes)
    name = _name(source)
    _need(data, ("rows",), name, "a stamped wgmma register tile (scripts/gpu_wgr_trace.py)")
    for row in data["rows"]:
        if row.get("s_k") != s_k or row.get("dist", "fixed") != lengths or "per_program_last_call" not in row:
            continue
        pp, summary = row["per_program_last_call"], row["calls"][-1]
        spans = [ProgramSpan(i, n, e, f, x) for i, (n, e, f, x) in
                 enumerate(zip(pp["pages"], pp["entry"], pp["first_landed"], pp["exit"], strict=True)) if n > 0]
        medians = {k: float(summary[k]["median"]) for k in WGR_TRACE_PARTS if summary.get(k)}
        return WgrTrace(s_k, lengths, sorted(spans, key=lambda p: p.exit), medians,
                        float(summary["kernel_span_us"]), float(row["plain_ms"]))
    raise ValueError(f"{name}: no stamped call at s_k {s_k} with {lengths} lengths")


def kernel_split_us(source: str | Path | dict = KERNEL_SPLIT_FP8_H16, s_k: int = 4096) -> dict[str, float]:
    """Device µs per call of each kernel at `s_k` (scripts/gpu_kernel_split.py): "ours" (the tile), "ours_combine",
    "flashmla" (its main kernel), "flashmla_combine" (the bounds assertion left out: the benchmarks drop it)."""
    data = load(source, results_dir() / "probes")
    name = _name(source)
    _need(data, ("rows",), name, "a kernel split (scripts/gpu_kernel_split.py)")
    for row in data["rows"]:
        if row.get("s_k") != s_k:
            continue
        out = {}
        for who in ("ours", "flashmla"):
            for kernel, t in row.get(who, {}).items():
                if "assert" not in kernel:
                    out[f"{who}_combine" if "combine" in kernel else who] = float(t["us"])
        return out
    raise ValueError(f"{name}: no row at s_k {s_k}")


def wgr_mode_ratios(source: str | Path | dict = WGR_MODES, s_k: int = 4096, dist: str = "fixed") -> dict[str, float]:
    """FlashMLA / ours at `s_k` (b 128, h_q 16, lengths `dist`; medians of rounds in turn, scripts/gpu_wgr_trace.py
    --variant): "tile" (the wgmma register tile as v5 ran it then: its page work in bf16 in both files), "mode4" (its
    page work in fp16, WGR_MODE=4: with the guard of fp16's range in WGR_GUARD_RUN, before the guard existed in
    WGR_MODES), "mode4_no_guard" (WGR_GUARD_RUN only), "mode3" (no dequantization: a timing mode, its answers
    meaningless), "flashmla_ms" (FlashMLA's whole call, ms); a variant the file did not time is left out."""
    data = load(source, results_dir() / "probes")
    name = _name(source)
    _need(data, ("rows",), name, "rounds of the wgr tile and its modes (scripts/gpu_wgr_trace.py --variant)")
    variants = {"mode3": "WGR_MODE=3", "mode4": "WGR_MODE=4", "mode4_no_guard": "WGR_MODE=4 WGR_GUARD=0"}
    for row in data["rows"]:
        if row.get("s_k") == s_k and row.get("dist", "fixed") == dist and "median_ms" in row:
            med = row["median_ms"]
            out = {"tile": med["flashmla_bf16"] / med["ours_fp8"], "flashmla_ms": med["flashmla_bf16"]}
            for key, knobs in variants.items():
                if f"ours_fp8[{knobs}]" in med:
                    out[key] = med["flashmla_bf16"] / med[f"ours_fp8[{knobs}]"]
            return out
    raise ValueError(f"{name}: no rounds at s_k {s_k} with {dist} lengths")


def wgr_mode_errors(source: str | Path | dict = WGR_MODES_ACCURACY) -> dict[float, dict[str, float]]:
    """Relative Frobenius error against the fp32 reference on the dequantized cache (b 16, h_q 16, s_k 4k), per
    factor the cache's values were scaled by before quantization: "bf16_call" (v5's bf16 call on the dequantized
    cache), "tile", "mode4" (scripts/gpu_wgr_trace.py --accuracy)."""
    data = load(source, results_dir() / "probes")
    name = _name(source)
    _need(data, ("rows",), name, "the wgr modes' errors (scripts/gpu_wgr_trace.py --accuracy)")
    keys = {"bf16_call": "bf16_on_dequantized", "tile": "wgr_mode0", "mode4": "wgr_mode4"}
    return {float(r["factor"]): {k: float(r[v]["rel_frobenius"]) for k, v in keys.items()} for r in data["rows"]}


def fp8_row_errors(source: str | Path | dict = FP8_ACCURACY) -> list[Fp8RowError]:
    data, name = load(source), _name(source)
    _need(data, ("rows",), name, "an FP8 accuracy file")
    rows = []
    for key, entry in data["rows"].items():
        config, std, sigma = key.split("/")  # e.g. "tiny/std0.02/sigma1"
        for scheme, e in entry["schemes"].items():
            rows.append(Fp8RowError(config, float(std.removeprefix("std")), float(sigma.removeprefix("sigma")),
                                    scheme, float(e["c_kv_rel_frob"]), float(e["k_rope_rel_frob"]),
                                    float(e["k_rope_saturated_fraction"]), float(entry["c_kv"]["rms"]),
                                    float(entry["k_rope"]["rms"]), float(entry["k_rope"]["amax"])))
    return rows


@dataclass(frozen=True)
class Fp8AttentionError:
    """One comparison of attention outputs (fp8_accuracy's "attention" section: tiny config, prefill + 2 steps)."""

    weight_std: float
    prompt: int
    comparison: str  # "stage5_vs_stage4", "kernel", "quantization", "bf16_kernel", "fp8_rope_too"
    rel_frob: float
    cosine: float
    max_abs: float


_ATTENTION_KEYS = {
    "stage5_vs_stage4": "stage5_vs_stage4",
    "stage5_vs_fp8_reference (kernel error)": "kernel",
    "fp8_reference_vs_stage3 (quantization error)": "quantization",
    "stage4_vs_stage3 (bf16 kernel error)": "bf16_kernel",
    "what-if fp8 rope too_vs_stage3": "fp8_rope_too",
}


def fp8_attention_errors(source: str | Path | dict = FP8_ACCURACY) -> list[Fp8AttentionError]:
    data, name = load(source), _name(source)
    _need(data, ("attention",), name, "an FP8 accuracy file")
    rows = []
    for key, entry in data["attention"].items():
        std, prompt = key.split("/")  # e.g. "std0.1/prompt63+2"
        for long_name, short in _ATTENTION_KEYS.items():
            if long_name in entry:
                e = entry[long_name]
                rows.append(Fp8AttentionError(float(std.removeprefix("std")),
                                              int(prompt.removeprefix("prompt").split("+")[0]), short,
                                              float(e["rel_frob"]), float(e["cosine"]), float(e["max_abs"])))
    return rows


@dataclass(frozen=True)
class Fp8DecoderRow:
    """Next-token distributions of a 2-layer TinyDecoder (fp8_accuracy's "decoder" section)."""

    weight_std: float
    comparison: str  # "fp8_vs_bf16" or "bf16_vs_f32" (the noise floor)
    top1_agreement: float
    kl_mean: float
    kl_max: float
    logits_rel_frob: float


def fp8_decoder_rows(source: str | Path | dict = FP8_ACCURACY) -> list[Fp8DecoderRow]:
    data, name = load(source), _name(source)
    _need(data, ("decoder",), name, "an FP8 accuracy file")
    rows = []
    for key, entry in data["decoder"].items():
        std = float(key.removeprefix("std"))
        for long_name, short in (("fp8_teacher_forced_vs_bf16", "fp8_vs_bf16"),
                                 ("bf16_vs_f32_teacher_forced (noise floor)", "bf16_vs_f32")):
            e = entry[long_name]
            rows.append(Fp8DecoderRow(std, short, float(e["top1_agreement"]), float(e["kl_mean"]),
                                      float(e["kl_max"]), float(e["logits"]["rel_frob"])))
    return rows


# --------------------------------------------------------------------------------------------- picking and printing
def pick(rows: list, **where: Any):
    """The one row whose attributes equal `where` (e.g. pick(rows, stage=4, heads=16, batch=64, graph=True));
    KeyError naming what was asked and how many matched otherwise."""
    found = [r for r in rows if all(getattr(r, k) == v for k, v in where.items())]
    if len(found) != 1:
        raise KeyError(f"{len(found)} rows match {where} (expected exactly one)")
    return found[0]


def table(rows: list, columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: `columns` are (header, attribute or callable's name, format spec), e.g.
    ("ms", "ms", ".3f"). An attribute may be a callable taking the row."""
    def cell(row, key, spec):
        value = key(row) if callable(key) else getattr(row, key)
        return "—" if value is None else format(value, spec)

    body = [[cell(r, key, spec) for _, key, spec in columns] for r in rows]
    widths = [max([len(h)] + [len(line[i]) for line in body]) for i, (h, _, _) in enumerate(columns)]
    lines = ["  ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in body]
    return "\n".join(lines)


__all__ = [
    "ABLATION", "CAPACITY", "DECODE_BENCH_V4", "DECODE_BENCH_V5", "DECODE_BENCH_V5_QTMA", "DECODE_COVERAGE",
    "DECODE_PROFILE", "DECODE_TOUR", "DECODE_BENCH_FP8SS", "DECODE_BENCH_FP8WGR", "DECODE_BENCH_APPEND",
    "DECODE_BENCH_TORCH_APPEND", "DECODE_PROFILE_APPEND", "DECODE_PROFILE_TORCH_APPEND",
    "FP8_ACCURACY", "FP8_BENCH", "FP8_SCHEMES", "FP8_SPLIT", "IMPL_LABELS", "KERNELS_V4_H100", "KERNELS_V4_H200",
    "HOST_PLANS", "KERNELS_V5", "KERNELS_V5_PLANS", "KERNELS_V5_QASYNC", "KERNELS_V5_EVEN", "KERNELS_V5_LINES",
    "KERNELS_V5_QTMA", "KERNELS_V5_WALK", "KERNELS_V5_FP8SS", "KERNELS_V5_FP8WGR",
    "KERNELS_V5_SEESAW", "ROOFLINE", "HostPlanRow", "host_plan_rows", "SEESAW_TRACE", "PairPhase", "seesaw_pair_phases",
    "WGR_TRACE", "ProgramSpan", "WgrTrace", "wgr_trace", "KERNEL_SPLIT_FP8_H16", "kernel_split_us",
    "WGR_GUARD_RUN", "WGR_GUARD_RUN_NORMAL", "WGR_MODES", "WGR_MODES_ACCURACY", "wgr_mode_ratios", "wgr_mode_errors",
    "STEP_SCHEDULE", "StepScheduleRow", "step_schedule_rows",
    "AblationStep", "Capacity", "CapacityRow", "Ceilings", "DecodeRow", "Fp8AttentionError",
    "Fp8DecoderRow", "Fp8RowError", "Fp8SpeedRow", "KernelRow", "KernelRun", "ResultsMissing", "ablation_steps",
    "append_profile", "append_step_ms", "capacity_rows", "ceilings", "decode_rows", "decode_skipped",
    "fp8_attention_errors", "fp8_correctness",
    "fp8_decoder_rows", "fp8_page_work_rows", "fp8_row_errors", "fp8_speed_rows", "fp8_targets", "kernel_run",
    "load", "pick", "results_dir",
    "table",
]
