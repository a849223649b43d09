// One wgmma chain per operand form that the sm_90a attention kernels use (fwd_wgmma.cuh,
// bwd_wgmma.cuh), on a single 64 x N x 64 product with known inputs: D = A B, A (64 x 64) and B
// (64 x N) in bf16, fp32 accumulators, four k steps of 16 whose descriptors are advanced as the
// kernels advance theirs. The shared-memory layouts are the kernels' no-swizzle core-matrix tiles:
//   K-major A (the forward's Q; the backward's K, V):   (m, k) at 512 (m / 8) + 64 (k / 8) + 8 (m % 8) + k % 8
//   MN-major A (the backward's dS^T):                    (m, k) at 512 (k / 8) + 64 (m / 8) + 8 (k % 8) + m % 8
//   K-major B (the forward's K; the backward's Q, dO):   (k, n) at 512 (n / 8) + 64 (k / 8) + 8 (n % 8) + k % 8
//   MN-major B (V in P V; Q, dO in dK, dV; K in dQ):     (k, n) at 8 N (k / 8) + 64 (n / 8) + 8 (k % 8) + n % 8
// and A from registers is mma.sync's m16n8k16 A fragment for warp w's rows 16 w..16 w + 15.
//
// Why: the kernels' tests can only say that a result is wrong; this says which operand form the
// hardware reads differently from the CPU emulation (csrc/tests/gpu_emulation.h), which the kernels
// were written against. test_wgmma_layouts runs it on the emulation (where every form must agree);
// wgmma_layouts.cu runs it on an sm_90 GPU (bench/gpu_check.sh, stage `wgmma`).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#ifndef RADD_GEMM_HOST_EMULATION
#include "common/wgmma.cuh"
#endif
#ifndef RADD_DYNAMIC_SMEM  // as attention/kernels.cuh defines it
#define RADD_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace radd_fast::wgmma_check {

enum class Form {
  kSsKK,  // A and B from shared memory, both K-major (S = Q K^T; S^T = K Q^T, dP^T = V dO^T)
  kRsMn,  // A from registers, B MN-major (O += P V; dV += P^T dO, dK += dS^T Q)
  kSsMM,  // A and B from shared memory, both MN-major (dQ = dS K)
};

inline const char* form_name(Form f) {
  return f == Form::kSsKK ? "A smem K-major, B K-major" : f == Form::kRsMn ? "A registers, B MN-major"
                                                                           : "A smem MN-major, B MN-major";
}

// Shared memory of one check: A (64 x 64) then B (64 x N).
template <int N>
constexpr size_t smem_bytes() {
  return 2 * (64 * 64 + 64 * N);
}

