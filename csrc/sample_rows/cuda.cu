// CUDA kernels of radd_fast::sample_rows and radd_fast::filter_logits (definitions in
// sample_rows.h). The head matmul of a chunk of rows goes to cuBLAS (at::addmm, fp32 or fp64
// logits); then one block per row: a max pass, radix-select passes for top-k / top-p (shared-memory
// histograms of integer counts and fixed-point masses, so the thresholds do not depend on the order
// of the atomics), and one race pass that draws the Philox noise on the fly. Reductions are
// butterflies over a fixed thread layout: results are reproducible run to run. No host sync.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "sample_rows/sample_rows.h"

namespace radd_fast::sample_rows {
namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;

template <typename T>
struct alignas(16) Shared {
  unsigned long long hist[kBins];
  T val[kWarps];
  int64_t idx[kWarps];
  int bin;
  unsigned long long above;
  double need;
};

template <typename T>
__device__ __forceinline__ void argmax_combine(T& a, int64_t& ia, T b, int64_t ib) {
  if (b > a || (b == a && ib < ia)) {
    a = b;
    ia = ib;
  }
}

// Block-wide (max, first index of the max); every thread gets the result.
template <typename T>
__device__ void block_argmax(T& v, int64_t& i, Shared<T>& sh) {
  for (int d = 16; d > 0; d >>= 1) argmax_combine(v, i, __shfl_xor_sync(0xffffffffu, v, d), __shfl_xor_sync(0xffffffffu, i, d));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sh.val[warp] = v;
    sh.idx[warp] = i;
  }
  __syncthreads();
  v = sh.val[0];
  i = sh.idx[0];
  for (int w = 1; w < kWarps; ++w) argmax_combine(v, i, sh.val[w], sh.idx[w]);
  __syncthreads();
}

template <typename T>
__device__ T block_sum(T v, Shared<T>& sh) {
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sh.val[warp] = v;
  __syncthreads();
  T s = sh.val[0];
  for (int w = 1; w < kWarps; ++w) s += sh.val[w];
  __syncthreads();
  return s;
}

// Warp 0 picks the bin (same rule as select_bin_host): lane j holds bins 255 - 8j .. 248 - 8j, an
// inclusive scan over lanes finds the lane holding the answer, which scans its 8 bins. need < 0
// means "top_p times the total" (the first top-p pass learns the total mass here).
__device__ void select_bin_warp(const unsigned long long* hist, unsigned long long above, double need, double top_p,
                                int& bin_out, unsigned long long& above_out, double& need_out) {
  const int lane = threadIdx.x & 31;
  unsigned long long local = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) local += hist[kBins - 1 - 8 * lane - j];
  unsigned long long incl = local;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const unsigned long long y = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += y;
  }
  if (need < 0) need = top_p * double(above + __shfl_sync(0xffffffffu, incl, 31));
  const unsigned ballot = __ballot_sync(0xffffffffu, double(above + incl) >= need);
  const int first = ballot ? __ffs(ballot) - 1 : 31;
  if (lane == first) {
    unsigned long long cum = above + incl - local;
    for (int j = 0; j < 8; ++j) {
      const int b = kBins - 1 - 8 * lane - j;
      if (double(cum + hist[b]) >= need || j == 7) {
        bin_out = b;
        above_out = cum;
        need_out = need;
        break;
      }
      cum += hist[b];
    }
  }
}

