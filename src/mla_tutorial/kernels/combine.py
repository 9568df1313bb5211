# combine kernel (used by v3, v4 and v5): merge the fp32 partial results of a split request.
#
# Split i of a request produced o_i = Σ_j p_ij·v_j / l_i and lse_i = log(l_i) (natural log, with the
# running max folded in). The full result is
#   lse = log Σ_i exp(lse_i),   o = Σ_i exp(lse_i − lse) · o_i
# computed here in one pass with a running max, so no split's weight overflows.
# Requests with a single split were already written by the main kernel and are skipped.
# On a GPU it is launched with programmatic dependent launch (PDL, sm_90): its programs are scheduled while the
# main kernel finishes and wait at `gdc_wait` until the main kernel's writes are visible, so the launch gap
# between the two kernels disappears. (The interpreter has no PDL: the constexpr keeps it out there.)
# Bytes: reads n_splits·(512·4 + 4) B and writes 512·2 + 4 B per query row: for h_q=128, b=128 and
#   2 splits, ~70 MB, ~25 µs at 3 TB/s: small next to the main kernel, but not free at small s_k.
#
# Latency, not bytes, bounds it when one request has many splits (batch 1, a long context: 264 splits of 16 rows
# at h_q 16). Its first form walked a request's splits one at a time, 8 rows x 512 columns a program: two programs
# at b 1, h_q 16, each waiting on 264 dependent loads, took 64 µs on the H200 against 29 for FlashMLA's combine
# and 31 for our main kernel (scripts/gpu_kernel_split.py, 2026-12-02). Now each program owns ROWS rows x BLOCK_D
# columns and loads SPLITS splits at once, [ROWS, SPLITS, BLOCK_D], merging them into the running max and sums
# step by step: at b 1, h_q 16, 16 programs each wait on a few steps of 16 splits instead of 2 on 264 loads
# (combine_shape picks the shape from the splits a request has).
#
# The bounds assertion rides on it (since 2026-12-04; CHECK): v5's tiles clear a flag where a block id is out of range
# instead of following it, and the call asserted the flag with torch._assert_async, a third kernel after the tile
# and the combine (2.1-2.2 µs of device time a call in the profiler at every length, h16 b 128: FlashMLA's call has
# two kernels). With CHECK the combine's first program asserts the flag after gdc_wait (Triton's device_assert,
# compiled in only for this launch: `debug`, without the integer-overflow checks debug would also add), so a bad id
# still stops the stream with the same message, and the call is two kernels. The requests' split offsets are read
# before gdc_wait: the schedule wrote them before the main kernel started, so the combine's programs have them in
# registers when the main kernel's writes become visible.
"""Combine kernel: merges split-KV partial outputs by their log-sum-exp (and, for v5, asserts the bounds flag)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_wait

from .blocks import _cast
from .common import is_interpreter
from .launch import FastLauncher

# (rows a program, columns a program, splits a step). On a GPU two shapes (scripts/gpu_combine_probe.py and
# gpu_kernel_split.py, H200, 2026-12-02): where requests have many splits (the parts outnumber the requests
# MANY_SPLITS times or more: batch 1-16 with long contexts) 4 x 128 x 16, latency first (128 registers); else (two or
# three splits a request at b 128) 8 x 512 x 2: fewer, wider programs, each waiting once for the main kernel.
# Under the interpreter 8 x 512 x 8 (its time is per program).
MANY_SPLITS = 4
MANY_SPLITS_SHAPE = (4, 128, 16)
FEW_SPLITS_SHAPE = (8, 512, 2)
INTERPRETER_COMBINE_SHAPE = (8, 512, 8)
#: warps a program, and whether the split offsets are read before gdc_wait (knobs for scripts/gpu_call_tail.py)
COMBINE_WARPS = 4
OFFSETS_FIRST = True

#: what a failed bounds assertion says (the combine's device_assert with CHECK; torch._assert_async where the call
#: asserts on its own: the interpreter, CPU tensors)
BOUNDS_MESSAGE = ("flash_mla_with_kvcache: a block_table entry inside a request's length is outside [0, num_blocks) "
                  "(the kernel did not follow it)")
_BOUNDS = tl.constexpr(BOUNDS_MESSAGE)


def combine_shape(batch: int, slots: int) -> tuple[int, int, int]:
    """The combine kernel's (ROWS, BLOCK_D, SPLITS) on a GPU for `batch` requests with `slots` rows of partials
    (b + parts)."""
    return MANY_SPLITS_SHAPE if slots - batch >= MANY_SPLITS * batch else FEW_SPLITS_SHAPE


@triton.jit
def _combine_kernel(
    part_out_ptr,  # [slots, s_q*h_q, 512] fp32
    part_lse_ptr,  # [slots, s_q*h_q] fp32 (-inf: the split saw no key)
    split_offsets_ptr,  # [b + 1] int32: request r owns slots [split_offsets[r], split_offsets[r+1])
    out_ptr,  # [b, s_q, h_q, 512] in q's dtype
    lse_ptr,  # [b, h_q, s_q] fp32
    flag_ptr,  # int32 [1]: v5's bounds flag (0: a block id was out of range), read with CHECK
    s_q, h_q,
    ROWS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr, UPCAST: tl.constexpr,
    USE_PDL: tl.constexpr, CHECK: tl.constexpr, OFFSETS_FIRST: tl.constexpr,
):
    req = tl.program_id(0)
    if USE_PDL and not OFFSETS_FIRST:
        gdc_wait()
    begin = tl.load(split_offsets_ptr + req)  # (written before the main kernel started: read before its end)
    end = tl.load(split_offsets_ptr + req + 1)
    if USE_PDL and OFFSETS_FIRST:
        gdc_wait()  # the main kernel's partials, outputs and flag are visible after this
    if CHECK:
        if (req == 0) & (tl.program_id(1) == 0) & (tl.program_id(2) == 0):
            tl.device_assert(tl.load(flag_ptr) != 0, _BOUNDS)
    if end - begin > 1:  # unsplit requests were written by the main kernel
        n_rows = s_q * h_q
        rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)  # (ROWS,) row = token * h_q + head
        row_ok = rows < n_rows
        offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        # a step's partials are [ROWS, SPLITS, BLOCK_D] with the splits in the middle: Triton's default layout then
        # gives the warps the rows and each thread all SPLITS of its columns, so the sums over the splits stay in
        # registers (sm_90a: 64 registers, no shared memory in the loop; scripts/compile_offline.py combine)
        m = tl.full([ROWS, 1], float("-inf"), tl.float32)  # running max of lse_i, a row's
        w_sum = tl.zeros([ROWS, 1], tl.float32)  # Σ exp(lse_i - m)
        acc = tl.zeros([ROWS, BLOCK_D], tl.float32)  # Σ exp(lse_i - m) · o_i
        for first in range(begin, end, SPLITS):
            slot = first + tl.arange(0, SPLITS)  # (SPLITS,)
            ok = (row_ok[:, None] & (slot < end)[None, :])[:, :, None]  # (ROWS, SPLITS, 1)
            base = (rows[:, None] + slot.to(tl.int64)[None, :] * n_rows)[:, :, None]  # (ROWS, SPLITS, 1) int64
            lse_i = tl.load(part_lse_ptr + base, mask=ok, other=float("-inf"))  # (ROWS, SPLITS, 1)
            o_i = tl.load(part_out_ptr + base * D + offs_d[None, None, :], mask=ok, other=0.0)
            m_new = tl.maximum(m, tl.max(lse_i, axis=1))  # (ROWS, SPLITS, 1) -> (ROWS, 1)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m - m_use)
            w = tl.exp(lse_i - m_use[:, None, :])  # 0 for a split with no key
            w_sum = w_sum * alpha + tl.sum(w, axis=1)
            acc = acc * alpha + tl.sum(o_i * w, axis=1)
            m = m_new
        has_keys = w_sum > 0
        w_safe = tl.where(has_keys, w_sum, 1.0)
        o = acc / w_safe
        out_rows = req.to(tl.int64) * n_rows + rows
        tl.store(out_ptr + out_rows[:, None] * D + offs_d[None, :], _cast(o, out_ptr.dtype.element_ty, UPCAST),
                 mask=row_ok[:, None])
        if tl.program_id(2) == 0:  # one column block writes the LSE
            lse = tl.where(has_keys, m + tl.log(w_safe), float("inf"))  # (ROWS, 1)
            tok = rows // h_q
            head = rows % h_q
            lse_at = lse_ptr + (req.to(tl.int64) * h_q + head) * s_q + tok  # (ROWS,)
            tl.store(lse_at[:, None], lse, mask=row_ok[:, None])


def combine_splits(
    part_out: torch.Tensor,
    part_lse: torch.Tensor,
    split_offsets: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    shape: tuple[int, int, int] | None = None,
    check_flag: torch.Tensor | None = None,
) -> None:
    """Merge partials into out [b, s_q, h_q, 512] and lse [b, h_q, s_q] for requests with > 1 split. `shape`: the
    kernel's (ROWS, BLOCK_D, SPLITS) instead of its default (for measuring them). `check_flag` (int32 [1], compiled
    kernels only): assert it nonzero on the device once the main kernel is done (BOUNDS_MESSAGE)."""
    b, s_q, h_q, d = out.shape
    interpret = is_interpreter()
    if check_flag is not None and interpret:
        raise ValueError("combine_splits: check_flag needs a compiled kernel (the interpreter has no device assert)")
    rows, block_d, splits = shape or (INTERPRETER_COMBINE_SHAPE if interpret else combine_shape(b, part_out.shape[0]))
    grid = (b, triton.cdiv(s_q * h_q, rows), d // block_d)
    pdl = {} if interpret else {"launch_pdl": _pdl_supported(out.device)}
    check = check_flag is not None
    if check:  # device_assert is compiled in only with debug; debug's integer-overflow checks are left out
        pdl |= {"debug": True, "sanitize_overflow": False}
    _LAUNCH(grid, part_out, part_lse, split_offsets, out, lse, check_flag if check else split_offsets, s_q, h_q,
            ROWS=rows, D=d, BLOCK_D=block_d, SPLITS=splits, UPCAST=interpret, USE_PDL=bool(pdl.get("launch_pdl")),
            CHECK=check, OFFSETS_FIRST=OFFSETS_FIRST, num_warps=COMBINE_WARPS, **pdl)


def _pdl_supported(device: torch.device) -> bool:
    """Programmatic dependent launch needs sm_90 or newer."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _PDL:
        _PDL[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _PDL[index]


_PDL: dict[int, bool] = {}


_LAUNCH = FastLauncher(_combine_kernel)
