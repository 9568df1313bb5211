"""The whole call's tail after the main kernel: the combine kernel's variants and the bounds assertion, timed as the
whole v5 call beside FlashMLA's in the same rounds.

What the whole call costs beyond its main kernel (h16 b 128, s_k 4k: ~7 µs for ours, ~3 for FlashMLA's): the combine
(its device time 3.8 µs against FlashMLA's 1.3 in the profiler) and, in a checked call, torch._assert_async's third
kernel (2.2 µs). Per shape this times, three rounds in turn (do_bench, L2 flushed, medians): FlashMLA's bf16 call; the
main kernel alone (v5's tile launch without the combine); v5's call (check_bounds=False, as the benchmark) with the
combine's variants (combine.py's knobs: the split offsets read before or after gdc_wait, warps, shapes); v5's checked
call with the assertion in the combine (FOLD_BOUNDS) and after it (torch._assert_async). Each variant's output is
compared with the committed combine's, and the profiler's device time of each kernel is kept for the committed and
the default combine.

    PYTHONPATH=.peers/flashmla:src python3 scripts/gpu_call_tail.py [--rounds 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from gpu_kernel_split import kernel_times  # noqa: E402

from mla_tutorial.fp8 import quantize_k_cache  # noqa: E402
from mla_tutorial.kernels import combine, mla_decode_v5, plan, v5  # noqa: E402
from mla_tutorial.kernels.schedule import get_mla_metadata  # noqa: E402
from mla_tutorial.measure.kernel_bench import _flash_mla, bench_ms, save_probe, shape_inputs  # noqa: E402

SHAPES = [  # (b, h_q, s_k, fp8)
    (128, 16, 4096, True), (128, 16, 8192, True), (128, 16, 1024, True), (128, 16, 4096, False),
    (128, 64, 4096, False), (128, 128, 4096, False),
]
#: the combine's variants: (name, OFFSETS_FIRST, warps, FEW_SPLITS_SHAPE); "committed" is the combine until now
VARIANTS = [
    ("committed", False, 4, (8, 512, 2)),
    ("offsets_first", True, 4, (8, 512, 2)),
    ("w8", True, 8, (8, 512, 2)),
    ("r4", True, 4, (4, 512, 2)),
    ("r16w8", True, 8, (16, 512, 2)),
    ("d256", True, 4, (8, 256, 2)),
]


def _set(offsets_first: bool, warps: int, shape: tuple, fold: bool = True) -> None:
    combine.OFFSETS_FIRST, combine.COMBINE_WARPS, combine.FEW_SPLITS_SHAPE = offsets_first, warps, shape
    v5.FOLD_BOUNDS = fold
    plan.clear_plans()


def run(b: int, h_q: int, s_k: int, fp8: bool, rounds: int, flash_mla) -> dict:
    (q, k, bt, sl), _ = shape_inputs(b, h_q, 1, s_k, "fixed", seed=s_k + h_q)
    kc = quantize_k_cache(k) if fp8 else k
    meta, splits = get_mla_metadata(sl, h_q, 1)
    dims = v5.validate_paged_decode(q, kc, bt, sl, 512, None, False, kernel=True, check_values=False,
                                    fp8_cache=fp8)
    path = v5.kernel_choice(q, kc, h_q, 1)[0]

    def call(check: bool = False):
        return mla_decode_v5(q, kc, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits,
                             check_bounds=check, is_fp8_kvcache=fp8)

    out_tensors = v5._outputs(dims, q, meta)

    def tile_alone():
        v5._launch_tile(path, q, kc, bt, sl, dims, False, meta, splits, *out_tensors, v5.ok_flag(q.device), None, 0,
                        fp8)

    row = {"b": b, "h_q": h_q, "s_k": s_k, "fp8": fp8, "path": path, "parts": int(meta.shape[0]),
           "max_pieces": int((splits[1:] - splits[:-1]).max())}
    _set(*VARIANTS[0][1:])
    ref = call()[0].clone()
    row["diff_vs_committed"] = {}
    timed = {}
    for name, *knobs in VARIANTS:
        _set(*knobs)
        out = call()[0]
        torch.cuda.synchronize()
        row["diff_vs_committed"][name] = float((out.float() - ref.float()).abs().max())
        timed[name] = (knobs, False, True)
    timed["checked_torch_assert"] = ((True, 4, (8, 512, 2)), True, False)
    timed["checked_in_combine"] = ((True, 4, (8, 512, 2)), True, True)
    times: dict[str, list[float]] = {name: [] for name in [*timed, "tile_alone"]}
    fm = None
    if flash_mla is not None:
        sched, _ = flash_mla.get_mla_metadata()
        fm = lambda args=(q, k, bt, sl, 512, sched, None): flash_mla.flash_mla_with_kvcache(*args)  # noqa: E731
        times["flashmla_bf16"] = []
    names = list(times)
    for r in range(rounds):
        half = len(names) // 2
        order = names if r % 3 == 0 else names[::-1] if r % 3 == 1 else names[half:] + names[:half]
        for name in order:
            if name == "flashmla_bf16":
                times[name].append(bench_ms(fm))
            elif name == "tile_alone":
                _set(True, 4, (8, 512, 2))
                times[name].append(bench_ms(tile_alone))
            else:
                knobs, check, fold = timed[name]
                _set(*knobs, fold=fold)
                call(check)
                times[name].append(bench_ms(lambda check=check: call(check)))
    row["ms_rounds"] = times
    row["ms"] = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    if fm is not None:
        row["flashmla_over"] = {name: row["ms"]["flashmla_bf16"] / t for name, t in row["ms"].items()}
    # the profiler's device time per kernel: the committed combine, the default one, checked both ways, FlashMLA
    row["kernels_us"] = {}
    for name in ("committed", "offsets_first", "checked_torch_assert", "checked_in_combine"):
        knobs, check, fold = timed[name]
        _set(*knobs, fold=fold)
        row["kernels_us"][name] = kernel_times(lambda check=check: call(check))
    if fm is not None:
        row["kernels_us"]["flashmla_bf16"] = kernel_times(fm)
    _set(True, 4, (8, 512, 2))
    label = f"b{b} h{h_q} sk{s_k}{' fp8' if fp8 else ''} ({path}, max pieces {row['max_pieces']})"
    print(label, flush=True)
    for name, t in row["ms"].items():
        ratio = row.get("flashmla_over", {}).get(name)
        print(f"  {name:22s} {t * 1e3:8.2f} us" + (f"  FlashMLA/it {ratio:.3f}" if ratio else ""), flush=True)
    for name, ks in row["kernels_us"].items():
        print(f"  kernels {name:20s} " + ", ".join(f"{k[:28]} {v['us']:.2f}" for k, v in ks.items()), flush=True)
    print(f"  max |diff| vs committed: {row['diff_vs_committed']}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    flash_mla = _flash_mla()
    rows = [run(*shape, args.rounds, flash_mla) for shape in SHAPES]
    save_probe(rows)


if __name__ == "__main__":
    main()
