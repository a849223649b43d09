"""Training: schedule, loss going down, exact resume, distributed training, bad configuration."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from radd_fast.checkpoint import list_checkpoints
from radd_fast.train import TrainConfig, ema_update, lr_at, train

TINY = {"n_blocks": 2, "hidden_size": 64, "n_heads": 4}


def cfg(tmp_path, name, **kw):
    base = dict(out_dir=str(tmp_path / name), model="tiny", model_overrides=TINY, length=64, batch_size=8,
                steps=20, warmup=5, lr=2e-3, eval_every=10, eval_batches=1, save_every=10, log_every=1,
                cache_dir=str(tmp_path / "cache"), progress=False, seed=1)
    return TrainConfig(**{**base, **kw})


def metrics(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def test_lr_schedule():
    c = TrainConfig(lr=1.0, warmup=10, steps=110, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(c, 0) == pytest.approx(0.1) and lr_at(c, 9) == pytest.approx(1.0)
    assert lr_at(c, 10) == pytest.approx(1.0) and lr_at(c, 60) == pytest.approx(0.55)
    assert lr_at(c, 110) == pytest.approx(0.1) and lr_at(c, 500) == pytest.approx(0.1)
    c = TrainConfig(lr=1.0, warmup=0, schedule="constant")
    assert lr_at(c, 0) == lr_at(c, 10**6) == 1.0


def test_loss_falls(tmp_path):
    res = train(cfg(tmp_path, "run", steps=60, eval_every=30, save_every=60))
    recs = metrics(res["metrics"])
    losses = [r["loss"] for r in recs]
    assert len(losses) == 60 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    # from about log(256) = 5.5 nats/byte down: at least a quarter lower after 60 steps
    assert last < 0.75 * first, (first, last)
    vals = [r["val_loss"] for r in recs if "val_loss" in r]
    assert len(vals) == 2 and vals[1] < vals[0] < math.log(256) + 0.5
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000060"]
    assert recs[-1]["tokens_per_s"] > 0


def test_resume_is_bit_identical(tmp_path):
    full = train(cfg(tmp_path, "full"))
    part = train(cfg(tmp_path, "split", stop_at=10))
    assert part["step"] == 10
    resumed = train(cfg(tmp_path, "split", resume=True))
    assert resumed["step"] == 20
    a, b = metrics(full["metrics"]), metrics(resumed["metrics"])
    assert [r["step"] for r in b] == list(range(1, 21))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bit-identical losses
    for (k, p), q in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(p, q), k
    for k in full["ema"]:
        assert torch.equal(full["ema"][k], resumed["ema"][k]), k


def test_compiled_blocks_train_like_eager(tmp_path):
    # --compile: torch.compile of every block (inductor on the CPU). Without dropout both runs
    # compute the same function: the losses agree to fp32 rounding and the weights stay close.
    kw = dict(model_overrides={**TINY, "dropout": 0.0}, steps=4, eval_every=10, save_every=10)
    eager = train(cfg(tmp_path, "eager", **kw))
    compiled = train(cfg(tmp_path, "compiled", compile=True, **kw))
    a, b = [r["loss"] for r in metrics(eager["metrics"])], [r["loss"] for r in metrics(compiled["metrics"])]
    assert all(getattr(blk, "_compiled_call_impl", None) is not None for blk in compiled["model"].blocks)
    assert not any(getattr(blk, "_compiled_call_impl", None) for blk in eager["model"].blocks)
    assert len(b) == 4 and a == pytest.approx(b, rel=1e-4)  # compiled code may round differently
    assert set(compiled["model"].state_dict()) == set(eager["model"].state_dict())
    for (k, p), q in zip(eager["model"].state_dict().items(), compiled["model"].state_dict().values()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5, msg=k)


def test_activation_checkpointing_trains_identically(tmp_path):
    # --activation-checkpointing: the same losses and weights, bit for bit (dropout on: the recomputed
    # forward redraws the same masks).
    kw = dict(steps=4, eval_every=10, save_every=10)
    plain = train(cfg(tmp_path, "plain", **kw))
    recomputed = train(cfg(tmp_path, "recomputed", activation_checkpointing=True, **kw))
    assert recomputed["model"].activation_checkpointing and not plain["model"].activation_checkpointing
    assert [r["loss"] for r in metrics(plain["metrics"])] == [r["loss"] for r in metrics(recomputed["metrics"])]
    for (k, p), q in zip(plain["model"].state_dict().items(), recomputed["model"].state_dict().values()):
        assert torch.equal(p, q), k


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    out = tmp_path / "verdict.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    worker = Path(__file__).with_name("ddp_worker.py")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(worker), str(out), str(tmp_path / "run"), str(tmp_path / "cache")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    verdict = json.loads(out.read_text())
    assert verdict["world"] == 2 and verdict["step"] == 6
    assert verdict["digests"][0] == verdict["digests"][1]
    assert (tmp_path / "run" / "checkpoints" / "step_00000006").is_dir()


@pytest.mark.parametrize("field,value,msg", [
    ("batch_size", 0, "batch_size"), ("loss", "mse", "loss must be one of"), ("schedule", "linear", "schedule"),
    ("precision", "fp8", "precision"), ("ema", 1.0, "ema"), ("steps", 0, "steps"), ("lr", -1.0, "lr"),
])
def test_bad_config(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**{field: value})


def test_bad_runtime_config(tmp_path):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        train(cfg(tmp_path, "bf16", precision="bf16", device="cpu"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(cfg(tmp_path, "nodata", data=str(tmp_path / "missing.txt")))
    with pytest.raises(ValueError, match="unknown model preset"):
        train(cfg(tmp_path, "nopreset", model="giant"))


def test_ema_update_equals_the_per_tensor_update(device):
    # The foreach update must give exactly what one lerp_ / copy_ per tensor gives (resume is
    # bit-identical only if every run updates the EMA the same way).
    from radd_fast.model import RADD, preset
    model = RADD(preset("tiny")).to(device)
    names = {k for k, p in model.named_parameters() if p.dtype.is_floating_point}
    g = torch.Generator().manual_seed(0)
    ema = {k: (v + torch.randn(v.shape, generator=g).to(device, v.dtype)) if v.dtype.is_floating_point else v.clone()
           for k, v in model.state_dict().items()}
    expect = {k: v.clone() for k, v in ema.items()}
    with torch.no_grad():
        for k, v in model.state_dict().items():
            expect[k].lerp_(v, 1e-3) if k in names else expect[k].copy_(v)
    ema_update(ema, model.state_dict(), names, 1e-3)
    assert set(ema) == set(expect) and any(k not in names for k in ema)  # buffers are covered too
    for k in ema:
        assert torch.equal(ema[k], expect[k]), k


def test_exit_process_flushes_and_keeps_the_exit_code():
    # What `radd-fast train` ends with under torchrun: buffered output must not be lost by os._exit.
    code = ("import sys; from radd_fast.train import exit_process; print('to stdout', end=''); "
            "print('to stderr', end='', file=sys.stderr); exit_process(3)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONUNBUFFERED=""))
    assert (r.returncode, r.stdout, r.stderr) == (3, "to stdout", "to stderr")
