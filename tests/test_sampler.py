"""The device-side cache-aware sampler (issue 6).

* the ops (reveal_schedule, sample_rows, filter_logits) against their float64 oracles in
  radd_fast.reference, opcheck, bad input;
* the sampler's output distribution against the exact law of the reveal process and against the
  reference step-by-step sampler (unconditional, prefix, infill, filters);
* NFE accounting, no wasted work, no host synchronisation in the loop (CUDA), reproducibility,
  the confidence-ordered mode, and the sampling arguments.

Statistical tests: each one asserts a chi-square statistic below its (1 - FALSE_FAILURE) quantile,
so a correct sampler run with seeds drawn at random fails one of them with probability 1e-4; the
seeds here are fixed, which makes every run of the suite deterministic. test_distribution_tests_have_power
shows the same tests reject a sampler that is wrong in a small way.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from functools import lru_cache

import pytest
import torch
from scipy import stats

import radd_fast.functional as RF
from radd_fast import cli, sampling
from radd_fast import reference as R
from radd_fast.sampling import plan_reveals, run_cached, run_confidence, sample
from radd_fast.testing import MixerLM

FALSE_FAILURE = 1e-4


def chi2_limit(dof: int, alpha: float = FALSE_FAILURE) -> float:
    return float(stats.chi2.isf(alpha, dof))


def gof_chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic of counts against probabilities; cells expected below 5 are pooled."""
    n = counts.sum().item()
    expected = probs.double() * n
    small = expected < 5
    c, e = counts.double()[~small].tolist(), expected[~small].tolist()
    if small.any():
        c.append(counts.double()[small].sum().item())
        e.append(expected[small].sum().item())
    stat = sum((ci - ei) ** 2 / ei for ci, ei in zip(c, e) if ei > 0)
    return stat, len(c) - 1


def two_sample_chi2(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """Chi-square statistic of two count vectors being draws from one distribution (cells with
    fewer than 10 counts in total pooled)."""
    a, b = a.double(), b.double()
    small = (a + b) < 10
    if small.any():
        a = torch.cat((a[~small], a[small].sum()[None]))
        b = torch.cat((b[~small], b[small].sum()[None]))
    na, nb = a.sum(), b.sum()
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    stat = (((a * (nb / na).sqrt() - b * (na / nb).sqrt()) ** 2) / (a + b)).sum().item()
    return stat, int(keep.sum().item()) - 1


def mixer(V=3, L=5, seed=2, device="cpu", dtype=torch.float32, **kw) -> MixerLM:
    return MixerLM(V, 8, L, seed=seed, logit_scale=0.5, dtype=dtype, device=device, **kw).eval()


# ------------------------------------------------------------------------------------ Philox, RNG
def test_philox_reference_known_answers():
    kats = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
            ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
            ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
             (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, want in kats:
        assert R.philox4x32(torch.tensor([ctr]), key)[0].tolist() == list(want)


def test_seed64():
    assert R.seed64(5) == 5 and R.seed64(-1) == -1 and R.seed64(2**64 - 1) == -1 and R.seed64(2**63) == -(2**63)


# ----------------------------------------------------------------------------------- reveal steps
@pytest.mark.parametrize("n", [1, 2, 5, 64, 1000])
def test_reveal_step_cdf_is_the_grid(n):
    # P(step = k) = t_k - t_{k+1} for k < n - 1 and t_{n-1} for the last: 1 - t_{k+1} cumulated.
    cdf = R.reveal_step_cdf(n)
    t = R.sampling_grid(n)
    closed = 1 - t[1:]
    closed[-1] = 1.0
    torch.testing.assert_close(cdf, closed, rtol=0, atol=1e-12)
    p = torch.diff(cdf, prepend=torch.zeros(1, dtype=torch.float64))
    assert torch.all(p > 0) and cdf[-1] == 1.0
    if n > 1:
        torch.testing.assert_close(p[:-1], t[:-2] - t[1:-1], rtol=1e-9, atol=0)
        assert p[-1].item() == pytest.approx(t[-2].item(), rel=1e-9)


@pytest.mark.parametrize("n", [7, 64])
def test_reveal_steps_follow_the_grid(device, n):
    B, L = 3000, 11
    cdf = R.reveal_step_cdf(n).to(device)
    step = RF.reveal_schedule(torch.ones(B, L, dtype=torch.bool, device=device), cdf, seed=3, impl="fused")[0]
    counts = torch.bincount(step.flatten().long().cpu(), minlength=n)
    stat, dof = gof_chi2(counts, torch.diff(cdf.cpu(), prepend=torch.zeros(1, dtype=torch.float64)))
    assert stat < chi2_limit(dof), (stat, dof)


def _random_mask(B, L, frac, device, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, L, generator=g) < frac).to(device)


SCHEDULE_CASES = [  # (B, L, steps, fraction masked)
    (1, 1, 1, 1.0), (1, 1, 5, 1.0), (3, 17, 4, 0.6), (5, 33, 100, 0.8), (7, 64, 64, 1.0), (2, 9, 3, 0.0),
    (16, 129, 1024, 0.9),
]


@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=str)
def test_reveal_schedule_matches_reference(device, case):
    B, L, n, frac = case
    masked = _random_mask(B, L, frac, device, seed=B * L)
    cdf = R.reveal_step_cdf(n).to(device)
    got = RF.reveal_schedule(masked, cdf, seed=12345, offset=7, impl="fused")
    want = R.reveal_schedule(masked, cdf, 12345, 7)
    names = ("step", "num_events", "perm", "row_index", "round_offsets")
    for name, a, b in zip(names, got, want):
        assert a.dtype == b.dtype and a.device == masked.device, name
        assert torch.equal(a.cpu(), b.cpu()), name
    step, num_events, perm, row_index, offsets = (t.cpu() for t in got)
    assert offsets.shape == (min(n, L) + 1,) and offsets[-1] == masked.sum().item()
    for b in range(B):  # events = distinct reveal steps
        assert num_events[b] == torch.unique(step[b][step[b] >= 0]).numel()


