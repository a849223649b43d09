// C++ tests of the rotary CPU kernel through the dispatcher, against rotations computed here with
// explicit trigonometry in double.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>

#include "rotary/rotary.h"
#include "tests/test_util.h"

using radd_fast::test::expect_throw;

namespace {

auto rotary_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("radd_fast::rotary", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
}

auto rotary_inplace_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("radd_fast::rotary_", "")
      .typed<void(at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
}

// Tables of angle l * base^(-2d/D), in double.
std::pair<at::Tensor, at::Tensor> tables(int64_t L, int64_t D) {
  auto cos = at::empty({L, D / 2}, at::kDouble), sin = at::empty({L, D / 2}, at::kDouble);
  auto c = cos.accessor<double, 2>(), s = sin.accessor<double, 2>();
  for (int64_t l = 0; l < L; ++l)
    for (int64_t d = 0; d < D / 2; ++d) {
      const double a = double(l) * std::pow(10000.0, -2.0 * double(d) / double(D));
      c[l][d] = std::cos(a);
      s[l][d] = std::sin(a);
    }
  return {cos, sin};
}

at::Tensor expected(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, bool inverse) {
  auto x = qkv.to(at::kDouble).contiguous(), y = x.clone();
  const int64_t B = x.size(0), L = x.size(1), H = x.size(3), D = x.size(4);
  auto xa = x.accessor<double, 5>(), ya = y.accessor<double, 5>();
  auto c = cos.accessor<double, 2>(), s = sin.accessor<double, 2>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l)
      for (int64_t w = 0; w < 2; ++w)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t d = 0; d < D / 2; ++d) {
            const double x1 = xa[b][l][w][h][d], x2 = xa[b][l][w][h][d + D / 2];
            const double sn = inverse ? -s[l][d] : s[l][d];
            ya[b][l][w][h][d] = x1 * c[l][d] - x2 * sn;
            ya[b][l][w][h][d + D / 2] = x2 * c[l][d] + x1 * sn;
          }
  return y;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

void test_float64_shapes() {
  for (auto [B, L, H, D] : std::vector<std::array<int64_t, 4>>{{1, 1, 1, 32}, {2, 37, 3, 64}, {1, 5, 2, 34}, {2, 3, 1, 128}}) {
    auto [cos, sin] = tables(L, D);
    auto qkv = at::randn({B, L, 3, H, D}, at::kDouble);
    for (bool inverse : {false, true}) {
      auto want = expected(qkv, cos, sin, inverse);
      auto got = rotary_op().call(qkv, cos, sin, inverse);
      EXPECT(max_abs_diff(got, want) < 1e-12, "B=%ld L=%ld H=%ld D=%ld inverse=%d: diff %g", (long)B, (long)L,
            (long)H, (long)D, int(inverse), max_abs_diff(got, want));
      auto inplace = qkv.clone();
      rotary_inplace_op().call(inplace, cos, sin, inverse);
      EXPECT(at::equal(inplace, got), "in-place differs from out-of-place");
      EXPECT(at::equal(got.select(2, 2), qkv.select(2, 2)), "v changed");
    }
  }
}

void test_reduced_precision() {
  auto [cos, sin] = tables(19, 64);
  auto qkv = at::randn({2, 19, 3, 4, 64}, at::kDouble);
  for (auto dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
    auto x = qkv.to(dt);
    auto want = expected(x, cos, sin, false);
    auto got = rotary_op().call(x, cos.to(at::kFloat), sin.to(at::kFloat), false);
    EXPECT(got.scalar_type() == dt, "dtype changed");
    const double tol = dt == at::kFloat ? 1e-5 : dt == at::kHalf ? 1e-2 : 5e-2;
    EXPECT(max_abs_diff(got, want) < tol, "%s: diff %g", radd_fast::dtype_name(dt), max_abs_diff(got, want));
  }
}

void test_pair_math() {
  double y1, y2;
  radd_fast::rotary::rotate_pair<double>(1.0, 0.0, std::cos(0.5), std::sin(0.5), y1, y2);
  EXPECT(std::abs(y1 - std::cos(0.5)) < 1e-15 && std::abs(y2 - std::sin(0.5)) < 1e-15, "rotate_pair (1, 0)");
}

void test_bad_input() {
  auto [cos, sin] = tables(4, 8);
  auto qkv = at::randn({2, 4, 3, 2, 8}, at::kDouble);
  expect_throw<c10::ValueError>([&] { rotary_op().call(qkv.select(0, 0), cos, sin, false); }, "'qkv' must have shape",
                                "4-d qkv");
  expect_throw<c10::ValueError>([&] { rotary_op().call(qkv.transpose(0, 1), cos, sin, false); },
                                "'qkv' must be contiguous", "non-contiguous qkv");
  expect_throw<c10::TypeError>([&] { rotary_op().call(qkv, cos.to(at::kFloat), sin, false); },
                               "'cos' must be float64 for float64 qkv", "table dtype");
  expect_throw<c10::ValueError>([&] { rotary_op().call(qkv, cos.narrow(0, 0, 3), sin, false); }, "'cos' must have shape",
                                "short table");
  expect_throw<c10::TypeError>([&] { rotary_op().call(qkv.to(at::kInt), cos, sin, false); }, "'qkv' must have dtype",
                               "int qkv");
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_float64_shapes();
  test_reduced_precision();
  test_pair_math();
  test_bad_input();
  if (radd_fast::test::failures() == 0) std::printf("test_rotary: all checks passed\n");
  return radd_fast::test::failures() == 0 ? 0 : 1;
}
