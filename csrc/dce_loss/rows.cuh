// The row kernels of the CUDA linear_dce_loss (both engines), everything but the matmuls: the
// compaction of the active rows, logsumexp, loss and logit gradients of a chunk's rows, the bias
// gradient, the moves of rows between the compacted chunk and the full tensors (gather, scatter)
// and the grouped engine's weight-gradient accumulation. Kept in a header so that csrc/tests/test_rows.cpp runs them on the
// CPU through csrc/tests/gpu_emulation.h (RADD_GEMM_HOST_EMULATION), as test_gemm does the GEMM.
#pragma once

#include <cstdint>
#include <limits>

#include "common/fast_math.cuh"
#include "dce_loss/dce_loss.h"

#ifndef RADD_GEMM_HOST_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace radd_fast::dce::gpu {

#ifdef RADD_GEMM_HOST_EMULATION
using std::max;
using std::min;
inline float to_acc(EmuBf16 x) { return float(x); }
inline void store_as(EmuBf16* p, float v) { *p = EmuBf16(v); }
#else
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ void store_as(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void store_as(__half* p, float v) { *p = __float2half(v); }
#endif
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ void store_as(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_as(double* p, double v) { *p = v; }

// exp2 for the softmax sweeps: ex2.approx in fp32 (see fast_math.cuh), the exact one in fp64.
__device__ __forceinline__ float exp2_acc(float x) { return ::radd_fast::gpu::fast_exp2(x); }
__device__ __forceinline__ double exp2_acc(double x) { return ::exp2(x); }

constexpr int kRowThreads = 512;
constexpr unsigned kFull = 0xffffffffu;

// ------------------------------------------------------------------------------------ compaction
// One block of 1,024 threads; thread i owns a contiguous segment of rows: count, block-wide exclusive
// scan of the counts, then write the indices in order (so `order` is sorted). O(N), no atomics.
template <typename acc_t>
__global__ void __launch_bounds__(1024) compact_kernel(const acc_t* __restrict__ w, int64_t N, int* __restrict__ order,
                                                       int* __restrict__ count) {
  constexpr int T = 1024;
  __shared__ int warp_base[32];
  const int tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const int64_t seg = (N + T - 1) / T;
  const int64_t b = min(N, int64_t(tid) * seg), e = min(N, b + seg);
  int c = 0;
  for (int64_t i = b; i < e; ++i) c += w[i] != acc_t(0);  // NaN != 0: a NaN weight is an active row
  int x = c;  // inclusive scan within the warp
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(kFull, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) warp_base[warp] = x;
  __syncthreads();
  if (warp == 0) {
    const int tot = warp_base[lane];
    int s = tot;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(kFull, s, o);
      if (lane >= o) s += y;
    }
    warp_base[lane] = s - tot;  // exclusive
  }
  __syncthreads();
  int pos = warp_base[warp] + x - c;
  for (int64_t i = b; i < e; ++i)
    if (w[i] != acc_t(0)) order[pos++] = int(i);
  if (tid == T - 1) *count = pos;
}

// ------------------------------------------------------------------------- logsumexp, loss, dlogits
template <typename acc_t>
__device__ __forceinline__ LseState<acc_t> block_lse(LseState<acc_t> st) {
  __shared__ acc_t sm[32], ss[32];
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const LseState<acc_t> other{__shfl_xor_sync(kFull, st.m, o), __shfl_xor_sync(kFull, st.s, o)};
    st = lse_merge(st, other);
  }
  if (lane == 0) {
    sm[warp] = st.m;
    ss[warp] = st.s;
  }
  __syncthreads();
  if (warp == 0) {
    st = lane < int(blockDim.x) / 32 ? LseState<acc_t>{sm[lane], ss[lane]} : lse_empty<acc_t>();
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const LseState<acc_t> other{__shfl_xor_sync(kFull, st.m, o), __shfl_xor_sync(kFull, st.s, o)};
      st = lse_merge(st, other);
    }
    if (lane == 0) {
      sm[0] = st.m;
      ss[0] = st.s;
    }
  }
  __syncthreads();
  return {sm[0], ss[0]};
}

