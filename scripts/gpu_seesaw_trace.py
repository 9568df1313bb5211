"""GPU probe: a timeline of the seesaw tile, from cycle stamps written by the kernel itself (v5_seesaw's TRACE).

Each program stamps its SM's cycle counter (%clock64) at fixed points of every page pair, for its first
TRACE_PAIRS pairs: when each warpgroup starts the pair, when each half of its page has landed (its mbarrier wait
returned), when its scores are done, when P is published and received, when each P·V product is done; and when
the producer warp passed each "slot released" wait. The medians over the steady-state pairs of every program say
where a pair's time goes: waiting for pages, waiting for the other warpgroup, or computing. Run with the copies
(mode 0) and without (mode 2, the compute alone).

    PYTHONPATH=src python3 scripts/gpu_seesaw_trace.py --out trace.json [--shapes 64:4096,128:4096]

The stamps cost a few cycles each (the stamped tile's time is printed beside the plain tile's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from gpu_seesaw_probe import VARIANTS  # (scripts/: this script's own directory)

#: event index -> name (v5_seesaw's _ss_stamp calls): WG0 0-7, WG1 8-15, producer 16-20, request edges 24-31
EVENTS = {0: "wg0_start", 6: "wg0_A_left_landed", 7: "wg0_A_right_landed", 1: "wg0_S_A_done", 2: "wg0_P_A_published",
          3: "wg0_PV_A_left_done", 4: "wg0_P_B_received", 5: "wg0_PV_B_left_done",
          8: "wg1_start", 13: "wg1_B_right_landed", 14: "wg1_B_left_landed", 9: "wg1_S_B_done",
          10: "wg1_P_A_received", 11: "wg1_P_B_published", 12: "wg1_done",
          16: "prod_start", 17: "prod_A_left_free", 18: "prod_B_right_free", 19: "prod_A_right_free",
          20: "prod_B_left_free", 21: "wg0_entry", 22: "wg1_entry", 23: "prod_entry", 24: "wg0_req_start",
          25: "wg0_q_ready", 26: "wg0_req_pages_done",
          27: "wg0_req_stored", 28: "wg1_req_start", 29: "wg1_q_ready", 30: "wg1_req_pages_done", 31: "wg1_req_stored",
          15: "wg0_last_stored", 32: "wg0_entry_ns", 33: "wg0_last_stored_ns", 34: "wg0_req_loop",
          35: "wg1_req_loop"}
#: (15, 32 and 33 are stamped at pair 0 only; 32 and 33 in nanoseconds, %globaltimer, the others in SM cycles)

#: intervals reported: name -> (from event, to event, pair offset of the second event)
INTERVALS = {
    "pair period (wg0 start to next start)": (0, 0, 1),
    "wg0 wait A left": (0, 6, 0), "wg0 wait A right": (6, 7, 0), "wg0 S_A after landing": (7, 1, 0),
    "wg0 softmax + publish P_A": (1, 2, 0), "wg0 P_A V_A left": (2, 3, 0), "wg0 wait P_B": (3, 4, 0),
    "wg0 P_B V_B left": (4, 5, 0), "wg0 end to next start": (5, 0, 1),
    "wg1 wait B right": (8, 13, 0), "wg1 wait B left": (13, 14, 0), "wg1 S_B after landing": (14, 9, 0),
    "wg1 wait P_A": (9, 10, 0), "wg1 softmax + publish P_B": (10, 11, 0),
    "wg1 P_B V_B right + P_A V_A right": (11, 12, 0),
    "wg1 end to next start": (12, 8, 1),
    "prod wait A left free": (16, 17, 0), "prod then B right free": (17, 18, 0), "prod then A right free": (18, 19, 0),
    "prod then B left free": (19, 20, 0),
    # across the partitions
    "A left: released (wg0) to producer issue (next pair)": (3, 17, 1),
    "A left: producer issue to landed seen by wg0": (17, 6, 0),
    "A right: released (wg1) to landed seen by wg0 (next pair)": (12, 7, 1),
    "B left: released (wg0) to landed seen by wg1 (next pair)": (5, 14, 1),
    "wg1 start minus wg0 start": (0, 8, 0),
}
#: the program's start (pair 0 only): name -> (from event, to event)
START = {"wg0 entry to request start": (21, 24), "wg1 entry to request start": (22, 28),
         "wg0 entry to its schedule row (loop entered)": (21, 34), "wg0 loop entered to request start": (34, 24),
         "wg1 entry to its schedule row (loop entered)": (22, 35), "wg1 loop entered to request start": (35, 28),
         "wg1 entry minus wg0 entry": (21, 22), "producer entry minus wg0 entry": (21, 23),
         "wg0 request start to Q ready": (24, 25), "wg1 request start to Q ready": (28, 29),
         "wg0 entry to first pair start": (21, 0), "producer entry to first pair's A left free": (23, 17)}
#: a request's end (its last pair's index + 1): pages done to stored, and to the next request's first pair
END = {"wg0 pages done to stored": (26, 27), "wg1 pages done to stored": (30, 31),
       "wg0 stored to next Q ready": (27, 25), "wg0 pages done to next first pair": (26, 0)}

#: the variants traced (GluonConfig fields): the tile itself and the probe's VARIANTS, each a switch turned off
CONFIGS = {"base": {}, **VARIANTS}


def summarize(trace: torch.Tensor, skip: int = 2) -> dict:
    """Median and 10th/90th percentiles (cycles) of each interval over the pairs that have both stamps, leaving out
    each program's first `skip` pairs and any pair followed by a request edge (its Q and stores). A buffer written
    before an event existed (fewer events) leaves that event's intervals out."""
    t = trace.cpu().long()  # [programs, pairs, events]
    progs, pairs, n_events = t.shape
    edge = (t[:, :, 24] != 0) | (t[:, :, 28] != 0)  # a request starts before this pair
    out = {}
    for name, (a, b, off) in INTERVALS.items():
        x = t[:, skip:pairs - off, a]
        y = t[:, skip + off:pairs, b]
        ok = (x != 0) & (y != 0)
        if off:
            ok &= ~edge[:, skip + off:pairs]
        d = (y - x)[ok].double()
        if d.numel():
            q = torch.quantile(d, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
            out[name] = {"p10": q[0], "median": q[1], "p90": q[2], "n": int(d.numel())}
    for table, where in ((START, t[:, 0, :]), (END, t.reshape(-1, t.shape[2]))):
        for name, (a, b) in table.items():
            if max(a, b) >= n_events:
                continue
            ok = (where[:, a] != 0) & (where[:, b] != 0)
            d = (where[:, b] - where[:, a])[ok].double()
            if d.numel():
                q = torch.quantile(d, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
                out[name] = {"p10": q[0], "median": q[1], "p90": q[2], "n": int(d.numel())}
    return out


def wall_clock(t: torch.Tensor) -> dict:
    """From the nanosecond stamps (warpgroup 0's entry and last store, events 32-33) and the cycle stamps of the same
    moments (21 and 15, at pair 0): the SM clock during the kernel, the kernel's span from the first program's entry to
    the last program's last store, how far apart the programs started and ended, and a program's own span (µs)."""
    ns0, ns1 = t[:, 0, 32].double(), t[:, 0, 33].double()
    ok = (ns0 != 0) & (ns1 != 0)
    if not ok.any():
        return {}
    cycles = (t[:, 0, 15] - t[:, 0, 21]).double()
    ns0, ns1, cycles = ns0[ok], ns1[ok], cycles[ok]
    return {"sm_clock_in_kernel_mhz": float((cycles / (ns1 - ns0)).median() * 1e3),
            "kernel_span_us": float(ns1.max() - ns0.min()) / 1e3,
            "program_starts_spread_us": float(ns0.max() - ns0.min()) / 1e3,
            "program_ends_spread_us": float(ns1.max() - ns1.min()) / 1e3,
            "program_span_us_median": float((ns1 - ns0).median()) / 1e3}


def sm_clock_mhz() -> float | None:
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20).stdout
        return float(text.split()[0])
    except Exception:
        return None


def run(h_q: int, s_k: int, mode: int, config_name: str = "base", b: int = 128) -> dict:
    from mla_tutorial.kernels import mla_decode_v5, plan, v5_seesaw
    from mla_tutorial.kernels.schedule import get_mla_metadata
    from mla_tutorial.kernels.v5_gluon import GluonConfig
    from mla_tutorial.measure.kernel_bench import bench_ms, shape_inputs

    (q, k, bt, sl), _ = shape_inputs(b, h_q, 1, s_k, "fixed", seed=h_q + s_k)
    meta, splits = get_mla_metadata(sl, h_q, 1)
    config = GluonConfig(mode=mode, **CONFIGS[config_name])
    call = lambda: mla_decode_v5(q, k, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits,  # noqa: E731
                                 path="seesaw", config=config, check_bounds=False)
    plain_ref = call()[0].clone()
    plain_ms = bench_ms(call)
    m_tiles = -(-h_q // 64)
    trace = torch.zeros(meta.shape[0] * m_tiles, int(v5_seesaw.TRACE_PAIRS), int(v5_seesaw.TRACE_EVENTS),
                        dtype=torch.int64, device="cuda")
    plan.clear_plans()
    v5_seesaw.TRACE_BUFFER = trace
    try:
        traced_ms = bench_ms(call)
        trace.zero_()
        out = call()[0]
        torch.cuda.synchronize()
    finally:
        v5_seesaw.TRACE_BUFFER = None
        plan.clear_plans()
    row = {"h_q": h_q, "s_k": s_k, "b": b, "mode": mode, "config": config_name, "programs": trace.shape[0],
           "plain_ms": plain_ms,
           "traced_ms": traced_ms, "traced_equals_plain": bool(torch.equal(out, plain_ref) or mode == 2),
           "intervals_cycles": summarize(trace)}
    # per program: first to last stamp (cycles), for the clock's sanity against the kernel's time
    t = trace.cpu()
    spans = [(int(p[p != 0].max()) - int(p[p != 0].min())) for p in t[:, :, :32] if (p != 0).any()]
    row["program_span_cycles_median"] = float(torch.tensor(spans, dtype=torch.float64).median()) if spans else None
    row.update(wall_clock(t))
    # per program (index program_id(1) * parts + program_id(0)): its entry and last store in ns and its cycles between
    # them, beside the schedule rows of its part (begin_req, begin_block, end_req, end_block, ...): what a program's
    # time is made of (pages, request pieces) and which programs end last
    row["per_program"] = {"ns_entry": t[:, 0, 32].tolist(), "ns_last_store": t[:, 0, 33].tolist(),
                          "cycles": (t[:, 0, 15] - t[:, 0, 21]).tolist(), "meta": meta.cpu().tolist(),
                          "seqlens": sl.cpu().tolist()}
    row["raw_first_programs"] = t[:2].tolist()  # two programs' whole traces, for a closer look
    return row


def main() -> int:
    from mla_tutorial.measure.kernel_bench import save_probe

    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--shapes", default="64:4096,128:4096,64:1024")
    ap.add_argument("--modes", default="0,2")
    ap.add_argument("--configs", default="base", help=f"comma-separated, of {sorted(CONFIGS)}")
    args = ap.parse_args()
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        ap.error(f"--configs: unknown {unknown}; CONFIGS are {sorted(CONFIGS)}")
    rows = []
    clock = sm_clock_mhz()
    print(f"SM clock now: {clock} MHz", flush=True)
    for shape in args.shapes.split(","):
        h_q, s_k = (int(x) for x in shape.split(":"))
        for config_name, mode in ((c, int(m)) for c in args.configs.split(",") for m in args.modes.split(",")):
            try:
                row = run(h_q, s_k, mode, config_name)
            except Exception as e:  # keep the other shapes
                row = {"h_q": h_q, "s_k": s_k, "mode": mode, "config": config_name,
                       "error": f"{type(e).__name__}: {str(e)[:500]}"}
                print(f"h{h_q} sk{s_k} {config_name} mode {mode}: {row['error']}", flush=True)
                rows.append(row)
                continue
            row["sm_clock_mhz"] = clock
            rows.append(row)
            print(f"h{h_q} sk{s_k} {config_name} mode {mode}: plain {row['plain_ms']:.4f} ms, "
                  f"traced {row['traced_ms']:.4f} ms, "
                  f"same output {row['traced_equals_plain']}, program span {row['program_span_cycles_median']}",
                  flush=True)
            if "kernel_span_us" in row:
                print(f"   SM clock in the kernel {row['sm_clock_in_kernel_mhz']:.0f} MHz; tile kernel (first entry to "
                      f"last store) {row['kernel_span_us']:.1f} µs, a program {row['program_span_us_median']:.1f} µs, "
                      f"starts spread over {row['program_starts_spread_us']:.1f} µs, ends over "
                      f"{row['program_ends_spread_us']:.1f} µs", flush=True)
            for name, v in row["intervals_cycles"].items():
                print(f"   {name:58s} {v['median']:8.0f}  [{v['p10']:.0f}, {v['p90']:.0f}]  n={v['n']}", flush=True)
    save_probe(rows, sys.argv)
    if args.out is None:
        json.dump(rows, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
