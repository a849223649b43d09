// Just enough of CUDA to run the kernels of csrc/dce_loss/gemm.cuh and rows.cuh and
// csrc/attention/kernels.cuh on the CPU: a block's
// threads are CPU threads (threadIdx and friends thread-local), __syncthreads is a barrier, shuffles
// exchange through per-warp slots, static __shared__ arrays are shared by the block, and
// cp.async copies are deferred until the cp.async.wait that covers their group -- so a pipeline that
// reads a buffer before waiting for it reads stale bytes, as it would on a GPU. __syncwarp is a
// barrier of the warp's 32 threads. nvcuda::wmma (16 x 16 x 16, fp32 accumulators) is emulated with
// each lane holding 8 accumulator elements (in mma.sync's m16n8 layout, twice), and a lane's
// store_matrix_sync writes land only at its next __syncwarp / __syncthreads, so a warp that reads
// the stored tile without one reads stale values. mma.sync m16n8k16 (bf16, fp32 accumulators) and
// ldmatrix.x4 (plain and .trans) are warp collectives: every lane posts its registers or row
// address, the warp meets, and each lane assembles its result from the PTX ISA's fragment layouts.
// wgmma.mma_async (sm_90a) is a collective of a warpgroup's 128 threads, deferred to its wait.
// EmuBf16 stands for __nv_bfloat16.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#define RADD_GEMM_HOST_EMULATION 1
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A kernel's static shared arrays: one copy for all threads (blocks run one at a time).
#define __shared__ static
// A kernel's dynamic shared memory: the block's buffer (launch's smem_bytes).
#define RADD_DYNAMIC_SMEM(name) unsigned char* name = radd_fast::emu::state.smem
using std::max;
using std::min;

struct uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline void __trap() { std::abort(); }

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmuDim3 threadIdx, blockIdx, blockDim, gridDim;

