"""The benchmark texts: each loads from ../shared/data, its detokeniser is applied, and its GPT-2
token count is stable (recorded here; a change means the evaluation changed)."""

import hashlib

import pytest

from radd_fast import benchmarks as B
from radd_fast.tokenizers import GPT2Tokenizer

from conftest import SHARED

# Tokens with EOS after every line/document, after detokenisation (GPT-2 BPE).
TOKENS = {"lambada": 421_121, "wikitext2": 272_198, "wikitext103": 272_198, "ptb": 91_054, "lm1b": 176_376}
DOCS = {"lambada": 5153, "wikitext2": 4358, "wikitext103": 4358, "ptb": 3761, "lm1b": 6075}


@pytest.fixture(scope="module")
def tok():
    return GPT2Tokenizer(SHARED / "gpt2_tokenizer")


def test_files_are_the_published_ones():
    for line in (SHARED / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split()
        assert hashlib.sha256((SHARED / rel).read_bytes()).hexdigest() == digest, rel


@pytest.mark.parametrize("name", list(B.BENCHMARKS))
def test_dataset_loads_with_stable_token_count(name, tok):
    _, docs = B.benchmark_documents(name, SHARED)
    assert len(docs) == DOCS[name]
    toks = B.benchmark_tokens(name, tok, SHARED)
    assert len(toks) == TOKENS[name]
    assert int((toks == tok.eos_id).sum()) == DOCS[name]  # one EOS per line/document
    chunks = B.benchmark_chunks(name, tok, 1024, SHARED)
    assert chunks.shape == (TOKENS[name] // 1024, 1024)


def test_detokenisers_applied():
    text = "\n".join(B.benchmark_documents("wikitext2", SHARED)[1])
    assert " @-@ " not in text and " @,@ " not in text and " @.@ " not in text and " , " not in text
    assert "= = " not in text and "== Career ==" in text
    ptb = "\n".join(B.benchmark_documents("ptb", SHARED)[1])
    assert " n't" not in ptb and "<unk>" not in ptb and " N " not in ptb and "wasn't" in ptb
    lam = B.benchmark_documents("lambada", SHARED)[1]
    assert all(d.startswith("\n") for d in lam) and not any("\u201c" in d or "\u2019" in d for d in lam)
    lm = "\n".join(B.benchmark_documents("lm1b", SHARED)[1])
    raw = (SHARED / B.BENCHMARKS["lm1b"].relpath).read_text()
    for spaced in (" .", " ,", " 's"):
        assert lm.count(spaced) < raw.count(spaced) / 20, spaced


def test_detokeniser_examples():
    assert B.wikitext_detokenize(' a 1 @,@ 000 @-@ year " old " ( ok ) = = H = = ') == 'a 1,000-year "old" (ok) == H =='
    assert B.ptb_detokenize(" it 's N \\/ year <unk> do n't ") == "it's 1 / year ? don't"
    assert B.lm1b_detokenize('See http : / / example . com , he said .') == "See http://example.com, he said."
    assert B.lambada_detokenize("\u201cHi\u201d, she\u2019s") == "\n\"Hi\", she's"


def test_bad_input(tmp_path, tok):
    with pytest.raises(ValueError, match="unknown dataset 'wiki'"):
        B.benchmark_documents("wiki", SHARED)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        B.benchmark_documents(str(tmp_path / "x.txt"), SHARED)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no text"):
        B.benchmark_documents(str(tmp_path / "empty.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="unreadable"):
        B.benchmark_documents(str(tmp_path / "bin.txt"))
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        B.benchmark_documents("ptb", tmp_path)
    with pytest.raises(ValueError, match="fewer than one chunk"):
        (tmp_path / "short.txt").write_text("hello\n")
        B.benchmark_chunks(str(tmp_path / "short.txt"), tok, 1024)
