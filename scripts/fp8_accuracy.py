"""What the FP8 cache (stage 5, FlashMLA's 656-byte rows) costs in accuracy, measured on a CPU.

    PYTHONPATH=src python scripts/fp8_accuracy.py [--out docs/results/fp8_accuracy_cpu_<date>.json] [--quick]

Sections (all written to one JSON file, rewritten after each section):
1. rows: the quantization error of cached rows [c_kv | k_rope] from `project_latent` (tiny config and
   DeepSeek-V3's shapes, `linear_init_` weights, hidden states ~ N(0, σ²) for σ in 1, 4, 16: real residual streams
   are far from unit scale, and only k_rope follows them, since c_kv leaves an RMSNorm), for FlashMLA's per-tile
   scales and for coarser alternatives: one scale per token, one per tensor from c_kv only (RoPE in bf16, or RoPE
   quantized with that scale as a 576-byte row would be), one per tensor from the whole row (computed from the
   rows themselves, or fixed beforehand from the σ = 1 rows, as a cache filled token by token must fix it).
2. attention: stage 5 (FP8 kernel) against stage 4 (bf16 kernel) with the same weights, and the split of that
   difference: kernel error (stage 5 vs stage 3's torch attention on the same FP8 cache, `FP8ReferenceMLA`) and
   quantization error (`FP8ReferenceMLA` vs stage 3 in bf16); stage 4 vs stage 3 as the bf16 baseline; and a
   what-if: k_rope quantized too (a fifth tile with its own scale), against stage 3.
3. decoder: a 2-layer TinyDecoder, bf16, greedy generation of a few hundred tokens with stage 3 (bf16 torch
   attention) as the reference; the FP8 model (`FP8ReferenceMLA`, same weights) teacher-forced on the reference's
   tokens: top-1 agreement and KL(bf16 ‖ fp8) of the next-token distributions per step, plus free-running greedy
   agreement (tokens until the first divergence). As a noise floor: the same for the bf16 model against float32.
   A shorter run with the kernels themselves (stage 4 vs stage 5, Triton's interpreter) checks the kernel path
   gives the same picture.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from test_stage5 import compare_logits, teacher_forced_logits  # noqa: E402  (one home: the tests' helpers)

from mla_tutorial import AbsorbedMLA, MLAConfig, PagedMLA, linear_init_  # noqa: E402
from mla_tutorial.course.basics import prefill_and_decode  # noqa: E402
from mla_tutorial.decoder import TinyDecoder  # noqa: E402
from mla_tutorial.fp8 import FP8_MAX, dequantize_rows, quantize_rows, tile_scales  # noqa: E402
from mla_tutorial.metrics import error_metrics  # noqa: E402

RESULT: dict = {}


def save(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(RESULT, indent=1))


# --------------------------------------------------------------------------------------------- 1. rows
def saturating_e4m3(x: torch.Tensor) -> torch.Tensor:
    """x (float32, already divided by its scale) rounded to e4m3, clamped to ±448 first (a saturating cast)."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()


def roundtrip(rows: torch.Tensor, scheme: str, static_scale: float | None = None) -> torch.Tensor:
    """rows bf16 [N, 576] -> what the cache gives back under `scheme` (bf16 [N, 576])."""
    if scheme == "tile":  # FlashMLA: a power-of-two scale per 128 c_kv values per token, RoPE bf16
        return dequantize_rows(quantize_rows(rows))
    x = rows.float()
    nope, rope = x[:, :512], x[:, 512:]
    if scheme == "token":  # one scale per token for its 512 c_kv values, RoPE bf16
        scale = nope.abs().amax(-1, keepdim=True).clamp_min(1e-12) / FP8_MAX
        return torch.cat([saturating_e4m3(nope / scale) * scale, rope], -1).bfloat16()
    if scheme == "tensor_ckv":  # one scale for the tensor from c_kv's amax, RoPE bf16
        scale = nope.abs().amax() / FP8_MAX
        return torch.cat([saturating_e4m3(nope / scale) * scale, rope], -1).bfloat16()
    if scheme == "tensor_ckv_rope_fp8":  # the same scale on all 576 values (a 576-byte row), RoPE saturates
        scale = nope.abs().amax() / FP8_MAX
        return (saturating_e4m3(x / scale) * scale).bfloat16()
    if scheme == "tensor_all_rope_fp8":  # one scale for all 576 values from the whole tensor's amax
        scale = x.abs().amax() / FP8_MAX
        return (saturating_e4m3(x / scale) * scale).bfloat16()
    if scheme == "static_tensor_all_rope_fp8":  # the same, with the scale fixed beforehand (calibrated at σ = 1)
        return (saturating_e4m3(x / static_scale) * static_scale).bfloat16()
    raise ValueError(scheme)