// Block i handles compacted row row0 + i (if it exists): logits row i of the workspace, stored as Z
// (acc_t from the tile GEMM, T from the grouped engine's GEMM), plus bias[c] where bias is given (the
// grouped engine's GEMM has no bias epilogue).
template <typename T, typename acc_t, typename Z>
__global__ void __launch_bounds__(kRowThreads) softmax_rows_kernel(Z* logits, int64_t ld, int64_t nc,
                                                                   const int* __restrict__ order,
                                                                   const int* __restrict__ count, int64_t row0,
                                                                   const int64_t* __restrict__ target,
                                                                   const acc_t* __restrict__ row_weight,
                                                                   const acc_t* __restrict__ bias,
                                                                   acc_t* __restrict__ loss, bool write_grad) {
  const int64_t g = row0 + blockIdx.x;
  if (g >= *count) return;
  const int r = order[g];
  Z* z = logits + int64_t(blockIdx.x) * ld;
  auto logit = [&](int64_t c) -> acc_t { return bias ? to_acc(z[c]) + bias[c] : to_acc(z[c]); };
  LseState<acc_t> st = lse_empty<acc_t>();
  for (int64_t c = threadIdx.x; c < nc; c += kRowThreads) st = lse_push(st, logit(c));
  const acc_t lse = lse_value(block_lse(st));
  const int64_t t = target[r];
  const bool valid = t >= 0 && t < nc;
  const acc_t w = valid ? row_weight[r] : std::numeric_limits<acc_t>::quiet_NaN();
  if (threadIdx.x == 0) loss[r] = valid ? row_loss(w, lse, logit(t)) : w;
  if (!write_grad) return;
  // In place: dlogit c (a T) occupies bytes [c * sizeof(T), (c + 1) * sizeof(T)) of the row, inside
  // logits [0, c] (the same element when Z is T) -- already read in this slice or an earlier one. The
  // barrier orders this slice's reads (and thread 0's read of z[t] above) before its writes; later
  // slices read only logits beyond every byte written so far.
  T* d = reinterpret_cast<T*>(z);
  for (int64_t c0 = 0; c0 < nc; c0 += kRowThreads) {
    const int64_t c = c0 + threadIdx.x;
    const acc_t v = c < nc ? logit(c) : acc_t(0);
    __syncthreads();
    if (c < nc) store_as(d + c, logit_grad(w, v, lse, c == t));
  }
}

// The grouped engine's row kernel: bf16 logits (+ bias), bf16 gradients in place, moved as 16-byte
// vectors (VEC classes each). Each thread reads and writes only its own vectors, so no barrier has to
// order the in-place writes, and the loss comes from the registers of the thread that owns the
// target's vector. Rows are 16-byte aligned (ld a multiple of VEC); classes nc..ld-1 of a row are
// padding, read and written back unchanged.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int N = 16 / int(sizeof(T));
  T e[N];
};

// Sum over the block; every thread gets it. Once per kernel (its partials are not reset).
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t x) {
  __shared__ acc_t part[32];
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  if (lane == 0) part[warp] = x;
  __syncthreads();
  x = lane < int(blockDim.x) / 32 ? part[lane] : acc_t(0);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}

// a . b over D elements (a multiple of 16 / sizeof(T)), accumulated in acc_t by the whole block.
template <typename T, typename acc_t>
__device__ __forceinline__ acc_t block_dot(const T* a, const T* b, int64_t D) {
  using V = Vec16<T>;
  const V* va = reinterpret_cast<const V*>(a);
  const V* vb = reinterpret_cast<const V*>(b);
  acc_t s = 0;
  for (int64_t j = threadIdx.x; j < D / V::N; j += blockDim.x) {
    const V x = va[j], y = vb[j];
#pragma unroll
    for (int k = 0; k < V::N; ++k) s += to_acc(x.e[k]) * to_acc(y.e[k]);
  }
  return block_sum(s);
}

