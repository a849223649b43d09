// The wgmma operand-form checks of wgmma_layouts.cuh on an sm_90 GPU: one line per form, exit 0
// when every form agrees with the float64 product, 1 when one does not, 2 when there is no sm_90
// GPU or no sm_90a code. Standalone (CUDA runtime only), so it builds in seconds and runs even when
// the extension does not:
//   nvcc -std=c++20 -gencode=arch=compute_90a,code=sm_90a -Icsrc csrc/tests/wgmma_layouts.cu -o wgmma_layouts
// bench/gpu_check.sh builds and runs it at the start of its `wgmma` stage.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "tests/wgmma_layouts.cuh"

namespace wc = radd_fast::wgmma_check;

#define CUDA_OK(call)                                                                       \
  do {                                                                                      \
    const cudaError_t e_ = (call);                                                          \
    if (e_ != cudaSuccess) {                                                                \
      std::printf("wgmma layouts: %s failed: %s\n", #call, cudaGetErrorString(e_));        \
      return false;                                                                         \
    }                                                                                       \
  } while (0)

template <int N, wc::Form F>
bool run_case(unsigned seed, int& bad) {
  const wc::Inputs<__nv_bfloat16, N> in(seed);
  __nv_bfloat16 *A = nullptr, *B = nullptr;
  float* D = nullptr;
  CUDA_OK(cudaMalloc(&A, in.A.size() * sizeof(__nv_bfloat16)));
  CUDA_OK(cudaMalloc(&B, in.B.size() * sizeof(__nv_bfloat16)));
  CUDA_OK(cudaMalloc(&D, 64 * N * sizeof(float)));
  CUDA_OK(cudaMemcpy(A, in.A.data(), in.A.size() * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(B, in.B.data(), in.B.size() * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemset(D, 0xFF, 64 * N * sizeof(float)));  // NaN where nothing is written
  wc::layout_kernel<__nv_bfloat16, N, F><<<1, 128, wc::smem_bytes<N>()>>>(A, B, D);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<float> out(64 * N);
  CUDA_OK(cudaMemcpy(out.data(), D, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
  cudaFree(A), cudaFree(B), cudaFree(D);
  const double err = in.error(out);
  const bool ok = err <= wc::kTolerance;  // false for NaN too
  std::printf("wgmma layout %-28s N %3d: error %.1e %s\n", wc::form_name(F), N, err, ok ? "ok" : "FAIL");
  bad += !ok;
  return true;
}

int main() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) || major != 9 || minor != 0) {
    std::printf("wgmma layouts: not run (needs a compute capability 9.0 GPU, found %d.%d)\n", major, minor);
    return 2;
  }
  int bad = 0, done = 0, total = 0;
  unsigned seed = 1;
  wc::for_each_case([&]<int N, wc::Form F>() {
    ++total;
    done += run_case<N, F>(seed++, bad);
  });
  std::printf("wgmma layouts: %d of %d forms agree with the CPU emulation's model%s\n", done - bad, total,
              done < total ? " (a CUDA call failed)" : "");
  return bad || done < total ? 1 : 0;
}
