"""radd_fast.linear_dce_loss: the fused kernels against the float64 oracle, gradients, opcheck,
autocast, torch.compile, bad input, and the weight-0 rows that must cost nothing."""

import pytest
import torch
import torch.nn.functional as F

import radd_fast
from radd_fast import ops
from radd_fast import reference as R
CUDA_ONLY = [pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device visible")])]

# (N, D, C, num_classes): N = 1; C and D that are multiples of no tile or vector width; num_classes
# well below C; more active rows than one CPU chunk (256) and more classes than one vocabulary block
# (256) so chunk and block edges are crossed; a 1-class problem.
SHAPES = [
    (1, 8, 5, None),
    (7, 3, 2, None),
    (37, 19, 301, None),
    (53, 24, 1003, 700),
    (613, 13, 290, None),
    (9, 5, 4, 1),
    (130, 64, 520, 517),
]
PATTERNS = ["random", "all", "none"]  # which rows carry weight


def make(N, D, C, nc, dtype, device, pattern="random", bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    nc = C - 1 if nc is None else nc
    h = torch.randn(N, D, generator=g, dtype=torch.float64)
    W = torch.randn(C, D, generator=g, dtype=torch.float64) / D**0.5 * 2
    b = torch.randn(C, generator=g, dtype=torch.float64) if bias else None
    t = torch.randint(0, nc, (N,), generator=g)
    t[0] = nc - 1  # both ends of the class range
    if N > 1:
        t[1] = 0
    w = torch.rand(N, generator=g, dtype=torch.float64) * 2 + 0.1
    if pattern == "random":
        w = w * (torch.rand(N, generator=g) < 0.5)
        w[0] = 0.7  # the target-at-the-end row is active
    elif pattern == "none":
        w = torch.zeros_like(w)
    to = lambda x: None if x is None else x.to(device=device, dtype=dtype)
    return to(h), to(W), to(b), t.to(device), w.to(device=device), nc


def naive(h, W, b, t, w, nc, reduction="sum"):
    """torch's own computation: Linear over all rows, log_softmax, gather, weighted sum."""
    logp = F.linear(h, W, b)[:, :nc].log_softmax(-1)
    rows = -logp.gather(1, t[:, None]).squeeze(1).float() * w.float()
    return rows.sum() if reduction == "sum" else rows


# ----------------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_float64_matches_reference(device, shape, pattern, bias):
    h, W, b, t, w, nc = make(*shape, torch.float64, device, pattern, bias)
    for reduction in ("sum", "none"):
        expect = R.linear_dce_loss(h, W, b, t, w, nc, reduction)
        out = radd_fast.linear_dce_loss(h, W, b, t, w, shape[3], reduction, impl="fused")
        assert out.dtype == torch.float64 and out.shape == expect.shape
        torch.testing.assert_close(out, expect, rtol=1e-12, atol=1e-12)
        if reduction == "none":
            assert torch.all(out[w == 0] == 0)
    if pattern == "none":
        assert radd_fast.linear_dce_loss(h, W, b, t, w, shape[3], impl="fused").item() == 0


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_float64_gradients_match_reference(device, shape, reduction, bias):
    h, W, b, t, w, nc = make(*shape, torch.float64, device, "random", bias, seed=1)
    upstream = torch.randn(shape[0], dtype=torch.float64, device=device) if reduction == "none" else None

    def grads(impl):
        leaves = [x.clone().requires_grad_() for x in (h, W, b) if x is not None]
        hh, WW = leaves[:2]
        bb = leaves[2] if b is not None else None
        if impl == "oracle":
            out = R.linear_dce_loss(hh, WW, bb, t, w, nc, reduction)
        else:
            out = radd_fast.linear_dce_loss(hh, WW, bb, t, w, shape[3], reduction, impl=impl)
        out.backward(upstream)
        return [x.grad for x in leaves]

    for got, want in zip(grads("fused"), grads("oracle")):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("chunk", ["1", "7", "64"])
def test_small_chunks(device, monkeypatch, chunk):
    # Every chunk edge, and (CUDA) the chunks past the device-side row count, whose blocks must exit
    # without touching anything: the kernels loop over ceil(N / R) chunks, only ~N / 2 rows are active.
    monkeypatch.setenv("RADD_FAST_DCE_CHUNK_ROWS", chunk)
    h, W, b, t, w, nc = make(150, 24, 301, None, torch.float64, device, "random", seed=21)
    leaves = [x.clone().requires_grad_() for x in (h, W, b)]
    rows = radd_fast.linear_dce_loss(*leaves, t, w, reduction="none", impl="fused")
    up = torch.rand_like(rows)
    rows.backward(up)
    ref_leaves = [x.clone().requires_grad_() for x in (h, W, b)]
    expect = R.linear_dce_loss(*ref_leaves, t, w, nc, "none")
    expect.backward(up)
    torch.testing.assert_close(rows, expect, rtol=1e-12, atol=1e-12)
    for x, y in zip(leaves, ref_leaves):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-11, atol=1e-12)
    s = [x.clone().requires_grad_() for x in (h, W, b)]
    radd_fast.linear_dce_loss(*s, t, w, impl="fused").backward()
    r_s = [x.clone().requires_grad_() for x in (h, W, b)]
    R.linear_dce_loss(*r_s, t, w, nc).backward()
    for x, y in zip(s, r_s):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("shape", [(613, 13, 290, None), (64, 96, 2051, None), (5, 768, 50, 40)], ids=str)
def test_float32_relative_error(device, shape):
    # fp32 inputs, truth in float64 on the same (fp32-representable) data; "far under 1e-3".
    h, W, b, t, w, nc = make(*shape, torch.float32, device, "random")
    leaves = [x.clone().requires_grad_() for x in (h, W, b)]
    loss = radd_fast.linear_dce_loss(*leaves, t, w, shape[3], "none", impl="fused")
    g_up = torch.rand_like(loss)
    loss.backward(g_up)
    truth_leaves = [x.double().requires_grad_() for x in (h, W, b)]
    truth = R.linear_dce_loss(*truth_leaves, t, w.double(), nc, "none")
    truth.backward(g_up.double())
    rel = lambda a, e: ((a.double() - e).norm() / e.norm()).item()
    assert rel(loss, truth) < 1e-6
    for x, xt in zip(leaves, truth_leaves):
        assert rel(x.grad, xt.grad) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_within_twice_torch_error(device, dtype):
    # Baseline: the naive Linear + log_softmax + gather computed by torch in `dtype`; truth: float64
    # on the same rounded inputs. Errors are norms over all rows / all gradient entries.
    h, W, b, t, w, nc = make(256, 64, 1001, None, dtype, device, "random", seed=3)
    up = torch.rand(256, dtype=torch.float32, device=device) + 0.5

    def run(fn, dt):
        leaves = [x.to(dt).clone().requires_grad_() for x in (h, W, b)]
        out = fn(*leaves)
        out.backward(up.to(out.dtype))
        return [out.double()] + [x.grad.double() for x in leaves]

    truth = run(lambda hh, WW, bb: R.linear_dce_loss(hh, WW, bb, t, w.double(), nc, "none"), torch.float64)
    theirs = run(lambda hh, WW, bb: naive(hh, WW, bb, t, w, nc, "none"), dtype)
    ours = run(lambda hh, WW, bb: radd_fast.linear_dce_loss(hh, WW, bb, t, w, reduction="none", impl="fused"), dtype)
    for name, o, th, tr in zip(("loss", "hidden", "weight", "bias"), ours, theirs, truth):
        torch_err, our_err = (th - tr).norm().item(), (o - tr).norm().item()
        assert 0 < torch_err and our_err <= 2 * torch_err, (name, our_err, torch_err)


def test_sum_equals_sum_of_none(device):
    h, W, b, t, w, nc = make(300, 16, 97, None, torch.float64, device, "random", seed=4)
    s = radd_fast.linear_dce_loss(h, W, b, t, w, impl="fused")
    n = radd_fast.linear_dce_loss(h, W, b, t, w, reduction="none", impl="fused")
    torch.testing.assert_close(s, n.sum(), rtol=1e-13, atol=0)


def test_weight_zero_rows_never_enter_a_matmul(device):
    # NaN hidden states and out-of-range targets on rows with weight 0: had any matmul touched
    # those rows, the weight gradient (a sum over rows) would be NaN.
    h, W, b, t, w, nc = make(97, 16, 61, None, torch.float32, device, "random", seed=5)
    off = w == 0
    assert off.any() and (~off).any()
    h2 = h.clone()
    h2[off] = float("nan")
    leaves = [x.clone().requires_grad_() for x in (h2, W, b)]
    rows = radd_fast.linear_dce_loss(*leaves, t, w, reduction="none", impl="fused")
    rows.sum().backward()
    assert torch.isfinite(rows).all() and torch.all(rows[off] == 0)
    assert all(torch.isfinite(x.grad).all() for x in leaves)
    assert torch.all(leaves[0].grad[off] == 0)
    clean = [x.clone().requires_grad_() for x in (h, W, b)]
    radd_fast.linear_dce_loss(*clean, t, w, impl="fused").backward()
    for x, c in zip(leaves, clean):
        torch.testing.assert_close(x.grad, c.grad, rtol=1e-6, atol=1e-6)


def test_mask_column_and_extra_rows_get_zero_gradient(device):
    h, W, b, t, w, nc = make(40, 8, 30, 25, torch.float64, device, "all")
    leaves = [x.clone().requires_grad_() for x in (h, W, b)]
    radd_fast.linear_dce_loss(*leaves, t, w, 25, impl="fused").backward()
    assert torch.all(leaves[1].grad[25:] == 0) and torch.all(leaves[2].grad[25:] == 0)
    assert torch.all(leaves[1].grad[:25].abs().sum(1) > 0)


# -------------------------------------------------------------------------------------- autograd
@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck(device, reduction, bias):
    h, W, b, t, w, nc = make(6, 3, 8, None, torch.float64, device, "random", bias, seed=6)
    leaves = tuple(x.clone().requires_grad_() for x in (h, W, b) if x is not None)

    def f(hh, WW, bb=None):
        return radd_fast.linear_dce_loss(hh, WW, bb, t, w, reduction=reduction, impl="fused")

    assert torch.autograd.gradcheck(f, leaves)


def test_partial_requires_grad(device):
    # Only the weight (a frozen trunk), only the hidden states (a frozen head), and no grad at all.
    h, W, b, t, w, nc = make(50, 8, 33, None, torch.float64, device, "random", seed=7)
    Wl = W.clone().requires_grad_()
    radd_fast.linear_dce_loss(h, Wl, b, t, w, impl="fused").backward()
    hl = h.clone().requires_grad_()
    radd_fast.linear_dce_loss(hl, W, b, t, w, impl="fused").backward()
    ho, Wo = h.clone().requires_grad_(), W.clone().requires_grad_()
    R.linear_dce_loss(ho, Wo, b, t, w, nc).backward()
    torch.testing.assert_close(Wl.grad, Wo.grad, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(hl.grad, ho.grad, rtol=1e-12, atol=1e-13)
    with torch.no_grad():
        out = radd_fast.linear_dce_loss(hl, Wl, b, t, w, impl="fused")
    assert not out.requires_grad


def test_double_backward_is_refused(device):
    h, W, b, t, w, nc = make(5, 3, 6, None, torch.float64, device)
    hl = h.clone().requires_grad_()
    loss = radd_fast.linear_dce_loss(hl, W, b, t, w, impl="fused")
    (g,) = torch.autograd.grad(loss, hl, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_backward_twice(device, reduction):
    # retain_graph=True: the "sum" path gave its precomputed gradients away to the first backward
    # (no copy) and recomputes them for the second.
    h, W, b, t, w, nc = make(50, 8, 33, None, torch.float64, device, seed=20)
    leaves = [x.clone().requires_grad_() for x in (h, W, b)]
    loss = radd_fast.linear_dce_loss(*leaves, t, w, reduction=reduction, impl="fused").sum()
    first = torch.autograd.grad(loss * 1.0, leaves, retain_graph=True)
    second = torch.autograd.grad(loss * 3.0, leaves)
    for a, c in zip(first, second):
        torch.testing.assert_close(3 * a, c, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_opcheck(device, dtype, bias):
    h, W, b, t, w, nc = make(11, 8, 13, None, dtype, device, "random", bias, seed=8)
    grad = dtype != torch.bfloat16
    args = (h.requires_grad_(grad), W.requires_grad_(grad), b.requires_grad_(grad) if bias else None, t, w.float(), nc)
    torch.library.opcheck(torch.ops.radd_fast.linear_dce_loss.default, args)
    plain = tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in args)
    for mask in ([True, True, True], [False, True, False], [False, False, False]):
        torch.library.opcheck(torch.ops.radd_fast.linear_dce_loss_grad.default, plain + (mask,))


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_torch_compile_no_graph_break(device, reduction):
    h, W, b, t, w, nc = make(33, 16, 41, None, torch.float32, device, "random", seed=9)

    def f(hh, WW, bb):
        out = radd_fast.linear_dce_loss(hh * 1.5, WW, bb, t, w, reduction=reduction, impl="fused")
        return out if reduction == "sum" else (out * torch.arange(out.shape[0], device=out.device)).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    a = [x.clone().requires_grad_() for x in (h, W, b)]
    e = [x.clone().requires_grad_() for x in (h, W, b)]
    out_c, out_e = compiled(*a), f(*e)
    torch.testing.assert_close(out_c, out_e)
    out_c.backward()
    out_e.backward()
    for x, y in zip(a, e):
        torch.testing.assert_close(x.grad, y.grad)


def test_autocast(device):
    # Under autocast hidden/weight/bias are cast to the autocast dtype (like a Linear); the loss is
    # fp32, and the fp32 parameters get fp32 gradients through the cast.
    dt = torch.bfloat16
    h, W, b, t, w, nc = make(40, 16, 50, None, torch.float32, device, "random", seed=10)
    W, b = W.requires_grad_(), b.requires_grad_()
    with torch.autocast(device.type, dtype=dt):
        loss = radd_fast.linear_dce_loss(h, W, b, t, w, impl="fused")
    assert loss.dtype == torch.float32
    loss.backward()
    assert W.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
    W2, b2 = W.detach().to(dt).requires_grad_(), b.detach().to(dt).requires_grad_()
    expect = radd_fast.linear_dce_loss(h.to(dt), W2, b2, t, w, impl="fused")
    expect.backward()
    torch.testing.assert_close(loss, expect, rtol=0, atol=0)
    torch.testing.assert_close(W.grad, W2.grad.float(), rtol=0, atol=0)


def test_reference_and_auto_agree(device):
    h, W, b, t, w, nc = make(70, 16, 90, None, torch.float32, device, "random", seed=11)
    for reduction in ("sum", "none"):
        a = radd_fast.linear_dce_loss(h, W, b, t, w, reduction=reduction, impl="reference")
        c = radd_fast.linear_dce_loss(h, W, b, t, w, reduction=reduction, impl="auto")
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)



# The CUDA kernel has two engines for its matmuls (csrc/dce_loss/cuda_api.cpp): "tiles" (ours, every
# dtype) and "grouped" (torch's grouped GEMM; bf16 on compute capability 9.x / 10.x, the default
# there). Both are tested in bf16 on the float64 oracle, within 2x torch's own bf16 error, over odd
# class counts, a class count below C, with and without bias, chunk edges and chunks past the
# device-side row count (RADD_FAST_DCE_CHUNK_ROWS), and all / no rows active.
def _needs_grouped_engine():
    major = torch.cuda.get_device_capability()[0]
    if major not in (9, 10):
        pytest.skip(f"the grouped engine needs compute capability 9.x or 10.x, this GPU is {major}.x")


# "grouped-split3": the grouped engine with its hidden-gradient product over three class slices on
# side streams (RADD_FAST_DCE_GRAD_H_SPLIT=3).
ENGINES = ["tiles", "grouped", "grouped-split3"]


def _set_engine(monkeypatch, engine):
    if engine.startswith("grouped"):
        _needs_grouped_engine()
    monkeypatch.setenv("RADD_FAST_DCE_ENGINE", engine.split("-")[0])
    monkeypatch.setenv("RADD_FAST_DCE_GRAD_H_SPLIT", "3" if engine == "grouped-split3" else "1")


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape,chunk", [((300, 64, 1003, None), ""), ((150, 24, 301, 290), "7"),
                                         ((1, 8, 5, None), ""), ((513, 128, 2051, None), "128")], ids=str)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_cuda_bf16_engines(device, monkeypatch, engine, shape, chunk, pattern, bias):
    _set_engine(monkeypatch, engine)
    monkeypatch.setenv("RADD_FAST_DCE_CHUNK_ROWS", chunk)
    h, W, b, t, w, nc = make(*shape, torch.bfloat16, device, pattern, bias=bias, seed=31)
    up = torch.rand(shape[0], dtype=torch.float32, device=device) + 0.5

    def run(fn, dt, hidden=h):
        leaves = [x.to(dt).clone().requires_grad_() for x in (hidden, W, b) if x is not None]
        out = fn(*leaves, *([None] if b is None else []))
        out.backward(up.to(out.dtype))
        return [out.double()] + [x.grad.double() for x in leaves]

    truth = run(lambda hh, WW, bb: R.linear_dce_loss(hh, WW, bb, t, w.double(), nc, "none"), torch.float64)
    theirs = run(lambda hh, WW, bb: naive(hh, WW, bb, t, w, nc, "none"), torch.bfloat16)
    # NaN hidden states on the rows with weight 0: had a matmul read one, NaN would spread.
    ours = run(lambda hh, WW, bb: radd_fast.linear_dce_loss(hh, WW, bb, t, w, nc, "none", impl="fused"),
               torch.bfloat16, torch.where((w == 0)[:, None], torch.nan, h))
    for name, o, th, tr in zip(("loss", "hidden", "weight", "bias"), ours, theirs, truth):
        torch_err, our_err = (th - tr).norm().item(), (o - tr).norm().item()
        if pattern == "none":  # nothing active: exactly zero loss and gradients
            assert o.abs().max().item() == 0, name
        else:
            assert 0 < torch_err and our_err <= 2 * torch_err, (name, our_err, torch_err)


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("engine", ENGINES)
def test_cuda_no_host_synchronisation(device, monkeypatch, engine):
    _set_engine(monkeypatch, engine)
    monkeypatch.setenv("RADD_FAST_DCE_CHUNK_ROWS", "128")  # several chunks, some past the row count
    h, W, b, t, w, nc = make(700, 64, 1003, None, torch.bfloat16, device, "random", seed=12)
    leaves = [x.clone().requires_grad_() for x in (h, W, b)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for reduction in ("sum", "none"):
            radd_fast.linear_dce_loss(*leaves, t, w, reduction=reduction, impl="fused").sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_cuda_engine_choice_errors(device, monkeypatch):
    h, W, b, t, w, nc = make(20, 12, 30, None, torch.float32, device, "random", seed=13)
    monkeypatch.setenv("RADD_FAST_DCE_ENGINE", "fastest")
    with pytest.raises(ValueError, match="RADD_FAST_DCE_ENGINE must be 'auto', 'grouped' or 'tiles', got 'fastest'"):
        radd_fast.linear_dce_loss(h, W, b, t, w, impl="fused")
    monkeypatch.setenv("RADD_FAST_DCE_ENGINE", "grouped")
    with pytest.raises(ValueError, match="RADD_FAST_DCE_ENGINE=grouped cannot run this call: it needs bfloat16"):
        radd_fast.linear_dce_loss(h, W, b, t, w, impl="fused")
    if torch.cuda.get_device_capability()[0] in (9, 10):  # D = 12 is not a multiple of 8
        with pytest.raises(ValueError, match="it needs D to be a multiple of 8"):
            radd_fast.linear_dce_loss(h.bfloat16(), W.bfloat16(), b.bfloat16(), t, w, impl="fused")
        h8 = torch.randn(4, 16, device=device, dtype=torch.bfloat16)
        W8 = torch.randn(9, 16, device=device, dtype=torch.bfloat16)
        b8, t8, w8 = None, torch.zeros(4, dtype=torch.long, device=device), torch.ones(4, device=device)
        for engine in ("grouped", "auto"):  # auto must not take a bad setting for a refusal of the GEMM
            monkeypatch.setenv("RADD_FAST_DCE_ENGINE", engine)
            monkeypatch.setenv("RADD_FAST_DCE_GRAD_H_SPLIT", "17")
            with pytest.raises(ValueError, match="RADD_FAST_DCE_GRAD_H_SPLIT must be 1 to 16, got '17'"):
                radd_fast.linear_dce_loss(h8, W8, b8, t8, w8, impl="fused")
        monkeypatch.setenv("RADD_FAST_DCE_GRAD_H_SPLIT", "1")
    monkeypatch.setenv("RADD_FAST_DCE_ENGINE", "auto")  # falls back to the tile engine
    h16, W16, b16 = h.bfloat16(), W.bfloat16(), b.bfloat16()
    torch.testing.assert_close(radd_fast.linear_dce_loss(h16, W16, b16, t, w, impl="fused"),
                               radd_fast.linear_dce_loss(h16, W16, b16, t, w, impl="reference"), rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------------------- bad input
def _bad_cases():
    h, W, b, t, w, nc = make(6, 4, 9, None, torch.float32, "cpu", "all")
    yield "target_high", (h, W, b, torch.full_like(t, 8), w), ValueError, r"'target' values must be in \[0, num_classes\) = \[0, 8\), got 8 at row 0"
    yield "target_negative", (h, W, b, torch.full_like(t, -1), w), ValueError, "'target' values must be in"
    yield "target_int32", (h, W, b, t.int(), w), TypeError, "'target' must have dtype int64, got int32"
    yield "target_shape", (h, W, b, t[:5], w), ValueError, r"'target' must have shape \(N,\) with N = 6"
    yield "weight_nan", (h, W, b, t, torch.where(torch.arange(6) == 2, float("nan"), w)), ValueError, "'row_weight' must be finite, got nan at row 2"
    yield "weight_inf", (h, W, b, t, torch.full_like(w, float("inf"))), ValueError, "'row_weight' must be finite, got inf at row 0"
    yield "weight_int", (h, W, b, t, w.long()), TypeError, "'row_weight' must have dtype float32, float64, bfloat16, float16, got int64"
    yield "weight_bool", (h, W, b, t, w > 0), TypeError, "'row_weight' must have dtype"
    yield "weight_shape", (h, W, b, t, w[:, None]), ValueError, r"'row_weight' must have shape \(N,\)"
    yield "weight_len", (h, W, b, t, w[:4]), ValueError, r"'row_weight' must have shape \(N,\) with N = 6"
    yield "D_mismatch", (h, W[:, :3], b, t, w), ValueError, r"'weight' must have shape \(C, D\) with D = 4"
    yield "N_zero", (h[:0], W, b, t[:0], w[:0]), ValueError, "'hidden' must have at least one row"
    yield "hidden_3d", (h[None], W, b, t, w), ValueError, r"'hidden' must have shape \(N, D\)"
    yield "hidden_int", (h.long(), W, b, t, w), TypeError, "'hidden' must have dtype"
    yield "weight_dtype", (h, W.double(), b, t, w), TypeError, r"'weight' must have the dtype of 'hidden' \(float32\), got float64"
    yield "bias_shape", (h, W, b[:-1], t, w), ValueError, r"'bias' must have shape \(C,\) with C = 9"
    yield "bias_dtype", (h, W, b.double(), t, w), TypeError, "'bias' must have the dtype of 'hidden'"
    yield "hidden_noncontig", (torch.randn(4, 6).t(), W, b, t, w), ValueError, "'hidden' must be contiguous"
    yield "not_tensor", (h, W, b, [0] * 6, w), TypeError, "'target' must be a torch.Tensor"


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0])
def test_bad_input_names_the_argument(case, impl):
    _, args, exc, msg = case
    with pytest.raises(exc, match=msg):
        radd_fast.linear_dce_loss(*args, impl=impl)


