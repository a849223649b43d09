// The loss's tiled GEMM (csrc/dce_loss/gemm.cuh) run on the CPU through csrc/tests/gpu_emulation.h:
// the bf16 (WMMA), fp32 and fp64 kernels as the GPU compiles them (tile copier, cp.async pipeline,
// count bounds, row gathers, split K, epilogues), against a naive double product of the same
// (bf16-rounded) inputs. The three operand layouts are the three GEMMs of csrc/dce_loss/cuda.cu:
// logits, grad hidden (split K) and grad weight (accumulated); bf16 results go to fp32 outputs, as
// there. Two depths: one shorter than the pipeline, one that cycles every buffer.
#include "tests/gpu_emulation.h"  // first: it defines what gemm.cuh needs of CUDA

#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "dce_loss/gemm.cuh"
#include "tests/test_util.h"

using namespace radd_fast::dce::gpu;

namespace {

template <typename A>
struct Store {
  A* out;
  int64_t ld;
  static constexpr bool kAccumulates = false;
  void operator()(int64_t m, int64_t n, A v) const { out[m * ld + n] = v; }
};
template <typename A>
struct Partial {  // split-K partial z of out[m][n], as cuda.cu's StorePartial
  A* out;
  int64_t ld, split_stride;
  static constexpr bool kAccumulates = false;
  void operator()(int64_t m, int64_t n, A v) const { out[int64_t(blockIdx.z) * split_stride + m * ld + n] = v; }
};
template <typename A>
struct Accumulate {
  A* out;
  int64_t ld;
  static constexpr bool kAccumulates = true;
  void operator()(int64_t m, int64_t n, A v) const { out[m * ld + n] += v; }
};

template <typename T>
Stored<T> stored(const T* ptr, int64_t ld, const int* rows = nullptr, int64_t rows_offset = 0) {
  constexpr int64_t vec = 16 / int64_t(sizeof(T));
  const bool aligned = reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && ld % vec == 0;
  return Stored<T>{ptr, ld, rows, rows_offset, aligned};
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T, bool AK, bool BK_, class Epi>
void run(const GemmArgs<T>& a, const Epi& epi, int64_t m_max, int splits) {
  using TL = Tile<T>;
  const EmuDim3 grid{unsigned(ceil_div(m_max, TL::BM)), unsigned(ceil_div(a.N, TL::BN)), unsigned(splits)};
  radd_fast::emu::launch(grid, kThreads, GemmSmem<T, AK, BK_>::kBytes,
                         [&] { gemm_kernel<T, AK, BK_, Epi>(a, epi); });
}

template <typename T>
std::vector<T> random_vec(size_t n, std::mt19937& g) {
  std::normal_distribution<double> d;
  std::vector<T> v(n);
  for (auto& x : v) x = T(d(g));
  return v;
}

// Compares got against want (both row-major rows x cols), relative to the largest |want|.
template <typename T>
void expect_close(const std::vector<T>& got, const std::vector<double>& want, const char* what, double rtol) {
  double scale = 1e-30, worst = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]) / scale);
  EXPECT(worst < rtol, "%s: max relative error %.3g", what, worst);
}

