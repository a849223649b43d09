// Load/store helpers that move any storage dtype through Vectorized<acc_t> registers, so one CPU
// loop body serves fp64 (acc double), fp32 (acc float) and bf16/fp16 (acc float, converted on load).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace radd_fast::cpu {

template <typename acc_t>
using Vec = at::vec::Vectorized<acc_t>;

template <typename acc_t, typename scalar_t>
inline Vec<acc_t> vload(const scalar_t* p) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    return Vec<acc_t>::loadu(p);
  } else {
    static_assert(std::is_same_v<acc_t, float>, "reduced types accumulate in float");
    Vec<float> out;
    at::vec::load_to_float<scalar_t>(p, out);
    return out;
  }
}

template <typename acc_t, typename scalar_t>
inline void vstore(scalar_t* p, const Vec<acc_t>& v) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    v.store(p);
  } else {
    // convert_from_float packs two float vectors into one reduced vector; store only the first half.
    at::vec::convert_from_float<scalar_t>(v, v).store(p, Vec<float>::size());
  }
}

}  // namespace radd_fast::cpu
