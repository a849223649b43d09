// C++ tests of the sampler's building blocks: Philox against the Random123 known answers, the
// reveal-step draw against the time grid's probabilities, the reveal schedule's invariants through
// the dispatcher, and the pieces of the row sampler (order keys, radix bin choice, noise uniforms).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <set>
#include <vector>

#include "common/philox.h"
#include "reveal_schedule/schedule.h"
#include "sample_rows/sample_rows.h"
#include "tests/test_util.h"

using radd_fast::test::expect_throw;
namespace ph = radd_fast::philox;
namespace sr = radd_fast::sample_rows;
namespace sc = radd_fast::schedule;

namespace {

auto schedule_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("radd_fast::reveal_schedule", "")
      .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                                 int64_t, int64_t)>();
}

// The log-linear grid t_k = 1 + k (delta - 1) / n and P(step <= k) = 1 - t_{k+1} (last: 1), derived
// here from the per-step reveal probabilities (t - s) / t, not from the closed form.
std::vector<double> loglinear_cdf(int n, double delta = 1e-5) {
  std::vector<double> t(n + 1), cdf(n);
  for (int k = 0; k <= n; ++k) t[k] = 1.0 + k * (delta - 1.0) / n;
  double survive = 1.0;
  for (int k = 0; k < n; ++k) {
    const double r = k == n - 1 ? 1.0 : (t[k] - t[k + 1]) / t[k];
    survive *= 1.0 - r;
    cdf[k] = 1.0 - survive;
  }
  return cdf;
}

