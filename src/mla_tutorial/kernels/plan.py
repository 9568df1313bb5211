"""Call plans: the host work of a v5 decode call, done once per call shape.

What the Python around v5's kernels does before they run depends only on what the arguments look like, not on
what they hold: the contract's checks (shapes, dtypes, devices, strides), the choice of tile, the launch
arguments (strides, sizes, the softmax scale, TMA descriptors), Triton's specialisation of each launch and its
launcher's argument packing. On the GPU machines' hosts that cost ~120-230 µs a call (scripts/gpu_host_profile.py
--parts: validation 12-20, four output allocations 15-18, the tile's launch ~40 of which Triton's launcher ~20 with
its TMA descriptors encoded anew each time, the combine's ~20), more than the kernels at s_k ≤ 4k.

A serving loop makes the same call every step. So the first call of each *signature* (per tensor argument: shape,
strides, dtype, device and whether its address is 16-byte aligned; each scalar with its type; the current device)
runs the full path while `launch.recording()` collects what every launch handed the compiled binary, and leaves a
`CallPlan`: the validated sizes and, per launch, the binary's raw launcher with its arguments packed once (TMA
descriptors encoded, sizes and strides as ints), each tensor's place marked. A later call with the same signature
computes the signature (a few µs), allocates the outputs and the partials (three allocations), writes the new
addresses into the packed arguments and calls the raw launchers: nothing else. Values are never part of it: the
kernels check block ids and lengths on the device, as before.

What stays exact: the signature holds everything the checks and the launch arguments read, so a call that would
fail validation can never match a plan made by one that passed (a bool is not an int here, as it is not for the
checks). TMA descriptors hold an address: a plan keeps each descriptor it was built with, encoded, and when its
tensor (the cache; q, where the seesaw tile copies Q by TMA) comes at another address it encodes the same descriptor
at the new one (a few µs; the last few addresses of each are kept, as a serving loop's q alternates between a
handful of its allocator's blocks). Only tiles whose launch code issues nothing
but FastLauncher launches are planned (`_launch_v5` keeps it so); v4's path, the interpreter, CPU tensors and
calls that build their own schedule always take the full path. `clear_plans()` drops every plan (tests that
change module-level knobs between calls of one shape call it).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .combine import BOUNDS_MESSAGE
from .v5_gluon import _Address, _triton_version

#: the Triton whose compiled-kernel launcher the plans call directly (its argument layout is not a public API)
PLANNED_TRITON = (3, 6)
#: signature -> CallPlan, or None for a signature whose launches cannot be replayed (it takes the full path)
PLANS: dict[tuple, CallPlan | None] = {}
MAX_PLANS = 256  # a serving engine has a handful of shapes; past this the cache starts over
_TENSOR = torch.Tensor

#: device buffers that live as long as the process, by address (v5_fp8_wgr's overflow counter): a launch may take
#: one beside the call's tensors, and a plan packs its address as it is
PERSISTENT: dict[int, torch.Tensor] = {}

#: the places of a call's tensors in a plan's `ptrs`: its inputs, its outputs, the partials, the bounds flag
SLOTS = ("q", "k_cache", "block_table", "cache_seqlens", "tile_scheduler_metadata", "num_splits", "out", "lse",
         "part_out", "part_lse", "flag")


def clear_plans() -> None:
    """Forget every call plan (the next call of each shape takes the full path again)."""
    PLANS.clear()


def signature(tensors: tuple, scalars: tuple) -> tuple | None:
    """The key of a call on a CUDA device (`call_key` with the current device), None for any other call."""
    first = tensors[0]
    if type(first) is not _TENSOR or first.get_device() < 0:  # (CPU tensors: the interpreter's, never planned)
        return None
    return call_key(tensors, scalars, torch.cuda.current_device())


def call_key(tensors: tuple, scalars: tuple, device_index: int) -> tuple | None:
    """Per tensor its shape, strides, dtype, device index and 16-byte alignment (None stays None); the scalars, then
    their types; the current device. None when an argument is not a tensor: the full path says what is wrong. (An
    unhashable scalar makes an unhashable key: `lookup` and `is_new` treat it as a call with no plan.)"""
    if not all(type(t) is _TENSOR or t is None for t in tensors):
        return None
    return (*[None if t is None else (t.shape, t.stride(), t.dtype, t.get_device(), not t.data_ptr() & 15)
              for t in tensors], *scalars, *map(type, scalars), device_index)


def lookup(key: tuple | None) -> CallPlan | None:
    """The plan made for this call's key, if any."""
    if key is None:
        return None
    try:
        return PLANS.get(key)
    except TypeError:  # an unhashable scalar
        return None


