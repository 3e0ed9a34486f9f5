#!/usr/bin/env bash
# The short device check for the kernels, sized for one call of well under 150 s on an H200:
# GPU facts, the gpu-marked kernel tests (default configs), then bench/kernels.py --serving
# (the four target shapes with their baselines, then B = 1 and 64 of each kernel, no
# torch.compile baselines for those). Run from the repo root on the GPU machine:
#   OUT=/some/dir bash bench/gpu_targets.sh
# Writes log lines to stdout, gpu-tests.xml, kernels.csv and kernels.md into $OUT.
# Needs python3 with torch + triton (device: torch 2.11, triton 3.6). Only the gpu-marked
# tests run there: the interpreter tests fail with triton 3.6 + numpy 2.
# Time: tests <= TEST_TIMEOUT_S (45 s); benchmark <= BENCH_TIMEOUT_S (105 s), its serving
# shapes stop once BENCH_BUDGET_S (80 s) is spent; the targets always run.
set -uo pipefail
OUT="${OUT:-bench/results/run}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS

nvidia-smi -L
python3 -c 'import numpy, torch, triton; print("torch", torch.__version__, "triton",
  triton.__version__, "numpy", numpy.__version__, torch.cuda.get_device_name())'

echo "== gpu tests"
# -c /dev/null: not the project's pytest config, whose options need plugins (asyncio) that may
# be missing there; tests/kernels/conftest.py registers the markers. Autotuning off: this
# step checks the default configurations; the benchmark tunes (and records max_err).
PRISM_KERNELS_AUTOTUNE=0 timeout "${TEST_TIMEOUT_S:-45}" python3 -m pytest tests/kernels \
  -m gpu -q -rfE -p no:cacheprovider -c /dev/null --rootdir . --confcutdir tests/kernels \
  --junitxml "$OUT/gpu-tests.xml"
echo "gpu tests exit $? after $((SECONDS - start)) s"

echo "== benchmark"
timeout "${BENCH_TIMEOUT_S:-105}" python3 bench/kernels.py --serving --compile-targets-only \
  --rep-ms 30 --csv "$OUT/kernels.csv" --md "$OUT/kernels.md" \
  --budget-s "${BENCH_BUDGET_S:-80}"
echo "bench exit $? after $((SECONDS - start)) s"
