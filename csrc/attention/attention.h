// Masked attention: host-side argument checks and the tile-level math shared by the CPU kernel
// (csrc/attention/cpu.cpp) and the CUDA kernels (csrc/attention/kernels.cuh).
//
// q, k, v: (B, L, heads, head_dim), last dim contiguous (any strides elsewhere, so the q/k/v views
// of a packed (B, L, 3, heads, head_dim) qkv need no copy). Query i of batch b may attend key j iff
//   key_padding_mask[b, j] (when given)  and  (no order, or order[b, j] < order[b, i], or
//   order[b, j] == order[b, i] when not strict).
// out = softmax(scale * q k^T + mask) v per (b, head), fp32 accumulation (fp64 for fp64 inputs); a
// query with no allowed key gets zeros and logsumexp -inf. lse (B, heads, L) is the natural-log
// logsumexp of the scaled scores, in the accumulation dtype: the backward recomputes P from it.
//
// Everything marked RADD_HD below runs in both the CPU and the CUDA kernels, so the CPU tests
// exercise the code the GPU runs: the tile classification that lets a kernel skip a whole tile, the
// per-element mask, the online-softmax rescaling, the final normalisation, and the backward's
// dS = P * (dP - delta).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <tuple>

#include "common/checks.h"
#include "common/macros.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace radd_fast::attention {

// ------------------------------------------------------------------------------ shared tile math
// Whether a (non-padding) key with order `ok` is visible to a query with order `oq`.
template <typename T>
RADD_HD bool order_allows(T ok, T oq, bool strict) {
  return strict ? ok < oq : ok <= oq;
}

enum TileVisibility : int {
  kTileHidden = 0,   // no query of the tile sees any key of the tile: skip it entirely
  kTileVisible = 1,  // every query sees every key: no per-element mask needed
  kTilePartial = 2,  // mixed: mask element by element
};

// Classifies a (query tile, key tile) pair from summaries of the two tiles:
//   q_lo, q_hi   min / max order over the query tile's rows;
//   k_lo, k_hi   min / max order over the key tile's valid (non-padding, in-range) keys;
//   n_valid      how many of the key tile's `n` slots are valid keys (a tile that runs past L has
//                fewer valid keys than slots, so it is never kTileVisible).
// order_allows is increasing in oq and decreasing in ok, so some pair is visible iff the earliest
// key is visible to the latest query, and all pairs are iff the latest key is visible to the earliest
// query. Without an order only padding matters.
template <typename T>
RADD_HD int classify_tile(T q_lo, T q_hi, T k_lo, T k_hi, int64_t n_valid, int64_t n, bool has_order,
                          bool strict) {
  if (n_valid <= 0) return kTileHidden;
  if (has_order) {
    if (!order_allows(k_lo, q_hi, strict)) return kTileHidden;
    if (!order_allows(k_hi, q_lo, strict)) return kTilePartial;
  }
  return n_valid == n ? kTileVisible : kTilePartial;
}

// exp / log of the accumulation type (float or double) on host and device.
RADD_HD float exp_e(float x) { return expf(x); }
RADD_HD double exp_e(double x) { return exp(x); }
RADD_HD float exp_2(float x) { return exp2f(x); }
RADD_HD double exp_2(double x) { return exp2(x); }
RADD_HD float log_e(float x) { return logf(x); }
RADD_HD double log_e(double x) { return log(x); }

// Exponential of the score domain a kernel works in: natural (the CPU kernel) or base 2 (the CUDA
// kernels, which fold log2(e) into the scale so that each probability costs one ex2 instruction).
struct ExpE {
  template <typename T>
  RADD_HD T operator()(T x) const { return exp_e(x); }
};
struct Exp2 {
  template <typename T>
  RADD_HD T operator()(T x) const { return exp_2(x); }
};

template <typename T>
RADD_HD T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// Online softmax, one query row. State: m = running max of the row's visible scores (-inf while
// none has been seen) and l = running sum of exp(s - m). A new tile whose visible scores of this
// row have maximum `tile_max` (-inf if none) moves m to max(m, tile_max); the previous output
// accumulator and l must then be multiplied by the returned factor exp(m_old - m_new). While m is
// -inf nothing has been accumulated, so the factor is 0 instead of exp(-inf - -inf) = NaN.
template <typename T, typename Exp>
RADD_HD T online_softmax_rescale(T& m, T tile_max, Exp exp_fn) {
  const T m_new = tile_max > m ? tile_max : m;
  const T alpha = m == neg_inf<T>() ? T(0) : exp_fn(m - m_new);
  m = m_new;
  return alpha;
}

