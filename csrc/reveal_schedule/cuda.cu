// CUDA kernel of radd_fast::reveal_schedule (definitions in schedule.h). Everything stays on the
// device and on the current stream: one block per sequence draws its reveal steps into a bitmap of
// steps (global scratch, n / 32 words) and ranks them (block scan of the words' popcounts); two
// ATen sorts order the sequences and then the (event, rank, position) keys; a last kernel writes
// the row list and the round offsets. No host synchronisation.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/philox.h"
#include "reveal_schedule/schedule.h"

namespace radd_fast::schedule {
namespace {

constexpr int kThreads = 256;

// Exclusive scan of one value per thread across the block; returns the block total in `total`.
__device__ uint32_t block_exclusive_scan(uint32_t v, uint32_t* warp_sums, uint32_t& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  uint32_t x = v;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < warps ? warp_sums[lane] : 0u;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const uint32_t y = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += y;
    }
    if (lane < warps) warp_sums[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  total = warp_sums[warps - 1];
  const uint32_t before = warp == 0 ? 0u : warp_sums[warp - 1];
  __syncthreads();  // warp_sums is reused by the next call
  return before + x - v;
}

__global__ void draw_events_kernel(const bool* __restrict__ masked, const double* __restrict__ cdf, int32_t n,
                                   int64_t L, int64_t W, uint64_t seed, uint64_t offset, int32_t* __restrict__ step,
                                   int32_t* __restrict__ event, int32_t* __restrict__ num_events,
                                   uint32_t* __restrict__ bitmaps, uint32_t* __restrict__ prefixes) {
  __shared__ uint32_t warp_sums[32];
  const int64_t b = blockIdx.x;
  uint32_t* bitmap = bitmaps + b * W;
  uint32_t* prefix = prefixes + b * W;
  for (int64_t l = threadIdx.x; l < L; l += blockDim.x) {
    const int64_t i = b * L + l;
    int32_t s = -1;
    if (masked[i]) {
      const auto w = philox::block(seed, offset, uint64_t(i));
      s = draw_step(cdf, n, philox::uniform53(w.w[0], w.w[1]));
      atomicOr(bitmap + (s >> 5), uint32_t(1) << (s & 31));
    }
    step[i] = s;
  }
  __syncthreads();  // the bitmap's global atomics are visible to the whole block after this
  uint32_t carry = 0;
  for (int64_t k0 = 0; k0 < W; k0 += blockDim.x) {
    const int64_t k = k0 + threadIdx.x;
    const uint32_t pc = k < W ? uint32_t(popcount32(bitmap[k])) : 0u;
    uint32_t total;
    const uint32_t ex = block_exclusive_scan(pc, warp_sums, total);
    if (k < W) prefix[k] = carry + ex;
    carry += total;
  }
  __syncthreads();
  for (int64_t l = threadIdx.x; l < L; l += blockDim.x) {
    const int64_t i = b * L + l;
    const int32_t s = step[i];
    event[i] = s < 0 ? -1 : event_of_step(bitmap, prefix, s);
  }
  if (threadIdx.x == 0) num_events[b] = int32_t(carry);
}

__global__ void inverse_perm_kernel(const int64_t* __restrict__ perm, int64_t B, int64_t* __restrict__ rank) {
  // grid-stride: grid_for caps the grid at 2^16 blocks
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B; i += int64_t(gridDim.x) * blockDim.x)
    rank[perm[i]] = i;
}

__global__ void row_keys_kernel(const int32_t* __restrict__ event, const int64_t* __restrict__ rank, int64_t B,
                                int64_t L, int64_t* __restrict__ keys) {
  const int64_t N = B * L;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t e = event[i];
    keys[i] = e < 0 ? kUnmaskedKey : row_key(e, rank[i / L], i % L, B, L);
  }
}

// Thread j (0 <= j <= N) writes off[e] = j for every round e in (event of key j-1, event of key j];
// sentinel keys and the end (j = N) count as round R, so each offset is written exactly once.
__global__ void rows_kernel(const int64_t* __restrict__ keys, int64_t N, int64_t R, int64_t* __restrict__ row_index,
                            int64_t* __restrict__ off) {
  auto round_of = [&](int64_t j) -> int64_t {
    return (j >= N || keys[j] == kUnmaskedKey) ? R : keys[j] / N;
  };
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j <= N; j += int64_t(gridDim.x) * blockDim.x) {
    if (j < N) row_index[j] = keys[j] == kUnmaskedKey ? -1 : keys[j] % N;
    const int64_t e = round_of(j), prev = j == 0 ? -1 : round_of(j - 1);
    for (int64_t k = prev + 1; k <= e; ++k) off[k] = j;
  }
}

int64_t grid_for(int64_t work) {
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, int64_t(1) << 16));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cuda_reveal_schedule(const at::Tensor& masked,
                                                                                           const at::Tensor& cdf,
                                                                                           int64_t seed,
                                                                                           int64_t offset) {
  const int64_t B = masked.size(0), L = masked.size(1), R = num_rounds(cdf.size(0), L), N = B * L;
  const int32_t n = int32_t(cdf.size(0));
  const int64_t W = (int64_t(n) + 31) / 32;
  auto i32 = masked.options().dtype(at::kInt), i64 = masked.options().dtype(at::kLong);
  at::Tensor step = at::empty({B, L}, i32), event = at::empty({B, L}, i32), num_events = at::empty({B}, i32);
  at::Tensor row_index = at::empty({N}, i64), offsets = at::empty({R + 1}, i64);
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (B > 0) {
    at::Tensor scratch = at::zeros({2, B, W}, i32);  // bitmaps and their popcount prefixes
    uint32_t* bitmaps = reinterpret_cast<uint32_t*>(scratch.data_ptr<int32_t>());
    draw_events_kernel<<<B, kThreads, 0, stream>>>(
        masked.const_data_ptr<bool>(), cdf.const_data_ptr<double>(), n, L, W, uint64_t(seed), uint64_t(offset),
        step.data_ptr<int32_t>(), event.data_ptr<int32_t>(), num_events.data_ptr<int32_t>(), bitmaps, bitmaps + B * W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor perm = std::get<1>(at::sort(num_events, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor keys = at::empty({N}, i64);
  if (N > 0) {
    at::Tensor rank = at::empty({B}, i64);
    inverse_perm_kernel<<<grid_for(B), kThreads, 0, stream>>>(perm.const_data_ptr<int64_t>(), B,
                                                               rank.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    row_keys_kernel<<<grid_for(N), kThreads, 0, stream>>>(event.const_data_ptr<int32_t>(),
                                                           rank.const_data_ptr<int64_t>(), B, L, keys.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    keys = std::get<0>(at::sort(keys, /*stable=*/false, /*dim=*/0, /*descending=*/false));
  }
  rows_kernel<<<grid_for(N + 1), kThreads, 0, stream>>>(keys.const_data_ptr<int64_t>(), N, R,
                                                         row_index.data_ptr<int64_t>(), offsets.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {step, num_events, perm, row_index, offsets};
}

}  // namespace radd_fast::schedule
