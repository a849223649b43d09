// CPU kernels of radd_fast::masked_attention_fwd / _bwd: flash-style tiles with an online softmax,
// no L x L tensor, logsumexp saved for the backward.
//
// Every matrix product is one register-blocked micro-kernel, C[MR x NV vectors] += A B, with A read
// by scalar broadcast (any strides, so transposed operands need no copy) and B read by rows of
// vectors. The operands are laid out so that no product needs a horizontal reduction:
//   forward  (task = batch x head x query tile; key tiles inner)
//     S^T = K Q^T     (keys x queries; Q^T packed once per task, pre-scaled)  -> the softmax over a
//                      query's keys is a column reduction: element-wise vector max / sum over rows
//     O  += P V       (A = P^T read transposed, B = V rows)
//   backward (task = batch x head x a chunk of key tiles; query tiles inner)
//     S = Q K^T, dP = dO V^T     (K^T, V^T packed once per key tile)
//     dV += P^T dO, dK += dS^T Q (A read transposed)
//     dQ += dS K                 (key tiles are split into chunks only when there are fewer
//                                 (b, h) pairs than 2 x threads; each chunk then has its own
//                                 fp32 dQ buffer, summed after the parallel loop, so no two
//                                 threads write the same row; with one chunk and inputs read in
//                                 place (below), dQ accumulates directly in the output)
// fp32 / fp64 inputs whose head_dim is a multiple of the vector width are read in place; other
// inputs (bf16, fp16, odd head_dim) are converted / zero-padded into per-task tiles first, which
// costs about 1 / tile_size of the arithmetic.
//
// Measured (fp32, B 4, heads 12, L 1,024, D 64, 2 Zen 4 cores): fwd about 85-90 GFLOP/s per core,
// within 10% of the micro-kernel's own rate; the rest is the exp (one exp_u20 per score) and the
// softmax passes over the 16 KiB score tile, which stays in L1.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "attention/attention.h"
#include "common/cpu_vec.h"

