// CUDA kernels of radd_fast::masked_attention_fwd / _bwd (host side: cuda.cu).
//
//   * bf16 / fp16: FlashAttention-2-style kernels on tensor cores (mma.sync m16n8k16, fp32
//     accumulation, sm_80+), 4 warps, 128 (or 64) queries x 64-key tiles in the forward and 64 keys
//     x 64-query tiles in the backward, K/V (forward) and Q/dO (backward) tiles streamed through
//     shared memory with cp.async.
//   * fp32 / fp64: the same tiling with plain FMAs (32 x 32 tiles), exact in the input precision.
//   * fwd_wgmma.cuh: an sm_90a bf16 / fp16 forward on warpgroup MMA, built on the pieces here.
// Both skip every (query tile, key tile) pair that the order / padding mask hides entirely, using
// per-tile summaries (tile_stats_kernel) and classify_tile from attention.h, and apply the mask
// element by element only on partial tiles. The online softmax, the final normalisation and the
// backward's dS are the RADD_HD functions of attention.h that the CPU kernel (and its tests) share.
//
// RADD_GEMM_HOST_EMULATION: compiled by a host compiler on top of csrc/tests/gpu_emulation.h, which
// runs a block's threads as CPU threads and emulates mma.sync, ldmatrix, cp.async and atomics
// (csrc/tests/test_attention_kernels.cpp runs every kernel here so, against float64).
#pragma once

#include <cstdint>

#ifndef RADD_GEMM_HOST_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/async_copy.cuh"
// A kernel's dynamic shared memory (its size is the launch's third argument).
#define RADD_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#include "attention/attention.h"
#include "common/fast_math.cuh"

namespace radd_fast::attention::cuda {

// ------------------------------------------------------------------------------- mask on device
// Summary of the positions [t * tile, (t + 1) * tile) of one sequence (see classify_tile).
struct TileStats {
  int64_t q_lo, q_hi;  // order range over all positions (the tile as a query tile)
  int64_t k_lo, k_hi;  // order range over valid keys (not padding)
  int64_t n_valid;     // valid keys in the tile
};

struct MaskParams {
  const int64_t* order = nullptr;    // (B, L) or null: no order
  const bool* pad = nullptr;         // (B, L) key_padding_mask or null
  const TileStats* stats = nullptr;  // (B, n_tiles) or null: neither order nor padding
  int64_t L = 0;
  int64_t n_tiles = 0;
  bool strict = false;
};

// One warp per (b, tile). static: every translation unit that includes this header gets its own copy.
static __global__ void tile_stats_kernel(MaskParams mp, int64_t tile, TileStats* out, int64_t count) {
  const int64_t w = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= count) return;
  const int64_t b = w / mp.n_tiles, t = w % mp.n_tiles;
  int64_t q_lo = INT64_MAX, q_hi = INT64_MIN, k_lo = INT64_MAX, k_hi = INT64_MIN, n = 0;
  for (int64_t p = t * tile + lane; p < min(mp.L, (t + 1) * tile); p += 32) {
    const int64_t o = mp.order ? mp.order[b * mp.L + p] : 0;
    q_lo = min(q_lo, o), q_hi = max(q_hi, o);
    if (!mp.pad || mp.pad[b * mp.L + p]) k_lo = min(k_lo, o), k_hi = max(k_hi, o), ++n;
  }
  for (int s = 16; s > 0; s /= 2) {
    q_lo = min(q_lo, __shfl_xor_sync(0xffffffffu, q_lo, s));
    q_hi = max(q_hi, __shfl_xor_sync(0xffffffffu, q_hi, s));
    k_lo = min(k_lo, __shfl_xor_sync(0xffffffffu, k_lo, s));
    k_hi = max(k_hi, __shfl_xor_sync(0xffffffffu, k_hi, s));
    n += __shfl_xor_sync(0xffffffffu, n, s);
  }
  if (lane == 0) out[w] = TileStats{q_lo, q_hi, k_lo, k_hi, n};
}

// Visibility of the (query tile qt, key tile kt) pair of sequence b; both tiles have `tile` slots.
__device__ __forceinline__ int tile_visibility(const MaskParams& mp, int64_t b, int64_t qt, int64_t kt, int64_t tile) {
  if (mp.stats == nullptr) return (kt + 1) * tile <= mp.L ? kTileVisible : kTilePartial;
  const TileStats& qs = mp.stats[b * mp.n_tiles + qt];
  const TileStats& ks = mp.stats[b * mp.n_tiles + kt];
  return classify_tile<int64_t>(qs.q_lo, qs.q_hi, ks.k_lo, ks.k_hi, ks.n_valid, tile, mp.order != nullptr, mp.strict);
}

// The first key tile >= kt that is not hidden from query tile qt (n_kt if none).
__device__ __forceinline__ int64_t next_key_tile(const MaskParams& mp, int64_t b, int64_t qt, int64_t kt, int64_t n_kt,
                                                 int64_t tile) {
  while (kt < n_kt && tile_visibility(mp, b, qt, kt, tile) == kTileHidden) ++kt;
  return kt;
}
// The first query tile >= qt that sees some key of key tile kt (n_qt if none).
__device__ __forceinline__ int64_t next_query_tile(const MaskParams& mp, int64_t b, int64_t kt, int64_t qt,
                                                   int64_t n_qt, int64_t tile) {
  while (qt < n_qt && tile_visibility(mp, b, qt, kt, tile) == kTileHidden) ++qt;
  return qt;
}

// Order of query `row` (0 without an order; only compared when there is one).
__device__ __forceinline__ int64_t query_order(const MaskParams& mp, int64_t b, int64_t row) {
  return (mp.order && row < mp.L) ? mp.order[b * mp.L + row] : 0;
}

// Per-element masking of a partial tile, with 32-bit local indices. Forward: the keys of a tile
// against each thread's query rows. Backward: each thread's key rows against the queries of a tile.
struct KeyTile {
  const int64_t* order;  // order of the tile's first key, or null
  const bool* pad;       // padding of the tile's first key, or null
  int n;                 // keys of the tile inside the sequence
  bool strict;
  __device__ __forceinline__ KeyTile(const MaskParams& mp, int64_t b, int64_t k0, int tile)
      : order(mp.order ? mp.order + b * mp.L + k0 : nullptr),
        pad(mp.pad ? mp.pad + b * mp.L + k0 : nullptr),
        n(static_cast<int>(min(static_cast<int64_t>(tile), mp.L - k0))),
        strict(mp.strict) {}
  // Whether key c of the tile is visible to a query of order oq.
  __device__ __forceinline__ bool visible(int c, int64_t oq) const {
    return c < n && (pad == nullptr || pad[c]) && (order == nullptr || order_allows(order[c], oq, strict));
  }
};
struct QueryTile {
  const int64_t* order;  // order of the tile's first query, or null
  int n;                 // queries of the tile inside the sequence
  bool strict;
  __device__ __forceinline__ QueryTile(const MaskParams& mp, int64_t b, int64_t q0, int tile)
      : order(mp.order ? mp.order + b * mp.L + q0 : nullptr),
        n(static_cast<int>(min(static_cast<int64_t>(tile), mp.L - q0))),
        strict(mp.strict) {}
  // Whether query c of the tile sees a key that is valid (in range, not padding) and of order ok.
  __device__ __forceinline__ bool sees(int c, bool key_valid, int64_t ok) const {
    return key_valid && c < n && (order == nullptr || order_allows(ok, order[c], strict));
  }
};
// Validity (in range, not padding) and order of one key, for QueryTile::sees.
__device__ __forceinline__ bool key_valid(const MaskParams& mp, int64_t b, int64_t key) {
  return key < mp.L && (mp.pad == nullptr || mp.pad[b * mp.L + key]);
}