SCHEMES = ["tile", "token", "tensor_ckv", "tensor_ckv_rope_fp8", "tensor_all_rope_fp8", "static_tensor_all_rope_fp8"]


def part_stats(t: torch.Tensor) -> dict:
    t = t.double()
    return {"rms": float(t.pow(2).mean().sqrt()), "amax": float(t.abs().max()),
            "p99_abs": float(t.abs().flatten().kthvalue(max(1, int(0.99 * t.numel()))).values)}


def rows_section(quick: bool) -> dict:
    out = {}
    configs = {"tiny": MLAConfig.tiny(), "deepseek-v3": MLAConfig.deepseek_v3()}
    tokens = 256 if quick else 1024
    for cname, config in configs.items():
        for std in (0.02, 0.1):
            module = linear_init_(AbsorbedMLA(config), std=std, seed=0).requires_grad_(False)
            static_scale = None  # a per-tensor scale calibrated on the σ = 1 rows, as a cache must fix it in advance
            for sigma in (1.0, 4.0, 16.0):
                gen = torch.Generator().manual_seed(1)
                x = torch.randn(1, tokens, config.hidden_size, generator=gen) * sigma
                pos = torch.arange(tokens)[None]
                with torch.no_grad():
                    c_kv, k_rope = module.project_latent(x, pos)
                rows = torch.cat([c_kv, k_rope], -1)[0].bfloat16()  # [tokens, 576]
                if static_scale is None:
                    static_scale = float(rows.float().abs().amax()) / FP8_MAX
                entry = {"c_kv": part_stats(rows[:, :512]), "k_rope": part_stats(rows[:, 512:]), "schemes": {}}
                for scheme in SCHEMES:
                    back = roundtrip(rows, scheme, static_scale)
                    e_n = error_metrics(back[:, :512], rows[:, :512])
                    e_r = error_metrics(back[:, 512:], rows[:, 512:])
                    sat = (rows[:, 512:].float().abs() > back[:, 512:].float().abs() * 1.0625).float().mean()
                    zero = ((back[:, :512] == 0) & (rows[:, :512] != 0)).float().mean()
                    entry["schemes"][scheme] = {
                        "c_kv_rel_frob": e_n.rel_frob, "c_kv_max_abs": e_n.max_abs,
                        "k_rope_rel_frob": e_r.rel_frob, "k_rope_max_abs": e_r.max_abs,
                        "k_rope_saturated_fraction": float(sat), "c_kv_flushed_to_zero_fraction": float(zero),
                    }
                out[f"{cname}/std{std}/sigma{sigma:g}"] = entry
                s = entry["schemes"]
                print(f"rows {cname} std {std} σ {sigma:g}: c_kv rms {entry['c_kv']['rms']:.3g} k_rope rms "
                      f"{entry['k_rope']['rms']:.3g} | tile {s['tile']['c_kv_rel_frob']:.4f} tensor_ckv "
                      f"{s['tensor_ckv']['c_kv_rel_frob']:.4f} rope576 "
                      f"{s['tensor_ckv_rope_fp8']['k_rope_rel_frob']:.4f}",
                      flush=True)
    return out


