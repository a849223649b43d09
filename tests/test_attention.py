"""radd_fast.masked_attention: the compiled kernels against the float64 oracle (reference.py) for every
mask pattern, gradients, opcheck, low precision, bad input, autograd / compile / autocast."""

import math

import pytest
import torch
import torch.nn.functional as F

import radd_fast
from radd_fast import reference as R

PATTERNS = ["none", "bidirectional", "causal", "any_order", "prefix_lm", "block"]


def make_order(pattern, B, L, device, dtype=torch.int64):
    """The order tensor of each attention pattern (None: no order at all)."""
    if pattern == "none":
        return None
    pos = torch.arange(L, device=device).expand(B, L)
    if pattern == "bidirectional":
        o = torch.zeros(B, L, dtype=torch.int64, device=device)
    elif pattern == "causal":
        o = pos.clone()
    elif pattern == "any_order":  # a random permutation per sequence
        o = torch.stack([torch.randperm(L, device=device) for _ in range(B)])
    elif pattern == "prefix_lm":  # a random-length bidirectional prefix, causal after it
        p = torch.randint(1, L + 1, (B, 1), device=device)
        o = (pos - p + 1).clamp(min=0)
    elif pattern == "block":  # block diffusion: bidirectional within blocks of 5, causal across
        o = pos // 5
    else:
        raise ValueError(pattern)
    return o.to(dtype)


def make_pad(B, L, device, kind):
    """Key padding: None, random (keep ~70%), or random with the whole of sequence 0 padded (every
    query of it has no allowed key)."""
    if kind == "none":
        return None
    m = torch.rand(B, L, device=device) > 0.3
    if kind == "empty_row":
        m[0] = False
    return m


def qkv(B, L, H, D, dtype, device, requires_grad=False):
    out = [torch.randn(B, L, H, D, dtype=torch.float64, device=device).to(dtype) for _ in range(3)]
    if requires_grad:
        for t in out:
            t.requires_grad_(True)
    return out


def fused(q, k, v, pad=None, order=None, strict=False, scale=None):
    return radd_fast.masked_attention(q, k, v, pad, order, strict, scale, impl="fused")


def assert_no_key_rows_are_zero(out, pad, order, strict):
    B, L = out.shape[:2]
    allowed = R.attention_mask(B, L, pad, order, strict, device=out.device)
    empty = ~allowed.any(-1)  # (B, L) queries with no allowed key
    assert torch.all(out[empty] == 0)
    return empty


# --------------------------------------------------------------------------------------- forward
SMALL_SHAPES = [(1, 1, 1, 8), (2, 7, 3, 16), (2, 128, 1, 32), (3, 129, 2, 24), (1, 70, 1, 5)]  # B, L, heads, head_dim


@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=str)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("pad", ["none", "random", "empty_row"])
def test_float64_matches_reference(device, shape, pattern, strict, pad):
    B, L, H, D = shape
    if device.type == "cuda":
        D = 32  # the CUDA kernels are compiled for head_dim 32, 64, 128
    q, k, v = qkv(B, L, H, D, torch.float64, device)
    order = make_order(pattern, B, L, device)
    padm = make_pad(B, L, device, pad)
    out, lse = radd_fast.ops.masked_attention_fwd(q, k, v, padm, order, strict, 0.37)
    eout, else_ = R.masked_attention(q, k, v, padm, order, strict, 0.37, return_lse=True)
    torch.testing.assert_close(out, eout, rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.isinf(lse), torch.isinf(else_))
    torch.testing.assert_close(lse[~torch.isinf(lse)], else_[~torch.isinf(else_)], rtol=1e-12, atol=1e-12)
    empty = assert_no_key_rows_are_zero(out, padm, order, strict)
    if pad == "empty_row" or (strict and pattern in ("causal", "any_order", "prefix_lm", "bidirectional")):
        assert empty.any()  # the case really has queries without keys