// Strided (B, L, H, D) tensor with a contiguous last dim.
template <typename T>
struct Rows {
  const T* p;
  int64_t sb, sl, sh;
  __device__ __forceinline__ const T* row(int64_t b, int64_t l, int64_t h) const { return p + b * sb + l * sl + h * sh; }
};

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ===================================================================== tensor-core (bf16 / fp16)
// PTX wrappers. Fragment layouts of mma.m16n8k16 (.bf16/.f16 inputs, .f32 accumulators), with
// g = lane / 4 ("groupID") and t = lane % 4 ("threadID_in_group"); each 32-bit register holds two
// consecutive 16-bit elements, the lower column / row index in the low half:
//   A (16 x 16, row major): a[0] = (row g,   cols 2t, 2t+1)   a[1] = (row g+8, cols 2t, 2t+1)
//                           a[2] = (row g,   cols 2t+8, 2t+9) a[3] = (row g+8, cols 2t+8, 2t+9)
//   B (16 x 8, "col"):      b[0] = (rows 2t, 2t+1,   col g)   b[1] = (rows 2t+8, 2t+9, col g)
//   C (16 x 8, fp32):       c[0], c[1] = (row g, cols 2t, 2t+1); c[2], c[3] = (row g+8, same cols)
// ldmatrix.x4 loads four 8 x 8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i,
// and register i receives matrix i. Without .trans lane l gets (row l/4, cols 2(l%4), 2(l%4)+1) of
// each matrix -- an A or B fragment piece of a row-major tile; with .trans it gets (rows 2(l%4),
// 2(l%4)+1, col l/4) -- a B fragment of a matrix stored with k as its rows.
// csrc/tests/gpu_emulation.h implements these layouts for the CPU, and test_attention_kernels runs
// the kernels below on it: run it (ctest) after changing any fragment indexing.
#ifndef RADD_GEMM_HOST_EMULATION
template <typename T>
struct MmaType;
template <>
struct MmaType<__nv_bfloat16> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <>
struct MmaType<__half> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

using gpu::smem_addr;

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// p[0..3] += (x, y, z, w) as one vector reduction (p 16-byte aligned, global memory).
__device__ __forceinline__ void red_add4(float* p, float x, float y, float z, float w) {
  atomicAdd(reinterpret_cast<float4*>(p), make_float4(x, y, z, w));
}
#endif
#else  // the emulation's warp-collective versions (csrc/tests/gpu_emulation.h)
template <typename T>
struct MmaType {
  static uint32_t pack(float lo, float hi) { return emu::pack_bf16x2(lo, hi); }
  static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    emu::mma_m16n8k16_bf16(d, a, b0, b1);
  }
};
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { emu::ldmatrix_x4(r, p, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) { emu::ldmatrix_x4(r, p, true); }
inline void red_add4(float* p, float x, float y, float z, float w) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) std::abort();  // the vector reduction's alignment
  atomicAdd(p, x), atomicAdd(p + 1, y), atomicAdd(p + 2, z), atomicAdd(p + 3, w);
}
#endif
using gpu::cp_async_16;
using gpu::fast_exp2;
using gpu::cp_async_commit;
using gpu::cp_async_wait;
__device__ __forceinline__ uint32_t lds32(const void* p) { return *reinterpret_cast<const uint32_t*>(p); }

// Adds one 8-column group of a warp's dQ piece to the fp32 accumulator in global memory. Lane
// (g, t4) holds columns 2 t4, 2 t4 + 1 of the group for row g (a0, a1) and row g + 8 (b0, b1);
// row_g / row_g8 point at column 2 t4 of the group in those rows, ok_g / ok_g8 say whether the rows
// exist (every lane must call: the shuffles are warp-wide). On sm_90 (and in the emulation) lanes
// t4 and t4 ^ 1 swap halves so that the even lane owns columns 2 t4 .. 2 t4 + 3 of row g and the
// odd lane columns 2 t4 - 2 .. 2 t4 + 1 of row g + 8, each added with one 16-byte vector reduction
// (atomicAdd on float4, sm_90+): a quarter of the L2 atomic operations of four scalar ones, which
// is what bounds the backward (Nsight on the H200, 2026-11-30: memory 61 % / 78 % busy, SM 17-18 %;
// 16 key tiles add into every dQ element at L 1,024).
__device__ __forceinline__ void dq_atomic_add(float* row_g, float* row_g8, bool ok_g, bool ok_g8, int t4, float a0,
                                              float a1, float b0, float b1) {
#if defined(RADD_GEMM_HOST_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
  const bool odd = t4 & 1;
  const float s0 = __shfl_xor_sync(0xffffffffu, odd ? a0 : b0, 1);
  const float s1 = __shfl_xor_sync(0xffffffffu, odd ? a1 : b1, 1);
  if (!odd && ok_g) red_add4(row_g, a0, a1, s0, s1);
  if (odd && ok_g8) red_add4(row_g8 - 2, s0, s1, b0, b1);
#else
  if (ok_g) atomicAdd(row_g, a0), atomicAdd(row_g + 1, a1);
  if (ok_g8) atomicAdd(row_g8, b0), atomicAdd(row_g8 + 1, b1);
#endif
}

constexpr int kMmaTile = 64;    // keys per tile = tile of TileStats = queries per backward step
constexpr int kMmaWarps = 4;    // 16 rows each (forward: 16 MT)
constexpr int kMmaThreads = kMmaWarps * 32;

// Shared-memory row stride of a 64 x D tile, in elements: D + 8 pads each row by 16 bytes, so the
// 8 rows that a fragment load or an ldmatrix touches start 4 banks apart (conflict-free), and every
// row stays 16-byte aligned for cp.async and ldmatrix.
template <int D>
constexpr int smem_ld() {
  return D + 8;
}

// One thread's share of copying rows [row0, row0 + ROWS) of one head into a tile in shared memory
// (zeros past L), for layouts in which a thread copies the same 16-byte piece of rows row + j
// ROW_STEP of every tile, to smem + dst + j SMEM_STEP. It keeps those and the head's base from one
// tile to the next, so each copy is a 64-bit pointer step, a 32-bit bounds test and the cp.async.
// In SASS (sm_90a, CUDA 13.0) the mma.sync forward's K and V copies of one key step take 81
// instructions per thread at head_dim 64, against ~280 for a loop over a runtime threadIdx with
// (b, l, h) addressing per piece -- and the register pressure that addressing added made the
// head_dim-128 backward spill 140 bytes. The layouts: RowTileLoader below, CoreTileLoader in
// fwd_wgmma.cuh.
template <typename T, int ROWS, int ROW_STEP, int SMEM_STEP>
struct TileCopier {
  static_assert(ROWS % ROW_STEP == 0, "tile / thread mismatch");
  const T* head;  // row 0 of (b, h), this thread's 8 columns
  int64_t ld;     // elements between rows
  int row, dst;   // this thread's first row of a tile and its element offset in the smem tile

  __device__ __forceinline__ void load(T* smem, int64_t row0, int64_t L) const {
    const int rows = static_cast<int>(min(L - row0, static_cast<int64_t>(ROWS)));  // rows inside L
    const int64_t step = ROW_STEP * ld;
    const T* p = head + (row0 + row) * ld;
#pragma unroll
    for (int j = 0; j < ROWS / ROW_STEP; ++j, p += step) {  // a copy past L reads nothing but names row 0
      const bool ok = row + j * ROW_STEP < rows;
      cp_async_16(smem + dst + j * SMEM_STEP, ok ? p : head, ok);
    }
  }
};

// Row-major tiles with row stride smem_ld<D>(), for a block of THREADS threads: thread i copies
// piece i % (D / 8) of rows i / (D / 8) + j THREADS / (D / 8) -- 8 threads read one 128-byte line.
template <typename T, int D, int ROWS = kMmaTile, int THREADS = kMmaThreads>
struct RowTileLoader : TileCopier<T, ROWS, THREADS / (D / 8), THREADS / (D / 8) * smem_ld<D>()> {
  static_assert(THREADS % (D / 8) == 0, "whole rows per pass of the block");
  __device__ __forceinline__ RowTileLoader(const Rows<T>& src, int64_t b, int64_t h) {
    const int c = threadIdx.x % (D / 8);
    this->head = src.p + b * src.sb + h * src.sh + c * 8;
    this->ld = src.sl;
    this->row = threadIdx.x / (D / 8);
    this->dst = this->row * smem_ld<D>() + c * 8;
  }
};
// One-off form of the above.
template <typename T, int D, int ROWS = kMmaTile, int THREADS = kMmaThreads>
__device__ __forceinline__ void load_tile_async(T* smem, const Rows<T>& src, int64_t b, int64_t row0, int64_t h,
                                                int64_t L) {
  RowTileLoader<T, D, ROWS, THREADS>(src, b, h).load(smem, row0, L);
}

