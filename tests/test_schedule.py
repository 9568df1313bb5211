"""The schedule kernels (`get_mla_metadata`, one Triton program) against their reference, bit for bit.

`get_mla_metadata_torch` states FlashMLA's walk in plain Python; `_step_kernel` (step by step) and `_runs_kernel`
(in parallel) compute the same schedule in one launch, and both are checked here: on a hypothesis sweep of batches,
lengths (0 .. 2^20 tokens, page boundaries 63/64/65), part counts and per-request overheads, and on edge cases: all
requests empty, one request, more parts than work units, long requests cut many times, batches at and across the
kernels' block size, b = 2000, the parallel kernel's runs. What a schedule must satisfy (every page in exactly one
part, balanced work) is tested in test_kernels.py. Without a GPU the kernels run in Triton's interpreter (the loader
in test_kernels.py makes sure of that); on a GPU this file checks the compiled kernels (gpu_final.sh's `sched`).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_kernels import DEVICE, K  # noqa: F401  (K: the kernel package, reloaded for the interpreter if needed)

from mla_tutorial.kernels import schedule as S

MAX_LEN = 2**20  # tokens per request: 16384 pages


def assert_same_schedule(seqlens, parts: int | None, overhead: int | None = 5, dtype=torch.int32) -> None:
    """Kernel and reference on the same lengths: equal metadata and num_splits (dtype, shape, values)."""
    cache_seqlens = torch.as_tensor(seqlens, dtype=dtype, device=DEVICE)
    knobs = dict(num_sm_parts=parts, fixed_overhead=overhead)
    ref_meta, ref_splits = S.get_mla_metadata_torch(cache_seqlens, 16, 1, **knobs)
    for parallel in (False, True):  # both kernels: step by step, and the runs in parallel
        meta, splits = S.get_mla_metadata(cache_seqlens, 16, 1, parallel=parallel, **knobs)
        assert meta.dtype == torch.int32 and splits.dtype == torch.int32
        assert meta.shape == ref_meta.shape and splits.shape == (cache_seqlens.shape[0] + 1,)
        assert torch.equal(splits, ref_splits), (parallel, splits, ref_splits)
        bad = (meta != ref_meta).any(dim=1).nonzero().flatten().tolist()
        assert not bad, (f"parallel={parallel}: rows {bad[:5]} differ: kernel {meta[bad[:5]].tolist()} reference "
                         f"{ref_meta[bad[:5]].tolist()}")


# lengths: page boundaries and empty requests often, any length up to 2^20 sometimes
LENGTHS = st.one_of(
    st.sampled_from([0, 1, 63, 64, 65, 127, 128, 129, 4096]),
    st.integers(0, 5000),
    st.integers(0, MAX_LEN),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seqlens=st.lists(LENGTHS, min_size=1, max_size=40),
    parts=st.integers(1, 300),
    overhead=st.integers(1, 9),
)
def test_kernel_matches_torch_reference(seqlens, parts, overhead):
    assert_same_schedule(seqlens, parts, overhead)


@pytest.mark.parametrize("parts", [1, 3, 100])
@pytest.mark.parametrize("overhead", [1, 5])
def test_all_requests_empty(parts, overhead):
    assert_same_schedule([0] * 7, parts, overhead)


@pytest.mark.parametrize("length", [0, 1, 64, 65, 5000, MAX_LEN])
@pytest.mark.parametrize("parts", [1, 5, 1000])
def test_one_request(length, parts):
    assert_same_schedule([length], parts, overhead=1)


@pytest.mark.parametrize("seqlens", [[1, 0], [0, 0, 64], [130, 0, 1]])
def test_more_parts_than_work_units(seqlens):
    """Dozens of parts past the end of the work: each is (b, 0, b-1, pages of the last request or 1, 0)."""
    assert_same_schedule(seqlens, 50, overhead=1)


@pytest.mark.parametrize("parts,overhead", [(700, 1), (4096, 1), (132, 5)])
def test_long_requests_cut_many_times(parts, overhead):
    assert_same_schedule([MAX_LEN, 3, MAX_LEN - 1, 0, MAX_LEN], parts, overhead)


@pytest.mark.parametrize("b", [255, 256, 257, 513])
@pytest.mark.parametrize("parts", [1, 255, 256, 600])
def test_block_edges(b, parts):
    """Batches and part counts at and across the block of 256 lanes the kernel sums the costs in."""
    assert S.SCHEDULE_BLOCK == 256
    gen = torch.Generator().manual_seed(b * 1000 + parts)
    assert_same_schedule(torch.randint(0, 3000, (b,), generator=gen), parts, overhead=5)


@pytest.mark.parametrize("parts", [None, 132, 1000, 5000])
def test_large_batch(parts):
    """b = 2000 with normal and heavy-tailed lengths; None = the default part count."""
    gen = torch.Generator().manual_seed(2000)
    lengths = torch.randint(0, 9000, (2000,), generator=gen)
    lengths[::97] = MAX_LEN  # a few very long requests
    lengths[::13] = 0
    assert_same_schedule(lengths, parts)


def test_int64_and_strided_lengths():
    """cache_seqlens as int64, and as a strided view (every other element of a longer tensor)."""
    assert_same_schedule([5, 0, 70000, 64, 1], 9, dtype=torch.int64)
    base = torch.tensor([5, -1, 0, -1, 70000, -1, 64, -1, 1], dtype=torch.int32, device=DEVICE)
    view = base[::2]  # [5, 0, 70000, 64, 1], stride 2
    assert view.stride(0) == 2
    ref_meta, ref_splits = S.get_mla_metadata_torch(view.contiguous(), 16, 1, num_sm_parts=9, fixed_overhead=5)
    for parallel in (False, True):
        meta, splits = S.get_mla_metadata(view, 16, 1, num_sm_parts=9, fixed_overhead=5, parallel=parallel)
        assert torch.equal(meta, ref_meta) and torch.equal(splits, ref_splits)


def test_torch_reference_serves_cpu_tensors_without_interpreter(monkeypatch):
    """Outside the interpreter Triton cannot launch on CPU tensors: get_mla_metadata falls back to the reference."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cache_seqlens = torch.tensor([3, 700, 0], dtype=torch.int32)
    meta, splits = S.get_mla_metadata(cache_seqlens, 16, 1, num_sm_parts=4)
    ref_meta, ref_splits = S.get_mla_metadata_torch(cache_seqlens, 16, 1, num_sm_parts=4)
    assert torch.equal(meta, ref_meta) and torch.equal(splits, ref_splits)


