// The reveal schedule of the cache-aware sampler, drawn up front for every masked position.
//
// masked (B, L) bool; step_cdf (n,) float64 with step_cdf[k] = P(reveal step <= k), nondecreasing,
// step_cdf[n-1] = 1 (radd_fast.sampling.reveal_step_cdf builds it from the time grid; for the
// log-linear schedule step_cdf[k] = 1 - t_{k+1}, since P(reveal at step k) = t_k - t_{k+1}).
// Outputs (all int, on masked's device):
//   step (B, L) int32      reveal step of each masked position, -1 where not masked;
//   num_events (B,) int32  distinct reveal steps of each sequence = its network evaluations;
//   perm (B,) int64        sequences by num_events, descending (stable), so round r's active
//                          sequences are perm[:A_r], A_r = #{b : num_events[b] > r};
//   row_index (B*L,) int64 the masked positions as flat indices i * L + l into the batch sorted by
//                          perm, ordered by (round, i, l); -1 after the last masked position;
//   round_offsets (R + 1,) int64, R = min(n, L): round r's rows are row_index[off[r]:off[r+1]].
// A sequence's r-th event (its r-th distinct reveal step, in time order) is revealed in round r.
#pragma once

#include <cstdint>
#include <limits>
#include <tuple>

#include "common/checks.h"
#include "common/macros.h"

namespace radd_fast::schedule {

// Reveal step of a uniform u in [0, 1): the number of cdf entries <= u, capped at n - 1 (the last
// step reveals everything left). P(step = k) = cdf[k] - cdf[k-1].
RADD_HD int32_t draw_step(const double* cdf, int32_t n, double u) {
  int32_t lo = 0, hi = n - 1;  // answer in [lo, hi]
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    if (cdf[mid] <= u) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

RADD_HD int popcount32(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#else
  return __builtin_popcount(x);
#endif
}

// Rank of step s among the set steps of a bitmap whose words have exclusive popcount prefix `prefix`.
RADD_HD int32_t event_of_step(const uint32_t* bitmap, const uint32_t* prefix, int32_t s) {
  const uint32_t below = bitmap[s >> 5] & ((uint32_t(1) << (s & 31)) - 1u);
  return int32_t(prefix[s >> 5]) + popcount32(below);
}

// Sort key of a masked position: (event, rank of its sequence in perm, position), mixed radix.
RADD_HD int64_t row_key(int32_t event, int64_t rank, int64_t l, int64_t B, int64_t L) {
  return (int64_t(event) * B + rank) * L + l;
}
constexpr int64_t kUnmaskedKey = std::numeric_limits<int64_t>::max();

inline int64_t num_rounds(int64_t n, int64_t L) { return n < L ? n : L; }

inline void check_args(const at::Tensor& masked, const at::Tensor& cdf, int64_t offset, const char* op) {
  check_defined(masked, op, "masked");
  check_defined(cdf, op, "step_cdf");
  check_dim(masked, 2, op, "masked", "(batch, length)");
  check_dtype(masked, {at::kBool}, op, "masked");
  check_contiguous(masked, op, "masked");
  check_dim(cdf, 1, op, "step_cdf", "(steps,)");
  check_dtype(cdf, {at::kDouble}, op, "step_cdf");
  check_contiguous(cdf, op, "step_cdf");
  check_same_device(masked, cdf, op, "masked", "step_cdf");
  const int64_t B = masked.size(0), L = masked.size(1), n = cdf.size(0);
  TORCH_CHECK_VALUE(
      n >= 1 && n <= std::numeric_limits<int32_t>::max(),
      msg("radd_fast.", op, ": 'step_cdf' must have between 1 and 2^31 - 1 entries (one per step), got ", n));
  // Keys (event, rank, position) must fit in int64 with room to spare.
  const double keys = double(num_rounds(n, L) + 1) * double(B) * double(L);
  TORCH_CHECK_VALUE(keys < 0x1p62, msg("radd_fast.", op, ": batch ", B, " x length ", L,
                                       " is too large for the schedule's int64 sort keys"));
  TORCH_CHECK_VALUE(offset >= 0, msg("radd_fast.", op, ": 'offset' must be >= 0, got ", offset));
}

// CUDA launcher (cuda.cu), called only by the entry point in cuda_api.cpp (host compiler) after
// check_args, on the inputs' device.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cuda_reveal_schedule(const at::Tensor& masked,
                                                                                           const at::Tensor& cdf,
                                                                                           int64_t seed,
                                                                                           int64_t offset);

}  // namespace radd_fast::schedule
