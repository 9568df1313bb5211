"""A hostile sweep of the public paged-decode API and of MLAConfig: no crash, no hang, no silent NaN, no changed state.

Hypothesis draws a valid call from the shared generator (FlashMLA's recipe: permuted pages, NaN in every unused slot,
sentinel-like ids past each request's pages, lengths on page boundaries and empty requests), then applies one to
three mutations from a catalogue of what a demanding user might pass. Each mutation is either

- invalid for this target: the call must raise TypeError or ValueError naming an argument, before anything runs; or
- honoured: strided views, garbage past each request's pages, ±inf instead of NaN in unused slots — the call must
  return exactly what it returns on the clean inputs (the kernels: FlashMLA's tolerances against the reference).

Whatever happens, every tensor argument is bitwise unchanged afterwards, and a call that takes longer than the
watchdog's limit fails the test (a hang). A crash (SIGSEGV: a read outside the pool) would take the whole run down.
CPU only: the kernels run in Triton's interpreter (on a GPU the bounds are a device-side assertion, tested in
tests/test_contract_gpu.py).
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from test_kernels import DEVICE, K

from mla_tutorial import MLAConfig, RotaryEmbedding, paged_mla_attention
from mla_tutorial.contract import SENTINEL_BLOCK, is_interpreter
from mla_tutorial.testing import make_paged_inputs, same_bits

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="host-side sweep; the GPU checks are in test_contract_gpu.py")

ARG_NAMES = ("q", "k_cache", "block_table", "cache_seqlens", "head_dim_v", "softmax_scale", "causal",
             "tile_scheduler_metadata", "num_splits", "h_q", "h_kv")
WATCHDOG_S = 120


@contextlib.contextmanager
def watchdog(seconds: float):
    """Raise TimeoutError in this (main) thread if the body runs longer than `seconds`: a hang fails the test."""
    def expire(signum, frame):
        raise TimeoutError(f"call still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ the catalogue of mutations
def _live_entry(a):
    """(row, col) of the first block-table entry that a request's length covers, or None."""
    pages = (a["cache_seqlens"].long() + 63) // 64
    for i, p in enumerate(pages.tolist()):
        if p:
            return i, 0 if p == 1 else p - 1
    return None


def _set_entry(value):
    def mutate(a):
        where = _live_entry(a)
        if where is None:
            return None
        a["block_table"] = a["block_table"].clone()
        a["block_table"][where] = value(a) if callable(value) else value
        return a
    return mutate


def _set_first_length(value):
    def mutate(a):
        a["cache_seqlens"] = a["cache_seqlens"].clone()
        a["cache_seqlens"][0] = value(a) if callable(value) else value
        return a
    return mutate


def _replace(name, make):
    def mutate(a):
        new = make(a)
        if new is None:
            return None
        a[name] = new
        return a
    return mutate


def _strided(t, dim):
    """A view of t with the same values and a doubled stride in `dim` (the gaps hold NaN or -1)."""
    fill = float("nan") if t.is_floating_point() else -1
    return torch.stack([t, torch.full_like(t, fill)], dim=dim + 1).select(dim + 1, 0) if dim >= 0 else \
        torch.stack([t, torch.full_like(t, fill)], dim=-1)[..., 0]


def _garbage_past_pages(a):
    table = a["block_table"].clone()
    pages = (a["cache_seqlens"].long() + 63) // 64
    past = torch.arange(table.shape[1])[None, :] >= pages[:, None]
    if not past.any():
        return None
    junk = torch.tensor([-1, -(2**31), SENTINEL_BLOCK, 10**9, 0, 1], dtype=torch.int32)
    table[past] = junk[torch.arange(int(past.sum())) % len(junk)]
    a["block_table"] = table
    return a


def _unused_slots(value):
    def mutate(a):
        k = a["k_cache"].clone()
        if not torch.isnan(k).any():
            return None
        k[torch.isnan(k)] = value
        a["k_cache"] = k
        return a
    return mutate


def _other_float(a):
    return a["k_cache"].to(torch.float16 if a["k_cache"].dtype == torch.bfloat16 else torch.bfloat16)


