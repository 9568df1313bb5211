#!/usr/bin/env bash
# One GPU call for the results the docs quote: GPU tests, the kernel benchmark beside FlashMLA, the FP8 path, and the
# decode step at serving shapes. Each step is time-boxed and logged; everything is packed into $OUT/final.tgz after
# every step (a cut-off run still returns what it did). Carry .peers (FlashMLA, see ../shared/flashmla/README.md)
# and, for the FP8 step while stage 5 lives on its own branch, .h9 (a copy of that branch's src, tests, scripts).
#   STEPS="tests kernels fp8 decode" scripts/gpu_final.sh
set -u -o pipefail
OUT=${OUT:-out/gpu_final}
WORK=${WORK:-/tmp/gpu_final}
STEPS=${STEPS:-tests kernels fp8 decode}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 COLUMNS=200
PY=${PYTHON:-python3}
PEERS=$PWD/.peers/flashmla
has() { [[ " $STEPS " == *" $1 "* ]]; }
step() {  # step NAME SECONDS command...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$WORK/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0)) s"
  tail -n 30 "$WORK/$name.log" | cut -c1-240
  tar czf "$OUT/final.tgz" -C "$WORK" .
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.limit --format=csv \
  | tee "$WORK/nvidia_smi.txt"
git rev-parse HEAD > "$WORK/commit.txt" 2>/dev/null || true
has tests && step tests ${TEST_LIMIT:-170} env PYTHONPATH=src $PY -m pytest -m gpu tests/test_kernels_gpu.py tests/test_contract_gpu.py \
  tests/test_graphs_gpu.py -q -p no:cacheprovider --durations=8 -k "not v1_naive and not v2_head and not v3_split"
has kernels && step kernels 200 env PYTHONPATH=$PEERS:src $PY -m mla_tutorial bench --kernel --shapes targets,ablation \
  --out "$WORK/kernels.json"
has fp8 && step fp8 110 bash -c "cd .h9 && PYTHONPATH=$PEERS:src $PY scripts/gpu_fp8_bench.py --quick --out $WORK/fp8.json"
has decode && step decode 100 env PYTHONPATH=src $PY -m mla_tutorial bench --device cuda --config deepseek-v3 \
  --stages 2 4 --heads 128 16 --batch 1 8 64 --context 4096 --graphs both --warmup 5 --reps 30 \
  --out "$WORK/stages/stages.json"
echo "=== done"
