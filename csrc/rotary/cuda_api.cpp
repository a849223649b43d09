// CUDA entry points of radd_fast::rotary / rotary_: argument checks, the device guard, then the kernel
// of cuda.cu. Compiled by the host C++ compiler (not nvcc), so a bad argument raises its error before
// any nvcc-compiled code runs.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "rotary/rotary.h"

namespace radd_fast::rotary {
namespace {

void rotary_inplace_cuda(at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, bool inverse) {
  check_args(qkv, cos, sin, "rotary_");
  check_device_type(qkv, c10::DeviceType::CUDA, "rotary_", "qkv");
  const c10::cuda::CUDAGuard guard(qkv.device());
  cuda_launch(qkv, qkv, cos, sin, inverse);
}

at::Tensor rotary_cuda(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, bool inverse) {
  check_args(qkv, cos, sin, "rotary");
  check_device_type(qkv, c10::DeviceType::CUDA, "rotary", "qkv");
  const c10::cuda::CUDAGuard guard(qkv.device());
  at::Tensor out = at::empty_like(qkv);
  cuda_launch(qkv, out, cos, sin, inverse);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, CUDA, m) {
  m.impl("rotary", &rotary_cuda);
  m.impl("rotary_", &rotary_inplace_cuda);
}

}  // namespace radd_fast::rotary