@pytest.mark.parametrize("L", [1000, 1024])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
def test_float64_long_sequences(device, L, pattern, strict):
    # B * heads = 1, and padding; L = 1000 is not a multiple of any tile size.
    q, k, v = qkv(1, L, 1, 32, torch.float64, device)
    order = make_order(pattern, 1, L, device)
    padm = make_pad(1, L, device, "random")
    out, lse = radd_fast.ops.masked_attention_fwd(q, k, v, padm, order, strict, 1 / math.sqrt(32))
    eout, else_ = R.masked_attention(q, k, v, padm, order, strict, return_lse=True)
    torch.testing.assert_close(out, eout, rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.isinf(lse), torch.isinf(else_))
    torch.testing.assert_close(lse[~torch.isinf(lse)], else_[~torch.isinf(else_)], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pattern", ["none", "causal", "any_order"])
def test_float32_relative_error_at_1024(device, pattern):
    B, L, H, D = 2, 1024, 3, 64
    q, k, v = qkv(B, L, H, D, torch.float32, device)
    order = make_order(pattern, B, L, device)
    padm = make_pad(B, L, device, "random")
    out = fused(q, k, v, padm, order)
    truth = R.masked_attention(q.double(), k.double(), v.double(), padm, order)
    rel = ((out.double() - truth).norm() / truth.norm()).item()
    assert rel < 1e-5, rel


def test_order_int32_int64_and_huge_values_agree(device):
    # The mask depends only on comparisons of order values: int32, int64 and int64 values far
    # outside the int32 range (that keep the same comparisons) give the same result.
    B, L, H, D = 2, 100, 2, 32
    q, k, v = qkv(B, L, H, D, torch.float64, device)
    order = torch.randint(0, 9, (B, L), device=device)
    padm = make_pad(B, L, device, "random")
    for strict in (False, True):
        expect = R.masked_attention(q, k, v, padm, order, strict)
        for o in (order.int(), order, order * (1 << 40) - (1 << 62)):
            torch.testing.assert_close(fused(q, k, v, padm, o, strict), expect, rtol=1e-12, atol=1e-12)


def test_default_and_custom_scale(device):
    q, k, v = qkv(2, 33, 2, 32, torch.float64, device)
    torch.testing.assert_close(fused(q, k, v), R.masked_attention(q, k, v, scale=1 / math.sqrt(32)))
    torch.testing.assert_close(fused(q, k, v, scale=-2.5), R.masked_attention(q, k, v, scale=-2.5))


def test_strided_and_misaligned_low_precision_views(device):
    # bf16 q/k/v as views of a packed qkv (the CUDA kernels read them in place), and views whose
    # rows do not start 16-byte aligned (the CUDA kernels copy those first): same results as
    # contiguous copies.
    B, L, H, D = 2, 70, 3, 32
    packed = torch.randn(B, L, 3, H, D, device=device).to(torch.bfloat16)
    order = make_order("prefix_lm", B, L, device)
    views = packed.unbind(2)
    wide = torch.randn(B, L, H, D + 8, device=device).to(torch.bfloat16)
    shifted = (wide[..., 1:D + 1], wide[..., 3:D + 3], wide[..., 7:D + 7])  # element offsets 1, 3, 7
    for q, k, v in (views, shifted):
        expect = fused(q.contiguous(), k.contiguous(), v.contiguous(), order=order)
        torch.testing.assert_close(fused(q, k, v, order=order), expect, rtol=0, atol=0)


def test_strided_qkv_from_packed_tensor(device):
    # q, k, v as views of a fused qkv projection (B, L, 3, H, D): strided, no copy needed.
    B, L, H, D = 2, 77, 3, 32
    packed = torch.randn(B, L, 3, H, D, dtype=torch.float64, device=device)
    q, k, v = packed.unbind(2)
    assert not q.is_contiguous()
    order = make_order("block", B, L, device)
    expect = R.masked_attention(q.contiguous(), k.contiguous(), v.contiguous(), order=order)
    torch.testing.assert_close(fused(q, k, v, order=order), expect, rtol=1e-12, atol=1e-12)
    # ... and differentiable through the views
    p = packed.clone().requires_grad_(True)
    fused(*p.unbind(2), order=order).sum().backward()
    p2 = packed.clone().requires_grad_(True)
    R.masked_attention(*p2.unbind(2), order=order).sum().backward()
    torch.testing.assert_close(p.grad, p2.grad, rtol=1e-11, atol=1e-11)


def test_empty_batch(device):
    q, k, v = qkv(0, 5, 2, 32, torch.float32, device, requires_grad=True)
    out = fused(q, k, v)
    assert out.shape == q.shape
    out.sum().backward()
    assert q.grad.shape == q.shape


# -------------------------------------------------------------------------------------- backward
@pytest.mark.parametrize(
    "pattern,strict,pad", [("none", False, "none"), ("causal", True, "random"), ("any_order", False, "empty_row"),
                           ("prefix_lm", True, "none"), ("block", False, "random")]
)
def test_gradcheck(device, pattern, strict, pad):
    B, L, H, D = 2, 6, 2, 4
    if device.type == "cuda":
        D = 32
    q, k, v = qkv(B, L, H, D, torch.float64, device, requires_grad=True)
    order = make_order(pattern, B, L, device)
    padm = make_pad(B, L, device, pad)
    f = lambda q, k, v: fused(q, k, v, padm, order, strict)  # noqa: E731
    # nondet_tol: on CUDA dQ is summed with atomics, so repeated backwards differ in the last bits.
    assert torch.autograd.gradcheck(f, (q, k, v), nondet_tol=1e-12)


def test_gradcheck_through_lse(device):
    # The logsumexp output is differentiable too (dS gets + P * dlse).
    D = 32 if device.type == "cuda" else 4
    q, k, v = qkv(1, 5, 2, D, torch.float64, device, requires_grad=True)
    order = make_order("block", 1, 5, device)
    f = lambda q, k, v: radd_fast.ops.masked_attention_fwd(q, k, v, None, order, False, 0.5)  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, k, v), nondet_tol=1e-12)
    assert torch.autograd.gradcheck(lambda q, k, v: f(q, k, v)[1], (q, k, v), nondet_tol=1e-12)


@pytest.mark.parametrize("L", [130, 1000])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
def test_gradients_match_reference_autograd(device, L, pattern, strict):
    B, H, D = (2, 2, 32) if L < 1000 else (1, 1, 32)
    q, k, v = qkv(B, L, H, D, torch.float64, device, requires_grad=True)
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    order = make_order(pattern, B, L, device)
    padm = make_pad(B, L, device, "empty_row" if B > 1 else "random")
    g = torch.randn(B, L, H, D, dtype=torch.float64, device=device)
    fused(q, k, v, padm, order, strict).backward(g)
    R.masked_attention(q2, k2, v2, padm, order, strict).backward(g)
    for a, b in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)
    # queries without any key get exactly zero gradient
    empty = ~R.attention_mask(B, L, padm, order, strict, device=device).any(-1)
    assert torch.all(q.grad[empty] == 0)
    assert not torch.isnan(q.grad).any() and not torch.isnan(k.grad).any()


def test_float32_gradients_at_1024(device):
    B, L, H, D = 1, 1024, 2, 64
    q, k, v = qkv(B, L, H, D, torch.float32, device, requires_grad=True)
    order = make_order("any_order", B, L, device)
    g = torch.randn(B, L, H, D, device=device)
    fused(q, k, v, order=order).backward(g)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    R.masked_attention(qd, kd, vd, order=order).backward(g.double())
    for a, b in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        rel = ((a.double() - b).norm() / b.norm()).item()
        assert rel < 1e-5, rel