// T: the operands' type; O: the outputs' (fp32 for bf16, whose GEMMs accumulate in fp32).
template <typename T, typename O = T>
void check_all(const char* dtype, double rtol, bool aligned, int64_t D) {
  std::mt19937 g(7);
  // A chunk of R compacted rows starting at row0 of the order list; count of active rows on the
  // "device"; the chunk has valid = min(R, count - row0) rows (the rest of its blocks exit).
  const int64_t N = 230, C = 302, nc = 301, R = 150, row0 = 64;
  const int count = 180;
  const int64_t valid = std::min<int64_t>(R, count - row0);
  std::vector<int> order(N);
  for (int i = 0; i < int(N); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), g);
  // An unaligned operand (one element past a 16-byte boundary) takes the element-wise path.
  const int64_t off = aligned ? 0 : 1;
  std::vector<T> Hbuf = random_vec<T>(N * D + 8, g), Wbuf = random_vec<T>(C * D + 8, g);
  const T* H = Hbuf.data() + off;
  const T* W = Wbuf.data() + off;
  char what[160];

  // 1. logits[i][c] = H[order[row0 + i]] . W[c]: A gathered, both K-major, M bound by the count.
  {
    const double sentinel = 12345;
    std::vector<O> out(R * nc, O(sentinel));
    GemmArgs<T> a{stored(H, D, order.data(), row0), stored(W, D), Bound{R, &count, row0}, Bound{D, nullptr, 0}, nc,
                  ceil_div(D, Tile<T>::BK) * Tile<T>::BK};
    run<T, true, true>(a, Store<O>{out.data(), nc}, R, 1);
    // Rows past the count keep the sentinel; the valid rows are compared on their own scale.
    std::vector<double> want(valid * nc);
    for (int64_t i = 0; i < valid; ++i)
      for (int64_t c = 0; c < nc; ++c) {
        double s = 0;
        for (int64_t k = 0; k < D; ++k) s += double(H[order[row0 + i] * D + k]) * double(W[c * D + k]);
        want[i * nc + c] = s;
      }
    std::snprintf(what, sizeof what, "%s logits, D %d (aligned %d)", dtype, int(D), int(aligned));
    expect_close(std::vector<O>(out.begin(), out.begin() + valid * nc), want, what, rtol);
    EXPECT(std::all_of(out.begin() + valid * nc, out.end(), [&](O x) { return x == O(sentinel); }),
           "%s: logits rows past the count written", dtype);
  }
  // The logit gradients of the chunk, stored with a padded row stride as cuda.cu's workspace.
  const int64_t ld_t = ceil_div(nc, 16) * 16 + 16;
  std::vector<T> dlbuf = random_vec<T>(R * ld_t + 8, g);
  const T* dl = dlbuf.data() + off;

  // 2. grad_h[i] = dl[i] @ W[:nc], K = nc split in three; partials summed afterwards.
  {
    const int splits_max = 3;
    const int64_t k_split = ceil_div(ceil_div(nc, splits_max), Tile<T>::BK) * Tile<T>::BK;
    const int splits = int(ceil_div(nc, k_split));
    std::vector<O> part(size_t(splits) * R * D, O(777));
    GemmArgs<T> a{stored(dl, ld_t), stored(W, D), Bound{R, &count, row0}, Bound{nc, nullptr, 0}, D, k_split};
    run<T, true, false>(a, Partial<O>{part.data(), D, R * D}, R, splits);
    std::vector<O> got(valid * D);
    std::vector<double> want(valid * D);
    for (int64_t i = 0; i < valid; ++i)
      for (int64_t d = 0; d < D; ++d) {
        double s = 0, w = 0;
        for (int z = 0; z < splits; ++z) s += double(part[z * R * D + i * D + d]);
        for (int64_t c = 0; c < nc; ++c) w += double(dl[i * ld_t + c]) * double(W[c * D + d]);
        got[i * D + d] = O(s);
        want[i * D + d] = w;
      }
    std::snprintf(what, sizeof what, "%s grad_h, D %d, %d K splits (aligned %d)", dtype, int(D), splits, int(aligned));
    expect_close(got, want, what, rtol);
  }
  // 3. grad_W[c] += sum_i dl[i][c] * H[order[row0 + i]]: A not K-major (stored rows = K = chunk rows),
  //    B gathered and not K-major, K bound by the count, accumulating epilogue.
  {
    std::vector<O> out = random_vec<O>(nc * D, g);
    std::vector<double> want(out.begin(), out.end());
    GemmArgs<T> a{stored(dl, ld_t), stored(H, D, order.data(), row0), Bound{nc, nullptr, 0}, Bound{R, &count, row0},
                  D, ceil_div(R, Tile<T>::BK) * Tile<T>::BK};
    run<T, false, false>(a, Accumulate<O>{out.data(), D}, nc, 1);
    for (int64_t c = 0; c < nc; ++c)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t i = 0; i < valid; ++i) want[c * D + d] += double(dl[i * ld_t + c]) * double(H[order[row0 + i] * D + d]);
    std::snprintf(what, sizeof what, "%s grad_W accumulate, D %d (aligned %d)", dtype, int(D), int(aligned));
    expect_close(out, want, what, rtol);
  }
  // 4. A chunk wholly past the count: no block writes or adds anything.
  {
    const int none = int(row0);  // count - row0 = 0 active rows
    std::vector<O> out(R * nc, O(5)), acc(nc * D, O(3));
    GemmArgs<T> lg{stored(H, D, order.data(), row0), stored(W, D), Bound{R, &none, row0}, Bound{D, nullptr, 0}, nc,
                   ceil_div(D, Tile<T>::BK) * Tile<T>::BK};
    run<T, true, true>(lg, Store<O>{out.data(), nc}, R, 1);
    GemmArgs<T> gw{stored(dl, ld_t), stored(H, D, order.data(), row0), Bound{nc, nullptr, 0}, Bound{R, &none, row0}, D,
                   ceil_div(R, Tile<T>::BK) * Tile<T>::BK};
    run<T, false, false>(gw, Accumulate<O>{acc.data(), D}, nc, 1);
    EXPECT(std::all_of(out.begin(), out.end(), [](O x) { return x == O(5); }), "%s: rows past the count written", dtype);
    EXPECT(std::all_of(acc.begin(), acc.end(), [](O x) { return x == O(3); }), "%s: empty K accumulated", dtype);
  }
}

}  // namespace

int main() {
  // D 40: two depth slices (fewer than the pipeline's stages); D 200: seven (every buffer refilled).
  for (int64_t D : {40, 200})
    for (bool aligned : {true, false}) {
      check_all<EmuBf16, float>("bfloat16", 1e-5, aligned, D);
      check_all<float>("float32", 1e-5, aligned, D);
      check_all<double>("float64", 1e-12, aligned, D);
    }
  const int f = radd_fast::test::failures();
  std::printf("%s: %d failure(s)\n", f ? "FAILED" : "ok", f);
  return f;
}
