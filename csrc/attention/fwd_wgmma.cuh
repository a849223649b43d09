// sm_90a forward of radd_fast::masked_attention for bf16 / fp16 on Hopper's warpgroup MMA (wgmma).
//
// Why: mma.sync (kernels.cuh) issues a 16 x 8 x 16 product per warp with both operands in registers,
// fed from shared memory by ldmatrix; on the H200 that kernel measured 171 TFLOP/s at head_dim 64
// (SDPA 336). wgmma issues a 64 x N x 16 product per warpgroup (4 warps) and reads B straight from
// shared memory, so no ldmatrix traffic or B registers, and it runs asynchronously.
//
// CTA = (b, h, 64 G queries), G warpgroups of 64 query rows (warp w owns rows 16 w..16 w+15, as in
// the mma.sync kernel with 16 rows per warp, because wgmma's accumulator layout per warp is
// mma.sync's). Key tiles of 64 keys, double-buffered by cp.async and shared by the warpgroups:
//   S (64 x 64 per warpgroup) = Q K^T: wgmma m64n64k16, A = Q from registers (loaded once by
//     ldmatrix), B = the K tile (N = key, K = d: "K-major").
//   online softmax on the registers (fwd_softmax_tile, shared with the mma.sync kernel).
//   O (64 x D) += P V: wgmma m64nDk16, A = P from registers (its accumulator layout is the A
//     fragment's), B = the V tile (N = d, K = key: "MN-major", the instruction's transpose flag).
// K and V tiles sit in shared memory in the no-swizzle core-matrix layout: 8 x 8 blocks of 128
// contiguous bytes, element (key, d) at 8 D (key / 8) + 64 (d / 8) + 8 (key % 8) + d % 8 -- one
// layout serves both products (K-major for K, MN-major for V). The tile skipping is the mma.sync
// kernel's: a warpgroup's 64 rows are one TileStats tile, so visibility is warpgroup-uniform, as
// wgmma (.aligned) requires.
//
// Compiled for sm_90a only (wgmma is an arch-specific feature); elsewhere the kernel traps and the
// host never launches it (cuda_wgmma.cu probes the build). csrc/tests/gpu_emulation.h emulates wgmma
// (deferred to its wait, like the hardware) and test_attention_kernels runs this kernel on it.
#pragma once

#include "attention/kernels.cuh"
#ifndef RADD_GEMM_HOST_EMULATION
#include "common/wgmma.cuh"
#endif