#: name → (mutation, kind for stage 3, kind for the kernels). kind: "bad" (must raise) or "same" (same result).
MUTATIONS: dict[str, tuple[Callable, str, str]] = {
    "q-not-tensor": (_replace("q", lambda a: a["q"].float().numpy()), "bad", "bad"),
    "q-3-dims": (_replace("q", lambda a: a["q"][0]), "bad", "bad"),
    "q-int": (_replace("q", lambda a: a["q"].to(torch.int32)), "bad", "bad"),
    "q-zero-heads": (_replace("q", lambda a: a["q"][:, :, :0]), "bad", "bad"),
    "q-float32": (lambda a: a | {"q": a["q"].float(), "k_cache": a["k_cache"].float()}, "same", "bad"),
    "q-last-dim-strided": (_replace("q", lambda a: _strided(a["q"], -1)), "same", "bad"),
    "q-heads-strided": (_replace("q", lambda a: _strided(a["q"], 2)), "same", "same"),
    "k_cache-dtype": (_replace("k_cache", _other_float), "bad", "bad"),
    "k_cache-width-512": (_replace("k_cache", lambda a: a["k_cache"][..., :512]), "bad", "bad"),
    "k_cache-no-pages": (_replace("k_cache", lambda a: a["k_cache"][:0]), "bad", "bad"),
    "k_cache-heads-not-dividing": (_replace("k_cache", lambda a: a["k_cache"][:, :, :1].expand(
        -1, -1, a["q"].shape[2] + 1, -1).contiguous()), "bad", "bad"),
    "k_cache-meta": (_replace("k_cache", lambda a: a["k_cache"].to("meta")), "bad", "bad"),
    "k_cache-last-dim-strided": (_replace("k_cache", lambda a: _strided(a["k_cache"], -1)), "same", "bad"),
    "k_cache-pages-strided": (_replace("k_cache", lambda a: _strided(a["k_cache"], 0)), "same", "same"),
    "unused-slots-inf": (_unused_slots(float("inf")), "same", "same"),
    "unused-slots-minus-inf": (_unused_slots(float("-inf")), "same", "same"),
    "block_table-int64": (_replace("block_table", lambda a: a["block_table"].long()), "bad", "bad"),
    "block_table-float": (_replace("block_table", lambda a: a["block_table"].float()), "bad", "bad"),
    "block_table-1-dim": (_replace("block_table", lambda a: a["block_table"][0]), "bad", "bad"),
    "block_table-other-batch": (_replace("block_table", lambda a: torch.cat([a["block_table"]] * 2)), "bad", "bad"),
    "block_table-id-past-pool": (_set_entry(lambda a: a["k_cache"].shape[0]), "bad", "bad"),
    "block_table-id-negative": (_set_entry(-1), "bad", "bad"),
    "block_table-sentinel-in-length": (_set_entry(SENTINEL_BLOCK), "bad", "bad"),
    "block_table-garbage-past-pages": (_garbage_past_pages, "same", "same"),
    "block_table-rows-strided": (_replace("block_table", lambda a: _strided(a["block_table"], 0)), "same", "same"),
    "block_table-column-major": (_replace("block_table", lambda a: a["block_table"].t().contiguous().t()
                                          if min(a["block_table"].shape) > 1 else None), "same", "bad"),
    "cache_seqlens-int64": (_replace("cache_seqlens", lambda a: a["cache_seqlens"].long()), "bad", "bad"),
    "cache_seqlens-float": (_replace("cache_seqlens", lambda a: a["cache_seqlens"].float()), "bad", "bad"),
    "cache_seqlens-2-dims": (_replace("cache_seqlens", lambda a: a["cache_seqlens"][:, None]), "bad", "bad"),
    "cache_seqlens-other-batch": (_replace("cache_seqlens", lambda a: torch.cat([a["cache_seqlens"]] * 2)),
                                  "bad", "bad"),
    "cache_seqlens-negative": (_set_first_length(-1), "bad", "bad"),
    "cache_seqlens-past-table": (_set_first_length(lambda a: a["block_table"].shape[1] * 64 + 1), "bad", "bad"),
    "cache_seqlens-int32-max": (_set_first_length(2**31 - 1), "bad", "bad"),
    "cache_seqlens-strided": (_replace("cache_seqlens", lambda a: _strided(a["cache_seqlens"], -1)), "same", "bad"),
    "head_dim_v-bool": (_replace("head_dim_v", lambda a: True), "bad", "bad"),
    "head_dim_v-float": (_replace("head_dim_v", lambda a: 512.0), "bad", "bad"),
    "head_dim_v-0": (_replace("head_dim_v", lambda a: 0), "bad", "bad"),
    "head_dim_v-577": (_replace("head_dim_v", lambda a: 577), "bad", "bad"),
    "softmax_scale-nan": (_replace("softmax_scale", lambda a: math.nan), "bad", "bad"),
    "softmax_scale-inf": (_replace("softmax_scale", lambda a: math.inf), "bad", "bad"),
    "softmax_scale-negative": (_replace("softmax_scale", lambda a: -0.1), "bad", "bad"),
    "softmax_scale-zero": (_replace("softmax_scale", lambda a: 0.0), "bad", "bad"),
    "softmax_scale-str": (_replace("softmax_scale", lambda a: "0.1"), "bad", "bad"),
    "softmax_scale-tensor": (_replace("softmax_scale", lambda a: torch.tensor(0.1)), "bad", "bad"),
    "causal-int": (_replace("causal", lambda a: 1), "bad", "bad"),
    "causal-str": (_replace("causal", lambda a: "yes"), "bad", "bad"),
}


