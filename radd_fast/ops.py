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