# ------------------------------------------------------------------------------- low precision
def _sdpa_lowp(q, k, v, mask):
    """PyTorch's own attention in q's dtype, the baseline of the low-precision error bound."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask[:, None])
    return out.transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("pattern", ["none", "block"])
def test_low_precision_within_twice_torch_error(device, dtype, pattern):
    check_within_twice_torch_error(device, dtype, pattern, 64)


def check_within_twice_torch_error(device, dtype, pattern, D):
    B, L, H = 2, 257, 4
    q, k, v = qkv(B, L, H, D, dtype, device, requires_grad=True)
    order = make_order(pattern, B, L, device)
    padm = make_pad(B, L, device, "random")
    padm[:, 0] = True  # key 0 is visible to every query: SDPA returns NaN for a query without keys
    allowed = R.attention_mask(B, L, padm, order, device=device)
    assert allowed.any(-1).all()
    g = torch.randn(B, L, H, D, dtype=torch.float64, device=device)

    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    truth = R.masked_attention(qd, kd, vd, padm, order)
    truth.backward(g)

    def errors(out, grads):
        e = [((out.double() - truth).norm() / truth.norm()).item()]
        e += [((a.double() - b).norm() / b.norm()).item() for a, b in zip(grads, (qd.grad, kd.grad, vd.grad))]
        return e

    ours = fused(q, k, v, padm, order)
    assert ours.dtype == dtype
    our_g = torch.autograd.grad(ours, (q, k, v), g.to(dtype))
    base = _sdpa_lowp(q, k, v, allowed)
    base_g = torch.autograd.grad(base, (q, k, v), g.to(dtype))
    ours_e, torch_e = errors(ours, our_g), errors(base, base_g)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours_e, torch_e):
        assert 0 < b and a <= 2 * b, (name, a, b)


def test_bf16_cpu_and_half_keep_dtype(device):
    for dtype in (torch.bfloat16, torch.float16):
        q, k, v = qkv(1, 9, 2, 32, dtype, device)
        out, lse = radd_fast.ops.masked_attention_fwd(q, k, v, None, None, False, 0.2)
        assert out.dtype == dtype and lse.dtype == torch.float32


TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_small_shapes_all_dtypes(device, dtype, D, masked):
    # Every kernel instance (dtype x head_dim) on a small odd shape: L = 70 is two 64-tiles (three
    # 32-tiles) with a tail. Relative error of out, dq, dk, dv against float64 on the same rounded
    # inputs. (Also the subset bench/gpu_check.sh runs under compute-sanitizer.)
    B, L, H = 2, 70, 2
    q, k, v = qkv(B, L, H, D, dtype, device, requires_grad=True)
    order = make_order("causal", B, L, device) if masked else None
    padm = make_pad(B, L, device, "random") if masked else None
    g = torch.randn(B, L, H, D, dtype=torch.float64, device=device)
    out = fused(q, k, v, padm, order, masked)
    grads = torch.autograd.grad(out, (q, k, v), g.to(dtype))
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    truth = R.masked_attention(qd, kd, vd, padm, order, masked)
    truth_grads = torch.autograd.grad(truth, (qd, kd, vd), g)
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *grads), (truth, *truth_grads)):
        assert a.dtype == dtype and not torch.isnan(a).any(), name
        rel = ((a.double() - b).norm() / b.norm()).item()
        assert rel < TOLERANCE[dtype], (name, rel)
    assert_no_key_rows_are_zero(out, padm, order, masked)


# ----------------------------------------------------------------------- opcheck, compile, autocast
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_opcheck(device, dtype, masked):
    B, L, H, D = 2, 9, 2, 32
    q, k, v = qkv(B, L, H, D, dtype, device, requires_grad=dtype != torch.bfloat16)
    order = make_order("causal", B, L, device) if masked else None
    padm = make_pad(B, L, device, "random") if masked else None
    torch.library.opcheck(torch.ops.radd_fast.masked_attention_fwd.default, (q, k, v, padm, order, masked, 0.3))
    with torch.no_grad():
        out, lse = torch.ops.radd_fast.masked_attention_fwd(q, k, v, padm, order, masked, 0.3)
    g = torch.randn_like(out)
    glse = torch.randn_like(lse) if masked else None
    torch.library.opcheck(torch.ops.radd_fast.masked_attention_bwd.default,
                          (g, q.detach(), k.detach(), v.detach(), out, lse, glse, padm, order, masked, 0.3))


def test_torch_compile_no_graph_break(device):
    B, L, H, D = 2, 19, 2, 32
    q, k, v = qkv(B, L, H, D, torch.float32, device, requires_grad=True)
    order = make_order("block", B, L, device)

    def f(q, k, v):
        return fused(q * 1.0, k, v, None, order, True).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(q, k, v)
    (gq,) = torch.autograd.grad(loss, q)
    loss_e = f(q, k, v)
    (gq_e,) = torch.autograd.grad(loss_e, q)
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(gq, gq_e)


def test_autocast(device):
    # fp32 inputs inside autocast run in the autocast dtype (bf16 on CPU, fp16 on CUDA), and the
    # gradients reach the fp32 leaves.
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    q, k, v = qkv(2, 33, 2, 32, torch.float32, device, requires_grad=True)
    order = make_order("causal", 2, 33, device)
    with torch.autocast(device.type, dtype=dtype):
        out = fused(q, k, v, order=order)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32
    truth = R.masked_attention(q.detach().double(), k.detach().double(), v.detach().double(), order=order)
    assert ((out.double() - truth).norm() / truth.norm()).item() < 1e-2
    # fp64 is not autocast
    qd, kd, vd = (t.detach().double() for t in (q, k, v))
    with torch.autocast(device.type, dtype=dtype):
        assert fused(qd, kd, vd).dtype == torch.float64


def test_reference_impl_and_auto_agree(device):
    q, k, v = qkv(2, 21, 2, 32, torch.float32, device)
    order = make_order("any_order", 2, 21, device)
    a = radd_fast.masked_attention(q, k, v, None, order, True, impl="reference")
    b = radd_fast.masked_attention(q, k, v, None, order, True, impl="auto")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ bad input
def _bad_cases():
    q = torch.randn(2, 4, 3, 8)
    k, v = torch.randn_like(q), torch.randn_like(q)
    yield "q_ndim", (q[0], k[0], v[0]), {}, ValueError, "'q' must have shape \\(B, L, heads, head_dim\\)"
    yield "k_shape", (q, k[:, :3], v), {}, ValueError, "'k' must have the shape of 'q'"
    yield "v_shape", (q, k, v[..., :4]), {}, ValueError, "'v' must have the shape of 'q'"
    yield "k_dtype", (q, k.double(), v), {}, TypeError, "'k' must have the dtype of 'q' \\(float32\\), got float64"
    yield "int_q", (q.long(), k.long(), v.long()), {}, TypeError, "'q' must have dtype"
    yield "v_last_dim_strided", (q, k, torch.randn(2, 4, 3, 16)[..., ::2]), {}, ValueError, \
        "'v' must be contiguous in its last dim"
    yield "pad_shape", (q, k, v), {"key_padding_mask": torch.ones(2, 5, dtype=torch.bool)}, ValueError, \
        "'key_padding_mask' must have shape \\(B, L\\) = \\(2, 4\\)"
    yield "pad_dtype", (q, k, v), {"key_padding_mask": torch.ones(2, 4)}, TypeError, \
        "'key_padding_mask' must have dtype bool"
    yield "order_shape", (q, k, v), {"order": torch.zeros(4, dtype=torch.long)}, ValueError, "'order' must have shape"
    yield "order_dtype", (q, k, v), {"order": torch.zeros(2, 4)}, TypeError, "'order' must have dtype int32, int64"
    yield "scale", (q, k, v), {"scale": float("nan")}, ValueError, "'scale' must be finite"
    yield "scale_past_float", (q, k, v), {"scale": 3e38}, ValueError, "'scale' must be finite in float32"
    yield "not_tensor", (q, [1.0], v), {}, TypeError, "'k' must be a torch.Tensor"


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0])
def test_bad_input_names_the_argument(case, impl):
    _, args, kwargs, exc, msg = case
    with pytest.raises(exc, match=msg):
        radd_fast.masked_attention(*args, **kwargs, impl=impl)


def test_device_mismatch_is_named():
    q = torch.randn(1, 2, 1, 8)
    with pytest.raises(ValueError, match="'k' must be on the device of 'q'"):
        radd_fast.masked_attention(q, q.to("meta"), q, impl="reference")
    with pytest.raises((ValueError, RuntimeError), match="order"):
        radd_fast.masked_attention(q, q, q, order=torch.zeros(1, 2, dtype=torch.long, device="meta"), impl="fused")


CUDA_ONLY = [pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device visible")])]


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
def test_cuda_rejects_unsupported_head_dim(device):
    q = torch.randn(1, 4, 2, 48, device=device)
    with pytest.raises(ValueError, match="head_dim .* must be 32, 64 or 128 on CUDA, got 48"):
        radd_fast.masked_attention(q, q, q, impl="fused")
    with pytest.raises(ValueError, match="head_dim .* must be 32, 64 or 128 on CUDA, got 48"):
        torch.ops.radd_fast.masked_attention_fwd(q, q, q, None, None, False, 1.0)
    # impl="auto" falls back to the reference for such head dims
    torch.testing.assert_close(radd_fast.masked_attention(q, q, q), R.masked_attention(q, q, q))


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("D", [32, 64])
@pytest.mark.parametrize("pattern", ["none", "causal", "any_order"])
@pytest.mark.parametrize("tile", ["auto", "64"])
def test_cuda_bf16_forward_query_tiles(device, monkeypatch, D, pattern, tile):
    # head_dim 32 and 64 run the bf16 forward on 128-query blocks by default, and on 64-query blocks
    # under RADD_FAST_ATTENTION_QUERY_TILE=64. L = 200: a second block whose last warps have no row
    # inside L, and (causal) warps of one block that skip a key tile next to warps that use it.
    monkeypatch.setenv("RADD_FAST_ATTENTION_QUERY_TILE", tile)
    B, L, H = 2, 200, 3
    q, k, v = qkv(B, L, H, D, torch.bfloat16, device)
    order = make_order(pattern, B, L, device)
    padm = make_pad(B, L, device, "empty_row")
    out, lse = radd_fast.ops.masked_attention_fwd(q, k, v, padm, order, False, D ** -0.5)
    truth, truth_lse = R.masked_attention(q.double(), k.double(), v.double(), padm, order, return_lse=True)
    assert ((out.double() - truth).norm() / truth.norm()).item() < TOLERANCE[torch.bfloat16]
    seen = torch.isfinite(truth_lse)
    assert (~seen).any() and torch.equal(torch.isfinite(lse), seen)
    torch.testing.assert_close(lse.double()[seen], truth_lse[seen], rtol=1e-5, atol=1e-5)
    assert_no_key_rows_are_zero(out, padm, order, False)


def check_tc_forward(q, k, v, padm, order):
    """The bf16 / fp16 forward under the current settings against float64: output within the
    dtype's tolerance, lse finite exactly where a query sees a key and equal there, zeros where it sees none."""
    D = q.shape[-1]
    out, lse = radd_fast.ops.masked_attention_fwd(q, k, v, padm, order, False, D ** -0.5)
    truth, truth_lse = R.masked_attention(q.double(), k.double(), v.double(), padm, order, return_lse=True)
    assert ((out.double() - truth).norm() / truth.norm()).item() < TOLERANCE[q.dtype]
    seen = torch.isfinite(truth_lse)
    assert torch.equal(torch.isfinite(lse), seen)
    torch.testing.assert_close(lse.double()[seen], truth_lse[seen], rtol=1e-5, atol=1e-5)
    assert_no_key_rows_are_zero(out, padm, order, False)
    return out, lse, truth


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("pattern", ["none", "causal", "any_order"])
def test_cuda_bf16_key_tiles(device, monkeypatch, D, pattern):
    # RADD_FAST_ATTENTION_KEY_TILE=128: the bf16 forward stepping over 128 keys and the backward on
    # 128-key blocks (8 warps), against the float64 reference and (backward) against the default
    # 64-key blocks. L = 200: a last step / block that ends past L; causal: warps whose keys a query
    # tile sees beside warps whose keys it does not.
    B, L, H = 2, 200, 3
    q, k, v = qkv(B, L, H, D, torch.bfloat16, device)
    order = make_order(pattern, B, L, device)
    padm = make_pad(B, L, device, "empty_row")
    monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", "128")
    check_tc_forward(q, k, v, padm, order)
    monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", "64")
    out, lse = radd_fast.ops.masked_attention_fwd(q, k, v, padm, order, False, D ** -0.5)
    grad = torch.randn_like(out)
    grads = {}
    for tile in ("64", "128"):
        monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", tile)
        grads[tile] = radd_fast.ops.masked_attention_bwd(grad, q, k, v, out, lse, None, padm, order, False, D ** -0.5)
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    truth = R.masked_attention(qd, kd, vd, padm, order)
    want = torch.autograd.grad(truth, (qd, kd, vd), grad.double())
    for name, got, ref, w in zip("qkv", grads["128"], grads["64"], want):
        assert torch.isfinite(got).all(), name
        err = ((got.double() - w).norm() / w.norm()).item()
        assert err < TOLERANCE[torch.bfloat16], (name, err)
        # Same sums in another grouping: as close to the 64-key result as each is to the truth.
        assert ((got.double() - ref.double()).norm() / w.norm()).item() < 2 * TOLERANCE[torch.bfloat16], name


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
def test_cuda_key_tile_setting_is_checked(device, monkeypatch):
    q = torch.randn(1, 8, 2, 64, device=device, dtype=torch.bfloat16)
    out, lse = radd_fast.ops.masked_attention_fwd(q, q, q, None, None, False, 0.125)
    monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", "256")
    with pytest.raises(ValueError, match="RADD_FAST_ATTENTION_KEY_TILE must be 'auto', '64' or '128', got '256'"):
        radd_fast.ops.masked_attention_bwd(q, q, q, q, out, lse, None, None, None, False, 0.125)


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
def test_cuda_query_tile_setting_is_checked(device, monkeypatch):
    monkeypatch.setenv("RADD_FAST_ATTENTION_QUERY_TILE", "96")
    q = torch.randn(1, 8, 2, 64, device=device, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="RADD_FAST_ATTENTION_QUERY_TILE must be 'auto' or '64', got '96'"):
        radd_fast.ops.masked_attention_fwd(q, q, q, None, None, False, 0.125)


