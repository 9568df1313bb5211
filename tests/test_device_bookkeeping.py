"""The paged cache's bookkeeping on the device, the in-place stage-2 cache, and what a decode step may not do.

- The device-side block table and lengths give exactly what the host-side allocator gave before: the same pages
  in the same slots (checked against a plain host model of the old code), the same outputs as stage 2 (float64,
  ≤ 1e-12 relative) across page boundaries, variable lengths and freed-and-reused pages.
- A decode step that needs no new page reads nothing back from the device (no `.item()`, no data-dependent
  shapes) and builds no tensor from a Python list: checked on CPU by watching every aten call.
- Every stage validates everything before touching the cache: a refused call leaves it exactly as it was, and a
  cache of another config or dtype is refused with a message naming both.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mla_tutorial import (
    SENTINEL_BLOCK,
    AbsorbedMLA,
    CacheFullError,
    LatentCache,
    MHACache,
    MLAConfig,
    PagedLatentCache,
    PagedMLA,
)
from mla_tutorial.decoder import TinyDecoder
from mla_tutorial.graphs import CapturedDecodeStep
from mla_tutorial.metrics import error_metrics
from mla_tutorial.stage2_absorbed import StaticLatentCache

REL_1E12 = 1e-12


# ------------------------------------------------------------------ a host model of the old bookkeeping
class HostModel:
    """The old PagedLatentCache's arithmetic, on the host: page lists and lengths; slot of token t."""

    def __init__(self, order: list[int], page: int):
        self.free, self.page, self.pages, self.lengths = list(order), page, {}, {}

    def allocate(self, s: int) -> None:
        self.pages[s], self.lengths[s] = [], 0

    def append(self, s: int, n: int) -> list[int]:
        need = math.ceil((self.lengths[s] + n) / self.page) - len(self.pages[s])
        self.pages[s] += [self.free.pop(0) for _ in range(max(0, need))]
        slots = [self.pages[s][t // self.page] * self.page + t % self.page
                 for t in range(self.lengths[s], self.lengths[s] + n)]
        self.lengths[s] += n
        return slots

    def free_seq(self, s: int) -> None:
        self.free += self.pages.pop(s)
        del self.lengths[s]


def test_device_bookkeeping_puts_every_row_where_the_host_model_does():
    """Allocate, append uneven chunks, free, reuse freed pages, grow the tables: every row lands in the slot the
    old host arithmetic gives, and block_table()/cache_seqlens() agree with it."""
    cache = PagedLatentCache(40, 4, 3, dtype=torch.float64, fill_value=float("nan"), shuffle=True, seed=3,
                             max_seqs=2, max_pages_per_seq=2)  # small tables: they must grow
    order = torch.randperm(40, generator=torch.Generator().manual_seed(3)).tolist()
    model = HostModel(order, 4)
    flat = cache.pool.view(-1, 3)
    counter = [0.0]

    def append(seqs: list[int], n: int) -> None:
        rows = torch.stack([counter[0] + 1000 * i + torch.arange(n, dtype=torch.float64) for i in range(len(seqs))])
        counter[0] += 100
        cache.append(seqs, rows[..., None].expand(len(seqs), n, 3).contiguous())  # [B, n, 3]
        for i, s in enumerate(seqs):
            for t, slot in enumerate(model.append(s, n)):
                assert flat[slot].tolist() == [float(rows[i, t])] * 3, f"seq {s} token {t}"

    for s in range(3):
        cache.allocate()
        model.allocate(s)
    append([0, 1, 2], 5)
    append([2, 0], 3)  # rows in another order than their slots
    append([1], 9)  # three pages at once
    cache.free(0)
    model.free_seq(0)
    cache.allocate(7)
    model.allocate(7)  # takes the freed slot 0, and later the freed pages
    append([7, 1, 2], 4)
    append([1, 7], 1)
    for seqs in ([1, 2, 7], [7, 2], [2]):
        table = cache.block_table(seqs)
        width = max(len(model.pages[s]) for s in seqs)
        expected = [model.pages[s] + [SENTINEL_BLOCK] * (width - len(model.pages[s])) for s in seqs]
        assert table.dtype == torch.int32 and table.tolist() == expected
        assert cache.cache_seqlens(seqs).tolist() == [model.lengths[s] for s in seqs]
    assert cache.num_free_blocks == len(model.free) and list(cache._free) == model.free


def assert_rel(out: torch.Tensor, ref: torch.Tensor, what: str, bound: float = REL_1E12) -> None:
    m = error_metrics(out, ref)
    assert torch.isfinite(out).all() and m.rel_frob <= bound, f"{what}: {m}"


@pytest.mark.parametrize("length", [63, 64, 65, 127, 128, 129])
def test_paged_matches_stage2_to_1e12_across_page_boundaries(tiny, length, ladder_factory, hidden_factory, chunked):
    _, _, absorbed, paged = ladder_factory(tiny)
    x = hidden_factory(tiny, 2, length + 3)
    cache = paged.new_cache(2, 256, shuffle=True, fill_value=float("nan"))
    outs = [paged(x[:, :length], cache)[0]] + [paged(x[:, t : t + 1], cache)[0] for t in range(length, length + 3)]
    assert_rel(torch.cat(outs, dim=1), chunked(absorbed, x, [length, 1, 1, 1])[0], f"length {length}")


def test_paged_matches_stage2_with_variable_lengths_and_freed_reused_pages(tiny, ladder_factory, hidden_factory,
                                                                          chunked):
    """Three sequences of different lengths decode together; one ends, its pages (NaN-poisoned) go to a new one,
    and the batch (in a shuffled row order) keeps matching stage 2 run on each sequence alone."""
    _, _, absorbed, paged = ladder_factory(tiny)
    cache = PagedLatentCache.for_config(tiny, 3, 200, dtype=torch.float64, shuffle=True, fill_value=float("nan"))
    lengths = {0: 70, 1: 5, 2: 128}
    xs = {s: hidden_factory(tiny, 1, n + 6, seed=40 + s) for s, n in lengths.items()}
    outs = {s: [] for s in lengths}
    for s, n in lengths.items():
        cache.allocate(s)
        outs[s].append(paged(xs[s][:, :n], cache, seq_ids=[s])[0])

    def step(seqs: list[int]) -> None:
        x = torch.cat([xs[s][:, lengths[s] + len(outs[s]) - 1][:, None] for s in seqs])  # [B, 1, hidden]
        out = paged(x, cache, seq_ids=seqs)[0]
        for i, s in enumerate(seqs):
            outs[s].append(out[i : i + 1])

    step([2, 0, 1])
    step([0, 1, 2])
    cache.free(1)
    cache.poison_unused()
    cache.allocate(3)
    assert cache.rows([3]) == slice(1, 2), "the new sequence takes the freed slot"
    lengths[3], xs[3], outs[3] = 9, hidden_factory(tiny, 1, 9 + 4, seed=50), []
    outs[3].append(paged(xs[3][:, :9], cache, seq_ids=[3])[0])
    for seqs in ([3, 2, 0], [3, 2, 0], [0, 3, 2], [2, 0, 3]):
        step(seqs)
    for s in (0, 2, 3):
        done = len(outs[s]) - 1  # decode steps taken
        ref = chunked(absorbed, xs[s][:, : lengths[s] + done], [lengths[s]] + [1] * done)[0]
        assert_rel(torch.cat(outs[s], dim=1), ref, f"sequence {s}")


def test_static_stage2_cache_matches_the_growing_one(tiny, ladder_factory, hidden_factory, chunked):
    absorbed = ladder_factory(tiny)[2]
    x = hidden_factory(tiny, 3, 70)
    cache = absorbed.new_cache(3, 80)
    assert isinstance(cache, StaticLatentCache) and cache.capacity == 80
    outs = [absorbed(x[:, :64], cache)[0]] + [absorbed(x[:, t : t + 1], cache)[0] for t in range(64, 70)]
    assert cache.lengths.tolist() == [70] * 3 and cache.host_max_length == 70
    assert_rel(torch.cat(outs, dim=1), chunked(absorbed, x, [64] + [1] * 6)[0], "StaticLatentCache")


def test_tiny_decoder_generates_the_same_tokens_with_in_place_caches(weight_std):
    first = TinyDecoder(MLAConfig.tiny(), AbsorbedMLA, num_layers=2).double().init_weights_(std=weight_std, seed=0)
    prompt = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(3))
    ref_ids, ref_logits = first.generate_greedy(prompt, 6, return_logits=True)
    for stage_cls in (AbsorbedMLA, PagedMLA):
        decoder = TinyDecoder.from_previous(first, stage_cls).requires_grad_(False)
        caches = decoder.new_caches(2, 64)
        with torch.no_grad():
            logits, caches = decoder(prompt, caches)
            ids, step_logits = prompt, []
            for _ in range(6):
                step_logits.append(logits[:, -1])
                ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
                logits, caches = decoder(ids[:, -1:], caches)
        assert torch.equal(ids, ref_ids), stage_cls.__name__
        assert_rel(torch.stack(step_logits, 1), ref_logits, stage_cls.__name__)


