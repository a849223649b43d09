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
  TORCH_CHECK_VALUE(D == 32 || D == 64 || D == 128,
                    msg("radd_fast.", op, ": head_dim (last dim of 'q') must be 32, 64 or 128 on CUDA, got ", D));
  // One thread block per (batch, head, query tile) at most B * heads * L: grids stay below 2^31.
  TORCH_CHECK_VALUE(q.size(0) * q.size(1) * q.size(2) < (int64_t(1) << 31),
                    msg("radd_fast.", op, ": B * L * heads must be below 2^31 on CUDA, got shape ", q.sizes()));
}

int smem_limit(const at::Tensor& q) {
  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, q.get_device()));
  return limit;
}

bool low_precision(const at::Tensor& q) {
  return q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf;
}

// fp64 at head_dim 128 needs up to 146 KiB per block, and the opt-in 128-key tiles of the bf16 /
// fp16 mma kernels at head_dim 128 121 KiB (backward) and 153 KiB (forward): more than sm_86 /
// sm_89 allow (99 KiB).
// The hint names what the caller can change: the dtype, or the key tile it asked for.
void check_smem(const at::Tensor& q, bool backward, TcKernel kernel, const char* op) {
  const int limit = smem_limit(q);
  const size_t bytes = smem_bytes(q.scalar_type(), q.size(3), backward, kernel);
  const bool key128 = low_precision(q) && (kernel == TcKernel::kMma64K128 || kernel == TcKernel::kWgmmaK128 ||
                                           (backward && kernel == TcKernel::kMma128));
  TORCH_CHECK_VALUE(
      bytes <= static_cast<size_t>(limit),
      msg("radd_fast.", op, ": ", dtype_name(q.scalar_type()), " at head_dim ", q.size(3), " needs ", bytes,
          " bytes of shared memory per block; this GPU allows ", limit,
          key128 ? " (128-key tiles: unset RADD_FAST_ATTENTION_KEY_TILE or set it to 64)"
                 : " (use float32 or bfloat16)"));
}

// The tensor-core kernels of the bf16 / fp16 passes, from settings read on every call (a getenv each):
//   RADD_FAST_ATTENTION_FORWARD, RADD_FAST_ATTENTION_BACKWARD = auto | mma | wgmma. wgmma
//     (fwd_wgmma.cuh, bwd_wgmma.cuh) needs an sm_90 GPU and a build with sm_90a code; it is opt-in
//     until a GPU run has measured it (bench/RESULTS.md), so auto is mma for now.
//   RADD_FAST_ATTENTION_QUERY_TILE = auto | 64, for the mma forward: 128 queries per block at
//     head_dim 32 and 64 -- each K / V fragment read from shared memory then feeds two tensor-core
//     instructions instead of one -- and 64 at head_dim 128, where 128-query blocks spill
//     registers; 64 forces 64 (the benchmark's `fused-q64` row).
//   RADD_FAST_ATTENTION_KEY_TILE = auto | 64 | 128, for the mma kernels: keys per backward block (4
//     or 8 warps of 16 keys) and keys per forward step; 128 runs the forward on 64-query blocks (128
//     queries x 128 keys spill registers); auto = 64 until a GPU run has measured 128 (the
//     benchmark's `fused-k128` rows). With the wgmma forward, 128 selects its 128-key steps
//     (fwd_wgmma.cuh; `fused-wgmma-k128`); the wgmma backward sizes its own blocks.
bool use_wgmma(const at::Tensor& q, const char* var, const char* op) {
  const char* env = std::getenv(var);
  const std::string engine = env && *env ? env : "auto";
  TORCH_CHECK_VALUE(engine == "auto" || engine == "mma" || engine == "wgmma",
                    msg("radd_fast.", op, ": ", var, " must be 'auto', 'mma' or 'wgmma', got '", engine, "'"));
  if (engine != "wgmma") return false;
  TORCH_CHECK_VALUE(wgmma_available(q.get_device()),
                    msg("radd_fast.", op, ": ", var,
                        "=wgmma needs a compute capability 9.0 GPU (H100 / H200) and a build with sm_90a code "
                        "(TORCH_CUDA_ARCH_LIST=9.0a); this device or build has none"));
  return true;
}

// RADD_FAST_ATTENTION_KEY_TILE, checked: "auto", "64" or "128". The wgmma backward sizes its own
// blocks, so with it selected (wgmma_backward) anything but auto is an error.
std::string key_tile_setting(bool wgmma_backward, const char* op) {
  const char* env = std::getenv("RADD_FAST_ATTENTION_KEY_TILE");
  const std::string tile = env && *env ? env : "auto";
  TORCH_CHECK_VALUE(tile == "auto" || tile == "64" || tile == "128",
                    msg("radd_fast.", op, ": RADD_FAST_ATTENTION_KEY_TILE must be 'auto', '64' or '128', got '", tile,
                        "'"));
  TORCH_CHECK_VALUE(!wgmma_backward || tile == "auto",
                    msg("radd_fast.", op,
                        ": RADD_FAST_ATTENTION_KEY_TILE applies to the mma kernels and the wgmma forward; the "
                        "wgmma backward (RADD_FAST_ATTENTION_BACKWARD=wgmma) sizes its own blocks"));
  return tile;
}

