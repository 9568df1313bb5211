"""Stage 4 (TritonMLA) against stage 3 (PagedMLA) with the same weights, through the module interface.

The kernels themselves are tested on hostile data in test_kernels.py (interpreter) and test_kernels_gpu.py;
this file checks the stage: prefill and decode through the paged cache, page boundaries, variable-length
batches, shuffled pages, NaN in unused slots, and bad input. On a CPU the kernel runs in Triton's interpreter.

The kernel accepts bf16/fp16 only, so there is no float64 comparison here; the float64 chain ends at stage 3.
Bounds below come from measurements on the tiny config (2 weight seeds, q_lora_rank set and None, prompt
lengths 1, 63, 65, 129 plus two decode steps), with about 2× margin:
    stage 4 vs stage 3, both bf16: max_abs 0.125, rel_frob 3.0e-3, cosine 0.9999954
    stage 4 vs stage 3, both fp16: max_abs 0.0156, rel_frob 3.8e-4, cosine 0.99999993
    vs the float64 stage-2 reference, bf16: stage 4 rel_frob 1.149e-2, stage 3 1.146e-2 (the same to 0.3 %).
The kernel rounds the softmax probabilities to the input dtype before P·V (as FlashMLA does), which is where
its difference from stage 3 (fp32 throughout) comes from.
"""

from __future__ import annotations

import pytest
import torch

from mla_tutorial import AbsorbedMLA, MLAConfig, PagedLatentCache, PagedMLA, TritonMLA, error_metrics, linear_init_

#: The kernel runs compiled on a GPU, and in Triton's interpreter on CPU tensors when there is none.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

BOUNDS = {  # dtype: (max_abs, rel_frob, min cosine) of stage 4 vs stage 3
    torch.bfloat16: (0.25, 6e-3, 0.99999),
    torch.float16: (0.03, 8e-4, 0.9999998),
}


def _pair(dtype: torch.dtype, seed: int = 0, **config_overrides) -> tuple[AbsorbedMLA, PagedMLA, TritonMLA]:
    config = MLAConfig.tiny(**config_overrides)
    stage2 = linear_init_(AbsorbedMLA(config).double(), std=0.1, seed=seed).requires_grad_(False)
    stage3 = PagedMLA.from_previous(stage2).to(device=DEVICE, dtype=dtype).requires_grad_(False)
    return stage2, stage3, TritonMLA.from_previous(stage3).requires_grad_(False)  # inference only (no backward)


def _run(module, x: torch.Tensor, prompt: int, cache=None) -> torch.Tensor:
    """Prefill `prompt` tokens, then decode the rest one at a time; outputs concatenated [B, T, hidden]."""
    y, cache = module(x[:, :prompt], cache)
    ys = [y]
    for t in range(prompt, x.shape[1]):
        y, cache = module(x[:, t : t + 1], cache)
        ys.append(y)
    return torch.cat(ys, dim=1)


def _assert_within(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    max_abs, rel, cos = BOUNDS[dtype]
    m = error_metrics(out, ref)
    assert m.max_abs <= max_abs and m.rel_frob <= rel and m.cosine >= cos, f"{m} exceeds {BOUNDS[dtype]}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("prompt", [1, 63, 65, 129])
def test_triton_matches_paged(dtype, prompt):
    stage2, stage3, stage4 = _pair(dtype, seed=prompt)
    x = torch.randn(2, prompt + 2, stage3.config.hidden_size, generator=torch.Generator().manual_seed(prompt),
                    dtype=torch.float64)
    xd = x.to(device=DEVICE, dtype=dtype)
    out3, out4 = _run(stage3, xd, prompt), _run(stage4, xd, prompt)
    _assert_within(out4, out3, dtype)
    if dtype is torch.bfloat16:  # against the float64 stage-2 reference, no worse than stage 3 (+10 %)
        ref = _run(stage2, x, prompt)
        assert error_metrics(out4, ref).rel_frob <= 1.1 * error_metrics(out3, ref).rel_frob + 1e-3


def test_triton_q_proj_config_matches_paged():
    _, stage3, stage4 = _pair(torch.bfloat16, seed=3, q_lora_rank=None)
    x = torch.randn(1, 20, stage3.config.hidden_size, dtype=torch.bfloat16, device=DEVICE)
    _assert_within(_run(stage4, x, 18), _run(stage3, x, 18), torch.bfloat16)


def test_triton_variable_length_batch_with_shuffled_nan_poisoned_pages():
    """Three sequences (63, 64, 129 tokens) prefilled one by one into one shuffled, NaN-filled pool, then
    decoded together: every row matches stage 3 run on the same cache layout, and nothing is NaN."""
    dtype = torch.bfloat16
    _, stage3, stage4 = _pair(dtype, seed=7)
    hidden = stage3.config.hidden_size
    lengths = [63, 64, 129]
    prompts = [torch.randn(1, n, hidden, dtype=dtype, device=DEVICE) for n in lengths]
    steps = torch.randn(3, 2, hidden, dtype=dtype, device=DEVICE)
    outs = []
    for module in (stage3, stage4):
        cache = PagedLatentCache(16, 64, stage3.config.latent_dim, dtype=dtype, device=DEVICE,
                                 fill_value=float("nan"), shuffle=True, seed=1)
        for prompt in prompts:
            module(prompt, cache, seq_ids=[cache.allocate()])
        cache.poison_unused()
        ys = [module(steps[:, t : t + 1], cache)[0] for t in range(2)]
        outs.append(torch.cat(ys, dim=1))
        assert cache.cache_seqlens().tolist() == [n + 2 for n in lengths]
    assert torch.isfinite(outs[1]).all()
    _assert_within(outs[1], outs[0], dtype)


def test_triton_rejects_float32_with_a_clear_error():
    _, stage3, _ = _pair(torch.float32)
    stage4 = TritonMLA.from_previous(stage3)
    with pytest.raises(TypeError, match="bf16 or fp16"):
        stage4(torch.randn(1, 3, stage3.config.hidden_size, device=DEVICE))


def test_triton_rejects_bad_hidden_states():
    _, _, stage4 = _pair(torch.bfloat16)
    with pytest.raises(ValueError, match="hidden_states"):
        stage4(torch.randn(1, 3, 7, dtype=torch.bfloat16, device=DEVICE))
    with pytest.raises(TypeError, match="hidden_states"):
        stage4(torch.randn(1, 3, stage4.config.hidden_size, dtype=torch.float16, device=DEVICE))


def test_triton_is_exported_and_reports_latent_cache_bytes():
    import mla_tutorial

    assert mla_tutorial.TritonMLA is TritonMLA
    assert callable(mla_tutorial.flash_mla_with_kvcache) and callable(mla_tutorial.get_mla_metadata)
    assert TritonMLA(MLAConfig.tiny()).to(torch.bfloat16).cache_bytes_per_token() == 576 * 2
