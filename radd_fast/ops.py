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


# ----------------------------------------------------------------------------------- masked attention
def masked_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    order: torch.Tensor | None,
    strict: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, L, H, D), lse (B, H, L)) of the fused masked attention; differentiable in q, k, v."""
    return torch.ops.radd_fast.masked_attention_fwd.default(q, k, v, key_padding_mask, order, strict, scale)


def masked_attention_bwd(grad_out, q, k, v, out, lse, grad_lse, key_padding_mask, order, strict: bool, scale: float):
    """(dq, dk, dv) of masked_attention_fwd, from grad_out and (optionally) the gradient of lse."""
    return torch.ops.radd_fast.masked_attention_bwd.default(
        grad_out, q, k, v, out, lse, grad_lse, key_padding_mask, order, strict, scale
    )


def _register_attention() -> None:
    def _acc(dtype: torch.dtype) -> torch.dtype:
        return torch.float64 if dtype == torch.float64 else torch.float32

    @torch.library.register_fake("radd_fast::masked_attention_fwd")
    def _fwd_fake(q, k, v, key_padding_mask, order, strict, scale):
        _checks.check_masked_attention(q, k, v, key_padding_mask, order, scale, "masked_attention")
        _checks.check_masked_attention_cuda_head_dim(q, "masked_attention")
        B, L, H, _ = q.shape
        return q.new_empty(q.shape), q.new_empty((B, H, L), dtype=_acc(q.dtype))

    @torch.library.register_fake("radd_fast::masked_attention_bwd")
    def _bwd_fake(grad_out, q, k, v, out, lse, grad_lse, key_padding_mask, order, strict, scale):
        _checks.check_masked_attention_bwd(grad_out, q, k, v, out, lse, grad_lse, key_padding_mask, order, scale)
        _checks.check_masked_attention_cuda_head_dim(q, "masked_attention_bwd")
        return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)

    def _setup_context(ctx, inputs, output):
        q, k, v, key_padding_mask, order, strict, scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, key_padding_mask, order)
        ctx.strict, ctx.scale = strict, scale
        # Unused outputs (usually lse) arrive as None rather than as materialised zeros.
        ctx.set_materialize_grads(False)

    def _backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, key_padding_mask, order = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        elif grad_out.numel() > 0 and grad_out.shape[-1] > 1 and grad_out.stride(-1) != 1:
            grad_out = grad_out.contiguous()
        dq, dk, dv = masked_attention_bwd(
            grad_out, q, k, v, out, lse, grad_lse, key_padding_mask, order, ctx.strict, ctx.scale
        )
        return dq, dk, dv, None, None, None, None

    torch.library.register_autograd("radd_fast::masked_attention_fwd", _backward, setup_context=_setup_context)


if _extension.AVAILABLE and "masked_attention_fwd" in _extension.op_names():
    _register_attention()

# ------------------------------------------------------------------------------------ linear_dce_loss
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def linear_dce_loss(hidden, weight, bias, target, row_weight, num_classes: int) -> torch.Tensor:
    """Per-row weighted cross-entropy of hidden @ weight^T + bias, (N,) in fp32 (fp64 for fp64);
    differentiable w.r.t. hidden, weight and bias (row_weight and target are constants)."""
    return torch.ops.radd_fast.linear_dce_loss.default(hidden, weight, bias, target, row_weight, num_classes)


def linear_dce_loss_grad(hidden, weight, bias, target, row_weight, num_classes: int, output_mask):
    """(per-row loss, d sum(loss)/d hidden, .../d weight, .../d bias); a gradient not asked for in
    output_mask is an empty tensor. Not differentiable."""
    return torch.ops.radd_fast.linear_dce_loss_grad.default(hidden, weight, bias, target, row_weight, num_classes,
                                                           list(output_mask))


def _register_linear_dce() -> None:
    @torch.library.register_fake("radd_fast::linear_dce_loss")
    def _fwd_fake(hidden, weight, bias, target, row_weight, num_classes):
        _checks.check_linear_dce(hidden, weight, bias, target, row_weight, num_classes)
        return hidden.new_empty((hidden.shape[0],), dtype=_acc_dtype(hidden.dtype))

    @torch.library.register_fake("radd_fast::linear_dce_loss_grad")
    def _grad_fake(hidden, weight, bias, target, row_weight, num_classes, output_mask):
        _checks.check_linear_dce(hidden, weight, bias, target, row_weight, num_classes)
        loss = hidden.new_empty((hidden.shape[0],), dtype=_acc_dtype(hidden.dtype))
        gh = torch.empty_like(hidden) if output_mask[0] else hidden.new_empty((0,))
        gw = torch.empty_like(weight) if output_mask[1] else weight.new_empty((0,))
        gb = torch.empty_like(bias) if output_mask[2] and bias is not None else weight.new_empty((0,))
        return loss, gh, gw, gb

    def _setup_context(ctx, inputs, output):
        hidden, weight, bias, target, row_weight, num_classes = inputs
        ctx.save_for_backward(hidden, weight, bias, target, row_weight)
        ctx.num_classes = num_classes

    def _backward(ctx, grad):
        # d/dθ sum_r grad_r * loss_r is the gradient of the same loss with row weights row_weight * grad:
        # one call of the gradient kernel, which recomputes the logits chunk by chunk.
        hidden, weight, bias, target, row_weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]]
        if not any(mask):
            return None, None, None, None, None, None
        _, gh, gw, gb = linear_dce_loss_grad(hidden, weight, bias, target, row_weight.to(grad.dtype) * grad,
                                             ctx.num_classes, mask)
        return (gh if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None, None, None, None)

    torch.library.register_autograd("radd_fast::linear_dce_loss", _backward, setup_context=_setup_context)


if _extension.AVAILABLE:
    _register_linear_dce()

# ------------------------------------------------------------------------------------------- sampler
def reveal_schedule(masked: torch.Tensor, step_cdf: torch.Tensor, seed: int, offset: int):
    """(step, num_events, perm, row_index, round_offsets) of csrc/reveal_schedule/schedule.h."""
    return torch.ops.radd_fast.reveal_schedule.default(masked, step_cdf, seed, offset)


def sample_rows(hidden, weight, bias, num_classes: int, temperature: float, top_k: int, top_p: float, greedy: bool,
                seed: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, log_prob) of the rows of `hidden`; csrc/sample_rows/sample_rows.h."""
    return torch.ops.radd_fast.sample_rows.default(hidden, weight, bias, num_classes, temperature, top_k, top_p,
                                                   greedy, seed, offset)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    return torch.ops.radd_fast.filter_logits.default(logits, temperature, top_k, top_p)