// ---------------------------------------------------------------------------- forward (mma)
// CTA = (b, h, 64 MT queries), 4 warps; warp w owns the 16 MT query rows q0 + 16 MT w + [0, 16 MT)
// as MT m-tiles of 16, so that every K / V fragment loaded from shared memory feeds MT mma
// instructions. MT = 1 (64 queries per CTA) does one mma per 16 bytes of ldmatrix per lane; MT = 2
// (128 queries, FlashAttention-2's tile for head_dim <= 128) does two, halving the shared-memory
// traffic per FLOP and the K / V reads from L2 per query. Masks are summarised per 64-key tile (the
// tile of TileStats); a warp's rows lie in one 64-query stats tile, so each warp skips the key tiles
// hidden from its own rows, and the CTA loads a key tile only if some warp needs it. NK = 2 (opt-in,
// RADD_FAST_ATTENTION_KEY_TILE=128, with MT = 1) steps over two 64-key tiles at once: half the
// barriers, row maxima and output rescalings per key. (MT = 2 with NK = 2, FlashAttention-2's
// 128 x 128 tile, spilled 100 bytes at head_dim 64 under ptxas 13.0; MT = 1: 183 registers, none.)
template <typename T, int D, int MT, int NK = 1>
struct FwdMmaSmem {
  static constexpr int kTileElems = kMmaTile * smem_ld<D>();                   // 64 rows
  static constexpr int kQElems = MT * kTileElems;                              // the CTA's queries
  static constexpr int kStepElems = NK * kTileElems;                           // one K or V step
  static constexpr size_t kBytes = sizeof(T) * (kQElems + 4 * kStepElems);    // Q, K x 2, V x 2
};
// Whether a warp keeps its Q fragments in registers for the whole kernel (MT x D / 4 registers per
// lane); otherwise they are reloaded from shared memory by ldmatrix at each key tile. With MT = 2
// the scores and the output accumulator take 64 + D / 2 registers per lane; ptxas (CUDA 13,
// sm_90a) then spilled 140 bytes at head_dim 64 with Q kept there too, and 232 at head_dim 128
// even without (which is why cuda.cu runs MT = 2 at head_dim 32 and 64 only).
template <int D, int MT>
constexpr bool fwd_q_in_registers() {
  return MT == 1;
}

// The first tile t >= t0 of one side (t < n) that some tile of [u_lo, u_hi) on the other side is
// not hidden from (n if none). KEYS: t counts key tiles and u query tiles; otherwise the reverse.
template <bool KEYS>
__device__ __forceinline__ int64_t next_tile_any(const MaskParams& mp, int64_t b, int64_t u_lo, int64_t u_hi,
                                                 int64_t t, int64_t n, int64_t tile) {
  for (; t < n; ++t)
    for (int64_t u = u_lo; u < u_hi; ++u)
      if (tile_visibility(mp, b, KEYS ? u : t, KEYS ? t : u, tile) != kTileHidden) return t;
  return n;
}
// The first key tile >= kt that some query tile in [qt_lo, qt_hi) sees part of (n_kt if none).
__device__ __forceinline__ int64_t next_key_tile_any(const MaskParams& mp, int64_t b, int64_t qt_lo, int64_t qt_hi,
                                                     int64_t kt, int64_t n_kt, int64_t tile) {
  return next_tile_any<true>(mp, b, qt_lo, qt_hi, kt, n_kt, tile);
}
// The first query tile >= qt that sees some key of key tiles [kt_lo, kt_hi) (n_qt if none).
__device__ __forceinline__ int64_t next_query_tile_any(const MaskParams& mp, int64_t b, int64_t kt_lo, int64_t kt_hi,
                                                       int64_t qt, int64_t n_qt, int64_t tile) {
  return next_tile_any<false>(mp, b, kt_lo, kt_hi, qt, n_qt, tile);
}

// One m-tile's step of the online softmax over 8 NT keys (shared by the mma.sync and wgmma
// forward kernels, whose accumulator layouts agree): s holds this lane's scores of rows `row0`
// (r = 0) and row0 + 8 (r = 1) against keys 8 nt + 2 t4 + {0, 1}; they are scaled to the base-2
// domain, masked to -inf where `partial` and the key is hidden, and replaced by exp2(s - m); the
// running max m and this lane's partial sums l are updated, and alpha is the factor that the
// output accumulated so far must be rescaled by (fwd_rescale_output) -- kept apart so that a
// kernel can compute it while the previous tile's P V is still in flight. The 4 lanes of a quad
// share a row.
// With a positive scale (every real use) the scores stay unscaled: the row maximum of the raw
// scores times the scale is exactly the maximum of the scaled ones (rounding is monotone), and the
// exponent's argument is one FFMA, s scale - offset -- 32 fewer instructions per 16 x 64 tile and
// lane, about a tenth of the forward's non-tensor instructions. A zero or negative scale (allowed,
// never used by the model) scales first, as hidden scores must stay -inf after scaling. `hidden`
// drops the whole tile.
template <int NT = 8>  // n-tiles of 8 keys: 8 (a 64-key tile) or 16 (two)
__device__ __forceinline__ void fwd_softmax_stats(float (&s)[NT][4], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                                  float scale_log2, bool partial, const MaskParams& mp, int64_t b,
                                                  int64_t k0, int64_t row0, int t4, bool hidden = false) {
  const bool prescale = !(scale_log2 > 0.f);  // uniform across the grid
  if (prescale) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] *= scale_log2;
  }
  if (hidden) {  // scores computed only to keep wgmma uniform (fwd_wgmma.cuh): dropped, after scaling
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = neg_inf<float>();
  }
  const float post = prescale ? 1.f : scale_log2;  // applied to the maxima and inside the FFMA
  if (partial) {
    const KeyTile keys(mp, b, k0, 8 * NT);
    const int64_t oq[2] = {query_order(mp, b, row0), query_order(mp, b, row0 + 8)};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (!keys.visible(nt * 8 + 2 * t4 + (e & 1), oq[e / 2])) s[nt][e] = neg_inf<float>();
  }
  float off[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = neg_inf<float>();
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    mx *= post;  // -inf stays -inf (post > 0)
    const float m_old = m[r];
    alpha[r] = online_softmax_rescale(m[r], mx, Exp2{});
    // A maximum that did not move gives exactly 1 -- not left to ex2.approx(0) -- so that
    // fwd_rescale_output's vote skips it; also while the row has seen no visible key (m = -inf,
    // nothing accumulated: 1 and 0 scale the zeros alike).
    if (m[r] == m_old) alpha[r] = 1.f;
    off[r] = softmax_offset(m[r]);
    l[r] *= alpha[r];  // per-lane partial sums; the quad's are added at the end
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[nt][e] = fast_exp2(fmaf(s[nt][e], post, -off[e / 2]));
      l[e / 2] += s[nt][e];
    }
}
// o (rows row0, row0 + 8 of an m-tile, mma.sync's C layout) *= alpha of its row. Skipped when
// alpha is 1 in every lane of the warp -- no row maximum moved, as on most key tiles after
// the first few: the same numbers for one vote instead of 4 ND multiplications (FlashAttention-4's
// conditional rescaling without its threshold, so nothing changes numerically). Every lane of the
// warp must call it.
template <int ND>
__device__ __forceinline__ void fwd_scale_output(float (&o)[ND][4], const float (&alpha)[2]) {
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) {
    o[nd][0] *= alpha[0], o[nd][1] *= alpha[0];
    o[nd][2] *= alpha[1], o[nd][3] *= alpha[1];
  }
}
template <int ND>
__device__ __forceinline__ void fwd_rescale_output(float (&o)[ND][4], const float (&alpha)[2]) {
  if (!__all_sync(0xffffffffu, alpha[0] == 1.f && alpha[1] == 1.f)) fwd_scale_output<ND>(o, alpha);
}
// Both of the above, for a kernel whose P V of the previous tile has completed.
template <int ND, int NT>
__device__ __forceinline__ void fwd_softmax_tile(float (&s)[NT][4], float (&m)[2], float (&l)[2], float (&o)[ND][4],
                                                 float scale_log2, bool partial, const MaskParams& mp, int64_t b,
                                                 int64_t k0, int64_t row0, int t4) {
  float alpha[2];
  fwd_softmax_stats<NT>(s, m, l, alpha, scale_log2, partial, mp, b, k0, row0, t4);
  fwd_rescale_output<ND>(o, alpha);
}
// P's C fragments of n-tiles 2 kk, 2 kk + 1 (keys 16 kk .. 16 kk + 15) are exactly the A fragment of
// k step kk of P V, in the input type.
template <typename M, int NT>
__device__ __forceinline__ void pack_p_fragment(const float (&s)[NT][4], int kk, uint32_t (&a)[4]) {
  a[0] = M::pack(s[2 * kk][0], s[2 * kk][1]);
  a[1] = M::pack(s[2 * kk][2], s[2 * kk][3]);
  a[2] = M::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
  a[3] = M::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}
