"""Checkpoints: the reference (Hugging Face hub-mixin) layout for weights, plus training state.

A model folder holds ``config.json`` (reference keys ``tokens``, ``model.{hidden_size, n_heads,
n_blocks, dropout, length}``, ``noise.type``, ``graph.type``, and our full config under
``radd_fast``) and ``model.safetensors`` with the reference state-dict names. A training checkpoint
(``<run>/checkpoints/step_XXXXXXXX/``) adds ``ema.safetensors`` and ``training_state.pt``
(optimizer, scheduler step, RNG states, data position), enough for a bit-identical resume.

Every folder and file is written atomically (radd_fast.io), so a crash never leaves a half-written
checkpoint; loading never runs code from a file (safetensors, and torch.load(weights_only=True)).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .io import TMP_PREFIX, atomic_dir, remove_stale_temps
from .model import RADD, RADDConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
TRAINING_STATE = "training_state.pt"
# SHA-256 of the binary files of a folder we wrote. Neither safetensors nor torch's zip reader checks
# the bytes of tensor data, so without this a flipped byte loads as silently wrong weights.
# (config.json is left out: it is meant to be readable and editable, and its parser checks it.)
CHECKSUMS = "checksums.json"
STEP_DIR = re.compile(r"^step_(\d{8})$")
# Fault-injection hook for the crash tests: seconds to wait after a checkpoint's files are written and
# before the folder is renamed into place, so a kill can be aimed at the middle of a write.
_FAULT_SLEEP = float(os.environ.get("RADD_FAST_FAULT_CHECKPOINT_SLEEP", "0") or 0)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not match the model it should hold."""


# ----------------------------------------------------------------------------------------------- config
def config_to_json(cfg: RADDConfig) -> dict:
    from . import __version__

    return {
        "tokens": cfg.vocab_size,
        "model": {"type": "ddit", "hidden_size": cfg.hidden_size, "n_heads": cfg.n_heads, "n_blocks": cfg.n_blocks,
                  "dropout": cfg.dropout, "length": cfg.max_length, "dtype": "float32"},
        "graph": {"type": "absorb"},
        "noise": {"type": "loglinear"},
        "radd_fast": {"version": __version__, "config": cfg.to_dict()},
    }


def config_from_json(d: dict, path: Path) -> RADDConfig:
    """Our config, or one derived from a reference-style config.json."""
    ours = d.get("radd_fast", {}).get("config") if isinstance(d, dict) else None
    try:
        if ours is not None:
            return RADDConfig(**ours)
        m = d["model"]
        tokens = int(d["tokens"])
        graph = d.get("graph", {}).get("type", "absorb")
        if graph != "absorb":
            raise CheckpointError(f"{path}: graph.type is {graph!r}; RADD models are absorbing ('absorb')")
        return RADDConfig(vocab_size=tokens, hidden_size=int(m["hidden_size"]), n_heads=int(m["n_heads"]),
                          n_blocks=int(m["n_blocks"]), dropout=float(m.get("dropout", 0.0)),
                          max_length=int(m.get("length", 1024)), tokenizer="bytes" if tokens == 256 else "gpt2")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a RADD config ({type(e).__name__}: {e})") from None


def read_config(folder: str | os.PathLike) -> RADDConfig:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (a model folder holds {CONFIG} and {WEIGHTS})")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None
    return config_from_json(d, path)


# -------------------------------------------------------------------------------------------- checksums
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: Path) -> None:
    sums = {p.name: _sha256(p) for p in sorted(folder.iterdir())
            if p.is_file() and p.name not in (CHECKSUMS, CONFIG)}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=2) + "\n")


def verify_checksums(folder: Path, names: list[str]) -> None:
    """Check `names` against checksums.json when the folder has one (reference checkpoints do not)."""
    path = folder / CHECKSUMS
    if not path.exists():
        return
    try:
        sums = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    for name in names:
        if name in sums and (folder / name).exists() and _sha256(folder / name) != sums[name]:
            raise CheckpointError(f"{folder / name}: corrupted (its SHA-256 differs from {CHECKSUMS})")


# ---------------------------------------------------------------------------------------------- weights
def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable or damaged safetensors file ({e})") from None


