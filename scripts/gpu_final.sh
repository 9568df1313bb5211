#!/usr/bin/env bash
# One GPU call for the results the docs quote: the seesaw tile's correctness probe and its parts against the lockstep
# tile and FlashMLA, the GPU tests, the kernel benchmark beside FlashMLA, the FP8 path, and the decode step at serving
# shapes. Each step is time-boxed and logged to $OUT; when the seesaw check fails, the steps after it are skipped.
# Carry .peers (FlashMLA, see ../shared/flashmla/README.md).
#   STEPS="sched check time tests kernels fp8 decode" scripts/gpu_final.sh   (tests: ~330 s, mostly compiles)
# Steps not in the default list: plans (call plans' GPU cases and host time), regvar (v5_fp8_reg.py's prepared variants), regpick (the fastest of them for the steps after), fp8final (the FP8 results the course shows), fp8all (every FP8 Gluon tile's GPU cases, then their timing), reg (v5_fp8_reg.py's cases and timing), mma (the 16-row FP8 tile's GPU cases, then its timing and its parts beside the other
# FP8 tiles), ncu, stalls, sass (Nsight Compute's counters for the FP8 tiles; scripts/gpu_ncu_fp8.py), trace (the seesaw
# tile's cycle stamps, scripts/gpu_seesaw_trace.py), parts (the schedule's part count and fixed overhead timed beside
# FlashMLA, scripts/gpu_parts_sweep.py; PARTS_ARGS="--grid wide --rounds 2" for the wide grid), split (each kernel's device time in v5's call and FlashMLA's, scripts/gpu_kernel_split.py), fp8ss (the FP8 seesaw
# tile: its GPU matrix cases, 1 and TPS tiles a producer step, then its 8 hostile cases and its timing with TPS,
# default 4, beside v5's FP8 choice and FlashMLA; scripts/gpu_fp8_seesaw_probe.py), stepsched (one schedule per
# decode step: the decoder's graph GPU tests and tests/test_step.py, then scripts/gpu_step_schedule.py), wgr (the
# register tile on wgmma, v5_fp8_wgr.py: its GPU cases, then its h16 timing beside the other 16-row FP8 tiles), wgrtrace (that tile's own time stamps, scripts/gpu_wgr_trace.py), split8 (gpu_kernel_split.py --fp8-h16), wgrf16 (the
# tile's MODE 4, v5's default since 2026-12-04: V and P·scale in fp16, its GPU build, timed, stamped and run on the GPU
# cases), guard (MODE 4's guard of fp16's range: the build with and without it, the GPU cases, timed), wgracc (its error
# and the tile's against the fp32 reference, the cache scaled down), tail (the call's tail after the main kernel:
# scripts/gpu_call_tail.py), append (the decode step's append as one kernel: its GPU tests and stages 4 / 5's, then
# the decode step of stages 4 and 5 with it, with stage_4.APPEND_KERNEL False, and with it again). The seesaw probe's check and time steps include its VARIANTS.
set -u -o pipefail
OUT=${OUT:-out/gpu_final}
STEPS=${STEPS:-sched check time tests kernels fp8 decode}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 COLUMNS=200
PY=${PYTHON:-python3}
PEERS=$PWD/.peers/flashmla
has() { [[ " $STEPS " == *" $1 "* ]]; }
step() {  # step NAME SECONDS command...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0)) s"
  tail -n ${TAIL:-25} "$OUT/$name.log" | cut -c1-260
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.limit --format=csv \
  | tee "$OUT/nvidia_smi.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/nvidia_smi.txt"
git rev-parse HEAD >> "$OUT/nvidia_smi.txt" 2>/dev/null || true
# the schedule kernel against its Python reference on the GPU (tests/test_schedule.py is not marked gpu: it runs on
# whatever device there is, the interpreter's on a CPU)
has sched && step sched 120 env PYTHONPATH=src:tests $PY -m pytest tests/test_schedule.py -q -p no:cacheprovider
if has sched && { ! grep -q " passed" "$OUT/sched.log" || grep -q "failed\|error" "$OUT/sched.log"; }; then
  echo "=== the schedule kernels disagree with their reference: the other steps are skipped"; STEPS=""
fi
has check && step check 300 env PYTHONPATH=$PEERS:src:tests $PY scripts/gpu_seesaw_probe.py --out "$OUT/check.json" \
  --check-only --check-variants "${CHECK_VARIANTS-nomf,hoist,syncq}"
if has check && { ! grep -q "^PASS" "$OUT/check.log" || grep -q "^FAIL" "$OUT/check.log"; }; then
  echo "=== the seesaw check failed: the other steps are skipped"; STEPS=""
fi
has time && step time 300 env PYTHONPATH=$PEERS:src:tests $PY scripts/gpu_seesaw_probe.py --out "$OUT/time.json" \
  --skip-check --time-variants "${TIME_VARIANTS-nomf,hoist,syncq}"
has tests && step tests ${TEST_LIMIT:-420} env PYTHONPATH=src:tests $PY -m pytest -m gpu tests/test_kernels_gpu.py \
  tests/test_fp8.py tests/test_graphs_gpu.py tests/test_contract_gpu.py tests/test_plan_gpu.py -q -p no:cacheprovider \
  --durations=5 \
  -k "${TEST_K:-not v1_naive and not v2_head and not v3_split}"
# call plans (kernels/plan.py): their GPU cases beside v5's and the graph tests, then host time planned against the
# full path (scripts/gpu_host_profile.py --plans)
has plans && step plan_tests ${PLAN_LIMIT:-300} env PYTHONPATH=src:tests $PY -m pytest -m gpu tests/test_plan_gpu.py \
  tests/test_graphs_gpu.py tests/test_kernels_gpu.py tests/test_fp8.py -q -p no:cacheprovider --durations=5 \
  -k "plan or graph or (matrix and v5) or (matrix and reg) or api"
has plans && step host_plans 150 env PYTHONPATH=src $PY scripts/gpu_host_profile.py --plans
has trace && step trace 300 env PYTHONPATH=src $PY scripts/gpu_seesaw_trace.py --out "$OUT/trace.json" \
  --configs ${TRACE_CONFIGS:-base} --modes ${TRACE_MODES:-0} --shapes ${TRACE_SHAPES:-64:4096,128:4096,64:1024}
has parts && step parts ${PARTS_LIMIT:-150} env PYTHONPATH=$PEERS:src $PY scripts/gpu_parts_sweep.py \
  --out "$OUT/parts.json" ${PARTS_ARGS:-}
has split && step split 150 env PYTHONPATH=$PEERS:src $PY scripts/gpu_kernel_split.py --out "$OUT/split.json"
has kernels && step kernels ${KERNELS_LIMIT:-300} env PYTHONPATH=$PEERS:src $PY -m mla_tutorial bench --kernel --shapes targets,ablation \
  --out "$OUT/kernels.json"
has fp8 && step fp8 120 env PYTHONPATH=$PEERS:src:tests $PY scripts/gpu_fp8_bench.py --quick --mma --parts \
  --sections env,correctness,timing --out "$OUT/fp8.json"
has decode && step decode 150 env PYTHONPATH=src $PY -m mla_tutorial bench --device cuda --config deepseek-v3 \
  --stages 2 4 --heads 128 16 --batch 1 8 64 --context 4096 --graphs both --warmup 5 --reps 30 \
  --out "$OUT/decode.json"
has mma && step mma_tests 200 env MLA_FP8_MMA8=1 PYTHONPATH=src:tests $PY -m pytest -m gpu tests/test_fp8.py -q -x \
  -p no:cacheprovider -k "matrix and mma"
if has mma && grep -q " passed" "$OUT/mma_tests.log" && ! grep -q "failed\|error" "$OUT/mma_tests.log"; then
  step mma_bench 300 env PYTHONPATH=$PEERS:src:tests $PY scripts/gpu_fp8_bench.py --quick --mma --parts \
    --sections env,correctness,timing --out "$OUT/mma.json"
fi
# the 16-row FP8 tile that dequantizes into its operand registers (v5_fp8_reg.py, prepared): its hostile GPU cases,
# then the h16 timing beside the other FP8 tiles and FlashMLA
has reg && step reg_tests ${REG_LIMIT:-150} env PYTHONPATH=src:tests $PY -m pytest -m gpu \
  tests/test_fp8.py -q -x -p no:cacheprovider -k "matrix and reg"
if has reg && grep -q " passed" "$OUT/reg_tests.log" && ! grep -q "failed\|error" "$OUT/reg_tests.log"; then
  step reg_bench 200 env PYTHONPATH=$PEERS:src:tests $PY scripts/gpu_fp8_bench.py --quick --mma \
    --heads 16 --sections env,timing --out "$OUT/reg.json"
fi
# the register tile's prepared variants (v5_fp8_reg.REG_VARIANTS, opt-in with MLA_FP8_REG_VARIANTS=1): their hostile
# GPU cases in one run (no -x: each variant's failures are listed), then the h16 timing of those that passed all
# theirs beside the default
if has regvar; then
  VARIANTS=$(PYTHONPATH=src $PY -c "from mla_tutorial.kernels.v5_fp8_reg import REG_VARIANTS; print(*REG_VARIANTS)")
  step regvar_tests ${REG_LIMIT:-300} env MLA_FP8_REG_VARIANTS=1 PYTHONPATH=src:tests $PY -m pytest -m gpu \
    tests/test_fp8.py -q -rfE -p no:cacheprovider -k "(matrix or wide_ranges) and reg-"
  PASSED=""
  if grep -qE "[0-9]+ (passed|failed)" "$OUT/regvar_tests.log"; then  # the run finished
    for v in $VARIANTS; do
      grep -qE "^(FAILED|ERROR) .*reg-$v\]" "$OUT/regvar_tests.log" || PASSED="$PASSED $v"  # (ids end in the path)
    done
  fi
  echo "=== regvar: variants that passed their GPU cases:${PASSED:- none}" | tee "$OUT/regvar_passed.txt"
  [ -n "$PASSED" ] && step regvar_bench 240 env MLA_FP8_REG_VARIANTS="$PASSED" PYTHONPATH=$PEERS:src:tests $PY \
    scripts/gpu_fp8_bench.py --quick --mma --heads 16 --sections env,timing --out "$OUT/regvar.json"
fi
# regpick (after regvar): the fastest of the register tile's variants at h16 (mean of both shapes, at least 1 %
# faster than the default, its GPU cases passed) becomes REG_KNOBS, which the fp8final and sass steps then run with
# (scripts/with_knobs.py; a commit makes it the default afterwards)
REG_KNOBS=${REG_KNOBS:-}
if has regpick && [ -s "$OUT/regvar.json" ]; then
  REG_KNOBS=$($PY - "$OUT/regvar.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
rows = run["timing"]
knobs = {"fp8_reg": ""} | {name: " ".join(f"{k}={int(v)}" for k, v in set_.items())  # (gpu_fp8_bench's REG_VARIANTS)
                           for name, set_ in run["env"]["info"].get("reg_variants", {}).items()}
def mean(name):
    ms = [r["ms"].get(name) for r in rows]
    return sum(ms) / len(ms) if ms and all(isinstance(m, float) for m in ms) else None
timed = {k: mean(k) for k in knobs if mean(k) is not None}
best = min(timed, key=timed.get)
print(knobs[best] if "fp8_reg" in timed and timed[best] < 0.99 * timed["fp8_reg"] else "")
PY
)
  echo "=== regpick: REG_KNOBS='$REG_KNOBS'" | tee "$OUT/regpick.txt"
fi
KN="scripts/with_knobs.py $REG_KNOBS --"
# the FP8 results the course shows, after a change of the FP8 routing: the whole FP8 benchmark (every shape, the
# correctness section, the tiles' parts; docs/results/fp8_bench_*), the FP8 GPU tests through v5's choice (the
# hostile matrix of the routed 16-row tile included), then the decode step of stages 4 and 5 (decode_bench_fp8*)
has fp8final && step fp8_full ${FP8_FULL_LIMIT:-300} env PYTHONPATH=$PEERS:src:tests $PY $KN scripts/gpu_fp8_bench.py \
  --mma --parts --sections env,correctness,timing --out "$OUT/fp8_full.json"
has fp8final && step fp8_tests 150 env PYTHONPATH=src:tests $PY $KN -m pytest -m gpu tests/test_fp8.py \
  -q -x -p no:cacheprovider -k "not matrix or wgr"
has fp8final && step decode_fp8 ${DECODE_LIMIT:-120} env PYTHONPATH=src $PY $KN -m mla_tutorial bench \
  --device cuda --config deepseek-v3 --stages 4 5 --heads 128 16 --batch 64 --context 4096 --graphs both --warmup 5 --reps 30 \
  --out "$OUT/decode_fp8.json"
# every FP8 Gluon tile at once (after a change to the page work they share, e.g. the dequantization): their hostile
# GPU cases (the 16-row tiles with 4 and 8 warps and the warp-specialised 16-row tile included), then their timing and
# the 16-row tile's parts at h_q $HEADS (default 16) beside FlashMLA
has fp8all && step fp8all_tests ${FP8ALL_LIMIT:-240} env MLA_FP8_MMA8=1 PYTHONPATH=src:tests $PY -m pytest \
  -m gpu tests/test_fp8.py -q -x -p no:cacheprovider -k "matrix"
if has fp8all && grep -q " passed" "$OUT/fp8all_tests.log" && ! grep -q "failed\|error" "$OUT/fp8all_tests.log"; then
  step fp8all_bench 240 env PYTHONPATH=$PEERS:src:tests $PY scripts/gpu_fp8_bench.py --quick --mma \
    --parts --heads ${HEADS:-16} --sections env,timing --out "$OUT/fp8all.json"
fi
# Nsight Compute's counters for the FP8 tiles at h16 and the bf16 seesaw tile at h64 (b 128, s_k 4k): where each
# stalls (warp states), what each saturates (speed of light, memory and compute pipes), how many programs fit
has ncu && step ncu ${NCU_LIMIT:-240} ncu --clock-control none -k "regex:_v5_fp8_mma_kernel|_v5_fp8_ws_kernel|_ss_kernel" \
  -c 3 --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
  --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats \
  env PYTHONPATH=src $PY scripts/gpu_ncu_fp8.py
# the same kernels' stall reasons (warps per issued instruction stalled on each reason: the warp-state chart in text)
has stalls && step stalls ${NCU_LIMIT:-240} ncu --clock-control none \
  -k "regex:_v5_fp8_mma_kernel|_v5_fp8_ws_kernel|_ss_kernel" -c 3 \
  --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
  env PYTHONPATH=src $PY scripts/gpu_ncu_fp8.py
# one kernel's stalls per SASS instruction (warp-state sampling; csv, one row per instruction; summarise with
# scripts/ncu_sass_summary.py): SASS_ONLY=mma (the 16-row FP8 tile, h16), ws (the warp-specialised FP8 tile, h16),
# reg (the 16-row tile dequantizing into registers, h16), ksplit (that tile with the warps splitting S's reduction),
# wgr (that tile on wgmma, both products transposed) or seesaw (the bf16 seesaw tile, h64); SASS_SECTIONS: more
# ncu sections in the same pass (their details page to ${only}_details.txt); REG_KNOBS (or regpick's pick):
# v5_fp8_reg.py's knobs for it, through scripts/with_knobs.py (e.g. "REG_MAXNREG=240")
sass_page() {
  local only=${SASS_ONLY:-mma}
  local kernel=$(case $only in mma) echo _v5_fp8_mma_kernel;; ws) echo _v5_fp8_ws_kernel;; reg) echo _v5_fp8_reg_kernel;;
    ksplit) echo _v5_fp8_ksplit_kernel;; wgr) echo _v5_fp8_wgr_kernel;; *) echo _ss_kernel;; esac)
  ncu --clock-control none -k "regex:$kernel" -c 1 --section SourceCounters --section WarpStateStats \
    ${SASS_SECTIONS:-} \
    --export "$OUT/${only}_sass" --force-overwrite env PYTHONPATH=src $PY scripts/with_knobs.py ${REG_KNOBS:-} -- \
    scripts/gpu_ncu_fp8.py --only "$only" &&
  { [ -z "${SASS_SECTIONS:-}" ] || ncu -i "$OUT/${only}_sass.ncu-rep" --page details > "$OUT/${only}_details.txt"; } &&
  { ncu -i "$OUT/${only}_sass.ncu-rep" --page source --csv --print-source sass ||
    ncu -i "$OUT/${only}_sass.ncu-rep" --page source --csv; }
}
export -f sass_page; export OUT PY SASS_ONLY SASS_SECTIONS REG_KNOBS
has sass && step sass ${NCU_LIMIT:-240} bash -c sass_page
# the FP8 seesaw tile (v5_fp8_seesaw.py): its GPU matrix cases (fp8ss, fp8ss-t1), then the probe: its 8 hostile cases
# with 1 tile a step and with TPS, every shape timed beside v5's FP8 choice, bf16 v5 and FlashMLA
has fp8ss && step fp8ss_tests ${FP8SS_LIMIT:-200} env PYTHONPATH=src:tests $PY -m pytest -m gpu tests/test_fp8.py -q \
  -p no:cacheprovider -k "fp8ss"
