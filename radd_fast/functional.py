"""The public ops. Each takes ``impl``:

* ``"auto"`` (default): the fastest measured implementation -- the compiled kernel when one exists
  for the input's device, else the reference implementation; except that ``masked_attention``
  hands plain bidirectional attention on CUDA (no padding, no order; bf16/fp16; head_dim 64 or
  128) to torch's scaled_dot_product_attention, whose FlashAttention-2 backend measured 2.0x
  faster forward and 2.8x backward than ours on an H200 (bench/RESULTS.md), with its cuDNN backend
  first on Hopper (``RADD_FAST_SDPA_BACKEND``, :func:`sdpa_backend`);
* ``"fused"``: the compiled kernel, or an error that says why it is unavailable and how to fix it;
* ``"reference"``: the pure-PyTorch oracle of radd_fast.reference.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import _checks, _extension, ops, reference

IMPLS = ("auto", "fused", "reference")


def use_fused(op: str, impl: str, device: torch.device) -> bool:
    """Resolve `impl` for `op` on `device`: True for the compiled kernel, False for the reference."""
    if impl not in IMPLS:
        raise ValueError(f"radd_fast.{op}: 'impl' must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl == "reference":
        return False
    why = _extension.kernel_unavailable_reason(op, device.type)
    if why is None:
        return True
    if impl == "fused":
        raise RuntimeError(why)
    return False


def rotary_tables(
    seq_len: int,
    head_dim: int,
    base: float = 10_000.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    inv_freq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (seq_len, head_dim // 2) for `rotary`; fp32 as in the reference network
    (use dtype=torch.float64 with float64 activations)."""
    seq_len = _checks.as_int(seq_len, "radd_fast.rotary_tables", "seq_len")
    head_dim = _checks.as_int(head_dim, "radd_fast.rotary_tables", "head_dim")
    base = _checks.as_real(base, "radd_fast.rotary_tables", "base")
    return reference.rotary_tables(seq_len, head_dim, base, device=device, dtype=dtype, inv_freq=inv_freq)


