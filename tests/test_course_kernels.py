"""The course's helpers for notebooks 05–07: the committed results as rows, the exercise solutions, the drawings.

The results tests pin what the notebooks (and docs/kernel.md, docs/fp8.md, docs/results/README.md) say about the
committed files, so that a notebook cannot quietly drift from them. The solutions are checked against the package's
own implementations (the schedule, stage 3's attention, the FP8 quantizer, the cost and capacity models).
"""

from __future__ import annotations

import json
import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from mla_tutorial import MLAConfig, PagedLatentCache, paged_mla_attention  # noqa: E402
from mla_tutorial.course import drawings as D  # noqa: E402
from mla_tutorial.course import kernels as C  # noqa: E402
from mla_tutorial.course import results as R  # noqa: E402
from mla_tutorial.fp8 import ROW_BYTES, dequantize_rows, quantize_rows, tile_scales  # noqa: E402
from mla_tutorial.kernels.schedule import get_mla_metadata_torch  # noqa: E402

SCALE = MLAConfig.deepseek_v3().softmax_scale


# ============================================================================================= results
def test_kernel_runs_of_both_formats_load_with_normalised_names():
    v5 = R.kernel_run(R.KERNELS_V5)
    assert (v5.fmt, v5.card, v5.date) == ("v5", "NVIDIA H200", "2026-12-02")
    assert v5.impls == ["torch_paged", "v1", "v2", "v3", "v4", "v5", "v5_checked", "flashmla"]
    assert round(v5.ceilings.copy_gbps) == 4270 and round(v5.ceilings.matmul_tflops) == 696
    for name in (R.KERNELS_V4_H100, R.KERNELS_V4_H200):
        run = R.kernel_run(name)
        assert run.fmt == "v4" and run.impls == ["torch_paged", "v1", "v2", "v3", "v4"]
    # the issue's H100 numbers: batch 1, 4k context, 16 heads: v2 0.194 -> v3 0.114 -> v4 0.040 ms
    h100 = R.kernel_run(R.KERNELS_V4_H100)
    assert [round(h100.find(v, b=1, h_q=16, s_k=4096).ms, 3) for v in ("v2", "v3", "v4")] == [0.194, 0.114, 0.040]


def test_v5_run_matches_the_table_in_docs_kernel_md():
    run = R.kernel_run(R.KERNELS_V5)
    ratio = {(h, s): run.find("flashmla", b=128, h_q=h, s_k=s).ms / run.find("v5", b=128, h_q=h, s_k=s).ms
             for h in (16, 64, 128) for s in (1024, 4096, 8192)}
    assert [round(ratio[k], 2) for k in [(16, 8192), (64, 4096), (128, 4096)]] == [0.98, 0.66, 0.49]
    row = run.find("v5", b=128, h_q=128, s_k=4096)
    assert row.tile == "gluon" and run.find("v5", b=128, h_q=16, s_k=4096).tile == "small"
    assert row.intensity == pytest.approx(row.flops / row.bytes)
    assert row.roofline_fraction == max(row.frac_copy, row.frac_matmul)
    with pytest.raises(KeyError, match="was measured at"):
        run.find("v1", b=128, h_q=128, s_k=4096)  # v1 was skipped there (too slow)


def test_the_newest_v5_run_matches_the_readme_and_docs_kernel_md():
    """kernels_v5_qtma (three rounds a shape): the ratios README, kernel.md §14 and notebook 05 quote; the newest
    decode step: the README's stage-4 figure and notebook 06's."""
    run = R.kernel_run(R.KERNELS_V5_QTMA)
    ratio = {(h, s): run.find("flashmla", b=128, h_q=h, s_k=s).ms / run.find("v5", b=128, h_q=h, s_k=s).ms
             for h in (16, 64, 128) for s in (1024, 4096, 8192)}
    assert [round(ratio[k], 2) for k in sorted(ratio)] == [0.81, 1.01, 1.04, 0.86, 0.97, 0.95, 0.77, 0.79, 0.77]
    assert sum(t["met"] for t in run.targets if t.get("issue", 8) == 8) == 7
    step = R.pick(R.decode_rows(R.DECODE_BENCH_V5_QTMA), stage=4, heads=128, batch=64, graph=True)
    assert (round(step.latency_ms, 3), step.kernel) == (0.448, "v5")


def test_issue_9_targets_and_stage_5_step_match_the_readme_and_docs_fp8_md():
    """kernels_v5_fp8wgr4 (three rounds a shape; v5 on the wgmma register tile at 16 rows, its page work in fp16 with
    the guard, the FP8 seesaw above): issue 9's ratios as fp8.md §5's targets table quotes them, and the eighteenth
    session's (the mma.sync register tile at 16 rows) it replaced; the decode step of stages 4 and 5
    (decode_bench_fp8wgr4): the README's stage-5 figure."""
    run = R.kernel_run(R.KERNELS_V5_FP8WGR)
    reached = {(t["h_q"], t["s_k"], t["lengths"]): round(t["measured"], 2) for t in run.targets if t.get("issue") == 9}
    assert reached == {(16, 4096, "fixed"): 1.33, (16, 8192, "fixed"): 1.42, (16, 4096, "normal"): 1.21,
                       (64, 4096, "fixed"): 0.77, (64, 8192, "fixed"): 0.70, (128, 4096, "fixed"): 0.59}
    assert {t["v5_tile"] for t in run.targets if t.get("issue") == 9} == {"wgr", "fp8ss"}
    assert {t["v5_tile"] for t in run.targets if t.get("issue") == 9 and t["h_q"] > 16} == {"fp8ss"}
    before = R.kernel_run(R.KERNELS_V5_FP8SS)
    assert [round(t["measured"], 2) for t in before.targets if t.get("issue") == 9 and t["h_q"] == 16] == [
        1.23, 1.35, 1.19]
    at128 = {i: round(run.find(i, b=128, h_q=128, s_k=4096).ms, 3) for i in ("v5_fp8", "v5", "flashmla")}
    assert at128 == {"v5_fp8": 0.428, "v5": 0.317, "flashmla": 0.254}  # the README's stage-5 note
    steps = R.decode_rows(R.DECODE_BENCH_FP8WGR)
    got = {(s, h): round(R.pick(steps, stage=s, heads=h, batch=64, graph=True).latency_ms, 3)
           for s in (4, 5) for h in (128, 16)}
    assert got == {(4, 128): 0.449, (4, 16): 0.281, (5, 128): 0.539, (5, 16): 0.298}