has fp8ss && step fp8ss_probe ${FP8SS_PROBE_LIMIT:-400} env PYTHONPATH=$PEERS:src:tests $PY scripts/gpu_fp8_seesaw_probe.py \
  --out "$OUT/fp8ss.json" --tps "${TPS:-4}" ${FP8SS_ARGS:-}
# one schedule per decode step (mla_tutorial.step): the decoder's CUDA-graph and no-sync GPU tests with the shared
# schedule, tests/test_step.py on the GPU, then the 4-layer step timed with the schedule shared and per layer
has stepsched && step stepsched_tests ${STEPSCHED_LIMIT:-240} env PYTHONPATH=src:tests $PY -m pytest \
  tests/test_graphs_gpu.py tests/test_step.py -q -p no:cacheprovider -k "decoder or step or schedule"
has stepsched && step stepsched_time 200 env PYTHONPATH=src $PY scripts/gpu_step_schedule.py \
  --out "$OUT/step_schedule.json" --layers ${LAYERS:-4}
# the register tile on wgmma (v5_fp8_wgr.py, v5's choice at up to 16 rows since 2026-12-03): its parts on one page (tests/test_wgr_gpu.py) and its GPU
# cases (the hostile matrix, the wide ranges), then
# the h16 timing beside the other 16-row FP8 tiles, bf16 v5 and FlashMLA
has wgr && step wgr_tests ${WGR_LIMIT:-240} env PYTHONPATH=src:tests $PY -m pytest -m gpu \
  tests/test_wgr_gpu.py tests/test_fp8.py -q -p no:cacheprovider -k "wgr"
