#!/usr/bin/env bash
# After the errors stage of bench/gpu_check.sh saw a crash: which build setting lets C++ errors
# reach Python on this machine? Builds the CPU kernels three ways, in temporary copies of the
# repository and in parallel -- as the main build did (host compiler $CXX), with the system's
# /usr/bin/g++, and with RADD_FAST_CPU_ISA=generic (no AVX2 / AVX-512 code) -- and runs the CPU
# error cases of bench/error_paths.py against each. One line per variant.
#   bash bench/error_variants.sh [PYTHON]     (RADD_FAST_VARIANTS=as-built,... picks some)
set -uo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
jobs=$(( $(nproc) / 3 )); [ "$jobs" -ge 1 ] || jobs=1

picked() { [[ ",${RADD_FAST_VARIANTS:-as-built,system-g++,generic-isa}," == *",$1,"* ]]; }

variant() {  # variant NAME [VAR=VALUE...]: build settings on top of the main build's environment
  local name=$1; shift
  picked "$name" || return 0
  local dir; dir=$(mktemp -d)
  tar --exclude=./build --exclude=./.git --exclude='./gpu_results*' -cf - . | tar -xf - -C "$dir"
  rm -f "$dir"/radd_fast/_C*.so
  if ! (cd "$dir" && env "$@" RADD_FAST_CPU_ONLY=1 MAX_JOBS="$jobs" "$py" setup.py build_ext --inplace \
        > build.log 2>&1); then
    echo "variant $name: build failed: $(grep -m1 -i error "$dir/build.log" | cut -c1-200)"
  else
    local verdict
    verdict=$(cd "$dir" && timeout 60 "$py" bench/error_paths.py --cpu 2>&1 | grep '^error paths:')
    echo "variant $name ($(grep -m1 -o 'CPU ISA [a-z0-9]*' "$dir/build.log"), CXX ${CXX_USED:-}): ${verdict:-no verdict}"
  fi
  rm -rf "$dir"
}

CXX_USED=${CXX:-c++} variant as-built &
if [ -x /usr/bin/g++ ] && [ "$(readlink -f "$(command -v "${CXX:-c++}")")" != "$(readlink -f /usr/bin/g++)" ]; then
  CXX_USED=/usr/bin/g++ variant system-g++ CC=/usr/bin/gcc CXX=/usr/bin/g++ &
elif picked system-g++; then
  echo "variant system-g++: skipped (the main build already used it)"
fi
CXX_USED=${CXX:-c++} variant generic-isa RADD_FAST_CPU_ISA=generic &
wait