def test_bad_num_classes_and_reduction():
    h, W, b, t, w, nc = make(6, 4, 9, None, torch.float32, "cpu", "all")
    for bad in (0, 10):
        with pytest.raises(ValueError, match=r"'num_classes' must be in \[1, C\] = \[1, 9\], got " + str(bad)):
            radd_fast.linear_dce_loss(h, W, b, t.clamp(max=0), w, bad, impl="fused")
    with pytest.raises(ValueError, match="'reduction' must be 'sum' or 'none', got 'mean'"):
        radd_fast.linear_dce_loss(h, W, b, t, w, reduction="mean")
    with pytest.raises(ValueError, match="'impl' must be one of"):
        radd_fast.linear_dce_loss(h, W, b, t, w, impl="triton")


def test_device_mismatch_is_named():
    h, W, b, t, w, nc = make(6, 4, 9, None, torch.float32, "cpu", "all")
    with pytest.raises(ValueError, match="'weight' must be on the device of 'hidden'"):
        radd_fast.linear_dce_loss(h, W.to("meta"), b, t, w, impl="reference")
    with pytest.raises(ValueError, match="'row_weight' must be on the device of 'hidden'"):
        radd_fast.linear_dce_loss(h, W, b, t, w.to("meta"), impl="fused")


def test_bad_values_on_each_device(device):
    # CPU: always an error. CUDA: the kernel never reads values on the host (no sync), so a bad active
    # row gives a NaN loss; validate=True turns that into the CPU's error.
    h, W, b, t, w, nc = make(6, 4, 9, None, torch.float32, device, "all")
    bad_t = t.clone()
    bad_t[3] = nc
    if device.type == "cpu":
        with pytest.raises(ValueError, match="got 8 at row 3"):
            radd_fast.linear_dce_loss(h, W, b, bad_t, w, impl="fused")
    else:
        rows = radd_fast.linear_dce_loss(h, W, b, bad_t, w, reduction="none", impl="fused")
        assert torch.isnan(rows[3]) and torch.isfinite(rows[torch.arange(6, device=device) != 3]).all()
    with pytest.raises(ValueError, match="got 8 at row 3"):
        radd_fast.linear_dce_loss(h, W, b, bad_t, w, impl="fused", validate=True)


def test_fake_kernels_check_shapes():
    h, W, b, t, w, nc = make(6, 4, 9, None, torch.float32, "meta", "all")
    out = ops.linear_dce_loss(h, W, b, t, w, nc)
    assert out.shape == (6,) and out.dtype == torch.float32 and out.device.type == "meta"
    loss, gh, gw, gb = ops.linear_dce_loss_grad(h, W, b, t, w, nc, [True, False, True])
    assert gh.shape == h.shape and gw.numel() == 0 and gb.shape == b.shape
    with pytest.raises(ValueError, match="'weight' must have shape"):
        ops.linear_dce_loss(h, W[:, :2], b, t, w, nc)