def _wgmma_expected(device):
    """Whether RADD_FAST_ATTENTION_FORWARD / _BACKWARD=wgmma must work here: an sm_90 GPU and a 9.0a build."""
    from radd_fast import _extension

    arch = str((_extension.BUILD_INFO or {}).get("cuda_arch_list") or "")
    return torch.cuda.get_device_capability(device) == (9, 0) and "9.0a" in arch


@pytest.mark.wgmma
@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("pattern", ["none", "causal", "any_order", "block"])
@pytest.mark.parametrize("L", [200, 1000])
def test_cuda_wgmma_kernels(device, monkeypatch, dtype, D, pattern, L):
    # The sm_90a wgmma forward and backward (opt-in), against float64 like every kernel, with padding
    # that leaves a sequence without keys; L = 200 ends inside a block whose second warpgroup has
    # no row in L. Then against the mma.sync kernels on the same inputs.
    for var in ("RADD_FAST_ATTENTION_FORWARD", "RADD_FAST_ATTENTION_BACKWARD"):
        monkeypatch.setenv(var, "wgmma")
    B, H = 2, 3
    q, k, v = qkv(B, L, H, D, dtype, device, requires_grad=True)
    order = make_order(pattern, B, L, device)
    padm = make_pad(B, L, device, "empty_row")
    g = torch.randn(B, L, H, D, dtype=torch.float64, device=device)
    if not _wgmma_expected(device):
        for call in (lambda: radd_fast.ops.masked_attention_fwd(q, k, v, padm, order, False, D ** -0.5),
                     lambda: torch.autograd.grad(fused(q, k, v, padm, order), (q, k, v), g.to(dtype))):
            with pytest.raises(ValueError, match="=wgmma needs a compute capability 9.0"):
                call()
        return
    out, lse = radd_fast.ops.masked_attention_fwd(q, k, v, padm, order, False, D ** -0.5)
    truth, truth_lse = R.masked_attention(q.double(), k.double(), v.double(), padm, order, return_lse=True)
    seen = torch.isfinite(truth_lse)
    assert (~seen).any() and torch.equal(torch.isfinite(lse), seen)
    torch.testing.assert_close(lse.double()[seen], truth_lse[seen], rtol=1e-5, atol=1e-5)
    out = fused(q, k, v, padm, order)
    grads = torch.autograd.grad(out, (q, k, v), g.to(dtype))
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    truth_grads = torch.autograd.grad(R.masked_attention(qd, kd, vd, padm, order), (qd, kd, vd), g)
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *grads), (truth, *truth_grads)):
        assert a.dtype == dtype and not torch.isnan(a).any(), name
        assert ((a.double() - b).norm() / b.norm()).item() < TOLERANCE[dtype], name
    empty = assert_no_key_rows_are_zero(out, padm, order, False)
    assert torch.all(grads[0][empty] == 0)
    for var in ("RADD_FAST_ATTENTION_FORWARD", "RADD_FAST_ATTENTION_BACKWARD"):
        monkeypatch.setenv(var, "mma")
    out_mma = fused(q, k, v, padm, order)
    grads_mma = torch.autograd.grad(out_mma, (q, k, v), g.to(dtype))
    for name, a, b, t in zip(("out", "dq", "dk", "dv"), (out, *grads), (out_mma, *grads_mma), (truth, *truth_grads)):
        assert ((a.double() - b.double()).norm() / t.norm()).item() < TOLERANCE[dtype], name