namespace radd_fast::emu {

struct Copy {
  void* dst;
  unsigned char bytes[16];
};

// One thread's part of a wgmma.mma_async (m64nNk16, bf16 inputs, fp32 accumulators, B from shared
// memory; A from registers or shared memory): what it names, read only when the op runs.
struct WgmmaOp {
  float* d;              // N / 2 accumulators
  int n;                 // N
  const uint32_t* a;     // 4 registers of A, or null: A from a_desc
  uint64_t a_desc, b_desc;
  bool trans_a, trans_b;  // A / B "MN-major" (M / N contiguous in their core matrices)
  bool scale_d;          // false: D = A B, the old accumulators ignored
};

// One thread's cp.reduce.async.bulk (add.f32): the source as it was at the issue.
struct BulkOp {
  float* dst;
  const float* src;
  std::vector<float> snapshot;
};

struct ThreadState {
  std::barrier<>* barrier = nullptr;
  std::barrier<>* warp_barrier = nullptr;
  unsigned char* smem = nullptr;
  std::vector<Copy> open;                 // issued since the last commit
  std::vector<std::vector<Copy>> groups;  // committed, oldest first, not yet landed
  std::vector<std::pair<float*, float>> stores;  // wmma stores, landing at the next barrier
  uint64_t* warp_slots = nullptr;         // 32 exchange slots of this thread's warp (shuffles)
  uint32_t* warp_words = nullptr;         // 32 x kWords words of this thread's warp (mma, ldmatrix)
  std::barrier<>* warpgroup_barrier = nullptr;  // the 128 threads of this thread's warpgroup
  const void** warpgroup_slots = nullptr;       // 128 exchange slots of the warpgroup (wgmma)
  std::vector<WgmmaOp> wg_open;                        // wgmma issued since the last commit
  std::vector<std::vector<WgmmaOp>> wg_groups;         // committed, oldest first, not yet run
  std::vector<BulkOp> bulk_open;                       // bulk reductions issued since the last commit
  std::vector<std::vector<BulkOp>> bulk_groups;        // committed, oldest first, not yet done
};
constexpr int kWords = 8;

inline thread_local ThreadState state;

inline void land_stores() {
  for (const auto& [p, v] : state.stores) *p = v;
  state.stores.clear();
}

// Runs kernel() for every thread of every block of the grid, one block at a time, with `smem_bytes`
// of dynamic shared memory per block filled with 0xCD (so a tile entry nobody wrote shows up).
template <class Kernel>
void launch(EmuDim3 grid, unsigned threads, size_t smem_bytes, Kernel kernel) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        auto smem = std::make_unique<unsigned char[]>(smem_bytes + 128);
        unsigned char* base = smem.get() + (128 - reinterpret_cast<uintptr_t>(smem.get()) % 128) % 128;
        std::memset(base, 0xCD, smem_bytes);
        std::barrier<> bar(threads);
        std::vector<std::unique_ptr<std::barrier<>>> warps;
        for (unsigned w = 0; w < (threads + 31) / 32; ++w)
          warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w)));
        std::vector<uint64_t> slots(32 * ((threads + 31) / 32));
        std::vector<uint32_t> words(32 * kWords * ((threads + 31) / 32));
        std::vector<std::unique_ptr<std::barrier<>>> groups;  // warpgroups (only whole ones exist)
        for (unsigned w = 0; w < threads / 128; ++w) groups.push_back(std::make_unique<std::barrier<>>(128));
        std::vector<const void*> group_slots(threads);
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            blockIdx = {x, y, z};
            blockDim = {threads, 1, 1};
            gridDim = grid;
            state = ThreadState{&bar, warps[t / 32].get(), base, {}, {}, {}, slots.data() + 32 * (t / 32),
                                words.data() + 32 * kWords * (t / 32),
                                t / 128 < groups.size() ? groups[t / 128].get() : nullptr,
                                group_slots.data() + 128 * (t / 128), {}, {}};
            kernel();
            // A thread that exits with copies or wgmma in flight would be a kernel bug: none may remain.
            if (!state.open.empty() || !state.groups.empty() || !state.stores.empty() || !state.wg_open.empty() ||
                !state.wg_groups.empty() || !state.bulk_open.empty() || !state.bulk_groups.empty())
              std::abort();
          });
        for (auto& th : pool) th.join();
      }
}

}  // namespace radd_fast::emu

inline void __syncthreads() {
  radd_fast::emu::land_stores();
  radd_fast::emu::state.barrier->arrive_and_wait();
}
inline void __syncwarp() {
  radd_fast::emu::land_stores();
  radd_fast::emu::state.warp_barrier->arrive_and_wait();
}

// Warp shuffles over the full warp (every kernel here passes a full mask): each lane posts its value,
// the warp meets, each lane reads its source lane's, the warp meets again before the slots are reused.
template <typename T>
inline T emu_shuffle(T v, unsigned src_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffled values are at most 8 bytes");
  auto& st = radd_fast::emu::state;
  std::memcpy(st.warp_slots + threadIdx.x % 32, &v, sizeof(T));
  st.warp_barrier->arrive_and_wait();
  T out;
  std::memcpy(&out, st.warp_slots + src_lane % 32, sizeof(T));
  st.warp_barrier->arrive_and_wait();
  return out;
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  return emu_shuffle(v, (threadIdx.x % 32) ^ unsigned(lane_mask));
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta) {
  const unsigned lane = threadIdx.x % 32;
  return emu_shuffle(v, lane >= delta ? lane - delta : lane);
}

// Warp vote over the full warp: true in every lane iff pred holds in every lane of the warp.
inline bool __all_sync(unsigned, int pred) {
  auto& st = radd_fast::emu::state;
  const unsigned lane = threadIdx.x % 32, n = std::min(32u, blockDim.x - (threadIdx.x - lane));
  st.warp_slots[lane] = pred != 0;
  st.warp_barrier->arrive_and_wait();
  bool all = true;
  for (unsigned i = 0; i < n; ++i) all = all && st.warp_slots[i] != 0;
  st.warp_barrier->arrive_and_wait();
  return all;
}