// Normalises and writes this lane's pieces of rows row0 and row0 + 8 of one m-tile (and their lse).
template <typename M, typename T, int D>
__device__ __forceinline__ void fwd_store_rows(float (&m)[2], float (&l)[2], const float (&o)[D / 8][4], T* out,
                                               float* lse, int64_t b, int64_t h, int64_t H, int64_t L, int64_t row0,
                                               int t4) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    float inv_l, row_lse;
    softmax_finish(m[r], l[r], kLn2, inv_l, row_lse);
    const int64_t row = row0 + 8 * r;
    if (row < L) {
      T* orow = out + ((b * L + row) * H + h) * D + 2 * t4;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd)
        *reinterpret_cast<uint32_t*>(orow + nd * 8) = M::pack(o[nd][2 * r] * inv_l, o[nd][2 * r + 1] * inv_l);
      if (t4 == 0) lse[(b * H + h) * L + row] = row_lse;
    }
  }
}

// The forward's CTAs per SM that ptxas must leave registers for. Left to itself, ptxas (CUDA 13.0,
// sm_90a) capped the 64-query variants at head_dim 64 at 128 or 168 registers (4 or 3 CTAs) and
// spilled 20-52 bytes; one CTA lets every variant keep its values in registers, and at head_dim
// 32, 3 keeps the default 128-query kernel at 3 CTAs per SM (168 registers, no spill).
template <int D>
constexpr int fwd_mma_min_blocks() {
  return D <= 32 ? 3 : 1;
}

template <typename T, int D, int MT, int NK = 1>
__global__ void __launch_bounds__(kMmaThreads, fwd_mma_min_blocks<D>())
    fwd_mma_kernel(Rows<T> Q, Rows<T> K, Rows<T> V, T* __restrict__ out, float* __restrict__ lse, MaskParams mp,
                   int64_t H, float scale_log2) {
  static_assert(NK == 1 || NK == 2, "64 or 128 keys per step");
  using M = MmaType<T>;
  using S = FwdMmaSmem<T, D, MT, NK>;
  constexpr int LD = smem_ld<D>(), KS = D / 16, ND = D / 8, QROWS = MT * kMmaTile;
  constexpr int NT = 8 * NK, KEYS = NK * kMmaTile;  // n-tiles and keys per step
  constexpr bool kQRegs = fwd_q_in_registers<D, MT>();
  RADD_DYNAMIC_SMEM(smem_raw);
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Ks = Qs + S::kQElems;  // two buffers
  T* Vs = Ks + 2 * S::kStepElems;

  const int64_t L = mp.L, n_t = (L + kMmaTile - 1) / kMmaTile, n_q = (L + QROWS - 1) / QROWS;
  const int64_t qb = blockIdx.x % n_q, bh = blockIdx.x / n_q, b = bh / H, h = bh % H;
  const int64_t q0 = qb * QROWS;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int wrow = warp * 16 * MT;                       // the warp's first row in the CTA's tile
  const int64_t qt_lo = q0 / kMmaTile, qt_hi = min(qt_lo + MT, n_t);  // the CTA's stats tiles
  const int64_t qt_w = (q0 + wrow) / kMmaTile;           // the warp's stats tile
  const bool warp_live = qt_w < n_t;                     // false: all of the warp's rows are past L
  // Steps of KEYS keys (NK stats tiles): the first step >= js that holds a 64-key tile some warp
  // sees part of (n_s if none).
  const int64_t n_s = (L + KEYS - 1) / KEYS;
  auto next_step = [&](int64_t js) {
    const int64_t kt = next_key_tile_any(mp, b, qt_lo, qt_hi, js * NK, n_t, kMmaTile);
    return kt < n_t ? kt / NK : n_s;
  };

  load_tile_async<T, D, QROWS>(Qs, Q, b, q0, h, L);
  cp_async_commit();
  const RowTileLoader<T, D, KEYS> k_loader(K, b, h), v_loader(V, b, h);
  int64_t kt = next_step(0);  // the current step
  if (kt < n_s) {
    k_loader.load(Ks, kt * KEYS, L);
    v_loader.load(Vs, kt * KEYS, L);
  }
  cp_async_commit();
  cp_async_wait<1>();  // Q has landed
  __syncthreads();

  // A fragments of the warp's rows: m-tile mt, k step ks (columns 16 ks .. 16 ks + 15). ldmatrix.x4
  // with matrix i = rows 8 (i & 1), columns 8 (i >> 1) of the 16 x 16 block gives a[0..3] in order.
  const T* qa_ptr = Qs + (wrow + ((lane / 8) & 1) * 8 + lane % 8) * LD + (lane / 16) * 8;
  uint32_t qf[kQRegs ? MT : 1][kQRegs ? KS : 1][4];
  if constexpr (kQRegs) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) ldmatrix_x4(qf[mt][ks], qa_ptr + mt * 16 * LD + ks * 16);
  }
  // Row r of m-tile mt of this lane: q0 + wrow + 16 mt + g + 8 r (recomputed where needed, as are
  // the rows' orders: registers are what limits this kernel).
  float m[MT][2], l[MT][2], o[MT][ND][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) m[mt][r] = neg_inf<float>(), l[mt][r] = 0.f;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) o[mt][nd][0] = o[mt][nd][1] = o[mt][nd][2] = o[mt][nd][3] = 0.f;
  }

  int buf = 0;
  while (kt < n_s) {
    const int64_t nxt = next_step(kt + 1);
    if (nxt < n_s) {  // prefetch the next needed step into the other buffer
      k_loader.load(Ks + (buf ^ 1) * S::kStepElems, nxt * KEYS, L);
      v_loader.load(Vs + (buf ^ 1) * S::kStepElems, nxt * KEYS, L);
    }
    cp_async_commit();
    cp_async_wait<1>();  // the current step has landed
    __syncthreads();
    const T* Kb = Ks + buf * S::kStepElems;
    const T* Vb = Vs + buf * S::kStepElems;
    const int64_t k0 = kt * KEYS;
    // Warp-uniform: a warp whose rows see nothing of this step only keeps the barriers. With two
    // tiles per step: hidden if both are, visible only if both are (and both lie inside L).
    int vis = kTileHidden;
    if (warp_live) {
      if constexpr (NK == 1) {
        vis = tile_visibility(mp, b, qt_w, kt, kMmaTile);
      } else {
        const int v0 = tile_visibility(mp, b, qt_w, 2 * kt, kMmaTile);
        const int v1 = 2 * kt + 1 < n_t ? tile_visibility(mp, b, qt_w, 2 * kt + 1, kMmaTile) : int(kTileHidden);
        vis = v0 == kTileHidden && v1 == kTileHidden ? int(kTileHidden)
              : v0 == kTileVisible && v1 == kTileVisible ? int(kTileVisible)
                                                         : int(kTilePartial);
      }
    }
    if (vis != kTileHidden) {
      // S = Q K^T for 16 MT rows x KEYS keys: NT n-tiles of 8 keys per m-tile. B[k = d][n = key] =
      // K[key][d], so b[0] is the pair K[key g][2t, 2t+1] of the k step: the non-transposed
      // ldmatrix piece of the 8 x 8 block (keys, d). One x4 covers n-tiles nt, nt + 1 of a k step:
      // matrix i holds keys nt * 8 + 8 (i >> 1) .. + 7 and d columns 16 ks + 8 (i & 1) .. + 7.
      float s[MT][NT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
      const T* kr = Kb + ((lane / 16) * 8 + lane % 8) * LD + ((lane / 8) & 1) * 8;
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        uint32_t qa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if constexpr (kQRegs) {
#pragma unroll
            for (int i = 0; i < 4; ++i) qa[mt][i] = qf[mt][ks][i];
          } else {
            ldmatrix_x4(qa[mt], qa_ptr + mt * 16 * LD + ks * 16);
          }
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
          uint32_t bk[4];
          ldmatrix_x4(bk, kr + nt * 8 * LD + ks * 16);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            M::mma(s[mt][nt], qa[mt], bk[0], bk[1]);
            M::mma(s[mt][nt + 1], qa[mt], bk[2], bk[3]);
          }
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        fwd_softmax_tile<ND, NT>(s[mt], m[mt], l[mt], o[mt], scale_log2, vis == kTilePartial, mp, b, k0,
                             q0 + wrow + mt * 16 + g, t4);
      // O += P V. P's C fragments of n-tiles 2kk, 2kk+1 are exactly the A fragment of k step kk
      // (keys 16kk..16kk+15). V is stored [key][d]: B[k = key][n = d] comes from ldmatrix.trans;
      // matrix i of the x4 covers keys 16kk + 8 (i & 1) .. + 7 and d columns 8 nd + 8 (i >> 1) .. + 7,
      // giving the b[0], b[1] of n-tiles nd and nd + 1.
#pragma unroll
      for (int kk = 0; kk < NT / 2; ++kk) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) pack_p_fragment<M, NT>(s[mt], kk, a[mt]);
        const T* vrow = Vb + (kk * 16 + ((lane / 8) & 1) * 8 + lane % 8) * LD + (lane / 16) * 8;
#pragma unroll
        for (int nd = 0; nd < ND; nd += 2) {
          uint32_t bv[4];
          ldmatrix_x4_trans(bv, vrow + nd * 8);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            M::mma(o[mt][nd], a[mt], bv[0], bv[1]);
            M::mma(o[mt][nd + 1], a[mt], bv[2], bv[3]);
          }
        }
      }
    }
    __syncthreads();  // everyone is done with buffer `buf` before it is refilled
    kt = nxt;
    buf ^= 1;
  }
  cp_async_wait<0>();

  // Normalise and write this thread's pieces of rows g and g + 8 of each m-tile.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
    fwd_store_rows<M, T, D>(m[mt], l[mt], o[mt], out, lse, b, h, H, L, q0 + wrow + mt * 16 + g, t4);
}

