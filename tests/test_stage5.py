"""Stage 5 (FP8MLA, FP8 cache rows) against stage 3's attention on the same FP8 cache, and against stage 4.

Two comparisons, kept apart:
- kernel: stage 5 against `FP8ReferenceMLA` (stage 3's torch attention over the dequantized FP8 pages, the same
  cached bytes). The kernel's dequantization is exact, so this is stage 4's kernel-vs-stage-3 comparison and holds
  to stage 4's bf16 bounds (tests/test_stage4.py).
- quantization: stage 5 against stage 4 with the same weights and inputs: all of that difference is the rounding of
  c_kv to e4m3. Bounds from scripts/fp8_accuracy.py (docs/results/fp8_accuracy_cpu_2026-12-01.json), tiny config,
  2 sequences, prompts 1/63/65/129/300 + 2 decode steps, weights std 0.1 (the tests') and 0.02 (linear_init_'s):
  rel_frob 0.025-0.042, cosine >= 0.99912, max_abs <= 0.78 (std 0.1, outputs of std ~2.6). Bounds: 1.5-2x those.
The cache itself: after any appends it holds exactly `quantize_rows` of the rows stage 4 holds, and each append
quantizes only its new rows.
"""

from __future__ import annotations

import pytest
import torch

import mla_tutorial
from mla_tutorial import AbsorbedMLA, MLAConfig, PagedLatentCache, PagedMLA, TritonMLA, error_metrics, linear_init_
from mla_tutorial.course.basics import prefill_and_decode
from mla_tutorial.decoder import TinyDecoder
from mla_tutorial.fp8 import ROW_BYTES, dequantize_k_cache, quantize_k_cache
from mla_tutorial.stage5_fp8 import FP8MLA, FP8LatentCache, FP8ReferenceMLA

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

KERNEL_BOUNDS = (0.25, 6e-3, 0.99999)  # stage 4 vs stage 3 in bf16 (test_stage4.BOUNDS): max_abs, rel_frob, cosine
FP8_BOUNDS = (1.5, 0.065, 0.998)  # stage 5 vs stage 4 (quantization): measured at worst 0.78, 0.042, 0.99912


def _ladder(seed: int = 0, std: float = 0.1, **overrides):
    config = MLAConfig.tiny(**overrides)
    stage2 = linear_init_(AbsorbedMLA(config).double(), std=std, seed=seed).requires_grad_(False)
    stage3 = PagedMLA.from_previous(stage2).to(device=DEVICE, dtype=torch.bfloat16)
    stages = (stage3, TritonMLA.from_previous(stage3), FP8MLA.from_previous(stage3),
              FP8ReferenceMLA.from_previous(stage3))
    return tuple(m.requires_grad_(False) for m in stages)  # inference only (stages 4 and 5 refuse gradients)


def _run(module, x: torch.Tensor, prompt: int, cache=None):
    """Prefill `prompt` tokens, then decode the rest one at a time; (outputs [B, T, hidden], cache)."""
    return prefill_and_decode(module, x[:, :prompt], x[:, prompt:], cache)


def _within(out, ref, bounds) -> None:
    max_abs, rel, cos = bounds
    m = error_metrics(out, ref)
    assert m.max_abs <= max_abs and m.rel_frob <= rel and m.cosine >= cos, f"{m} exceeds {bounds}"


