// Portability macros shared by the C++ and CUDA sources.
#pragma once

// Functions marked RADD_HD hold tile-level math that the CUDA kernels run on the device and the CPU
// kernels (and the C++ tests) run on the host, so the CPU tests exercise the same code.
#if defined(__CUDACC__)
#define RADD_HD __host__ __device__ __forceinline__
#else
#define RADD_HD inline
#endif
