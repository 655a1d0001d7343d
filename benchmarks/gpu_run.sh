#!/usr/bin/env bash
# The prepared GPU validation run (docs/gpu-validation.md): build with CUDA, GPU tests (+ memcheck
# of the CUDA kernels), benchmarks with torch baselines in the same process, results under $OUT
# (default benchmarks/results/<date>-<gpu>). Meant for the H100/H200 reference machines (no
# network: everything it needs is already installed there). Budget: well inside 8 minutes.
#
#   benchmarks/gpu_run.sh            the real run (needs a GPU)
#   benchmarks/gpu_run.sh --dry-run  every step that can run without a GPU, with a CUDA build
#                                    of torch: the build with the CUDA kernels, a check that _C
#                                    loads with them registered, collection of the -m gpu tests,
#                                    an import of every module and the benchmark CLI. CI runs it,
#                                    so a device session is never lost to a build problem.
#
# Every step runs even when an earlier one failed (a failed AOT build falls back to a pure
# install + the JIT build); the exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
case "${1:-}" in
  --dry-run) dry=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
unset TRITON_INTERPRET
export POLYKERNELS_GPU_TESTS=1
failed=0

if ! python -c 'import sys, torch; sys.exit(0 if torch.version.cuda or torch.version.hip else 1)'; then
  echo "gpu_run: torch $(python -c 'import torch; print(torch.__version__)' 2>&1) has no CUDA/ROCm: install the GPU build of torch first" >&2
  exit 2
fi
if [ "$dry" = 1 ]; then
  gpu="dry-run"
  OUT="${OUT:-$(mktemp -d -t pk-gpu-dry-run.XXXXXX)}"
else
  gpu=$(python -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "_"))') || {
    echo "gpu_run: no usable GPU (use --dry-run on a machine without one)" >&2; exit 2; }
  OUT="${OUT:-benchmarks/results/$(date +%Y%m%d)-$gpu}"
fi
mkdir -p "$OUT"

step() { echo "== $*" | tee -a "$OUT/steps.log"; }
result() {  # result NAME RC: log it, count a failure
  echo "$1 rc=$2" | tee -a "$OUT/steps.log"
  [ "$2" = 0 ] || failed=$((failed + 1))
}

{
  echo "date: $(date -u)  mode: $([ "$dry" = 1 ] && echo dry-run || echo gpu)  MAX_JOBS=$MAX_JOBS"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "hip", torch.version.hip)'
  python -c 'import triton; print("triton", triton.__version__)' 2>&1 | tail -1
  echo "CUDA_HOME=${CUDA_HOME:-unset}"
  (nvcc --version 2>&1 || echo "nvcc: not found") | tail -1
} | tee "$OUT/env.txt"

# 1. Build: the ahead-of-time extension, with the CUDA kernels where torch has CUDA and nvcc
#    exists. Non-editable, so a source tree shared with a CPU venv keeps its own in-tree _C.
step build
# -v: pip shows the build's output, of which the "polykernels:" progress lines are shown here
timeout 900 python -m pip install -v --no-build-isolation --no-deps . 2>&1 | tee "$OUT/build.log" \
  | grep --line-buffered -E '^\s*polykernels: '
rc=${PIPESTATUS[0]}
result build $rc
if [ $rc != 0 ]; then
  echo "BUILD FAILED (tail of $OUT/build.log below); installing without the extension, the JIT build gets a second try" | tee -a "$OUT/steps.log"
  tail -n 40 "$OUT/build.log"
  POLYKERNELS_NO_EXTENSION=1 python -m pip install --no-build-isolation --no-deps . >> "$OUT/build.log" 2>&1
fi

# 2. The built extension loads (no driver needed) with the CUDA kernels registered.
step extension
python - > "$OUT/extension.log" 2>&1 <<'PY'
import torch
from polykernels import _extension
mod = _extension.load()
print("loaded:", mod is not None, "|", _extension.unavailable_reason() or "ok")
import subprocess, sys
so = getattr(sys.modules.get("polykernels._C"), "__file__", None)  # None: JIT-built instead
if so:
    ldd = subprocess.run(["ldd", so], capture_output=True, text=True).stdout.splitlines()
    print("built:", so, "\nlinked:", " ".join(sorted(
        line.split()[0] for line in ldd if any(n in line for n in ("c10", "torch", "cudart")))))
ops = {"cuda_paged_attention": "CUDA", "cpu_attention_fwd": "CPU", "matmul": "CPU"}
missing = [f"{op} ({key})" for op, key in ops.items()
           if mod is None or not torch._C._dispatch_has_kernel_for_dispatch_key(f"polykernels_C::{op}", key)]
print("kernels registered:", "all" if not missing else "MISSING " + ", ".join(missing))
raise SystemExit(1 if missing else 0)
PY
rc=$?
cat "$OUT/extension.log"
result extension $rc

# 3. GPU tests (dry run: collected, not run; a collection error fails the step).
step gpu tests
if [ "$dry" = 1 ]; then
  timeout 300 python -m pytest -m gpu --collect-only -q tests -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
  rc=$?
  n=$(grep -Eo '^[0-9]+(/[0-9]+)? tests? (collected|selected)' "$OUT/gpu_tests.log" | grep -Eo '^[0-9]+' | head -1)
  echo "collected -m gpu tests: ${n:-0}" | tee -a "$OUT/steps.log"
  [ "${n:-0}" -gt 0 ] || rc=1
else
  timeout 240 python -m pytest -m gpu -q tests -x -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
  rc=$?
fi
tail -n 3 "$OUT/gpu_tests.log"
result "gpu tests" $rc

# 4. The CUDA kernels under compute-sanitizer (GPU only).
if [ "$dry" = 0 ] && command -v compute-sanitizer > /dev/null; then
  step memcheck
  timeout 120 compute-sanitizer --tool memcheck --error-exitcode 1 python -m pytest -m gpu -q tests -k cuda -p no:cacheprovider > "$OUT/memcheck.log" 2>&1
  result memcheck $?
fi

# 5. Benchmarks (dry run: every module of the package and the benchmarks imports, the suite's CLI parses).
step benchmarks
if [ "$dry" = 1 ]; then
  python - > "$OUT/imports.log" 2>&1 <<'PY'
import importlib, pkgutil, sys
import polykernels
sys.path.insert(0, ".")
import benchmarks
names = [m.name for m in pkgutil.walk_packages(polykernels.__path__, "polykernels.")]
names += [m.name for m in pkgutil.iter_modules(benchmarks.__path__, "benchmarks.")]
bad = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as e:
        bad.append(f"{name}: {type(e).__name__}: {e}")
print(f"imported {len(names) - len(bad)}/{len(names)} modules")
print("\n".join(bad))
from benchmarks.suite import main
try:
    main(["--help"])
except SystemExit as e:
    assert e.code == 0, e.code
raise SystemExit(1 if bad else 0)
PY
  rc=$?
  grep -E '^imported|Error' "$OUT/imports.log"
  result imports $rc
else
  timeout 360 python -m benchmarks.suite --device cuda --csv "$OUT/bench.csv" --json "$OUT/bench.json" --plot "$OUT/bench.png" > "$OUT/bench.txt" 2> "$OUT/bench.err"
  result bench $?
  tail -n 60 "$OUT/bench.txt"
fi

echo "gpu_run ($([ "$dry" = 1 ] && echo dry-run || echo gpu)): $failed failed step(s); logs in $OUT" | tee -a "$OUT/steps.log"
exit "$failed"
