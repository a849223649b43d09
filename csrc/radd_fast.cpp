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
}
