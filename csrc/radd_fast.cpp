// Every radd_fast op schema, in one place. Kernels register per backend next to their sources
// (csrc/<op>/cpu.cpp, csrc/<op>/cuda.cu); fake kernels and autograd live in radd_fast/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(radd_fast, m) {
  // Rotary embedding of the q and k slices of a packed qkv (B, L, 3, H, D); v is left as it is.
  // cos/sin: (>= L, D/2) tables from radd_fast.rotary_tables. inverse=True undoes the rotation.
  m.def("rotary(Tensor qkv, Tensor cos, Tensor sin, bool inverse=False) -> Tensor");
  m.def("rotary_(Tensor(a!) qkv, Tensor cos, Tensor sin, bool inverse=False) -> ()");
  // Masked softmax attention of q, k, v (B, L, heads, head_dim) (csrc/attention/attention.h):
  // key j is visible to query i iff key_padding_mask[b, j] (bool (B, L), optional) and, with an
  // order (int32/int64 (B, L)), order[b, j] < order[b, i] or (== and not strict). Returns the output
  // and the (B, heads, L) logsumexp of the scaled scores (-inf for a query with no visible key).
  m.def("masked_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, Tensor? order, "
        "bool strict, float scale) -> (Tensor, Tensor)");
  // Gradients (dq, dk, dv) from grad_out and, optionally, the gradient reaching lse.
  m.def("masked_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor? grad_lse, Tensor? key_padding_mask, Tensor? order, bool strict, float scale) "
        "-> (Tensor, Tensor, Tensor)");

  // Fused linear + masked weighted cross-entropy (csrc/dce_loss/dce_loss.h): per-row losses
  // row_weight[r] * (logsumexp_{c < num_classes}(hidden W^T + bias)[r] - logit[r, target[r]]), in fp32
  // (fp64 for fp64 inputs), 0 where row_weight is 0; the logits never exist in memory.
  m.def("linear_dce_loss(Tensor hidden, Tensor weight, Tensor? bias, Tensor target, Tensor row_weight, "
        "int num_classes) -> Tensor");
  // The same per-row losses and the gradients of their sum w.r.t. (hidden, weight, bias), each computed
  // only where output_mask says so (an empty tensor otherwise). Not differentiable itself.
  m.def("linear_dce_loss_grad(Tensor hidden, Tensor weight, Tensor? bias, Tensor target, Tensor row_weight, "
        "int num_classes, bool[3] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");

  // Sampler (csrc/reveal_schedule, csrc/sample_rows). reveal_schedule draws every masked position's
  // reveal step from step_cdf with Philox stream `offset` and returns
  // (step, num_events, perm, row_index, round_offsets); see csrc/reveal_schedule/schedule.h.
  m.def("reveal_schedule(Tensor masked, Tensor step_cdf, int seed, int offset) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Output layer for the given hidden rows only, then temperature / top-k / top-p and an exponential
  // race with Philox noise: (tokens, log_prob); see csrc/sample_rows/sample_rows.h.
  m.def("sample_rows(Tensor hidden, Tensor weight, Tensor? bias, int num_classes, float temperature, int top_k, "
        "float top_p, bool greedy, int seed, int offset) -> (Tensor, Tensor)");
  // The same filters alone: logits / temperature where kept, -inf elsewhere.
  m.def("filter_logits(Tensor logits, float temperature, int top_k, float top_p) -> Tensor");
}
