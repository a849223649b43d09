// cp.async (sm_80+): 16-byte global -> shared copies that bypass the registers, grouped and awaited
// per thread. Shared by the attention kernels and the loss's GEMM.
#pragma once

#include <cstdint>

namespace radd_fast::gpu {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte global -> shared copy; when !pred the 16 bytes are zero-filled and nothing is read (src
// must still be a valid global address).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(pred ? 16 : 0));
}
// Closes the group of this thread's copies issued since the last commit (an empty group is valid).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight. The "memory"
// clobber keeps the compiler from moving this thread's shared-memory reads of the copied tile
// above the wait (the kernels' __syncthreads after it also does, but the wait must not rely on it).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace radd_fast::gpu
