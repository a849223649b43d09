// C++ tests of the masked-attention tile math shared by the CPU and CUDA kernels (attention.h), and
// of the CPU kernel through the dispatcher against attention computed here naively in double.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "attention/attention.h"
#include "tests/test_util.h"

using namespace radd_fast::attention;
using radd_fast::test::expect_throw;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

// classify_tile against brute force: random tiles of orders and padding, both strict settings.
void test_classify_tile() {
  std::mt19937 rng(1);
  int counts[3] = {0, 0, 0};
  for (int trial = 0; trial < 20000; ++trial) {
    const int nq = 1 + rng() % 6, nk = 1 + rng() % 6, range = 1 + rng() % 8;
    const bool strict = rng() % 2, has_order = rng() % 5 != 0;
    std::vector<int64_t> oq(nq), ok(nk);
    std::vector<bool> valid(nk);
    for (auto& o : oq) o = int64_t(rng() % range) - 3;
    for (int j = 0; j < nk; ++j) ok[j] = int64_t(rng() % range) - 3, valid[j] = rng() % 4 != 0;
    // the truth
    int seen = 0, total = nq * nk;
    for (int i = 0; i < nq; ++i)
      for (int j = 0; j < nk; ++j) seen += valid[j] && (!has_order || order_allows(ok[j], oq[i], strict));
    const int want = seen == 0 ? kTileHidden : seen == total ? kTileVisible : kTilePartial;
    // the summaries a kernel computes
    int64_t q_lo = *std::min_element(oq.begin(), oq.end()), q_hi = *std::max_element(oq.begin(), oq.end());
    int64_t k_lo = std::numeric_limits<int64_t>::max(), k_hi = std::numeric_limits<int64_t>::min(), n_valid = 0;
    for (int j = 0; j < nk; ++j)
      if (valid[j]) k_lo = std::min(k_lo, ok[j]), k_hi = std::max(k_hi, ok[j]), ++n_valid;
    const int got = classify_tile<int64_t>(q_lo, q_hi, k_lo, k_hi, n_valid, nk, has_order, strict);
    ++counts[want];
    // Hidden and visible must be exact (a wrong "hidden" drops keys, a wrong "visible" skips the
    // mask); "partial" is always safe, and the summaries only allow it when the truth is mixed.
    EXPECT(got == want, "trial %d: classify %d, truth %d (strict %d, order %d)", trial, got, want, int(strict),
           int(has_order));
  }
  EXPECT(counts[0] > 100 && counts[1] > 100 && counts[2] > 100, "cases not all exercised: %d %d %d", counts[0],
         counts[1], counts[2]);
}

void test_order_allows() {
  EXPECT(order_allows<int64_t>(1, 2, true) && order_allows<int64_t>(1, 2, false), "earlier key");
  EXPECT(!order_allows<int64_t>(2, 2, true) && order_allows<int64_t>(2, 2, false), "equal key");
  EXPECT(!order_allows<int64_t>(3, 2, false), "later key");
  const int64_t big = std::numeric_limits<int64_t>::max();
  EXPECT(order_allows<int64_t>(big, big, false) && !order_allows<int64_t>(big, big, true), "no overflow at int64 max");
}

