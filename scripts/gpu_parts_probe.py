"""v5's whole call at h_q 16 (the small tile on a bf16 cache, the register tile on an FP8 cache) for several schedule
part counts and per-request overheads, beside FlashMLA: does a coarser cut pay at short contexts, where each part's
fixed costs (Q, the pipeline's fill, the partials) weigh most? b 128, L2 flushed (do_bench), ms.

    PYTHONPATH=.peers/flashmla:src python3 scripts/gpu_parts_probe.py [--out FILE.json]
"""

from __future__ import annotations

from mla_tutorial.fp8 import quantize_k_cache
from mla_tutorial.kernels import flash_mla_with_kvcache
from mla_tutorial.kernels.schedule import get_mla_metadata
from mla_tutorial.measure.kernel_bench import bench_ms, save_probe, shape_inputs

try:
    import flash_mla
except ImportError:
    flash_mla = None

PARTS = [132, 198, 264, 330, 396]
OVERHEADS = [5, 10]


def _call(q, k, bt, sl, meta, splits, fp8):
    return lambda: flash_mla_with_kvcache(q, k, bt, sl, 512, meta, splits, is_fp8_kvcache=fp8)


def main() -> None:
    rows = []
    for s_k, dist in ((1024, "fixed"), (4096, "fixed"), (4096, "normal")):
        (q, k, bt, sl), _ = shape_inputs(128, 16, 1, s_k, dist, 0)
        k8 = quantize_k_cache(k)
        row = {"s_k": s_k, "lengths": dist, "ms": {}}
        if flash_mla is not None:
            sched, _ = flash_mla.get_mla_metadata()
            row["flashmla_ms"] = bench_ms(lambda args=(q, k, bt, sl, 512, sched, None):
                                          flash_mla.flash_mla_with_kvcache(*args))
        for fp8, cache in ((False, k), (True, k8)):
            for parts in PARTS:
                for overhead in OVERHEADS:
                    meta, splits = get_mla_metadata(sl, 16, 1, num_sm_parts=parts, fixed_overhead=overhead)
                    ms = bench_ms(_call(q, cache, bt, sl, meta, splits, fp8))
                    key = f"{'fp8' if fp8 else 'bf16'} parts {parts} overhead {overhead}"
                    row["ms"][key] = ms
                    print(f"s_k {s_k} {dist:6s} {key:32s} {ms:.4f} ms  (FlashMLA {row.get('flashmla_ms', 0):.4f})",
                          flush=True)
        rows.append(row)
    save_probe(rows)


if __name__ == "__main__":
    main()
