"""The public ops. Each takes ``impl``:

* ``"auto"`` (default): the compiled kernel when one exists for the input's device, else the
  reference implementation;
* ``"fused"``: the compiled kernel, or an error that says why it is unavailable and how to fix it;
* ``"reference"``: the pure-PyTorch oracle of radd_fast.reference.
"""

from __future__ import annotations

import torch

from . import _checks, _extension, ops, reference

IMPLS = ("auto", "fused", "reference")


def use_fused(op: str, impl: str, device: torch.device) -> bool:
    """Resolve `impl` for `op` on `device`: True for the compiled kernel, False for the reference."""
    if impl not in IMPLS:
        raise ValueError(f"radd_fast.{op}: 'impl' must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl == "reference":
        return False
    why = _extension.kernel_unavailable_reason(op, device.type)
    if why is None:
        return True
    if impl == "fused":
        raise RuntimeError(why)
    return False


def rotary_tables(
    seq_len: int,
    head_dim: int,
    base: float = 10_000.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    inv_freq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (seq_len, head_dim // 2) for `rotary`; fp32 as in the reference network
    (use dtype=torch.float64 with float64 activations)."""
    return reference.rotary_tables(seq_len, head_dim, base, device=device, dtype=dtype, inv_freq=inv_freq)


class _RotaryInplace(torch.autograd.Function):
    """In-place rotary that autograd can see through: the backward rotates the gradient back."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, inverse):
        ops.rotary_(qkv, cos, sin, inverse)
        ctx.mark_dirty(qkv)
        ctx.save_for_backward(cos, sin)
        ctx.inverse = inverse
        return qkv

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return ops.rotary(grad.contiguous(), cos, sin, not ctx.inverse), None, None, None


def rotary(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    inverse: bool = False,
    inplace: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    """Rotary position embedding of the q and k slices of a packed qkv tensor.

    Args:
        qkv: (B, L, 3, heads, head_dim), contiguous, float32/float64/bfloat16/float16 -- the
            output of a fused qkv Linear reshaped, with q, k, v at index 0, 1, 2 of dim 2.
        cos, sin: (>= L, head_dim // 2) tables from `rotary_tables` (float32; float64 for float64 qkv).
        inverse: rotate by the opposite angles (undoes the embedding).
        inplace: overwrite q and k in `qkv` (saves an allocation and the v copy); still differentiable.
        impl: "auto", "fused" or "reference" (module docstring).

    Returns:
        The rotated tensor (``qkv`` itself when ``inplace``); v is unchanged.
    """
    for t, name in ((qkv, "qkv"), (cos, "cos"), (sin, "sin")):
        _checks.check_tensor(t, "rotary", name)
    if not use_fused("rotary", impl, qkv.device):
        _checks.check_rotary(qkv, cos, sin, "rotary_" if inplace else "rotary")
        out = reference.rotary(qkv, cos, sin, inverse)
        if not inplace:
            return out
        return qkv.copy_(out)
    if not inplace:
        return ops.rotary(qkv, cos, sin, inverse)
    if torch.is_grad_enabled() and qkv.requires_grad:
        return _RotaryInplace.apply(qkv, cos, sin, inverse)
    ops.rotary_(qkv, cos, sin, inverse)
    return qkv