if has wgr && grep -q " passed" "$OUT/wgr_tests.log" && ! grep -q "failed\|error" "$OUT/wgr_tests.log"; then
  step wgr_bench 200 env PYTHONPATH=$PEERS:src:tests $PY scripts/gpu_fp8_bench.py --quick --mma --heads 16 \
    --sections env,timing --out "$OUT/wgr.json"
  # WGR_NCU=1: then its warp-state samples per SASS instruction (sass_page, ~150 s)
  [ "${WGR_NCU:-0}" = 1 ] && step wgr_sass ${NCU_LIMIT:-240} env SASS_ONLY=wgr bash -c sass_page
fi
# the wgmma register tile's fixed cost (twenty-second session): its own time stamps at b 128, h16 (s_k 64-4k, fixed
# lengths, then ~N(4096, 2048); scripts/gpu_wgr_trace.py), then each kernel's device time in v5's FP8 call and
# FlashMLA's bf16 call at s_k 64-8k (scripts/gpu_kernel_split.py --fp8-h16)
has wgrtrace && step wgrtrace ${WGRTRACE_LIMIT:-200} env PYTHONPATH=$PEERS:src $PY scripts/gpu_wgr_trace.py \
  --out "$OUT/wgrtrace.json" --sk ${WGRTRACE_SK:-64,256,1024,4096}
