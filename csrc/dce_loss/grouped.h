// The three matmuls of one chunk of the CUDA loss's "grouped" engine (cuda_grouped.cpp), through
// torch's grouped GEMM (at::_grouped_mm). On sm_90 / sm_100 in bf16 that is a CUTLASS TMA + wgmma
// kernel which reads the group sizes from device memory: with one group whose size is the chunk's
// active row count `valid` ((1,) int32 on the device), rows with weight 0 cost no matmul work and
// nothing is read back to the host. Written with ATen calls only, so the CPU test
// (csrc/tests/test_grouped.cpp) runs exactly these views through torch's CPU fallback.
//
// Layouts (what at::_grouped_mm accepts: each operand row- or column-major, 16-byte-aligned strides):
//   logits      (R x nc)  = hc[:valid] @ w_nc^T        2d x 3d, M = valid; rows >= valid untouched
//   grad_hidden (R x D)   = dl[:valid] @ w_nc          2d x 3d, M = valid; rows >= valid untouched
//   grad_weight (nc x D)  = dl[:valid]^T @ hc[:valid]  2d x 2d, K = valid; zeros when valid = 0
// hc: (R, D) row-major, the chunk's hidden rows; w_nc: weight[:nc], (nc, D) row-major; dl: (R, nc)
// with a row stride of a multiple of 16 bytes (the logits' own layout). The 2d x 2d product takes dl
// column-major and hc row-major: the one layout for which torch allows an empty group (K = 0).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/_grouped_mm.h>

namespace radd_fast::dce::grouped {

// (R, nc), row stride rounded up to 16 bytes (torch allocates it so, for TMA).
inline at::Tensor logits(const at::Tensor& hc, const at::Tensor& w_nc, const at::Tensor& valid) {
  return at::_grouped_mm(hc, w_nc.t().unsqueeze(0), valid);
}

inline at::Tensor grad_hidden(const at::Tensor& dl, const at::Tensor& w_nc, const at::Tensor& valid) {
  return at::_grouped_mm(dl, w_nc.unsqueeze(0), valid);
}

inline at::Tensor grad_weight(const at::Tensor& dl, const at::Tensor& hc, const at::Tensor& valid) {
  return at::_grouped_mm(dl.t(), hc, valid).select(0, 0);
}

}  // namespace radd_fast::dce::grouped
