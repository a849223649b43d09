// The CUDA loss's grouped engine end to end on the CPU: csrc/dce_loss/cuda_grouped.cpp as compiled
// for the GPU build (its chunk loop, counts, views, accumulations), linked here against launchers
// that run the very kernels of rows.cuh on the CPU emulation instead of the GPU, with torch's CPU
// fallback of the grouped GEMM. Checked against a float64 computation of the loss and gradients on
// the same bf16 inputs, over several chunks (some past the active count), NaN hidden states on
// inactive rows, num_classes < C, with and without bias, and each subset of gradients.
#include "tests/gpu_emulation.h"  // first: it defines what rows.cuh needs of CUDA

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "dce_loss/dce_loss.h"
#include "dce_loss/rows.cuh"
#include "tests/test_util.h"

namespace dce = radd_fast::dce;
namespace gpu = radd_fast::dce::gpu;
using radd_fast::emu::launch;

// ------------------------------------------------------- the launchers of cuda.cu, emulated
namespace radd_fast::dce::grouped {
namespace {
EmuBf16* emu(at::BFloat16* p) { return reinterpret_cast<EmuBf16*>(p); }
const EmuBf16* emu(const at::BFloat16* p) { return reinterpret_cast<const EmuBf16*>(p); }
}  // namespace

void launch_compact(const float* row_weight, int64_t N, int* order, int* count) {
  launch(EmuDim3{1, 1, 1}, 1024, 0, [&] { gpu::compact_kernel<float>(row_weight, N, order, count); });
}
void launch_gather_rows(const at::BFloat16* hidden, int64_t D, const int* order, const int* count, int64_t row0,
                        int64_t R, at::BFloat16* out, int* valid_out) {
  const int64_t vecs = D * 2 / 16;
  launch(EmuDim3{2, 1, 1}, 32, 0, [&] {
    gpu::gather_rows_kernel<uint4>(reinterpret_cast<const uint4*>(hidden), vecs, order, count, row0, R,
                                   reinterpret_cast<uint4*>(out), valid_out);
  });
}
void launch_softmax_rows(at::BFloat16* logits, int64_t ld, int64_t nc, const int* order, const int* count, int64_t row0,
                         int64_t R, const int64_t* target, const float* row_weight, const float* bias, float* loss,
                         bool write_grad, const at::BFloat16* hc, const at::BFloat16* weight, int64_t D) {
  launch(EmuDim3{unsigned(R), 1, 1}, gpu::kRowThreads, 0, [&] {
    gpu::softmax_rows_vec_kernel<EmuBf16, float>(emu(logits), ld, nc, order, count, row0, target, row_weight, bias,
                                                 loss, write_grad, emu(hc), emu(weight), D);
  });
}
void launch_scatter_rows(const at::BFloat16* rows, int64_t R, int64_t D, const int* order, const int* count,
                         int64_t row0, at::BFloat16* grad_hidden) {
  launch(EmuDim3{2, 1, 1}, 64, 0, [&] {
    gpu::scatter_rows_kernel<EmuBf16, EmuBf16>(emu(rows), 1, 0, R, D, order, count, row0, emu(grad_hidden));
  });
}
std::vector<at::Tensor> on_side_streams(int n, const std::function<at::Tensor(int)>& make) {
  std::vector<at::Tensor> out;
  for (int i = 0; i < n; ++i) out.push_back(make(i));
  return out;
}
void launch_accumulate(float* acc, const at::BFloat16* x, int64_t n, const int* valid) {
  launch(EmuDim3{3, 1, 1}, 64, 0, [&] { gpu::accumulate_kernel<EmuBf16>(acc, emu(x), n / 8, valid); });
}
void launch_bias_grad(const at::BFloat16* dlogits, int64_t ld, int64_t nc, const int* count, int64_t row0, int64_t R,
                      float* grad_bias, float* partial) {
  const int64_t pw = bias_partial_stride(nc);
  launch(EmuDim3{unsigned((nc + 8 * 64 - 1) / (8 * 64)), unsigned(bias_partial_rows(R)), 1}, 64, 0, [&] {
    gpu::bias_partials_kernel<EmuBf16, float>(emu(dlogits), ld, nc, count, row0, R, partial, pw);
  });
  launch(EmuDim3{unsigned((nc + 63) / 64), 1, 1}, 64, 0, [&] {
    gpu::bias_reduce_kernel<float>(partial, pw, nc, count, row0, R, grad_bias);
  });
}
}  // namespace radd_fast::dce::grouped

