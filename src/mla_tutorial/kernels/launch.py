"""Launching compiled kernels with little host time.

`kernel[grid](*args)` goes through Triton's JIT dispatch on every call: bind the arguments, compute the
specialization of each one, look up the compiled binary, then launch. For the ~25 arguments of a decode kernel that
costs tens of microseconds of Python per launch (measured on an H200 with Triton 3.6: the v4 call, two launches,
spent ~170 µs on the host for a kernel of a few µs), which at short contexts is longer than the kernel itself.

`FastLauncher` does the JIT dispatch once per specialization and afterwards calls the compiled binary's launcher
directly. The specialization key is the part of Triton's own key that can change between decode calls of one
model: per tensor, its dtype and whether its address is 16-byte aligned; per int, whether it is 1, a multiple of
16, and whether it fits in 32 bits; the constexpr values. Under Triton's interpreter (no binaries) every call goes
through the JIT. (The compiled kernels stay in Triton's own caches too, where `measure.occupancy` reads them.)

`recording()` collects what each launch handed to the compiled binary (the binary, grid, arguments), from which
`plan.py` builds a call plan that later calls of the same shape replay without any of this.
"""

from __future__ import annotations

import inspect
import threading
from contextlib import contextmanager
from typing import Any

import torch

from .common import is_interpreter


def _spec(arg: Any) -> Any:
    if isinstance(arg, torch.Tensor):
        return arg.dtype, not arg.data_ptr() & 15
    if isinstance(arg, bool):
        return "b", arg
    if isinstance(arg, int):
        return arg == 1, not arg & 15, -2147483648 <= arg < 2147483648
    if isinstance(arg, float):
        return "f"
    block_shape = getattr(arg, "block_shape", None)  # a TMA tensor descriptor
    return type(arg).__name__, None if block_shape is None else tuple(block_shape)


_TENSOR = torch.Tensor


def _key(args) -> tuple:
    """`_spec` of every argument, with the two common types (tensors, ints) tested first by exact type, in one
    comprehension: this runs on every launch, ~27 arguments a decode kernel, and on the GPU machines' hosts it cost
    ~12 µs a launch written as a loop of appends (scripts/gpu_host_profile.py --parts)."""
    return tuple([(a.dtype, not a.data_ptr() & 15) if type(a) is _TENSOR else
                  (a == 1, not a & 15, -2147483648 <= a < 2147483648) if type(a) is int else _spec(a)
                  for a in args])


class _Recorder(threading.local):
    launches: list | None = None  # (compiled, grid, runtime args, constexpr tail) of each launch while recording


_RECORDER = _Recorder()


@contextmanager
def recording():
    """Collect every FastLauncher launch made in this thread inside the block: yields the list it fills with
    (compiled binary, grid, runtime arguments, constexpr tail). Under the interpreter it stays empty."""
    launches: list = []
    outer, _RECORDER.launches = _RECORDER.launches, launches
    try:
        yield launches
    finally:
        _RECORDER.launches = outer


class FastLauncher:
    """Launch `fn` (a `@triton.jit` or `@gluon.jit` function) with positional runtime arguments and keyword
    constexprs/options: `launcher(grid, *args, **meta)`; after the first call of each specialization, without
    Triton's JIT dispatch."""

    def __init__(self, fn):
        self.fn = fn
        params = list(inspect.signature(getattr(fn, "fn", fn)).parameters)
        self._params = params
        self._cache: dict[Any, Any] = {}
        self._device_and_stream = None  # the active driver's two query functions, looked up once

    def __call__(self, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
        if is_interpreter():
            self.fn[grid](*args, **meta)
            return
        if self._device_and_stream is None:
            from triton.runtime import driver

            self._device_and_stream = driver.active.get_current_device, driver.active.get_current_stream
        current_device, current_stream = self._device_and_stream
        device = current_device()  # a compiled binary is loaded per device
        # (meta in the caller's order: a call site passes its keywords in one order, and another order only costs
        # one more entry)
        key = (device, _key(args), tuple(meta.items()))
        entry = self._cache.get(key)
        if entry is None:  # first call of this specialization: Triton compiles (or loads) and launches
            compiled = self.fn[grid](*args, **meta)
            compiled._init_handles()
            # the constexprs and options the binary takes after the runtime arguments, fixed for this key
            tail = tuple(meta[name] for name in self._params[len(args):] if name in meta)
            self._cache[key] = (compiled, tail)
            if _RECORDER.launches is not None:
                _RECORDER.launches.append((compiled, grid, args, tail))
            return
        compiled, tail = entry
        if _RECORDER.launches is not None:
            _RECORDER.launches.append((compiled, grid, args, tail))
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        compiled.run(grid[0], g1, g2, current_stream(device), compiled.function, compiled.packed_metadata, None, None,
                     None, *args, *tail)