namespace radd_fast::attention {
namespace {

template <typename T>
using Vec = cpu::Vec<T>;

// Register blocking: MR rows x NV vectors of C live in registers across the whole K loop.
// AVX-512 has 32 vector registers: 6 x 4 = 24 accumulators + 4 B vectors + 1 broadcast. AVX2 (and
// the scalar fallback) has 16: 6 x 2 = 12 + 2 + 1.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kMR = 6, kNV = 4;
#else
constexpr int kMR = 6, kNV = 2;
#endif

// Tile sizes (rows). 64 x 64 fp32 tiles are 16 KiB each: the forward's K^T-free working set
// (Q^T, S^T, O, one K and V tile) stays in a Zen 4 / Skylake L2 and mostly in L1.
constexpr int64_t kBQ = 64;  // queries per tile
constexpr int64_t kBK = 64;  // keys per tile

// C (+)= A B for an MR x (NV vectors) block. A(m, k) = a[m * sam + k * sak]; B row k at b + k * ldb.
template <int MR, int NV, typename T>
inline void micro_kernel(int64_t K, const T* __restrict__ a, int64_t sam, int64_t sak, const T* __restrict__ b,
                         int64_t ldb, T* __restrict__ c, int64_t ldc, bool accumulate) {
  using V = Vec<T>;
  constexpr int VS = V::size();
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) acc[m][n] = accumulate ? V::loadu(c + m * ldc + n * VS) : V(T(0));
  for (int64_t k = 0; k < K; ++k) {
    V bv[NV];
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) bv[n] = V::loadu(b + k * ldb + n * VS);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const V av(a[m * sam + k * sak]);
#pragma GCC unroll 8
      for (int n = 0; n < NV; ++n) acc[m][n] = at::vec::fmadd(av, bv[n], acc[m][n]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) acc[m][n].store(c + m * ldc + n * VS);
}

// Edge blocks: fewer rows (mr < MR) or vectors (nv < NV), resolved to a fixed-size instance.
template <typename T, int MR, int NV = kNV>
inline void micro_nv(int nv, int64_t K, const T* a, int64_t sam, int64_t sak, const T* b, int64_t ldb, T* c,
                     int64_t ldc, bool accumulate) {
  if constexpr (NV > 1) {
    if (nv < NV) return micro_nv<T, MR, NV - 1>(nv, K, a, sam, sak, b, ldb, c, ldc, accumulate);
  }
  micro_kernel<MR, NV, T>(K, a, sam, sak, b, ldb, c, ldc, accumulate);
}

template <typename T, int MR = kMR>
inline void micro_mr(int mr, int nv, int64_t K, const T* a, int64_t sam, int64_t sak, const T* b, int64_t ldb, T* c,
                     int64_t ldc, bool accumulate) {
  if constexpr (MR > 1) {
    if (mr < MR) return micro_mr<T, MR - 1>(mr, nv, K, a, sam, sak, b, ldb, c, ldc, accumulate);
  }
  micro_nv<T, MR>(nv, K, a, sam, sak, b, ldb, c, ldc, accumulate);
}

// C[M x N] (+)= A[M x K] B[K x N]; N must be a multiple of the vector width (callers pad).
// Column blocks outer, so one K x NV-vector panel of B is reused from L1 by every row block.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t sam, int64_t sak, const T* b, int64_t ldb, T* c,
          int64_t ldc, bool accumulate) {
  constexpr int64_t VS = Vec<T>::size();
  const int64_t nvec = N / VS;
  for (int64_t v0 = 0; v0 < nvec; v0 += kNV) {
    const int nv = static_cast<int>(std::min<int64_t>(kNV, nvec - v0));
    int64_t m0 = 0;
    for (; m0 + kMR <= M; m0 += kMR)
      micro_nv<T, kMR>(nv, K, a + m0 * sam, sam, sak, b + v0 * VS, ldb, c + m0 * ldc + v0 * VS, ldc, accumulate);
    if (m0 < M)
      micro_mr<T>(static_cast<int>(M - m0), nv, K, a + m0 * sam, sam, sak, b + v0 * VS, ldb, c + m0 * ldc + v0 * VS,
                  ldc, accumulate);
  }
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename T>
inline Vec<T> vexp(const Vec<T>& x) {
  // exp_u20 (float: a degree-5 polynomial, 20 ulp, exact 0 for -inf) costs about half of Sleef's
  // u10 exp; the relative error 2e-6 is far below what fp32 attention needs. fp64: Sleef's exp.
  return x.exp_u20();
}

// ------------------------------------------------------------------------------------ the mask
// Each key gets a level and each query a limit such that key j is visible to query i iff
// level[j] < limit[i] -- one int32 comparison the compiler vectorises. From the dense rank r of the
// order within its batch row (ranks keep every <, == of the original int32/int64 values exactly):
// level = r for a valid key, INT32_MAX for padding; limit = r + 1 (not strict) or r (strict).
// Without an order every rank is 0 (and strict is moot).
struct Mask {
  bool active = false;     // false: no order, no padding -- every tile is visible
  bool has_order = false;
  bool strict = false;
  std::vector<int32_t> rank;   // (B, L); 0 without an order
  std::vector<int32_t> level;  // (B, L)
  std::vector<int32_t> limit;  // (B, L)
  std::vector<uint8_t> valid;  // (B, L)
};

struct TileSummary {
  int32_t q_lo, q_hi;  // rank range of the tile's queries
  int32_t k_lo, k_hi;  // rank range of its valid keys
  int64_t n_valid;     // number of valid keys
};

Mask build_mask(const c10::optional<at::Tensor>& key_padding_mask, const c10::optional<at::Tensor>& order, bool strict,
                int64_t B, int64_t L) {
  Mask mk;
  mk.has_order = order.has_value();
  mk.active = mk.has_order || key_padding_mask.has_value();
  mk.strict = strict;
  if (!mk.active) return mk;
  const int64_t n = B * L;
  mk.rank.assign(n, 0);
  mk.valid.assign(n, 1);
  if (key_padding_mask.has_value()) {
    const at::Tensor pad = key_padding_mask->contiguous();
    const bool* p = pad.const_data_ptr<bool>();
    for (int64_t i = 0; i < n; ++i) mk.valid[i] = p[i] ? 1 : 0;
  }
  if (mk.has_order) {
    const at::Tensor o = order->to(at::kLong).contiguous();
    const int64_t* op = o.const_data_ptr<int64_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<std::pair<int64_t, int64_t>> srt(L);
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t i = 0; i < L; ++i) srt[i] = {op[b * L + i], i};
        std::sort(srt.begin(), srt.end());
        int32_t r = 0;
        for (int64_t i = 0; i < L; ++i) {
          if (i > 0 && srt[i].first != srt[i - 1].first) ++r;
          mk.rank[b * L + srt[i].second] = r;
        }
      }
    });
  }
  mk.level.resize(n);
  mk.limit.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    mk.level[i] = mk.valid[i] ? mk.rank[i] : std::numeric_limits<int32_t>::max();
    mk.limit[i] = mk.rank[i] + (strict && mk.has_order ? 0 : 1);  // without an order, strict means nothing
  }
  return mk;
}