def test_append_kernel_steps_match_the_readme_and_docs():
    """decode_bench_append (the append as one kernel) and the torch append from the same call: the README's stages 4
    and 5, kernel.md §15, fp8.md §6 and notebook 07 quote these (graphs, b 64, S 4k)."""
    steps = R.append_step_ms()
    got = {k: (round(v["torch_ms"], 3), round(v["kernel_ms"], 3)) for k, v in steps.items()}
    assert got == {(4, 128): (0.444, 0.431), (5, 128): (0.535, 0.485), (4, 16): (0.278, 0.263),
                   (5, 16): (0.297, 0.247)}
    assert [round(steps[k]["saved_us"]) for k in ((4, 128), (4, 16), (5, 128), (5, 16))] == [14, 15, 50, 50]
    assert {r.kernel for r in R.decode_rows(R.DECODE_BENCH_APPEND) if r.stage == 4} == {"v5"}
    profile = {k: (round(v["torch_launches"]), round(v["kernel_launches"]), round(v["torch_device_ms"], 3),
                   round(v["kernel_device_ms"], 3)) for k, v in R.append_profile().items()}
    assert profile == {(4, 16): (154, 136, 0.398, 0.373), (5, 16): (188, 126, 0.434, 0.355)}  # kernel.md §15


def test_host_time_rows_match_docs_kernel_md():
    """The call plans' host time (kernel.md §13: 28-59 µs replayed, 129-282 through the full path) and, in the call
    that also timed the kernels, a replayed call shorter than its kernels and a full path longer than them."""
    everything = R.host_plan_rows(run=None)
    assert {r.run for r in everything} == {"call 1", "call 2"}
    assert all(27.5 <= r.planned_us <= 59.5 and 128 <= r.full_path_us <= 283 for r in everything)
    for row in R.host_plan_rows():
        assert row.planned_us < row.gpu_us < row.full_path_us, row
    with pytest.raises(ValueError, match="no rows of run 'call 9'"):
        R.host_plan_rows(run="call 9")


def test_seesaw_pair_phases_match_docs_kernel_md():
    """The traced pair (kernel.md §14): the tile's pair shorter than with its descriptors spilled (7,616 against 9,590
    cycles as medians; one steady pair of program 0 here), each lane's phases in order, the producer's asks instants."""
    phases, periods = R.seesaw_pair_phases()
    assert set(periods) == {"tile", "hoist"} and 7_000 < periods["tile"] < 8_000 < 9_000 < periods["hoist"] < 10_000
    for config in periods:
        for lane in ("warpgroup 0", "warpgroup 1"):
            own = [p for p in phases if p.config == config and p.lane == lane]
            assert all(a.end == b.start for a, b in zip(own, own[1:], strict=False))
            assert all(p.start < p.end for p in own)
        asks = [p for p in phases if p.config == config and p.lane == "producer"]
        assert [p.label for p in asks] == ["A left", "B right", "A right", "B left"]
        assert all(p.start == p.end for p in asks)
    with pytest.raises(ValueError, match="not a seesaw trace"):
        R.seesaw_pair_phases({"name": "x.json", "device": {}})


def test_ablation_steps_pay_where_the_docs_say():
    steps = R.ablation_steps()
    assert [s.idea for s in steps if s.pays] == ["head tiling", "split-KV", "split-KV", "balanced schedule",
                                                 "Gluon tile", "warp specialisation (seesaw)", "small tile"]
    by = {(s.idea, s.after.h_q, s.after.b): s for s in steps}
    split = by["split-KV", 16, 1]  # docs/kernel.md §10: v2 1.50 ms -> v3 0.090 ms at b = 1, 32k keys
    assert (round(split.before.ms, 2), round(split.after.ms, 3)) == (1.50, 0.090)
    assert (round(by["balanced schedule", 16, 128].before.ms, 2), round(by["balanced schedule", 16, 128].after.ms, 2)) \
        == (0.27, 0.21)
    assert (round(by["Gluon tile", 128, 128].before.ms, 2), round(by["Gluon tile", 128, 128].after.ms, 2)) \
        == (0.64, 0.48)
    seesaw = by["warp specialisation (seesaw)", 128, 128]  # docs/kernel.md §11: 0.447 -> 0.393 ms
    assert (round(seesaw.before.ms, 3), round(seesaw.after.ms, 3), seesaw.before.tile, seesaw.after.tile) \
        == (0.447, 0.393, "gluon", "seesaw")
    for step in steps:
        assert step.before.matches(b=step.after.b, h_q=step.after.h_q, s_k=step.after.s_k, lengths=step.after.lengths)
        assert (step.speedup > 1.05) == step.pays, step.idea  # the one that does not pay is within noise of 1


