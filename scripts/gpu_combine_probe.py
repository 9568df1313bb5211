"""The combine kernel alone, per (ROWS, BLOCK_D, SPLITS) shape, on the partials of a real v5 call: which shape suits
which call (many requests with a few splits each, or one request with hundreds). triton.testing.do_bench (L2
flushed), µs.

    PYTHONPATH=src python3 scripts/gpu_combine_probe.py [--out FILE.json]
"""

from __future__ import annotations

import torch
from triton.testing import do_bench

from mla_tutorial.contract import validate_paged_decode
from mla_tutorial.kernels.combine import combine_splits
from mla_tutorial.kernels.schedule import get_mla_metadata
from mla_tutorial.kernels.v5 import _launch_tile, _outputs, kernel_choice, ok_flag
from mla_tutorial.measure.kernel_bench import save_probe, shape_inputs

CALLS = [(128, 16, 1024), (128, 64, 1024), (128, 128, 1024), (128, 16, 4096), (1, 16, 32768), (8, 64, 16384),
         (32, 128, 4096), (1, 128, 32768)]  # (b, h_q, s_k)
SHAPES = [(4, 128, 8), (4, 128, 4), (8, 128, 4), (16, 128, 2), (8, 512, 1), (8, 512, 2), (8, 256, 4), (4, 128, 16)]


def main() -> None:
    rows = []
    for b, h_q, s_k in CALLS:
        (q, k, bt, sl), _ = shape_inputs(b, h_q, 1, s_k, "fixed", 0)
        meta, splits = get_mla_metadata(sl, h_q, 1)
        dims = validate_paged_decode(q, k, bt, sl, 512, None, False, kernel=True, check_values=False)
        out, lse, part_out, part_lse = _outputs(dims, q, meta)
        path = kernel_choice(q, k, h_q, 1)[0]
        _launch_tile(path, q, k, bt, sl, dims, False, meta, splits, out, lse, part_out, part_lse, ok_flag(q.device),
                     None, 0, False)
        combine_splits(part_out, part_lse, splits, out, lse)
        ref_out = out.clone()
        row = {"b": b, "h_q": h_q, "s_k": s_k, "parts": int(meta.shape[0]),
               "max_splits": int((splits[1:] - splits[:-1]).max()), "us": {}}
        for shape in SHAPES:
            combine_splits(part_out, part_lse, splits, out, lse, shape=shape)
            torch.cuda.synchronize()
            err = (out.float() - ref_out.float()).abs().max().item()
            args = (part_out, part_lse, splits, out, lse, shape)
            us = do_bench(lambda args=args: combine_splits(*args), warmup=10, rep=50) * 1e3
            row["us"][str(shape)] = round(us, 2)
            print(f"b{b:<4d} h{h_q:<4d} sk{s_k:<6d} parts {row['parts']:4d} max splits {row['max_splits']:4d} "
                  f"{str(shape):16s} {us:7.2f} us  (max |diff| vs default {err:.2e})", flush=True)
        rows.append(row)
    save_probe(rows)


if __name__ == "__main__":
    main()
