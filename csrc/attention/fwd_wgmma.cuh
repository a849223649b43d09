// sm_90a forward of radd_fast::masked_attention for bf16 / fp16 on Hopper's warpgroup MMA (wgmma).
//
// Why: mma.sync (kernels.cuh) issues a 16 x 8 x 16 product per warp with both operands in registers,
// fed from shared memory by ldmatrix; on the H200 that kernel measured 171 TFLOP/s at head_dim 64
// (SDPA 336). wgmma issues a 64 x N x 16 product per warpgroup (4 warps) and reads B straight from
// shared memory, so no ldmatrix traffic or B registers, and it runs asynchronously.
//
// CTA = (b, h, 64 G queries), G warpgroups of 64 query rows (warp w owns rows 16 w..16 w+15, as in
// the mma.sync kernel with 16 rows per warp, because wgmma's accumulator layout per warp is
// mma.sync's). Steps of 64 NK keys (NK = 1, or 2 with RADD_FAST_ATTENTION_KEY_TILE=128), loaded by
// cp.async into two slots each for K and V and shared by the warpgroups (shown for NK = 1):
//   S (64 x 64 per warpgroup) = Q K^T: wgmma m64n64k16, A = the warpgroup's Q rows, B = the K
//     tile (N = key, K = d: "K-major"), both from shared memory (Q there rather than in
//     registers leaves room for the pipeline's second set of scores).
//   online softmax on the registers (fwd_softmax_stats, shared with the mma.sync kernel).
//   O (64 x D) += P V: wgmma m64nDk16, A = P from registers (its accumulator layout is the A
//     fragment's), B = the V tile (N = d, K = key: "MN-major", the instruction's transpose flag).
// The two products are pipelined across tiles: the next tile's S is issued with this tile's P V,
// so the softmax (at head_dim 64 as many cycles of exp2 as of tensor-core work) overlaps P V.
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

// Warpgroups per CTA, G, for NK x 64 keys per step. The warpgroups of a CTA share each K / V tile
// -- a fraction of the L2 reads per query: at B 16, heads 12, L 1,024, head_dim 64 one warpgroup
// per CTA would read ~0.8 GB of K / V per forward, ~6 TB/s at the 400 TFLOP/s target, at the limit
// of an H100-class L2 -- but meet at a barrier per tile.
//   NK = 1 (64-key steps, the default): two 256-thread CTAs per SM need <= 128 registers per
//   thread: at head_dim <= 64 the kernel is held to that (ptxas, CUDA 13.0, sm_90a, 2026-12-02: 128
//   at head_dim 64 and 124 at head_dim 32, no spills; ~138 when free at head_dim 64). At
//   head_dim 128 (174 registers) one 256-thread CTA would fill the SM alone: there G = 1, two
//   128-thread CTAs per SM (shared memory, 80 KB each, allows no third).
//   NK = 2 (128-key steps, RADD_FAST_ATTENTION_KEY_TILE=128): each S product is one m64n128k16 per
//   k step, which reads a third less shared memory per FLOP than m64n64k16 -- with Q read from
//   shared memory too, the 64-key S product needs the SM's whole shared-memory bandwidth (4 KB per
//   32 tensor-core cycles) -- and half the barriers, row maxima and rescalings per key. G = 2, one
//   CTA per SM: the scores of the next step (64 registers), P of this one (32) and the output (D /
//   2) are live together: 166 / 184 / 222 registers at head_dim 32 / 64 / 128 (ptxas, CUDA 13,
//   sm_90a; no spills).
//   FlashAttention-3's 192 x 128 tile at head_dim 64 (G = 3, <= 168 registers) spilled 284 bytes:
//   its consumers get their registers from a producer warpgroup that this kernel does not have.
template <int D, int NK = 1>
constexpr int fwd_wgmma_groups() {
  return NK == 1 && D >= 128 ? 1 : 2;
}
template <int D, int NK = 1>
constexpr int fwd_wgmma_threads() {
  return 128 * fwd_wgmma_groups<D, NK>();
}
template <int D, int NK = 1>
constexpr int fwd_wgmma_queries() {  // queries per CTA
  return 64 * fwd_wgmma_groups<D, NK>();
}

template <typename T, int D, int NK = 1>
struct FwdWgmmaSmem {
  static constexpr int kQElems = fwd_wgmma_queries<D, NK>() * D;            // core-matrix layout
  static constexpr int kStepElems = NK * kMmaTile * D;                      // one K or V step, same
  static constexpr size_t kBytes = sizeof(T) * (kQElems + 4 * kStepElems);  // Q, K x 2, V x 2
};