has wgrtrace && step wgrtrace_n 100 env PYTHONPATH=$PEERS:src $PY scripts/gpu_wgr_trace.py --out "$OUT/wgrtrace_n.json" \
  --sk 4096 --dist normal
has split8 && step split8 150 env PYTHONPATH=$PEERS:src $PY scripts/gpu_kernel_split.py --fp8-h16 \
  --out "$OUT/split8.json"
# V in fp16 by the hardware conversion and P·scale in fp16 (twenty-third session; v5_fp8_wgr MODE 4, v5's default
# since the twenty-fourth): timed beside the page work in bf16 (MODE 0) and MODE 3 (no dequantization) in its rounds,
# its own stamps at s_k 4k, then the tile's GPU cases run with it
if has wgrf16; then
  step wgrf16_build 120 env PYTHONPATH=src $PY scripts/gpu_dump_wgr.py --out "$OUT/wgrf16_build" --knob WGR_MODE \
    --values 0,4
  step wgrf16 ${WGRTRACE_LIMIT:-200} env PYTHONPATH=$PEERS:src $PY scripts/gpu_wgr_trace.py --out "$OUT/wgrf16.json" \
    --sk 4096,8192,1024 --rounds 5 --variant WGR_MODE=0 --variant WGR_MODE=3
  step wgrf16_n 90 env PYTHONPATH=$PEERS:src $PY scripts/gpu_wgr_trace.py --out "$OUT/wgrf16_n.json" --sk 4096 \
    --dist normal --rounds 5 --variant WGR_MODE=0
  step wgrf16_trace 90 env PYTHONPATH=$PEERS:src $PY scripts/with_knobs.py WGR_MODE=4 -- scripts/gpu_wgr_trace.py \
    --out "$OUT/wgrf16_trace.json" --sk 4096 --rounds 1
  step wgrf16_tests ${WGR_LIMIT:-200} env PYTHONPATH=src:tests $PY scripts/with_knobs.py WGR_MODE=4 -- -m pytest \
    -m gpu tests/test_wgr_gpu.py tests/test_fp8.py -q -rf -p no:cacheprovider -k "wgr"