void test_philox_known_answers() {
  struct Kat {
    uint32_t c[4], k[2], want[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{~0u, ~0u, ~0u, ~0u}, {~0u, ~0u}, {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const auto& t : kats) {
    const auto w = ph::philox4x32_10(t.c[0], t.c[1], t.c[2], t.c[3], t.k[0], t.k[1]);
    for (int i = 0; i < 4; ++i) EXPECT(w.w[i] == t.want[i], "word %d: %08x != %08x", i, w.w[i], t.want[i]);
  }
  // block() lays out (subsequence, offset) as the counter and seed as the key
  const auto a = ph::block(0x299f31d0a4093822ull, 0x0370734413198a2eull, 0x85a308d3243f6a88ull);
  EXPECT(a.w[0] == 0xd16cfe09u && a.w[3] == 0x24126ea1u, "block() layout");
}

void test_uniforms() {
  EXPECT(ph::uniform53(0, 0) == 0.0, "uniform53 min");
  EXPECT(ph::uniform53(~0u, ~0u) < 1.0 && ph::uniform53(~0u, ~0u) > 1.0 - 1e-15, "uniform53 max");
  // race uniforms: never 0 or 1, and full float precision far below 2^-24 (no truncated tail)
  float* f = nullptr;
  EXPECT(sr::uniform_open(0, 0, f) > 0.0f, "u > 0");
  EXPECT(sr::uniform_open(~0u, ~0u, f) < 1.0f, "u < 1 (float)");
  EXPECT(sr::uniform_open(~0u, ~0u, static_cast<double*>(nullptr)) < 1.0, "u < 1 (double)");
  const float tiny = sr::uniform_open(0, 12345, f);
  EXPECT(std::abs(tiny - 12345.0f * 0x1p-64f) <= 1e-7f * tiny, "2^-64 resolution: %g", double(tiny));
  EXPECT(sr::needs_extra_bits<float>(0xFFFFFFu) && !sr::needs_extra_bits<float>(0x1000000u), "extra bits rule");
  EXPECT(sr::needs_extra_bits<double>(~0u), "float64 always takes 64 bits");
  // noise: -log(E), E = -log1p(-u) ~ Exp(1): mean of E over many words is 1
  double sum = 0;
  const int n = 200000;
  for (int i = 0; i < n / 4; ++i) {
    uint32_t hi[4], lo[4];
    sr::noise_words<float>(7, 3, uint64_t(i), hi, lo);
    for (int j = 0; j < 4; ++j) sum += std::exp(-double(sr::noise_from_u(sr::uniform_open(hi[j], lo[j], f))));
  }
  const double mean = sum / n;
  EXPECT(std::abs(mean - 1.0) < 5.0 / std::sqrt(double(n)), "E[Exp(1)] = %g", mean);  // sd of E is 1
}

void test_draw_step() {
  for (int n : {1, 2, 7, 64, 1000}) {
    const auto cdf = loglinear_cdf(n);
    // closed form: P(step <= k) = 1 - t_{k+1}
    for (int k = 0; k + 1 < n; ++k) {
      const double t = 1.0 + (k + 1) * (1e-5 - 1.0) / n;
      EXPECT(std::abs(cdf[k] - (1.0 - t)) < 1e-12, "n=%d k=%d: %g vs %g", n, k, cdf[k], 1.0 - t);
    }
    EXPECT(cdf[n - 1] == 1.0, "last step reveals everything");
    EXPECT(sc::draw_step(cdf.data(), n, 0.0) == 0, "u = 0");
    EXPECT(sc::draw_step(cdf.data(), n, std::nextafter(1.0, 0.0)) == n - 1, "u -> 1");
    for (int k = 0; k + 1 < n; ++k) {  // the boundaries: u = cdf[k] belongs to step k + 1
      EXPECT(sc::draw_step(cdf.data(), n, cdf[k]) == k + 1, "n=%d boundary %d", n, k);
      EXPECT(sc::draw_step(cdf.data(), n, std::nextafter(cdf[k], 0.0)) == k, "n=%d below boundary %d", n, k);
    }
  }
}

// Frequencies of the drawn steps against p_k (chi-square), events = distinct steps, NFE mean.
void test_schedule_distribution() {
  const int n = 16, B = 4000, L = 9;
  const auto cdf = loglinear_cdf(n);
  auto cdf_t = at::tensor(cdf, at::kDouble);
  auto masked = at::ones({B, L}, at::kBool);
  auto [step, num_events, perm, row_index, offsets] = schedule_op().call(masked, cdf_t, 11, 0);
  auto st = step.accessor<int32_t, 2>();
  std::vector<double> count(n, 0.0);
  double nfe = 0;
  for (int b = 0; b < B; ++b) {
    std::set<int> distinct;
    for (int l = 0; l < L; ++l) {
      count[st[b][l]] += 1;
      distinct.insert(st[b][l]);
    }
    EXPECT(num_events[b].item<int32_t>() == int32_t(distinct.size()), "events of %d", b);
    nfe += double(distinct.size());
  }
  double chi2 = 0;
  for (int k = 0; k < n; ++k) {
    const double p = cdf[k] - (k ? cdf[k - 1] : 0.0), e = p * B * L;
    chi2 += (count[k] - e) * (count[k] - e) / e;
  }
  // 15 degrees of freedom: P(chi2 > 37.7) = 1e-3 for a correct sampler (fixed seed: deterministic).
  EXPECT(chi2 < 37.7, "chi-square of reveal steps %g", chi2);
  // E-NFE = sum_k 1 - (1 - p_k)^L; sd of one sequence's NFE < sqrt(L), so 5 sd of the mean is
  // 5 sqrt(L / B).
  double expected = 0;
  for (int k = 0; k < n; ++k) expected += 1.0 - std::pow(1.0 - (cdf[k] - (k ? cdf[k - 1] : 0.0)), L);
  EXPECT(std::abs(nfe / B - expected) < 5 * std::sqrt(double(L) / B), "mean NFE %g vs %g", nfe / B, expected);
}

// Round plan invariants on a random mask: every masked position once, in (round, rank, position)
// order; round r holds exactly the r-th events of the sequences perm[:A_r].
void test_schedule_plan() {
  const int B = 13, L = 37, n = 50;
  const auto cdf = loglinear_cdf(n);
  auto masked = at::rand({B, L}) < 0.7;
  masked.index_put_({5}, false);  // a sequence with nothing to generate
  auto [step, num_events, perm, row_index, offsets] = schedule_op().call(masked, at::tensor(cdf, at::kDouble), 5, 2);
  const int R = std::min(n, L);
  EXPECT(offsets.size(0) == R + 1, "offsets size");
  auto st = step.accessor<int32_t, 2>();
  auto ms = masked.accessor<bool, 2>();
  auto pm = perm.accessor<int64_t, 1>();
  auto ne = num_events.accessor<int32_t, 1>();
  auto ri = row_index.accessor<int64_t, 1>();
  auto off = offsets.accessor<int64_t, 1>();
  int64_t total = masked.sum().item<int64_t>();
  EXPECT(off[0] == 0 && off[R] == total, "offsets span the masked rows");
  EXPECT(ne[5] == 0, "no events without masked positions");
  for (int i = 1; i < B; ++i) EXPECT(ne[pm[i - 1]] >= ne[pm[i]], "perm sorts by events");
  std::vector<std::vector<int>> steps_of(B);
  for (int b = 0; b < B; ++b) {
    std::set<int> s;
    for (int l = 0; l < L; ++l) {
      EXPECT((st[b][l] >= 0) == ms[b][l], "step set iff masked");
      if (ms[b][l]) s.insert(st[b][l]);
    }
    steps_of[b].assign(s.begin(), s.end());
  }
  int64_t seen = 0;
  for (int r = 0; r < R; ++r) {
    int64_t prev = -1;
    for (int64_t j = off[r]; j < off[r + 1]; ++j) {
      const int64_t i = ri[j] / L, l = ri[j] % L, b = pm[i];
      EXPECT(ri[j] > prev, "sorted within a round");
      prev = ri[j];
      EXPECT(r < ne[b], "round %d beyond the events of sequence %ld", r, long(b));
      if (r < ne[b]) EXPECT(st[b][l] == steps_of[b][r], "round %d holds event %d", r, r);
      ++seen;
    }
  }
  EXPECT(seen == total, "every masked row once: %ld of %ld", long(seen), long(total));
  for (int64_t j = total; j < B * L; ++j) EXPECT(ri[j] == -1, "padding");
  // same (seed, offset) -> same schedule; another offset -> another one
  auto again = schedule_op().call(masked, at::tensor(cdf, at::kDouble), 5, 2);
  EXPECT(at::equal(std::get<0>(again), step), "reproducible");
  auto other = schedule_op().call(masked, at::tensor(cdf, at::kDouble), 5, 3);
  EXPECT(!at::equal(std::get<0>(other), step), "offset changes the stream");
}

void test_row_pieces() {
  const float xs[] = {-INFINITY, -3.5f, -1e-30f, -0.0f, 0.0f, 1e-30f, 2.0f, INFINITY};
  for (int i = 1; i < 8; ++i) {
    if (xs[i - 1] == xs[i]) {
      EXPECT(sr::order_key(xs[i - 1]) == sr::order_key(xs[i]), "-0 and +0 tie");
    } else {
      EXPECT(sr::order_key(xs[i - 1]) < sr::order_key(xs[i]), "float key order %d", i);
      EXPECT(sr::order_key(double(xs[i - 1])) < sr::order_key(double(xs[i])), "double key order %d", i);
    }
  }
  EXPECT(sr::mass_shift(50257) == 46 && sr::mass_shift(1) == 61, "mass shift");
  EXPECT(50257.0 * std::ldexp(1.0, sr::mass_shift(50257)) < 0x1p63, "masses fit in 63 bits");
  uint64_t hist[sr::kBins] = {};
  hist[200] = 3;
  hist[100] = 5;
  hist[7] = 1;
  uint64_t above;
  EXPECT(sr::select_bin_host(hist, 0, 1, above) == 200 && above == 0, "k = 1");
  EXPECT(sr::select_bin_host(hist, 0, 4, above) == 100 && above == 3, "k = 4");
  EXPECT(sr::select_bin_host(hist, 2, 11, above) == 7 && above == 10, "above carried");
}

void test_bad_input() {
  const auto cdf = at::tensor(loglinear_cdf(4), at::kDouble);
  auto masked = at::ones({2, 3}, at::kBool);
  expect_throw<c10::ValueError>([&] { schedule_op().call(masked.view({6}), cdf, 0, 0); }, "'masked' must have shape",
                                "1-d mask");
  expect_throw<c10::TypeError>([&] { schedule_op().call(masked.to(at::kInt), cdf, 0, 0); }, "'masked' must have dtype",
                               "int mask");
  expect_throw<c10::TypeError>([&] { schedule_op().call(masked, cdf.to(at::kFloat), 0, 0); },
                               "'step_cdf' must have dtype", "float32 cdf");
  expect_throw<c10::ValueError>([&] { schedule_op().call(masked, cdf.narrow(0, 0, 0), 0, 0); }, "between 1 and",
                                "no steps");
  expect_throw<c10::ValueError>([&] { schedule_op().call(masked, cdf, 0, -1); }, "'offset' must be >= 0",
                                "negative offset");
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_philox_known_answers();
  test_uniforms();
  test_draw_step();
  test_schedule_distribution();
  test_schedule_plan();
  test_row_pieces();
  test_bad_input();
  if (radd_fast::test::failures() == 0) std::printf("test_sampler: all checks passed\n");
  return radd_fast::test::failures() == 0 ? 0 : 1;
}