def test_reveal_schedule_seed_offset_and_reference_impl(device):
    masked = _random_mask(4, 50, 0.7, device, seed=1)
    cdf = R.reveal_step_cdf(30).to(device)
    a = RF.reveal_schedule(masked, cdf, seed=1, offset=0)[0]
    assert torch.equal(a, RF.reveal_schedule(masked, cdf, seed=1, offset=0)[0])
    assert not torch.equal(a, RF.reveal_schedule(masked, cdf, seed=2, offset=0)[0])
    assert not torch.equal(a, RF.reveal_schedule(masked, cdf, seed=1, offset=1)[0])
    assert torch.equal(a, RF.reveal_schedule(masked, cdf, seed=1, offset=0, impl="reference")[0])
    # seeds are taken modulo 2^64, as the ops' int64 carries them
    assert torch.equal(RF.reveal_schedule(masked, cdf, seed=2**64 + 1)[0], RF.reveal_schedule(masked, cdf, seed=1)[0])


def test_reveal_schedule_opcheck(device):
    masked = _random_mask(3, 10, 0.5, device, seed=2)
    torch.library.opcheck(torch.ops.radd_fast.reveal_schedule.default, (masked, R.reveal_step_cdf(6).to(device), 3, 1))


# --------------------------------------------------------------------------------- row sampling
ROW_CASES = [  # (N, H, V, temperature, top_k, top_p, greedy, bias)
    (1, 4, 1, 1.0, 0, 1.0, False, True),
    (16, 9, 77, 1.0, 0, 1.0, False, True),  # 16 rows: the CPU few-rows head; 17: at::addmm
    (17, 9, 77, 1.0, 0, 1.0, False, False),
    (37, 16, 7, 1.0, 0, 1.0, False, True),
    (64, 8, 50, 0.7, 5, 1.0, False, False),
    (64, 8, 50, 1.3, 0, 0.7, False, True),
    (50, 12, 333, 0.8, 20, 0.8, False, True),
    (33, 5, 1003, 1.0, 1, 1.0, False, True),
    (20, 5, 61, 1.0, 61, 0.999, False, True),  # k = V: off
    (40, 8, 50, 0.5, 0, 1.0, True, True),
    (40, 8, 1000, 1.0, 7, 0.9, True, True),
]