def is_new(key: tuple | None) -> bool:
    """True for a key that has no plan and was never found unplannable: the full path records its launches."""
    if key is None:
        return False
    try:
        return key not in PLANS
    except TypeError:
        return False


def _expand_descriptor(desc, meta) -> list:
    """A host TMA descriptor as Triton 3.6's launcher takes it (the encoded CUtensorMap, then shape and strides)."""
    from triton.backends.nvidia.driver import make_tensordesc_arg

    return make_tensordesc_arg(desc, meta)


def _closure(fn) -> dict[str, Any]:
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None) or ()
    return dict(zip(code.co_freevars, [c.cell_contents for c in cells], strict=True)) if code is not None else {}


class _Launch:
    """One recorded launch, replayable: the compiled binary's raw launcher with its arguments packed once; the
    places of the call's tensors are filled with their addresses at each call, and each TMA descriptor is encoded
    anew for a tensor that has moved (`descs`)."""

    __slots__ = ("raw", "head", "args", "places", "descs", "encoded")

    #: encodings kept per descriptor (addresses a tensor has had); past this they start over
    MAX_ENCODED = 8

    def __init__(self, raw, head: tuple, args: list, places: tuple, descs: tuple):
        self.raw, self.head, self.args, self.places, self.descs = raw, head, args, places, descs
        # per descriptor: address -> its encoded arguments (the address it was recorded at: those in `args`)
        self.encoded: list[dict[int, list]] = [{} for _ in descs]

    @property
    def pinned(self) -> tuple:
        """(slot, address) of each descriptor as recorded: the tensors whose address its encoding holds."""
        return tuple((slot, base) for _, _, slot, base, _, _ in self.descs)

    @classmethod
    def from_record(cls, compiled, grid: tuple, args: tuple, tail: tuple, slots: tuple) -> _Launch | None:
        """Pack one recorded launch (launch.recording's tuple) against the call's tensors `slots` (in SLOTS order) and
        the PERSISTENT buffers; None when it cannot be replayed: a tensor argument that is neither (a view made
        inside the launch code), a descriptor over memory that is not one of theirs, scratch memory the launcher
        would allocate."""
        run = compiled.run
        if getattr(run, "global_scratch_size", 0) or getattr(run, "profile_scratch_size", 0):
            return None  # (Triton allocates it per launch: device-side descriptors, the profiler)
        raw = run.launch
        cells = _closure(raw)
        desc_places: set[int] = set()
        desc_meta: list = []
        if "launcher" in cells:  # Triton's wrapper that turns host TMA descriptors into launcher arguments
            raw = cells["launcher"]
            desc_places = set(cells.get("tensordesc_indices") or ())
            desc_meta = list(cells.get("tensordesc_meta") or [None] * len(desc_places))
        packed: list = []
        places: list[tuple[int, int]] = []
        descs: list[tuple] = []
        for i, arg in enumerate((*args, *tail)):
            if i in desc_places:
                base = arg.base.data_ptr()
                slot = next((j for j, t in enumerate(slots) if t is not None and t.data_ptr() == base), None)
                if slot is None:
                    return None
                meta = desc_meta.pop(0)
                encoded = _expand_descriptor(arg, meta)
                # (where in `packed`, how many arguments, the call's tensor, its address, the descriptor, its meta)
                descs.append((len(packed), len(encoded), slot, base, arg, meta))
                packed.extend(encoded)
            elif isinstance(arg, torch.Tensor):
                slot = next((j for j, t in enumerate(slots) if t is arg), None)
                if slot is not None:
                    places.append((len(packed), slot))
                    packed.append(None)
                elif PERSISTENT.get(arg.data_ptr()) is arg:
                    packed.append(arg.data_ptr())
                else:
                    return None
            elif arg is None or isinstance(arg, (bool, int, float)) or i >= len(args):
                packed.append(arg)  # sizes, strides, the scale; the constexprs (the launcher skips them)
            else:
                return None
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        head = (grid[0], g1, g2)
        tail_head = (compiled.function, run.launch_cooperative_grid, run.launch_pdl, None, None,
                     compiled.packed_metadata, None, None, None)
        return cls(raw, (head, tail_head), packed, tuple(places), tuple(descs))

    def _rebased(self, k: int, address: int) -> list:
        """Descriptor k's launcher arguments for its tensor at `address` (encoded once per address)."""
        seen = self.encoded[k]
        encoded = seen.get(address)
        if encoded is None:
            _, _, _, _, desc, meta = self.descs[k]
            moved = copy.copy(desc)  # the same shape, strides, box and layout (the signature holds them) ...
            object.__setattr__(moved, "base", _Address(address, getattr(desc.base, "dtype", None)))  # ... here
            if len(seen) >= self.MAX_ENCODED:
                seen.clear()
            encoded = seen[address] = _expand_descriptor(moved, meta)
        return encoded

    def __call__(self, ptrs: tuple, stream: int) -> None:
        args = self.args.copy()
        for place, slot in self.places:
            args[place] = ptrs[slot]
        for k, (place, n, slot, base, _, _) in enumerate(self.descs):
            if ptrs[slot] != base:  # the tensor has moved: its descriptor, encoded at the new address
                args[place:place + n] = self._rebased(k, ptrs[slot])
        grid, rest = self.head
        self.raw(*grid, stream, *rest, *args)


