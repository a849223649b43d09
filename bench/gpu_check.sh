#!/usr/bin/env bash
# One command for a GPU machine with torch installed and no network: build the extension for the
# GPU, run the CUDA tests and the CUDA benchmarks, keep full logs, print a short table last.
#   RADD_FAST_GPU_RESULTS=dir bash bench/gpu_check.sh     (default ./gpu_results)
# Budget: well inside 8 minutes on one H200 (build about 2-4 min with 16 cores); the limits below
# are caps, not expectations.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${RADD_FAST_GPU_RESULTS:-./gpu_results}
mkdir -p "$out"
py=${PYTHON:-python}
status() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$out/stages.tsv"; }
: > "$out/stages.tsv"
stage() {  # stage NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  status "$name" "$rc" "$(( $(date +%s) - t0 ))s"
  echo "[gpu_check] $name: exit $rc in $(( $(date +%s) - t0 ))s (log: $out/$name.log)"
  return $rc
}

{ date -u +%FT%TZ; git rev-parse --short HEAD 2>/dev/null || echo "no git"; nvidia-smi -L 2>&1; } > "$out/machine.txt"
if command -v compute-sanitizer >/dev/null; then echo "compute-sanitizer: $(command -v compute-sanitizer)" >> "$out/machine.txt"; fi

export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
if stage build 330 "$py" setup.py build_ext --inplace; then
  stage info 60 "$py" -m radd_fast.info
  stage tests 200 "$py" -m pytest tests -m cuda -q -rA -p no:cacheprovider --junitxml="$out/tests.xml"
  # Out-of-bounds / misaligned accesses of the hand-written attention kernels (cp.async, ldmatrix,
  # atomics) on a few small masked cases of each tensor-core and FMA kernel; skip with
  # RADD_FAST_SANITIZE=0.
  if command -v compute-sanitizer >/dev/null && [ "${RADD_FAST_SANITIZE:-1}" = 1 ]; then
    stage sanitize 90 compute-sanitizer --tool memcheck --error-exitcode 3 "$py" -m pytest tests/test_attention.py \
      -m cuda -q -p no:cacheprovider -k "small_shapes_all_dtypes and masked and (bfloat16 or float32)"
  fi
  stage bench 150 "$py" -m pytest bench -m cuda -q -p no:cacheprovider --benchmark-json="$out/bench.json" \
    --benchmark-max-time=0.5 --benchmark-min-rounds=5
else
  tail -40 "$out/build.log"
fi
"$py" bench/summarize.py "$out"
