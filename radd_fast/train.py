"""Training: one process or many (torchrun + DDP: gloo on CPU, NCCL on GPU).

``train(TrainConfig(...))`` or ``radd-fast train ...``. Any of the four RADD losses; AdamW with
linear warm-up then cosine or constant learning rate; gradient clipping and accumulation; EMA
weights; bf16/fp16 autocast on CUDA (a grad scaler for fp16), fp32 on CPU; a tqdm bar with loss
and tokens/s; metrics appended to ``<out>/metrics.jsonl``; periodic validation; atomic checkpoints
with everything needed for a bit-identical resume (``resume=True`` picks the newest valid one).
A step whose loss or gradient is not finite is skipped (parameters and EMA untouched), logged, and
counted; after ``max_bad_steps`` of them training stops with an error. A script that ran DDP
should end with ``exit_process()`` (see there for why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from . import losses as L
from .checkpoint import list_checkpoints, latest_valid_checkpoint, load_training_checkpoint, save_training_checkpoint
from .data import WindowSampler, chunks, prepare_corpus
from ._checks import check_field_types
from .io import atomic_write, remove_stale_temps
from .model import PRECISIONS, RADD, autocast_dtype, preset
from .tokenizers import get_tokenizer


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    model: str = "tiny"  # preset name (radd_fast.model.PRESETS)
    model_overrides: dict = field(default_factory=dict)  # e.g. {"n_blocks": 2}
    data: str = "stdlib"  # "stdlib" (embedded corpus) or a .txt/.jsonl file or folder
    tokenizer_path: str | None = None  # folder of GPT-2's encoder.json/vocab.bpe (gpt2 models)
    cache_dir: str | None = None  # tokenised corpus cache (default ~/.cache/radd_fast)
    length: int | None = None  # window length; default the model's max_length
    batch_size: int = 16  # sequences per process per micro-step
    grad_accum: int = 1
    steps: int = 1000
    max_minutes: float | None = None  # stop (and save) once this much wall time has passed
    stop_at: int | None = None  # stop (and save) at this step, e.g. to split a run into jobs
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup: int = 100
    schedule: str = "cosine"  # "cosine" (down to min_lr_ratio * lr) or "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema: float = 0.9999
    loss: str = "lambda_dce"  # lambda_dce | t_dce | ao | dse
    sampling: str = "low_variance"  # or "uniform"
    precision: str = "auto"  # auto (fp32 on CPU, bf16 on CUDA) | fp32 | bf16 | fp16
    eval_every: int = 200
    eval_batches: int = 4
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    impl: str = "auto"
    compile: bool = False  # torch.compile each transformer block (RADD.compile_blocks)
    activation_checkpointing: bool = False  # recompute block activations in the backward (a tenth the memory)
    resume: bool = False
    progress: bool = True
    max_bad_steps: int = 10

    def __post_init__(self):
        check_field_types(self, "TrainConfig")
        checks = [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.steps >= 1, "steps must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.warmup >= 0, "warmup must be >= 0"),
            (self.schedule in ("cosine", "constant"), "schedule must be 'cosine' or 'constant'"),
            (0.0 <= self.ema < 1.0, "ema must be in [0, 1)"),
            (self.loss in L.LOSSES, f"loss must be one of {', '.join(L.LOSSES)}"),
            (self.sampling in ("low_variance", "uniform"), "sampling must be 'low_variance' or 'uniform'"),
            (self.precision in PRECISIONS, "precision must be auto, fp32, bf16 or fp16"),
            (self.length is None or self.length >= 1, "length must be >= 1"),
            (self.max_bad_steps >= 0, "max_bad_steps must be >= 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]"),
            (self.grad_clip > 0, "grad_clip must be > 0 (a clip of 0 zeroes every gradient)"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.eval_every >= 0, "eval_every must be >= 0 (0: no validation)"),
            (self.eval_batches >= 1, "eval_batches must be >= 1"),
            (self.save_every >= 0, "save_every must be >= 0 (0: only at the end)"),
            (self.keep_checkpoints >= 0, "keep_checkpoints must be >= 0 (0: keep all)"),
            (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be > 0"),
            (self.stop_at is None or self.stop_at >= 1, "stop_at must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine decay to min_lr_ratio * lr."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(cfg.steps - cfg.warmup, 1)
    progress = min(max(step - cfg.warmup, 0) / span, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class _ThroughDDP:
    """The loss protocol (hidden / output_weight / output_bias / vocab_size) routed through DDP's
    forward, so DDP sees a forward pass before every backward."""

    def __init__(self, ddp):
        self._ddp, self._m = ddp, ddp.module

    def hidden(self, tokens, **kw):
        return self._ddp(tokens, return_hidden=True, check=False, **kw)

    def __getattr__(self, name):  # vocab_size, mask_id, output_weight, output_bias, logits, ...
        return getattr(self._m, name)


def _on_rank0(rank: int, distributed: bool, fn):
    """fn() evaluated on rank 0 and broadcast, so every rank takes the same branch."""
    value = [fn() if rank == 0 else None]
    if distributed:
        dist.broadcast_object_list(value, src=0)
    return value[0]


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


@torch.no_grad()
def ema_update(ema: dict, current: dict, param_names: set, weight: float) -> None:
    """ema[k] += weight * (current[k] - ema[k]) for parameters, ema[k] = current[k] for buffers.
    One foreach call per kind, not one kernel per tensor: the `small` model has ~200 tensors, whose
    one-by-one updates cost the GPU more in launch gaps than in arithmetic."""
    keys = list(current)
    p = [k for k in keys if k in param_names]
    b = [k for k in keys if k not in param_names]
    if p:
        torch._foreach_lerp_([ema[k] for k in p], [current[k] for k in p], weight)
    if b:
        torch._foreach_copy_([ema[k] for k in b], [current[k] for k in b])


def exit_process(code: int = 0) -> typing.NoReturn:
    """End a process that ran DDP: flush stdout/stderr, then leave without interpreter finalization.

    Why: torch's DDP keeps its gloo process group alive after ``destroy_process_group`` (torch 2.13),
    so gloo's worker threads outlive the script. One of them can drop the last reference to a
    finished collective's tensors after finalization has begun; that needs the GIL, and the thread
    aborts the process ("terminate called without an active exception", SIGABRT; the race of
    pytorch/pytorch#190489). Seen here in 2 of 33 two-process CPU runs on a loaded machine. By the
    time this is called every file is closed and every checkpoint written atomically, so skipping
    finalization loses nothing.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _rng_state(loss_gen: torch.Generator) -> dict:
    s = {"torch": torch.get_rng_state(), "python": random.getstate(), "loss": loss_gen.get_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict, loss_gen: torch.Generator) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    loss_gen.set_state(s["loss"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def validation_loss(model: RADD, val_windows: torch.Tensor, loss: str, batch_size: int, seed: int,
                    autocast) -> float:
    """Per-token loss on fixed validation windows with a fixed mask draw (comparable across steps)."""
    was = model.training
    model.eval()
    g = torch.Generator(device=val_windows.device).manual_seed(seed)
    total, n = 0.0, 0
    with torch.no_grad(), autocast():
        for i in range(0, len(val_windows), batch_size):
            x0 = val_windows[i : i + batch_size]
            total += float(L.LOSSES[loss](model, x0, generator=g, sampling="low_variance")) * len(x0)
            n += x0.numel()
    model.train(was)
    return total / n


def train(cfg: TrainConfig) -> dict:
    """Train; returns {"step", "loss", "val_loss", "checkpoint", "metrics"}."""
    rank, world, local_rank = _dist_env()
    distributed = world > 1
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    own_group = distributed and not dist.is_initialized()  # ours to tear down at the end
    if own_group:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp_dtype = autocast_dtype(cfg.precision, device, "TrainConfig")

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    out = Path(cfg.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    log = print if rank == 0 else (lambda *a, **k: None)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    random.seed(cfg.seed + rank)
    mcfg = preset(cfg.model, **cfg.model_overrides)
    length = cfg.length or mcfg.max_length
    model = RADD(mcfg, impl=cfg.impl).to(device)
    tok = get_tokenizer(mcfg.tokenizer, cfg.tokenizer_path)
    if tok.vocab_size != mcfg.vocab_size:
        raise ValueError(f"tokenizer {tok.name} has {tok.vocab_size} tokens, the model {mcfg.vocab_size}")

    # Rank 0 tokenises (once, cached); the others wait, then open the same files.
    if rank == 0:
        train_data, val_data = prepare_corpus(cfg.data, tok, cfg.cache_dir)
    if distributed:
        dist.barrier()
    if rank != 0:
        train_data, val_data = prepare_corpus(cfg.data, tok, cfg.cache_dir)
    sampler = WindowSampler(train_data, length, cfg.batch_size, seed=cfg.seed, rank=rank)
    val_windows = chunks(val_data, length, max_chunks=cfg.eval_batches * cfg.batch_size).to(device)

    params = [p for p in model.parameters() if p.requires_grad]
    # fused=True: one kernel for the whole update instead of ~10 elementwise passes per tensor.
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    param_names = {k for k, p in model.named_parameters() if p.dtype.is_floating_point}
    loss_gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + rank)
    step, bad_steps = 0, 0

    if cfg.resume:
        # Rank 0 picks the checkpoint (and moves damaged ones aside); every rank then loads that one.
        if rank == 0:
            remove_stale_temps(out)  # e.g. a metrics rewrite cut short by a kill
        found = latest_valid_checkpoint(out, model, log=log) if rank == 0 else None
        chosen = [str(found[0]) if found else ""]
        if distributed:
            dist.broadcast_object_list(chosen, src=0)
        if chosen[0]:
            folder = Path(chosen[0])
            ema_sd, state = found[1:] if rank == 0 else load_training_checkpoint(folder, model)
            if ema_sd is not None:
                ema = {k: v.to(device) for k, v in ema_sd.items()}
            opt.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            step, bad_steps = int(state["step"]), int(state.get("bad_steps", 0))
            per_rank = state["ranks"]
            if len(per_rank) != world:
                raise ValueError(f"{folder}: saved by {len(per_rank)} processes, resuming with {world}")
            sampler.load_state_dict(per_rank[rank]["sampler"])
            _set_rng_state(per_rank[rank]["rng"], loss_gen)
            log(f"resumed from {folder} at step {step}")
            if rank == 0:
                _truncate_metrics(out / "metrics.jsonl", step)
        else:
            log(f"no checkpoint in {out}: starting from scratch")
            if rank == 0:
                _truncate_metrics(out / "metrics.jsonl", 0)  # records of a run killed before its first save
    elif _on_rank0(rank, distributed, lambda: bool(list_checkpoints(out) or (out / "metrics.jsonl").exists())):
        raise FileExistsError(f"{out} holds a previous run (checkpoints/ or metrics.jsonl): pass resume=True "
                              "(--resume) to continue it, or choose another out_dir")

    model.set_activation_checkpointing(cfg.activation_checkpointing)
    if cfg.compile:
        model.compile_blocks()  # compiles at the first step; weights and state-dict keys untouched
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if distributed else None
    lossable = _ThroughDDP(net) if net is not None else model
    loss_fn = L.LOSSES[cfg.loss]
    model.train()

    tokens_per_step = cfg.batch_size * length * cfg.grad_accum * world
    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm

        # Redraw at most every 30 s when stderr is a log file rather than a terminal.
        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.model}", unit="step", dynamic_ncols=True,
                   mininterval=0.2 if sys.stderr.isatty() else 30.0)
    t_start, t_last, last_step = time.time(), time.time(), step
    last_loss, val = float("nan"), None
    metrics_path = out / "metrics.jsonl"
    ckpt = None

    def save():
        nonlocal ckpt
        state = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "step": step, "bad_steps": bad_steps,
                 "config": dataclasses.asdict(cfg)}
        mine = {"sampler": sampler.state_dict(), "rng": _rng_state(loss_gen)}
        if distributed:
            gathered = [None] * world
            dist.all_gather_object(gathered, mine)
            state["ranks"] = gathered
        else:
            state["ranks"] = [mine]
        if rank == 0:
            ckpt = save_training_checkpoint(out, step, model, ema, state, keep=cfg.keep_checkpoints)
        if distributed:
            dist.barrier()

    while step < cfg.steps:
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x0 = sampler.next().to(device, non_blocking=True)
            sync = contextlib.nullcontext() if net is None or micro == cfg.grad_accum - 1 else net.no_sync()
            with sync:
                with autocast():
                    loss = loss_fn(lossable, x0, generator=loss_gen, sampling=cfg.sampling)
                scaler.scale(loss / cfg.grad_accum).backward()
            loss_sum += loss.detach() / cfg.grad_accum
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        bad = (~torch.isfinite(loss_sum) | ~torch.isfinite(grad_norm)).float()
        if distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
            dist.all_reduce(loss_sum)  # gloo has no AVG
            loss_sum /= world
        skipped = None
        if bad.item() > 0:
            # Skip: no optimizer step, no EMA update. The scaler still lowers its scale for fp16.
            bad_steps += 1
            skipped = (f"non-finite loss or gradient (loss {loss_sum.item()}, grad norm {grad_norm.item()}); "
                       f"step skipped ({bad_steps} of at most {cfg.max_bad_steps})")
            log(f"step {step + 1}: {skipped}")
            opt.zero_grad(set_to_none=True)
            scaler.update()
            if bad_steps > cfg.max_bad_steps:
                raise RuntimeError(f"training stopped at step {step}: {bad_steps} non-finite steps "
                                   f"(limit {cfg.max_bad_steps}); lower the learning rate or check the data")
        else:
            scaler.step(opt)
            scaler.update()
            ema_update(ema, model.state_dict(), param_names, 1.0 - cfg.ema)
            last_loss = loss_sum.item()
        step += 1

        record = {"step": step, "skipped": skipped} if skipped else None
        if skipped is None and (step % cfg.log_every == 0 or step == cfg.steps):
            now = time.time()
            tps = tokens_per_step * (step - last_step) / max(now - t_last, 1e-9)
            t_last, last_step = now, step
            record = {"step": step, "loss": last_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tps,
                      "time": now - t_start}
            if bar is not None:
                bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tps:,.0f}")
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            val = validation_loss(model, val_windows, cfg.loss, cfg.batch_size, cfg.seed, autocast)
            record = dict(record or {"step": step, "lr": lr}, val_loss=val)
        if record is not None and rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if bar is not None:
            bar.update(1)
        out_of_time = (cfg.max_minutes is not None and (time.time() - t_start) > 60 * cfg.max_minutes) or (
            cfg.stop_at is not None and step >= cfg.stop_at)
        if distributed:
            flag = torch.tensor(float(out_of_time), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or out_of_time:
            save()
        if out_of_time:
            log(f"stopping at step {step} ({'stop_at' if cfg.stop_at is not None and step >= cfg.stop_at else f'{cfg.max_minutes} minutes elapsed'})")
            break
    if bar is not None:
        bar.close()
    if own_group:
        dist.barrier()  # no rank tears down while another still talks to it
        dist.destroy_process_group()
    return {"step": step, "loss": last_loss, "val_loss": val, "checkpoint": str(ckpt) if ckpt else None,
            "metrics": str(metrics_path), "model": model, "ema": ema}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric records after `step` (they belong to the interrupted run's lost steps)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    with atomic_write(path, "w") as f:
        f.write("".join(line + "\n" for line in keep))
