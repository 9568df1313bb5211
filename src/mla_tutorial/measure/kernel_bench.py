"""GPU benchmark of the stage-4 kernels, beside FlashMLA when it is importable and against the measured roofline.

    python -m mla_tutorial bench --kernel [--shapes targets,ablation] [--versions v5,v5_fp8,v4] [--out F.json]

Shape sets (b = batch, h_q heads, s_q query tokens, s_k keys; page 64, bf16):
  targets   issue 8's table at b = 128: h_q 16 (s_k 1k, 4k, 8k, lengths ~ N(4096, 2048)), h_q 64 (1k, 4k, 8k),
            h_q 128 (1k, 4k, 8k, and s_q = 2 causal at 4k)
  ablation  where each rung of the ladder pays: b = 1 with 32k keys (split-KV, v3), uneven lengths at b = 128
            (the balanced schedule, v4), 128 heads (the Gluon tile, v5); every version v1-v5 there
  standard  FlashMLA's full grid: h_q 16/32/64/128, s_q 1/2, s_k 1k-32k, fixed and uneven lengths
Random data (never zeros), random-permutation block tables, NaN in every unused cache slot (mla_tutorial.testing).
Each call is timed whole (Python wrapper, main kernel and combine; the scheduler metadata is made outside the timed
region, once per decode step as a serving engine does) with `triton.testing.do_bench` (median, L2 flushed), and
for v5 and FlashMLA also as a CUDA-graph replay of the same call: the difference is the host time not hidden behind
the GPU. FlashMLA (its current API form) is timed in the same run whenever `import flash_mla` works.
Every version runs with check_bounds=False, as FlashMLA (which never checks); "v5_checked" is v5 with its default
bounds / stale-schedule assertion, so the difference is that check's cost.
"v5_fp8" is stage 5's path (issue 9): v5 with `is_fp8_kvcache=True` on the same cache quantized once to FlashMLA's
656-byte FP8 rows (`quantize_k_cache`, outside the timed region), timed whole like v5, beside FlashMLA's bf16 dense
kernel (FlashMLA's dense decode has no FP8 cache).
Reported per row: ms, GB/s (bytes = b·(s_q·h_q·576·2 + mean_sk·576·2 + s_q·h_q·512·2); v5_fp8 reads
b·(s_q·h_q·576·2 + mean_sk·656 + s_q·h_q·512·2)), TFLOP/s (2·b·h_q·s_q·mean_sk·1088), the fraction of the roofline
measured in the same run (the larger of bytes/copy and FLOPs/matmul over the time), FlashMLA's time / ours, v5's
agreement with FlashMLA (cosine difference), v5_fp8's with v5 on the dequantized cache (the kernel's own error:
its dequantization is exact) and with v5 on the bf16 cache (what the quantization costs), which v5 tile ran and
why, and the occupancy of every kernel compiled. An implementation that fails records its error in the row
("errors"); the others still run, and a shape that fails as a whole records its error and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from ..fp8 import ROW_BYTES as FP8_ROW_BYTES
from ..fp8 import dequantize_k_cache, quantize_k_cache
from ..kernels import schedule as schedule_module
from ..kernels.schedule import default_fixed_overhead, get_mla_metadata
from ..kernels.v1_naive import mla_decode_v1
from ..kernels.v2_head_tiled import mla_decode_v2
from ..kernels.v3_split_kv import mla_decode_v3
from ..kernels.v4_balanced import mla_decode_v4
from ..kernels.v5 import kernel_choice, mla_decode_v5
from ..stage3_paged import paged_mla_attention
from ..testing import make_paged_inputs, normal_lengths
from .roofline import device_info, measure_copy_bandwidth, measure_matmul_tflops

V1_MAX_WORK = 128 * 64 * 4096  # b·h_q·s_q·mean_sk above which v1 is skipped (it would take > ~50 ms a call)

TARGET_SHAPES = [(128, 16, 1, 1024, "fixed"), (128, 16, 1, 4096, "fixed"), (128, 16, 1, 8192, "fixed"),
                 (128, 16, 1, 4096, "normal"), (128, 64, 1, 1024, "fixed"), (128, 64, 1, 4096, "fixed"),
                 (128, 64, 1, 8192, "fixed"), (128, 128, 1, 1024, "fixed"), (128, 128, 1, 4096, "fixed"),
                 (128, 128, 1, 8192, "fixed"), (128, 128, 2, 4096, "fixed")]
ABLATION_SHAPES = [(1, 16, 1, 32768, "fixed"), (1, 128, 1, 32768, "fixed"), (128, 16, 1, 4096, "normal"),
                   (128, 128, 1, 4096, "fixed")]
STANDARD_SHAPES = [(128, h, s_q, s_k, d) for s_k in (1024, 4096, 8192, 16384, 32768) for h in (16, 32, 64, 128)
                   for s_q in (1, 2) for d in ("fixed", "normal")]
SHAPE_SETS = {"targets": TARGET_SHAPES, "ablation": ABLATION_SHAPES, "standard": STANDARD_SHAPES}

#: Issue 8's targets: FlashMLA's time / ours, per (h_q, s_q, s_k, lengths) at b = 128.
RATIO_TARGETS = {(16, 1, 1024, "fixed"): 0.90, (16, 1, 4096, "fixed"): 0.95, (16, 1, 8192, "fixed"): 0.95,
                 (16, 1, 4096, "normal"): 0.95, (64, 1, 1024, "fixed"): 0.85, (64, 1, 4096, "fixed"): 0.90,
                 (64, 1, 8192, "fixed"): 0.90, (128, 1, 1024, "fixed"): 0.80, (128, 1, 4096, "fixed"): 0.80,
                 (128, 1, 8192, "fixed"): 0.80, (128, 2, 4096, "fixed"): 0.80}
HOST_TARGET_MS = 0.010  # whole call minus CUDA-graph replay at h_q 16, s_k 1k

#: Issue 9's targets: FlashMLA's bf16 dense time / v5_fp8's (stage 5's FP8 cache), per (h_q, s_q, s_k, lengths),
#: b = 128. The ideal at the memory-bound shapes is 1,152 / 656 = 1.76x a bf16 kernel at the same bandwidth.
FP8_RATIO_TARGETS = {(16, 1, 4096, "fixed"): 1.5, (16, 1, 8192, "fixed"): 1.5, (16, 1, 4096, "normal"): 1.5,
                     (64, 1, 4096, "fixed"): 1.2, (64, 1, 8192, "fixed"): 1.2, (128, 1, 4096, "fixed"): 0.8}
# (as --versions names)
VERSIONS = ("v5", "v5_o5", "v5_lockstep", "v5_fp8", "v5_fp8_o5", "v4", "v3", "v2", "v1", "torch_paged")
#: what runs at the target shapes (all of VERSIONS at the ablation ones); v5_lockstep: the Gluon tile the seesaw
#: tile replaced, where v5 runs the seesaw tile; v5_o5: v5 on FlashMLA's own schedule (its walk with 5 units a piece,
#: get_mla_metadata(..., fixed_overhead=5)), timed only where the default overhead differs (the small tile's 2);
#: v5_fp8_o5: the same for the FP8 path
TARGET_VERSIONS = {"v5", "v5_o5", "v5_lockstep", "v5_fp8", "v5_fp8_o5", "v4"}


def log(msg: str) -> None:
    print(msg, flush=True)


def make_lengths(b: int, s_k: int, dist: str, s_q: int, gen: torch.Generator) -> torch.Tensor:
    """b lengths: all s_k ("fixed"), or ~ Normal(s_k, s_k/2) clipped at >= s_q ("normal"); for scripts/."""
    if dist == "fixed":
        return torch.full((b,), s_k, dtype=torch.int32)
    return torch.normal(float(s_k), s_k / 2, (b,), generator=gen).round().clamp(min=s_q).to(torch.int32)


def make_inputs(seqlens: torch.Tensor, s_q: int, h_q: int, device, dtype=torch.bfloat16, seed: int = 0):
    """q, k_cache, block_table, cache_seqlens on `device` from the shared hostile generator (h_kv = 1)."""
    return make_paged_inputs(seqlens, s_q, h_q, 1, dtype, device=device, seed=seed, spare_blocks=8)


def bench_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))


def capture_graph(fn):
    """(graph, what fn returned inside the capture): fn called once on a side stream to warm up, then captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = fn()
    return graph, result