// The offset of the tile's probabilities p = exp(s - offset). While the row has no visible score
// (m = -inf) every s is -inf too; offset 0 makes those p exactly 0 instead of NaN.
template <typename T>
RADD_HD T softmax_offset(T m) {
  return m == neg_inf<T>() ? T(0) : m;
}

// End of a row: out = acc * inv_l and the natural logsumexp lse = m * m_to_e + log(l), where
// m_to_e converts the kernel's score domain to natural log (1, or ln 2 for base-2 scores). A row
// that saw no visible key (l == 0) gets inv_l = 0 -- zeros, never NaN -- and lse = -inf.
template <typename T>
RADD_HD void softmax_finish(T m, T l, T m_to_e, T& inv_l, T& lse) {
  if (l > T(0)) {
    inv_l = T(1) / l;
    lse = m * m_to_e + log_e(l);
  } else {
    inv_l = T(0);
    lse = neg_inf<T>();
  }
}

// Backward: P is recomputed as exp(s - lse). A row with no visible key has lse = -inf; +inf then
// gives exp(s - inf) = 0 for every s, so the row gets exactly zero gradients.
template <typename T>
RADD_HD T backward_offset(T lse) {
  return lse == neg_inf<T>() ? std::numeric_limits<T>::infinity() : lse;
}

// Gradient of the scores: dS = P * (dP - delta), dP = dO v^T, delta_i = sum_d dO_id out_id - dlse_i
// (the softmax Jacobian-vector product; dlse, the gradient reaching lse itself, is usually 0).
// T is a scalar or a vector type (the CPU kernel passes at::vec::Vectorized).
template <typename T>
RADD_HD T softmax_grad(T p, T dp, T delta) {
  return p * (dp - delta);
}

// ------------------------------------------------------------------------------- host-side checks
// Shapes, dtypes, devices and layouts common to the CPU and CUDA entry points. The CUDA entry adds
// its head_dim restriction. Messages name the argument (see common/checks.h).
inline void check_qkv_layout(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.numel() == 0 || t.size(3) <= 1 || t.stride(3) == 1,
                    msg("radd_fast.", op, ": '", name, "' must be contiguous in its last dim (head_dim); got strides ",
                        t.strides(), " for shape ", t.sizes(), " (call .contiguous() first)"));
}

inline void check_mask_args(const at::Tensor& q, const c10::optional<at::Tensor>& key_padding_mask,
                            const c10::optional<at::Tensor>& order, const char* op) {
  const int64_t B = q.size(0), L = q.size(1);
  if (key_padding_mask.has_value()) {
    const auto& m = *key_padding_mask;
    check_same_device(q, m, op, "q", "key_padding_mask");
    TORCH_CHECK_VALUE(
        m.dim() == 2 && m.size(0) == B && m.size(1) == L,
        msg("radd_fast.", op, ": 'key_padding_mask' must have shape (B, L) = (", B, ", ", L, "), got ", m.sizes()));
    check_dtype(m, {at::kBool}, op, "key_padding_mask");
  }
  if (order.has_value()) {
    const auto& o = *order;
    check_same_device(q, o, op, "q", "order");
    TORCH_CHECK_VALUE(o.dim() == 2 && o.size(0) == B && o.size(1) == L,
                      msg("radd_fast.", op, ": 'order' must have shape (B, L) = (", B, ", ", L, "), got ", o.sizes()));
    check_dtype(o, {at::kInt, at::kLong}, op, "order");
  }
}

inline void check_fwd_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const c10::optional<at::Tensor>& key_padding_mask, const c10::optional<at::Tensor>& order,
                           double scale, const char* op) {
  check_defined(q, op, "q");
  check_defined(k, op, "k");
  check_defined(v, op, "v");
  check_dim(q, 4, op, "q", "(B, L, heads, head_dim)");
  check_dtype(q, {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}, op, "q");
  for (const auto* t : {&k, &v}) {
    const char* name = t == &k ? "k" : "v";
    TORCH_CHECK_VALUE(t->sizes() == q.sizes(), msg("radd_fast.", op, ": '", name, "' must have the shape of 'q' (",
                                                   q.sizes(), "), got ", t->sizes()));
    check_same_dtype(q, *t, op, "q", name);
    check_same_device(q, *t, op, "q", name);
  }
  TORCH_CHECK_VALUE(q.size(3) > 0,
                    msg("radd_fast.", op, ": 'q' head_dim (last dim) must be positive, got ", q.sizes()));
  check_qkv_layout(q, op, "q");
  check_qkv_layout(k, op, "k");
  check_qkv_layout(v, op, "v");
  check_mask_args(q, key_padding_mask, order, op);
  TORCH_CHECK_VALUE(std::isfinite(scale), msg("radd_fast.", op, ": 'scale' must be finite, got ", scale));
  // Below float64 the kernels work with scale * log2(e) in float: a double scale past ~2.4e38
  // would become inf there and turn every score into NaN.
  TORCH_CHECK_VALUE(q.scalar_type() == at::kDouble || std::isfinite(static_cast<float>(scale * 1.4426950408889634)),
                    msg("radd_fast.", op, ": 'scale' must be finite in float32 (times log2(e)) for ",
                        dtype_name(q.scalar_type()), " inputs, got ", scale));
}

