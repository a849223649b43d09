"""Tokenizers, corpus preparation, token files and windows."""

import json

import numpy as np
import pytest
import torch

from radd_fast import data, tokenizers
from radd_fast.io import atomic_dir, atomic_write, remove_stale_temps

from conftest import SHARED


def test_gpt2_tokenizer_from_local_files():
    tok = tokenizers.GPT2Tokenizer(SHARED / "gpt2_tokenizer")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    text = "RADD's network has no time input; x = 3.14!"
    assert tok.decode(tok.encode(text)) == text
    # the special token's text is ordinary text, never EOS
    assert 50256 not in tok.encode("<|endoftext|>")
    with pytest.raises(ValueError, match="token ids must be in"):
        tok.decode([50257])


def test_gpt2_tokenizer_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder.json and vocab.bpe"):
        tokenizers.GPT2Tokenizer(tmp_path)


def test_byte_tokenizer_roundtrip():
    tok = tokenizers.ByteTokenizer()
    s = "naïve café — ok"
    assert tok.decode(tok.encode(s)) == s
    assert max(tok.encode(s)) < 256 and tok.eos_id == 0 and tok.vocab_size == 256
    with pytest.raises(ValueError):
        tok.decode([256])
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenizers.get_tokenizer("sentencepiece")


def test_stdlib_corpus_is_real_english():
    docs = list(data.stdlib_documents())
    total = sum(len(d) for d in docs)
    assert len(docs) > 500 and total > 1_500_000
    assert any("Return" in d for d in docs[:200])


def test_prepare_corpus_and_windows(tmp_path):
    src = tmp_path / "corpus.jsonl"
    src.write_text("\n".join(json.dumps({"text": f"document number {i} " * 5}) for i in range(40)) + "\n")
    tok = tokenizers.ByteTokenizer()
    train, val = data.prepare_corpus(src, tok, tmp_path / "cache", val_every=10)
    assert train.tokens.dtype == np.uint16
    ids = np.asarray(train.tokens)
    docs_in_train = int((ids == tok.eos_id).sum())
    assert docs_in_train == 36 and int((np.asarray(val.tokens) == tok.eos_id).sum()) == 4
    assert tok.decode(ids[: ids.tolist().index(0)].tolist()) == "document number 0 " * 5
    # cached: same files, not rewritten
    mtime = train.path.stat().st_mtime_ns
    train2, _ = data.prepare_corpus(src, tok, tmp_path / "cache", val_every=10)
    assert train2.path == train.path and train2.path.stat().st_mtime_ns == mtime
    s1 = data.WindowSampler(train, 16, 4, seed=3)
    s2 = data.WindowSampler(train, 16, 4, seed=3)
    a = s1.next()
    assert a.shape == (4, 16) and a.dtype == torch.int64 and torch.equal(a, s2.next())
    state = s1.state_dict()
    nxt = s1.next()
    s3 = data.WindowSampler(train, 16, 4, seed=99)
    s3.load_state_dict(state)
    assert torch.equal(s3.next(), nxt)
    # different ranks draw different windows
    assert not torch.equal(data.WindowSampler(train, 16, 4, seed=3, rank=1).next(), a)
    c = data.chunks(val, 8)
    assert c.shape[1] == 8 and torch.equal(c.flatten(), torch.from_numpy(np.asarray(val.tokens[: c.numel()], dtype=np.int64)))


def test_corpus_bad_input(tmp_path):
    tok = tokenizers.ByteTokenizer()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.prepare_corpus(tmp_path / "nope.txt", tok, tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="holds no text"):
        data.prepare_corpus(empty, tok, tmp_path / "c1")
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="no .txt or .jsonl"):
        data.prepare_corpus(tmp_path / "d", tok, tmp_path / "c2")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"nope": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object"):
        data.prepare_corpus(bad, tok, tmp_path / "c3")
    small = tmp_path / "small.txt"
    small.write_text("tiny")
    train, _ = data.prepare_corpus(small, tok, tmp_path / "c4", val_every=1)
    with pytest.raises(ValueError, match="fewer than one window"):
        data.WindowSampler(train, 64, 2)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(p, "w") as f:
            f.write("half of the new")
            raise RuntimeError("crash")
    assert p.read_text() == "old" and list(tmp_path.iterdir()) == [p]
    with atomic_write(p, "w") as f:
        f.write("new")
    assert p.read_text() == "new" and list(tmp_path.iterdir()) == [p]


def test_atomic_dir(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("x")
            raise RuntimeError("crash")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("x")
    assert (target / "a").read_text() == "x"
    with pytest.raises(FileExistsError):
        with atomic_dir(target):
            pass
    (tmp_path / ".tmp-ckpt.abc").mkdir()
    assert len(remove_stale_temps(tmp_path)) == 1 and sorted(tmp_path.iterdir()) == [target]
