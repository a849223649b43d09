// CUDA entry point of radd_fast::reveal_schedule: argument checks, the device guard, then the kernels
// of cuda.cu. Compiled by the host C++ compiler (not nvcc), so a bad argument raises its error before
// any nvcc-compiled code runs.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "reveal_schedule/schedule.h"

namespace radd_fast::schedule {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> reveal_schedule_cuda(
    const at::Tensor& masked, const at::Tensor& cdf, int64_t seed, int64_t offset) {
  const char* op = "reveal_schedule";
  check_args(masked, cdf, offset, op);
  check_device_type(masked, c10::DeviceType::CUDA, op, "masked");
  const c10::cuda::CUDAGuard guard(masked.device());
  return cuda_reveal_schedule(masked, cdf, seed, offset);
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, CUDA, m) { m.impl("reveal_schedule", &reveal_schedule_cuda); }

}  // namespace radd_fast::schedule