// bfloat16 as the GPU stores it: the high half of a float, rounded to nearest even from float.
struct EmuBf16 {
  uint16_t bits = 0;
  EmuBf16() = default;
  EmuBf16(double x) {  // NOLINT: implicit, as __nv_bfloat16 converts
    const float f = float(x);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    bits = uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);  // finite inputs only (tests)
  }
  operator float() const {  // NOLINT
    const uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

template <typename T>
inline T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}

namespace radd_fast::emu {
inline uint32_t pack_bf16x2(float lo, float hi) {  // lo in the low half, as __floats2bfloat162_rn
  return uint32_t(EmuBf16(lo).bits) | uint32_t(EmuBf16(hi).bits) << 16;
}
inline float bf16_half(uint32_t w, int i) {  // half i (0: low) of a packed pair
  const uint32_t u = (i ? w >> 16 : w & 0xFFFFu) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Posts n words of this lane, lets the warp meet, runs f(words of all 32 lanes, kWords apart), and
// meets again before the words are reused.
template <class F>
inline void warp_collective(const uint32_t* mine, int n, F&& f) {
  const unsigned lane = threadIdx.x % 32;
  std::memcpy(state.warp_words + lane * kWords, mine, 4 * n);
  state.warp_barrier->arrive_and_wait();
  f(static_cast<const uint32_t*>(state.warp_words));
  state.warp_barrier->arrive_and_wait();
}
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with d as both C and D; g = lane / 4,
// t = lane % 4:  A: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..);
// B: b0 (rows 2t..2t+1, col g), b1 (rows 2t+8.., col g); C/D: (g, 2t..2t+1), (g+8, 2t..2t+1).
inline void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  float A[16][16], B[16][8];
  warp_collective(mine, 6, [&](const uint32_t* w) {
    for (int l = 0; l < 32; ++l) {
      const uint32_t* r = w + l * kWords;
      const int g = l / 4, t = l % 4;
      for (int i = 0; i < 2; ++i) {
        A[g][2 * t + i] = bf16_half(r[0], i);
        A[g + 8][2 * t + i] = bf16_half(r[1], i);
        A[g][2 * t + 8 + i] = bf16_half(r[2], i);
        A[g + 8][2 * t + 8 + i] = bf16_half(r[3], i);
        B[2 * t + i][g] = bf16_half(r[4], i);
        B[2 * t + 8 + i][g] = bf16_half(r[5], i);
      }
    }
  });
  const int lane = int(threadIdx.x % 32), g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
    float s = d[e];
    for (int k = 0; k < 16; ++k) s = std::fma(A[row][k], B[k][col], s);
    d[e] = s;
  }
}
// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8i..8i+7 give the 16-byte-aligned row
// addresses of matrix i; register i of lane l gets (row l/4, cols 2(l%4)..+1) of matrix i, or with
// .trans (rows 2(l%4)..+1, col l/4).
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, bool trans) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) std::abort();  // the PTX ISA's requirement
  uint32_t mine[2];
  std::memcpy(mine, &p, sizeof p);
  const int lane = int(threadIdx.x % 32), g = lane / 4, t = lane % 4;
  warp_collective(mine, 2, [&](const uint32_t* w) {
    auto row = [&](int l) {
      const uint16_t* q;
      std::memcpy(&q, w + l * kWords, sizeof q);
      return q;
    };
    for (int i = 0; i < 4; ++i) {
      uint16_t lo, hi;
      if (!trans) {
        lo = row(8 * i + g)[2 * t];
        hi = row(8 * i + g)[2 * t + 1];
      } else {
        lo = row(8 * i + 2 * t)[g];
        hi = row(8 * i + 2 * t + 1)[g];
      }
      r[i] = uint32_t(lo) | uint32_t(hi) << 16;
    }
  });
}
}  // namespace radd_fast::emu

