"""The four RADD training losses (shared/design/radd-math.md), each a weighted cross-entropy at the
masked positions computed by the fused ``linear_dce_loss`` op.

| loss        | masking of a sequence                                   | weight w of its masked positions |
|-------------|---------------------------------------------------------|----------------------------------|
| lambda_dce  | lambda ~ U(0, 1); each token masked with prob. lambda   | 1 / lambda                       |
| t_dce       | t = (1 - eps) u + eps; each token masked w.p. 1 - a(t)  | sbar'(t) a(t) / (1 - a(t)) = 1/t |
| ao_dce      | k ~ U{1..L}; exactly k positions, uniformly             | L / k                            |
| dse         | as t_dce (score-entropy form, RADD parameterisation)    | as t_dce                         |

Per sequence: the sum over its masked positions of w * (-log q(x0_i | x_t)); the batch loss is the
mean over sequences (no per-token normalisation). In expectation (eps -> 0) all four equal the
negative ELBO, an upper bound on -log p(x0).

The model protocol (radd_fast.model satisfies it):

    model.vocab_size: int                    # V real tokens; the mask token id is V
    model.hidden(x: LongTensor (B, L)) -> Tensor (B, L, D)   # after the final LayerNorm
    model.output_weight: Tensor (V + 1, D);  model.output_bias: Tensor (V + 1,) or None

Every loss function has the signature

    loss_fn(model, x0, generator=None, *, sampling="low_variance", eps=1e-3, reduction="mean",
            impl="auto", draw=None, return_draw=False)

* ``sampling``: "low_variance" (the reference's draws: t_i = (u0 + i/B) mod 1 for t_dce/dse,
  lambda_i = (u_i + i)/B for lambda_dce, k stratified the same way for ao_dce) or "uniform"
  (independent draws). Both are unbiased.
* ``reduction``: "mean" (scalar, the training loss; gradients come from the fused one-sweep kernel)
  or "none" (the (B,) per-sequence estimates of the bound, for evaluation).
* ``draw``: a ``MaskDraw`` to reuse (e.g. the same masks for two losses); ``return_draw=True`` returns
  ``(loss, draw)``.
* ``eps``: the schedule's eps (t_dce, dse); unused by lambda_dce and ao_dce.
The random numbers come from ``generator`` (on x0's device) or torch's global generator; nothing
synchronises with the host except dse (below).

Lower-level pieces: ``draw_masks`` and ``dce_from_hidden`` (precomputed hidden states of x_t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .functional import linear_dce_loss
from .reference import LogLinearSchedule

__all__ = [
    "MaskDraw",
    "draw_masks",
    "dce_from_hidden",
    "lambda_dce",
    "t_dce",
    "ao_dce",
    "dse",
    "LOSSES",
    "get_loss",
]

SAMPLINGS = ("low_variance", "uniform")
KINDS = ("lambda_dce", "t_dce", "ao_dce", "dse")


@dataclass(frozen=True)
class MaskDraw:
    """One draw of the masking of a batch.

    mask: (B, L) bool, True where x_t holds the mask token (the positions that are predicted).
    weight: (B,) float64, the weight w of every masked position of the sequence.
    level: (B,) float64, what was drawn: lambda (lambda_dce), t (t_dce, dse) or k (ao_dce).
    kind: which loss the draw is for.
    """

    mask: torch.Tensor
    weight: torch.Tensor
    level: torch.Tensor
    kind: str

    def noised(self, x0: torch.Tensor, mask_id: int) -> torch.Tensor:
        """x_t: x0 with the masked positions replaced by mask_id."""
        return torch.where(self.mask, torch.full_like(x0, mask_id), x0)

    def row_weight(self) -> torch.Tensor:
        """(B, L) float64 weights: w on masked positions, exactly 0 elsewhere (also where w is inf,
        e.g. lambda = 0, which masks nothing)."""
        return torch.where(self.mask, self.weight[:, None], torch.zeros((), dtype=self.weight.dtype,
                                                                         device=self.weight.device))


def _levels(B: int, sampling: str, generator, device, stratified: str) -> torch.Tensor:
    """(B,) float64 uniforms on [0, 1): independent, or low-variance.

    stratified="shift": (u0 + i/B) mod 1, one u0 for the batch (the reference's t draws);
    stratified="strata": (u_i + i) / B, one uniform per stratum (the reference's lambda draws).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"radd_fast.losses: 'sampling' must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    if sampling == "uniform":
        return torch.rand(B, generator=generator, device=device, dtype=torch.float64)
    i = torch.arange(B, device=device, dtype=torch.float64)
    if stratified == "shift":
        u0 = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
        return torch.remainder(u0 + i / B, 1.0)
    u = torch.rand(B, generator=generator, device=device, dtype=torch.float64)
    return (u + i) / B


def draw_masks(kind: str, B: int, L: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, sampling: str = "low_variance", eps: float = 1e-3,
               schedule: LogLinearSchedule | None = None) -> MaskDraw:
    """Draw the masks and weights of a batch of B sequences of length L for loss `kind`."""
    if kind not in KINDS:
        raise ValueError(f"radd_fast.losses: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    if B < 1 or L < 1:
        raise ValueError(f"radd_fast.losses: need B >= 1 and L >= 1, got B={B}, L={L}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    u_tok = lambda: torch.rand(B, L, generator=generator, device=device, dtype=torch.float64)
    if kind == "lambda_dce":
        lam = _levels(B, sampling, generator, device, "strata")
        mask = u_tok() < lam[:, None]
        return MaskDraw(mask, 1.0 / lam, lam, kind)
    if kind == "ao_dce":
        u = _levels(B, sampling, generator, device, "shift")
        k = torch.clamp(torch.floor(u * L), max=L - 1) + 1  # uniform on {1..L}
        # exactly k positions, uniformly: the k smallest of L iid uniforms
        ranks = torch.argsort(torch.argsort(u_tok(), dim=1), dim=1)
        mask = ranks < k[:, None]
        return MaskDraw(mask, L / k, k, kind)
    sch = schedule or LogLinearSchedule(eps)
    u = _levels(B, sampling, generator, device, "shift")
    t = (1 - sch.eps) * u + sch.eps
    mask = u_tok() < sch.mask_prob(t).to(device)[:, None]
    return MaskDraw(mask, sch.dce_weight(t).to(device), t, kind)


def _check_x0(model, x0: torch.Tensor) -> None:
    if not isinstance(x0, torch.Tensor) or x0.dim() != 2 or x0.dtype != torch.int64:
        raise ValueError(f"radd_fast.losses: 'x0' must be an int64 tensor (B, L), got "
                         f"{getattr(x0, 'dtype', type(x0).__name__)} {list(getattr(x0, 'shape', []))}")


def dce_from_hidden(hidden: torch.Tensor, output_weight: torch.Tensor, output_bias: torch.Tensor | None,
                    x0: torch.Tensor, draw: MaskDraw, *, vocab_size: int, reduction: str = "mean",
                    impl: str = "auto") -> torch.Tensor:
    """The DCE loss of one draw from the hidden states (B, L, D) of x_t = draw.noised(x0, vocab_size).

    "mean": mean over the batch of the per-sequence sums (a scalar; one sweep of the fused kernel for
    the loss and its gradients, as row weights w / B with reduction "sum"); "none": (B,).
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"radd_fast.losses: 'reduction' must be 'mean' or 'none', got {reduction!r}")
    B, L, D = hidden.shape
    h = hidden.reshape(B * L, D).contiguous()
    rw = draw.row_weight()
    if reduction == "mean":
        return linear_dce_loss(h, output_weight, output_bias, x0.reshape(-1), (rw / B).reshape(-1), vocab_size,
                               "sum", impl=impl)
    rows = linear_dce_loss(h, output_weight, output_bias, x0.reshape(-1), rw.reshape(-1), vocab_size, "none",
                           impl=impl)
    return rows.view(B, L).sum(1)


def _dce(kind, model, x0, generator, sampling, eps, reduction, impl, draw, return_draw):
    _check_x0(model, x0)
    B, L = x0.shape
    if draw is None:
        draw = draw_masks(kind, B, L, generator=generator, device=x0.device, sampling=sampling, eps=eps)
    hidden = model.hidden(draw.noised(x0, model.vocab_size))
    loss = dce_from_hidden(hidden, model.output_weight, model.output_bias, x0, draw,
                           vocab_size=model.vocab_size, reduction=reduction, impl=impl)
    return (loss, draw) if return_draw else loss


def lambda_dce(model, x0, generator=None, *, sampling="low_variance", eps=1e-3, reduction="mean", impl="auto",
               draw=None, return_draw=False):
    """lambda-DCE: lambda ~ U(0, 1) per sequence, tokens masked w.p. lambda, weight 1 / lambda."""
    return _dce("lambda_dce", model, x0, generator, sampling, eps, reduction, impl, draw, return_draw)


def t_dce(model, x0, generator=None, *, sampling="low_variance", eps=1e-3, reduction="mean", impl="auto",
          draw=None, return_draw=False):
    """t-DCE: t = (1 - eps) u + eps, tokens masked w.p. 1 - a(t) = (1 - eps) t, weight 1 / t."""
    return _dce("t_dce", model, x0, generator, sampling, eps, reduction, impl, draw, return_draw)


def ao_dce(model, x0, generator=None, *, sampling="low_variance", eps=1e-3, reduction="mean", impl="auto",
           draw=None, return_draw=False):
    """AO (k-DCE, any-order autoregressive): k ~ U{1..L}, exactly k positions masked, weight L / k."""
    return _dce("ao_dce", model, x0, generator, sampling, eps, reduction, impl, draw, return_draw)


def dse(model, x0, generator=None, *, sampling="low_variance", eps=1e-3, reduction="mean", impl="auto",
        draw=None, return_draw=False, chunk_rows: int = 4096):
    """Denoising score entropy of absorbing diffusion (SEDD's score_entropy) with the RADD score
    log s(x_t)_{i,y} = log(a/(1-a)) + log q(y | x_t), over the masked positions of a t-DCE draw:

        sbar'(t) * sum_i [ sum_y s_{i,y} - r log s_{i,x0_i} + r (log r - 1) ],   r = a(t) / (1 - a(t)).

    Because q sums to 1 the first and last terms cancel the log r part of the middle one, leaving
    sbar'(t) r (-log q(x0_i)): t-DCE. Kept in this explicit form as the reference's fourth loss; it
    materialises the logits of the masked positions (chunk_rows at a time, but autograd keeps each
    chunk's log-probabilities) and finds them with a host synchronisation, so train with t_dce.
    `impl` is accepted for a uniform signature and not used.
    """
    _check_x0(model, x0)
    if reduction not in ("mean", "none"):
        raise ValueError(f"radd_fast.losses: 'reduction' must be 'mean' or 'none', got {reduction!r}")
    B, L = x0.shape
    V = model.vocab_size
    sch = LogLinearSchedule(eps)
    if draw is None:
        draw = draw_masks("dse", B, L, generator=generator, device=x0.device, sampling=sampling, eps=eps)
    hidden = model.hidden(draw.noised(x0, V))
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    t = draw.level
    sbar = sch.sigma_bar(t).to(t.device)
    ratio = 1.0 / torch.expm1(sbar)  # a / (1 - a), float64
    dsigma = sch.dsigma_bar(t).to(t.device)
    b_idx, l_idx = draw.mask.nonzero(as_tuple=True)
    W = model.output_weight[:V].to(acc)
    bias = model.output_bias[:V].to(acc) if model.output_bias is not None else None
    per_seq = torch.zeros(B, dtype=acc, device=hidden.device)
    for s in range(0, b_idx.numel(), chunk_rows):
        bi, li = b_idx[s : s + chunk_rows], l_idx[s : s + chunk_rows]
        log_q = F.log_softmax(F.linear(hidden[bi, li].to(acc), W, bias), dim=-1)
        r = ratio[bi].to(acc)
        log_score = torch.log(r)[:, None] + log_q
        pos = log_score.exp().sum(-1)
        neg = r * log_score.gather(1, x0[bi, li][:, None]).squeeze(1)
        const = r * (torch.log(r) - 1)
        per_seq = per_seq.index_add(0, bi, dsigma[bi].to(acc) * (pos - neg + const))
    loss = per_seq.mean() if reduction == "mean" else per_seq
    return (loss, draw) if return_draw else loss


LOSSES = {"lambda_dce": lambda_dce, "t_dce": t_dce, "ao_dce": ao_dce, "k_dce": ao_dce, "ao": ao_dce, "dse": dse}


def get_loss(name: str):
    """The loss function called `name` (lambda_dce, t_dce, ao_dce (also k_dce, ao) or dse)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"radd_fast.losses: unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None