# --------------------------------------------------------------------------------------------- 2. attention
def fp8_rope_reference():
    """A what-if: FP8ReferenceMLA with k_rope quantized too (its 64 values as a fifth tile with its own scale,
    592 bytes per token), to measure what keeping RoPE in bf16 buys."""
    from mla_tutorial.stage3_paged import paged_mla_attention
    from mla_tutorial.stage5_fp8 import FP8ReferenceMLA

    class FP8RopeTooMLA(FP8ReferenceMLA):
        def attend(self, q, cache, block_table, cache_seqlens):
            kv = cache.dequantized().float()  # [N, 64, 1, 576]
            rope = kv[..., 512:]
            scale = tile_scales(rope.abs().amax(-1, keepdim=True))
            kv[..., 512:] = (rope / scale).to(torch.float8_e4m3fn).float() * scale
            out, _ = paged_mla_attention(q, kv.bfloat16(), block_table, cache_seqlens, self.config.kv_lora_rank,
                                         self.config.softmax_scale, causal=True)
            return out

    return FP8RopeTooMLA


def attention_section(quick: bool) -> dict:
    from mla_tutorial.stage4_triton import TritonMLA
    from mla_tutorial.stage5_fp8 import FP8MLA, FP8ReferenceMLA

    rope_too_cls = fp8_rope_reference()

    out = {}
    prompts = [1, 65] if quick else [1, 63, 65, 129, 300]
    for std in (0.02, 0.1):
        for seed, prompt in enumerate(prompts):
            config = MLAConfig.tiny()
            stage2 = linear_init_(AbsorbedMLA(config).double(), std=std, seed=seed).requires_grad_(False)
            stage3 = PagedMLA.from_previous(stage2).to(torch.bfloat16)
            stage4, stage5, ref5, rope_too = (cls.from_previous(stage3) for cls in (TritonMLA, FP8MLA,
                                                                                     FP8ReferenceMLA, rope_too_cls))
            x = torch.randn(2, prompt + 2, config.hidden_size, generator=torch.Generator().manual_seed(prompt),
                            dtype=torch.float64).bfloat16()
            t0 = time.perf_counter()
            with torch.no_grad():
                # prefill `prompt` tokens, then decode the rest one at a time: outputs [2, prompt + 2, hidden]
                y3, y4, y5, r5, rr = (prefill_and_decode(m, x[:, :prompt], x[:, prompt:])[0]
                                      for m in (stage3, stage4, stage5, ref5, rope_too))
            row = {
                "stage5_vs_stage4": error_metrics(y5, y4).as_dict(),
                "stage5_vs_fp8_reference (kernel error)": error_metrics(y5, r5).as_dict(),
                "fp8_reference_vs_stage3 (quantization error)": error_metrics(r5, y3).as_dict(),
                "stage4_vs_stage3 (bf16 kernel error)": error_metrics(y4, y3).as_dict(),
                "what-if fp8 rope too_vs_stage3": error_metrics(rr, y3).as_dict(),
                "seconds": time.perf_counter() - t0,
            }
            out[f"std{std}/prompt{prompt}+2"] = row
            print(f"attention std {std} prompt {prompt}: 5v4 {row['stage5_vs_stage4']} | kernel "
                  f"{row['stage5_vs_fp8_reference (kernel error)']['rel_frob']:.2e}", flush=True)
    return out


# --------------------------------------------------------------------------------------------- 3. decoder
def first_divergence(a: torch.Tensor, b: torch.Tensor, prompt_len: int) -> list[int]:
    """Per sequence, how many generated tokens agree before the first difference."""
    out = []
    for row_a, row_b in zip(a[:, prompt_len:], b[:, prompt_len:], strict=True):
        diff = (row_a != row_b).nonzero()
        out.append(int(diff[0]) if len(diff) else int(row_a.numel()))
    return out


