// The row kernels of the CUDA loss (csrc/dce_loss/rows.cuh) run on the CPU through gpu_emulation.h:
// a block's 512 threads as CPU threads, with its barriers and warp shuffles. Checked against double
// computations of the same stored inputs:
//   * softmax_rows_kernel in the three storage combinations the engines use -- fp32 / fp64 logits
//     with gradients written over them (tile engine), fp32 logits with bf16 gradients written over
//     the first half of each row (tile engine, bf16: the in-place overlap), bf16 logits plus a bias
//     with bf16 gradients in place (scalar, and the grouped engine's 16-byte-vector kernel, with a
//     16-byte-aligned bias and one that is not), over rows that cross several 512-wide slices (or
//     512-vector sweeps), rows whose last vector is partial,
//     targets at both ends and out of range, and chunk rows past the active count left untouched;
//   * bias_partials_kernel + bias_reduce_kernel, scatter_rows_kernel (split-K partials and single bf16 rows), gather_rows_kernel.
// compact_kernel and accumulate_kernel run in test_grouped_engine, behind the grouped engine.
#include "tests/gpu_emulation.h"  // first: it defines what rows.cuh needs of CUDA

#include <cmath>
#include <cstring>
#include <type_traits>
#include <cstdio>
#include <random>
#include <vector>

#include "dce_loss/rows.cuh"
#include "tests/test_util.h"

namespace gpu = radd_fast::dce::gpu;
using radd_fast::emu::launch;

namespace {

double tol_of(float) { return 2e-6; }
double tol_of(double) { return 1e-13; }
double tol_of(EmuBf16) { return 1.0 / 128; }  // one bf16 rounding (2^-8 relative), with margin

// R chunk rows of nc classes, row stride ld (in Z elements); rows 0..valid-1 active.
// vec: the grouped engine's vectorised kernel (T = Z = bf16) instead of softmax_rows_kernel.
// D > 0 (vec only): the logits are the rounded products of hidden rows hc (R x D) and weight rows W
// (nc x D), which the kernel is given too, and the loss must use the target's exact product.
template <typename T, typename Acc, typename Z>
void test_softmax(int R, int valid, int nc, int ld, bool with_bias, bool write_grad, unsigned seed, bool vec = false,
                  int D = 0, bool unaligned_bias = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 3.0);
  std::uniform_real_distribution<double> unif(0.2, 2.0);
  const int N = R + 5, row0 = 3;  // the chunk starts at compacted row 3
  std::vector<Z> logits(size_t(R) * ld);
  for (auto& z : logits) z = Z(normal(rng));
  std::vector<T> hc(size_t(R) * D), W(size_t(nc) * D);
  for (auto& x : hc) x = T(normal(rng) / 3);
  for (auto& x : W) x = T(normal(rng) / std::sqrt(double(std::max(D, 1))));
  auto product = [&](int i, int64_t c) {  // hc row i . W row c, exactly
    double s = 0;
    for (int k = 0; k < D; ++k) s += double(hc[size_t(i) * D + k]) * double(W[size_t(c) * D + k]);
    return s;
  };
  if (D > 0)
    for (int i = 0; i < R; ++i)
      for (int c = 0; c < nc; ++c) logits[size_t(i) * ld + c] = Z(product(i, c));
  const std::vector<Z> before = logits;
  std::vector<Acc> bias_store(nc + 1), row_weight(N), loss(N, Acc(-7));
  for (auto& b : bias_store) b = Acc(normal(rng) * 0.5);
  // unaligned_bias: the bias starts 4 bytes into a 16-byte line (the vector kernel's scalar loads)
  const Acc* bias = bias_store.data() + (unaligned_bias ? 1 : 0);
  for (auto& w : row_weight) w = Acc(unif(rng));
  std::vector<int> order(N);
  for (int i = 0; i < N; ++i) order[i] = N - 1 - i;  // compacted row i is row N - 1 - i
  std::vector<int64_t> target(N);
  for (int i = 0; i < N; ++i) target[i] = int64_t(rng() % unsigned(nc));
  target[order[row0]] = 0;
  if (valid > 1) target[order[row0 + 1]] = nc - 1;
  if (valid > 2) target[order[row0 + 2]] = nc;  // out of range: NaN loss and gradients
  const int count = row0 + valid;

