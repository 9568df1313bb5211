"""What the layers of one decode step share: the attention schedule.

In a decoder every layer attends over its own cache, and in a decode step those caches hold the same lengths (they
grow together, one append per layer). The schedule that spreads the step's pages evenly over the SMs
(`get_mla_metadata`, a small kernel of its own) depends on nothing else than those lengths and the query rows, so one
computed by the first layer serves every layer: a model of L layers launches it once a step instead of L times
(FlashMLA's users do the same: the metadata is made once per step and handed to every layer).

`TinyDecoder.forward` runs its layers inside `one_step()`; stages 4 and 5 ask `shared(key, make)` for their schedule,
keyed by the host's mirror of the lengths (the allocator's own counts, so no device value is read and nothing waits
for the GPU). Within a step the first call with a key makes the value and the later ones get it; outside a step, or
for a key not seen in it (a layer whose cache holds other lengths), `make()` runs as before. The values live only as
long as the step: the next one computes its schedule anew.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")

_STEP: ContextVar[dict | None] = ContextVar("mla_tutorial_step", default=None)


@contextmanager
def one_step() -> Iterator[None]:
    """The layers run inside share what they ask `shared` for (a nested step has its own)."""
    token = _STEP.set({})
    try:
        yield
    finally:
        _STEP.reset(token)


def in_step() -> bool:
    """Whether the caller runs inside `one_step()` (outside one `shared` keeps nothing, so no key need be built)."""
    return _STEP.get() is not None


def shared(key: Hashable, make: Callable[[], T]) -> T:
    """`make()` once per key within a step (its first result for the later calls), every time outside one."""
    memo = _STEP.get()
    if memo is None:
        return make()
    if key not in memo:
        memo[key] = make()
    return memo[key]
