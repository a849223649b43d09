// The CUDA kernel of radd_fast::rotary / rotary_, in a header so that csrc/tests/test_rotary_kernels.cpp
// runs it on the CPU through csrc/tests/gpu_emulation.h.
//
// Memory bound by design: per (b, l) the q and k slices are 2 x H x D contiguous elements, each
// rotate-half pair (d, d + D/2) of a head is rotated by the angle of (l, d), v is copied (out of place)
// or left alone (in place). A thread moves VEC consecutive elements of a half-row and their partners:
// 16 bytes per load at VEC = 16 / sizeof(T), the rotation in acc_t (fp32; fp64 for fp64).
//
// Why vectors and 32-bit indices: the first kernel moved one pair per thread with 2-byte loads and
// six 64-bit integer divisions (each a software routine of dozens of instructions) to find
// (b, l, slice, head, d): an issue-bound 0.081 ms for qkv (8, 1,024, 3, 12, 64) bf16 in place on an
// H200 (bench/RESULTS.md: 935 GB/s against the 4.8 TB/s of its HBM). Here a thread does three
// 32-bit divisions per 16 bf16 elements.
#pragma once

#include <cstdint>

#include "rotary/rotary.h"

namespace radd_fast::rotary::gpu {

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T e[N];
};

// items = B * L * slices * H * (half / VEC): one per VEC-element piece of a half-row of q, k (and v
// when slices == 3). x and y may alias (in place): each piece is read, then written, by one thread.
// Requires half % VEC == 0, x and y aligned to VEC elements, cos / sin to VEC acc_t.
template <typename scalar_t, typename acc_t, int VEC, typename index_t>
__global__ void __launch_bounds__(256) rotary_kernel(const scalar_t* x, scalar_t* y, const acc_t* __restrict__ cos,
                                                     const acc_t* __restrict__ sin, index_t L, index_t H, index_t half,
                                                     index_t slices, index_t items, bool inverse) {
  using V = Pack<scalar_t, VEC>;
  using C = Pack<acc_t, VEC>;
  const index_t pieces = half / VEC, per_position = slices * H * pieces;
  for (index_t i = index_t(blockIdx.x) * index_t(blockDim.x) + index_t(threadIdx.x); i < items;
       i += index_t(gridDim.x) * index_t(blockDim.x)) {
    const index_t bl = i / per_position, in_position = i - bl * per_position;
    const index_t hs = in_position / pieces, piece = in_position - hs * pieces;  // hs = slice * H + head
    const int64_t off = (int64_t(bl) * 3 * H + hs) * 2 * half + int64_t(piece) * VEC;
    const V a = *reinterpret_cast<const V*>(x + off), b = *reinterpret_cast<const V*>(x + off + half);
    V ya, yb;
    if (hs >= 2 * H) {  // v (out of place only): copied
      ya = a;
      yb = b;
    } else {
      const int64_t t = int64_t(bl % L) * half + int64_t(piece) * VEC;
      const C c = *reinterpret_cast<const C*>(cos + t), s = *reinterpret_cast<const C*>(sin + t);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        acc_t y1, y2;
        rotate_pair<acc_t>(static_cast<acc_t>(a.e[k]), static_cast<acc_t>(b.e[k]), c.e[k], inverse ? -s.e[k] : s.e[k],
                           y1, y2);
        ya.e[k] = static_cast<scalar_t>(y1);
        yb.e[k] = static_cast<scalar_t>(y2);
      }
    }
    *reinterpret_cast<V*>(y + off) = ya;
    *reinterpret_cast<V*>(y + off + half) = yb;
  }
}

}  // namespace radd_fast::rotary::gpu
