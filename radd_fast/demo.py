"""`radd-fast demo`, the main job: train the tiny byte-level model on the embedded corpus (the
Python standard library's documentation) on the CPU for a few minutes, then save it, print samples
(unconditional and prompted) and the validation bound, and plot the loss curve."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path


from .checkpoint import save_pretrained
from .data import chunks, prepare_corpus
from .evaluate import evaluate
from .model import preset
from .sampling import sample
from .tokenizers import ByteTokenizer
from .train import TrainConfig, train

PROMPTS = ["Return the ", "The following "]


def plot_losses(metrics_path: Path, png: Path, length: int) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no loss plot (pip install matplotlib)")
        return None
    recs = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    # Losses are per sequence; divided by the length they are bounds in nats per byte, like validation's.
    tr = [(r["step"], r["loss"] / length) for r in recs if "loss" in r]
    ax.plot(*zip(*tr), label="training batch")
    v = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
    if v:
        ax.plot(*zip(*v), "o-", label="validation")
    ax.axhline(math.log(256), color="grey", ls=":", label="uniform guess (log 256)")
    ax.set_xlabel("step")
    ax.set_ylabel("lambda-DCE bound (nats per byte)")
    ax.legend()
    ax.set_title("radd-fast demo: tiny byte-level RADD on the stdlib docs")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def run_demo(out: str = "runs/demo", minutes: float = 3.0, steps: int = 100_000, batch_size: int = 4, seed: int = 0,
             model_overrides: dict | None = None, progress: bool = True, sample_steps: int = 128) -> dict:
    out_dir = Path(out)
    # The configuration first: bad arguments must fail before the previous run is replaced.
    cfg = TrainConfig(out_dir=str(out_dir), model="tiny", model_overrides=model_overrides or {}, data="stdlib",
                      batch_size=batch_size, steps=steps, max_minutes=minutes, lr=1e-3, warmup=50,
                      schedule="constant", ema=0.99, eval_every=100, save_every=500, log_every=10, seed=seed,
                      device="cpu", progress=progress)
    preset("tiny", **cfg.model_overrides)  # an override's error, too
    # The demo replaces its own previous run (and only that: a folder without the demo's marker is refused).
    marker = out_dir / ".radd_fast_demo"
    if out_dir.exists() and any(out_dir.iterdir()):
        if not marker.exists():
            raise FileExistsError(f"{out_dir} exists and is not a previous demo run; choose another --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by radd-fast demo; the next demo run replaces this folder\n")
    print(f"training the tiny byte-level model on the embedded corpus for up to {minutes:g} min -> {out_dir}")
    res = train(cfg)
    model, ema = res["model"], res["ema"]
    model.load_state_dict(ema)  # sample and evaluate with the EMA weights
    model.eval()
    final = save_pretrained(model, out_dir / "model", overwrite=True)
    tok = ByteTokenizer()
    length = model.config.max_length

    x, nfe = sample(model, 2, length, sample_steps, seed=seed)
    print(f"\n=== unconditional samples ({sample_steps} steps, {float(nfe.float().mean()):.0f} network calls each)")
    for row in x:
        print(repr(tok.decode(row.tolist())))
    print("\n=== prompted samples")
    for i, prompt in enumerate(PROMPTS):
        x, _ = sample(model, 1, length, sample_steps, prompt=tok.encode(prompt), seed=seed + 1 + i)
        print(repr(tok.decode(x[0].tolist())))

    _, val = prepare_corpus("stdlib", tok)
    windows = chunks(val, length, max_chunks=32)
    ev = evaluate(model, windows, mc_samples=4, batch_size=16, seed=seed, progress=False)
    bound, se = ev.nll_per_token, ev.stderr
    print(f"\n=== validation bound (AO estimator, {ev.chunks} windows of {length} bytes, {ev.mc_samples} draws each): "
          f"{bound:.3f} ± {se:.3f} nats/byte = {bound / math.log(2):.3f} bits/byte "
          f"(log 256 = {math.log(256):.3f} nats for a uniform guess)")
    png = plot_losses(Path(res["metrics"]), out_dir / "loss.png", length)
    print(f"\nsteps {res['step']}, final training loss {res['loss']:.2f}; model: {final}; "
          f"checkpoint: {res['checkpoint']}; loss curve: {png}")
    return {**{k: v for k, v in res.items() if k not in ("model", "ema")}, "bound": bound, "bound_se": se,
            "png": str(png) if png else None, "model_dir": str(final)}
