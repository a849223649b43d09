"""The oracles' own tests: known values computed by hand or by an independent route."""

import math

import pytest
import torch
import torch.nn.functional as F

from radd_fast import reference as R


# ------------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("t", [1e-3, 0.1, 0.5, 0.9, 1.0])
def test_log_linear_formulas(t):
    eps = 1e-3
    sch = R.LogLinearSchedule(eps)
    assert float(sch.mask_prob(t)) == pytest.approx((1 - eps) * t, rel=1e-14)
    assert float(sch.alpha(t)) == pytest.approx(1 - (1 - eps) * t, rel=1e-12)
    assert float(sch.sigma_bar(t)) == pytest.approx(-math.log(1 - (1 - eps) * t), rel=1e-12)
    # sigma_bar' against a central difference of sigma_bar
    h = 1e-6
    fd = (float(sch.sigma_bar(t + h)) - float(sch.sigma_bar(t - h))) / (2 * h) if t < 1 else None
    if fd is not None:
        assert float(sch.dsigma_bar(t)) == pytest.approx(fd, rel=1e-6)
    # the t-DCE weight of log-linear is exactly 1 / t
    assert float(sch.dce_weight(t)) == pytest.approx(1 / t, rel=1e-10)


def test_reveal_prob_is_t_minus_s_over_t():
    sch = R.LogLinearSchedule(1e-3)
    for t, s in [(1.0, 0.75), (0.5, 0.25), (0.3, 0.29), (1e-3, 1e-5)]:
        assert float(sch.reveal_prob(t, s)) == pytest.approx((t - s) / t, rel=1e-9)


def test_sampling_grid():
    g = R.sampling_grid(4, delta=1e-5)
    assert g.shape == (5,) and g[0] == 1.0 and g[-1] == pytest.approx(1e-5)
    assert torch.all(g[1:] < g[:-1])
    with pytest.raises(ValueError, match="steps"):
        R.sampling_grid(0)


# --------------------------------------------------------------------------------------------- rotary
def test_rotary_tables_known_values():
    cos, sin = R.rotary_tables(3, 4, dtype=torch.float64)  # inv_freq = [1, 1/100]
    angles = torch.tensor([[0.0, 0.0], [1.0, 0.01], [2.0, 0.02]], dtype=torch.float64)
    torch.testing.assert_close(cos, angles.cos(), rtol=1e-15, atol=0)
    torch.testing.assert_close(sin, angles.sin(), rtol=1e-15, atol=0)


