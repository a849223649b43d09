"""Sampling from a RADD model: unconditional, or conditioned on given tokens (prompt, suffix, infill).

Three methods, one process (radd-math.md, "Sampling"):

* ``"cached"`` (default) -- the device-side cache-aware sampler. The reveal step of every masked
  position is drawn up front (radd_fast.functional.reveal_schedule); a sequence's *events* are its
  distinct reveal steps. Round r runs the network once on the sequences that still have an r-th
  event (a prefix of the batch sorted by event count), computes output logits only for the rows
  revealed in that event (a model whose ``hidden`` takes ``rows`` -- RADD -- also runs its last
  block's projection and MLP on those rows alone) and samples them on the device
  (radd_fast.functional.sample_rows). Host synchronisations: the prompt's token check and the
  schedule's round sizes before the loop, none inside it; network evaluations per sequence = its
  number of events (E-NFE = n (1 - (1 - 1/n)^L)), and no work at all for steps that reveal nothing.
* ``"confidence"`` -- the same rounds and the same number of tokens revealed per sequence per
  round, but the revealed positions are the masked ones the model is most sure of (highest
  probability of the token sampled there), MaskGIT/LLaDA style. Not RADD's distribution.
* ``"reference"`` -- radd_fast.reference.sample_cached, the step-by-step oracle.

The model only needs the protocol of radd_fast.model.RADD: ``hidden(tokens)`` (optionally with a
``rows`` keyword), ``logits(h)``, ``output_weight`` / ``output_bias`` (V + 1 rows), ``vocab_size``
and ``mask_id`` (radd_fast.testing has an attention-free example).
"""

from __future__ import annotations

import bisect
import contextlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from . import functional as RF
from . import reference
from ._checks import as_int, as_real
from .checkpoint import EMA_WEIGHTS, load_pretrained
from .model import RADD, autocast_dtype
from .tokenizers import get_tokenizer

METHODS = ("cached", "confidence", "reference")


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_for_inference(ckpt: str | Path, device="auto", weights: str = "auto", impl: str = "auto") -> RADD:
    """A model in eval mode from a model folder or training checkpoint (EMA weights when present)."""
    folder = Path(ckpt)
    if weights == "auto":
        weights = "ema" if (folder / EMA_WEIGHTS).exists() else "model"
    model = load_pretrained(folder, device=resolve_device(device), weights=weights, impl=impl)
    return model.eval()


def check_sampling_args(steps: int, num_samples: int, length: int, temperature: float, top_k, top_p,
                        method: str = "cached", greedy: bool = False) -> None:
    if method not in METHODS:
        raise ValueError(f"sampling: 'method' must be one of {', '.join(METHODS)}, got {method!r}")
    for value, name in ((steps, "steps"), (num_samples, "num_samples"), (length, "length")):
        as_int(value, "sampling", name)
    if top_k is not None:
        as_int(top_k, "sampling", "top_k")
    as_real(temperature, "sampling", "temperature")
    if top_p is not None:
        as_real(top_p, "sampling", "top_p")
    if steps < 1:
        raise ValueError(f"sampling: 'steps' must be >= 1, got {steps}")
    if num_samples < 1:
        raise ValueError(f"sampling: 'num_samples' must be >= 1 (an empty batch has nothing to sample), got {num_samples}")
    if length < 1:
        raise ValueError(f"sampling: 'length' must be >= 1, got {length}")
    if not isinstance(greedy, bool):
        raise TypeError(f"sampling: 'greedy' must be True or False, got {greedy!r}")
    if not temperature > 0:
        raise ValueError(f"sampling: 'temperature' must be > 0 (for argmax decoding pass greedy=True), got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"sampling: 'top_k' must be >= 0 (0 = off), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"sampling: 'top_p' must be in (0, 1], got {top_p}")


def _check_tokens(model, x: torch.Tensor, name: str) -> None:
    if hasattr(model, "check_tokens"):
        model.check_tokens(x, name)
        return
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"sampling: '{name}' must be a (batch, length) tensor of int64 token ids")
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > model.mask_id:
        raise ValueError(f"sampling: '{name}' holds ids outside [0, {model.mask_id}] (mask id {model.mask_id}): "
                         f"min {lo}, max {hi}")