  launch(EmuDim3{unsigned(R), 1, 1}, gpu::kRowThreads, 0, [&] {
    const Acc* b = with_bias ? bias : nullptr;
    if constexpr (std::is_same_v<T, Z>) {
      if (vec) {
        gpu::softmax_rows_vec_kernel<T, Acc>(logits.data(), ld, nc, order.data(), &count, row0, target.data(),
                                             row_weight.data(), b, loss.data(), write_grad,
                                             D > 0 ? hc.data() : nullptr, D > 0 ? W.data() : nullptr, D);
        return;
      }
    }
    gpu::softmax_rows_kernel<T, Acc, Z>(logits.data(), ld, nc, order.data(), &count, row0, target.data(),
                                        row_weight.data(), b, loss.data(), write_grad);
  });

  for (int i = 0; i < R; ++i) {
    const int r = order[row0 + i];
    if (i >= valid) {  // past the active count: nothing read or written
      for (int c = 0; c < ld; ++c)
        EXPECT(std::memcmp(&logits[size_t(i) * ld + c], &before[size_t(i) * ld + c], sizeof(Z)) == 0,
               "row %d past the count was written", i);
      EXPECT(loss[r] == Acc(-7), "loss of a row past the count was written");
      continue;
    }
    std::vector<double> z(nc);
    double m = -INFINITY;
    for (int c = 0; c < nc; ++c) {
      z[c] = double(before[size_t(i) * ld + c]) + (with_bias ? double(bias[c]) : 0.0);
      m = std::max(m, z[c]);
    }
    double s = 0;
    for (int c = 0; c < nc; ++c) s += std::exp(z[c] - m);
    const double lse = m + std::log(s), w = double(row_weight[r]);
    const int64_t t = target[r];
    if (t >= nc) {
      EXPECT(std::isnan(double(loss[r])), "row %d with an out-of-range target: loss %g", i, double(loss[r]));
    } else {
      // The rounded product z[t] differs from the exact one by up to 2^-9 of it: far over the tolerance.
      const double zt = D > 0 ? product(i, t) + (with_bias ? double(bias[t]) : 0.0) : z[t];
      const double want = w * (lse - zt);
      EXPECT(std::abs(double(loss[r]) - want) <= 1e-5 * std::abs(want) + 1e-6, "row %d loss %.9g vs %.9g", i,
             double(loss[r]), want);
    }
    if (!write_grad) continue;
    const T* d = reinterpret_cast<const T*>(logits.data() + size_t(i) * ld);
    if constexpr (std::is_same_v<T, Z>)  // the padding classes past nc are left as they were
      for (int c = nc; c < ld; ++c)
        EXPECT(std::memcmp(&d[c], &before[size_t(i) * ld + c], sizeof(Z)) == 0, "row %d padding %d written", i, c);
    for (int c = 0; c < nc; ++c) {
      const double got = double(d[c]);
      if (t >= nc) {
        EXPECT(std::isnan(got), "row %d class %d: gradient of a bad-target row must be NaN", i, c);
        continue;
      }
      const double want = w * (std::exp(z[c] - lse) - (c == t ? 1.0 : 0.0));
      EXPECT(std::abs(got - want) <= tol_of(T{}) * std::abs(want) + 1e-7, "row %d class %d: dlogit %.9g vs %.9g",
             i, c, got, want);
    }
  }
}

// The two-pass bias gradient: R chunk rows of stride ld (in T), the first `valid` of them active;
// several 128-row groups with a partial last one, a partial last vector of classes, and (valid 0) a
// chunk past the active count that must leave grad_b untouched.
template <typename T, typename Acc>
void test_bias_grad(int R, int valid, int nc, int ld) {
  constexpr int N = 16 / int(sizeof(T));
  const int count = 10 + valid, row0 = 10;
  std::vector<T> d(size_t(R) * ld);
  for (size_t i = 0; i < d.size(); ++i) d[i] = T(std::sin(double(i) * 0.7) * 3);
  std::vector<Acc> gb(nc, Acc(0.5));
  const int64_t pw = radd_fast::dce::bias_partial_stride(nc), groups = radd_fast::dce::bias_partial_rows(R);
  std::vector<Acc> partial(size_t(groups) * pw, Acc(NAN));  // unwritten partials would poison the sums
  // y_blocks < groups: the kernel's loop over row groups (a grid's y extent stops at 65,535)
  const unsigned y_blocks = unsigned(std::max<int64_t>(1, groups - 1));
  launch(EmuDim3{unsigned((nc + 64 * N - 1) / (64 * N)), y_blocks, 1}, 64, 0, [&] {
    gpu::bias_partials_kernel<T, Acc>(d.data(), ld, nc, &count, row0, R, partial.data(), pw);
  });
  launch(EmuDim3{unsigned((nc + 63) / 64), 1, 1}, 64, 0,
         [&] { gpu::bias_reduce_kernel<Acc>(partial.data(), pw, nc, &count, row0, R, gb.data()); });
  for (int c = 0; c < nc; ++c) {
    double want = 0.5, scale = 1;
    for (int i = 0; i < valid; ++i) want += double(d[size_t(i) * ld + c]), scale += std::abs(double(d[size_t(i) * ld + c]));
    const double tol = sizeof(Acc) == 4 ? 1e-5 : 1e-13;  // fp32 sums of up to 300 terms
    EXPECT(std::abs(double(gb[c]) - want) <= tol * scale, "bias grad (R %d, valid %d) class %d: %.9g vs %.9g",
           R, valid, c, double(gb[c]), want);
  }
}