// --------------------------------------------------------------------------- backward (mma)
// CTA = (b, h, 16 KW keys), KW warps; warp w owns keys 16w..16w+15 and accumulates their dK, dV
// in registers over every visible 64-query tile. dQ gets the CTA's contribution through fp32
// atomics. KW = 4 (64 keys, the default) or 8 (128 keys, RADD_FAST_ATTENTION_KEY_TILE=128, as
// FlashAttention-2's backward at head_dim 64): twice the keys per query tile halves the dQ atomics
// and the Q / dO loads per FLOP -- the memory traffic that bounds this kernel (Nsight on the H200,
// 2026-11-30: memory 61 % busy, SM 18 %) -- at 8 warps and one CTA per SM.
template <int D>
constexpr int bwd_stages() {
  return D >= 128 ? 1 : 2;  // D = 128: one Q/dO buffer keeps shared memory at 80 KiB (2 CTAs / SM)
}
// BULK (RADD_FAST_ATTENTION_DQ=bulk, sm_90): the dQ tile goes through an fp32 staging tile in
// shared memory and out as one bulk reduction per warp and row (common/async_copy.cuh) instead of
// 16-byte vector atomics from registers: per warp and query tile at head_dim 64, 16 requests of
// 256 contiguous bytes (128 with 128-key blocks, whose warps split the columns) instead of 256
// requests of 16 bytes, issued asynchronously (FlashAttention-3 also adds its dQ tiles with bulk
// asynchronous reductions).
template <typename T, int D, int KW = kMmaWarps, bool BULK = false>
struct BwdMmaSmem {
  static constexpr int kKeys = 16 * KW;
  static constexpr int kTileElems = kMmaTile * smem_ld<D>();  // one Q or dO tile
  static constexpr int kDsLd = kMmaTile + 8;  // dS^T tile [key][query], padded like the others
  static constexpr size_t kBaseBytes = sizeof(T) * (2 * kKeys * smem_ld<D>() + 2 * bwd_stages<D>() * kTileElems +
                                                    kKeys * kDsLd) +
                                       sizeof(float) * 2 * 2 * kMmaTile;
  // The staging tile [query][d], rows D + 8 floats: a row start 16-byte aligned (bulk copies), and
  // the 8-byte stores of a half-warp (rows g = 0..3, columns 2 t4) land in 16 distinct bank pairs.
  static constexpr int kStageLd = D + 8;
  static constexpr size_t kStageOffset = (kBaseBytes + 15) / 16 * 16;
  static constexpr size_t kBytes = BULK ? kStageOffset + sizeof(float) * kMmaTile * kStageLd : kBaseBytes;
};

// The backward's per-row inputs of query rows q0 .. q0 + 63 into shared memory, one thread per
// row: base-2 offsets from lse (+inf for rows without keys and past L) and delta (0 past L).
// lse_bh / delta_bh: row 0 of the (b, h) pair.
template <int THREADS>
__device__ __forceinline__ void load_row_stats(float* lse_s, float* delta_s, const float* lse_bh,
                                               const float* delta_bh, int64_t q0, int64_t L) {
  static_assert(THREADS >= kMmaTile, "one thread per query row");
  if (const int i = threadIdx.x; i < kMmaTile) {
    const int64_t r = q0 + i;
    lse_s[i] = backward_offset(r < L ? lse_bh[r] : neg_inf<float>()) * kLog2e;
    delta_s[i] = r < L ? delta_bh[r] : 0.f;
  }
}

// One n-tile (queries nt * 8 .. + 7) of the backward's P^T and dS^T, in the accumulator layout of
// mma.sync (and of wgmma, per warp): element e is key row e / 2 of this lane, query column
// nt * 8 + 2 t4 + (e & 1). In place: st becomes P^T = exp2(S^T scale log2e - lse log2e) (0 where
// hidden), dp becomes dS^T = P^T (dP^T - delta) scale; both are packed into the A fragments pp / dd
// of k step nt / 2 (queries 16 (nt / 2) .. + 15) of the products that follow (see the forward).
template <typename M>
__device__ __forceinline__ void bwd_p_ds_tile(float (&st)[4], float (&dp)[4], int nt, int t4, float scale_log2,
                                              float scale, const float* lse_b, const float* delta_b, bool partial,
                                              const QueryTile& queries, const bool (&kvalid)[2],
                                              const int64_t (&kord)[2], uint32_t (&pp)[4][4], uint32_t (&dd)[4][4]) {
  // One warp-uniform branch for the mask, around all four entries: tested per entry, the compiler
  // kept a divergence region per entry on the unmasked path too (~6 instructions each in SASS).
#pragma unroll
  for (int e = 0; e < 4; ++e) st[e] = fast_exp2(st[e] * scale_log2 - lse_b[nt * 8 + 2 * t4 + (e & 1)]);
  if (partial) {
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (!queries.sees(nt * 8 + 2 * t4 + (e & 1), kvalid[e / 2], kord[e / 2])) st[e] = 0.f;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) dp[e] = softmax_grad(st[e], dp[e], delta_b[nt * 8 + 2 * t4 + (e & 1)]) * scale;
  pp[nt / 2][(nt & 1) * 2] = M::pack(st[0], st[1]);
  pp[nt / 2][(nt & 1) * 2 + 1] = M::pack(st[2], st[3]);
  dd[nt / 2][(nt & 1) * 2] = M::pack(dp[0], dp[1]);
  dd[nt / 2][(nt & 1) * 2 + 1] = M::pack(dp[2], dp[3]);
}
// Writes dK (dS was pre-scaled) and dV of this lane's key rows key[0], key[1] (pieces 2 t4, 2 t4 + 1
// of every 8 columns).
template <typename M, typename T, int D>
__device__ __forceinline__ void bwd_store_keys(const float (&dkacc)[D / 8][4], const float (&dvacc)[D / 8][4],
                                               T* dk, T* dv, const int64_t (&key)[2], int64_t b, int64_t h,
                                               int64_t H, int64_t L, int t4) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (key[r] >= L) continue;
    const int64_t o = ((b * L + key[r]) * H + h) * D + 2 * t4;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      *reinterpret_cast<uint32_t*>(dk + o + nd * 8) = M::pack(dkacc[nd][2 * r], dkacc[nd][2 * r + 1]);
      *reinterpret_cast<uint32_t*>(dv + o + nd * 8) = M::pack(dvacc[nd][2 * r], dvacc[nd][2 * r + 1]);
    }
  }
}

