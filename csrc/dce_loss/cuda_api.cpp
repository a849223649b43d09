// CUDA entry points of radd_fast::linear_dce_loss / linear_dce_loss_grad: argument checks, the device
// guard, the choice of engine, then the tile engine of cuda.cu or the grouped engine of
// cuda_grouped.cpp. Compiled by the host C++ compiler (not nvcc), so a bad argument
// raises its error before any nvcc-compiled code runs.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
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
  TORCH_CHECK_VALUE(
      major >= 8, msg("radd_fast.", kOp, ": 'hidden' of dtype ", dtype_name(dt),
                      " needs compute capability 8.0 or newer on CUDA (tensor-core bf16/fp16), this device has ", major,
                      ".x; use float32"));
}

// Which engine runs the matmuls. RADD_FAST_DCE_ENGINE (read on every call, a getenv):
//   auto (default): "grouped" where it applies, else "tiles";
//   grouped: torch's grouped GEMM (cuda_grouped.cpp): bf16 on compute capability 9.x / 10.x (where
//     torch runs it without a host synchronisation), D * 2 bytes and the data pointers 16-byte aligned;
//   tiles: our own tiled GEMM (cuda.cu), every dtype and device.
struct EngineChoice {
  bool grouped, forced;
};

// Set when torch's grouped GEMM refused a call that `auto` gave it (a torch without that kernel or
// with other layout rules, say): `auto` then keeps to the tile engine for the rest of the process,
// after one warning; RADD_FAST_DCE_ENGINE=grouped still raises the refusal.
std::atomic<bool> grouped_refused{false};

EngineChoice choose_engine(const at::Tensor& hidden, const at::Tensor& weight) {
  const char* env = std::getenv("RADD_FAST_DCE_ENGINE");
  const std::string choice = env == nullptr || *env == 0 ? "auto" : env;
  TORCH_CHECK_VALUE(
      choice == "auto" || choice == "grouped" || choice == "tiles",
      msg("radd_fast.", kOp, ": RADD_FAST_DCE_ENGINE must be 'auto', 'grouped' or 'tiles', got '", choice, "'"));
  const bool forced = choice == "grouped";
  if (choice == "tiles" || (!forced && grouped_refused.load())) return {false, false};
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, hidden.get_device()));
  const char* why = hidden.scalar_type() != at::kBFloat16 ? "it needs bfloat16 inputs"
                    : major != 9 && major != 10           ? "it needs compute capability 9.x or 10.x"
                    : hidden.size(1) % 8 != 0             ? "it needs D to be a multiple of 8"
                    : !aligned16(hidden) || !aligned16(weight) ? "it needs 16-byte aligned 'hidden' and 'weight'"
                                                           : nullptr;
  TORCH_CHECK_VALUE(why == nullptr || !forced,
                    msg("radd_fast.", kOp, ": RADD_FAST_DCE_ENGINE=grouped cannot run this call: ", why ? why : ""));
  return {why == nullptr, forced};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> run(const at::Tensor& hidden, const at::Tensor& weight,
                                                                const c10::optional<at::Tensor>& bias,
                                                                const at::Tensor& target, const at::Tensor& row_weight,
                                                                int64_t num_classes, std::array<bool, 3> want) {
  check_cuda_args(hidden, weight, bias, target, row_weight, num_classes);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const EngineChoice engine = choose_engine(hidden, weight);
  if (engine.grouped) {
    grad_h_split();  // a bad RADD_FAST_DCE_GRAD_H_SPLIT raises here, not inside the guarded attempt below
    if (engine.forced)
      return grouped_forward_backward(hidden, weight, bias, target, row_weight, num_classes, want[0], want[1], want[2]);
    try {
      return grouped_forward_backward(hidden, weight, bias, target, row_weight, num_classes, want[0], want[1], want[2]);
    } catch (const c10::Error& e) {
      // Every output of the failed attempt is discarded; the tile engine computes the call afresh.
      grouped_refused.store(true);
      TORCH_WARN("radd_fast.", kOp, ": torch's grouped GEMM refused a call, so this and every later call of this "
                 "process runs on the tile engine (RADD_FAST_DCE_ENGINE=grouped raises the error instead): ",
                 e.what_without_backtrace());
    }
  }
  return cuda_forward_backward(hidden, weight, bias, target, row_weight, num_classes, want[0], want[1], want[2]);
}

at::Tensor linear_dce_loss_cuda(const at::Tensor& hidden, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& target,
                                const at::Tensor& row_weight, int64_t num_classes) {
  return std::get<0>(run(hidden, weight, bias, target, row_weight, num_classes, {false, false, false}));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_dce_loss_grad_cuda(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const at::Tensor& target,
    const at::Tensor& row_weight, int64_t num_classes, std::array<bool, 3> output_mask) {
  return run(hidden, weight, bias, target, row_weight, num_classes, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, CUDA, m) {
  m.impl("linear_dce_loss", &linear_dce_loss_cuda);
  m.impl("linear_dce_loss_grad", &linear_dce_loss_grad_cuda);
}

}  // namespace radd_fast::dce
