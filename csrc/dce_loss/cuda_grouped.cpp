// The "grouped" engine of the CUDA linear_dce_loss: bf16 on sm_90 / sm_100 (cuda_api.cpp chooses it).
// The same chunked algorithm as the tile engine of cuda.cu, with the three matmuls of a chunk on
// torch's grouped GEMM (grouped.h: CUTLASS, TMA and wgmma on these GPUs) instead of our WMMA tiles,
// which measured 64-70 TFLOP/s on an H200 against the ~600 the loss needs (bench/RESULTS.md). The
// grouped GEMM takes its group sizes from device memory, so the chunk's active row count stays on the
// device: no host synchronisation, and chunks past the count do no matmul work.
//
// Per chunk of R compacted rows:
//   1. gather the chunk's hidden rows into hc (R x D), and its active row count into valid[chunk]
//   2. logits (R x nc, bf16) = hc @ W[:nc]^T                                     grouped GEMM
//   3. one block per row: logsumexp (fp32, bias added here), loss (the target's logit recomputed
//      in fp32 from hc and W), and the logit gradient w * (softmax - onehot) written in place over
//      the row, in bf16
//   4. grad_h rows = dlogits @ W[:nc] (grouped GEMM; RADD_FAST_DCE_GRAD_H_SPLIT: several over class
//      slices on side streams, summed), scattered to grad_hidden[order[.]]
//   5. grad_W[:nc] (fp32 accumulator) += dlogits^T @ hc (grouped GEMM, bf16 result per chunk; the
//      accumulation reads the count too, so chunks past it cost no pass over the accumulator)
//   6. grad_b[:nc] += column sums of dlogits (two passes: 128-row partial sums, then their sum)
// Logits are bf16 here (fp32 in the tile engine), as in torch's own bf16 Linear + cross-entropy.
// Working memory: the R x nc bf16 logits (R from kGroupedWorkspaceBytes), hc and grad_h rows (R x D),
// an fp32 weight-gradient accumulator and one bf16 weight-gradient product (nc x D each).
// Host-compiled, like every entry point: errors raised here never cross nvcc-compiled frames.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <tuple>

#include "dce_loss/dce_loss.h"
#include "dce_loss/grouped.h"