@pytest.mark.wgmma
@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("dtype,pattern,L", [
    (torch.bfloat16, "none", 200), (torch.bfloat16, "any_order", 200), (torch.bfloat16, "causal", 1000),
    (torch.bfloat16, "block", 1000),
    # fp16 differs in its element type only: a plain and a masked case (the wgmma stage's time cap)
    (torch.float16, "none", 200), (torch.float16, "causal", 1000)], ids=str)
def test_cuda_wgmma_forward_key_tiles(device, monkeypatch, dtype, D, pattern, L):
    # RADD_FAST_ATTENTION_KEY_TILE=128 with the wgmma forward: 128-key steps on 128-query blocks,
    # against float64 and the 64-key wgmma forward. L = 200: a last step that ends past L, a block
    # with a warpgroup past L; padding leaves a sequence without keys.
    if not _wgmma_expected(device):
        pytest.skip("the wgmma kernels need an sm_90 GPU and a 9.0a build (test_cuda_wgmma_kernels checks the error)")
    monkeypatch.setenv("RADD_FAST_ATTENTION_FORWARD", "wgmma")
    B, H = 2, 3
    q, k, v = qkv(B, L, H, D, dtype, device)
    order = make_order(pattern, B, L, device)
    padm = make_pad(B, L, device, "empty_row")
    monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", "128")
    out, lse, truth = check_tc_forward(q, k, v, padm, order)
    assert not torch.isfinite(lse).all()  # the padding left a sequence without keys
    monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", "64")
    out64, _ = radd_fast.ops.masked_attention_fwd(q, k, v, padm, order, False, D ** -0.5)
    assert ((out.double() - out64.double()).norm() / truth.norm()).item() < TOLERANCE[dtype]
    # The wgmma backward keeps its own blocks: a key tile for it is an error that says so.
    monkeypatch.setenv("RADD_FAST_ATTENTION_BACKWARD", "wgmma")
    monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", "128")
    with pytest.raises(ValueError, match="the wgmma backward .* sizes its own blocks"):
        radd_fast.ops.masked_attention_bwd(torch.randn_like(out), q, k, v, out, lse, None, padm, order, False,
                                           D ** -0.5)


