// CUDA entry points of radd_fast::masked_attention_fwd / _bwd: argument checks, the device guard, then
// the launchers of cuda.cu. This file is compiled by the host C++ compiler (not nvcc), so a bad
// argument raises its error before any nvcc-compiled code runs.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include "attention/attention.h"

namespace radd_fast::attention::cuda {
namespace {

void check_cuda_args(const at::Tensor& q, const char* op) {
  check_device_type(q, c10::DeviceType::CUDA, op, "q");
  const int64_t D = q.size(3);
  TORCH_CHECK_VALUE(D == 32 || D == 64 || D == 128, "radd_fast.", op,
                    ": head_dim (last dim of 'q') must be 32, 64 or 128 on CUDA, got ", D);
  // One thread block per (batch, head, query tile) at most B * heads * L: grids stay below 2^31.
  TORCH_CHECK_VALUE(q.size(0) * q.size(1) * q.size(2) < (int64_t(1) << 31), "radd_fast.", op,
                    ": B * L * heads must be below 2^31 on CUDA, got shape ", q.sizes());
}

// fp64 at head_dim 128 needs up to 146 KiB per block: more than sm_86/sm_89 allow (99 KiB).
void check_smem(const at::Tensor& q, bool backward, const char* op) {
  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, q.get_device()));
  const size_t bytes = smem_bytes(q.scalar_type(), q.size(3), backward);
  TORCH_CHECK_VALUE(bytes <= static_cast<size_t>(limit), "radd_fast.", op, ": ", dtype_name(q.scalar_type()),
                    " at head_dim ", q.size(3), " needs ", bytes, " bytes of shared memory per block; this GPU allows ",
                    limit, " (use float32 or bfloat16)");
}

std::tuple<at::Tensor, at::Tensor> fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const c10::optional<at::Tensor>& key_padding_mask,
                                            const c10::optional<at::Tensor>& order, bool strict, double scale) {
  constexpr const char* op = "masked_attention";
  check_fwd_args(q, k, v, key_padding_mask, order, scale, op);
  check_cuda_args(q, op);
  const c10::cuda::CUDAGuard guard(q.device());
  check_smem(q, /*backward=*/false, op);
  return fwd(q, k, v, key_padding_mask, order, strict, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_cuda(const at::Tensor& grad_out, const at::Tensor& q,
                                                        const at::Tensor& k, const at::Tensor& v,
                                                        const at::Tensor& out, const at::Tensor& lse,
                                                        const c10::optional<at::Tensor>& grad_lse,
                                                        const c10::optional<at::Tensor>& key_padding_mask,
                                                        const c10::optional<at::Tensor>& order, bool strict,
                                                        double scale) {
  constexpr const char* op = "masked_attention_bwd";
  check_bwd_args(grad_out, q, k, v, out, lse, grad_lse, key_padding_mask, order, scale, op);
  check_cuda_args(q, op);
  const c10::cuda::CUDAGuard guard(q.device());
  check_smem(q, /*backward=*/true, op);
  return bwd(grad_out, q, k, v, out, lse, grad_lse, key_padding_mask, order, strict, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, CUDA, m) {
  m.impl("masked_attention_fwd", &fwd_cuda);
  m.impl("masked_attention_bwd", &bwd_cuda);
}

}  // namespace radd_fast::attention::cuda
