// C++ tests of linear_dce_loss: the shared logsumexp/gradient math of dce_loss.h, and the CPU kernel
// through the dispatcher against losses and gradients computed here with explicit loops in double.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <vector>

#include "dce_loss/dce_loss.h"
#include "tests/test_util.h"

using radd_fast::test::expect_throw;
namespace dce = radd_fast::dce;

namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

auto grad_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("radd_fast::linear_dce_loss_grad", "")
      .typed<Result(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                    const at::Tensor&, int64_t, std::array<bool, 3>)>();
}

auto loss_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("radd_fast::linear_dce_loss", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                        const at::Tensor&, int64_t)>();
}

double direct_lse(const std::vector<double>& z) {
  double m = -INFINITY, s = 0;
  for (double v : z) m = std::max(m, v);
  for (double v : z) s += std::exp(v - m);
  return m + std::log(s);
}

void test_lse_math() {
  const std::vector<double> z = {0.3, -2.0, 5.5, 5.4999, -40.0, 1e-3, 3.0};
  // one element at a time, in two orders, and as a merge of two halves in both orders
  auto st = dce::lse_empty<double>(), rev = dce::lse_empty<double>();
  for (size_t i = 0; i < z.size(); ++i) {
    st = dce::lse_push(st, z[i]);
    rev = dce::lse_push(rev, z[z.size() - 1 - i]);
  }
  auto a = dce::lse_empty<double>(), b = dce::lse_empty<double>();
  for (size_t i = 0; i < z.size(); ++i) (i < 3 ? a : b) = dce::lse_push(i < 3 ? a : b, z[i]);
  const double want = direct_lse(z);
  for (auto s : {st, rev, dce::lse_merge(a, b), dce::lse_merge(b, a)})
    EXPECT(std::abs(dce::lse_value(s) - want) < 1e-14, "lse %.17g vs %.17g", dce::lse_value(s), want);
  EXPECT(st.m == 5.5, "running max %g", st.m);
  // the empty set is neutral on either side, and its own lse is -inf
  auto e = dce::lse_empty<double>();
  EXPECT(dce::lse_merge(e, st).m == st.m && dce::lse_merge(e, st).s == st.s, "empty on the left");
  EXPECT(dce::lse_merge(st, e).m == st.m && dce::lse_merge(st, e).s == st.s, "empty on the right");
  EXPECT(std::isinf(dce::lse_value(e)) && dce::lse_value(e) < 0, "lse of nothing");
  // large logits do not overflow (naive exp(1000) would)
  auto big = dce::lse_push(dce::lse_push(dce::lse_empty<float>(), 1000.f), 999.f);
  EXPECT(std::abs(dce::lse_value(big) - (1000.f + std::log1p(std::exp(-1.f)))) < 1e-3f, "lse %g", dce::lse_value(big));
  // NaN propagates
  EXPECT(std::isnan(dce::lse_value(dce::lse_push(st, std::nan("")))), "NaN dropped");
  // row loss and logit gradient
  EXPECT(dce::row_loss(2.0, 3.5, 1.0) == 5.0, "row_loss");
  EXPECT(std::abs(dce::logit_grad(0.5, 1.0, 2.0, false) - 0.5 * std::exp(-1.0)) < 1e-16, "logit_grad");
  EXPECT(std::abs(dce::logit_grad(0.5, 1.0, 2.0, true) - 0.5 * (std::exp(-1.0) - 1)) < 1e-16, "logit_grad target");
}

// Loss and gradients of sum(loss) from their definitions, in double.
void naive(const at::Tensor& h, const at::Tensor& W, const at::Tensor& b, const at::Tensor& t, const at::Tensor& w,
           int64_t nc, at::Tensor& loss, at::Tensor& gh, at::Tensor& gW, at::Tensor& gb) {
  const int64_t N = h.size(0), D = h.size(1);
  auto H = h.accessor<double, 2>(), Wa = W.accessor<double, 2>();
  auto B = b.accessor<double, 1>(), wa = w.accessor<double, 1>();
  auto T = t.accessor<int64_t, 1>();
  loss = at::zeros({N}, at::kDouble);
  gh = at::zeros_like(h);
  gW = at::zeros_like(W);
  gb = at::zeros_like(b);
  auto L = loss.accessor<double, 1>(), GB = gb.accessor<double, 1>();
  auto GH = gh.accessor<double, 2>(), GW = gW.accessor<double, 2>();
  for (int64_t r = 0; r < N; ++r) {
    if (wa[r] == 0) continue;
    std::vector<double> z(nc);
    for (int64_t c = 0; c < nc; ++c) {
      z[c] = B[c];
      for (int64_t d = 0; d < D; ++d) z[c] += H[r][d] * Wa[c][d];
    }
    const double lse = direct_lse(z);
    L[r] = wa[r] * (lse - z[T[r]]);
    for (int64_t c = 0; c < nc; ++c) {
      const double g = wa[r] * (std::exp(z[c] - lse) - (c == T[r] ? 1.0 : 0.0));
      GB[c] += g;
      for (int64_t d = 0; d < D; ++d) {
        GH[r][d] += g * Wa[c][d];
        GW[c][d] += g * H[r][d];
      }
    }
  }
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a.to(at::kDouble) - b).abs().max().item<double>(); }

