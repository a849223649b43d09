"""Faults: SIGKILL at random moments (also mid-checkpoint) and resume, damaged checkpoints,
non-finite steps. Training runs in subprocesses exactly as a user starts it."""

import contextlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from radd_fast import losses as L
from radd_fast.checkpoint import list_checkpoints
from radd_fast.train import TrainConfig, train

SMALL = ["--set", "n_blocks=1", "--set", "hidden_size=32", "--set", "n_heads=2"]
COMPARE = ("step", "loss", "lr", "grad_norm", "val_loss", "skipped")


def train_cmd(run, cache, steps, nproc=1):
    args = ["train", "--out-dir", str(run), *SMALL, "--length", "32", "--batch-size", "4", "--steps", str(steps),
            "--warmup", "3", "--save-every", "2", "--keep-checkpoints", "3", "--eval-every", "5", "--eval-batches",
            "1", "--log-every", "1", "--cache-dir", str(cache), "--resume", "--no-progress", "--seed", "3"]
    if nproc == 1:
        return [sys.executable, "-m", "radd_fast", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "radd_fast", *args]


def start(cmd, fault_sleep=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if fault_sleep:
        env["RADD_FAST_FAULT_CHECKPOINT_SLEEP"] = str(fault_sleep)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _proc_stat(pid):
    """(state, parent pid) of a process from /proc, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def crash(p):
    """SIGKILL p and every process below it, as a machine crash would, and return once all are dead.

    torchrun starts each worker in a session of its own, so killing torchrun's process group leaves
    the workers running: they went on for a step or two (one renamed a checkpoint folder while this
    test read it) and then hung in gloo, orphaned, for its 30-minute timeout. The parent is stopped
    first, so it starts no process while the tree is walked."""
    os.kill(p.pid, signal.SIGSTOP)
    tree, todo = [p.pid], [p.pid]
    while todo:
        parent = todo.pop()
        for d in Path("/proc").iterdir():
            st = _proc_stat(d.name) if d.name.isdigit() else None
            if st and st[1] == parent:
                os.kill(int(d.name), signal.SIGSTOP)
                tree.append(int(d.name))
                todo.append(int(d.name))
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    p.wait()
    deadline = time.time() + 60
    for pid in tree[1:]:  # orphans: dead once gone or a zombie
        while (st := _proc_stat(pid)) is not None and st[0] != "Z":
            assert time.time() < deadline, f"process {pid} survived SIGKILL"
            time.sleep(0.01)
    return len(tree)


def records(run):
    return [{k: r.get(k) for k in COMPARE} for r in map(json.loads, (Path(run) / "metrics.jsonl").read_text().splitlines())]


def final_weights(run, step):
    folder = Path(run) / "checkpoints" / f"step_{step:08d}"
    return load_file(str(folder / "model.safetensors")), load_file(str(folder / "ema.safetensors"))


def temporaries(run):
    return [p for p in Path(run).rglob("*") if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("nproc", [1, 2], ids=["1-process", "2-process-torchrun"])
def test_sigkill_and_resume_is_bit_identical(tmp_path, nproc):
    steps = 40
    cache = tmp_path / "cache"
    ref = subprocess.run(train_cmd(tmp_path / "ref", cache, steps, nproc), capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert ref.returncode == 0, ref.stderr[-2000:]

    run = tmp_path / "killed"
    rng = random.Random(nproc)
    kills, mid_write = 0, 0
    for attempt in range(10):
        # The fault hook holds each checkpoint in its temporary folder for 0.3 s, so many kills land
        # mid-write. Each kill comes at a random moment after the process has logged a new step, so
        # every attempt makes progress whatever the machine's speed.
        seen = len(records(run)) if (run / "metrics.jsonl").exists() else 0
        p = start(train_cmd(run, cache, steps, nproc), fault_sleep=0.3)
        deadline = time.time() + 300
        while p.poll() is None and time.time() < deadline:
            if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) > seen:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if p.poll() is not None:
            out, err = p.communicate()
            assert p.returncode == 0, err.decode()[-2000:]
            break
        killed = crash(p)
        # torchrun and its workers (unless they had just finished the last step)
        assert killed == (1 if nproc == 1 else 1 + nproc) or len(records(run)) == steps, killed
        kills += 1
        tmp_ckpts = [t for t in temporaries(run) if t.parent.name == "checkpoints"]
        mid_write += bool(tmp_ckpts)
        # (a) a readable checkpoint always exists once the first one was written
        for folder in list_checkpoints(run):
            assert (folder / "training_state.pt").exists() and (folder / "model.safetensors").exists()
            torch.load(folder / "training_state.pt", weights_only=True)
            load_file(str(folder / "model.safetensors"))
        if kills >= 5 and mid_write >= 1:
            break
    assert kills >= 2 and mid_write >= 1, (kills, mid_write)
    last = subprocess.run(train_cmd(run, cache, steps, nproc), capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert last.returncode == 0, last.stderr[-2000:]
    # (b) bit-identical to the uninterrupted run: every logged loss, the final weights and EMA
    a, b = records(run), records(tmp_path / "ref")
    assert a == b, [(x, y) for x, y in zip(a, b) if x != y][:3] + [len(a), len(b)]
    (w1, e1), (w2, e2) = final_weights(tmp_path / "ref", steps), final_weights(run, steps)
    assert all(torch.equal(w1[k], w2[k]) for k in w1) and all(torch.equal(e1[k], e2[k]) for k in e1)
    # (c) no temporary files left behind
    assert temporaries(run) == []


def small_cfg(tmp_path, name, **kw):
    base = dict(out_dir=str(tmp_path / name), model="tiny", model_overrides={"n_blocks": 1, "hidden_size": 32,
                "n_heads": 2}, length=32, batch_size=4, steps=6, warmup=2, eval_every=0, save_every=2,
                keep_checkpoints=5, log_every=1, cache_dir=str(tmp_path / "cache"), progress=False, seed=4)
    return TrainConfig(**{**base, **kw})


def damage(folder: Path, how: str):
    if how == "truncated":
        b = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(b[: len(b) // 3])
    elif how == "corrupted":
        b = bytearray((folder / "training_state.pt").read_bytes())
        b[len(b) // 2 : len(b) // 2 + 64] = os.urandom(64)
        (folder / "training_state.pt").write_bytes(bytes(b))
    elif how == "missing":
        (folder / "training_state.pt").unlink()
    elif how == "wrong_shape":
        conf = json.loads((folder / "config.json").read_text())
        conf["radd_fast"]["config"]["hidden_size"] = 48
        conf["radd_fast"]["config"]["n_heads"] = 3
        (folder / "config.json").write_text(json.dumps(conf))
    elif how == "wrong_vocab":
        conf = json.loads((folder / "config.json").read_text())
        conf["radd_fast"]["config"]["vocab_size"] = 300
        (folder / "config.json").write_text(json.dumps(conf))


@pytest.mark.parametrize("how", ["truncated", "corrupted", "missing", "wrong_shape", "wrong_vocab"])
def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, how, capsys):
    full = train(small_cfg(tmp_path, "ref"))
    train(small_cfg(tmp_path, "run", stop_at=4))
    newest = list_checkpoints(tmp_path / "run")[-1]
    assert newest.name == "step_00000004"
    damage(newest, how)
    res = train(small_cfg(tmp_path, "run", resume=True))
    out = capsys.readouterr().out
    assert "skipping damaged checkpoint" in out and "step_00000004" in out and "resumed from" in out
    assert "step_00000002" in out.split("resumed from")[1].splitlines()[0]
    # the damaged folder is kept aside for inspection, the good one is untouched, the run completes
    assert (tmp_path / "run" / "checkpoints" / "step_00000004.damaged").is_dir()
    assert res["step"] == 6
    for k, v in full["model"].state_dict().items():
        assert torch.equal(v, res["model"].state_dict()[k]), k


def test_loading_never_runs_code_from_a_file(tmp_path):
    train(small_cfg(tmp_path, "run", steps=2))
    folder = list_checkpoints(tmp_path / "run")[-1]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "training_state.pt", "wb") as f:
        pickle.dump({"step": Evil()}, f, protocol=2)
    from radd_fast.checkpoint import CheckpointError, load_training_checkpoint, write_checksums

    write_checksums(folder)  # a forger can update the checksums too: the loader itself must refuse
    from radd_fast.model import RADD, preset

    model = RADD(preset("tiny", n_blocks=1, hidden_size=32, n_heads=2))
    with pytest.raises(CheckpointError, match="training_state.pt: unreadable or damaged"):
        load_training_checkpoint(folder, model)
    assert not marker.exists()


def _poisoned(kind, at_calls, counter):
    real = L.LOSSES["lambda_dce"]

    def loss(model, x0, **kw):
        counter[0] += 1
        out = real(model, x0, **kw)
        if counter[0] in at_calls:
            if kind == "loss":
                return out * float("nan")
            # finite loss, non-finite gradient: d/dx sqrt(|x|) at 0 is inf, times 0 gives nan
            return out + (model.output_weight[0, 0] * 0).abs().sqrt()
        return out

    return loss


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_step_is_skipped_and_logged(tmp_path, monkeypatch, kind, capsys):
    # A run whose 4th (last) step is poisoned ends with exactly the weights and EMA of step 3.
    clean = train(small_cfg(tmp_path, "clean", steps=4, stop_at=3))
    monkeypatch.setitem(L.LOSSES, "lambda_dce", _poisoned(kind, {4}, [0]))
    res = train(small_cfg(tmp_path, "poisoned", steps=4))
    for k, v in clean["model"].state_dict().items():
        assert torch.equal(v, res["model"].state_dict()[k]), k
        assert torch.equal(clean["ema"][k], res["ema"][k]), k
    assert "step 4: non-finite loss or gradient" in capsys.readouterr().out
    rec = [json.loads(x) for x in (tmp_path / "poisoned" / "metrics.jsonl").read_text().splitlines()]
    assert rec[-1]["step"] == 4 and "non-finite" in rec[-1]["skipped"]
    assert all(torch.isfinite(v).all() for v in res["model"].state_dict().values())


def test_too_many_non_finite_steps_stop_training(tmp_path, monkeypatch):
    monkeypatch.setitem(L.LOSSES, "lambda_dce", _poisoned("loss", set(range(100)), [0]))
    with pytest.raises(RuntimeError, match="3 non-finite steps \\(limit 2\\)"):
        train(small_cfg(tmp_path, "bad", steps=10, max_bad_steps=2))
