"""scripts/gpu_wgr_trace.py on the CPU: its summary reads v5_fp8_wgr's TRACE layout as intended (a synthetic trace of
three programs whose times are known), and the buffer's layout constants agree with the kernel module's."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mla_tutorial.kernels import v5_fp8_wgr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import gpu_wgr_trace  # noqa: E402

REQS, ROWS, COLS = v5_fp8_wgr.TRACE_REQS, v5_fp8_wgr.TRACE_ROWS, v5_fp8_wgr.TRACE_COLS


def _trace(programs: int = 3, pages: int = 5, period: int = 3000) -> torch.Tensor:
    """Program p enters at 1,000 + 100p ns: its request starts 500 ns later, issues its first copy at +900, has Q at
    +1,500; page g begins at +1,500 + g·period, lands 400 ns later and ends a period after it began; the row sums
    are done 500 ns after the last page, half the output stored at +1,500, all of it at +2,000, the exit at +2,500.
    The cycle columns count two cycles a ns (a 2 GHz clock)."""
    t = torch.zeros(programs, ROWS, COLS, dtype=torch.int64)
    for p in range(programs):
        base = 1000 + 100 * p
        done = base + 1500 + period * pages
        t[p, 0, 0], t[p, 0, 1] = base, done + 2500
        t[p, 1, :7] = torch.tensor([base + 500, base + 900, base + 1500, done, done + 2000, done + 500, done + 1500])
        for g in range(pages):
            begin = base + 1500 + period * g
            t[p, 1 + REQS + g, :3] = torch.tensor([begin, begin + 400, begin + period])
            t[p, 1 + REQS + g, 4:7] = 2 * t[p, 1 + REQS + g, :3]
    return t


def test_layout_constants():
    assert ROWS == 1 + REQS + v5_fp8_wgr.TRACE_PAGES and COLS == 8


def test_summary_of_a_known_trace():
    s = gpu_wgr_trace.summarize(_trace(), REQS)
    med = {k: v["median"] for k, v in s.items() if isinstance(v, dict) and "median" in v}
    assert s["programs"] == 3 and med["pages_per_program"] == 5 and med["requests_per_program"] == 1
    assert med["entry_to_request_start"] == 0.5 and med["request_start_to_first_copy_issued"] == 0.4
    assert med["first_copy_issued_to_q_ready"] == 0.6 and med["q_ready_to_first_page_landed"] == 0.4
    assert med["entry_to_first_page_landed"] == 1.9 and med["first_landed_to_last_page_end"] == 14.6
    assert med["page_period_steady"] == 3.0 and med["page_wait_steady (begin to landed)"] == 0.4
    assert med["pages_done_to_row_sums"] == 0.5 and med["row_sums_to_half_stored"] == 1.0
    assert med["pages_done_to_stored"] == 2.0 and med["last_page_end_to_exit"] == 2.5
    assert s["kernel_span_us"] == 19.2 and s["program_exit_before_last_exit"]["max"] == 0.2
    assert s["sm_clock_mhz"] == 2000.0 and s["timer_smallest_step_ns"] == 400  # (within a program's pages)
    assert s["last_program"]["entry_after_first"] == 0.2
    assert s["stored_to_next_request_start"] is None  # (one request a program)


def test_per_sm_pairs_and_phases():
    """Two SMs with two programs each (one pair in step with 3 µs pages, one half a page apart with 3.6 µs pages) and
    one SM with one program: the pairs' phases and periods come out as built."""
    t = torch.zeros(5, ROWS, COLS, dtype=torch.int64)
    for p, (sm, period, offset) in enumerate([(0, 3000, 0), (0, 3000, 100), (1, 3600, 0), (1, 3600, 1800),
                                               (2, 2600, 0)]):
        t[p, 0, 0], t[p, 0, 1], t[p, 0, 4] = 1000, 200_000, sm
        for g in range(10):
            begin = 5000 + offset + g * period
            t[p, 1 + REQS + g, 0], t[p, 1 + REQS + g, 2] = begin, begin + period
    s = gpu_wgr_trace.per_sm(t, REQS)
    assert (s["sms_with_two"], s["sms_with_one"]) == (2, 1)
    assert s["by_phase"] == {"0.0-0.1": {"sms": 1, "mean_period_us": 3.0}, "0.4-0.5": {"sms": 1, "mean_period_us": 3.6}}
    assert s["single_program_period"]["median"] == 2.6 and s["per_program"]["smid"] == [0, 0, 1, 1, 2]


def test_exit_correlations_of_a_known_call():
    """Three requests, two programs each: request 0's on SMs of their own (both end early), requests 1 and 2 share
    SMs 1 and 2, halves ending apart; the first program in on SM 1 ends first, on SM 2 last."""
    meta = [[r, 0, r, 32, 0] for r in (0, 0, 1, 1, 2, 2)]
    per_program = {"entry": [0, 0, 0, 0, 0.1, 0.1], "exit": [90, 91, 120, 125, 124, 121],
                   "pages": [32] * 6, "meta": meta}
    c = gpu_wgr_trace.exit_correlations(per_program, [0, 3, 1, 2, 1, 2])
    assert c["halves_all_requests"]["requests"] == 3 and c["halves_on_shared_sms"]["requests"] == 2
    assert c["halves_on_shared_sms"]["corr"] is None  # (under three pairs)
    assert c["exit_alone_on_sm"]["median"] == 90.5 and c["exit_sharing_an_sm"]["n"] == 4
    assert c["first_in_minus_second_in"]["median"] == 0.0 and c["first_in_ends_first"] == 0.5


def test_exit_correlations_of_the_committed_trace():
    """The twenty-second session's call 9 (docs/results/probes/wgr_trace_sm_h200_2026-12-03.json), as
    docs/fp8.md §5 and v5_notes.md quote it: a request's halves correlate 0.85 / 0.94 over all requests only because
    of the four requests alone on their SMs; over the rest 0.13 / 0.50 (s_k 4k / 8k)."""
    import json

    path = Path(__file__).resolve().parents[1] / "docs/results/probes/wgr_trace_sm_h200_2026-12-03.json"
    rows = {r["s_k"]: r for r in json.loads(path.read_text())["rows"]}
    smid = {s_k: r["per_sm_last_call"]["per_program"]["smid"] for s_k, r in rows.items()}
    got = {s_k: gpu_wgr_trace.exit_correlations(r["per_program_last_call"], smid[s_k]) for s_k, r in rows.items()}
    assert [got[s]["halves_all_requests"]["corr"] for s in (4096, 8192)] == [0.854, 0.936]
    assert [got[s]["halves_on_shared_sms"]["corr"] for s in (4096, 8192)] == [0.125, 0.503]
    assert [got[s]["halves_on_shared_sms"]["requests"] for s in (4096, 8192)] == [124, 124]
    assert [got[s]["sharing_an_sm"]["corr"] for s in (4096, 8192)] == [0.064, -0.142]
    assert [got[s]["exit_alone_on_sm"]["median"] for s in (4096, 8192)] == [95.232, 172.304]
    assert [got[s]["exit_sharing_an_sm"]["median"] for s in (4096, 8192)] == [122.144, 224.368]
    assert got[8192]["first_in_ends_first"] == 0.806 and got[8192]["first_in_minus_second_in"]["median"] == -3.76