def test_decode_rows_from_the_tour_and_the_benchmarks():
    tour = R.decode_rows(R.DECODE_TOUR)
    assert len(tour) == 18 and {r.stage for r in tour} == {0, 1, 2, 3, 4}
    skipped = R.decode_skipped(R.DECODE_TOUR)
    assert [(s["stage"], s["heads"], s["contexts"]) for s in skipped] == [(0, 128, [16384]), (1, 128, [16384])]
    s4 = next(r for r in tour if (r.stage, r.heads, r.context) == (4, 128, 4096))
    assert (round(s4.latency_ms, 3), round(s4.times_floor, 1), s4.kernel) == (0.731, 4.5, "v4")  # results README
    assert s4.label == "stage 4 TritonMLA (v4)"
    v5 = R.decode_rows(R.DECODE_BENCH_V5)
    assert {r.kernel for r in v5 if r.stage == 4} == {"v5"}
    assert round(next(r for r in v5 if (r.stage, r.heads, r.batch, r.graph) == (4, 128, 64, True)).latency_ms, 3) \
        == 0.557
    profile = [r for r in R.decode_rows(R.DECODE_PROFILE) if r.stage == 4 and r.batch == 64 and r.graph]
    assert all(r.launches > 100 and 0 < r.attention_kernel_ms < r.device_ms for r in profile)
    assert len(R.decode_rows(R.ROOFLINE)) == 3 and len(R.decode_rows(R.DECODE_COVERAGE)) == 16
    assert R.decode_rows(R.DECODE_BENCH_V4)[0].host_ms is None  # graph replays have no host time


def test_decode_rows_read_a_live_benchmark_result():
    """Notebook 06's live cell reads `run_stage_bench`'s dict as it reads the committed files (here on the CPU)."""
    from mla_tutorial.measure.stage_bench import BenchOptions, run_stage_bench

    result = run_stage_bench(BenchOptions(config="tiny", device="cpu", dtype="fp32", contexts=[64], stages=[2, 3],
                                          warmup=1, reps=2, bandwidth_gbs=100.0, peak_tflops=1.0))
    rows = R.decode_rows(result, kernel="v5")
    assert [(r.stage, r.context, r.batch, r.graph) for r in rows] == [(2, 64, 1, False), (3, 64, 1, False)]
    assert all(r.latency_ms > 0 and r.kernel is None for r in rows)  # stages below 4 carry no kernel label
    assert R.ceilings(result).copy_gbps == 100.0


def test_capacity_rows_equal_the_capacity_model():
    from mla_tutorial.measure.capacity import capacity

    committed = R.capacity_rows(R.CAPACITY)
    assert [(r.stage, r.max_sequences) for r in committed.rows] == [(0, 2), (1, 18), (2, 18), (3, 18), (4, 18),
                                                                     (5, 32)]
    live = R.capacity_rows(capacity("deepseek-v3", gpu_memory_bytes=141e9, context=32768))
    assert live.rows == committed.rows and live.tp == committed.tp == 8


