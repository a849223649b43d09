// Fused linear + masked weighted cross-entropy (the lambda-DCE kernel of RADD).
//
//   loss_r = row_weight[r] * (logsumexp_{c < num_classes}(h_r . W_c + b_c) - (h_r . W_{t_r} + b_{t_r}))
//
// hidden (N, D), weight (C, D) with C >= num_classes (the mask column, c = C - 1 by default, is
// never a class), bias (C,) or none, target (N,) int64, row_weight (N,) float. Rows with weight 0
// are compacted away before any matmul, and the N x C logits never exist: the kernels work on
// chunks of R active rows (R x C logits at a time) and keep fp32 (fp64 for fp64) statistics.
//
// Two ops (schemas in csrc/radd_fast.cpp):
//   linear_dce_loss       -> per-row loss (N,) in the accumulation dtype (0 for weight-0 rows);
//   linear_dce_loss_grad  -> the same loss plus the gradients of sum(loss) w.r.t. hidden, weight
//                            and bias (each only when asked for; an empty tensor otherwise).
// A backward with per-row upstream gradients g is linear_dce_loss_grad with row_weight * g.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <functional>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/macros.h"

namespace radd_fast::dce {

constexpr const char* kOp = "linear_dce_loss";  // the name every message uses (both ops)

// ------------------------------------------------------------------------ shared tile-level math
// Exponential and logarithm that resolve to the CUDA math library on the device and to libm on the
// host, for float and double alike.
RADD_HD float exp_acc(float x) { return ::expf(x); }
RADD_HD double exp_acc(double x) { return ::exp(x); }
RADD_HD float log_acc(float x) { return ::logf(x); }
RADD_HD double log_acc(double x) { return ::log(x); }

// Running logsumexp of a set of logits as (max m, sum of exp(z - m)). The empty set is (-inf, 0).
template <typename acc_t>
struct LseState {
  acc_t m;
  acc_t s;
};

template <typename acc_t>
RADD_HD LseState<acc_t> lse_empty() {
  return {-std::numeric_limits<acc_t>::infinity(), acc_t(0)};
}

// Union of two disjoint sets (online softmax merge). Exact up to one rounding per term: the state
// with the smaller max is rescaled by exp(m_small - m_big) <= 1, so nothing overflows. A NaN in
// either state propagates to the result.
template <typename acc_t>
RADD_HD LseState<acc_t> lse_merge(LseState<acc_t> a, LseState<acc_t> b) {
  if (a.m < b.m) {
    const LseState<acc_t> t = a;
    a = b;
    b = t;
  }
  if (b.m == -std::numeric_limits<acc_t>::infinity()) return a;  // b empty (or both)
  return {a.m, a.s + b.s * exp_acc(b.m - a.m)};
}

// Adds one logit z to the set.
template <typename acc_t>
RADD_HD LseState<acc_t> lse_push(LseState<acc_t> st, acc_t z) {
  return lse_merge(st, LseState<acc_t>{z, acc_t(1)});
}

template <typename acc_t>
RADD_HD acc_t lse_value(LseState<acc_t> st) {
  return st.m + log_acc(st.s);
}

// The loss of one row: weight * (logsumexp - target logit).
template <typename acc_t>
RADD_HD acc_t row_loss(acc_t weight, acc_t lse, acc_t target_logit) {
  return weight * (lse - target_logit);
}

// d loss / d logit for one entry of a row: scale * (softmax - onehot), scale = row weight (times the
// upstream gradient in a backward).
template <typename acc_t>
RADD_HD acc_t logit_grad(acc_t scale, acc_t z, acc_t lse, bool is_target) {
  return scale * (exp_acc(z - lse) - (is_target ? acc_t(1) : acc_t(0)));
}

// ------------------------------------------------------------------------------ chunk sizes
// CPU: active rows per chunk. The chunk's logits are a (num_classes x R) buffer (50,257 x 256 fp32
// = 51 MB for GPT-2); MKL's three GEMMs run within 10% of their best rate from R = 256 up (measured
// on 2 Zen 4 cores: 80-100 GFLOP/s), so a larger chunk only costs memory.
constexpr int64_t kCpuChunkRows = 256;
// CPU: vocabulary rows per task of the fused softmax pass: 256 x 256 fp32 = 256 KB, cache-resident
// between its two sweeps.
constexpr int64_t kCpuVocabBlock = 256;
// CUDA: bytes of the per-chunk logits workspace. R = budget / (row stride * 4): 1,280 rows for
// GPT-2's vocabulary. The weight gradient is accumulated once per chunk (read + write of C x D fp32),
// so fewer, larger chunks cut that traffic; 256 MiB keeps it under ~15% of the matmul time at
// N = 64 x 1,024 while the workspace stays O(chunk x V).
constexpr int64_t kCudaWorkspaceBytes = int64_t(256) << 20;
// The grouped engine's bf16 logits: R = budget / (row stride * 2), rounded down to 128 = 5,248 rows
// for GPT-2's vocabulary. Each chunk costs a pass over the fp32 weight-gradient accumulator (~0.1 ms
// on an H200 at 4.8 TB/s) and each chunk past the active count ~0.1 ms of near-empty launches,
// against ~1 ms of matmuls per 2,560 active rows at 600 TFLOP/s: at N = 8 x 1,024 (~4,100 active
// rows) 512 MiB makes that 1 active chunk + 1 empty one instead of 2 + 2 (expected, not measured).
constexpr int64_t kGroupedWorkspaceBytes = int64_t(512) << 20;

// CUDA bias gradient (both engines): rows per partial column sum. A chunk's column sums go in two
// passes -- 16-byte vectors of 128 rows per thread into a (ceil(R / 128), classes) fp32 buffer, then
// a fixed-order sum of those -- so the logits stream at memory speed and the result is deterministic.
// One thread per class over all of a chunk's rows (the first kernel) left an H200 about 12 warps per
// SM, each with a few 64-byte loads in flight: ~0.5 TB/s by Little's law, ~0.9 ms per full grouped
// chunk of 5,248 rows (an estimate; the kernel was never profiled), against ~0.15 ms at 3.5 TB/s.
constexpr int64_t kBiasRowGroup = 128;
inline int64_t bias_partial_rows(int64_t R) { return (R + kBiasRowGroup - 1) / kBiasRowGroup; }
// The partial buffer's row stride: classes rounded up to 8 (every vector width of the kernels).
inline int64_t bias_partial_stride(int64_t nc) { return (nc + 7) / 8 * 8; }

// RADD_FAST_DCE_CHUNK_ROWS=n (n >= 1) overrides the rows per chunk of both kernels: a knob for
// memory/speed trade-offs, and how the tests make every chunk edge (and empty trailing chunks) occur
// on small inputs. Read on every call (a getenv, nothing next to the matmuls).
inline int64_t chunk_rows_override() {
  const char* s = std::getenv("RADD_FAST_DCE_CHUNK_ROWS");
  if (s == nullptr || *s == 0) return 0;
  const long long v = std::atoll(s);
  return v > 0 ? int64_t(v) : 0;
}
// Whether t's data starts on a 16-byte boundary (the CUDA kernels' vector loads need it).
inline bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0; }

