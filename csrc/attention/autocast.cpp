// Autocast for radd_fast::masked_attention_fwd: inside torch.autocast, fp32 q, k, v are cast to the
// autocast dtype (bf16/fp16) before the kernel runs, as PyTorch does for its own attention and
// matmuls ("lower precision" ops). fp64 and already-reduced inputs pass through unchanged. The casts
// happen above autograd, so their gradients flow back to the fp32 inputs.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace radd_fast::attention {
namespace {

template <c10::DeviceType device, c10::DispatchKey key>
std::tuple<at::Tensor, at::Tensor> fwd_autocast(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                const c10::optional<at::Tensor>& key_padding_mask,
                                                const c10::optional<at::Tensor>& order, bool strict, double scale) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("radd_fast::masked_attention_fwd", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                           const c10::optional<at::Tensor>&, bool, double)>();
  const auto dt = at::autocast::get_autocast_dtype(device);
  return op.call(at::autocast::cached_cast(dt, q, device), at::autocast::cached_cast(dt, k, device),
                 at::autocast::cached_cast(dt, v, device), key_padding_mask, order, strict, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(radd_fast, AutocastCPU, m) {
  m.impl("masked_attention_fwd", &fwd_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(radd_fast, AutocastCUDA, m) {
  m.impl("masked_attention_fwd", &fwd_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}

}  // namespace radd_fast::attention
