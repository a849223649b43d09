// Every radd_fast op schema, in one place. Kernels register per backend next to their sources
// (csrc/<op>/cpu.cpp, csrc/<op>/cuda.cu); fake kernels and autograd live in radd_fast/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(radd_fast, m) {
  // Rotary embedding of the q and k slices of a packed qkv (B, L, 3, H, D); v is left as it is.
  // cos/sin: (>= L, D/2) tables from radd_fast.rotary_tables. inverse=True undoes the rotation.
  m.def("rotary(Tensor qkv, Tensor cos, Tensor sin, bool inverse=False) -> Tensor");
  m.def("rotary_(Tensor(a!) qkv, Tensor cos, Tensor sin, bool inverse=False) -> ()");
}