// Online softmax over tiles (both exponent bases) equals the direct softmax, including rows whose
// first tiles are empty and a row that stays empty.
template <typename Exp>
void online_softmax_case(Exp exp_fn, double base_log) {
  std::mt19937 rng(2);
  std::normal_distribution<double> nd(0.0, 3.0);
  for (int trial = 0; trial < 200; ++trial) {
    const int tiles = 1 + rng() % 5, per = 1 + rng() % 7, n = tiles * per;
    std::vector<double> s(n), v(n);
    std::vector<bool> vis(n);
    for (int j = 0; j < n; ++j) s[j] = nd(rng), v[j] = nd(rng), vis[j] = (trial % 7 != 0) && rng() % 3 != 0;
    if (trial % 5 == 1)
      for (int j = 0; j < per; ++j) vis[j] = false;  // first tile empty
    // direct, in natural log: scores are s * base_log
    double mx = -kInf;
    for (int j = 0; j < n; ++j)
      if (vis[j]) mx = std::max(mx, s[j] * base_log);
    double z = 0, num = 0;
    for (int j = 0; j < n; ++j)
      if (vis[j]) z += std::exp(s[j] * base_log - mx), num += std::exp(s[j] * base_log - mx) * v[j];
    const double want = z > 0 ? num / z : 0.0, want_lse = z > 0 ? mx + std::log(z) : -kInf;
    // online, in the kernel's domain (s)
    double m = -kInf, l = 0, acc = 0;
    for (int t = 0; t < tiles; ++t) {
      double tmax = -kInf;
      for (int j = t * per; j < (t + 1) * per; ++j)
        if (vis[j]) tmax = std::max(tmax, s[j]);
      const double alpha = online_softmax_rescale(m, tmax, exp_fn);
      const double off = softmax_offset(m);
      EXPECT(!std::isnan(alpha) && !std::isnan(off), "NaN in rescale");
      l *= alpha, acc *= alpha;
      for (int j = t * per; j < (t + 1) * per; ++j) {
        const double p = vis[j] ? exp_fn(s[j] - off) : 0.0;
        l += p, acc += p * v[j];
      }
    }
    double inv_l, lse;
    softmax_finish(m, l, base_log, inv_l, lse);
    const double got = acc * inv_l;
    EXPECT(std::abs(got - want) < 1e-12 * (1 + std::abs(want)), "trial %d: out %g vs %g", trial, got, want);
    EXPECT((std::isinf(want_lse) && lse == -kInf) || std::abs(lse - want_lse) < 1e-12 * (1 + std::abs(want_lse)),
           "trial %d: lse %g vs %g", trial, lse, want_lse);
  }
}

void test_backward_helpers() {
  EXPECT(backward_offset(-kInf) == kInf && backward_offset(1.5) == 1.5, "backward_offset");
  EXPECT(std::exp(0.3 - backward_offset(-kInf)) == 0.0, "empty row gives P = 0");
  EXPECT(softmax_grad(0.25, 2.0, 0.5) == 0.25 * 1.5, "softmax_grad");
  // dS = P (dP - delta) is the softmax Jacobian-vector product: check against finite differences
  // of L = sum_j softmax(s)_j g_j.
  const std::vector<double> s{0.3, -1.2, 2.0, 0.7}, g{1.0, -0.5, 0.25, 2.0};
  auto loss = [&](const std::vector<double>& x) {
    double mx = *std::max_element(x.begin(), x.end()), z = 0, out = 0;
    for (size_t j = 0; j < x.size(); ++j) z += std::exp(x[j] - mx);
    for (size_t j = 0; j < x.size(); ++j) out += std::exp(x[j] - mx) / z * g[j];
    return out;
  };
  double mx = *std::max_element(s.begin(), s.end()), z = 0;
  for (double x : s) z += std::exp(x - mx);
  const double lse = mx + std::log(z);
  double delta = 0;  // sum_j P_j dP_j with dP = g (one "value" dim, dO = 1): delta = out . dO
  for (size_t j = 0; j < s.size(); ++j) delta += std::exp(s[j] - lse) * g[j];
  for (size_t j = 0; j < s.size(); ++j) {
    const double p = std::exp(s[j] - backward_offset(lse));
    std::vector<double> hi = s, lo = s;
    hi[j] += 1e-6, lo[j] -= 1e-6;
    const double fd = (loss(hi) - loss(lo)) / 2e-6;
    EXPECT(std::abs(softmax_grad(p, g[j], delta) - fd) < 1e-8, "dS[%zu] %g vs %g", j, softmax_grad(p, g[j], delta), fd);
  }
}

// ------------------------------------------------------------------------- the CPU kernel itself
using FwdFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                 const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                                 bool, double);

auto fwd_op() {
  return c10::Dispatcher::singleton().findSchemaOrThrow("radd_fast::masked_attention_fwd", "").typed<FwdFn>();
}

