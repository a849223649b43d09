"""Pure-PyTorch oracles for everything the compiled kernels compute.

Each function here is written from the math (shared/design/radd-math.md), favours clarity over
speed, and is exact in float64. They serve three roles: the oracle of every kernel test, the
fallback when the extension is unavailable (``impl="reference"``), and the baseline of the benchmarks.
Arithmetic happens in float64 for float64 inputs and in float32 otherwise (the kernels' accumulator
precision), unless a function says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "accumulate_dtype",
    "rotary_tables",
    "rotary",
    "masked_attention",
    "attention_mask",
    "linear_dce_loss",
    "LogLinearSchedule",
    "sampling_grid",
    "expected_nfe",
    "top_k_filter",
    "top_p_filter",
    "filter_logits",
    "sample_cached",
]


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision the kernels accumulate in for inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------- rotary
def rotary_tables(
    seq_len: int,
    head_dim: int,
    base: float = 10_000.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    inv_freq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each (seq_len, head_dim // 2).

    Angle of position p and pair d is p * inv_freq[d], inv_freq[d] = base ** (-2d / head_dim), as in
    the reference network (which computes them in fp32 and stores (seq_len, head_dim) tables with
    both halves equal; we keep one half). `inv_freq` overrides the formula (e.g. a checkpoint's
    ``rotary_emb.inv_freq`` buffer).
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"radd_fast.rotary_tables: 'head_dim' must be a positive even number, got {head_dim}")
    if seq_len < 0:
        raise ValueError(f"radd_fast.rotary_tables: 'seq_len' must be >= 0, got {seq_len}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"radd_fast.rotary_tables: 'dtype' must be float32 or float64, got {dtype}")
    if inv_freq is None:
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=dtype) / head_dim))
    else:
        if inv_freq.shape != (head_dim // 2,):
            raise ValueError(
                f"radd_fast.rotary_tables: 'inv_freq' must have shape ({head_dim // 2},), got {list(inv_freq.shape)}"
            )
        inv_freq = inv_freq.to(device=device, dtype=dtype)
    t = torch.arange(seq_len, device=inv_freq.device, dtype=dtype)
    freqs = torch.outer(t, inv_freq)
    return freqs.cos().contiguous(), freqs.sin().contiguous()


def rotary(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    inverse: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Rotate q and k of a packed qkv (B, L, 3, H, D) with the NeoX rotate-half convention; v is copied.

    Computed in the tables' dtype by default and rounded once to qkv's dtype (what the kernels do).
    ``compute_dtype=qkv.dtype`` instead reproduces the reference network's arithmetic, which casts the
    tables to the activation dtype first (its error is the baseline of the low-precision tests).
    """
    L, D = qkv.shape[1], qkv.shape[4]
    cdt = compute_dtype or cos.dtype
    c = cos[:L].to(cdt)[None, :, None, :]
    s = sin[:L].to(cdt)[None, :, None, :]
    if inverse:
        s = -s
    q, k, v = qkv.unbind(2)

    def rot(x: torch.Tensor) -> torch.Tensor:
        x = x.to(cdt)
        x1, x2 = x[..., : D // 2], x[..., D // 2 :]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(qkv.dtype)

    return torch.stack((rot(q), rot(k), v), dim=2)


# ------------------------------------------------------------------------------------------ attention
def attention_mask(
    B: int,
    L: int,
    key_padding_mask: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    strict: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The dense (B, L_query, L_key) boolean mask that `order` and `key_padding_mask` describe.

    Query i may attend key j iff key j is not padding and (no order, or order[j] < order[i], or
    order[j] == order[i] when not strict). The kernels never build this; the oracle does.
    """
    allowed = torch.ones(B, L, L, dtype=torch.bool, device=device)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.to(torch.bool)[:, None, :]
    if order is not None:
        oq, ok = order[:, :, None], order[:, None, :]
        allowed = allowed & ((ok < oq) | ((ok == oq) & (not strict)))
    return allowed


def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    strict: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Softmax attention of q, k, v (B, L, H, D) under the mask of `attention_mask`.

    A query with no allowed key outputs zeros (and gets zero gradients), never NaN; its logsumexp
    is -inf. Returns the output in q's dtype, and with `return_lse` also the (B, H, L) logsumexp of
    the scaled scores in the accumulation dtype.
    """
    B, L, H, D = q.shape
    acc = accumulate_dtype(q.dtype)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = torch.einsum("bihd,bjhd->bhij", q.to(acc), k.to(acc)) * scale
    allowed = attention_mask(B, L, key_padding_mask, order, strict, device=q.device)[:, None]
    any_allowed = allowed.any(-1, keepdim=True)
    # Rows with no allowed key: softmax over zeros keeps everything finite; the output is zeroed below.
    s = torch.where(any_allowed, s.masked_fill(~allowed, float("-inf")), torch.zeros_like(s))
    p = torch.where(any_allowed, torch.softmax(s, dim=-1), torch.zeros_like(s))
    out = torch.einsum("bhij,bjhd->bihd", p, v.to(acc)).to(q.dtype)
    if not return_lse:
        return out
    lse = torch.where(any_allowed[..., 0], torch.logsumexp(s, dim=-1), torch.full_like(s[..., 0], float("-inf")))
    return out, lse


# ------------------------------------------------------------------------------- linear cross-entropy
def linear_dce_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    row_weight: torch.Tensor,
    num_classes: int | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Weighted cross-entropy of the linear layer's logits, materialising them (the oracle).

    loss_r = row_weight[r] * (logsumexp_{c < num_classes}(h_r . W_c + b_c) - (h_r . W_t + b_t)),
    t = target[r]; num_classes defaults to weight.shape[0] - 1 (the mask column is never a class).
    Rows with weight 0 contribute exactly 0. reduction "sum" returns a scalar, "none" the (N,) losses;
    both in the accumulation dtype.
    """
    if reduction not in ("sum", "none"):
        raise ValueError(f"radd_fast.linear_dce_loss: 'reduction' must be 'sum' or 'none', got {reduction!r}")
    C = weight.shape[0]
    nc = C - 1 if num_classes is None else num_classes
    acc = accumulate_dtype(hidden.dtype)
    logits = hidden.to(acc) @ weight[:nc].to(acc).T
    if bias is not None:
        logits = logits + bias[:nc].to(acc)
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, target.long()[:, None]).squeeze(1)
    w = row_weight.to(acc)
    loss = torch.where(w != 0, w * (lse - target_logit), torch.zeros_like(lse))
    return loss.sum() if reduction == "sum" else loss


# ------------------------------------------------------------------------------------ noise schedule
class LogLinearSchedule:
    """The log-linear schedule of RADD/SEDD: P(token masked at time t) = (1 - eps) t.

    sigma_bar(t) = -log(1 - (1 - eps) t), sigma_bar'(t) = (1 - eps) / (1 - (1 - eps) t),
    alpha(t) = exp(-sigma_bar(t)) = 1 - (1 - eps) t (probability that a token is still clean).
    """

    def __init__(self, eps: float = 1e-3):
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"LogLinearSchedule: 'eps' must be in [0, 1), got {eps}")
        self.eps = eps

    def sigma_bar(self, t):
        return -torch.log1p(-(1 - self.eps) * torch.as_tensor(t, dtype=torch.float64))

    def dsigma_bar(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return (1 - self.eps) / (1 - (1 - self.eps) * t)

    def alpha(self, t):
        return torch.exp(-self.sigma_bar(t))

    def mask_prob(self, t):
        """1 - alpha(t) = (1 - eps) t."""
        return (1 - self.eps) * torch.as_tensor(t, dtype=torch.float64)

    def dce_weight(self, t):
        """sigma_bar'(t) alpha(t) / (1 - alpha(t)): the t-DCE/DSE weight; equals 1 / t."""
        a = self.alpha(t)
        return self.dsigma_bar(t) * a / (1 - a)

    def reveal_prob(self, t, s):
        """P(a token masked at t is clean at s < t) = (alpha(s) - alpha(t)) / (1 - alpha(t)) = (t - s) / t."""
        at, as_ = self.alpha(t), self.alpha(s)
        return (as_ - at) / (1 - at)


def sampling_grid(steps: int, delta: float = 1e-5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The reverse-process time grid: linspace(1, delta, steps + 1)."""
    if steps < 1:
        raise ValueError(f"radd_fast: 'steps' must be >= 1, got {steps}")
    return torch.linspace(1.0, delta, steps + 1, dtype=dtype)


def expected_nfe(length: int, steps: int) -> float:
    """E[network evaluations per sequence] of the cached sampler: steps * (1 - (1 - 1/steps)^length).

    The number of distinct reveal steps of `length` positions whose reveal steps are independent and
    uniform over `steps` intervals.
    """
    return steps * (1.0 - (1.0 - 1.0 / steps) ** length)


# -------------------------------------------------------------------------------------------- sampling
def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits of each row (all logits tied with the k-th are kept), -inf elsewhere."""
    if k is None or k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most probable tokens whose total probability >= p.

    Token i (by decreasing probability) is kept iff the probability of the tokens before it is < p,
    so the most probable token is always kept. p = 1 (or None) keeps everything.
    """
    if p is None or p >= 1.0:
        return logits
    sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.to(torch.float64), dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs
    remove_sorted = before >= p
    remove = torch.zeros_like(remove_sorted).scatter(-1, idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Temperature, then top-k, then top-p, in float64."""
    x = logits.to(torch.float64) / temperature
    return top_p_filter(top_k_filter(x, top_k), top_p)


@torch.no_grad()
def sample_cached(
    model: Callable[[torch.Tensor], torch.Tensor],
    x_init: torch.Tensor,
    steps: int,
    mask_id: int,
    *,
    schedule: LogLinearSchedule | None = None,
    delta: float = 1e-5,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference step-by-step sampler with the per-sequence cache.

    `model(x)` maps tokens (b, L) to logits or log-probabilities over the real tokens (b, L, V).
    Positions of `x_init` equal to `mask_id` are generated, the others (prompt, suffix, infill
    context) are kept. At step k, from t = grid[k] to s = grid[k+1], every masked token is revealed
    independently with probability reveal_prob(t, s) (all of them at the last step), with a value
    drawn from softmax(filter_logits(model(x))). The network runs only for sequences that reveal
    something in that step: its output changes only when its input does, so each such step needs
    exactly one evaluation and the others none.

    Returns the tokens and the number of network evaluations of each sequence.
    """
    schedule = schedule or LogLinearSchedule()
    grid = sampling_grid(steps, delta)
    x = x_init.clone()
    B, L = x.shape
    nfe = torch.zeros(B, dtype=torch.int64, device=x.device)
    for i in range(steps):
        masked = x == mask_id
        if i == steps - 1:
            reveal = masked
        else:
            p = float(schedule.reveal_prob(grid[i], grid[i + 1]))
            u = torch.rand(B, L, generator=generator, dtype=torch.float64, device=x.device)
            reveal = masked & (u < p)
        active = reveal.any(dim=1).nonzero().squeeze(1)
        if active.numel() == 0:
            continue
        nfe[active] += 1
        logits = filter_logits(model(x[active]), temperature, top_k, top_p)
        rows = reveal[active]
        probs = torch.softmax(logits[rows], dim=-1)
        drawn = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        xa = x[active]
        xa[rows] = drawn.to(x.dtype)
        x[active] = xa
    return x, nfe


# ------------------------------------------------------------------------------- the reference network
def radd_forward(
    params: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    n_heads: int,
    dropout: float = 0.0,
    return_hidden: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The reference RADD network of radd-math.md, as one function of a reference-layout state dict.

    Keys: vocab_embed.embedding, rotary_emb.inv_freq, blocks.{i}.{norm1,norm2}.{weight,bias},
    blocks.{i}.attn_qkv.weight, blocks.{i}.attn_out.weight, blocks.{i}.mlp.{0,2}.{weight,bias},
    output_layer.norm_final.{weight,bias}, output_layer.linear.{weight,bias}.
    Pre-LN blocks, LayerNorm in (at least) fp32, rotary on q and k (rotate-half, tables from
    inv_freq), dense bidirectional attention, GELU(tanh) MLP, log_softmax over the first V of the V+1
    output columns. Returns log-probabilities (B, L, V), or the final LayerNorm's output with
    `return_hidden`. Written for clarity; it materialises everything.
    """
    emb = params["vocab_embed.embedding"]
    V = emb.shape[0] - 1
    H = emb.shape[1]
    hd = H // n_heads
    B, L = tokens.shape
    acc = torch.promote_types(emb.dtype, torch.float32)

    def layer_norm(x, prefix):
        y = torch.nn.functional.layer_norm(x.to(acc), (H,))
        return y * params[prefix + ".weight"].to(acc) + params[prefix + ".bias"].to(acc)

    def drop(x):
        if dropout == 0.0:
            return x
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= dropout
        return x * keep / (1 - dropout)

    inv_freq = params["rotary_emb.inv_freq"]
    cos, sin = rotary_tables(L, hd, dtype=inv_freq.dtype, inv_freq=inv_freq, device=tokens.device)
    x = emb[tokens]
    n_blocks = 1 + max(int(k.split(".")[1]) for k in params if k.startswith("blocks."))
    for i in range(n_blocks):
        p = f"blocks.{i}."
        h = layer_norm(x, p + "norm1").to(x.dtype)
        qkv = (h @ params[p + "attn_qkv.weight"].T).view(B, L, 3, n_heads, hd)
        qkv = rotary(qkv, cos, sin)
        a = masked_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        x = x + drop(a.reshape(B, L, H) @ params[p + "attn_out.weight"].T)
        h = layer_norm(x, p + "norm2").to(x.dtype)
        h = torch.nn.functional.gelu(h @ params[p + "mlp.0.weight"].T + params[p + "mlp.0.bias"], approximate="tanh")
        x = x + drop(h @ params[p + "mlp.2.weight"].T + params[p + "mlp.2.bias"])
    h = layer_norm(x, "output_layer.norm_final")
    if return_hidden:
        return h
    logits = h @ params["output_layer.linear.weight"].to(acc).T + params["output_layer.linear.bias"].to(acc)
    return torch.log_softmax(logits[..., :V], dim=-1)

# ----------------------------------------------------------------------------- exact DCE expectations
def dce_mask_sums(log_prob_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, mask_id: int) -> torch.Tensor:
    """S[b, k] = sum over the masks S of size k of sum_{i in S} -log q(x0_i | x0 with S masked).

    Enumerates all 2^L masks (tiny L only). `log_prob_fn(x)` maps tokens (n, L) to log-probabilities
    over the real tokens (n, L, V). Returns (B, L + 1) float64 (column 0 is 0).
    """
    B, L = x0.shape
    if L > 16:
        raise ValueError(f"dce_mask_sums enumerates 2^L masks; L = {L} is too long")
    bits = torch.arange(2**L, device=x0.device)
    masks = ((bits[:, None] >> torch.arange(L, device=x0.device)) & 1).bool()  # (2^L, L)
    xt = torch.where(masks[None], torch.full_like(x0, mask_id)[:, None, :], x0[:, None, :])  # (B, 2^L, L)
    logq = log_prob_fn(xt.reshape(-1, L)).to(torch.float64).reshape(B, 2**L, L, -1)
    nll = -logq.gather(-1, x0[:, None, :, None].expand(B, 2**L, L, 1)).squeeze(-1)  # (B, 2^L, L)
    f = (nll * masks[None]).sum(-1)  # (B, 2^L)
    size = masks.sum(-1)
    out = torch.zeros(B, L + 1, dtype=torch.float64, device=x0.device)
    return out.index_add_(1, size, f)


def dce_exact_expectation(sums: torch.Tensor, kind: str, eps: float = 1e-3) -> torch.Tensor:
    """Exact E[per-sequence loss] (B,) of a DCE estimator, from `dce_mask_sums`.

    A draw masks a set S with some probability and weighs it by w; the estimate is w * f(S).
    lambda_dce: integral over lambda of (1/lambda) lambda^k (1-lambda)^(L-k) = 1 / (k C(L, k)), the same
    as ao_dce's (1/L) (L/k) / C(L, k). t_dce / dse: with p = (1 - eps) t the mask probability,
    E = 1/(1 - eps) * sum_k S_k * integral_{eps (1 - eps)}^{1 - eps} p^(k-1) (1-p)^(L-k) dp,
    which tends to the former as eps -> 0.
    """
    L = sums.shape[1] - 1
    coef = torch.zeros(L + 1, dtype=torch.float64)
    for k in range(1, L + 1):
        if kind in ("lambda_dce", "ao_dce"):
            coef[k] = 1.0 / (k * math.comb(L, k))
        elif kind in ("t_dce", "dse"):
            a, b = eps * (1 - eps), 1 - eps
            # (1 - p)^(L-k) expanded: sum_j C(L-k, j) (-p)^j; integrate p^(k-1+j) exactly.
            integral = sum(math.comb(L - k, j) * (-1) ** j * (b ** (k + j) - a ** (k + j)) / (k + j) for j in range(L - k + 1))
            coef[k] = integral / (1 - eps)
        else:
            raise ValueError(f"unknown DCE kind {kind!r}")
    return sums @ coef.to(sums.device)


# ------------------------------------------------------------------------- the device sampler's oracles
# Pure-PyTorch copies of the sampler ops (csrc/reveal_schedule, csrc/sample_rows): the same Philox
# stream layout, the same definitions, float64 arithmetic. The tests compare the kernels with these
# exactly (integer outputs) or on the same noise (tokens).
_MASK32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_EXTRA_BITS_STREAM = 1 << 63


def _mulhilo32(a: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product of the constant a and x (int64 holding uint32),
    computed from 16-bit halves of a so that no intermediate leaves int64."""
    p_hi, p_lo = x * (a >> 16), x * (a & 0xFFFF)  # each < 2^48
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox4x32(counter: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Philox4x32-10 (Random123) of int64 counters (..., 4) holding uint32 words, under key (k0, k1)."""
    c0, c1, c2, c3 = (counter[..., i] & _MASK32 for i in range(4))
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    for r in range(10):
        if r > 0:
            k0, k1 = (k0 + _PHILOX_W[0]) & _MASK32, (k1 + _PHILOX_W[1]) & _MASK32
        hi0, lo0 = _mulhilo32(_PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack((c0, c1, c2, c3), dim=-1)


def seed64(seed: int) -> int:
    """A Python int as the int64 that carries its low 64 bits (the ops' `int seed`)."""
    s = int(seed) % (1 << 64)
    return s - (1 << 64) if s >= 1 << 63 else s


def philox_block(seed: int, offset: int, subsequence: torch.Tensor) -> torch.Tensor:
    """Words (N, 4) of blocks `subsequence` (int64, >= 0) of stream `offset` under `seed`: the stream
    layout of csrc/common/philox.h (key = seed, counter = (subsequence lo, hi, offset lo, hi))."""
    seed, offset = int(seed) % (1 << 64), int(offset) % (1 << 64)
    sub = subsequence.to(torch.int64).reshape(-1)
    ctr = torch.stack((sub & _MASK32, sub >> 32, torch.full_like(sub, offset & _MASK32),
                       torch.full_like(sub, offset >> 32)), dim=-1)
    return philox4x32(ctr, (seed & _MASK32, seed >> 32))


def reveal_step_cdf(steps: int, schedule: LogLinearSchedule | None = None, delta: float = 1e-5) -> torch.Tensor:
    """P(reveal step <= k), k < steps, of a position masked at t = 1, under sample_cached's process.

    Step k (from t_k to t_{k+1}) reveals a still-masked token with probability r_k =
    reveal_prob(t_k, t_{k+1}), the last step with probability 1, so P(step <= k) = 1 - prod_{j<=k}
    (1 - r_j). For log-linear, 1 - r_j = t_{j+1} / t_j telescopes: P(step <= k) = 1 - t_{k+1}, i.e.
    P(step = k) = t_k - t_{k+1} (k < steps - 1) and t_{steps-1} for the last step.
    """
    schedule = schedule or LogLinearSchedule()
    grid = sampling_grid(steps, delta)
    keep = torch.ones(steps, dtype=torch.float64)
    if steps > 1:
        keep[:-1] = 1 - schedule.reveal_prob(grid[:-2], grid[1:-1]).to(torch.float64)
    keep[-1] = 0.0
    return 1 - torch.cumprod(keep, 0)


def reveal_schedule(masked: torch.Tensor, step_cdf: torch.Tensor, seed: int = 0, offset: int = 0):
    """Oracle of radd_fast::reveal_schedule (csrc/reveal_schedule/schedule.h has the definitions):
    (step, num_events, perm, row_index, round_offsets)."""
    B, L = masked.shape
    n = step_cdf.shape[0]
    dev = masked.device
    N = B * L
    w = philox_block(seed, offset, torch.arange(N, device=dev))
    u = ((w[:, 0] << 21) | (w[:, 1] >> 11)).to(torch.float64) * 2.0**-53
    step = torch.searchsorted(step_cdf.to(dev), u, right=True).clamp(max=n - 1).view(B, L)
    step = torch.where(masked, step, torch.full_like(step, -1))
    event = torch.full((B, L), -1, dtype=torch.int64, device=dev)
    num_events = torch.zeros(B, dtype=torch.int64, device=dev)
    for b in range(B):
        m = masked[b]
        if m.any():
            distinct, inverse = torch.unique(step[b][m], sorted=True, return_inverse=True)
            event[b][m] = inverse
            num_events[b] = distinct.numel()
    perm = torch.sort(num_events, descending=True, stable=True).indices
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(B, device=dev)
    pos = torch.arange(L, device=dev).expand(B, L)
    key = (event * B + rank[:, None]) * L + pos
    key = torch.sort(key[masked]).values
    row_index = torch.full((N,), -1, dtype=torch.int64, device=dev)
    row_index[: key.numel()] = key % max(N, 1)
    R = min(n, L)
    round_offsets = torch.searchsorted(key // max(N, 1), torch.arange(R + 1, device=dev))
    return step.to(torch.int32), num_events.to(torch.int32), perm, row_index, round_offsets


def race_uniforms(seed: int, offset: int, rows: int, V: int, device=None) -> torch.Tensor:
    """(rows, V) float64 uniforms of the sample_rows race: token v of row r takes word v % 4 of
    block r * ceil(V / 4) + v / 4 as its high 32 bits and the same word of the extra-bits stream as
    its low 32 bits, u = (hi * 2^32 + (lo | 1)) * 2^-64 (one rounding, as the kernels' conversion)."""
    G = (V + 3) // 4
    sub = torch.arange(rows * G, device=device)
    hi = philox_block(seed, offset, sub).view(rows, 4 * G)[:, :V]
    lo = philox_block(seed, int(offset) | PHILOX_EXTRA_BITS_STREAM, sub).view(rows, 4 * G)[:, :V]
    u = (hi.to(torch.float64) * 2.0**32 + (lo | 1).to(torch.float64)) * 2.0**-64
    return u.clamp(max=1.0 - 2.0**-53)


def sample_rows(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    num_classes: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
    offset: int = 0,
    return_margin: bool = False,
):
    """Oracle of radd_fast::sample_rows: logits = hidden @ weight[:V].T + bias[:V] in float64,
    filter_logits, then the exponential race argmax_v x_v - log(-log1p(-u_v)) on race_uniforms
    (greedy: argmax of the logits). Returns (tokens, log_prob) with log_prob = log_softmax of the
    filtered logits at the token, in the accumulation dtype of hidden; `return_margin` adds each
    row's gap between its best and second-best race score (how robust the argmax is to rounding)."""
    V = num_classes
    logits = hidden.to(torch.float64) @ weight[:V].to(torch.float64).T
    if bias is not None:
        logits = logits + bias[:V].to(torch.float64)
    x = filter_logits(logits, temperature, top_k or None, top_p if top_p < 1 else None)
    if greedy:
        score = logits
    else:
        score = x - torch.log(-torch.log1p(-race_uniforms(seed, offset, hidden.shape[0], V, hidden.device)))
    tokens = score.argmax(-1)
    log_prob = torch.log_softmax(x, -1).gather(1, tokens[:, None]).squeeze(1).to(accumulate_dtype(hidden.dtype))
    if not return_margin:
        return tokens, log_prob
    top2 = score.topk(min(2, V), dim=-1).values
    margin = top2[:, 0] - top2[:, -1] if V > 1 else torch.full_like(top2[:, 0], float("inf"))
    return tokens, log_prob, margin