fi
# MODE 4's guard of fp16's range (twenty-fourth session; WGR_GUARD: a part whose outputs came out inf / NaN computed
# once more with the factor from all its scales): the GPU's build with and without it (the page loop's local loads),
# the tile's GPU cases with MODE 4 (the guard's own case included), then MODE 4 with and without the guard timed
# beside the tile in its rounds
if has guard; then
  step guard_build 120 env PYTHONPATH=src $PY scripts/with_knobs.py WGR_MODE=4 -- scripts/gpu_dump_wgr.py \
    --out "$OUT/guard_build" --knob WGR_GUARD --values 0,1
  step guard_tests ${WGR_LIMIT:-230} env PYTHONPATH=src:tests $PY scripts/with_knobs.py WGR_MODE=4 -- -m pytest \
    -m gpu tests/test_wgr_gpu.py tests/test_fp8.py -q -rf -p no:cacheprovider -k "wgr"
  step guard_time ${WGRTRACE_LIMIT:-200} env PYTHONPATH=$PEERS:src $PY scripts/gpu_wgr_trace.py \
    --out "$OUT/guard.json" --sk 4096,8192,1024 --rounds 5 --variant WGR_GUARD=0 --variant WGR_MODE=0
  step guard_time_n 90 env PYTHONPATH=$PEERS:src $PY scripts/gpu_wgr_trace.py --out "$OUT/guard_n.json" --sk 4096 \
    --dist normal --rounds 5 --variant WGR_GUARD=0 --variant WGR_MODE=0
