"""The load-balanced split-KV schedule (FlashMLA's `get_mla_metadata`), computed on the GPU by one small kernel.

All work of a decode call is laid out on one line: request r costs ceil(s_k_r / 64) page units plus a fixed
overhead of 5 units (query load, output store), and the line is cut into num_sm_parts contiguous ranges of
payload = ceil(total / parts) + payload_slack units, one per program of the kernel's single wave. A range may hold the
tail of one request, several whole requests and the head of the next; only requests cut by a range boundary are split
and go through the combine.

payload_slack is 0 by default: each range gets the even share. FlashMLA adds 5 units (its rule, payload_slack=5):
its walk over the parts charges every piece, a continued request's included, its 5 units of overhead, which those 5
units pay for. On this line a request's overhead is charged once, at its start, so with FlashMLA's 5 they go unspent
and the line runs out before the last parts: on an H200 at b 128, 28 of 132 programs had nothing to do at h_q 64,
s_k 1k, and 9 at 4k (the seesaw tile's own stamps, docs/results/v5_notes.md, thirteenth session); the even share
leaves only the rounding's tail idle (4 of 132 there). Measured on an H200 (2026-12-03, whole call, b 128, beside
FlashMLA in the same run): FlashMLA / v5 went from 0.61 to 0.78 at h_q 64, s_k 1k, 0.67 to 0.74 at h_q 16 1k, 0.63 to
0.67 at h_q 128 1k, and between -1 % and +4 % at 4k and 8k (within the runs' spread there).

Two implementations with identical results (bit for bit, tests/test_schedule.py):
- `get_mla_metadata_torch`: ~20 torch ops, the readable statement of the algorithm.
- `get_mla_metadata` (used by v4 and v5): the same steps in one Triton program, `_schedule_kernel`.

Why one launch: each torch op costs a few µs of host time to dispatch, and the torch version took ~1.3 ms of host
time per call on the H200 (2026-12-01), against ~50 µs for FlashMLA's whole decode call. FlashMLA computes its
metadata with one small kernel; so does this module. The work is O(b + num_sm_parts) integer operations, far too
little to fill more than one SM, so a single program (grid (1,)) walks the requests and the part boundaries in
blocks of SCHEDULE_BLOCK lanes; prefix sums run block by block with `tl.cumsum` plus a carried offset. Phases
that read what an earlier phase wrote to global scratch are separated by `tl.debug_barrier()` (one program, so a
block-wide barrier orders them). Neither version syncs with the host or builds tensors from Python lists, so the
metadata and the decode kernels can be captured in a CUDA graph and replayed with new lengths.

The kernel's phases (b requests; boundaries p = 0..num_sm_parts at x_p = min(p * payload, total) on the line):
1. requests: total cost -> payload = ceil(total / parts) + payload_slack; zero the two counters in scratch.
2. requests: ends = prefix sum of the costs (int64, to scratch). Each request votes for the first boundary at or
   after its end, k_r = ceil(ends_r / payload): boundary p lies past request r's end exactly when k_r <= p.
3. boundaries: req_p = prefix sum of the votes = the requests that end at or before x_p (torch's
   `searchsorted(ends, x, right=True)`); the page of req_p holding the cut, whether the cut is interior (then
   req_p gets one more split: a counter per request, by atomic add), and the cut's running number among all
   interior cuts. Writes each part's begin (from boundary p) and end (from boundary p + 1) columns.
4. requests: num_splits = prefix sum of (1 + interior cuts per request); interior cuts before each request.
5. boundaries: the split index a part starts with = the cut's running number minus the cuts before its request.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    MAX_TILE_M,
    METADATA_COLS,
    PAGE_SIZE,
    SCHEDULE_OVERHEAD_BLOCKS,
    SCHEDULE_PAYLOAD_SLACK,
    cdiv,
    device_limits,
    is_interpreter,
    launch_config,
)
from .launch import FastLauncher

# tile_scheduler_metadata columns (int32), one row per SM part; "blocks" are 64-token pages
META_BEGIN_REQ = 0  # first request of the range
META_BEGIN_BLOCK = 1  # first page of that request
META_END_REQ = 2  # last request of the range (inclusive)
META_END_BLOCK = 3  # page after the last page of that request (exclusive)
META_BEGIN_SPLIT = 4  # split index of the first piece (0 unless the range starts inside a request)
# columns 5..7: zero (FlashMLA keeps the same 8-int row)

# the same columns for the kernel (a @triton.jit function reads only constexpr globals)
_BEGIN_REQ, _BEGIN_BLOCK, _END_REQ, _END_BLOCK, _BEGIN_SPLIT = (
    tl.constexpr(c) for c in (META_BEGIN_REQ, META_BEGIN_BLOCK, META_END_REQ, META_END_BLOCK, META_BEGIN_SPLIT)
)

SCHEDULE_BLOCK = 256  # requests (or part boundaries) per step of the kernel's loops


def default_num_sm_parts(num_heads_per_head_k: int, num_heads_k: int, device) -> int:
    """FlashMLA's count: #SMs / h_kv / ceil(s_q·h_q/h_kv / 64), times the programs that fit on one SM."""
    cfg = launch_config(num_heads_per_head_k, torch.device(device))
    m_tiles = cdiv(num_heads_per_head_k, MAX_TILE_M)
    limits = device_limits(device)
    return max(1, limits.sm_count * cfg.ctas_per_sm // (num_heads_k * m_tiles))


def _check_knobs(cache_seqlens: torch.Tensor, num_sm_parts: int, fixed_overhead: int, payload_slack: int) -> None:
    if fixed_overhead < 1:  # an empty request must occupy at least one unit, or no part would own it
        raise ValueError(f"fixed_overhead must be >= 1, got {fixed_overhead}")
    if payload_slack < 0:
        raise ValueError(f"payload_slack must be >= 0, got {payload_slack}")
    if num_sm_parts < 1:
        raise ValueError(f"num_sm_parts must be >= 1, got {num_sm_parts}")
    if cache_seqlens.dim() != 1 or cache_seqlens.shape[0] < 1:
        raise ValueError(f"cache_seqlens must have shape [batch >= 1], got {tuple(cache_seqlens.shape)}")


# ---------------------------------------------------------------------------------------------
# the reference: torch ops
# ---------------------------------------------------------------------------------------------
def get_mla_metadata_torch(
    cache_seqlens: torch.Tensor,
    num_heads_per_head_k: int,
    num_heads_k: int,
    *,
    num_sm_parts: int | None = None,
    fixed_overhead: int = SCHEDULE_OVERHEAD_BLOCKS,
    payload_slack: int = SCHEDULE_PAYLOAD_SLACK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced split-KV schedule, computed with torch ops on cache_seqlens' device (no host sync).

    Returns (tile_scheduler_metadata [num_sm_parts, 8] int32, num_splits [b+1] int32), where
    num_splits is the prefix sum of the number of pieces each request is cut into.
    `num_sm_parts`, `fixed_overhead` (units per request) and `payload_slack` (units added to each part's even
    share: 0 by default; FlashMLA adds 5: the module docstring says why, and what each measured) are knobs for tests
    and tuning.
    """
    if num_sm_parts is None:
        num_sm_parts = default_num_sm_parts(num_heads_per_head_k, num_heads_k, cache_seqlens.device)
    _check_knobs(cache_seqlens, num_sm_parts, fixed_overhead, payload_slack)
    device = cache_seqlens.device
    parts = int(num_sm_parts)
    b = cache_seqlens.shape[0]
    seqlens = cache_seqlens.to(torch.int64)
    blocks = (seqlens + PAGE_SIZE - 1) // PAGE_SIZE  # (b,) pages per request
    cost = blocks + fixed_overhead  # (b,) work units per request
    ends = torch.cumsum(cost, 0)  # (b,) where each request's units end on the line
    total = ends[-1:]  # (1,)
    starts = ends - cost
    payload = (total + parts - 1) // parts + payload_slack  # units per part (even share: slack 0; FlashMLA's rule: 5)

    # range boundaries x_p = p·payload on the line of units, p = 0..parts -> (request, page) cut points
    x = torch.minimum(torch.arange(parts + 1, device=device, dtype=torch.int64) * payload, total)
    req = torch.searchsorted(ends, x, right=True)  # (parts+1,) request holding unit x; b at the end
    zero = torch.zeros(1, dtype=torch.int64, device=device)
    starts_pad = torch.cat([starts, total])  # (b+1,)
    blocks_pad = torch.cat([blocks, zero])
    # a request's first 5 units are its overhead: a cut there falls before its first page
    page = torch.clamp(x - starts_pad[req] - fixed_overhead, min=0)
    page = torch.minimum(page, blocks_pad[req])
    interior = (page > 0) & (page < blocks_pad[req])  # cut inside a request: it gets one more split

    # pieces per request = 1 + interior cuts in it -> num_splits (prefix sum)
    cuts_per_req = torch.zeros(b + 1, dtype=torch.int64, device=device)
    cuts_per_req.scatter_add_(0, req, interior.to(torch.int64))
    num_splits = torch.cat([zero, torch.cumsum(1 + cuts_per_req[:b], 0)]).to(torch.int32)
    # split index of the piece starting at each cut: its rank among the interior cuts of its request
    cuts_before_req = torch.cumsum(cuts_per_req, 0) - cuts_per_req  # (b+1,)
    rank = torch.cumsum(interior.to(torch.int64), 0) - cuts_before_req[req]
    begin_split = torch.where(interior, rank, zero)

    # part p runs from cut p (inclusive) to cut p+1 (exclusive)
    end_req_excl, end_page = req[1:], page[1:]
    end_req = torch.where(end_page > 0, end_req_excl, end_req_excl - 1)  # last request it touches
    pages_or_one = torch.clamp(blocks_pad, min=1)  # an empty request is one (empty) piece
    end_block = torch.where(end_page > 0, end_page, pages_or_one[end_req.clamp(min=0)])

    meta = torch.zeros(parts, METADATA_COLS, dtype=torch.int32, device=device)
    meta[:, META_BEGIN_REQ] = req[:-1].to(torch.int32)
    meta[:, META_BEGIN_BLOCK] = page[:-1].to(torch.int32)
    meta[:, META_END_REQ] = end_req.to(torch.int32)
    meta[:, META_END_BLOCK] = end_block.to(torch.int32)
    meta[:, META_BEGIN_SPLIT] = begin_split[:-1].to(torch.int32)
    return meta, num_splits


# ---------------------------------------------------------------------------------------------
# the kernel: the same steps in one program
# ---------------------------------------------------------------------------------------------
@triton.jit
def _pages(seqlens_ptr, stride_s, r, valid, PAGE: tl.constexpr):
    """ceil(s_k / PAGE) of requests r (int64); 0 where not valid (the padding request b)."""
    s_k = tl.load(seqlens_ptr + r * stride_s, mask=valid, other=0).to(tl.int64)
    return (s_k + PAGE - 1) // PAGE


@triton.jit(do_not_specialize=["stride_s", "b", "parts", "fixed_overhead", "payload_slack"])
def _schedule_kernel(
    seqlens_ptr, meta_ptr, num_splits_ptr, scratch_ptr,
    stride_s, b, parts, fixed_overhead, payload_slack,
    PAGE: tl.constexpr, META_COLS: tl.constexpr, BLOCK: tl.constexpr,
):
    # scratch (int64): ends [b] | votes [parts+1] | cuts [b] | cuts_before [b] | cut_no [parts]
    ends_ptr = scratch_ptr
    votes_ptr = ends_ptr + b
    cuts_ptr = votes_ptr + parts + 1
    cuts_before_ptr = cuts_ptr + b
    cut_no_ptr = cuts_before_ptr + b
    lanes = tl.arange(0, BLOCK)
    zeros = tl.zeros([BLOCK], tl.int64)
    ones = tl.full([BLOCK], 1, tl.int64)
    overhead = fixed_overhead.to(tl.int64)

    # phase 1 (requests): the total cost, hence each part's payload; zero the counters of phases 2 and 3
    total = tl.zeros([], tl.int64)
    for start in range(0, b, BLOCK):
        r = start + lanes  # (BLOCK,) request ids
        in_b = r < b
        cost = tl.where(in_b, _pages(seqlens_ptr, stride_s, r, in_b, PAGE) + overhead, 0)
        total += tl.sum(cost, 0)
        tl.store(cuts_ptr + r, zeros, mask=in_b)
    for start in range(0, parts + 1, BLOCK):
        p = start + lanes  # (BLOCK,) boundary ids
        tl.store(votes_ptr + p, zeros, mask=p <= parts)
    payload = (total + parts - 1) // parts + payload_slack.to(tl.int64)  # units per part (FlashMLA adds 5)
    tl.debug_barrier()

    # phase 2 (requests): where each request ends on the line; it votes for the first boundary at or past its end
    carry = tl.zeros([], tl.int64)
    for start in range(0, b, BLOCK):
        r = start + lanes
        in_b = r < b
        cost = tl.where(in_b, _pages(seqlens_ptr, stride_s, r, in_b, PAGE) + overhead, 0)
        ends = carry + tl.cumsum(cost, 0)  # (BLOCK,) int64
        carry += tl.sum(cost, 0)
        tl.store(ends_ptr + r, ends, mask=in_b)
        first_past = (ends + payload - 1) // payload  # in [1, parts] for lengths >= 0; the clamp below only
        first_past = tl.minimum(tl.maximum(first_past, 0), parts)  # keeps bad input (s_k < 0) in bounds
        tl.atomic_add(votes_ptr + first_past, ones, mask=in_b, sem="relaxed")  # ordered by the barrier
    tl.debug_barrier()

    # phase 3 (boundaries p = 0..parts): boundary p cuts request req_p at page page_p
    req_carry = tl.zeros([], tl.int64)
    cut_carry = tl.zeros([], tl.int64)
    for start in range(0, parts + 1, BLOCK):
        p = start + lanes
        in_p = p <= parts
        votes = tl.load(votes_ptr + p, mask=in_p, other=0)
        req = tl.minimum(req_carry + tl.cumsum(votes, 0), b)  # requests ending at or before x_p (<= b anyway)
        req_carry += tl.sum(votes, 0)
        x = tl.minimum(p.to(tl.int64) * payload, total)  # (BLOCK,) where boundary p sits on the line
        start_of_req = tl.load(ends_ptr + req - 1, mask=in_p & (req > 0), other=0)  # total when req == b
        pages = _pages(seqlens_ptr, stride_s, req, in_p & (req < b), PAGE)  # 0 for req == b
        # a request's first `overhead` units are its overhead: a cut there falls before its first page
        page = tl.minimum(tl.maximum(x - start_of_req - overhead, 0), pages)
        interior = in_p & (page > 0) & (page < pages)  # cut inside a request: it gets one more split
        tl.atomic_add(cuts_ptr + req, ones, mask=interior, sem="relaxed")
        cut_no = cut_carry + tl.cumsum(interior.to(tl.int64), 0)  # running number among all interior cuts
        cut_carry += tl.sum(interior.to(tl.int64), 0)

        # part p begins at boundary p ...
        row = meta_ptr + p * META_COLS
        begins = p < parts
        tl.store(row + _BEGIN_REQ, req.to(tl.int32), mask=begins)
        tl.store(row + _BEGIN_BLOCK, page.to(tl.int32), mask=begins)
        pad = tl.arange(0, 4) + 4  # columns 4..7: zero (column 4 gets the split index in phase 5)
        tl.store(row[:, None] + pad[None, :], tl.zeros([BLOCK, 4], tl.int32), mask=begins[:, None])
        tl.store(cut_no_ptr + p, tl.where(interior, cut_no, 0), mask=begins)
        # ... and part p - 1 ends at it: on the page before the cut, or at the end of the request before
        end_req = tl.where(page > 0, req, req - 1)
        last = tl.maximum(end_req, 0)
        pages_or_one = tl.maximum(_pages(seqlens_ptr, stride_s, last, in_p & (last < b), PAGE), 1)
        end_block = tl.where(page > 0, page, pages_or_one)  # an empty request is one (empty) piece
        ends_here = in_p & (p > 0)
        tl.store(row - META_COLS + _END_REQ, end_req.to(tl.int32), mask=ends_here)
        tl.store(row - META_COLS + _END_BLOCK, end_block.to(tl.int32), mask=ends_here)
    tl.debug_barrier()

    # phase 4 (requests): pieces per request = 1 + its interior cuts -> num_splits (prefix sum)
    tl.store(num_splits_ptr + lanes, tl.zeros([BLOCK], tl.int32), mask=lanes == 0)
    carry = tl.zeros([], tl.int64)
    for start in range(0, b, BLOCK):
        r = start + lanes
        in_b = r < b
        cuts = tl.load(cuts_ptr + r, mask=in_b, other=0)
        cuts_through = carry + tl.cumsum(cuts, 0)  # interior cuts in requests 0..r
        carry += tl.sum(cuts, 0)
        tl.store(num_splits_ptr + r + 1, (r + 1 + cuts_through).to(tl.int32), mask=in_b)
        tl.store(cuts_before_ptr + r, cuts_through - cuts, mask=in_b)
    tl.debug_barrier()

    # phase 5 (boundaries): a part starting at an interior cut starts with split (cut's number - cuts before)
    for start in range(0, parts, BLOCK):
        p = start + lanes
        begins = p < parts
        row = meta_ptr + p * META_COLS
        cut_no = tl.load(cut_no_ptr + p, mask=begins, other=0)
        req = tl.load(row + _BEGIN_REQ, mask=begins, other=0)
        is_cut = begins & (cut_no > 0)
        before = tl.load(cuts_before_ptr + req, mask=is_cut & (req < b), other=0)
        tl.store(row + _BEGIN_SPLIT, tl.where(is_cut, cut_no - before, 0).to(tl.int32), mask=begins)


def get_mla_metadata(
    cache_seqlens: torch.Tensor,
    num_heads_per_head_k: int,
    num_heads_k: int,
    *,
    num_sm_parts: int | None = None,
    fixed_overhead: int = SCHEDULE_OVERHEAD_BLOCKS,
    payload_slack: int = SCHEDULE_PAYLOAD_SLACK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced split-KV schedule, computed by one launch of `_schedule_kernel` (no host sync).

    Returns (tile_scheduler_metadata [num_sm_parts, 8] int32, num_splits [b+1] int32), where
    num_splits is the prefix sum of the number of pieces each request is cut into; equal, bit for bit, to
    `get_mla_metadata_torch`. `num_sm_parts`, `fixed_overhead` (units per request) and `payload_slack` are knobs for
    tests and tuning. A CPU tensor outside the interpreter (Triton cannot launch on it) takes the torch reference.
    """
    if num_sm_parts is None:
        num_sm_parts = default_num_sm_parts(num_heads_per_head_k, num_heads_k, cache_seqlens.device)
    _check_knobs(cache_seqlens, num_sm_parts, fixed_overhead, payload_slack)
    device = cache_seqlens.device
    if device.type == "cpu" and not is_interpreter():
        return get_mla_metadata_torch(cache_seqlens, num_heads_per_head_k, num_heads_k,
                                      num_sm_parts=num_sm_parts, fixed_overhead=fixed_overhead,
                                      payload_slack=payload_slack)
    parts = int(num_sm_parts)
    b = cache_seqlens.shape[0]
    meta = torch.empty((parts, METADATA_COLS), dtype=torch.int32, device=device)  # every entry written
    num_splits = torch.empty(b + 1, dtype=torch.int32, device=device)
    scratch = torch.empty(3 * b + 2 * parts + 1, dtype=torch.int64, device=device)  # layout: see the kernel
    _LAUNCH(
        (1,), cache_seqlens, meta, num_splits, scratch,
        cache_seqlens.stride(0), b, parts, int(fixed_overhead), int(payload_slack),
        PAGE=PAGE_SIZE, META_COLS=METADATA_COLS, BLOCK=SCHEDULE_BLOCK,
    )
    return meta, num_splits


_LAUNCH = FastLauncher(_schedule_kernel)