# ------------------------------------------------------------------ what a decode step may not do
class Watch(TorchDispatchMode):
    """Records every aten op; `reads` are those that bring a device value to the host or size a tensor by one."""

    READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "item", "equal"}

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))

    @property
    def reads(self) -> list[str]:
        return [op for op in self.ops if op in self.READS]


@pytest.fixture
def no_list_tensors(monkeypatch):
    """Counts torch.tensor(...) calls (a tensor built from Python data) while active."""
    calls = []
    real = torch.tensor

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("data"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", counting)
    return calls


def _decode_step_watched(module, cache, x, seq_ids=None):
    with Watch() as watch:
        if seq_ids is None:
            module(x, cache)
        else:
            module(x, cache, seq_ids=seq_ids)
    return watch


@pytest.mark.parametrize("seq_ids", [None, [1, 0, 2]], ids=["allocation-order", "shuffled-rows"])
def test_paged_decode_step_reads_nothing_back_and_builds_no_tensor_from_a_list(tiny, ladder_factory,
                                                                             hidden_factory, seq_ids,
                                                                             no_list_tensors):
    paged = ladder_factory(tiny)[3]
    cache = paged.new_cache(3, 256)
    paged(hidden_factory(tiny, 3, 60), cache)
    x = hidden_factory(tiny, 3, 1, seed=9)
    paged(x, cache, seq_ids=seq_ids)  # first use of this batch: its row index may be built here
    no_list_tensors.clear()
    watch = _decode_step_watched(paged, cache, x, seq_ids)
    assert watch.reads == [] and no_list_tensors == [], (watch.reads, no_list_tensors)
    assert cache.cache_seqlens().tolist() == [62, 62, 62]


def test_paged_decode_step_that_needs_a_page_touches_the_allocator_once(tiny, ladder_factory, hidden_factory,
                                                                       no_list_tensors):
    paged = ladder_factory(tiny)[3]
    cache = paged.new_cache(2, 256)
    paged(hidden_factory(tiny, 2, 64), cache)  # two full pages
    no_list_tensors.clear()
    paged(hidden_factory(tiny, 2, 1), cache)  # this step needs new pages
    assert len(no_list_tensors) == 1, "one small host-to-device write of the new page ids"
    cache.reserve(tokens=64)  # the next 63 steps need none
    no_list_tensors.clear()
    for _ in range(3):
        paged(hidden_factory(tiny, 2, 1), cache)
    assert no_list_tensors == []


def test_static_stage2_decode_step_reads_nothing_back(tiny, ladder_factory, hidden_factory, no_list_tensors):
    absorbed = ladder_factory(tiny)[2]
    cache = absorbed.new_cache(2, 100)
    absorbed(hidden_factory(tiny, 2, 30), cache)
    no_list_tensors.clear()
    watch = _decode_step_watched(absorbed, cache, hidden_factory(tiny, 2, 1))
    assert watch.reads == [] and no_list_tensors == []


def test_decoder_step_with_paged_caches_reads_nothing_back(weight_std, no_list_tensors):
    decoder = TinyDecoder(MLAConfig.tiny(), PagedMLA, num_layers=2).double().init_weights_(std=weight_std, seed=0)
    caches = decoder.new_caches(2, 128)
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        decoder(ids, caches)
        decoder(ids[:, :1], caches)
        no_list_tensors.clear()
        with Watch() as watch:
            decoder(ids[:, 1:2], caches)
    assert watch.reads == [] and no_list_tensors == []


def test_graph_capture_refuses_cpu_tensors_and_growing_caches(tiny, ladder_factory, hidden_factory):
    stage0, _, absorbed, _ = ladder_factory(tiny)
    x = hidden_factory(tiny, 1, 1)
    with pytest.raises(ValueError, match="CUDA"):
        CapturedDecodeStep(absorbed, x, absorbed.new_cache(1, 8))
    from mla_tutorial.graphs import _caches

    _, mha = stage0(x)
    with pytest.raises(TypeError, match="stages 0 and 1 grow their caches by concatenation"):
        _caches(mha)


# ------------------------------------------------------------------ state, reserve, growth
def test_state_and_restore_return_to_the_prefix(tiny, ladder_factory, hidden_factory):
    paged = ladder_factory(tiny)[3]
    cache = paged.new_cache(2, 256)
    paged(hidden_factory(tiny, 2, 63), cache)
    saved = cache.state()
    table, lengths, free = cache.block_table(), cache.cache_seqlens(), cache.num_free_blocks
    out1 = paged(hidden_factory(tiny, 2, 2, seed=5), cache)[0]  # crosses into a new page
    assert cache.num_free_blocks == free - 2
    cache.restore(saved)
    assert torch.equal(cache.block_table(), table) and torch.equal(cache.cache_seqlens(), lengths)
    assert cache.num_free_blocks == free
    assert torch.equal(paged(hidden_factory(tiny, 2, 2, seed=5), cache)[0], out1)


def test_reserve_takes_pages_ahead_all_or_nothing():
    cache = PagedLatentCache(5, 4, 3, dtype=torch.float64)
    a, b = cache.allocate(), cache.allocate()
    cache.reserve([a], 9)  # 3 pages
    assert cache.num_free_blocks == 2 and cache.room(a) == 12 and cache.seq_len(a) == 0
    with pytest.raises(CacheFullError, match="needs 3 new page"):
        cache.reserve([a, b], 12)  # b would need 3, only 2 free
    assert cache.num_free_blocks == 2 and cache.block_table([b]).tolist() == [[SENTINEL_BLOCK]]
    cache.append([a], torch.ones(1, 9, 3, dtype=torch.float64))
    assert cache.num_free_blocks == 2, "reserved pages are used first"


# ------------------------------------------------------------------ refused calls change nothing
def snapshot(cache) -> tuple:
    if isinstance(cache, PagedLatentCache):
        return (cache.pool.clone().view(torch.uint8), list(cache._free), cache.block_table().tolist(),
                cache.cache_seqlens().tolist(), cache.table.clone(), cache.lengths.clone())
    return (cache.kv.clone().view(torch.uint8), cache.lengths.clone(), cache.host_max_length)


def assert_same(a: tuple, b: tuple) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def test_refused_paged_calls_leave_the_cache_exactly_as_it_was(tiny, ladder_factory, hidden_factory):
    paged = ladder_factory(tiny)[3]
    cache = paged.new_cache(2, 64, fill_value=float("nan"))  # 2 pages in all
    paged(hidden_factory(tiny, 2, 60), cache)
    before = snapshot(cache)
    bad_calls = [
        (lambda: paged(hidden_factory(tiny, 2, 5), cache), CacheFullError),  # needs a third page
        (lambda: paged(hidden_factory(tiny, 2, 1), cache, seq_ids=[0, 9]), KeyError),
        (lambda: paged(hidden_factory(tiny, 2, 1), cache, seq_ids=[0, 0]), ValueError),
        (lambda: paged(hidden_factory(tiny, 3, 1), cache), ValueError),
        (lambda: paged(hidden_factory(tiny, 2, 1, torch.float32), cache), TypeError),
        (lambda: paged(torch.zeros(2, 1, 7, dtype=torch.float64), cache), ValueError),
    ]
    for call, error in bad_calls:
        with pytest.raises(error):
            call()
        assert_same(before, snapshot(cache))


def test_refused_static_calls_leave_the_cache_exactly_as_it_was(tiny, ladder_factory, hidden_factory):
    absorbed = ladder_factory(tiny)[2]
    cache = absorbed.new_cache(2, 32)
    absorbed(hidden_factory(tiny, 2, 30), cache)
    before = snapshot(cache)
    for call, error in [(lambda: absorbed(hidden_factory(tiny, 2, 3), cache), CacheFullError),
                        (lambda: absorbed(hidden_factory(tiny, 3, 1), cache), ValueError),
                        (lambda: absorbed(hidden_factory(tiny, 2, 1, torch.float32), cache), TypeError)]:
        with pytest.raises(error):
            call()
        assert_same(before, snapshot(cache))


def test_triton_stage_refuses_float32_before_touching_the_cache(tiny, ladder_factory, hidden_factory):
    from mla_tutorial.stage4_triton import TritonMLA

    stage4 = TritonMLA.from_previous(ladder_factory(tiny)[3]).to(torch.float32)
    cache = PagedLatentCache.for_config(tiny, 1, 64, dtype=torch.float32)
    cache.allocate()
    before = snapshot(cache)
    with pytest.raises(TypeError, match="bf16 or fp16"):
        stage4(hidden_factory(tiny, 1, 3, torch.float32), cache)
    assert_same(before, snapshot(cache))


# ------------------------------------------------------------------ a cache of another config or dtype
def test_caches_of_another_config_or_dtype_are_refused_naming_both(tiny, ladder_factory, hidden_factory):
    stage0, stage1, stage2, stage3 = ladder_factory(tiny)
    x = hidden_factory(tiny, 1, 1)
    f64 = torch.float64
    cases = [
        (stage0, MHACache(torch.zeros(1, 4, 2, 128, dtype=f64), torch.zeros(1, 4, 2, 64, dtype=f64)),
         r"8 heads .* got 4 heads"),
        (stage0, MHACache(torch.zeros(1, 8, 2, 128, dtype=torch.float32), torch.zeros(1, 8, 2, 64)),
         r"in torch.float64 .* torch.float32"),
        (stage1, LatentCache(torch.zeros(1, 2, 576, dtype=torch.float32), 512), r"torch.float64 .* torch.float32"),
        (stage2, LatentCache(torch.zeros(1, 2, 576, dtype=f64), 448), r"\(512 latent\) .* \(448 latent\)"),
        (stage2, StaticLatentCache.empty(1, 8, 576, 512, torch.float32, "cpu"), r"torch.float64 .* torch.float32"),
        (stage3, PagedLatentCache(4, 32, 576, dtype=f64), r"64-token pages .* 32-token pages"),
        (stage3, PagedLatentCache(4, 64, 576, dtype=torch.bfloat16), r"torch.float64 .* torch.bfloat16"),
    ]
    for module, cache, match in cases:
        if isinstance(cache, PagedLatentCache):
            cache.allocate()
        with pytest.raises(ValueError, match=match) as info:
            module(x, cache)
        assert "tiny" in str(info.value), "the message names the module's config"
