"""Python registrations for the compiled ops: fake (meta) kernels for torch.compile and opcheck,
autograd formulas, and thin typed wrappers of torch.ops.radd_fast.*.

Everything here is a no-op when the extension is unavailable (the ops then do not exist).
"""

from __future__ import annotations

import torch

from . import _checks, _extension


def rotary(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Out-of-place rotary of q and k in a packed qkv (B, L, 3, H, D); differentiable."""
    return torch.ops.radd_fast.rotary.default(qkv, cos, sin, inverse)


def rotary_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> None:
    """In-place rotary of q and k in a packed qkv; not differentiable on its own (see functional.rotary)."""
    torch.ops.radd_fast.rotary_.default(qkv, cos, sin, inverse)


def _register() -> None:
    @torch.library.register_fake("radd_fast::rotary")
    def _rotary_fake(qkv, cos, sin, inverse=False):
        _checks.check_rotary(qkv, cos, sin, "rotary")
        return torch.empty_like(qkv)

    @torch.library.register_fake("radd_fast::rotary_")
    def _rotary_inplace_fake(qkv, cos, sin, inverse=False):
        _checks.check_rotary(qkv, cos, sin, "rotary_")

    def _rotary_setup_context(ctx, inputs, output):
        _, cos, sin, inverse = inputs
        ctx.save_for_backward(cos, sin)
        ctx.inverse = inverse

    def _rotary_backward(ctx, grad):
        # A rotation's transpose is the rotation by the opposite angle. The tables are constants
        # (functions of position only), so they get no gradient.
        cos, sin = ctx.saved_tensors
        return rotary(grad.contiguous(), cos, sin, not ctx.inverse), None, None, None

    torch.library.register_autograd("radd_fast::rotary", _rotary_backward, setup_context=_rotary_setup_context)


if _extension.AVAILABLE:
    _register()
