// exp2 on the special-function unit for fp32 softmax arithmetic: ex2.approx.ftz.f32 (about 2 ulp;
// exp2(-inf) = +0) is one instruction, where expf is about eight. Shared by the attention kernels
// and the loss's row kernels; under the CPU emulation of the GPU (RADD_GEMM_HOST_EMULATION) it is
// std::exp2.
#pragma once

#ifdef RADD_GEMM_HOST_EMULATION
#include <cmath>
#endif

namespace radd_fast::gpu {

#ifdef RADD_GEMM_HOST_EMULATION
inline float fast_exp2(float x) { return std::exp2(x); }
#else
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
#endif

}  // namespace radd_fast::gpu
