#!/usr/bin/env bash
# Stage 4 on the GPU machine: tests, then the benchmark; JSON and logs go to $OUT (or ./out).
#   scripts/gpu_kernels.sh [--quick] [--tune] [--skip-tests]
set -u -o pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
PY=${PYTHON:-python3}
BENCH_ARGS=()
RUN_TESTS=1
for a in "$@"; do
  case "$a" in
    --skip-tests) RUN_TESTS=0 ;;
    *) BENCH_ARGS+=("$a") ;;
  esac
done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv 2>&1 | tee "$OUT/nvidia_smi.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
if [ "$RUN_TESTS" = 1 ]; then
  timeout ${TEST_TIMEOUT:-300} $PY -m pytest -m gpu tests/test_kernels_gpu.py -q --maxfail=10 -p no:cacheprovider --durations=10 2>&1 \
    | tee "$OUT/pytest_gpu.log" | tail -40
fi
$PY -m mla_tutorial.measure.kernel_bench --out "$OUT/kernels_bench.json" "${BENCH_ARGS[@]}" 2>&1 | tee "$OUT/bench.log"
