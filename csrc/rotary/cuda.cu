// CUDA launcher of radd_fast::rotary / rotary_ (the kernel: kernels.cuh). Picks 16-byte pieces where
// head_dim / 2 and the pointers allow (scalar pieces otherwise) and 32-bit indices where they fit.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "rotary/kernels.cuh"
#include "rotary/rotary.h"

namespace radd_fast::rotary {
namespace {

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % uintptr_t(bytes) == 0; }

template <typename scalar_t, typename acc_t, int VEC>
void launch(const at::Tensor& in, const at::Tensor& out, const at::Tensor& cos, const at::Tensor& sin, bool inverse) {
  const int64_t B = in.size(0), L = in.size(1), H = in.size(3), half = in.size(4) / 2;
  const int64_t slices = in.data_ptr() == out.data_ptr() ? 2 : 3;  // in place: v is not touched
  const int64_t items = B * L * slices * H * (half / VEC);
  if (items == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((items + threads - 1) / threads, int64_t(1) << 20);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto* x = in.const_data_ptr<scalar_t>();
  auto* y = out.data_ptr<scalar_t>();
  const auto* c = cos.const_data_ptr<acc_t>();
  const auto* s = sin.const_data_ptr<acc_t>();
  // 32-bit unsigned indices while item index + grid stride stays below 2^32.
  if (items <= int64_t(std::numeric_limits<int32_t>::max())) {
    gpu::rotary_kernel<scalar_t, acc_t, VEC, uint32_t><<<unsigned(blocks), threads, 0, stream>>>(
        x, y, c, s, uint32_t(L), uint32_t(H), uint32_t(half), uint32_t(slices), uint32_t(items), inverse);
  } else {
    gpu::rotary_kernel<scalar_t, acc_t, VEC, int64_t><<<unsigned(blocks), threads, 0, stream>>>(
        x, y, c, s, L, H, half, slices, items, inverse);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void cuda_launch(const at::Tensor& in, const at::Tensor& out, const at::Tensor& cos, const at::Tensor& sin,
                 bool inverse) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.scalar_type(), "rotary_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    constexpr int kVec = 16 / int(sizeof(scalar_t));
    const int64_t half = in.size(4) / 2;
    const bool vec = half % kVec == 0 && aligned(in.const_data_ptr(), 16) && aligned(out.const_data_ptr(), 16) &&
                     aligned(cos.const_data_ptr(), kVec * sizeof(acc_t)) &&
                     aligned(sin.const_data_ptr(), kVec * sizeof(acc_t));
    if (vec)
      launch<scalar_t, acc_t, kVec>(in, out, cos, sin, inverse);
    else
      launch<scalar_t, acc_t, 1>(in, out, cos, sin, inverse);
  });
}

}  // namespace radd_fast::rotary