def test_rotary_tables_match_reference_network_fp32():
    # The reference network: inv_freq = 1 / base**(arange(0, D, 2).float() / D), freqs = t (x) inv_freq,
    # emb = cat(freqs, freqs); its cos table is emb.cos(). Ours is the first half, bit for bit.
    L, D = 37, 64
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    freqs = torch.einsum("i,j->ij", torch.arange(L).type_as(inv_freq), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = R.rotary_tables(L, D)
    assert torch.equal(cos, emb.cos()[:, : D // 2]) and torch.equal(sin, emb.sin()[:, : D // 2])


def test_rotary_hand_computed():
    cos, sin = R.rotary_tables(2, 4, dtype=torch.float64)
    qkv = torch.zeros(1, 2, 3, 1, 4, dtype=torch.float64)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    qkv[0, 1, 0, 0] = x  # q at position 1
    qkv[0, 1, 2, 0] = x  # v at position 1 (must stay)
    out = R.rotary(qkv, cos, sin)
    c1, s1, c2, s2 = math.cos(1), math.sin(1), math.cos(0.01), math.sin(0.01)
    expect = torch.tensor([1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1, 4 * c2 + 2 * s2], dtype=torch.float64)
    torch.testing.assert_close(out[0, 1, 0, 0], expect, rtol=1e-15, atol=1e-15)
    assert torch.equal(out[0, 1, 2, 0], x)
    back = R.rotary(out, cos, sin, inverse=True)
    torch.testing.assert_close(back, qkv, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------ attention
def test_attention_hand_computed_three_tokens():
    # One head, D = 1, scale 1: scores s_ij = q_i k_j.
    q = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    k = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64).view(1, 3, 1, 1)
    v = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64).view(1, 3, 1, 1)

    def attend(i, keys):
        w = [math.exp(q[0, i, 0, 0].item() * k[0, j, 0, 0].item()) for j in keys]
        return sum(wj * v[0, j, 0, 0].item() for wj, j in zip(w, keys)) / sum(w)

    out = R.masked_attention(q, k, v, scale=1.0)[0, :, 0, 0]
    torch.testing.assert_close(out, torch.tensor([attend(i, [0, 1, 2]) for i in range(3)], dtype=torch.float64))
    # causal: order = position
    order = torch.arange(3).view(1, 3)
    out = R.masked_attention(q, k, v, order=order, scale=1.0)[0, :, 0, 0]
    torch.testing.assert_close(out, torch.tensor([10.0, attend(1, [0, 1]), attend(2, [0, 1, 2])], dtype=torch.float64))
    # strictly causal: query 0 has no key -> zeros, not NaN
    out, lse = R.masked_attention(q, k, v, order=order, strict=True, scale=1.0, return_lse=True)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.0, 10.0, attend(2, [0, 1])], dtype=torch.float64))
    assert lse[0, 0, 0] == float("-inf") and lse[0, 0, 1] == pytest.approx(q[0, 1, 0, 0].item() * 1.0)
    # key padding: key 1 is padding
    pad = torch.tensor([[True, False, True]])
    out = R.masked_attention(q, k, v, key_padding_mask=pad, scale=1.0)[0, :, 0, 0]
    torch.testing.assert_close(out, torch.tensor([attend(i, [0, 2]) for i in range(3)], dtype=torch.float64))


def test_attention_mask_patterns():
    L = 5
    eye_lower = torch.tril(torch.ones(L, L, dtype=torch.bool))
    bidir = R.attention_mask(1, L, order=torch.zeros(1, L, dtype=torch.long))
    assert bidir.all()
    causal = R.attention_mask(1, L, order=torch.arange(L)[None])
    assert torch.equal(causal[0], eye_lower)
    strict = R.attention_mask(1, L, order=torch.arange(L)[None], strict=True)
    assert torch.equal(strict[0], torch.tril(eye_lower, -1))
    # prefix LM: a prefix of 2 tokens sees itself; later tokens are causal
    prefix = R.attention_mask(1, L, order=torch.tensor([[0, 0, 1, 2, 3]]))
    assert prefix[0, 0, 1] and prefix[0, 1, 0] and not prefix[0, 1, 2] and prefix[0, 4].all()
    # block diffusion (blocks of 2): bidirectional within a block, causal across blocks
    block = R.attention_mask(1, L, order=torch.tensor([[0, 0, 1, 1, 2]]))
    assert block[0, 2, 3] and block[0, 3, 2] and block[0, 2, 0] and not block[0, 1, 2]
    # any-order AR: a permutation
    perm = torch.tensor([[3, 0, 4, 1, 2]])
    ao = R.attention_mask(1, L, order=perm)
    assert torch.equal(ao[0], perm[0][None, :] <= perm[0][:, None])


def test_attention_matches_sdpa_with_dense_mask():
    B, L, H, D = 2, 9, 3, 8
    q, k, v = (torch.randn(B, L, H, D, dtype=torch.float64) for _ in range(3))
    order = torch.randint(0, 3, (B, L))
    pad = torch.rand(B, L) > 0.2
    pad[:, 0] = True
    mask = R.attention_mask(B, L, pad, order)
    # every query keeps at least one key when not strict and its own key is not padding
    mask = mask & mask.any(-1, keepdim=True)
    keep = mask.any(-1)  # queries with an allowed key
    expect = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                            attn_mask=mask[:, None]).transpose(1, 2)
    out = R.masked_attention(q, k, v, pad, order)
    torch.testing.assert_close(out[keep], expect[keep])
    assert torch.all(out[~keep] == 0)