// The rows per chunk of a CUDA engine for N rows: `automatic`, or the override capped at N rounded
// up to 128 -- more would only allocate workspace that no row uses (and grids past what a launch allows).
inline int64_t cuda_chunk_rows(int64_t automatic, int64_t N) {
  const int64_t o = chunk_rows_override();
  return o > 0 ? std::min(o, std::max<int64_t>(128, (N + 127) / 128 * 128)) : automatic;
}

// RADD_FAST_DCE_GRAD_H_SPLIT=g (1 to 16; default 1) splits the grouped engine's hidden-gradient
// product of a chunk, dlogits (rows x classes) @ W, into g products over class slices run on g side
// streams, summed after. Why: that product has only rows x D outputs for its 50,257-long sums -- at
// 1,280 active rows ~30 output tiles for 132 SMs -- and the H200 profile (2026-11-30) measured it
// at 457 us against 189 us for the logits product of the same size (SM 27 % vs 68 %). Persistent
// GEMM blocks with no tile exit at once, so the slices' kernels can fill the SMs the first one
// leaves idle. Opt-in until a GPU run has measured it (bench: the `fused-split4` row). Each slice's
// product comes out of the GEMM in bf16 and the fp32 sum of the g slices is rounded once more: up
// to g + 1 bf16 roundings per gradient element instead of one (tests/test_dce_loss.py holds the
// split to the same 2x-torch bound as the single product).
inline int grad_h_split() {
  const char* s = std::getenv("RADD_FAST_DCE_GRAD_H_SPLIT");
  if (s == nullptr || *s == 0) return 1;
  const long long v = std::atoll(s);
  TORCH_CHECK_VALUE(v >= 1 && v <= 16,
                    msg("radd_fast.linear_dce_loss: RADD_FAST_DCE_GRAD_H_SPLIT must be 1 to 16, got '", s, "'"));
  return int(v);
}

