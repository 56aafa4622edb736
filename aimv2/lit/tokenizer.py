"""Text tokenizers for the text tower: the CLIP BPE tokenizer a released LiT folder ships
as ``tokenizer.json`` (read with the ``tokenizers`` package), or this library's
SentencePiece models (:class:`aimv2.text.Tokenizer`) for its own runs.

Both answer ``encode(captions, context_length) -> int64 (B, context_length)`` with every
row closed by an eos, so the text tower finds where each caption ends. :func:`tokenize`
adds the check that nothing was cut (zero-shot prompts must fit the context).

Example:
    >>> from aimv2.text import builtin_tokenizer
    >>> tok = builtin_tokenizer("builtin:digits", 64)
    >>> tokenize(tok, ["the digit 7"], 8).shape
    (1, 8)
    >>> tokenize(tok, ["an 8 by 8 pixel image of the digit seven"], 4)
    Traceback (most recent call last):
    ...
    ValueError: texts[0]: 'an 8 by 8 pixel image of the digit seven' does not fit the text encoder's context of 4 tokens (eos included); shorten it
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

from ..text import Tokenizer, builtin_tokenizer

__all__ = ["BPETokenizer", "load_tokenizer", "tokenize", "CLIP_BOS", "CLIP_EOS"]

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


class BPETokenizer:
    """A ``tokenizer.json`` BPE tokenizer (CLIP's, in released LiT folders): captions are
    normalized and split as the file says, then ``bos + pieces + eos``, padded with
    ``pad`` (CLIP: eos = pad = 49,407, bos 49,406).

    The special tokens come from ``tokenizer_config.json`` beside the file when it names
    them, else CLIP's ``<|startoftext|>`` / ``<|endoftext|>``; pad defaults to eos.

    Example:
        >>> import tempfile
        >>> from tokenizers import Tokenizer as HF, models, pre_tokenizers
        >>> t = HF(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
        >>> t.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> _ = t.add_special_tokens([CLIP_BOS, CLIP_EOS])
        >>> path = Path(tempfile.mkdtemp()) / "tokenizer.json"; t.save(str(path))
        >>> tok = BPETokenizer.load(path)
        >>> tok.encode(["ab a"], 6).tolist(), (tok.bos_id, tok.eos_id, tok.pad_id)
        ([[3, 2, 0, 4, 4, 4]], (3, 4, 4))
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        bos_id: int | None,
        eos_id: int,
        pad_id: int | None = None,
        source: str = "<memory>",
    ) -> None:
        if not isinstance(tokenizer, tokenizers.Tokenizer):
            raise TypeError(
                f"tokenizer: expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}"
            )
        self._tok = tokenizer
        self.bos_id, self.eos_id = bos_id, int(eos_id)
        self.pad_id = self.eos_id if pad_id is None else int(pad_id)
        self.source = source

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read ``tokenizer.json`` (a file, or the folder holding it).

        Example:
            >>> BPETokenizer.load("/no/such/tokenizer.json")
            Traceback (most recent call last):
            ...
            FileNotFoundError: tokenizer: no such file '/no/such/tokenizer.json'
        """
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer: no such file {os.fspath(p)!r}")
        try:
            tok = tokenizers.Tokenizer.from_file(str(p))
        except Exception as err:  # the package raises its own exception types
            raise ValueError(f"tokenizer {str(p)!r}: not a tokenizers file ({err})") from None
        names = {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "pad_token": None}
        config = p.parent / "tokenizer_config.json"
        if config.is_file():
            try:
                data = json.loads(config.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                data = {}
            for key in names:
                found = _token_text(data.get(key)) if isinstance(data, dict) else None
                names[key] = found or names[key]
        ids = {k: (None if v is None else tok.token_to_id(v)) for k, v in names.items()}
        if ids["eos_token"] is None:
            raise ValueError(
                f"tokenizer {str(p)!r}: no end-of-text token {names['eos_token']!r} in its "
                f"vocabulary; the text tower pools at the first one"
            )
        return cls(
            tok,
            bos_id=ids["bos_token"],
            eos_id=ids["eos_token"],
            pad_id=ids["pad_token"],
            source=str(p),
        )

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"BPETokenizer({self.source!r}, vocab_size={self.vocab_size})"

    def encode(self, captions: Sequence[str], context_length: int = 77) -> np.ndarray:
        """Token ids int64 (B, context_length): ``bos`` (if any), the pieces, ``eos``, then
        ``pad``; a caption too long is cut so that eos still ends it (as CLIP's
        ``truncate=True``; :func:`tokenize` refuses instead).

        Example:
            >>> from tokenizers import Tokenizer as HF, models, pre_tokenizers
            >>> t = HF(models.WordLevel({"a": 0, "b": 1}, unk_token="a"))
            >>> t.pre_tokenizer = pre_tokenizers.Whitespace()
            >>> tok = BPETokenizer(t, bos_id=None, eos_id=1, pad_id=0)
            >>> tok.encode(["a a a a"], 3).tolist()
            [[0, 0, 1]]
        """
        if isinstance(captions, str) or not isinstance(captions, Sequence):
            raise TypeError(f"captions: expected a list of strings, got {type(captions).__name__}")
        for i, c in enumerate(captions):
            if not isinstance(c, str):
                raise TypeError(f"captions[{i}]: expected str, got {type(c).__name__}")
        head = [] if self.bos_id is None else [self.bos_id]
        if int(context_length) < len(head) + 1:
            raise ValueError(f"context_length={context_length!r}: too short for bos and eos")
        out = np.full((len(captions), int(context_length)), self.pad_id, dtype=np.int64)
        keep = int(context_length) - len(head) - 1
        for row, enc in enumerate(self._tok.encode_batch(list(captions), add_special_tokens=False)):
            ids = head + enc.ids[:keep] + [self.eos_id]
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids: Any) -> list[str]:
        """Captions from ids (B, T): up to the first eos, without bos and pads.

        Example:
            >>> from tokenizers import Tokenizer as HF, models, pre_tokenizers
            >>> t = HF(models.WordLevel({"a": 0, "b": 1, "c": 2}, unk_token="a"))
            >>> t.pre_tokenizer = pre_tokenizers.Whitespace()
            >>> BPETokenizer(t, bos_id=None, eos_id=2).decode([[0, 1, 2, 2]])
            ['a b']
        """
        arr = np.asarray(ids).reshape(-1, np.shape(ids)[-1]).tolist()
        texts = []
        for row in arr:
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            keep = [t for t in row if t not in (self.bos_id, self.pad_id)]
            texts.append(self._tok.decode(keep))
        return texts


def load_tokenizer(path: str | os.PathLike, vocab_size: int | None = None) -> Any:
    """A caption tokenizer from ``path``: ``tokenizer.json`` (or a folder holding one) →
    :class:`BPETokenizer`; a SentencePiece ``.model`` → :class:`aimv2.text.Tokenizer`;
    ``builtin:digits`` / ``builtin:shapes`` → the built-in set's SentencePiece model (at
    most ``vocab_size`` pieces).

    Example:
        >>> load_tokenizer("builtin:digits", 48).eos_id
        2
        >>> load_tokenizer("/no/such/folder")
        Traceback (most recent call last):
        ...
        FileNotFoundError: tokenizer '/no/such/folder': expected a tokenizer.json, a SentencePiece .model, a folder holding tokenizer.json or builtin:NAME
    """
    text = os.fspath(path)
    if text.startswith("builtin:"):
        if vocab_size is None:
            raise ValueError(f"tokenizer {text!r}: a built-in tokenizer needs vocab_size")
        return builtin_tokenizer(text.split("?")[0], vocab_size)
    p = Path(text)
    if p.is_dir() and (p / "tokenizer.json").is_file():
        return BPETokenizer.load(p)
    if p.is_file() and p.suffix == ".json":
        return BPETokenizer.load(p)
    if p.is_file():
        return Tokenizer.load(p)
    raise FileNotFoundError(
        f"tokenizer {text!r}: expected a tokenizer.json, a SentencePiece .model, a folder "
        f"holding tokenizer.json or builtin:NAME"
    )


def tokenize(
    tokenizer: Any, texts: Sequence[str], context_length: int, *, what: str = "texts"
) -> np.ndarray:
    """Token ids (B, context_length) of ``texts``, refusing (naming ``what[i]``) any text
    that does not fit the context with its eos — where the tokenizers themselves cut.

    Example:
        >>> from aimv2.text import builtin_tokenizer
        >>> tokenize(builtin_tokenizer("builtin:digits", 64), ["a", 3], 8)
        Traceback (most recent call last):
        ...
        TypeError: texts[1]: expected str, got int
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{what}: expected a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}]: expected str, got {type(t).__name__}")
    ids = np.asarray(tokenizer.encode(list(texts), context_length=int(context_length) + 1))
    eos = ids == tokenizer.eos_id
    first = np.where(eos.any(axis=1), eos.argmax(axis=1), ids.shape[1])
    for i, at in enumerate(first):
        if at >= context_length:
            raise ValueError(
                f"{what}[{i}]: {texts[i]!r} does not fit the text encoder's context of "
                f"{context_length} tokens (eos included); shorten it"
            )
    return ids[:, :context_length]