def _rows(N, H, V, dtype, device, seed=0, extra_classes=1):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g, dtype=torch.float64)
    W = torch.randn(V + extra_classes, H, generator=g, dtype=torch.float64)
    b = torch.randn(V + extra_classes, generator=g, dtype=torch.float64)
    return h.to(device, dtype), W.to(device, dtype), b.to(device, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("case", ROW_CASES, ids=str)
def test_sample_rows_matches_reference(device, dtype, case):
    N, H, V, T, k, p, greedy, with_bias = case
    h, W, b = _rows(N, H, V, dtype, device, seed=N + V)
    b = b if with_bias else None
    tok, lp = RF.sample_rows(h, W, b, V, temperature=T, top_k=k, top_p=p, greedy=greedy, seed=99, offset=4,
                             impl="fused")
    want, want_lp, margin = R.sample_rows(h, W, b, V, T, k, p, greedy, 99, 4, return_margin=True)
    assert tok.dtype == torch.int64 and lp.dtype == dtype and tok.device == h.device
    # Same Philox noise: same tokens, except where the race's best two scores are closer than
    # float32 rounding can resolve (1e-4 in score units); float64 agrees everywhere.
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert torch.all((tok.cpu() == want.cpu()) | (margin.cpu() < tol))
    assert (tok.cpu() == want.cpu()).float().mean() > 0.95
    # log-probability of each token under the filtered distribution (of the tokens the reference drew)
    same = tok.cpu() == want.cpu()
    atol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(lp.cpu()[same].double(), want_lp.cpu()[same].double(), rtol=0, atol=atol)
    assert torch.all((tok >= 0) & (tok < V))


def test_sample_rows_fewer_classes_than_weight_rows(device):
    h, W, b = _rows(30, 6, 9, torch.float64, device, extra_classes=4)  # 13 rows, 9 classes
    tok, _ = RF.sample_rows(h, W, b, 9, seed=1, impl="fused")
    assert torch.equal(tok.cpu(), R.sample_rows(h, W, b, 9, seed=1)[0].cpu())
    assert tok.max() < 9


def test_sample_rows_reproducible_and_seeded(device):
    h, W, b = _rows(200, 8, 40, torch.float32, device)
    a = RF.sample_rows(h, W, b, 40, seed=5, offset=2)[0]
    assert torch.equal(a, RF.sample_rows(h, W, b, 40, seed=5, offset=2)[0])
    assert not torch.equal(a, RF.sample_rows(h, W, b, 40, seed=6, offset=2)[0])
    assert not torch.equal(a, RF.sample_rows(h, W, b, 40, seed=5, offset=3)[0])
    # a row's noise depends on (seed, offset, row index) only: sampling a prefix of the rows gives
    # the same tokens for them
    assert torch.equal(a[:50], RF.sample_rows(h[:50].contiguous(), W, b, 40, seed=5, offset=2)[0])


@pytest.mark.parametrize("filters", [dict(), dict(top_k=3), dict(top_p=0.6), dict(temperature=0.6, top_k=4, top_p=0.9)],
                         ids=str)
def test_race_draws_the_filtered_softmax(device, filters):
    # One row repeated: the tokens must follow softmax(filter_logits(logits)) (chi-square).
    V, N = 6, 60000
    h, W, b = _rows(1, 5, V, torch.float32, device, seed=11)
    tok, _ = RF.sample_rows(h.expand(N, -1).contiguous(), W, b, V, seed=21, impl="fused", **filters)
    logits = (h.double() @ W[:V].double().T + b[:V].double()).cpu()
    probs = torch.softmax(R.filter_logits(logits, filters.get("temperature", 1.0), filters.get("top_k"),
                                          filters.get("top_p")), -1)[0]
    counts = torch.bincount(tok.cpu(), minlength=V)
    assert torch.all(counts[probs == 0] == 0)  # filtered tokens never drawn
    stat, dof = gof_chi2(counts[probs > 0], probs[probs > 0])
    assert stat < chi2_limit(dof), (stat, dof, counts, probs)


def test_race_tail_agrees_with_64_bit_reference(device):
    # Logits (0, -12, -12, -12): a token of probability 6e-6 wins only through an exponential
    # variable below ~6e-6, i.e. on the extra-bits path of the noise. Over 2^20 rows that happens
    # about 19 times (P(none) = 6e-9): the float32 kernel must pick the same rows as the float64
    # oracle, which uses all 64 bits of every uniform.
    N = 2**20
    h = torch.ones(N, 1, device=device)
    W = torch.zeros(5, 1, device=device)
    b = torch.tensor([0.0, -12.0, -12.0, -12.0, 0.0], device=device)
    tok, _ = RF.sample_rows(h, W, b, 4, seed=8, offset=1, impl="fused")
    want, _, margin = R.sample_rows(h, W, b, 4, seed=8, offset=1, return_margin=True)
    tail = want.cpu() != 0
    assert tail.sum() > 0
    assert torch.all((tok.cpu() == want.cpu()) | (margin.cpu() < 1e-4))
    assert torch.equal(tok.cpu()[tail], want.cpu()[tail])


FILTER_CASES = [(1, 1, 1.0, 0, 1.0), (9, 7, 1.0, 3, 1.0), (9, 257, 0.5, 0, 0.9), (13, 1000, 2.0, 17, 0.5),
                (4, 31, 1.0, 30, 0.99), (5, 100, 1.0, 0, 0.05)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("case", FILTER_CASES, ids=str)
def test_filter_logits_matches_reference_filters(device, dtype, case):
    N, V, T, k, p = case
    logits = torch.randn(N, V, dtype=torch.float64, generator=torch.Generator().manual_seed(V)).mul(3).to(dtype)
    got = RF.filter_logits(logits.to(device), T, k, p, impl="fused").cpu()
    want = R.filter_logits(logits, T, k or None, p)  # float64, in the reference's order of filters
    assert got.dtype == dtype
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    kept = ~torch.isinf(want)
    if dtype == torch.float64:
        assert torch.equal(got[kept], want[kept])
    else:
        torch.testing.assert_close(got[kept].double(), want[kept], rtol=1e-6, atol=0)


def test_filter_ties():
    # top-k keeps every logit tied with the k-th, as reference.top_k_filter; top-p keeps every
    # logit tied with the one at the cut, where the reference keeps them in sort order (the
    # documented difference).
    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    got = RF.filter_logits(logits, top_k=2, impl="fused")
    assert torch.equal(torch.isinf(got), torch.isinf(R.top_k_filter(logits, 2)))
    assert torch.isinf(got).sum() == 1
    # probabilities (.48, .18, .18, .18, .07): p = 0.6 is reached inside the tie
    got = RF.filter_logits(logits, top_p=0.6, impl="fused")
    assert torch.isinf(got)[0].tolist() == [False, False, False, False, True]
    assert torch.isinf(R.top_p_filter(logits, 0.6)).sum() == 3  # the reference cuts inside the tie


def test_sample_rows_and_filter_opcheck(device):
    h, W, b = _rows(5, 4, 9, torch.float32, device)
    torch.library.opcheck(torch.ops.radd_fast.sample_rows.default, (h, W, b, 9, 0.9, 3, 0.8, False, 1, 2))
    torch.library.opcheck(torch.ops.radd_fast.sample_rows.default, (h.double(), W.double(), None, 9, 1.0, 0, 1.0, True, 1, 2))
    torch.library.opcheck(torch.ops.radd_fast.filter_logits.default, (torch.randn(3, 11, device=device), 1.5, 4, 0.7))


def test_empty_inputs(device):
    tok, lp = RF.sample_rows(torch.empty(0, 4, device=device), torch.randn(5, 4, device=device), impl="fused")
    assert tok.shape == (0,) and lp.shape == (0,)
    out = RF.reveal_schedule(torch.zeros(0, 5, dtype=torch.bool, device=device),
                             R.reveal_step_cdf(3).to(device), impl="fused")
    assert out[0].shape == (0, 5) and out[3].shape == (0,) and out[4].tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("kw", [{}, dict(top_k=3), dict(top_p=0.5), dict(greedy=True)], ids=str)
def test_nan_rows_give_token_0_and_nan_log_prob(device, kw):
    # A NaN hidden row has no argmax: the kernels must not read past the row or emit the mask id.
    h, W, b = _rows(5, 8, 11, torch.float64, device)
    h[1] = float("nan")
    tok, lp = RF.sample_rows(h, W, b, seed=3, impl="fused", **kw)
    ref_tok, ref_lp = RF.sample_rows(h, W, b, seed=3, impl="reference", **kw)
    assert tok[1].item() == 0 and torch.isnan(lp[1])
    assert torch.equal(tok, ref_tok)
    torch.testing.assert_close(lp, ref_lp, equal_nan=True)


def test_sample_rows_ignores_autocast(device):
    # Inside torch.autocast the op's internal head matmul must stay fp32 (it once came back bf16 and
    # the kernel refused it): same tokens and log-probs as outside autocast. 300 rows take the
    # at::addmm path on both devices.
    h, W, b = _rows(300, 16, 1001, torch.float32, device)
    want = RF.sample_rows(h, W, b, seed=5, top_p=0.9, impl="fused")
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = RF.sample_rows(h, W, b, seed=5, top_p=0.9, impl="fused")
        model = mixer(V=9, L=16, device=device)
        x, nfe = sample(model, 3, 16, 8, seed=2, method="cached")  # the whole loop under autocast
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    assert x.shape == (3, 16) and int(x.max()) < 9 and torch.equal(nfe, sample(model, 3, 16, 8, seed=2)[1])


# --------------------------------------------------------------------------------------- bad input
def _bad_op_cases():
    m, cdf = torch.ones(2, 3, dtype=torch.bool), R.reveal_step_cdf(4)
    yield "mask_1d", lambda impl: RF.reveal_schedule(m.view(6), cdf, impl=impl), ValueError, "'masked' must have shape"
    yield "mask_int", lambda impl: RF.reveal_schedule(m.int(), cdf, impl=impl), TypeError, "'masked' must have dtype"
    yield "cdf_f32", lambda impl: RF.reveal_schedule(m, cdf.float(), impl=impl), TypeError, "'step_cdf' must have dtype"
    yield "cdf_empty", lambda impl: RF.reveal_schedule(m, cdf[:0], impl=impl), ValueError, "between 1 and"
    yield "offset", lambda impl: RF.reveal_schedule(m, cdf, offset=-1, impl=impl), ValueError, "'offset' must be >= 0"
    h, W, b = _rows(3, 4, 5, torch.float32, "cpu")
    rows = lambda impl, **kw: RF.sample_rows(**{**dict(hidden=h, weight=W, bias=b, impl=impl), **kw})  # noqa: E731
    yield "hidden_1d", lambda impl: rows(impl, hidden=h[0]), ValueError, "'hidden' must have shape"
    yield "hidden_int", lambda impl: rows(impl, hidden=h.long()), TypeError, "'hidden' must have dtype"
    yield "weight_dtype", lambda impl: rows(impl, weight=W.double()), TypeError, "'weight' must have the dtype"
    yield "weight_width", lambda impl: rows(impl, weight=W[:, :3].contiguous()), ValueError, "'weight' must have shape"
    yield "bias_len", lambda impl: rows(impl, bias=b[:4]), ValueError, "'bias' must have shape"
    yield "classes", lambda impl: rows(impl, num_classes=7), ValueError, "'num_classes' must be in"
    yield "temp0", lambda impl: rows(impl, temperature=0.0), ValueError, "greedy=True"
    yield "temp_nan", lambda impl: rows(impl, temperature=float("nan")), ValueError, "'temperature'"
    yield "top_k", lambda impl: rows(impl, top_k=-2), ValueError, "'top_k' must be >= 0"
    yield "top_p0", lambda impl: rows(impl, top_p=0.0), ValueError, "'top_p' must be in"
    yield "top_p2", lambda impl: rows(impl, top_p=1.5), ValueError, "'top_p' must be in"
    yield "noncontig", lambda impl: rows(impl, hidden=h.t().contiguous().t()), ValueError, "'hidden' must be contiguous"
    yield "filter_3d", lambda impl: RF.filter_logits(torch.randn(2, 3, 4), impl=impl), ValueError, "'logits' must have shape"
    yield "filter_p", lambda impl: RF.filter_logits(torch.randn(2, 3), top_p=-1, impl=impl), ValueError, "'top_p'"


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("case", list(_bad_op_cases()), ids=lambda c: c[0])
def test_ops_bad_input_names_the_argument(case, impl):
    _, fn, exc, msg = case
    with pytest.raises(exc, match=msg):
        fn(impl)


# ---------------------------------------------------------------------- distribution of the sampler
def step_probs(steps: int) -> list[float]:
    return torch.diff(R.reveal_step_cdf(steps), prepend=torch.zeros(1, dtype=torch.float64)).tolist()


def exact_law(model, x0: list[int], steps: int, temperature=1.0, top_k=None, top_p=None) -> dict[tuple, float]:
    """The exact law of the completed sequence under RADD's reveal process, by enumeration.

    Positions' reveal steps are independent with probabilities p_k (step_probs); what matters is the
    ordered partition of the masked positions into groups revealed together. A partition with group
    sizes s_1..s_m has probability sum over k_1 < ... < k_m of prod_j p_{k_j}^{s_j}; given it, each
    group's tokens are drawn independently from the model's (filtered) conditionals given the
    tokens revealed before.
    """
    M = model.mask_id
    p = step_probs(steps)
    free = [i for i, t in enumerate(x0) if t == M]
    q_cache: dict[tuple, torch.Tensor] = {}

    def q(state: tuple) -> torch.Tensor:
        if state not in q_cache:
            x = torch.tensor([state], device=model.output_weight.device)
            with torch.no_grad():
                logits = model.logits(model.hidden(x))[0].double().cpu()
            q_cache[state] = torch.softmax(R.filter_logits(logits, temperature, top_k, top_p), -1)
        return q_cache[state]

    @lru_cache(None)
    def placement(sizes: tuple, first_step: int) -> float:
        if not sizes:
            return 1.0
        return sum(p[k] ** sizes[0] * placement(sizes[1:], k + 1) for k in range(first_step, len(p)))

    def ordered_partitions(items):
        if not items:
            yield []
            return
        for r in range(1, len(items) + 1):
            for group in itertools.combinations(items, r):
                rest = [i for i in items if i not in group]
                for tail in ordered_partitions(rest):
                    yield [group] + tail

    law: dict[tuple, float] = defaultdict(float)
    for part in ordered_partitions(free):
        states = {tuple(x0): placement(tuple(len(g) for g in part), 0)}
        for group in part:
            nxt: dict[tuple, float] = defaultdict(float)
            for st, pr in states.items():
                qs = q(st)
                for vals in itertools.product(range(model.vocab_size), repeat=len(group)):
                    s2 = list(st)
                    w = pr
                    for i, v in zip(group, vals):
                        s2[i] = v
                        w *= qs[i, v].item()
                    nxt[tuple(s2)] += w
            states = nxt
        for st, pr in states.items():
            law[st] += pr
    return law


def outcome_counts(x: torch.Tensor, law: dict[tuple, float]) -> tuple[torch.Tensor, torch.Tensor]:
    keys = sorted(law)
    index = {k: i for i, k in enumerate(keys)}
    counts = torch.zeros(len(keys), dtype=torch.float64)
    for row in x.cpu().tolist():
        counts[index[tuple(row)]] += 1  # a KeyError would mean an impossible outcome (a given token changed)
    return counts, torch.tensor([law[k] for k in keys], dtype=torch.float64)


DIST_CASES = {  # name: (length, given {position: token}, steps, sampling kwargs)
    "unconditional": (3, {}, 4, {}),
    "prefix": (4, {0: 1}, 4, {}),
    "infill": (5, {0: 2, 3: 0}, 3, {}),
    "suffix_one_step": (4, {3: 1}, 1, {}),
    "many_steps": (3, {}, 50, {}),
    "temperature_top_k": (3, {}, 4, dict(temperature=0.7, top_k=2)),
    "top_p": (4, {1: 0}, 4, dict(top_p=0.75)),
}


def _x_init(model, n, length, given, device):
    x = torch.full((n, length), model.mask_id, dtype=torch.long, device=device)
    for i, t in given.items():
        x[:, i] = t
    return x


@pytest.mark.parametrize("name", list(DIST_CASES))
def test_cached_sampler_matches_exact_law(device, name):
    length, given, steps, kw = DIST_CASES[name]
    model = mixer(device=device)
    x0 = _x_init(model, 1, length, given, device)[0].tolist()
    law = exact_law(model, x0, steps, **kw)
    assert sum(law.values()) == pytest.approx(1.0, abs=1e-12)
    n_per_seed, seeds = 4000, range(6)  # many seeds, 24,000 samples
    xs = [sample(model, n_per_seed, length, steps, x_init=_x_init(model, n_per_seed, length, given, device),
                 seed=s, **kw)[0] for s in seeds]
    counts, probs = outcome_counts(torch.cat(xs), law)
    stat, dof = gof_chi2(counts, probs)
    assert dof >= 5 and stat < chi2_limit(dof), (stat, dof)


@pytest.mark.parametrize("name", ["unconditional", "infill", "temperature_top_k"])
def test_reference_sampler_matches_exact_law(name):
    # The oracle of the oracle: the same exact law describes reference.sample_cached.
    length, given, steps, kw = DIST_CASES[name]
    model = mixer()
    x0 = _x_init(model, 1, length, given, "cpu")[0].tolist()
    law = exact_law(model, x0, steps, **kw)
    x, _ = sample(model, 24000, length, steps, x_init=_x_init(model, 24000, length, given, "cpu"), seed=1,
                  method="reference", **kw)
    stat, dof = gof_chi2(*outcome_counts(x, law))
    assert stat < chi2_limit(dof), (stat, dof)


@pytest.mark.parametrize("given", [{}, {0: 3, 1: 1}, {2: 0, 5: 3}], ids=["unconditional", "prefix", "infill"])
def test_cached_and_reference_agree_on_marginals_and_pairs(device, given):
    # Longer sequences (L = 6, V = 4, n = 8: up to 6 events) than exact enumeration allows: the
    # two samplers' marginals (6 positions) and pairs (15) must agree (two-sample chi-square,
    # Bonferroni over the 21 tests).
    V, L, steps, N = 4, 6, 8, 30000
    model = mixer(V=V, L=L, seed=4, device=device)
    x_init = _x_init(model, N, L, given, device)
    a, _ = sample(model, N, L, steps, x_init=x_init, seed=3)
    b, _ = sample(model, N, L, steps, x_init=x_init, seed=3, method="reference")
    a, b = a.cpu(), b.cpu()
    free = [i for i in range(L) if i not in given]
    tests = [(i,) for i in free] + list(itertools.combinations(free, 2))
    alpha = FALSE_FAILURE / len(tests)
    for cols in tests:
        code = lambda x: sum(x[:, c] * V**j for j, c in enumerate(cols))  # noqa: E731
        ca = torch.bincount(code(a), minlength=V ** len(cols))
        cb = torch.bincount(code(b), minlength=V ** len(cols))
        stat, dof = two_sample_chi2(ca, cb)
        assert stat < chi2_limit(dof, alpha), (cols, stat, dof)
    for i, t in given.items():
        assert torch.all(a[:, i] == t) and torch.all(b[:, i] == t)


def test_distribution_tests_have_power():
    # The same test must reject a sampler that is only slightly wrong: RADD with 12 steps tested
    # against the law of 4 steps, 2.5% apart in total variation. At 24,000 samples its power
    # (noncentral chi-square) exceeds 0.999 at the 1e-4 level.
    model = mixer()
    M = model.mask_id
    law, wrong = exact_law(model, [M] * 3, 4), exact_law(model, [M] * 3, 12)
    tv = 0.5 * sum(abs(law[k] - wrong[k]) for k in law)
    assert 0.01 < tv < 0.05
    N = 24000
    noncentrality = N * sum((law[k] - wrong[k]) ** 2 / law[k] for k in law)
    dof = len(law) - 1
    assert stats.ncx2.sf(chi2_limit(dof), dof, noncentrality) > 0.999
    x, _ = sample(model, N, 3, 12, seed=0)
    stat, dof = gof_chi2(*outcome_counts(x, law))
    assert stat > chi2_limit(dof), (stat, dof)


# ------------------------------------------------------------------------------- NFE and no waste
def test_nfe_is_events_and_network_rows(device):
    model = mixer(V=5, L=24, device=device)
    model.record = True
    x_init = _x_init(model, 9, 24, {0: 1, 7: 2}, device)
    x_init[4] = 3  # a sequence with nothing to generate
    x, nfe = sample(model, 9, 24, 40, x_init=x_init, seed=5)
    plan = plan_reveals(x_init, model.mask_id, 40, seed=5)
    step = plan.step.cpu()
    events = torch.tensor([torch.unique(s[s >= 0]).numel() for s in step])
    assert torch.equal(nfe.cpu(), events) and nfe[4] == 0
    assert model.rows == nfe.sum().item() and model.calls == nfe.max().item()
    # every evaluated sequence has something to reveal, and it changed since its previous evaluation
    for r, inp in enumerate(model.inputs):
        assert torch.all((inp == model.mask_id).any(1)), f"round {r} evaluates a finished sequence"
        if r + 1 < len(model.inputs):
            nxt = model.inputs[r + 1]
            assert torch.all((inp[: nxt.shape[0]] != nxt).any(1)), f"round {r + 1} re-evaluates an unchanged sequence"
    others = torch.arange(9, device=device) != 4
    assert torch.all(x[others, 0] == 1) and torch.all(x[others, 7] == 2) and torch.all(x[4] == 3)


def test_logits_only_for_revealed_rows(monkeypatch, device):
    model = mixer(V=5, L=20, device=device)
    seen = []

    def counting(hidden, *a, **kw):
        seen.append(hidden.shape[0])
        return RF.sample_rows(hidden, *a, **kw)

    monkeypatch.setattr(sampling, "_sample_rows", counting)
    logits_calls = []
    monkeypatch.setattr(model, "logits", lambda h: logits_calls.append(h.shape) or MixerLM.logits(model, h))
    x_init = _x_init(model, 6, 20, {3: 0, 11: 4}, device)
    x_init[2, :5] = 1
    plan = plan_reveals(x_init, model.mask_id, 16, seed=2)
    run_cached(model, plan, seed=2)
    masked = (x_init == model.mask_id).sum().item()
    assert sum(seen) == masked  # each masked position's logits are computed exactly once
    assert seen == [plan.round_offsets[r + 1] - plan.round_offsets[r] for r in range(plan.rounds)]
    assert not logits_calls  # never the (B, L, V) logits


def test_mean_nfe_matches_formula_small():
    # Mean events of the schedule kernel against sum_k 1 - (1 - p_k)^L (exact) and n (1 - (1 - 1/n)^L).
    for L, n in [(6, 5), (16, 8), (3, 40), (32, 32)]:
        B = 20000
        plan = plan_reveals(torch.full((B, L), 9), 9, n, seed=L * n)
        nfe = plan.num_events.double()
        se = nfe.std().item() / math.sqrt(B)
        exact = sum(1 - (1 - pk) ** L for pk in step_probs(n))
        assert abs(nfe.mean().item() - exact) < 5 * se, (L, n)
        assert abs(exact - R.expected_nfe(L, n)) < 1e-3
        assert abs(nfe.mean().item() - R.expected_nfe(L, n)) < 5 * se + 1e-3


def test_enfe_table_at_length_1024(device):
    # radd-math.md: about 251, 443, 648, 806 and 906 evaluations at n = 256 ... 4,096, L = 1,024.
    L, B = 1024, 256
    masked = torch.ones(B, L, dtype=torch.bool, device=device)
    for n, doc in zip((256, 512, 1024, 2048, 4096), (251, 443, 648, 806, 906)):
        ne = RF.reveal_schedule(masked, R.reveal_step_cdf(n).to(device), seed=n)[1].double().cpu()
        se = ne.std().item() / math.sqrt(B)
        assert abs(ne.mean().item() - R.expected_nfe(L, n)) < 5 * se, (n, ne.mean().item())
        assert abs(ne.mean().item() - doc) < 5 * se + 1.0, (n, ne.mean().item(), doc)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_no_host_sync_inside_the_loop_cuda():
    model = mixer(V=50, L=64, device="cuda")
    x_init = _x_init(model, 8, 64, {0: 1, 10: 2}, "cuda")
    for run in (run_cached, run_confidence):
        plan = plan_reveals(x_init, model.mask_id, 128, seed=1)  # the one synchronisation
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            x = run(model, plan, seed=1, top_k=10, top_p=0.9)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.all(x[:, 0] == 1) and torch.all(x < 50)


@pytest.mark.parametrize("heads", [2, 4])
def test_radd_rows_under_autocast_without_host_sync(device, heads):
    # What the sampler benchmarks run on CUDA: RADD's rows path (its last block on the revealed rows)
    # under bf16 autocast. heads 2: head_dim 64, on CUDA torch's SDPA; heads 4: head_dim 32, our
    # kernel behind its autocast wrapper. On CUDA the loop must not synchronise with the host.
    from radd_fast.model import RADD, RADDConfig

    torch.manual_seed(0)
    model = RADD(RADDConfig(vocab_size=50, hidden_size=128, n_heads=heads, n_blocks=2, max_length=64, dropout=0.0,
                            tokenizer="bytes")).to(device).eval()
    with torch.no_grad():
        model.output_layer.linear.weight.normal_(0.0, 0.2)
    rows_asked = []
    original = model.hidden
    model.hidden = lambda x, rows=None, **kw: rows_asked.append(rows is not None) or original(x, rows=rows, **kw)
    x_init = _x_init(model, 8, 64, {0: 1, 10: 2}, device)
    cuda = device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16):
        for run in (run_cached, run_confidence):
            run(model, plan_reveals(x_init, model.mask_id, 16, seed=0), seed=0)  # warm-up
            plan = plan_reveals(x_init, model.mask_id, 128, seed=1)
            rows_asked.clear()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            try:
                x = run(model, plan, seed=1, top_k=10, top_p=0.9)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
            assert rows_asked and all(rows_asked), run.__name__
            assert torch.all(x[:, 0] == 1) and torch.all(x[:, 10] == 2) and torch.all((x >= 0) & (x < 50))


# --------------------------------------------------------------------------------- reproducibility
def test_fixed_seed_same_output_twice(device):
    model = mixer(V=11, L=16, device=device)
    for method in ("cached", "confidence"):
        a, na = sample(model, 5, 16, 12, prompt=[1, 2, 3], seed=4, method=method, top_p=0.9)
        b, nb = sample(model, 5, 16, 12, prompt=[1, 2, 3], seed=4, method=method, top_p=0.9)
        c, _ = sample(model, 5, 16, 12, prompt=[1, 2, 3], seed=5, method=method, top_p=0.9)
        assert torch.equal(a, b) and torch.equal(na, nb) and not torch.equal(a, c)
        assert torch.all(a[:, :3] == torch.tensor([1, 2, 3], device=device)) and torch.all(a < 11)


def test_fused_and_reference_ops_give_the_same_samples(device):
    # The whole loop on the kernels and on the pure-PyTorch oracles: same Philox streams, same
    # samples (float64 model, so no near-tie can flip).
    model = mixer(V=13, L=20, device=device, dtype=torch.float64)
    a, na = sample(model, 6, 20, 30, prompt=[4], seed=9, top_k=5, impl="fused")
    b, nb = sample(model, 6, 20, 30, prompt=[4], seed=9, top_k=5, impl="reference")
    assert torch.equal(a, b) and torch.equal(na, nb)


class _FullHidden:
    """A model's sampler protocol without `rows`: the sampler then selects rows of full hidden states."""

    def __init__(self, model):
        self.model, self.asked = model, []

    def hidden(self, x):
        self.asked.append(x.shape)
        return self.model.hidden(x)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_low_precision_hidden_states_are_sampled_in_fp32(device):
    # A model whose hidden states come back in bf16 (as a final matmul does under autocast): the
    # sampler gives the head fp32 rows, and gets the samples of the same states upcast.
    model = mixer(V=13, L=20, device=device)

    class Bf16Hidden(_FullHidden):
        def hidden(self, x):
            return self.model.hidden(x).bfloat16()

    class Upcast(_FullHidden):
        def hidden(self, x):
            return self.model.hidden(x).bfloat16().float()

    for method in ("cached", "confidence"):
        a, na = sample(Bf16Hidden(model), 4, 20, 12, prompt=[3], seed=2, method=method, top_k=5)
        b, nb = sample(Upcast(model), 4, 20, 12, prompt=[3], seed=2, method=method, top_k=5)
        assert torch.equal(a, b) and torch.equal(na, nb), method


def test_radd_samples_through_selected_rows(device):
    # RADD's hidden(tokens, rows=...) (its last block on the revealed rows only) gives the samples of
    # full hidden states (float64 model: no near-tie can flip), in both methods.
    from radd_fast.model import RADD, RADDConfig

    torch.manual_seed(0)
    model = RADD(RADDConfig(vocab_size=13, hidden_size=32, n_heads=2, n_blocks=2, max_length=20, dropout=0.0,
                            tokenizer="bytes")).to(device).double().eval()
    with torch.no_grad():
        model.output_layer.linear.weight.normal_()
    calls = []
    original = model.hidden
    model.hidden = lambda x, rows=None, **kw: calls.append(rows is not None) or original(x, rows=rows, **kw)
    full = _FullHidden(model)
    for method in ("cached", "confidence"):
        calls.clear()
        a, na = sample(model, 4, 20, 12, prompt=[3], seed=2, method=method, top_p=0.8)
        assert len(calls) == na.max() and all(calls)  # every round asked for its rows only
        b, nb = sample(full, 4, 20, 12, prompt=[3], seed=2, method=method, top_p=0.8)
        assert torch.equal(a, b) and torch.equal(na, nb), method


def test_greedy(device):
    model = mixer(V=7, L=12, device=device)
    a, _ = sample(model, 4, 12, 6, greedy=True, seed=1)
    b, _ = sample(model, 4, 12, 6, greedy=True, seed=1, temperature=3.0)  # temperature is irrelevant
    assert torch.equal(a, b)
    # every token is the argmax given the context at its round (checked by replaying the rounds)
    plan = plan_reveals(torch.full((4, 12), 7, device=device), 7, 6, seed=1)
    x = plan.x.clone()
    for r, A in enumerate(plan.active):
        rows = plan.round_rows(r)
        with torch.no_grad():
            lg = model.logits(model.hidden(x[:A])).reshape(-1, 7)[rows]
        x.view(-1)[rows] = lg.argmax(-1)
    out = torch.empty_like(x).index_copy_(0, plan.perm, x)
    assert torch.equal(out, a)


# ------------------------------------------------------------------------------- confidence mode
class SharpnessModel:
    """Protocol model whose logits at position l are s_l * e (e fixed, s_l given): the probability
    of the argmax grows with s_l, so confidence decoding must reveal high-s positions first."""

    def __init__(self, V, sharpness, device):
        self.vocab_size, self.mask_id = V, V
        self.s = torch.as_tensor(sharpness, dtype=torch.float32, device=device)
        self.output_weight = torch.eye(V + 1, V, device=device)
        self.output_bias = torch.zeros(V + 1, device=device)
        self.e = torch.linspace(1.0, 0.0, V, device=device)
        self.inputs = []

    def hidden(self, tokens):
        self.inputs.append(tokens.clone())
        B, L = tokens.shape
        return (self.s[:L, None] * self.e[None, :]).expand(B, L, -1).contiguous()

    def logits(self, h):
        return h


def test_confidence_mode_reveals_most_confident_first(device):
    L, V = 10, 5
    s = torch.tensor([3.0, 9.0, 1.0, 7.0, 5.0, 2.0, 8.0, 4.0, 6.0, 0.5])
    model = SharpnessModel(V, s, device)
    x, nfe = sample(model, 3, L, 6, seed=2, method="confidence", greedy=True)
    plan = plan_reveals(torch.full((3, L), V, device=device), V, 6, seed=2)
    assert torch.equal(nfe, plan.num_events) and torch.all(x == 0)  # argmax of s_l * e is token 0
    # round in which each position of each sorted sequence was revealed
    final = x.index_select(0, plan.perm)
    revealed_at = torch.full((3, L), -1)
    for r, inp in enumerate(model.inputs):
        newly = (inp == V) & (_after_round(model.inputs, r, final) != V)
        revealed_at[: inp.shape[0]][newly.cpu()] = r
    assert torch.all(revealed_at >= 0)
    for i in range(3):
        order = revealed_at[i][torch.argsort(s, descending=True)]
        assert torch.all(order[1:] >= order[:-1]), order  # sharper positions never later
        planned = torch.tensor([(plan.round_rows(r).cpu() // L == i).sum().item() for r in range(plan.rounds)])
        assert torch.equal(torch.bincount(revealed_at[i], minlength=plan.rounds), planned)  # same counts per round


def _after_round(inputs, r, final_sorted):
    """Tokens of round r's sequences after round r: the next round's input, or for sequences that
    finished in round r, their final tokens."""
    A = inputs[r].shape[0]
    out = final_sorted[:A].clone()
    if r + 1 < len(inputs):
        out[: inputs[r + 1].shape[0]] = inputs[r + 1]
    return out


def test_confidence_mode_keeps_given_tokens_and_counts(device):
    model = mixer(V=6, L=14, device=device)
    model.record = True
    x_init = _x_init(model, 5, 14, {0: 2, 13: 4, 6: 1}, device)
    x, nfe = sample(model, 5, 14, 9, x_init=x_init, seed=8, method="confidence", top_k=3)
    plan = plan_reveals(x_init, model.mask_id, 9, seed=8)
    assert torch.equal(nfe, plan.num_events) and model.rows == nfe.sum().item()
    assert torch.all(x[:, 0] == 2) and torch.all(x[:, 13] == 4) and torch.all(x[:, 6] == 1) and torch.all(x < 6)
    final = x.index_select(0, plan.perm)
    for r, inp in enumerate(model.inputs):  # per sequence, as many reveals per round as planned
        got = ((inp == model.mask_id) & (_after_round(model.inputs, r, final) != model.mask_id)).sum(1).cpu()
        want = torch.bincount(plan.round_rows(r).cpu() // 14, minlength=inp.shape[0])
        assert torch.equal(got, want)


# --------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kw,exc,msg", [
    (dict(steps=0), ValueError, "'steps' must be >= 1"),
    (dict(num_samples=0), ValueError, "empty batch"),
    (dict(length=0), ValueError, "'length' must be >= 1"),
    (dict(prompt=list(range(12))), ValueError, "shorter than 'length'"),
    (dict(top_p=0.0), ValueError, "'top_p' must be in"),
    (dict(top_p=1.5), ValueError, "'top_p' must be in"),
    (dict(top_k=-1), ValueError, "'top_k' must be >= 0"),
    (dict(temperature=0.0), ValueError, "greedy=True"),
    (dict(temperature=-1.0), ValueError, "'temperature' must be > 0"),
    (dict(greedy=1), TypeError, "'greedy' must be True or False"),
    (dict(method="fast"), ValueError, "'method' must be one of"),
    (dict(prompt=[99]), ValueError, "outside"),
    (dict(x_init=torch.full((2, 11), 5)), ValueError, "'x_init' must have shape"),
    (dict(x_init=torch.full((2, 12), 5), prompt=[1]), ValueError, "either 'prompt' or 'x_init'"),
])
@pytest.mark.parametrize("method", ["cached", "confidence", "reference"])
def test_sample_bad_input(kw, exc, msg, method):
    args = dict(num_samples=2, length=12, steps=4, method=method)
    args.update(kw)
    with pytest.raises(exc, match=msg):
        sample(mixer(V=5, L=12), args.pop("num_samples"), args.pop("length"), args.pop("steps"), **args)


def test_nothing_to_generate(device):
    model = mixer(V=5, L=8, device=device)
    x_init = torch.randint(0, 5, (3, 8), device=device)
    x, nfe = sample(model, 3, 8, 10, x_init=x_init)
    assert torch.equal(x, x_init) and torch.all(nfe == 0) and model.calls == 0


def test_cli_method_flag():
    p = cli.build_parser()
    assert p.parse_args(["sample", "--ckpt", "m"]).method == "cached"
    args = p.parse_args(["sample", "--ckpt", "m", "--method", "confidence", "--greedy"])
    assert args.method == "confidence" and args.greedy
    with pytest.raises(SystemExit):
        p.parse_args(["sample", "--ckpt", "m", "--method", "fast"])


def test_enfe_plot_script(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the 'plot' extra (matplotlib) is not installed")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "enfe_plot.py"
    spec = importlib.util.spec_from_file_location("enfe_plot", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for n, mean, se, formula in mod.measure([16, 64, 256], 64, 400, "cpu"):
        assert abs(mean - formula) < 5 * se + 1e-9, (n, mean, formula)
    out = tmp_path / "enfe.png"
    assert mod.main(["--out", str(out), "--sequences", "8", "--length", "64"]) == 0
    assert out.stat().st_size > 1000 and "formula" in capsys.readouterr().out
