// A tiled GEMM for the CUDA linear_dce_loss kernels, C (M x N) = A (M x K) @ B (K x N), whose row
// count M or depth K may live in device memory. That is how rows with weight 0 are skipped without
// a host synchronisation: they are compacted on the device (count in device memory), and every block
// of a tile beyond the count exits on its first instructions. cuBLAS needs M and K on the host, which
// would mean reading the count back (a sync) or doing the matmul work for all N rows.
//
// Operands are "stored matrices": row-major arrays with a leading dimension, whose rows may be
// gathered through an index array (the compacted row list). An operand is either K-major (its stored
// rows are the M or N index, K contiguous) or not (stored rows are K). Each block stages tiles of
// both operands in shared memory in their stored orientation through a kStages-deep cp.async
// pipeline (copies of the next kStages - 1 depth slices in flight while one is multiplied), and
// multiplies them with
//   * bf16 / fp16: tensor cores through nvcuda::wmma (16 x 16 x 16 fragments, fp32 accumulators);
//     WMMA's load_matrix_sync takes either orientation (row_major / col_major), so no transposes;
//   * fp32 / fp64: CUDA-core FMAs (true fp32/fp64, as torch's default allow_tf32=False matmuls).
// The epilogue hands every (m, n, value) inside the bounds to a functor.
#pragma once

#include <cstdint>
#include <type_traits>

// RADD_GEMM_HOST_EMULATION: compiled by a host compiler on top of csrc/tests/gpu_emulation.h, which
// runs a block's threads as CPU threads and emulates WMMA (csrc/tests/test_gemm.cpp tests the
// bf16, fp32 and fp64 kernels so).
#ifndef RADD_GEMM_HOST_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "common/async_copy.cuh"
#endif

// WMMA bf16 needs sm_80; the host pass sees all of mma.h; the emulation provides its own.
#if defined(RADD_GEMM_HOST_EMULATION) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define RADD_DCE_WMMA 1
#else
#define RADD_DCE_WMMA 0
#endif

namespace radd_fast::dce::gpu {

constexpr int kThreads = 256;  // every GEMM block: 8 warps
// Depth slices in shared memory: kStages - 1 in flight while one is multiplied. A 2-deep register-
// staged pipeline left the bf16 GEMMs at 64-70 TFLOP/s on an H200 (bench/RESULTS.md): one slice of
// math (~1 MFLOP per block) does not cover a global load's latency.
constexpr int kStages = 4;

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// Block tile (BM x BN, depth BK) and smem row padding (16 bytes: keeps 16-byte vector stores aligned
// and shifts banks between rows).
template <typename T>
struct Tile {
  static constexpr int BM = 128, BN = 128, BK = 32, PAD = 8;
  static constexpr bool kTensorCore = true;
};
template <>
struct Tile<float> {
  static constexpr int BM = 64, BN = 64, BK = 32, PAD = 4;
  static constexpr bool kTensorCore = false;
};
template <>
struct Tile<double> {
  static constexpr int BM = 64, BN = 64, BK = 16, PAD = 2;
  static constexpr bool kTensorCore = false;
};

template <typename T>
struct Stored {
  const T* ptr;
  int64_t ld;            // elements between stored rows
  const int* rows;       // stored row i is ptr + rows[rows_offset + i] * ld; nullptr: row i itself
  int64_t rows_offset;
  bool vec;              // ptr 16-byte aligned and ld a multiple of 16 / sizeof(T): vector loads allowed
};

// An extent known on the host (max), or min(max, *count - offset) clamped at 0 when count is given.
struct Bound {
  int64_t max;
  const int* count;
  int64_t offset;
};

__device__ __forceinline__ int64_t resolve(const Bound& b) {
  if (b.count == nullptr) return b.max;
  const int64_t v = int64_t(*b.count) - b.offset;
  return v < 0 ? 0 : (v > b.max ? b.max : v);
}

template <typename T>
struct GemmArgs {
  Stored<T> a, b;
  Bound M, K;
  int64_t N;
  int64_t k_split;  // blockIdx.z covers K range [z * k_split, (z + 1) * k_split); a multiple of BK
};

// ------------------------------------------------------------------------------------- tile copier
// Enqueues the copy of a TR x TC tile of a stored matrix, at stored (r0, c0), into shared memory laid
// out [TR][TC + PAD]. Entries outside rows < r_end, cols < c_end are zero. Each thread moves N_VEC
// 16-byte vectors: by cp.async where the vector is in bounds and aligned (zero-filled by cp.async
// where it is out of bounds); a vector that crosses c_end, or any vector of an unaligned operand,
// element by element through a plain shared store (visible after the next barrier, as the copies
// are after their wait). KMAJOR tiles keep their stored rows (M or N) for the whole K loop, so each
// thread resolves its rows (and their gather through the index array) once.
template <typename T, int TR, int TC, int PAD, bool KMAJOR>
struct TileCopy {
  static constexpr int VEC = 16 / int(sizeof(T));
  static constexpr int PER_ROW = TC / VEC;
  static constexpr int N_VEC = TR * TC / VEC / kThreads;
  static_assert(TC % VEC == 0 && (TR * TC) % (VEC * kThreads) == 0, "tile does not split into vectors");
  static_assert((PAD * sizeof(T)) % 16 == 0, "padding must keep rows 16-byte aligned");
  const T* row_ptr[KMAJOR ? N_VEC : 1];  // KMAJOR: start of each vector's stored row; nullptr past r_end

