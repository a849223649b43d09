// CUDA launchers of radd_fast::masked_attention_fwd / _bwd: mask preparation and launches (kernels in
// kernels.cuh), called by cuda_api.cpp once the arguments are checked and the device is set.
// Everything is enqueued on the current stream; nothing synchronises the host. bf16/fp16 run on
// tensor cores, fp32/fp64 with FMAs; head_dim 32, 64 or 128.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "attention/kernels.cuh"
#include "attention/launch.cuh"

namespace radd_fast::attention::cuda {
namespace {

// The mask tensors the kernels read, kept alive until the launches are enqueued (the caching
// allocator keeps their memory for the stream afterwards).
struct DeviceMask {
  at::Tensor order, pad, stats;
  MaskParams params;
};

DeviceMask prepare_mask(const c10::optional<at::Tensor>& key_padding_mask, const c10::optional<at::Tensor>& order,
                        bool strict, int64_t B, int64_t L, int64_t tile, const at::Tensor& like, cudaStream_t stream) {
  DeviceMask m;
  m.params.L = L;
  m.params.strict = strict;
  m.params.n_tiles = (L + tile - 1) / tile;
  if (order.has_value()) {
    m.order = order->to(at::kLong).contiguous();  // int32 is widened: one kernel reads both
    m.params.order = m.order.const_data_ptr<int64_t>();
  }
  if (key_padding_mask.has_value()) {
    m.pad = key_padding_mask->contiguous();
    m.params.pad = m.pad.const_data_ptr<bool>();
  }
  if (order.has_value() || key_padding_mask.has_value()) {
    const int64_t count = B * m.params.n_tiles;
    m.stats = at::empty({count * static_cast<int64_t>(sizeof(TileStats))}, like.options().dtype(at::kByte));
    auto* stats = reinterpret_cast<TileStats*>(m.stats.data_ptr());
    const int threads = 256;
    const int64_t blocks = (count * 32 + threads - 1) / threads;
    tile_stats_kernel<<<grid_size(blocks), threads, 0, stream>>>(m.params, tile, stats, count);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    m.params.stats = stats;
  }
  return m;
}

// cp.async moves 16-byte chunks: rows must start 16-byte aligned. Views of a contiguous packed qkv
// satisfy this for D in {32, 64, 128}; anything else is copied once.
at::Tensor aligned16(const at::Tensor& t) {
  bool ok = reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  for (int d = 0; d < 3; ++d) ok = ok && (t.size(d) <= 1 || t.stride(d) % 8 == 0);
  return ok ? t : at::empty(t.sizes(), t.options()).copy_(t);
}

template <typename T, int D>
size_t smem_of(bool backward, TcKernel kernel) {
  constexpr bool mma = std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;
  if constexpr (mma) {
    if (kernel == TcKernel::kWgmma || kernel == TcKernel::kWgmmaK128)
      return wgmma_smem_bytes(D, backward, kernel == TcKernel::kWgmmaK128);
    if (backward) return kernel == TcKernel::kMma128 ? BwdMmaSmem<T, D, 8>::kBytes : BwdMmaSmem<T, D, 4>::kBytes;
    if (kernel == TcKernel::kMma64K128) return FwdMmaSmem<T, D, 1, 2>::kBytes;
    if constexpr (D <= 64) {
      if (kernel == TcKernel::kMma128) return FwdMmaSmem<T, D, 2>::kBytes;
    }
    return FwdMmaSmem<T, D, 1>::kBytes;
  } else {
    return backward ? BwdFmaSmem<T, D>::kBytes : FwdFmaSmem<T, D>::kBytes;
  }
}

}  // namespace

size_t smem_bytes(at::ScalarType dtype, int64_t head_dim, bool backward, TcKernel kernel) {
  size_t bytes = 0;
  with_head_dim(head_dim, [&](auto d) {
    constexpr int D = decltype(d)::value;
    switch (dtype) {
      case at::kBFloat16: bytes = smem_of<__nv_bfloat16, D>(backward, kernel); break;
      case at::kHalf: bytes = smem_of<__half, D>(backward, kernel); break;
      case at::kFloat: bytes = smem_of<float, D>(backward, kernel); break;
      default: bytes = smem_of<double, D>(backward, kernel); break;
    }
  });
  return bytes;
}

namespace {
// ---------------------------------------------------------------------------------- forward
template <typename T, int D, int MT, int NK = 1>
void launch_fwd_mma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const MaskParams& mp,
                    double scale, at::Tensor& out, at::Tensor& lse, cudaStream_t stream) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), rows_per_block = MT * kMmaTile;
  const int64_t grid = grid_size(B * H * ((L + rows_per_block - 1) / rows_per_block));
  auto kernel = fwd_mma_kernel<T, D, MT, NK>;
  constexpr size_t smem = FwdMmaSmem<T, D, MT, NK>::kBytes;
  set_smem(kernel, smem);
  kernel<<<grid, kMmaThreads, smem, stream>>>(rows<T>(q), rows<T>(k), rows<T>(v), reinterpret_cast<T*>(out.data_ptr()),
                                              lse.data_ptr<float>(), mp, H, static_cast<float>(scale) * kLog2e);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void fwd_mma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const MaskParams& mp, double scale,
             TcKernel kernel, at::Tensor& out, at::Tensor& lse, cudaStream_t stream) {
  const at::Tensor qa = aligned16(q), ka = aligned16(k), va = aligned16(v);
  with_head_dim(q.size(3), [&](auto d) {
    constexpr int D = decltype(d)::value;
    if (kernel == TcKernel::kWgmma || kernel == TcKernel::kWgmmaK128)
      return launch_fwd_wgmma(qa, ka, va, mp, scale, kernel == TcKernel::kWgmmaK128, out, lse);
    if (kernel == TcKernel::kMma64K128) return launch_fwd_mma<T, D, 1, 2>(qa, ka, va, mp, scale, out, lse, stream);
    if constexpr (D <= 64) {  // 128-query blocks at head_dim 128 spill registers (see kernels.cuh)
      if (kernel == TcKernel::kMma128) return launch_fwd_mma<T, D, 2>(qa, ka, va, mp, scale, out, lse, stream);
    }
    launch_fwd_mma<T, D, 1>(qa, ka, va, mp, scale, out, lse, stream);
  });
}

