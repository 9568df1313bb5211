"""One decode step captured in a CUDA graph and replayed with new inputs: stages 2–4 and TinyDecoder.

Why: a decode step of one layer is ~40 small GPU kernels (projections, RoPE, norms, the attention, its
schedule). Launched one by one from Python, each costs the host several microseconds, and at small batch the GPU
waits for the host: the step is host-bound, and every saving in the kernels is lost. A CUDA graph records the
kernels of one step once; a replay launches them all with one call.

What it takes: every tensor the step reads or writes must stay where it was at capture (static buffers), no
tensor may be sized by a value on the device, and nothing may wait for the device (no sync). So

    captured = CapturedDecodeStep(module, x, cache, max_steps=32)   # x [B, 1, hidden]: an example input
    for _ in range(32):
        out = captured(x_next)          # copies x_next into the static input, replays; out is a static buffer
        ...                              # (clone it to keep it past the next replay)

works for the stages whose caches are written in place: AbsorbedMLA with a `StaticLatentCache`, PagedMLA and
TritonMLA with a `PagedLatentCache` (lengths and block table live on the device and advance there), and a
`TinyDecoder` built on them (`decoder.new_caches(...)`: one cache per layer). Stages 0 and 1 grow their caches
by concatenation, a new tensor of a new size every step: they cannot be captured and stay eager.

The page allocator is host code, and a replay cannot call it: pages for `max_steps` more tokens per sequence
are reserved before capture (`PagedLatentCache.reserve`), and the attention's block-table width is fixed then
(stage 3 gathers that many pages; the kernel reads only the pages a length covers). That is what serving
engines do: vLLM captures decode graphs for fixed batch sizes with block tables of a fixed width.

The capture runs the step eagerly a few times first (on a side stream: cuBLAS and Triton set themselves up, and
nothing of that may happen inside a capture), restoring the cache after each, then records one step without
executing it. The host's mirror of the lengths (what decides when a page is needed) advances by one step per
replay, the device's by the replay itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .stage2_absorbed import CacheFullError, StaticLatentCache
from .stage3_paged import PagedLatentCache

IN_PLACE_CACHES = (StaticLatentCache, PagedLatentCache)


def _caches(cache: Any) -> list[Any]:
    caches = list(cache) if isinstance(cache, (list, tuple)) else [cache]
    for c in caches:
        if not isinstance(c, IN_PLACE_CACHES):
            raise TypeError(f"a captured decode step needs caches written in place (StaticLatentCache from "
                            f"AbsorbedMLA.new_cache, PagedLatentCache), got {type(c).__name__}; stages 0 and 1 "
                            f"grow their caches by concatenation and stay eager")
    return caches


class CapturedDecodeStep:
    """`module(x, cache)` for one decode step, recorded in a CUDA graph; call it with new inputs to replay.

    module: a stage (AbsorbedMLA, PagedMLA, TritonMLA) or a TinyDecoder of one; x: an example input ([B, T,
    hidden] hidden states, or [B, T] token ids for a decoder); cache: its in-place cache, or a decoder's list of
    caches. Room for `max_steps` replays is reserved first. Outputs are static: each replay overwrites them.
    """

    def __init__(self, module: nn.Module, x: torch.Tensor, cache: Any, *, max_steps: int = 1, warmup: int = 2):
        if not torch.cuda.is_available() or x.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs CUDA tensors, got x on {x.device}")
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        self.module, self.cache, self.caches = module, cache, _caches(cache)
        self.tokens = x.shape[1]  # T: tokens each replay appends per sequence
        for c in self.caches:  # room for every replay, decided now: a replay cannot ask the allocator
            if isinstance(c, PagedLatentCache):
                c.reserve(tokens=max_steps * self.tokens)
            elif c.host_max_length + max_steps * self.tokens > c.capacity:
                raise CacheFullError(f"StaticLatentCache of capacity {c.capacity} holds {c.host_max_length} "
                                     f"tokens: no room for {max_steps} steps of {self.tokens}")
        self.layout = [getattr(c, "layout_version", 0) for c in self.caches]
        self.static_input = x.clone()
        before = [c.state() for c in self.caches]

        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # set-up work (cuBLAS workspaces, Triton compilation) happens here
            for _ in range(warmup):
                self._run()
                for c, state in zip(self.caches, before, strict=True):
                    c.restore(state)
        torch.cuda.current_stream(x.device).wait_stream(side)

        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = self._run()
        # The capture ran the Python once (the host mirrors advanced) but executed nothing on the device.
        self.advance = [self._host_delta(c, state) for c, state in zip(self.caches, before, strict=True)]
        for c, state in zip(self.caches, before, strict=True):
            c.restore(state)
        self.replays_left = max_steps

    def _run(self) -> torch.Tensor:
        out, _ = self.module(self.static_input, self.cache)
        return out

    @staticmethod
    def _host_delta(cache: Any, before: dict) -> dict[int, int] | int:
        if isinstance(cache, PagedLatentCache):
            now = cache.host_lengths()
            return {s: now[s] - before["lengths"][s] for s in now if now[s] != before["lengths"].get(s, 0)}
        return cache.host_max_length - before["host_max_length"]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Replay on new input x (same shape, dtype and device as the example): returns the static output."""
        if x.shape != self.static_input.shape or x.dtype != self.static_input.dtype:
            raise ValueError(f"x must be {list(self.static_input.shape)} {self.static_input.dtype} like the "
                             f"captured input, got {list(x.shape)} {x.dtype}")
        if self.replays_left < 1:
            raise CacheFullError("the room reserved at capture is used up; capture again with a larger max_steps")
        if [getattr(c, "layout_version", 0) for c in self.caches] != self.layout:
            raise RuntimeError("a cache's device tables were reallocated since capture (a new sequence or a "
                               "longer table): capture again")
        self.static_input.copy_(x)
        self.graph.replay()
        for c, delta in zip(self.caches, self.advance, strict=True):
            if isinstance(c, PagedLatentCache):
                c.advance_host(delta)
            else:
                c.host_max_length += delta
        self.replays_left -= 1
        return self.static_output

    def state(self) -> list[dict]:
        """The caches' states and the replay budget, to come back to with `restore` (benchmarks rewind)."""
        return [c.state() for c in self.caches] + [{"replays_left": self.replays_left}]

    def restore(self, state: list[dict]) -> None:
        for c, s in zip(self.caches, state[:-1], strict=True):
            c.restore(s)
        self.replays_left = state[-1]["replays_left"]


__all__ = ["CapturedDecodeStep", "IN_PLACE_CACHES"]
