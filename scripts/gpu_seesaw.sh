#!/usr/bin/env bash
# One GPU call for v5's seesaw tile: its correctness probe, its speed beside the lockstep tile and FlashMLA, the GPU
# tests, then the kernel benchmark at issue 8's and 9's shapes. Each step is time-boxed and logged to $OUT.
# Carry .peers (FlashMLA, see ../shared/flashmla/README.md).   STEPS="check time tests bench" scripts/gpu_seesaw.sh
set -u -o pipefail
OUT=${OUT:-out/gpu_seesaw}
STEPS=${STEPS:-check time tests bench fp8}
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
has check && step check 150 env PYTHONPATH=$PEERS:src:tests $PY scripts/gpu_seesaw_probe.py --out "$OUT/check.json" \
  --check-only
if has check && ! grep -q "^PASS" "$OUT/check.log" || grep -q "^FAIL" "$OUT/check.log" 2>/dev/null; then
  echo "=== the seesaw check failed: tests and benchmarks skipped"; STEPS="time"
fi
has time && step time 170 env PYTHONPATH=$PEERS:src:tests $PY scripts/gpu_seesaw_probe.py --out "$OUT/time.json" \
  --skip-check
has tests && step tests ${TEST_LIMIT:-150} env PYTHONPATH=src:tests $PY -m pytest -m gpu tests/test_kernels_gpu.py \
  tests/test_fp8.py -q -p no:cacheprovider -x --durations=5 -k "v5 or fp8 or api or graph"
has bench && step bench 200 env PYTHONPATH=$PEERS:src $PY -m mla_tutorial bench --kernel --shapes targets \
  --out "$OUT/kernels.json"
has fp8 && step fp8 120 env PYTHONPATH=$PEERS:src $PY scripts/gpu_fp8_bench.py --quick --out "$OUT/fp8.json"
echo "=== done"
