"""v5's call plans on a GPU (kernels/plan.py): a call replayed from its plan gives the full path's bits, with new
data at new addresses, a moved cache, a bad block id, the current API form and inside a CUDA graph.

Run on a GPU machine with `pytest -m gpu tests/test_plan_gpu.py`; skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

if torch.cuda.is_available():
    import mla_tutorial.kernels as K
    from mla_tutorial.fp8 import quantize_k_cache
    from mla_tutorial.kernels import plan
    from mla_tutorial.kernels.v5 import kernel_choice
    from mla_tutorial.measure.kernel_bench import capture_graph
    from mla_tutorial.testing import make_paged_inputs, same_bits

LENGTHS = [0, 1, 20, 63, 64, 65, 140, 4096]


def _inputs(h_q: int, s_q: int, fp8: bool, seed: int):
    q, k, bt, sl = make_paged_inputs(LENGTHS, s_q, h_q, 1, torch.bfloat16, seed=seed, device="cuda")
    return q, quantize_k_cache(k) if fp8 else k, bt, sl


def _only_plan():
    plans = [p for p in plan.PLANS.values() if p is not None]
    assert len(plans) == 1, f"expected one call plan, found {len(plan.PLANS)} entries ({len(plans)} plans)"
    return plans[0]


def _full(fn):
    """fn() through the full path (no plan kept)."""
    plan.clear_plans()
    result = fn()
    plan.clear_plans()
    return result


def _same(a, b):
    assert same_bits(a[0], b[0]), "the replayed output differs from the full path's"
    assert same_bits(a[1], b[1]), "the replayed LSE differs from the full path's"


@pytest.mark.parametrize("h_q,s_q,fp8", [(16, 1, False), (64, 1, False), (128, 2, False), (16, 1, True),
                                         (64, 1, True), (9, 2, True)])
def test_gpu_a_planned_call_equals_the_full_path(h_q, s_q, fp8):
    q, k, bt, sl = _inputs(h_q, s_q, fp8, seed=h_q + s_q)
    causal = s_q > 1
    meta, splits = K.get_mla_metadata(sl, s_q * h_q, 1)

    def call(q=q, k=k, bt=bt):
        return K.flash_mla_with_kvcache(q, k, bt, sl, 512, meta, splits, causal=causal, is_fp8_kvcache=fp8)

    first = call()  # the full path, which leaves the plan
    call_plan = _only_plan()
    path = kernel_choice(q, k, s_q * h_q, 1)[0]
    assert len(call_plan.launches) == 2, f"tile {path}: expected the tile's launch and the combine's"
    _same(first, call())  # replayed
    q2 = torch.randn_like(q)  # other values at another address
    replayed = call(q=q2)
    n = k.shape[0]
    perm = torch.randperm(n, device="cuda")  # the same pages elsewhere in a moved pool
    k2 = torch.empty_like(k)
    k2[perm] = k
    bt2 = torch.where(bt < n, perm[bt.clamp(max=n - 1).long()].int(), bt)  # (the sentinels stay)
    moved = call(q=q2, k=k2, bt=bt2)  # a TMA tile's plan encodes its descriptors at the moved pool's address
    moved_again = call(q=q2, k=k2, bt=bt2)
    assert _only_plan() is call_plan, "a moved q or cache made a new plan instead of re-encoding the descriptors"
    expected = _full(lambda: call(q=q2))
    for result in (replayed, moved, moved_again):
        _same(expected, result)


@pytest.mark.parametrize("fp8", [False, True])
def test_gpu_a_planned_call_still_flags_a_bad_block_id(fp8):
    q, k, bt, sl = _inputs(16, 1, fp8, seed=5)
    meta, splits = K.get_mla_metadata(sl, 16, 1)
    flag = torch.ones(1, dtype=torch.int32, device="cuda")

    def call(bt):
        return K.mla_decode_v5(q, k, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits,
                               error_flag=flag, is_fp8_kvcache=fp8)

    good = call(bt)
    call(bt)
    _only_plan()
    assert int(flag) == 1
    bad = bt.clone()
    bad[7, 3] = k.shape[0]  # inside request 7's 4,096 keys
    out, _ = call(bad)  # replayed: same shapes
    assert int(flag) == 0, "a bad block id did not clear the flag through a planned call"
    torch.testing.assert_close(out[:7], good[0][:7], atol=0, rtol=0)


def test_gpu_the_current_api_form_is_planned_after_its_first_call():
    q, k, bt, sl = _inputs(64, 1, False, seed=9)
    sched, _ = K.get_mla_metadata()
    first = K.flash_mla_with_kvcache(q, k, bt, sl, 512, sched, None)  # fills the schedule
    second = K.flash_mla_with_kvcache(q, k, bt, sl, 512, sched, None)  # plans
    _only_plan()
    _same(first, second)
    _same(first, K.flash_mla_with_kvcache(q, k, bt, sl, 512, sched, None))  # replays
    q_other = q[:4].clone()
    with pytest.raises(ValueError, match="filled for another call shape"):
        K.flash_mla_with_kvcache(q_other, k, bt[:4], sl[:4], 512, sched, None)


@pytest.mark.parametrize("h_q,fp8", [(16, False), (16, True), (64, True)])  # (64 rows, FP8: the FP8 seesaw tile)
def test_gpu_a_planned_call_is_captured_in_a_cuda_graph(h_q, fp8):
    q, k, bt, sl = _inputs(h_q, 1, fp8, seed=11)
    meta, splits = K.get_mla_metadata(sl, h_q, 1)
    static_q = q.clone()

    def call():
        return K.flash_mla_with_kvcache(static_q, k, bt, sl, 512, meta, splits, is_fp8_kvcache=fp8)

    call()
    call()  # planned
    graph, captured = capture_graph(call)
    q_new = torch.randn_like(q)
    static_q.copy_(q_new)
    graph.replay()
    torch.cuda.synchronize()
    _same(_full(lambda: K.flash_mla_with_kvcache(q_new, k, bt, sl, 512, meta, splits, is_fp8_kvcache=fp8)),
          captured)