// Summaries of every (batch, tile of `tile` positions), for classify_tile.
std::vector<TileSummary> summarize(const Mask& mk, int64_t B, int64_t L, int64_t tile) {
  const int64_t nt = (L + tile - 1) / tile;
  std::vector<TileSummary> s(B * nt);
  if (!mk.active) return s;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < nt; ++t) {
      TileSummary ts{std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min(),
                     std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min(), 0};
      for (int64_t i = t * tile; i < std::min(L, (t + 1) * tile); ++i) {
        const int32_t r = mk.rank[b * L + i];
        ts.q_lo = std::min(ts.q_lo, r);
        ts.q_hi = std::max(ts.q_hi, r);
        if (mk.valid[b * L + i]) {
          ts.k_lo = std::min(ts.k_lo, r);
          ts.k_hi = std::max(ts.k_hi, r);
          ++ts.n_valid;
        }
      }
      s[b * nt + t] = ts;
    }
  return s;
}

inline int classify(const Mask& mk, const TileSummary& qs, const TileSummary& ks, int64_t n_keys) {
  if (!mk.active) return kTileVisible;
  return classify_tile<int32_t>(qs.q_lo, qs.q_hi, ks.k_lo, ks.k_hi, ks.n_valid, n_keys, mk.has_order, mk.strict);
}

// x with the lanes whose key is hidden from the query replaced by `fill`; visible iff level < limit.
// Forward: one key (level) against a vector of queries (limits). Backward: a vector of keys (levels)
// against one query (limit). fp32 compares int32 lanes of the same width; fp64 goes lane by lane.
template <typename acc_t>
inline Vec<acc_t> mask_lanes(const Vec<acc_t>& x, const int32_t* level, bool level_is_vector, const int32_t* limit,
                             bool limit_is_vector, acc_t fill) {
  using V = Vec<acc_t>;
  using VI = Vec<int32_t>;
  if constexpr (std::is_same_v<acc_t, float> && VI::size() == V::size()) {
    const VI lev = level_is_vector ? VI::loadu(level) : VI(*level);
    const VI lim = limit_is_vector ? VI::loadu(limit) : VI(*limit);
    return V::blendv(V(fill), x, at::vec::cast<float>(lev < lim));
  } else {
    acc_t buf[V::size()];
    x.store(buf);
    for (int i = 0; i < V::size(); ++i)
      if (!(level[level_is_vector ? i : 0] < limit[limit_is_vector ? i : 0])) buf[i] = fill;
    return V::loadu(buf);
  }
}

// Strided view of a (B, L, H, D) tensor with a contiguous last dim.
template <typename scalar_t>
struct Rows {
  const scalar_t* p;
  int64_t sb, sl, sh;
  Rows(const at::Tensor& t) : p(t.const_data_ptr<scalar_t>()), sb(t.stride(0)), sl(t.stride(1)), sh(t.stride(2)) {}
  const scalar_t* row(int64_t b, int64_t l, int64_t h) const { return p + b * sb + l * sl + h * sh; }
};