def test_fp8_files():
    speed = {(r.impl, r.h_q, r.lengths): r for r in R.fp8_speed_rows()}
    # honest numbers (fp8_bench_wgr4_*): the FP8 path reads 1.75x fewer bytes and takes only 0.76 of bf16 v5's time at
    # h16 (the 16-row tile that dequantizes into registers, on wgmma, v5's choice there; the bytes alone would allow
    # 0.57); at h128 the FP8 seesaw tile (v5's choice above 16 rows) is 2.64x as fast as the small tile
    fp8, bf16 = speed["fp8", 16, "fixed"], speed["bf16_v5", 16, "fixed"]
    assert bf16.bytes / fp8.bytes == pytest.approx(1.75, abs=0.01) and fp8.ms / bf16.ms == pytest.approx(0.76, abs=0.01)
    assert (fp8.tile, bf16.tile, speed["bf16_v5", 128, "fixed"].tile) == ("wgr", "small", "seesaw")
    assert speed["fp8", 64, "fixed"].tile == speed["fp8", 128, "fixed"].tile == "fp8ss"
    assert speed["fp8_small", 128, "fixed"].ms / speed["fp8", 128, "fixed"].ms == pytest.approx(2.64, abs=0.01)
    # the 16-row tiles at h16: on wgmma (0.126 ms), on mma.sync (0.136), with a bf16 page in shared memory (0.210)
    assert [round(speed[i, 16, "fixed"].ms, 3) for i in ("fp8_wgr", "fp8_reg", "fp8_mma")] == [0.126, 0.136, 0.210]
    # the FP8 tiles' parts alone (docs/fp8.md §5), their GPU time (replayed: kernel_ms): at h64 the warp-specialised
    # tile's consumers alone take 0.179 ms and its producer alone 0.187; the FP8 seesaw's consumers alone 0.133, with
    # the raw copies but no dequantization 0.153. At h16 the 16-row tile's products alone take 0.099, its page work
    # alone 0.142
    parts = {(r.impl, r.h_q, r.lengths): r.kernel_ms for r in R.fp8_speed_rows(parts=True)}
    assert round(parts["fp8_ws_consumers_alone", 64, "fixed"], 3) == 0.179
    assert round(parts["fp8_ws_producer_alone", 64, "fixed"], 3) == 0.187
    assert round(parts["fp8_ss_consumers_alone", 64, "fixed"], 3) == 0.133
    assert round(parts["fp8_ss_no_dequant_alone", 64, "fixed"], 3) == 0.153
    assert round(parts["fp8_mma_products_alone", 16, "fixed"], 3) == 0.099
    assert round(parts["fp8_mma_page_work_alone", 16, "fixed"], 3) == 0.142
    # a short part's whole call can be host-bound on a slow host: in fp8_bench_f16k_* the products alone at h16 took
    # 0.142 ms a call, 0.116 replayed
    f16k = {(r.impl, r.h_q, r.lengths): r for r in R.fp8_speed_rows("fp8_bench_f16k_h200_2026-12-02.json", parts=True)}
    products = f16k["fp8_mma_products_alone", 16, "fixed"]
    assert (round(products.ms, 3), round(products.kernel_ms, 3)) == (0.142, 0.116)
    # where each target falls among the parts (the time it asks for: FlashMLA's / the target): at h16 between the
    # 16-row tile's products alone and its page work alone; at h64 between the FP8 seesaw's math alone and its math
    # with the raw copies (so even a free dequantization would miss it); at h128 between the copies with no
    # dequantization and the tile
    asks = {h: parts["flashmla", h, d] / t for (h, d), t in R.fp8_targets().items() if d == "fixed"}
    assert parts["fp8_mma_products_alone", 16, "fixed"] < asks[16] < parts["fp8_mma_page_work_alone", 16, "fixed"]
    assert asks[16] < parts["fp8_wgr_no_dequant_alone", 16, "fixed"] < parts["fp8", 16, "fixed"]  # (wgr's own parts)
    assert parts["fp8_ss_consumers_alone", 64, "fixed"] < asks[64] < parts["fp8_ss_no_dequant_alone", 64, "fixed"]
    assert parts["fp8_ss_no_dequant_alone", 128, "fixed"] < asks[128] < speed["fp8", 128, "fixed"].ms
    assert len(R.fp8_speed_rows(s_k=None)) == 8 * 17 and len(R.fp8_speed_rows(s_k=8192)) == 3 * 17
    # the 16-row tile's page work split (a later probe, docs/results/probes/; notebook 07): its page loads alone
    # (0.140 ms) bind it, not its dequantization (0.093); the whole tile (0.258) is most of the parts' sum
    split = {(r.impl, r.lengths): r for r in R.fp8_page_work_rows()}
    alone = {impl: round(split[impl, "fixed"].ms, 3) for impl in ("fp8_mma_loads_alone", "fp8_mma_dequant_alone",
                                                                 "fp8_mma_page_work_alone", "fp8_mma_products_alone",
                                                                 "fp8_mma", "flashmla")}
    assert list(alone.values()) == [0.140, 0.093, 0.173, 0.117, 0.258, 0.168]
    assert split["fp8_mma_loads_alone", "fixed"].tile == split["fp8_mma_dequant_alone", "fixed"].tile == "mma"
    assert {r.h_q for r in split.values()} == {16}
    # the FP8 seesaw tile and its parts (seventeenth session; docs/fp8.md §5, notebook 07): FlashMLA / it at h64 4k,
    # h128 4k, h64 1k, as the docs quote them
    fss = {(r.impl, r.h_q, r.s_k): round(r.vs_flashmla, 2) for r in R.fp8_seesaw_parts()}
    quoted = {"fp8ss": (0.68, 0.53, 0.66), "fp8ss_compute": (1.31, 1.00, 1.18), "fp8ss_nodeq": (1.06, 0.87, 0.98),
              "fp8ss_quarter": (1.02, 0.81, 0.91), "v5_fp8": (0.69, 0.57, 0.64), "v5": (0.97, 0.82, 0.88)}
    assert {i: tuple(fss[i, h, k] for h, k in ((64, 4096), (128, 4096), (64, 1024))) for i in quoted} == quoted
    assert fp8.gbps == pytest.approx(fp8.bytes / fp8.ms / 1e6)
    assert all(R.fp8_correctness().values()) and len(R.fp8_correctness()) == 66
    rows = R.fp8_row_errors()
    assert len(rows) == 72 and {r.scheme for r in rows} == set(R.FP8_SCHEMES)
    tile = [r.c_kv_rel_frob for r in rows if r.scheme == "tile"]
    assert 0.026 < min(tile) and max(tile) < 0.027  # docs/fp8.md: 2.66 % relative on c_kv
    assert all(r.k_rope_rel_frob == 0 for r in rows if r.scheme == "tile")  # RoPE stays bf16
    attention = R.fp8_attention_errors()
    kernel = [a.rel_frob for a in attention if a.comparison == "kernel"]
    quant = [a.rel_frob for a in attention if a.comparison == "quantization"]
    assert max(kernel) < 0.004 < 0.025 < min(quant)
    decoder = {(d.weight_std, d.comparison): d for d in R.fp8_decoder_rows()}
    assert round(decoder[0.02, "fp8_vs_bf16"].top1_agreement, 3) == 0.978
    assert round(decoder[0.1, "fp8_vs_bf16"].kl_mean, 4) == 0.0096


def test_ceilings_of_every_format():
    assert R.ceilings(R.FP8_BENCH).copy_gbps == pytest.approx(4272.55, abs=0.01)
    assert R.ceilings(R.DECODE_TOUR).matmul_tflops == pytest.approx(699.65, abs=0.01)
    c = R.Ceilings(4000.0, 800.0, "x")
    assert c.ridge == 200.0 and c.floor_ms(800e9, 1e9) == 1.0 and c.floor_ms(1.0, 4e9) == 1.0
    with pytest.raises(ValueError, match="no measured ceilings"):
        R.ceilings({"rows": []})


def test_missing_and_foreign_files_raise_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(R.ResultsMissing, match=r"kernels_nope\.json: no such file .* --kernel"):
        R.load("kernels_nope.json")
    with pytest.raises(ValueError, match="not a kernel-benchmark file"):
        R.kernel_run(R.CAPACITY)
    with pytest.raises(ValueError, match="not a decode-step file"):
        R.decode_rows(R.CAPACITY)
    with pytest.raises(ValueError, match="not a capacity file"):
        R.capacity_rows(R.KERNELS_V5)
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        R.load(bad)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        R.load(tmp_path / "list.json")
    with pytest.raises(TypeError, match="file name, a path or a dict"):
        R.load(3)
    with pytest.raises(R.ResultsMissing, match="no such file"):
        R.load("x.json", directory=tmp_path)
    # from any working directory, the checkout's docs/results is found
    monkeypatch.chdir(tmp_path)
    assert (R.results_dir() / R.KERNELS_V5).is_file()
    # a dict (a live run) is taken as it is
    assert R.load({"a": 1}) == {"a": 1}
    path = R.results_dir() / R.CAPACITY
    assert R.load(path) == json.loads(path.read_text())