@st.composite
def hostile_calls(draw, max_mutations: int = 3, kernel: bool = False) -> dict:
    """A compact description of a call (what hypothesis prints when a case fails); `build` makes the tensors."""
    h_kv = draw(st.sampled_from([1, 2]))
    return dict(lengths=draw(st.lists(st.sampled_from([0, 1, 2, 63, 64, 65, 130]), min_size=1, max_size=3)),
                s_q=draw(st.sampled_from([1, 2])), h_q=h_kv * draw(st.sampled_from([1, 3])), h_kv=h_kv,
                dtype=draw(st.sampled_from([torch.bfloat16, torch.float16] if kernel else
                                           [torch.bfloat16, torch.float16, torch.float64])),
                seed=draw(st.integers(0, 99)), softmax_scale=draw(st.sampled_from([None, 0.1352338])),
                causal=draw(st.booleans()),
                mutations=draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=max_mutations, unique=True)))


def _event(name: str) -> None:
    if currently_in_test_context():
        event(name)


def build(spec: dict) -> tuple[dict, dict, list[str]]:
    """(clean arguments, mutated arguments, mutation names) for a spec from hostile_calls."""
    q, k_cache, table, lens = make_paged_inputs(spec["lengths"], spec["s_q"], spec["h_q"], spec["h_kv"],
                                                spec["dtype"], seed=spec["seed"])
    clean = dict(q=q, k_cache=k_cache, block_table=table, cache_seqlens=lens, head_dim_v=512,
                 softmax_scale=spec["softmax_scale"], causal=spec["causal"])
    args = dict(clean)
    for name in spec["mutations"]:
        try:
            args = MUTATIONS[name][0](dict(args))
        except Exception:  # a mutation that cannot apply after another one (a table of another batch, say)
            args = None
        if args is None:  # this mutation does not apply to these inputs (no live page, say)
            if currently_in_test_context():
                assume(False)
            pytest.skip(f"{name} does not apply to {spec}")
    for name in spec["mutations"]:
        _event(name)  # `pytest --hypothesis-show-statistics` shows how often each mutation ran
    return clean, args, spec["mutations"]


def check_call(fn, clean: dict, args: dict, names: list[str], kind_index: int, compare: Callable) -> None:
    kinds = {MUTATIONS[n][kind_index] for n in names}
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor) and v.device.type != "meta"}
    try:
        with watchdog(WATCHDOG_S):
            result = fn(**args)
    except (TypeError, ValueError) as err:
        _event(f"refused with {type(err).__name__}")
        assert "bad" in kinds, f"{names}: valid input refused: {type(err).__name__}: {err}"
        assert any(n in str(err) for n in ARG_NAMES), f"{names}: the message names no argument: {err}"
    else:
        _event("ran")
        assert "bad" not in kinds, f"{names}: invalid input accepted"
        with watchdog(WATCHDOG_S):
            expected = fn(**clean)
        compare(result, expected, names)
    for key, old in before.items():
        assert same_bits(args[key], old), f"{names}: the call changed {key}"


def _same_torch(result, expected, names):
    out, lse = result
    ref_out, ref_lse = expected
    exact = out.dtype == ref_out.dtype == torch.float64  # else a 16-bit output, or q-float32 (values rounded)
    assert torch.isfinite(out).all() and torch.isfinite(ref_out).all(), f"{names}: NaN or inf reached the output"
    assert torch.allclose(out.double(), ref_out.double(), rtol=0, atol=1e-12 if exact else 1e-2), names
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), names


