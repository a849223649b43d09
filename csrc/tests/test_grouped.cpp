// C++ test of the grouped engine's chunk matmuls (dce_loss/grouped.h) on the CPU: the same views and
// at::_grouped_mm calls as the CUDA engine, run by torch's CPU fallback, against plain matmuls over
// the active rows. Checks operand layouts and transposes, the row stride of the logits, which rows
// are computed (rows past `valid` hold NaN garbage that must not leak in), and empty chunks.
#include <ATen/ATen.h>

#include <cmath>

#include "dce_loss/grouped.h"
#include "tests/test_util.h"

namespace grouped = radd_fast::dce::grouped;

namespace {

double max_rel(const at::Tensor& got, const at::Tensor& want) {
  const double scale = want.abs().max().item<double>() + 1e-30;
  return (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>() / scale;
}

// nc not a multiple of 8 (as GPT-2's 50,257), a weight with one row more (the mask column), and
// chunks with all, some and none of their rows active.
void test_chunk(int64_t R, int64_t valid, int64_t nc, int64_t D) {
  at::manual_seed(int64_t(R * 1000 + valid));
  const auto f = at::TensorOptions().dtype(at::kFloat);
  at::Tensor weight = at::randn({nc + 1, D}, f);
  at::Tensor w_nc = weight.narrow(0, 0, nc);
  at::Tensor hc = at::randn({R, D}, f);
  hc.narrow(0, valid, R - valid).fill_(NAN);  // rows past the active count: never read
  at::Tensor v = at::full({1}, valid, at::TensorOptions().dtype(at::kInt));

  at::Tensor lg = grouped::logits(hc, w_nc, v);
  EXPECT(lg.size(0) == R && lg.size(1) == nc, "logits shape");
  EXPECT(lg.stride(1) == 1 && lg.stride(0) * lg.element_size() % 16 == 0 && lg.stride(0) >= nc, "logits row stride %lld",
         (long long)lg.stride(0));
  const at::Tensor hv = hc.narrow(0, 0, valid);
  if (valid > 0) {
    const double e = max_rel(lg.narrow(0, 0, valid), at::mm(hv, w_nc.t()));
    EXPECT(e < 1e-5, "logits R=%lld valid=%lld: rel err %g", (long long)R, (long long)valid, e);
  }

  // logit gradients in the logits' own buffer (as the CUDA softmax kernel writes them), garbage past
  // the active rows and in the padding columns
  at::Tensor dl = lg;
  dl.narrow(0, 0, valid).copy_(at::randn({valid, nc}, f));
  dl.narrow(0, valid, R - valid).fill_(NAN);
  const at::Tensor dv = dl.narrow(0, 0, valid);

  at::Tensor gh = grouped::grad_hidden(dl, w_nc, v);
  EXPECT(gh.size(0) == R && gh.size(1) == D, "grad_hidden shape");
  if (valid > 0) {
    const double e = max_rel(gh.narrow(0, 0, valid), at::mm(dv, w_nc));
    EXPECT(e < 1e-5, "grad_hidden R=%lld valid=%lld: rel err %g", (long long)R, (long long)valid, e);
  }

  at::Tensor gw = grouped::grad_weight(dl, hc, v);
  EXPECT(gw.size(0) == nc && gw.size(1) == D, "grad_weight shape");
  if (valid > 0) {
    const double e = max_rel(gw, at::mm(dv.t(), hv));
    EXPECT(e < 1e-5, "grad_weight R=%lld valid=%lld: rel err %g", (long long)R, (long long)valid, e);
  } else {
    EXPECT(gw.abs().max().item<double>() == 0.0, "grad_weight of an empty chunk must be zero");
  }
}

}  // namespace

int main() {
  for (int64_t valid : {0, 1, 29, 40}) test_chunk(40, valid, 61, 24);
  test_chunk(64, 63, 257, 16);
  if (radd_fast::test::failures() == 0) std::printf("test_grouped: all passed\n");
  return radd_fast::test::failures();
}
