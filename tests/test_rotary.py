"""radd_fast.rotary: the compiled kernels against the float64 oracle, autograd, opcheck, bad input."""

import pytest
import torch

import radd_fast
from radd_fast import reference as R

SHAPES = [  # (B, L, heads, head_dim): L = 1, L = 1,023, head_dim 32/64/128, and odd leftovers
    (1, 1, 1, 32),
    (2, 1023, 3, 64),
    (3, 17, 5, 128),
    (2, 13, 1, 34),  # D/2 = 17: not a multiple of any vector width
    (1, 3, 2, 2),
]


def make(B, L, H, D, dtype, device):
    qkv = torch.randn(B, L, 3, H, D, dtype=torch.float64, device=device).to(dtype)
    tdt = torch.float64 if dtype == torch.float64 else torch.float32
    cos, sin = radd_fast.rotary_tables(L + 3, D, device=device, dtype=tdt)  # longer tables are fine
    return qkv, cos, sin


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_float64_matches_reference(device, shape, inverse, inplace):
    qkv, cos, sin = make(*shape, torch.float64, device)
    expect = R.rotary(qkv, cos, sin, inverse)
    x = qkv.clone()
    out = radd_fast.rotary(x, cos, sin, inverse=inverse, inplace=inplace, impl="fused")
    torch.testing.assert_close(out, expect, rtol=1e-13, atol=1e-13)
    assert torch.equal(out[:, :, 2], qkv[:, :, 2])  # v untouched, bit for bit
    if inplace:
        assert out.data_ptr() == x.data_ptr()
    else:
        assert torch.equal(x, qkv)  # input untouched


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float32_relative_error(device, shape):
    # The truth rotates by the same (fp32-computed) angles in float64: the op's error, not the tables'.
    qkv, cos, sin = make(*shape, torch.float32, device)
    truth = R.rotary(qkv.double(), cos.double(), sin.double())
    out = radd_fast.rotary(qkv, cos, sin, impl="fused")
    rel = ((out.double() - truth).norm() / truth.norm()).item()
    assert rel < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_within_twice_torch_error(device, dtype):
    # Baseline: the reference network's own arithmetic in that dtype (tables cast to it first).
    qkv, cos, sin = make(4, 257, 6, 64, dtype, device)
    truth = R.rotary(qkv.double(), cos.double(), sin.double())
    torch_err = (R.rotary(qkv, cos, sin, compute_dtype=dtype).double() - truth).abs().max().item()
    ours = radd_fast.rotary(qkv, cos, sin, impl="fused")
    assert ours.dtype == dtype
    our_err = (ours.double() - truth).abs().max().item()
    assert 0 < torch_err and our_err <= 2 * torch_err, (our_err, torch_err)
    # one rounding of an fp32 result: within an ulp of the truth (plus fp32 error near zero)
    ulp = torch.finfo(dtype).eps * truth.abs() + 1e-6
    assert torch.all((ours.double() - truth).abs() <= ulp)


def test_inverse_roundtrip(device):
    qkv, cos, sin = make(2, 31, 3, 64, torch.float64, device)
    y = radd_fast.rotary(qkv, cos, sin, impl="fused")
    torch.testing.assert_close(radd_fast.rotary(y, cos, sin, inverse=True, impl="fused"), qkv, rtol=0, atol=1e-13)


def test_gradcheck_out_of_place(device):
    qkv, cos, sin = make(2, 5, 2, 6, torch.float64, device)
    qkv.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: radd_fast.rotary(x, cos, sin, impl="fused"), (qkv,))
    assert torch.autograd.gradgradcheck(lambda x: radd_fast.rotary(x, cos, sin, impl="fused"), (qkv,))


def test_gradcheck_in_place(device):
    qkv, cos, sin = make(2, 5, 2, 6, torch.float64, device)
    qkv.requires_grad_(True)

    def f(x):
        y = x * 1.5  # a non-leaf, as the qkv Linear's output is
        return radd_fast.rotary(y, cos, sin, inplace=True, impl="fused")

    assert torch.autograd.gradcheck(f, (qkv,))