template <typename T, int D, int KW = kMmaWarps, bool BULK = false>
__global__ void __launch_bounds__(KW * 32) bwd_mma_kernel(Rows<T> Q, Rows<T> K, Rows<T> V, Rows<T> dO,
                                                          const float* __restrict__ lse,
                                                          const float* __restrict__ delta, T* __restrict__ dk,
                                                          T* __restrict__ dv, float* __restrict__ dq_acc,
                                                          MaskParams mp, int64_t H, float scale, float scale_log2) {
  static_assert(KW == 4 || KW == 8, "64 or 128 keys per CTA");
  using M = MmaType<T>;
  using S = BwdMmaSmem<T, D, KW, BULK>;
  constexpr int LD = smem_ld<D>(), KS = D / 16, ND = D / 8, STAGES = bwd_stages<D>();
  constexpr int THREADS = KW * 32, KEYS = S::kKeys, KT64 = KW / 4;  // KT64: 64-key stats tiles per CTA
  RADD_DYNAMIC_SMEM(smem_raw);
  T* Ks = reinterpret_cast<T*>(smem_raw);  // [KEYS][LD]
  T* Vs = Ks + KEYS * LD;
  T* Qs = Vs + KEYS * LD;                 // STAGES buffers
  T* dOs = Qs + STAGES * S::kTileElems;   // STAGES buffers
  T* dSs = dOs + STAGES * S::kTileElems;  // [KEYS][kDsLd]
  float* lse_s = reinterpret_cast<float*>(dSs + KEYS * S::kDsLd);  // [2][64], base-2 backward offsets
  float* delta_s = lse_s + 2 * kMmaTile;                            // [2][64]
  float* dq_stage = reinterpret_cast<float*>(smem_raw + S::kStageOffset);  // BULK: [64][kStageLd]

  const int64_t L = mp.L, n_t = (L + kMmaTile - 1) / kMmaTile, n_c = (L + KEYS - 1) / KEYS;
  const int64_t ct = blockIdx.x % n_c, bh = blockIdx.x / n_c, b = bh / H, h = bh % H;
  const int64_t k0 = ct * KEYS;
  const int64_t kt_lo = ct * KT64, kt_hi = min(kt_lo + KT64, n_t);  // the CTA's 64-key stats tiles
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int64_t kt_w = kt_lo + warp / 4;  // the warp's stats tile (>= n_t: all its keys are past L)

  const RowTileLoader<T, D, kMmaTile, THREADS> q_loader(Q, b, h), do_loader(dO, b, h);
  const float* lse_bh = lse + (b * H + h) * L;
  const float* delta_bh = delta + (b * H + h) * L;
  auto load_q_tile = [&](int64_t qt, int sbuf) {
    const int64_t q0 = qt * kMmaTile;
    q_loader.load(Qs + sbuf * S::kTileElems, q0, L);
    do_loader.load(dOs + sbuf * S::kTileElems, q0, L);
    load_row_stats<THREADS>(lse_s + sbuf * kMmaTile, delta_s + sbuf * kMmaTile, lse_bh, delta_bh, q0, L);
  };

  load_tile_async<T, D, KEYS, THREADS>(Ks, K, b, k0, h, L);
  load_tile_async<T, D, KEYS, THREADS>(Vs, V, b, k0, h, L);
  int64_t qt = next_query_tile_any(mp, b, kt_lo, kt_hi, 0, n_t, kMmaTile);
  if constexpr (STAGES == 2) {
    if (qt < n_t) load_q_tile(qt, 0);
  }
  cp_async_commit();

  // This warp's K and V rows as A fragments (k step ks: columns 16 ks .. + 15), kept in registers
  // for the whole kernel where they fit (D <= 64: D / 2 registers per lane): the S^T and dP^T
  // products then read only Q and dO from shared memory. ldmatrix.x4 with matrix i = rows
  // 8 (i & 1), columns 8 (i >> 1) of the 16 x 16 block gives a[0..3] in order.
  constexpr bool kKVRegs = D <= 64;
  static_assert(!kKVRegs || STAGES == 2, "K / V fragments are read once, after the first wait");
  const T* ka_ptr = Ks + (warp * 16 + ((lane / 8) & 1) * 8 + lane % 8) * LD + (lane / 16) * 8;
  const T* va_ptr = Vs + (warp * 16 + ((lane / 8) & 1) * 8 + lane % 8) * LD + (lane / 16) * 8;
  uint32_t kf[kKVRegs ? KS : 1][4], vf[kKVRegs ? KS : 1][4];
  if constexpr (kKVRegs) {
    cp_async_wait<0>();  // K, V (and the first Q / dO tile) have landed
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      ldmatrix_x4(kf[ks], ka_ptr + ks * 16);
      ldmatrix_x4(vf[ks], va_ptr + ks * 16);
    }
  }

  const int64_t key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};
  const bool kvalid[2] = {key_valid(mp, b, key[0]), key_valid(mp, b, key[1])};
  const int64_t kord[2] = {query_order(mp, b, key[0]), query_order(mp, b, key[1])};  // the keys' orders
  float dkacc[ND][4], dvacc[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd)
#pragma unroll
    for (int e = 0; e < 4; ++e) dkacc[nd][e] = dvacc[nd][e] = 0.f;

  int buf = 0;
  while (qt < n_t) {
    const int64_t nxt = next_query_tile_any(mp, b, kt_lo, kt_hi, qt + 1, n_t, kMmaTile);
    if constexpr (STAGES == 2) {
      __syncthreads();  // the other buffer (tile before last) and dS are free
      if (nxt < n_t) load_q_tile(nxt, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      __syncthreads();
      load_q_tile(qt, 0);
      cp_async_commit();
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* Qb = Qs + buf * S::kTileElems;
    const T* dOb = dOs + buf * S::kTileElems;
    const float* lse_b = lse_s + buf * kMmaTile;
    const float* delta_b = delta_s + buf * kMmaTile;
    const int64_t q0 = qt * kMmaTile;
    // Warp-uniform: a warp whose keys this query tile does not see (or that has no key inside L)
    // adds nothing to dK / dV and leaves zeros in its rows of dS^T for the dQ product.
    const int vis = kt_w < n_t ? tile_visibility(mp, b, qt, kt_w, kMmaTile) : int(kTileHidden);
    const bool partial = vis == kTilePartial;
    const QueryTile queries(mp, b, q0, kMmaTile);
    if (vis == kTileHidden) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        T* d0 = dSs + (warp * 16 + g) * S::kDsLd + nt * 8 + 2 * t4;
        *reinterpret_cast<uint32_t*>(d0) = 0u;
        *reinterpret_cast<uint32_t*>(d0 + 8 * S::kDsLd) = 0u;
      }
    } else {
      // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x 64 queries, in two halves of 32
      // queries so that only one half's fp32 scores are live at a time (register pressure). B[k = d]
      // [n = query] = Q[query][d]: b[0] is the pair Q[query g][2t, 2t+1] of the k step.
      // P^T = exp2(S^T scale log2e - lse log2e) (0 where hidden), dS^T = P^T (dP^T - delta) * scale,
      // each packed to bf16/fp16 at once: pp[kk] / dd[kk] are the A fragments of k step kk (queries
      // 16kk..16kk+15) of the products below, C fragments of n-tiles 2kk, 2kk+1 (see fwd).
      // Fragment loads: A (this warp's K / V rows) as kf / vf above; B (Q / dO rows = queries) as K
      // in the forward: matrix i = queries nt * 8 + 8 (i >> 1), columns 8 (i & 1).
      const T* qb_ptr = Qb + ((lane / 16) * 8 + lane % 8) * LD + ((lane / 8) & 1) * 8;
      const T* ob_ptr = dOb + ((lane / 16) * 8 + lane % 8) * LD + ((lane / 8) & 1) * 8;
      uint32_t pp[4][4], dd[4][4];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float st[4][4], dpt[4][4];
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
          uint32_t ka[4], va[4];
          if constexpr (kKVRegs) {
#pragma unroll
            for (int i = 0; i < 4; ++i) ka[i] = kf[ks][i], va[i] = vf[ks][i];
          } else {
            ldmatrix_x4(ka, ka_ptr + ks * 16);
            ldmatrix_x4(va, va_ptr + ks * 16);
          }
#pragma unroll
          for (int n = 0; n < 4; n += 2) {
            const int nt = half * 4 + n;
            uint32_t bq[4], bo[4];
            ldmatrix_x4(bq, qb_ptr + nt * 8 * LD + ks * 16);
            ldmatrix_x4(bo, ob_ptr + nt * 8 * LD + ks * 16);
            M::mma(st[n], ka, bq[0], bq[1]);
            M::mma(st[n + 1], ka, bq[2], bq[3]);
            M::mma(dpt[n], va, bo[0], bo[1]);
            M::mma(dpt[n + 1], va, bo[2], bo[3]);
          }
        }
#pragma unroll
        for (int n = 0; n < 4; ++n)
          bwd_p_ds_tile<M>(st[n], dpt[n], half * 4 + n, t4, scale_log2, scale, lse_b, delta_b, partial, queries,
                           kvalid, kord, pp, dd);
      }
      // dS^T to shared memory for the dQ product below: rows g and g + 8 of n-tile nt are
      // dd[nt / 2][(nt & 1) * 2] and dd[nt / 2][(nt & 1) * 2 + 1].
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        T* d0 = dSs + (warp * 16 + g) * S::kDsLd + nt * 8 + 2 * t4;
        *reinterpret_cast<uint32_t*>(d0) = dd[nt / 2][(nt & 1) * 2];
        *reinterpret_cast<uint32_t*>(d0 + 8 * S::kDsLd) = dd[nt / 2][(nt & 1) * 2 + 1];
      }
      // dV += P^T dO and dK += dS^T Q: B[k = query][n = d] from ldmatrix.trans of the row-major
      // dO / Q tiles (as V in the forward).
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const int r = kk * 16 + ((lane / 8) & 1) * 8 + lane % 8, c = (lane / 16) * 8;
#pragma unroll
        for (int nd = 0; nd < ND; nd += 2) {
          uint32_t bo[4], bq[4];
          ldmatrix_x4_trans(bo, dOb + r * LD + c + nd * 8);
          ldmatrix_x4_trans(bq, Qb + r * LD + c + nd * 8);
          M::mma(dvacc[nd], pp[kk], bo[0], bo[1]);
          M::mma(dvacc[nd + 1], pp[kk], bo[2], bo[3]);
          M::mma(dkacc[nd], dd[kk], bq[0], bq[1]);
          M::mma(dkacc[nd + 1], dd[kk], bq[2], bq[3]);
        }
      }
    }  // vis != kTileHidden
    __syncthreads();  // all of dS^T is written
    // dQ (64 queries x D) += dS K over the CTA's KEYS keys: warp w takes queries 16 (w % 4) .. + 15
    // and, with 8 warps, column half w / 4. A[m = query][k = key] = dS^T[key][query]: ldmatrix.trans
    // of the 8 x 8 blocks (keys 16kk + 8 (i >> 1), queries 16 (w % 4) + 8 (i & 1)) gives a[0..3].
    // B[k = key][n = d] = K[key][d]: ldmatrix.trans as for V above. Done in column chunks of 64 to
    // bound the live accumulators.
    {
      constexpr int NDW = ND / KT64;  // n-tiles of this warp's columns
      constexpr int kChunk = NDW < 8 ? NDW : 8;
      const int wq = warp % 4, nw0 = (warp / 4) * NDW;
      const int64_t qrow[2] = {q0 + wq * 16 + g, q0 + wq * 16 + g + 8};
      // BULK: this warp's piece of the staging tile (rows 16 wq .., columns 8 nw0 ..) is its own;
      // the engine must have read the previous query tile's piece before it is overwritten.
      if constexpr (BULK) {
        gpu::bulk_wait_read<0>();
        __syncwarp();
      }
#pragma unroll
      for (int n0 = nw0; n0 < nw0 + NDW; n0 += kChunk) {
        float dq[kChunk][4];
#pragma unroll
        for (int i = 0; i < kChunk; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KW; ++kk) {
          uint32_t a[4];
          ldmatrix_x4_trans(a, dSs + (kk * 16 + (lane / 16) * 8 + lane % 8) * S::kDsLd + wq * 16 + ((lane / 8) & 1) * 8);
          const T* krow = Ks + (kk * 16 + ((lane / 8) & 1) * 8 + lane % 8) * LD + (lane / 16) * 8;
#pragma unroll
          for (int i = 0; i < kChunk; i += 2) {
            uint32_t bk[4];
            ldmatrix_x4_trans(bk, krow + (n0 + i) * 8);
            M::mma(dq[i], a, bk[0], bk[1]);
            M::mma(dq[i + 1], a, bk[2], bk[3]);
          }
        }
        if constexpr (BULK) {
          float* st = dq_stage + (wq * 16 + g) * S::kStageLd + 2 * t4;
#pragma unroll
          for (int i = 0; i < kChunk; ++i) {
            st[(n0 + i) * 8] = dq[i][0], st[(n0 + i) * 8 + 1] = dq[i][1];
            st[8 * S::kStageLd + (n0 + i) * 8] = dq[i][2], st[8 * S::kStageLd + (n0 + i) * 8 + 1] = dq[i][3];
          }
        } else {
          // Rows past L add nothing (their pointers are those of row 0: never dereferenced).
          float* dst_g = dq_acc + ((b * L + (qrow[0] < L ? qrow[0] : 0)) * H + h) * D + 2 * t4;
          float* dst_g8 = dq_acc + ((b * L + (qrow[1] < L ? qrow[1] : 0)) * H + h) * D + 2 * t4;
#pragma unroll
          for (int i = 0; i < kChunk; ++i)
            dq_atomic_add(dst_g + (n0 + i) * 8, dst_g8 + (n0 + i) * 8, qrow[0] < L, qrow[1] < L, t4, dq[i][0],
                          dq[i][1], dq[i][2], dq[i][3]);
        }
      }
      if constexpr (BULK) {
        // Lane r < 16 sends row 16 wq + r of the piece (NDW * 8 floats, 16-byte aligned at both
        // ends: D and the row strides are multiples of 4 floats); rows past L send nothing.
        gpu::fence_proxy_async_smem_writes();
        __syncwarp();
        const int64_t r = q0 + wq * 16 + lane;
        if (lane < 16 && r < L)
          gpu::bulk_reduce_add_f32(dq_acc + ((b * L + r) * H + h) * D + nw0 * 8,
                                   dq_stage + (wq * 16 + lane) * S::kStageLd + nw0 * 8, NDW * 8 * sizeof(float));
        gpu::bulk_commit();
      }
    }
    qt = nxt;
    if constexpr (STAGES == 2) buf ^= 1;
  }
  cp_async_wait<0>();
  if constexpr (BULK) gpu::bulk_wait<0>();  // the staging tile stays until the engine is done with it
  bwd_store_keys<M, T, D>(dkacc, dvacc, dk, dv, key, b, h, H, L, t4);
}