// ----------------------------------------------------------------------------- host checks
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Shape, dtype and device checks shared by the CPU and CUDA entry points (values are checked by
// check_values on the CPU; see the CUDA kernel for what it does with bad values).
inline void check_args(const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       const at::Tensor& target, const at::Tensor& row_weight, int64_t num_classes) {
  const char* op = kOp;
  check_defined(hidden, op, "hidden");
  check_defined(weight, op, "weight");
  check_defined(target, op, "target");
  check_defined(row_weight, op, "row_weight");
  check_dim(hidden, 2, op, "hidden", "(N, D)");
  const int64_t N = hidden.size(0), D = hidden.size(1);
  TORCH_CHECK_VALUE(N >= 1, msg("radd_fast.", op, ": 'hidden' must have at least one row, got shape ", hidden.sizes()));
  TORCH_CHECK_VALUE(D >= 1, msg("radd_fast.", op, ": 'hidden' must have D >= 1 features, got shape ", hidden.sizes()));
  TORCH_CHECK_VALUE(N < (int64_t(1) << 31),
                    msg("radd_fast.", op, ": 'hidden' has ", N, " rows; at most 2^31 - 1 are supported"));
  check_dtype(hidden, {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}, op, "hidden");
  check_contiguous(hidden, op, "hidden");
  check_same_device(hidden, weight, op, "hidden", "weight");
  check_dim(weight, 2, op, "weight", "(C, D)");
  TORCH_CHECK_VALUE(weight.size(1) == D, msg("radd_fast.", op, ": 'weight' must have shape (C, D) with D = ", D,
                                             " (the last dim of 'hidden'), got ", weight.sizes()));
  const int64_t C = weight.size(0);
  TORCH_CHECK_VALUE(C >= 1, msg("radd_fast.", op, ": 'weight' must have at least one row, got shape ", weight.sizes()));
  check_same_dtype(hidden, weight, op, "hidden", "weight");
  check_contiguous(weight, op, "weight");
  if (bias.has_value() && bias->defined()) {
    check_same_device(hidden, *bias, op, "hidden", "bias");
    check_dim(*bias, 1, op, "bias", "(C,)");
    TORCH_CHECK_VALUE(bias->size(0) == C, msg("radd_fast.", op, ": 'bias' must have shape (C,) with C = ", C,
                                              " (the rows of 'weight'), got ", bias->sizes()));
    check_same_dtype(hidden, *bias, op, "hidden", "bias");
    check_contiguous(*bias, op, "bias");
  }
  TORCH_CHECK_VALUE(num_classes >= 1 && num_classes <= C,
                    msg("radd_fast.", op, ": 'num_classes' must be in [1, C] = [1, ", C, "], got ", num_classes));
  check_same_device(hidden, target, op, "hidden", "target");
  check_dim(target, 1, op, "target", "(N,)");
  TORCH_CHECK_VALUE(target.size(0) == N, msg("radd_fast.", op, ": 'target' must have shape (N,) with N = ", N,
                                             " (the rows of 'hidden'), got ", target.sizes()));
  check_dtype(target, {at::kLong}, op, "target");
  check_same_device(hidden, row_weight, op, "hidden", "row_weight");
  check_dim(row_weight, 1, op, "row_weight", "(N,)");
  TORCH_CHECK_VALUE(row_weight.size(0) == N, msg("radd_fast.", op, ": 'row_weight' must have shape (N,) with N = ", N,
                                                 " (the rows of 'hidden'), got ", row_weight.sizes()));
  check_dtype(row_weight, {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}, op, "row_weight");
}

// ----------------------------------------------------------------- CUDA launcher (cuda.cu)
// Called only by the CUDA entry points in cuda_api.cpp (host compiler), after check_args and the
// compute-capability check, on hidden's device: (per-row loss, grad hidden, grad weight, grad bias),
// a gradient not asked for an empty tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cuda_forward_backward(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const at::Tensor& target,
    const at::Tensor& row_weight, int64_t num_classes, bool grad_hidden, bool grad_weight, bool grad_bias);


