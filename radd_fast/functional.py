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



# ----------------------------------------------------------------------------------- masked attention
import math  # noqa: E402  (kept with this section, which other branches append after)


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    strict: bool = False,
    scale: float | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Softmax attention under a key-padding and an order mask, without an L x L tensor.

    Query i of batch b may attend key j iff ``key_padding_mask[b, j]`` (when given) and, when
    ``order`` is given, ``order[b, j] < order[b, i]`` or (``order[b, j] == order[b, i]`` and not
    ``strict``). One order tensor expresses bidirectional attention (all equal, or None), causal
    (order = position), any-order autoregression (a permutation), prefix-LM and block diffusion
    (block ids). A query with no allowed key outputs zeros and gets zero gradients, never NaN.

    Args:
        q, k, v: (B, L, heads, head_dim), same dtype (float32, float64, bfloat16, float16) and
            device, each contiguous in head_dim (other strides are free: the q/k/v slices of a packed
            (B, L, 3, heads, head_dim) qkv need no copy). On CUDA head_dim must be 32, 64 or 128.
        key_padding_mask: (B, L) bool, True for real keys; None means no padding.
        order: (B, L) int32/int64; None means bidirectional.
        strict: with ``order``, exclude keys of equal order (query i then never sees key i).
        scale: score multiplier; default 1 / sqrt(head_dim).
        impl: "auto", "fused" or "reference" (module docstring).

    Returns:
        (B, L, heads, head_dim) in q's dtype, accumulated in fp32 (fp64 for fp64 inputs). Under
        ``torch.autocast`` fp32 inputs run in the autocast dtype.
    """
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        _checks.check_tensor(t, "masked_attention", name)
    _checks.check_dim(q, 4, "masked_attention", "q", "(B, L, heads, head_dim)")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0
    scale = float(scale)
    # "auto" falls back to the reference for head dims the CUDA kernels are not compiled for;
    # "fused" raises the kernel's error instead.
    unsupported = q.device.type == "cuda" and q.shape[-1] not in (32, 64, 128)
    if unsupported and impl == "auto":
        impl = "reference"
    if not use_fused("masked_attention_fwd", impl, q.device):
        _checks.check_masked_attention(q, k, v, key_padding_mask, order, scale, "masked_attention")
        return reference.masked_attention(q, k, v, key_padding_mask, order, strict, scale)
    return ops.masked_attention_fwd(q, k, v, key_padding_mask, order, strict, scale)[0]
