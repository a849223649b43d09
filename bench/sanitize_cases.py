"""Every hand-written kernel once, on small odd shapes, checked against the float64 reference: the
workload bench/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck).

A sanitizer slows every launch and instruments every module loaded, so a test suite under it gets
through almost nothing (one test in 40 s on an H200, 2026-11-29). This script is a few dozen
launches of our kernels and a handful of torch's, with no pytest in the process.

    python bench/sanitize_cases.py [--device cuda] [--only attention,loss,...]
    compute-sanitizer --tool memcheck python bench/sanitize_cases.py

Prints one line per case and exits 1 if any result is off (the sanitizer's own exit code reports
what it found). tests/test_benchmarks.py runs it on the CPU so that it stays runnable.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import radd_fast
from radd_fast import reference as R

# Relative error bounds against float64 on the same rounded inputs (the tests' bounds are tighter;
# these only have to tell a wrong result from rounding).
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def wgmma_built(device) -> bool:
    """Whether the sm_90a wgmma forward runs here (an sm_90 GPU and a build with 9.0a code)."""
    from radd_fast import _extension

    arch = str((_extension.BUILD_INFO or {}).get("cuda_arch_list") or "")
    return device == "cuda" and torch.cuda.get_device_capability() == (9, 0) and "9.0a" in arch


def attention(device, dtype, D, masked, engine="auto", backward=None, key_tile="auto", dq="auto"):
    # CUDA bf16 / fp16: the mma.sync or the wgmma kernels (forward `engine`, backward `backward`,
    # default the same), on 64- or 128-key tiles (RADD_FAST_ATTENTION_KEY_TILE), dQ by atomics or
    # bulk reductions (RADD_FAST_ATTENTION_DQ)
    settings = {"RADD_FAST_ATTENTION_FORWARD": engine, "RADD_FAST_ATTENTION_BACKWARD": backward or engine,
                "RADD_FAST_ATTENTION_KEY_TILE": key_tile, "RADD_FAST_ATTENTION_DQ": dq}
    os.environ.update(settings)
    try:
        return _attention(device, dtype, D, masked)
    finally:
        for name in settings:
            del os.environ[name]


def _attention(device, dtype, D, masked):
    g = torch.Generator().manual_seed(D)
    B, L, H = 2, 70, 2  # L = 70: two 64-row tiles (three 32-row ones) and a tail
    q, k, v = (torch.randn(B, L, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    up = torch.randn(B, L, H, D, generator=g, dtype=torch.float64)
    order = torch.arange(L).expand(B, L).contiguous() if masked else None
    pad = torch.rand(B, L, generator=g) > 0.3 if masked else None
    dev = [x.to(device, dtype).requires_grad_() for x in (q, k, v)]
    to = (lambda x: None if x is None else x.to(device))
    out = radd_fast.masked_attention(*dev, to(pad), to(order), strict=masked, impl="fused")
    grads = torch.autograd.grad(out, dev, up.to(device, dtype))
    ref = [x.to(dtype).double().requires_grad_() for x in (q, k, v)]
    want = R.masked_attention(*ref, pad, order, masked)
    want_grads = torch.autograd.grad(want, ref, up)
    return max(rel(a, b) for a, b in zip((out, *grads), (want, *want_grads)))


def loss(device, dtype, chunk_rows, engine="auto", split=1):
    g = torch.Generator().manual_seed(chunk_rows)
    # num_classes = 300 (the mask column is never a class); with 1,024-row chunks ~200 active rows in
    # one chunk: the bias gradient's 128-row partial sums, two groups.
    N, D, C = (150 if chunk_rows < 1024 else 400), 24, 301
    h = torch.randn(N, D, generator=g, dtype=torch.float64)
    W = torch.randn(C, D, generator=g, dtype=torch.float64) / D**0.5
    b = torch.randn(C, generator=g, dtype=torch.float64)
    t = torch.randint(0, C - 1, (N,), generator=g)
    w = torch.rand(N, generator=g, dtype=torch.float64) * (torch.rand(N, generator=g) < 0.5)
    up = torch.rand(N, generator=g, dtype=torch.float64)
    os.environ["RADD_FAST_DCE_CHUNK_ROWS"] = str(chunk_rows)  # chunk edges and chunks past the count
    os.environ["RADD_FAST_DCE_ENGINE"] = engine  # CUDA: "auto" is the grouped engine for bf16 on sm_90
    os.environ["RADD_FAST_DCE_GRAD_H_SPLIT"] = str(split)  # grouped engine: class slices on side streams
    try:
        dev = [x.to(device, dtype).requires_grad_() for x in (h, W, b)]
        rows = radd_fast.linear_dce_loss(*dev, t.to(device), w.to(device, dtype), reduction="none", impl="fused")
        grads = torch.autograd.grad(rows, dev, up.to(device, rows.dtype))
    finally:
        for name in ("RADD_FAST_DCE_CHUNK_ROWS", "RADD_FAST_DCE_ENGINE", "RADD_FAST_DCE_GRAD_H_SPLIT"):
            del os.environ[name]
    ref = [x.to(dtype).double().requires_grad_() for x in (h, W, b)]
    want = R.linear_dce_loss(*ref, t, w.to(dtype).double(), C - 1, "none")
    want_grads = torch.autograd.grad(want, ref, up)
    return max(rel(a, b) for a, b in zip((rows, *grads), (want, *want_grads)))


def rotary(device, dtype, inplace, D=64):
    # D = 72: halves of 36 elements, not a multiple of the CUDA kernel's 8-element bf16 vectors: its
    # scalar path
    g = torch.Generator().manual_seed(3)
    B, L, H = 2, 31, 3
    qkv = torch.randn(B, L, 3, H, D, generator=g, dtype=torch.float64)
    up = torch.randn(B, L, 3, H, D, generator=g, dtype=torch.float64)
    cos, sin = radd_fast.rotary_tables(L, D)
    x = qkv.to(device, dtype).requires_grad_()
    y = radd_fast.rotary(x * 1, cos.to(device), sin.to(device), inplace=inplace, impl="fused")
    (gx,) = torch.autograd.grad(y, x, up.to(device, dtype))
    xr = qkv.to(dtype).double().requires_grad_()
    want = R.rotary(xr, cos.double(), sin.double())
    (want_g,) = torch.autograd.grad(want, xr, up)
    return max(rel(y, want), rel(gx, want_g))


def sampler(device, dtype, top_k, top_p):
    g = torch.Generator().manual_seed(5)
    N, H, V = 37, 16, 203
    h = torch.randn(N, H, generator=g, dtype=torch.float64)
    W = torch.randn(V + 1, H, generator=g, dtype=torch.float64)
    b = torch.randn(V + 1, generator=g, dtype=torch.float64)
    kw = dict(temperature=0.9, top_k=top_k, top_p=top_p)
    dev = [x.to(device, dtype) for x in (h, W, b)]
    tok, lp = radd_fast.functional.sample_rows(*dev, V, seed=7, offset=2, impl="fused", **kw)
    want, want_lp, margin = R.sample_rows(h, W, b, V, 0.9, top_k or 0, top_p or 1.0, False, 7, 2, return_margin=True)
    tok, lp = tok.cpu(), lp.cpu()
    same = tok == want
    tol = 1e-9 if dtype == torch.float64 else 1e-4  # race ties closer than fp32 rounding may differ
    if not bool(torch.all(same | (margin < tol))) or same.float().mean() < 0.9:
        return float("inf")
    logits = dev[0] @ dev[1][:V].T + dev[2][:V]
    filt = radd_fast.functional.filter_logits(logits, top_k=top_k, top_p=top_p, impl="fused", temperature=0.9)
    want_f = R.filter_logits(logits.double().cpu(), 0.9, top_k, top_p)
    if not torch.equal(torch.isinf(filt.cpu()), torch.isinf(want_f)):
        return float("inf")
    fin = torch.isfinite(want_f)
    return max(rel(lp[same], want_lp[same]), rel(filt.cpu()[fin], want_f[fin]))


def schedule(device, B, L, n):
    g = torch.Generator().manual_seed(B * L)
    masked = torch.rand(B, L, generator=g) < 0.6
    cdf = R.reveal_step_cdf(n)
    got = radd_fast.functional.reveal_schedule(masked.to(device), cdf.to(device), seed=11, offset=3, impl="fused")
    want = R.reveal_schedule(masked, cdf, 11, 3)
    return 0.0 if all(torch.equal(a.cpu(), b) for a, b in zip(got, want)) else float("inf")


def cases(device: str):
    bf16 = torch.bfloat16
    low = [bf16, torch.float16] if device == "cuda" else [bf16]
    for dt in low + [torch.float32]:
        for D, masked in ((32, True), (64, True), (128, False)):
            yield f"attention {dt} D {D} {'masked' if masked else 'plain'}", dt, lambda dt=dt, D=D, m=masked: attention(
                device, dt, D, m)
    for dt, engine in ((bf16, "auto"), (bf16, "tiles"), (torch.float32, "auto")):
        for chunk in (16, 1024):
            yield f"loss {dt} {engine} chunk {chunk}", dt, lambda dt=dt, c=chunk, e=engine: loss(device, dt, c, e)
    yield f"loss {bf16} auto chunk 16 grad-h split 3", bf16, lambda: loss(device, bf16, 16, "auto", 3)
    for dt in low + [torch.float32]:
        for inplace in (False, True):
            yield f"rotary {dt} {'in place' if inplace else 'out of place'}", dt, lambda dt=dt, i=inplace: rotary(
                device, dt, i)
    yield f"rotary {bf16} D 72", bf16, lambda: rotary(device, bf16, False, 72)
    for k, p in ((None, None), (20, 0.9)):
        yield f"sampler float32 top_k {k} top_p {p}", torch.float32, lambda k=k, p=p: sampler(device, torch.float32, k, p)
    for B, L, n in ((3, 40, 17), (5, 33, 128)):
        yield f"schedule B {B} L {L} steps {n}", torch.float64, lambda B=B, L=L, n=n: schedule(device, B, L, n)
    for D, masked in ((64, True), (128, False)):  # 128-key tiles: the mma backward, the mma forward
        yield f"attention {bf16} D {D} {'masked' if masked else 'plain'} k128", bf16, \
            lambda D=D, m=masked: attention(device, bf16, D, m, key_tile="128")
    if wgmma_built(device):  # last: a fault in these kernels (never yet run on a GPU) cannot spoil the others
        for D, masked in ((64, True), (128, False)):
            yield f"attention {bf16} D {D} {'masked' if masked else 'plain'} wgmma", bf16, \
                lambda D=D, m=masked: attention(device, bf16, D, m, "wgmma")
        for D, masked in ((64, True), (128, False)):  # the wgmma forward's 128-key steps, mma backward
            yield f"attention {bf16} D {D} {'masked' if masked else 'plain'} wgmma k128", bf16, \
                lambda D=D, m=masked: attention(device, bf16, D, m, "wgmma", "mma", "128")
        for keys in ("auto", "128"):  # the mma backward's bulk dQ reductions (sm_90), both key blocks
            yield f"attention {bf16} D 64 masked dq-bulk keys {keys}", bf16, \
                lambda k=keys: attention(device, bf16, 64, True, key_tile=k, dq="bulk")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", default="", help="comma-separated case prefixes (attention, loss, rotary, sampler, schedule)")
    ap.add_argument("--skip", default="", help="comma-separated substrings of case names to leave out")
    args = ap.parse_args(argv)
    if not radd_fast._extension.AVAILABLE:
        print("radd_fast extension not built", file=sys.stderr)
        return 2
    only = [s for s in args.only.split(",") if s]
    skip = [s for s in args.skip.split(",") if s]
    bad = 0
    for name, dtype, run in cases(args.device):
        if (only and not any(name.startswith(o) for o in only)) or any(s in name for s in skip):
            continue
        t0 = time.perf_counter()
        err = run()
        ok = err <= TOL[dtype]
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: relative error {err:.2e} ({time.perf_counter() - t0:.1f} s)", flush=True)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