namespace {

double max_abs(const at::Tensor& x) { return x.numel() == 0 ? 0.0 : x.abs().max().item<double>(); }

double rel(const at::Tensor& got, const at::Tensor& want) {
  const double scale = want.abs().max().item<double>();
  const double err = (got.to(at::kDouble) - want).abs().max().item<double>();
  return scale > 0 ? err / scale : err;
}

void test_engine(int64_t N, int64_t D, int64_t C, int64_t nc, bool with_bias, int chunk_rows, std::array<bool, 3> want,
                 uint64_t seed, int grad_h_split = 1) {
  at::manual_seed(seed);
  const auto bf = at::TensorOptions().dtype(at::kBFloat16);
  at::Tensor h = at::randn({N, D}).to(at::kBFloat16);
  at::Tensor W = (at::randn({C, D}) / std::sqrt(double(D)) * 2).to(at::kBFloat16);
  at::Tensor b = at::randn({C}).to(at::kBFloat16);
  at::Tensor t = at::randint(0, nc, {N}, at::TensorOptions().dtype(at::kLong));
  at::Tensor w = at::rand({N}) * (at::rand({N}) < 0.6).to(at::kFloat) * 2;
  t[0] = nc - 1, w[0] = 0.9;
  if (N > 1) t[1] = 0, w[1] = 1.3;
  const at::Tensor off = w == 0;
  at::Tensor h_nan = h.masked_fill(off.unsqueeze(1), NAN);  // inactive rows must never be read

  // float64 truth on the same bf16 values
  at::Tensor hd = h.to(at::kDouble).requires_grad_(), Wd = W.to(at::kDouble).requires_grad_();
  at::Tensor bd = b.to(at::kDouble).requires_grad_();
  at::Tensor z = at::matmul(hd, Wd.narrow(0, 0, nc).t());
  if (with_bias) z = z + bd.narrow(0, 0, nc);
  const at::Tensor lse = z.logsumexp(1);
  const at::Tensor rows = w.to(at::kDouble) * (lse - z.gather(1, t.unsqueeze(1)).squeeze(1));
  rows.sum().backward();

  char buf[16];
  std::snprintf(buf, sizeof buf, "%d", chunk_rows);
  setenv("RADD_FAST_DCE_CHUNK_ROWS", buf, 1);
  std::snprintf(buf, sizeof buf, "%d", grad_h_split);
  setenv("RADD_FAST_DCE_GRAD_H_SPLIT", buf, 1);
  const c10::optional<at::Tensor> bias = with_bias ? c10::optional<at::Tensor>(b) : c10::nullopt;
  auto [loss, gh, gw, gb] = dce::grouped_forward_backward(h_nan, W, bias, t, w, nc, want[0], want[1], want[2]);
  unsetenv("RADD_FAST_DCE_CHUNK_ROWS");
  unsetenv("RADD_FAST_DCE_GRAD_H_SPLIT");

  const double e_loss = rel(loss, rows.detach());
  EXPECT(e_loss < 2e-2, "N=%lld chunk=%d: loss rel err %g", (long long)N, chunk_rows, e_loss);
  EXPECT(max_abs(loss.masked_select(off)) == 0.0, "inactive rows must have loss 0");
  if (want[0]) {
    EXPECT(gh.sizes() == h.sizes() && gh.scalar_type() == at::kBFloat16, "grad_hidden shape/dtype");
    const double e = rel(gh, hd.grad());
    EXPECT(e < 2e-2, "N=%lld chunk=%d: grad_hidden rel err %g", (long long)N, chunk_rows, e);
    EXPECT(max_abs(gh.masked_select(off.unsqueeze(1).expand_as(gh)).to(at::kFloat)) == 0.0,
           "inactive rows must get zero hidden gradients");
  } else {
    EXPECT(gh.numel() == 0, "grad_hidden not asked for");
  }
  if (want[1]) {
    const double e = rel(gw, Wd.grad());
    EXPECT(e < 2e-2, "N=%lld chunk=%d: grad_weight rel err %g", (long long)N, chunk_rows, e);
    EXPECT(max_abs(gw.narrow(0, nc, C - nc).to(at::kFloat)) == 0.0, "rows >= num_classes of grad_weight must be zero");
  } else {
    EXPECT(gw.numel() == 0, "grad_weight not asked for");
  }
  if (want[2] && with_bias) {
    const double e = rel(gb, bd.grad());
    EXPECT(e < 2e-2, "N=%lld chunk=%d: grad_bias rel err %g", (long long)N, chunk_rows, e);
  } else {
    EXPECT(gb.numel() == 0, "grad_bias not asked for (or no bias)");
  }
}

}  // namespace

int main() {
  // 45 rows, ~60% active, in chunks of 8: six chunks hold active rows, the rest lie past the count.
  test_engine(45, 16, 70, 61, true, 8, {true, true, true}, 1);
  test_engine(45, 16, 70, 61, false, 8, {true, true, false}, 2);
  test_engine(45, 16, 70, 69, true, 45, {false, true, true}, 3);   // one chunk holding every row
  test_engine(45, 16, 70, 69, true, 7, {true, false, false}, 4);
  test_engine(45, 16, 70, 69, true, 16, {false, false, false}, 5);  // loss only
  test_engine(1, 8, 5, 4, true, 3, {true, true, true}, 6);           // N = 1
  test_engine(700, 8, 30, 29, true, 400, {false, false, true}, 10);  // bias: 128-row partial sums, 2 chunks
  // The hidden-gradient product split over class slices (RADD_FAST_DCE_GRAD_H_SPLIT): 61 classes
  // in slices of 24, 24, 13; 16 asked for gives slices of 8 (the least), the last of 5.
  test_engine(45, 16, 70, 61, true, 8, {true, true, true}, 7, 3);
  test_engine(45, 16, 70, 61, false, 45, {true, false, false}, 8, 16);
  test_engine(1, 8, 5, 4, true, 3, {true, true, true}, 9, 2);          // one slice: 4 classes
  if (radd_fast::test::failures() == 0) std::printf("test_grouped_engine: all passed\n");
  return radd_fast::test::failures();
}
