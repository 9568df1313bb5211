"""GPU benchmark of the FP8 cache path (stage 5) beside the bf16 v5 path and FlashMLA's bf16 dense kernel.

    PYTHONPATH=.peers/flashmla:src python3 scripts/gpu_fp8_bench.py --out $OUT/fp8_bench.json [--quick]

Safe to run blind: every section and every shape is guarded, and the JSON is rewritten after each shape.
1. env: card, versions, and the copy / bf16-matmul ceilings measured in this run.
2. correctness: the FP8 path (`mla_decode_v5(..., is_fp8_kvcache=True)`) against the fp32 reference applied to
   `dequantize_k_cache(k_fp8)` on FlashMLA's hostile recipe (lengths 0, 1, 20, 63, 64, 65, 140, 4096 in one batch;
   NaN in unused rows, so NaN bytes and scales; sentinel ids), h_q 16/64/128, s_q 1/2, both load modes of the small
   tile, the Gluon FP8 tile, its warp-specialised form (path "seesaw", v5_fp8_ws.py) and the FP8 seesaw tile (path
   "fp8ss", v5_fp8_seesaw.py; v5's choice above 16 rows), and with --mma the 16-row
   Gluon FP8 tile (path "mma", v5_fp8_mma.py; v5's choice at up to 16 rows), with the bf16 tolerances;
   and the API at b = 64, lengths ~ N(4096, 2048). The in-kernel bounds flag is read, never asserted, here.
3. timing: b = 128, page 64, h_q 16/64/128 at s_k 4096/8192 (fixed lengths) and h_q 16 at lengths ~ N(4096, 2048),
   s_q 1: the FP8 path (plain loads, and TMA loads: v5_small.FP8_LOADS; fp8_gluon / fp8_ws / fp8_ss: the Gluon FP8
   tiles forced, lockstep / warp-specialised / the FP8 seesaw), bf16 v5 and FlashMLA (when
   `import flash_mla` works), each as the whole call, median of
   `triton.testing.do_bench` (L2 flushed), plus CUDA-graph replays; GB/s counts the bytes each one reads (FP8:
   656 per cached token, bf16: 1,152); ratio_vs_flashmla = FlashMLA ms / ours (the issue's targets: >= 1.5 at h16,
   >= 1.2 at h64, >= 0.8 at h128 s_k 4096). Before timing a shape, its FP8 output is compared with the bf16 v5
   output on the same (unquantized) cache: the cosine distance is the quantization's effect there.
4. fp8_configs: other small-tile launch configurations of the FP8 path, both load modes, at h16 and h128, s_k 4096
   (the defaults in v5_small.FP8_SMALL_TILE_CONFIGS / FP8_TMA_SMALL_TILE_CONFIGS come from compile reports only).
   With --parts, the warp-specialised FP8 tile's parts alone (GluonConfig(mode=1): the dequantizing producer, the
   consumers handing each page back unread; mode=2: the consumers' math on slots the producer hands over untouched)
   and the bf16 lockstep tile's compute alone (its mode 2): results meaningless, times for the profile.
5. append: the cost of quantizing one decode step's new rows (b = 128, one token each) as stage 5 does.

`--smoke` runs every section on the CPU (Triton's interpreter) at tiny shapes, without graphs or timings that
mean anything: a check that the script itself works before it spends GPU time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from with_knobs import current_knobs  # noqa: E402

from mla_tutorial.kernels import v5_fp8_reg  # noqa: E402

RESULT: dict = {}
#: The register tile's prepared variants (v5_fp8_reg.REG_VARIANTS) timed with MLA_FP8_REG_VARIANTS=1 (all) or
#: ="NAME ..." (those): bench name -> v5_fp8_reg knobs (read at launch). Recorded in the env section, where
#: gpu_final.sh's regpick step reads them.
_ASKED = os.environ.get("MLA_FP8_REG_VARIANTS", "").split()
REG_VARIANTS = {f"fp8_reg_{name}": knobs for name, knobs in v5_fp8_reg.REG_VARIANTS.items()
                if _ASKED == ["1"] or name in _ASKED}


def save(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(RESULT, indent=1, default=str))


def guarded(name: str, path: str, fn) -> None:
    t0 = time.perf_counter()
    try:
        RESULT[name] = fn()
    except Exception as e:  # keep going: one failure must not lose the rest
        RESULT[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    print(f"== {name} ({time.perf_counter() - t0:.1f} s): {str(RESULT[name])[:1500]}", flush=True)
    save(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="fp8_bench.json")
    ap.add_argument("--quick", action="store_true", help="s_k 4096 only (h16 fixed and ~N, h64, h128), no config sweep")
    ap.add_argument("--mma", action="store_true",
                    help="also the 16-row Gluon FP8 tile forced (path 'mma', v5_fp8_mma.py); with --parts, its parts")
    ap.add_argument("--parts", action="store_true",
                    help="also the warp-specialised FP8 tile's parts alone (producer / consumers; results meaningless)")
    ap.add_argument("--heads", type=int, nargs="*", help="time only these h_q (default: every shape's; another h_q "
                                                         "at s_k 4096, fixed lengths)")
    ap.add_argument("--smoke", action="store_true", help="CPU, interpreter, tiny shapes: test the script itself")
    ap.add_argument("--sections", default="env,correctness,timing,fp8_configs,append",
                    help="comma-separated sections to run (default: all)")
    args = ap.parse_args()
    wanted = set(args.sections.split(","))
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    elif not torch.cuda.is_available():
        print("needs a CUDA GPU (or --smoke)")
        RESULT["error"] = "no CUDA device"
        save(args.out)
        return
    dev = "cpu" if args.smoke else "cuda"
    TILES = [("small", "pointer"), ("small", "tma")]  # the small tile, both load modes; the Gluon FP8 tiles
    # (lockstep, warp-specialised, the FP8 seesaw: v5's choice above 16 rows)
    TILES += [] if args.smoke else [("gluon", "pointer"), ("seesaw", "pointer"), ("fp8ss", "pointer")]
    TILES += [("mma", "pointer"), ("mma8", "pointer"), ("tma", "pointer")] if args.mma and not args.smoke else []
    #              the 16-row tile with 4 and 8 warps per program, fed by TMA (v5_fp8_tma.py); and warp-specialised
    #              (v5_fp8_ws16.py); dequantizing into registers (v5_fp8_reg.py: v5's choice at up to 16 rows until
    #              2026-12-03) (ksplit: the register tile with the warps splitting S's reduction; wgr: the register
    #              tile on wgmma, both products transposed: v5's choice at up to 16 rows)
    TILES += [("ws16", "pointer"), ("ws16w", "pointer"), ("reg", "pointer"), ("ksplit", "pointer"),
              ("wgr", "pointer")] if args.mma and not args.smoke else []
    big_b, big_sk = (2, (64, 130)) if args.smoke else (128, (4096, 8192))

    from test_kernels import check_against_reference, make_inputs
    from triton.testing import do_bench

    import mla_tutorial.kernels as K
    from mla_tutorial.fp8 import dequantize_k_cache, quantize_k_cache, quantize_rows
    from mla_tutorial.kernels import v5_small
    from mla_tutorial.kernels.common import TileConfig
    from mla_tutorial.kernels.schedule import get_mla_metadata
    from mla_tutorial.kernels.v5_gluon import GluonConfig
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
        if args.smoke:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))

    def sync() -> None:
        if not args.smoke:
            torch.cuda.synchronize()

    def graph_ms(fn) -> float | None:  # no CUDA graphs on the CPU (--smoke)
        return None if args.smoke else kernel_bench.graph_ms(fn, bench)

    # ----------------------------------------------------------------------------------------- 1. env
    def env():
        info = device_info()
        info["v5_fp8_reg_knobs"] = current_knobs()  # the register tiles' knobs (REG_*, WGR_*), as this run has them
        if REG_VARIANTS:
            info["reg_variants"] = REG_VARIANTS  # (gpu_final.sh's regpick reads each variant's knobs here)
        if args.smoke:
            return {"info": info}
        return {"info": info, "copy_gbps": measure_copy_bandwidth("cuda")["gbps"],
                "matmul_tflops": measure_matmul_tflops("cuda")["tflops"]}

    guarded("env", args.out, env)
    roof = RESULT["env"] if "copy_gbps" in RESULT.get("env", {}) else {"copy_gbps": None, "matmul_tflops": None}

    # ----------------------------------------------------------------------------------------- 2. correctness
    lengths = [0, 1, 20, 63, 64, 65, 140] + ([] if args.smoke else [4096])

    def correctness():
        out = {}
        cases = ((16, 1), (16, 2)) if args.smoke else ((16, 1), (16, 2), (64, 1), (128, 1), (128, 2))
        for (h_q, s_q), (tile, loads) in [(c, m) for c in cases for m in TILES]:
            name = f"h{h_q}-sq{s_q}-{tile}-{loads}"
            v5_small.FP8_LOADS = loads
            try:
                q, kc, bt, sl = make_inputs(lengths, s_q, h_q, 1, torch.bfloat16, seed=h_q + s_q, device=dev)
                k8 = quantize_k_cache(kc)
                flag = torch.ones(1, dtype=torch.int32, device=dev)

                def fp8(q, _k, bt, sl, dv, softmax_scale=None, causal=False, k8=k8, flag=flag, tile=tile):
                    wide = {"mma8": "mma", "ws16w": "ws16"}  # the same tiles with 8 warps (ws16w: its producer's)
                    path, config = (wide[tile], GluonConfig(warps=8)) if tile in wide else (tile, None)
                    return K.mla_decode_v5(q, k8, bt, sl, dv, softmax_scale=softmax_scale, causal=causal,
                                           is_fp8_kvcache=True, error_flag=flag, path=path, config=config)

                try:
                    check_against_reference(fp8, q, dequantize_k_cache(k8), bt, sl, s_q > 1)
                    out[name] = {"ok": True}
                except AssertionError as e:
                    out[name] = {"ok": False, "error": str(e)[:800]}
                sync()
                out[name]["flag_ok"] = int(flag.item())
                out[name]["choice"] = K.kernel_choice(q, k8, s_q * h_q, 1)
            except Exception as e:
                out[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:800]}"}
            finally:
                v5_small.FP8_LOADS = "pointer"
            print(name, out[name], flush=True)
        try:  # FlashMLA's recipe at b = 64 through the API
            gen = torch.Generator().manual_seed(3)
            n, mean = (3, 100.0) if args.smoke else (64, 4096.0)
            lens = torch.normal(mean, mean / 2, (n,), generator=gen).round().clamp(min=2).int().tolist()
            q, kc, bt, sl = make_inputs(lens, 2, 16, 1, torch.bfloat16, seed=5, device=dev)
            k8 = quantize_k_cache(kc)
            meta, splits = K.get_mla_metadata(sl, 2 * 16, 1)

            def api(q, _k, bt, sl, dv, softmax_scale=None, causal=False):
                return K.flash_mla_with_kvcache(q, k8, bt, sl, dv, meta, splits, softmax_scale=softmax_scale,
                                                causal=causal, is_fp8_kvcache=True)

            check_against_reference(api, q, dequantize_k_cache(k8), bt, sl, True)
            out["api-b64-normal-h16-sq2"] = {"ok": True}
        except Exception as e:
            out["api-b64-normal-h16-sq2"] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:800]}"}
        return out

    if "correctness" in wanted:
        guarded("correctness", args.out, correctness)

    # ----------------------------------------------------------------------------------------- 3. timing
    sk1, sk2 = big_sk
    shapes = [(16, sk1 // 4, "fixed"), (16, sk1, "fixed"), (16, sk2, "fixed"), (16, sk1, "normal"), (64, sk1, "fixed"),
              (64, sk2, "fixed"), (128, sk1, "fixed"), (128, sk2, "fixed")]
    if args.quick or args.smoke:
        shapes = [(16, sk1, "fixed"), (16, sk1, "normal"), (64, sk1, "fixed"), (128, sk1, "fixed")]
    if args.heads:  # (a head count no shape has: timed at s_k sk1, fixed lengths)
        shapes = [s for s in shapes if s[0] in args.heads] + [(h, sk1, "fixed") for h in args.heads
                                                              if h not in {s[0] for s in shapes}]

    def time_shape(row: dict, h_q: int, s_k: int, dist: str) -> None:
        b, s_q = row["b"], row["s_q"]
        seqlens = make_lengths(b, s_k, dist, s_q, torch.Generator().manual_seed(h_q + s_k))
        q, kc, bt, sl = bench_inputs(seqlens, s_q, h_q, dev, seed=h_q + s_k)
        k8 = quantize_k_cache(kc)
        mean_sk = float(seqlens.float().mean())
        q_bytes = b * s_q * h_q * (576 + 512) * 2
        row.update(mean_sk=mean_sk, flops=2 * b * h_q * s_q * mean_sk * 1088,
                   bytes={"fp8": q_bytes + b * mean_sk * 656, "bf16": q_bytes + b * mean_sk * 1152})
        meta, splits = get_mla_metadata(sl, s_q * h_q, 1)
        row["choice_fp8"] = K.kernel_choice(q, k8, s_q * h_q, 1)
        row["choice_bf16"] = K.kernel_choice(q, kc, s_q * h_q, 1)
        # the warp-specialised 16-row tile runs one program per SM (229 KB of shared memory): its own schedule
        sms = torch.cuda.get_device_properties(0).multi_processor_count if dev == "cuda" else 4
        meta_1, splits_1 = get_mla_metadata(sl, s_q * h_q, 1, num_sm_parts=sms)

        def fp8(tile, loads, config=None):
            v5_small.FP8_LOADS = loads  # read at launch: plain loads or TMA copies of the e4m3 bytes
            m, n = (meta_1, splits_1) if tile == "ws16" else (meta, splits)
            try:
                return K.mla_decode_v5(q, k8, bt, sl, 512, tile_scheduler_metadata=m, num_splits=n,
                                       check_bounds=False, is_fp8_kvcache=True, path=tile, config=config)
            finally:
                v5_small.FP8_LOADS = "pointer"

        def reg_variant(**knobs):  # v5_fp8_reg.py's tile with module knobs changed (read at launch)
            from mla_tutorial.kernels import v5_fp8_reg
            from mla_tutorial.kernels.plan import clear_plans

            def run():  # (call plans replay the launches of the knobs they were made with: none are kept here)
                saved = {k: getattr(v5_fp8_reg, k) for k in knobs}
                for k, v in knobs.items():
                    setattr(v5_fp8_reg, k, v)
                clear_plans()
                try:
                    return fp8("reg", "pointer")
                finally:
                    for k, v in saved.items():
                        setattr(v5_fp8_reg, k, v)
                    clear_plans()
            return run

        reg_ptxas_regs = reg_variant(REG_MAXNREG=None)  # without its maxnreg

        impls = {
            "fp8": lambda: fp8(None, "pointer"),  # the default choice
            "fp8_small": lambda: fp8("small", "pointer"),
            "fp8_small_tma": lambda: fp8("small", "tma"),
            "bf16_v5": lambda: K.mla_decode_v5(q, kc, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits,
                                               check_bounds=False),
        }
        if not args.smoke:
            impls["fp8_gluon"] = lambda: fp8("gluon", "pointer")
            impls["fp8_ws"] = lambda: fp8("seesaw", "pointer")  # the warp-specialised Gluon FP8 tile
            impls["fp8_ss"] = lambda: fp8("fp8ss", "pointer")  # the FP8 seesaw tile (v5's choice above 16 rows)
            if args.mma:
                impls["fp8_mma"] = lambda: fp8("mma", "pointer")  # the 16-row Gluon FP8 tile
                if args.parts:  # its parts alone (results meaningless): the page work, the products
                    impls["fp8_mma_page_work_alone"] = lambda: fp8("mma", "pointer", GluonConfig(mode=1))
                    impls["fp8_mma_products_alone"] = lambda: fp8("mma", "pointer", GluonConfig(mode=2))
                    # and the page work's two halves: its loads alone, its dequantization alone
                    impls["fp8_mma_loads_alone"] = lambda: fp8("mma", "pointer", GluonConfig(mode=3))
                    impls["fp8_mma_dequant_alone"] = lambda: fp8("mma", "pointer", GluonConfig(mode=4))
                impls["fp8_mma8"] = lambda: fp8("mma", "pointer", GluonConfig(warps=8))  # 8 warps (measured slower)
                impls["fp8_tma16"] = lambda: fp8("tma", "pointer")  # the 16-row tile fed by TMA (measured slower)
                # warp-specialised, with a 4- and an 8-warp producer (measured slower than the 16-row tile)
                impls["fp8_ws16"] = lambda: fp8("ws16", "pointer")
                impls["fp8_ws16w"] = lambda: fp8("ws16", "pointer", GluonConfig(warps=8))
                impls["fp8_reg"] = lambda: fp8("reg", "pointer")  # dequantizing into registers (mma.sync)
                impls["fp8_ksplit"] = lambda: fp8("ksplit", "pointer")  # the same, warps splitting S's reduction
                # the same on wgmma, both products transposed (v5's choice)
                impls["fp8_wgr"] = lambda: fp8("wgr", "pointer")
                # and without its dequantization (operands the raw words' bits: results meaningless)
                impls["fp8_wgr_no_dequant_alone"] = lambda: fp8("wgr", "pointer", GluonConfig(mode=3))
                impls["fp8_reg_ptxas_regs"] = reg_ptxas_regs  # the same with ptxas's own register cap (168)
                if REG_VARIANTS:  # the prepared variants, not yet run
                    impls |= {name: reg_variant(**knobs) for name, knobs in REG_VARIANTS.items()}
                if args.parts:
                    impls["fp8_mma8_page_work_alone"] = lambda: fp8("mma", "pointer", GluonConfig(mode=1, warps=8))
                    impls["fp8_mma8_products_alone"] = lambda: fp8("mma", "pointer", GluonConfig(mode=2, warps=8))
            if args.parts:  # its parts alone (results meaningless): the dequantizing producer, the consumers' math
                impls["fp8_ws_producer_alone"] = lambda: fp8("seesaw", "pointer", GluonConfig(mode=1))
                impls["fp8_ws_consumers_alone"] = lambda: fp8("seesaw", "pointer", GluonConfig(mode=2))
                # the FP8 seesaw's consumers alone, and with the raw rows copied but nothing dequantized
                impls["fp8_ss_consumers_alone"] = lambda: fp8("fp8ss", "pointer", GluonConfig(mode=2))
                impls["fp8_ss_no_dequant_alone"] = lambda: fp8("fp8ss", "pointer", GluonConfig(mode=3))
                # the consumers beside the producer's shared-memory stores only / beside the producer minus its stores
                impls["bf16_lockstep_compute_alone"] = lambda: K.mla_decode_v5(  # the same math, bf16 tile, no loads
                    q, kc, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits, check_bounds=False,
                    path="gluon", config=GluonConfig(mode=2))
        if flash_mla is not None:
            fm_meta, _ = flash_mla.get_mla_metadata()
            impls["flashmla"] = lambda: flash_mla.flash_mla_with_kvcache(q, kc, bt, sl, 512, fm_meta, None)
        fo, _ = impls["fp8_small"]()
        bo, _ = impls["bf16_v5"]()
        sync()
        row["fp8_finite"] = bool(torch.isfinite(fo).all())
        row["fp8_vs_bf16_cos_diff"] = cos_diff(fo, bo)  # the quantization's effect on this shape
        # the same math, another order
        for other in ("fp8_small_tma", "fp8_gluon", "fp8_ws", "fp8_ss", "fp8_mma", "fp8_mma8", "fp8_reg", "fp8_ksplit",
                      "fp8_wgr", *REG_VARIANTS):
            if other in impls:
                try:
                    oo, _ = impls[other]()
                    row[f"{other}_vs_fp8_small_max_abs"] = float((oo.float() - fo.float()).abs().max())
                except Exception as e:  # (reported; its timing below reports it too)
                    row[f"{other}_vs_fp8_small_max_abs"] = f"{type(e).__name__}: {str(e)[:300]}"
        for name, fn in impls.items():
            try:
                fn()
                sync()
                row["ms"][name] = bench(fn)
                row["graph_ms"][name] = graph_ms(fn)
            except Exception as e:
                row["ms"][name] = f"{type(e).__name__}: {str(e)[:300]}"
        ms = row["ms"]
        if isinstance(ms.get("flashmla"), float):
            row["ratio_vs_flashmla"] = {k: ms["flashmla"] / v for k, v in ms.items() if isinstance(v, float)}
        if roof.get("copy_gbps"):
            row["fraction_of_copy"] = {
                k: row["bytes"]["fp8" if k.startswith("fp8") else "bf16"] / v / 1e6 / roof["copy_gbps"]
                for k, v in ms.items() if isinstance(v, float)}
        print(f"h{h_q} sk{s_k} {dist}: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} ERR" for k, v in ms.items())
            + f" | ratio {row.get('ratio_vs_flashmla')}", flush=True)

    def timing():
        rows = []
        RESULT["timing"] = rows
        for h_q, s_k, dist in shapes:
            row = {"b": big_b, "h_q": h_q, "s_q": 1, "s_k": s_k, "lengths": dist, "ms": {}, "graph_ms": {}}
            rows.append(row)
            try:
                time_shape(row, h_q, s_k, dist)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:800]}"
                row["traceback"] = traceback.format_exc()[-2000:]
            save(args.out)
            if not args.smoke:
                torch.cuda.empty_cache()
        return rows

    if "timing" in wanted:
        guarded("timing", args.out, timing)

    # ----------------------------------------------------------------------------------------- 4. fp8 configs
    def fp8_configs():
        out = []
        RESULT["fp8_configs"] = out
        sweeps = {  # (h_q, loads): configs (BLOCK_N, warps, stages, programs per SM)
            (16, "pointer"): [(64, 4, 2, 2), (32, 4, 2, 2), (32, 4, 3, 2), (64, 4, 3, 2), (16, 4, 4, 2), (32, 8, 2, 1),
                              (64, 8, 2, 1)],
            (16, "tma"): [(32, 4, 2, 2), (16, 4, 4, 2), (64, 4, 2, 1), (32, 4, 3, 1), (64, 8, 2, 1), (32, 8, 2, 1)],
            (128, "pointer"): [(32, 8, 2, 1), (16, 8, 2, 1), (16, 8, 3, 1), (32, 8, 3, 1), (32, 4, 2, 1),
                               (64, 8, 1, 1)],
            (128, "tma"): [(32, 8, 2, 1), (16, 8, 2, 1), (16, 8, 3, 1), (32, 8, 3, 1)],
        }
        for (h_q, loads), cfgs in sweeps.items():
            cfgs = cfgs[:2] if args.smoke else cfgs
            seqlens = make_lengths(big_b, big_sk[0], "fixed", 1, torch.Generator().manual_seed(7))
            q, kc, bt, sl = bench_inputs(seqlens, 1, h_q, dev, seed=7)
            k8 = quantize_k_cache(kc)
            del kc
            block_m = 16 if h_q <= 16 else 64
            for bn, w, st, ctas in cfgs:
                entry = {"h_q": h_q, "loads": loads, "cfg": [block_m, bn, w, st, ctas]}
                try:
                    cfg = TileConfig(block_m, bn, w, st, ctas)
                    meta, splits = get_mla_metadata(sl, h_q, 1, num_sm_parts=132 * ctas)

                    v5_small.FP8_LOADS = loads
                    fn = functools.partial(K.mla_decode_v5, q, k8, bt, sl, 512, tile_scheduler_metadata=meta,
                                           num_splits=splits, check_bounds=False, is_fp8_kvcache=True, path="small",
                                           config=cfg)

                    fn()
                    sync()
                    entry.update(ms=bench(fn), graph_ms=graph_ms(fn))
                except Exception as e:
                    entry["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                finally:
                    v5_small.FP8_LOADS = "pointer"
                out.append(entry)
                print(entry, flush=True)
                save(args.out)
        return out

    if not args.quick and "fp8_configs" in wanted:
        guarded("fp8_configs", args.out, fp8_configs)

    # ----------------------------------------------------------------------------------------- 5. append
    def append():
        rows = torch.randn(128, 1, 576, device=dev).bfloat16()  # one decode step's new rows, b = 128
        return {"quantize_rows_b128_ms": bench(lambda: quantize_rows(rows)),
                "quantize_rows_b128_graph_ms": graph_ms(lambda: quantize_rows(rows))}

    if "append" in wanted:
        guarded("append", args.out, append)
    print("done", flush=True)


if __name__ == "__main__":
    main()