  __device__ __forceinline__ static const T* row_start(const Stored<T>& s, int64_t gr) {
    const int64_t row = s.rows ? int64_t(s.rows[s.rows_offset + gr]) : gr;
    return s.ptr + row * s.ld;
  }

  // KMAJOR only: fixes the stored rows [r0, r_end) once.
  __device__ __forceinline__ void init_rows(const Stored<T>& s, int64_t r0, int64_t r_end) {
#pragma unroll
    for (int j = 0; j < N_VEC; ++j) {
      const int64_t gr = r0 + (int(threadIdx.x) + j * kThreads) / PER_ROW;
      row_ptr[j] = gr < r_end ? row_start(s, gr) : nullptr;
    }
  }

  // Copies stored rows [r0, r_end) (ignored for KMAJOR: see init_rows), columns [c0, c_end).
  __device__ __forceinline__ void issue(T* smem, const Stored<T>& s, int64_t r0, int64_t r_end, int64_t c0,
                                        int64_t c_end) const {
#pragma unroll
    for (int j = 0; j < N_VEC; ++j) {
      const int v = int(threadIdx.x) + j * kThreads;
      const int lr = v / PER_ROW, lc = (v % PER_ROW) * VEC;
      const int64_t gc = c0 + lc;
      T* dst = smem + lr * (TC + PAD) + lc;
      const T* row;
      if constexpr (KMAJOR) {
        row = row_ptr[j];
      } else {
        const int64_t gr = r0 + lr;
        row = gr < r_end ? row_start(s, gr) : nullptr;
      }
      if (row == nullptr || gc >= c_end) {
        radd_fast::gpu::cp_async_16(dst, s.ptr, false);  // zero fill
      } else if (s.vec && gc + VEC <= c_end) {
        radd_fast::gpu::cp_async_16(dst, row + gc, true);
      } else {
        uint4 val = make_uint4(0u, 0u, 0u, 0u);
        T* e = reinterpret_cast<T*>(&val);
        for (int i = 0; i < VEC; ++i)
          if (gc + i < c_end) e[i] = row[gc + i];
        *reinterpret_cast<uint4*>(dst) = val;
      }
    }
  }
};

// ------------------------------------------------------------------------------ tensor-core engine
// 8 warps as 2 (M) x 4 (N); warp (wm, wn) owns rows wm*64 .. +64 and columns wn*32 .. +32 of the
// 128 x 128 block tile: 4 x 2 accumulator fragments of 16 x 16.
// Shared-memory tiles, as stored: A K-major -> As[m][k] (row_major for matrix_a), else As[k][m]
// (col_major); B K-major -> Bs[n][k] (col_major for matrix_b: element (k, n) at n * ld + k), else
// Bs[k][n] (row_major). Leading dimensions (40 or 136 elements) are multiples of 8 and every
// fragment pointer is 32-byte aligned, as load_matrix_sync requires.
template <typename T, bool A_KMAJOR, bool B_KMAJOR>
struct WmmaEngine {
  using TL = Tile<T>;
  static constexpr int BM = TL::BM, BN = TL::BN, BK = TL::BK, PAD = TL::PAD;
  static_assert(BM == 128 && BN == 128 && BK % 16 == 0, "warp layout assumes a 128 x 128 tile");
#if RADD_DCE_WMMA
  using LA = std::conditional_t<A_KMAJOR, nvcuda::wmma::row_major, nvcuda::wmma::col_major>;
  using LB = std::conditional_t<B_KMAJOR, nvcuda::wmma::col_major, nvcuda::wmma::row_major>;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[4][2];
#endif
  int wm, wn;

  __device__ __forceinline__ void zero() {
    const int warp = int(threadIdx.x) / 32;
    wm = warp / 4;
    wn = warp % 4;
#if RADD_DCE_WMMA
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
#endif
  }

