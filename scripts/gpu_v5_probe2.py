"""GPU probe 2 for kernel v5: the Gluon tile's ring (keys per step x stages), its parts timed apart, host cost.

    PYTHONPATH=.peers/flashmla:src python3 scripts/gpu_v5_probe2.py --out $OUT/probe2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
RESULT: dict = {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="probe2.json")
    args = ap.parse_args()
    from test_kernels import check_against_reference, make_inputs
    from triton.testing import do_bench

    import mla_tutorial.kernels as K
    from mla_tutorial.measure.kernel_bench import make_inputs as bench_inputs
    from mla_tutorial.measure.kernel_bench import make_lengths
    from mla_tutorial.kernels.common import TileConfig
    from mla_tutorial.kernels.schedule import get_mla_metadata
    from mla_tutorial.kernels.v5_gluon import GluonConfig
    from mla_tutorial.measure.roofline import device_info, measure_copy_bandwidth, measure_matmul_tflops

    try:
        import flash_mla
    except Exception:
        flash_mla = None

    def save():
        Path(args.out).write_text(json.dumps(RESULT, indent=1, default=str))

    def run(name, fn):
        t0 = time.perf_counter()
        try:
            RESULT[name] = fn()
        except Exception as e:
            RESULT[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        print(f"== {name} ({time.perf_counter() - t0:.1f} s)", flush=True)
        save()

    def bench(fn):
        return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))

    def graph_ms(fn):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        return bench(g.replay)

    def inputs(b, h_q, s_q, s_k, dist, seed=0):
        seqlens = make_lengths(b, s_k, dist, s_q, torch.Generator().manual_seed(seed))
        q, kc, bt, sl = bench_inputs(seqlens, s_q, h_q, "cuda", seed=seed)
        return q, kc, bt, sl, float(seqlens.float().mean())

    run("env", lambda: {"info": device_info(), "copy_gbps": measure_copy_bandwidth("cuda")["gbps"],
                        "matmul_tflops": measure_matmul_tflops("cuda")["tflops"]})
    print(RESULT["env"], flush=True)
    CONFIGS = [(64, 2), (32, 4), (32, 3), (16, 8), (16, 6)]
    LENGTHS = [0, 1, 20, 63, 64, 65, 140, 4096]

    def correctness():
        out = {}
        for sub, st in CONFIGS:
            for name, s_q, h_q, causal in [("h128", 1, 128, False), ("h64-sq2-causal", 2, 64, True),
                                           ("h16-gluon", 1, 16, False)]:
                key = f"{sub}x{st}-{name}"
                try:
                    q, kc, bt, sl = make_inputs(LENGTHS, s_q, h_q, 1, torch.bfloat16, seed=h_q + sub, device="cuda")
                    flag = torch.ones(1, dtype=torch.int32, device="cuda")
                    check_against_reference(K.mla_decode_v5, q, kc, bt, sl, causal, error_flag=flag, path="gluon",
                                            config=GluonConfig(sub, st))
                    out[key] = {"ok": True, "flag": int(flag.item())}
                except Exception as e:
                    out[key] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
                print(key, out[key], flush=True)
        return out
    run("correctness", correctness)

    def configs():
        rows = []
        for h_q, s_q, s_k in [(64, 1, 4096), (128, 1, 4096), (16, 1, 4096), (64, 1, 1024), (128, 2, 4096)]:
            q, kc, bt, sl, mean_sk = inputs(128, h_q, s_q, s_k, "fixed", seed=h_q + s_k)
            causal = s_q > 1
            meta, splits = get_mla_metadata(sl, s_q * h_q, 1, num_sm_parts=132 // max(1, (s_q * h_q) // 64))
            row = {"h_q": h_q, "s_q": s_q, "s_k": s_k, "ms": {}, "graph_ms": {}}
            fns = {}
            for sub, st in CONFIGS:
                fns[f"g{sub}x{st}"] = (lambda c=GluonConfig(sub, st): K.mla_decode_v5(
                    q, kc, bt, sl, 512, causal=causal, tile_scheduler_metadata=meta, num_splits=splits,
                    check_bounds=False, path="gluon", config=c))
            if h_q == 64 and s_k == 4096:
                for sub, st in [(64, 2), (32, 4)]:
                    for mode in (1, 2):
                        fns[f"g{sub}x{st}-mode{mode}"] = (lambda c=GluonConfig(sub, st, mode): K.mla_decode_v5(
                            q, kc, bt, sl, 512, causal=causal, tile_scheduler_metadata=meta, num_splits=splits,
                            check_bounds=False, path="gluon", config=c))
            fns["v5_default_checked"] = lambda: K.mla_decode_v5(q, kc, bt, sl, 512, causal=causal)
            if flash_mla is not None:
                fm, _ = flash_mla.get_mla_metadata()
                fns["flashmla"] = lambda: flash_mla.flash_mla_with_kvcache(q, kc, bt, sl, 512, fm, None,
                                                                          causal=causal)
            for name, fn in fns.items():
                try:
                    fn()
                    torch.cuda.synchronize()
                    row["ms"][name] = bench(fn)
                    row["graph_ms"][name] = graph_ms(fn)
                except Exception as e:
                    row["ms"][name] = f"{type(e).__name__}: {str(e)[:300]}"
            print(h_q, s_q, s_k, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row["ms"].items()},
                  {k: round(v, 4) for k, v in row["graph_ms"].items()}, flush=True)
            rows.append(row)
            RESULT["configs"] = rows
            save()
        return rows
    run("configs", configs)

    def small():
        rows = []
        for s_k in (1024, 4096, 8192):
            q, kc, bt, sl, _ = inputs(128, 16, 1, s_k, "fixed", seed=s_k)
            for bm, bn, w, st, ctas in [(16, 64, 4, 2, 2), (16, 32, 4, 5, 2), (16, 32, 4, 3, 2), (16, 64, 4, 3, 1)]:
                cfg = TileConfig(bm, bn, w, st, ctas)
                meta, splits = get_mla_metadata(sl, 16, 1, num_sm_parts=132 * ctas)
                fn = lambda cfg=cfg, meta=meta, splits=splits: K.mla_decode_v5(  # noqa: E731
                    q, kc, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits, check_bounds=False,
                    path="small", config=cfg)
                try:
                    fn()
                    torch.cuda.synchronize()
                    rows.append({"s_k": s_k, "cfg": [bm, bn, w, st, ctas], "ms": bench(fn), "graph_ms": graph_ms(fn)})
                except Exception as e:
                    rows.append({"s_k": s_k, "cfg": [bm, bn, w, st, ctas], "error": repr(e)[:300]})
                print(rows[-1], flush=True)
        return rows
    run("small", small)

    def host():
        q, kc, bt, sl, _ = inputs(1, 16, 1, 64, "fixed", seed=1)
        q64, kc64, bt64, sl64, _ = inputs(1, 64, 1, 64, "fixed", seed=1)
        meta, splits = get_mla_metadata(sl, 16, 1)
        fns = {
            "get_mla_metadata": lambda: get_mla_metadata(sl, 16, 1),
            "v5_small": lambda: K.mla_decode_v5(q, kc, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits,
                                                check_bounds=False),
            "v5_small_checked": lambda: K.mla_decode_v5(q, kc, bt, sl, 512, tile_scheduler_metadata=meta,
                                                        num_splits=splits),
            "v5_gluon": lambda: K.mla_decode_v5(q64, kc64, bt64, sl64, 512, tile_scheduler_metadata=meta,
                                                num_splits=splits, check_bounds=False),
            "api": lambda: K.flash_mla_with_kvcache(q, kc, bt, sl, 512, meta, splits),
            "v4": lambda: K.mla_decode_v4(q, kc, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits),
        }
        if flash_mla is not None:
            fm, _ = flash_mla.get_mla_metadata()
            fns["flashmla"] = lambda: flash_mla.flash_mla_with_kvcache(q, kc, bt, sl, 512, fm, None)
        res = {}
        for name, fn in fns.items():
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                fn()
            res[name + "_us"] = (time.perf_counter() - t0) / 200 * 1e6
            torch.cuda.synchronize()
        print(res, flush=True)
        return res
    run("host", host)

    def api_check():
        gen = torch.Generator().manual_seed(3)
        lens = torch.normal(4096.0, 2048.0, (64,), generator=gen).round().clamp(min=2).int().tolist()
        q, kc, bt, sl = make_inputs(lens, 2, 128, 1, torch.bfloat16, seed=5, device="cuda")
        meta, splits = K.get_mla_metadata(sl, 2 * 128, 1)

        def call(q, k_cache, block_table, seqlens, head_dim_v, softmax_scale=None, causal=False):
            return K.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, head_dim_v, meta, splits,
                                            softmax_scale=softmax_scale, causal=causal)
        check_against_reference(call, q, kc, bt, sl, True)
        torch.cuda.synchronize()
        return {"ok": True}
    run("api_check", api_check)
    print("done", flush=True)


if __name__ == "__main__":
    main()