def _same_kernel(result, expected, names):
    out, lse = result
    ref_out, ref_lse = expected
    assert torch.isfinite(out).all(), f"{names}: NaN or inf reached the output"
    assert torch.equal(out.view(torch.int16), ref_out.view(torch.int16)), f"{names}: result changed"
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)) and torch.equal(lse[torch.isfinite(lse)],
                                                                             ref_lse[torch.isfinite(ref_lse)])


# ------------------------------------------------------------------ stage 3 and the kernel API
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(spec=hostile_calls())
def test_sweep_paged_mla_attention(spec):
    clean, args, names = build(spec)
    check_call(paged_mla_attention, clean, args, names, 1, _same_torch)


def _api(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal):
    """get_mla_metadata + flash_mla_with_kvcache, as a user calls them (metadata from the lengths given, if it can be
    built; else from the lengths' shape alone, so that the decode call's own checks are what is tested)."""
    try:
        rows = q.shape[1] * q.shape[2] // max(1, k_cache.shape[2])
        meta, splits = K.get_mla_metadata(cache_seqlens, rows, k_cache.shape[2])
    except Exception:
        meta, splits = K.get_mla_metadata(torch.zeros(max(1, len(cache_seqlens)), dtype=torch.int32), 1, 1)
    return K.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v, meta, splits,
                                    softmax_scale=softmax_scale, causal=causal)


@pytest.mark.skipif(not is_interpreter(), reason="the kernels run on CPU tensors only in Triton's interpreter")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(spec=hostile_calls(kernel=True))
def test_sweep_flash_mla_with_kvcache(spec):
    clean, args, names = build(spec)
    check_call(_api, clean, args, names, 2, _same_kernel)


@pytest.mark.skipif(not is_interpreter(), reason="the kernels run on CPU tensors only in Triton's interpreter")
@pytest.mark.parametrize("version", ["v1_naive", "v2_head_tiled", "v3_split_kv", "v4_balanced"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(spec=hostile_calls(max_mutations=2, kernel=True))
def test_sweep_every_kernel_version(version, spec):
    clean, args, names = build(spec)
    check_call(K.KERNEL_VERSIONS[version], clean, args, names, 2, _same_kernel)


# ------------------------------------------------------------------ the same catalogue as a grid: each mutation alone
GRID_SPEC = dict(lengths=[0, 65, 130], s_q=2, h_q=4, h_kv=2, dtype=torch.bfloat16, seed=7, softmax_scale=0.1352338,
                 causal=True)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_grid_paged_mla_attention(mutation):
    clean, args, names = build(GRID_SPEC | {"mutations": [mutation]})
    check_call(paged_mla_attention, clean, args, names, 1, _same_torch)


@pytest.mark.skipif(not is_interpreter(), reason="the kernels run on CPU tensors only in Triton's interpreter")
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_grid_flash_mla_with_kvcache(mutation):
    clean, args, names = build(GRID_SPEC | {"mutations": [mutation]})
    check_call(_api, clean, args, names, 2, _same_kernel)


# ------------------------------------------------------------------ MLAConfig
HOSTILE_VALUES = [0, -1, 1, 2, 3, True, False, 0.0, -0.5, 0.5, 1.0, 1.5, 64.0, math.nan, math.inf, -math.inf, None,
                  "64", "yarn", 2**20, 1e-300]
FIELDS = ["hidden_size", "num_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
          "v_head_dim", "rms_norm_eps", "rope_theta", "rope_interleave", "rope_type", "rope_factor",
          "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
          "max_position_embeddings", "page_size", "max_cache_len", "name"]


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(HOSTILE_VALUES), min_size=1, max_size=3))
def test_sweep_config_fields(changes):
    """Every field × hostile values: a ValueError naming a changed field, or a config whose derived numbers are
    finite (softmax scale > 0, RoPE frequencies and cos/sin finite)."""
    try:
        config = MLAConfig.tiny(**changes)
    except ValueError as err:
        assert any(f"MLAConfig.{field}" in str(err) for field in changes), f"{changes}: {err}"
        return
    assert math.isfinite(config.softmax_scale) and config.softmax_scale > 0, changes
    rope = RotaryEmbedding(config)
    cos, sin = rope(torch.tensor([[0, 1, 1000, config.max_position_embeddings - 1]]), torch.float32)
    assert torch.isfinite(rope.inv_freq).all() and torch.isfinite(cos).all() and torch.isfinite(sin).all(), changes