fi
# the tile, MODE 4 and v5's bf16 call against the fp32 reference, the cache's values scaled down (wgracc)
has wgracc && step wgracc 120 env PYTHONPATH=src $PY scripts/gpu_wgr_trace.py --accuracy --out "$OUT/wgracc.json"
# everything in one file first in name order (a call brings back at most 8 files; the eighth session lost 5 logs)
tar czf "$OUT/00_all.tgz" -C "$OUT" --exclude=00_all.tgz --exclude='*.ncu-rep' . 2>/dev/null
echo "=== done"

# the call's tail after the main kernel: the combine's variants, the bounds assertion in it or after it
has tail && step tail ${TAIL_LIMIT:-330} env PYTHONPATH=$PEERS:src $PY scripts/gpu_call_tail.py --out "$OUT/call_tail.json"
# the decode step's append as one kernel (kernels/append.py): its GPU cases and stages 4 / 5's, then the decode step
# with it, with the torch append (stage4_triton.APPEND_KERNEL False), and with it again
DECODE_ARGS=(--device cuda --config deepseek-v3 --stages 4 5 --heads 128 16 --batch 64 --context 4096 --graphs both
  --warmup 5 --reps 30)
has append && step append_tests ${APPEND_TESTS_LIMIT:-240} env PYTHONPATH=src:tests $PY -m pytest tests/test_append.py \
  tests/test_stage5.py tests/test_stage4.py tests/test_graphs_gpu.py -q -x -p no:cacheprovider
for run in kernel torch kernel2; do
  has append && step "decode_append_$run" ${DECODE_LIMIT:-150} env PYTHONPATH=src APPEND_RUN=$run $PY -c "
import os, sys
import mla_tutorial.stage4_triton as s4
s4.APPEND_KERNEL = os.environ['APPEND_RUN'] != 'torch'
from mla_tutorial.measure.cli import main
sys.exit(main(sys.argv[1:]))" bench "${DECODE_ARGS[@]}" --out "$OUT/decode_append_$run.json"
done