// The fp32 logits of one 16-byte vector of stored logits, classes c0 .. c0 + N - 1, plus the bias
// where given; bias_vec: bias is 16-byte aligned, so its N entries load as vectors too.
template <typename T, typename acc_t>
__device__ __forceinline__ void vector_logits(const Vec16<T>& v, const acc_t* bias, bool bias_vec, int64_t c0,
                                              acc_t (&x)[Vec16<T>::N]) {
  constexpr int N = Vec16<T>::N, NB = Vec16<acc_t>::N;
#pragma unroll
  for (int k = 0; k < N; ++k) x[k] = to_acc(v.e[k]);
  if (bias_vec) {
    const Vec16<acc_t>* bv = reinterpret_cast<const Vec16<acc_t>*>(bias + c0);
#pragma unroll
    for (int q = 0; q < N / NB; ++q) {
      const Vec16<acc_t> b = bv[q];
#pragma unroll
      for (int k = 0; k < NB; ++k) x[q * NB + k] += b.e[k];
    }
  } else if (bias) {
#pragma unroll
    for (int k = 0; k < N; ++k) x[k] += bias[c0 + k];
  }
}

// hidden / weight (optional): the chunk's hidden rows (row i of the block's chunk at hidden + i * D)
// and the weight matrix (C, D). Given them, the loss takes the target's logit from its operands in
// fp32 instead of from the bf16-rounded GEMM output: its error is then only the logsumexp's
// p-weighted average of the logits' roundings, not that plus the target's own rounding -- on the
// test's one-row, 5-class case 1.5x torch's bf16 error instead of 2.1x, and about half the loss
// error of the rounded target on larger shapes (a simulation of both on the CPU, 2026-11-30).
// Mixing the two roundings means a row whose target holds nearly all the probability can get a
// loss slightly below zero (by up to ~2^-9 |z_t|, the logsumexp's bf16 inputs); nothing in the
// package assumes a row's loss is non-negative.
// Both sweeps over the row are meant to run at memory speed: an H200 issues about 13 thread
// instructions per bf16 logit that its HBM delivers, and the per-element online logsumexp (a
// compare, a swap and an expf per logit) with per-element bounds tests took ~33 in SASS (sm_90a)
// and the gradient sweep ~35. Full vectors now take one max per vector and, per logit, a convert,
// an FFMA and an ex2.approx into the sum (gradient: FFMA, ex2, multiply, convert); the target's
// entry and the row's partial last vector take the per-element path.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kRowThreads) softmax_rows_vec_kernel(T* logits, int64_t ld, int64_t nc,
                                                                       const int* __restrict__ order,
                                                                       const int* __restrict__ count, int64_t row0,
                                                                       const int64_t* __restrict__ target,
                                                                       const acc_t* __restrict__ row_weight,
                                                                       const acc_t* __restrict__ bias,
                                                                       acc_t* __restrict__ loss, bool write_grad,
                                                                       const T* __restrict__ hidden = nullptr,
                                                                       const T* __restrict__ weight = nullptr,
                                                                       int64_t D = 0) {
  using V = Vec16<T>;
  constexpr int VEC = V::N;
  constexpr acc_t kLog2e = acc_t(1.4426950408889634);
  const int64_t g = row0 + blockIdx.x;
  if (g >= *count) return;
  const int r = order[g];
  V* z = reinterpret_cast<V*>(logits + int64_t(blockIdx.x) * ld);
  const int64_t nfull = nc / VEC, nv = (nc + VEC - 1) / VEC;  // vectors with VEC classes; all vectors
  const bool bias_vec = bias != nullptr && reinterpret_cast<uintptr_t>(bias) % 16 == 0;
  auto logit = [&](const V& v, int k, int64_t c) -> acc_t { return bias ? to_acc(v.e[k]) + bias[c] : to_acc(v.e[k]); };
  // Sweep 1: this thread's (max, sum of exp(x - max)), the sum kept against its running max.
  acc_t m = -std::numeric_limits<acc_t>::infinity(), s = 0;
  for (int64_t j = threadIdx.x; j < nfull; j += kRowThreads) {
    const V v = z[j];  // one 16-byte load
    acc_t x[VEC];
    vector_logits<T, acc_t>(v, bias, bias_vec, j * VEC, x);
    acc_t vm = x[0];
#pragma unroll
    for (int k = 1; k < VEC; ++k) vm = max(vm, x[k]);
    if (vm > m) {  // exp2(-inf) = 0 clears the empty sum
      s *= exp2_acc((m - vm) * kLog2e);
      m = vm;
    }
    if (m != -std::numeric_limits<acc_t>::infinity()) {  // -inf logits add nothing
      const acc_t off = m * kLog2e;
#pragma unroll
      for (int k = 0; k < VEC; ++k) s += exp2_acc(x[k] * kLog2e - off);  // a NaN logit makes s NaN
    } else {
      // Only -inf so far, or NaN: max() drops NaN operands, so a NaN beside -inf logits would be
      // lost here (a finite m carries it through s instead). Rare, so checked off the hot path.
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        if (x[k] != x[k]) m = x[k];
    }
  }
  LseState<acc_t> st{m, s};
  if (nv > nfull && threadIdx.x == nfull % kRowThreads) {  // the partial last vector
    const V v = z[nfull];
    for (int64_t c = nfull * VEC; c < nc; ++c) st = lse_push(st, logit(v, int(c - nfull * VEC), c));
  }
  const acc_t lse = lse_value(block_lse(st));
  const int64_t t = target[r];
  const bool valid = t >= 0 && t < nc;
  const acc_t w = valid ? row_weight[r] : std::numeric_limits<acc_t>::quiet_NaN();
  const bool exact_target = hidden != nullptr && valid;  // the same for every thread of the block
  if (exact_target) {
    const acc_t zt = block_dot<T, acc_t>(hidden + int64_t(blockIdx.x) * D, weight + t * D, D);
    if (threadIdx.x == 0) loss[r] = row_loss(w, lse, bias ? zt + bias[t] : zt);
  }
  if (!write_grad) {  // nothing is written over the row: thread 0 may read the target's logit
    if (threadIdx.x == 0 && !exact_target) {
      const T* row = logits + int64_t(blockIdx.x) * ld;
      loss[r] = valid ? row_loss(w, lse, bias ? to_acc(row[t]) + bias[t] : to_acc(row[t])) : w;
    }
    return;
  }
  if (!valid && threadIdx.x == 0) loss[r] = w;
  // Sweep 2: dlogit = w (softmax - onehot), written over the logits.
  const acc_t off = lse * kLog2e;
  const int64_t jt = valid ? t / VEC : -1;  // the vector holding the target
  for (int64_t j = threadIdx.x; j < nv; j += kRowThreads) {
    V v = z[j];
    if (j < nfull && j != jt) {
      acc_t x[VEC];
      vector_logits<T, acc_t>(v, bias, bias_vec, j * VEC, x);
#pragma unroll
      for (int k = 0; k < VEC; ++k) store_as(&v.e[k], w * exp2_acc(x[k] * kLog2e - off));
    } else {  // per element: the target's entry, and classes past nc left as they are
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const int64_t c = j * VEC + k;
        if (c >= nc) continue;
        const acc_t x = logit(v, k, c);
        if (c == t && !exact_target) loss[r] = row_loss(w, lse, x);
        store_as(&v.e[k], logit_grad(w, x, lse, c == t));
      }
    }
    z[j] = v;
  }
}

