// Launch helpers shared by the attention's CUDA translation units (cuda.cu, cuda_wgmma.cu,
// cuda_bulk_dq.cu), and the launchers that those two compile on their own (in parallel with cuda.cu).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>

#include <type_traits>

#include "attention/kernels.cuh"

namespace radd_fast::attention::cuda {

inline int64_t grid_size(int64_t n) {
  TORCH_CHECK(n < (int64_t(1) << 31), msg("radd_fast.masked_attention: problem too large (", n, " thread blocks)"));
  return n;
}

// Calls f(std::integral_constant<int, D>) for the supported head dims.
template <typename F>
inline void with_head_dim(int64_t D, F&& f) {
  switch (D) {
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default:
      TORCH_CHECK(false, msg("radd_fast: unsupported head_dim ", D));  // check_head_dim ran first
  }
}

template <typename T>
Rows<T> rows(const at::Tensor& t) {
  return Rows<T>{reinterpret_cast<const T*>(t.const_data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

template <typename K>
inline void set_smem(K kernel, size_t bytes) {
  // cuda_api.cpp has checked bytes against the GPU's opt-in limit (smem_bytes in cuda.cu).
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// cuda_wgmma.cu. The inputs are 16-byte aligned (aligned16), the stream the current one.
// keys128: the forward's 128-key steps (TcKernel::kWgmmaK128).
size_t wgmma_smem_bytes(int64_t head_dim, bool backward, bool keys128);
void launch_fwd_wgmma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const MaskParams& mp,
                      double scale, bool keys128, at::Tensor& out, at::Tensor& lse);
void launch_bwd_wgmma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& grad_out,
                      const at::Tensor& lse, const at::Tensor& delta, at::Tensor& dk, at::Tensor& dv,
                      at::Tensor& dq_acc, const MaskParams& mp, double scale);

// cuda_bulk_dq.cu: the mma backward with bulk dQ reductions (RADD_FAST_ATTENTION_DQ=bulk), bf16 /
// fp16 at head_dim 32 or 64 on sm_90; keys128: 128-key blocks (TcKernel::kMma128).
void launch_bwd_mma_bulk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& grad_out,
                         const at::Tensor& lse, const at::Tensor& delta, at::Tensor& dk, at::Tensor& dv,
                         at::Tensor& dq_acc, const MaskParams& mp, double scale, bool keys128);

}  // namespace radd_fast::attention::cuda
