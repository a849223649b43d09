// CUDA entry points of radd_fast::masked_attention_fwd / _bwd: argument checks, the device guard, then
// the launchers of cuda.cu. This file is compiled by the host C++ compiler (not nvcc), so a bad
// argument raises its error before any nvcc-compiled code runs.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

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

int smem_limit(const at::Tensor& q) {
  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, q.get_device()));
  return limit;
}

// fp64 at head_dim 128 needs up to 146 KiB per block: more than sm_86/sm_89 allow (99 KiB).
void check_smem(const at::Tensor& q, bool backward, int query_tile, const char* op) {
  const int limit = smem_limit(q);
  const size_t bytes = smem_bytes(q.scalar_type(), q.size(3), backward, query_tile);
  TORCH_CHECK_VALUE(bytes <= static_cast<size_t>(limit), "radd_fast.", op, ": ", dtype_name(q.scalar_type()),
                    " at head_dim ", q.size(3), " needs ", bytes, " bytes of shared memory per block; this GPU allows ",
                    limit, " (use float32 or bfloat16)");
}

// Queries per block of the bf16 / fp16 forward kernel: 128 at head_dim 32 and 64 -- each K / V
// fragment read from shared memory then feeds two tensor-core instructions instead of one -- and
// 64 at head_dim 128, where 128-query blocks spill registers. RADD_FAST_ATTENTION_QUERY_TILE=64
// (read on every call, a getenv) forces 64: the benchmark's `fused-q64` row, side by side.
int forward_query_tile(const at::Tensor& q, const char* op) {
  const auto dt = q.scalar_type();
  if (dt != at::kBFloat16 && dt != at::kHalf) return 64;  // the FMA kernels have their own tiles
  const char* env = std::getenv("RADD_FAST_ATTENTION_QUERY_TILE");
  const std::string choice = env && *env ? env : "auto";
  TORCH_CHECK_VALUE(choice == "auto" || choice == "64", "radd_fast.", op,
                    ": RADD_FAST_ATTENTION_QUERY_TILE must be 'auto' or '64', got '", choice, "'");
  return choice == "auto" && q.size(3) <= 64 ? 128 : 64;
}

std::tuple<at::Tensor, at::Tensor> fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const c10::optional<at::Tensor>& key_padding_mask,
                                            const c10::optional<at::Tensor>& order, bool strict, double scale) {
  constexpr const char* op = "masked_attention";
  check_fwd_args(q, k, v, key_padding_mask, order, scale, op);
  check_cuda_args(q, op);
  const c10::cuda::CUDAGuard guard(q.device());
  const int query_tile = forward_query_tile(q, op);
  check_smem(q, /*backward=*/false, query_tile, op);
  return fwd(q, k, v, key_padding_mask, order, strict, scale, query_tile);
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
  check_smem(q, /*backward=*/true, /*query_tile=*/64, op);
  return bwd(grad_out, q, k, v, out, lse, grad_lse, key_padding_mask, order, strict, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, CUDA, m) {
  m.impl("masked_attention_fwd", &fwd_cuda);
  m.impl("masked_attention_bwd", &bwd_cuda);
}

}  // namespace radd_fast::attention::cuda
