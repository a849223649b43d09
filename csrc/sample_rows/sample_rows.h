// Sampling of selected rows from hidden states: the output layer for those rows only, then
// temperature, top-k, top-p and an exponential race, all on the device.
//
// sample_rows(hidden (N, H), weight (C, H), bias (C,)?, num_classes V <= C, temperature, top_k,
//             top_p, greedy, seed, offset) -> (tokens (N,) int64, log_prob (N,))
// filter_logits(logits (N, V), temperature, top_k, top_p) -> (N, V): logits / temperature where
//             kept, -inf elsewhere (radd_fast.reference.filter_logits, on the kernels' code path)
//
// Per row, with x = logits / temperature (logits = hidden @ weight[:V].T + bias[:V]):
//   * top-k (0 < k < V): keep the tokens whose logit is >= the k-th largest (ties kept);
//   * top-p (p < 1), on the tokens top-k kept: keep token j (by decreasing probability) iff the
//     probability of the tokens before it is < p, i.e. keep every logit >= tau, tau the largest
//     logit whose upper tail holds >= p of the mass (ties at tau are all kept: the reference keeps
//     them in sort order, so the two differ only when a tie straddles the cut);
//   * token = argmax over kept v of x_v - log(E_v), E_v ~ Exp(1) i.i.d. (exponential race: the
//     argmax is distributed as softmax(x) restricted to the kept set); greedy: argmax of x;
//   * log_prob = log softmax(x restricted to the kept set) at the token (the confidence sampler's
//     score).
// Both thresholds are found by radix select over order-preserving integer keys of the logits, 8 bits
// per pass, with histograms of counts (top-k) and of fixed-point masses (top-p): integer sums do not
// depend on summation order, so CPU and CUDA (and runs) agree exactly.
//
// Noise: E_v = -log1p(-u_v), u_v a uniform float correctly rounded from 64 random bits (Philox
// stream `offset`, block row * ceil(V / 4) + v / 4, word v % 4, and the same block of the extra-bits
// stream). A float32 u is exact to its 24-bit precision however small it is, so the small-E tail,
// where unlikely tokens win, is not truncated: the textbook float32 recipe u = k * 2^-24 cuts E at
// 6e-8 and misdraws about V * 6e-8 = 3e-3 of all draws at V = 50,257; here the cut is 2^-64. The
// extra 32 bits are only drawn when the first 32 are below 2^24 (probability 2^-8 per token),
// because above that a float cannot hold them anyway. float64 rows always use all 64 bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>

#include "common/checks.h"
#include "common/macros.h"
#include "common/philox.h"

