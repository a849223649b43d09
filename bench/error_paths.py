"""Do C++ argument errors of the extension reach Python on this machine? One bad call per kind of
code that raises (a CPU kernel, each CUDA entry point), each announced before it runs, so a process
that dies names the call that killed it (bench/gpu_check.sh's `errors` stage).

On the H200 run of 2026-11-29 a head_dim-48 ValueError raised inside nvcc-compiled code killed the
test worker (SIGSEGV); the CPU tests, which raise from host-compiled code, were not run there.

    python -X faulthandler bench/error_paths.py
"""
from __future__ import annotations

import os
import sys

import torch

import radd_fast


def with_env(name: str, value: str, call):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        return call()
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def cases(cuda: bool):
    ops = torch.ops.radd_fast
    yield "cpu rotary: qkv of rank 3", lambda: ops.rotary(torch.randn(2, 5, 3), *radd_fast.rotary_tables(5, 8), False)
    if not cuda:
        return
    q = torch.randn(1, 4, 2, 48, device="cuda")
    yield "cuda attention: head_dim 48", lambda: ops.masked_attention_fwd(q, q, q, None, None, False, 1.0)
    qb = torch.randn(1, 4, 2, 64, device="cuda", dtype=torch.bfloat16)
    yield "cuda attention: RADD_FAST_ATTENTION_QUERY_TILE=96", lambda: with_env(
        "RADD_FAST_ATTENTION_QUERY_TILE", "96", lambda: ops.masked_attention_fwd(qb, qb, qb, None, None, False, 1.0))
    yield "cuda attention: RADD_FAST_ATTENTION_FORWARD=tma", lambda: with_env(
        "RADD_FAST_ATTENTION_FORWARD", "tma", lambda: ops.masked_attention_fwd(qb, qb, qb, None, None, False, 1.0))
    ob, lb = ops.masked_attention_fwd(qb, qb, qb, None, None, False, 1.0)
    yield "cuda attention: RADD_FAST_ATTENTION_BACKWARD=tma", lambda: with_env(
        "RADD_FAST_ATTENTION_BACKWARD", "tma",
        lambda: ops.masked_attention_bwd(qb, qb, qb, qb, ob, lb, None, None, None, False, 1.0))
    h, W = torch.randn(3, 8, device="cuda"), torch.randn(11, 8, device="cuda")
    t = torch.zeros(3, dtype=torch.long, device="cuda")
    yield "cuda loss: row_weight of shape (2,)", lambda: ops.linear_dce_loss(h, W, None, t, torch.ones(2, device="cuda"), 10)
    yield "cuda loss: RADD_FAST_DCE_ENGINE=grouped with float32", lambda: with_env(
        "RADD_FAST_DCE_ENGINE", "grouped", lambda: ops.linear_dce_loss(h, W, None, t, torch.ones(3, device="cuda"), 10))
    x = torch.randn(1, 3, 3, 2, 8, device="cuda")
    yield "cuda rotary: tables on the CPU", lambda: ops.rotary(x, *radd_fast.rotary_tables(3, 8), False)
    yield "cuda sample_rows: top_p 2", lambda: ops.sample_rows(h, W, None, 10, 1.0, 0, 2.0, False, 0, 0)


def main() -> int:
    cuda = torch.cuda.is_available()
    bad = 0
    for name, call in cases(cuda):
        print(f"calling {name} ...", flush=True)
        try:
            call()
        except (ValueError, TypeError, RuntimeError) as e:
            print(f"  raised {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
        else:
            bad += 1
            print("  DID NOT RAISE", flush=True)
    print(f"error paths: {'all raised' if not bad else f'{bad} did not raise'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