def _check_tensor_core_scale(device, scale):
    # bf16 forward and backward at a custom scale against float64, causal with padding. A positive
    # scale is applied to the row maxima and inside the exponent's FFMA, a negative one to the scores
    # first (kernels.cuh, fwd_softmax_stats); hidden scores must stay hidden either way.
    B, L, H, D = 2, 200, 3, 64
    q, k, v = qkv(B, L, H, D, torch.bfloat16, device, requires_grad=True)
    order = make_order("causal", B, L, device)
    padm = make_pad(B, L, device, "random")
    g = torch.randn(B, L, H, D, dtype=torch.float64, device=device)
    out = fused(q, k, v, padm, order, scale=scale)
    grads = torch.autograd.grad(out, (q, k, v), g.to(torch.bfloat16))
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    truth = R.masked_attention(qd, kd, vd, padm, order, scale=scale)
    truth_grads = torch.autograd.grad(truth, (qd, kd, vd), g)
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *grads), (truth, *truth_grads)):
        assert not torch.isnan(a).any(), name
        assert ((a.double() - b).norm() / b.norm()).item() < TOLERANCE[torch.bfloat16], (name, scale)


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("key_tile", ["64", "128"])
@pytest.mark.parametrize("scale", [-0.2, 0.31])
def test_cuda_mma_custom_scale(device, monkeypatch, key_tile, scale):
    monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", key_tile)
    _check_tensor_core_scale(device, scale)


@pytest.mark.wgmma
@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("key_tile", ["64", "128"])
@pytest.mark.parametrize("scale", [-0.2, 0.31])
def test_cuda_wgmma_custom_scale(device, monkeypatch, key_tile, scale):
    # The wgmma forward computes a tile hidden from one warpgroup and drops its scores: with a
    # negative scale they were scaled to +inf after being set to -inf (found on the CPU emulation).
    if not _wgmma_expected(device):
        pytest.skip("the wgmma kernels need an sm_90 GPU and a 9.0a build (test_cuda_wgmma_kernels checks the error)")
    monkeypatch.setenv("RADD_FAST_ATTENTION_FORWARD", "wgmma")
    monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", key_tile)
    _check_tensor_core_scale(device, scale)


@pytest.mark.wgmma
@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [64, 128])
def test_cuda_wgmma_within_twice_torch_error(device, monkeypatch, dtype, D):
    if not _wgmma_expected(device):
        pytest.skip("the wgmma kernels need an sm_90 GPU and a 9.0a build (test_cuda_wgmma_kernels checks the error)")
    for var in ("RADD_FAST_ATTENTION_FORWARD", "RADD_FAST_ATTENTION_BACKWARD"):
        monkeypatch.setenv(var, "wgmma")
    check_within_twice_torch_error(device, dtype, "block", D)


@pytest.mark.wgmma
@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("D", [32, 64])
@pytest.mark.parametrize("key_tile", ["64", "128"])
@pytest.mark.parametrize("dtype,pattern", [(torch.bfloat16, "none"), (torch.bfloat16, "causal"),
                                           (torch.bfloat16, "any_order"), (torch.float16, "block")], ids=str)
