// Hopper (sm_90a) warpgroup MMA, the pieces the attention kernels use (fwd_wgmma.cuh, bwd_wgmma.cuh):
// wgmma.mma_async m64nNk16 with fp32 accumulators, bf16 / fp16 A from registers or shared memory and
// B from shared memory through no-swizzle matrix descriptors; fence / commit / wait; the async-proxy fence.
// Facts from the PTX ISA ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate", "Matrix
// Descriptor Format", "Async Proxy"), cross-checked with CUTLASS's cute/arch/mma_sm90_desc.hpp:
//   * descriptor: bits 0-13 start address >> 4, 16-29 leading-dimension byte offset >> 4, 32-45
//     stride-dimension byte offset >> 4, 62-63 swizzle (0 = none). No swizzle needs 16-byte
//     alignment only.
//   * register-A form: d, {a0..a3}, b-desc, scale-d (predicate), imm-scale-a, imm-scale-b,
//     imm-trans-b (0: B K-major, 1: B MN-major); shared-memory-A form: d, a-desc, b-desc, scale-d,
//     imm-scale-a, imm-scale-b, imm-trans-a, imm-trans-b.
//   * accumulators and A's registers must not be touched between the instruction and the
//     wgmma.wait_group that covers it; wgmma_fence_operand keeps the compiler from moving their uses
//     across the asm statements (CUTLASS's warpgroup_fence_operand does the same).
// csrc/tests/gpu_emulation.h implements the same interface for the CPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/async_copy.cuh"