// ------------------------------------------------------------------------------------- wgmma
// wgmma.mma_async as the PTX ISA defines it for sm_90a, restricted to what the kernels use: m64nNk16,
// bf16 inputs, fp32 accumulators, no-swizzle ("interleave") shared-memory operands (A as well,
// where it is not in registers; MN-major for either with its transpose flag). Deferred like
// the hardware's: an op only records what it names; it runs at the wgmma.wait_group that covers its
// commit group, as a collective of the 128 threads of the warpgroup, reading A's registers, the
// shared-memory operands and the old accumulators *then* -- so a kernel that touches the
// accumulators or A's registers, or overwrites the operands' shared memory, before waiting gets
// wrong results here as it would on the GPU.
//   * Shared-memory matrix descriptor: bits 0-13 start address >> 4, 16-29 leading-dimension byte
//     offset (LBO) >> 4, 32-45 stride-dimension byte offset (SBO) >> 4, 62-63 swizzle (0: none; the
//     only mode emulated). Addresses here are offsets into the block's shared memory.
//   * No-swizzle layouts are made of 8 x 8 "core matrices" of 128 contiguous bytes. K-major (K
//     contiguous): element (mn, k) at start + (mn / 8) SBO + (k / 8) LBO + 16 (mn % 8) + 2 (k % 8).
//     MN-major (with the transpose flag): at start + (mn / 8) SBO + (k / 8) LBO + 16 (k % 8) +
//     2 (mn % 8).
//   * Accumulators: warp w of the warpgroup holds rows 16 w .. 16 w + 15; register 4 j + e of lane
//     (g = lane / 4, t = lane % 4) is (row 16 w + g + 8 (e / 2), col 8 j + 2 t + e % 2) -- mma.sync's
//     m16n8 C fragment, once per 8 columns. A from registers: warp w's rows in mma.sync's m16n8k16 A
//     fragment layout.
namespace radd_fast::emu {
inline uint64_t wgmma_desc(const void* p, uint32_t lbo, uint32_t sbo) {
  const uintptr_t off = static_cast<const unsigned char*>(p) - state.smem;
  if (off % 16 || off >= (uintptr_t(1) << 18) || lbo % 16 || sbo % 16 || lbo >= (1u << 18) || sbo >= (1u << 18))
    std::abort();
  return uint64_t(off >> 4) | uint64_t(lbo >> 4) << 16 | uint64_t(sbo >> 4) << 32;
}
inline float wgmma_smem_elem(uint64_t desc, int mn, int k, bool mn_major) {
  if (desc >> 62) std::abort();  // swizzled layouts are not emulated
  const size_t start = (desc & 0x3FFF) << 4, lbo = ((desc >> 16) & 0x3FFF) << 4, sbo = ((desc >> 32) & 0x3FFF) << 4;
  const size_t in_core = mn_major ? 16 * (k % 8) + 2 * (mn % 8) : 16 * (mn % 8) + 2 * (k % 8);
  uint16_t bits;
  std::memcpy(&bits, state.smem + start + (mn / 8) * sbo + (k / 8) * lbo + in_core, 2);
  return bf16_half(bits, 0);
}
inline void wgmma_run(const WgmmaOp& mine) {
  const unsigned tid = threadIdx.x % 128;
  state.warpgroup_slots[tid] = &mine;
  state.warpgroup_barrier->arrive_and_wait();
  auto op = [&](int i) { return static_cast<const WgmmaOp*>(state.warpgroup_slots[i]); };
  for (int i = 0; i < 128; ++i)  // .aligned: every thread names the same shape and operands
    if (op(i)->n != mine.n || op(i)->b_desc != mine.b_desc || op(i)->trans_b != mine.trans_b ||
        (op(i)->a == nullptr) != (mine.a == nullptr) || (!mine.a && (op(i)->a_desc != mine.a_desc || op(i)->trans_a != mine.trans_a)) ||
        op(i)->scale_d != mine.scale_d)
      std::abort();
  const int w = int(tid / 32), lane = int(tid % 32), g = lane / 4, t = lane % 4;
  auto a_elem = [&](int row, int k) {  // A (64 x 16)
    if (!mine.a) return wgmma_smem_elem(mine.a_desc, row, k, mine.trans_a);
    const int src = 32 * (row / 16) + 4 * (row % 8) + (k % 8) / 2;
    return bf16_half(op(src)->a[(row % 16) / 8 + 2 * (k / 8)], k % 2);
  };
  std::vector<float> out(mine.n / 2);
  for (int j = 0; j < mine.n / 8; ++j)
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * w + g + 8 * (e / 2), col = 8 * j + 2 * t + e % 2;
      float s = mine.scale_d ? mine.d[4 * j + e] : 0.f;
      for (int k = 0; k < 16; ++k) s = std::fma(a_elem(row, k), wgmma_smem_elem(mine.b_desc, col, k, mine.trans_b), s);
      out[4 * j + e] = s;
    }
  state.warpgroup_barrier->arrive_and_wait();  // everyone has read A's registers
  std::copy(out.begin(), out.end(), mine.d);
}
}  // namespace radd_fast::emu