// Copies n rows of D elements (row stride ld) into dst (n x Dp, acc_t), zero-padding columns D..Dp.
template <typename acc_t, typename scalar_t>
void pack_rows(const scalar_t* src, int64_t ld, int64_t n, int64_t D, int64_t Dp, acc_t* dst, acc_t mul = acc_t(1)) {
  for (int64_t r = 0; r < n; ++r) {
    const scalar_t* s = src + r * ld;
    acc_t* d = dst + r * Dp;
    for (int64_t c = 0; c < D; ++c) d[c] = acc_t(s[c]) * mul;
    std::fill(d + D, d + Dp, acc_t(0));
  }
}

// Copies n rows of D elements into the transposed tile dst (Dp x ldt, acc_t): dst[c * ldt + r].
// Columns r >= n and rows c >= D are left as they are (callers zero the tile once).
template <typename acc_t, typename scalar_t>
void pack_transposed(const scalar_t* src, int64_t ld, int64_t n, int64_t D, acc_t* dst, int64_t ldt, acc_t mul) {
  for (int64_t r = 0; r < n; ++r) {
    const scalar_t* s = src + r * ld;
    for (int64_t c = 0; c < D; ++c) dst[c * ldt + r] = acc_t(s[c]) * mul;
  }
}

// Writes n values (acc_t) as scalar_t, times mul.
template <typename acc_t, typename scalar_t>
inline void store_row(const acc_t* src, int64_t n, acc_t mul, scalar_t* dst) {
  using V = Vec<acc_t>;
  int64_t c = 0;
  const V vm(mul);
  for (; c + V::size() <= n; c += V::size()) cpu::vstore<acc_t>(dst + c, V::loadu(src + c) * vm);
  for (; c < n; ++c) dst[c] = scalar_t(src[c] * mul);
}