void test_scatter_and_gather() {
  const int R = 5, D = 16, N = 9, count = 7, row0 = 4;  // 3 of the chunk's 5 rows are active
  std::vector<int> order = {8, 1, 5, 0, 2, 6, 3, 4, 7};
  // split-K partials (fp32, 3 splits) into fp32 rows
  std::vector<float> part(size_t(3) * R * D);
  for (size_t i = 0; i < part.size(); ++i) part[i] = float(i % 13) - 6.0f;
  std::vector<float> gh(size_t(N) * D, -1.0f);
  launch(EmuDim3{2, 1, 1}, 64, 0, [&] {
    gpu::scatter_rows_kernel<float, float>(part.data(), 3, int64_t(R) * D, R, D, order.data(), &count, row0, gh.data());
  });
  for (int r = 0; r < N; ++r)
    for (int c = 0; c < D; ++c) {
      int i = -1;
      for (int k = 0; k < 3; ++k)
        if (order[row0 + k] == r) i = k;
      const double want = i < 0 ? -1.0
                                 : double(part[size_t(i) * D + c]) + part[size_t(R * D) + i * D + c] +
                                       part[size_t(2 * R * D) + i * D + c];
      EXPECT(gh[size_t(r) * D + c] == float(want), "scatter fp32 row %d col %d", r, c);
    }
  // single bf16 rows into bf16 rows (the grouped engine)
  std::vector<EmuBf16> rows(size_t(R) * D), gb(size_t(N) * D, EmuBf16(-1.0));
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = EmuBf16(0.25 * double(i));
  launch(EmuDim3{1, 1, 1}, 32, 0, [&] {
    gpu::scatter_rows_kernel<EmuBf16, EmuBf16>(rows.data(), 1, 0, R, D, order.data(), &count, row0, gb.data());
  });
  for (int k = 0; k < R; ++k)
    for (int c = 0; c < D; ++c) {
      const float got = gb[size_t(order[row0 + k]) * D + c];
      EXPECT(got == (k < 3 ? float(rows[size_t(k) * D + c]) : -1.0f), "scatter bf16 chunk row %d col %d", k, c);
    }
  // gather: 16-byte vectors of bf16 rows; rows past the count zero; the count written out
  std::vector<EmuBf16> hidden(size_t(N) * D);
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = EmuBf16(double(i) + 1);
  std::vector<EmuBf16> out(size_t(R) * D, EmuBf16(99.0));
  int valid_out = -1;
  const int64_t vecs = D * int64_t(sizeof(EmuBf16)) / 16;
  launch(EmuDim3{3, 1, 1}, 32, 0, [&] {
    gpu::gather_rows_kernel<uint4>(reinterpret_cast<const uint4*>(hidden.data()), vecs, order.data(), &count, row0, R,
                                   reinterpret_cast<uint4*>(out.data()), &valid_out);
  });
  EXPECT(valid_out == 3, "gather: valid %d", valid_out);
  for (int k = 0; k < R; ++k)
    for (int c = 0; c < D; ++c) {
      const float want = k < 3 ? float(hidden[size_t(order[row0 + k]) * D + c]) : 0.0f;
      EXPECT(float(out[size_t(k) * D + c]) == want, "gather row %d col %d", k, c);
    }
}

}  // namespace