def graph_ms(fn, timer=bench_ms) -> float:
    """Median time (by `timer`) of a CUDA-graph replay of fn (captured after one warm-up call on a side stream)."""
    graph, _ = capture_graph(fn)
    return timer(graph.replay)


def measured_roofline(device: str = "cuda") -> dict:
    """This run's ceilings, as the result files record them: device copy bandwidth and a large matmul (bf16, n 8192 on
    CUDA), {"copy_gbps", "matmul_tflops", "copy", "matmul"}."""
    copy = measure_copy_bandwidth(device)
    mm = measure_matmul_tflops(device, 8192 if torch.device(device).type == "cuda" else None)
    return {"copy_gbps": copy["gbps"], "matmul_tflops": mm["tflops"], "copy": copy, "matmul": mm}


def save_probe(rows: list, argv: list[str] | None = None) -> None:
    """A probe script's rows to the file named after `--out` in argv (sys.argv by default), if any, labelled with the
    device, driver, torch and Triton versions and the date (roofline.device_info) and the ceilings measured now, in
    the same run (measured_roofline; on the CPU when there is no GPU)."""
    argv = sys.argv if argv is None else argv
    if "--out" in argv:
        roof = measured_roofline("cuda" if torch.cuda.is_available() else "cpu")
        with open(argv[argv.index("--out") + 1], "w") as f:
            json.dump({"device": device_info(), "roofline": roof, "rows": rows}, f, indent=1)


