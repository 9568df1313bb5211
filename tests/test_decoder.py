"""End to end: a 2-layer TinyDecoder decodes the same greedy tokens with every attention stage 0–3."""

from __future__ import annotations

import pytest
import torch

from mla_tutorial import AbsorbedMLA, LatentMLA, MLAConfig, NaiveMHA, PagedMLA
from mla_tutorial.decoder import TinyDecoder
from mla_tutorial.metrics import error_metrics

F64_REL_FROB = 1e-10  # float64: the stages agree to rounding (measured logits rel_frob ≤ 2.9e-15)
NEW_TOKENS = 20
STAGES = [NaiveMHA, LatentMLA, AbsorbedMLA, PagedMLA]  # the torch stages 0–3 (stage 4, Triton, is tested on its own)
STAGE_NAMES = [cls.__name__ for cls in STAGES]


@pytest.fixture(scope="module")
def decoders(weight_std) -> list[TinyDecoder]:
    """Stage 0's decoder, seeded in float64, and from it one decoder per later stage with the same weights."""
    first = TinyDecoder(MLAConfig.tiny(), NaiveMHA, num_layers=2, vocab_size=256).double()
    ladder = [first.init_weights_(std=weight_std, seed=0).requires_grad_(False)]
    for stage_cls in STAGES[1:]:
        ladder.append(TinyDecoder.from_previous(ladder[-1], stage_cls).requires_grad_(False))
    return ladder


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(3))  # [B=2, T=7]


@pytest.fixture(scope="module")
def generations(decoders, prompt) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids [2, 7 + 20], step logits [2, 20, 256]) for each stage."""
    return [decoder.generate_greedy(prompt, NEW_TOKENS, return_logits=True) for decoder in decoders]


def test_every_stage_generates_identical_greedy_tokens(generations, prompt):
    ids0, logits0 = generations[0]
    assert ids0.shape == (2, 7 + NEW_TOKENS) and torch.equal(ids0[:, :7], prompt)
    new = ids0[:, 7:]
    assert all(len(set(row.tolist())) >= 5 for row in new), f"degenerate generation, test proves little: {new}"
    top2 = logits0.topk(2, dim=-1).values  # [B, steps, 2]
    assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-6, "a near-tie would make token equality luck"
    for name, (ids, _) in zip(STAGE_NAMES[1:], generations[1:], strict=True):
        assert torch.equal(ids, ids0), f"{name} generated {ids[:, 7:].tolist()}, NaiveMHA {new.tolist()}"


@pytest.mark.parametrize("stage_index", range(1, len(STAGES)), ids=STAGE_NAMES[1:])
def test_every_stage_gives_near_identical_logits(generations, stage_index):
    m = error_metrics(generations[stage_index][1], generations[0][1])
    assert m.rel_frob <= F64_REL_FROB, f"{STAGE_NAMES[stage_index]} vs NaiveMHA logits: {m}"
    m = error_metrics(generations[stage_index][1], generations[stage_index - 1][1])
    assert m.rel_frob <= F64_REL_FROB, f"{STAGE_NAMES[stage_index]} vs {STAGE_NAMES[stage_index - 1]} logits: {m}"


@pytest.mark.parametrize("stage_index", range(len(STAGES)), ids=STAGE_NAMES)
def test_cached_decode_logits_match_a_full_forward_over_the_generated_ids(decoders, generations, stage_index):
    ids, step_logits = generations[stage_index]
    full, _ = decoders[stage_index](ids[:, :-1])  # no cache: every position at once, [B, 7 + 19, vocab]
    m = error_metrics(step_logits, full[:, 6:])  # the logits that picked tokens 7 … 26
    assert m.rel_frob <= F64_REL_FROB, f"{STAGE_NAMES[stage_index]}: {m}"


def test_from_previous_swaps_every_attention_layer_and_copies_all_weights(decoders):
    for stage_cls, decoder in zip(STAGES, decoders, strict=True):
        assert all(type(layer.self_attn) is stage_cls for layer in decoder.layers)
        assert decoder.lm_head.weight.dtype == torch.float64
    state0 = decoders[0].state_dict()
    for decoder in decoders[1:]:
        state = decoder.state_dict()
        assert state.keys() == state0.keys()
        assert all(torch.equal(state[k], state0[k]) for k in state0)
        assert all(state[k].data_ptr() != state0[k].data_ptr() for k in state0), "weights are copied, not aliased"


def test_generate_greedy_with_no_new_tokens_returns_the_prompt(decoders, prompt):
    ids, logits = decoders[3].generate_greedy(prompt, 0, return_logits=True)
    assert torch.equal(ids, prompt) and logits.shape == (2, 0, 256)


@pytest.mark.parametrize("prompt_ids, max_new_tokens, match", [
    (torch.zeros(2, 3), 1, r"prompt_ids must be an integer tensor \[batch, T ≥ 1\], got \[2, 3\] torch.float32"),
    (torch.zeros(3, dtype=torch.long), 1, r"prompt_ids must be an integer tensor .* got \[3\]"),
    (torch.zeros(2, 0, dtype=torch.long), 1, r"prompt_ids must be an integer tensor .* got \[2, 0\]"),
    ([[1, 2]], 1, "prompt_ids must be an integer tensor .* got list"),
    (torch.zeros(2, 3, dtype=torch.long), -1, "max_new_tokens must be a non-negative int, got -1"),
])
def test_generate_greedy_rejects_bad_arguments(decoders, prompt_ids, max_new_tokens, match):
    with pytest.raises(ValueError, match=match):
        decoders[0].generate_greedy(prompt_ids, max_new_tokens)


def test_decoder_rejects_a_stage_class_that_is_not_one():
    with pytest.raises(TypeError, match="stage_cls must be an MLA stage class"):
        TinyDecoder(MLAConfig.tiny(), torch.nn.Linear)