@pytest.mark.parametrize("fn", [S.get_mla_metadata, S.get_mla_metadata_torch])
def test_bad_knobs_raise_before_launch(fn):
    seqlens = torch.tensor([1, 2], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="fixed_overhead"):
        fn(seqlens, 16, 1, num_sm_parts=4, fixed_overhead=0)
    with pytest.raises(ValueError, match="num_sm_parts"):
        fn(seqlens, 16, 1, num_sm_parts=0)
    with pytest.raises(ValueError, match="cache_seqlens"):
        fn(seqlens[:0], 16, 1, num_sm_parts=4)


def test_walk_by_hand():
    """FlashMLA's walk on lengths [200, 0, 64, 1000] (pages 4, 0, 1, 16), 4 parts, overhead 5: the total is 21 + 20
    = 41 units, the payload ceil(41 / 4) + 5 = 16. Part 0: request 0 (4 + 5 = 9), request 1 (0 + 5), 2 units left:
    not more than the overhead, so request 2 starts part 1: it fits (6), then request 3 gets 10 - 5 = 5 pages. Part 2
    ends request 3: its 11 other pages + 5 = 16 units (its piece 1). Part 3 has nothing: (b, 0, b - 1, 16, 0)."""
    meta, splits = S.get_mla_metadata_torch(torch.tensor([200, 0, 64, 1000]), 16, 1, num_sm_parts=4,
                                            fixed_overhead=5)
    assert meta[:, :5].tolist() == [[0, 0, 1, 1, 0], [2, 0, 3, 5, 0], [3, 5, 3, 16, 1], [4, 0, 3, 16, 0]]
    assert splits.tolist() == [0, 1, 2, 3, 5]
    assert_same_schedule([200, 0, 64, 1000], 4, overhead=5)


@pytest.mark.parametrize("s_k,parts,overhead,busy,first_rows", [
    (1024, 132, 5, 128, [[0, 0, 0, 16, 0], [1, 0, 1, 16, 0]]),  # h_q 64: one whole request a part
    (4096, 66, 5, 64, [[0, 0, 1, 64, 0], [2, 0, 3, 64, 0]]),  # h_q 128 (66 parts an m-tile): two whole requests
    (1024, 264, 2, 256, [[0, 0, 0, 9, 0], [0, 9, 0, 16, 1]]),  # h_q 16, small tile: two halves a request
    (4096, 264, 2, 256, [[0, 0, 0, 32, 0], [0, 32, 0, 64, 1]]),
])
def test_uniform_batches_fall_in_whole_requests_or_halves(s_k, parts, overhead, busy, first_rows):
    """b 128 of one length on an H200's part counts (docs/results/v5_notes.md, fifteenth session: what each
    measured against the even cut of the line that this walk replaced)."""
    meta, splits = S.get_mla_metadata_torch(torch.full((128,), s_k), 16, 1, num_sm_parts=parts,
                                            fixed_overhead=overhead)
    assert int((meta[:, 0] < 128).sum()) == busy and meta[:2, :5].tolist() == first_rows
    assert int(splits[-1]) == (128 if busy <= 128 else 256)


def test_default_overhead_by_tile():
    """5 units for tiles of 64 query rows (FlashMLA's), 2 for the small tile below; the defaults are the ones used."""
    assert S.default_fixed_overhead(64) == S.default_fixed_overhead(128) == 5
    assert S.default_fixed_overhead(16) == S.default_fixed_overhead(32) == 2
    seqlens = torch.full((6,), 1024, dtype=torch.int32, device=DEVICE)
    for rows in (16, 64):
        got = S.get_mla_metadata(seqlens, rows, 1, num_sm_parts=10)
        want = S.get_mla_metadata(seqlens, rows, 1, num_sm_parts=10, fixed_overhead=S.default_fixed_overhead(rows))
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("seqlens,parts,overhead", [
    ([4096] * 134, 132, 5),  # a little more work than one request a part: long runs of cuts before a stop
    ([4096] * 131, 132, 5),  # a little less: one whole request a part, one part idle
    ([64] * 300, 7, 5),  # many one-page requests a part: a run stops within a few requests
    ([1] * 50 + [2**20] + [1] * 50, 64, 1),  # one long request cut into a long run between short ones
    ([0, 2**20, 0, 0, 2**20 - 1, 0], 1000, 9),  # empty requests where a run would stop
    ([65] * 257, 256, 2),  # runs across the kernel's block of 256 requests
])
def test_runs_of_cuts(seqlens, parts, overhead):
    """The kernel finds the walk's runs (from a request's start, cuts until a part's units run out within a request's
    first `overhead` units) in parallel: lengths where runs are long, short, cross its block of requests, or end at
    empty requests."""
    assert_same_schedule(seqlens, parts, overhead)