def test_cuda_bulk_dq(device, monkeypatch, D, key_tile, dtype, pattern):
    # RADD_FAST_ATTENTION_DQ=bulk (sm_90, opt-in): the mma backward's dQ through a staging tile and
    # bulk reductions, against float64 and against the atomics on the same inputs. L = 200: a last
    # query tile with rows past L (they send nothing); padding leaves a sequence without keys.
    B, L, H = 2, 200, 3
    q, k, v = qkv(B, L, H, D, dtype, device)
    order = make_order(pattern, B, L, device)
    padm = make_pad(B, L, device, "empty_row")
    monkeypatch.setenv("RADD_FAST_ATTENTION_KEY_TILE", key_tile)
    out, lse = radd_fast.ops.masked_attention_fwd(q, k, v, padm, order, False, D ** -0.5)
    grad = torch.randn_like(out)
    monkeypatch.setenv("RADD_FAST_ATTENTION_DQ", "bulk")
    bwd = lambda: radd_fast.ops.masked_attention_bwd(grad, q, k, v, out, lse, None, padm, order, False,  # noqa: E731
                                                     D ** -0.5)
    if not _wgmma_expected(device):
        with pytest.raises(ValueError, match="RADD_FAST_ATTENTION_DQ=bulk needs a compute capability 9.0"):
            bwd()
        return
    got = bwd()
    monkeypatch.setenv("RADD_FAST_ATTENTION_DQ", "atomic")
    ref = bwd()
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    want = torch.autograd.grad(R.masked_attention(qd, kd, vd, padm, order), (qd, kd, vd), grad.double())
    for name, a, r, w in zip("qkv", got, ref, want):
        assert torch.isfinite(a).all(), name
        assert ((a.double() - w).norm() / w.norm()).item() < TOLERANCE[dtype], name
        assert ((a.double() - r.double()).norm() / w.norm()).item() < TOLERANCE[dtype], name


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
def test_cuda_dq_setting_is_checked(device, monkeypatch):
    # RADD_FAST_ATTENTION_DQ: a bad value, head_dim 128 and the wgmma backward are errors naming it.
    q = torch.randn(1, 8, 2, 64, device=device, dtype=torch.bfloat16)
    out, lse = radd_fast.ops.masked_attention_fwd(q, q, q, None, None, False, 0.125)
    bwd = lambda t, o, s: radd_fast.ops.masked_attention_bwd(t, t, t, t, o, s, None, None, None, False, 0.125)  # noqa: E731
    monkeypatch.setenv("RADD_FAST_ATTENTION_DQ", "tma")
    with pytest.raises(ValueError, match="RADD_FAST_ATTENTION_DQ must be 'auto', 'atomic' or 'bulk', got 'tma'"):
        bwd(q, out, lse)
    monkeypatch.setenv("RADD_FAST_ATTENTION_DQ", "bulk")
    q128 = torch.randn(1, 8, 2, 128, device=device, dtype=torch.bfloat16)
    out128, lse128 = radd_fast.ops.masked_attention_fwd(q128, q128, q128, None, None, False, 0.125)
    with pytest.raises(ValueError, match="RADD_FAST_ATTENTION_DQ=bulk runs at head_dim 32 and 64, got 128"):
        bwd(q128, out128, lse128)
    if _wgmma_expected(device):
        monkeypatch.setenv("RADD_FAST_ATTENTION_BACKWARD", "wgmma")
        with pytest.raises(ValueError, match="RADD_FAST_ATTENTION_DQ=bulk applies to the mma backward"):
            bwd(q, out, lse)
    # fp32 runs the FMA kernels, which keep their atomics: the setting does not apply, no error.
    monkeypatch.delenv("RADD_FAST_ATTENTION_BACKWARD", raising=False)
    q32 = q.float()
    o32, l32 = radd_fast.ops.masked_attention_fwd(q32, q32, q32, None, None, False, 0.125)
    assert all(torch.isfinite(t).all() for t in bwd(q32, o32, l32))


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
def test_cuda_forward_engine_setting_is_checked(device, monkeypatch):
    q = torch.randn(1, 8, 2, 64, device=device, dtype=torch.bfloat16)
    monkeypatch.setenv("RADD_FAST_ATTENTION_FORWARD", "tma")
    with pytest.raises(ValueError, match="RADD_FAST_ATTENTION_FORWARD must be 'auto', 'mma' or 'wgmma', got 'tma'"):
        radd_fast.ops.masked_attention_fwd(q, q, q, None, None, False, 0.125)
    monkeypatch.setenv("RADD_FAST_ATTENTION_FORWARD", "auto")
    monkeypatch.setenv("RADD_FAST_ATTENTION_BACKWARD", "yes")
    out, lse = radd_fast.ops.masked_attention_fwd(q, q, q, None, None, False, 0.125)
    with pytest.raises(ValueError, match="RADD_FAST_ATTENTION_BACKWARD must be 'auto', 'mma' or 'wgmma', got 'yes'"):
        radd_fast.ops.masked_attention_bwd(q, q, q, q, out, lse, None, None, None, False, 0.125)
    monkeypatch.setenv("RADD_FAST_ATTENTION_FORWARD", "wgmma")
    monkeypatch.setenv("RADD_FAST_ATTENTION_QUERY_TILE", "64")
    with pytest.raises(ValueError, match="QUERY_TILE=64 applies to the mma forward"):
        radd_fast.ops.masked_attention_fwd(q, q, q, None, None, False, 0.125)


# ------------------------------------------------------------------------- impl="auto" on CUDA
def _like(device, dtype, D):
    """Stands for q in sdpa_is_faster, which reads only device, dtype and shape (no GPU needed)."""
    import types

    return types.SimpleNamespace(device=torch.device(device), dtype=dtype, shape=(2, 8, 3, D))


@pytest.mark.parametrize("device_type,dtype,D,masked,expected", [
    ("cuda", torch.bfloat16, 64, False, True),
    ("cuda", torch.float16, 128, False, True),
    ("cuda", torch.bfloat16, 32, False, False),   # not measured: ours
    ("cuda", torch.float32, 64, False, False),    # fp32: ours (SDPA would take its math path)
    ("cuda", torch.bfloat16, 64, True, False),    # any mask: ours
    ("cpu", torch.bfloat16, 64, False, False),    # CPU: ours is the faster
])
def test_auto_routes_only_measured_faster_case_to_sdpa(device_type, dtype, D, masked, expected):
    q = _like(device_type, dtype, D)
    pad = torch.ones(2, 8, dtype=torch.bool) if masked else None
    assert radd_fast.functional.sdpa_is_faster(q, pad, None) is expected
    if masked:
        assert radd_fast.functional.sdpa_is_faster(q, None, torch.zeros(2, 8, dtype=torch.long)) is False


@pytest.mark.parametrize("setting,capability,differentiated,expected", [
    ("auto", (9, 0), True, "cudnn"),    # Hopper, training: cuDNN first
    ("auto", (9, 0), False, "torch"),   # inference: torch's own order (FlashAttention-2 first)
    ("auto", (8, 0), True, "torch"),    # Ampere, Blackwell: torch's order
    ("auto", (10, 0), True, "torch"),
    ("cudnn", (8, 6), False, "cudnn"),  # an explicit choice holds everywhere
    ("torch", (9, 0), True, "torch"),
])
def test_sdpa_backend_choice(setting, capability, differentiated, expected):
    assert radd_fast.functional.sdpa_backend_choice(setting, capability, differentiated) == expected


