// CPU kernel of radd_fast::rotary / rotary_: rows of (B, L, q|k, H) in parallel, each row's
// D/2 rotate-half pairs in vector registers.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/cpu_vec.h"
#include "rotary/rotary.h"

namespace radd_fast::rotary {
namespace {

template <typename scalar_t, typename acc_t>
void rotate_row(const scalar_t* x, scalar_t* y, const acc_t* c, const acc_t* s, int64_t half, bool inverse) {
  using V = cpu::Vec<acc_t>;
  const V sign(inverse ? acc_t(-1) : acc_t(1));
  int64_t d = 0;
  for (; d + V::size() <= half; d += V::size()) {
    const V x1 = cpu::vload<acc_t>(x + d), x2 = cpu::vload<acc_t>(x + half + d);
    const V cv = V::loadu(c + d), sv = V::loadu(s + d) * sign;
    // Both halves are loaded before either is stored, so x == y (in place) is safe.
    cpu::vstore<acc_t>(y + d, at::vec::fmsub(x1, cv, x2 * sv));
    cpu::vstore<acc_t>(y + half + d, at::vec::fmadd(x1, sv, x2 * cv));
  }
  for (; d < half; ++d) {
    acc_t y1, y2;
    rotate_pair<acc_t>(acc_t(x[d]), acc_t(x[half + d]), c[d], inverse ? -s[d] : s[d], y1, y2);
    y[d] = scalar_t(y1);
    y[half + d] = scalar_t(y2);
  }
}

// in == out for the in-place op; otherwise the v rows are copied too (slices = 3).
void launch(const at::Tensor& in, const at::Tensor& out, const at::Tensor& cos, const at::Tensor& sin,
            bool inverse) {
  const int64_t B = in.size(0), L = in.size(1), H = in.size(3), D = in.size(4), half = D / 2;
  const int64_t slices = in.data_ptr() == out.data_ptr() ? 2 : 3;
  const int64_t rows = B * L * slices * H;
  if (rows == 0) return;
  // About 16K elements per task: enough to amortise scheduling, small enough to balance L = 1.
  const int64_t grain = std::max<int64_t>(1, 16384 / D);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.scalar_type(), "rotary_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* x = in.const_data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    const acc_t* c = cos.const_data_ptr<acc_t>();
    const acc_t* s = sin.const_data_ptr<acc_t>();
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t h = r % H, which = (r / H) % slices, bl = r / (H * slices), l = bl % L;
        const int64_t off = ((bl * 3 + which) * H + h) * D;
        if (which == 2) {
          std::copy(x + off, x + off + D, y + off);
        } else {
          rotate_row<scalar_t, acc_t>(x + off, y + off, c + l * half, s + l * half, half, inverse);
        }
      }
    });
  });
}

void rotary_inplace_cpu(at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, bool inverse) {
  check_args(qkv, cos, sin, "rotary_");
  check_device_type(qkv, c10::DeviceType::CPU, "rotary_", "qkv");
  launch(qkv, qkv, cos, sin, inverse);
}

at::Tensor rotary_cpu(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, bool inverse) {
  check_args(qkv, cos, sin, "rotary");
  check_device_type(qkv, c10::DeviceType::CPU, "rotary", "qkv");
  at::Tensor out = at::empty_like(qkv);
  launch(qkv, out, cos, sin, inverse);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, CPU, m) {
  m.impl("rotary", &rotary_cpu);
  m.impl("rotary_", &rotary_inplace_cpu);
}

}  // namespace radd_fast::rotary
