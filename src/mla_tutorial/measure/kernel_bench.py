"""GPU benchmark of the stage-4 kernels against the measured roofline and the torch paged stage.

    python -m mla_tutorial.bench_kernels --out kernels.json [--quick] [--tune]

FlashMLA's shapes: b = 128, page 64, bf16, h_q in {16, 32, 64, 128}, s_q in {1, 2} (s_q = 2 causal),
s_k in {1k, 4k, 8k, 16k, 32k}, fixed lengths and lengths ~ Normal(s_k, s_k/2) clipped >= s_q; plus
b in {1, 2, 4, 8} for latency. Random data (never zeros), random-permutation block tables, NaN in
every unused cache slot. Each call is timed whole (Python wrapper, split and combine kernels) as the
median of `triton.testing.do_bench`, which flushes L2 before every run; the metadata is computed
outside the timed region, as a serving engine does once per decode step for all layers.

Reported per row: ms, GB/s (bytes = b·(s_q·h_q·576·2 + mean_sk·576·2 + s_q·h_q·512·2)), TFLOP/s
(2·b·h_q·s_q·mean_sk·1088), fractions of the copy bandwidth and of the 8192³ bf16 matmul rate
measured in the same run, speedups over the torch paged stage and over each earlier version.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from ..kernels import common
from ..kernels.api import flash_mla_with_kvcache, get_mla_metadata
from ..kernels.common import TileConfig, set_tile_config_override
from ..kernels.v1_naive import mla_decode_v1
from ..kernels.v2_head_tiled import mla_decode_v2
from ..kernels.v3_split_kv import mla_decode_v3
from .roofline import device_info, measure_copy_bandwidth, measure_matmul_tflops

PAGE = 64
SENTINEL = 2**31 - 1
V1_MAX_WORK = 128 * 64 * 4096  # b·h_q·s_q·mean_sk above which v1 is skipped (it would take > ~50 ms a call)


def log(msg: str) -> None:
    print(msg, flush=True)


def make_lengths(b: int, s_k: int, dist: str, s_q: int, gen: torch.Generator) -> torch.Tensor:
    if dist == "fixed":
        return torch.full((b,), s_k, dtype=torch.int32)
    lens = torch.normal(float(s_k), s_k / 2, (b,), generator=gen).round().clamp(min=s_q)
    return lens.to(torch.int32)


def make_inputs(seqlens: torch.Tensor, s_q: int, h_q: int, device, dtype=torch.bfloat16, seed: int = 0):
    """q, k_cache, block_table, cache_seqlens on `device`: random data, permuted pages, NaN unused slots."""
    gen = torch.Generator().manual_seed(seed)
    b = seqlens.shape[0]
    pages = (seqlens + PAGE - 1) // PAGE  # (b,)
    max_pages = int(pages.max()) + 1
    total = int(pages.sum())
    num_blocks = total + 8
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    col = torch.arange(max_pages)
    used = col[None, :] < pages[:, None]  # (b, max_pages)
    block_table = torch.full((b, max_pages), SENTINEL, dtype=torch.int32)
    block_table[used] = perm[:total]
    fill = torch.zeros(num_blocks, dtype=torch.int64)  # valid slots per physical page
    fill[block_table[used].long()] = (seqlens[:, None].long() - PAGE * col[None, :]).clamp(0, PAGE)[used]
    k_cache = torch.randn(num_blocks, PAGE, 1, 576, dtype=dtype, device=device)
    unused = torch.arange(PAGE)[None, :] >= fill[:, None]  # (num_blocks, 64)
    k_cache[unused.to(device)] = float("nan")
    q = torch.randn(b, s_q, h_q, 576, dtype=dtype, device=device)
    return q, k_cache, block_table.to(device), seqlens.to(device)


def bench_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))


def cos_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double(), y.double()
    return float(1 - 2 * (x * y).sum() / (x * x + y * y).sum().clamp_min(1e-12))


def _torch_paged():
    try:
        from ..stage3_paged import paged_mla_attention

        return paged_mla_attention
    except Exception as e:  # not written yet
        log(f"torch paged stage unavailable: {e!r}")
        return None


def run_shape(b, h_q, s_q, s_k, dist, roof, versions, seed=0, check=True):
    causal = s_q > 1
    gen = torch.Generator().manual_seed(seed)
    seqlens = make_lengths(b, s_k, dist, s_q, gen)
    q, k_cache, block_table, cache_seqlens = make_inputs(seqlens, s_q, h_q, "cuda", seed=seed)
    mean_sk = float(seqlens.float().mean())
    bytes_ = b * (s_q * h_q * 576 * 2 + mean_sk * 576 * 2 + s_q * h_q * 512 * 2)
    flops = 2 * b * h_q * s_q * mean_sk * (576 + 512)
    meta, splits = get_mla_metadata(cache_seqlens, s_q * h_q, 1)
    t0 = time.perf_counter()
    meta_ms = bench_ms(lambda: get_mla_metadata(cache_seqlens, s_q * h_q, 1))
    args = (q, k_cache, block_table, cache_seqlens, 512)
    impls = {
        "flash_mla_with_kvcache": lambda: flash_mla_with_kvcache(*args, meta, splits, causal=causal),
        "v3_split_kv": lambda: mla_decode_v3(*args, causal=causal),
        "v2_head_tiled": lambda: mla_decode_v2(*args, causal=causal),
        "v1_naive": lambda: mla_decode_v1(*args, causal=causal),
    }
    paged = _torch_paged()
    if paged is not None:
        impls["torch_paged"] = lambda: paged(*args, causal=causal)
    row = {"b": b, "h_q": h_q, "s_q": s_q, "causal": causal, "s_k": s_k, "lengths": dist, "mean_sk": mean_sk,
           "bytes": bytes_, "flops": flops, "metadata_ms": meta_ms, "impl": {}, "skipped": {}}
    ref = None
    for name, fn in impls.items():
        if name not in versions:
            continue
        if name == "v1_naive" and b * h_q * s_q * mean_sk > V1_MAX_WORK:
            row["skipped"][name] = f"b*h_q*s_q*mean_sk > {V1_MAX_WORK} (v1 would take > ~50 ms a call)"
            continue
        try:
            out, lse = fn()
            torch.cuda.synchronize()
            entry = {}
            if check:
                if ref is None:
                    ref = (out.float(), lse)
                    entry["finite"] = bool(torch.isfinite(out).all())
                else:
                    entry["cos_diff_vs_api"] = cos_diff(out.float(), ref[0])
                    fin = torch.isfinite(ref[1])
                    entry["lse_max_abs_diff_vs_api"] = float((lse[fin] - ref[1][fin]).abs().max()) if fin.any() else 0.0
            del out, lse
            ms = bench_ms(fn)
        except torch.cuda.OutOfMemoryError as e:
            row["skipped"][name] = f"out of memory: {str(e)[:120]}"
            torch.cuda.empty_cache()
            continue
        gbps, tflops = bytes_ / ms / 1e6, flops / ms / 1e9
        entry.update(ms=ms, gbps=gbps, tflops=tflops, frac_copy=gbps / roof["copy_gbps"],
                     frac_matmul=tflops / roof["matmul_tflops"])
        row["impl"][name] = entry
    api = row["impl"].get("flash_mla_with_kvcache")
    if api:
        row["speedup_of_v4"] = {k: v["ms"] / api["ms"] for k, v in row["impl"].items() if k != "flash_mla_with_kvcache"}
    row["wall_s"] = time.perf_counter() - t0
    return row


def fmt_row(r) -> str:
    api = r["impl"].get("flash_mla_with_kvcache", {})
    sp = r.get("speedup_of_v4", {})
    parts = [f"b={r['b']:3d} h_q={r['h_q']:3d} s_q={r['s_q']} s_k={r['s_k']:5d} {r['lengths']:6s}",
             f"v4 {api.get('ms', float('nan')):7.3f} ms {api.get('gbps', 0):6.0f} GB/s {api.get('tflops', 0):5.0f} TF",
             f"copy {api.get('frac_copy', 0):.2f} mm {api.get('frac_matmul', 0):.2f}"]
    parts += [f"x{v:.2f} {k.split('_')[0]}" for k, v in sp.items()]
    return " | ".join(parts)


# ---------------------------------------------------------------------------------------------
# tuning: try launch configs per BLOCK_M class on representative shapes, keep the fastest
# ---------------------------------------------------------------------------------------------
TUNE_CANDIDATES = {
    16: [(64, 4, 2, 2), (32, 4, 5, 2), (32, 4, 4, 2), (64, 8, 3, 1), (32, 8, 5, 2), (64, 4, 2, 1), (32, 4, 5, 4)],
    32: [(64, 4, 2, 1), (32, 4, 5, 1), (32, 4, 5, 2), (64, 8, 3, 1), (32, 8, 5, 1)],
    64: [(64, 8, 2, 1), (32, 8, 3, 1), (32, 8, 4, 1), (64, 8, 1, 1), (16, 8, 4, 1), (32, 8, 4, 2)],
}
TUNE_SHAPES = {  # block_m -> [(h_q, s_q, s_k, dist)]
    16: [(16, 1, 4096, "fixed"), (16, 1, 1024, "fixed")],
    32: [(32, 1, 4096, "fixed")],
    64: [(64, 1, 4096, "fixed"), (128, 1, 4096, "fixed"), (128, 2, 4096, "fixed")],
}


def _time_api(inputs, causal: bool) -> float:
    q, k_cache, block_table, seqlens = inputs
    meta, splits = get_mla_metadata(seqlens, q.shape[1] * q.shape[2], 1)

    def fn():
        return flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, meta, splits, causal=causal)

    fn()
    return bench_ms(fn)


def tune(roof, b=128) -> dict:
    results = {}
    for bm, cands in TUNE_CANDIDATES.items():
        scores = []
        for bn, nw, st, ctas in cands:
            cfg = TileConfig(bm, bn, nw, st, ctas)
            set_tile_config_override(bm, cfg)
            total = 0.0
            per = []
            try:
                for h_q, s_q, s_k, dist in TUNE_SHAPES[bm]:
                    seqlens = make_lengths(b, s_k, dist, s_q, torch.Generator().manual_seed(0))
                    ms = _time_api(make_inputs(seqlens, s_q, h_q, "cuda"), s_q > 1)
                    per.append(ms)
                    total += math.log(ms)
            except Exception as e:  # compile failure (shared memory), ...
                log(f"tune bm={bm} {cfg}: failed {str(e)[:200]}")
                continue
            scores.append((total, cfg, per))
            log(f"tune bm={bm} bn={bn} warps={nw} stages={st} ctas={ctas}: {[round(x, 3) for x in per]} ms")
        if scores:
            best = min(scores, key=lambda s: s[0])
            set_tile_config_override(bm, best[1])
            results[bm] = {"best": best[1].__dict__, "trials": [{"config": c.__dict__, "ms": p} for _, c, p in scores]}
            log(f"tune bm={bm}: best {best[1]}")
        else:
            set_tile_config_override(bm, None)
    return results


# The H100 targets (FlashMLA reaches these): (h_q, s_q, s_k, lengths, metric, threshold)
TARGETS = [
    (16, 1, 1024, "fixed", "frac_copy", 0.76), (64, 1, 1024, "fixed", "frac_copy", 0.76),
    (16, 1, 4096, "fixed", "frac_copy", 0.87), (64, 1, 4096, "fixed", "frac_copy", 0.87),
    (16, 1, 8192, "fixed", "frac_copy", 0.91), (64, 1, 8192, "fixed", "frac_copy", 0.91),
    (16, 1, 4096, "normal", "frac_copy", 0.84),
    (128, 1, 4096, "fixed", "frac_matmul", 0.70), (128, 1, 8192, "fixed", "frac_matmul", 0.70),
    (128, 2, 4096, "fixed", "frac_matmul", 0.75),
]


def check_targets(rows) -> list[dict]:
    """Each target with the measured fraction of flash_mla_with_kvcache (b = 128), and whether it is met."""
    out = []
    for h_q, s_q, s_k, dist, metric, threshold in TARGETS:
        for r in rows:
            if (r["b"], r["h_q"], r["s_q"], r["s_k"], r["lengths"]) == (128, h_q, s_q, s_k, dist):
                got = r["impl"].get("flash_mla_with_kvcache", {}).get(metric)
                out.append({"h_q": h_q, "s_q": s_q, "s_k": s_k, "lengths": dist, "metric": metric,
                            "target": threshold, "measured": got, "met": got is not None and got >= threshold})
    slower = [(r["b"], r["h_q"], r["s_q"], r["s_k"], r["lengths"]) for r in rows
              if r.get("speedup_of_v4", {}).get("torch_paged", 2.0) < 1.0]
    out.append({"target": "beat the torch paged stage at every shape", "met": not slower, "slower_at": slower})
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="kernels_bench.json")
    ap.add_argument("--quick", action="store_true", help="a few shapes only (~1 min)")
    ap.add_argument("--tune", action="store_true", help="try launch configs first, use the fastest")
    ap.add_argument("--versions", default="flash_mla_with_kvcache,v3_split_kv,v2_head_tiled,v1_naive,torch_paged")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        log("bench_kernels needs a CUDA GPU")
        return 2
    torch.manual_seed(0)
    versions = set(args.versions.split(","))
    info = device_info()
    log(f"device: {info}")
    copy = measure_copy_bandwidth("cuda")
    mm = measure_matmul_tflops("cuda", 8192)
    roof = {"copy_gbps": copy["gbps"], "matmul_tflops": mm["tflops"], "copy": copy, "matmul": mm}
    log(f"roofline: copy {copy['gbps']:.0f} GB/s, bf16 matmul {mm['tflops']:.0f} TFLOP/s")
    result = {"device_info": info, "roofline": roof, "method": {
        "timer": "triton.testing.do_bench(warmup=10, rep=40, return_mode='median'), L2 flushed before each run",
        "timed": "whole call: Python wrapper + main kernel + combine; metadata outside (metadata_ms separately)",
        "bytes": "b*(s_q*h_q*576*2 + mean_sk*576*2 + s_q*h_q*512*2)",
        "flops": "2*b*h_q*s_q*mean_sk*(576+512)",
        "v1_skip": f"v1_naive skipped where b*h_q*s_q*mean_sk > {V1_MAX_WORK}",
        "data": "random bf16 (randn), random-permutation block tables, NaN in unused slots, sentinel table ids",
    }}
    if args.tune:
        result["tuning"] = tune(roof)
    result["configs"] = {bm: common.launch_config(bm, torch.device("cuda")).__dict__ for bm in (16, 32, 64)}
    log(f"configs: {result['configs']}")

    shapes = []
    if args.quick:
        for h_q, s_q in [(16, 1), (64, 1), (128, 1), (128, 2)]:
            shapes.append((128, h_q, s_q, 4096, "fixed"))
        shapes.append((128, 16, 1, 4096, "normal"))
        shapes.append((1, 16, 1, 32768, "fixed"))
    else:
        for b in (1, 2, 4, 8):  # latency first: quick
            for h_q in (16, 128):
                for s_k in (4096, 32768):
                    shapes.append((b, h_q, 1, s_k, "fixed"))
        for s_k in (1024, 4096, 8192, 16384, 32768):
            for h_q in (16, 32, 64, 128):
                for s_q in (1, 2):
                    for dist in ("fixed", "normal"):
                        shapes.append((128, h_q, s_q, s_k, dist))
    rows = []
    t0 = time.perf_counter()
    for i, (b, h_q, s_q, s_k, dist) in enumerate(shapes):
        row = run_shape(b, h_q, s_q, s_k, dist, roof, versions, seed=i)
        rows.append(row)
        log(f"[{i + 1}/{len(shapes)} {time.perf_counter() - t0:5.0f}s] {fmt_row(row)}")
        result["rows"] = rows
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    result["targets"] = check_targets(rows)
    result["occupancy"] = kernel_occupancy_records()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for t in result["targets"]:
        log(f"target {t}")
    log(f"wrote {args.out} ({len(rows)} rows, {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