def test_sdpa_backend_setting_is_checked(monkeypatch):
    monkeypatch.setenv("RADD_FAST_SDPA_BACKEND", "flash")
    with pytest.raises(ValueError, match="RADD_FAST_SDPA_BACKEND must be 'auto', 'cudnn' or 'torch', got 'flash'"):
        radd_fast.functional.sdpa_backend("cuda", 0)
    monkeypatch.setenv("RADD_FAST_SDPA_BACKEND", "auto")
    assert radd_fast.functional.sdpa_backend("cpu", None) == "torch"  # no CUDA query off CUDA


@pytest.mark.parametrize("setting,orders", [("cudnn", 1), ("torch", 0)])
def test_sdpa_bidirectional_sets_the_backend_order(setting, orders, monkeypatch):
    # "cudnn" runs SDPA inside torch's sdpa_kernel(cuDNN, flash, efficient, math; set_priority);
    # "torch" leaves torch's order alone.
    import contextlib

    entered = []

    @contextlib.contextmanager
    def recorder(backends, set_priority=False):
        entered.append((list(backends), set_priority))
        yield

    monkeypatch.setenv("RADD_FAST_SDPA_BACKEND", setting)
    monkeypatch.setattr(radd_fast.functional, "sdpa_kernel", recorder)
    q, k, v = qkv(1, 9, 2, 8, torch.float32, torch.device("cpu"))
    radd_fast.functional.sdpa_bidirectional(q, k, v, 0.5)
    assert entered == [(radd_fast.functional.CUDNN_FIRST, True)] * orders
    assert radd_fast.functional.CUDNN_FIRST[0] == torch.nn.attention.SDPBackend.CUDNN_ATTENTION
    assert len(set(radd_fast.functional.CUDNN_FIRST)) == 4  # every backend stays available


@pytest.mark.parametrize("setting", ["cudnn", "torch"])
def test_sdpa_bidirectional_under_compile(setting, monkeypatch):
    # The SDPA path of impl="auto" (CUDA only) is one graph under torch.compile, with the backend
    # order in force (fullgraph: a graph break raises); here on the CPU, where SDPA runs whichever
    # backend of the order accepts the call. Its value and gradients are those of the reference.
    monkeypatch.setenv("RADD_FAST_SDPA_BACKEND", setting)
    torch._dynamo.reset()
    B, L, H, D = 2, 37, 3, 16
    q, k, v = (t.double().requires_grad_(True) for t in qkv(B, L, H, D, torch.float32, torch.device("cpu")))
    f = torch.compile(lambda q, k, v: radd_fast.functional.sdpa_bidirectional(q, k, v, 0.3) * 2, fullgraph=True)
    out = f(q, k, v)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    qd, kd, vd = (t.detach().requires_grad_(True) for t in (q, k, v))
    truth = R.masked_attention(qd, kd, vd, scale=0.3) * 2
    want = torch.autograd.grad(truth, (qd, kd, vd), g)
    torch.testing.assert_close(out, truth, rtol=1e-10, atol=1e-12)
    for got, w in zip(grads, want):
        torch.testing.assert_close(got, w, rtol=1e-10, atol=1e-12)
    torch._dynamo.reset()


SDPA_SETTINGS = list(radd_fast.functional.SDPA_BACKENDS)


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("setting", SDPA_SETTINGS)
def test_cuda_auto_bidirectional_goes_through_sdpa(device, setting, monkeypatch):
    # impl="auto" with no mask in bf16 calls SDPA once, and its output and gradients are within 2x of
    # torch's own bf16 error against float64 (they are torch's); fp32 inputs under autocast too; with
    # each backend order.
    monkeypatch.setenv("RADD_FAST_SDPA_BACKEND", setting)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    B, L, H, D = 2, 257, 4, 64
    q, k, v = qkv(B, L, H, D, torch.bfloat16, device, requires_grad=True)
    out = radd_fast.masked_attention(q, k, v, scale=0.1)
    assert len(calls) == 1 and out.shape == q.shape and out.dtype == torch.bfloat16
    g = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    truth = R.masked_attention(qd, kd, vd, scale=0.1)
    truth.backward(g.double())
    for got, want in ((out, truth), (dq, qd.grad), (dk, kd.grad), (dv, vd.grad)):
        assert ((got.double() - want).norm() / want.norm()).item() < 2e-2
    qf, kf, vf = (t.detach().float() for t in (q, k, v))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        radd_fast.masked_attention(qf, kf, vf)
    assert len(calls) == 2
    radd_fast.masked_attention(q, k, v, impl="fused")  # "fused" is always our kernel
    radd_fast.masked_attention(q, k, v, order=make_order("causal", B, L, device))  # masked: ours
    assert len(calls) == 2


@pytest.mark.parametrize("device", CUDA_ONLY, indirect=True)
@pytest.mark.parametrize("D", [64, 128])
def test_cuda_auto_takes_cudnn_attention_on_hopper(device, D, monkeypatch):
    # What `auto` promises on Hopper: cuDNN's kernels run the forward and the backward for the
    # model's layout (strided (B, L, heads, D) views), not a silent fall-back to FlashAttention-2.
    if torch.cuda.get_device_capability(device)[0] != 9:
        pytest.skip("auto prefers cuDNN on compute capability 9.x only")
    monkeypatch.delenv("RADD_FAST_SDPA_BACKEND", raising=False)
    qkv_packed = torch.randn(2, 256, 3, 4, D, device=device, dtype=torch.bfloat16, requires_grad=True)
    q, k, v = qkv_packed.unbind(2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        radd_fast.masked_attention(q, k, v).sum().backward()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    # torch's own FlashAttention-2 kernels live in namespace pytorch_flash, its memory-efficient
    # ones are CUTLASS "fmha_cutlass" kernels; cuDNN's names vary with its version.
    assert names and not any("pytorch_flash" in n or "fmha_cutlass" in n for n in names), names
