"""scripts/gpu_parts_sweep.py on the CPU (Triton's interpreter, a stand-in timer): every knob pair of its grid runs,
the default first, and every schedule it tries gives the default's output (up to bf16 rounding of the combine)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# (only without CUDA: set on a GPU machine, it reached the subprocesses of test_contract_gpu.py, which then ran the
# interpreter, when `pytest -m gpu tests` collected this file; twenty-fourth session)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
ON_CPU = pytest.mark.skipif(torch.cuda.is_available(), reason="runs the sweep on CPU tensors in Triton's interpreter")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import gpu_parts_sweep  # noqa: E402


def test_knob_grid_puts_the_default_first_without_repeats():
    grid = gpu_parts_sweep.knob_grid(8)
    assert grid[0] == (8, 5) and len(grid) == len(set(grid)) == 5
    assert (4, 5) in grid and (6, 5) in grid and (8, 2) in grid and (8, 10) in grid
    assert gpu_parts_sweep.knob_grid(1) == [(1, 5), (1, 2), (1, 10)]  # fractions of one part round back to it


@ON_CPU
def test_sweep_runs_every_knob_pair_and_agrees_with_the_default():
    shapes = [(3, 16, 1, 130), (2, 64, 1, 65)]
    rows = gpu_parts_sweep.sweep(shapes, device="cpu", timer=lambda fn: (fn(), 1.0)[1], log=lambda m: None)
    per_shape = len(rows) // len(shapes)
    assert per_shape == len(gpu_parts_sweep.knob_grid(rows[0]["num_sm_parts"]))
    for i, (b, *_rest) in enumerate(shapes):
        mine = rows[i * per_shape:(i + 1) * per_shape]
        assert mine[0]["default"] and mine[0]["cos_diff_vs_default"] == 0.0
        for r in mine:
            assert r["ms"] == 1.0 and r["flashmla_ms"] is None
            assert 1 <= r["busy_parts"] <= r["num_sm_parts"] and r["pieces"] >= b
            assert r["cos_diff_vs_default"] < 1e-5, r


@ON_CPU
def test_sweep_takes_a_grid_of_shapes_with_their_own_pairs():
    grid = {(2, 16, 1, 130, "normal"): [(None, 5), (None, 2), (3, 2)], (2, 64, 1, 65, "fixed"): [(None, 5)]}
    rows = gpu_parts_sweep.sweep(device="cpu", timer=lambda fn: (fn(), 1.0)[1], log=lambda m: None, grid=grid,
                                 round_=1)
    assert [(r["h_q"], r["fixed_overhead"]) for r in rows] == [(16, 5), (16, 2), (16, 2), (64, 5)]
    assert rows[0]["default"] and rows[2]["num_sm_parts"] == 3 and rows[0]["lengths"] == "normal"
    assert all(r["round"] == 1 and r["cos_diff_vs_default"] < 1e-5 for r in rows)
    assert all(len(pairs) == len(set(pairs)) for pairs in gpu_parts_sweep.WIDE.values())