def test_pick_finds_exactly_one_row():
    rows = R.decode_rows(R.DECODE_BENCH_V5)
    assert R.pick(rows, stage=4, heads=16, batch=64, graph=True).latency_ms == pytest.approx(0.293, abs=5e-4)
    with pytest.raises(KeyError, match="2 rows match"):
        R.pick(rows, stage=4, heads=16, batch=64)
    with pytest.raises(KeyError, match="0 rows match"):
        R.pick(rows, stage=9)


def test_table_formats_rows():
    rows = R.fp8_speed_rows()[:2]
    text = R.table(rows, [("impl", "impl", "s"), ("ms", "ms", ".3f"), ("GB/s", lambda r: r.gbps, ",.0f")])
    lines = text.splitlines()
    assert lines[0].split() == ["impl", "ms", "GB/s"] and lines[1].split()[:2] == ["fp8", "0.126"]
    assert len({len(line) for line in lines}) == 1  # aligned columns


# ============================================================================================= 05: head tile, schedule
@pytest.mark.parametrize("h_q,s_q,h_kv,rows,block_m,tiles", [
    (16, 1, 1, 16, 16, 1), (16, 2, 1, 32, 32, 1), (32, 1, 1, 32, 32, 1), (64, 1, 1, 64, 64, 1),
    (128, 1, 1, 128, 64, 2), (128, 2, 1, 256, 64, 4), (9, 1, 1, 9, 16, 1), (8, 2, 2, 8, 16, 1), (1, 1, 1, 1, 16, 1)])