namespace radd_fast::sample_rows {

template <typename T>
struct KeyType;
template <>
struct KeyType<float> {
  using type = uint32_t;
};
template <>
struct KeyType<double> {
  using type = uint64_t;
};

// Unsigned integer keys in the order of the floats (-0 is mapped to +0 so they tie, as they compare).
RADD_HD uint32_t order_key(float x) {
  x = x + 0.0f;
  uint32_t u;
  memcpy(&u, &x, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
RADD_HD uint64_t order_key(double x) {
  x = x + 0.0;
  uint64_t u;
  memcpy(&u, &x, sizeof(u));
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// Radix select state: keys whose bits under `mask` equal `prefix` are still candidates.
template <typename key_t>
struct RadixState {
  key_t prefix = 0, mask = 0;
  uint64_t above = 0;  // count or fixed-point mass of the keys above the candidates
};

constexpr int kRadixBits = 8, kBins = 1 << kRadixBits;

// Host version of the bin choice (CUDA uses a warp scan with the same result): the highest bin b
// with above + sum(hist[b:]) >= need. Returns b and sets `above_out` to above + sum(hist[b+1:]).
inline int select_bin_host(const uint64_t* hist, uint64_t above, double need, uint64_t& above_out) {
  uint64_t cum = above;
  for (int b = kBins - 1; b >= 0; --b) {
    if (double(cum + hist[b]) >= need) {
      above_out = cum;
      return b;
    }
    cum += hist[b];
  }
  above_out = cum - hist[0];  // unreachable for consistent inputs (need <= total); keep bin 0
  return 0;
}

// Fixed-point mass of a token: exp((logit - max) / T) in [0, 1] scaled by 2^shift; shift is chosen
// so that V such masses sum below 2^63 (mass_shift). Rounded to nearest, as on CUDA.
inline int mass_shift(int64_t V) {
  int bits = 0;
  while ((int64_t(1) << bits) <= V) ++bits;  // bit length of V
  return 62 - bits;
}

// u in (0, 1) from the 64 random bits hi:lo, rounded to the precision of acc_t and kept below 1.
RADD_HD float uniform_open(uint32_t hi, uint32_t lo, float*) {
#if defined(__CUDA_ARCH__)
  const float f = __ull2float_rn((uint64_t(hi) << 32 | lo) | 1u);
#else
  const float f = static_cast<float>((uint64_t(hi) << 32 | lo) | 1u);
#endif
  const float u = f * 0x1p-64f;
  return u < 1.0f - 0x1p-24f ? u : 1.0f - 0x1p-24f;
}
RADD_HD double uniform_open(uint32_t hi, uint32_t lo, double*) {
#if defined(__CUDA_ARCH__)
  const double f = __ull2double_rn((uint64_t(hi) << 32 | lo) | 1u);
#else
  const double f = static_cast<double>((uint64_t(hi) << 32 | lo) | 1u);
#endif
  const double u = f * 0x1p-64;
  return u < 1.0 - 0x1p-53 ? u : 1.0 - 0x1p-53;
}

// Whether a token whose first word is `hi` needs the extra-bits word (see the header comment).
template <typename acc_t>
RADD_HD bool needs_extra_bits(uint32_t hi) {
  return sizeof(acc_t) == 8 || hi < (uint32_t(1) << 24);
}

// The 4 first words and, when any of them needs it, the 4 extra words of the tokens 4g .. 4g + 3.
template <typename acc_t>
RADD_HD void noise_words(uint64_t seed, uint64_t offset, uint64_t block, uint32_t hi[4], uint32_t lo[4]) {
  const auto a = philox::block(seed, offset, block);
  bool extra = false;
  for (int j = 0; j < 4; ++j) {
    hi[j] = a.w[j];
    lo[j] = 0;
    extra = extra || needs_extra_bits<acc_t>(a.w[j]);
  }
  if (extra) {
    const auto b = philox::block(seed, offset | philox::kExtraBitsStream, block);
    for (int j = 0; j < 4; ++j)
      if (needs_extra_bits<acc_t>(hi[j])) lo[j] = b.w[j];
  }
}

// The race adds -log(E), E = -log1p(-u), to each kept x.
RADD_HD float noise_from_u(float u) { return -logf(-log1pf(-u)); }
RADD_HD double noise_from_u(double u) { return -log(-log1p(-u)); }

struct Params {
  double temperature;
  int64_t top_k;  // 0 or >= V: off
  double top_p;   // >= 1: off
  bool greedy;
  uint64_t seed, offset;
};

inline void check_filter_args(double temperature, int64_t top_k, double top_p, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0,
                    msg("radd_fast.", op,
                        ": 'temperature' must be a finite number > 0 (use greedy=True for argmax), got ", temperature));
  TORCH_CHECK_VALUE(top_k >= 0, msg("radd_fast.", op, ": 'top_k' must be >= 0 (0 = off), got ", top_k));
  TORCH_CHECK_VALUE(top_p > 0 && top_p <= 1,
                    msg("radd_fast.", op, ": 'top_p' must be in (0, 1] (1 = off), got ", top_p));
}

inline void check_sample_rows_args(const at::Tensor& hidden, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, int64_t num_classes, double temperature,
                                   int64_t top_k, double top_p, int64_t offset, const char* op) {
  check_defined(hidden, op, "hidden");
  check_defined(weight, op, "weight");
  check_dim(hidden, 2, op, "hidden", "(rows, hidden_size)");
  check_dim(weight, 2, op, "weight", "(classes, hidden_size)");
  check_dtype(hidden, {at::kFloat, at::kDouble}, op, "hidden");
  check_same_dtype(hidden, weight, op, "hidden", "weight");
  check_same_device(hidden, weight, op, "hidden", "weight");
  check_contiguous(hidden, op, "hidden");
  check_contiguous(weight, op, "weight");
  TORCH_CHECK_VALUE(weight.size(1) == hidden.size(1),
                    msg("radd_fast.", op, ": 'weight' must have shape (classes, ", hidden.size(1),
                        ") for hidden of shape ", hidden.sizes(), ", got ", weight.sizes()));
  TORCH_CHECK_VALUE(num_classes >= 1 && num_classes <= weight.size(0),
                    msg("radd_fast.", op, ": 'num_classes' must be in [1, ", weight.size(0),
                        "] (rows of 'weight'), got ", num_classes));
  if (bias.has_value() && bias->defined()) {
    check_dim(*bias, 1, op, "bias", "(classes,)");
    check_same_dtype(hidden, *bias, op, "hidden", "bias");
    check_same_device(hidden, *bias, op, "hidden", "bias");
    check_contiguous(*bias, op, "bias");
    TORCH_CHECK_VALUE(bias->size(0) == weight.size(0),
                      msg("radd_fast.", op, ": 'bias' must have shape (", weight.size(0), ",) to match 'weight', got ",
                          bias->sizes()));
  }
  check_filter_args(temperature, top_k, top_p, op);
  TORCH_CHECK_VALUE(offset >= 0, msg("radd_fast.", op, ": 'offset' must be >= 0, got ", offset));
}

inline void check_filter_logits_args(const at::Tensor& logits, double temperature, int64_t top_k, double top_p,
                                     const char* op) {
  check_defined(logits, op, "logits");
  check_dim(logits, 2, op, "logits", "(rows, classes)");
  check_dtype(logits, {at::kFloat, at::kDouble}, op, "logits");
  check_contiguous(logits, op, "logits");
  check_filter_args(temperature, top_k, top_p, op);
}

// Rows of logits per chunk of the head matmul: bounds its scratch to `elements` logits.
inline int64_t chunk_rows(int64_t rows, int64_t V, int64_t elements) {
  const int64_t c = elements / (V > 0 ? V : 1);
  return c < 1 ? 1 : (c < rows ? c : rows);
}

// CUDA launchers (cuda.cu), called only by the entry points in cuda_api.cpp (host compiler) after
// the checks above, on the inputs' device and with autocast held off.
std::tuple<at::Tensor, at::Tensor> cuda_sample_rows(const at::Tensor& hidden, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias, int64_t num_classes,
                                                    double temperature, int64_t top_k, double top_p, bool greedy,
                                                    int64_t seed, int64_t offset);
at::Tensor cuda_filter_logits(const at::Tensor& logits, double temperature, int64_t top_k, double top_p);

}  // namespace radd_fast::sample_rows
