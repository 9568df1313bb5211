"""GPU timing: one decode step of an L-layer decoder (stages 4 and 5 at DeepSeek-V3's attention shapes, CUDA graph)
with the kernel's schedule computed once a step (mla_tutorial.step: TinyDecoder's layers share it) against once a
layer (every layer calls get_mla_metadata, as before the nineteenth session).

Every layer has the same attention weights (seeded, linear_init_) and its own cache of random rows (random_cache),
all of one length; the MLP is 64 wide and the vocabulary 256, so the step is the attention layers. Each
configuration is captured once (CapturedDecodeStep, pages reserved for the replays) and replayed `--steps` times per
round, each replay timed with CUDA events; rounds alternate the two forms; the median per step is kept.

    PYTHONPATH=src python3 scripts/gpu_step_schedule.py --out step_schedule.json [--layers 4] [--heads 128 16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch

from mla_tutorial import MLAConfig, TritonMLA
from mla_tutorial import decoder as decoder_module
from mla_tutorial.decoder import TinyDecoder
from mla_tutorial.graphs import CapturedDecodeStep
from mla_tutorial.layers import linear_init_
from mla_tutorial.measure.roofline import device_info, measure_copy_bandwidth, measure_matmul_tflops
from mla_tutorial.measure.stage_bench import with_heads
from mla_tutorial.measure.timing import random_cache
from mla_tutorial.stage5_fp8 import FP8MLA
from mla_tutorial.step import one_step

STAGES = {"stage 4": TritonMLA, "stage 5": FP8MLA}


def build(stage_cls, config: MLAConfig, layers: int, device: str = "cuda") -> TinyDecoder:
    """A decoder of `layers` attention layers with one set of seeded attention weights, bf16 on `device`."""
    with torch.device(device):
        dec = TinyDecoder(config, stage_cls, num_layers=layers, vocab_size=256, intermediate_size=64)
    dec = dec.to(torch.bfloat16).requires_grad_(False)
    linear_init_(dec.layers[0].self_attn, seed=0)
    for layer in dec.layers[1:]:
        layer.self_attn.load_state_dict(dec.layers[0].self_attn.state_dict())
    return dec


def captured(dec: TinyDecoder, batch: int, context: int, replays: int, shared: bool):
    """The step captured with the schedule shared (TinyDecoder's one_step) or made by every layer."""
    caches = [random_cache(layer.self_attn, batch, context - 1, capacity=context + replays + 64, seed=i)
              for i, layer in enumerate(dec.layers)]
    ids = torch.randint(0, 256, (batch, 1), device="cuda")
    decoder_module.one_step = one_step if shared else contextlib.nullcontext
    try:
        step = CapturedDecodeStep(dec, ids, caches, max_steps=replays)
    finally:
        decoder_module.one_step = one_step
    return step, ids


def timed(step, ids, n: int) -> list[float]:
    """n replays, each between two CUDA events (ms)."""
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        start.record()
        step(ids)
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


@torch.inference_mode()  # (random_cache's tensors are inference tensors: the steps run in that mode too)
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="step_schedule.json")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, nargs="*", default=[128, 16])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20, help="replays per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    copy, mm = measure_copy_bandwidth("cuda"), measure_matmul_tflops("cuda", 8192)
    result = {"device_info": device_info(), "date": time.strftime("%Y-%m-%d"),
              "roofline": {"copy_gbps": copy["gbps"], "matmul_tflops": mm["tflops"]}, "args": vars(args), "rows": []}
    print(f"roofline: copy {copy['gbps']:.0f} GB/s, matmul {mm['tflops']:.0f} TFLOP/s", flush=True)
    for heads in args.heads:
        config = with_heads(MLAConfig.deepseek_v3(), heads)
        for name, cls in STAGES.items():
            dec = build(cls, config, args.layers)
            replays = args.steps * args.rounds
            forms = {f: captured(dec, args.batch, args.context, replays, f == "shared")
                     for f in ("shared", "per_layer")}
            times: dict[str, list[float]] = {f: [] for f in forms}
            for r in range(args.rounds):
                for f in (("shared", "per_layer") if r % 2 == 0 else ("per_layer", "shared")):
                    times[f] += timed(*forms[f], args.steps)
            row = {"stage": name, "heads": heads, "layers": args.layers, "batch": args.batch,
                   "context": args.context, **{f"{f}_ms": statistics.median(t) for f, t in times.items()},
                   "times_ms": times}
            row["saved_per_layer_us"] = (row["per_layer_ms"] - row["shared_ms"]) / (args.layers - 1) * 1e3
            result["rows"].append(row)
            print(f"{name} h{heads} L{args.layers} b{args.batch} S{args.context}: shared {row['shared_ms']:.4f} ms, "
                  f"per layer {row['per_layer_ms']:.4f} ms, saved {row['saved_per_layer_us']:.1f} µs per extra "
                  f"layer", flush=True)
            json.dump(result, open(args.out, "w"), indent=1)
            del forms, dec
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
