"""v5's call plans (kernels/plan.py) on the CPU: what a call's key holds, and how a recorded launch is packed and
replayed (a stand-in for Triton's compiled kernel and its launcher). The plans themselves replay real launches only
on a GPU: tests/test_kernels_gpu.py checks them there against the full path and the reference."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mla_tutorial.kernels import plan


def _tensors():
    q = torch.randn(2, 1, 16, 576, dtype=torch.bfloat16)
    k = torch.randn(4, 64, 1, 576, dtype=torch.bfloat16)
    bt = torch.zeros(2, 3, dtype=torch.int32)
    sl = torch.ones(2, dtype=torch.int32)
    meta = torch.zeros(8, 8, dtype=torch.int32)
    splits = torch.zeros(3, dtype=torch.int32)
    return [q, k, bt, sl, meta, splits, None]


SCALARS = (512, None, False, True, None, None, False, False)


def test_a_key_holds_shapes_strides_dtypes_alignment_and_typed_scalars():
    tensors = _tensors()
    key = plan.call_key(tuple(tensors), SCALARS, 0)
    assert key == plan.call_key(tuple(tensors), SCALARS, 0)
    assert key == plan.call_key(tuple(t if t is None else t.clone() for t in tensors), SCALARS, 0)  # values: no
    assert key != plan.call_key(tuple(tensors), SCALARS, 1)  # the current device
    # causal=1 is not causal=False's plan, and a bool is not an int (the checks treat them apart)
    assert key != plan.call_key(tuple(tensors), (512, None, 1, True, None, None, False, False), 0)
    assert plan.call_key(tuple(tensors), (512, 1, False, True, None, None, False, False), 0) != plan.call_key(
        tuple(tensors), (512, 1.0, False, True, None, None, False, False), 0)
    strided = [*tensors]
    strided[2] = torch.zeros(2, 6, dtype=torch.int32)[:, ::2]  # same shape, another stride
    assert plan.call_key(tuple(strided), SCALARS, 0) != key
    shifted = [*tensors]
    shifted[0] = torch.randn(2 * 16 * 576 + 1, dtype=torch.bfloat16)[1:].view(2, 1, 16, 576)  # 2-byte aligned
    assert plan.call_key(tuple(shifted), SCALARS, 0) != key
    other = [*tensors]
    other[1] = tensors[1].half()
    assert plan.call_key(tuple(other), SCALARS, 0) != key


def test_no_key_for_what_cannot_be_planned():
    tensors = _tensors()
    assert plan.signature(tuple(tensors), SCALARS) is None  # CPU tensors (the interpreter)
    assert plan.call_key((*tensors[:2], [[0]], *tensors[3:]), SCALARS, 0) is None  # not a tensor
    unhashable = plan.call_key(tuple(tensors), (512, None, False, True, None, {"mode": 1}, False, False), 0)
    assert plan.lookup(unhashable) is None and not plan.is_new(unhashable)
    assert plan.lookup(None) is None and not plan.is_new(None)
    assert plan.signature(([1.0], *tensors[1:]), SCALARS) is None


class _Run:
    """Stands in for Triton 3.6's CudaLauncher: `launch` is the raw launcher, or the wrapper that expands TMA
    descriptors (whose closure holds the raw one)."""

    def __init__(self, launch, scratch: int = 0):
        self.launch = launch
        self.global_scratch_size = scratch
        self.profile_scratch_size = 0
        self.launch_cooperative_grid = False
        self.launch_pdl = True


def _compiled(launch, scratch: int = 0):
    return SimpleNamespace(run=_Run(launch, scratch), function=0xF00, packed_metadata=(4, 1, 1024))


def _slots():
    q, k, bt, sl, meta, splits, _ = _tensors()
    out = torch.empty(2, 1, 16, 512)
    lse, part_out, part_lse, flag = torch.empty(2, 16, 1), torch.empty(8), torch.empty(8), torch.ones(1)
    return (q, k, bt, sl, meta, splits, out, lse, part_out, part_lse, flag)


def test_a_recorded_launch_replays_with_the_new_addresses():
    calls = []

    def raw(*args):
        calls.append(args)

    slots = _slots()
    q, k, bt, sl, meta, splits, out, lse, part_out, part_lse, flag = slots
    args = (q, k, bt, sl, out, lse, part_out, part_lse, meta, splits, flag, 576, 9216, 1.5)
    launch = plan._Launch.from_record(_compiled(raw), (8, 2), args, ("CAUSAL", 16), slots)
    assert launch is not None and launch.pinned == ()
    ptrs = tuple(range(100, 111))  # the next call's addresses, in plan.SLOTS order
    launch(ptrs, stream=77)
    (got,) = calls
    assert got[:4] == (8, 2, 1, 77)  # grid, stream
    assert got[4:13] == (0xF00, False, True, None, None, (4, 1, 1024), None, None, None)
    assert got[13:] == (100, 101, 102, 103, 106, 107, 108, 109, 104, 105, 110, 576, 9216, 1.5, "CAUSAL", 16)


def test_what_a_plan_cannot_replay_is_refused():
    slots = _slots()

    def raw(*args):
        raise AssertionError("not launched")

    view = slots[0].view(2, 16, 576)  # a view made inside the launch code: its address is not a call's tensor
    assert plan._Launch.from_record(_compiled(raw), (1,), (view,), (), slots) is None
    assert plan._Launch.from_record(_compiled(raw), (1,), (object(),), (), slots) is None
    assert plan._Launch.from_record(_compiled(raw, scratch=128), (1,), (slots[0],), (), slots) is None
    assert plan.make_plan([], slots, False, True, None) is None


def test_a_tma_descriptor_is_encoded_once_per_address_of_its_tensor(monkeypatch):
    calls, expanded = [], []
    slots = _slots()
    k = slots[1]

    def expand(desc, meta):
        expanded.append(desc.base.data_ptr())
        return [f"MAP@{desc.base.data_ptr()}", *desc.shape, *desc.strides]

    monkeypatch.setattr(plan, "_expand_descriptor", expand)

    def make_wrapper(launcher, tensordesc_indices, tensordesc_meta):
        def inner(*args):  # (the closure Triton 3.6 builds around the raw launcher)
            return launcher, tensordesc_indices, tensordesc_meta
        return inner

    def raw(*args):
        calls.append(args)

    desc = SimpleNamespace(base=SimpleNamespace(data_ptr=k.data_ptr), shape=[256, 576], strides=[576, 1])
    wrapper = make_wrapper(raw, {1}, [{"swizzle": 3}])
    launch = plan._Launch.from_record(_compiled(wrapper), (4,), (slots[0], desc, 7), (), slots)
    assert launch is not None and launch.pinned == ((1, k.data_ptr()),)
    assert expanded == [k.data_ptr()]
    here = tuple(t.data_ptr() for t in slots)
    launch(here, 5)
    launch(here, 5)
    assert expanded == [k.data_ptr()]  # encoded when the plan was made, not at each replay
    assert calls[-1][13:] == (slots[0].data_ptr(), f"MAP@{k.data_ptr()}", 256, 576, 576, 1, 7)
    moved = (here[0], 4096, *here[2:])  # the cache at another address: its descriptor encoded there, once
    launch(moved, 5)
    launch(moved, 5)
    assert expanded == [k.data_ptr(), 4096]
    assert calls[-1][13:] == (slots[0].data_ptr(), "MAP@4096", 256, 576, 576, 1, 7)
    launch(here, 5)  # back where it was recorded: the recorded encoding
    assert expanded == [k.data_ptr(), 4096] and calls[-1][14] == f"MAP@{k.data_ptr()}"
    for address in range(8192, 8192 + 16 * 20, 16):  # many addresses: the kept encodings start over, stay bounded
        launch((here[0], address, *here[2:]), 5)
    assert len(launch.encoded[0]) <= plan._Launch.MAX_ENCODED and calls[-1][14] == f"MAP@{8192 + 16 * 19}"
    stray = SimpleNamespace(base=SimpleNamespace(data_ptr=lambda: 16), shape=[1], strides=[1])
    assert plan._Launch.from_record(_compiled(wrapper), (4,), (slots[0], stray, 7), (), slots) is None


@pytest.mark.parametrize("entry", ["mla_decode_v5", "flash_mla_with_kvcache"])
def test_cpu_calls_leave_no_plan(entry):
    """Under the interpreter every call takes the full path (its host checks of the values run at each call)."""
    from mla_tutorial import kernels as K
    from mla_tutorial.testing import make_paged_inputs

    q, k, bt, sl = make_paged_inputs([3, 70], 1, 16, 1, torch.bfloat16, seed=2)
    meta, splits = K.get_mla_metadata(sl, 16, 1)
    fn = getattr(K, entry)
    for _ in range(2):
        fn(q, k, bt, sl, 512, meta, splits) if entry != "mla_decode_v5" else fn(
            q, k, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits)
    assert plan.PLANS == {}


def test_the_full_path_lays_the_partials_out_as_a_plan_replays_them():
    """CallPlan.run allocates the partials as one buffer and hands the kernels part_lse at part_out's end: the full
    path (v5._outputs) must lay them out the same way, or a replay would write the LSEs where it reads the outputs."""
    from mla_tutorial.contract import validate_paged_decode
    from mla_tutorial.kernels.v5 import _outputs

    q, k, bt, sl, meta, *_ = _tensors()
    dims = validate_paged_decode(q, k, bt, sl, 512, None, False, kernel=True, check_values=False)
    out, lse, part_out, part_lse = _outputs(dims, q, meta)
    assert part_out.untyped_storage().data_ptr() == part_lse.untyped_storage().data_ptr()
    assert part_lse.data_ptr() - part_out.data_ptr() == part_out.numel() * 4
    assert part_out.is_contiguous() and part_lse.is_contiguous()
    assert part_out.shape == (2 + 8, 16, 512) and part_lse.shape == (2 + 8, 16)
    assert out.shape == (2, 1, 16, 512) and lse.shape == (2, 16, 1)
