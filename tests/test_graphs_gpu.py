"""A decode step on the GPU: captured in a CUDA graph it gives what the eager step gives, and it never syncs.

Run on a GPU machine with `pytest -m gpu tests/test_graphs_gpu.py`; skipped without CUDA. Stages 2–5 (with their
in-place caches; stage 5's quantizes its new rows inside the captured step) and a TinyDecoder built on them; bf16
(the kernels' dtype), the tiny config.
"""

from __future__ import annotations

import pytest
import torch

from mla_tutorial import AbsorbedMLA, MLAConfig, PagedMLA, linear_init_
from mla_tutorial.metrics import error_metrics

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPE = torch.bfloat16
STAGE_NAMES = ["AbsorbedMLA", "PagedMLA", "TritonMLA", "FP8MLA"]
#: graph vs eager in bf16: the same kernels on the same data, except that the captured stage-3 attention gathers
#: the pages reserved for the whole run (a wider, zero-padded, masked copy) where the eager one gathers the pages
#: owned so far, which can change the order of float32 sums. Measured differences are at the bf16 rounding level.
REL_FROB = 2e-3


def _classes() -> dict[str, type]:
    from mla_tutorial.stage4_triton import TritonMLA
    from mla_tutorial.stage5_fp8 import FP8MLA

    return {"AbsorbedMLA": AbsorbedMLA, "PagedMLA": PagedMLA, "TritonMLA": TritonMLA, "FP8MLA": FP8MLA}


def _stage(name: str, config: MLAConfig, seed: int = 0):
    stage2 = linear_init_(AbsorbedMLA(config).double(), std=0.1, seed=seed).requires_grad_(False)
    module = stage2.to(device="cuda", dtype=DTYPE)
    cls = _classes()[name]
    return module if cls is AbsorbedMLA else cls.from_previous(module)


def _hidden(config: MLAConfig, batch: int, tokens: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, config.hidden_size, generator=gen).to(device="cuda", dtype=DTYPE)


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_graph_replay_equals_eager(name):
    """Prompt of 60 tokens, then 10 decode steps (crossing a page boundary), eager and replayed."""
    from mla_tutorial.graphs import CapturedDecodeStep

    config = MLAConfig.tiny()
    module = _stage(name, config)
    prompt, steps = _hidden(config, 3, 60, 1), [_hidden(config, 3, 1, 10 + i) for i in range(10)]
    with torch.no_grad():
        eager_cache, graph_cache = module.new_cache(3, 128), module.new_cache(3, 128)
        module(prompt, eager_cache)
        module(prompt, graph_cache)
        eager = torch.cat([module(x, eager_cache)[0] for x in steps], dim=1)
        captured = CapturedDecodeStep(module, steps[0], graph_cache, max_steps=10)
        replayed = torch.cat([captured(x).clone() for x in steps], dim=1)
    m = error_metrics(replayed, eager)
    assert torch.isfinite(replayed).all() and m.rel_frob <= REL_FROB, m
    if name == "AbsorbedMLA":
        assert graph_cache.lengths.tolist() == [70] * 3 and graph_cache.host_max_length == 70
    else:
        assert graph_cache.cache_seqlens().tolist() == [70] * 3 and graph_cache.host_lengths() == {0: 70, 1: 70, 2: 70}
        with pytest.raises(Exception, match="room reserved at capture is used up"):
            captured(steps[0])


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_decoder_greedy_generation_replayed_equals_eager(name):
    from mla_tutorial.decoder import TinyDecoder
    from mla_tutorial.graphs import CapturedDecodeStep

    cls = _classes()[name]
    base = TinyDecoder(MLAConfig.tiny(), AbsorbedMLA, num_layers=2).double().init_weights_(std=0.1, seed=0)
    decoder = TinyDecoder.from_previous(base, cls).to(device="cuda", dtype=DTYPE).requires_grad_(False)
    prompt = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(3)).cuda()
    new = 12
    runs = {}
    with torch.no_grad():
        for mode in ("eager", "graph"):
            caches = decoder.new_caches(2, 64)
            logits, _ = decoder(prompt, caches)
            ids, kept = [logits[:, -1].argmax(-1, keepdim=True)], [logits[:, -1].float()]
            step = CapturedDecodeStep(decoder, ids[-1], caches, max_steps=new) if mode == "graph" else None
            for _ in range(new - 1):
                out = step(ids[-1]) if step else decoder(ids[-1], caches)[0]
                ids.append(out[:, -1].argmax(-1, keepdim=True))
                kept.append(out[:, -1].float())
            runs[mode] = torch.cat(ids, dim=1), torch.stack(kept, dim=1)
    assert torch.equal(runs["graph"][0], runs["eager"][0])
    assert error_metrics(runs["graph"][1], runs["eager"][1]).rel_frob <= REL_FROB


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_decode_step_does_not_sync_when_no_page_is_allocated(name):
    config = MLAConfig.tiny()
    module = _stage(name, config)
    with torch.no_grad():
        cache = module.new_cache(4, 256)
        module(_hidden(config, 4, 70, 1), cache)
        if hasattr(cache, "reserve"):
            cache.reserve(tokens=8)
        module(_hidden(config, 4, 1, 2), cache)  # compiles the kernels, builds the batch's row index
        x = _hidden(config, 4, 1, 3)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                module(x, cache)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    lengths = cache.lengths if name == "AbsorbedMLA" else cache.cache_seqlens()
    assert lengths.tolist() == [74] * 4


@pytest.mark.parametrize("name", ["PagedMLA", "TritonMLA", "FP8MLA"])
def test_decoder_step_does_not_sync(name):
    from mla_tutorial.decoder import TinyDecoder

    cls = _classes()[name]
    base = TinyDecoder(MLAConfig.tiny(), AbsorbedMLA, num_layers=2).init_weights_(std=0.1, seed=0)
    decoder = TinyDecoder.from_previous(base, cls).to(device="cuda", dtype=DTYPE).requires_grad_(False)
    ids = torch.randint(0, 256, (3, 10)).cuda()
    with torch.no_grad():
        caches = decoder.new_caches(3, 128)
        decoder(ids, caches)
        decoder(ids[:, :1], caches)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            decoder(ids[:, 1:2], caches)
        finally:
            torch.cuda.set_sync_debug_mode(0)