// ------------------------------------------------------------------------------------- forward
template <typename scalar_t>
void forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Mask& mk, double scale_d,
             at::Tensor& out, at::Tensor& lse) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  constexpr int64_t VS = V::size();
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3);
  constexpr int kCols = kBQ / VS;  // vectors per S^T row
  const int64_t Dp = round_up(D, VS);
  // Read K and V in place when they already are acc_t rows of a whole number of vectors.
  const bool direct = std::is_same_v<scalar_t, acc_t> && D == Dp;
  const acc_t scale = static_cast<acc_t>(scale_d);
  const int64_t nqt = (L + kBQ - 1) / kBQ, nkt = (L + kBK - 1) / kBK;
  const auto qsum = summarize(mk, B, L, kBQ), ksum = summarize(mk, B, L, kBK);
  const Rows<scalar_t> Q(q), K(k), Vr(v);
  scalar_t* o = out.data_ptr<scalar_t>();  // contiguous (B, L, H, D)
  acc_t* lse_p = lse.data_ptr<acc_t>();    // (B, H, L)
  const acc_t ninf = neg_inf<acc_t>();

  at::parallel_for(0, B * H * nqt, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> qt(Dp * kBQ), st(kBK * kBQ), oacc(kBQ * Dp), kpack(direct ? 0 : kBK * Dp),
        vpack(direct ? 0 : kBK * Dp), m(kBQ), l(kBQ), alpha(kBQ), off(kBQ), colmax(kBQ);
    std::vector<int32_t> qlim(kBQ);
    for (int64_t task = t0; task < t1; ++task) {
      // Query tiles in the order 0, n-1, 1, n-2, ...: under a causal-like mask late tiles cost
      // more, and parallel_for hands each thread a contiguous range of tasks.
      const int64_t z = task % nqt, qt_i = z % 2 == 0 ? z / 2 : nqt - 1 - z / 2;
      const int64_t bh = task / nqt, b = bh / H, h = bh % H;
      const int64_t i0 = qt_i * kBQ, bq = std::min(kBQ, L - i0);
      // Q^T, scaled: column i is query i0 + i; padding columns and rows stay zero.
      std::fill(qt.begin(), qt.end(), acc_t(0));
      pack_transposed<acc_t>(Q.row(b, i0, h), Q.sl, bq, D, qt.data(), kBQ, scale);
      std::fill(oacc.begin(), oacc.end(), acc_t(0));
      std::fill(m.begin(), m.end(), ninf);
      std::fill(l.begin(), l.end(), acc_t(0));
      if (mk.active)
        for (int64_t i = 0; i < kBQ; ++i)
          qlim[i] = i < bq ? mk.limit[b * L + i0 + i] : std::numeric_limits<int32_t>::min();
      for (int64_t kt = 0; kt < nkt; ++kt) {
        const int64_t j0 = kt * kBK, bk = std::min(kBK, L - j0);
        const int vis = classify(mk, qsum[b * nqt + qt_i], ksum[b * nkt + kt], bk);
        if (vis == kTileHidden) continue;
        const acc_t *kp = nullptr, *vp = nullptr;
        int64_t ldk = Dp, ldv = Dp;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          if (direct) {
            kp = K.row(b, j0, h), ldk = K.sl, vp = Vr.row(b, j0, h), ldv = Vr.sl;
          }
        }
        if (!direct) {
          pack_rows<acc_t>(K.row(b, j0, h), K.sl, bk, D, Dp, kpack.data());
          pack_rows<acc_t>(Vr.row(b, j0, h), Vr.sl, bk, D, Dp, vpack.data());
          kp = kpack.data(), ldk = Dp, vp = vpack.data(), ldv = Dp;
        }
        // S^T (bk x kBQ) = K Q^T: row j holds key j0 + j's scaled score against every query.
        gemm<acc_t>(bk, kBQ, Dp, kp, ldk, 1, qt.data(), kBQ, st.data(), kBQ, false);
        // Column max, the running max of every column vector in a register (a loop over rows
        // through memory would serialise on store-to-load forwarding). In a partial tile the
        // hidden scores become -inf first (stored back for the exp pass below).
        {
          V mx[kCols];
          for (int c = 0; c < kCols; ++c) mx[c] = V(ninf);
          if (vis == kTilePartial) {
            for (int64_t j = 0; j < bk; ++j) {
              const int32_t* lev = mk.level.data() + b * L + j0 + j;
              for (int c = 0; c < kCols; ++c) {
                acc_t* x = st.data() + j * kBQ + c * VS;
                const V y = mask_lanes<acc_t>(V::loadu(x), lev, false, qlim.data() + c * VS, true, ninf);
                y.store(x);
                mx[c] = at::vec::maximum(mx[c], y);
              }
            }
          } else {
            for (int64_t j = 0; j < bk; ++j)
              for (int c = 0; c < kCols; ++c) mx[c] = at::vec::maximum(mx[c], V::loadu(st.data() + j * kBQ + c * VS));
          }
          for (int c = 0; c < kCols; ++c) mx[c].store(colmax.data() + c * VS);
        }
        for (int64_t i = 0; i < kBQ; ++i) {
          alpha[i] = online_softmax_rescale(m[i], colmax[i], ExpE{});
          off[i] = softmax_offset(m[i]);
          l[i] *= alpha[i];
        }
        // P^T = exp(S^T - offset) in place, and the column sums.
        {
          V ov[kCols], sum[kCols];
          for (int c = 0; c < kCols; ++c) ov[c] = V::loadu(off.data() + c * VS), sum[c] = V(acc_t(0));
          for (int64_t j = 0; j < bk; ++j)
            for (int c = 0; c < kCols; ++c) {
              acc_t* x = st.data() + j * kBQ + c * VS;
              const V p = vexp(V::loadu(x) - ov[c]);
              p.store(x);
              sum[c] = sum[c] + p;
            }
          for (int c = 0; c < kCols; ++c) (V::loadu(l.data() + c * VS) + sum[c]).store(l.data() + c * VS);
        }
        for (int64_t i = 0; i < bq; ++i) {
          if (alpha[i] == acc_t(1)) continue;
          acc_t* r = oacc.data() + i * Dp;
          const V a(alpha[i]);
          for (int64_t c = 0; c < Dp; c += VS) (V::loadu(r + c) * a).store(r + c);
        }
        // O (bq x Dp) += P V: A(i, j) = P^T[j, i].
        gemm<acc_t>(bq, Dp, bk, st.data(), 1, kBQ, vp, ldv, oacc.data(), Dp, true);
      }
      for (int64_t i = 0; i < bq; ++i) {
        acc_t inv_l, row_lse;
        softmax_finish(m[i], l[i], acc_t(1), inv_l, row_lse);
        store_row<acc_t>(oacc.data() + i * Dp, D, inv_l, o + ((b * L + i0 + i) * H + h) * D);
        lse_p[(b * H + h) * L + i0 + i] = row_lse;
      }
    }
  });
}

