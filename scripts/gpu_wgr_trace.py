"""GPU probe: where the fixed part of the 16-row wgmma FP8 tile's call goes, from time stamps written by the kernel
itself (v5_fp8_wgr's TRACE).

Each program stamps the GPU's nanosecond timer (%globaltimer: one time base for every SM) at its entry and exit, at
each request's start, first page issued, Q ready, pages done and partials stored, and at each page's begin, landed
and end (the pages in SM cycles too). From them, per shape: when the programs start and end against the kernel's
first entry, and what a program's time is made of: its prologue (entry to its first page landed, split into the
schedule row, the first copy's issue, Q, the copy's wait), its pages (first landed to last page done, and the page
period), its stores, and the between-request gaps. The kernel's span is set against the profiler's kernel time of the
same call (scripts/gpu_kernel_split.py's) and the plain tile's time beside the stamped one's.

    PYTHONPATH=.peers/flashmla:src python3 scripts/gpu_wgr_trace.py --out trace.json [--sk 64,256,1024,4096]
        [--b 128] [--h 16] [--dist fixed|normal] [--rounds 3] [--variant "WGR_MODE=4" ...]

Then the plain tile and FlashMLA's bf16 call (when importable) are timed in turn for --rounds rounds. (The
twenty-second session's calls 2, 4 and 6 ran it at commits 1d39917, 90135c8 and 86dfc0c with an --early or --staged
switch for variants since removed; their files keep each setting under "variants".)
"""

from __future__ import annotations

import argparse

import torch

try:
    import flash_mla
except ImportError:  # (timed beside ours only where it is installed)
    flash_mla = None

#: request-row columns and page-row columns (v5_fp8_wgr's TRACE layout)
REQ_START, REQ_ISSUED, REQ_Q, REQ_DONE, REQ_STORED, REQ_SUMS, REQ_HALF = range(7)
PAGE_BEGIN, PAGE_LANDED, PAGE_END = range(3)


