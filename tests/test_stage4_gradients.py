"""Stage 4 is inference-only (issue 7): its Triton kernel has no backward, so a call that would need gradients
through attention raises a clear error instead of silently returning a graph with attention cut out.

"Would need gradients": autograd is recording (grad mode on) and the latent queries require grad, because the
module's weights or the hidden states do. Under torch.no_grad(), torch.inference_mode(), or with frozen weights
and plain inputs, stage 4 runs as before.
"""

from __future__ import annotations

import pytest
import torch

from mla_tutorial import AbsorbedMLA, MLAConfig, PagedMLA, TritonMLA, linear_init_
from mla_tutorial.testing import same_bits

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _stage4(frozen: bool) -> TritonMLA:
    stage2 = linear_init_(AbsorbedMLA(MLAConfig.tiny()).double(), std=0.1, seed=0)
    stage3 = PagedMLA.from_previous(stage2).to(device=DEVICE, dtype=torch.bfloat16)
    return TritonMLA.from_previous(stage3).requires_grad_(not frozen)


def _x(requires_grad: bool = False) -> torch.Tensor:
    x = torch.randn(2, 3, MLAConfig.tiny().hidden_size, generator=torch.Generator().manual_seed(1))
    return x.to(device=DEVICE, dtype=torch.bfloat16).requires_grad_(requires_grad)


MESSAGE = r"TritonMLA is inference-only: its Triton kernel has no backward pass, .* torch.no_grad\(\)"


def test_trainable_weights_in_grad_mode_raise():
    with pytest.raises(RuntimeError, match=MESSAGE):
        _stage4(frozen=False)(_x())


def test_inputs_that_require_grad_raise_even_with_frozen_weights():
    with pytest.raises(RuntimeError, match=MESSAGE):
        _stage4(frozen=True)(_x(requires_grad=True))


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_inference_contexts_run(context):
    stage4 = _stage4(frozen=False)
    with context():
        out, cache = stage4(_x(requires_grad=True))
    assert out.shape == (2, 3, MLAConfig.tiny().hidden_size) and torch.isfinite(out).all()
    assert not out.requires_grad and cache.cache_seqlens().tolist() == [3, 3]


def test_frozen_weights_and_plain_inputs_run_in_grad_mode():
    out, _ = _stage4(frozen=True)(_x())
    assert torch.isfinite(out).all() and not out.requires_grad


def test_a_call_refused_for_gradients_leaves_the_cache_unchanged():
    stage4 = _stage4(frozen=False)
    with torch.no_grad():
        _, cache = stage4(_x())
    before = (cache.pool.clone(), cache.block_table(), cache.cache_seqlens())
    with pytest.raises(RuntimeError, match=MESSAGE):
        stage4(_x(), cache)
    after = (cache.pool, cache.block_table(), cache.cache_seqlens())
    assert all(same_bits(a, b) for a, b in zip(before, after, strict=True))
