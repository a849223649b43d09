"""Rotary embedding on the qkv layout of a RADD block: reference (pure PyTorch) vs fused kernel.

Rate: GB/s over the algorithmic bytes of the out-of-place op (read qkv, write qkv), so the two
implementations are measured against the same yardstick.
"""

import pytest
import torch

import radd_fast

SHAPE = (8, 1024, 12, 64)  # B, L, heads, head_dim: the small model at L = 1,024


def dtype_for(device):
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@pytest.mark.parametrize("inplace", [False, True], ids=["out-of-place", "in-place"])
def test_rotary_forward(bench, device, impl, inplace):
    B, L, H, D = SHAPE
    dtype = dtype_for(device)
    qkv = torch.randn(B, L, 3, H, D, device=device, dtype=dtype)
    cos, sin = radd_fast.rotary_tables(L, D, device=device)
    fn = lambda: radd_fast.rotary(qkv, cos, sin, inplace=inplace, impl=impl)
    bench(fn, group=f"rotary fwd {'in-place' if inplace else 'out-of-place'} {device.type}", impl=impl,
          device=device, dtype=dtype, shape=qkv.shape, bytes=2 * qkv.numel() * qkv.element_size())


def test_rotary_forward_backward(bench, device, impl):
    B, L, H, D = SHAPE
    dtype = dtype_for(device)
    qkv = torch.randn(B, L, 3, H, D, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(qkv)
    cos, sin = radd_fast.rotary_tables(L, D, device=device)

    def fn():
        qkv.grad = None
        radd_fast.rotary(qkv, cos, sin, impl=impl).backward(grad)

    bench(fn, group=f"rotary fwd+bwd {device.type}", impl=impl, device=device, dtype=dtype, shape=qkv.shape,
          bytes=4 * qkv.numel() * qkv.element_size())
