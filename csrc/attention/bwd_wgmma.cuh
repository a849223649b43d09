// sm_90a backward of radd_fast::masked_attention for bf16 / fp16 on warpgroup MMA (wgmma).
//
// The mma.sync backward (kernels.cuh) measured 90 TFLOP/s on the H200 at head_dim 64 (SDPA 251):
// five products per (key tile, query tile), each fed from shared memory by ldmatrix. Here the same
// CTA = (b, h, 64-key tile) is one warpgroup (4 warps, warp w owns keys 16 w..16 w+15, as there),
// and every product is one wgmma chain of 64 x N x 16 instructions reading its shared-memory
// operands through no-swizzle descriptors (the core-matrix layout of fwd_wgmma.cuh):
//   S^T (64 keys x 64 queries)  = K Q^T     A = K tile, B = Q tile         (both K-major)
//   dP^T                        = V dO^T    A = V tile, B = dO tile        (both K-major)
//   P^T, dS^T = P^T (dP^T - delta) scale on the accumulators (mma.sync's layout per warp)
//   dV (64 x D) += P^T dO                   A = P^T registers, B = dO tile (MN-major)
//   dK (64 x D) += dS^T Q                   A = dS^T registers, B = Q tile (MN-major)
//   dQ (64 queries x D) = dS K              A = dS^T in shared memory read transposed (MN-major),
//                                           B = K tile (MN-major); fp32 atomics into dq_acc
// dS^T is stored before dV's product is issued, so that the dV, dK and dQ chains follow one another
// on the tensor cores with one wait for all three.
// Query tiles (Q, dO, lse, delta) are double-buffered by cp.async; tile skipping and the
// per-element mask of partial tiles are the mma.sync kernel's.
//
// Compiled for sm_90a only; elsewhere it traps and the host never launches it. test_attention_kernels
// runs it on the CPU emulation of wgmma (gpu_emulation.h).
#pragma once

#include "attention/fwd_wgmma.cuh"

namespace radd_fast::attention::cuda {

template <typename T, int D>
struct BwdWgmmaSmem {
  static constexpr int kTileElems = kMmaTile * D;       // K, V, Q x 2, dO x 2 (core-matrix layout)
  static constexpr int kDsElems = kMmaTile * kMmaTile;  // dS^T [key][query] (core-matrix layout)
  static constexpr size_t kBytes = sizeof(T) * (6 * kTileElems + kDsElems) + sizeof(float) * 2 * 2 * kMmaTile;
};

// Blocks per SM that the register budget is held to. Three at head_dim <= 64: a warpgroup runs its
// products, its softmax-gradient math and its dQ atomics one after another, and a third block keeps
// the tensor cores busier while the others are in the latter two. ptxas (CUDA 13, sm_90a) then
// gives 158 registers at head_dim 64 and 145 at 32, no spills; head_dim 128 needs 234: two blocks.
template <int D>
constexpr int bwd_wgmma_min_blocks() {
  return D <= 64 ? 3 : 2;
}

template <typename T, int D>
__global__ void __launch_bounds__(kMmaThreads, bwd_wgmma_min_blocks<D>()) bwd_wgmma_kernel(Rows<T> Q, Rows<T> K, Rows<T> V, Rows<T> dO,
                                                                 const float* __restrict__ lse,
                                                                 const float* __restrict__ delta, T* __restrict__ dk,
                                                                 T* __restrict__ dv, float* __restrict__ dq_acc,
                                                                 MaskParams mp, int64_t H, float scale,
                                                                 float scale_log2) {
#if defined(RADD_GEMM_HOST_EMULATION) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using M = MmaType<T>;
  using S = BwdWgmmaSmem<T, D>;
  using gpu::wgmma_commit;
  using gpu::wgmma_desc;
  using gpu::wgmma_fence;
  using gpu::wgmma_fence_operand;
  using gpu::wgmma_wait;
  constexpr int ND = D / 8, KS = D / 16;
  constexpr int kDqN = D < 64 ? D : 64;  // dQ columns per product (bounds its live accumulators)
  // Descriptor strides in bytes: one core matrix (128 B) along the contiguous 8 columns; 8 rows of
  // a 64 x D tile (16 D B) or of the 64 x 64 dS^T tile (1 KiB).
  constexpr uint32_t kCore = 128, kGroup = 16 * D, kDsGroup = 16 * kMmaTile;
  RADD_DYNAMIC_SMEM(smem_raw);
  T* Ks = reinterpret_cast<T*>(smem_raw);
  T* Vs = Ks + S::kTileElems;
  T* Qs = Vs + S::kTileElems;    // two buffers
  T* dOs = Qs + 2 * S::kTileElems;  // two buffers
  T* dSs = dOs + 2 * S::kTileElems;
  float* lse_s = reinterpret_cast<float*>(dSs + S::kDsElems);  // [2][64], base-2 backward offsets
  float* delta_s = lse_s + 2 * kMmaTile;                         // [2][64]

  const int64_t L = mp.L, n_t = (L + kMmaTile - 1) / kMmaTile;
  const int64_t kt = blockIdx.x % n_t, bh = blockIdx.x / n_t, b = bh / H, h = bh % H;
  const int64_t k0 = kt * kMmaTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;

  const CoreTileLoader<T, D, kMmaThreads> q_rows(Q, b, h), do_rows(dO, b, h);
  const float* lse_bh = lse + (b * H + h) * L;
  const float* delta_bh = delta + (b * H + h) * L;
  auto load_q_tile = [&](int64_t qt, int sbuf) {
    const int64_t q0 = qt * kMmaTile;
    q_rows.load(Qs + sbuf * S::kTileElems, q0, L);
    do_rows.load(dOs + sbuf * S::kTileElems, q0, L);
    load_row_stats<kMmaThreads>(lse_s + sbuf * kMmaTile, delta_s + sbuf * kMmaTile, lse_bh, delta_bh, q0, L);
  };

  CoreTileLoader<T, D, kMmaThreads>(K, b, h).load(Ks, k0, L);
  CoreTileLoader<T, D, kMmaThreads>(V, b, h).load(Vs, k0, L);
  int64_t qt = next_query_tile(mp, b, kt, 0, n_t, kMmaTile);
  if (qt < n_t) load_q_tile(qt, 0);
  cp_async_commit();

  const int64_t key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};
  const bool kvalid[2] = {key_valid(mp, b, key[0]), key_valid(mp, b, key[1])};
  const int64_t kord[2] = {query_order(mp, b, key[0]), query_order(mp, b, key[1])};  // the keys' orders
  float dkacc[ND][4], dvacc[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd)
#pragma unroll
    for (int e = 0; e < 4; ++e) dkacc[nd][e] = dvacc[nd][e] = 0.f;
  float(&dk_flat)[D / 2] = reinterpret_cast<float(&)[D / 2]>(dkacc);
  float(&dv_flat)[D / 2] = reinterpret_cast<float(&)[D / 2]>(dvacc);