namespace radd_fast::attention::cuda {

// Warpgroups per CTA, G. The two warpgroups of a CTA share each K / V tile (half the loads per
// query) but meet at a barrier per tile, so they run their products and their softmax in step;
// overlap of one warpgroup's softmax with another's products then comes from a second CTA on the
// SM. ptxas (CUDA 13, sm_90a) gives 120 registers at head_dim 64 (two 256-thread CTAs fit an SM's
// 64 K registers) but 202 at head_dim 128, where one 256-thread CTA would fill the SM alone: there
// G = 1, two independent 128-thread CTAs per SM.
template <int D>
constexpr int fwd_wgmma_groups() {
  return D >= 128 ? 1 : 2;
}
template <int D>
constexpr int fwd_wgmma_threads() {
  return 128 * fwd_wgmma_groups<D>();
}
template <int D>
constexpr int fwd_wgmma_queries() {  // queries per CTA
  return 64 * fwd_wgmma_groups<D>();
}

template <typename T, int D>
struct FwdWgmmaSmem {
  static constexpr int kQElems = fwd_wgmma_queries<D>() * smem_ld<D>();     // padded rows, for ldmatrix
  static constexpr int kTileElems = kMmaTile * D;                           // core-matrix layout
  static constexpr size_t kBytes = sizeof(T) * (kQElems + 4 * kTileElems);  // Q, K x 2, V x 2
};

// Rows [row0, row0 + 64) of one head into a tile in the core-matrix layout (zeros past L), by a
// block of THREADS threads. Eight consecutive threads fill one 128-byte core matrix
// (conflict-free) from 8 rows' 16-byte pieces.
template <typename T, int D, int THREADS>
__device__ __forceinline__ void load_core_tile_async(T* smem, const Rows<T>& src, int64_t b, int64_t row0, int64_t h,
                                                     int64_t L) {
  constexpr int kChunks = D / 8;
  for (int i = threadIdx.x; i < kMmaTile * kChunks; i += THREADS) {
    const int r8 = i % 8, c = (i / 8) % kChunks, rg = i / (8 * kChunks), r = 8 * rg + r8;
    const bool ok = row0 + r < L;
    cp_async_16(smem + rg * 8 * D + c * 64 + r8 * 8, src.row(b, ok ? row0 + r : row0, h) + c * 8, ok);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(fwd_wgmma_threads<D>()) fwd_wgmma_kernel(Rows<T> Q, Rows<T> K, Rows<T> V,
                                                                   T* __restrict__ out, float* __restrict__ lse,
                                                                   MaskParams mp, int64_t H, float scale_log2) {
#if defined(RADD_GEMM_HOST_EMULATION) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using M = MmaType<T>;
  using S = FwdWgmmaSmem<T, D>;
  using gpu::wgmma_commit;
  using gpu::wgmma_desc;
  using gpu::wgmma_fence;
  using gpu::wgmma_fence_operand;
  using gpu::wgmma_wait;
  constexpr int LD = smem_ld<D>(), KS = D / 16, ND = D / 8, G = fwd_wgmma_groups<D>();
  constexpr int THREADS = fwd_wgmma_threads<D>(), QROWS = fwd_wgmma_queries<D>();
  // Descriptor strides in bytes: along d one core matrix (128 B), along keys 8 rows of D (16 D B).
  constexpr uint32_t kCoreBytes = 128, kKeyGroupBytes = 16 * D;
  RADD_DYNAMIC_SMEM(smem_raw);
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Ks = Qs + S::kQElems;  // two buffers
  T* Vs = Ks + 2 * S::kTileElems;

  const int64_t L = mp.L, n_t = (L + kMmaTile - 1) / kMmaTile, n_q = (L + QROWS - 1) / QROWS;
  const int64_t qb = blockIdx.x % n_q, bh = blockIdx.x / n_q, b = bh / H, h = bh % H;
  const int64_t q0 = qb * QROWS;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int wrow = warp * 16;                                        // the warp's first row
  const int64_t qt_lo = q0 / kMmaTile, qt_hi = min(qt_lo + G, n_t);  // the CTA's stats tiles
  const int64_t qt_w = qt_lo + warp / 4;                             // the warpgroup's
  const bool group_live = qt_w < n_t;

  load_tile_async<T, D, QROWS, THREADS>(Qs, Q, b, q0, h, L);
  cp_async_commit();
  int64_t kt = next_key_tile_any(mp, b, qt_lo, qt_hi, 0, n_t, kMmaTile);
  if (kt < n_t) {
    load_core_tile_async<T, D, THREADS>(Ks, K, b, kt * kMmaTile, h, L);
    load_core_tile_async<T, D, THREADS>(Vs, V, b, kt * kMmaTile, h, L);
  }
  cp_async_commit();
  cp_async_wait<1>();  // Q has landed
  __syncthreads();

  // The warp's Q rows as wgmma A fragments (mma.sync's A layout), k step ks = d columns 16 ks..+15.
  uint32_t qf[KS][4];
  const T* qa_ptr = Qs + (wrow + ((lane / 8) & 1) * 8 + lane % 8) * LD + (lane / 16) * 8;
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) ldmatrix_x4(qf[ks], qa_ptr + ks * 16);

  float m[2] = {neg_inf<float>(), neg_inf<float>()}, l[2] = {0.f, 0.f}, o[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
  float(&o_flat)[D / 2] = reinterpret_cast<float(&)[D / 2]>(o);

  int buf = 0;
  while (kt < n_t) {
    const int64_t nxt = next_key_tile_any(mp, b, qt_lo, qt_hi, kt + 1, n_t, kMmaTile);
    if (nxt < n_t) {  // prefetch the next needed tile into the other buffer
      load_core_tile_async<T, D, THREADS>(Ks + (buf ^ 1) * S::kTileElems, K, b, nxt * kMmaTile, h, L);
      load_core_tile_async<T, D, THREADS>(Vs + (buf ^ 1) * S::kTileElems, V, b, nxt * kMmaTile, h, L);
    }
    cp_async_commit();
    cp_async_wait<1>();  // the current tile has landed
    // cp.async writes through the generic proxy, wgmma reads through the async proxy: make the
    // writes visible to it before the barrier that publishes the tile.
    gpu::fence_proxy_async_smem();
    __syncthreads();
    const T* Kb = Ks + buf * S::kTileElems;
    const T* Vb = Vs + buf * S::kTileElems;
    const int64_t k0 = kt * kMmaTile;
    const int vis = group_live ? tile_visibility(mp, b, qt_w, kt, kMmaTile) : int(kTileHidden);
    if (vis != kTileHidden) {  // warpgroup-uniform
      float s[8][4];
      float(&s_flat)[32] = reinterpret_cast<float(&)[32]>(s);
#pragma unroll
      for (int i = 0; i < 32; ++i) wgmma_fence_operand(s_flat[i]);
      wgmma_fence();
      // k step ks reads d columns 16 ks..16 ks + 15: two core matrices further along d.
#pragma unroll
      for (int ks = 0; ks < KS; ++ks)
        gpu::wgmma_rs<T, 64, false>(s_flat, qf[ks], wgmma_desc(Kb + ks * 128, kCoreBytes, kKeyGroupBytes), ks > 0);
      wgmma_commit();
      wgmma_wait<0>();
#pragma unroll
      for (int i = 0; i < 32; ++i) wgmma_fence_operand(s_flat[i]);

      fwd_softmax_tile<ND>(s, m, l, o, scale_log2, vis == kTilePartial, mp, b, k0, q0 + wrow + g, t4);

      // O += P V; k step kk = keys 16 kk..16 kk + 15, two key groups further.
      uint32_t pa[4][4];
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) pack_p_fragment<M>(s, kk, pa[kk]);
#pragma unroll
      for (int i = 0; i < D / 2; ++i) wgmma_fence_operand(o_flat[i]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        gpu::wgmma_rs<T, D, true>(o_flat, pa[kk], wgmma_desc(Vb + kk * 16 * D, kKeyGroupBytes, kCoreBytes), true);
      wgmma_commit();
      wgmma_wait<0>();
#pragma unroll
      for (int i = 0; i < D / 2; ++i) wgmma_fence_operand(o_flat[i]);
    }
    __syncthreads();  // everyone is done with buffer `buf` before it is refilled
    kt = nxt;
    buf ^= 1;
  }
  cp_async_wait<0>();
  fwd_store_rows<M, T, D>(m, l, o, out, lse, b, h, H, L, q0 + wrow + g, t4);
#else
  __trap();  // not an sm_90a build: cuda.cu never launches this
#endif
}

}  // namespace radd_fast::attention::cuda