def check_state_dict(model: RADD, sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Match `sd` against the model's parameters by name and shape; raise naming every mismatch."""
    want = model.state_dict()
    sd = dict(sd)
    if "rotary_emb.inv_freq" not in sd:  # a pure function of the config: some exports drop it
        sd["rotary_emb.inv_freq"] = want["rotary_emb.inv_freq"]
    emb = sd.get("vocab_embed.embedding")
    if emb is not None and emb.shape[0] != model.vocab_size + 1:
        raise CheckpointError(
            f"{path}: vocabulary mismatch: vocab_embed.embedding has {emb.shape[0]} rows, the config says "
            f"{model.vocab_size} tokens + 1 mask = {model.vocab_size + 1}"
        )
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    if missing or unexpected:
        raise CheckpointError(f"{path}: state dict does not match the config: missing {missing[:6]}"
                              f"{'...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                              f"{'...' if len(unexpected) > 6 else ''}")
    for k, v in want.items():
        if sd[k].shape != v.shape:
            raise CheckpointError(f"{path}: '{k}' has shape {list(sd[k].shape)}, the config needs {list(v.shape)}")
        if not torch.isfinite(sd[k]).all():
            raise CheckpointError(f"{path}: '{k}' holds non-finite values")
    return sd


def _cpu_contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_pretrained(model: RADD, path: str | os.PathLike, state_dict: dict | None = None,
                    overwrite: bool = False) -> Path:
    """Write config.json + model.safetensors (the model's weights, or `state_dict`, e.g. EMA ones).

    A new folder appears complete or not at all; an existing one is replaced only with `overwrite`.
    """
    path = Path(path)
    sd = state_dict if state_dict is not None else model.state_dict()
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
        old = path.with_name(f".tmp-old-{path.name}")
        with atomic_dir(path.with_name(path.name + ".new")) as tmp:
            _fill_model_dir(tmp, model.config, sd)
        os.rename(path, old)
        os.rename(path.with_name(path.name + ".new"), path)
        shutil.rmtree(old, ignore_errors=True)
        return path
    with atomic_dir(path) as tmp:
        _fill_model_dir(tmp, model.config, sd)
    return path


def _fill_model_dir(folder: Path, cfg: RADDConfig, sd: dict, checksums: bool = True) -> None:
    save_file(_cpu_contiguous(sd), str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(config_to_json(cfg), indent=2) + "\n")
    if checksums:
        write_checksums(folder)


def load_pretrained(path: str | os.PathLike, *, device: str | torch.device = "cpu", impl: str = "auto",
                    weights: str = "model", dtype: torch.dtype | None = None) -> RADD:
    """A RADD model from a local folder (ours or the reference's hub-mixin layout).

    `weights`: "model" (model.safetensors) or "ema" (ema.safetensors of a training checkpoint).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a folder (radd_fast loads local model folders; download hub models first)")
    if weights not in ("model", "ema"):
        raise ValueError(f"load_pretrained: 'weights' must be 'model' or 'ema', got {weights!r}")
    cfg = read_config(path)
    file = path / (WEIGHTS if weights == "model" else EMA_WEIGHTS)
    verify_checksums(path, [file.name])
    sd = read_weights(file)
    model = RADD(cfg, impl=impl)
    sd = check_state_dict(model, sd, file)
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in sd.items()})
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


# ------------------------------------------------------------------------------- training checkpoints
def step_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def save_training_checkpoint(run_dir: str | os.PathLike, step: int, model: RADD, ema: dict | None,
                             state: dict, keep: int = 2) -> Path:
    """Write checkpoints/step_XXXXXXXX/ atomically, then delete all but the newest `keep`."""
    folder = step_dir(run_dir, step)
    with atomic_dir(folder) as tmp:
        _fill_model_dir(tmp, model.config, model.state_dict(), checksums=False)
        if ema is not None:
            save_file(_cpu_contiguous(ema), str(tmp / EMA_WEIGHTS), metadata={"format": "pt"})
        torch.save(state, tmp / TRAINING_STATE)
        write_checksums(tmp)
        if _FAULT_SLEEP:
            time.sleep(_FAULT_SLEEP)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        # Rename first (atomic), then delete: a kill during the deletion leaves a temporary, which the
        # next resume removes, never a half-deleted folder that still looks like a checkpoint.
        doomed = old.with_name(f"{TMP_PREFIX}old-{old.name}")
        os.rename(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return folder


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporaries are not listed)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def load_training_checkpoint(folder: str | os.PathLike, model: RADD) -> tuple[dict | None, dict]:
    """Load weights into `model` and return (ema state dict or None, training state); raise
    CheckpointError/FileNotFoundError naming the file at fault."""
    folder = Path(folder)
    verify_checksums(folder, [WEIGHTS, EMA_WEIGHTS, TRAINING_STATE])
    cfg = read_config(folder)
    if cfg != model.config:
        diff = {k: (v, getattr(model.config, k)) for k, v in cfg.to_dict().items() if getattr(model.config, k) != v}
        raise CheckpointError(f"{folder / CONFIG}: config differs from this run's (checkpoint, run): {diff}")
    sd = check_state_dict(model, read_weights(folder / WEIGHTS), folder / WEIGHTS)
    ema = None
    if (folder / EMA_WEIGHTS).exists():
        ema = check_state_dict(model, read_weights(folder / EMA_WEIGHTS), folder / EMA_WEIGHTS)
    state_path = folder / TRAINING_STATE
    if not state_path.is_file():
        raise FileNotFoundError(f"{state_path}: missing")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged pickles/zips
        raise CheckpointError(f"{state_path}: unreadable or damaged ({type(e).__name__}: {e})") from None
    with torch.no_grad():
        for k, p in model.state_dict().items():
            p.copy_(sd[k])
    return ema, state


def latest_valid_checkpoint(run_dir: str | os.PathLike, model: RADD, log=print):
    """The newest checkpoint that loads, as (folder, ema, state), or None.

    A damaged one is reported and renamed to ``step_XXXXXXXX.damaged`` (kept for inspection, out of
    the way of the resumed run, which will write that step again); stale temporaries of a killed
    writer are removed.
    """
    remove_stale_temps(Path(run_dir) / "checkpoints")
    for folder in reversed(list_checkpoints(run_dir)):
        try:
            ema, state = load_training_checkpoint(folder, model)
            return folder, ema, state
        except (CheckpointError, FileNotFoundError) as e:
            aside = folder.with_name(folder.name + ".damaged")
            n = 1
            while aside.exists():
                aside, n = folder.with_name(f"{folder.name}.damaged{n}"), n + 1
            os.rename(folder, aside)
            log(f"skipping damaged checkpoint {folder} (moved to {aside.name}): {e}")
    return None
