"""Python-side argument checks. They mirror csrc/common/checks.h so the reference fallback and the
fake (meta) kernels reject bad input with the same messages as the compiled kernels."""

from __future__ import annotations

from collections.abc import Iterable

import torch


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
