"""The seesaw tile's parts timed apart on the GPU: the whole tile (mode 0) against its compute alone (mode 2: the
producer copies nothing), beside the lockstep tile's modes 0 / 1 (loads only) / 2 and FlashMLA, at b = 128.

    PYTHONPATH=.peers/flashmla:src python3 scripts/gpu_seesaw_parts.py
"""

from __future__ import annotations

import torch

from mla_tutorial.kernels import mla_decode_v5
from mla_tutorial.kernels.schedule import get_mla_metadata
from mla_tutorial.kernels.v5_gluon import GluonConfig
from mla_tutorial.measure.kernel_bench import _flash_mla, bench_ms, shape_inputs

VARIANTS = {"seesaw": ("seesaw", 0), "seesaw_compute": ("seesaw", 2), "lockstep": ("gluon", 0),
            "lockstep_loads": ("gluon", 1), "lockstep_compute": ("gluon", 2)}


def shape_line(fm, h_q: int, s_k: int) -> str:
    (q, k, bt, sl), _ = shape_inputs(128, h_q, 1, s_k, "fixed", 0)
    meta, splits = get_mla_metadata(sl, h_q, 1)
    kw = dict(tile_scheduler_metadata=meta, num_splits=splits, check_bounds=False)
    line = []
    for name, (path, mode) in VARIANTS.items():
        cfg = GluonConfig(mode=mode)
        fn = lambda path=path, cfg=cfg: mla_decode_v5(q, k, bt, sl, 512, path=path, config=cfg, **kw)  # noqa: E731
        fn()
        torch.cuda.synchronize()
        line.append(f"{name} {bench_ms(fn):.4f}")
    if fm is not None:
        fm_meta, _ = fm.get_mla_metadata()
        line.append(f"flashmla {bench_ms(lambda: fm.flash_mla_with_kvcache(q, k, bt, sl, 512, fm_meta, None)):.4f}")
    return f"h{h_q} sk{s_k}: " + "  ".join(line)


def main() -> None:
    fm = _flash_mla()
    for h_q, s_k in ((64, 4096), (128, 4096), (64, 8192)):
        print(shape_line(fm, h_q, s_k), flush=True)


if __name__ == "__main__":
    main()