// grad_b[c] += sum over the chunk's valid rows of dlogits[i][c], in two passes (kBiasRowGroup in
// dce_loss.h says why). Pass 1: grid (vector columns / blockDim, up to bias_partial_rows(R)); a thread
// sums one 16-byte vector of classes over a group of 128 rows into partial[group][N j .. N j + N)
// (partial's row stride pw = bias_partial_stride(nc)), for groups blockIdx.y, + gridDim.y, ... below
// the valid rows (a grid's y extent stops at 65,535). Rows of d are 16-byte aligned (ld_t a multiple
// of N). Four rows' loads go out before their additions.
template <typename T, typename acc_t>
__global__ void bias_partials_kernel(const T* __restrict__ d, int64_t ld_t, int64_t nc, const int* __restrict__ count,
                                     int64_t row0, int64_t R, acc_t* __restrict__ partial, int64_t pw) {
  using V = Vec16<T>;
  constexpr int N = V::N;
  const int64_t valid = max(int64_t(0), min(R, int64_t(*count) - row0));
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, step = ld_t / N;
  if (j * N >= nc) return;
  for (int64_t g = blockIdx.y; g * kBiasRowGroup < valid; g += gridDim.y) {
    const int64_t i0 = g * kBiasRowGroup, rows = min(valid - i0, kBiasRowGroup);
    const V* p = reinterpret_cast<const V*>(d + i0 * ld_t) + j;
    acc_t s[N] = {};
    int64_t i = 0;
    for (; i + 4 <= rows; i += 4, p += 4 * step) {
      const V a = p[0], b = p[step], c = p[2 * step], e = p[3 * step];
#pragma unroll
      for (int k = 0; k < N; ++k) s[k] += ((to_acc(a.e[k]) + to_acc(b.e[k])) + (to_acc(c.e[k]) + to_acc(e.e[k])));
    }
    for (; i < rows; ++i, p += step) {
      const V a = p[0];
#pragma unroll
      for (int k = 0; k < N; ++k) s[k] += to_acc(a.e[k]);
    }
    acc_t* out = partial + g * pw + j * N;
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = s[k];
  }
}

