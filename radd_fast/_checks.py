"""Python-side argument checks. They mirror csrc/common/checks.h so the reference fallback and the
fake (meta) kernels reject bad input with the same messages as the compiled kernels."""

from __future__ import annotations

import dataclasses
import numbers
import operator
import types
import typing
from collections.abc import Iterable

import torch


# ------------------------------------------------------------------------------------------- scalars
# Python scalars are checked here, before they reach a kernel's schema (whose own message is a
# RuntimeError about the "Declaration") or a torch call that names a different argument. `where` is
# the message's prefix: "radd_fast.sample_rows", "sampling", "TrainConfig", ...
def as_int(value, where: str, name: str, *, lo: int | None = None) -> int:
    """`value` as a Python int (ints and integer scalars of numpy / torch; never bool or float)."""
    if isinstance(value, torch.SymInt):  # a dynamic size under torch.compile: left to the op's schema
        return value
    try:
        if isinstance(value, (bool, float)):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{where}: '{name}' must be an integer, got {type(value).__name__} {value!r}") from None
    if lo is not None and v < lo:
        raise ValueError(f"{where}: '{name}' must be >= {lo}, got {v}")
    return v


def as_real(value, where: str, name: str) -> float:
    """`value` as a Python float (ints and floats, numpy's too; never bool, str or a tensor)."""
    if isinstance(value, (torch.SymFloat, torch.SymInt)):  # symbolic under torch.compile
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: '{name}' must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def as_bool(value, where: str, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: '{name}' must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_field_types(obj, where: str) -> None:
    """Every field of the dataclass `obj` against its annotation: int, float (an int is accepted),
    bool, str, dict, and `X | None` of those. A config read from JSON or built by hand with a wrong
    type fails here, by name, instead of deep inside training or a kernel."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        t, value = hints[f.name], getattr(obj, f.name)
        args = typing.get_args(t)
        if typing.get_origin(t) in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                continue
            t = next(a for a in args if a is not type(None))
        if t is int:
            as_int(value, where, f.name)
        elif t is float:
            as_real(value, where, f.name)
        elif t is bool:
            as_bool(value, where, f.name)
        elif t in (str, dict) and not isinstance(value, t):
            raise TypeError(f"{where}: '{f.name}' must be a {t.__name__}, got {type(value).__name__} {value!r}")


def check_tensor(t, op: str, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"radd_fast.{op}: '{name}' must be a torch.Tensor, got {type(t).__name__}")


def check_dtype(t: torch.Tensor, ok: Iterable[torch.dtype], op: str, name: str) -> None:
    ok = tuple(ok)
    if t.dtype not in ok:
        names = ", ".join(str(d).replace("torch.", "") for d in ok)
        raise TypeError(f"radd_fast.{op}: '{name}' must have dtype {names}, got {str(t.dtype).replace('torch.', '')}")


def check_same_device(a: torch.Tensor, b: torch.Tensor, op: str, name_a: str, name_b: str) -> None:
    if a.device != b.device:
        raise ValueError(f"radd_fast.{op}: '{name_b}' must be on the device of '{name_a}' ({a.device}), got {b.device}")


def check_dim(t: torch.Tensor, dim: int, op: str, name: str, shape: str) -> None:
    if t.dim() != dim:
        raise ValueError(f"radd_fast.{op}: '{name}' must have shape {shape}, got {list(t.shape)}")


def check_contiguous(t: torch.Tensor, op: str, name: str) -> None:
    if not t.is_contiguous():
        raise ValueError(
            f"radd_fast.{op}: '{name}' must be contiguous (call .contiguous() first), "
            f"got strides {list(t.stride())} for shape {list(t.shape)}"
        )


def check_rotary(qkv, cos, sin, op: str = "rotary") -> None:
    for t, n in ((qkv, "qkv"), (cos, "cos"), (sin, "sin")):
        check_tensor(t, op, n)
    check_dim(qkv, 5, op, "qkv", "(B, L, 3, heads, head_dim)")
    if qkv.shape[2] != 3:
        raise ValueError(
            f"radd_fast.{op}: 'qkv' must have shape (B, L, 3, heads, head_dim) with 3 = (q, k, v), got {list(qkv.shape)}"
        )
    D = qkv.shape[4]
    if D <= 0 or D % 2:
        raise ValueError(f"radd_fast.{op}: 'qkv' head_dim (last dim) must be even, got {D}")
    check_dtype(qkv, (torch.float32, torch.float64, torch.bfloat16, torch.float16), op, "qkv")
    check_contiguous(qkv, op, "qkv")
    tdt = torch.float64 if qkv.dtype == torch.float64 else torch.float32
    for t, n in ((cos, "cos"), (sin, "sin")):
        check_same_device(qkv, t, op, "qkv", n)
        check_dim(t, 2, op, n, "(seq_len >= L, head_dim / 2)")
        if t.shape[0] < qkv.shape[1] or t.shape[1] != D // 2:
            raise ValueError(
                f"radd_fast.{op}: '{n}' must have shape (seq_len >= {qkv.shape[1]}, {D // 2}) for qkv of shape "
                f"{list(qkv.shape)}, got {list(t.shape)}"
            )
        if t.dtype != tdt:
            raise TypeError(
                f"radd_fast.{op}: '{n}' must be {str(tdt).replace('torch.', '')} for "
                f"{str(qkv.dtype).replace('torch.', '')} qkv (tables are kept in fp32, fp64 for fp64 inputs), "
                f"got {str(t.dtype).replace('torch.', '')}"
            )
        check_contiguous(t, op, n)


# ------------------------------------------------------------------------------------ masked attention
import math  # noqa: E402  (kept with this section, which other branches append after)


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _check_qkv_layout(t: torch.Tensor, op: str, name: str) -> None:
    if t.numel() > 0 and t.shape[3] > 1 and t.stride(3) != 1:
        raise ValueError(
            f"radd_fast.{op}: '{name}' must be contiguous in its last dim (head_dim); got strides "
            f"{list(t.stride())} for shape {list(t.shape)} (call .contiguous() first)"
        )


def _check_like_q(t: torch.Tensor, q: torch.Tensor, op: str, name: str) -> None:
    """`name` must have the shape, dtype and device of 'q'."""
    if t.shape != q.shape:
        raise ValueError(f"radd_fast.{op}: '{name}' must have the shape of 'q' ({list(q.shape)}), got {list(t.shape)}")
    if t.dtype != q.dtype:
        raise TypeError(
            f"radd_fast.{op}: '{name}' must have the dtype of 'q' ({_dtype_name(q.dtype)}), got {_dtype_name(t.dtype)}"
        )
    check_same_device(q, t, op, "q", name)


def check_masked_attention(q, k, v, key_padding_mask=None, order=None, scale=1.0, op: str = "masked_attention") -> None:
    """Mirrors check_fwd_args of csrc/attention/attention.h."""
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        check_tensor(t, op, n)
    check_dim(q, 4, op, "q", "(B, L, heads, head_dim)")
    check_dtype(q, (torch.float32, torch.float64, torch.bfloat16, torch.float16), op, "q")
    for t, n in ((k, "k"), (v, "v")):
        _check_like_q(t, q, op, n)
    if q.shape[3] <= 0:
        raise ValueError(f"radd_fast.{op}: 'q' head_dim (last dim) must be positive, got {list(q.shape)}")
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        _check_qkv_layout(t, op, n)
    B, L = q.shape[0], q.shape[1]
    if key_padding_mask is not None:
        check_tensor(key_padding_mask, op, "key_padding_mask")
        check_same_device(q, key_padding_mask, op, "q", "key_padding_mask")
        if key_padding_mask.dim() != 2 or tuple(key_padding_mask.shape) != (B, L):
            raise ValueError(
                f"radd_fast.{op}: 'key_padding_mask' must have shape (B, L) = ({B}, {L}), got {list(key_padding_mask.shape)}"
            )
        check_dtype(key_padding_mask, (torch.bool,), op, "key_padding_mask")
    if order is not None:
        check_tensor(order, op, "order")
        check_same_device(q, order, op, "q", "order")
        if order.dim() != 2 or tuple(order.shape) != (B, L):
            raise ValueError(f"radd_fast.{op}: 'order' must have shape (B, L) = ({B}, {L}), got {list(order.shape)}")
        check_dtype(order, (torch.int32, torch.int64), op, "order")
    if not math.isfinite(scale):
        raise ValueError(f"radd_fast.{op}: 'scale' must be finite, got {scale}")
    # Below float64 the kernels hold scale * log2(e) in float32; past its range every score is NaN.
    if q.dtype != torch.float64 and not abs(scale * math.log2(math.e)) <= torch.finfo(torch.float32).max:
        raise ValueError(
            f"radd_fast.{op}: 'scale' must be finite in float32 (times log2(e)) for {_dtype_name(q.dtype)} inputs, got {scale}"
        )


def check_masked_attention_cuda_head_dim(q: torch.Tensor, op: str = "masked_attention") -> None:
    """The CUDA kernels are compiled for head_dim 32, 64 and 128 (csrc/attention/cuda.cu)."""
    if q.device.type == "cuda" and q.shape[3] not in (32, 64, 128):
        raise ValueError(f"radd_fast.{op}: head_dim (last dim of 'q') must be 32, 64 or 128 on CUDA, got {q.shape[3]}")


def check_masked_attention_bwd(grad_out, q, k, v, out, lse, grad_lse, key_padding_mask, order, scale,
                               op: str = "masked_attention_bwd") -> None:
    """Mirrors check_bwd_args of csrc/attention/attention.h."""
    check_masked_attention(q, k, v, key_padding_mask, order, scale, op)
    for t, n in ((grad_out, "grad_out"), (out, "out")):
        check_tensor(t, op, n)
        _check_like_q(t, q, op, n)
        _check_qkv_layout(t, op, n)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    shape = [q.shape[0], q.shape[2], q.shape[1]]
    for t, n in ((lse, "lse"), (grad_lse, "grad_lse")):
        if t is None:
            continue
        check_tensor(t, op, n)
        check_same_device(q, t, op, "q", n)
        if list(t.shape) != shape:
            raise ValueError(f"radd_fast.{op}: '{n}' must have shape (B, heads, L) = {shape}, got {list(t.shape)}")
        if t.dtype != acc:
            raise TypeError(
                f"radd_fast.{op}: '{n}' must have dtype {_dtype_name(acc)} for {_dtype_name(q.dtype)} inputs, "
                f"got {_dtype_name(t.dtype)}"
            )

# ------------------------------------------------------------------------------------ linear_dce_loss
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_same_dtype(a: torch.Tensor, b: torch.Tensor, op: str, name_a: str, name_b: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(
            f"radd_fast.{op}: '{name_b}' must have the dtype of '{name_a}' ({_dtype_name(a.dtype)}), "
            f"got {_dtype_name(b.dtype)}"
        )


def check_linear_dce(hidden, weight, bias, target, row_weight, num_classes: int, op: str = "linear_dce_loss") -> None:
    """Shapes, dtypes and devices of linear_dce_loss (csrc/dce_loss/dce_loss.h check_args)."""
    for t, n in ((hidden, "hidden"), (weight, "weight"), (target, "target"), (row_weight, "row_weight")):
        check_tensor(t, op, n)
    if bias is not None:
        check_tensor(bias, op, "bias")
    check_dim(hidden, 2, op, "hidden", "(N, D)")
    N, D = hidden.shape
    if N < 1:
        raise ValueError(f"radd_fast.{op}: 'hidden' must have at least one row, got shape {list(hidden.shape)}")
    if D < 1:
        raise ValueError(f"radd_fast.{op}: 'hidden' must have D >= 1 features, got shape {list(hidden.shape)}")
    if N >= 2**31:
        raise ValueError(f"radd_fast.{op}: 'hidden' has {N} rows; at most 2^31 - 1 are supported")
    check_dtype(hidden, _FLOATS, op, "hidden")
    check_contiguous(hidden, op, "hidden")
    check_same_device(hidden, weight, op, "hidden", "weight")
    check_dim(weight, 2, op, "weight", "(C, D)")
    if weight.shape[1] != D:
        raise ValueError(
            f"radd_fast.{op}: 'weight' must have shape (C, D) with D = {D} (the last dim of 'hidden'), "
            f"got {list(weight.shape)}"
        )
    C = weight.shape[0]
    if C < 1:
        raise ValueError(f"radd_fast.{op}: 'weight' must have at least one row, got shape {list(weight.shape)}")
    check_same_dtype(hidden, weight, op, "hidden", "weight")
    check_contiguous(weight, op, "weight")
    if bias is not None:
        check_same_device(hidden, bias, op, "hidden", "bias")
        check_dim(bias, 1, op, "bias", "(C,)")
        if bias.shape[0] != C:
            raise ValueError(
                f"radd_fast.{op}: 'bias' must have shape (C,) with C = {C} (the rows of 'weight'), got {list(bias.shape)}"
            )
        check_same_dtype(hidden, bias, op, "hidden", "bias")
        check_contiguous(bias, op, "bias")
    if not 1 <= num_classes <= C:
        raise ValueError(f"radd_fast.{op}: 'num_classes' must be in [1, C] = [1, {C}], got {num_classes}")
    for t, n, ok in ((target, "target", (torch.int64,)), (row_weight, "row_weight", _FLOATS)):
        check_same_device(hidden, t, op, "hidden", n)
        check_dim(t, 1, op, n, "(N,)")
        if t.shape[0] != N:
            raise ValueError(f"radd_fast.{op}: '{n}' must have shape (N,) with N = {N} (the rows of 'hidden'), got {list(t.shape)}")
        check_dtype(t, ok, op, n)


def check_linear_dce_values(target: torch.Tensor, row_weight: torch.Tensor, num_classes: int,
                            op: str = "linear_dce_loss") -> None:
    """Target range and finite row weights: the CPU kernel's value checks. Reads the data (on CUDA this
    synchronises with the host)."""
    bad = ((target < 0) | (target >= num_classes)).nonzero()
    if bad.numel():
        r = int(bad[0, 0])
        raise ValueError(
            f"radd_fast.{op}: 'target' values must be in [0, num_classes) = [0, {num_classes}), got {int(target[r])} at row {r}"
        )
    bad = (~torch.isfinite(row_weight)).nonzero()
    if bad.numel():
        r = int(bad[0, 0])
        raise ValueError(f"radd_fast.{op}: 'row_weight' must be finite, got {float(row_weight[r])} at row {r}")

# ------------------------------------------------------------------------------------------- sampler
def _check_filter_args(temperature, top_k, top_p, op: str) -> None:
    import math

    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"radd_fast.{op}: 'temperature' must be a finite number > 0 (use greedy=True for argmax), got {temperature}"
        )
    if top_k < 0:
        raise ValueError(f"radd_fast.{op}: 'top_k' must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"radd_fast.{op}: 'top_p' must be in (0, 1] (1 = off), got {top_p}")


def check_reveal_schedule(masked, step_cdf, offset, op: str = "reveal_schedule") -> None:
    for t, n in ((masked, "masked"), (step_cdf, "step_cdf")):
        check_tensor(t, op, n)
    check_dim(masked, 2, op, "masked", "(batch, length)")
    check_dtype(masked, (torch.bool,), op, "masked")
    check_contiguous(masked, op, "masked")
    check_dim(step_cdf, 1, op, "step_cdf", "(steps,)")
    check_dtype(step_cdf, (torch.float64,), op, "step_cdf")
    check_contiguous(step_cdf, op, "step_cdf")
    check_same_device(masked, step_cdf, op, "masked", "step_cdf")
    n = step_cdf.shape[0]
    if not 1 <= n <= 2**31 - 1:
        raise ValueError(f"radd_fast.{op}: 'step_cdf' must have between 1 and 2^31 - 1 entries (one per step), got {n}")
    B, L = masked.shape
    if (min(n, L) + 1) * B * L >= 2**62:
        raise ValueError(f"radd_fast.{op}: batch {B} x length {L} is too large for the schedule's int64 sort keys")
    if offset < 0:
        raise ValueError(f"radd_fast.{op}: 'offset' must be >= 0, got {offset}")


def check_sample_rows(hidden, weight, bias, num_classes, temperature, top_k, top_p, offset,
                      op: str = "sample_rows") -> None:
    check_tensor(hidden, op, "hidden")
    check_tensor(weight, op, "weight")
    check_dim(hidden, 2, op, "hidden", "(rows, hidden_size)")
    check_dim(weight, 2, op, "weight", "(classes, hidden_size)")
    check_dtype(hidden, (torch.float32, torch.float64), op, "hidden")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"radd_fast.{op}: 'weight' must have the dtype of 'hidden' "
                        f"({str(hidden.dtype).replace('torch.', '')}), got {str(weight.dtype).replace('torch.', '')}")
    check_same_device(hidden, weight, op, "hidden", "weight")
    check_contiguous(hidden, op, "hidden")
    check_contiguous(weight, op, "weight")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"radd_fast.{op}: 'weight' must have shape (classes, {hidden.shape[1]}) for hidden of shape "
                         f"{list(hidden.shape)}, got {list(weight.shape)}")
    if not 1 <= num_classes <= weight.shape[0]:
        raise ValueError(f"radd_fast.{op}: 'num_classes' must be in [1, {weight.shape[0]}] (rows of 'weight'), "
                         f"got {num_classes}")
    if bias is not None:
        check_tensor(bias, op, "bias")
        check_dim(bias, 1, op, "bias", "(classes,)")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"radd_fast.{op}: 'bias' must have the dtype of 'hidden' "
                            f"({str(hidden.dtype).replace('torch.', '')}), got {str(bias.dtype).replace('torch.', '')}")
        check_same_device(hidden, bias, op, "hidden", "bias")
        check_contiguous(bias, op, "bias")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"radd_fast.{op}: 'bias' must have shape ({weight.shape[0]},) to match 'weight', "
                             f"got {list(bias.shape)}")
    _check_filter_args(temperature, top_k, top_p, op)
    if offset < 0:
        raise ValueError(f"radd_fast.{op}: 'offset' must be >= 0, got {offset}")


def check_filter_logits(logits, temperature, top_k, top_p, op: str = "filter_logits") -> None:
    check_tensor(logits, op, "logits")
    check_dim(logits, 2, op, "logits", "(rows, classes)")
    check_dtype(logits, (torch.float32, torch.float64), op, "logits")
    check_contiguous(logits, op, "logits")
    _check_filter_args(temperature, top_k, top_p, op)
