"""Likelihood evaluation: the Monte Carlo upper bound on -log p(x) of radd-math.md, per token, with
an honest standard error; and an exact any-order likelihood for comparison.

The bound of a chunk x0 is E_draw[w * sum_{masked i} -log q(x0_i | x_t)] for any of the four
losses. ``evaluate`` estimates it with K draws per chunk and reports the mean per token over all
chunks, exp of it (the perplexity bound) and the standard error of the Monte Carlo estimate (the
chunks are fixed; only the mask draws are random). Draws of one chunk are stratified among
themselves with ``sampling="low_variance"`` (the reference's lambda/t schemes with K strata), or
independent with ``sampling="uniform"``. The network runs on full batches of (chunk, draw) pairs.

Which loss: all four estimate the same bound (lambda-DCE and AO exactly, t-DCE/DSE up to the
schedule's eps), but lambda-DCE's weight 1/lambda on draws that mask one token gives it infinite
variance (E[w^2] diverges like the integral of 1/lambda near 0), so no standard error of it is
honest; AO's weights L/k are bounded by L. The default is therefore AO (``ao_dce``); the reference's
zero-shot table used lambda-DCE with 1,024 draws, which estimates the same number.

Standard error: with independent draws, the sample variance of a chunk's K estimates over K; with
stratified draws, the collapsed-strata estimator (adjacent strata paired:
Var(mean) ~ sum_j (e_2j - e_2j+1)^2 / K^2), which is conservative when the strata means differ.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import losses as L
from ._checks import as_int
from .benchmarks import benchmark_chunks
from .model import RADD
from .tokenizers import get_tokenizer

MODES = ("bound", "exact_order")


@dataclass
class EvalResult:
    dataset: str
    mode: str
    loss: str
    sampling: str
    mc_samples: int
    chunks: int
    length: int
    tokens: int
    nll_per_token: float  # the bound (or the exact any-order NLL), nats per token
    stderr: float  # Monte Carlo standard error of nll_per_token (nan when it cannot be estimated)
    perplexity: float  # exp(nll_per_token)
    perplexity_ci95: tuple[float, float]
    seconds: float
    tokens_per_second: float  # evaluated tokens (chunks x length x draws) per second

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _check(model, chunks: torch.Tensor, mc_samples: int, batch_size: int, loss: str, sampling: str):
    if not isinstance(chunks, torch.Tensor) or chunks.dim() != 2 or chunks.numel() == 0:
        raise ValueError(f"evaluate: 'chunks' must be a non-empty (n, length) tensor, got "
                         f"{list(getattr(chunks, 'shape', []))}")
    if mc_samples < 1:
        raise ValueError(f"evaluate: 'mc_samples' must be >= 1, got {mc_samples}")
    if batch_size < 1:
        raise ValueError(f"evaluate: 'batch_size' must be >= 1, got {batch_size}")
    L.get_loss(loss)
    if sampling not in L.SAMPLINGS:
        raise ValueError(f"evaluate: 'sampling' must be one of {', '.join(L.SAMPLINGS)}, got {sampling!r}")
    if int(chunks.min()) < 0 or int(chunks.max()) >= model.vocab_size:
        raise ValueError(f"evaluate: token ids must be in [0, {model.vocab_size}) (no mask tokens in the data)")


def _chunk_variance(e: torch.Tensor, sampling: str) -> torch.Tensor:
    """Variance of the mean of each row of e (n, K) over the mask draws."""
    K = e.shape[1]
    if K < 2:
        return torch.full((e.shape[0],), float("nan"), dtype=torch.float64)
    if sampling == "uniform":
        return e.var(dim=1, unbiased=True) / K
    pairs = e[:, : K - K % 2].view(e.shape[0], -1, 2)
    v = ((pairs[..., 0] - pairs[..., 1]) ** 2).sum(1) / K**2
    if K % 2:  # the odd stratum out: count it with the pairs' average per-stratum variance
        v = v * K / (K - 1)
    return v


@torch.no_grad()
def bound_estimates(model, chunks: torch.Tensor, *, loss: str = "ao_dce", mc_samples: int = 8,
                    batch_size: int = 32, sampling: str = "low_variance", seed: int = 0, eps: float = 1e-3,
                    impl: str = "auto", progress: bool = False, autocast_dtype=None) -> torch.Tensor:
    """(n_chunks, mc_samples) per-chunk estimates of the bound (nats per chunk), batched so the
    network always sees `batch_size` sequences (the last batch excepted)."""
    _check(model, chunks, mc_samples, batch_size, loss, sampling)
    fn = L.get_loss(loss)
    kind = fn.__name__  # aliases ("ao", "k_dce") resolve to the function's own name
    device = model.output_weight.device
    chunks = chunks.to(device)
    n, length = chunks.shape
    g = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty(n, mc_samples, dtype=torch.float64)
    pending: list[tuple[int, int, L.MaskDraw]] = []  # (chunk, first draw, draws of that chunk) not run yet
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n * mc_samples, desc="eval", unit="seq", dynamic_ncols=True)

    def run(items):
        idx = torch.tensor([c for c, _, d in items for _ in range(d.mask.shape[0])], device=device)
        draw = L.MaskDraw(torch.cat([d.mask for _, _, d in items]), torch.cat([d.weight for _, _, d in items]),
                          torch.cat([d.level for _, _, d in items]), kind)
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(device.type, enabled=False)
        with ctx:
            e = fn(model, chunks[idx], draw=draw, reduction="none", impl=impl).double().cpu()
        pos = 0
        for c, k0, d in items:
            m = d.mask.shape[0]
            out[c, k0 : k0 + m] = e[pos : pos + m]
            pos += m
        if bar is not None:
            bar.update(len(idx))

    for c in range(n):
        # All K draws of a chunk at once: the stratification is over the chunk's own draws.
        d = L.draw_masks(kind, mc_samples, length, generator=g, device=device, sampling=sampling, eps=eps)
        k = 0
        while k < mc_samples:
            room = batch_size - sum(x[2].mask.shape[0] for x in pending)
            take = min(room, mc_samples - k)
            part = L.MaskDraw(d.mask[k : k + take], d.weight[k : k + take], d.level[k : k + take], kind)
            pending.append((c, k, part))
            k += take
            if take == room:
                run(pending)
                pending = []
    if pending:
        run(pending)
    if bar is not None:
        bar.close()
    return out


@torch.no_grad()
def exact_order_nll(model, chunks: torch.Tensor, *, order: torch.Tensor | None = None, batch_size: int = 32,
                    seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Exact -log p(x) of each chunk (n,) under the any-order autoregressive factorisation of the
    network in a given (n, length) or random order: step k masks the positions that come at or after
    k in the order and scores the k-th one, so L network calls per sequence, one token each.

    The attention op's order mask cannot shortcut this for RADD's network: its masked positions
    attend to each other (bidirectional attention), so the L inputs differ in more than what an
    order mask hides and must be evaluated as they are. The calls are batched across steps instead.
    """
    device = model.output_weight.device
    chunks = chunks.to(device)
    n, length = chunks.shape
    if order is None:
        g = torch.Generator().manual_seed(seed)
        order = torch.stack([torch.randperm(length, generator=g) for _ in range(n)])
    order = order.to(device)
    if order.shape != chunks.shape or not torch.equal(order.sort(1).values, torch.arange(length, device=device).expand(n, -1)):
        raise ValueError("exact_order_nll: 'order' must hold a permutation of 0..length-1 per chunk")
    rank = torch.argsort(order, dim=1)  # rank[c, k] = the position scored at step k
    nll = torch.zeros(n, dtype=torch.float64)
    items = [(c, k) for c in range(n) for k in range(length)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="exact-order eval", unit="call", dynamic_ncols=True)
    for s in range(0, len(items), batch_size):
        batch = items[s : s + batch_size]
        c = torch.tensor([i for i, _ in batch], device=device)
        k = torch.tensor([j for _, j in batch], device=device)
        x = chunks[c].clone()
        x[order[c] >= k[:, None]] = model.mask_id  # positions scored at step k or later are masked
        pos = rank[c, k]
        h = model.hidden(x)[torch.arange(len(batch), device=device), pos]
        logp = torch.log_softmax(model.logits(h).double(), dim=-1)
        nll.index_add_(0, c.cpu(), -logp.gather(1, chunks[c, pos][:, None]).squeeze(1).cpu())
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return nll