// ------------------------------------------------------------------------------------ backward
template <typename scalar_t>
void backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
              const at::Tensor& out, const at::Tensor& lse_t, const c10::optional<at::Tensor>& grad_lse,
              const Mask& mk, double scale_d, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  constexpr int64_t VS = V::size();
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3);
  const int64_t Dp = round_up(D, VS);
  const bool direct = std::is_same_v<scalar_t, acc_t> && D == Dp;
  const acc_t scale = static_cast<acc_t>(scale_d);
  const int64_t nqt = (L + kBQ - 1) / kBQ, nkt = (L + kBK - 1) / kBK;
  const auto qsum = summarize(mk, B, L, kBQ), ksum = summarize(mk, B, L, kBK);
  const Rows<scalar_t> Q(q), K(k), Vr(v), dO(grad_out), O(out);
  const at::Tensor lse_c = lse_t.contiguous();
  const acc_t* lse = lse_c.const_data_ptr<acc_t>();

  // delta_i = sum_d dO_id O_id - dlse_i, per (b, h, i).
  std::vector<acc_t> delta(B * H * L);
  {
    at::Tensor glse_c;
    const acc_t* glse = nullptr;
    if (grad_lse.has_value()) {
      glse_c = grad_lse->contiguous();
      glse = glse_c.const_data_ptr<acc_t>();
    }
    at::parallel_for(0, B * H * L, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t i = r % L, bh = r / L, b = bh / H, h = bh % H;
        const scalar_t *g = dO.row(b, i, h), *y = O.row(b, i, h);
        acc_t s = 0;
        for (int64_t c = 0; c < D; ++c) s += acc_t(g[c]) * acc_t(y[c]);
        delta[r] = s - (glse ? glse[r] : acc_t(0));
      }
    });
  }

  // Tasks: (b, h, chunk of key tiles). With few (b, h) pairs the key tiles are split so that every
  // thread has work; each task accumulates dQ into its own buffer (chunks x L x Dp per (b, h)).
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = std::clamp<int64_t>((2 * threads + B * H - 1) / (B * H), 1, nkt);
  // With one chunk per (b, h) and fp32/fp64 rows of whole vectors, dQ accumulates in place in the
  // (zeroed) output; otherwise in fp32 (fp64) partial buffers that are summed afterwards.
  const bool dq_in_place = chunks == 1 && direct;
  std::vector<acc_t> dq_part(dq_in_place ? 0 : B * H * chunks * L * Dp);
  if (dq_in_place) dq.zero_();
  scalar_t* dk_p = dk.data_ptr<scalar_t>();  // contiguous (B, L, H, D)
  scalar_t* dv_p = dv.data_ptr<scalar_t>();

  at::parallel_for(0, B * H * chunks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> kt(Dp * kBK), vt(Dp * kBK), kpack(direct ? 0 : kBK * Dp), qpack(direct ? 0 : kBQ * Dp),
        dopack(direct ? 0 : kBQ * Dp), s(kBQ * kBK), ds(kBQ * kBK), dk_acc(kBK * Dp), dv_acc(kBK * Dp);
    std::vector<int32_t> lev(kBK);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t chunk = task % chunks, bh = task / chunks, b = bh / H, h = bh % H;
      acc_t* dqp;  // row i of this task's dQ accumulator at dqp + i * ldq_acc
      int64_t ldq_acc = Dp;
      if (dq_in_place) {
        dqp = reinterpret_cast<acc_t*>(dq.data_ptr<scalar_t>()) + (b * L * H + h) * D;
        ldq_acc = H * D;
      } else {
        dqp = dq_part.data() + (bh * chunks + chunk) * L * Dp;
        std::fill(dqp, dqp + L * Dp, acc_t(0));
      }
      // Key tiles chunk, chunk + chunks, ...: interleaved, as early keys may cost more (causal).
      for (int64_t kti = chunk; kti < nkt; kti += chunks) {
        const int64_t j0 = kti * kBK, bk = std::min(kBK, L - j0);
        // K^T (scaled) and V^T, key columns; padding columns / rows stay zero.
        std::fill(kt.begin(), kt.end(), acc_t(0));
        std::fill(vt.begin(), vt.end(), acc_t(0));
        pack_transposed<acc_t>(K.row(b, j0, h), K.sl, bk, D, kt.data(), kBK, scale);
        pack_transposed<acc_t>(Vr.row(b, j0, h), Vr.sl, bk, D, vt.data(), kBK, acc_t(1));
        const acc_t* kp = nullptr;
        int64_t ldk = Dp;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          if (direct) kp = K.row(b, j0, h), ldk = K.sl;
        }
        if (!direct) {
          pack_rows<acc_t>(K.row(b, j0, h), K.sl, bk, D, Dp, kpack.data());
          kp = kpack.data();
        }
        std::fill(dk_acc.begin(), dk_acc.end(), acc_t(0));
        std::fill(dv_acc.begin(), dv_acc.end(), acc_t(0));
        // Levels of the tile's keys, slots past L hidden (so whole vectors can be compared).
        if (mk.active)
          for (int64_t j = 0; j < kBK; ++j)
            lev[j] = j < bk ? mk.level[b * L + j0 + j] : std::numeric_limits<int32_t>::max();
        for (int64_t qti = 0; qti < nqt; ++qti) {
          const int64_t i0 = qti * kBQ, bq = std::min(kBQ, L - i0);
          const int vis = classify(mk, qsum[b * nqt + qti], ksum[b * nkt + kti], bk);
          if (vis == kTileHidden) continue;
          const acc_t *qp = nullptr, *dop = nullptr;
          int64_t ldq = Dp, ldo = Dp;
          if constexpr (std::is_same_v<scalar_t, acc_t>) {
            if (direct) qp = Q.row(b, i0, h), ldq = Q.sl, dop = dO.row(b, i0, h), ldo = dO.sl;
          }
          if (!direct) {
            pack_rows<acc_t>(Q.row(b, i0, h), Q.sl, bq, D, Dp, qpack.data());
            pack_rows<acc_t>(dO.row(b, i0, h), dO.sl, bq, D, Dp, dopack.data());
            qp = qpack.data(), dop = dopack.data();
          }
          // S = Q K^T (scaled), dP = dO V^T: bq x kBK (columns >= bk are never read below).
          gemm<acc_t>(bq, kBK, Dp, qp, ldq, 1, kt.data(), kBK, s.data(), kBK, false);
          gemm<acc_t>(bq, kBK, Dp, dop, ldo, 1, vt.data(), kBK, ds.data(), kBK, false);
          for (int64_t i = 0; i < bq; ++i) {
            const int64_t r = (b * H + h) * L + i0 + i;
            const V offv(backward_offset(lse[r])), dl(delta[r]), sc(scale);
            acc_t* srow = s.data() + i * kBK;
            acc_t* drow = ds.data() + i * kBK;
            // P = exp(S - lse), hidden keys 0; dS = P (dP - delta), times the scale: the gradient
            // w.r.t. the unscaled q k^T.
            const int32_t* lim = vis == kTilePartial ? mk.limit.data() + b * L + i0 + i : nullptr;
            for (int64_t c = 0; c < kBK; c += VS) {
              V p = vexp(V::loadu(srow + c) - offv);
              if (lim) p = mask_lanes<acc_t>(p, lev.data() + c, true, lim, false, acc_t(0));
              p.store(srow + c);
              (softmax_grad(p, V::loadu(drow + c), dl) * sc).store(drow + c);
            }
          }
          // dV += P^T dO, dK += dS^T Q: A(j, i) = P[i, j].
          gemm<acc_t>(bk, Dp, bq, s.data(), 1, kBK, dop, ldo, dv_acc.data(), Dp, true);
          gemm<acc_t>(bk, Dp, bq, ds.data(), 1, kBK, qp, ldq, dk_acc.data(), Dp, true);
          // dQ += dS K.
          gemm<acc_t>(bq, Dp, bk, ds.data(), kBK, 1, kp, ldk, dqp + i0 * ldq_acc, ldq_acc, true);
        }
        for (int64_t j = 0; j < bk; ++j) {
          const int64_t off = ((b * L + j0 + j) * H + h) * D;
          store_row<acc_t>(dk_acc.data() + j * Dp, D, acc_t(1), dk_p + off);
          store_row<acc_t>(dv_acc.data() + j * Dp, D, acc_t(1), dv_p + off);
        }
      }
    }
  });

  if (dq_in_place) return;
  // dQ = sum over chunks.
  scalar_t* dq_p = dq.data_ptr<scalar_t>();
  at::parallel_for(0, B * H * L, 64, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> row(Dp);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r % L, bh = r / L, b = bh / H, h = bh % H;
      const acc_t* src = dq_part.data() + bh * chunks * L * Dp + i * Dp;
      std::copy(src, src + Dp, row.begin());
      for (int64_t c = 1; c < chunks; ++c)
        for (int64_t d = 0; d < Dp; ++d) row[d] += src[c * L * Dp + d];
      store_row<acc_t>(row.data(), D, acc_t(1), dq_p + ((b * L + i) * H + h) * D);
    }
  });
}