  int buf = 0;
  while (qt < n_t) {
    const int64_t nxt = next_query_tile(mp, b, kt, qt + 1, n_t, kMmaTile);
    __syncthreads();  // the other buffer (tile before last) and dS^T are free
    if (nxt < n_t) load_q_tile(nxt, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // this tile (and, the first time, K and V) has landed
    gpu::fence_proxy_async_smem();  // cp.async wrote it (generic proxy); wgmma reads it (async proxy)
    __syncthreads();
    const T* Qb = Qs + buf * S::kTileElems;
    const T* dOb = dOs + buf * S::kTileElems;
    const float* lse_b = lse_s + buf * kMmaTile;
    const float* delta_b = delta_s + buf * kMmaTile;
    const int64_t q0 = qt * kMmaTile;
    const bool partial = tile_visibility(mp, b, qt, kt, kMmaTile) == kTilePartial;
    const QueryTile queries(mp, b, q0, kMmaTile);

    // S^T = K Q^T and dP^T = V dO^T; k step ks = d columns 16 ks..16 ks + 15 (two core matrices).
    float st[8][4], dpt[8][4];
    float(&st_flat)[32] = reinterpret_cast<float(&)[32]>(st);
    float(&dpt_flat)[32] = reinterpret_cast<float(&)[32]>(dpt);
#pragma unroll
    for (int i = 0; i < 32; ++i) wgmma_fence_operand(st_flat[i]), wgmma_fence_operand(dpt_flat[i]);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
      gpu::wgmma_ss<T, 64, false, false>(st_flat, wgmma_desc(Ks + ks * 128, kCore, kGroup),
                                         wgmma_desc(Qb + ks * 128, kCore, kGroup), ks > 0);
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)
      gpu::wgmma_ss<T, 64, false, false>(dpt_flat, wgmma_desc(Vs + ks * 128, kCore, kGroup),
                                         wgmma_desc(dOb + ks * 128, kCore, kGroup), ks > 0);
    wgmma_commit();
    wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < 32; ++i) wgmma_fence_operand(st_flat[i]), wgmma_fence_operand(dpt_flat[i]);

