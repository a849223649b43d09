"""The RADD network (Ou et al., ICLR 2025) on radd_fast's fused ops.

Same parameters, names, shapes and initialisation as the reference network (radd-math.md), so its
checkpoints load without renaming: a pre-LN transformer with no time input and no absolute
positions -- rotary q/k, bidirectional attention, GELU(tanh) MLP, LayerNorms in fp32 with bias
initialised to 1, a zero-initialised output layer over V + 1 columns (the last is the mask token).

Besides ``forward(tokens) -> log-probs`` (the reference behaviour), it exposes what fast code needs:
``hidden`` (the final LayerNorm's output), ``logits`` for selected rows only, and ``output_weight``
/ ``output_bias`` for the fused loss, so training never materialises (B, L, V) logits.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import functional as RF
from ._checks import check_field_types


@dataclass
class RADDConfig:
    vocab_size: int = 50257  # V real tokens; embedding and output layer have V + 1 rows (mask id V)
    hidden_size: int = 768
    n_heads: int = 12
    n_blocks: int = 12
    max_length: int = 1024  # training/sampling length; rotary itself works at any length
    dropout: float = 0.02  # the reference recipe's training dropout
    mlp_ratio: int = 4
    rotary_base: float = 10_000.0
    tokenizer: str = "gpt2"  # "gpt2" or "bytes"

    def __post_init__(self):
        check_field_types(self, "RADDConfig")
        for name in ("vocab_size", "hidden_size", "n_heads", "n_blocks", "max_length", "mlp_ratio"):
            lo = 0 if name == "n_blocks" else 1  # no blocks: embedding, final norm and output layer only
            if getattr(self, name) < lo:
                raise ValueError(f"RADDConfig: {name} must be >= {lo}, got {getattr(self, name)}")
        if not self.rotary_base > 1.0:
            raise ValueError(f"RADDConfig: rotary_base must be > 1, got {self.rotary_base}")
        if self.hidden_size % self.n_heads:
            raise ValueError(f"RADDConfig: hidden_size {self.hidden_size} is not divisible by n_heads {self.n_heads}")
        if (self.hidden_size // self.n_heads) % 2:
            raise ValueError(f"RADDConfig: head dim {self.hidden_size // self.n_heads} must be even (rotary)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RADDConfig: dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, RADDConfig] = {
    # Byte-level model for the CPU demo: about 0.8 M parameters, 512 bytes (about 100 words) of context.
    "tiny": RADDConfig(vocab_size=256, hidden_size=128, n_heads=4, n_blocks=4, max_length=512, tokenizer="bytes"),
    # The GPT-2-scale models of the paper: 162,265,682 parameters for small with V = 50,257.
    "small": RADDConfig(hidden_size=768, n_heads=12, n_blocks=12),
    "medium": RADDConfig(hidden_size=1024, n_heads=16, n_blocks=24),
}


def preset(name: str, **overrides) -> RADDConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}: expected one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: torch.device | str, who: str) -> torch.dtype | None:
    """The autocast dtype of a run at `precision` ("auto": bf16 on CUDA, fp32 elsewhere), or None for
    fp32 (no autocast). bf16 / fp16 need a CUDA device. `who` prefixes the error messages."""
    if precision not in PRECISIONS:
        raise ValueError(f"{who}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "auto":
        precision = "bf16" if device_type == "cuda" else "fp32"
    if precision in ("bf16", "fp16") and device_type != "cuda":
        raise ValueError(f"{who}: precision {precision} needs a CUDA device; use fp32 on the {device_type.upper()}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


class LayerNorm(nn.Module):
    """LayerNorm computed in fp32 (fp64 for fp64 weights) whatever the autocast state; weight and
    bias both initialised to 1, as in the reference network."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = torch.promote_types(self.weight.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.layer_norm(x.to(acc), (self.dim,), self.weight.to(acc), self.bias.to(acc))