// One thread's share of copying rows [row0, row0 + ROWS) of one head into a tile in the core-matrix
// layout (zeros past L), for a block of THREADS threads. Eight consecutive threads fill one
// 128-byte core matrix (conflict-free) from 8 rows' 16-byte pieces; a thread's row, column piece
// and place in the tile are the same for every tile, so it keeps only those, the head's base and
// the row stride (TileCopier, kernels.cuh): loaded every key tile inside the pipelined loops, the
// general Rows addressing kept ~35 more registers live there (ptxas, sm_90a, head_dim 64).
template <typename T, int D, int THREADS, int ROWS = kMmaTile>
struct CoreTileLoader : TileCopier<T, ROWS, THREADS / (D / 8), THREADS / (D / 8) * D> {
  static constexpr int kChunks = D / 8;
  static_assert(THREADS % (8 * kChunks) == 0, "tile / thread mismatch");

  __device__ __forceinline__ CoreTileLoader(const Rows<T>& src, int64_t b, int64_t h) {
    const int i = threadIdx.x, r8 = i % 8, c = (i / 8) % kChunks, rg = i / (8 * kChunks);
    this->head = src.p + b * src.sb + h * src.sh + c * 8;
    this->ld = src.sl;
    this->row = 8 * rg + r8;
    this->dst = rg * 8 * D + c * 64 + r8 * 8;
  }
};