    // P^T and dS^T, packed at once into the A fragments of k step kk (queries 16 kk..16 kk + 15) of
    // the products below (bwd_p_ds_tile, shared with the mma.sync backward).
    uint32_t pp[4][4], dd[4][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
      bwd_p_ds_tile<M>(st[nt], dpt[nt], nt, t4, scale_log2, scale, lse_b, delta_b, partial, queries, kvalid, kord,
                       pp, dd);
    // dS^T to shared memory in the core-matrix layout (rows = keys, 8 x 8 blocks of queries): element
    // (key r, query c) at 512 (r / 8) + 64 (c / 8) + 8 (r % 8) + c % 8. A warp's 32 stores of one
    // n-tile fill one 128-byte core matrix: conflict-free.
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      T* d0 = dSs + (2 * warp) * 8 * kMmaTile + nt * 64 + g * 8 + 2 * t4;
      *reinterpret_cast<uint32_t*>(d0) = dd[nt / 2][(nt & 1) * 2];
      *reinterpret_cast<uint32_t*>(d0 + 8 * kMmaTile) = dd[nt / 2][(nt & 1) * 2 + 1];
    }
    gpu::fence_proxy_async_smem();  // the dS^T stores (generic proxy) before wgmma reads them
    __syncthreads();                // all of dS^T is written
    // dV += P^T dO and dK += dS^T Q: B (k = query, n = d) is the dO / Q tile read MN-major; k step
    // kk = queries 16 kk..16 kk + 15 (two row groups of the tile). Not waited for here: dQ's chain
    // below queues behind them on the tensor cores with no drain in between, and its first wait
    // covers them (P^T / dS^T's registers stay untouched until then).
#pragma unroll
    for (int i = 0; i < D / 2; ++i) wgmma_fence_operand(dk_flat[i]), wgmma_fence_operand(dv_flat[i]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      gpu::wgmma_rs<T, D, true>(dv_flat, pp[kk], wgmma_desc(dOb + kk * 16 * D, kGroup, kCore), true);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      gpu::wgmma_rs<T, D, true>(dk_flat, dd[kk], wgmma_desc(Qb + kk * 16 * D, kGroup, kCore), true);
    wgmma_commit();
    // dQ (64 queries x D) += dS K in column chunks of kDqN: A (m = query, k = key) is dS^T read
    // MN-major; B (k = key, n = d) the K tile read MN-major. Warp w gets queries 16 w..16 w + 15.
    const int64_t qrow[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
#pragma unroll
    for (int n0 = 0; n0 < D; n0 += kDqN) {
      float dq[kDqN / 2];
#pragma unroll
      for (int i = 0; i < kDqN / 2; ++i) wgmma_fence_operand(dq[i]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        gpu::wgmma_ss<T, kDqN, true, true>(dq, wgmma_desc(dSs + kk * 16 * kMmaTile, kDsGroup, kCore),
                                           wgmma_desc(Ks + kk * 16 * D + n0 * 8, kGroup, kCore), kk > 0);
      wgmma_commit();
      wgmma_wait<0>();
#pragma unroll
      for (int i = 0; i < kDqN / 2; ++i) wgmma_fence_operand(dq[i]);
      if (n0 == 0) {  // the first wait also covered dV's and dK's products, which read pp and dd
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
          for (int i = 0; i < 4; ++i) wgmma_fence_operand(pp[kk][i]), wgmma_fence_operand(dd[kk][i]);
      }
      // Rows past L add nothing (their pointers are those of row 0: never dereferenced).
      float* dst_g = dq_acc + ((b * L + (qrow[0] < L ? qrow[0] : 0)) * H + h) * D + n0 + 2 * t4;
      float* dst_g8 = dq_acc + ((b * L + (qrow[1] < L ? qrow[1] : 0)) * H + h) * D + n0 + 2 * t4;
#pragma unroll
      for (int j = 0; j < kDqN / 8; ++j)
        dq_atomic_add(dst_g + j * 8, dst_g8 + j * 8, qrow[0] < L, qrow[1] < L, t4, dq[4 * j], dq[4 * j + 1],
                      dq[4 * j + 2], dq[4 * j + 3]);
    }
#pragma unroll
    for (int i = 0; i < D / 2; ++i) wgmma_fence_operand(dk_flat[i]), wgmma_fence_operand(dv_flat[i]);
    qt = nxt;
    buf ^= 1;
  }
  cp_async_wait<0>();
  bwd_store_keys<M, T, D>(dkacc, dvacc, dk, dv, key, b, h, H, L, t4);
#else
  __trap();  // not an sm_90a build: cuda.cu never launches this
#endif
}

}  // namespace radd_fast::attention::cuda