def _live_rows(cache) -> torch.Tensor:
    """The bytes of every live token's row, sequence by sequence: uint8 [tokens, 656] (unused rows may hold
    anything)."""
    table, lengths = cache.block_table(), cache.cache_seqlens()
    raw = cache.pool.view(torch.uint8)
    return torch.stack([raw[int(table[b, t // 64]), t % 64] for b in range(len(lengths))
                        for t in range(int(lengths[b]))])


def _x(config: MLAConfig, batch: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, config.hidden_size, generator=gen, dtype=torch.float64).to(DEVICE,
                                                                                                 torch.bfloat16)


@pytest.mark.parametrize("prompt", [1, 63, 65])
def test_fp8_stage_matches_torch_attention_on_the_same_fp8_cache(prompt):
    stage3, stage4, stage5, ref5 = _ladder(seed=prompt)
    x = _x(stage3.config, 2, prompt + 2, seed=prompt)
    out5, cache5 = _run(stage5, x, prompt)
    out_ref, cache_ref = _run(ref5, x, prompt)
    assert torch.equal(_live_rows(cache5), _live_rows(cache_ref))
    _within(out5, out_ref, KERNEL_BOUNDS)
    _within(out5, _run(stage4, x, prompt)[0], FP8_BOUNDS)


def test_fp8_cache_holds_the_quantized_rows_of_stage3s_cache():
    stage3, _, stage5, _ = _ladder(seed=3)
    x = _x(stage3.config, 2, 67, seed=3)
    _, cache4 = _run(stage3, x, 65)  # stage 3's cache: the rows stage 4 caches (attention does not change them)
    _, cache5 = _run(stage5, x, 65)
    assert torch.equal(cache4.cache_seqlens(), cache5.cache_seqlens())
    table, lengths = cache4.block_table(), cache4.cache_seqlens()
    rows4 = torch.stack([cache4.pool[int(table[b, t // 64]), t % 64] for b in range(2)
                         for t in range(int(lengths[b]))])  # [tokens, 576] bf16
    assert torch.equal(_live_rows(cache5), quantize_k_cache(rows4[:, None, None]).view(torch.uint8)[:, 0, 0])


def test_append_quantizes_only_the_new_rows(monkeypatch):
    """Each append hands the kernel that quantizes and writes (kernels.append_rows) its new rows alone, and only
    their pool rows change."""
    import mla_tutorial.stage4_triton as stage4_module

    seen = []
    real = stage4_module.append_rows

    def spy(pool, kv, *args):
        seen.append((tuple(kv.shape), args[-1]))
        return real(pool, kv, *args)

    monkeypatch.setattr(stage4_module, "append_rows", spy)
    cache = FP8LatentCache(8, device=DEVICE)
    for _ in range(2):
        cache.allocate()
    cache.append([0, 1], torch.randn(2, 70, 576, device=DEVICE).bfloat16())
    before = cache.pool.clone()
    cache.append([1], torch.randn(1, 1, 576, device=DEVICE).bfloat16())
    assert seen == [((2, 70, 576), True), ((1, 1, 576), True)]  # (quantize=True)
    changed = (cache.pool.view(torch.uint8) != before.view(torch.uint8)).any(-1)  # [N, 64] rows rewritten
    page = int(cache.block_table([1])[0, 1])
    assert changed.sum() == 1 and changed[page, 70 - 64]  # token 70 of sequence 1: page 1, row 6


def test_variable_length_batch_with_shuffled_nan_poisoned_pages():
    """Three sequences (63, 64, 129 tokens) prefilled one by one into one shuffled FP8 pool whose every row is
    NaN (NaN e4m3 values, NaN scales, NaN RoPE), then decoded together: matches the torch attention on the same
    cache, nothing is NaN."""
    stage3, _, stage5, ref5 = _ladder(seed=7)
    hidden = stage3.config.hidden_size
    lengths = [63, 64, 129]
    prompts = [torch.randn(1, n, hidden, device=DEVICE).bfloat16() for n in lengths]
    steps = torch.randn(3, 2, hidden, device=DEVICE).bfloat16()
    outs = []
    for module in (ref5, stage5):
        cache = FP8LatentCache(16, 64, dtype=torch.bfloat16, device=DEVICE, fill_value=float("nan"), shuffle=True,
                               seed=1)
        assert torch.isnan(cache.dequantized().float()).all()
        for prompt in prompts:
            module(prompt, cache, seq_ids=[cache.allocate()])
        cache.poison_unused()
        ys = [module(steps[:, t : t + 1], cache)[0] for t in range(2)]
        outs.append(torch.cat(ys, dim=1))
        assert cache.cache_seqlens().tolist() == [n + 2 for n in lengths]
    assert torch.isfinite(outs[1]).all()
    _within(outs[1], outs[0], KERNEL_BOUNDS)


def test_poison_unused_fills_every_field_of_unused_rows_with_nan():
    cache = FP8LatentCache(4, device=DEVICE)
    cache.allocate()
    rows = torch.randn(1, 70, 576, device=DEVICE).bfloat16()
    cache.append([0], rows)
    cache.poison_unused()
    table = cache.block_table()[0]
    deq = cache.dequantized()[:, :, 0].float()  # [N, 64, 576]
    live = torch.cat([deq[int(table[0])], deq[int(table[1]), :6]])  # [70, 576]
    assert torch.isfinite(live).all()
    torch.testing.assert_close(live[:, 512:], rows[0, :, 512:].float(), rtol=0, atol=0)  # RoPE exact
    assert torch.isnan(deq[int(table[1]), 6:]).all()
    unused_pages = [p for p in range(4) if p not in table.tolist()]
    assert torch.isnan(deq[unused_pages]).all()
    scales = cache.pool.view(torch.uint8)[int(table[1]), 6:, 512:528].contiguous().view(torch.float32)
    assert torch.isnan(scales).all()


def test_fp8_cache_is_656_bytes_per_token():
    _, _, stage5, _ = _ladder()
    assert stage5.cache_bytes_per_token() == ROW_BYTES == 656
    cache = stage5.new_cache(2, 100)  # 2 sequences of up to 100 tokens: 2 pages each
    assert isinstance(cache, FP8LatentCache) and cache.pool.dtype == torch.float8_e4m3fn
    assert cache.k_cache.shape == (4, 64, 1, 656) and cache.nbytes == 4 * 64 * 656
    from mla_tutorial.measure.memory import cache_footprint

    _, cache = stage5(_x(stage5.config, 2, 64, seed=1), cache)
    assert cache_footprint(cache) == {"bytes": 2 * 64 * 656, "tokens": 128, "reserved": 4 * 64 * 656}


def test_dequantized_pool_is_stage4s_rows_up_to_e4m3_rounding():
    _, stage4, stage5, _ = _ladder(seed=2)
    x = _x(stage5.config, 1, 64, seed=2)
    _, cache4 = stage4(x)
    _, cache5 = stage5(x)
    rows4 = cache4.k_cache[int(cache4.block_table()[0, 0])].float()  # [64, 1, 576]
    rows5 = dequantize_k_cache(cache5.k_cache)[int(cache5.block_table()[0, 0])].float()
    assert torch.equal(rows5[..., 512:], rows4[..., 512:])
    c_kv4, err = rows4[..., :512], (rows5 - rows4)[..., :512].abs()
    scale = c_kv4.unflatten(-1, (4, 128)).abs().amax(-1, keepdim=True) / 448 * 2  # >= each tile's scale
    assert (err <= torch.maximum(c_kv4.abs() * 2.0**-4, (scale * 2.0**-10).expand(-1, -1, 4, 128).flatten(-2))).all()


def test_fp8_stage_refuses_what_it_cannot_run():
    stage3, stage4, stage5, _ = _ladder()
    hidden = stage3.config.hidden_size
    with pytest.raises(TypeError, match="bf16"):
        FP8MLA.from_previous(stage3.half())(torch.randn(1, 3, hidden, device=DEVICE).half())
    with pytest.raises(TypeError, match="FP8LatentCache"):
        stage5(_x(stage3.config, 1, 3, seed=0), PagedLatentCache(4, device=DEVICE))
    with pytest.raises(ValueError, match="576 wide"):  # stage 4 does not read FP8 rows
        stage4(_x(stage3.config, 1, 3, seed=0), FP8LatentCache(4, device=DEVICE))
    with pytest.raises(TypeError, match="dtype"):
        FP8LatentCache(4, dtype=torch.float16)
    with pytest.raises(ValueError, match="latent_dim"):
        FP8LatentCache(4, latent_dim=512)


def test_bad_append_leaves_the_cache_unchanged():
    cache = FP8LatentCache(2, device=DEVICE)
    cache.allocate()
    cache.append([0], torch.randn(1, 5, 576, device=DEVICE).bfloat16())
    before = cache.pool.clone()
    with pytest.raises(TypeError, match="bfloat16"):
        cache.append([0], torch.randn(1, 5, 576, device=DEVICE).half())
    with pytest.raises(ValueError, match="576"):
        cache.append([0], torch.randn(1, 5, 656, device=DEVICE).bfloat16())
    with pytest.raises(mla_tutorial.CacheFullError):
        cache.append([0], torch.randn(1, 200, 576, device=DEVICE).bfloat16())
    assert torch.equal(cache.pool.view(torch.uint8), before.view(torch.uint8)) and cache.seq_len(0) == 5


def test_fp8_names_are_exported():
    assert mla_tutorial.FP8MLA is FP8MLA and mla_tutorial.FP8LatentCache is FP8LatentCache
    assert mla_tutorial.quantize_k_cache is quantize_k_cache
    assert mla_tutorial.dequantize_k_cache is dequantize_k_cache


# ---------------------------------------------------------------------------------------------
# end to end: TinyDecoder's next-token distributions with an FP8 cache (also used by scripts/fp8_accuracy.py)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def teacher_forced_logits(decoder: TinyDecoder, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Logits [B, steps, vocab] that `decoder` gives for each next token of ids [B, prompt + steps]: prefill the
    prompt, then one cached decode step per given token (generation's path, fed these tokens instead of its own)."""
    logits, caches = decoder(ids[:, :prompt_len])
    out = [logits[:, -1]]
    for t in range(prompt_len, ids.shape[1] - 1):
        logits, caches = decoder(ids[:, t : t + 1], caches)
        out.append(logits[:, -1])
    return torch.stack(out, dim=1)


def compare_logits(ref: torch.Tensor, other: torch.Tensor) -> dict:
    """Top-1 agreement and KL(ref ‖ other) in nats per step, from logits [B, steps, vocab]; the error metrics."""
    lp_ref = torch.log_softmax(ref.double(), -1)
    lp_o = torch.log_softmax(other.double(), -1)
    kl = (lp_ref.exp() * (lp_ref - lp_o)).sum(-1)  # [B, steps]
    agree = (ref.argmax(-1) == other.argmax(-1)).double()
    top2 = ref.double().topk(2, -1).values
    return {"top1_agreement": float(agree.mean()), "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
            "kl_p99": float(kl.flatten().kthvalue(max(1, int(0.99 * kl.numel()))).values),
            "ref_top1_margin_median": float((top2[..., 0] - top2[..., 1]).median()),
            "logits": error_metrics(other, ref).as_dict()}


#: TinyDecoder (2 layers, vocab 256, bf16), 4 sequences, prompt 16, 320 greedy tokens of stage 3 in bf16, then the
#: FP8 model (FP8ReferenceMLA) teacher-forced on them (docs/results/fp8_accuracy_cpu_2026-12-01.json):
#:   weights std 0.02: top-1 agreement 0.978 (bf16 against float32: 0.935), KL mean 8.5e-7 nats (bf16: 1.5e-6)
#:   weights std 0.1:  top-1 agreement 0.863 (bf16 against float32: 0.957), KL mean 9.6e-3 nats (bf16: 1.1e-3)
#: The same through the kernels (stage 5 against stage 4, 48 tokens): 1.000 / 8.3e-7 and 0.865 / 9.3e-3.
#: Here 64 tokens, 2 sequences; bounds about 2x the measured distance from agreement and KL.
DECODER_BOUNDS = {0.02: (0.93, 3e-6), 0.1: (0.72, 0.025)}  # std: (min top-1 agreement, max mean KL)


@pytest.mark.parametrize("std", list(DECODER_BOUNDS))
def test_tiny_decoder_next_token_distributions_with_an_fp8_cache(std):
    from mla_tutorial.stage5_fp8 import FP8ReferenceMLA

    base = TinyDecoder(MLAConfig.tiny(), PagedMLA, num_layers=2, vocab_size=256).double()
    bf16 = base.init_weights_(std=std, seed=0).requires_grad_(False).bfloat16()
    fp8 = TinyDecoder.from_previous(bf16, FP8ReferenceMLA)
    prompt = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(5))
    ids, ref_logits = bf16.generate_greedy(prompt, 64, return_logits=True)
    assert all(len(set(row.tolist())) >= 16 for row in ids[:, 16:]), "degenerate generation proves little"
    m = compare_logits(ref_logits, teacher_forced_logits(fp8, ids, 16))
    min_agree, max_kl = DECODER_BOUNDS[std]
    assert m["top1_agreement"] >= min_agree and m["kl_mean"] <= max_kl, m
