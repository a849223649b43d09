// The CUDA rotary kernel (csrc/rotary/kernels.cuh) on the CPU through gpu_emulation.h: bf16 (as the
// GPU stores it), fp32 and fp64, 16-byte pieces and scalar ones, 32- and 64-bit indices, in place
// (v untouched) and out of place (v copied), both directions, against the rotation of the same
// stored values computed here in double. A grid smaller than the work runs the grid-stride loop.
#include "tests/gpu_emulation.h"  // first: it defines what kernels.cuh needs of CUDA

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "rotary/kernels.cuh"
#include "tests/test_util.h"

using radd_fast::emu::launch;

namespace {

// n elements at a 64-byte boundary (what the launcher checks before it takes vector pieces; the
// host compiler may turn the 32-byte table loads into aligned AVX loads).
template <typename T>
struct Aligned {
  std::vector<T> store;
  T* p;
  explicit Aligned(int64_t n, T fill = T()) : store(size_t(n) + 64 / sizeof(T), fill) {
    p = store.data() + (64 - reinterpret_cast<uintptr_t>(store.data()) % 64) % 64 / sizeof(T);
  }
  T& operator[](int64_t i) { return p[i]; }
  T* data() { return p; }
};

template <typename T, typename Acc, int VEC, typename Index>
void check(int64_t B, int64_t L, int64_t H, int64_t D, bool inplace, bool inverse, unsigned seed) {
  const int64_t half = D / 2, n = B * L * 3 * H * D;
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Aligned<T> x(n), y(n, T(-99.0));
  for (int64_t i = 0; i < n; ++i) x[i] = T(normal(rng));
  const int64_t table_rows = L + 2;  // tables may be longer than L
  Aligned<Acc> cos(table_rows * half), sin(table_rows * half);
  for (int64_t l = 0; l < table_rows; ++l)
    for (int64_t d = 0; d < half; ++d) {
      const double a = double(l) * std::pow(10000.0, -2.0 * double(d) / double(D));
      cos[l * half + d] = Acc(std::cos(a));
      sin[l * half + d] = Acc(std::sin(a));
    }
  const std::vector<T> before(x.data(), x.data() + n);
  T* out = inplace ? x.data() : y.data();
  const int64_t slices = inplace ? 2 : 3, items = B * L * slices * H * (half / VEC);
  const unsigned threads = 64, blocks = unsigned(std::max<int64_t>(1, std::min<int64_t>(3, (items + 63) / 64)));
  launch(EmuDim3{blocks, 1, 1}, threads, 0, [&] {
    radd_fast::rotary::gpu::rotary_kernel<T, Acc, VEC, Index>(x.data(), out, cos.data(), sin.data(), Index(L), Index(H),
                                                             Index(half), Index(slices), Index(items), inverse);
  });
  const double tol = sizeof(T) == 2 ? 1.0 / 256 : sizeof(T) == 4 ? 1e-6 : 1e-14;  // about one rounding
  int bad = 0;
  for (int64_t bl = 0; bl < B * L; ++bl)
    for (int64_t s = 0; s < 3; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < half; ++d) {
          const int64_t o = ((bl * 3 + s) * H + h) * D + d, l = bl % L;
          const double x1 = double(before[o]), x2 = double(before[o + half]);
          double w1 = x1, w2 = x2;
          if (s < 2) {
            const double c = double(cos[l * half + d]), sn = (inverse ? -1.0 : 1.0) * double(sin[l * half + d]);
            w1 = x1 * c - x2 * sn;
            w2 = x2 * c + x1 * sn;
          }
          const double g1 = double(out[o]), g2 = double(out[o + half]);
          const double scale = std::abs(x1) + std::abs(x2);  // the terms' size: results may cancel
          const bool ok = std::abs(g1 - w1) <= tol * scale && std::abs(g2 - w2) <= tol * scale;
          if (!ok && bad++ < 3)
            EXPECT(false, "B %ld L %ld H %ld D %ld VEC %d inplace %d inverse %d: (bl %ld slice %ld head %ld d %ld) "
                   "got (%.9g, %.9g) want (%.9g, %.9g)", long(B), long(L), long(H), long(D), VEC, int(inplace),
                   int(inverse), long(bl), long(s), long(h), long(d), g1, g2, w1, w2);
        }
}

template <typename T, typename Acc>
void check_all(unsigned seed) {
  constexpr int kVec = 16 / int(sizeof(T));
  for (bool inplace : {true, false})
    for (bool inverse : {false, true}) {
      check<T, Acc, kVec, uint32_t>(2, 5, 3, 64, inplace, inverse, seed++);
      check<T, Acc, kVec, uint32_t>(1, 7, 1, 4 * kVec, inplace, inverse, seed++);  // two pieces per half-row
      check<T, Acc, kVec, int64_t>(3, 2, 2, 2 * kVec, inplace, inverse, seed++);   // one piece, 64-bit indices
      check<T, Acc, 1, uint32_t>(2, 3, 3, 34, inplace, inverse, seed++);          // the scalar path: half 17
      check<T, Acc, 1, int64_t>(1, 4, 2, 6, inplace, inverse, seed++);
    }
}

}  // namespace

int main() {
  check_all<EmuBf16, float>(1);
  check_all<float, float>(100);
  check_all<double, double>(200);
  if (radd_fast::test::failures() == 0) std::printf("test_rotary_kernels: all passed\n");
  return radd_fast::test::failures() == 0 ? 0 : 1;
}