// A NaN logit makes its row's loss and gradients NaN, as in torch's cross-entropy, wherever it sits
// in the vectorised kernel's 8-class vectors: beside -inf logits only (where max() would drop it),
// first or last in a vector of finite ones, and in the partial last vector. 27 classes: 3 full
// vectors and 3 classes.
void test_vec_nan_logits() {
  constexpr int nc = 27, ld = 32;
  const double inf = INFINITY, nan = NAN;
  const std::vector<std::pair<int, bool>> cases = {{1, true}, {8, false}, {15, false}, {25, false}};
  const int R = int(cases.size());
  std::vector<EmuBf16> logits(size_t(R) * ld);
  for (int i = 0; i < R; ++i) {
    const auto [at, others_neg_inf] = cases[i];
    for (int c = 0; c < ld; ++c) logits[size_t(i) * ld + c] = EmuBf16(c < 8 && others_neg_inf ? -inf : 0.25 * (c % 5));
    logits[size_t(i) * ld + at] = EmuBf16(nan);
  }
  std::vector<int> order(R);
  for (int i = 0; i < R; ++i) order[i] = i;
  std::vector<int64_t> target(R, 20);
  std::vector<float> row_weight(R, 1.f), loss(R, -7.f);
  const int count = R;
  for (bool grad : {false, true}) {
    std::vector<EmuBf16> z = logits;
    launch(EmuDim3{unsigned(R), 1, 1}, gpu::kRowThreads, 0, [&] {
      gpu::softmax_rows_vec_kernel<EmuBf16, float>(z.data(), ld, nc, order.data(), &count, 0, target.data(),
                                                   row_weight.data(), nullptr, loss.data(), grad);
    });
    for (int i = 0; i < R; ++i) {
      EXPECT(std::isnan(loss[i]), "NaN logit at class %d (grad %d): loss %g, not NaN", cases[i].first, int(grad),
             double(loss[i]));
      if (grad) EXPECT(std::isnan(double(z[size_t(i) * ld + 3])), "NaN logit at class %d: gradient not NaN",
                       cases[i].first);
    }
  }
}

int main() {
  // nc = 1,100: two full 512-wide slices and a partial one; ld padded as each engine pads it.
  test_softmax<float, float, float>(4, 3, 1100, 1104, false, true, 1);
  test_softmax<double, double, double>(4, 4, 1100, 1104, false, true, 2);
  test_softmax<EmuBf16, float, float>(4, 3, 1100, 1104, false, true, 3);  // bf16 grads over fp32 logits
  test_softmax<EmuBf16, float, EmuBf16>(4, 3, 1100, 1104, true, true, 4);  // bf16 in place, scalar
  for (bool grad : {true, false}) {  // the grouped engine's vectorised kernel: nc = 4,100 is 513 vectors
    test_softmax<EmuBf16, float, EmuBf16>(4, 3, 4100, 4104, true, grad, 7, true);
    test_softmax<EmuBf16, float, EmuBf16>(3, 3, 517, 520, false, grad, 5, true);
    test_softmax<EmuBf16, float, EmuBf16>(2, 1, 5, 8, true, grad, 8, true);
    test_softmax<EmuBf16, float, EmuBf16>(3, 3, 1030, 1032, true, grad, 11, true, 0, /*unaligned_bias=*/true);
    // ... given the operands, the target's logit exact: D = 24 is three 16-byte vectors, D = 4,112
    // is 514, so two of the 512 threads take two each
    test_softmax<EmuBf16, float, EmuBf16>(4, 3, 517, 520, true, grad, 9, true, 24);
    test_softmax<EmuBf16, float, EmuBf16>(2, 2, 5, 8, false, grad, 10, true, 4112);
  }
  test_softmax<float, float, float>(2, 0, 40, 48, true, true, 6);          // empty chunk
  test_bias_grad<EmuBf16, float>(6, 4, 300, 304);      // one group
  test_bias_grad<EmuBf16, float>(300, 270, 523, 528);  // three groups, the last of 14 rows
  test_bias_grad<EmuBf16, float>(300, 0, 523, 528);    // a chunk past the active count
  test_bias_grad<float, float>(260, 259, 37, 40);      // the tile engine's fp32 and fp64 logits
  test_bias_grad<double, double>(131, 130, 35, 48);
  test_scatter_and_gather();
  test_vec_nan_logits();
  if (radd_fast::test::failures() == 0) std::printf("test_rows: all passed\n");
  return radd_fast::test::failures();
}