@dataclass
class RevealPlan:
    """The reveal schedule of a batch and what the loop needs from it on the host."""

    x: torch.Tensor  # (B, L) the tokens, batch in perm order: the loop writes into it
    perm: torch.Tensor  # (B,) sequence of each sorted row
    step: torch.Tensor  # (B, L) int32 reveal step per position (original order), -1 where given
    num_events: torch.Tensor  # (B,) int64 network evaluations per sequence (original order)
    row_index: torch.Tensor  # (B * L,) rows of the sorted batch in round order (see reveal_schedule)
    round_offsets: list[int]  # host copy: round r's rows are row_index[off[r]:off[r+1]]
    active: list[int]  # host: A_r, sequences evaluated in round r (a prefix of the sorted batch)

    @property
    def rounds(self) -> int:
        return len(self.active)

    def round_rows(self, r: int) -> torch.Tensor:
        return self.row_index[self.round_offsets[r]: self.round_offsets[r + 1]]


def plan_reveals(x_init: torch.Tensor, mask_id: int, steps: int, *, seed: int = 0,
                 schedule: reference.LogLinearSchedule | None = None, delta: float = 1e-5,
                 impl: str = "auto") -> RevealPlan:
    """Draw the reveal schedule of every position of x_init equal to mask_id (Philox stream 0 of
    `seed`) and copy the round sizes to the host: the sampler's one host synchronisation.

    A plan is used by one run (run_cached or run_confidence write their tokens into plan.x)."""
    B, L = x_init.shape
    cdf = reference.reveal_step_cdf(steps, schedule, delta).to(x_init.device)
    step, num_events, perm, row_index, offsets = RF.reveal_schedule(
        (x_init == mask_id).contiguous(), cdf, seed, 0, impl=impl)
    host = torch.cat((num_events.index_select(0, perm).long(), offsets)).tolist()
    sorted_events, offsets = host[:B], host[B:]
    # A_r = #{sequences with more than r events}; sorted_events is descending.
    desc = [-e for e in sorted_events]
    active = [bisect.bisect_left(desc, -r) for r in range(sorted_events[0] if B else 0)]
    return RevealPlan(x=x_init.index_select(0, perm), perm=perm, step=step, num_events=num_events.long(),
                      row_index=row_index, round_offsets=offsets, active=active)


