"""GPU probe 3 for kernel v5: block ids fetched one step ahead, tile heights 32, and where the host time goes.

    PYTHONPATH=.peers/flashmla:src python3 scripts/gpu_v5_probe3.py --out $OUT/probe3.json
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
    ap.add_argument("--out", default="probe3.json")
    args = ap.parse_args()
    from test_kernels import check_against_reference, make_inputs
    from triton.testing import do_bench

    import mla_tutorial.kernels as K
    from mla_tutorial.measure.kernel_bench import make_inputs as bench_inputs
    from mla_tutorial.measure.kernel_bench import make_lengths
    from mla_tutorial.kernels import v5 as V5
    from mla_tutorial.kernels.common import TileConfig, validate_decode_inputs, validate_metadata
    from mla_tutorial.kernels.schedule import get_mla_metadata
    from mla_tutorial.kernels.v5_gluon import GluonConfig, launch_v5_gluon
    from mla_tutorial.kernels.v5_small import launch_v5_small
    from mla_tutorial.kernels.combine import combine_splits

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
        print(f"== {name} ({time.perf_counter() - t0:.1f} s): {str(RESULT[name])[:3000]}", flush=True)
        save()

    def bench(fn):
        return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))

    def inputs(b, h_q, s_q, s_k, dist, seed=0):
        seqlens = make_lengths(b, s_k, dist, s_q, torch.Generator().manual_seed(seed))
        q, kc, bt, sl = bench_inputs(seqlens, s_q, h_q, "cuda", seed=seed)
        return q, kc, bt, sl, float(seqlens.float().mean())

    def correctness():
        out = {}
        for name, s_q, h_q, causal in [("h128", 1, 128, False), ("h64-sq2-causal", 2, 64, True), ("h32", 1, 32, False)]:
            q, kc, bt, sl = make_inputs([0, 1, 20, 63, 64, 65, 140, 4096], s_q, h_q, 1, torch.bfloat16, seed=h_q,
                                        device="cuda")
            flag = torch.ones(1, dtype=torch.int32, device="cuda")
            try:
                check_against_reference(K.mla_decode_v5, q, kc, bt, sl, causal, error_flag=flag)
                out[name] = {"ok": True, "flag": int(flag.item())}
            except Exception as e:
                out[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
        return out
    run("correctness", correctness)

    def timing():
        rows = []
        for h_q, s_k in [(64, 4096), (128, 4096), (16, 4096), (64, 1024), (32, 4096), (32, 1024)]:
            q, kc, bt, sl, _ = inputs(128, h_q, 1, s_k, "fixed", seed=h_q + s_k)
            row = {"h_q": h_q, "s_k": s_k, "ms": {}}
            fns = {}
            meta1, sp1 = get_mla_metadata(sl, h_q, 1, num_sm_parts=132)
            for mode in (0, 1, 2):
                fns[f"gluon_mode{mode}"] = (lambda c=GluonConfig(64, 2, mode): K.mla_decode_v5(
                    q, kc, bt, sl, 512, tile_scheduler_metadata=meta1, num_splits=sp1, check_bounds=False,
                    path="gluon", config=c))
            if h_q <= 32:
                for cfg in [(h_q, 64, 4, 2, 2), (h_q, 32, 4, 3, 2), (h_q, 64, 8, 2, 1), (h_q, 32, 4, 5, 2)]:
                    tc = TileConfig(*cfg)
                    m, sp = get_mla_metadata(sl, h_q, 1, num_sm_parts=132 * cfg[4])
                    fns[f"small{cfg[1:]}"] = (lambda tc=tc, m=m, sp=sp: K.mla_decode_v5(
                        q, kc, bt, sl, 512, tile_scheduler_metadata=m, num_splits=sp, check_bounds=False,
                        path="small", config=tc))
            if flash_mla is not None:
                fm, _ = flash_mla.get_mla_metadata()
                fns["flashmla"] = lambda: flash_mla.flash_mla_with_kvcache(q, kc, bt, sl, 512, fm, None)
            for name, fn in fns.items():
                try:
                    fn()
                    torch.cuda.synchronize()
                    row["ms"][name] = round(bench(fn), 4)
                except Exception as e:
                    row["ms"][name] = f"{type(e).__name__}: {str(e)[:300]}"
            print(row, flush=True)
            rows.append(row)
        return rows
    run("timing", timing)

    def host():
        q, kc, bt, sl, _ = inputs(1, 16, 1, 64, "fixed", seed=1)
        meta, splits = get_mla_metadata(sl, 16, 1)
        dims = validate_decode_inputs(q, kc, bt, sl, 512)
        out = torch.empty(1, 1, 16, 512, dtype=q.dtype, device="cuda")
        lse = torch.empty(1, 16, 1, dtype=torch.float32, device="cuda")
        slots = 1 + meta.shape[0]
        po = torch.empty(slots, 16, 512, dtype=torch.float32, device="cuda")
        pl = torch.empty(slots, 16, dtype=torch.float32, device="cuda")
        flag = V5.ok_flag(q.device)
        cfg = K.common.launch_config(16, q.device)
        q64, kc64, bt64, sl64, _ = inputs(1, 64, 1, 64, "fixed", seed=1)
        dims64 = validate_decode_inputs(q64, kc64, bt64, sl64, 512)
        out64 = torch.empty(1, 1, 64, 512, dtype=q.dtype, device="cuda")
        lse64 = torch.empty(1, 64, 1, dtype=torch.float32, device="cuda")
        po64 = torch.empty(slots, 64, 512, dtype=torch.float32, device="cuda")
        pl64 = torch.empty(slots, 64, dtype=torch.float32, device="cuda")
        fns = {
            "validate": lambda: validate_decode_inputs(q, kc, bt, sl, 512),
            "validate_metadata": lambda: validate_metadata(meta, splits, 1, q.device),
            "kernel_choice": lambda: K.kernel_choice(q, kc, 16, 1),
            "empty_x4": lambda: [torch.empty(1, 1, 16, 512, dtype=q.dtype, device="cuda") for _ in range(4)],
            "launch_small": lambda: launch_v5_small(q, kc, bt, sl, dims, False, meta, splits, out, lse, po, pl, flag,
                                                    cfg),
            "launch_gluon": lambda: launch_v5_gluon(q64, kc64, bt64, sl64, dims64, False, meta, splits, out64, lse64,
                                                    po64, pl64, flag),
            "combine": lambda: combine_splits(po, pl, splits, out, lse),
            "assert_async": lambda: torch._assert_async(flag, "msg"),
            "v5_small_call": lambda: K.mla_decode_v5(q, kc, bt, sl, 512, tile_scheduler_metadata=meta,
                                                     num_splits=splits, check_bounds=False),
            "api_call": lambda: K.flash_mla_with_kvcache(q, kc, bt, sl, 512, meta, splits),
            "get_mla_metadata": lambda: get_mla_metadata(sl, 16, 1),
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
            res[name + "_us"] = round((time.perf_counter() - t0) / 200 * 1e6, 2)
            torch.cuda.synchronize()
        return res
    run("host", host)
    print("done", flush=True)


if __name__ == "__main__":
    main()
