"""Shared test fixtures: seeded tiny configs and the whole stage ladder built from one seeded stage 0.

Factories are session-scoped fixtures that return plain functions (they hold no state), so hypothesis tests
can use them too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import settings

# Without CUDA, Triton kernels run in the interpreter; Triton reads this when kernels are defined, so set it
# before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mla_tutorial import AbsorbedMLA, LatentMLA, MLAConfig, MLAProjections, NaiveMHA, PagedMLA, linear_init_

# Property tests draw the same examples on every run (CI must not pass or fail by luck); set
# HYPOTHESIS_PROFILE=explore to let hypothesis search new inputs, as a hostile sweep should now and then.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

STAGES = [NaiveMHA, LatentMLA, AbsorbedMLA, PagedMLA]  # the torch stages 0–3 (stage 4, Triton, is tested on its own)

#: Weight std for test modules. linear_init_'s default 0.02 leaves the tiny config's attention nearly uniform
#: (measured on 200 tokens: score std 0.10, ~150 keys of effective weight exp(entropy)), which hides masking and
#: position mistakes. With 0.1: score std 2.5, ~18 effective keys, outputs of std ~2.6.
WEIGHT_STD = 0.1

#: The tiny config and one variant per code path that differs: plain q_proj (V2-Lite), rotate-half RoPE, no YaRN.
CONFIGS: dict[str, MLAConfig] = {
    "tiny": MLAConfig.tiny(),
    "tiny-q_proj": MLAConfig.tiny(q_lora_rank=None),
    "tiny-rotate-half": MLAConfig.tiny(rope_interleave=False),
    "tiny-plain-rope": MLAConfig.tiny(rope_type=None),
}


def build_ladder(config: MLAConfig, dtype: torch.dtype = torch.float64, seed: int = 0) -> list[MLAProjections]:
    """Stages 0–3 with one set of weights: stage 0 seeded in float64, cast to dtype, each next one from_previous."""
    stage0 = linear_init_(STAGES[0](config).double(), std=WEIGHT_STD, seed=seed).to(dtype)
    ladder = [stage0]
    for stage_cls in STAGES[1:]:
        ladder.append(stage_cls.from_previous(ladder[-1]))
    return [module.requires_grad_(False) for module in ladder]  # inference only: no autograd graphs


def make_hidden(config: MLAConfig, batch: int, length: int, dtype: torch.dtype = torch.float64,
                seed: int = 1) -> torch.Tensor:
    """Seeded hidden states [batch, length, hidden] ~ N(0, 1), drawn in float64 then cast."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, config.hidden_size, generator=gen, dtype=torch.float64).to(dtype)


def run_in_chunks(module: MLAProjections, x: torch.Tensor, chunks: Sequence[int]) -> tuple[torch.Tensor, object]:
    """Feed x [B, T, hidden] to module in consecutive chunks of the given lengths (summing to T), threading the
    cache; returns the outputs concatenated along T, [B, T, hidden], and the final cache."""
    assert sum(chunks) == x.shape[1], f"chunks {list(chunks)} do not sum to T={x.shape[1]}"
    outs, cache, start = [], None, 0
    for n in chunks:
        out, cache = module(x[:, start : start + n], cache)  # [B, n, hidden]
        outs.append(out)
        start += n
    return torch.cat(outs, dim=1), cache


@pytest.fixture(autouse=True)
def _fresh_call_plans():
    """Each test starts with no v5 call plans (kernels/plan.py): a plan replays the launches of the module knobs it
    was made with, and tests change knobs (monkeypatch) between calls of one shape."""
    from mla_tutorial.kernels.plan import clear_plans

    clear_plans()
    yield
    clear_plans()


@pytest.fixture(params=list(CONFIGS))
def config(request) -> MLAConfig:
    """Each config of CONFIGS in turn."""
    return CONFIGS[request.param]


@pytest.fixture
def tiny() -> MLAConfig:
    return CONFIGS["tiny"]


@pytest.fixture(scope="session")
def weight_std() -> float:
    """WEIGHT_STD, for tests that seed modules of their own."""
    return WEIGHT_STD


@pytest.fixture(scope="session")
def ladder_factory() -> Callable[..., list[MLAProjections]]:
    """(config, dtype=torch.float64, seed=0) → [stage0, stage1, stage2, stage3], from build_ladder.

    Built once per (config, dtype, seed) and shared by all tests: run the modules, never change them in place
    (call build_ladder for private ones).
    """
    built: dict[tuple, list[MLAProjections]] = {}

    def factory(config: MLAConfig, dtype: torch.dtype = torch.float64, seed: int = 0) -> list[MLAProjections]:
        key = (repr(config), dtype, seed)
        if key not in built:
            built[key] = build_ladder(config, dtype, seed)
        return list(built[key])

    return factory


@pytest.fixture(scope="session")
def hidden_factory() -> Callable[..., torch.Tensor]:
    """make_hidden(config, batch, length, dtype=torch.float64, seed=1) → [batch, length, hidden]."""
    return make_hidden


@pytest.fixture(scope="session")
def chunked() -> Callable[..., tuple[torch.Tensor, object]]:
    """run_in_chunks(module, x, chunks) → (outputs [B, T, hidden], cache)."""
    return run_in_chunks