def _register_sampler() -> None:
    @torch.library.register_fake("radd_fast::reveal_schedule")
    def _reveal_schedule_fake(masked, step_cdf, seed, offset):
        _checks.check_reveal_schedule(masked, step_cdf, offset)
        B, L = masked.shape
        rounds = torch.sym_min(step_cdf.shape[0], L)
        i32, i64 = dict(dtype=torch.int32), dict(dtype=torch.int64)
        return (masked.new_empty((B, L), **i32), masked.new_empty((B,), **i32), masked.new_empty((B,), **i64),
                masked.new_empty((B * L,), **i64), masked.new_empty((rounds + 1,), **i64))

    @torch.library.register_fake("radd_fast::sample_rows")
    def _sample_rows_fake(hidden, weight, bias, num_classes, temperature, top_k, top_p, greedy, seed, offset):
        _checks.check_sample_rows(hidden, weight, bias, num_classes, temperature, top_k, top_p, offset)
        N = hidden.shape[0]
        return hidden.new_empty((N,), dtype=torch.int64), hidden.new_empty((N,))

    @torch.library.register_fake("radd_fast::filter_logits")
    def _filter_logits_fake(logits, temperature, top_k, top_p):
        _checks.check_filter_logits(logits, temperature, top_k, top_p)
        return torch.empty_like(logits)


if _extension.AVAILABLE:
    _register_sampler()
