# ruff: noqa: B023  (every lambda is timed before the loop moves on)
"""How many schedule parts should v4 cut the work into? Times flash_mla_with_kvcache at the issue's standard
shapes with num_sm_parts = SMs·k / (h_kv·tiles) for several k, next to v2 (no split). GPU only.

    PYTHONPATH=src python3 scripts/sm_parts_sweep.py --out sweep.json
"""

from __future__ import annotations

import argparse
import json

import torch

from mla_tutorial.kernels import flash_mla_with_kvcache, mla_decode_v2
from mla_tutorial.kernels.common import device_limits
from mla_tutorial.kernels.v4_balanced import get_mla_metadata
from mla_tutorial.measure.kernel_bench import bench_ms, make_inputs, make_lengths
from mla_tutorial.measure.roofline import device_info, measure_copy_bandwidth

SHAPES = [  # (h_q, s_q, s_k, lengths)
    (16, 1, 1024, "fixed"), (16, 1, 4096, "fixed"), (16, 1, 8192, "fixed"), (16, 1, 4096, "normal"),
    (64, 1, 1024, "fixed"), (64, 1, 4096, "fixed"), (128, 1, 4096, "fixed"), (128, 2, 4096, "fixed"),
]
FACTORS = [0.5, 1, 1.5, 2, 3]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="sm_parts_sweep.json")
    args = ap.parse_args()
    sms = device_limits("cuda").sm_count
    copy = measure_copy_bandwidth("cuda")
    rows = []
    for h_q, s_q, s_k, dist in SHAPES:
        seqlens = make_lengths(128, s_k, dist, s_q, torch.Generator().manual_seed(0))
        q, k_cache, table, lens = make_inputs(seqlens, s_q, h_q, "cuda")
        causal = s_q > 1
        tiles = -(-(s_q * h_q) // 64)
        row = {"h_q": h_q, "s_q": s_q, "s_k": s_k, "lengths": dist}
        row["v2_ms"] = bench_ms(lambda: mla_decode_v2(q, k_cache, table, lens, 512, causal=causal))
        for f in FACTORS:
            parts = max(1, int(sms * f) // tiles)
            meta, splits = get_mla_metadata(lens, s_q * h_q, 1, num_sm_parts=parts)
            row[f"v4_x{f}_ms"] = bench_ms(
                lambda: flash_mla_with_kvcache(q, k_cache, table, lens, 512, meta, splits, causal=causal))
        meta, splits = get_mla_metadata(lens, s_q * h_q, 1)
        row["v4_default_parts"] = int(meta.shape[0])
        row["v4_default_ms"] = bench_ms(
            lambda: flash_mla_with_kvcache(q, k_cache, table, lens, 512, meta, splits, causal=causal))
        mean_sk = float(seqlens.float().mean())
        row["bytes"] = 128 * (s_q * h_q * 576 * 2 + mean_sk * 576 * 2 + s_q * h_q * 512 * 2)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
    with open(args.out, "w") as f:
        json.dump({"device": device_info(), "copy": copy, "sms": sms, "factors": FACTORS, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
