"""Masked attention: the fused kernel vs torch.nn.functional.scaled_dot_product_attention (the
baseline of every group, whatever backend SDPA picks), forward, backward and forward+backward.

Rates are in TFLOP/s of the dense problem: forward 4 B L^2 D heads FLOPs, backward 2.5x that,
forward+backward 3.5x -- the same yardstick for both impls and for masked cases (where the fused
kernel skips tiles that the order hides, and SDPA computes everything under a dense mask).
SDPA gets its preferred layout, (B, heads, L, D) contiguous, and its dense boolean mask is built
outside the timed region; our kernel reads the model's (B, L, heads, D) layout and the (B, L)
padding / order tensors directly. "bwd" times the backward alone (retained graph).

    pytest bench/test_attention.py                      # CPU cases here, CUDA cases on a GPU
    pytest bench/test_attention.py --benchmark-disable  # one run of each (smoke test)
"""

import pytest
import torch
import torch.nn.functional as F

import radd_fast
from radd_fast import reference as R

CPU_SHAPE = (4, 1024, 12, 64)  # B, L, heads, head_dim: the CPU case
CUDA_SHAPES = [(16, 1024, 12, 64), (16, 1024, 12, 128)]
CPU_ONLY = [pytest.param("cpu", id="cpu")]
CUDA_ONLY = [pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device visible")])]
IMPLS = ["sdpa", "fused"]
PASSES = ["fwd", "bwd", "fwd+bwd"]
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def masks(kind, B, L, device):
    """(key_padding_mask, order) of a benchmark case."""
    g = torch.Generator(device="cpu").manual_seed(0)
    if kind == "bidirectional":
        return None, None
    if kind == "padded":  # variable-length sequences: the last 0-25% of each row is padding
        lengths = L - torch.randint(0, L // 4, (B, 1), generator=g)
        return (torch.arange(L)[None] < lengths).to(device), None
    if kind == "causal":
        return None, torch.arange(L).expand(B, L).contiguous().to(device)
    if kind == "any-order":  # a random permutation per sequence: no tile is hidden or fully visible
        return None, torch.stack([torch.randperm(L, generator=g) for _ in range(B)]).to(device)
    raise ValueError(kind)


def run_case(bench, device, dtype, shape, kind, impl, pass_):
    B, L, H, D = shape
    pad, order = masks(kind, B, L, device)
    gen = torch.Generator(device=device).manual_seed(1)
    q, k, v = (torch.randn(B, L, H, D, device=device, dtype=dtype, generator=gen) for _ in range(3))
    grad = torch.randn(B, L, H, D, device=device, dtype=dtype, generator=gen)
    if impl == "sdpa":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        grad = grad.transpose(1, 2).contiguous()
        dense = None
        if pad is not None or order is not None:
            dense = R.attention_mask(B, L, pad, order, device=device)[:, None]

        def forward():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    elif impl in ("fused", "fused-q64", "fused-k128", "fused-wgmma", "fused-wgmma-k128", "fused-dq-bulk",
                  "fused-k128-dq-bulk"):  # variants: the caller's env
        def forward():
            return radd_fast.masked_attention(q, k, v, pad, order, impl="fused")
    elif impl == "auto":  # what the model runs: on CUDA without a mask, SDPA on radd_fast's backend order
        def forward():
            return radd_fast.masked_attention(q, k, v, pad, order)
    else:
        raise ValueError(impl)

    for t in (q, k, v):
        t.requires_grad_(pass_ != "fwd")
    if pass_ == "fwd":
        def fn():
            with torch.no_grad():
                return forward()
    elif pass_ == "bwd":
        out = forward()

        def fn():
            return torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)
    else:
        def fn():
            return torch.autograd.grad(forward(), (q, k, v), grad)

    flops = 4 * B * L * L * D * H * FLOP_FACTOR[pass_]
    bench(fn, group=f"attention {pass_} {device.type} {str(dtype).replace('torch.', '')} {kind} D={D}", impl=impl,
          device=device, dtype=dtype, shape=shape, flops=flops, baseline="sdpa", mask=kind)


# Bidirectional: every pass; masked cases: fwd and fwd+bwd (keeps the CPU run at about a minute).
CPU_CASES = [("bidirectional", p) for p in PASSES] + [
    (kind, p) for kind in ("padded", "causal", "any-order") for p in ("fwd", "fwd+bwd")]


@pytest.mark.parametrize("device", CPU_ONLY, indirect=True)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind,pass_", CPU_CASES, ids=lambda c: c)
def test_attention_cpu(bench, device, impl, kind, pass_):
    run_case(bench, device, torch.float32, CPU_SHAPE, kind, impl, pass_)


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: f"D{s[3]}")
def test_attention_cuda(bench, device, impl, pass_, shape):
    run_case(bench, device, torch.bfloat16, shape, "bidirectional", impl, pass_)


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: f"D{s[3]}")
def test_attention_cuda_auto(bench, device, pass_, shape):
    # impl="auto" on the model's (B, L, heads, D) layout, beside the "sdpa" row (torch's default order,
    # FlashAttention-2 first): its differentiated forward ("bwd" times its backward) runs SDPA with
    # cuDNN first on Hopper, its no-grad forward ("fwd") torch's order (RADD_FAST_SDPA_BACKEND).
    run_case(bench, device, torch.bfloat16, shape, "bidirectional", "auto", pass_)


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("impl", IMPLS)
def test_attention_cuda_causal(bench, device, impl):
    # Tile skipping on the GPU: half of the tiles are hidden.
    run_case(bench, device, torch.bfloat16, CUDA_SHAPES[0], "causal", impl, "fwd")


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
def test_attention_cuda_q64(bench, device, kind, monkeypatch):
    # The bf16 forward on 64-query blocks (RADD_FAST_ATTENTION_QUERY_TILE=64) in the groups of the
    # default 128-query blocks (head_dim 64): what the larger block is worth on this GPU.
    monkeypatch.setenv("RADD_FAST_ATTENTION_QUERY_TILE", "64")
    run_case(bench, device, torch.bfloat16, CUDA_SHAPES[0], kind, "fused-q64", "fwd")


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: f"D{s[3]}")
def test_attention_cuda_k128(bench, device, pass_, shape, monkeypatch):
    # RADD_FAST_ATTENTION_KEY_TILE=128 in the groups of the defaults: the forward on 64-query blocks
    # stepping over 128 keys, the backward on 128-key blocks (half the dQ atomics and Q / dO loads
    # per FLOP).
    monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", "128")
    run_case(bench, device, torch.bfloat16, shape, "bidirectional", "fused-k128", pass_)


