"""Training data: documents -> one memory-mapped token file (EOS after each document) -> random
fixed-length windows.

Sources:
  * "stdlib" -- the embedded default corpus: the Python standard library's own documentation
    (``pydoc_data.topics`` and the docstrings of every stdlib source file, read with ``ast``, so no
    module is imported). About 2 MB of English; no download.
  * a path: a .txt file (one document), a .jsonl file (one document per line, its "text" field), or
    a folder of such files (sorted, recursively).

A corpus is tokenised once into ``<cache>/<key>.{train,val}.bin`` (uint16 when the vocabulary fits,
else uint32) plus a JSON sidecar; the key hashes the tokenizer and the source files' names, sizes and
modification times, so a changed source is re-tokenised. Every file is written atomically.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write

DEFAULT_CACHE = Path(os.environ.get("RADD_FAST_CACHE", Path.home() / ".cache" / "radd_fast"))


# ------------------------------------------------------------------------------------------- sources
def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}
    files = []
    for p in sorted(root.rglob("*.py")):
        if skip.isdisjoint(p.relative_to(root).parts):
            files.append(p)
    return files


def _docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40:
                parts.append(doc.strip())
    return "\n\n".join(parts)


def stdlib_documents() -> Iterator[str]:
    """The embedded default corpus: pydoc's topic help texts, then each stdlib module's docstrings."""
    import pydoc_data.topics

    for key in sorted(pydoc_data.topics.topics):
        yield pydoc_data.topics.topics[key].strip()
    for f in _stdlib_files():
        text = _docstrings(f)
        if text:
            yield text


def _source_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise ValueError(f"corpus folder {path} holds no .txt or .jsonl files")
        return files
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"corpus path {path} does not exist")


def file_documents(path: Path) -> Iterator[str]:
    """Documents of one .txt (the whole file) or .jsonl (each line's "text") file."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{n}: expected a JSON object with a \"text\" field ({e})") from None
                if text:
                    yield text
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield text


def documents(source: str | os.PathLike) -> Iterator[str]:
    if str(source) == "stdlib":
        yield from stdlib_documents()
        return
    for f in _source_files(Path(source)):
        yield from file_documents(f)


def _source_key(source: str | os.PathLike, tokenizer) -> str:
    h = hashlib.sha256(json.dumps(tokenizer.spec(), sort_keys=True).encode())
    if str(source) == "stdlib":
        h.update(f"stdlib {sys.version}".encode())
        files = _stdlib_files()
    else:
        files = _source_files(Path(source))
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------- token files
def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


@dataclass
class TokenFile:
    """A memory-mapped 1-D array of token ids, with EOS after every document."""

    path: Path
    tokens: np.ndarray
    vocab_size: int

    @classmethod
    def open(cls, path: str | os.PathLike) -> "TokenFile":
        path = Path(path)
        meta_path = path.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text())
            tokens = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"token file {path} (or its {meta_path.name}) is unreadable: {e}") from None
        if len(tokens) != meta["n_tokens"]:
            raise ValueError(f"token file {path} holds {len(tokens)} tokens, its sidecar says {meta['n_tokens']}")
        return cls(path, tokens, meta["vocab_size"])

    @staticmethod
    def write(path: str | os.PathLike, docs, tokenizer) -> "TokenFile":
        """Tokenise `docs` into `path` (EOS after each document), atomically; returns it opened."""
        path = Path(path)
        dt = token_dtype(tokenizer.vocab_size)
        n = 0
        with atomic_write(path, "wb") as f:
            batch: list[str] = []

            def flush():
                nonlocal n
                enc = tokenizer.encode_batch(batch) if hasattr(tokenizer, "encode_batch") else map(tokenizer.encode, batch)
                for ids in enc:
                    arr = np.asarray(list(ids) + [tokenizer.eos_id], dtype=dt)
                    f.write(arr.tobytes())
                    n += len(arr)
                batch.clear()

            for d in docs:
                batch.append(d)
                if len(batch) >= 256:
                    flush()
            flush()
        meta = {"dtype": dt.name, "n_tokens": n, "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
                "tokenizer": tokenizer.spec()}
        with atomic_write(path.with_suffix(".json"), "w") as f:
            json.dump(meta, f)
        return TokenFile.open(path)


def prepare_corpus(source: str | os.PathLike, tokenizer, cache_dir: str | os.PathLike | None = None,
                   val_every: int = 20) -> tuple[TokenFile, TokenFile]:
    """Tokenise `source` once (cached) into a training and a validation token file.

    Every `val_every`-th document goes to validation, so both splits cover the whole source.
    """
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    key = _source_key(source, tokenizer)
    train_path, val_path = cache / f"{key}.train.bin", cache / f"{key}.val.bin"
    if train_path.exists() and val_path.exists() and train_path.with_suffix(".json").exists() \
            and val_path.with_suffix(".json").exists():
        try:
            return TokenFile.open(train_path), TokenFile.open(val_path)
        except ValueError:
            pass  # damaged cache: rebuild it
    docs = list(documents(source))
    if not docs:
        raise ValueError(f"corpus {source} holds no text")
    val_docs = docs[val_every - 1 :: val_every] or docs[-1:]
    train_docs = [d for i, d in enumerate(docs) if (i + 1) % val_every != 0] or docs
    return TokenFile.write(train_path, train_docs, tokenizer), TokenFile.write(val_path, val_docs, tokenizer)


# -------------------------------------------------------------------------------------------- windows
class WindowSampler:
    """Random fixed-length windows of a token file, reproducible and resumable.

    Each rank of a distributed run draws from its own generator (seeded by seed and rank), so ranks
    see different data; ``state_dict`` captures the generator and the number of batches drawn.
    """

    def __init__(self, data: TokenFile, length: int, batch_size: int, seed: int = 0, rank: int = 0):
        if length < 1 or batch_size < 1:
            raise ValueError(f"WindowSampler: length and batch_size must be >= 1, got {length}, {batch_size}")
        if len(data.tokens) < length:
            raise ValueError(
                f"token file {data.path} holds {len(data.tokens)} tokens, fewer than one window of {length}"
            )
        self.data, self.length, self.batch_size = data, length, batch_size
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
        self.batches = 0

    def next(self) -> torch.Tensor:
        """A (batch_size, length) int64 batch."""
        n = len(self.data.tokens) - self.length + 1
        starts = torch.randint(0, n, (self.batch_size,), generator=self.generator).tolist()
        out = np.stack([np.asarray(self.data.tokens[s : s + self.length], dtype=np.int64) for s in starts])
        self.batches += 1
        return torch.from_numpy(out)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.batches = int(state["batches"])


def chunks(data: TokenFile, length: int, max_chunks: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping windows (n, length) from the start of a token file (validation)."""
    n = len(data.tokens) // length
    if max_chunks is not None:
        n = min(n, max_chunks)
    if n == 0:
        raise ValueError(f"token file {data.path} holds {len(data.tokens)} tokens, fewer than one chunk of {length}")
    return torch.from_numpy(np.asarray(data.tokens[: n * length], dtype=np.int64).reshape(n, length))