// ===================================================================== plain FMA (fp32 / fp64)
// 32 x 32 tiles; TPR = D / 16 threads share a row, each owning 16 of its D columns (d = sub +
// TPR j) and 32 / TPR of the tile's keys (c = sub + TPR m) -- so the row reductions are shuffles
// within TPR adjacent lanes. Shared-memory rows are padded by one element (odd stride: the rows a
// warp reads at once fall in different banks).
constexpr int kFmaTile = 32;
template <int D>
constexpr int fma_tpr() {
  return D / 16;
}
template <int D>
constexpr int fma_threads() {
  return kFmaTile * fma_tpr<D>();
}

// Shared memory (dynamic: up to 149 KiB for fp64, D = 128).
template <typename T, int D>
struct FwdFmaSmem {
  static constexpr size_t kBytes = sizeof(T) * (3 * kFmaTile * (D + 1) + kFmaTile * (kFmaTile + 1));
};
template <typename T, int D>
struct BwdFmaSmem {
  static constexpr size_t kBytes = sizeof(T) * (4 * kFmaTile * (D + 1) + 2 * kFmaTile * (kFmaTile + 1) + 2 * kFmaTile);
};

template <typename T, int D>
__device__ __forceinline__ void load_tile_fma(T* smem, const Rows<T>& src, int64_t b, int64_t row0, int64_t h,
                                              int64_t L) {
  for (int i = threadIdx.x; i < kFmaTile * D; i += fma_threads<D>()) {
    const int r = i / D, c = i % D;
    smem[r * (D + 1) + c] = row0 + r < L ? src.row(b, row0 + r, h)[c] : T(0);
  }
}

template <int TPR, typename T>
__device__ __forceinline__ T group_max(T x) {
#pragma unroll
  for (int s = 1; s < TPR; s *= 2) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, s));
  return x;
}
template <int TPR, typename T>
__device__ __forceinline__ T group_sum(T x) {
#pragma unroll
  for (int s = 1; s < TPR; s *= 2) x += __shfl_xor_sync(0xffffffffu, x, s);
  return x;
}

