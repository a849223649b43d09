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



# ------------------------------------------------------------------------------------------- sampler
def reveal_schedule(masked: torch.Tensor, step_cdf: torch.Tensor, seed: int = 0, offset: int = 0, *,
                    impl: str = "auto"):
    """Reveal steps of every masked position, drawn up front, and the sampler's round plan.

    Args:
        masked: (B, L) bool, True where a token is to be generated.
        step_cdf: (steps,) float64, P(reveal step <= k) (reference.reveal_step_cdf).
        seed, offset: Philox key and stream; the same (seed, offset) gives the same schedule on
            every device and implementation.

    Returns:
        (step (B, L) int32, -1 where not masked; num_events (B,) int32; perm (B,) int64, sequences
        by event count descending; row_index (B*L,) int64, masked positions of the perm-sorted
        batch as i * L + l in round order, -1 after them; round_offsets (min(steps, L) + 1,) int64).
        Round r reveals row_index[round_offsets[r]:round_offsets[r+1]] of the sequences perm[:A_r].
    """
    _checks.check_tensor(masked, "reveal_schedule", "masked")
    seed = reference.seed64(seed)
    if not use_fused("reveal_schedule", impl, masked.device):
        _checks.check_reveal_schedule(masked, step_cdf, offset)
        return reference.reveal_schedule(masked, step_cdf, seed, offset)
    return ops.reveal_schedule(masked, step_cdf, seed, offset)


def sample_rows(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                num_classes: int | None = None, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, greedy: bool = False, seed: int = 0, offset: int = 0,
                impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token for each row of `hidden` from the output layer (weight, bias).

    Logits = hidden @ weight[:V].T + bias[:V] are computed for these rows only (V = num_classes,
    default weight rows - 1: the mask column is never a class), divided by `temperature`, filtered
    by top-k then top-p (as reference.filter_logits) and sampled by an exponential race on Philox
    noise keyed by (seed, offset, row): reproducible, no host synchronisation. `greedy` takes the
    argmax instead. hidden, weight and bias: float32 or float64, same dtype.

    Returns (tokens (N,) int64, log_prob (N,)): the log-probability of each token under the
    filtered, tempered distribution.
    """
    _checks.check_tensor(hidden, "sample_rows", "hidden")
    _checks.check_tensor(weight, "sample_rows", "weight")
    V = weight.shape[0] - 1 if num_classes is None else num_classes
    k, p, seed = top_k or 0, 1.0 if top_p is None else top_p, reference.seed64(seed)
    if not use_fused("sample_rows", impl, hidden.device):
        _checks.check_sample_rows(hidden, weight, bias, V, temperature, k, p, offset)
        return reference.sample_rows(hidden, weight, bias, V, temperature, k, p, greedy, seed, offset)
    return ops.sample_rows(hidden, weight, bias, V, temperature, k, p, greedy, seed, offset)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, *, impl: str = "auto") -> torch.Tensor:
    """logits / temperature where top-k then top-p keep them, -inf elsewhere (rows of a 2-D tensor),
    in the logits' dtype (float32 or float64); the sampler's filters, usable on their own."""
    _checks.check_tensor(logits, "filter_logits", "logits")
    k, p = top_k or 0, 1.0 if top_p is None else top_p
    if not use_fused("filter_logits", impl, logits.device):
        _checks.check_filter_logits(logits, temperature, k, p)
        return reference.filter_logits(logits, temperature, k or None, p).to(logits.dtype)
    return ops.filter_logits(logits, temperature, k, p)