def decoder_section(quick: bool, kernel_tokens: int) -> dict:
    from mla_tutorial.stage4_triton import TritonMLA
    from mla_tutorial.stage5_fp8 import FP8MLA, FP8ReferenceMLA

    out = {}
    new_tokens = 64 if quick else 320
    batch, prompt_len = 4, 16
    for std in (0.02, 0.1):
        config = MLAConfig.tiny()
        base = TinyDecoder(config, PagedMLA, num_layers=2, vocab_size=256).double()
        base = base.init_weights_(std=std, seed=0).requires_grad_(False)
        f32 = base.float()
        bf16 = TinyDecoder.from_previous(f32, PagedMLA).bfloat16()
        fp8 = TinyDecoder.from_previous(bf16, FP8ReferenceMLA)
        prompt = torch.randint(0, 256, (batch, prompt_len), generator=torch.Generator().manual_seed(5))
        t0 = time.perf_counter()
        ids, ref_logits = bf16.generate_greedy(prompt, new_tokens, return_logits=True)
        ids_fp8 = fp8.generate_greedy(prompt, new_tokens)
        ids_f32 = f32.generate_greedy(prompt, new_tokens)
        row = {
            "new_tokens": new_tokens, "batch": batch,
            "fp8_teacher_forced_vs_bf16": compare_logits(ref_logits, teacher_forced_logits(fp8, ids, prompt_len)),
            "bf16_vs_f32_teacher_forced (noise floor)": compare_logits(teacher_forced_logits(f32, ids, prompt_len),
                                                                      ref_logits),
            "fp8_free_running_tokens_before_divergence": first_divergence(ids, ids_fp8, prompt_len),
            "bf16_vs_f32_free_running_tokens_before_divergence": first_divergence(ids_f32, ids, prompt_len),
            "distinct_tokens_generated": [len(set(r.tolist())) for r in ids[:, prompt_len:]],
        }
        if kernel_tokens:  # the same with the kernels: stage 4 (bf16) as the reference, stage 5 (FP8)
            k4 = TinyDecoder.from_previous(bf16, TritonMLA)
            k5 = TinyDecoder.from_previous(bf16, FP8MLA)
            short = ids[:2, : prompt_len + kernel_tokens]
            l4 = teacher_forced_logits(k4, short, prompt_len)
            l5 = teacher_forced_logits(k5, short, prompt_len)
            row["kernels"] = {
                "tokens": kernel_tokens, "batch": 2,
                "stage5_vs_stage4_teacher_forced": compare_logits(l4, l5),
                "stage4_vs_stage3_teacher_forced": compare_logits(ref_logits[:2, :kernel_tokens], l4),
            }
        row["seconds"] = time.perf_counter() - t0
        out[f"std{std}"] = row
        print(f"decoder std {std}: fp8 {row['fp8_teacher_forced_vs_bf16']['top1_agreement']:.4f} agree, KL "
              f"{row['fp8_teacher_forced_vs_bf16']['kl_mean']:.2e}; bf16 vs f32 "
              f"{row['bf16_vs_f32_teacher_forced (noise floor)']['top1_agreement']:.4f}, KL "
              f"{row['bf16_vs_f32_teacher_forced (noise floor)']['kl_mean']:.2e}; free-running "
              f"{row['fp8_free_running_tokens_before_divergence']} vs "
              f"{row['bf16_vs_f32_free_running_tokens_before_divergence']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    today = datetime.date.today().isoformat()
    ap.add_argument("--out", type=Path, default=Path(f"docs/results/fp8_accuracy_cpu_{today}.json"))
    ap.add_argument("--quick", action="store_true", help="fewer tokens and shapes (a smoke run)")
    ap.add_argument("--kernel-tokens", type=int, default=48,
                    help="tokens of the decoder run through the kernels (interpreter on CPU; 0 to skip)")
    ap.add_argument("--sections", default="rows,attention,decoder",
                    help="comma-separated sections to run; the others are kept from an existing --out file")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    sections = args.sections.split(",")
    if set(sections) != {"rows", "attention", "decoder"} and args.out.exists():
        RESULT.update(json.loads(args.out.read_text()))
    meta = RESULT.setdefault("meta", {})
    commands = meta.pop("commands", [meta.pop("command")] if "command" in meta else [])
    meta.update(date=today, device="cpu", torch=torch.__version__, python=platform.python_version(),
                machine=platform.machine(), interpreter=os.environ.get("TRITON_INTERPRET", "0"),
                commands=[*commands, " ".join(sys.argv)])
    for name, fn in (("rows", lambda: rows_section(args.quick)),
                     ("attention", lambda: attention_section(args.quick)),
                     ("decoder", lambda: decoder_section(args.quick, args.kernel_tokens))):
        if name not in sections:
            continue
        t0 = time.perf_counter()
        RESULT[name] = fn()
        RESULT["meta"][f"{name}_seconds"] = time.perf_counter() - t0
        save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
