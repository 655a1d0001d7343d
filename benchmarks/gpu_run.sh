#!/usr/bin/env bash
# One prepared GPU validation run (GPU.md): build, GPU tests (+ memcheck of the CUDA kernels),
# benchmarks with torch baselines in the same process, results under $OUT (default
# benchmarks/results/<date>-<gpu>). Meant for the H100/H200 reference machines (no network:
# everything it needs is already installed there). Budget: well inside 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
unset TRITON_INTERPRET
export POLYKERNELS_GPU_TESTS=1
gpu=$(python -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "_"))')
OUT="${OUT:-benchmarks/results/$(date +%Y%m%d)-$gpu}"
mkdir -p "$OUT"
{
  echo "date: $(date -u)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
  python -c 'import torch, triton, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
  nvcc --version | tail -1
} | tee "$OUT/env.txt"

step() { echo "== $*" | tee -a "$OUT/steps.log"; }
step build
timeout 300 python -m pip install --no-build-isolation --no-deps -e . -q > "$OUT/build.log" 2>&1 || echo "BUILD FAILED (see build.log)" | tee -a "$OUT/steps.log"
step gpu tests
timeout 240 python -m pytest -m gpu -q tests -x -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1; echo "gpu tests rc=$?" | tee -a "$OUT/steps.log"
if command -v compute-sanitizer > /dev/null; then
  step memcheck
  timeout 120 compute-sanitizer --tool memcheck --error-exitcode 1 python -m pytest -m gpu -q tests -k cuda -p no:cacheprovider > "$OUT/memcheck.log" 2>&1; echo "memcheck rc=$?" | tee -a "$OUT/steps.log"
fi
step benchmarks
timeout 360 python -m benchmarks.suite --device cuda --csv "$OUT/bench.csv" --json "$OUT/bench.json" --plot "$OUT/bench.png" > "$OUT/bench.txt" 2> "$OUT/bench.err"; echo "bench rc=$?" | tee -a "$OUT/steps.log"
tail -n 60 "$OUT/bench.txt"