# ------------------------------------------------------------------------------- linear cross-entropy
def test_linear_dce_loss_hand_computed():
    hidden = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=torch.float64)  # row 2: mask column
    bias = torch.tensor([0.0, 0.5, 100.0], dtype=torch.float64)
    target = torch.tensor([0, 1])
    rw = torch.tensor([2.0, 0.5], dtype=torch.float64)
    # row 0 logits (1, 0.5); row 1 logits (0, 2.5); the mask column never enters
    l0 = 2.0 * (math.log(math.exp(1) + math.exp(0.5)) - 1.0)
    l1 = 0.5 * (math.log(1 + math.exp(2.5)) - 2.5)
    out = R.linear_dce_loss(hidden, weight, bias, target, rw, reduction="none")
    torch.testing.assert_close(out, torch.tensor([l0, l1], dtype=torch.float64))
    assert R.linear_dce_loss(hidden, weight, bias, target, rw).item() == pytest.approx(l0 + l1)


def test_linear_dce_loss_matches_cross_entropy():
    N, D, C = 13, 5, 11
    h, W, b = torch.randn(N, D, dtype=torch.float64), torch.randn(C, D, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    t = torch.randint(0, C - 1, (N,))
    rw = torch.rand(N, dtype=torch.float64) * (torch.rand(N) > 0.5)
    expect = (F.cross_entropy(h @ W[:-1].T + b[:-1], t, reduction="none") * rw).sum()
    torch.testing.assert_close(R.linear_dce_loss(h, W, b, t, rw), expect)
    # zero-weight rows contribute exactly zero
    assert torch.all(R.linear_dce_loss(h, W, b, t, rw, reduction="none")[rw == 0] == 0)


# -------------------------------------------------------------------------------------------- sampling
def test_expected_nfe_table():
    # radd-math.md: about 251, 443, 648, 806, 906 at L = 1,024
    for n, doc in zip((256, 512, 1024, 2048, 4096), (251, 443, 648, 806, 906)):
        assert abs(R.expected_nfe(1024, n) - doc) < 1.0
    assert R.expected_nfe(7, 1) == pytest.approx(1.0)


def test_expected_nfe_against_simulation():
    g = torch.Generator().manual_seed(1)
    for L, n in [(16, 8), (64, 64), (5, 100)]:
        steps = torch.randint(0, n, (20000, L), generator=g)
        distinct = torch.zeros(20000, n).scatter_(1, steps, 1.0).sum(1)
        mean, se = distinct.mean().item(), distinct.std().item() / math.sqrt(len(distinct))
        assert abs(mean - R.expected_nfe(L, n)) < 4 * se + 1e-9


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.2, 0.1]], dtype=torch.float64))
    inf = float("-inf")
    assert torch.equal(torch.isinf(R.top_k_filter(logits, 1)), torch.tensor([[False, True, True, True]]))
    # ties with the k-th value are kept
    assert torch.isinf(R.top_k_filter(logits, 2)).sum() == 1
    assert torch.equal(R.top_k_filter(logits, 0), logits)
    # top-p: cumulative before = (0, .5, .7, .9)
    assert torch.equal(R.top_p_filter(logits, 0.45)[0, 1:], torch.tensor([inf, inf, inf], dtype=torch.float64))
    assert torch.isinf(R.top_p_filter(logits, 0.6)).sum() == 2
    assert torch.isinf(R.top_p_filter(logits, 0.95)).sum() == 0
    assert torch.equal(R.top_p_filter(logits, 1.0), logits)
    # filters act per row on any permutation of the vocabulary (no ties here: a tie at the cut is
    # broken by sort order)
    distinct = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64))
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.equal(R.top_p_filter(distinct[:, perm], 0.6), R.top_p_filter(distinct, 0.6)[:, perm])
    assert torch.equal(R.top_k_filter(distinct[:, perm], 2), R.top_k_filter(distinct, 2)[:, perm])