template <typename T, int D, int NK = 1>
__global__ void __launch_bounds__(fwd_wgmma_threads<D, NK>(), NK == 1 ? 2 : 1)
    fwd_wgmma_kernel(Rows<T> Q, Rows<T> K, Rows<T> V, T* __restrict__ out, float* __restrict__ lse, MaskParams mp,
                     int64_t H, float scale_log2) {
#if defined(RADD_GEMM_HOST_EMULATION) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(NK == 1 || NK == 2, "64 or 128 keys per step");
  using M = MmaType<T>;
  using S = FwdWgmmaSmem<T, D, NK>;
  using gpu::wgmma_commit;
  using gpu::wgmma_desc;
  using gpu::wgmma_fence;
  using gpu::wgmma_fence_operand;
  using gpu::wgmma_wait;
  constexpr int KS = D / 16, ND = D / 8, G = fwd_wgmma_groups<D, NK>();
  constexpr int THREADS = fwd_wgmma_threads<D, NK>(), QROWS = fwd_wgmma_queries<D, NK>();
  constexpr int KEYS = NK * kMmaTile, NT = KEYS / 8, KK = KEYS / 16;  // keys, n-tiles, P V k steps per step
  // Descriptor strides in bytes: along d one core matrix (128 B), along keys 8 rows of D (16 D B).
  constexpr uint32_t kCoreBytes = 128, kKeyGroupBytes = 16 * D;
  RADD_DYNAMIC_SMEM(smem_raw);
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Ks = Qs + S::kQElems;  // two slots
  T* Vs = Ks + 2 * S::kStepElems;

  // Tile and step indices in 32 bits (the host holds B L heads below 2^31): they live through the
  // loop. Masks are summarised per 64-key stats tile (n_t of them); the loop steps over KEYS keys.
  const int64_t L = mp.L, n_q = (L + QROWS - 1) / QROWS;
  const int n_t = int((L + kMmaTile - 1) / kMmaTile), n_s = int((L + KEYS - 1) / KEYS);
  const int64_t qb = blockIdx.x % n_q, bh = blockIdx.x / n_q, b = bh / H, h = bh % H;
  const int64_t q0 = qb * QROWS;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int wrow = warp * 16;                                        // the warp's first row
  const int qt_lo = int(q0 / kMmaTile), qt_hi = min(qt_lo + G, n_t);  // the CTA's stats tiles
  const int qt_w = qt_lo + warp / 4;                                  // the warpgroup's
  const bool group_live = qt_w < n_t;
  const int64_t row0 = q0 + wrow + g;

  // The key steps some warpgroup of the CTA sees part of, in order: t0 is the p-th, t1..t3 the next
  // three (n_s past the end). The p-th step's K and V live in slot p % 2.
  auto step_of = [&](int64_t kt) { return kt < n_t ? int(kt / NK) : n_s; };  // of a stats tile
  auto after = [&](int js) {
    return js < n_s ? step_of(next_key_tile_any(mp, b, qt_lo, qt_hi, int64_t(js + 1) * NK, n_t, kMmaTile)) : n_s;
  };
  auto vis_of = [&](int js) {  // warpgroup-uniform; with two tiles per step: hidden if both are,
    if (!group_live || js >= n_s) return int(kTileHidden);  // visible only if both are (inside L)
    if constexpr (NK == 1) {
      return tile_visibility(mp, b, qt_w, js, kMmaTile);
    } else {
      const int v0 = tile_visibility(mp, b, qt_w, 2 * js, kMmaTile);
      const int v1 = 2 * js + 1 < n_t ? tile_visibility(mp, b, qt_w, 2 * js + 1, kMmaTile) : int(kTileHidden);
      return v0 == kTileHidden && v1 == kTileHidden   ? int(kTileHidden)
             : v0 == kTileVisible && v1 == kTileVisible ? int(kTileVisible)
                                                        : int(kTilePartial);
    }
  };
  const CoreTileLoader<T, D, THREADS, KEYS> k_rows(K, b, h), v_rows(V, b, h);
  auto load_k = [&](int js, int slot) {
    if (js < n_s) k_rows.load(Ks + slot * S::kStepElems, int64_t(js) * KEYS, L);
  };
  auto load_v = [&](int js, int slot) {
    if (js < n_s) v_rows.load(Vs + slot * S::kStepElems, int64_t(js) * KEYS, L);
  };
  float s[NT][4];  // this warpgroup's 64 x KEYS scores, mma.sync's C layout per warp
  float(&s_flat)[4 * NT] = reinterpret_cast<float(&)[4 * NT]>(s);
  float m[2] = {neg_inf<float>(), neg_inf<float>()}, l[2] = {0.f, 0.f}, alpha[2], o[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
  float(&o_flat)[D / 2] = reinterpret_cast<float(&)[D / 2]>(o);
  uint32_t pa[KK][4];  // P of step t0 as the A fragments of P V's k steps (keys 16 kk..16 kk + 15)
  // Before an accumulator's wgmma and after its wait: keep the compiler from moving its uses across.
  auto fence_s = [&] {
#pragma unroll
    for (int i = 0; i < 4 * NT; ++i) wgmma_fence_operand(s_flat[i]);
  };
  auto fence_o = [&] {
#pragma unroll
    for (int i = 0; i < D / 2; ++i) wgmma_fence_operand(o_flat[i]);
  };
  auto fence_pa = [&] {  // P V reads pa from the registers: no new P in them before its wait
#pragma unroll
    for (int kk = 0; kk < KK; ++kk)
#pragma unroll
      for (int i = 0; i < 4; ++i) wgmma_fence_operand(pa[kk][i]);
  };
  // Descriptors of slot 0 (and of the warpgroup's Q rows); a slot or k step further is an offset
  // of the start address, which sits in the low bits in 16-byte units. Deriving them by one add
  // keeps ptxas from holding a descriptor per slot and k step live through the loop.
  constexpr uint32_t kSlotUnits = S::kStepElems * sizeof(T) / 16;
  const uint64_t q_desc = wgmma_desc(Qs + (warp / 4) * kMmaTile * D, kCoreBytes, kKeyGroupBytes);
  const uint64_t k_desc = wgmma_desc(Ks, kCoreBytes, kKeyGroupBytes);
  const uint64_t v_desc = wgmma_desc(Vs, kKeyGroupBytes, kCoreBytes);
  auto issue_s = [&](int slot) {  // S = Q K(slot)^T, issued and committed
    const uint64_t kd = k_desc + slot * kSlotUnits;
    fence_s();
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < KS; ++ks)  // two core matrices (256 B) further along d per k step
      gpu::wgmma_ss<T, KEYS, false, false>(s_flat, q_desc + ks * 16, kd + ks * 16, ks > 0);
    wgmma_commit();
  };

  int t0 = step_of(next_key_tile_any(mp, b, qt_lo, qt_hi, 0, n_t, kMmaTile)), t1 = after(t0), t2 = after(t1);
  // The CTA's QROWS queries as one tile: warpgroup w's 64 rows are its w-th 64 x D block.
  CoreTileLoader<T, D, THREADS, QROWS>(Q, b, h).load(Qs, q0, L);
  load_k(t0, 0);
  load_v(t0, 0);
  load_k(t1, 1);
  cp_async_commit();
  cp_async_wait<0>();
  // cp.async writes through the generic proxy, wgmma reads through the async proxy: make the
  // writes visible to it before the barrier that publishes them.
  gpu::fence_proxy_async_smem();
  __syncthreads();

  // S of step js to P in pa. A step hidden from this warpgroup (but not from another) is computed
  // like any other and its scores dropped: wgmma under a branch that is not provably
  // warpgroup-uniform is serialised by ptxas (C7518), which would cost more than the one extra
  // step such a warpgroup computes.
  auto softmax_to_p = [&](int js) {
    const int vis = vis_of(js);
    fwd_softmax_stats<NT>(s, m, l, alpha, scale_log2, vis == kTilePartial, mp, b, int64_t(js) * KEYS, row0, t4,
                          vis == kTileHidden);
  };
  auto issue_pv = [&](int slot) {  // O += P V; k step kk = keys 16 kk..+15; V read MN-major
    const uint64_t vd = v_desc + slot * kSlotUnits;
    fence_o();
    fence_pa();
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < KK; ++kk)  // two key groups (32 D B) further per k step
      gpu::wgmma_rs<T, D, true>(o_flat, pa[kk], vd + kk * (2 * D), true);
    wgmma_commit();
  };

  if (t0 < n_s) {  // prologue: S and P of the first tile (no alpha to apply: O is zero)
    issue_s(0);
    wgmma_wait<0>();
    fence_s();
    softmax_to_p(t0);
#pragma unroll
    for (int kk = 0; kk < KK; ++kk) pack_p_fragment<M, NT>(s, kk, pa[kk]);
  }
  __syncthreads();  // K slot 0 is free
  load_k(t2, 0);
  load_v(t1, 1);
  cp_async_commit();

  // Step p, for the p-th tile t0 (its P in pa) and the next, t1: S1 = Q K(t1)^T and O += P V(t0)
  // are issued back to back; the softmax of S1 runs while P V is still on the tensor cores, and
  // only the rescaling of O waits for it (FlashAttention-3's intra-warpgroup overlap). K runs two
  // tiles ahead and V one: at the end of step p, K(t1)'s and V(t0)'s slots are free and take
  // K(t3) and V(t2), which step p + 2 reads -- so the wait at the top of a step leaves the last
  // step's copies in flight.
  int p = 0;
  for (; t1 < n_s; ++p) {
    cp_async_wait<1>();  // K(t1), V(t0)
    gpu::fence_proxy_async_smem();
    __syncthreads();
    issue_s((p + 1) & 1);
    issue_pv(p & 1);
    wgmma_wait<1>();  // S1 (committed first) is done; P V may still run
    fence_s();
    softmax_to_p(t1);
    // Then wait for P V (O and pa may be touched again) and rescale O unless no row maximum of the
    // warpgroup moved. With a per-warp vote after the wait (fwd_rescale_output), ptxas (CUDA 13.0,
    // sm_90a) put the wait above all of the softmax's exponentials: no overlap with P V at all.
    // Voting over the warpgroup before the wait, with a wait in each arm of the branch, keeps the
    // exponentials between the two waits (SASS: all 34 ex2 of a thread's 64-key step, 32
    // probabilities and 2 rescale factors; CI checks it with bench/kernel_resources.py
    // --check-overlap). The speed-up is unmeasured.
    if (gpu::warpgroup_all(alpha[0] == 1.f && alpha[1] == 1.f)) {
      wgmma_wait<0>();
      fence_o();
      fence_pa();
    } else {
      wgmma_wait<0>();
      fence_o();
      fence_pa();
      fwd_scale_output<ND>(o, alpha);
    }
#pragma unroll
    for (int kk = 0; kk < KK; ++kk) pack_p_fragment<M, NT>(s, kk, pa[kk]);
    const int t3 = after(t2);
    __syncthreads();  // every warpgroup is done with K(t1) and V(t0)
    load_k(t3, (p + 1) & 1);
    load_v(t2, p & 1);
    cp_async_commit();
    t0 = t1, t1 = t2, t2 = t3;
  }
  if (t0 < n_s) {  // the last step's P V
    cp_async_wait<0>();
    gpu::fence_proxy_async_smem();
    __syncthreads();
    issue_pv(p & 1);
    wgmma_wait<0>();
    fence_o();
    fence_pa();
  }
  cp_async_wait<0>();
  fwd_store_rows<M, T, D>(m, l, o, out, lse, b, h, H, L, row0, t4);
#else
  __trap();  // not an sm_90a build: cuda.cu never launches this
#endif
}

}  // namespace radd_fast::attention::cuda