class _RotaryInplace(torch.autograd.Function):
    """In-place rotary that autograd can see through: the backward rotates the gradient back."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, inverse):
        ops.rotary_(qkv, cos, sin, inverse)
        ctx.mark_dirty(qkv)
        ctx.save_for_backward(cos, sin)
        ctx.inverse = inverse
        return qkv

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return ops.rotary(grad.contiguous(), cos, sin, not ctx.inverse), None, None, None


def rotary(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    inverse: bool = False,
    inplace: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    """Rotary position embedding of the q and k slices of a packed qkv tensor.

    Args:
        qkv: (B, L, 3, heads, head_dim), contiguous, float32/float64/bfloat16/float16 -- the
            output of a fused qkv Linear reshaped, with q, k, v at index 0, 1, 2 of dim 2.
        cos, sin: (>= L, head_dim // 2) tables from `rotary_tables` (float32; float64 for float64 qkv).
        inverse: rotate by the opposite angles (undoes the embedding).
        inplace: overwrite q and k in `qkv` (saves an allocation and the v copy); still differentiable.
        impl: "auto", "fused" or "reference" (module docstring).

    Returns:
        The rotated tensor (``qkv`` itself when ``inplace``); v is unchanged.
    """
    for t, name in ((qkv, "qkv"), (cos, "cos"), (sin, "sin")):
        _checks.check_tensor(t, "rotary", name)
    inverse = _checks.as_bool(inverse, "radd_fast.rotary", "inverse")
    inplace = _checks.as_bool(inplace, "radd_fast.rotary", "inplace")
    if not use_fused("rotary", impl, qkv.device):
        _checks.check_rotary(qkv, cos, sin, "rotary_" if inplace else "rotary")
        out = reference.rotary(qkv, cos, sin, inverse)
        if not inplace:
            return out
        return qkv.copy_(out)
    if not inplace:
        return ops.rotary(qkv, cos, sin, inverse)
    if torch.is_grad_enabled() and qkv.requires_grad:
        return _RotaryInplace.apply(qkv, cos, sin, inverse)
    ops.rotary_(qkv, cos, sin, inverse)
    return qkv



# ----------------------------------------------------------------------------------- masked attention
def masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    strict: bool = False,
    scale: float | None = None,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Softmax attention under a key-padding and an order mask, without an L x L tensor.

    Query i of batch b may attend key j iff ``key_padding_mask[b, j]`` (when given) and, when
    ``order`` is given, ``order[b, j] < order[b, i]`` or (``order[b, j] == order[b, i]`` and not
    ``strict``). One order tensor expresses bidirectional attention (all equal, or None), causal
    (order = position), any-order autoregression (a permutation), prefix-LM and block diffusion
    (block ids). A query with no allowed key outputs zeros and gets zero gradients, never NaN.

    Args:
        q, k, v: (B, L, heads, head_dim), same dtype (float32, float64, bfloat16, float16) and
            device, each contiguous in head_dim (other strides are free: the q/k/v slices of a packed
            (B, L, 3, heads, head_dim) qkv need no copy). On CUDA head_dim must be 32, 64 or 128.
        key_padding_mask: (B, L) bool, True for real keys; None means no padding.
        order: (B, L) int32/int64; None means bidirectional.
        strict: with ``order``, exclude keys of equal order (query i then never sees key i).
        scale: score multiplier; default 1 / sqrt(head_dim).
        impl: "auto", "fused" or "reference" (module docstring).

    Returns:
        (B, L, heads, head_dim) in q's dtype, accumulated in fp32 (fp64 for fp64 inputs). Under
        ``torch.autocast`` fp32 inputs run in the autocast dtype.
    """
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        _checks.check_tensor(t, "masked_attention", name)
    _checks.check_dim(q, 4, "masked_attention", "q", "(B, L, heads, head_dim)")
    for t, name in ((key_padding_mask, "key_padding_mask"), (order, "order")):
        if t is not None:
            _checks.check_tensor(t, "masked_attention", name)
    if impl not in IMPLS:
        raise ValueError(f"radd_fast.masked_attention: 'impl' must be one of {', '.join(IMPLS)}, got {impl!r}")
    strict = _checks.as_bool(strict, "radd_fast.masked_attention", "strict")
    if scale is not None:
        scale = _checks.as_real(scale, "radd_fast.masked_attention", "scale")
    else:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0
    scale = float(scale)
    # "auto" falls back to the reference for head dims the CUDA kernels are not compiled for;
    # "fused" raises the kernel's error instead.
    unsupported = q.device.type == "cuda" and q.shape[-1] not in (32, 64, 128)
    if unsupported and impl == "auto":
        impl = "reference"
    if impl == "auto" and sdpa_is_faster(q, key_padding_mask, order):
        _checks.check_masked_attention(q, k, v, key_padding_mask, order, scale, "masked_attention")
        return sdpa_bidirectional(q, k, v, scale)
    if not use_fused("masked_attention_fwd", impl, q.device):
        _checks.check_masked_attention(q, k, v, key_padding_mask, order, scale, "masked_attention")
        return reference.masked_attention(q, k, v, key_padding_mask, order, strict, scale)
    return ops.masked_attention_fwd(q, k, v, key_padding_mask, order, strict, scale)[0]


def sdpa_is_faster(q: torch.Tensor, key_padding_mask: torch.Tensor | None, order: torch.Tensor | None) -> bool:
    """Whether ``masked_attention(impl="auto")`` hands this call to torch's SDPA: the one case where
    it was measured faster than our kernel (H200, B 16, heads 12, L 1,024: forward 0.154 vs 0.302 ms
    at head_dim 64, 0.208 vs 0.522 ms at 128; backward 0.514 vs 1.425 and 0.746 vs 2.336 ms). Our
    kernel stays for every masked case (causal measured 1.25x faster than SDPA's) and on the CPU
    (1.14x faster than SDPA forward + backward)."""
    if q.device.type != "cuda" or key_padding_mask is not None or order is not None or q.shape[-1] not in (64, 128):
        return False
    dtype = q.dtype
    if dtype == torch.float32 and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
    return dtype in (torch.bfloat16, torch.float16)


def sdpa_bidirectional(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Unmasked attention of (B, L, heads, head_dim) inputs through torch's SDPA, on the backend
    order that :func:`sdpa_backend` chooses (no copy: SDPA reads the transposed views)."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    differentiated = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    cudnn = sdpa_backend(q.device.type, q.device.index, differentiated) == "cudnn"
    with sdpa_kernel(CUDNN_FIRST, set_priority=True) if cudnn else contextlib.nullcontext():
        out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, scale=scale)
    return out.transpose(1, 2)


SDPA_BACKENDS = ("auto", "cudnn", "torch")
# cuDNN first; where it declines a call (its own checks: cuDNN version, shape, layout) the next
# backend that accepts it runs, in torch's usual order.
CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_backend_choice(setting: str, capability: tuple[int, int], differentiated: bool = True) -> str:
    """``"cudnn"`` (SDPA with its cuDNN backend first) or ``"torch"`` (torch's own order, which puts
    FlashAttention-2 first) for a ``RADD_FAST_SDPA_BACKEND`` setting, on a GPU of this compute
    capability, for a call that autograd will differentiate or not. ``auto`` takes cuDNN on Hopper
    (9.x) for differentiated calls: there cuDNN measured 1.7-2.3x faster than torch's default for
    training shapes at the same accuracy, and slower on Ampere and Blackwell
    (huggingface/transformers#48163, six GPUs; our H200 figures: bench/RESULTS.md). Inference
    keeps torch's order: its forward-only gain is small, and the sampler's shrinking batches would
    each make cuDNN build and cache another execution plan on the host."""
    if setting not in SDPA_BACKENDS:
        raise ValueError(f"RADD_FAST_SDPA_BACKEND must be 'auto', 'cudnn' or 'torch', got {setting!r}")
    if setting == "auto":
        return "cudnn" if capability[0] == 9 and differentiated else "torch"
    return setting


@torch.compiler.assume_constant_result
def sdpa_backend(device_type: str, device_index: int | None, differentiated: bool = True) -> str:
    """:func:`sdpa_backend_choice` for the ``RADD_FAST_SDPA_BACKEND`` environment variable (default
    ``auto``) on this device (``auto`` off CUDA: torch's order). Under torch.compile it is read
    when a graph is traced (a constant of the graph, not a graph break)."""
    setting = os.environ.get("RADD_FAST_SDPA_BACKEND", "auto")
    on_cuda = device_type == "cuda" and setting == "auto"
    capability = torch.cuda.get_device_capability(device_index) if on_cuda else (0, 0)
    return sdpa_backend_choice(setting, capability, differentiated)


# ------------------------------------------------------------------------------------ linear_dce_loss
class _LinearDCESum(torch.autograd.Function):
    """reduction="sum" with gradients: the kernel computes loss and gradients in one sweep over the
    logits (3 matmuls per chunk instead of 4: no recomputation in the backward), which the backward
    only scales by the upstream gradient.

    The gradients are held on ctx (not save_for_backward) and scaled in place: handed to autograd
    with no other reference, they become .grad without a copy (one weight-sized buffer less at the
    peak). A second backward through the same graph (retain_graph=True, gradcheck) finds them given
    away and recomputes them from the saved inputs."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, row_weight, num_classes):
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]]
        loss, gh, gw, gb = ops.linear_dce_loss_grad(hidden, weight, bias, target, row_weight, num_classes, mask)
        ctx.grads = [gh, gw, gb]
        ctx.mask, ctx.num_classes = mask, num_classes
        ctx.save_for_backward(hidden, weight, bias, target, row_weight)
        return loss.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            hidden, weight, bias, target, row_weight = ctx.saved_tensors
            _, gh, gw, gb = ops.linear_dce_loss_grad(hidden, weight, bias, target, row_weight.to(grad.dtype) * grad,
                                                     ctx.num_classes, ctx.mask)
        else:
            gh, gw, gb = (g.mul_(grad) if m else None for g, m in zip(grads, ctx.mask))
        m = ctx.mask
        return gh if m[0] else None, gw if m[1] else None, gb if m[2] else None, None, None, None


def linear_dce_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    row_weight: torch.Tensor,
    num_classes: int | None = None,
    reduction: str = "sum",
    *,
    impl: str = "auto",
    validate: bool = False,
) -> torch.Tensor:
    """Weighted cross-entropy of a linear layer's logits, without materialising the logits.

    loss_r = row_weight[r] * (logsumexp_{c < num_classes}(h_r . W_c + b_c) - (h_r . W_t + b_t)), t = target[r].
    All four RADD losses are this op with different masks and weights (radd_fast.losses).

    Args:
        hidden: (N, D) -- the final LayerNorm's output, flattened; N >= 1; contiguous.
        weight: (C, D) with C >= num_classes, the dtype of hidden; contiguous.
        bias: (C,) or None.
        target: (N,) int64 in [0, num_classes).
        row_weight: (N,) float (any float dtype; used in the accumulation precision). Rows with weight
            0 cost nothing (no matmul work, no host synchronisation) and get loss 0 and zero gradients.
            It is a constant: no gradient flows to it.
        num_classes: number of real classes, default C - 1 (the last row of weight, the mask token,
            is never a class).
        reduction: "sum" (a scalar) or "none" (the (N,) per-row losses).
        impl: "auto", "fused" or "reference" (module docstring).
        validate: also check target range and row weight finiteness on CUDA (one host sync). The CPU
            kernel always checks them; the CUDA kernel does not read values on the host, and gives a
            NaN loss (and NaN gradients) for an active row with a bad target or weight instead.

    Returns:
        fp32 loss (fp64 for fp64 inputs). Under autocast, hidden/weight/bias are cast to the autocast
        dtype first, as torch's Linear would be; the loss stays fp32.
    """
    op = "linear_dce_loss"
    for t, name in ((hidden, "hidden"), (weight, "weight"), (target, "target"), (row_weight, "row_weight")):
        _checks.check_tensor(t, op, name)
    if bias is not None:
        _checks.check_tensor(bias, op, "bias")
    if reduction not in ("sum", "none"):
        raise ValueError(f"radd_fast.{op}: 'reduction' must be 'sum' or 'none', got {reduction!r}")
    validate = _checks.as_bool(validate, f"radd_fast.{op}", "validate")
    if num_classes is not None:
        num_classes = _checks.as_int(num_classes, f"radd_fast.{op}", "num_classes")
    else:
        num_classes = weight.shape[0] - 1 if weight.dim() == 2 else 0
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev) and hidden.dtype in (torch.float32, torch.float16, torch.bfloat16):
        dt = torch.get_autocast_dtype(dev)
        hidden, weight = hidden.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
    if not use_fused(op, impl, hidden.device):
        _checks.check_linear_dce(hidden, weight, bias, target, row_weight, num_classes)
        _checks.check_linear_dce_values(target, row_weight, num_classes)
        return reference.linear_dce_loss(hidden, weight, bias, target, row_weight, num_classes, reduction)
    if validate:
        _checks.check_linear_dce(hidden, weight, bias, target, row_weight, num_classes)
        _checks.check_linear_dce_values(target, row_weight, num_classes)
    if reduction == "none":
        return ops.linear_dce_loss(hidden, weight, bias, target, row_weight, num_classes)
    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    # float16: the logit gradients are rounded to fp16 before the gradient matmuls. Computed in the
    # forward they would carry no loss scale, and small softmax entries (w * p < 6e-8) would flush to
    # zero, which is what a GradScaler exists to prevent; so fp16 takes the backward-time path
    # (recomputes the logits, 4 matmuls instead of 3), whose logit gradients include the upstream
    # gradient -- and with it the loss scale -- before rounding, as torch's own fp16 backward does.
    if not needs_grad or hidden.dtype == torch.float16:
        return ops.linear_dce_loss(hidden, weight, bias, target, row_weight, num_classes).sum()
    return _LinearDCESum.apply(hidden, weight, bias, target, row_weight, num_classes)

# ------------------------------------------------------------------------------------------- sampler
def reveal_schedule(masked: torch.Tensor, step_cdf: torch.Tensor, seed: int = 0, offset: int = 0, *,
                    impl: str = "auto"):
    """Reveal steps of every masked position, drawn up front, and the sampler's round plan.

    Args:
        masked: (B, L) bool, True where a token is to be generated.
        step_cdf: (steps,) float64, P(reveal step <= k) (reference.reveal_step_cdf).
        seed, offset: Philox key and stream; the same (seed, offset) gives the same schedule on
            every device and implementation.

    Returns:
        (step (B, L) int32, -1 where not masked; num_events (B,) int32; perm (B,) int64, sequences
        by event count descending; row_index (B*L,) int64, masked positions of the perm-sorted
        batch as i * L + l in round order, -1 after them; round_offsets (min(steps, L) + 1,) int64).
        Round r reveals row_index[round_offsets[r]:round_offsets[r+1]] of the sequences perm[:A_r].
    """
    _checks.check_tensor(masked, "reveal_schedule", "masked")
    seed = reference.seed64(_checks.as_int(seed, "radd_fast.reveal_schedule", "seed"))
    offset = _checks.as_int(offset, "radd_fast.reveal_schedule", "offset")
    if not use_fused("reveal_schedule", impl, masked.device):
        _checks.check_reveal_schedule(masked, step_cdf, offset)
        return reference.reveal_schedule(masked, step_cdf, seed, offset)
    return ops.reveal_schedule(masked, step_cdf, seed, offset)


def sample_rows(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                num_classes: int | None = None, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, greedy: bool = False, seed: int = 0, offset: int = 0,
                impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token for each row of `hidden` from the output layer (weight, bias).

    Logits = hidden @ weight[:V].T + bias[:V] are computed for these rows only (V = num_classes,
    default weight rows - 1: the mask column is never a class), divided by `temperature`, filtered
    by top-k then top-p (as reference.filter_logits) and sampled by an exponential race on Philox
    noise keyed by (seed, offset, row): reproducible, no host synchronisation. `greedy` takes the
    argmax instead. hidden, weight and bias: float32 or float64, same dtype.

    Returns (tokens (N,) int64, log_prob (N,)): the log-probability of each token under the
    filtered, tempered distribution.
    """
    _checks.check_tensor(hidden, "sample_rows", "hidden")
    _checks.check_tensor(weight, "sample_rows", "weight")
    temperature, k, p = _filter_scalars("sample_rows", temperature, top_k, top_p)
    where = "radd_fast.sample_rows"
    greedy = _checks.as_bool(greedy, where, "greedy")
    seed, offset = reference.seed64(_checks.as_int(seed, where, "seed")), _checks.as_int(offset, where, "offset")
    V = weight.shape[0] - 1 if num_classes is None else _checks.as_int(num_classes, where, "num_classes")
    if not use_fused("sample_rows", impl, hidden.device):
        _checks.check_sample_rows(hidden, weight, bias, V, temperature, k, p, offset)
        return reference.sample_rows(hidden, weight, bias, V, temperature, k, p, greedy, seed, offset)
    return ops.sample_rows(hidden, weight, bias, V, temperature, k, p, greedy, seed, offset)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, *, impl: str = "auto") -> torch.Tensor:
    """logits / temperature where top-k then top-p keep them, -inf elsewhere (rows of a 2-D tensor),
    in the logits' dtype (float32 or float64); the sampler's filters, usable on their own."""
    _checks.check_tensor(logits, "filter_logits", "logits")
    temperature, k, p = _filter_scalars("filter_logits", temperature, top_k, top_p)
    if not use_fused("filter_logits", impl, logits.device):
        _checks.check_filter_logits(logits, temperature, k, p)
        return reference.filter_logits(logits, temperature, k or None, p).to(logits.dtype)
    return ops.filter_logits(logits, temperature, k, p)


def _filter_scalars(op: str, temperature, top_k, top_p) -> tuple[float, int, float]:
    """(temperature, top_k, top_p) as the kernels take them: top_k None -> 0 (off), top_p None -> 1."""
    where = f"radd_fast.{op}"
    temperature = _checks.as_real(temperature, where, "temperature")
    k = 0 if top_k is None else _checks.as_int(top_k, where, "top_k")
    p = 1.0 if top_p is None else _checks.as_real(top_p, where, "top_p")
    return temperature, k, p
