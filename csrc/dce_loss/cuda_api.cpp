// CUDA entry points of radd_fast::linear_dce_loss / linear_dce_loss_grad: argument checks, the device
// guard, then the kernel of cuda.cu. Compiled by the host C++ compiler (not nvcc), so a bad argument
// raises its error before any nvcc-compiled code runs.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "dce_loss/dce_loss.h"

namespace radd_fast::dce {
namespace {

void check_cuda_args(const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     const at::Tensor& target, const at::Tensor& row_weight, int64_t num_classes) {
  check_args(hidden, weight, bias, target, row_weight, num_classes);
  check_device_type(hidden, c10::DeviceType::CUDA, kOp, "hidden");
  const auto dt = hidden.scalar_type();
  if (dt != at::kBFloat16 && dt != at::kHalf) return;
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, hidden.get_device()));
  TORCH_CHECK_VALUE(major >= 8, "radd_fast.", kOp, ": 'hidden' of dtype ", dtype_name(dt),
                    " needs compute capability 8.0 or newer on CUDA (tensor-core bf16/fp16), this device has ", major,
                    ".x; use float32");
}

at::Tensor linear_dce_loss_cuda(const at::Tensor& hidden, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& target,
                                const at::Tensor& row_weight, int64_t num_classes) {
  check_cuda_args(hidden, weight, bias, target, row_weight, num_classes);
  const c10::cuda::CUDAGuard guard(hidden.device());
  return std::get<0>(cuda_forward_backward(hidden, weight, bias, target, row_weight, num_classes, false, false, false));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_dce_loss_grad_cuda(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const at::Tensor& target,
    const at::Tensor& row_weight, int64_t num_classes, std::array<bool, 3> output_mask) {
  check_cuda_args(hidden, weight, bias, target, row_weight, num_classes);
  const c10::cuda::CUDAGuard guard(hidden.device());
  return cuda_forward_backward(hidden, weight, bias, target, row_weight, num_classes, output_mask[0], output_mask[1],
                               output_mask[2]);
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, CUDA, m) {
  m.impl("linear_dce_loss", &linear_dce_loss_cuda);
  m.impl("linear_dce_loss_grad", &linear_dce_loss_grad_cuda);
}

}  // namespace radd_fast::dce
