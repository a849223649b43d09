// CPU kernel of radd_fast::reveal_schedule (definitions in schedule.h). Sequences in parallel for
// the draws and event ranks; one sort of (event, rank, position) keys orders the rows.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/philox.h"
#include "reveal_schedule/schedule.h"

namespace radd_fast::schedule {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> reveal_schedule_cpu(
    const at::Tensor& masked, const at::Tensor& cdf, int64_t seed, int64_t offset) {
  const char* op = "reveal_schedule";
  check_args(masked, cdf, offset, op);
  check_device_type(masked, c10::DeviceType::CPU, op, "masked");
  const int64_t B = masked.size(0), L = masked.size(1), R = num_rounds(cdf.size(0), L);
  const int32_t n = int32_t(cdf.size(0));
  const int64_t W = (int64_t(n) + 31) / 32;  // bitmap words per sequence
  auto i32 = masked.options().dtype(at::kInt), i64 = masked.options().dtype(at::kLong);
  at::Tensor step = at::empty({B, L}, i32), num_events = at::empty({B}, i32);
  at::Tensor row_index = at::empty({B * L}, i64), offsets = at::empty({R + 1}, i64);
  std::vector<int32_t> event(B * L);
  const bool* m = masked.const_data_ptr<bool>();
  const double* c = cdf.const_data_ptr<double>();
  int32_t* st = step.data_ptr<int32_t>();
  int32_t* ne = num_events.data_ptr<int32_t>();

  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<uint32_t> bitmap(W), prefix(W);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(bitmap.begin(), bitmap.end(), 0u);
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = b * L + l;
        if (!m[i]) {
          st[i] = -1;
          continue;
        }
        const auto w = philox::block(uint64_t(seed), uint64_t(offset), uint64_t(i));
        const int32_t s = draw_step(c, n, philox::uniform53(w.w[0], w.w[1]));
        st[i] = s;
        bitmap[s >> 5] |= uint32_t(1) << (s & 31);
      }
      uint32_t total = 0;
      for (int64_t k = 0; k < W; ++k) {
        prefix[k] = total;
        total += popcount32(bitmap[k]);
      }
      ne[b] = int32_t(total);
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = b * L + l;
        event[i] = st[i] < 0 ? -1 : event_of_step(bitmap.data(), prefix.data(), st[i]);
      }
    }
  });

  // Stable descending sort, as on CUDA: ties keep the batch order.
  at::Tensor perm = std::get<1>(at::sort(num_events, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const int64_t* p = perm.const_data_ptr<int64_t>();
  std::vector<int64_t> rank(B);
  for (int64_t i = 0; i < B; ++i) rank[p[i]] = i;
  std::vector<int64_t> keys(B * L);
  at::parallel_for(0, B * L, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      keys[i] = event[i] < 0 ? kUnmaskedKey : row_key(event[i], rank[i / L], i % L, B, L);
  });
  std::sort(keys.begin(), keys.end());
  int64_t* ri = row_index.data_ptr<int64_t>();
  int64_t* off = offsets.data_ptr<int64_t>();
  // off[e] = index of the first key of event >= e; the sentinel keys count as event R.
  int64_t prev = -1;
  for (int64_t j = 0; j <= B * L; ++j) {
    const bool masked_row = j < B * L && keys[j] != kUnmaskedKey;
    const int64_t e = masked_row ? keys[j] / (B * L) : R;
    if (j < B * L) ri[j] = masked_row ? keys[j] % (B * L) : -1;
    for (int64_t k = prev + 1; k <= e; ++k) off[k] = j;
    prev = std::max(prev, e);
  }
  return {step, num_events, perm, row_index, offsets};
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, CPU, m) { m.impl("reveal_schedule", &reveal_schedule_cpu); }

}  // namespace radd_fast::schedule