// ------------------------------------------- the grouped engine (cuda_grouped.cpp; kernels in cuda.cu)
// bf16 on sm_90 / sm_100: the chunk matmuls run on torch's grouped GEMM (grouped.h); the kernels
// below do the rest. All take device pointers, run on the current stream and read the active row
// count from device memory, as the tile engine's kernels do.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grouped_forward_backward(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const at::Tensor& target,
    const at::Tensor& row_weight, int64_t num_classes, bool grad_hidden, bool grad_weight, bool grad_bias);

namespace grouped {
// order[0:count) = indices of the rows with row_weight != 0, ascending; count: one int.
void launch_compact(const float* row_weight, int64_t N, int* order, int* count);
// out (R, D) = hidden[order[row0 + i]] for the chunk's active rows, zeros after; valid_out = their
// number. D * 2 bytes must be a multiple of 16, hidden and out 16-byte aligned.
void launch_gather_rows(const at::BFloat16* hidden, int64_t D, const int* order, const int* count, int64_t row0,
                        int64_t R, at::BFloat16* out, int* valid_out);
// Per active row i of the chunk: logsumexp of logits[i, :nc] + bias (bias may be null), loss[order[.]]
// with the target's logit recomputed in fp32 from hc row i and weight row target (C x D, both
// 16-byte aligned, D a multiple of 8), and (write_grad) the logit gradients in place over the row,
// in bf16. ld: the logits' row stride, a multiple of 8; rows 16-byte aligned.
void launch_softmax_rows(at::BFloat16* logits, int64_t ld, int64_t nc, const int* order, const int* count, int64_t row0,
                         int64_t R, const int64_t* target, const float* row_weight, const float* bias, float* loss,
                         bool write_grad, const at::BFloat16* hc, const at::BFloat16* weight, int64_t D);
// grad_hidden[order[row0 + i]] = rows[i] (row stride D) for the chunk's active rows.
void launch_scatter_rows(const at::BFloat16* rows, int64_t R, int64_t D, const int* order, const int* count,
                         int64_t row0, at::BFloat16* grad_hidden);
// Runs make(i) for i in [0, n) on n side streams, each of which first waits for the work queued so
// far on the current stream; the current stream then waits for all of them, and the tensors that
// make returned are marked as used by it (the caching allocator then keeps them until its work is
// done). No host synchronisation. (The CPU test runs make in a plain loop.)
std::vector<at::Tensor> on_side_streams(int n, const std::function<at::Tensor(int)>& make);
// acc[0:n) += x[0:n) unless *valid is 0; n a multiple of 8, both 16-byte aligned.
void launch_accumulate(float* acc, const at::BFloat16* x, int64_t n, const int* valid);
// grad_bias[c] += sum over the chunk's active rows of dlogits[i, c], c < nc; partial: scratch of
// bias_partial_rows(R) x bias_partial_stride(nc) floats (kBiasRowGroup above).
void launch_bias_grad(const at::BFloat16* dlogits, int64_t ld, int64_t nc, const int* count, int64_t row0, int64_t R,
                      float* grad_bias, float* partial);
}  // namespace grouped

}  // namespace radd_fast::dce