// Smallest kept key (0 keeps everything); see row_threshold in cpu.cpp for the same steps.
template <typename T>
__device__ typename KeyType<T>::type row_threshold(const T* l, int64_t V, T lmax, const Params& p, int shift,
                                                   Shared<T>& sh) {
  using key_t = typename KeyType<T>::type;
  constexpr int bits = int(sizeof(key_t) * 8);
  key_t tau = 0;
  const double scale = ldexp(1.0, shift);
  for (int mode = 0; mode < 2; ++mode) {  // 0: top-k by counts, 1: top-p by masses
    if (mode == 0 && !(p.top_k > 0 && p.top_k < V)) continue;
    if (mode == 1 && !(p.top_p < 1.0)) continue;
    key_t prefix = 0, mask = 0;
    unsigned long long above = 0;
    double need = mode == 0 ? double(p.top_k) : -1.0;
    for (int s = bits - kRadixBits; s >= 0; s -= kRadixBits) {
      for (int i = threadIdx.x; i < kBins; i += blockDim.x) sh.hist[i] = 0;
      __syncthreads();
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        const T x = l[v];
        const key_t k = order_key(x);
        if (k < tau || (k & mask) != prefix) continue;
        unsigned long long w = 1;
        if (mode == 1) w = __double2ull_rn(exp((double(x) - double(lmax)) / p.temperature) * scale);
        if (w) atomicAdd(&sh.hist[(k >> s) & (kBins - 1)], w);
      }
      __syncthreads();
      if (threadIdx.x < 32) select_bin_warp(sh.hist, above, need, p.top_p, sh.bin, sh.above, sh.need);
      __syncthreads();
      prefix |= key_t(sh.bin) << s;
      mask |= key_t(kBins - 1) << s;
      above = sh.above;
      need = sh.need;
      __syncthreads();
    }
    tau = prefix;
  }
  return tau;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sample_rows_kernel(const T* __restrict__ logits, int64_t V, int64_t row0, Params p, int shift,
                       int64_t* __restrict__ tokens, T* __restrict__ log_prob) {
  using key_t = typename KeyType<T>::type;
  __shared__ Shared<T> sh;
  const int64_t r = blockIdx.x, row = row0 + r;
  const T* l = logits + r * V;
  T lmax = -std::numeric_limits<T>::infinity();
  int64_t amax = std::numeric_limits<int64_t>::max();
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) argmax_combine(lmax, amax, l[v], v);
  block_argmax(lmax, amax, sh);
  const key_t tau = row_threshold(l, V, lmax, p, shift, sh);
  const T temp = T(p.temperature);
  T best = -std::numeric_limits<T>::infinity(), sum = 0;
  int64_t best_v = std::numeric_limits<int64_t>::max();
  const int64_t G = (V + 3) / 4;
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
    uint32_t hi[4], lo[4];
    if (!p.greedy) noise_words<T>(p.seed, p.offset, uint64_t(row) * uint64_t(G) + uint64_t(g), hi, lo);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t v = 4 * g + j;
      if (v >= V) break;
      const T x = l[v];
      if (tau != 0 && order_key(x) < tau) continue;
      sum += exp((x - lmax) / temp);
      if (!p.greedy) argmax_combine(best, best_v, x / temp + noise_from_u(uniform_open(hi[j], lo[j], (T*)nullptr)), v);
    }
  }
  sum = block_sum(sum, sh);
  if (!p.greedy) block_argmax(best, best_v, sh);
  if (threadIdx.x == 0) {
    const int64_t tok = p.greedy ? amax : best_v;
    // A NaN never wins a comparison, so a NaN row has no argmax: as the reference, token 0 with
    // log_prob NaN (never an out-of-range read or the mask id).
    const bool found = tok >= 0 && tok < V;
    tokens[row] = found ? tok : 0;
    log_prob[row] = found ? (l[tok] - lmax) / temp - log(sum) : std::numeric_limits<T>::quiet_NaN();
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    filter_logits_kernel(const T* __restrict__ logits, int64_t V, Params p, int shift, T* __restrict__ out) {
  using key_t = typename KeyType<T>::type;
  __shared__ Shared<T> sh;
  const int64_t r = blockIdx.x;
  const T* l = logits + r * V;
  T lmax = -std::numeric_limits<T>::infinity();
  int64_t amax = std::numeric_limits<int64_t>::max();
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) argmax_combine(lmax, amax, l[v], v);
  block_argmax(lmax, amax, sh);
  const key_t tau = row_threshold(l, V, lmax, p, shift, sh);
  const T temp = T(p.temperature);
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
    out[r * V + v] = order_key(l[v]) >= tau ? l[v] / temp : -std::numeric_limits<T>::infinity();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cuda_sample_rows(const at::Tensor& hidden, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias, int64_t num_classes,
                                                    double temperature, int64_t top_k, double top_p, bool greedy,
                                                    int64_t seed, int64_t offset) {
  const int64_t N = hidden.size(0), V = num_classes;
  at::Tensor tokens = at::empty({N}, hidden.options().dtype(at::kLong));
  at::Tensor log_prob = at::empty({N}, hidden.options());
  if (N == 0) return {tokens, log_prob};
  const Params p{temperature, top_k, top_p, greedy, uint64_t(seed), uint64_t(offset)};
  const int shift = mass_shift(V);
  const at::Tensor w = weight.narrow(0, 0, V).t();
  const bool has_bias = bias.has_value() && bias->defined();
  // 2^26 logits (256 MB in float32) per chunk: about 1,300 rows at V = 50,257, more than a round
  // of the sampler usually reveals, so one matmul and one launch per round.
  const int64_t chunk = chunk_rows(N, V, int64_t(1) << 26);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "sample_rows_cuda", [&] {
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t rows = std::min(chunk, N - r0);
      const at::Tensor h = hidden.narrow(0, r0, rows);
      const at::Tensor logits = has_bias ? at::addmm(bias->narrow(0, 0, V), h, w) : at::mm(h, w);
      TORCH_INTERNAL_ASSERT(logits.is_contiguous(), "sample_rows: the kernel reads row r at logits + r * V");
      sample_rows_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(logits.const_data_ptr<scalar_t>(), V, r0, p, shift,
                                                                  tokens.data_ptr<int64_t>(),
                                                                  log_prob.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {tokens, log_prob};
}

at::Tensor cuda_filter_logits(const at::Tensor& logits, double temperature, int64_t top_k, double top_p) {
  at::Tensor out = at::empty_like(logits);
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0 || V == 0) return out;
  const Params p{temperature, top_k, top_p, false, 0, 0};
  const int shift = mass_shift(V);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "filter_logits_cuda", [&] {
    filter_logits_kernel<scalar_t><<<N, kThreads, 0, stream>>>(logits.const_data_ptr<scalar_t>(), V, p, shift,
                                                               out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace radd_fast::sample_rows
