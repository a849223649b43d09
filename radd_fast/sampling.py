"""Sampling from a RADD model: unconditional, or conditioned on given tokens (prompt, suffix, infill).

Today this runs the reference step-by-step cached sampler (radd_fast.reference.sample_cached);
the device-side sampler of the sampler issue will become the default here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import reference
from .checkpoint import EMA_WEIGHTS, load_pretrained
from .model import RADD
from .tokenizers import get_tokenizer


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


def check_sampling_args(steps: int, num_samples: int, length: int, temperature: float, top_k, top_p) -> None:
    if steps < 1:
        raise ValueError(f"sampling: 'steps' must be >= 1, got {steps}")
    if num_samples < 1:
        raise ValueError(f"sampling: 'num_samples' must be >= 1 (an empty batch has nothing to sample), got {num_samples}")
    if length < 1:
        raise ValueError(f"sampling: 'length' must be >= 1, got {length}")
    if not temperature > 0:
        raise ValueError(f"sampling: 'temperature' must be > 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"sampling: 'top_k' must be >= 0 (0 = off), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"sampling: 'top_p' must be in (0, 1], got {top_p}")


@torch.no_grad()
def sample(model: RADD, num_samples: int, length: int, steps: int, *, prompt: list[int] | torch.Tensor | None = None,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
           x_init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (num_samples, length) and network evaluations per sequence.

    `prompt` fixes the first tokens; `x_init` (num_samples, length) gives any pattern of fixed tokens
    (mask id = to generate) instead.
    """
    check_sampling_args(steps, num_samples, length, temperature, top_k, top_p)
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
    model.check_tokens(x_init, "x_init")
    g = torch.Generator(device=device).manual_seed(seed)
    fn = lambda x: model.logits(model.hidden(x))
    return reference.sample_cached(fn, x_init, steps, model.mask_id, temperature=temperature, top_k=top_k,
                                   top_p=top_p, generator=g)


def sample_text(ckpt, *, steps: int = 128, num_samples: int = 2, length: int | None = None, prompt: str | None = None,
                temperature: float = 1.0, top_k=None, top_p=None, seed: int = 0, device="auto", weights="auto",
                tokenizer_path=None) -> list[str]:
    model = load_for_inference(ckpt, device, weights)
    tok = get_tokenizer(model.config.tokenizer, tokenizer_path)
    length = length or model.config.max_length
    ids = tok.encode(prompt) if prompt else None
    if prompt is not None and not ids:
        raise ValueError("sampling: the prompt encodes to no tokens")
    x, _ = sample(model, num_samples, length, steps, prompt=ids, temperature=temperature, top_k=top_k, top_p=top_p,
                  seed=seed)
    return [tok.decode(row.tolist()) for row in x.cpu()]
