// CUDA entry points of radd_fast::sample_rows / filter_logits: argument checks, the device guard, then
// the kernels of cuda.cu. Compiled by the host C++ compiler (not nvcc), so a bad argument raises its
// error before any nvcc-compiled code runs.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "sample_rows/sample_rows.h"

namespace radd_fast::sample_rows {
namespace {

std::tuple<at::Tensor, at::Tensor> sample_rows_cuda(const at::Tensor& hidden, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias, int64_t num_classes,
                                                    double temperature, int64_t top_k, double top_p, bool greedy,
                                                    int64_t seed, int64_t offset) {
  const NoAutocast no_autocast(kAutocastKeys);  // the head matmul stays in the inputs' dtype
  const char* op = "sample_rows";
  check_sample_rows_args(hidden, weight, bias, num_classes, temperature, top_k, top_p, offset, op);
  check_device_type(hidden, c10::DeviceType::CUDA, op, "hidden");
  const c10::cuda::CUDAGuard guard(hidden.device());
  return cuda_sample_rows(hidden, weight, bias, num_classes, temperature, top_k, top_p, greedy, seed, offset);
}

at::Tensor filter_logits_cuda(const at::Tensor& logits, double temperature, int64_t top_k, double top_p) {
  const char* op = "filter_logits";
  check_filter_logits_args(logits, temperature, top_k, top_p, op);
  check_device_type(logits, c10::DeviceType::CUDA, op, "logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  return cuda_filter_logits(logits, temperature, top_k, top_p);
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, CUDA, m) {
  m.impl("sample_rows", &sample_rows_cuda);
  m.impl("filter_logits", &filter_logits_cuda);
}

}  // namespace radd_fast::sample_rows
