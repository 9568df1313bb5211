"""The TMA-fed 16-row bf16 tile (kernels/v5_m16.py, path "m16") timed beside v5's choice and FlashMLA, on the GPU.

    PYTHONPATH=.peers/flashmla:src:tests python3 scripts/gpu_m16_probe.py --out $OUT/m16.json [--heads 16]

b = 128, page 64, s_q 1, bf16 cache: h_q 16 at s_k 1k / 4k / 8k and lengths ~ N(4096, 2048) (issue 8's h16 rows);
every variant of v5_m16.M16_VARIANTS (each with a schedule of as many parts as its programs per SM allow), v5's
routed call (the small tile at h16) and FlashMLA when `import flash_mla` works. Each is the whole call, median of
`triton.testing.do_bench` (L2 flushed), plus CUDA-graph replays; before timing a shape, each variant's output is
compared with v5's routed one (max abs, cosine distance). The env section has the copy and bf16-matmul ceilings
measured in this run. The JSON is rewritten after each shape.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

RESULT: dict = {}


def save(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(RESULT, indent=1, default=str))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="m16.json")
    ap.add_argument("--heads", type=int, nargs="*", default=[16])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return

    from triton.testing import do_bench

    import mla_tutorial.kernels as K
    from mla_tutorial.kernels import v5_m16
    from mla_tutorial.kernels.schedule import get_mla_metadata
    from mla_tutorial.measure import kernel_bench
    from mla_tutorial.measure.kernel_bench import cos_diff, make_lengths
    from mla_tutorial.measure.kernel_bench import make_inputs as bench_inputs
    from mla_tutorial.measure.roofline import device_info, measure_copy_bandwidth, measure_matmul_tflops

    try:
        import flash_mla
    except Exception as e:
        flash_mla = None
        RESULT["flash_mla_import"] = repr(e)

    def bench(fn) -> float:
        return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))

    RESULT["env"] = {"info": device_info(), "copy_gbps": measure_copy_bandwidth("cuda")["gbps"],
                     "matmul_tflops": measure_matmul_tflops("cuda")["tflops"], "variants": v5_m16.M16_VARIANTS}
    print("env", RESULT["env"], flush=True)
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    def shape_impls(q, kc, bt, sl, h_q) -> dict:
        """name -> call: v5's routed call, each m16 variant (its own schedule), FlashMLA."""
        meta, splits = get_mla_metadata(sl, h_q, 1)
        impls = {"v5": lambda: K.mla_decode_v5(q, kc, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits,
                                               check_bounds=False)}
        for name, (_, _, _, ctas) in v5_m16.M16_VARIANTS.items():
            m, n = get_mla_metadata(sl, h_q, 1, num_sm_parts=sms * ctas)

            def run(name=name, m=m, n=n):
                saved, v5_m16.M16_DEFAULT = v5_m16.M16_DEFAULT, name
                try:
                    return K.mla_decode_v5(q, kc, bt, sl, 512, tile_scheduler_metadata=m, num_splits=n,
                                           check_bounds=False, path="m16")
                finally:
                    v5_m16.M16_DEFAULT = saved
            impls[f"m16_{name}"] = run
        if flash_mla is not None:
            fm_meta, _ = flash_mla.get_mla_metadata()
            impls["flashmla"] = lambda: flash_mla.flash_mla_with_kvcache(q, kc, bt, sl, 512, fm_meta, None)
        return impls

    rows = RESULT["timing"] = []
    for h_q in args.heads:
        for s_k, dist in [(1024, "fixed"), (4096, "fixed"), (8192, "fixed"), (4096, "normal")]:
            row = {"b": 128, "h_q": h_q, "s_q": 1, "s_k": s_k, "lengths": dist, "ms": {}, "graph_ms": {}, "agree": {}}
            rows.append(row)
            t0 = time.perf_counter()
            try:
                seqlens = make_lengths(128, s_k, dist, 1, torch.Generator().manual_seed(h_q + s_k))
                q, kc, bt, sl = bench_inputs(seqlens, 1, h_q, "cuda", seed=h_q + s_k)
                mean_sk = float(seqlens.float().mean())
                row["bytes"] = 128 * (h_q * (576 + 512) * 2 + mean_sk * 1152)
                row["choice"] = K.kernel_choice(q, kc, h_q, 1)
                impls = shape_impls(q, kc, bt, sl, h_q)
                ref, _ = impls["v5"]()
                for name, fn in impls.items():
                    try:
                        o, _ = fn()
                        torch.cuda.synchronize()
                        row["agree"][name] = {"max_abs": float((o.float() - ref.float()).abs().max()),
                                              "cos_diff": cos_diff(o, ref), "finite": bool(torch.isfinite(o).all())}
                        row["ms"][name] = bench(fn)
                        row["graph_ms"][name] = kernel_bench.graph_ms(fn, bench)
                    except Exception as e:
                        row["ms"][name] = f"{type(e).__name__}: {str(e)[:300]}"
                ms = row["ms"]
                if isinstance(ms.get("flashmla"), float):
                    row["ratio_vs_flashmla"] = {k: ms["flashmla"] / v for k, v in ms.items() if isinstance(v, float)}
                row["fraction_of_copy"] = {k: row["bytes"] / v / 1e6 / RESULT["env"]["copy_gbps"]
                                           for k, v in ms.items() if isinstance(v, float)}
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:800]}"
                row["traceback"] = traceback.format_exc()[-2000:]
            print(f"h{h_q} sk{s_k} {dist} ({time.perf_counter() - t0:.0f} s): " + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} ERR" for k, v in row["ms"].items())
                + f" | graph {({k: round(v, 4) for k, v in row['graph_ms'].items() if v})}"
                + f" | ratio {({k: round(v, 3) for k, v in row.get('ratio_vs_flashmla', {}).items()})}"
                + f" | agree {({k: round(a['max_abs'], 5) for k, a in row['agree'].items()})}", flush=True)
            save(args.out)
            torch.cuda.empty_cache()
    print("done", flush=True)


if __name__ == "__main__":
    main()