// RADD_FAST_ATTENTION_DQ = auto | atomic | bulk, for the bf16 / fp16 mma backward: bulk stages each
// dQ tile in shared memory and adds it to the fp32 accumulator with Hopper's bulk reductions
// (kernels.cuh, BwdMmaSmem) instead of 16-byte atomics; head_dim 32 and 64 (at 128 its staging tile
// would halve the blocks per SM), an sm_90 GPU running this build's sm_90a code. Opt-in (auto =
// atomic) until a GPU run has measured it (the benchmark's `fused-dq-bulk` rows).
bool bulk_dq(const at::Tensor& q, TcKernel kernel, const char* op) {
  const char* env = std::getenv("RADD_FAST_ATTENTION_DQ");
  const std::string mode = env && *env ? env : "auto";
  TORCH_CHECK_VALUE(mode == "auto" || mode == "atomic" || mode == "bulk",
                    msg("radd_fast.", op, ": RADD_FAST_ATTENTION_DQ must be 'auto', 'atomic' or 'bulk', got '", mode,
                        "'"));
  if (mode != "bulk" || !low_precision(q)) return false;  // the fp32 / fp64 kernels keep their atomics
  TORCH_CHECK_VALUE(kernel == TcKernel::kMma64 || kernel == TcKernel::kMma128,
                    msg("radd_fast.", op,
                        ": RADD_FAST_ATTENTION_DQ=bulk applies to the mma backward; the wgmma backward "
                        "(RADD_FAST_ATTENTION_BACKWARD=wgmma) adds dQ with atomics"));
  TORCH_CHECK_VALUE(q.size(3) <= 64, msg("radd_fast.", op, ": RADD_FAST_ATTENTION_DQ=bulk runs at head_dim 32 and 64, got ",
                                         q.size(3), " (unset it or set it to 'atomic')"));
  TORCH_CHECK_VALUE(wgmma_available(q.get_device()),
                    msg("radd_fast.", op,
                        ": RADD_FAST_ATTENTION_DQ=bulk needs a compute capability 9.0 GPU (H100 / H200) and a build "
                        "with sm_90a code (TORCH_CUDA_ARCH_LIST=9.0a); this device or build has none"));
  return true;
}

TcKernel forward_kernel(const at::Tensor& q, const char* op) {
  if (!low_precision(q)) return TcKernel::kMma64;  // the FMA kernels have their own tiles
  const bool wgmma = use_wgmma(q, "RADD_FAST_ATTENTION_FORWARD", op);
  const char* tile_env = std::getenv("RADD_FAST_ATTENTION_QUERY_TILE");
  const std::string tile = tile_env && *tile_env ? tile_env : "auto";
  TORCH_CHECK_VALUE(tile == "auto" || tile == "64",
                    msg("radd_fast.", op, ": RADD_FAST_ATTENTION_QUERY_TILE must be 'auto' or '64', got '", tile, "'"));
  const std::string keys = key_tile_setting(false, op);
  if (wgmma) {
    TORCH_CHECK_VALUE(tile == "auto",
                      msg("radd_fast.", op,
                          ": RADD_FAST_ATTENTION_QUERY_TILE=64 applies to the mma forward; the wgmma forward "
                          "(RADD_FAST_ATTENTION_FORWARD=wgmma) sizes its own blocks"));
    return keys == "128" ? TcKernel::kWgmmaK128 : TcKernel::kWgmma;
  }
  if (keys == "128") return TcKernel::kMma64K128;
  return tile == "auto" && q.size(3) <= 64 ? TcKernel::kMma128 : TcKernel::kMma64;
}

TcKernel backward_kernel(const at::Tensor& q, const char* op) {
  const bool wgmma = low_precision(q) && use_wgmma(q, "RADD_FAST_ATTENTION_BACKWARD", op);
  const std::string keys = key_tile_setting(wgmma, op);
  if (wgmma) return TcKernel::kWgmma;
  return keys == "128" ? TcKernel::kMma128 : TcKernel::kMma64;
}

std::tuple<at::Tensor, at::Tensor> fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const c10::optional<at::Tensor>& key_padding_mask,
                                            const c10::optional<at::Tensor>& order, bool strict, double scale) {
  constexpr const char* op = "masked_attention";
  check_fwd_args(q, k, v, key_padding_mask, order, scale, op);
  check_cuda_args(q, op);
  const c10::cuda::CUDAGuard guard(q.device());
  const TcKernel kernel = forward_kernel(q, op);
  check_smem(q, /*backward=*/false, kernel, op);
  return fwd(q, k, v, key_padding_mask, order, strict, scale, kernel);
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
  const TcKernel kernel = backward_kernel(q, op);
  check_smem(q, /*backward=*/true, kernel, op);
  // Its staging tile adds 10-18 KiB: at most 109 KiB in all, where sm_90 allows 227.
  const bool bulk = bulk_dq(q, kernel, op);
  return bwd(grad_out, q, k, v, out, lse, grad_lse, key_padding_mask, order, strict, scale, kernel, bulk);
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, CUDA, m) {
  m.impl("masked_attention_fwd", &fwd_cuda);
  m.impl("masked_attention_bwd", &bwd_cuda);
}

}  // namespace radd_fast::attention::cuda
