#!/usr/bin/env bash
# One command for a GPU machine with torch installed and no network: build the extension for the
# GPU, check its error paths, run the CUDA tests and benchmarks, compute-sanitizer memcheck and
# racecheck and an Nsight Compute profile on small workloads, keep full logs, print a short table.
#   RADD_FAST_GPU_RESULTS=dir bash bench/gpu_check.sh     (default ./gpu_results)
# Budget: the stage caps add up to 565 s (build 75, info 5, errors 25, errors_variants 34 (only
# after a crash), tests 60, bench 100, sampler 45, sampler_ref 60, memcheck 10, racecheck 33,
# profile 12, stalls 10, train_profile 25, compile 37, wgmma 34), and a stage may use what the ones
# before it left of theirs (up to its own cap again), so the run stays within that sum; run it under
# a 585 s limit. On an H200 with 16 cores (2026-11-30) the stages took build 50-67 s, tests 45 s,
# bench 71 s, memcheck 7 s, racecheck 30 s, profile 10 s, compile 32 s, wgmma 27 s.
#   RADD_FAST_STAGES=errors,tests (say) reruns only those stages after the build;
#   RADD_FAST_HOST_CXX=/usr/bin/g++ builds with that host compiler instead of $CXX.
# Results: 8 files (machine.txt, stages.tsv, tests.xml, bench.json, bench_sampler.json,
# bench_compile.json, summary.txt, logs.tar.gz), the most a device session brings back.
set -uo pipefail
cd "$(dirname "$0")/.."
# bench/*.py scripts import the in-place build: put the repository first on their path (run as
# `python bench/x.py`, their own path is bench/; ModuleNotFoundError on the H200, 2026-11-30).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=${RADD_FAST_GPU_RESULTS:-./gpu_results}
mkdir -p "$out"
py=${PYTHON:-python3}
want() { [[ ",${RADD_FAST_STAGES:-info,errors,tests,bench,sampler,memcheck,racecheck,profile,compile,wgmma}," == *",$1,"* ]]; }
status() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$out/stages.tsv"; }
: > "$out/stages.tsv"
# A stage may run past its cap by what the stages before it left unused of theirs (and the caps of
# stages that did not run): the run as a whole stays within the caps' sum, and a stage that runs
# long because an earlier one ran short -- the reference sampler, ~5 s under its cap by estimate --
# keeps its figures. A stage always gets its own cap and borrows at most as much again, so one that
# hangs (the training profile on a machine where CUDA failed: minutes on the CPU) leaves the rest of
# the bank to the stages after it.
bank=0
stage() {  # stage NAME CAP_S CMD...
  local name=$1 cap=$2; shift 2
  local borrow=$(lent "$cap")
  local limit=$(( cap + borrow )) t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$? used=$(( $(date +%s) - t0 ))
  bank=$(( bank - borrow + (limit > used ? limit - used : 0) ))
  status "$name" "$rc" "${used}s (limit ${limit}s)"
  echo "[gpu_check] $name: exit $rc in ${used}s (limit ${limit}s)"
  return $rc
}
unused() { bank=$(( bank + $1 )); }  # unused CAP_S: a stage that will not run
lent() { echo $(( bank < $1 ? bank : $1 )); }  # lent CAP_S: what stage() will add to that cap

{ date -u +%FT%TZ; echo "${RADD_FAST_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo "no git")}"; nvidia-smi -L 2>&1; } > "$out/machine.txt"
sanitizer=$(command -v compute-sanitizer || true)
echo "compute-sanitizer: ${sanitizer:-not found}" >> "$out/machine.txt"
# The toolchain the extension is built with, and the C++ runtime the process loads (a mismatch breaks
# C++ exceptions first): the first diagnosis of a crash on an error path.
if [ -n "${RADD_FAST_HOST_CXX:-}" ]; then
  export CXX=$RADD_FAST_HOST_CXX CC=${RADD_FAST_HOST_CXX%g++}gcc
fi
{ echo "CC=${CC:-} CXX=${CXX:-}: $("${CXX:-c++}" --version 2>&1 | head -1)"
  for c in "${CXX:-c++}" /usr/bin/g++; do  # a wrapper script shows what it adds
    f=$(command -v "$c" || true); [ -n "$f" ] || continue
    echo "$c -> $(readlink -f "$f"): $(file -b "$(readlink -f "$f")" 2>/dev/null | cut -c1-60)"
    grep -Iq . "$f" 2>/dev/null && sed -n '1,15p' "$f" | sed 's/^/    | /'
  done
  "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>&1 | tail -1
  "$py" -c "import torch; print('loaded:', *sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libstdc++' in l or 'libgcc_s' in l}))" 2>&1
  env | grep -E '^(TORCH_|LD_PRELOAD|LD_LIBRARY_PATH|GLIBC_TUNABLES|CXXFLAGS|CFLAGS|LDFLAGS|CUDA_MODULE_LOADING)' | cut -c1-200
} >> "$out/machine.txt"