def summarize(dataset: str, mode: str, loss: str, sampling: str, estimates: torch.Tensor, length: int,
              seconds: float) -> EvalResult:
    n, K = estimates.shape
    tokens = n * length
    var = _chunk_variance(estimates, sampling) if mode == "bound" else torch.zeros(n, dtype=torch.float64)
    nll = float(estimates.mean(1).sum() / tokens)
    se = float(var.sum().sqrt() / tokens)
    lo, hi = (math.exp(nll - 1.96 * se), math.exp(nll + 1.96 * se)) if math.isfinite(se) else (float("nan"),) * 2
    return EvalResult(dataset=dataset, mode=mode, loss=loss, sampling=sampling, mc_samples=K, chunks=n, length=length,
                      tokens=tokens, nll_per_token=nll, stderr=se, perplexity=math.exp(nll), perplexity_ci95=(lo, hi),
                      seconds=seconds, tokens_per_second=tokens * K / max(seconds, 1e-9))


def evaluate(model: RADD, data: str | torch.Tensor = "wikitext2", *, mode: str = "bound", loss: str = "ao_dce",
             mc_samples: int = 8, batch_size: int = 32, length: int | None = None, sampling: str = "low_variance",
             seed: int = 0, max_chunks: int | None = None, data_dir=None, tokenizer=None, tokenizer_path=None,
             impl: str = "auto", progress: bool = True, autocast_dtype=None) -> EvalResult:
    """Evaluate `model` on a benchmark name (lambada, wikitext2, wikitext103, ptb, lm1b), a
    .txt/.jsonl path, or a prepared (n, length) tensor of chunks."""
    if mode not in MODES:
        raise ValueError(f"evaluate: 'mode' must be one of {', '.join(MODES)}, got {mode!r}")
    as_int(mc_samples, "evaluate", "mc_samples", lo=1)
    as_int(batch_size, "evaluate", "batch_size", lo=1)
    as_int(seed, "evaluate", "seed")
    if length is not None:
        as_int(length, "evaluate", "length")
    if max_chunks is not None:
        as_int(max_chunks, "evaluate", "max_chunks", lo=1)
    length = length or model.config.max_length
    if length < 1 or length > model.config.max_length:
        raise ValueError(f"evaluate: 'length' must be in [1, {model.config.max_length}] (the model's length), got {length}")
    if isinstance(data, torch.Tensor):
        chunks, name = data, "tensor"
    else:
        tok = tokenizer or get_tokenizer(model.config.tokenizer, tokenizer_path)
        chunks, name = benchmark_chunks(data, tok, length, data_dir), Path(str(data)).name
    if max_chunks is not None:
        chunks = chunks[:max_chunks]
    model.eval()
    t0 = time.time()
    if mode == "bound":
        est = bound_estimates(model, chunks, loss=loss, mc_samples=mc_samples, batch_size=batch_size,
                              sampling=sampling, seed=seed, impl=impl, progress=progress, autocast_dtype=autocast_dtype)
    else:
        est = exact_order_nll(model, chunks, batch_size=batch_size, seed=seed, progress=progress)[:, None]
    return summarize(name, mode, loss, sampling, est, chunks.shape[1], time.time() - t0)
