"""The command line end to end (train -> sample), sampling arguments, the demo, and bad input."""

import json
import math
import subprocess
import sys

import pytest
import torch

from radd_fast.demo import run_demo
from radd_fast.model import RADD, RADDConfig
from radd_fast.sampling import sample


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "radd_fast", *args], capture_output=True, text=True, timeout=timeout)


def test_train_then_sample(tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--out-dir", str(run), "--set", "n_blocks=1", "--set", "hidden_size=32", "--set", "n_heads=2",
            "--length", "32", "--batch-size", "4", "--steps", "4", "--warmup", "1", "--eval-every", "0",
            "--save-every", "4", "--cache-dir", str(tmp_path / "cache"), "--no-progress")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["step"] == 4 and math.isfinite(summary["loss"])
    ckpt = summary["checkpoint"]
    r = cli("sample", "--ckpt", ckpt, "--steps", "8", "--num-samples", "2", "--length", "24", "--prompt", "Return")
    assert r.returncode == 0, r.stderr
    samples = [s for s in r.stdout.split("--- sample ")[1:]]
    assert len(samples) == 2 and all(s.split("\n", 1)[1].startswith("Return") for s in samples)
    # --out: the same samples as JSON lines (tokens and network calls too); the progress bar on stderr
    out = tmp_path / "samples.jsonl"
    r2 = cli("sample", "--ckpt", ckpt, "--steps", "8", "--num-samples", "2", "--length", "24", "--prompt", "Return",
             "--out", str(out), "--precision", "fp32")
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == r.stdout  # same seed, same samples
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["sample"] for x in records] == [0, 1]
    for x, printed in zip(records, samples):
        assert printed == f"{x['sample']} ({x['nfe']} network calls)\n{x['text']}\n"
        assert len(x["tokens"]) == 24 and 1 <= x["nfe"] <= 8
    assert "round" in r2.stderr  # tqdm's unit
    r3 = cli("sample", "--ckpt", ckpt, "--precision", "bf16", "--device", "cpu")
    assert r3.returncode != 0 and "precision bf16 needs a CUDA device" in r3.stderr and "Traceback" not in r3.stderr


@pytest.mark.parametrize("args,msg", [
    (["sample", "--ckpt", "/nonexistent/x"], "not a folder"),
    (["train", "--steps", "0"], "steps must be >= 1"),
    (["train", "--set", "bogus=1"], "--set expects KEY=VALUE"),
    (["train", "--set", "n_blocks=two"], "not a valid"),
])
def test_cli_errors_are_clear(args, msg):
    r = cli(*args)
    assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr


def test_cli_bad_flag():
    r = cli("train", "--no-such-flag")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


def tiny_model():
    torch.manual_seed(0)
    m = RADD(RADDConfig(vocab_size=11, hidden_size=16, n_heads=2, n_blocks=1, max_length=16, tokenizer="bytes"))
    with torch.no_grad():
        m.output_layer.linear.weight.normal_()
    return m.eval()


def test_sample_prompt_and_reproducibility():
    m = tiny_model()
    a, nfe = sample(m, 3, 12, 6, prompt=[1, 2, 3], seed=4)
    b, _ = sample(m, 3, 12, 6, prompt=[1, 2, 3], seed=4)
    assert torch.equal(a, b) and torch.all(a[:, :3] == torch.tensor([1, 2, 3])) and torch.all(a < 11)
    assert torch.all((nfe >= 1) & (nfe <= 6))
    c, _ = sample(m, 3, 12, 6, prompt=[1, 2, 3], seed=5)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("kw,msg", [
    (dict(steps=0), "'steps' must be >= 1"), (dict(num_samples=0), "empty batch"),
    (dict(prompt=list(range(12))), "shorter than 'length'"), (dict(top_p=0.0), "'top_p' must be in"),
    (dict(top_p=1.5), "'top_p' must be in"), (dict(top_k=-1), "'top_k' must be >= 0"),
    (dict(temperature=0.0), "'temperature' must be > 0"), (dict(prompt=[99]), "outside"),
])
def test_sample_bad_input(kw, msg):
    args = dict(num_samples=2, length=12, steps=4)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        sample(tiny_model(), args.pop("num_samples"), args.pop("length"), args.pop("steps"), **args)


def test_demo_short_run(tmp_path, capsys):
    res = run_demo(out=str(tmp_path / "demo"), minutes=5, steps=30, batch_size=8, progress=False,
                   model_overrides={"n_blocks": 1, "hidden_size": 32, "n_heads": 2}, sample_steps=16)
    out = capsys.readouterr().out
    assert "unconditional samples" in out and "prompted samples" in out and "validation bound" in out
    assert res["step"] == 30 and math.isfinite(res["bound"]) and 0 < res["bound"] < math.log(256) + 0.5
    assert (tmp_path / "demo" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "model" / "model.safetensors").exists()


def test_sample_records_in_batches(tmp_path):
    from radd_fast.sampling import sample_records

    tiny_model().save_pretrained(tmp_path / "m")
    kw = dict(steps=6, length=12, prompt="\x01\x02", device="cpu")  # bytes 1, 2 (the model has 11 ids)
    whole = sample_records(tmp_path / "m", num_samples=5, batch_size=2, **kw)
    assert [r["sample"] for r in whole] == [0, 1, 2, 3, 4]
    # batch j is an ordinary run with seed + j
    for j, start in enumerate((0, 2, 4)):
        alone = sample_records(tmp_path / "m", num_samples=min(2, 5 - start), seed=j, **kw)
        assert [r["tokens"] for r in alone] == [r["tokens"] for r in whole[start:start + 2]]
        assert [r["nfe"] for r in alone] == [r["nfe"] for r in whole[start:start + 2]]
    assert all(r["tokens"][:2] == [1, 2] and len(r["tokens"]) == 12 for r in whole)
    with pytest.raises(ValueError, match="'batch_size' must be >= 1"):
        sample_records(tmp_path / "m", num_samples=2, batch_size=0, **kw)
    with pytest.raises(ValueError, match="'num_samples' must be >= 1"):
        sample_records(tmp_path / "m", num_samples=0, **kw)