  __device__ __forceinline__ void step(const T* As, const T* Bs) {
#if RADD_DCE_WMMA
    using namespace nvcuda;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LA> af[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LB> bf[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = wm * 64 + i * 16;
        if constexpr (A_KMAJOR)
          wmma::load_matrix_sync(af[i], As + m * (BK + PAD) + kk, BK + PAD);
        else
          wmma::load_matrix_sync(af[i], As + kk * (BM + PAD) + m, BM + PAD);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int n = wn * 32 + j * 16;
        if constexpr (B_KMAJOR)
          wmma::load_matrix_sync(bf[j], Bs + n * (BK + PAD) + kk, BK + PAD);
        else
          wmma::load_matrix_sync(bf[j], Bs + kk * (BN + PAD) + n, BN + PAD);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], af[i], bf[j], acc[i][j]);
    }
#else
    __trap();  // bf16/fp16 need sm_80+; the host refuses older devices before launching
#endif
  }

  // The accumulator layout of a fragment is opaque, so each warp stores one fragment at a time to
  // its own 16 x 16 fp32 scratch (1 KB of the now idle tile buffers) and reads it back by coordinate.
  template <class Epi>
  __device__ __forceinline__ void epilogue(float* scratch, int64_t m0, int64_t n0, int64_t M, int64_t N,
                                           const Epi& epi) {
#if RADD_DCE_WMMA
    const int lane = int(threadIdx.x) % 32;
    float* st = scratch + (int(threadIdx.x) / 32) * 256;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        nvcuda::wmma::store_matrix_sync(st, acc[i][j], 16, nvcuda::wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
          const int64_t m = m0 + wm * 64 + i * 16 + e / 16, n = n0 + wn * 32 + j * 16 + e % 16;
          if (m < M && n < N) epi(m, n, st[e]);
        }
        __syncwarp();
      }
#endif
  }
};

// --------------------------------------------------------------------------------- CUDA-core engine
// 16 x 16 threads on a 64 x 64 tile; thread (ty, tx) owns rows ty + 16 i and columns tx + 16 j
// (i, j < 4), so the epilogue's stores are coalesced along n.
template <typename T, bool A_KMAJOR, bool B_KMAJOR>
struct SimtEngine {
  using TL = Tile<T>;
  using acc_t = typename AccOf<T>::type;
  static constexpr int BM = TL::BM, BN = TL::BN, BK = TL::BK, PAD = TL::PAD;
  static_assert(BM == 64 && BN == 64, "thread layout assumes a 64 x 64 tile");
  acc_t acc[4][4];
  int ty, tx;

  __device__ __forceinline__ void zero() {
    ty = int(threadIdx.x) / 16;
    tx = int(threadIdx.x) % 16;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = acc_t(0);
  }

  __device__ __forceinline__ void step(const T* As, const T* Bs) {
#pragma unroll 4
    for (int k = 0; k < BK; ++k) {
      acc_t a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = ty + 16 * i, n = tx + 16 * i;
        a[i] = acc_t(A_KMAJOR ? As[m * (BK + PAD) + k] : As[k * (BM + PAD) + m]);
        b[i] = acc_t(B_KMAJOR ? Bs[n * (BK + PAD) + k] : Bs[k * (BN + PAD) + n]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
  }

  template <class Epi>
  __device__ __forceinline__ void epilogue(float*, int64_t m0, int64_t n0, int64_t M, int64_t N, const Epi& epi) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
        if (m < M && n < N) epi(m, n, acc[i][j]);
      }
  }
};

// -------------------------------------------------------------------------------------- the kernel
// Shared memory of one block: kStages slices of both operand tiles, each buffer rounded to 64
// elements (keeps every buffer and fragment pointer 32-byte aligned). 80 KB for bf16/fp16, 72 KB for
// fp32/fp64: above the 48 KB default, so launches opt in (cuda.cu).
template <typename T, bool A_KMAJOR, bool B_KMAJOR>
struct GemmSmem {
  using TL = Tile<T>;
  static constexpr int A_TR = A_KMAJOR ? TL::BM : TL::BK, A_TC = A_KMAJOR ? TL::BK : TL::BM;
  static constexpr int B_TR = B_KMAJOR ? TL::BN : TL::BK, B_TC = B_KMAJOR ? TL::BK : TL::BN;
  static constexpr int A_ELEMS = (A_TR * (A_TC + TL::PAD) + 63) / 64 * 64;
  static constexpr int B_ELEMS = (B_TR * (B_TC + TL::PAD) + 63) / 64 * 64;
  static constexpr size_t kBytes = size_t(kStages) * (A_ELEMS + B_ELEMS) * sizeof(T);
  static_assert(kBytes >= 8 * 256 * sizeof(float), "epilogue scratch does not fit");
};

