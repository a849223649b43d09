"""The zero-shot benchmark texts of the RADD/SEDD evaluation, read from local files.

Names: lambada, wikitext2, wikitext103, ptb, lm1b (files under a data folder: ``--data-dir``,
$RADD_FAST_DATA, or ../shared/data next to the source tree), or any .txt/.jsonl path. As the
reference evaluation does: apply the dataset's detokeniser, append EOS after every line (every JSON
document for .jsonl), concatenate, and cut fixed-length chunks (the remainder is dropped).

The detokenisers undo each corpus' tokenised spelling (facts from shared/data/PROVENANCE.md):
WikiText's " @-@ " number separators, spaced punctuation and "= = =" headings; PTB's " 's",
" n't", "\\/", " N " and "<unk>"; LM1B's spaced punctuation, quotes and URLs; LAMBADA's curly
quotes (plus a leading newline).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

DATA_ENV = "RADD_FAST_DATA"


def wikitext_detokenize(s: str) -> str:
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    # headings "= = Career = =" -> "== Career =="
    s = re.sub(r"(?<=[=]) (?==)", "", s)
    for p in (":", ";", ".", "!", "?", ","):
        s = s.replace(f" {p} ", f"{p} ")
    s = s.replace(" 's", "'s").replace(" n't", "n't")
    s = re.sub(r"\( ([^()]*?) \)", r"(\1)", s)
    s = re.sub(r"\[ ([^\[\]]*?) \]", r"[\1]", s)
    s = re.sub(r'" ([^"]*?) "', r'"\1"', s)
    return s.replace(" \n", "\n").replace("\n ", "\n").strip(" ")


def ptb_detokenize(s: str) -> str:
    s = s.replace(" 's", "'s").replace("s ' ", "s' ").replace(" n't", "n't")
    s = s.replace(" \n ", "\n").replace("\\/", "/").replace("<unk>", "?")
    s = re.sub(r"(?<= )N(?= )", "1", s)
    for p in (" 're", " 've", " 'll", " 'm", " 'd"):
        s = s.replace(p, p[1:])
    return s.strip(" ")


def lm1b_detokenize(s: str) -> str:
    s = s.replace("http : / / ", "http://").replace("https : / / ", "https://")
    s = re.sub(r" \. (com|org|net|co\.uk|gov)\b", r".\1", s)
    for p in (".", ",", "!", "?", ":", ";", "'s", "n't", "'re", "'ve", "'ll", "'m", "'d", "%", ")"):
        s = s.replace(" " + p, p)
    s = s.replace("( ", "(").replace("$ ", "$")
    s = re.sub(r'" ([^"]*?) "', r'"\1"', s)
    s = s.replace("` ", "'").replace(" '", "'") if "` " in s else s
    return s.strip(" ")


def lambada_detokenize(s: str) -> str:
    s = s.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    return "\n" + s.strip()


@dataclass(frozen=True)
class Benchmark:
    name: str
    relpath: str
    detokenize: Callable[[str], str]
    jsonl: bool = False


BENCHMARKS = {
    "lambada": Benchmark("lambada", "lambada/lambada_test.jsonl", lambada_detokenize, jsonl=True),
    # WikiText-2 and WikiText-103 share the same raw test split (PROVENANCE.md)
    "wikitext2": Benchmark("wikitext2", "wikitext/wiki.test.raw", wikitext_detokenize),
    "wikitext103": Benchmark("wikitext103", "wikitext/wiki.test.raw", wikitext_detokenize),
    "ptb": Benchmark("ptb", "ptb/ptb.test.txt", ptb_detokenize),
    "lm1b": Benchmark("lm1b", "lm1b/news.en.heldout-00000-of-00050", lm1b_detokenize),
}


def data_dir(path: str | os.PathLike | None = None) -> Path:
    if path is not None:
        return Path(path)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def benchmark_documents(name_or_path: str, data_path: str | os.PathLike | None = None) -> tuple[str, list[str]]:
    """(resolved name, detokenised documents) of a benchmark name or a .txt/.jsonl path."""
    if name_or_path in BENCHMARKS:
        b = BENCHMARKS[name_or_path]
        path, detok, jsonl = data_dir(data_path) / b.relpath, b.detokenize, b.jsonl
        if not path.is_file():
            raise FileNotFoundError(f"benchmark '{b.name}' expects {path}; pass --data-dir or set {DATA_ENV}")
    else:
        path = Path(name_or_path)
        if path.suffix not in (".txt", ".jsonl", ".raw") and not path.exists():
            raise ValueError(f"unknown dataset {name_or_path!r}: expected one of {', '.join(BENCHMARKS)} "
                             "or a .txt/.jsonl file")
        if not path.is_file():
            raise FileNotFoundError(f"dataset file {path} does not exist")
        detok, jsonl = (lambda s: s), path.suffix == ".jsonl"
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"dataset file {path} is unreadable: {e}") from None
    if jsonl:
        docs = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    docs.append(json.loads(line)["text"])
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{n}: expected a JSON object with a \"text\" field ({e})") from None
    else:
        docs = raw.split("\n")
        if docs and docs[-1] == "":
            docs.pop()  # the file's final newline ends the last line; it is not an empty line
    if not any(d.strip() for d in docs):
        raise ValueError(f"dataset file {path} holds no text")
    return (name_or_path if name_or_path in BENCHMARKS else path.name), [detok(d) for d in docs]


def benchmark_tokens(name_or_path: str, tokenizer, data_path=None) -> torch.Tensor:
    """All tokens of a benchmark, EOS after every line/document, as one 1-D int64 tensor."""
    _, docs = benchmark_documents(name_or_path, data_path)
    encode = tokenizer.encode_batch if hasattr(tokenizer, "encode_batch") else (lambda ds: [tokenizer.encode(d) for d in ds])
    ids: list[int] = []
    for enc in encode(docs):
        ids.extend(enc)
        ids.append(tokenizer.eos_id)
    return torch.tensor(ids, dtype=torch.int64)


def benchmark_chunks(name_or_path: str, tokenizer, length: int = 1024, data_path=None) -> torch.Tensor:
    """(n_chunks, length) consecutive chunks; the remainder that does not fill a chunk is dropped."""
    if length < 1:
        raise ValueError(f"'length' must be >= 1, got {length}")
    toks = benchmark_tokens(name_or_path, tokenizer, data_path)
    n = len(toks) // length
    if n == 0:
        raise ValueError(f"dataset {name_or_path} has {len(toks)} tokens, fewer than one chunk of {length}")
    return toks[: n * length].view(n, length)