export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# Optional plugins where the machine has them: parallel test workers (the CUDA tests are many and
# small) and a per-test time limit, so one slow case costs its own result, not its stage's.
par=(); "$py" -c "import xdist" 2>/dev/null && par=(-n "${RADD_FAST_TEST_WORKERS:-8}")
tmo() { "$py" -c "import pytest_timeout" 2>/dev/null && echo "--timeout=$1"; }
if stage build 75 "$py" setup.py build_ext --inplace; then
  want info && stage info 5 "$py" -m radd_fast.info
  # C++ argument errors of torch, of each CPU kernel and of each CUDA entry point must reach Python
  # (on 2026-11-29 / -30 the first one killed the process): each case in turn, a crash isolated to
  # its case, the first crash's native backtrace from cuda-gdb.
  { nm -D --defined-only radd_fast/_C*.so 2>/dev/null | grep -c -E " (__cxa_throw|_Unwind_RaiseException)$" |
      sed 's/^/C++ runtime symbols defined in _C (0 = shared libstdc++): /'
    readelf -d radd_fast/_C*.so 2>/dev/null | grep -E "NEEDED" | sed 's/.*Shared library: /needs /' | tr '\n' ' '; echo
  } >> "$out/machine.txt"
  want errors && RADD_FAST_ERRORS_GDB=1 stage errors 25 "$py" bench/error_paths.py
  # After a crash there: the CPU error cases against three CPU-only builds (as built, the system's
  # g++, no AVX code), which tells what to change in the build (bench/error_variants.sh).
  if want errors && grep -q "CRASHED" "$out/errors.log" 2>/dev/null; then
    stage errors_variants 34 bash bench/error_variants.sh "$py"
  else
    unused 34
  fi
  want tests && stage tests 60 "$py" -m pytest tests -m "cuda and not wgmma" -q -rfE -p no:cacheprovider "${par[@]}" $(tmo 60) \
    --junitxml="$out/tests.xml"
  # Files in the order of what their figures decide (42 cases, 71 s for 35 on 2026-11-30): should
  # the stage hit its cap, it costs the rotary rows, measured twice already.
  want bench && stage bench 100 "$py" -m pytest -m "cuda and not wgmma" -q -p no:cacheprovider $(tmo 40) --benchmark-json="$out/bench.json" \
    --benchmark-max-time=0.3 --benchmark-min-rounds=3 --deselect "bench/test_train_step.py::test_train_step_compiled[cuda]" \
    bench/test_train_step.py bench/test_attention.py bench/test_dce_loss.py bench/test_eval.py bench/test_rotary.py
  # Each sampler configuration is timed once; the new sampler's two in one process, the reference
  # (44 s at n = 4,096 on an H200; 23 s at n = 1,024, left to a plain `pytest bench/test_sampler.py`)
  # in another, so a slow run costs only its own figures; their JSON files are merged.
  s=bench/test_sampler.py::test_sampler_cuda_small
  if want sampler; then
    stage sampler 45 "$py" -m pytest -m cuda -q -p no:cacheprovider $(tmo $(( 40 + $(lent 45) ))) --benchmark-json="$out/sampler_fused.json" \
      "$s[fused-4096]" "$s[fused-1024]"
    stage sampler_ref 60 "$py" -m pytest -m cuda -q -p no:cacheprovider $(tmo $(( 55 + $(lent 60) ))) --benchmark-json="$out/sampler_ref.json" \
      "$s[reference-4096]"
    "$py" bench/summarize.py --merge "$out/bench_sampler.json" "$out/sampler_fused.json" "$out/sampler_ref.json"
    rm -f "$out/sampler_fused.json" "$out/sampler_ref.json"
  fi
  # Bad memory accesses and shared-memory races of the hand-written kernels (cp.async, ldmatrix,
  # atomics): every kernel once on small odd shapes (bench/sanitize_cases.py; a pytest run under
  # memcheck got through one test in 40 s on an H200); racecheck (30 s for 16 cases there) leaves out
  # the fp16 attention cases, the bf16 kernels with another element type, and -- to stay at 16 cases
  # with the 128-key attention kernels added since -- the fp32 head_dim-32 attention (the FMA
  # kernel's head_dim-64 code) and the loss cases whose kernels another case runs (1,024-row chunks,
  # the grad-h split: torch's GEMMs on side streams) and the bulk dQ reductions (memcheck has them;
  # their shared-memory reads go through the async proxy). Where the sanitizer can filter by kernel name
  # only ours are instrumented, and torch's launches run at full speed. RADD_FAST_SANITIZE=0 skips.
  if [ -n "$sanitizer" ] && [ "${RADD_FAST_SANITIZE:-1}" = 1 ]; then
    filt=(--kernel-name kns=radd_fast)  # kept only if this sanitizer accepts it (a 1 s probe)
    "$sanitizer" --tool memcheck "${filt[@]}" true > /dev/null 2>&1 || filt=()
    want memcheck && stage memcheck 10 "$sanitizer" --tool memcheck --error-exitcode 3 "${filt[@]}" \
      "$py" bench/sanitize_cases.py
    want racecheck && stage racecheck 33 "$sanitizer" --tool racecheck --error-exitcode 3 "${filt[@]}" \
      "$py" bench/sanitize_cases.py --only "attention torch.bfloat16,attention torch.float32,loss,sampler" \
      --skip "torch.float32 D 32,chunk 1024,grad-h split,dq-bulk"
  else
    status sanitizer skipped "compute-sanitizer not found or RADD_FAST_SANITIZE=0"
    unused $(( 10 + 33 ))
  fi
  # Where the time of the kernels below their targets goes: Nsight Compute on one realistic call of
  # each (bench/profile_cases.py; ten launches). The CSV is in profile.log, a digest in the table.
  ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1 || true)
  if [ -n "$ncu_bin" ]; then
    want profile && stage profile 12 "$ncu_bin" --csv --clock-control none --section SpeedOfLight \
      --section Occupancy --section LaunchStats -k 'regex:gemm_kernel|device_kernel|softmax_rows_kernel|fwd_mma_kernel|fwd_wgmma_kernel|bwd_mma_kernel|bwd_wgmma_kernel' \
      "$py" bench/profile_cases.py
    # Why the attention kernels keep their tensor cores under a third busy (mma.sync SM 34 % / 18 %,
    # occupancy 10 %; wgmma 29 % / 17 %, 2026-11-30): the warps' stall reasons and the schedulers'
    # eligible warps for the forward and backward of each (mma.sync, then wgmma on an sm_90a build),
    # every collected metric by name (--page raw); a stage of its own, so that an ncu that rejects
    # something here costs only this digest.
    want profile && stage stalls 10 "$ncu_bin" --csv --page raw --clock-control none --section WarpStateStats \
      --section SchedulerStats -k 'regex:fwd_mma_kernel|bwd_mma_kernel|fwd_wgmma_kernel|bwd_wgmma_kernel' --launch-count 4 \
      "$py" bench/profile_cases.py --only attention
  else
    status profile skipped "ncu not found"
    unused $(( 12 + 10 ))
  fi
  # The training step's device time by kernel (torch.profiler; bench/profile_train.py).
  want profile && stage train_profile 25 "$py" bench/profile_train.py
  # The training step with torch.compile'd blocks (compiling takes most of the stage).
  want compile && stage compile 37 "$py" -m pytest -m cuda -q -p no:cacheprovider $(tmo $(( 35 + $(lent 37) ))) \
    --benchmark-json="$out/bench_compile.json" --benchmark-max-time=0.3 --benchmark-min-rounds=3 \
    "bench/test_train_step.py::test_train_step_compiled[cuda]"
  # The wgmma attention kernels' tests and benchmark rows (opt-in, never yet run on a GPU): last and
  # in a process of their own, so that a fault in them cannot spoil any other figure (marker
  # `wgmma`, deselected above). Their figures travel inside logs.tar.gz (bench_wgmma.json). First,
  # one product per wgmma operand form the kernels use (csrc/tests/wgmma_layouts.cu, standalone, a
  # few seconds): should the kernels fail, it names the form the hardware reads differently.
  want wgmma && stage wgmma 34 bash -c 'bin=$(mktemp -d) && "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" -std=c++20 \
      -gencode=arch=compute_90a,code=sm_90a -Icsrc csrc/tests/wgmma_layouts.cu -o "$bin/wgmma_layouts" && "$bin/wgmma_layouts"
    rm -rf "$bin"
    "$2" -m pytest -m "cuda and wgmma" -q -rfE -p no:cacheprovider --import-mode=importlib $3 \
      --benchmark-json="$1/bench_wgmma.json" --benchmark-max-time=0.3 --benchmark-min-rounds=3 \
      tests/test_attention.py bench/test_attention.py' _ "$out" "$py" "$(tmo $(( 34 + $(lent 34) )))"
else
  tail -40 "$out/build.log"
fi
"$py" bench/summarize.py "$out" | tee "$out/summary.txt"
tar -czf "$out/logs.tar.gz" -C "$out" $(cd "$out" && ls *.log summary.txt bench_wgmma.json 2>/dev/null) &&
  rm -f "$out"/*.log "$out/bench_wgmma.json"