def test_gradients_match_reference_autograd(device):
    qkv, cos, sin = make(2, 129, 4, 64, torch.float64, device)
    g = torch.randn_like(qkv)
    for inplace in (False, True):
        a = qkv.clone().requires_grad_(True)
        b = qkv.clone().requires_grad_(True)
        radd_fast.rotary(a.view_as(a) * 1.0, cos, sin, inplace=inplace, impl="fused").backward(g)
        R.rotary(b, cos, sin).backward(g)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_opcheck(device, dtype):
    qkv, cos, sin = make(2, 7, 3, 16, dtype, device)
    torch.library.opcheck(torch.ops.radd_fast.rotary.default, (qkv, cos, sin, False))
    torch.library.opcheck(torch.ops.radd_fast.rotary.default, (qkv.requires_grad_(dtype != torch.bfloat16), cos, sin, True))
    torch.library.opcheck(torch.ops.radd_fast.rotary_.default, (qkv.detach().clone(), cos, sin, False))


def test_torch_compile_no_graph_break(device):
    qkv, cos, sin = make(2, 9, 3, 32, torch.float32, device)

    def f(x):
        y = radd_fast.rotary(x * 2.0, cos, sin, impl="fused")
        return radd_fast.rotary(y, cos, sin, inverse=True, inplace=True, impl="fused")

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(qkv), f(qkv))


def test_reference_impl_and_auto_agree(device):
    qkv, cos, sin = make(2, 11, 3, 32, torch.float32, device)
    for inplace in (False, True):
        a = radd_fast.rotary(qkv.clone(), cos, sin, impl="reference", inplace=inplace)
        b = radd_fast.rotary(qkv.clone(), cos, sin, impl="auto", inplace=inplace)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_empty_batch_is_a_no_op(device):
    qkv, cos, sin = make(0, 4, 2, 8, torch.float32, device)
    assert radd_fast.rotary(qkv, cos, sin, impl="fused").shape == qkv.shape


# ------------------------------------------------------------------------------------------- bad input
def _bad_cases():
    qkv = torch.randn(2, 4, 3, 2, 8)
    cos, sin = radd_fast.rotary_tables(4, 8)
    yield "qkv_ndim", (qkv[0], cos, sin), ValueError, "'qkv' must have shape"
    yield "qkv_not_3", (torch.randn(2, 4, 2, 2, 8), cos, sin), ValueError, "3 = \\(q, k, v\\)"
    yield "odd_head_dim", (torch.randn(2, 4, 3, 2, 7), *radd_fast.rotary_tables(4, 6)), ValueError, "must be even"
    yield "int_qkv", (qkv.long(), cos, sin), TypeError, "'qkv' must have dtype"
    yield "non_contiguous", (qkv.transpose(0, 1), cos, sin), ValueError, "'qkv' must be contiguous"
    yield "cos_short", (qkv, cos[:3], sin), ValueError, "'cos' must have shape \\(seq_len >= 4, 4\\)"
    yield "sin_width", (qkv, cos, radd_fast.rotary_tables(4, 10)[1]), ValueError, "'sin' must have shape"
    yield "cos_dtype", (qkv, cos.double(), sin), TypeError, "'cos' must be float32 for float32 qkv"
    yield "sin_1d", (qkv, cos, sin[0]), ValueError, "'sin' must have shape"
    yield "cos_noncontig", (qkv, torch.randn(4, 8)[:, ::2], sin), ValueError, "'cos' must be contiguous"
    yield "not_tensor", (qkv, [1.0], sin), TypeError, "'cos' must be a torch.Tensor"


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0])
def test_bad_input_names_the_argument(case, impl):
    _, args, exc, msg = case
    with pytest.raises(exc, match=msg):
        radd_fast.rotary(*args, impl=impl)
    if impl == "fused":
        with pytest.raises(exc, match=msg):
            radd_fast.rotary(*args, impl=impl, inplace=True)


def test_device_mismatch_is_named():
    qkv = torch.randn(1, 2, 3, 1, 4)
    cos, sin = radd_fast.rotary_tables(2, 4)
    with pytest.raises(ValueError, match="'cos' must be on the device of 'qkv'"):
        radd_fast.rotary(qkv, cos.to("meta"), sin, impl="reference")
    with pytest.raises((ValueError, RuntimeError), match="cos"):
        radd_fast.rotary(qkv, cos.to("meta"), sin.to("meta"), impl="fused")


def test_bad_impl():
    qkv = torch.randn(1, 2, 3, 1, 4)
    with pytest.raises(ValueError, match="'impl' must be one of auto, fused, reference"):
        radd_fast.rotary(qkv, *radd_fast.rotary_tables(2, 4), impl="triton")


def test_rotary_tables_bad_input():
    with pytest.raises(ValueError, match="head_dim"):
        radd_fast.rotary_tables(4, 7)
    with pytest.raises(TypeError, match="dtype"):
        radd_fast.rotary_tables(4, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="inv_freq"):
        radd_fast.rotary_tables(4, 8, inv_freq=torch.ones(3))