def _head(model, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output layer in the hidden states' dtype, cast once per sampling run."""
    w = model.output_weight.detach().to(dtype).contiguous()
    b = model.output_bias
    return w, None if b is None else b.detach().to(dtype).contiguous()


# The row sampler, looked up at call time so that tests can count the rows given to the head.
_sample_rows = RF.sample_rows


def _rounds(plan: RevealPlan, progress: bool, desc: str):
    """plan.active, through a tqdm bar of rounds when `progress`."""
    if not progress:
        return plan.active
    from tqdm.auto import tqdm

    return tqdm(plan.active, desc=desc, unit="round", dynamic_ncols=True)


def _hidden_rows(model):
    """(tokens (A, L), rows (R,) flat indices) -> the hidden states of those rows (R, H): through
    `model.hidden(tokens, rows=rows)` where the model takes `rows` (RADD: its last block then works
    on those rows alone), else by selecting them from `model.hidden(tokens)`. bf16 / fp16 states (a
    model ending in a matmul under autocast) come back in fp32: the head's logits are fp32 or fp64."""
    if "rows" in inspect.signature(model.hidden).parameters:
        def get(tokens, rows):
            return model.hidden(tokens, rows=rows)
    else:
        def get(tokens, rows):
            h = model.hidden(tokens)
            return h.reshape(-1, h.shape[-1]).index_select(0, rows)

    def hidden_rows(tokens, rows):
        h = get(tokens, rows)
        return h.float() if h.dtype in (torch.bfloat16, torch.float16) else h

    return hidden_rows


def _restore_order(plan: RevealPlan) -> torch.Tensor:
    out = torch.empty_like(plan.x)
    return out.index_copy_(0, plan.perm, plan.x)


@torch.no_grad()
def run_cached(model, plan: RevealPlan, *, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, greedy: bool = False, seed: int = 0, impl: str = "auto",
               progress: bool = False) -> torch.Tensor:
    """The loop of the cached sampler on a plan: round r evaluates plan.active[r] sequences and samples
    only the rows revealed in round r (Philox stream r + 1). No host synchronisation (the progress
    bar counts rounds as they are queued). Returns the tokens in the original batch order."""
    x = plan.x
    flat = x.view(-1)
    V = model.vocab_size
    head = None
    hidden_rows = _hidden_rows(model)
    for r, A in enumerate(_rounds(plan, progress, "sample")):
        rows = plan.round_rows(r)
        h = hidden_rows(x[:A], rows)
        if head is None:
            head = _head(model, h.dtype)
        tokens, _ = _sample_rows(h, head[0], head[1], V, temperature=temperature, top_k=top_k, top_p=top_p,
                                 greedy=greedy, seed=seed, offset=r + 1, impl=impl)
        flat.index_copy_(0, rows, tokens.to(flat.dtype))
    return _restore_order(plan)


@torch.no_grad()
def run_confidence(model, plan: RevealPlan, *, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, greedy: bool = False, seed: int = 0,
                   impl: str = "auto", progress: bool = False) -> torch.Tensor:
    """Confidence-ordered decoding on the rounds of a plan: in round r every masked position of the
    active sequences gets a token, and each sequence keeps the c of them with the highest
    log-probability, c = its number of rows in round r of the plan. No host synchronisation."""
    x = plan.x
    B, L = x.shape
    V = model.vocab_size
    total = plan.round_offsets[-1]
    head = None
    hidden_rows = _hidden_rows(model)
    for r, A in enumerate(_rounds(plan, progress, "sample (confidence)")):
        xa = x[:A]
        # Every masked position left belongs to an active sequence: their number is known on the host.
        left = total - plan.round_offsets[r]
        masked = (xa == model.mask_id).view(-1)
        cand = torch.argsort((~masked).to(torch.uint8), stable=True)[:left]
        h = hidden_rows(xa, cand)
        if head is None:
            head = _head(model, h.dtype)
        tokens, log_prob = _sample_rows(h, head[0], head[1], V,
                                        temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, seed=seed,
                                        offset=r + 1, impl=impl)
        conf = torch.full((A * L,), float("-inf"), dtype=log_prob.dtype, device=x.device)
        conf.index_copy_(0, cand, log_prob)
        rows = plan.round_rows(r)
        count = torch.zeros(A, dtype=torch.int64, device=x.device).index_add_(
            0, rows // L, torch.ones_like(rows))
        order = torch.argsort(conf.view(A, L), dim=1, descending=True, stable=True)
        chosen = torch.zeros(A, L, dtype=torch.bool, device=x.device).scatter_(
            1, order, torch.arange(L, device=x.device)[None, :] < count[:, None])
        proposal = xa.reshape(-1).clone().index_copy_(0, cand, tokens.to(x.dtype)).view(A, L)
        xa.copy_(torch.where(chosen, proposal, xa))
    return _restore_order(plan)


@torch.no_grad()
def sample(model, num_samples: int, length: int, steps: int, *, prompt: list[int] | torch.Tensor | None = None,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, greedy: bool = False,
           seed: int = 0, x_init: torch.Tensor | None = None, method: str = "cached",
           schedule: reference.LogLinearSchedule | None = None, delta: float = 1e-5,
           impl: str = "auto", progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (num_samples, length) and network evaluations per sequence.

    `prompt` fixes the first tokens; `x_init` (num_samples, length) gives any pattern of fixed tokens
    (mask id = to generate) instead: prefix, suffix or infill. Given tokens are never masked, never
    scheduled and never changed. `greedy` decodes each revealed token by argmax (the reveal schedule
    stays random); temperature must be > 0. The same seed gives the same samples (on one device
    type; CPU and CUDA agree except where float rounding flips a near-tie). `method`: "cached"
    (default), "confidence" or "reference" (module docstring); "reference" draws from torch's
    generator, so its samples differ from the other two for the same seed, and it treats greedy as
    top_k = 1. `progress` shows a bar of the network rounds ("cached" and "confidence").
    """
    check_sampling_args(steps, num_samples, length, temperature, top_k, top_p, method, greedy)
    as_int(seed, "sampling", "seed")
    device = model.output_weight.device
    if x_init is None:
        x_init = torch.full((num_samples, length), model.mask_id, dtype=torch.long, device=device)
        if prompt is not None:
            p = torch.as_tensor(prompt, dtype=torch.long, device=device)
            if p.dim() != 1:
                raise ValueError(f"sampling: 'prompt' must be a 1-D list of token ids, got shape {list(p.shape)}")
            if len(p) >= length:
                raise ValueError(f"sampling: the prompt ({len(p)} tokens) must be shorter than 'length' ({length})")
            x_init[:, : len(p)] = p
    else:
        if prompt is not None:
            raise ValueError("sampling: give either 'prompt' or 'x_init', not both")
        if not isinstance(x_init, torch.Tensor) or tuple(x_init.shape) != (num_samples, length):
            raise ValueError(f"sampling: 'x_init' must have shape (num_samples, length) = ({num_samples}, {length}), "
                             f"got {list(getattr(x_init, 'shape', []))}")
        x_init = x_init.to(device=device, dtype=torch.long)
    _check_tokens(model, x_init, "x_init")
    if method == "reference":
        g = torch.Generator(device=device).manual_seed(seed)
        fn = lambda x: model.logits(model.hidden(x))  # noqa: E731
        return reference.sample_cached(fn, x_init, steps, model.mask_id, schedule=schedule, delta=delta,
                                       temperature=temperature, top_k=1 if greedy else top_k, top_p=top_p,
                                       generator=g)
    plan = plan_reveals(x_init, model.mask_id, steps, seed=seed, schedule=schedule, delta=delta, impl=impl)
    run = run_cached if method == "cached" else run_confidence
    x = run(model, plan, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, seed=seed, impl=impl,
            progress=progress)
    return x, plan.num_events


def sample_records(ckpt, *, steps: int = 128, num_samples: int = 2, length: int | None = None,
                   prompt: str | None = None, temperature: float = 1.0, top_k=None, top_p=None, seed: int = 0,
                   device="auto", weights="auto", tokenizer_path=None, method: str = "cached", greedy: bool = False,
                   precision: str = "auto", batch_size: int | None = None, progress: bool = False) -> list[dict]:
    """Samples from a checkpoint folder, one dict each: {"sample", "text", "tokens", "nfe"} (nfe: the
    sequence's network evaluations). `precision`: "auto" (bf16 autocast on CUDA, fp32 on the CPU),
    "fp32", "bf16" or "fp16" for the network; the output rows' logits and the sampling noise are
    fp32 whatever the autocast (the final LayerNorm's output is fp32). `batch_size` bounds the
    sequences sampled at once (default: all); batch j uses seed `seed + j`, so samples are
    reproducible for a given seed and batch size."""
    if batch_size is not None:
        as_int(batch_size, "sampling", "batch_size", lo=1)
    as_int(seed, "sampling", "seed")
    model = load_for_inference(ckpt, device, weights)
    dev = model.output_weight.device
    amp = autocast_dtype(precision, dev, "sampling")
    tok = get_tokenizer(model.config.tokenizer, tokenizer_path)
    length = length or model.config.max_length
    ids = tok.encode(prompt) if prompt else None
    if prompt is not None and not ids:
        raise ValueError("sampling: the prompt encodes to no tokens")
    check_sampling_args(steps, num_samples, length, temperature, top_k, top_p, method, greedy)
    size = batch_size or num_samples
    records = []
    for j, start in enumerate(range(0, num_samples, size)):
        n = min(size, num_samples - start)
        with torch.autocast(dev.type, dtype=amp) if amp else contextlib.nullcontext():
            x, nfe = sample(model, n, length, steps, prompt=ids, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed + j, method=method, greedy=greedy, progress=progress)
        records += [{"sample": start + i, "text": tok.decode(row), "tokens": row, "nfe": e}
                    for i, (row, e) in enumerate(zip(x.cpu().tolist(), nfe.tolist()))]
    return records


def sample_text(ckpt, **kw) -> list[str]:
    """The decoded texts of sample_records(ckpt, **kw)."""
    return [r["text"] for r in sample_records(ckpt, **kw)]