// ---------------------------------------------------------------------------------- entry points
constexpr const char* kFwd = "masked_attention";
constexpr const char* kBwd = "masked_attention_bwd";

std::tuple<at::Tensor, at::Tensor> fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const c10::optional<at::Tensor>& key_padding_mask,
                                           const c10::optional<at::Tensor>& order, bool strict, double scale) {
  check_fwd_args(q, k, v, key_padding_mask, order, scale, kFwd);
  check_device_type(q, c10::DeviceType::CPU, kFwd, "q");
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({B, H, L}, q.options().dtype(acc_dtype(q.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  const Mask mk = build_mask(key_padding_mask, order, strict, B, L);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "masked_attention_fwd_cpu",
                                  [&] { forward<scalar_t>(q, k, v, mk, scale, out, lse); });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd_cpu(const at::Tensor& grad_out, const at::Tensor& q,
                                                       const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                                       const at::Tensor& lse, const c10::optional<at::Tensor>& grad_lse,
                                                       const c10::optional<at::Tensor>& key_padding_mask,
                                                       const c10::optional<at::Tensor>& order, bool strict,
                                                       double scale) {
  check_bwd_args(grad_out, q, k, v, out, lse, grad_lse, key_padding_mask, order, scale, kBwd);
  check_device_type(q, c10::DeviceType::CPU, kBwd, "q");
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options());
  if (q.numel() == 0) return {dq, dk, dv};
  const Mask mk = build_mask(key_padding_mask, order, strict, q.size(0), q.size(1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "masked_attention_bwd_cpu", [&] {
    backward<scalar_t>(grad_out, q, k, v, out, lse, grad_lse, mk, scale, dq, dk, dv);
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, CPU, m) {
  m.impl("masked_attention_fwd", &fwd_cpu);
  m.impl("masked_attention_bwd", &bwd_cpu);
}

}  // namespace radd_fast::attention