// Naive attention in double, straight from the definition.
std::pair<at::Tensor, at::Tensor> naive(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const at::Tensor& pad, const at::Tensor& order, bool strict, double scale) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3);
  auto out = at::zeros({B, L, H, D}, at::kDouble), lse = at::full({B, H, L}, -kInf, at::kDouble);
  auto qa = q.accessor<double, 4>(), ka = k.accessor<double, 4>(), va = v.accessor<double, 4>();
  auto oa = out.accessor<double, 4>();
  auto la = lse.accessor<double, 3>();
  auto pa = pad.accessor<bool, 2>();
  auto ora = order.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < L; ++i) {
        std::vector<double> sc(L, -kInf);
        double mx = -kInf;
        for (int64_t j = 0; j < L; ++j) {
          const bool ok = pa[b][j] && (strict ? ora[b][j] < ora[b][i] : ora[b][j] <= ora[b][i]);
          if (!ok) continue;
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += qa[b][i][h][d] * ka[b][j][h][d];
          sc[j] = s * scale;
          mx = std::max(mx, sc[j]);
        }
        if (mx == -kInf) continue;
        double z = 0;
        for (int64_t j = 0; j < L; ++j) z += std::exp(sc[j] - mx);
        for (int64_t j = 0; j < L; ++j) {
          const double p = std::exp(sc[j] - mx) / z;
          for (int64_t d = 0; d < D; ++d) oa[b][i][h][d] += p * va[b][j][h][d];
        }
        la[b][h][i] = mx + std::log(z);
      }
  return {out, lse};
}

void test_forward_against_naive() {
  const int64_t B = 2, L = 70, H = 3, D = 20;  // L spans two tiles; D is not a vector multiple
  auto q = at::randn({B, L, H, D}, at::kDouble), k = at::randn({B, L, H, D}, at::kDouble),
       v = at::randn({B, L, H, D}, at::kDouble);
  auto pad = at::rand({B, L}, at::kDouble).gt(0.25);
  pad.select(0, 1).narrow(0, 0, 3).fill_(false);
  auto order = at::randint(0, 6, {B, L}, at::kLong);
  for (bool strict : {false, true}) {
    auto [want, want_lse] = naive(q, k, v, pad, order, strict, 0.3);
    for (auto dt : {at::kDouble, at::kFloat, at::kBFloat16}) {
      auto [out, lse] = fwd_op().call(q.to(dt), k.to(dt), v.to(dt), pad, order, strict, 0.3);
      EXPECT(out.scalar_type() == dt, "dtype");
      const double tol = dt == at::kDouble ? 1e-12 : dt == at::kFloat ? 1e-5 : 3e-2;
      const double err = (out.to(at::kDouble) - want).abs().max().item<double>();
      EXPECT(err < tol, "%s strict=%d: out diff %g", radd_fast::dtype_name(dt), int(strict), err);
      auto fin = want_lse.isfinite();
      EXPECT(at::equal(lse.isfinite(), fin), "lse -inf pattern");
      if (dt != at::kBFloat16) {
        const double lerr = (lse.to(at::kDouble).masked_select(fin) - want_lse.masked_select(fin)).abs().max().item<double>();
        EXPECT(lerr < tol, "%s: lse diff %g", radd_fast::dtype_name(dt), lerr);
      }
    }
  }
}

void test_bad_input() {
  auto q = at::randn({2, 4, 3, 8}, at::kDouble);
  const c10::optional<at::Tensor> none;
  expect_throw<c10::ValueError>([&] { fwd_op().call(q.select(0, 0), q, q, none, none, false, 1.0); },
                                "'q' must have shape (B, L, heads, head_dim)", "3-d q");
  expect_throw<c10::ValueError>([&] { fwd_op().call(q, q.narrow(1, 0, 3), q, none, none, false, 1.0); },
                                "'k' must have the shape of 'q'", "k shape");
  expect_throw<c10::TypeError>([&] { fwd_op().call(q, q, q.to(at::kFloat), none, none, false, 1.0); },
                               "'v' must have the dtype of 'q'", "v dtype");
  expect_throw<c10::ValueError>([&] { fwd_op().call(q.transpose(2, 3).contiguous().transpose(2, 3), q, q, none, none, false, 1.0); },
                                "'q' must be contiguous in its last dim", "strided head_dim");
  expect_throw<c10::TypeError>(
      [&] { fwd_op().call(q, q, q, at::ones({2, 4}, at::kFloat), none, false, 1.0); },
      "'key_padding_mask' must have dtype bool", "float mask");
  expect_throw<c10::ValueError>(
      [&] { fwd_op().call(q, q, q, none, at::zeros({2, 5}, at::kLong), false, 1.0); },
      "'order' must have shape (B, L) = (2, 4)", "order shape");
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_order_allows();
  test_classify_tile();
  online_softmax_case(ExpE{}, 1.0);
  online_softmax_case(Exp2{}, std::log(2.0));
  test_backward_helpers();
  test_forward_against_naive();
  test_bad_input();
  if (radd_fast::test::failures() == 0) std::printf("test_attention: all checks passed\n");
  return radd_fast::test::failures() == 0 ? 0 : 1;
}
