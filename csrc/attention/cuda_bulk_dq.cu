// CUDA launcher of the mma.sync backward with bulk dQ reductions (RADD_FAST_ATTENTION_DQ=bulk;
// kernels.cuh, BwdMmaSmem), in a translation unit of its own so that a GPU build compiles it in
// parallel with cuda.cu. Called by cuda.cu once cuda_api.cpp has checked that the setting applies:
// bf16 / fp16, head_dim 32 or 64, an sm_90 GPU running this build's sm_90a code.
#include <c10/cuda/CUDAStream.h>

#include "attention/launch.cuh"

namespace radd_fast::attention::cuda {
namespace {

template <typename T, int D, int KW>
void launch_typed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& grad_out,
                  const at::Tensor& lse, const at::Tensor& delta, at::Tensor& dk, at::Tensor& dv, at::Tensor& dq_acc,
                  const MaskParams& mp, double scale) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), keys = 16 * KW;
  const int64_t grid = grid_size(B * H * ((L + keys - 1) / keys));
  auto kernel = bwd_mma_kernel<T, D, KW, true>;
  constexpr size_t smem = BwdMmaSmem<T, D, KW, true>::kBytes;
  static_assert(smem <= 227 * 1024, "an sm_90 block's shared memory");
  set_smem(kernel, smem);
  kernel<<<grid, KW * 32, smem, c10::cuda::getCurrentCUDAStream()>>>(
      rows<T>(q), rows<T>(k), rows<T>(v), rows<T>(grad_out), lse.const_data_ptr<float>(),
      delta.const_data_ptr<float>(), reinterpret_cast<T*>(dk.data_ptr()), reinterpret_cast<T*>(dv.data_ptr()),
      dq_acc.data_ptr<float>(), mp, H, static_cast<float>(scale), static_cast<float>(scale) * kLog2e);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_dim(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& grad_out,
                const at::Tensor& lse, const at::Tensor& delta, at::Tensor& dk, at::Tensor& dv, at::Tensor& dq_acc,
                const MaskParams& mp, double scale, bool keys128) {
  const int64_t D = q.size(3);
  TORCH_CHECK(D == 32 || D == 64, msg("radd_fast: bulk dQ reductions at head_dim ", D));  // cuda_api.cpp checked
  if (D == 32 && keys128) return launch_typed<T, 32, 8>(q, k, v, grad_out, lse, delta, dk, dv, dq_acc, mp, scale);
  if (D == 32) return launch_typed<T, 32, 4>(q, k, v, grad_out, lse, delta, dk, dv, dq_acc, mp, scale);
  if (keys128) return launch_typed<T, 64, 8>(q, k, v, grad_out, lse, delta, dk, dv, dq_acc, mp, scale);
  launch_typed<T, 64, 4>(q, k, v, grad_out, lse, delta, dk, dv, dq_acc, mp, scale);
}

}  // namespace

void launch_bwd_mma_bulk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& grad_out,
                         const at::Tensor& lse, const at::Tensor& delta, at::Tensor& dk, at::Tensor& dv,
                         at::Tensor& dq_acc, const MaskParams& mp, double scale, bool keys128) {
  if (q.scalar_type() == at::kBFloat16)
    launch_dim<__nv_bfloat16>(q, k, v, grad_out, lse, delta, dk, dv, dq_acc, mp, scale, keys128);
  else  // cuda_api.cpp sends bf16 / fp16 only
    launch_dim<__half>(q, k, v, grad_out, lse, delta, dk, dv, dq_acc, mp, scale, keys128);
}

}  // namespace radd_fast::attention::cuda
