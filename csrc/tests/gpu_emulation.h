// Just enough of CUDA to run a kernel written for csrc/dce_loss/gemm.cuh on the CPU: a block's
// threads are CPU threads (threadIdx and friends thread-local), __syncthreads is a barrier, and
// cp.async copies are deferred until the cp.async.wait that covers their group -- so a pipeline that
// reads a buffer before waiting for it reads stale bytes, as it would on a GPU. Tensor-core code is
// not emulated (the GEMM's fp32/fp64 engine is).
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define RADD_GEMM_HOST_EMULATION 1
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)

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

struct ThreadState {
  std::barrier<>* barrier = nullptr;
  unsigned char* smem = nullptr;
  std::vector<Copy> open;                 // issued since the last commit
  std::vector<std::vector<Copy>> groups;  // committed, oldest first, not yet landed
};
inline thread_local ThreadState state;

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
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            blockIdx = {x, y, z};
            blockDim = {threads, 1, 1};
            gridDim = grid;
            state = ThreadState{&bar, base, {}, {}};
            kernel();
            // A thread that exits with copies in flight would be a kernel bug: none may remain.
            if (!state.open.empty() || !state.groups.empty()) std::abort();
          });
        for (auto& th : pool) th.join();
      }
}

}  // namespace radd_fast::emu

inline void __syncthreads() { radd_fast::emu::state.barrier->arrive_and_wait(); }

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