@pytest.mark.wgmma
@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("key_tile", ["64", "128"])
def test_attention_cuda_bulk_dq(bench, device, key_tile, monkeypatch):
    # RADD_FAST_ATTENTION_DQ=bulk (sm_90, opt-in): the mma backward's dQ added by bulk reductions of a
    # staging tile instead of 16-byte atomics, head_dim 64, in the backward group of the defaults.
    skip_unless_wgmma(device, "bidirectional", CUDA_SHAPES[0])
    monkeypatch.setenv("RADD_FAST_ATTENTION_DQ", "bulk")
    monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", key_tile)
    impl = "fused-dq-bulk" if key_tile == "64" else "fused-k128-dq-bulk"
    run_case(bench, device, torch.bfloat16, CUDA_SHAPES[0], "bidirectional", impl, "bwd")


def skip_unless_wgmma(device, kind, shape):
    """Skips (with the reason) where the wgmma kernels cannot run -- they need an sm_90 GPU and a 9.0a
    build -- and causal cases other than head_dim 64 (timed there only, as for the other kernels)."""
    from radd_fast import _extension

    arch = str((_extension.BUILD_INFO or {}).get("cuda_arch_list") or "")
    if torch.cuda.get_device_capability(device) != (9, 0) or "9.0a" not in arch:
        pytest.skip(f"wgmma needs an sm_90 GPU and a 9.0a build (GPU {torch.cuda.get_device_capability(device)}, "
                    f"archs {arch})")
    if kind == "causal" and shape != CUDA_SHAPES[0]:
        pytest.skip("causal is timed at head_dim 64 only, as for the other kernels")


@pytest.mark.wgmma
@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("kind,pass_", [("bidirectional", "fwd"), ("bidirectional", "bwd"), ("causal", "fwd")])
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: f"D{s[3]}")
def test_attention_cuda_wgmma(bench, device, kind, pass_, shape, monkeypatch):
    # The sm_90a wgmma kernels (RADD_FAST_ATTENTION_FORWARD / _BACKWARD=wgmma) in the groups of the
    # default ones: what Hopper's warpgroup MMA is worth. Needs an sm_90 GPU and a 9.0a build.
    skip_unless_wgmma(device, kind, shape)
    monkeypatch.setenv("RADD_FAST_ATTENTION_FORWARD", "wgmma")
    monkeypatch.setenv("RADD_FAST_ATTENTION_BACKWARD", "wgmma")
    run_case(bench, device, torch.bfloat16, shape, kind, "fused-wgmma", pass_)


@pytest.mark.wgmma
@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("kind", ["bidirectional", "causal"])
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: f"D{s[3]}")
def test_attention_cuda_wgmma_k128(bench, device, kind, shape, monkeypatch):
    # The wgmma forward stepping over 128 keys (RADD_FAST_ATTENTION_KEY_TILE=128, 128-query blocks,
    # one per SM) in the groups of the others: m64n128k16 score products, half the barriers per key.
    skip_unless_wgmma(device, kind, shape)
    monkeypatch.setenv("RADD_FAST_ATTENTION_FORWARD", "wgmma")
    monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", "128")
    run_case(bench, device, torch.bfloat16, shape, kind, "fused-wgmma-k128", "fwd")
