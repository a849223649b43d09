// CUDA kernel of radd_fast::linear_dce_loss / linear_dce_loss_grad (entry points and checks in
// cuda_api.cpp). No host synchronisation.
//
//   0. compact (1 block): order = indices of rows with weight != 0, count in device memory.
//   Then, for each chunk of R compacted rows (the host loops over ceil(N / R) chunks; a chunk past
//   the device-side count launches blocks that exit at once, so weight-0 rows cost no matmul work):
//   1. logits (R x nc, fp32; fp64 for fp64) = h[order[chunk]] @ W[:nc]^T + b   (gemm.cuh, tensor cores
//      for bf16/fp16)
//   2. one block per row, one kernel: online logsumexp of the row, its loss, and (with gradients) the
//      logit gradient w * (softmax - onehot) written over the row in the input dtype -- in place: the
//      bf16 row at the same address is half as long, and the writes of each slice of the row are
//      fenced from the reads of that slice by a barrier, so no value is overwritten before it is read
//   3. grad_h (R x D) = dlogits @ W[:nc]: split over K (= nc) into fp32 partials, summed in a fixed
//      order and scattered to grad_hidden[order[chunk]] (deterministic, no atomics)
//   4. grad_W[:nc] (fp32 accumulator) += dlogits^T @ h[order[chunk]]; grad_b[:nc] += column sums
// Working memory: the R x nc logits workspace (R from kCudaWorkspaceBytes), an fp32 weight-gradient
// accumulator for bf16/fp16 weights, split-K partials, O(N) indices.
//
// Bad values cannot be reported without reading them on the host: an active row with a target outside
// [0, num_classes) gets a NaN loss and NaN gradients (a non-finite weight propagates by itself);
// radd_fast.linear_dce_loss(validate=True) checks them on the host instead.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <array>
#include <limits>
#include <tuple>

#include "dce_loss/dce_loss.h"
#include "dce_loss/gemm.cuh"
#include "dce_loss/rows.cuh"

namespace radd_fast::dce {
namespace {

using gpu::Bound;
using gpu::GemmArgs;
using gpu::Stored;
using gpu::Tile;
using gpu::kFull;
using gpu::kRowThreads;
using gpu::to_acc;
using gpu::store_as;
using gpu::softmax_rows_kernel;
using gpu::softmax_rows_vec_kernel;
using gpu::bias_partials_kernel;
using gpu::bias_reduce_kernel;
using gpu::scatter_rows_kernel;
using gpu::gather_rows_kernel;
using gpu::compact_kernel;
using gpu::accumulate_kernel;

// ------------------------------------------------------------------------------------- epilogues
template <typename acc_t>
struct StoreLogits {  // out[m][n] = value + bias[n]
  acc_t* out;
  int64_t ld;
  const acc_t* bias;
  static constexpr bool kAccumulates = false;
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, acc_t v) const {
    out[m * ld + n] = bias ? v + bias[n] : v;
  }
};

template <typename acc_t>
struct StorePartial {  // split-K partial z of out[m][n]
  acc_t* out;
  int64_t ld, split_stride;
  static constexpr bool kAccumulates = false;
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, acc_t v) const {
    out[int64_t(blockIdx.z) * split_stride + m * ld + n] = v;
  }
};

template <typename acc_t>
struct Accumulate {  // out[m][n] += value (each entry owned by one block of the launch)
  acc_t* out;
  int64_t ld;
  static constexpr bool kAccumulates = true;
  __device__ __forceinline__ void operator()(int64_t m, int64_t n, acc_t v) const { out[m * ld + n] += v; }
};

