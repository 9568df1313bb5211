"""Run each FP8 tile once at b 128, s_k 4096, for Nsight Compute (ncu) to read its counters: the 16-row mma.sync tile
(v5_fp8_mma.py), the warp-specialised FP8 tile (v5_fp8_ws.py; --only reg: the 16-row tile dequantizing into
registers, v5_fp8_reg.py), and, for comparison, the bf16 seesaw tile at h 64.
Nothing is timed here (ncu's replays are not timings); scripts/gpu_final.sh's ncu, stalls and sass steps wrap it:

    ncu --clock-control none -k regex:'_v5_fp8_mma_kernel|_v5_fp8_ws_kernel|_ss_kernel' -c 3 \
        --section SpeedOfLight --section WarpStateStats ... python3 scripts/gpu_ncu_fp8.py
"""

from __future__ import annotations

import argparse

import torch

import mla_tutorial.kernels as K
from mla_tutorial.fp8 import quantize_k_cache
from mla_tutorial.kernels.schedule import get_mla_metadata
from mla_tutorial.kernels.v5_gluon import GluonConfig
from mla_tutorial.measure.kernel_bench import make_inputs, make_lengths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--b", type=int, default=128)
    ap.add_argument("--s-k", type=int, default=4096)
    ap.add_argument("--only", choices=["mma", "ws", "seesaw", "reg", "ksplit", "wgr"],
                    help="run one of the kernels only (reg: v5_fp8_reg.py's, ksplit: v5_fp8_ksplit.py's, each run only "
                         "when asked for)")
    ap.add_argument("--mode", type=int, default=0, help="GluonConfig.mode: a part alone (e.g. 3: the 16-row tile's "
                    "page loads alone)")
    args = ap.parse_args()
    config = GluonConfig(mode=args.mode) if args.mode else None
    runs = {"mma": (16, True, "mma"), "ws": (16, True, "seesaw"), "seesaw": (64, False, "seesaw"),
            "reg": (16, True, "reg"), "ksplit": (16, True, "ksplit"), "wgr": (16, True, "wgr")}  # h_q, FP8, path
    runs = [runs[args.only]] if args.only else [v for k, v in runs.items() if k not in ("reg", "ksplit", "wgr")]
    for h_q, fp8, path in runs:
        seqlens = make_lengths(args.b, args.s_k, "fixed", 1, torch.Generator())
        q, kc, bt, sl = make_inputs(seqlens, 1, h_q, "cuda", seed=h_q)
        cache = quantize_k_cache(kc) if fp8 else kc
        meta, splits = get_mla_metadata(sl, h_q, 1)
        out, _ = K.mla_decode_v5(q, cache, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits,
                                 check_bounds=False, is_fp8_kvcache=fp8, path=path, config=config)
        torch.cuda.synchronize()
        print(f"h{h_q} fp8={fp8} path={path}: finite={bool(torch.isfinite(out).all())}", flush=True)


if __name__ == "__main__":
    main()
