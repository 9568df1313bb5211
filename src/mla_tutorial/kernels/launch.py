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
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .common import is_interpreter


def _spec(arg: Any) -> Any:
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool):
        return "b", arg
    if isinstance(arg, int):
        return "i", arg == 1, arg % 16 == 0, -(2**31) <= arg < 2**31
    if isinstance(arg, float):
        return "f"
    block_shape = getattr(arg, "block_shape", None)  # a TMA tensor descriptor
    return type(arg).__name__, None if block_shape is None else tuple(block_shape)


def _key(args) -> tuple:
    """`_spec` of every argument, with the two common types (tensors, ints) tested first by exact type: this runs on
    every launch, and isinstance chains over ~25 arguments cost a few microseconds of host time per call."""
    out = []
    for a in args:
        t = type(a)
        if t is torch.Tensor:
            out.append((a.dtype, a.data_ptr() % 16 == 0))
        elif t is int:
            out.append(("i", a == 1, a % 16 == 0, -(2**31) <= a < 2**31))
        else:
            out.append(_spec(a))
    return tuple(out)


class FastLauncher:
    """Launch `fn` (a `@triton.jit` or `@gluon.jit` function) with positional runtime arguments and keyword
    constexprs/options: `launcher(grid, *args, **meta)`; after the first call of each specialization, without
    Triton's JIT dispatch."""

    def __init__(self, fn):
        self.fn = fn
        params = list(inspect.signature(getattr(fn, "fn", fn)).parameters)
        self._params = params
        self._cache: dict[Any, Any] = {}

    def __call__(self, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
        if is_interpreter():
            self.fn[grid](*args, **meta)
            return
        from triton.runtime import driver

        device = driver.active.get_current_device()  # a compiled binary is loaded per device
        key = (device, _key(args), tuple(sorted(meta.items())))
        compiled = self._cache.get(key)
        if compiled is None:  # first call of this specialization: Triton compiles (or loads) and launches
            compiled = self.fn[grid](*args, **meta)
            compiled._init_handles()
            self._cache[key] = compiled
            return
        stream = driver.active.get_current_stream(device)
        full = list(args) + [meta[name] for name in self._params[len(args):] if name in meta]
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        compiled.run(grid[0], g1, g2, stream, compiled.function, compiled.packed_metadata, None, None, None, *full)