template <typename T>
void fwd_fma(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const MaskParams& mp, double scale,
             at::Tensor& out, at::Tensor& lse, cudaStream_t stream) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  const int64_t grid = grid_size(B * H * ((L + kFmaTile - 1) / kFmaTile));
  with_head_dim(q.size(3), [&](auto d) {
    constexpr int D = decltype(d)::value;
    auto kernel = fwd_fma_kernel<T, D>;
    constexpr size_t smem = FwdFmaSmem<T, D>::kBytes;
    set_smem(kernel, smem);
    kernel<<<grid, fma_threads<D>(), smem, stream>>>(rows<T>(q), rows<T>(k), rows<T>(v), out.data_ptr<T>(),
                                                     lse.data_ptr<T>(), mp, H, static_cast<T>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const c10::optional<at::Tensor>& key_padding_mask,
                                       const c10::optional<at::Tensor>& order, bool strict, double scale,
                                       TcKernel kernel) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({B, H, L}, q.options().dtype(acc_dtype(q.scalar_type())));
  if (out.numel() == 0) return {out, lse};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dt = q.scalar_type();
  const bool mma = dt == at::kBFloat16 || dt == at::kHalf;
  const DeviceMask mk = prepare_mask(key_padding_mask, order, strict, B, L, mma ? kMmaTile : kFmaTile, q, stream);
  switch (dt) {
    case at::kBFloat16: fwd_mma<__nv_bfloat16>(q, k, v, mk.params, scale, kernel, out, lse, stream); break;
    case at::kHalf: fwd_mma<__half>(q, k, v, mk.params, scale, kernel, out, lse, stream); break;
    case at::kFloat: fwd_fma<float>(q, k, v, mk.params, scale, out, lse, stream); break;
    case at::kDouble: fwd_fma<double>(q, k, v, mk.params, scale, out, lse, stream); break;
    default: TORCH_CHECK(false, "unreachable");  // check_fwd_args checked the dtype
  }
  return {out, lse};
}

namespace {
// --------------------------------------------------------------------------------- backward
// delta = rowsum(dO * out) - dlse, in the accumulation type A.
template <typename T, typename A>
at::Tensor compute_delta(const at::Tensor& grad_out, const at::Tensor& out, const c10::optional<at::Tensor>& grad_lse,
                         int64_t B, int64_t L, int64_t H, int64_t D, const at::Tensor& like_acc, cudaStream_t stream) {
  at::Tensor delta = at::empty({B, H, L}, like_acc.options());
  const at::Tensor out_c = out.contiguous();
  at::Tensor glse;
  if (grad_lse.has_value()) glse = grad_lse->contiguous();
  const int64_t warps = B * L * H;
  const int threads = 256;
  delta_kernel<T, A><<<grid_size((warps * 32 + threads - 1) / threads), threads, 0, stream>>>(
      rows<T>(grad_out), reinterpret_cast<const T*>(out_c.const_data_ptr()),
      glse.defined() ? glse.const_data_ptr<A>() : nullptr, delta.data_ptr<A>(), B, L, H, D);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return delta;
}

template <typename T>
void bwd_mma(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             const at::Tensor& out, const at::Tensor& lse, const c10::optional<at::Tensor>& grad_lse,
             const MaskParams& mp, double scale, TcKernel tc, bool bulk_dq, at::Tensor& dq, at::Tensor& dk,
             at::Tensor& dv, cudaStream_t stream) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3);
  const at::Tensor go = aligned16(grad_out), qa = aligned16(q), ka = aligned16(k), va = aligned16(v);
  const at::Tensor lse_c = lse.contiguous();
  const at::Tensor delta = compute_delta<T, float>(go, out, grad_lse, B, L, H, D, lse_c, stream);
  at::Tensor dq_acc = at::zeros(q.sizes(), q.options().dtype(at::kFloat));
  if (tc == TcKernel::kWgmma) {
    launch_bwd_wgmma(qa, ka, va, go, lse_c, delta, dk, dv, dq_acc, mp, scale);
  } else if (bulk_dq) {
    launch_bwd_mma_bulk(qa, ka, va, go, lse_c, delta, dk, dv, dq_acc, mp, scale, tc == TcKernel::kMma128);
  } else {
    auto launch = [&](auto d, auto kw) {
      constexpr int Dc = decltype(d)::value, KW = decltype(kw)::value;
      const int64_t keys = 16 * KW, grid = grid_size(B * H * ((L + keys - 1) / keys));
      auto kernel = bwd_mma_kernel<T, Dc, KW>;
      constexpr size_t smem = BwdMmaSmem<T, Dc, KW>::kBytes;
      set_smem(kernel, smem);
      kernel<<<grid, KW * 32, smem, stream>>>(rows<T>(qa), rows<T>(ka), rows<T>(va), rows<T>(go),
                                              lse_c.const_data_ptr<float>(), delta.const_data_ptr<float>(),
                                              reinterpret_cast<T*>(dk.data_ptr()), reinterpret_cast<T*>(dv.data_ptr()),
                                              dq_acc.data_ptr<float>(), mp, H, static_cast<float>(scale),
                                              static_cast<float>(scale) * kLog2e);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    with_head_dim(D, [&](auto d) {
      if (tc == TcKernel::kMma128) {
        launch(d, std::integral_constant<int, 8>{});
      } else {
        launch(d, std::integral_constant<int, 4>{});
      }
    });
  }
  dq.copy_(dq_acc);  // fp32 -> bf16/fp16 (dS was pre-scaled)
}

template <typename T>
void bwd_fma(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             const at::Tensor& out, const at::Tensor& lse, const c10::optional<at::Tensor>& grad_lse,
             const MaskParams& mp, double scale, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, cudaStream_t stream) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3);
  const at::Tensor lse_c = lse.contiguous();
  const at::Tensor delta = compute_delta<T, T>(grad_out, out, grad_lse, B, L, H, D, lse_c, stream);
  dq.zero_();  // accumulated by atomics
  const int64_t grid = grid_size(B * H * ((L + kFmaTile - 1) / kFmaTile));
  with_head_dim(D, [&](auto d) {
    constexpr int Dc = decltype(d)::value;
    auto kernel = bwd_fma_kernel<T, Dc>;
    constexpr size_t smem = BwdFmaSmem<T, Dc>::kBytes;
    set_smem(kernel, smem);
    kernel<<<grid, fma_threads<Dc>(), smem, stream>>>(rows<T>(q), rows<T>(k), rows<T>(v), rows<T>(grad_out),
                                                      lse_c.const_data_ptr<T>(), delta.const_data_ptr<T>(),
                                                      dq.data_ptr<T>(), dk.data_ptr<T>(), dv.data_ptr<T>(), mp, H,
                                                      static_cast<T>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                                   const c10::optional<at::Tensor>& grad_lse,
                                                   const c10::optional<at::Tensor>& key_padding_mask,
                                                   const c10::optional<at::Tensor>& order, bool strict, double scale,
                                                   TcKernel kernel, bool bulk_dq) {
  const int64_t B = q.size(0), L = q.size(1);
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(q.sizes(), q.options());
  at::Tensor dv = at::empty(q.sizes(), q.options());
  if (q.numel() == 0) return {dq, dk, dv};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dt = q.scalar_type();
  const bool mma = dt == at::kBFloat16 || dt == at::kHalf;
  const DeviceMask mk = prepare_mask(key_padding_mask, order, strict, B, L, mma ? kMmaTile : kFmaTile, q, stream);
  switch (dt) {
    case at::kBFloat16:
      bwd_mma<__nv_bfloat16>(grad_out, q, k, v, out, lse, grad_lse, mk.params, scale, kernel, bulk_dq, dq, dk, dv,
                             stream);
      break;
    case at::kHalf:
      bwd_mma<__half>(grad_out, q, k, v, out, lse, grad_lse, mk.params, scale, kernel, bulk_dq, dq, dk, dv, stream);
      break;
    case at::kFloat: bwd_fma<float>(grad_out, q, k, v, out, lse, grad_lse, mk.params, scale, dq, dk, dv, stream); break;
    case at::kDouble:
      bwd_fma<double>(grad_out, q, k, v, out, lse, grad_lse, mk.params, scale, dq, dk, dv, stream);
      break;
    default: TORCH_CHECK(false, "unreachable");
  }
  return {dq, dk, dv};
}

}  // namespace radd_fast::attention::cuda