template <typename T, int D>
__global__ void __launch_bounds__(fma_threads<D>()) fwd_fma_kernel(Rows<T> Q, Rows<T> K, Rows<T> V, T* __restrict__ out,
                                                                    T* __restrict__ lse, MaskParams mp, int64_t H,
                                                                    T scale) {
  constexpr int TPR = fma_tpr<D>(), NK = kFmaTile / TPR, ND = D / TPR, LD = D + 1;
  RADD_DYNAMIC_SMEM(smem_raw);  // FwdFmaSmem<T, D>::kBytes
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Ks = Qs + kFmaTile * LD;
  T* Vs = Ks + kFmaTile * LD;
  T* Ps = Vs + kFmaTile * LD;  // [32][33]
  const int64_t L = mp.L, n_t = (L + kFmaTile - 1) / kFmaTile;
  const int64_t qt = blockIdx.x % n_t, bh = blockIdx.x / n_t, b = bh / H, h = bh % H;
  const int r = threadIdx.x / TPR, sub = threadIdx.x % TPR;
  const int64_t row = qt * kFmaTile + r, oq = query_order(mp, b, row);
  load_tile_fma<T, D>(Qs, Q, b, qt * kFmaTile, h, L);
  T m = neg_inf<T>(), l = 0, o[ND];
#pragma unroll
  for (int j = 0; j < ND; ++j) o[j] = 0;
  for (int64_t kt = next_key_tile(mp, b, qt, 0, n_t, kFmaTile); kt < n_t;
       kt = next_key_tile(mp, b, qt, kt + 1, n_t, kFmaTile)) {
    __syncthreads();  // previous tile fully used (and Q loaded, first time)
    load_tile_fma<T, D>(Ks, K, b, kt * kFmaTile, h, L);
    load_tile_fma<T, D>(Vs, V, b, kt * kFmaTile, h, L);
    __syncthreads();
    const bool partial = tile_visibility(mp, b, qt, kt, kFmaTile) == kTilePartial;
    const KeyTile keys(mp, b, kt * kFmaTile, kFmaTile);
    T s[NK], mx = neg_inf<T>();
#pragma unroll
    for (int i = 0; i < NK; ++i) {
      const int c = sub + TPR * i;
      T acc = 0;
#pragma unroll 16
      for (int d = 0; d < D; ++d) acc = fma(Qs[r * LD + d], Ks[c * LD + d], acc);
      s[i] = acc * scale;
      if (partial && !keys.visible(c, oq)) s[i] = neg_inf<T>();
      mx = fmax(mx, s[i]);
    }
    mx = group_max<TPR>(mx);
    const T alpha = online_softmax_rescale(m, mx, ExpE{});
    const T off = softmax_offset(m);
    T psum = 0;
#pragma unroll
    for (int i = 0; i < NK; ++i) {
      const T p = exp_e(s[i] - off);
      Ps[r * (kFmaTile + 1) + sub + TPR * i] = p;
      psum += p;
    }
    l = l * alpha + group_sum<TPR>(psum);
    __syncwarp();  // a row's P is written by its own TPR lanes, which share a warp
#pragma unroll
    for (int j = 0; j < ND; ++j) o[j] *= alpha;
    for (int c = 0; c < kFmaTile; ++c) {
      const T p = Ps[r * (kFmaTile + 1) + c];
#pragma unroll
      for (int j = 0; j < ND; ++j) o[j] = fma(p, Vs[c * LD + sub + TPR * j], o[j]);
    }
  }
  T inv_l, row_lse;
  softmax_finish(m, l, T(1), inv_l, row_lse);
  if (row < L) {
    T* orow = out + ((b * L + row) * H + h) * D;
#pragma unroll
    for (int j = 0; j < ND; ++j) orow[sub + TPR * j] = o[j] * inv_l;
    if (sub == 0) lse[(b * H + h) * L + row] = row_lse;
  }
}

// Backward, CTA = (b, h, key tile of 32); dQ through atomics into dq (fp32/fp64, zero-initialised).
template <typename T, int D>
__global__ void __launch_bounds__(fma_threads<D>()) bwd_fma_kernel(Rows<T> Q, Rows<T> K, Rows<T> V, Rows<T> dO,
                                                                    const T* __restrict__ lse,
                                                                    const T* __restrict__ delta, T* __restrict__ dq,
                                                                    T* __restrict__ dk, T* __restrict__ dv,
                                                                    MaskParams mp, int64_t H, T scale) {
  constexpr int TPR = fma_tpr<D>(), NQ = kFmaTile / TPR, ND = D / TPR, LD = D + 1, PLD = kFmaTile + 1;
  RADD_DYNAMIC_SMEM(smem_raw);  // BwdFmaSmem<T, D>::kBytes
  T* Ks = reinterpret_cast<T*>(smem_raw);
  T* Vs = Ks + kFmaTile * LD;
  T* Qs = Vs + kFmaTile * LD;
  T* dOs = Qs + kFmaTile * LD;
  T* Ps = dOs + kFmaTile * LD;   // P^T [key][query]
  T* dSs = Ps + kFmaTile * PLD;  // dS^T [key][query]
  T* off_s = dSs + kFmaTile * PLD;
  T* delta_s = off_s + kFmaTile;
  const int64_t L = mp.L, n_t = (L + kFmaTile - 1) / kFmaTile;
  const int64_t kt = blockIdx.x % n_t, bh = blockIdx.x / n_t, b = bh / H, h = bh % H;
  const int r = threadIdx.x / TPR, sub = threadIdx.x % TPR;  // r: key row (S^T phase), query row (dQ)
  const int64_t key = kt * kFmaTile + r;
  const bool kvalid = key_valid(mp, b, key);
  const int64_t kord = query_order(mp, b, key);  // the key's order
  load_tile_fma<T, D>(Ks, K, b, kt * kFmaTile, h, L);
  load_tile_fma<T, D>(Vs, V, b, kt * kFmaTile, h, L);
  T dkacc[ND], dvacc[ND];
#pragma unroll
  for (int j = 0; j < ND; ++j) dkacc[j] = dvacc[j] = 0;
  for (int64_t qt = next_query_tile(mp, b, kt, 0, n_t, kFmaTile); qt < n_t;
       qt = next_query_tile(mp, b, kt, qt + 1, n_t, kFmaTile)) {
    const int64_t q0 = qt * kFmaTile;
    __syncthreads();
    load_tile_fma<T, D>(Qs, Q, b, q0, h, L);
    load_tile_fma<T, D>(dOs, dO, b, q0, h, L);
    for (int i = threadIdx.x; i < kFmaTile; i += fma_threads<D>()) {
      off_s[i] = backward_offset(q0 + i < L ? lse[(b * H + h) * L + q0 + i] : neg_inf<T>());
      delta_s[i] = q0 + i < L ? delta[(b * H + h) * L + q0 + i] : T(0);
    }
    __syncthreads();
    const bool partial = tile_visibility(mp, b, qt, kt, kFmaTile) == kTilePartial;
    const QueryTile queries(mp, b, q0, kFmaTile);
#pragma unroll
    for (int i = 0; i < NQ; ++i) {
      const int c = sub + TPR * i;
      T s = 0, dp = 0;
#pragma unroll 16
      for (int d = 0; d < D; ++d) {
        s = fma(Ks[r * LD + d], Qs[c * LD + d], s);
        dp = fma(Vs[r * LD + d], dOs[c * LD + d], dp);
      }
      T p = exp_e(s * scale - off_s[c]);
      if (partial && !queries.sees(c, kvalid, kord)) p = 0;
      Ps[r * PLD + c] = p;
      dSs[r * PLD + c] = softmax_grad(p, dp, delta_s[c]) * scale;
    }
    __syncthreads();
    // dV, dK of key row r; then dQ of query row r (same thread layout, rows reinterpreted).
    for (int c = 0; c < kFmaTile; ++c) {
      const T p = Ps[r * PLD + c], ds = dSs[r * PLD + c];
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        dvacc[j] = fma(p, dOs[c * LD + sub + TPR * j], dvacc[j]);
        dkacc[j] = fma(ds, Qs[c * LD + sub + TPR * j], dkacc[j]);
      }
    }
    if (q0 + r < L) {
      T acc[ND];
#pragma unroll
      for (int j = 0; j < ND; ++j) acc[j] = 0;
      for (int kr = 0; kr < kFmaTile; ++kr) {
        const T ds = dSs[kr * PLD + r];
#pragma unroll
        for (int j = 0; j < ND; ++j) acc[j] = fma(ds, Ks[kr * LD + sub + TPR * j], acc[j]);
      }
      T* dst = dq + ((b * L + q0 + r) * H + h) * D;
#pragma unroll
      for (int j = 0; j < ND; ++j) atomicAdd(dst + sub + TPR * j, acc[j]);
    }
  }
  if (key < L) {
    const int64_t o = ((b * L + key) * H + h) * D;
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      dk[o + sub + TPR * j] = dkacc[j];
      dv[o + sub + TPR * j] = dvacc[j];
    }
  }
}

// Explicit conversions (torch builds with __CUDA_NO_HALF_CONVERSIONS__ / _BFLOAT16_).
#ifndef RADD_GEMM_HOST_EMULATION
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
#else
__device__ __forceinline__ float to_acc(EmuBf16 x) { return float(x); }
#endif
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }

// delta[b, h, i] = sum_d dO * O - dlse (accumulation type A); one warp per (b, i, h) row.
template <typename T, typename A>
__global__ void delta_kernel(Rows<T> dO, const T* __restrict__ out, const A* __restrict__ grad_lse,
                             A* __restrict__ delta, int64_t B, int64_t L, int64_t H, int64_t D) {
  const int64_t w = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= B * L * H) return;
  const int64_t h = w % H, i = (w / H) % L, b = w / (H * L);
  const T* g = dO.row(b, i, h);
  const T* y = out + w * D;  // out is contiguous (B, L, H, D)
  A s = 0;
  for (int64_t d = lane; d < D; d += 32) s += static_cast<A>(to_acc(g[d])) * static_cast<A>(to_acc(y[d]));
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) {
    const int64_t r = (b * H + h) * L + i;
    delta[r] = s - (grad_lse ? grad_lse[r] : A(0));
  }
}

}  // namespace radd_fast::attention::cuda