namespace radd_fast::gpu {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Orders this thread's earlier generic-proxy writes of shared memory (st.shared, cp.async) before
// later async-proxy reads of it (wgmma operands).
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// True in all 128 threads of this thread's warpgroup iff pred holds in all of them: a reduction on
// named barrier 1 + warpgroup (barrier 0 is __syncthreads'), which every thread of the warpgroup
// must reach. A warpgroup-uniform branch is one ptxas can keep wgmma state across.
__device__ __forceinline__ bool warpgroup_all(bool pred) {
  uint32_t all;
  asm volatile(
      "{\n\t.reg .pred p, q;\n\tsetp.ne.u32 p, %1, 0;\n\tbar.red.and.pred q, %2, 128, p;\n\t"
      "selp.u32 %0, 1, 0, q;\n\t}\n"
      : "=r"(all)
      : "r"(uint32_t(pred)), "r"(1 + threadIdx.x / 128)
      : "memory");
  return all != 0;
}
#else
__device__ __forceinline__ void wgmma_fence() { __trap(); }
__device__ __forceinline__ void wgmma_commit() { __trap(); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { __trap(); }
__device__ __forceinline__ void fence_proxy_async_smem() { __trap(); }
__device__ __forceinline__ bool warpgroup_all(bool) {
  __trap();
  return false;
}
#endif

__device__ __forceinline__ void wgmma_fence_operand(float& x) { asm volatile("" : "+f"(x)::"memory"); }
// For the A fragments of wgmma_rs: their registers must hold still until the wait that covers it.
__device__ __forceinline__ void wgmma_fence_operand(uint32_t& x) { asm volatile("" : "+r"(x)::"memory"); }

// No-swizzle descriptor of the matrix at shared-memory pointer p: lbo = byte step between core
// matrices along K, sbo = along M / N.
__device__ __forceinline__ uint64_t wgmma_desc(const void* p, uint32_t lbo, uint32_t sbo) {
  return uint64_t((smem_addr(p) & 0x3FFFF) >> 4) | uint64_t((lbo & 0x3FFFF) >> 4) << 16 |
         uint64_t((sbo & 0x3FFFF) >> 4) << 32;
}

#define RADD_WG_D4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define RADD_WG_D16(i) RADD_WG_D4(i), RADD_WG_D4(i + 4), RADD_WG_D4(i + 8), RADD_WG_D4(i + 12)
#define RADD_WG_D32(i) RADD_WG_D16(i), RADD_WG_D16(i + 16)

// D (64 x N, fp32) = A (64 x 16, registers) B (16 x N, shared memory) + (scale_d ? D : 0).
template <typename T, int N>
struct WgmmaRS;
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// One specialisation per shape and input type (TY: the PTX type, bf16 or f16); the operand lists
// differ only in the number of accumulators.
#define RADD_WGMMA_RS_32(T, TY)                                                                         \
  template <>                                                                                          \
  struct WgmmaRS<T, 32> {                                                                              \
    template <bool TRANS_B>                                                                            \
    __device__ __forceinline__ static void run(float (&d)[16], const uint32_t (&a)[4], uint64_t b_desc,  \
                                               bool scale_d) {                                          \
      asm volatile(                                                                                    \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"                                              \
          "wgmma.mma_async.sync.aligned.m64n32k16.f32." TY "." TY " "                                   \
          "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "  \
          "{%16, %17, %18, %19}, %20, p, 1, 1, %22;\n}\n"                                \
          : RADD_WG_D16(0)                                                                              \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(int(scale_d)), "n"(int(TRANS_B))); \
    }                                                                                                  \
  };
#define RADD_WGMMA_RS_64(T, TY)                                                                         \
  template <>                                                                                          \
  struct WgmmaRS<T, 64> {                                                                              \
    template <bool TRANS_B>                                                                            \
    __device__ __forceinline__ static void run(float (&d)[32], const uint32_t (&a)[4], uint64_t b_desc,  \
                                               bool scale_d) {                                          \
      asm volatile(                                                                                    \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                              \
          "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " "                                   \
          "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "\
          "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "  \
          "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"                                \
          : RADD_WG_D32(0)                                                                              \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(int(scale_d)), "n"(int(TRANS_B))); \
    }                                                                                                  \
  };
#define RADD_WGMMA_RS_128(T, TY)                                                                         \
  template <>                                                                                          \
  struct WgmmaRS<T, 128> {                                                                              \
    template <bool TRANS_B>                                                                            \
    __device__ __forceinline__ static void run(float (&d)[64], const uint32_t (&a)[4], uint64_t b_desc,  \
                                               bool scale_d) {                                          \
      asm volatile(                                                                                    \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                              \
          "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " "                                   \
          "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "\
          "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "\
          "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "\
          "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "  \
          "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"                                \
          : RADD_WG_D32(0), RADD_WG_D32(32)                                                                              \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(int(scale_d)), "n"(int(TRANS_B))); \
    }                                                                                                  \
  };
RADD_WGMMA_RS_32(__nv_bfloat16, "bf16")
RADD_WGMMA_RS_32(__half, "f16")
RADD_WGMMA_RS_64(__nv_bfloat16, "bf16")
RADD_WGMMA_RS_64(__half, "f16")
RADD_WGMMA_RS_128(__nv_bfloat16, "bf16")
RADD_WGMMA_RS_128(__half, "f16")

// D (64 x N, fp32) = A (64 x 16) B (16 x N), both from shared memory, + (scale_d ? D : 0).
template <typename T, int N>
struct WgmmaSS;
#define RADD_WGMMA_SS_32(T, TY)                                                                         \
  template <>                                                                                          \
  struct WgmmaSS<T, 32> {                                                                              \
    template <bool TRANS_A, bool TRANS_B>                                                              \
    __device__ __forceinline__ static void run(float (&d)[16], uint64_t a_desc, uint64_t b_desc, bool scale_d) { \
      asm volatile(                                                                                    \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"                                              \
          "wgmma.mma_async.sync.aligned.m64n32k16.f32." TY "." TY " "                                   \
          "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "  \
          "%16, %17, p, 1, 1, %19, %20;\n}\n"                                                  \
          : RADD_WG_D16(0)                                                                              \
          : "l"(a_desc), "l"(b_desc), "r"(int(scale_d)), "n"(int(TRANS_A)), "n"(int(TRANS_B)));        \
    }                                                                                                  \
  };
#define RADD_WGMMA_SS_64(T, TY)                                                                         \
  template <>                                                                                          \
  struct WgmmaSS<T, 64> {                                                                              \
    template <bool TRANS_A, bool TRANS_B>                                                              \
    __device__ __forceinline__ static void run(float (&d)[32], uint64_t a_desc, uint64_t b_desc, bool scale_d) { \
      asm volatile(                                                                                    \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                              \
          "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " "                                   \
          "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "\
          "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "  \
          "%32, %33, p, 1, 1, %35, %36;\n}\n"                                                  \
          : RADD_WG_D32(0)                                                                              \
          : "l"(a_desc), "l"(b_desc), "r"(int(scale_d)), "n"(int(TRANS_A)), "n"(int(TRANS_B)));        \
    }                                                                                                  \
  };
#define RADD_WGMMA_SS_128(T, TY)                                                                        \
  template <>                                                                                          \
  struct WgmmaSS<T, 128> {                                                                             \
    template <bool TRANS_A, bool TRANS_B>                                                              \
    __device__ __forceinline__ static void run(float (&d)[64], uint64_t a_desc, uint64_t b_desc, bool scale_d) { \
      asm volatile(                                                                                    \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                              \
          "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " "                                  \
          "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "\
          "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "\
          "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "\
          "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "  \
          "%64, %65, p, 1, 1, %67, %68;\n}\n"                                                  \
          : RADD_WG_D32(0), RADD_WG_D32(32)                                                             \
          : "l"(a_desc), "l"(b_desc), "r"(int(scale_d)), "n"(int(TRANS_A)), "n"(int(TRANS_B)));        \
    }                                                                                                  \
  };
RADD_WGMMA_SS_32(__nv_bfloat16, "bf16")
RADD_WGMMA_SS_32(__half, "f16")
RADD_WGMMA_SS_64(__nv_bfloat16, "bf16")
RADD_WGMMA_SS_64(__half, "f16")
RADD_WGMMA_SS_128(__nv_bfloat16, "bf16")
RADD_WGMMA_SS_128(__half, "f16")
#undef RADD_WGMMA_RS_32
#undef RADD_WGMMA_RS_64
#undef RADD_WGMMA_RS_128
#undef RADD_WGMMA_SS_32
#undef RADD_WGMMA_SS_64
#undef RADD_WGMMA_SS_128
#else
template <typename T, int N>
struct WgmmaSS {
  template <bool TRANS_A, bool TRANS_B>
  __device__ __forceinline__ static void run(float (&)[N / 2], uint64_t, uint64_t, bool) {
    __trap();
  }
};
template <typename T, int N>
struct WgmmaRS {
  template <bool TRANS_B>
  __device__ __forceinline__ static void run(float (&)[N / 2], const uint32_t (&)[4], uint64_t, bool) {
    __trap();
  }
};
#endif
#undef RADD_WG_D4
#undef RADD_WG_D16
#undef RADD_WG_D32

template <typename T, int N, bool TRANS_B>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b_desc, bool scale_d) {
  WgmmaRS<T, N>::template run<TRANS_B>(d, a, b_desc, scale_d);
}

template <typename T, int N, bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t a_desc, uint64_t b_desc, bool scale_d) {
  WgmmaSS<T, N>::template run<TRANS_A, TRANS_B>(d, a_desc, b_desc, scale_d);
}

}  // namespace radd_fast::gpu
