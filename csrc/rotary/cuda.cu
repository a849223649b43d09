// CUDA kernel of radd_fast::rotary / rotary_. Memory bound: one thread per rotate-half pair, so a
// warp reads 32 consecutive elements of each half of a row (coalesced), math in fp32 (fp64 for fp64).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "rotary/rotary.h"

namespace radd_fast::rotary {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void rotary_kernel(const scalar_t* x, scalar_t* y,
                              const acc_t* __restrict__ cos, const acc_t* __restrict__ sin, int64_t L,
                              int64_t H, int64_t half, int64_t slices, int64_t pairs, bool inverse) {
  // x and y alias for the in-place op (so no __restrict__ on them): each pair is read and then
  // written by one thread only.
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pairs;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = i % half, r = i / half;
    const int64_t h = r % H, which = (r / H) % slices, bl = r / (H * slices), l = bl % L;
    const int64_t off = ((bl * 3 + which) * H + h) * (2 * half) + d;
    const scalar_t a = x[off], b = x[off + half];
    if (which == 2) {  // v, out-of-place only: copy
      y[off] = a;
      y[off + half] = b;
      continue;
    }
    const acc_t c = cos[l * half + d], s = inverse ? -sin[l * half + d] : sin[l * half + d];
    acc_t y1, y2;
    rotate_pair<acc_t>(static_cast<acc_t>(a), static_cast<acc_t>(b), c, s, y1, y2);
    y[off] = static_cast<scalar_t>(y1);
    y[off + half] = static_cast<scalar_t>(y2);
  }
}

}  // namespace

void cuda_launch(const at::Tensor& in, const at::Tensor& out, const at::Tensor& cos, const at::Tensor& sin,
                 bool inverse) {
  const int64_t B = in.size(0), L = in.size(1), H = in.size(3), half = in.size(4) / 2;
  const int64_t slices = in.data_ptr() == out.data_ptr() ? 2 : 3;
  const int64_t pairs = B * L * slices * H * half;
  if (pairs == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((pairs + threads - 1) / threads, int64_t(1) << 20);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.scalar_type(), "rotary_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    rotary_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        in.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), cos.const_data_ptr<acc_t>(),
        sin.const_data_ptr<acc_t>(), L, H, half, slices, pairs, inverse);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}


}  // namespace radd_fast::rotary
