#!/usr/bin/env bash
# One device session for the kernels (issue 4): GPU facts, the gpu-marked kernel tests at
# serving sizes, then bench/kernels.py. Run from the repo root on the GPU machine:
#   OUT=/some/dir bash bench/gpu_run.sh [extra bench/kernels.py args]
# Writes log, gpu-tests.xml, kernels.csv and kernels.md into $OUT (default bench/results/run).
# Time: tests <= TEST_TIMEOUT_S (150 s), benchmark <= BENCH_TIMEOUT_S (260 s), its grid stops
# after BENCH_BUDGET_S (170 s); the targets always run.
set -uo pipefail
OUT="${OUT:-bench/results/run}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
  nvidia-smi
  python3 -c 'import numpy, torch, triton; print("torch", torch.__version__, "triton",
    triton.__version__, "numpy", numpy.__version__, torch.cuda.get_device_name())'

  echo "== gpu tests"
  # -c /dev/null: not the project's pytest config, whose options need plugins (asyncio) that
  # may be missing here; tests/kernels/conftest.py registers the markers. Autotuning off: this
  # step checks correctness of the default configuration; the benchmark autotunes.
  PRISM_KERNELS_AUTOTUNE=0 timeout "${TEST_TIMEOUT_S:-150}" python3 -m pytest tests/kernels \
    -m gpu -q -rA -p no:cacheprovider -c /dev/null --rootdir . --confcutdir tests/kernels \
    --junitxml "$OUT/gpu-tests.xml"
  echo "gpu tests exit $?"

  echo "== benchmark"
  timeout "${BENCH_TIMEOUT_S:-260}" python3 bench/kernels.py --csv "$OUT/kernels.csv" \
    --md "$OUT/kernels.md" --budget-s "${BENCH_BUDGET_S:-170}" "$@"
  echo "bench exit $?"
} 2>&1 | tee "$OUT/log"
