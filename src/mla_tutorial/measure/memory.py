"""Memory of a decode step: the bytes a stage's cache holds, and the peak of the tensors a step allocates."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


# --------------------------------------------------------------------------------------------- caches
def cache_footprint(cache: Any) -> dict[str, int]:
    """Bytes a stage's cache object holds for its tokens: {"bytes": in use, "tokens": held, "reserved": allocated}.

    MHACache and LatentCache hold exactly their tokens. A StaticLatentCache reserves room for `capacity` tokens
    per sequence; "bytes" counts the rows written. A paged cache reserves a whole pool up front; "bytes" then
    counts the pages its sequences own (a partly filled last page counts whole), "reserved" the pool.
    """
    if hasattr(cache, "num_free_blocks"):  # PagedLatentCache (stages 3, 4): the allocator's own counts
        page_bytes = cache.pool[0].numel() * cache.pool.element_size()  # page_size rows of 576
        pages = cache.num_blocks - cache.num_free_blocks
        return {"bytes": pages * page_bytes, "tokens": sum(cache.host_lengths().values()), "reserved": cache.nbytes}
    if hasattr(cache, "host_max_length"):  # StaticLatentCache (stage 2): kv [B, capacity, 576]
        tokens = cache.kv.shape[0] * cache.host_max_length
        return {"bytes": tokens * cache.kv.shape[-1] * cache.kv.element_size(), "tokens": tokens,
                "reserved": cache.nbytes}
    if hasattr(cache, "k") and hasattr(cache, "v"):  # MHACache: k [B, H, S, D]
        tokens = cache.k.shape[0] * cache.k.shape[2]
    elif hasattr(cache, "kv"):  # LatentCache: kv [B, S, 576]
        tokens = cache.kv.shape[0] * cache.kv.shape[1]
    else:
        raise TypeError(f"unknown cache type {type(cache).__name__}")
    return {"bytes": cache.nbytes, "tokens": tokens, "reserved": cache.nbytes}


class AllocationTracker(TorchDispatchMode):
    """Counts the bytes of tensor storage alive, and its peak, while active (any device; used on CPU).

    Every aten operator passes through `__torch_dispatch__`. An output whose storage is not one of the inputs'
    storages is a new allocation; a view of a tracked storage adds a reference to it. When the last tensor
    referring to a storage is garbage-collected, its bytes are subtracted. Tensors that existed before (weights,
    the cache passed in) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, list[int]] = {}  # storage address → [tensors referring to it, bytes]
        self.live = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                self.live -= entry[1]
                del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0:  # an empty tensor
                continue
            if key in self.refs:  # a view of something allocated in here
                self.refs[key][0] += 1
            elif key in inputs:  # a view of (or an in-place result on) a tensor from outside
                continue
            else:
                self.refs[key] = [1, storage.nbytes()]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, key)
        return out


def peak_memory(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Bytes of tensors allocated at the peak of `fn()`, above what was allocated before it.

    CUDA: `torch.cuda.max_memory_allocated` after resetting the peak, minus the allocation before the call.
    CPU: PyTorch keeps no allocation counter there, so `AllocationTracker` (a TorchDispatchMode) watches every
    operator's outputs and their lifetimes. It counts tensor storage only: not Python objects, not allocator
    slack, and not Triton's interpreter, which computes in NumPy arrays.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    tracker = AllocationTracker()
    with tracker:
        fn()
    return tracker.peak



__all__ = ["AllocationTracker", "cache_footprint", "peak_memory"]
