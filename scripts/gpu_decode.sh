#!/usr/bin/env bash
# Issue 6 on a GPU machine: the decode path at serving shapes, measured. Each step is time-boxed; everything lands
# in $WORK and is packed into $OUT/decode_results.tgz (the device machine returns at most 8 files).
#   scripts/gpu_decode.sh            graph/sync tests, tour, bench (+ coverage), profile, occupancy, roofline, capacity
#   STEPS="tests tour" scripts/gpu_decode.sh   only some steps (tests tour bench coverage profile occupancy roofline
#                                              memory); about 4 minutes for all on an H200, one tgz in $OUT
set -u -o pipefail
OUT=${OUT:-out/gpu_decode}
WORK=${WORK:-/tmp/gpu_decode}
STEPS=${STEPS:-tests tour bench coverage profile occupancy roofline memory}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 COLUMNS=200
PY=${PYTHON:-python3}
V3=(--device cuda --config deepseek-v3)
has() { [[ " $STEPS " == *" $1 "* ]]; }
step() {  # step NAME SECONDS command...: run with a time limit, log to $WORK/NAME.log, never stop the script
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$WORK/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0)) s"
  tar czf "$OUT/decode_results.tgz" -C "$WORK" .  # after every step: a cut-off run still returns what it did
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.limit --format=csv \
  | tee "$WORK/nvidia_smi.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

has tests && step tests 100 $PY -m pytest -m gpu tests/test_graphs_gpu.py -q -p no:cacheprovider --durations=5
has tour && step tour 120 $PY -m mla_tutorial tour "${V3[@]}" --warmup 5 --reps 30 --out "$WORK/tour"
has bench && step bench 90 $PY -m mla_tutorial bench "${V3[@]}" --stages 2 4 --heads 128 16 --batch 1 8 64 \
  --context 4096 --graphs both --warmup 5 --reps 30 --out "$WORK/bench/stages.json"
has coverage && step coverage 75 $PY -m mla_tutorial bench "${V3[@]}" --stages 2 4 --heads 128 16 --batch 8 64 \
  --context 1024 16384 --graphs on --warmup 5 --reps 30 --out "$WORK/bench/coverage.json"
has profile && step profile 90 $PY -m mla_tutorial bench "${V3[@]}" --stages 2 4 --heads 128 16 --batch 1 64 \
  --context 4096 --graphs both --warmup 3 --reps 10 --profile --out "$WORK/bench/profile.json"
has occupancy && step occupancy 40 $PY -m mla_tutorial.measure.occupancy --json "$WORK/occupancy.json"
has roofline && step roofline 45 $PY -m mla_tutorial roofline "${V3[@]}" --batch 64 --context 4096 --warmup 5 \
  --reps 30 --out "$WORK/roofline"
has memory && step memory 30 $PY -m mla_tutorial memory --config deepseek-v3 --context 32768 --gpu-memory-gb 141 \
  --out "$WORK/memory"
for name in tests tour bench coverage profile occupancy roofline memory; do
  [ -f "$WORK/$name.log" ] && { echo "----- $name (tail)"; tail -n 25 "$WORK/$name.log" | cut -c1-220; }
done
