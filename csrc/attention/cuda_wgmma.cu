// CUDA launchers of the sm_90a attention kernels (fwd_wgmma.cuh, bwd_wgmma.cuh), in a translation
// unit of their own so that a GPU build compiles them in parallel with cuda.cu; and the probe that
// tells whether this build holds their sm_90a code. Called by cuda.cu once cuda_api.cpp has checked
// the arguments, chosen the kernel and set the device.
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <array>
#include <atomic>

#include "attention/bwd_wgmma.cuh"
#include "attention/fwd_wgmma.cuh"
#include "attention/launch.cuh"

namespace radd_fast::attention::cuda {
namespace {

// Writes 1 where the code running is sm_90a code (so the wgmma kernels are real), 0 otherwise --
// e.g. sm_80 code, or PTX JIT-compiled for an sm_90 GPU by a build without 9.0a in
// TORCH_CUDA_ARCH_LIST.
__global__ void wgmma_probe_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

template <typename T, int D, int NK>
void fwd_typed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const MaskParams& mp, double scale,
               at::Tensor& out, at::Tensor& lse) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  constexpr int64_t kQueries = fwd_wgmma_queries<D, NK>();
  const int64_t grid = grid_size(B * H * ((L + kQueries - 1) / kQueries));
  auto kernel = fwd_wgmma_kernel<T, D, NK>;
  constexpr size_t smem = FwdWgmmaSmem<T, D, NK>::kBytes;
  set_smem(kernel, smem);
  kernel<<<grid, fwd_wgmma_threads<D, NK>(), smem, c10::cuda::getCurrentCUDAStream()>>>(
      rows<T>(q), rows<T>(k), rows<T>(v), reinterpret_cast<T*>(out.data_ptr()), lse.data_ptr<float>(), mp, H,
      static_cast<float>(scale) * kLog2e);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int D>
void bwd_typed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& grad_out,
               const at::Tensor& lse, const at::Tensor& delta, at::Tensor& dk, at::Tensor& dv, at::Tensor& dq_acc,
               const MaskParams& mp, double scale) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  const int64_t grid = grid_size(B * H * ((L + kMmaTile - 1) / kMmaTile));
  auto kernel = bwd_wgmma_kernel<T, D>;
  constexpr size_t smem = BwdWgmmaSmem<T, D>::kBytes;
  set_smem(kernel, smem);
  kernel<<<grid, kMmaThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      rows<T>(q), rows<T>(k), rows<T>(v), rows<T>(grad_out), lse.const_data_ptr<float>(),
      delta.const_data_ptr<float>(), reinterpret_cast<T*>(dk.data_ptr()), reinterpret_cast<T*>(dv.data_ptr()),
      dq_acc.data_ptr<float>(), mp, H, static_cast<float>(scale), static_cast<float>(scale) * kLog2e);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls f(T{}, integral_constant<D>) for bf16 / fp16 and the supported head dims.
template <typename F>
void with_type_and_dim(const at::Tensor& q, F&& f) {
  with_head_dim(q.size(3), [&](auto d) {
    if (q.scalar_type() == at::kBFloat16) f(__nv_bfloat16{}, d);
    else f(__half{}, d);  // cuda_api.cpp sends bf16 / fp16 only
  });
}

}  // namespace

bool wgmma_available(int device) {
  // 0: not probed yet, 1: no, 2: yes. One blocking probe per device and process, on first use.
  static std::array<std::atomic<int>, 64> known{};
  if (device < 0 || device >= static_cast<int>(known.size())) return false;
  if (const int k = known[device].load()) return k == 2;
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  bool yes = false;
  if (major == 9 && minor == 0) {  // sm_90a code runs on compute capability 9.0 only
    const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
    // The probe reads its flag back (a synchronising copy), which a stream under CUDA graph capture
    // does not allow: say so instead of invalidating the capture. torch.compile's CUDA graphs run
    // each graph eagerly once before capturing it, which probes here first.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(device), &capture));
    TORCH_CHECK(capture == cudaStreamCaptureStatusNone,
                msg("radd_fast.masked_attention: the wgmma kernels are probed on their first use on a device, "
                    "which cannot happen under CUDA graph capture; run one call on device ", device,
                    " before capturing"));
    at::Tensor flag = at::zeros({1}, at::TensorOptions().device(at::kCUDA, device).dtype(at::kInt));
    wgmma_probe_kernel<<<1, 1, 0, c10::cuda::getCurrentCUDAStream(device)>>>(flag.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    yes = flag.item<int>() == 1;
  }
  known[device].store(yes ? 2 : 1);
  return yes;
}

size_t wgmma_smem_bytes(int64_t head_dim, bool backward, bool keys128) {
  size_t bytes = 0;  // the same for bf16 and fp16
  with_head_dim(head_dim, [&](auto d) {
    constexpr int D = decltype(d)::value;
    bytes = backward  ? BwdWgmmaSmem<__nv_bfloat16, D>::kBytes
            : keys128 ? FwdWgmmaSmem<__nv_bfloat16, D, 2>::kBytes
                      : FwdWgmmaSmem<__nv_bfloat16, D>::kBytes;
  });
  return bytes;
}

void launch_fwd_wgmma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const MaskParams& mp,
                      double scale, bool keys128, at::Tensor& out, at::Tensor& lse) {
  with_type_and_dim(q, [&](auto t, auto d) {
    if (keys128) fwd_typed<decltype(t), decltype(d)::value, 2>(q, k, v, mp, scale, out, lse);
    else fwd_typed<decltype(t), decltype(d)::value, 1>(q, k, v, mp, scale, out, lse);
  });
}

void launch_bwd_wgmma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& grad_out,
                      const at::Tensor& lse, const at::Tensor& delta, at::Tensor& dk, at::Tensor& dv,
                      at::Tensor& dq_acc, const MaskParams& mp, double scale) {
  with_type_and_dim(q, [&](auto t, auto d) {
    bwd_typed<decltype(t), decltype(d)::value>(q, k, v, grad_out, lse, delta, dk, dv, dq_acc, mp, scale);
  });
}

}  // namespace radd_fast::attention::cuda