template <typename T, int N, Form F>
__global__ void __launch_bounds__(128) layout_kernel(const T* A, const T* B, float* D) {
#if defined(RADD_GEMM_HOST_EMULATION) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  RADD_DYNAMIC_SMEM(smem_raw);
  T* As = reinterpret_cast<T*>(smem_raw);
  T* Bs = As + 64 * 64;
  constexpr bool kAmn = F == Form::kSsMM, kBmn = F != Form::kSsKK;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  for (int i = tid; i < 64 * 64; i += 128) {  // A, given row-major (m, k)
    const int m = i / 64, k = i % 64;
    As[kAmn ? 512 * (k / 8) + 64 * (m / 8) + 8 * (k % 8) + m % 8 : 512 * (m / 8) + 64 * (k / 8) + 8 * (m % 8) + k % 8] =
        A[i];
  }
  for (int i = tid; i < 64 * N; i += 128) {  // B, given row-major (k, n)
    const int k = i / N, n = i % N;
    Bs[kBmn ? 8 * N * (k / 8) + 64 * (n / 8) + 8 * (k % 8) + n % 8 : 512 * (n / 8) + 64 * (k / 8) + 8 * (n % 8) + k % 8] =
        B[i];
  }
  gpu::fence_proxy_async_smem();
  __syncthreads();

  // Descriptors (byte strides: LBO along k, SBO along m / n) and their advance per k step of 16, in
  // the descriptor's 16-byte address units, as the kernels compute them.
  const uint64_t a_desc = kAmn ? gpu::wgmma_desc(As, 16 * 64, 128) : gpu::wgmma_desc(As, 128, 16 * 64);
  const uint64_t b_desc = kBmn ? gpu::wgmma_desc(Bs, 16 * N, 128) : gpu::wgmma_desc(Bs, 128, 16 * 64);
  constexpr uint32_t a_step = kAmn ? 2 * 64 : 16, b_step = kBmn ? 2 * N : 16;
  uint32_t a[4][4];  // Form::kRsMn: k step ks of A from registers
  if constexpr (F == Form::kRsMn) {
    for (int ks = 0; ks < 4; ++ks)
      for (int r = 0; r < 4; ++r) {
        const int row = 16 * warp + g + 8 * (r & 1), col = 16 * ks + 2 * t + 8 * (r >> 1);
        uint32_t w;  // (row, col) in the low half, (row, col + 1) in the high half
        std::memcpy(&w, A + row * 64 + col, 4);
        a[ks][r] = w;
      }
  }
  float d[N / 2];
  for (int i = 0; i < N / 2; ++i) d[i] = 0.f, gpu::wgmma_fence_operand(d[i]);
  gpu::wgmma_fence();
  for (int ks = 0; ks < 4; ++ks) {
    if constexpr (F == Form::kRsMn)
      gpu::wgmma_rs<T, N, true>(d, a[ks], b_desc + ks * b_step, ks > 0);
    else
      gpu::wgmma_ss<T, N, kAmn, kBmn>(d, a_desc + ks * a_step, b_desc + ks * b_step, ks > 0);
  }
  gpu::wgmma_commit();
  gpu::wgmma_wait<0>();
  for (int i = 0; i < N / 2; ++i) gpu::wgmma_fence_operand(d[i]);
  for (int j = 0; j < N / 8; ++j)  // the accumulator layout: mma.sync's m16n8 C fragment per 8 columns
    for (int e = 0; e < 4; ++e) D[(16 * warp + g + 8 * (e / 2)) * N + 8 * j + 2 * t + e % 2] = d[4 * j + e];
#else
  __trap();  // wgmma needs an sm_90a build
#endif
}

// Inputs of one check: values in [-1, 1] rounded to T (the float copies hold the rounded values).
template <typename T, int N>
struct Inputs {
  std::vector<T> A, B;
  std::vector<float> Af, Bf;
  explicit Inputs(unsigned seed) : A(64 * 64), B(64 * N), Af(64 * 64), Bf(64 * N) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (size_t i = 0; i < A.size(); ++i) A[i] = T(u(rng)), Af[i] = float(A[i]);
    for (size_t i = 0; i < B.size(); ++i) B[i] = T(u(rng)), Bf[i] = float(B[i]);
  }
  // Largest |D - A B| over the largest |A B| (A B in float64): ~1e-7 when the layouts agree, O(1)
  // when any element lands in the wrong place.
  double error(const std::vector<float>& D) const {
    double worst = 0, scale = 0;
    for (int m = 0; m < 64; ++m)
      for (int n = 0; n < N; ++n) {
        double ref = 0;
        for (int k = 0; k < 64; ++k) ref += double(Af[m * 64 + k]) * double(Bf[k * N + n]);
        worst = std::fmax(worst, std::fabs(double(D[m * N + n]) - ref));
        scale = std::fmax(scale, std::fabs(ref));
      }
    return worst / scale;
  }
};

constexpr double kTolerance = 1e-5;  // fp32 accumulation of 64 products of bf16 values

// Calls run.template operator()<N, F>() for every (N, form) the attention kernels issue.
template <class Run>
void for_each_case(Run&& run) {
  run.template operator()<64, Form::kSsKK>();
  run.template operator()<128, Form::kSsKK>();  // the forward's 128-key steps (S = Q K^T)
  run.template operator()<32, Form::kRsMn>();
  run.template operator()<64, Form::kRsMn>();
  run.template operator()<128, Form::kRsMn>();
  run.template operator()<32, Form::kSsMM>();
  run.template operator()<64, Form::kSsMM>();
}

}  // namespace radd_fast::wgmma_check