void test_against_naive() {
  // 301 classes (two 256-class blocks, the second partial) with num_classes < C - 1; N = 1; 600 rows
  // (about 360 active: two 256-row chunks).
  for (auto [N, D, C, nc] : std::vector<std::array<int64_t, 4>>{{300, 7, 303, 301}, {1, 5, 4, 3}, {600, 3, 9, 8}}) {
    auto h = at::randn({N, D}, at::kDouble), W = at::randn({C, D}, at::kDouble), b = at::randn({C}, at::kDouble);
    auto t = at::randint(0, nc, {N}, at::kLong);
    auto w = at::rand({N}, at::kDouble) * (at::rand({N}, at::kDouble) < 0.6).to(at::kDouble);
    w.index_put_({0}, 1.5);
    t.index_put_({0}, nc - 1);
    at::Tensor loss, gh, gW, gb;
    naive(h, W, b, t, w, nc, loss, gh, gW, gb);
    auto [l, a, bW, bb] = grad_op().call(h, W, b, t, w, nc, {true, true, true});
    EXPECT(max_diff(l, loss) < 1e-12, "N=%ld loss diff %g", (long)N, max_diff(l, loss));
    EXPECT(max_diff(a, gh) < 1e-12, "N=%ld grad hidden diff %g", (long)N, max_diff(a, gh));
    EXPECT(max_diff(bW, gW) < 1e-11, "N=%ld grad weight diff %g", (long)N, max_diff(bW, gW));
    EXPECT(max_diff(bb, gb) < 1e-12, "N=%ld grad bias diff %g", (long)N, max_diff(bb, gb));
    EXPECT(at::equal(loss_op().call(h, W, b, t, w, nc), l), "forward op differs from the gradient op's loss");
    // float32 inputs: the same computation accumulated in fp32
    auto [lf, af, wf, bf] = grad_op().call(h.to(at::kFloat), W.to(at::kFloat), b.to(at::kFloat), t, w.to(at::kFloat), nc,
                                           {true, true, true});
    EXPECT(lf.scalar_type() == at::kFloat && wf.scalar_type() == at::kFloat, "fp32 result dtype");
    EXPECT(max_diff(lf, loss) < 1e-4 * (1 + loss.abs().max().item<double>()), "fp32 loss diff %g", max_diff(lf, loss));
    EXPECT(max_diff(wf, gW) < 1e-4 * (1 + gW.abs().max().item<double>()), "fp32 grad diff %g", max_diff(wf, gW));
  }
}

void test_bad_input() {
  auto h = at::randn({4, 3}, at::kDouble), W = at::randn({6, 3}, at::kDouble);
  auto t = at::zeros({4}, at::kLong), w = at::ones({4}, at::kDouble);
  std::optional<at::Tensor> nob;
  expect_throw<c10::ValueError>([&] { loss_op().call(h, W.narrow(1, 0, 2), nob, t, w, 5); },
                                "'weight' must have shape (C, D) with D = 3", "D mismatch");
  expect_throw<c10::TypeError>([&] { loss_op().call(h, W, nob, t.to(at::kInt), w, 5); }, "'target' must have dtype int64",
                               "int32 target");
  expect_throw<c10::ValueError>([&] { loss_op().call(h, W, nob, t + 5, w, 5); },
                                "'target' values must be in [0, num_classes) = [0, 5), got 5 at row 0", "target range");
  expect_throw<c10::ValueError>([&] { loss_op().call(h, W, nob, t, w / 0.0, 5); }, "'row_weight' must be finite",
                                "inf weight");
  expect_throw<c10::ValueError>([&] { loss_op().call(h.narrow(0, 0, 0), W, nob, t.narrow(0, 0, 0), w.narrow(0, 0, 0), 5); },
                                "'hidden' must have at least one row", "N = 0");
  expect_throw<c10::ValueError>([&] { loss_op().call(h, W, nob, t, w, 7); }, "'num_classes' must be in [1, C] = [1, 6]",
                                "num_classes > C");
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_lse_math();
  test_against_naive();
  test_bad_input();
  if (radd_fast::test::failures() == 0) std::printf("test_dce_loss: all checks passed\n");
  return radd_fast::test::failures() == 0 ? 0 : 1;
}