namespace radd_fast::gpu {
inline void wgmma_fence() {}
inline void fence_proxy_async_smem() {}
inline void wgmma_commit() {
  emu::state.wg_groups.push_back(std::move(emu::state.wg_open));
  emu::state.wg_open.clear();
}
template <int N>
inline void wgmma_wait() {
  auto& g = emu::state.wg_groups;
  while (g.size() > size_t(N)) {
    for (const auto& op : g.front()) emu::wgmma_run(op);
    g.erase(g.begin());
  }
}
inline uint64_t wgmma_desc(const void* p, uint32_t lbo, uint32_t sbo) { return emu::wgmma_desc(p, lbo, sbo); }
template <typename T>
inline void wgmma_fence_operand(T&) {}
// Vote over the 128 threads of the warpgroup (bar.red.and.pred on the GPU).
inline bool warpgroup_all(bool pred) {
  auto& st = emu::state;
  const bool mine = pred;
  st.warpgroup_slots[threadIdx.x % 128] = &mine;
  st.warpgroup_barrier->arrive_and_wait();
  bool all = true;
  for (int i = 0; i < 128; ++i) all = all && *static_cast<const bool*>(st.warpgroup_slots[i]);
  st.warpgroup_barrier->arrive_and_wait();  // every thread has read the others' votes
  return all;
}
// D (64 x N) (+)= A (64 x 16, registers) B (16 x N, shared memory).
template <typename T, int N, bool TRANS_B>
inline void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b_desc, bool scale_d) {
  emu::state.wg_open.push_back(emu::WgmmaOp{d, N, a, 0, b_desc, false, TRANS_B, scale_d});
}
// D (64 x N) (+)= A (64 x 16) B (16 x N), both from shared memory.
template <typename T, int N, bool TRANS_A, bool TRANS_B>
inline void wgmma_ss(float (&d)[N / 2], uint64_t a_desc, uint64_t b_desc, bool scale_d) {
  emu::state.wg_open.push_back(emu::WgmmaOp{d, N, nullptr, a_desc, b_desc, TRANS_A, TRANS_B, scale_d});
}
}  // namespace radd_fast::gpu

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

inline int lane() { return int(threadIdx.x) % 32; }
// Accumulator element i (< 8) of this lane: (row, col) of the 16 x 16 tile, as two m16n8 tiles of
// mma.sync (row lane / 4 or + 8, columns 2 (lane % 4) + {0, 1}, in the left or right half).
inline int acc_row(int i) { return lane() / 4 + 8 * ((i % 4) / 2); }
inline int acc_col(int i) { return 8 * (i / 4) + 2 * (lane() % 4) + i % 2; }

// Operand fragments: every lane holds the whole 16 x 16 tile, as element (r, c) of the product's
// row-major view (A: r = m, c = k; B: r = k, c = n). Accumulators: 8 elements per lane.
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  float x[16 * 16];
};
template <int M, int N, int K>
struct fragment<accumulator, M, N, K, float, void> {
  static_assert(M == 16 && N == 16 && K == 16, "only 16 x 16 x 16 is emulated");
  float x[8];  // (acc_row(i), acc_col(i))
};

