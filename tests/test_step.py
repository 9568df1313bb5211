"""One schedule per decode step (mla_tutorial.step): TinyDecoder's layers share the kernel's schedule where their
caches hold the same lengths, and the result is the same as each layer computing its own."""

from __future__ import annotations

import contextlib

import pytest
import torch

import mla_tutorial.stage4_triton as stage4
from mla_tutorial import MLAConfig, PagedMLA, TritonMLA
from mla_tutorial import decoder as decoder_module
from mla_tutorial.decoder import TinyDecoder
from mla_tutorial.stage5_fp8 import FP8MLA
from mla_tutorial.step import one_step, shared

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_shared_makes_once_per_key_within_a_step_and_every_time_outside():
    made = []

    def make(v):
        return lambda: made.append(v) or v

    assert shared("k", make(1)) == 1 and shared("k", make(2)) == 2  # outside a step: every call makes its own
    with one_step():
        assert shared("k", make(3)) == 3
        assert shared("k", make(4)) == 3  # the step's first value for this key
        assert shared("other", make(5)) == 5
        with one_step():  # a nested step has its own
            assert shared("k", make(6)) == 6
        assert shared("k", make(7)) == 3
    assert shared("k", make(8)) == 8  # the step is over
    assert made == [1, 2, 3, 5, 6, 8]


def _decoder(stage_cls, layers=3):
    base = TinyDecoder(MLAConfig.tiny(), PagedMLA, num_layers=layers, vocab_size=64).double()
    base = base.init_weights_(std=0.1, seed=2).requires_grad_(False).to(device=DEVICE, dtype=torch.bfloat16)
    return TinyDecoder.from_previous(base, stage_cls).requires_grad_(False)


def _counting(monkeypatch):
    calls = []
    real = stage4.get_mla_metadata

    def counted(*args, **kwargs):
        calls.append(args[0].data_ptr())
        return real(*args, **kwargs)

    monkeypatch.setattr(stage4, "get_mla_metadata", counted)
    return calls


@pytest.mark.parametrize("stage_cls", [TritonMLA, FP8MLA])
def test_decoder_computes_one_schedule_per_step(stage_cls, monkeypatch):
    """Prefill and two decode steps of a 3-layer decoder on stage 4 / 5: one schedule each (from the first layer's
    lengths), and the same logits, bit for bit, as with every layer computing its own."""
    calls = _counting(monkeypatch)
    ids = torch.randint(0, 64, (2, 70), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    decoder = _decoder(stage_cls)

    def run():
        logits, caches = decoder(ids[:, :67])  # prefill past a page boundary
        out = [logits]
        for t in (67, 68):
            logits, caches = decoder(ids[:, t : t + 1], caches)
            out.append(logits)
        return out, caches

    shared_logits, caches = run()
    assert len(calls) == 3, f"schedules per forward: {len(calls)} in 3 forwards"
    assert set(calls) == {caches[0].lengths.data_ptr()}  # from the first layer's lengths, at each step
    calls.clear()
    monkeypatch.setattr(decoder_module, "one_step", contextlib.nullcontext)  # every layer its own schedule
    own_logits, _ = run()
    assert len(calls) == 9
    for a, b in zip(shared_logits, own_logits, strict=True):
        assert torch.equal(a, b)


def test_a_module_outside_a_step_builds_no_key(monkeypatch):
    """A stage-4 module called on its own (no decoder step) computes its schedule and never reads the lengths' host
    mirror for a key (the per-call cost outside a step stays what it was)."""
    from mla_tutorial.stage3_paged import PagedLatentCache

    calls = _counting(monkeypatch)
    keys = []
    real = PagedLatentCache.lengths_of
    monkeypatch.setattr(PagedLatentCache, "lengths_of", lambda self, ids: keys.append(ids) or real(self, ids))
    attn = _decoder(TritonMLA, layers=1).layers[0].self_attn
    x = torch.randn(2, 3, attn.config.hidden_size, generator=torch.Generator().manual_seed(6)).to(DEVICE,
                                                                                                   torch.bfloat16)
    with torch.no_grad():
        _, cache = attn(x)
        attn(x[:, :1], cache)
    assert len(calls) == 2 and keys == []


def test_layers_with_other_lengths_compute_their_own(monkeypatch):
    """A layer whose cache holds other lengths than the first layer's (here: one token more) does not take its
    schedule: the key is the host's mirror of the lengths."""
    calls = _counting(monkeypatch)
    decoder = _decoder(TritonMLA, layers=2)
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    _, caches = decoder(ids[:, :5])
    caches[1].append(caches[1].seq_ids, torch.zeros(1, 1, 576, dtype=torch.bfloat16, device=DEVICE))
    calls.clear()
    decoder(ids[:, 5:6], caches)
    assert len(calls) == 2
    assert caches[0].lengths_of(caches[0].seq_ids) == (6,) and caches[1].lengths_of(caches[1].seq_ids) == (7,)


def test_step_schedule_script_builds_equal_layers():
    """scripts/gpu_step_schedule.py's decoder (tiny config): every layer has the first one's attention weights,
    and a step runs with the schedule shared."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import gpu_step_schedule

    from mla_tutorial.measure.timing import random_cache

    dec = gpu_step_schedule.build(TritonMLA, MLAConfig.tiny(), 2, device=DEVICE.type)
    first, second = (layer.self_attn.state_dict() for layer in dec.layers)
    assert all(torch.equal(first[k], second[k]) for k in first)
    with torch.inference_mode():
        caches = [random_cache(layer.self_attn, 2, 70, seed=i) for i, layer in enumerate(dec.layers)]
        logits, caches = dec(torch.randint(0, 256, (2, 1), device=DEVICE), caches)
    assert logits.shape == (2, 1, 256) and torch.isfinite(logits).all()
    assert caches[0].lengths_of(caches[0].seq_ids) == caches[1].lengths_of(caches[1].seq_ids) == (71, 71)