namespace radd_fast::dce {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grouped_forward_backward(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const at::Tensor& target,
    const at::Tensor& row_weight, int64_t nc, bool want_h, bool want_w, bool want_b) {
  using at::BFloat16;
  // The matmuls below must see bf16 as given: under an fp16 autocast region (a backward run inside
  // one, say) autocast could recast them and send them down torch's synchronising fallback.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const int64_t N = hidden.size(0), D = hidden.size(1);
  const auto fopt = hidden.options().dtype(at::kFloat);
  const auto iopt = hidden.options().dtype(at::kInt);
  const bool has_bias = bias.has_value() && bias->defined();
  want_b = want_b && has_bias;
  const bool any = want_h || want_w || want_b;

  const at::Tensor tgt = target.contiguous();
  const at::Tensor w = row_weight.to(at::kFloat).contiguous();
  at::Tensor loss = at::zeros({N}, fopt);
  at::Tensor grad_hidden = want_h ? at::zeros_like(hidden) : at::empty({0}, hidden.options());
  at::Tensor grad_weight = want_w ? at::zeros_like(weight) : at::empty({0}, weight.options());
  at::Tensor grad_bias = want_b ? at::zeros_like(*bias) : at::empty({0}, weight.options());

  at::Tensor order = at::empty({N}, iopt), count = at::empty({1}, iopt);
  grouped::launch_compact(w.const_data_ptr<float>(), N, order.data_ptr<int>(), count.data_ptr<int>());
  const int* ord = order.const_data_ptr<int>();
  const int* cnt = count.const_data_ptr<int>();

  // The logits' row stride as torch allocates them: nc rounded up to 16 bytes.
  const int64_t ld = (nc + 7) / 8 * 8;
  int64_t R = kGroupedWorkspaceBytes / (ld * int64_t(sizeof(BFloat16))) / 128 * 128;
  R = std::max<int64_t>(128, std::min(R, (N + 127) / 128 * 128));
  R = cuda_chunk_rows(R, N);
  const int64_t chunks = (N + R - 1) / R;
  // The hidden-gradient product's class slices: a multiple of 8 classes each (16-byte aligned).
  const int64_t split = want_h ? std::min<int64_t>(grad_h_split(), (nc + 7) / 8) : 1;
  const int64_t slice = ((nc + split - 1) / split + 7) / 8 * 8;

  const at::Tensor w_nc = weight.narrow(0, 0, nc);
  const at::Tensor b_acc = has_bias ? bias->narrow(0, 0, nc).to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor gw_acc = want_w ? at::zeros({nc, D}, fopt) : at::Tensor();
  at::Tensor gb_acc = want_b ? at::zeros({nc}, fopt) : at::Tensor();
  at::Tensor gb_part = want_b ? at::empty({bias_partial_rows(R), bias_partial_stride(nc)}, fopt) : at::Tensor();
  at::Tensor valid = at::empty({chunks}, iopt);
  at::Tensor hc = at::empty({R, D}, hidden.options());
  const auto* H = hidden.const_data_ptr<BFloat16>();

  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t row0 = c * R;
    const at::Tensor v = valid.narrow(0, c, 1);
    grouped::launch_gather_rows(H, D, ord, cnt, row0, R, hc.data_ptr<BFloat16>(), v.data_ptr<int>());
    at::Tensor logits = grouped::logits(hc, w_nc, v);
    // The row kernels read rows as 16-byte vectors: torch's allocations are 256-byte aligned.
    TORCH_INTERNAL_ASSERT(logits.stride(1) == 1 && logits.stride(0) == ld && aligned16(logits),
                          "unexpected logits layout");
    grouped::launch_softmax_rows(logits.data_ptr<BFloat16>(), ld, nc, ord, cnt, row0, R, tgt.const_data_ptr<int64_t>(),
                                 w.const_data_ptr<float>(), has_bias ? b_acc.const_data_ptr<float>() : nullptr,
                                 loss.data_ptr<float>(), any, hc.const_data_ptr<BFloat16>(),
                                 weight.const_data_ptr<BFloat16>(), D);
    if (!any) continue;
    if (want_h) {
      at::Tensor rows;
      if (split == 1) {
        rows = grouped::grad_hidden(logits, w_nc, v);
      } else {  // RADD_FAST_DCE_GRAD_H_SPLIT (dce_loss.h): class slices on side streams, summed in fp32
        const std::vector<at::Tensor> parts = grouped::on_side_streams(int((nc + slice - 1) / slice), [&](int i) {
          const int64_t k0 = i * slice, kn = std::min(slice, nc - k0);
          return grouped::grad_hidden(logits.narrow(1, k0, kn), w_nc.narrow(0, k0, kn), v);
        });
        at::Tensor acc = parts[0].to(at::kFloat);
        for (size_t i = 1; i < parts.size(); ++i) acc.add_(parts[i]);
        rows = acc.to(at::kBFloat16);  // rows past the chunk's count hold garbage: never scattered
      }
      TORCH_INTERNAL_ASSERT(rows.stride(0) == D && rows.stride(1) == 1 && aligned16(rows),
                            "unexpected grad_hidden layout");
      grouped::launch_scatter_rows(rows.const_data_ptr<BFloat16>(), R, D, ord, cnt, row0,
                                   grad_hidden.data_ptr<BFloat16>());
    }
    if (want_w) {
      const at::Tensor gw = grouped::grad_weight(logits, hc, v);
      TORCH_INTERNAL_ASSERT(gw.is_contiguous() && aligned16(gw), "unexpected grad_weight layout");
      grouped::launch_accumulate(gw_acc.data_ptr<float>(), gw.const_data_ptr<BFloat16>(), nc * D, v.const_data_ptr<int>());
    }
    if (want_b)
      grouped::launch_bias_grad(logits.const_data_ptr<BFloat16>(), ld, nc, cnt, row0, R, gb_acc.data_ptr<float>(),
                                gb_part.data_ptr<float>());
  }
  if (want_w) grad_weight.narrow(0, 0, nc).copy_(gw_acc);
  if (want_b) grad_bias.narrow(0, 0, nc).copy_(gb_acc);
  return {loss, grad_hidden, grad_weight, grad_bias};
}

}  // namespace radd_fast::dce
