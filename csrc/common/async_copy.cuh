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

// Bulk reductions (sm_90): dst[0 .. bytes / 4) += src[...] in global memory, fp32, done by the
// copy engine from shared memory -- one instruction per contiguous row piece instead of one
// atomic per 4 or 16 bytes. dst and src 16-byte aligned, bytes a multiple of 16. Before the issue,
// every thread that wrote src runs fence_proxy_async_smem_writes() and meets the issuing thread at a
// barrier (the engine reads through the async proxy); src may be written again only after the
// issuing thread's bulk_wait_read covers the group, and the block may exit only after bulk_wait.
// PTX ISA: cp.reduce.async.bulk (.global.shared::cta.bulk_group.add.f32), cp.async.bulk.commit_group,
// cp.async.bulk.wait_group[.read]; CUTLASS's SM90_BULK_REDUCE_ADD issues the same instruction.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, const float* src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
               "r"(smem_addr(src)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// At most N of this thread's bulk groups still reading shared memory.
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
// At most N of this thread's bulk groups not yet complete (their global writes done).
template <int N>
__device__ __forceinline__ void bulk_wait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_proxy_async_smem_writes() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
#else  // never launched below sm_90 (the host picks these kernels on compute capability 9.x only)
__device__ __forceinline__ void bulk_reduce_add_f32(float*, const float*, uint32_t) { __trap(); }
__device__ __forceinline__ void bulk_commit() { __trap(); }
template <int N>
__device__ __forceinline__ void bulk_wait_read() { __trap(); }
template <int N>
__device__ __forceinline__ void bulk_wait() { __trap(); }
__device__ __forceinline__ void fence_proxy_async_smem_writes() { __trap(); }
#endif

}  // namespace radd_fast::gpu