template <int M, int N, int K>
inline void fill_fragment(fragment<accumulator, M, N, K, float>& f, float v) {
  for (float& e : f.x) e = v;
}

// Element (r, c) of the product view is at ptr[r * ld + c] for row_major, ptr[c * ld + r] for col_major.
template <class Use, int M, int N, int K, class T, class Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* ptr, unsigned ld) {
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>, "layout");
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0 || ld % 8 != 0) std::abort();  // CUDA's requirements
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.x[r * 16 + c] = float(std::is_same_v<Layout, row_major> ? ptr[r * ld + c] : ptr[c * ld + r]);
}

template <int M, int N, int K, class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  float out[8];
  for (int i = 0; i < 8; ++i) {
    const int r = acc_row(i), col = acc_col(i);
    float s = c.x[i];
    for (int k = 0; k < 16; ++k) s = std::fma(a.x[r * 16 + k], b.x[k * 16 + col], s);
    out[i] = s;
  }
  std::memcpy(d.x, out, sizeof out);
}

template <int M, int N, int K>
inline void store_matrix_sync(float* ptr, const fragment<accumulator, M, N, K, float>& f, unsigned ld, layout_t layout) {
  for (int i = 0; i < 8; ++i) {
    const int r = acc_row(i), c = acc_col(i);
    radd_fast::emu::state.stores.emplace_back(ptr + (layout == mem_row_major ? r * ld + c : c * ld + r), f.x[i]);
  }
}
}  // namespace nvcuda::wmma

namespace radd_fast::gpu {
inline void cp_async_16(void* dst, const void* src, bool pred) {
  emu::Copy c{dst, {}};
  if (pred) std::memcpy(c.bytes, src, 16);  // the source does not change while the GEMM runs
  emu::state.open.push_back(c);             // !pred: 16 zero bytes
}
inline void cp_async_commit() {
  emu::state.groups.push_back(std::move(emu::state.open));
  emu::state.open.clear();
}
template <int N>
inline void cp_async_wait() {
  auto& g = emu::state.groups;
  while (g.size() > size_t(N)) {
    for (const auto& c : g.front()) std::memcpy(c.dst, c.bytes, 16);
    g.erase(g.begin());
  }
}
}  // namespace radd_fast::gpu

namespace radd_fast::dce::gpu {
inline unsigned char* gemm_smem() { return radd_fast::emu::state.smem; }
}  // namespace radd_fast::dce::gpu

// cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 and its groups (common/async_copy.cuh).
// The engine may read the source at any moment between the issue and the wait that covers it, so
// the source must not change in between: it is copied at the issue and compared when the wait
// retires the group -- a write after the issue (a missing barrier before it) or before the wait (a
// missing wait) aborts -- and only then added to the destination. A thread may not exit with
// reductions in flight (launch checks).
namespace radd_fast::gpu {
inline void bulk_reduce_add_f32(float* dst, const float* src, uint32_t bytes) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 || reinterpret_cast<uintptr_t>(src) % 16 || bytes % 16 || !bytes)
    std::abort();
  emu::state.bulk_open.push_back({dst, src, std::vector<float>(src, src + bytes / 4)});
}
inline void bulk_commit() {
  emu::state.bulk_groups.push_back(std::move(emu::state.bulk_open));
  emu::state.bulk_open.clear();
}
template <int N>
inline void bulk_wait() {
  auto& g = emu::state.bulk_groups;
  while (g.size() > size_t(N)) {
    for (const auto& op : g.front()) {
      if (std::memcmp(op.src, op.snapshot.data(), op.snapshot.size() * sizeof(float)) != 0) std::abort();
      for (size_t i = 0; i < op.snapshot.size(); ++i) atomicAdd(op.dst + i, op.snapshot[i]);
    }
    g.erase(g.begin());
  }
}
template <int N>
inline void bulk_wait_read() {
  bulk_wait<N>();  // the emulation completes a group's additions when its reads are done
}
inline void fence_proxy_async_smem_writes() {}
}  // namespace radd_fast::gpu