def test_head_tiles(h_q, s_q, h_kv, rows, block_m, tiles):
    t = C.head_tiles(h_q, s_q, h_kv)
    assert (t.rows_per_kv, t.block_m, t.tiles, t.page_reads, t.page_reads_v1) == (rows, block_m, tiles, tiles, rows)
    flat = [r for i in range(t.tiles) for r in t.rows_of(i)]
    group = h_q // h_kv
    assert flat == [(r // group, r % group) for r in range(rows)]  # token-major, as the kernels stack them


def test_head_tiles_refuses_bad_arguments():
    for bad in [dict(h_q=0), dict(h_q=16, s_q=True), dict(h_q=12, h_kv=5), dict(h_q=2.0)]:
        with pytest.raises(ValueError):
            C.head_tiles(**bad)
    with pytest.raises(ValueError, match="tile must be in"):
        C.head_tiles(16).rows_of(1)


LENGTHS = [300, 1, 900, 0, 130, 64, 65, 2000, 63]


@pytest.mark.parametrize("parts", [1, 3, 8, 132])
def test_schedule_pieces_cover_every_page_once(parts):
    seqlens = torch.tensor(LENGTHS, dtype=torch.int32)
    meta, splits = get_mla_metadata_torch(seqlens, 16, 1, num_sm_parts=parts)
    pieces = C.schedule_pieces(meta, splits, seqlens)
    assert C.pieces_per_request(pieces, len(LENGTHS)) == (splits[1:] - splits[:-1]).tolist()
    for r, s_k in enumerate(LENGTHS):
        mine = sorted((p for p in pieces if p.request == r), key=lambda p: p.split)
        assert [p.split for p in mine] == list(range(len(mine)))
        keys = [k for p in mine for k in range(*p.keys)]
        assert keys == list(range(s_k))  # every key once, in order
        assert sum(p.pages for p in mine) == -(-s_k // 64)
    units = C.part_units(pieces, parts, 2)  # (16 rows: the small tile's 2 units a piece)
    pages = sum(-(-s // 64) for s in LENGTHS)
    assert sum(units) == pages + 2 * len(pieces)
    assert max(units) <= -(-(pages + 2 * len(LENGTHS)) // parts) + 2  # FlashMLA's walk: at most the payload


def test_schedule_pieces_from_the_triton_schedule_and_a_stale_one():
    from mla_tutorial.kernels import get_mla_metadata

    seqlens = torch.tensor(LENGTHS, dtype=torch.int32)
    meta, splits = get_mla_metadata(seqlens, 16, 1)  # the interpreter's 8-SM default
    pieces = C.schedule_pieces(meta, splits, seqlens)
    assert len(pieces) == int(splits[-1])
    with pytest.raises(ValueError, match="disagree with num_splits"):
        C.schedule_pieces(meta, torch.cat([splits[:1], splits[1:] + 1]), LENGTHS)
    with pytest.raises(ValueError, match="other lengths"):  # the request the schedule split is now shorter
        C.schedule_pieces(meta, splits, LENGTHS[:7] + [100] + LENGTHS[8:])


def _pool(lengths, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    pool = PagedLatentCache(num_blocks=sum(-(-n // 64) for n in lengths) + 4, dtype=dtype, shuffle=True, seed=seed)
    for n in lengths:
        s = pool.allocate()
        if n:
            pool.append([s], torch.randn(1, n, 576, generator=g).to(dtype))
    pool.poison_unused()
    return pool


@pytest.mark.parametrize("parts", [3, 8, 20])
def test_partials_combine_exactly_to_the_whole_attention(parts):
    pool = _pool(LENGTHS, torch.float64)
    k_cache, table, seqlens = pool.k_cache, pool.block_table(), pool.cache_seqlens()
    q = torch.randn(len(LENGTHS), 1, 4, 576, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    meta, splits = get_mla_metadata_torch(seqlens, 4, 1, num_sm_parts=parts)
    pieces = C.schedule_pieces(meta, splits, seqlens)
    ref, ref_lse = paged_mla_attention(q, k_cache, table, seqlens, 512, SCALE)
    split_seen = False
    for r in range(len(LENGTHS)):
        o_parts, lse_parts = C.piece_partials(q, k_cache, table, seqlens, r, pieces, SCALE)
        split_seen |= o_parts.shape[0] > 1
        o, lse = C.combine_partials(o_parts, lse_parts)
        torch.testing.assert_close(o, ref[r], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse, ref_lse[r].transpose(0, 1), rtol=1e-12, atol=1e-12)  # +inf for r = 3
    assert split_seen


def test_combine_partials_edge_cases():
    o = torch.randn(3, 2, 4, dtype=torch.float64)
    empty = torch.full((3, 2), float("inf"), dtype=torch.float64)
    out, lse = C.combine_partials(o, empty)
    assert (out == 0).all() and torch.isposinf(lse).all()
    lse_parts = torch.tensor([[1.0, float("inf")], [float("-inf"), 2.0], [1.0, 2.0]], dtype=torch.float64)
    out, lse = C.combine_partials(o, lse_parts)
    torch.testing.assert_close(out[0], (o[0, 0] + o[2, 0]) / 2)  # equal weights, the empty piece ignored
    torch.testing.assert_close(lse, torch.tensor([1 + math.log(2), 2 + math.log(2)], dtype=torch.float64))
    big = torch.tensor([[1000.0], [1000.0]], dtype=torch.float64)  # no overflow from exp(1000)
    out, lse = C.combine_partials(torch.ones(2, 1, 3, dtype=torch.float64), big)
    assert torch.isfinite(out).all() and lse.item() == pytest.approx(1000 + math.log(2))
    with pytest.raises(ValueError, match="without its last dim"):
        C.combine_partials(o, torch.zeros(3, 3))


def test_piece_partials_refuses_an_unknown_request():
    pool = _pool([100], torch.float64)
    meta, splits = get_mla_metadata_torch(pool.cache_seqlens(), 4, 1, num_sm_parts=2)
    pieces = C.schedule_pieces(meta, splits, pool.cache_seqlens())
    with pytest.raises(ValueError, match="no piece of request 5"):
        C.piece_partials(torch.zeros(1, 1, 4, 576, dtype=torch.float64), pool.k_cache, pool.block_table(),
                         pool.cache_seqlens(), 5, pieces, SCALE)


def test_check_like_flashmla_passes_the_kernel_and_catches_leaks():
    from mla_tutorial.kernels import flash_mla_with_kvcache, get_mla_metadata

    lengths = [1, 70, 0, 130]
    pool = _pool(lengths)
    q = torch.randn(len(lengths), 1, 16, 576, generator=torch.Generator().manual_seed(2)).bfloat16()
    k_cache, table, seqlens = pool.k_cache, pool.block_table(), pool.cache_seqlens()
    meta, splits = get_mla_metadata(seqlens, 16, 1)
    out, lse = flash_mla_with_kvcache(q, k_cache, table, seqlens, 512, meta, splits, softmax_scale=SCALE)
    ref, ref_lse = paged_mla_attention(q.float(), k_cache.float(), table, seqlens, 512, SCALE)
    err = C.check_like_flashmla(out, lse, ref, ref_lse)
    assert 1 - err.cosine < 5e-6
    leaked = out.clone()
    leaked[0, 0, 0, 0] = float("nan")
    with pytest.raises(AssertionError, match="leaked"):
        C.check_like_flashmla(leaked, lse, ref, ref_lse)
    with pytest.raises(AssertionError, match="Frobenius|cosine"):
        C.check_like_flashmla(out * 1.01, lse, ref, ref_lse)
    with pytest.raises(AssertionError, match=r"\+inf"):
        C.check_like_flashmla(out, torch.zeros_like(lse), ref, ref_lse)
    with pytest.raises(AssertionError, match="LSE differs"):
        C.check_like_flashmla(out, torch.where(torch.isinf(lse), lse, lse + 1e-3), ref, ref_lse)


# ============================================================================================= 06: profiling
KINDS = {0: "mha", 1: "latent", 2: "absorbed", 3: "absorbed", 4: "absorbed"}


def test_step_floor_and_cost_reproduce_the_tour_records():
    ceilings = R.ceilings(R.DECODE_TOUR)
    for r in R.decode_rows(R.DECODE_TOUR):
        config = MLAConfig.deepseek_v3(num_heads=r.heads)
        floor = C.step_floor_ms(config, KINDS[r.stage], r.context, r.batch, ceilings.copy_gbps,
                                ceilings.matmul_tflops)
        assert floor == pytest.approx(r.roofline_ms, rel=1e-9)
        assert C.usd_per_million_tokens(r.latency_ms, r.batch) == pytest.approx(r.usd_per_million_tokens, rel=1e-9)


def test_sequences_per_gpu_reproduces_the_capacity_file():
    cap = R.capacity_rows()
    for row in cap.rows:
        assert C.sequences_per_gpu(row.bytes_per_token_per_layer, cap.context) == row.max_sequences
    assert C.sequences_per_gpu(656, 32768, gpu_memory_bytes=1e9) == 0  # the weights do not even fit


# ============================================================================================= 07: the FP8 row
def test_fp8_fields_tile_the_row():
    fields = C.fp8_fields()
    assert fields[0].start == 0 and fields[-1].end == ROW_BYTES == 656
    assert all(a.end == b.start for a, b in zip(fields, fields[1:], strict=False))
    assert [f.nbytes for f in fields] == [128] * 4 + [4] * 4 + [128]


@pytest.mark.parametrize("amax", [0.0, -0.0, 1e-30, 0.0448, 0.0448 * 2, 0.04480001, 0.0546875, 1.0, 5.40625, 224.0,
                                  448.0, 448.0001, 896.0, 3e38, float("inf"), float("nan")])
def test_scale_by_hand_is_the_quantizers_scale(amax):
    expected = tile_scales(torch.tensor([amax])).item()
    got = C.scale_by_hand(amax)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_read_fields_and_latent_rows():
    rows = C.latent_rows(MLAConfig.tiny(), 16)
    assert rows.shape == (16, 576) and rows.dtype == torch.bfloat16
    assert 0.9 < rows[:, :512].float().pow(2).mean().sqrt() < 1.1  # c_kv leaves an RMSNorm
    row8 = quantize_rows(rows[5])
    f = C.read_fields(row8)
    deq = dequantize_rows(row8)
    assert torch.equal((f["values"].view(4, 128) * f["scales"][:, None]).flatten().bfloat16(), deq[:512])
    assert torch.equal(f["k_rope"], rows[5, 512:]) and torch.equal(f["k_rope"], deq[512:])
    assert torch.equal(f["scales"], tile_scales(rows[5, :512].float().view(4, 128).abs().amax(-1)))
    with pytest.raises(ValueError, match="656-byte row"):
        C.read_fields(quantize_rows(rows[:2]))
    with pytest.raises(ValueError, match="576-wide"):
        C.latent_rows(MLAConfig.tiny(kv_lora_rank=256), 4)


def test_fp8_ms_if_as_efficient():
    speed = {(r.impl, r.h_q, r.lengths): r for r in R.fp8_speed_rows()}
    fp8, bf16 = speed["fp8", 16, "fixed"], speed["bf16_v5", 16, "fixed"]
    ideal = C.fp8_ms_if_as_efficient(bf16.ms, bf16.bytes, fp8.bytes)
    assert ideal == pytest.approx(bf16.ms / 1.7464, rel=1e-3) and round(ideal, 3) == 0.095


def test_fp8_error_split_separates_quantization_from_the_kernel():
    pool = _pool([70, 130, 1])
    q = torch.randn(3, 1, 16, 576, generator=torch.Generator().manual_seed(3)).bfloat16()
    split = C.fp8_error_split(q, pool.k_cache, pool.block_table(), pool.cache_seqlens(), SCALE)
    assert set(split) == {"stage5_vs_stage4", "quantization", "kernel", "bf16_kernel"}
    assert split["kernel"].rel_frob < 2**-8 and split["bf16_kernel"].rel_frob < 2**-8
    assert 0.01 < split["quantization"].rel_frob < 0.06 and split["kernel"].rel_frob < split["quantization"].rel_frob


# ============================================================================================= drawings
def test_wgr_trace_and_kernel_split_as_notebook_07_and_fp8_md_quote():
    """The wgmma register tile's own stamps at h_q 16, b 128, s_k 4k (notebook 07, docs/fp8.md §5): 256 programs with
    32 pages each; a program's median 9.8 µs before its first page is in (2.2 + 0.9 + the copy's 6.5), 3.17 µs a page,
    4.5 µs after its last page; the median program ends at 120.6 µs, the last at 127.8; FlashMLA's kernel 161.9 µs
    (its / 1.5: 108.0) against our tile's 120.0 and combine 3.9."""
    t = R.wgr_trace()
    m = t.medians
    assert len(t.spans) == 256 and {p.pages for p in t.spans} == {32}
    assert [round(m[k], 2) for k in ("entry_to_first_page_landed", "entry_to_request_start",
                                     "request_start_to_first_copy_issued", "page_period_steady",
                                     "last_page_end_to_exit")] == [9.76, 2.24, 0.9, 3.17, 4.51]
    exits = sorted(p.exit for p in t.spans)
    assert round(exits[128], 1) == 120.6 and round(exits[-1], 1) == 127.8 == round(t.kernel_span, 1)
    assert all(p.entry <= p.first_landed <= p.exit for p in t.spans)
    k = R.kernel_split_us()
    assert (k["ours"], k["ours_combine"], k["flashmla"], k["flashmla_combine"]) == (119.98, 3.94, 161.93, 1.34)
    assert {p.pages for p in R.wgr_trace(s_k=64).spans} == {1} and R.kernel_split_us(s_k=64)["ours"] == 15.73
    with pytest.raises(ValueError, match="no stamped call at s_k 999"):
        R.wgr_trace(s_k=999)
    with pytest.raises(ValueError, match="not a stamped wgmma register tile"):
        R.wgr_trace({"name": "x.json", "device": {}})


def test_wgr_modes_as_notebook_07_and_fp8_md_quote():
    """The wgmma register tile's page work in fp16 (MODE 4, opt-in then) and without dequantization (MODE 3) beside
    the tile (its page work in bf16) and FlashMLA in the same rounds (notebook 07, docs/fp8.md §5): FlashMLA / ours
    1.30 / 1.33 / 1.41 at 4k, 1.36 / 1.41 / 1.50 at 8k; against the fp32 reference MODE 4 at 1.66e-3, the tile at
    1.81e-3 (the bf16 call's to three digits), and all three equal when the cache is scaled by 2^-20 (every P is 1).
    Then MODE 4's guard (docs/fp8.md §5's table): bf16 page work / fp16 without the guard / with it 1.30 / 1.32 /
    1.32 at 4k, 1.36 / 1.42 / 1.41 at 8k, 0.94 / 0.94 / 0.93 at 1k, 1.22 each at ~N."""
    r4, r8 = R.wgr_mode_ratios(), R.wgr_mode_ratios(s_k=8192)
    assert [round(r4[k], 2) for k in ("tile", "mode4", "mode3")] == [1.30, 1.33, 1.41]
    assert [round(r8[k], 2) for k in ("tile", "mode4", "mode3")] == [1.36, 1.41, 1.50]
    e = R.wgr_mode_errors()
    assert [round(e[1.0][k], 5) for k in ("bf16_call", "tile", "mode4")] == [0.00181, 0.00181, 0.00166]
    assert e[2.0**-10]["mode4"] < e[2.0**-10]["tile"] and e[2.0**-20]["mode4"] == e[2.0**-20]["tile"]
    with pytest.raises(ValueError, match="no rounds at s_k 999"):
        R.wgr_mode_ratios(s_k=999)
    guard = {s_k: R.wgr_mode_ratios(R.WGR_GUARD_RUN, s_k=s_k) for s_k in (4096, 8192, 1024)}
    guard["~N"] = R.wgr_mode_ratios(R.WGR_GUARD_RUN_NORMAL, dist="normal")
    assert {k: [round(r[m], 2) for m in ("tile", "mode4_no_guard", "mode4")] for k, r in guard.items()} == {
        4096: [1.30, 1.32, 1.32], 8192: [1.36, 1.42, 1.41], 1024: [0.94, 0.94, 0.93], "~N": [1.22, 1.22, 1.22]}
    assert "mode4_no_guard" not in r4 and "mode3" not in guard[4096]  # (each file's own variants only)
    with pytest.raises(ValueError, match="no rounds at s_k 4096 with normal lengths"):
        R.wgr_mode_ratios(R.WGR_GUARD_RUN, dist="normal")


def test_drawings_return_figures():
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    seqlens = torch.tensor(LENGTHS, dtype=torch.int32)
    meta, splits = get_mla_metadata_torch(seqlens, 16, 1, num_sm_parts=8)
    pieces = C.schedule_pieces(meta, splits, seqlens)
    fig = D.schedule_timeline(pieces, 8, LENGTHS, overhead=2, payload=20)
    boxes = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert len(boxes) == sum(1 for p in pieces if p.pages) + len(pieces)  # pages, and every piece's fixed cost
    row8 = quantize_rows(C.latent_rows(MLAConfig.tiny(), 1)[0])
    fig = D.fp8_row(row8)
    assert sum(isinstance(p, Rectangle) for p in fig.axes[0].patches) == 656
    with pytest.raises(ValueError, match="656-byte row"):
        D.fp8_row(row8[:100])
    pool = _pool([2000], torch.float64)
    meta, splits = get_mla_metadata_torch(pool.cache_seqlens(), 4, 1, num_sm_parts=4)
    pcs = C.schedule_pieces(meta, splits, pool.cache_seqlens())
    q = torch.randn(1, 1, 4, 576, dtype=torch.float64)
    _, lse_parts = C.piece_partials(q, pool.k_cache, pool.block_table(), pool.cache_seqlens(), 0, pcs, SCALE)
    tour = R.decode_rows(R.DECODE_TOUR)
    figures = [D.head_tile(C.head_tiles(16, 2)), D.head_tile(C.head_tiles(128)), D.warpgroup_split(),
               D.combine_weights(lse_parts, heads=(0, 1), request=0),
               D.ablation_chart(R.ablation_steps(), [R.kernel_run(R.KERNELS_V5)]),
               D.kernel_roofline([R.kernel_run(R.KERNELS_V4_H100)]),
               D.stage_roofline([r for r in tour if r.context == 4096], R.ceilings(R.DECODE_TOUR),
                                R.fp8_speed_rows(), R.ceilings(R.FP8_BENCH)),
               D.latency_panels([r for r in tour if r.batch == 64], R.decode_rows(R.DECODE_BENCH_V5)),
               D.capacity_and_cost(R.capacity_rows(), [r for r in tour if r.context == 4096]),
               D.fp8_speed_bars(R.fp8_speed_rows(), {(16, "fixed"): 0.107}),
               D.fp8_tile_parts(R.fp8_speed_rows(parts=True), R.fp8_targets()),
               D.fp8_page_work_split(R.fp8_page_work_rows()),
               D.host_time_bars(R.host_plan_rows()), D.seesaw_pair_timeline(*R.seesaw_pair_phases()),
               D.fp8_seesaw_parts(R.fp8_seesaw_parts(), {64: 1.2, 128: 0.8}),
               D.program_timeline(R.wgr_trace(), R.kernel_split_us()["flashmla"], 1.5),
               D.program_timeline(R.wgr_trace())]
    assert all(isinstance(f, Figure) for f in figures)
    # the parts drawing names the tile v5 chose at each shape: the wgmma register tile at 16 heads (notebook 07)
    ticks = [t.get_text() for t in D.fp8_tile_parts(R.fp8_speed_rows(parts=True)).axes[0].get_xticklabels()]
    assert [t.split("\n")[1] for t in ticks] == ["wgmma register tile"] * 2 + ["FP8 seesaw tile"] * 2


def test_step_schedule_rows_as_notebook_06_and_kernel_md_quote():
    """step_schedule_* (a 4-layer decoder, the schedule once a step against once a layer): the figures notebook 06,
    docs/kernel.md §6 and the bench report's note quote (10-13 µs a layer; stage 5 2.539 → 2.509 ms at 128 heads,
    1.602 → 1.564 at 16)."""
    rows = R.step_schedule_rows(R.STEP_SCHEDULE)
    got = {(r.stage, r.heads): (round(r.shared_ms, 3), round(r.per_layer_ms, 3), round(r.saved_per_layer_us, 1))
           for r in rows}
    assert got == {(4, 128): (2.153, 2.191, 12.8), (5, 128): (2.509, 2.539, 10.0), (4, 16): (1.464, 1.5, 12.0),
                   (5, 16): (1.564, 1.602, 12.6)}
    assert {(r.layers, r.batch, r.context) for r in rows} == {(4, 64, 4096)}