def cos_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """FlashMLA's cosine difference 1 - 2Σxy/Σ(x²+y²)."""
    x, y = x.double(), y.double()
    return float(1 - 2 * (x * y).sum() / (x * x + y * y).sum().clamp_min(1e-300))


def shape_inputs(b, h_q, s_q, s_k, dist, seed, device="cuda"):
    lengths = [s_k] * b if dist == "fixed" else normal_lengths(b, s_k, s_q, seed=seed)
    inputs = make_paged_inputs(lengths, s_q, h_q, 1, torch.bfloat16, seed=seed, device=device)
    return inputs, float(sum(lengths)) / b


def shape_bytes(b: int, h_q: int, s_q: int, mean_sk: float, row_bytes: int = 576 * 2) -> float:
    """FlashMLA's benchmark bytes: queries read, cache rows read (row_bytes each: 1,152 bf16, 656 FP8), outputs
    written."""
    return b * (s_q * h_q * 576 * 2 + mean_sk * row_bytes + s_q * h_q * 512 * 2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:300]}"


def _flash_mla():
    try:
        import flash_mla

        return flash_mla
    except Exception as e:  # not installed: ours alone
        log(f"FlashMLA not importable ({type(e).__name__}: {e}): timing ours alone")
        return None


def run_shape(b, h_q, s_q, s_k, dist, roof, versions, flash_mla, seed=0, *, device="cuda", timer=None,
              graph_timer=None, rounds: int = 1) -> dict:
    """One shape: every implementation in `versions` (and FlashMLA when given), each guarded, timed by `timer`
    (default `bench_ms`) and `graph_timer` (default `graph_ms`; v5, v5_fp8 and FlashMLA) in each of `rounds` rounds
    (the order changing between rounds; the median kept); the timers are parameters so that a test can run this on
    a CPU, in Triton's interpreter, with stand-in timers."""
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    timer, graph_timer, device = timer or bench_ms, graph_timer or graph_ms, torch.device(device)
    causal = s_q > 1
    (q, k_cache, block_table, seqlens), mean_sk = shape_inputs(b, h_q, s_q, s_k, dist, seed, device)
    nbytes = shape_bytes(b, h_q, s_q, mean_sk)
    # bytes per cached token read, where not bf16's 1,152
    row_bytes = {"v5_fp8": FP8_ROW_BYTES, "v5_fp8_o5": FP8_ROW_BYTES}
    flops = 2 * b * h_q * s_q * mean_sk * 1088
    meta, splits = get_mla_metadata(seqlens, s_q * h_q, 1)
    # FlashMLA's own schedule (overhead 5), timed only where the default differs (the small tile's 2)
    o5_differs = default_fixed_overhead(s_q * h_q) != 5
    o5_meta, o5_splits = get_mla_metadata(seqlens, s_q * h_q, 1, fixed_overhead=5) if o5_differs else (meta, splits)
    args = (q, k_cache, block_table, seqlens, 512)
    off = {"check_bounds": False}  # as FlashMLA, which never checks; "v5_checked" states what the check costs
    row = {"b": b, "h_q": h_q, "s_q": s_q, "causal": causal, "s_k": s_k, "lengths": dist, "mean_sk": mean_sk,
           "bytes": nbytes, "flops": flops, "v5_tile": kernel_choice(q, k_cache, s_q * h_q, 1),
           "impl": {}, "skipped": {}, "errors": {}}
    # both schedule kernels, as a call (host launch included) and as a graph replay (device time alone);
    # metadata_ms: the default one's call
    row["metadata"] = {}
    for name, parallel in (("step", False), ("runs", True)):
        def schedule(p=parallel):
            return get_mla_metadata(seqlens, s_q * h_q, 1, parallel=p)
        row["metadata"][name] = {"call_ms": timer(schedule), "graph_ms": graph_timer(schedule)}
    row["metadata_ms"] = row["metadata"]["runs" if schedule_module.PARALLEL_SCHEDULE else "step"]["call_ms"]
    k_fp8 = None
    if "v5_fp8" in versions or "v5_fp8_o5" in versions:
        try:  # quantized once, outside the timed region: the cache a serving engine would hold
            k_fp8 = quantize_k_cache(k_cache)
            row["bytes_fp8"] = shape_bytes(b, h_q, s_q, mean_sk, FP8_ROW_BYTES)
            row["v5_fp8_tile"] = kernel_choice(q, k_fp8, s_q * h_q, 1)
        except Exception as e:  # recorded for each FP8 column; the other implementations still run
            for name in ("v5_fp8", "v5_fp8_o5"):
                if name in versions:
                    row["errors"][name] = f"quantize_k_cache: {_error(e)}"
    fp8_args = (q, k_fp8, block_table, seqlens, 512)
    impls = {
        "v5": lambda: mla_decode_v5(*args, causal=causal, tile_scheduler_metadata=meta, num_splits=splits, **off),
        "v5_o5": lambda: mla_decode_v5(*args, causal=causal, tile_scheduler_metadata=o5_meta,
                                       num_splits=o5_splits, **off),
        "v5_lockstep": lambda: mla_decode_v5(*args, causal=causal, tile_scheduler_metadata=meta, num_splits=splits,
                                             path="gluon", **off),
        "v5_checked": lambda: mla_decode_v5(*args, causal=causal, tile_scheduler_metadata=meta, num_splits=splits),
        "v5_fp8": lambda: mla_decode_v5(*fp8_args, causal=causal, tile_scheduler_metadata=meta, num_splits=splits,
                                        is_fp8_kvcache=True, **off),
        "v5_fp8_o5": lambda: mla_decode_v5(*fp8_args, causal=causal, tile_scheduler_metadata=o5_meta,
                                           num_splits=o5_splits, is_fp8_kvcache=True, **off),
        "v4": lambda: mla_decode_v4(*args, causal=causal, tile_scheduler_metadata=meta, num_splits=splits, **off),
        "v3": lambda: mla_decode_v3(*args, causal=causal, **off),
        "v2": lambda: mla_decode_v2(*args, causal=causal, **off),
        "v1": lambda: mla_decode_v1(*args, causal=causal, **off),
        "torch_paged": lambda: paged_mla_attention(*args, causal=causal),  # stage 3's attention
    }
    if flash_mla is not None:
        try:
            fm_meta, _ = flash_mla.get_mla_metadata()
            impls = {"flashmla": lambda: flash_mla.flash_mla_with_kvcache(*args, fm_meta, None, causal=causal)} | impls
        except Exception as e:  # recorded in the row
            row["errors"]["flashmla"] = _error(e)
    graphed = ("flashmla", "v5", "v5_o5", "v5_lockstep", "v5_fp8", "v5_fp8_o5")  # also timed as CUDA-graph replays
    outputs = {}
    for name, fn in impls.items():
        if name not in versions and name not in ("flashmla", "v5_checked"):
            continue
        if name == "v5_checked" and "v5" not in versions:
            continue
        if name == "v5_lockstep" and row["v5_tile"][0] != "seesaw":  # only where it is what the seesaw replaced
            continue
        if name in ("v5_o5", "v5_fp8_o5") and not o5_differs:  # the same schedule as v5's
            continue
        if name in row["errors"]:  # its inputs could not be made
            continue
        if name in ("v1", "torch_paged") and b * h_q * s_q * mean_sk > V1_MAX_WORK:
            row["skipped"][name] = f"b*h_q*s_q*mean_sk > {V1_MAX_WORK} ({name} would take > ~50 ms a call)"
            continue
        try:
            out, _ = fn()
            _sync(device)
            if name in graphed:
                outputs[name] = out
            entry = {"ms_rounds": [timer(fn)]}
            if name in graphed:
                entry["graph_ms_rounds"] = [graph_timer(fn)]
        except torch.cuda.OutOfMemoryError as e:
            row["skipped"][name] = f"out of memory: {str(e)[:120]}"
            torch.cuda.empty_cache()
            continue
        except Exception as e:  # one failure must not stop the benchmark: recorded in the row
            row["errors"][name] = _error(e)
            continue
        row["impl"][name] = entry
    # More rounds, each in another order: a power-bound shape (h_q 128) runs a few % faster right after a lighter
    # kernel, so the first in a fixed order gains (the same kernels as "v5" and "v5_checked" measured 0.76 and 0.84
    # of FlashMLA at h_q 128, 8k, one after the other). Every implementation's time is its median over the rounds.
    names = list(row["impl"])
    for r in range(1, rounds):
        order = names[::-1] if r % 2 else names[len(names) // 2:] + names[: len(names) // 2]
        for name in order:
            entry = row["impl"][name]
            try:
                entry["ms_rounds"].append(timer(impls[name]))
                if "graph_ms_rounds" in entry:
                    entry["graph_ms_rounds"].append(graph_timer(impls[name]))
            except Exception as e:  # recorded; its other rounds still count
                row["errors"][f"{name} (round {r + 1})"] = _error(e)
    for name, entry in row["impl"].items():
        ms = entry["ms"] = statistics.median(entry["ms_rounds"])
        if "graph_ms_rounds" in entry:
            entry["graph_ms"] = statistics.median(entry["graph_ms_rounds"])
            entry["host_ms_not_hidden"] = ms - entry["graph_ms"]
        impl_bytes = shape_bytes(b, h_q, s_q, mean_sk, row_bytes[name]) if name in row_bytes else nbytes
        gbps, tflops = impl_bytes / ms / 1e6, flops / ms / 1e9
        entry |= {"bytes": impl_bytes, "gbps": gbps, "tflops": tflops, "frac_copy": gbps / roof["copy_gbps"],
                  "frac_matmul": tflops / roof["matmul_tflops"],
                  "roofline_fraction": max(gbps / roof["copy_gbps"], tflops / roof["matmul_tflops"])}
    if "flashmla" in row["impl"]:
        fm = row["impl"]["flashmla"]["ms"]
        row["flashmla_over_ours"] = {k: fm / v["ms"] for k, v in row["impl"].items() if k != "flashmla"}
        if "v5" in outputs:
            row["v5_vs_flashmla"] = _agreement(outputs["v5"], outputs["flashmla"])
    if "v5_fp8" in outputs:
        try:  # the kernel's own error: v5 (bf16 path) on the dequantized cache computes the same (exact dequant)
            ref, _ = mla_decode_v5(q, dequantize_k_cache(k_fp8), block_table, seqlens, 512, causal=causal,
                                   tile_scheduler_metadata=meta, num_splits=splits)
            row["v5_fp8_vs_v5_dequantized"] = _agreement(outputs["v5_fp8"], ref)
            del ref
            for other in ("v5", "flashmla"):  # on the bf16 cache: what the quantization costs
                if other in outputs:
                    row[f"v5_fp8_vs_{other}"] = _agreement(outputs["v5_fp8"], outputs[other])
        except Exception as e:  # recorded in the row
            row["errors"]["v5_fp8_agreement"] = _error(e)
    return row


def _agreement(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {"cos_diff": cos_diff(x, y), "max_abs": float((x.float() - y.float()).abs().max())}


def fmt_row(r) -> str:
    parts = [f"b={r['b']:3d} h_q={r['h_q']:3d} s_q={r['s_q']} s_k={r['s_k']:5d} {r['lengths']:6s}"]
    if "metadata" in r:  # the schedule kernels' µs, call / graph replay
        parts.append("schedule µs " + " ".join(f"{k} {1e3 * m['call_ms']:.1f}/{1e3 * m['graph_ms']:.1f}"
                                               for k, m in r["metadata"].items()))
    for name, e in r.get("impl", {}).items():
        g = f" (graph {e['graph_ms']:.4f})" if "graph_ms" in e else ""
        parts.append(f"{name} {e['ms']:.4f}{g} ms {e['roofline_fraction']:.2f}")
    if "flashmla_over_ours" in r:
        parts.append("FlashMLA/ours " + " ".join(f"{k} {v:.2f}" for k, v in r["flashmla_over_ours"].items()))
    if "v5_fp8_vs_v5_dequantized" in r:
        parts.append(f"fp8 cos_diff vs v5 on dequantized {r['v5_fp8_vs_v5_dequantized']['cos_diff']:.1e}"
                     + (f", vs v5 bf16 {r['v5_fp8_vs_v5']['cos_diff']:.1e}" if "v5_fp8_vs_v5" in r else ""))
    for name, err in r.get("errors", {}).items():
        parts.append(f"{name} ERROR {err[:100]}")
    if "error" in r:
        parts.append(f"shape ERROR {r['error'][:200]}")
    return " | ".join(parts)


def check_targets(rows) -> list[dict]:
    """Issue 8's targets: per shape FlashMLA's time / v5's (b = 128), and the host time at h_q 16, s_k 1k; issue 9's:
    FlashMLA's (bf16) time / v5_fp8's (`FP8_RATIO_TARGETS`). A shape or version that did not run is "not met"."""
    out = []
    for name, targets in (("v5", RATIO_TARGETS), ("v5_fp8", FP8_RATIO_TARGETS)):
        for (h_q, s_q, s_k, dist), target in targets.items():
            for r in rows:
                if (r["b"], r["h_q"], r["s_q"], r["s_k"], r["lengths"]) == (128, h_q, s_q, s_k, dist):
                    got = r.get("flashmla_over_ours", {}).get(name)
                    tile = r.get("v5_fp8_tile" if name == "v5_fp8" else "v5_tile")
                    out.append({"h_q": h_q, "s_q": s_q, "s_k": s_k, "lengths": dist, "issue": 9 if name == "v5_fp8"
                                else 8, "metric": f"flashmla_ms / {name}_ms", "target": target, "measured": got,
                                "met": got is not None and got >= target, "v5_tile": tile[0] if tile else None}
                               | ({"error": r["errors"][name]} if name in r.get("errors", {}) else {}))
    for r in rows:
        if (r["b"], r["h_q"], r["s_q"], r["s_k"], r["lengths"]) == (128, 16, 1, 1024, "fixed") and \
                "v5" in r.get("impl", {}):
            host = r["impl"]["v5"].get("host_ms_not_hidden")
            out.append({"metric": "v5 whole call minus graph replay, h_q 16 s_k 1k (ms)", "target": HOST_TARGET_MS,
                        "measured": host, "met": host is not None and host <= HOST_TARGET_MS})
    return out


def kernel_occupancy_records() -> list[dict]:
    """Occupancy of every kernel this run compiled (registers, spills, shared memory, programs per SM, wgmma or
    mma.sync; measure/occupancy.py), printed as a table and stored in the JSON."""
    from .occupancy import compiled_kernels, kernel_occupancy, occupancy_table, sm_limits

    try:
        limits = sm_limits()
        records = [kernel_occupancy(kernel, limits, name) for name, kernel in compiled_kernels().items()]
    except Exception as e:  # an older or newer Triton without these attributes: say so, keep the timings
        log(f"occupancy unavailable: {e!r}")
        return [{"error": repr(e)}]
    for line in occupancy_table(records):
        log(line)
    return records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="mla-tutorial bench --kernel", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", default="out/bench/kernels.json", help="JSON output (default: out/bench/kernels.json)")
    ap.add_argument("--shapes", default="targets,ablation",
                    help=f"comma-separated shape sets among {sorted(SHAPE_SETS)} (default: targets,ablation)")
    ap.add_argument("--versions", default=",".join(VERSIONS),
                    help="our versions to time (default: all; v1-v3 and stage 3's torch attention only at the "
                         "ablation shapes; v5_fp8: v5 on the FP8 cache, stage 5)")
    ap.add_argument("--quick", action="store_true", help="two target shapes only")
    ap.add_argument("--rounds", type=int, default=3,
                    help="timing rounds per shape, each in another order; the median is kept (default: 3)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    sets = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SHAPE_SETS]
    if unknown:
        ap.error(f"--shapes: unknown set(s) {unknown}; choose among {sorted(SHAPE_SETS)}")
    versions = {v.strip() for v in args.versions.split(",") if v.strip()}
    known = set(VERSIONS)
    if not versions <= known:
        ap.error(f"--versions: unknown {sorted(versions - known)}; choose among {sorted(known)}")
    if not torch.cuda.is_available():
        print("mla-tutorial bench --kernel: needs a CUDA GPU", file=sys.stderr)
        return 2
    out_path = args.out
    with open(out_path, "w") as f:  # fail now, not after the run, if the path cannot be written
        f.write("{}\n")
    torch.manual_seed(0)
    info = device_info()
    log(f"device: {info}")
    roof = measured_roofline("cuda")
    log(f"roofline: copy {roof['copy_gbps']:.0f} GB/s, bf16 matmul {roof['matmul_tflops']:.0f} TFLOP/s")
    flash_mla = _flash_mla()
    result = {"benchmark": "mla_tutorial stage-4 kernels", "device_info": info, "roofline": roof,
              "flash_mla": None if flash_mla is None else getattr(flash_mla, "__file__", "imported"),
              "method": {
                  "timer": "triton.testing.do_bench(warmup=10, rep=40, return_mode='median'), L2 flushed before "
                           "each run; graph_ms: the same call replayed from a CUDA graph",
                  "rounds": f"{args.rounds}: every implementation timed once a round, the order changing between "
                            "rounds (forward, reversed, from the middle, ...); ms is the median of its rounds "
                            "(ms_rounds)",
                  "timed": "whole call: Python wrapper + main kernel + combine; metadata outside (metadata_ms)",
                  "bytes": "b*(s_q*h_q*576*2 + mean_sk*576*2 + s_q*h_q*512*2); v5_fp8: "
                           "b*(s_q*h_q*576*2 + mean_sk*656 + s_q*h_q*512*2) (FlashMLA's 656-byte FP8 rows)",
                  "v5_fp8": "v5 with is_fp8_kvcache=True on quantize_k_cache(k_cache), quantized once outside the "
                            "timed region, check_bounds=False; agreement: cosine difference against v5 on "
                            "dequantize_k_cache(k_fp8) (the kernel's error) and against v5 and FlashMLA on the "
                            "bf16 cache (the quantization's)",
                  "v5_o5": "v5 on get_mla_metadata(..., fixed_overhead=5): FlashMLA's own schedule, where the "
                           "default overhead is not 5 (the small tile's 2; kernels/schedule.py's docstring)",
                  "v5_fp8_o5": "v5_fp8 on the same schedule as v5_o5",
                  "flops": "2*b*h_q*s_q*mean_sk*(576+512)",
                  "data": "mla_tutorial.testing.make_paged_inputs: random bf16, random-permutation block tables, "
                          "NaN in unused slots, sentinel table ids",
                  "flashmla": "FlashMLA's current API form (get_mla_metadata() filled by its first call)"}}
    shapes = []
    for name in sets:
        for shape in SHAPE_SETS[name]:
            if shape not in shapes:
                shapes.append(shape)
    if args.quick:
        shapes = [(128, 16, 1, 4096, "fixed"), (128, 128, 1, 4096, "fixed")]
    rows = []
    t0 = time.perf_counter()
    for i, (b, h_q, s_q, s_k, dist) in enumerate(shapes):
        in_ablation = (b, h_q, s_q, s_k, dist) in ABLATION_SHAPES and "ablation" in sets
        shape_versions = versions if in_ablation else versions & TARGET_VERSIONS
        try:
            row = run_shape(b, h_q, s_q, s_k, dist, roof, shape_versions, flash_mla, seed=i, rounds=args.rounds)
        except Exception as e:  # e.g. the inputs did not fit: recorded, the next shape runs
            row = {"b": b, "h_q": h_q, "s_q": s_q, "s_k": s_k, "lengths": dist, "impl": {}, "errors": {},
                   "error": _error(e)}
            torch.cuda.empty_cache()
        rows.append(row)
        log(f"[{i + 1}/{len(shapes)} {time.perf_counter() - t0:5.0f}s] {fmt_row(row)}")
        result["rows"] = rows
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)
        torch.cuda.empty_cache()
    result["targets"] = check_targets(rows)
    result["occupancy"] = kernel_occupancy_records()
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    for t in result["targets"]:
        log(f"target {t}")
    log(f"wrote {out_path} ({len(rows)} rows, {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
