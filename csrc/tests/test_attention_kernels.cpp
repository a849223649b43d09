// The CUDA attention kernels (csrc/attention/kernels.cuh) run on the CPU through gpu_emulation.h:
// a block's threads as CPU threads, with barriers, warp shuffles, cp.async copies that land only at
// their wait, and mma.sync / ldmatrix as warp collectives built from the PTX ISA's fragment layouts.
// The launch sequence is cuda.cu's (tile summaries, forward, delta, backward); results are checked
// against a float64 computation from the same stored inputs, for
//   * the bf16 tensor-core kernels (fwd_mma_kernel, bwd_mma_kernel) and the fp32 / fp64 FMA kernels,
//   * head_dim 32, 64 and 128; L = 1, 7 and lengths that end inside a tile; B x heads > 1,
//   * no mask, key padding, and order masks (causal, any-order, prefix, block; strict and not),
//     including queries that see no key (zeros, lse -inf, zero gradients),
//   * q, k, v as views of a packed (B, L, 3, H, D) tensor (the model's layout).
#include "tests/gpu_emulation.h"  // first: it defines what kernels.cuh needs of CUDA

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "attention/bwd_wgmma.cuh"
#include "attention/fwd_wgmma.cuh"
#include "attention/kernels.cuh"
#include "tests/test_util.h"

namespace cu = radd_fast::attention::cuda;
using radd_fast::emu::launch;

namespace {

struct Case {
  int B, H, L;
  std::string mask;  // none | pad | causal | anyorder | prefix | block
  bool strict;
  bool packed;
  double scale = 0;  // 0: the default 1 / sqrt(head_dim); the op allows any finite scale
  double q_mul = 1;  // multiplies q: large scores check the softmax's offset (no overflow, no underflow)
};

struct Mask {
  std::vector<int64_t> order;  // empty: none
  std::vector<uint8_t> pad;    // empty: none (bool storage)
};

Mask make_mask(const Case& c, std::mt19937& rng) {
  Mask m;
  const int B = c.B, L = c.L;
  if (c.mask == "pad") {
    m.pad.resize(size_t(B) * L);
    for (auto& p : m.pad) p = rng() % 4 != 0;
    if (B > 1)
      for (int j = 0; j < L; ++j) m.pad[j] = 0;  // sequence 0: no valid key at all
  } else if (c.mask != "none") {
    m.order.resize(size_t(B) * L);
    for (int b = 0; b < B; ++b) {
      int64_t* o = m.order.data() + size_t(b) * L;
      const int prefix = L / 3;
      for (int i = 0; i < L; ++i) {
        if (c.mask == "causal" || c.mask == "anyorder") o[i] = i;
        else if (c.mask == "prefix") o[i] = i < prefix ? 0 : i;
        else o[i] = i / 16;  // block: 16-position blocks see earlier blocks (and their own unless strict)
      }
      if (c.mask == "anyorder") std::shuffle(o, o + L, rng);
    }
    if (c.mask == "anyorder" && L > 3) {  // with padding too, so some queries see nothing
      m.pad.resize(size_t(B) * L);
      for (auto& p : m.pad) p = rng() % 5 != 0;
    }
  }
  return m;
}

bool allowed(const Mask& m, int L, int b, int i, int j, bool strict) {
  if (!m.pad.empty() && !m.pad[size_t(b) * L + j]) return false;
  if (m.order.empty()) return true;
  const int64_t oi = m.order[size_t(b) * L + i], oj = m.order[size_t(b) * L + j];
  return strict ? oj < oi : oj <= oi;
}

inline double float_or(double x) { return x; }
inline double float_or(float x) { return x; }
inline double float_or(EmuBf16 x) { return float(x); }

// Relative error of `got` against `want`, over the largest magnitude of `want` (1 if all zero).
template <typename G>
double rel_err(const std::vector<G>& got, const std::vector<double>& want) {
  double scale = 0, err = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = double(float_or(got[i]));
    if (std::isnan(g)) return INFINITY;
    err = std::max(err, std::abs(g - want[i]));
  }
  return err / (scale > 0 ? scale : 1.0);
}

