"""The RADD model: reference names and shapes, equivalence with the pure-PyTorch reference network,
checkpoints in the reference layout, and bad input."""

import dataclasses
import json

import pytest
import torch

from radd_fast import reference as R
from radd_fast.checkpoint import CheckpointError, load_pretrained, save_pretrained
from radd_fast.model import PRESETS, RADD, RADDConfig, preset

REFERENCE_KEYS_BLOCK = ["norm1.weight", "norm1.bias", "attn_qkv.weight", "attn_out.weight", "norm2.weight",
                        "norm2.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]


def reference_keys(n_blocks):
    keys = ["vocab_embed.embedding", "rotary_emb.inv_freq"]
    for i in range(n_blocks):
        keys += [f"blocks.{i}.{k}" for k in REFERENCE_KEYS_BLOCK]
    return keys + ["output_layer.norm_final.weight", "output_layer.norm_final.bias",
                   "output_layer.linear.weight", "output_layer.linear.bias"]


def small_config(**kw):
    return RADDConfig(**{**dict(vocab_size=37, hidden_size=48, n_heads=3, n_blocks=2, max_length=64,
                                dropout=0.0, tokenizer="bytes"), **kw})


def randomised(model: RADD, seed=0) -> RADD:
    """Random weights everywhere (the output layer starts at zero, LayerNorms at one)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.5 if p.dim() > 1 else 0.2)
                    + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model


def test_small_preset_matches_the_paper():
    m = RADD(preset("small"), impl="reference")
    assert m.num_parameters() == 162_265_682
    assert list(m.state_dict()) == reference_keys(12)
    assert m.state_dict()["vocab_embed.embedding"].shape == (50258, 768)
    assert PRESETS["medium"].hidden_size == 1024 and PRESETS["medium"].n_blocks == 24 and PRESETS["medium"].n_heads == 16


def test_initialisation():
    m = RADD(small_config())
    assert torch.all(m.blocks[0].norm1.bias == 1) and torch.all(m.blocks[1].norm2.weight == 1)
    assert torch.all(m.output_layer.norm_final.bias == 1)
    assert torch.all(m.output_layer.linear.weight == 0) and torch.all(m.output_layer.linear.bias == 0)
    assert m.vocab_embed.embedding.std() > 0
    # zero output layer: uniform predictions
    x = torch.randint(0, 38, (2, 5))
    torch.testing.assert_close(m(x), torch.full((2, 5, 37), -torch.log(torch.tensor(37.0)).item()))


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_float64_equivalence_with_reference_network(impl):
    cfg = small_config()
    model = randomised(RADD(cfg, impl=impl)).double()
    x = torch.randint(0, cfg.vocab_size + 1, (3, 17))
    params = {k: v.detach().clone().requires_grad_(v.dtype.is_floating_point and k != "rotary_emb.inv_freq")
              for k, v in model.state_dict().items()}
    ref = R.radd_forward(params, x, cfg.n_heads)
    ours = model(x)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    # loss gradients: NLL at masked positions, weighted
    target = torch.randint(0, cfg.vocab_size, x.shape)
    w = (x == cfg.vocab_size).double() * 1.7 + 0.3
    nll = lambda lp: -(lp.gather(-1, target[..., None]).squeeze(-1) * w).sum()
    nll(ref).backward()
    nll(ours).backward()
    for name, p in model.named_parameters():
        g_ref = params[name].grad
        rel = ((p.grad - g_ref).norm() / g_ref.norm().clamp_min(1e-300)).item()
        assert rel < 1e-10, (name, rel)


def test_hidden_and_row_logits_match_forward():
    cfg = small_config()
    model = randomised(RADD(cfg)).double()
    x = torch.randint(0, cfg.vocab_size + 1, (2, 9))
    h = model.hidden(x)
    rows = torch.tensor([0, 5, 17])
    lp = torch.log_softmax(model.logits(h.reshape(-1, cfg.hidden_size)[rows]), -1)
    torch.testing.assert_close(lp, model(x).reshape(-1, cfg.vocab_size)[rows])
    torch.testing.assert_close(model(x, return_hidden=True), h)


def test_checkpoint_roundtrip_in_reference_layout(tmp_path):
    cfg = small_config()
    model = randomised(RADD(cfg))
    save_pretrained(model, tmp_path / "m")
    conf = json.loads((tmp_path / "m" / "config.json").read_text())
    assert conf["tokens"] == 37 and conf["model"]["hidden_size"] == 48 and conf["model"]["n_heads"] == 3
    assert conf["model"]["n_blocks"] == 2 and conf["noise"]["type"] == "loglinear"
    from safetensors.torch import load_file

    assert list(load_file(str(tmp_path / "m" / "model.safetensors"))) == sorted(reference_keys(2))
    loaded = load_pretrained(tmp_path / "m")
    x = torch.randint(0, 38, (2, 7))
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert RADD.from_pretrained(tmp_path / "m").config == cfg
    with pytest.raises(FileExistsError, match="overwrite"):
        save_pretrained(model, tmp_path / "m")
    save_pretrained(randomised(RADD(cfg), seed=1), tmp_path / "m", overwrite=True)
    assert not torch.equal(load_pretrained(tmp_path / "m")(x), model(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_reference_style_checkpoint_loads_without_renaming(tmp_path):
    # A folder as the reference code publishes it: its hydra-style config.json and model.safetensors.
    cfg = small_config(vocab_size=256)
    src = randomised(RADD(cfg))
    from safetensors.torch import save_file

    d = tmp_path / "ref"
    d.mkdir()
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({
        "ngpus": 8, "tokens": 256, "training": {"batch_size": 512, "ema": 0.9999},
        "graph": {"type": "absorb"}, "noise": {"type": "loglinear", "eps": 1e-3},
        "model": {"name": "tiny", "type": "ddit", "hidden_size": 48, "n_heads": 3, "n_blocks": 2,
                  "dropout": 0.0, "length": 64, "scale_by_sigma": False}}))
    m = load_pretrained(d)
    assert m.config.vocab_size == 256 and m.config.tokenizer == "bytes"
    x = torch.randint(0, 257, (2, 11))
    torch.testing.assert_close(m(x), src(x), rtol=0, atol=0)


def test_damaged_and_mismatched_checkpoints(tmp_path):
    cfg = small_config()
    save_pretrained(randomised(RADD(cfg)), tmp_path / "ok")
    import shutil

    def variant(name):
        shutil.copytree(tmp_path / "ok", tmp_path / name)
        return tmp_path / name

    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_pretrained(tmp_path / "missing")
    d = variant("noconf")
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        load_pretrained(d)
    d = variant("badjson")
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: unreadable JSON"):
        load_pretrained(d)
    d = variant("truncated")
    b = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(b[: len(b) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupted \(its SHA-256 differs"):
        load_pretrained(d)
    (d / "checksums.json").unlink()  # as in a reference-layout folder: the reader itself must notice
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable or damaged"):
        load_pretrained(d)
    d = variant("flipped")
    b = bytearray((d / "model.safetensors").read_bytes())
    b[-5] ^= 0xFF  # a flipped byte inside the tensor data: only the checksum can tell
    (d / "model.safetensors").write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_pretrained(d)
    d = variant("vocab")
    conf = json.loads((d / "config.json").read_text())
    conf["radd_fast"]["config"]["vocab_size"] = 50
    (d / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match="vocabulary mismatch: vocab_embed.embedding has 38 rows"):
        load_pretrained(d)
    d = variant("shape")
    conf = json.loads((d / "config.json").read_text())
    conf["radd_fast"]["config"]["n_blocks"] = 3
    (d / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match=r"missing \['blocks.2"):
        load_pretrained(d)
    d = variant("width")
    conf = json.loads((d / "config.json").read_text())
    conf["radd_fast"]["config"].update(hidden_size=60, n_heads=3)
    (d / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match="has shape"):
        load_pretrained(d)
    with pytest.raises(ValueError, match="'weights' must be"):
        load_pretrained(tmp_path / "ok", weights="best")


def test_bad_input():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        preset("huge")
    with pytest.raises(ValueError, match="not divisible"):
        RADDConfig(hidden_size=50, n_heads=3)
    with pytest.raises(ValueError, match="'impl' must be one of"):
        RADD(small_config(), impl="cuda")
    m = RADD(small_config())
    with pytest.raises(ValueError, match=r"outside \[0, 37\].*max 38"):
        m(torch.tensor([[1, 38]]))
    with pytest.raises(ValueError, match="min -1"):
        m(torch.tensor([[-1, 3]]))
    with pytest.raises(TypeError, match="int64 or int32"):
        m(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="empty"):
        m(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="\\(batch, length\\)"):
        m(torch.tensor([1, 2]))


def _block_bytes_per_token(cfg, checkpointing, dtype=torch.bfloat16):
    """Bytes that autograd keeps per token per block during a training forward (unique storages seen
    by the saved-tensor hooks; differences over two lengths and two depths cancel everything else)."""
    def saved(n_blocks, L):
        torch.manual_seed(0)
        model = RADD(dataclasses.replace(cfg, n_blocks=n_blocks)).train().set_activation_checkpointing(checkpointing)
        sizes = {}

        def pack(t):
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = torch.randint(0, cfg.vocab_size + 1, (2, L))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=dtype):
            model.hidden(x)
        return sum(sizes.values())

    per_block = (saved(2, 128) - saved(2, 64)) - (saved(1, 128) - saved(1, 64))
    return per_block / (2 * 64)


def test_activation_checkpointing_keeps_only_block_inputs():
    cfg = preset("small", vocab_size=100)  # the small model's widths: H 768, 12 heads
    kept, full = _block_bytes_per_token(cfg, True), _block_bytes_per_token(cfg, False)
    print(f"bytes kept per token per block: {full:.0f} without, {kept:.0f} with activation checkpointing")
    assert kept == cfg.hidden_size * 4  # the block's fp32 input, nothing else
    assert full == 30_784  # the figure RADD.set_activation_checkpointing quotes


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_activation_checkpointing_leaves_gradients_unchanged(impl):
    # With dropout on: the recomputed forward must draw the same masks (restored RNG state).
    cfg = small_config(dropout=0.3)
    x = torch.randint(0, cfg.vocab_size + 1, (3, 21))
    target = torch.randint(0, cfg.vocab_size, x.shape)
    grads, outs = [], []
    for ac in (False, True):
        model = randomised(RADD(cfg, impl=impl)).train().set_activation_checkpointing(ac)
        torch.manual_seed(5)
        lp = model(x)
        lp.gather(-1, target[..., None]).sum().backward()
        outs.append(lp.detach())
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert torch.equal(outs[0], outs[1])
    for k in grads[0]:
        assert torch.equal(grads[0][k], grads[1][k]), k
    # evaluation and no-grad calls never recompute: same outputs either way
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), randomised(RADD(cfg, impl=impl)).eval()(x), rtol=0, atol=0)


def test_activation_checkpointing_with_compiled_blocks():
    cfg = small_config(dropout=0.0)
    x = torch.randint(0, cfg.vocab_size + 1, (2, 16))
    target = torch.randint(0, cfg.vocab_size, x.shape)
    grads = []
    for ac, comp in ((False, False), (True, True)):
        model = randomised(RADD(cfg)).train().set_activation_checkpointing(ac)
        if comp:
            model.compile_blocks()
        model(x).gather(-1, target[..., None]).sum().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for k in grads[0]:  # compiled code rounds differently: relative to each gradient's scale
        scale = grads[0][k].abs().max().item()
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-4 * scale, msg=k)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("n_blocks", [0, 1, 2])
def test_hidden_of_selected_rows(impl, n_blocks):
    # hidden(tokens, rows=...) -- the sampler's path: the last block's projection and MLP on those
    # rows only -- equals selecting them from the full hidden states (float64: to rounding).
    cfg = small_config(n_blocks=n_blocks)
    model = randomised(RADD(cfg, impl=impl)).double().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, cfg.vocab_size + 1, (3, 17), generator=g)
    pad = torch.rand(3, 17, generator=g) > 0.2
    order = torch.randint(0, 5, (3, 17), generator=g)
    rows = torch.tensor([50, 0, 5, 16, 17, 40, 33, 5])  # any order, repeats allowed
    for kw in ({}, {"key_padding_mask": pad, "order": order}):
        full = model.hidden(x, **kw).reshape(-1, cfg.hidden_size)
        part = model.hidden(x, rows=rows, **kw)
        assert part.shape == (len(rows), cfg.hidden_size)
        torch.testing.assert_close(part, full[rows], rtol=1e-12, atol=1e-12)
    assert model.hidden(x, rows=rows[:0]).shape == (0, cfg.hidden_size)