// Pass 2: gb[c] += the partial sums of the chunk's row groups, in group order; nothing when the chunk
// has no valid row. One thread per class.
template <typename acc_t>
__global__ void bias_reduce_kernel(const acc_t* __restrict__ partial, int64_t pw, int64_t nc,
                                   const int* __restrict__ count, int64_t row0, int64_t R, acc_t* __restrict__ gb) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t valid = max(int64_t(0), min(R, int64_t(*count) - row0));
  if (c >= nc || valid == 0) return;
  const int64_t groups = (valid + kBiasRowGroup - 1) / kBiasRowGroup;
  acc_t s = 0;
  for (int64_t g = 0; g < groups; ++g) s += partial[g * pw + c];
  gb[c] += s;
}

// grad_hidden[order[row0 + i]] = sum over splits of the split-K partials of row i (P: acc_t partials
// of the tile engine, or the grouped engine's single T result).
template <typename T, typename P>
__global__ void scatter_rows_kernel(const P* __restrict__ part, int splits, int64_t split_stride, int64_t R,
                                    int64_t D, const int* __restrict__ order, const int* __restrict__ count,
                                    int64_t row0, T* __restrict__ grad_hidden) {
  const int64_t valid = max(int64_t(0), min(R, int64_t(*count) - row0));
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < valid * D;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / D, col = e % D;
    decltype(to_acc(part[0])) s = 0;
    for (int z = 0; z < splits; ++z) s += to_acc(part[z * split_stride + i * D + col]);
    store_as(grad_hidden + int64_t(order[row0 + i]) * D + col, s);
  }
}

// The grouped engine's chunk input: out[i] = hidden[order[row0 + i]] for the chunk's active rows,
// zeros past them (never read by the matmuls, which stop at the count, but kept finite), and
// valid[0] = the active row count, the group size the grouped GEMM reads. Rows move as 16-byte
// vectors (D * sizeof(T) is a multiple of 16 on this path).
template <typename V>  // uint4: 16 bytes
__global__ void gather_rows_kernel(const V* __restrict__ hidden, int64_t vecs_per_row, const int* __restrict__ order,
                                   const int* __restrict__ count, int64_t row0, int64_t R, V* __restrict__ out,
                                   int* __restrict__ valid_out) {
  const int64_t valid = max(int64_t(0), min(R, int64_t(*count) - row0));
  if (blockIdx.x == 0 && threadIdx.x == 0) *valid_out = int(valid);
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < R * vecs_per_row;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / vecs_per_row, v = e % vecs_per_row;
    out[e] = i < valid ? hidden[int64_t(order[row0 + i]) * vecs_per_row + v] : V{};
  }
}

// acc[0:8 n8) += x (fp32 += bf16), one 16-byte vector of x (and 32 bytes of acc) per thread step;
// nothing at all when *valid is 0 (a chunk past the active row count: its product is all zeros).
template <typename T>
__global__ void accumulate_kernel(float* __restrict__ acc, const T* __restrict__ x, int64_t n8,
                                  const int* __restrict__ valid) {
  using V = Vec16<T>;
  if (*valid == 0) return;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n8; e += int64_t(gridDim.x) * blockDim.x) {
    const V v = reinterpret_cast<const V*>(x)[e];
#pragma unroll
    for (int k = 0; k < V::N; ++k) acc[e * V::N + k] += to_acc(v.e[k]);
  }
}

}  // namespace radd_fast::dce::gpu