// MT: m-tiles per warp of the bf16 mma.sync forward (64 MT queries per block); MT = 0: the
// sm_90a wgmma forward (64 or 128 queries per block, by head_dim) and backward.
template <typename T, int D, int MT = 1, int KW = 4, bool BULK = false>
void run_case(const Case& c, unsigned seed) {
  constexpr bool kMma = std::is_same_v<T, EmuBf16>;
  using Lse = std::conditional_t<kMma, float, T>;  // the kernels' lse / delta type
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const int B = c.B, H = c.H, L = c.L;
  const size_t n = size_t(B) * L * H * D;
  // Storage: packed (B, L, 3, H, D) or three contiguous (B, L, H, D) tensors.
  const int64_t sl = (c.packed ? 3 : 1) * int64_t(H) * D, sb = sl * L;
  std::vector<T> qkv(size_t(3) * n);
  for (size_t i = 0; i < qkv.size(); ++i) {
    const bool is_q = c.packed ? (i / (size_t(H) * D)) % 3 == 0 : i < n;
    qkv[i] = T(normal(rng) * 1.5 * (is_q ? c.q_mul : 1.0));
  }
  const T* qp = qkv.data();
  const T* kp = c.packed ? qp + int64_t(H) * D : qp + n;
  const T* vp = c.packed ? qp + 2 * int64_t(H) * D : qp + 2 * n;
  std::vector<T> dout(n);
  for (auto& x : dout) x = T(normal(rng));
  auto at = [&](const T* p, int b, int l, int h, int d) { return double(float_or(p[b * sb + l * sl + h * D + d])); };
  const Mask mk = make_mask(c, rng);
  const double scale = c.scale != 0 ? c.scale : 1.0 / std::sqrt(double(D));

  // ---- float64 reference
  std::vector<double> o_ref(n, 0.0), lse_ref(size_t(B) * H * L), dq_ref(n, 0.0), dk_ref(n, 0.0), dv_ref(n, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < L; ++i) {
        std::vector<double> s(L, -INFINITY);
        double mx = -INFINITY;
        for (int j = 0; j < L; ++j) {
          if (!allowed(mk, L, b, i, j, c.strict)) continue;
          double acc = 0;
          for (int d = 0; d < D; ++d) acc += at(qp, b, i, h, d) * at(kp, b, j, h, d);
          s[j] = acc * scale;
          mx = std::max(mx, s[j]);
        }
        const size_t orow = ((size_t(b) * L + i) * H + h) * D;
        if (mx == -INFINITY) {
          lse_ref[(size_t(b) * H + h) * L + i] = -INFINITY;
          continue;
        }
        double sum = 0;
        for (int j = 0; j < L; ++j) sum += s[j] == -INFINITY ? 0 : std::exp(s[j] - mx);
        lse_ref[(size_t(b) * H + h) * L + i] = mx + std::log(sum);
        std::vector<double> p(L);
        for (int j = 0; j < L; ++j) p[j] = s[j] == -INFINITY ? 0 : std::exp(s[j] - mx) / sum;
        for (int j = 0; j < L; ++j)
          for (int d = 0; d < D; ++d) o_ref[orow + d] += p[j] * at(vp, b, j, h, d);
        double delta = 0;
        for (int d = 0; d < D; ++d) delta += double(float_or(dout[orow + d])) * o_ref[orow + d];
        for (int j = 0; j < L; ++j) {
          if (p[j] == 0) continue;
          double dp = 0;
          for (int d = 0; d < D; ++d) dp += double(float_or(dout[orow + d])) * at(vp, b, j, h, d);
          const double ds = p[j] * (dp - delta) * scale;
          const size_t krow = ((size_t(b) * L + j) * H + h) * D;
          for (int d = 0; d < D; ++d) {
            dq_ref[orow + d] += ds * at(kp, b, j, h, d);
            dk_ref[krow + d] += ds * at(qp, b, i, h, d);
            dv_ref[krow + d] += p[j] * double(float_or(dout[orow + d]));
          }
        }
      }

  // ---- the kernels, launched as cuda.cu launches them
  const int64_t tile = kMma ? cu::kMmaTile : cu::kFmaTile, n_t = (L + tile - 1) / tile;
  std::vector<cu::TileStats> stats(size_t(B) * n_t);
  cu::MaskParams mp;
  mp.L = L;
  mp.n_tiles = n_t;
  mp.strict = c.strict;
  if (!mk.order.empty()) mp.order = mk.order.data();
  if (!mk.pad.empty()) mp.pad = reinterpret_cast<const bool*>(mk.pad.data());
  if (mp.order || mp.pad) {
    const int64_t count = B * n_t;
    launch(EmuDim3{unsigned((count * 32 + 255) / 256), 1, 1}, 256, 0,
           [&] { cu::tile_stats_kernel(mp, tile, stats.data(), count); });
    mp.stats = stats.data();
  }
  const cu::Rows<T> Q{qp, sb, sl, D}, K{kp, sb, sl, D}, V{vp, sb, sl, D}, dO{dout.data(), int64_t(L) * H * D, int64_t(H) * D, D};
  std::vector<T> out(n, T(-99.0));
  std::vector<Lse> lse(size_t(B) * H * L, Lse(-99));
  const unsigned grid = unsigned(B * H * n_t);
  const float scale_f = float(scale);
  if constexpr (kMma && MT == 0) {
    // KW = 8 stands for RADD_FAST_ATTENTION_KEY_TILE=128: the wgmma forward's 128-key steps.
    constexpr int NK = KW == 8 ? 2 : 1;
    constexpr int kQueries = cu::fwd_wgmma_queries<D, NK>();
    const unsigned fwd_grid = unsigned(B * H * ((L + kQueries - 1) / kQueries));
    launch(EmuDim3{fwd_grid, 1, 1}, cu::fwd_wgmma_threads<D, NK>(), cu::FwdWgmmaSmem<T, D, NK>::kBytes, [&] {
      cu::fwd_wgmma_kernel<T, D, NK>(Q, K, V, out.data(), lse.data(), mp, H, scale_f * cu::kLog2e);
    });
  } else if constexpr (kMma) {
    const unsigned fwd_grid = unsigned(B * H * ((L + 64 * MT - 1) / (64 * MT)));
    // RADD_FAST_ATTENTION_KEY_TILE=128: 128-key blocks in the backward, 128-key steps in the forward
    // of 128-query blocks.
    constexpr int NK = KW == 8 ? 2 : 1;
    launch(EmuDim3{fwd_grid, 1, 1}, cu::kMmaThreads, cu::FwdMmaSmem<T, D, MT, NK>::kBytes, [&] {
      cu::fwd_mma_kernel<T, D, MT, NK>(Q, K, V, out.data(), lse.data(), mp, H, scale_f * cu::kLog2e);
    });
  } else {
    launch(EmuDim3{grid, 1, 1}, cu::fma_threads<D>(), cu::FwdFmaSmem<T, D>::kBytes,
           [&] { cu::fwd_fma_kernel<T, D>(Q, K, V, out.data(), lse.data(), mp, H, T(scale)); });
  }
  std::vector<Lse> delta(size_t(B) * H * L);
  const int64_t warps = int64_t(B) * L * H;
  launch(EmuDim3{unsigned((warps * 32 + 255) / 256), 1, 1}, 256, 0, [&] {
    cu::delta_kernel<T, Lse>(dO, out.data(), nullptr, delta.data(), B, L, H, D);
  });
  std::vector<T> dk(n, T(-99.0)), dv(n, T(-99.0));
  std::vector<Lse> dq(n, Lse(0));  // bf16: the fp32 accumulator; fp32 / fp64: dq itself (zeroed)
  if constexpr (kMma && MT == 0) {
    launch(EmuDim3{grid, 1, 1}, cu::kMmaThreads, cu::BwdWgmmaSmem<T, D>::kBytes, [&] {
      cu::bwd_wgmma_kernel<T, D>(Q, K, V, dO, lse.data(), delta.data(), dk.data(), dv.data(), dq.data(), mp, H,
                                 scale_f, scale_f * cu::kLog2e);
    });
  } else if constexpr (kMma) {
    const unsigned bwd_grid = unsigned(B * H * ((L + 16 * KW - 1) / (16 * KW)));
    launch(EmuDim3{bwd_grid, 1, 1}, 32 * KW, cu::BwdMmaSmem<T, D, KW, BULK>::kBytes, [&] {
      cu::bwd_mma_kernel<T, D, KW, BULK>(Q, K, V, dO, lse.data(), delta.data(), dk.data(), dv.data(), dq.data(), mp,
                                         H, scale_f, scale_f * cu::kLog2e);
    });
  } else {
    launch(EmuDim3{grid, 1, 1}, cu::fma_threads<D>(), cu::BwdFmaSmem<T, D>::kBytes, [&] {
      cu::bwd_fma_kernel<T, D>(Q, K, V, dO, lse.data(), delta.data(), dq.data(), dk.data(), dv.data(), mp, H,
                               T(scale));
    });
  }

  // bf16: outputs are rounded to bf16 and P, dS pass through bf16 on their way into the tensor
  // cores (2^-9 relative each); a misplaced fragment is off by O(1).
  const double tol = kMma ? 3e-2 : std::is_same_v<T, float> ? 2e-5 : 1e-12;
  char what[176];
  std::snprintf(what, sizeof what, "%s D=%d%s%s B=%d H=%d L=%d mask=%s strict=%d packed=%d scale=%.3g q*%g",
                kMma ? "bf16" : sizeof(T) == 4 ? "fp32" : "fp64", D, kMma ? (MT == 0 ? (KW == 8 ? " wgmma k128" : " wgmma") : KW == 8 ? (MT == 2 ? " q128 k128" : " q64 k128") : MT == 2 ? " q128" : " q64") : "", BULK ? " dq-bulk" : "", B, H, L,
                c.mask.c_str(), int(c.strict), int(c.packed), scale, c.q_mul);
  double lse_err = 0;
  for (size_t i = 0; i < lse.size(); ++i) {
    const double w = lse_ref[i], g = double(lse[i]);
    if (w == -INFINITY) lse_err = std::max(lse_err, g == -INFINITY ? 0.0 : INFINITY);
    else lse_err = std::max(lse_err, std::abs(g - w) / std::max(1.0, std::abs(w)));
  }
  const double e_o = rel_err(out, o_ref), e_q = rel_err(dq, dq_ref), e_k = rel_err(dk, dk_ref), e_v = rel_err(dv, dv_ref);
  EXPECT(e_o <= tol, "%s: out error %.3g", what, e_o);
  EXPECT(lse_err <= (kMma ? 1e-5 : tol), "%s: lse error %.3g", what, lse_err);
  EXPECT(e_q <= tol, "%s: dq error %.3g", what, e_q);
  EXPECT(e_k <= tol, "%s: dk error %.3g", what, e_k);
  EXPECT(e_v <= tol, "%s: dv error %.3g", what, e_v);
  // A query that sees no key: exact zeros, not NaN (o_ref and dq_ref are exactly 0 there).
  for (size_t i = 0; i < lse_ref.size(); ++i) {
    if (lse_ref[i] != -INFINITY) continue;
    const size_t bh = i / L, l = i % L, b = bh / H, h = bh % H;
    const size_t row = ((b * L + l) * H + h) * D;
    int nonzero = 0;
    for (int d = 0; d < D; ++d) nonzero += float_or(out[row + d]) != 0.0 || float_or(dq[row + d]) != 0.0;
    EXPECT(nonzero == 0, "%s: query %zu without keys has %d nonzero output / dq elements", what, l, nonzero);
  }
  std::printf("%-70s out %.1e lse %.1e dq %.1e dk %.1e dv %.1e\n", what, e_o, lse_err, e_q, e_k, e_v);
}