class TableModel:
    """Logits of each position given the other positions of a length-2 sequence; counts its calls."""

    def __init__(self, V, mask_id, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(2, V + 1, V, generator=g, dtype=torch.float64) * 1.5  # [pos, other token]
        self.mask_id = mask_id
        self.rows = 0

    def __call__(self, x):
        self.rows += x.shape[0]
        return torch.stack([self.table[0][x[:, 1]], self.table[1][x[:, 0]]], dim=1)


def test_sample_cached_exact_distribution_L2():
    V, M, n, N = 3, 3, 4, 60000
    model = TableModel(V, M)
    g = torch.Generator().manual_seed(2)
    x, nfe = R.sample_cached(model, torch.full((N, 2), M), n, M, generator=g)
    assert torch.all(x < V)
    # exact law: reveal steps independent with probabilities p_k; "same step" draws both from the
    # all-masked context, otherwise the first revealed conditions the second.
    sch, grid = R.LogLinearSchedule(), R.sampling_grid(n)
    surv, p = 1.0, []
    for i in range(n):
        r = 1.0 if i == n - 1 else float(sch.reveal_prob(grid[i], grid[i + 1]))
        p.append(surv * r)
        surv *= 1 - r
    p_same = sum(pk * pk for pk in p)
    sm = lambda z: torch.softmax(z, -1)
    q0_m, q1_m = sm(model.table[0][M]), sm(model.table[1][M])
    exact = torch.zeros(V, V, dtype=torch.float64)
    for a in range(V):
        for b in range(V):
            exact[a, b] = (p_same * q0_m[a] * q1_m[b]
                           + (1 - p_same) / 2 * q0_m[a] * sm(model.table[1][a])[b]
                           + (1 - p_same) / 2 * q1_m[b] * sm(model.table[0][b])[a])
    assert exact.sum().item() == pytest.approx(1.0)
    freq = torch.zeros(V, V, dtype=torch.float64).index_put_((x[:, 0], x[:, 1]), torch.ones(N, dtype=torch.float64), accumulate=True) / N
    se = (exact * (1 - exact) / N).sqrt()
    assert torch.all((freq - exact).abs() < 5 * se), (freq, exact)
    # NFE: one evaluation per distinct reveal step: 1 w.p. p_same, else 2
    assert abs(nfe.double().mean().item() - (2 - p_same)) < 5 * math.sqrt(p_same * (1 - p_same) / N)
    assert model.rows == nfe.sum().item()


def test_sample_cached_keeps_prompt_and_is_reproducible():
    V, M = 3, 3
    model = TableModel(V, M, seed=3)
    x0 = torch.tensor([[1, M], [M, 2], [M, M]])
    a, nfe_a = R.sample_cached(model, x0, 5, M, generator=torch.Generator().manual_seed(4))
    b, nfe_b = R.sample_cached(model, x0, 5, M, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and torch.equal(nfe_a, nfe_b)
    assert a[0, 0] == 1 and a[1, 1] == 2 and torch.all(a < V)
    assert nfe_a[0] == 1 and nfe_a[1] == 1 and 1 <= nfe_a[2] <= 2


def test_sample_cached_nfe_matches_formula():
    # A model that ignores its input; L = 6, n = 5: mean NFE = sum_k 1 - (1 - p_k)^L (exact, the
    # grid's intervals are equal up to delta), close to n (1 - (1 - 1/n)^L).
    L, n, N, V = 6, 5, 20000, 4
    model = lambda x: torch.zeros(x.shape[0], x.shape[1], V, dtype=torch.float64)
    _, nfe = R.sample_cached(model, torch.full((N, L), V), n, V, generator=torch.Generator().manual_seed(5))
    se = nfe.double().std().item() / math.sqrt(N)
    assert abs(nfe.double().mean().item() - R.expected_nfe(L, n)) < 5 * se
