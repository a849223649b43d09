// Every radd_fast op schema, in one place. Kernels register per backend next to their sources
// (csrc/<op>/cpu.cpp, csrc/<op>/cuda.cu); fake kernels and autograd live in radd_fast/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(radd_fast, m) {
  // Rotary embedding of the q and k slices of a packed qkv (B, L, 3, H, D); v is left as it is.
  // cos/sin: (>= L, D/2) tables from radd_fast.rotary_tables. inverse=True undoes the rotation.
  m.def("rotary(Tensor qkv, Tensor cos, Tensor sin, bool inverse=False) -> Tensor");
  m.def("rotary_(Tensor(a!) qkv, Tensor cos, Tensor sin, bool inverse=False) -> ()");
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