template <typename T, int D, int MT = 1, int KW = 4, bool BULK = false>
void run_all(const std::vector<Case>& cases, unsigned seed) {
  for (const Case& c : cases) run_case<T, D, MT, KW, BULK>(c, seed++);
}

}  // namespace

int main() {
  // Lengths: 130 = two full tiles of 64 plus two rows (a partial last tile; with 128-query blocks,
  // a second block whose last two warps have no row inside L), 256 causal (warps of one block
  // that see a key tile next to warps that do not), 70 for the 32-wide FMA tiles, 7, 1.
  const std::vector<Case> mma_cases = {
      {2, 2, 130, "none", false, true},    {2, 1, 130, "pad", false, false},   {1, 2, 130, "causal", false, true},
      {1, 2, 130, "causal", true, false},  {2, 1, 130, "anyorder", true, true}, {1, 2, 130, "prefix", false, false},
      {1, 1, 130, "block", true, true},    {2, 3, 7, "anyorder", false, false}, {1, 1, 1, "none", false, false},
      {2, 1, 1, "causal", true, true},    {1, 1, 256, "causal", false, false}, {1, 1, 200, "anyorder", false, true},
  };
  const std::vector<Case> small = {
      {2, 2, 130, "none", false, true},
      {2, 1, 130, "anyorder", true, false},
      {1, 2, 7, "causal", false, true},
  };
  // The forward's softmax scales the row maxima, not the scores, when the scale is positive; a
  // negative one takes the scale-first path (hidden scores must stay -inf). Both, with masks.
  const std::vector<Case> scales = {
      {1, 2, 130, "causal", false, true, -0.2},
      {2, 1, 130, "pad", false, false, -0.09},
      {1, 1, 130, "anyorder", true, true, 0.31},
      // Scores in the thousands (scaled: hundreds, in log2 units): an offset that is not the scaled
      // row maximum underflows every probability or overflows one.
      {1, 2, 130, "causal", false, true, 0, 40.0},
      {2, 1, 130, "none", false, false, -0.2, 40.0},
  };
  // The forward's query tile as cuda.cu picks it: 128 (MT = 2) at head_dim 32 and 64, 64 at 128;
  // and 64 at head_dim 64 (RADD_FAST_ATTENTION_QUERY_TILE=64).
  run_all<EmuBf16, 64, 2>(mma_cases, 1);
  run_all<EmuBf16, 32, 2>(small, 100);
  run_all<EmuBf16, 128, 1>(small, 200);
  run_all<EmuBf16, 64, 1>(small, 250);
  run_all<EmuBf16, 64, 2>(scales, 260);
  run_all<EmuBf16, 128, 1>(scales, 270);
  // RADD_FAST_ATTENTION_KEY_TILE=128: the mma backward with 128-key blocks, every head_dim (at L 130
  // the second block's last four warps hold no key inside L; causal at 256 has warps whose keys a
  // query tile sees beside warps whose keys it does not), and the 64-query forward stepping over
  // 128 keys (at L 130 a last step with one tile inside L, at 200 one that ends past L).
  run_all<EmuBf16, 64, 1, 8>(mma_cases, 1000);
  run_all<EmuBf16, 32, 1, 8>(small, 1100);
  run_all<EmuBf16, 128, 1, 8>(small, 1200);
  // RADD_FAST_ATTENTION_DQ=bulk: dQ through the staging tile and bulk reductions, both key blocks,
  // head_dim 32 and 64 (where it runs). L 130: rows past L in the last query tile send nothing;
  // 256 causal: query tiles some warps' keys do not see.
  run_all<EmuBf16, 64, 2, 4, true>(mma_cases, 1600);
  run_all<EmuBf16, 64, 1, 8, true>(mma_cases, 1700);
  run_all<EmuBf16, 32, 2, 4, true>(small, 1800);
  run_all<EmuBf16, 32, 1, 8, true>(small, 1900);
  // The sm_90a wgmma forward and backward (RADD_FAST_ATTENTION_FORWARD / _BACKWARD=wgmma), every
  // head_dim.
  run_all<EmuBf16, 64, 0>(mma_cases, 700);
  run_all<EmuBf16, 32, 0>(small, 800);
  run_all<EmuBf16, 128, 0>(small, 900);
  run_all<EmuBf16, 64, 0>(scales, 950);  // a negative scale with a tile hidden from one warpgroup
  run_all<EmuBf16, 64, 0, 8>({scales[0]}, 960);
  // The wgmma forward's 128-key steps (RADD_FAST_ATTENTION_KEY_TILE=128) on 128-query blocks (at
  // L 130 the second block's second warpgroup has no row inside L; 256 causal: warpgroups that see
  // different steps); L 520 runs the pipeline over five steps, the last one past L.
  std::vector<Case> k128_cases = mma_cases;
  k128_cases.push_back({1, 1, 520, "causal", false, false});
  k128_cases.push_back({1, 2, 520, "anyorder", true, true});
  run_all<EmuBf16, 64, 0, 8>(k128_cases, 1300);
  run_all<EmuBf16, 32, 0, 8>(small, 1400);
  run_all<EmuBf16, 128, 0, 8>({small[0], small[1], {1, 1, 520, "block", false, true}}, 1500);
  const std::vector<Case> fma_cases = {
      {2, 2, 70, "none", false, true},     {2, 1, 70, "pad", false, false},   {1, 2, 70, "causal", true, true},
      {2, 1, 70, "anyorder", false, false}, {1, 1, 70, "block", false, true}, {1, 1, 1, "none", false, false},
  };
  run_all<float, 64>(fma_cases, 300);
  run_all<float, 32>({fma_cases[1], fma_cases[3]}, 400);
  run_all<float, 128>({fma_cases[0], fma_cases[2]}, 500);
  run_all<double, 64>({fma_cases[0], fma_cases[3]}, 600);
  if (radd_fast::test::failures()) std::fprintf(stderr, "%d failures\n", radd_fast::test::failures());
  return radd_fast::test::failures() == 0 ? 0 : 1;
}