#ifndef RADD_GEMM_HOST_EMULATION
__device__ __forceinline__ unsigned char* gemm_smem() {
  extern __shared__ __align__(128) unsigned char gemm_dynamic_smem[];
  return gemm_dynamic_smem;
}
#endif

// Grid: x = M tiles (consecutive blocks share a tile of B), y = N tiles, z = K splits. Dynamic
// shared memory: GemmSmem<T, A_KMAJOR, B_KMAJOR>::kBytes. At most 128 registers per thread, so two
// blocks fit an SM (ptxas for sm_90a: 121-128 for bf16/fp16, 64-108 for fp32/fp64, no spills).
template <typename T, bool A_KMAJOR, bool B_KMAJOR, class Epi>
__global__ void __launch_bounds__(kThreads, 2) gemm_kernel(const GemmArgs<T> p, const Epi epi) {
  using TL = Tile<T>;
  using SM = GemmSmem<T, A_KMAJOR, B_KMAJOR>;
  constexpr int BM = TL::BM, BN = TL::BN, BK = TL::BK, PAD = TL::PAD;
  T* As = reinterpret_cast<T*>(gemm_smem());
  T* Bs = As + kStages * SM::A_ELEMS;
  using Engine = std::conditional_t<TL::kTensorCore, WmmaEngine<T, A_KMAJOR, B_KMAJOR>, SimtEngine<T, A_KMAJOR, B_KMAJOR>>;

  // Rows (or depth) beyond the device-side count: nothing to do, and no host ever had to know.
  const int64_t M = resolve(p.M);
  const int64_t m0 = int64_t(blockIdx.x) * BM;
  if (m0 >= M) return;
  const int64_t n0 = int64_t(blockIdx.y) * BN;
  const int64_t K = resolve(p.K);
  const int64_t kb = int64_t(blockIdx.z) * p.k_split;
  const int64_t ke = K < kb + p.k_split ? K : kb + p.k_split;
  if (Epi::kAccumulates && kb >= ke) return;  // adding a zero product: skip (non-accumulating epilogues write 0)
  const int nk = kb < ke ? int((ke - kb + BK - 1) / BK) : 0;

  TileCopy<T, SM::A_TR, SM::A_TC, PAD, A_KMAJOR> ca;
  TileCopy<T, SM::B_TR, SM::B_TC, PAD, B_KMAJOR> cb;
  if constexpr (A_KMAJOR) ca.init_rows(p.a, m0, M);
  if constexpr (B_KMAJOR) cb.init_rows(p.b, n0, p.N);
  auto issue = [&](int stage, int64_t k0) {  // depth slice [k0, k0 + BK) into buffer `stage`
    if constexpr (A_KMAJOR)
      ca.issue(As + stage * SM::A_ELEMS, p.a, 0, 0, k0, ke);
    else
      ca.issue(As + stage * SM::A_ELEMS, p.a, k0, ke, m0, M);
    if constexpr (B_KMAJOR)
      cb.issue(Bs + stage * SM::B_ELEMS, p.b, 0, 0, k0, ke);
    else
      cb.issue(Bs + stage * SM::B_ELEMS, p.b, k0, ke, n0, p.N);
  };

  Engine eng;
  eng.zero();
  // Group g of each thread's copies holds slice g (a group past nk is empty), so before slice t is
  // multiplied, waiting until at most kStages - 2 groups are pending means groups 0..t have landed.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nk) issue(s, kb + int64_t(s) * BK);
    radd_fast::gpu::cp_async_commit();
  }
  for (int t = 0; t < nk; ++t) {
    radd_fast::gpu::cp_async_wait<kStages - 2>();
    // Every thread's copies of slice t are visible, and every warp is done with slice t - 1, whose
    // buffer the next issue refills.
    __syncthreads();
    const int next = t + kStages - 1;
    if (next < nk) issue(next % kStages, kb + int64_t(next) * BK);
    radd_fast::gpu::cp_async_commit();
    eng.step(As + (t % kStages) * SM::A_ELEMS, Bs + (t % kStages) * SM::B_ELEMS);
  }
  radd_fast::gpu::cp_async_wait<0>();
  __syncthreads();  // the epilogue reuses the tile buffers as scratch
  eng.epilogue(reinterpret_cast<float*>(gemm_smem()), m0, n0, M, p.N, epi);
}

}  // namespace radd_fast::dce::gpu
