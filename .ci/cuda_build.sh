#!/usr/bin/env bash
# Compile and link the CUDA extension against a CUDA build of torch, then import it. Nothing CUDA
# runs on a machine without a GPU, so this proves that the CUDA sources compile, link and register;
# bench/gpu_check.sh runs them on a GPU.
#   usage: .ci/cuda_build.sh [VENV_DIR]   (default .venv-cuda; created with torch 2.14.1 if missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$(realpath -m "${1:-$root/.venv-cuda}")
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.14.1 numpy ninja "setuptools>=77" wheel
fi
# Build from a clean copy of the tracked tree so the CPU build in the source tree is left alone.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git -C "$root" ls-files -z --cached --others --exclude-standard | (cd "$root" && xargs -0 cp --parents -t "$src")
cd "$src"
# ptxas -v: registers and spills of every kernel, checked below (bench/kernel_resources.py).
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-2}" RADD_FAST_PTXAS_VERBOSE=1
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
log=${CUDA_BUILD_LOG:-$root/build/cuda_build.log}
mkdir -p "$(dirname "$log")"
if ! "$venv/bin/pip" install -v --no-build-isolation --no-deps --force-reinstall . >"$log" 2>&1; then
  grep -E "error|Error" "$log" | head -40
  echo "CUDA build failed; full log: $log" >&2
  exit 1
fi
grep -F "[radd_fast build]" "$log"
# No register spills in the tensor-core attention kernels or the loss's GEMM tiles, on any arch.
python3 "$src/bench/kernel_resources.py" "$log" --check
# sm_90a: the wgmma forward's softmax sits between its two waits in SASS, overlapping P V
# (fwd_wgmma.cuh). cuobjdump and the nvdisasm it calls come as wheels; the CUDA toolkit here has neither.
if [[ "$TORCH_CUDA_ARCH_LIST" == *9.0a* ]]; then
  "$venv/bin/pip" install -q "nvidia-cuda-cuobjdump>=13,<14" "nvidia-cuda-nvdisasm>=13,<14"
  so=$(ls "$venv"/lib/python3*/site-packages/radd_fast/_C*.so)
  cuobjdump=$(ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/cuobjdump)
  python3 "$src/bench/kernel_resources.py" --sass "$so" --check-overlap --cuobjdump "$cuobjdump"
fi
cd /
"$venv/bin/python" - <<'PY'
import json, os, radd_fast, torch
from radd_fast import _extension
assert _extension.AVAILABLE, _extension.LOAD_ERROR
info = _extension.BUILD_INFO
assert info["with_cuda"], info
missing = [n for n in _extension.op_names() if not _extension.has_kernel(n, "cuda")]
assert not missing, f"ops without a CUDA kernel: {missing}"
# CPU kernels still run in a CUDA build; a CUDA tensor fails cleanly without a driver.
qkv = torch.randn(1, 3, 3, 2, 8)
c, s = radd_fast.rotary_tables(3, 8)
torch.testing.assert_close(radd_fast.rotary(qkv, c, s, impl="fused"), radd_fast.reference.rotary(qkv, c, s))
print("CUDA build OK:", json.dumps({k: info[k] for k in ("torch_version", "nvcc_version", "cuda_arch_list")}),
      "ops:", ", ".join(_extension.op_names()))
PY
