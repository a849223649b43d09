"""Randomised property tests (hypothesis) of every compiled op against radd_fast.reference in float64:
shapes, masks, orders, weights and edge cases drawn at random, 200 cases per op (derandomised, so CI
sees the same cases every run). A case that ever fails is kept below as an @example, so it is
re-checked forever. `pytest -p no:randomly --hypothesis-show-statistics` shows the counts; the
session's summary line "property cases" counts them too (tests/conftest.py)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import radd_fast
from radd_fast import functional as RF
from radd_fast import reference as R

from conftest import count_case

CASES = 200
PROPS = settings(max_examples=CASES, deadline=None, derandomize=True, print_blob=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ rotary
@PROPS
@given(B=st.integers(0, 3), L=st.integers(1, 40), H=st.integers(1, 4), half=st.integers(1, 35),
       extra=st.integers(0, 5), inverse=st.booleans(), inplace=st.booleans(), seed=st.integers(0, 2**31))
@example(B=1, L=1, H=1, half=1, extra=0, inverse=False, inplace=True, seed=0)
def test_rotary_property(B, L, H, half, extra, inverse, inplace, seed):
    count_case("rotary")
    D = 2 * half
    qkv = torch.randn(B, L, 3, H, D, dtype=torch.float64, generator=gen(seed))
    cos, sin = radd_fast.rotary_tables(L + extra, D, dtype=torch.float64)
    expect = R.rotary(qkv, cos, sin, inverse)
    got = radd_fast.rotary(qkv.clone(), cos, sin, inverse=inverse, inplace=inplace, impl="fused")
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------- attention
@st.composite
def attention_cases(draw):
    B, L, H, D = draw(st.integers(1, 2)), draw(st.integers(1, 48)), draw(st.integers(1, 3)), draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["none", "equal", "causal", "permutation", "blocks", "random", "huge"]))
    pad = draw(st.sampled_from(["none", "random", "all_padding_row", "first_only"]))
    return B, L, H, D, kind, pad, draw(st.booleans()), draw(st.sampled_from([None, 0.3, 1.7])), draw(st.integers(0, 2**31))


def make_order(kind, B, L, g):
    if kind == "none":
        return None
    if kind == "equal":
        return torch.zeros(B, L, dtype=torch.long)
    if kind == "causal":
        return torch.arange(L).expand(B, L).clone()
    if kind == "permutation":
        return torch.stack([torch.randperm(L, generator=g) for _ in range(B)])
    if kind == "blocks":
        return (torch.arange(L) // 3).expand(B, L).clone()
    if kind == "huge":  # values far outside int32: compared exactly
        return torch.randint(-(2**62), 2**62, (B, L), generator=g)
    return torch.randint(0, 4, (B, L), generator=g).to(torch.int32)


def make_padding(pad, B, L, g):
    if pad == "none":
        return None
    m = torch.rand(B, L, generator=g) > 0.3
    if pad == "all_padding_row":
        m[0] = False
    if pad == "first_only":
        m[:] = False
        m[:, 0] = True
    return m


@PROPS
@given(case=attention_cases())
@example(case=(1, 1, 1, 1, "causal", "none", True, None, 0))  # the one query sees no key
def test_attention_property(case):
    count_case("masked_attention")
    B, L, H, D, kind, pad, strict, scale, seed = case
    g = gen(seed)
    q, k, v = (torch.randn(B, L, H, D, dtype=torch.float64, generator=g).requires_grad_() for _ in range(3))
    order, kpm = make_order(kind, B, L, g), make_padding(pad, B, L, g)
    out = radd_fast.masked_attention(q, k, v, key_padding_mask=kpm, order=order, strict=strict, scale=scale,
                                     impl="fused")
    ref = R.masked_attention(q, k, v, kpm, order, strict, scale)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    gout = torch.randn(out.shape, dtype=torch.float64, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), gout)
    ref_grads = torch.autograd.grad(ref, (q, k, v), gout)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
        assert torch.isfinite(a).all()


# ------------------------------------------------------------------------------------------------- loss
@st.composite
def loss_cases(draw):
    N, D, C = draw(st.integers(1, 40)), draw(st.integers(1, 24)), draw(st.integers(2, 60))
    nc = draw(st.one_of(st.none(), st.integers(1, C)))
    weights = draw(st.sampled_from(["random", "all_zero", "none_zero", "one_row", "huge"]))
    return N, D, C, nc, weights, draw(st.booleans()), draw(st.sampled_from(["sum", "none"])), draw(st.integers(0, 2**31))


@PROPS
@given(case=loss_cases())
@example(case=(1, 1, 2, None, "one_row", False, "sum", 0))
def test_linear_dce_loss_property(case):
    count_case("linear_dce_loss")
    N, D, C, nc, weights, with_bias, reduction, seed = case
    g = gen(seed)
    V = C - 1 if nc is None else nc
    h = torch.randn(N, D, dtype=torch.float64, generator=g).requires_grad_()
    W = torch.randn(C, D, dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(C, dtype=torch.float64, generator=g).requires_grad_() if with_bias else None
    t = torch.randint(0, V, (N,), generator=g)
    w = torch.rand(N, dtype=torch.float64, generator=g) * (torch.rand(N, generator=g) < 0.5)
    if weights == "all_zero":
        w.zero_()
    elif weights == "none_zero":
        w = w + 0.5
    elif weights == "one_row":
        w = torch.zeros(N, dtype=torch.float64)
        w[-1] = 2.0
    elif weights == "huge":
        w = w * 1e6
    got = radd_fast.linear_dce_loss(h, W, b, t, w, nc, reduction, impl="fused")
    ref = R.linear_dce_loss(h, W, b, t, w, nc, reduction)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-9)
    ins = [h, W] + ([b] if b is not None else [])
    go = torch.randn(got.shape, dtype=torch.float64, generator=g)
    for a, r in zip(torch.autograd.grad(got, ins, go), torch.autograd.grad(ref, ins, go)):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-8)


# ------------------------------------------------------------------------------------- reveal schedule
@PROPS
@given(B=st.integers(1, 5), L=st.integers(1, 40), steps=st.integers(1, 64), p_mask=st.sampled_from([0.0, 0.3, 1.0]),
       seed=st.integers(0, 2**63 - 1), offset=st.integers(0, 2**40))
@example(B=1, L=1, steps=1, p_mask=1.0, seed=0, offset=0)
def test_reveal_schedule_property(B, L, steps, p_mask, seed, offset):
    count_case("reveal_schedule")
    masked = torch.rand(B, L, generator=gen(seed % 2**31)) < p_mask
    cdf = R.reveal_step_cdf(steps)
    got = RF.reveal_schedule(masked, cdf, seed, offset, impl="fused")
    ref = R.reveal_schedule(masked, cdf, R.seed64(seed), offset)
    for a, r, name in zip(got, ref, ("step", "num_events", "perm", "row_index", "round_offsets")):
        assert torch.equal(a.cpu().long(), r.cpu().long()), name
    step, num_events = got[0], got[1]
    # invariants: unmasked positions never scheduled; events = distinct steps; rounds cover all rows
    assert torch.all((step >= 0) == masked) and int(got[4][-1]) == int(masked.sum())
    for i in range(B):
        assert int(num_events[i]) == len(set(step[i][masked[i]].tolist()))


# ----------------------------------------------------------------------------------------- row sampling
@st.composite
def sampling_cases(draw):
    N, D, V = draw(st.integers(1, 6)), draw(st.integers(1, 12)), draw(st.integers(1, 40))
    top_k = draw(st.sampled_from([None, 1, 3, 100]))
    top_p = draw(st.sampled_from([None, 0.05, 0.5, 0.9, 1.0]))
    return (N, D, V, draw(st.sampled_from([0.25, 1.0, 3.0])), top_k, top_p, draw(st.booleans()),
            draw(st.booleans()), draw(st.integers(0, 2**63 - 1)), draw(st.integers(0, 2**31)))


@PROPS
@given(case=sampling_cases())
@example(case=(1, 1, 1, 1.0, None, None, False, True, 0, 0))  # one class
def test_sample_rows_property(case):
    count_case("sample_rows")
    N, D, V, temperature, top_k, top_p, greedy, with_bias, seed, offset = case
    g = gen(seed % 2**31)
    h = torch.randn(N, D, dtype=torch.float64, generator=g)
    W = torch.randn(V + 1, D, dtype=torch.float64, generator=g) * 2
    b = torch.randn(V + 1, dtype=torch.float64, generator=g) if with_bias else None
    tok, lp = RF.sample_rows(h, W, b, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, seed=seed,
                             offset=offset, impl="fused")
    rtok, rlp, margin = R.sample_rows(h, W, b, V, temperature, top_k or 0, 1.0 if top_p is None else top_p, greedy,
                                      R.seed64(seed), offset, return_margin=True)
    # float64 on both sides: a different token only where two race scores tie to rounding
    sure = margin > 1e-9
    assert torch.equal(tok[sure], rtok[sure])
    torch.testing.assert_close(lp[sure], rlp[sure], rtol=1e-9, atol=1e-9)
    assert torch.all((tok >= 0) & (tok < V)) and torch.all(lp <= 1e-12)
    # the token survives the filters: its filtered logit is finite
    kept = R.filter_logits(h @ W[:V].T + (b[:V] if b is not None else 0), temperature, top_k,
                           None if top_p is None or top_p >= 1 else top_p)
    assert torch.isfinite(kept.gather(1, tok[:, None])).all()
    assert math.isfinite(float(lp.sum()))