class EmbeddingLayer(nn.Module):
    def __init__(self, num: int, dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(num, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, self.embedding)


class Rotary(nn.Module):
    """Holds ``inv_freq`` (a state-dict buffer, as in the reference) and caches cos/sin tables."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.head_dim = head_dim
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim)))
        self._cache: dict = {}

    def tables(self, length: int, device: torch.device, activation_dtype: torch.dtype):
        # fp32 tables (fp64 for an fp64 model; bf16/fp16 activations under autocast use fp32 too):
        # the rotation is computed in that precision and rounded once.
        dtype = torch.float64 if activation_dtype == torch.float64 else torch.float32
        if torch.compiler.is_compiling():  # traced once into the graph; the cache is for eager mode
            return RF.rotary_tables(length, self.head_dim, device=device, dtype=dtype, inv_freq=self.inv_freq)
        key = (device, dtype, self.inv_freq.data_ptr(), self.inv_freq._version)
        hit = self._cache.get(key)
        if hit is None or hit[0].shape[0] < length:
            n = max(length, 1)
            hit = RF.rotary_tables(n, self.head_dim, device=device, dtype=dtype, inv_freq=self.inv_freq)
            self._cache = {key: hit}
        return hit


class Block(nn.Module):
    def __init__(self, cfg: RADDConfig):
        super().__init__()
        H = cfg.hidden_size
        self.n_heads, self.head_dim, self.p = cfg.n_heads, cfg.head_dim, cfg.dropout
        self.norm1 = LayerNorm(H)
        self.attn_qkv = nn.Linear(H, 3 * H, bias=False)
        self.attn_out = nn.Linear(H, H, bias=False)
        self.norm2 = LayerNorm(H)
        self.mlp = nn.Sequential(nn.Linear(H, cfg.mlp_ratio * H), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp_ratio * H, H))

    def forward(self, x, cos, sin, key_padding_mask, order, impl, rows=None):
        """x (B, L, H) -> (B, L, H); with `rows` (R,) flat indices into B * L, only those rows' outputs
        (R, H): everything after the attention (output projection, MLP) runs on them alone."""
        B, L, H = x.shape
        qkv = self.attn_qkv(self.norm1(x)).view(B, L, 3, self.n_heads, self.head_dim)
        qkv = RF.rotary(qkv, cos, sin, inplace=True, impl=impl)
        q, k, v = qkv.unbind(2)
        a = RF.masked_attention(q, k, v, key_padding_mask=key_padding_mask, order=order, impl=impl).reshape(B, L, H)
        if rows is not None:
            x, a = x.reshape(B * L, H).index_select(0, rows), a.reshape(B * L, H).index_select(0, rows)
        x = x + F.dropout(self.attn_out(a), self.p, self.training)
        return x + F.dropout(self.mlp(self.norm2(x)), self.p, self.training)


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.norm_final = LayerNorm(hidden)
        self.linear = nn.Linear(hidden, out)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)


class RADD(nn.Module):
    """The RADD network. ``impl`` ("auto" | "fused" | "reference") selects the ops' implementation."""

    def __init__(self, config: RADDConfig, impl: str = "auto"):
        super().__init__()
        if impl not in RF.IMPLS:
            raise ValueError(f"RADD: 'impl' must be one of {', '.join(RF.IMPLS)}, got {impl!r}")
        self.config, self.impl = config, impl
        self.vocab_embed = EmbeddingLayer(config.vocab_size + 1, config.hidden_size)
        self.rotary_emb = Rotary(config.head_dim, config.rotary_base)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_blocks))
        self.output_layer = FinalLayer(config.hidden_size, config.vocab_size + 1)
        self.activation_checkpointing = False  # set_activation_checkpointing

    # ---- the protocol radd_fast.losses and the samplers use
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def mask_id(self) -> int:
        return self.config.vocab_size

    @property
    def output_weight(self) -> torch.Tensor:
        return self.output_layer.linear.weight

    @property
    def output_bias(self) -> torch.Tensor:
        return self.output_layer.linear.bias

    def check_tokens(self, tokens: torch.Tensor, name: str = "tokens") -> None:
        """Raise a clear error for ids outside [0, V] (V = the mask id). Synchronises on CUDA."""
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            raise ValueError(f"RADD: '{name}' must be a (batch, length) tensor, got "
                             f"{getattr(tokens, 'shape', type(tokens).__name__)}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"RADD: '{name}' must be int64 or int32 token ids, got {tokens.dtype}")
        if tokens.numel() == 0:
            raise ValueError(f"RADD: '{name}' is empty (shape {list(tokens.shape)})")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi > self.mask_id:
            raise ValueError(f"RADD: '{name}' holds ids outside [0, {self.mask_id}] (vocabulary {self.vocab_size} "
                             f"+ mask id {self.mask_id}): min {lo}, max {hi}")

    def hidden(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
               order: torch.Tensor | None = None, check: bool = False,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        """The final LayerNorm's output (B, L, H), fp32 (fp64 for an fp64 model).

        `rows` (R,) int64, flat indices into B * L: only those rows, (R, H), equal to
        `hidden(tokens).reshape(-1, H)[rows]`. The last block then runs its output projection and
        MLP on those rows alone (its attention still sees every key): the sampler's rounds need a few
        rows per sequence, and skip 61 % of the last block's FLOPs (5 % of `small`'s forward).
        `check=True` validates the ids first (costs a host synchronisation on CUDA).
        """
        if check:
            self.check_tokens(tokens)
        x = self.vocab_embed(tokens)
        if rows is not None and not self.blocks:
            x = x.reshape(-1, x.shape[-1]).index_select(0, rows)
        cos, sin = self.rotary_emb.tables(tokens.shape[1], tokens.device, x.dtype)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            args = (x, cos, sin, key_padding_mask, order, self.impl, rows if i == last else None)
            if recompute:  # keeps only x; the dropout masks are redrawn identically (saved RNG state)
                x = checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)
        return self.output_layer.norm_final(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the V real tokens for hidden rows (..., H): compute them for the rows you
        need only (the mask column is dropped)."""
        V = self.vocab_size
        return F.linear(hidden, self.output_weight[:V], self.output_bias[:V])

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                order: torch.Tensor | None = None, return_hidden: bool = False,
                check: bool | None = None) -> torch.Tensor:
        """Log-probabilities (B, L, V) in fp32 -- the reference network's output -- or, with
        `return_hidden`, the hidden states (the path distributed training goes through).

        Token ids are validated by default on the CPU; on CUDA only with `check=True` (a host sync).
        """
        if check is None:
            check = tokens.device.type == "cpu" and not torch.compiler.is_compiling()
        h = self.hidden(tokens, key_padding_mask, order, check=check)
        if return_hidden:
            return h
        return torch.log_softmax(self.logits(h).float() if h.dtype != torch.float64 else self.logits(h), dim=-1)

    def compile_blocks(self, **kwargs) -> "RADD":
        """torch.compile each transformer block in place (regional compilation: the blocks share
        their code, so compiling them is about as quick as compiling one). Fuses the LayerNorms,
        GELU, dropout and residual adds around the matmuls; the fused ops stay single nodes of the
        graph (fake kernels, no graph breaks). State-dict keys are unchanged. kwargs go to
        torch.compile (e.g. mode="max-autotune")."""
        for block in self.blocks:
            block.compile(**kwargs)
        return self

    def set_activation_checkpointing(self, enabled: bool = True) -> "RADD":
        """Recompute each block's activations in the backward instead of keeping them (training
        mode, with autograd on): autograd then keeps each block's fp32 input, H x 4 bytes per token
        (3,072 at H = 768), instead of all its intermediates, 30,784 bytes per token for `small`
        under bf16 autocast on the CPU (tests/test_model.py measures both) -- at B 32 x L 1,024, 1.2 GB
        instead of 12.1 GB over its 12 blocks -- for about one more forward pass of time.
        Gradients are unchanged: torch.utils.checkpoint (non-reentrant) restores the RNG state, so
        dropout draws the same masks. Also with compile_blocks. Returns the model."""
        self.activation_checkpointing = bool(enabled)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- checkpoints (radd_fast.checkpoint holds the file formats)
    def save_pretrained(self, path, **kw):
        from .checkpoint import save_pretrained

        return save_pretrained(self, path, **kw)

    @classmethod
    def from_pretrained(cls, path, **kw) -> "RADD":
        from .checkpoint import load_pretrained

        return load_pretrained(path, **kw)