// ---------------------------------------------------------------------------------------- host side
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// grad_b[:nc] += column sums of the chunk's valid dlogits rows (rows.cuh: bias_partials_kernel,
// bias_reduce_kernel; partial: bias_partial_rows(R) x bias_partial_stride(nc) acc_t).
template <typename T, typename acc_t>
void launch_bias_grad(const T* d, int64_t ld_t, int64_t nc, const int* cnt, int64_t row0, int64_t R, acc_t* gb,
                      acc_t* partial, cudaStream_t stream) {
  constexpr int64_t N = 16 / int64_t(sizeof(T));
  const int64_t pw = bias_partial_stride(nc);
  const dim3 grid(unsigned(ceil_div(ceil_div(nc, N), 256)), unsigned(std::min<int64_t>(bias_partial_rows(R), 65535)));
  bias_partials_kernel<T, acc_t><<<grid, 256, 0, stream>>>(d, ld_t, nc, cnt, row0, R, partial, pw);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  bias_reduce_kernel<acc_t><<<unsigned(ceil_div(nc, 256)), 256, 0, stream>>>(partial, pw, nc, cnt, row0, R, gb);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
Stored<T> stored(const void* ptr, int64_t ld, const int* rows = nullptr, int64_t rows_offset = 0) {
  constexpr int64_t vec = 16 / int64_t(sizeof(T));
  const bool aligned = reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && ld % vec == 0;
  return Stored<T>{static_cast<const T*>(ptr), ld, rows, rows_offset, aligned};
}

template <typename T, bool A_KMAJOR, bool B_KMAJOR, class Epi>
void launch_gemm(const GemmArgs<T>& a, const Epi& epi, int64_t m_max, int splits, cudaStream_t stream) {
  using TL = Tile<T>;
  const int64_t gy = ceil_div(a.N, TL::BN);
  TORCH_CHECK(gy <= 65535, msg("radd_fast.", kOp, ": too many columns for the CUDA kernel (", a.N, ")"));
  const dim3 grid(unsigned(ceil_div(m_max, TL::BM)), unsigned(gy), unsigned(splits));
  if (grid.x == 0 || grid.y == 0) return;
  auto kernel = gpu::gemm_kernel<T, A_KMAJOR, B_KMAJOR, Epi>;
  constexpr size_t smem = gpu::GemmSmem<T, A_KMAJOR, B_KMAJOR>::kBytes;
  // More than the default 48 KB of dynamic shared memory needs an opt-in (a host-side attribute, no
  // synchronisation; sm_80 and newer allow at least 99 KB per block).
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, gpu::kThreads, smem, stream>>>(a, epi);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

struct Flags {
  bool hidden = false, weight = false, bias = false;
  bool any() const { return hidden || weight || bias; }
};

int sm_count(int device) {
  static int cached[64] = {0};
  int& n = cached[device < 64 ? device : 63];
  if (n == 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> run(const at::Tensor& hidden, const at::Tensor& weight,
                                                                const c10::optional<at::Tensor>& bias_opt,
                                                                const at::Tensor& target, const at::Tensor& row_weight,
                                                                int64_t nc, Flags want) {
  using acc_t = typename gpu::AccOf<T>::type;
  using TL = Tile<T>;
  const int64_t N = hidden.size(0), D = hidden.size(1);
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  const auto fopt = hidden.options().dtype(acc);
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  want.bias = want.bias && has_bias;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const at::Tensor tgt = target.contiguous();
  const at::Tensor w_acc = row_weight.to(acc).contiguous();
  at::Tensor loss = at::zeros({N}, fopt);
  at::Tensor grad_hidden = want.hidden ? at::zeros_like(hidden) : at::empty({0}, hidden.options());
  at::Tensor grad_weight = want.weight ? at::zeros_like(weight) : at::empty({0}, weight.options());
  at::Tensor grad_bias = want.bias ? at::zeros_like(*bias_opt) : at::empty({0}, weight.options());

  at::Tensor order = at::empty({N}, hidden.options().dtype(at::kInt));
  at::Tensor count = at::empty({1}, hidden.options().dtype(at::kInt));
  compact_kernel<acc_t><<<1, 1024, 0, stream>>>(w_acc.const_data_ptr<acc_t>(), N, order.data_ptr<int>(),
                                                count.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int* ord = order.const_data_ptr<int>();
  const int* cnt = count.const_data_ptr<int>();

  // Workspace row stride: a multiple of 16 elements, so the in-place T view of a row (stride
  // ld * sizeof(acc_t) / sizeof(T)) stays 16-byte aligned for vector loads.
  const int64_t ld = ceil_div(nc, 16) * 16;
  const int64_t ld_t = ld * int64_t(sizeof(acc_t)) / int64_t(sizeof(T));
  int64_t R = kCudaWorkspaceBytes / (ld * int64_t(sizeof(acc_t))) / 128 * 128;
  R = std::max<int64_t>(128, std::min(R, ceil_div(N, 128) * 128));
  R = cuda_chunk_rows(R, N);
  at::Tensor logits = at::empty({R, ld}, fopt);
  acc_t* L = logits.data_ptr<acc_t>();
  const T* d_ptr = reinterpret_cast<const T*>(L);

  const T* H = reinterpret_cast<const T*>(hidden.const_data_ptr());
  const T* W = reinterpret_cast<const T*>(weight.const_data_ptr());
  const at::Tensor b_acc = has_bias ? bias_opt->narrow(0, 0, nc).to(acc).contiguous() : at::Tensor();
  const bool same = weight.scalar_type() == acc;
  at::Tensor gw_acc, gb_acc, part, gb_part;
  if (want.weight) gw_acc = same ? grad_weight.narrow(0, 0, nc) : at::zeros({nc, D}, fopt);
  if (want.bias) gb_acc = same ? grad_bias.narrow(0, 0, nc) : at::zeros({nc}, fopt);
  if (want.bias) gb_part = at::empty({bias_partial_rows(R), bias_partial_stride(nc)}, fopt);

  // grad_h has only ceil(R / BM) x ceil(D / BN) output tiles (60 for R = 1,280, D = 768) and a deep
  // K = nc: split K into as many parts as fit one wave at two blocks per SM (the shared memory of an
  // sm_80/sm_90 SM holds two 80 KB blocks): on 132 SMs, 4 splits of 60 tiles is 240 blocks at once,
  // where 5 would leave 36 of 300 blocks for a second, nearly empty wave.
  const int64_t out_tiles = ceil_div(R, TL::BM) * ceil_div(D, TL::BN);
  int splits = int(std::min<int64_t>(16, std::max<int64_t>(1, 2 * sm_count(hidden.get_device()) / out_tiles)));
  const int64_t k_split = ceil_div(ceil_div(nc, splits), TL::BK) * TL::BK;
  splits = int(ceil_div(nc, k_split));
  if (want.hidden) part = at::empty({splits, R, D}, fopt);

  for (int64_t row0 = 0; row0 < N; row0 += R) {
    // 1. logits of the chunk's rows: A = hidden rows gathered through order (K-major), B = W (K-major).
    GemmArgs<T> lg{stored<T>(H, D, ord, row0), stored<T>(W, D), Bound{R, cnt, row0}, Bound{D, nullptr, 0}, nc,
                   ceil_div(D, TL::BK) * TL::BK};
    launch_gemm<T, true, true>(lg, StoreLogits<acc_t>{L, ld, has_bias ? b_acc.const_data_ptr<acc_t>() : nullptr}, R,
                               1, stream);
    // 2. logsumexp, loss, dlogits.
    softmax_rows_kernel<T, acc_t, acc_t><<<unsigned(R), kRowThreads, 0, stream>>>(
        L, ld, nc, ord, cnt, row0, tgt.const_data_ptr<int64_t>(), w_acc.const_data_ptr<acc_t>(), nullptr,
        loss.data_ptr<acc_t>(), want.any());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!want.any()) continue;
    if (want.hidden) {
      // 3. grad_h = dlogits (K-major, K = nc) @ W[:nc] (stored rows = K).
      GemmArgs<T> gh{stored<T>(d_ptr, ld_t), stored<T>(W, D), Bound{R, cnt, row0}, Bound{nc, nullptr, 0}, D, k_split};
      launch_gemm<T, true, false>(gh, StorePartial<acc_t>{part.data_ptr<acc_t>(), D, R * D}, R, splits, stream);
      const int64_t blocks = std::min<int64_t>(ceil_div(R * D, 256), 4096);
      scatter_rows_kernel<T, acc_t><<<unsigned(blocks), 256, 0, stream>>>(
          part.const_data_ptr<acc_t>(), splits, R * D, R, D, ord, cnt, row0,
          reinterpret_cast<T*>(grad_hidden.data_ptr()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (want.weight) {
      // 4. grad_W[:nc] += dlogits^T (stored rows = K = chunk rows, cols = M = classes) @ hidden rows
      //    gathered through order (stored rows = K); K bounded by the device-side count.
      GemmArgs<T> gw{stored<T>(d_ptr, ld_t), stored<T>(H, D, ord, row0), Bound{nc, nullptr, 0}, Bound{R, cnt, row0}, D,
                     ceil_div(R, TL::BK) * TL::BK};
      launch_gemm<T, false, false>(gw, Accumulate<acc_t>{gw_acc.data_ptr<acc_t>(), D}, nc, 1, stream);
    }
    if (want.bias) {
      launch_bias_grad<T, acc_t>(d_ptr, ld_t, nc, cnt, row0, R, gb_acc.data_ptr<acc_t>(), gb_part.data_ptr<acc_t>(),
                                 stream);
    }
  }
  if (want.weight && !same) grad_weight.narrow(0, 0, nc).copy_(gw_acc);
  if (want.bias && !same) grad_bias.narrow(0, 0, nc).copy_(gb_acc);
  return {loss, grad_hidden, grad_weight, grad_bias};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cuda_forward_backward(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const at::Tensor& target,
    const at::Tensor& row_weight, int64_t num_classes, bool grad_hidden, bool grad_weight, bool grad_bias) {
  const Flags want{grad_hidden, grad_weight, grad_bias};
  switch (hidden.scalar_type()) {
    case at::kFloat: return run<float>(hidden, weight, bias, target, row_weight, num_classes, want);
    case at::kDouble: return run<double>(hidden, weight, bias, target, row_weight, num_classes, want);
    case at::kBFloat16: return run<__nv_bfloat16>(hidden, weight, bias, target, row_weight, num_classes, want);
    default: return run<__half>(hidden, weight, bias, target, row_weight, num_classes, want);
  }
}

// ------------------------------------------------------------- kernels of the grouped engine
namespace grouped {

using bf16 = __nv_bfloat16;
static_assert(sizeof(at::BFloat16) == sizeof(bf16), "at::BFloat16 and __nv_bfloat16 share one layout");

unsigned grid_for(int64_t items) { return unsigned(std::min<int64_t>(std::max<int64_t>(ceil_div(items, 256), 1), 4096)); }

void launch_compact(const float* row_weight, int64_t N, int* order, int* count) {
  compact_kernel<float><<<1, 1024, 0, c10::cuda::getCurrentCUDAStream()>>>(row_weight, N, order, count);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_gather_rows(const at::BFloat16* hidden, int64_t D, const int* order, const int* count, int64_t row0,
                        int64_t R, at::BFloat16* out, int* valid_out) {
  const int64_t vecs = D * int64_t(sizeof(bf16)) / 16;
  gather_rows_kernel<uint4><<<grid_for(R * vecs), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const uint4*>(hidden), vecs, order, count, row0, R, reinterpret_cast<uint4*>(out), valid_out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_softmax_rows(at::BFloat16* logits, int64_t ld, int64_t nc, const int* order, const int* count, int64_t row0,
                         int64_t R, const int64_t* target, const float* row_weight, const float* bias, float* loss,
                         bool write_grad, const at::BFloat16* hc, const at::BFloat16* weight, int64_t D) {
  softmax_rows_vec_kernel<bf16, float><<<unsigned(R), kRowThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<bf16*>(logits), ld, nc, order, count, row0, target, row_weight, bias, loss, write_grad,
      reinterpret_cast<const bf16*>(hc), reinterpret_cast<const bf16*>(weight), D);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_scatter_rows(const at::BFloat16* rows, int64_t R, int64_t D, const int* order, const int* count,
                         int64_t row0, at::BFloat16* grad_hidden) {
  scatter_rows_kernel<bf16, bf16><<<grid_for(R * D), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const bf16*>(rows), 1, 0, R, D, order, count, row0, reinterpret_cast<bf16*>(grad_hidden));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> on_side_streams(int n, const std::function<at::Tensor(int)>& make) {
  struct Events {  // destroyed on every exit (cudaEventDestroy may be called while still pending)
    std::vector<cudaEvent_t> e;
    cudaEvent_t make() {
      cudaEvent_t x;
      C10_CUDA_CHECK(cudaEventCreateWithFlags(&x, cudaEventDisableTiming));
      e.push_back(x);
      return x;
    }
    ~Events() {
      for (auto x : e) cudaEventDestroy(x);
    }
  } events;
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream();
  const cudaEvent_t fork = events.make();
  C10_CUDA_CHECK(cudaEventRecord(fork, main.stream()));
  std::vector<at::Tensor> out;
  for (int i = 0; i < n; ++i) {
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, main.device_index());
    C10_CUDA_CHECK(cudaStreamWaitEvent(side.stream(), fork, 0));
    auto join = [&] {  // main waits for what was queued on this side stream
      const cudaEvent_t done = events.make();
      C10_CUDA_CHECK(cudaEventRecord(done, side.stream()));
      C10_CUDA_CHECK(cudaStreamWaitEvent(main.stream(), done, 0));
    };
    try {
      const c10::cuda::CUDAStreamGuard guard(side);
      out.push_back(make(i));
    } catch (...) {
      // Work that make() queued before it threw may still read the caller's tensors: join it before
      // the error unwinds them (and the caching allocator hands their memory to main's next use).
      join();
      throw;
    }
    join();
  }
  for (auto& t : out) t.record_stream(main);
  return out;
}

void launch_accumulate(float* acc, const at::BFloat16* x, int64_t n, const int* valid) {
  accumulate_kernel<bf16><<<grid_for(n / 8), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      acc, reinterpret_cast<const bf16*>(x), n / 8, valid);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_bias_grad(const at::BFloat16* dlogits, int64_t ld, int64_t nc, const int* count, int64_t row0, int64_t R,
                      float* grad_bias, float* partial) {
  ::radd_fast::dce::launch_bias_grad<bf16, float>(reinterpret_cast<const bf16*>(dlogits), ld, nc, count, row0, R,
                                                  grad_bias, partial, c10::cuda::getCurrentCUDAStream());
}

}  // namespace grouped

}  // namespace radd_fast::dce
