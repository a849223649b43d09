// Rotary position embedding applied to the q and k slices of a packed qkv tensor.
//
// qkv: (B, L, 3, H, D), the layout the model's fused qkv Linear produces; index 0 of dim 2 is q,
// 1 is k, 2 is v (left untouched). NeoX "rotate half" convention: element d < D/2 pairs with d + D/2
// and the pair is rotated by angle pos * inv_freq[d], inv_freq[d] = base^(-2d/D). The cos/sin
// tables, (>= L, D/2), are precomputed in fp32 (fp64 for fp64 qkv) by radd_fast.rotary_tables;
// the rotation is computed in that precision and rounded once to the storage dtype.
// inverse=true rotates by -angle: the transpose of the forward map, i.e. its backward.
#pragma once

#include "common/checks.h"
#include "common/macros.h"

namespace radd_fast::rotary {

// One rotate-half pair (x1 at d, x2 at d + D/2) rotated by the angle whose cos/sin are c/s.
template <typename acc_t>
RADD_HD void rotate_pair(acc_t x1, acc_t x2, acc_t c, acc_t s, acc_t& y1, acc_t& y2) {
  y1 = x1 * c - x2 * s;
  y2 = x2 * c + x1 * s;
}

// Dtype of the cos/sin tables (and of the arithmetic) for a given qkv dtype.
inline at::ScalarType table_dtype(at::ScalarType qkv) {
  return qkv == at::kDouble ? at::kDouble : at::kFloat;
}

// Checks shared by the CPU and CUDA kernels; `out`, when given, is the out-of-place result.
inline void check_args(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, const char* op) {
  check_defined(qkv, op, "qkv");
  check_defined(cos, op, "cos");
  check_defined(sin, op, "sin");
  check_dim(qkv, 5, op, "qkv", "(B, L, 3, heads, head_dim)");
  TORCH_CHECK_VALUE(qkv.size(2) == 3,
                    msg("radd_fast.", op, ": 'qkv' must have shape (B, L, 3, heads, head_dim) with 3 = (q, k, v), got ",
                        qkv.sizes()));
  const int64_t D = qkv.size(4);
  TORCH_CHECK_VALUE(D > 0 && D % 2 == 0, msg("radd_fast.", op, ": 'qkv' head_dim (last dim) must be even, got ", D));
  check_dtype(qkv, {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}, op, "qkv");
  check_contiguous(qkv, op, "qkv");
  const auto tdt = table_dtype(qkv.scalar_type());
  for (const auto* t : {&cos, &sin}) {
    const char* name = t == &cos ? "cos" : "sin";
    check_same_device(qkv, *t, op, "qkv", name);
    check_dim(*t, 2, op, name, "(seq_len >= L, head_dim / 2)");
    TORCH_CHECK_VALUE(t->size(0) >= qkv.size(1) && t->size(1) == D / 2,
                      msg("radd_fast.", op, ": '", name, "' must have shape (seq_len >= ", qkv.size(1), ", ", D / 2,
                          ") for qkv of shape ", qkv.sizes(), ", got ", t->sizes()));
    TORCH_CHECK_TYPE(
        t->scalar_type() == tdt,
        msg("radd_fast.", op, ": '", name, "' must be ", dtype_name(tdt), " for ", dtype_name(qkv.scalar_type()),
            " qkv (tables are kept in fp32, fp64 for fp64 inputs), got ", dtype_name(t->scalar_type())));
    check_contiguous(*t, op, name);
  }
}

// CUDA launcher (cuda.cu), called only by the entry points in cuda_api.cpp (host compiler) after
// check_args, on the inputs' device: out = rotary(in) (out may be in, for the in-place op).
void cuda_launch(const at::Tensor& in, const at::Tensor& out, const at::Tensor& cos, const at::Tensor& sin,
                 bool inverse);

}  // namespace radd_fast::rotary