class CallPlan:
    """What one call signature needs at each call: output shapes, the partials' size, the launches, whether to
    enqueue the bounds assertion after them (v5.FOLD_BOUNDS off; else the combine's launch asserts it)."""

    def __init__(self, launches: list[_Launch], out_shape: tuple, lse_shape: tuple, part_out_numel: int,
                 part_lse_numel: int, dtype: torch.dtype, device: torch.device, flag: torch.Tensor | None,
                 assert_bounds: bool, built_for: dict | None):
        self.launches = launches
        self.out_shape, self.lse_shape, self.dtype, self.device = out_shape, lse_shape, dtype, device
        self.part_numel, self.lse_offset = part_out_numel + part_lse_numel, part_out_numel * 4
        self.flag, self.assert_bounds, self.built_for = flag, assert_bounds, built_for
        # the stream is the current device's, as FastLauncher's (the current device is part of the key)
        self.stream_device = torch.cuda.current_device()

    def run(self, tensors: tuple, error_flag: torch.Tensor | None):
        """Replay for `tensors` (q, k_cache, block_table, cache_seqlens, metadata, num_splits): (out, lse)."""
        out = torch.empty(self.out_shape, dtype=self.dtype, device=self.device)
        lse = torch.empty(self.lse_shape, dtype=torch.float32, device=self.device)
        part = torch.empty(self.part_numel, dtype=torch.float32, device=self.device)  # part_out, then part_lse
        flag = self.flag if error_flag is None else error_flag
        p = part.data_ptr()
        ptrs = (*[t.data_ptr() for t in tensors], out.data_ptr(), lse.data_ptr(), p, p + self.lse_offset,
                flag.data_ptr())
        stream = torch._C._cuda_getCurrentRawStream(self.stream_device)
        for launch in self.launches:
            launch(ptrs, stream)
        if self.assert_bounds:
            torch._assert_async(flag, BOUNDS_MESSAGE)
        return out, lse


def make_plan(records: list, slots: tuple, error_flag_given: bool, assert_bounds: bool,
              built_for: dict | None) -> CallPlan | None:
    """A CallPlan from the launches recorded during one full call (None if any cannot be replayed, or none was
    recorded). `slots`: the call's tensors in SLOTS order, as the launches received them."""
    if not records or _triton_version() != PLANNED_TRITON:
        return None
    launches = [_Launch.from_record(*record, slots) for record in records]
    if any(launch is None for launch in launches):
        return None
    out, lse, part_out, part_lse, flag = slots[6:]
    return CallPlan(launches, tuple(out.shape), tuple(lse.shape), part_out.numel(), part_lse.numel(), out.dtype,
                    out.device, None if error_flag_given else flag, assert_bounds, built_for)


def replay(key: tuple | None, tensors: tuple, error_flag: torch.Tensor | None = None,
           built_for: dict | None = None):
    """(out, lse) from the plan of `key` for `tensors` (q, k_cache, block_table, cache_seqlens, metadata,
    num_splits), or None: no plan, or a FlashMLASchedMeta filled for another shape (`built_for`, its record). On None
    the caller takes the full path, which checks everything and plans anew."""
    call_plan = lookup(key)
    if call_plan is None or (built_for is not None and built_for != call_plan.built_for):
        return None
    return call_plan.run(tensors, error_flag)


def remember(key: tuple, plan: CallPlan | None) -> None:
    if len(PLANS) >= MAX_PLANS:
        PLANS.clear()
    PLANS[key] = plan
