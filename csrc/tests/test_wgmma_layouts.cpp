// The wgmma operand-form checks of wgmma_layouts.cuh on the CPU emulation of wgmma: every form
// must agree with the float64 product here, since the emulation is what the attention kernels were
// written against. bench/gpu_check.sh runs the same checks on an sm_90 GPU (wgmma_layouts.cu).
#include "tests/gpu_emulation.h"  // first: it defines what the kernel needs of CUDA

#include "tests/test_util.h"
#include "tests/wgmma_layouts.cuh"

namespace wc = radd_fast::wgmma_check;

int main() {
  unsigned seed = 1;
  wc::for_each_case([&]<int N, wc::Form F>() {
    const wc::Inputs<EmuBf16, N> in(seed++);
    std::vector<float> D(64 * N, -1.f);
    radd_fast::emu::launch(EmuDim3{1, 1, 1}, 128, wc::smem_bytes<N>(),
                           [&] { wc::layout_kernel<EmuBf16, N, F>(in.A.data(), in.B.data(), D.data()); });
    const double err = in.error(D);
    std::printf("wgmma %-28s N %3d: error %.1e\n", wc::form_name(F), N, err);
    EXPECT(err <= wc::kTolerance, "%s N %d: error %.2e", wc::form_name(F), N, err);
  });
  if (radd_fast::test::failures()) std::fprintf(stderr, "%d failures\n", radd_fast::test::failures());
  return radd_fast::test::failures() == 0 ? 0 : 1;
}