def _pct(x: torch.Tensor) -> dict | None:
    """p10 / median / p90 / max and count of a 1-D tensor (µs from ns), None when empty."""
    x = x.double()
    if not x.numel():
        return None
    q = torch.quantile(x, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    return {"p10": round(q[0] / 1e3, 3), "median": round(q[1] / 1e3, 3), "p90": round(q[2] / 1e3, 3),
            "max": round(float(x.max()) / 1e3, 3), "mean": round(float(x.mean()) / 1e3, 3), "n": int(x.numel())}


def summarize(t: torch.Tensor, reqs: int) -> dict:
    """The timeline's summary (µs) from trace t [programs, rows, cols] (int64; 0 where nothing was stamped)."""
    t = t.cpu().long()
    live = t[:, 0, 0] != 0
    t = t[live]
    entry, exit_ = t[:, 0, 0], t[:, 0, 1]
    t0 = entry.min()
    req = t[:, 1:1 + reqs, :7]  # [programs, reqs, 7]
    pages = t[:, 1 + reqs:, :]  # [programs, pages, 8]
    has_req = req[:, :, REQ_START] != 0
    has_page = pages[:, :, PAGE_BEGIN] != 0
    n_pages = has_page.sum(1)
    n_reqs = has_req.sum(1)
    first = pages[:, 0, :]
    last_idx = (n_pages - 1).clamp(min=0)
    last = pages[torch.arange(len(t)), last_idx]
    req0 = req[:, 0]
    with_pages = n_pages > 0
    out = {
        "programs": int(len(t)), "pages_per_program": _pct(n_pages * 1000), "requests_per_program":
            _pct(n_reqs * 1000),  # (counts, shown ×1000 so that _pct's µs are the counts)
        "kernel_span_us": round(float(exit_.max() - t0) / 1e3, 3),
        "program_entry_after_first": _pct(entry - t0),
        "program_exit_after_first_entry": _pct(exit_ - t0),
        "program_exit_before_last_exit": _pct(exit_.max() - exit_),
        "program_span": _pct(exit_ - entry),
        # the first request's prologue
        "entry_to_request_start": _pct(req0[:, REQ_START] - entry),
        "request_start_to_first_copy_issued": _pct(req0[:, REQ_ISSUED] - req0[:, REQ_START]),
        "first_copy_issued_to_q_ready": _pct(req0[:, REQ_Q] - req0[:, REQ_ISSUED]),
        "q_ready_to_first_page_landed": _pct((first[:, PAGE_LANDED] - req0[:, REQ_Q])[with_pages]),
        "first_copy_issued_to_landed": _pct((first[:, PAGE_LANDED] - req0[:, REQ_ISSUED])[with_pages]),
        "entry_to_first_page_landed": _pct((first[:, PAGE_LANDED] - entry)[with_pages]),
        "first_page_landed_after_first_entry": _pct((first[:, PAGE_LANDED] - t0)[with_pages]),
        "first_page_landed_to_end": _pct((first[:, PAGE_END] - first[:, PAGE_LANDED])[with_pages]),
        "first_landed_to_last_page_end": _pct((last[:, PAGE_END] - first[:, PAGE_LANDED])[with_pages]),
        "last_page_end_to_exit": _pct((exit_ - last[:, PAGE_END])[with_pages]),
    }
    # the page period and each page's wait, in the steady state: pages 2.. of a program, not a request's first
    begin, landed, end = pages[:, :, PAGE_BEGIN], pages[:, :, PAGE_LANDED], pages[:, :, PAGE_END]
    starts = torch.zeros_like(has_page)
    for p in range(len(t)):  # a request's first page: its index in the program is the pages before the request
        done = 0
        for r in range(reqs):
            if not has_req[p, r]:
                break
            if done < pages.shape[1]:
                starts[p, done] = True
            # pages of request r: those whose begin lies between its start and its pages-done stamps
            inside = has_page[p] & (begin[p] >= req[p, r, REQ_START]) & (begin[p] <= req[p, r, REQ_DONE])
            done += int(inside.sum())
    steady = has_page.clone()
    steady[:, :2] = False
    steady &= ~starts
    period = torch.zeros_like(end)
    period[:, 1:] = end[:, 1:] - end[:, :-1]
    out["page_period_steady"] = _pct(period[steady & has_page])
    out["page_wait_steady (begin to landed)"] = _pct((landed - begin)[steady])
    out["page_compute_steady (landed to end)"] = _pct((end - landed)[steady])
    cyc = (pages[:, :, 4 + PAGE_END] - pages[:, :, 4 + PAGE_BEGIN]).double()
    ns = (end - begin).double()
    ok = steady & (ns > 0)
    out["sm_clock_mhz"] = round(float((cyc[ok] / ns[ok]).median() * 1e3), 1) if ok.any() else None
    # a request's end: pages done to stored (the partials' stores), and the gap to the next request's first page
    done_ok = has_req & (req[:, :, REQ_STORED] != 0)
    out["pages_done_to_stored"] = _pct((req[:, :, REQ_STORED] - req[:, :, REQ_DONE])[done_ok])
    out["pages_done_to_row_sums"] = _pct((req[:, :, REQ_SUMS] - req[:, :, REQ_DONE])[done_ok])
    out["row_sums_to_half_stored"] = _pct((req[:, :, REQ_HALF] - req[:, :, REQ_SUMS])[done_ok])
    out["half_stored_to_stored"] = _pct((req[:, :, REQ_STORED] - req[:, :, REQ_HALF])[done_ok])
    nxt = has_req[:, 1:] & has_req[:, :-1]
    out["stored_to_next_request_start"] = _pct((req[:, 1:, REQ_START] - req[:, :-1, REQ_STORED])[nxt])
    out["next_request_start_to_q_ready"] = _pct((req[:, 1:, REQ_Q] - req[:, 1:, REQ_START])[nxt])
    # the critical program: the one that exits last, its own breakdown
    c = int(exit_.argmax())
    cn = int(n_pages[c])
    out["last_program"] = {
        "pages": cn, "requests": int(n_reqs[c]), "entry_after_first": round(float(entry[c] - t0) / 1e3, 3),
        "entry_to_first_landed": round(float(first[c, PAGE_LANDED] - entry[c]) / 1e3, 3) if cn else None,
        "first_landed_to_last_end": round(float(last[c, PAGE_END] - first[c, PAGE_LANDED]) / 1e3, 3) if cn else None,
        "last_end_to_exit": round(float(exit_[c] - last[c, PAGE_END]) / 1e3, 3) if cn else None}
    # the timer's granularity: the smallest positive difference seen between two stamps of one program
    diffs = (t[:, 1 + reqs:, :3].reshape(len(t), -1))
    d = (diffs[:, 1:] - diffs[:, :-1]).abs()
    d = d[(d > 0) & (diffs[:, 1:] != 0) & (diffs[:, :-1] != 0)]
    out["timer_smallest_step_ns"] = int(d.min()) if d.numel() else None
    return out


def _traced(call, meta) -> dict:
    """The stamped tile's time and five stamped calls (each after an L2 flush) summarized, with the last call's
    per-program stamps (µs after the first entry; -1: none) and one program's whole trace."""
    from mla_tutorial.kernels import plan, v5_fp8_wgr
    from mla_tutorial.measure.kernel_bench import bench_ms

    reqs, rows, cols = v5_fp8_wgr.TRACE_REQS, v5_fp8_wgr.TRACE_ROWS, v5_fp8_wgr.TRACE_COLS
    trace = torch.zeros(meta.shape[0], rows, cols, dtype=torch.int64, device="cuda")
    plan.clear_plans()
    v5_fp8_wgr.TRACE_BUFFER = trace
    try:
        traced_ms = bench_ms(call)
        flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
        summaries = []
        for _ in range(5):
            flush.zero_()
            trace.zero_()
            torch.cuda.synchronize()
            out = call()[0]
            torch.cuda.synchronize()
            summaries.append(summarize(trace, reqs))
    finally:
        v5_fp8_wgr.TRACE_BUFFER = None
        plan.clear_plans()
    t = trace.cpu()
    t0 = int(t[t[:, 0, 0] != 0, 0, 0].min())
    per_program = {
        "entry": [(int(x) - t0) / 1e3 if x else -1 for x in t[:, 0, 0]],
        "first_landed": [(int(x) - t0) / 1e3 if x else -1 for x in t[:, 1 + reqs, PAGE_LANDED]],
        "exit": [(int(x) - t0) / 1e3 if x else -1 for x in t[:, 0, 1]],
        "pages": (t[:, 1 + reqs:, 0] != 0).sum(1).tolist(), "meta": meta.cpu().tolist()}
    sms = per_sm(t, reqs)
    return {"traced_ms": traced_ms, "traced_out": out, "calls": summaries, "per_program_last_call": per_program,
            "per_sm_last_call": sms, "exits_together_last_call": exit_correlations(per_program,
                                                                                    sms["per_program"]["smid"]),
            "raw_program_0": t[0].tolist()}


def per_sm(t: torch.Tensor, reqs: int) -> dict:
    """Which programs share an SM (row 0, column 4: %smid) and how their pages go together: per program its median
    page period (µs, the end of page g to the end of page g + 1, pages 2 on); per SM with two programs the median of
    their phase (where in B's page A's pages begin, folded into [0, 0.5] of a period: 0 in step, 0.5 half a page
    apart); the SMs' periods by phase bin, and those of SMs holding one program."""
    t = t.cpu().long()
    live = (t[:, 0, 0] != 0) & (t[:, 1 + reqs, 0] != 0)
    begin, end = t[:, 1 + reqs:, 0].double(), t[:, 1 + reqs:, 2].double()
    period = {}
    for p in torch.nonzero(live).flatten().tolist():
        n = int((t[p, 1 + reqs:, 0] != 0).sum())
        if n >= 4:
            period[p] = float((end[p, 2:n] - end[p, 1:n - 1]).median()) / 1e3
    sms: dict[int, list[int]] = {}
    for p in period:
        sms.setdefault(int(t[p, 0, 4]), []).append(p)
    pairs, singles = [], []
    for progs in sms.values():
        if len(progs) == 1:
            singles.append(period[progs[0]])
            continue
        a, b = progs[:2]
        nb = int((t[b, 1 + reqs:, 0] != 0).sum())
        na = int((t[a, 1 + reqs:, 0] != 0).sum())
        tb = begin[b, :nb]
        pb = period[b] * 1e3
        phases = []
        for ta in begin[a, 2:na].tolist():
            before = tb[tb <= ta]
            if before.numel():
                x = ((ta - float(before.max())) / pb) % 1.0
                phases.append(min(x, 1.0 - x))
        if phases:
            pairs.append((float(torch.tensor(phases).median()), (period[a] + period[b]) / 2))
    out = {"sms_with_two": len(pairs), "sms_with_one": len(singles),
           "single_program_period": _pct(torch.tensor(singles) * 1e3) if singles else None,
           "pair_period": _pct(torch.tensor([q for _, q in pairs]) * 1e3) if pairs else None, "by_phase": {}}
    for lo in (0.0, 0.1, 0.2, 0.3, 0.4):
        sel = [q for ph, q in pairs if lo <= ph < lo + 0.1 or (lo == 0.4 and ph == 0.5)]
        if sel:
            out["by_phase"][f"{lo:.1f}-{lo + 0.1:.1f}"] = {"sms": len(sel), "mean_period_us": sum(sel) / len(sel)}
    if len(pairs) > 2:
        ph, q = torch.tensor([x for x, _ in pairs]), torch.tensor([y for _, y in pairs])
        out["corr_phase_period"] = float(torch.corrcoef(torch.stack([ph, q]))[0, 1])
    out["per_program"] = {"smid": t[:, 0, 4].tolist(), "period_us": [period.get(p) for p in range(len(t))]}
    return out


def _corr(x: list[float], y: list[float]) -> float | None:
    """Pearson's correlation of two equal-length lists (None under three pairs)."""
    if len(x) < 3:
        return None
    return round(float(torch.corrcoef(torch.tensor([x, y], dtype=torch.float64))[0, 1]), 3)


def exit_correlations(per_program: dict, smid: list[int]) -> dict:
    """Whose exits go together, from one call's per-program stamps (_traced's per_program_last_call: entry, exit in
    µs, pages, meta rows) and each program's SM: the two programs holding one request (over all requests, and over
    those whose two programs each share their SM with another), the two programs sharing an SM, and on those SMs the
    program that entered first against the other. The twenty-second session read the request's correlation over all
    requests (0.85 at s_k 4k); the SMs holding one program end 25-50 µs early, and with both of a request's halves
    on such SMs, those few requests carry that number (twenty-third session)."""
    entry, exit_, pages, meta = (per_program[k] for k in ("entry", "exit", "pages", "meta"))
    live = [p for p in range(len(exit_)) if pages[p] > 0 and exit_[p] >= 0]
    on_sm: dict[int, list[int]] = {}
    for p in live:
        on_sm.setdefault(int(smid[p]), []).append(p)
    shared = {p for progs in on_sm.values() if len(progs) == 2 for p in progs}
    by_req: dict[int, list[int]] = {}
    for p in live:
        if meta[p][0] == meta[p][2]:  # (a program holding one request)
            by_req.setdefault(int(meta[p][0]), []).append(p)
    halves = [ps for ps in by_req.values() if len(ps) == 2]
    both = [ps for ps in halves if set(ps) <= shared]
    pairs = [sorted(ps, key=lambda p: (entry[p], p)) for ps in on_sm.values() if len(ps) == 2]
    lone = [exit_[ps[0]] for ps in on_sm.values() if len(ps) == 1]
    us = lambda xs: _pct(torch.tensor(xs, dtype=torch.float64) * 1e3) if xs else None  # noqa: E731
    return {
        "halves_all_requests": {"requests": len(halves), "corr": _corr([exit_[a] for a, _ in halves],
                                                                       [exit_[b] for _, b in halves])},
        "halves_on_shared_sms": {"requests": len(both), "corr": _corr([exit_[a] for a, _ in both],
                                                                      [exit_[b] for _, b in both])},
        "sharing_an_sm": {"sms": len(pairs), "corr": _corr([exit_[a] for a, _ in pairs],
                                                           [exit_[b] for _, b in pairs])},
        "exit_alone_on_sm": us(lone), "exit_sharing_an_sm": us([exit_[p] for p in shared]),
        "first_in_minus_second_in": us([exit_[a] - exit_[b] for a, b in pairs]),
        "first_in_ends_first": round(sum(exit_[a] < exit_[b] for a, b in pairs) / len(pairs), 3) if pairs else None,
    }


def run(b: int, h_q: int, s_k: int, dist: str, rounds: int, variants: tuple[str, ...] = ()) -> dict:
    """One shape: the tile's answer against v5's bf16 call on the dequantized cache, its time, its stamps; then
    `rounds` rounds timing it, each variant (knob settings as scripts/with_knobs.py takes them, e.g. "WGR_MODE=4")
    and FlashMLA's bf16 call in turn."""
    from with_knobs import current_knobs, set_knobs

    from mla_tutorial.fp8 import dequantize_k_cache, quantize_k_cache
    from mla_tutorial.kernels import mla_decode_v5, plan
    from mla_tutorial.kernels.schedule import get_mla_metadata
    from mla_tutorial.measure.kernel_bench import bench_ms, shape_inputs
    from mla_tutorial.metrics import error_metrics

    (q, k, bt, sl), mean_sk = shape_inputs(b, h_q, 1, s_k, dist, seed=s_k + h_q)
    k8 = quantize_k_cache(k)
    meta, splits = get_mla_metadata(sl, h_q, 1)
    call = lambda: mla_decode_v5(q, k8, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits,  # noqa: E731
                                 check_bounds=False, is_fp8_kvcache=True, path="wgr")
    # (a check that the build and its launch still compute the tile; the FP8 tests are the tile's real check)
    ref = mla_decode_v5(q, dequantize_k_cache(k8), bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits,
                        check_bounds=False)[0]
    plan.clear_plans()
    plain = call()[0].clone()
    err = error_metrics(plain, ref)
    row = {"b": b, "h_q": h_q, "s_k": s_k, "dist": dist, "mean_sk": mean_sk, "parts": int(meta.shape[0]),
           "vs_bf16_on_dequantized": {"max_abs": err.max_abs, "rel_frobenius": err.rel_frob},
           "plain_ms": bench_ms(call)}
    row |= _traced(call, meta)
    row["traced_equals_plain"] = bool(torch.equal(row.pop("traced_out"), plain))
    print(_line(row), flush=True)
    sm = {k: v for k, v in row["per_sm_last_call"].items() if k != "per_program"}
    print(f"  per SM: {sm}", flush=True)
    print(f"  exits together: {row['exits_together_last_call']}", flush=True)
    times: dict[str, list[float]] = {"ours_fp8": []}
    fm = None
    if flash_mla is not None:
        sched, _ = flash_mla.get_mla_metadata()
        fm = lambda args=(q, k, bt, sl, 512, sched, None): flash_mla.flash_mla_with_kvcache(*args)  # noqa: E731
        times["flashmla_bf16"] = []
    defaults = [f"{k}={int(v)}" for k, v in current_knobs().items()]
    row["variant_vs_bf16_on_dequantized"] = {}
    for v in variants:
        times[f"ours_fp8[{v}]"] = []
    for r in range(rounds):  # (in turn, so that drift falls on all alike)
        times["ours_fp8"].append(bench_ms(call))
        for v in variants:  # (a variant's knobs set, its plans built afresh, then the defaults back)
            set_knobs(v.split())
            plan.clear_plans()
            try:
                if r == 0:  # (its answer once: a timing MODE's may differ from the tile's, so its error is kept)
                    out = call()[0]
                    e = error_metrics(out, ref)
                    row["variant_vs_bf16_on_dequantized"][v] = {"max_abs": e.max_abs, "rel_frobenius": e.rel_frob,
                                                                "equals_plain": bool(torch.equal(out, plain))}
                times[f"ours_fp8[{v}]"].append(bench_ms(call))
            finally:
                set_knobs(defaults)
                plan.clear_plans()
        if fm is not None:
            times["flashmla_bf16"].append(bench_ms(fm))
    row["rounds_ms"] = times
    row["median_ms"] = med = {name: sorted(x)[len(x) // 2] for name, x in times.items()}
    if fm is not None:
        row["flashmla_over_ours"] = med["flashmla_bf16"] / med["ours_fp8"]
        for v in variants:
            row[f"flashmla_over_ours[{v}]"] = med["flashmla_bf16"] / med[f"ours_fp8[{v}]"]
    ratios = {k: round(v, 3) for k, v in row.items() if k.startswith("flashmla_over_ours")}
    print(f"  rounds: {med}  {ratios}", flush=True)
    if variants:
        print(f"  variants against bf16 on the dequantized cache: {row['variant_vs_bf16_on_dequantized']}", flush=True)
    return row


def accuracy(b: int = 16, h_q: int = 16, s_k: int = 4096, factors=(1.0, 2.0**-10, 2.0**-20)) -> list[dict]:
    """The tile's page work in bf16 (MODE 0) and in fp16 (MODE 4, as the module has it) and v5's bf16 call on the
    dequantized cache against the fp32 reference on that cache, with the cache's values multiplied by each factor
    before quantization (smaller values, smaller scales: where fp16's P·scale loses bits): max abs, relative
    Frobenius, cosine."""
    from mla_tutorial.fp8 import dequantize_k_cache, quantize_k_cache
    from mla_tutorial.kernels import mla_decode_v5, plan, v5_fp8_wgr
    from mla_tutorial.kernels.reference import mla_decode_reference
    from mla_tutorial.kernels.schedule import get_mla_metadata
    from mla_tutorial.measure.kernel_bench import shape_inputs
    from mla_tutorial.metrics import error_metrics

    rows = []
    (q, k, bt, sl), _ = shape_inputs(b, h_q, 1, s_k, "fixed", seed=7)
    meta, splits = get_mla_metadata(sl, h_q, 1)
    for factor in factors:
        k8 = quantize_k_cache((k.float() * factor).bfloat16())
        kd = dequantize_k_cache(k8)
        ref = mla_decode_reference(q, kd, bt, sl, 512)[0]
        row = {"factor": factor, "b": b, "h_q": h_q, "s_k": s_k}
        outs = {"bf16_on_dequantized": mla_decode_v5(q, kd, bt, sl, 512, tile_scheduler_metadata=meta,
                                                     num_splits=splits, check_bounds=False)[0]}
        before = v5_fp8_wgr.WGR_MODE
        for mode in (0, 4):
            v5_fp8_wgr.WGR_MODE = mode
            plan.clear_plans()
            try:
                outs[f"wgr_mode{mode}"] = mla_decode_v5(q, k8, bt, sl, 512, tile_scheduler_metadata=meta,
                                                        num_splits=splits, check_bounds=False, is_fp8_kvcache=True,
                                                        path="wgr")[0]
            finally:
                v5_fp8_wgr.WGR_MODE = before
                plan.clear_plans()
        for name, out in outs.items():
            e = error_metrics(out, ref)
            row[name] = {"max_abs": e.max_abs, "rel_frobenius": e.rel_frob, "cosine": e.cosine}
        row["ref_abs_max"] = float(ref.abs().max())
        print(row, flush=True)
        rows.append(row)
    return rows


def _line(v: dict) -> str:
    s = v["calls"][len(v["calls"]) // 2]

    def m(key):
        x = s.get(key)
        return f"{x['median']:.2f}" if x else "-"
    return (f"b{v['b']} h{v['h_q']} sk{v['s_k']} {v['dist']}: plain "
            f"{v['plain_ms'] * 1e3:.1f} us, stamped {v['traced_ms'] * 1e3:.1f} (equal {v['traced_equals_plain']}); "
            f"vs bf16 {v['vs_bf16_on_dequantized']}; "
            f"span {s['kernel_span_us']}, entry spread p90 {s['program_entry_after_first']['p90']}, "
            f"entry->first landed {m('entry_to_first_page_landed')} (req start {m('entry_to_request_start')}, "
            f"issue {m('request_start_to_first_copy_issued')}, Q {m('first_copy_issued_to_q_ready')}, "
            f"wait {m('q_ready_to_first_page_landed')}), pages {m('first_landed_to_last_page_end')} "
            f"(period {m('page_period_steady')}, wait {m('page_wait_steady (begin to landed)')}), stores "
            f"{m('pages_done_to_stored')} (sums {m('pages_done_to_row_sums')}, half {m('row_sums_to_half_stored')}), "
            f"last end->exit {m('last_page_end_to_exit')}, "
            f"exit spread p90 {s['program_exit_before_last_exit']['p90']}, clock {s['sm_clock_mhz']} MHz, "
            f"timer step {s['timer_smallest_step_ns']} ns")


def main() -> int:
    from mla_tutorial.measure.kernel_bench import save_probe

    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--sk", default="64,256,1024,4096")
    ap.add_argument("--b", type=int, default=128)
    ap.add_argument("--h", type=int, default=16)
    ap.add_argument("--dist", default="fixed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant", action="append", default=[],
                    help='knob settings timed beside the tile in its rounds, e.g. "WGR_MODE=4" (repeatable)')
    ap.add_argument("--accuracy", action="store_true",
                    help="only the tile's, MODE 4's and the bf16 call's error against the fp32 reference")
    args = ap.parse_args()
    if args.accuracy:
        save_probe(accuracy())
        return 0
    rows = []
    for s_k in (int(x) for x in args.sk.split(",")):
        try:
            row = run(args.b, args.h, s_k, args.dist, args.rounds, tuple(args.variant))
        except Exception as e:  # keep the other shapes
            row = {"b": args.b, "h_q": args.h, "s_k": s_k, "error": f"{type(e).__name__}: {str(e)[:500]}"}
            print(row, flush=True)
        rows.append(row)
    save_probe(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