// The accumulation (and lse) dtype for inputs of dtype t.
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_bwd_args(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& out, const at::Tensor& lse, const c10::optional<at::Tensor>& grad_lse,
                           const c10::optional<at::Tensor>& key_padding_mask, const c10::optional<at::Tensor>& order,
                           double scale, const char* op) {
  check_fwd_args(q, k, v, key_padding_mask, order, scale, op);
  for (const auto* t : {&grad_out, &out}) {
    const char* name = t == &grad_out ? "grad_out" : "out";
    check_defined(*t, op, name);
    TORCH_CHECK_VALUE(t->sizes() == q.sizes(), msg("radd_fast.", op, ": '", name, "' must have the shape of 'q' (",
                                                   q.sizes(), "), got ", t->sizes()));
    check_same_dtype(q, *t, op, "q", name);
    check_same_device(q, *t, op, "q", name);
    check_qkv_layout(*t, op, name);
  }
  const auto adt = acc_dtype(q.scalar_type());
  const std::vector<int64_t> lse_shape{q.size(0), q.size(2), q.size(1)};
  for (const at::Tensor* t : {&lse, grad_lse.has_value() ? &*grad_lse : nullptr}) {
    if (t == nullptr) continue;
    const char* name = t == &lse ? "lse" : "grad_lse";
    check_defined(*t, op, name);
    check_same_device(q, *t, op, "q", name);
    TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef(lse_shape),
                      msg("radd_fast.", op, ": '", name,
                          "' must have shape (B, heads, L) = ", at::IntArrayRef(lse_shape), ", got ", t->sizes()));
    TORCH_CHECK_TYPE(t->scalar_type() == adt,
                     msg("radd_fast.", op, ": '", name, "' must have dtype ", dtype_name(adt), " for ",
                         dtype_name(q.scalar_type()), " inputs, got ", dtype_name(t->scalar_type())));
  }
}

// --------------------------------------------------------------------- CUDA launchers (cuda.cu)
// Called only by the CUDA entry points in cuda_api.cpp, after the checks above and on the inputs'
// device. The entry points are compiled by the host C++ compiler, so every argument error is raised
// (and unwound) before any nvcc-compiled frame is on the stack.
namespace cuda {
// The tensor-core kernel of a bf16 / fp16 pass: mma.sync (sm_80+) or wgmma (fwd_wgmma.cuh,
// bwd_wgmma.cuh: sm_90a builds on sm_90 GPUs). The fp32 / fp64 kernels ignore it.
enum class TcKernel {
  kMma64,       // forward: 64-query blocks, 64-key steps; backward: 64-key blocks
  kMma128,      // forward: 128-query blocks, 64-key steps; backward: 128-key blocks
  kMma64K128,   // forward only: 64-query blocks, 128-key steps
  kWgmma,       // sm_90a: forward 64-key steps, backward 64-key blocks
  kWgmmaK128    // sm_90a forward only: 128-key steps, 128-query blocks
};
// Dynamic shared memory per block of the kernel for this dtype and head_dim (32, 64 or 128).
size_t smem_bytes(at::ScalarType dtype, int64_t head_dim, bool backward, TcKernel kernel);
// Whether this build holds wgmma code that `device` runs (a one-off probe per device, cached).
bool wgmma_available(int device);
std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const c10::optional<at::Tensor>& key_padding_mask,
                                       const c10::optional<at::Tensor>& order, bool strict, double scale,
                                       TcKernel kernel);
std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                                   const c10::optional<at::Tensor>& grad_lse,
                                                   const c10::optional<at::Tensor>& key_padding_mask,
                                                   const c10::optional<at::Tensor>& order, bool strict, double scale,
                                                   TcKernel kernel, bool bulk_dq = false);
}  // namespace cuda

}  // namespace radd_fast::attention
