"""The load-balanced split-KV schedule (FlashMLA's `get_mla_metadata`), computed on the GPU by one small kernel.

Request r costs ceil(s_k_r / 64) page units plus a fixed overhead (query load, output store) for every piece it is
cut into. Each of num_sm_parts programs of the kernel's single wave gets payload = ceil(total / parts) + overhead
units, where total counts one overhead per request. The parts are filled in order by FlashMLA's walk: a part takes
whole requests while the rest of the current one (its remaining pages + one overhead) fits in what is left of its
payload; when it does not, the part cuts the request, taking as many pages as its remainder pays after one overhead,
but only if that is at least one page: with `overhead` units or fewer left the part stops and the request starts the
next part. So a continued piece pays its overhead again, and the `+ overhead` of the payload is the room that lets
a request only slightly longer than the even share stay whole. Only cut requests go through the combine.

What each rule measured (H200, whole call, b 128, beside FlashMLA in the same runs; docs/results/v5_notes.md,
fifteenth session). Until 2026-12-03 this module cut one line of units (each request's overhead charged once) into
even shares at any unit. At b 128 on 132 SMs that cuts almost every request once, and a cut costs the seesaw tile
far more than 5 units (a request boundary inside a program, ~17,000 cycles, is ~2 pairs of pages, plus the combine):
one whole request a part (what this walk gives there) was faster by 10 % at h_q 64, s_k 4k (FlashMLA / v5 0.85 ->
0.94) and 6-8 % at 8k; two whole requests a part at h_q 128 (66 parts) by 12 % at 1k and 5-7 % at 4k.
The small tile (16 query rows, two programs an SM) pays less for a piece, and 2 units fit it better than 5: each
request falls in two halves (h_q 16, s_k 1k: 0.74 -> 0.81; 4k: 0.94 -> 1.00 on the line with 256 parts), where 5
cut it at shifting offsets into two or three pieces. Hence `default_fixed_overhead`: 5 for tiles of 64 query rows
(FlashMLA's value), SCHEDULE_OVERHEAD_BLOCKS_SMALL = 2 below.

Two implementations with identical results (bit for bit, tests/test_schedule.py):
- `get_mla_metadata_torch`: the walk in plain Python over the lengths (read to the host), the readable statement.
- `get_mla_metadata` (used by v4 and v5): the same walk in one Triton program: `_runs_kernel`, in parallel (the
  default, PARALLEL_SCHEDULE), or `_step_kernel`, step by step.

Why a kernel: the host must not wait for the lengths (no sync in a decode step, and the schedule must be capturable
in a CUDA graph and replayed with new lengths), and each torch op costs a few µs of host time to dispatch. The walk
looks sequential (where a part starts depends on where the one before stopped), and run step by step in one warp it
took 25-50 µs on the H200 (fifteenth session: a dependent chain of a few hundred cycles per part, 264 parts at 16
heads). `_runs_kernel` computes the same walk in parallel on a line of units: from a request's start the parts'
ends advance by the same number of units until one falls within a request's first `overhead` units, where the walk
stops and the next part starts at that request; each such run has a closed form per starting request, so the runs
are found for all requests at once, chained from request 0 in one short step per run, and each part's row follows
from its run (the kernel's comments). Both equal the reference on the GPU too (sixteenth session). Timed as CUDA
graph replays on the H200 (device time alone, the benchmark's 13 shapes): `_runs_kernel` 8-28 µs, `_step_kernel`
13-50; the parallel one faster at 12 of 13 (not at h_q 128, s_q 2: 26.0 against 22.8), so it is the default
(PARALLEL_SCHEDULE). Its phase 2 once looked at one later request a step, 34-46 µs where runs pass dozens of requests
(h_q 128 s_k 8k, s_q 2, uneven lengths at h_q 16); looking at 16 at once took those to 26-28 and the others from
14-20 to 17-25 (docs/results/kernels_v5_qtma_h200_2026-12-03.json, `metadata`). Each step of either is a
dependent chain of global loads and cross-warp reductions; FlashMLA's (not timed here: its current API fills the
schedule in the first call of a step and reuses it) walks in one thread over lengths held in shared memory.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .common import (
    MAX_TILE_M,
    METADATA_COLS,
    PAGE_SIZE,
    SCHEDULE_OVERHEAD_BLOCKS,
    SCHEDULE_OVERHEAD_BLOCKS_SMALL,
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

SCHEDULE_BLOCK = 256  # requests per step of the kernel's sum of the costs
RUN_ROWS, RUN_WINDOW = 64, 16  # _runs_kernel's phase 2: requests at a time, and the requests after each looked at


def default_num_sm_parts(num_heads_per_head_k: int, num_heads_k: int, device) -> int:
    """FlashMLA's count: #SMs / h_kv / ceil(s_q·h_q/h_kv / 64), times the programs that fit on one SM."""
    cfg = launch_config(num_heads_per_head_k, torch.device(device))
    m_tiles = cdiv(num_heads_per_head_k, MAX_TILE_M)
    limits = device_limits(device)
    return max(1, limits.sm_count * cfg.ctas_per_sm // (num_heads_k * m_tiles))


def default_fixed_overhead(num_heads_per_head_k: int) -> int:
    """Units a piece costs beyond its pages: FlashMLA's 5 for tiles of 64 query rows (the seesaw tile, the FP8
    tiles), 2 for the small tile below 64 rows (the module docstring says what each measured)."""
    return SCHEDULE_OVERHEAD_BLOCKS if num_heads_per_head_k >= MAX_TILE_M else SCHEDULE_OVERHEAD_BLOCKS_SMALL


def _check_knobs(cache_seqlens: torch.Tensor, num_sm_parts: int, fixed_overhead: int) -> None:
    if fixed_overhead < 1:  # an empty request must cost at least one unit, or no part would own it
        raise ValueError(f"fixed_overhead must be >= 1, got {fixed_overhead}")
    if num_sm_parts < 1:
        raise ValueError(f"num_sm_parts must be >= 1, got {num_sm_parts}")
    if cache_seqlens.dim() != 1 or cache_seqlens.shape[0] < 1:
        raise ValueError(f"cache_seqlens must have shape [batch >= 1], got {tuple(cache_seqlens.shape)}")


def _knobs(cache_seqlens, num_heads_per_head_k, num_heads_k, num_sm_parts, fixed_overhead) -> tuple[int, int]:
    """(parts, overhead) with the defaults filled in, checked."""
    if num_sm_parts is None:
        num_sm_parts = default_num_sm_parts(num_heads_per_head_k, num_heads_k, cache_seqlens.device)
    if fixed_overhead is None:
        fixed_overhead = default_fixed_overhead(num_heads_per_head_k)
    _check_knobs(cache_seqlens, num_sm_parts, fixed_overhead)
    return int(num_sm_parts), int(fixed_overhead)


# ---------------------------------------------------------------------------------------------
# the reference: the walk in plain Python
# ---------------------------------------------------------------------------------------------
def get_mla_metadata_torch(
    cache_seqlens: torch.Tensor,
    num_heads_per_head_k: int,
    num_heads_k: int,
    *,
    num_sm_parts: int | None = None,
    fixed_overhead: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The balanced split-KV schedule by FlashMLA's walk, in plain Python (the lengths are read to the host: a
    reference and the CPU path, not for a GPU decode step, which uses `get_mla_metadata`).

    Returns (tile_scheduler_metadata [num_sm_parts, 8] int32, num_splits [b+1] int32), where num_splits is the
    prefix sum of the number of pieces each request is cut into. `num_sm_parts` (default FlashMLA's count) and
    `fixed_overhead` (units a piece costs beyond its pages; default `default_fixed_overhead`) are knobs for tests
    and tuning.
    """
    parts, overhead = _knobs(cache_seqlens, num_heads_per_head_k, num_heads_k, num_sm_parts, fixed_overhead)
    pages = [max(0, -(-int(s) // PAGE_SIZE)) for s in cache_seqlens.tolist()]  # ceil(s_k / 64) per request
    b = len(pages)
    total = sum(n + overhead for n in pages)
    payload = -(-total // parts) + overhead  # units per part: the even share + one overhead of room

    meta = [[0] * METADATA_COLS for _ in range(parts)]
    num_splits = [0] * (b + 1)
    req, page, split, pieces = 0, 0, 0, 0  # where the walk stands: request, its next page, its next piece's index
    for row in meta:
        row[META_BEGIN_REQ], row[META_BEGIN_BLOCK], row[META_BEGIN_SPLIT] = req, page, split
        left = payload
        while req < b:
            rest = pages[req] - page  # pages of the request still to place
            if left >= rest + overhead:  # the rest fits: the request ends in this part
                pieces += split + 1
                num_splits[req + 1] = pieces
                left -= rest + overhead
                req, page, split = req + 1, 0, 0
            else:  # cut it where this part's units run out, if they pay for one page at least
                if left > overhead:
                    page += left - overhead
                    split += 1
                break
        # the part ends inside request `req` (page > 0) or at the end of the request before it
        row[META_END_REQ] = req if page > 0 else req - 1
        row[META_END_BLOCK] = page if page > 0 else max(pages[req - 1], 1) if req > 0 else 1
    return (torch.tensor(meta, dtype=torch.int32, device=cache_seqlens.device),
            torch.tensor(num_splits, dtype=torch.int32, device=cache_seqlens.device))


# ---------------------------------------------------------------------------------------------
# the kernel: the same walk in one program
# ---------------------------------------------------------------------------------------------
@triton.jit
def _pages(seqlens_ptr, stride_s, r, valid, PAGE: tl.constexpr):
    """ceil(s_k / PAGE) of requests r (int64, negative lengths as 0); 0 where not valid."""
    s_k = tl.load(seqlens_ptr + r.to(tl.int64) * stride_s, mask=valid, other=0).to(tl.int64)
    return tl.maximum((s_k + PAGE - 1) // PAGE, 0)


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _containing(starts_ptr, x, lo, hi, active):
    """Per lane, the request j in [lo, hi] with starts[j] <= x < starts[j + 1] (binary search; starts rise)."""
    going = active & (lo < hi)
    while tl.max(going.to(tl.int32), 0) > 0:
        mid = (lo + hi + 1) // 2
        right = tl.load(starts_ptr + mid, mask=going, other=0) <= x
        lo = tl.where(going & right, mid, lo)
        hi = tl.where(going & (right == 0), mid - 1, hi)
        going = active & (lo < hi)
    return lo


@triton.jit(do_not_specialize=["stride_s", "b", "parts", "overhead"])
def _step_kernel(
    seqlens_ptr, meta_ptr, num_splits_ptr,
    stride_s, b, parts, overhead,
    PAGE: tl.constexpr, META_COLS: tl.constexpr, BLOCK: tl.constexpr,
):
    # The walk step by step, as get_mla_metadata_torch states it (one warp; GPU-checked and timed: 25-50 µs a call).
    # the costs' sum, a block of requests at a time (int64: 2^31 units would take 2^37 tokens, but lengths are
    # the caller's), hence each part's payload
    lanes = tl.arange(0, BLOCK)
    total = tl.zeros([], tl.int64)
    for start in range(0, b, BLOCK):
        r = start + lanes
        in_b = r < b
        total += tl.sum(tl.where(in_b, _pages(seqlens_ptr, stride_s, r, in_b, PAGE) + overhead, 0), 0)
    payload = ((total + parts - 1) // parts + overhead).to(tl.int32)

    # the walk (get_mla_metadata_torch, step by step): req, page, split = where it stands; pieces = num_splits so far.
    # The pages of BLOCK requests at a time stay in registers (`chunk`, from request `base`), read one by one with a
    # masked sum: a global load per request would put its latency (~0.5 µs from L2) on every step of the walk.
    tl.store(num_splits_ptr, 0)
    zero = tl.zeros([], tl.int32)
    req = zero
    page = zero
    split = zero
    pieces = zero
    base = zero
    chunk = _pages(seqlens_ptr, stride_s, lanes, lanes < b, PAGE).to(tl.int32)  # pages of requests base ..
    n_req = tl.sum(tl.where(lanes == 0, chunk, 0), 0)  # pages of request `req`
    n_prev = zero  # pages of request `req` - 1
    pad = tl.arange(0, 4) + 4  # columns 4..7: the split index, then zeros
    for p in range(0, parts):
        row = meta_ptr + p * META_COLS  # (p < 2^28: an int32 product)
        tl.store(row + _BEGIN_REQ, req)
        tl.store(row + _BEGIN_BLOCK, page)
        tl.store(row + pad, tl.where(pad == _BEGIN_SPLIT, split, 0))
        left = payload
        going = req < b
        while going:
            rest = n_req - page
            if left >= rest + overhead:  # the rest fits: the request ends in this part
                pieces += split + 1
                tl.store(num_splits_ptr + req + 1, pieces)
                left -= rest + overhead
                req += 1
                page = zero
                split = zero
                if req - base >= BLOCK:  # the next BLOCK requests' pages
                    base += BLOCK
                    chunk = _pages(seqlens_ptr, stride_s, base + lanes, base + lanes < b, PAGE).to(tl.int32)
                n_prev = n_req
                n_req = tl.sum(tl.where(lanes == req - base, chunk, 0), 0)  # 0 past the last request
                going = req < b
            else:  # cut where this part's units run out, if they pay for one page at least
                if left > overhead:
                    page += left - overhead
                    split += 1
                going = req < 0
        # the part ends inside request `req` (page > 0) or at the end of the request before it (an empty one counts
        # as one page, as in the reference)
        tl.store(row + _END_REQ, tl.where(page > 0, req, req - 1))
        tl.store(row + _END_BLOCK, tl.where(page > 0, page, tl.maximum(n_prev, 1)))


@triton.jit(do_not_specialize=["stride_s", "b", "parts", "overhead"])
def _runs_kernel(
    seqlens_ptr, meta_ptr, num_splits_ptr, scratch_ptr,
    stride_s, b, parts, overhead,
    PAGE: tl.constexpr, META_COLS: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr, WINDOW: tl.constexpr,
):
    # The walk of get_mla_metadata_torch, computed in parallel on a line of units: request r occupies
    # [S_r, S_r + n_r + o) (n_r pages, o = overhead, charged once per request here), T = the line's end. A part that
    # starts at a request's start has payload P = ceil(T / parts) + o units, one that starts inside a request (a
    # continued piece, which pays o again) P - o = Q on this line. So from a request start S_r the parts end at
    # c_k = S_r + o + k·Q (k = 1, 2, ...) until one of them falls in a request j's first o units, [S_j, S_j + o]
    # (an empty request: [S_j, S_j + o - 1]): there the walk stops the part at S_j (fewer than a page paid for) and
    # the next part starts at a request start again; or until c_k >= T. Each such run is found for every request in
    # parallel (phase 2), the runs are chained from request 0 (phase 3, one short step per run), and each part's row
    # follows from where its run started (phase 4).
    # scratch (int64): S [b + 1] | n [b] | run's next request [b] | run's parts [b] | run's first part [b] |
    #                  run of each part [parts] | cuts per request [b]
    s_ptr = scratch_ptr
    n_ptr = s_ptr + b + 1
    next_ptr = n_ptr + b
    len_ptr = next_ptr + b
    off_ptr = len_ptr + b
    run_ptr = off_ptr + b
    cuts_ptr = run_ptr + parts
    lanes = tl.arange(0, BLOCK)
    o = overhead.to(tl.int64)

    # phase 1 (requests): starts on the line, pages; the end T; the payload
    carry = tl.zeros([], tl.int64)
    for start in range(0, b, BLOCK):
        r = start + lanes
        in_b = r < b
        n = _pages(seqlens_ptr, stride_s, r, in_b, PAGE)
        cost = tl.where(in_b, n + o, 0)
        tl.store(s_ptr + r, carry + tl.cumsum(cost, 0) - cost, mask=in_b)
        tl.store(n_ptr + r, n, mask=in_b)
        tl.store(cuts_ptr + r, tl.zeros([BLOCK], tl.int64), mask=in_b)
        carry += tl.sum(cost, 0)
    total = carry
    tl.store(s_ptr + b, total)
    for start in range(0, parts, BLOCK):
        p = start + lanes
        tl.store(run_ptr + p, tl.full([BLOCK], -1, tl.int64), mask=p < parts)
    q = (total + parts - 1) // parts  # P - o: a continued part's advance on the line (>= 1)
    tl.debug_barrier()

    # phase 2 (requests): the run from each request's start: the first request j > r whose first o units a c_k
    # falls in (then the run has k parts and the next starts at S_j), else the parts it takes to reach T. Each lane
    # looks at WINDOW requests at once (a [ROWS, WINDOW] gather from the starts it wrote just before): a run can
    # pass dozens of requests (h_q 128, 8k: a part's 258 units cross two 133-unit requests, and only 6 units of each
    # stop it), and one request a step put a dependent load on each (34-46 µs a call on the H200, sixteenth session)
    win = tl.arange(0, WINDOW).to(tl.int64)
    for start in range(0, b, ROWS):
        r = (start + tl.arange(0, ROWS)).to(tl.int64)
        in_b = r < b
        s_row = tl.load(s_ptr + r, mask=in_b, other=0)  # [ROWS]
        s_r = s_row[:, None]  # [ROWS, 1]
        next_req = tl.zeros([ROWS], tl.int64) + b  # b: no request stops the run
        k_snap = tl.zeros([ROWS], tl.int64)
        w = tl.zeros([], tl.int64) + 1  # the window's first request, after r
        going = tl.max((in_b & (r + 1 < b)).to(tl.int32), 0)
        while going > 0:
            j = r[:, None] + w + win[None, :]  # [ROWS, WINDOW] the requests after r looked at now
            act = (in_b & (next_req == b))[:, None] & (j < b)
            s_j = tl.load(s_ptr + j, mask=act, other=0)
            n_j = tl.load(n_ptr + j, mask=act, other=0)
            k_lo = tl.maximum((s_j - s_r - o + q - 1) // q, 1)  # first k with c_k >= S_j (S_j - S_r - o >= 0)
            last = s_j + o - (n_j == 0).to(tl.int64) - s_r - o  # c_k <= S_j + o (or + o - 1) <=> k·q <= last
            hit = act & (last >= 0) & (k_lo * q <= last)
            first = tl.min(tl.where(hit, j, b), 1)  # [ROWS] the first request that stops the run, or b
            k_first = tl.sum(tl.where(hit & (j == first[:, None]), k_lo, 0), 1)
            k_snap = tl.where(first < b, k_first, k_snap)
            next_req = tl.minimum(next_req, first)
            w += WINDOW
            going = tl.max((in_b & (next_req == b) & (r + w < b)).to(tl.int32), 0)
        to_end = tl.maximum((total - s_row - o + q - 1) // q, 1)  # first k with c_k >= T
        found = next_req < b
        tl.store(next_ptr + r, next_req, mask=in_b)
        tl.store(len_ptr + r, tl.where(found, k_snap, to_end), mask=in_b)
    tl.debug_barrier()

    # phase 3: the runs the walk takes, from request 0: each run's first part, and the run at that part
    req = tl.zeros([], tl.int64)
    used = tl.zeros([], tl.int64)
    while req < b:
        tl.store(off_ptr + req, used)
        tl.store(run_ptr + used, req, mask=used < parts)  # (the runs' parts never exceed `parts`)
        used += tl.load(len_ptr + req)
        req = tl.load(next_ptr + req)
    tl.debug_barrier()

    # phase 4 (parts): each part's run (the last run started at or before it), its place in the run, its start x
    # and end y on the line, and from them the row
    tl.store(num_splits_ptr, 0)
    last_b = tl.maximum(tl.load(n_ptr + b - 1), 1)  # an idle part "ends" at the last request, as the walk says
    run_carry = tl.zeros([], tl.int64)
    for start in range(0, parts, BLOCK):
        p = start + lanes
        in_p = p < parts
        run = tl.maximum(tl.associative_scan(tl.load(run_ptr + p, mask=in_p, other=-1), 0, _max), run_carry)
        run_carry = tl.max(run, 0)
        busy = in_p & (p < used)
        run = tl.where(busy, run, 0)
        k = p - tl.load(off_ptr + run, mask=busy, other=0)  # the part's place in its run
        s_r = tl.load(s_ptr + run, mask=busy, other=0)
        n_run = tl.load(len_ptr + run, mask=busy, other=1)
        nxt = tl.load(next_ptr + run, mask=busy, other=0)
        x = tl.where(k == 0, s_r, s_r + o + k * q)
        y_in_run = busy & (k + 1 < n_run)  # the part ends inside a request (a cut); else where the next run starts
        y = tl.where(y_in_run, s_r + o + (k + 1) * q, tl.load(s_ptr + nxt, mask=busy, other=0))
        last_req = tl.minimum(nxt, b) - 1
        # begin: a run's first part at its request's start, the others inside the request their x falls in
        cut_in = busy & (k > 0)
        jb = _containing(s_ptr, x, run, last_req, cut_in)
        s_jb = tl.load(s_ptr + jb, mask=cut_in, other=0)
        begin_req = tl.where(busy, tl.where(cut_in, jb, run), b)
        begin_page = tl.where(cut_in, x - s_jb - o, 0)
        begin_split = tl.where(cut_in, k - (s_jb - s_r) // q, 0)  # pieces of jb before: its cuts in this run
        tl.atomic_add(cuts_ptr + jb, tl.full([BLOCK], 1, tl.int64), mask=cut_in, sem="relaxed")
        # end: inside the request y falls in, or at the end of the request before the next run's
        je = _containing(s_ptr, y, run, last_req, y_in_run)
        s_je = tl.load(s_ptr + je, mask=y_in_run, other=0)
        whole = tl.maximum(tl.load(n_ptr + last_req, mask=busy & (last_req >= 0), other=1), 1)
        end_req = tl.where(busy, tl.where(y_in_run, je, last_req), b - 1)
        end_page = tl.where(busy, tl.where(y_in_run, y - s_je - o, whole), last_b)
        row = meta_ptr + p * META_COLS
        tl.store(row + _BEGIN_REQ, begin_req.to(tl.int32), mask=in_p)
        tl.store(row + _BEGIN_BLOCK, begin_page.to(tl.int32), mask=in_p)
        tl.store(row + _END_REQ, end_req.to(tl.int32), mask=in_p)
        tl.store(row + _END_BLOCK, end_page.to(tl.int32), mask=in_p)
        pad = tl.arange(0, 4) + 4  # columns 4..7: the split index, then zeros
        tl.store(row[:, None] + pad[None, :], tl.where(pad[None, :] == _BEGIN_SPLIT, begin_split[:, None], 0)
                 .to(tl.int32), mask=in_p[:, None])
    tl.debug_barrier()

    # phase 5 (requests): pieces = 1 + cuts -> num_splits, their prefix sum
    carry = tl.zeros([], tl.int64)
    for start in range(0, b, BLOCK):
        r = start + lanes
        in_b = r < b
        pieces = tl.where(in_b, 1 + tl.load(cuts_ptr + r, mask=in_b, other=0), 0)
        tl.store(num_splits_ptr + r + 1, (carry + tl.cumsum(pieces, 0)).to(tl.int32), mask=in_b)
        carry += tl.sum(pieces, 0)


#: which kernel computes the walk on a GPU: True, the parallel one (`_runs_kernel`, the default); False, the
#: step-by-step one (`_step_kernel`; MLA_SCHEDULE_RUNS=0 chooses it). Both checked and timed on the H200.
PARALLEL_SCHEDULE = os.environ.get("MLA_SCHEDULE_RUNS", "1") != "0"


def get_mla_metadata(
    cache_seqlens: torch.Tensor,
    num_heads_per_head_k: int,
    num_heads_k: int,
    *,
    num_sm_parts: int | None = None,
    fixed_overhead: int | None = None,
    parallel: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced split-KV schedule, computed by one launch of a Triton kernel (no host sync).

    Returns (tile_scheduler_metadata [num_sm_parts, 8] int32, num_splits [b+1] int32), where
    num_splits is the prefix sum of the number of pieces each request is cut into; equal, bit for bit, to
    `get_mla_metadata_torch`. `num_sm_parts` and `fixed_overhead` (units a piece costs beyond its pages; default
    `default_fixed_overhead`) are knobs for tests and tuning; `parallel` picks the kernel (default
    PARALLEL_SCHEDULE). A CPU tensor outside the interpreter (Triton cannot launch on it) takes the reference.
    """
    parts, overhead = _knobs(cache_seqlens, num_heads_per_head_k, num_heads_k, num_sm_parts, fixed_overhead)
    device = cache_seqlens.device
    if device.type == "cpu" and not is_interpreter():
        return get_mla_metadata_torch(cache_seqlens, num_heads_per_head_k, num_heads_k,
                                      num_sm_parts=parts, fixed_overhead=overhead)
    b = cache_seqlens.shape[0]
    meta = torch.empty((parts, METADATA_COLS), dtype=torch.int32, device=device)  # every entry written
    num_splits = torch.empty(b + 1, dtype=torch.int32, device=device)
    if PARALLEL_SCHEDULE if parallel is None else parallel:
        scratch = torch.empty(6 * b + 1 + parts, dtype=torch.int64, device=device)  # layout: see the kernel
        _LAUNCH_RUNS(
            (1,), cache_seqlens, meta, num_splits, scratch,
            cache_seqlens.stride(0), b, parts, overhead,
            PAGE=PAGE_SIZE, META_COLS=METADATA_COLS, BLOCK=SCHEDULE_BLOCK, ROWS=RUN_ROWS, WINDOW=RUN_WINDOW,
            num_warps=4,
        )
    else:
        _LAUNCH_STEP(
            (1,), cache_seqlens, meta, num_splits,
            cache_seqlens.stride(0), b, parts, overhead,
            PAGE=PAGE_SIZE, META_COLS=METADATA_COLS, BLOCK=SCHEDULE_BLOCK, num_warps=1,
        )
    return meta, num_splits


_LAUNCH_STEP = FastLauncher(_step_kernel)
_LAUNCH_RUNS = FastLauncher(_runs_kernel)
