"""Caption tokenizer: a SentencePiece model with fixed special ids.

Captions are lower-cased, encoded, closed with ``eos`` and padded with ``pad`` to the
decoder's context length. Models trained here have ``pad=0``, ``unk=1``, ``eos=2`` and
no ``bos`` (the AIMv2 decoder prepends its own learned start token). A model loaded from
elsewhere (e.g. SigLIP's) keeps its own ids, read from the model; it must define a pad
and an eos piece.

Example:
    >>> import tempfile, os
    >>> from aimv2.text import Tokenizer
    >>> caps = ["a red circle", "a blue square", "a green triangle", "two red squares"] * 5
    >>> tok = Tokenizer.train(caps, 24, os.path.join(tempfile.mkdtemp(), "t.model"))
    >>> ids = tok.encode(["A red square"], context_length=8)
    >>> ids.shape, int(ids[0, -1]), tok.decode(ids)
    ((1, 8), 0, ['a red square'])
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from . import atomic
from .data import builtin_captions

__all__ = ["PAD_ID", "UNK_ID", "EOS_ID", "Tokenizer", "builtin_tokenizer", "cache_dir"]

PAD_ID = 0
UNK_ID = 1
EOS_ID = 2
MODEL_TYPES = ("unigram", "bpe")


def _clean(caption: str) -> str:
    # SentencePiece reads one sentence per line; fold line breaks into spaces.
    return " ".join(caption.lower().split())


class Tokenizer:
    """A SentencePiece caption tokenizer: lower-case, encode, append eos, pad.

    Build one with :meth:`load`, :meth:`from_bytes` or :meth:`train`.

    Example:
        >>> import tempfile, os
        >>> caps = ["the digit one", "the digit two", "the digit three"] * 4
        >>> tok = Tokenizer.train(caps, 16, os.path.join(tempfile.mkdtemp(), "d.model"))
        >>> tok.vocab_size, tok.pad_id, tok.unk_id, tok.eos_id
        (16, 0, 1, 2)
    """

    def __init__(self, processor: spm.SentencePieceProcessor, source: str = "<memory>") -> None:
        if not isinstance(processor, spm.SentencePieceProcessor):
            raise TypeError(
                f"processor: expected a SentencePieceProcessor, got {type(processor).__name__}"
            )
        if processor.pad_id() < 0 or processor.eos_id() < 0:
            raise ValueError(
                f"tokenizer model {source}: needs a pad and an eos piece (pad_id="
                f"{processor.pad_id()}, eos_id={processor.eos_id()}); train one with "
                "Tokenizer.train"
            )
        self._sp = processor
        self.source = source

    # -- construction

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a SentencePiece ``.model`` file.

        Example:
            >>> Tokenizer.load("/no/such.model")
            Traceback (most recent call last):
            ...
            FileNotFoundError: tokenizer model: no such file '/no/such.model'
        """
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer model: no such file {os.fspath(path)!r}")
        return cls.from_bytes(p.read_bytes(), source=os.fspath(p))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<memory>") -> Tokenizer:
        """Load a serialized SentencePiece model (e.g. one stored in a checkpoint).

        Example:
            >>> import tempfile, os
            >>> tok = Tokenizer.train(["a cat", "a dog"] * 3, 11, os.path.join(tempfile.mkdtemp(), "m"))
            >>> Tokenizer.from_bytes(tok.to_bytes()).vocab_size
            11
        """
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise ValueError(f"tokenizer model {source}: expected non-empty bytes")
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(bytes(data))
        except Exception as err:
            raise ValueError(
                f"tokenizer model {source}: not a SentencePiece model ({err})"
            ) from None
        return cls(sp, source)

    def to_bytes(self) -> bytes:
        """The serialized model (what :meth:`from_bytes` reads).

        Example:
            >>> import tempfile, os
            >>> tok = Tokenizer.train(["a cat", "a dog"] * 3, 11, os.path.join(tempfile.mkdtemp(), "m"))
            >>> len(tok.to_bytes()) > 0
            True
        """
        return self._sp.serialized_model_proto()

    @classmethod
    def train(
        cls,
        captions: Iterable[str],
        vocab_size: int,
        out: str | os.PathLike,
        *,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
        split_digits: bool = True,
        hard_vocab_limit: bool = True,
    ) -> Tokenizer:
        """Train a model on lower-cased ``captions`` and write it to ``out`` atomically.

        Deterministic: one thread, every sentence used in the given order, no shuffling,
        so the same captions and settings give the same bytes. Special ids: pad=0,
        unk=1, eos=2, no bos. With ``hard_vocab_limit=False`` a corpus too small for
        ``vocab_size`` gives a smaller model instead of an error.

        Example:
            >>> import tempfile, os
            >>> out = os.path.join(tempfile.mkdtemp(), "caps.model")
            >>> tok = Tokenizer.train(["A cat", "a dog", "two cats"] * 3, 14, out)
            >>> os.path.exists(out), tok.vocab_size
            (True, 14)
        """
        if isinstance(captions, str):
            raise TypeError("captions: expected an iterable of strings, got one str")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={model_type!r}: expected one of {MODEL_TYPES}")
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 4:
            raise ValueError(
                f"vocab_size={vocab_size!r}: expected an integer >= 4 (3 special pieces + text)"
            )
        sentences = []
        for i, c in enumerate(captions):
            if not isinstance(c, str):
                raise TypeError(f"captions[{i}]: expected str, got {type(c).__name__}")
            c = _clean(c)
            if c:
                sentences.append(c)
        if not sentences:
            raise ValueError("captions: expected at least one non-empty caption to train on")
        proto = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=proto,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                split_digits=split_digits,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                eos_id=EOS_ID,
                bos_id=-1,
                num_threads=1,
                input_sentence_size=0,
                shuffle_input_sentence=False,
                hard_vocab_limit=hard_vocab_limit,
                minloglevel=2,
            )
        except RuntimeError as err:
            msg = str(err).strip() or repr(err)
            msg = msg.rsplit("] ", 1)[-1]  # drop SentencePiece's source location and check
            raise ValueError(
                f"vocab_size={vocab_size}: SentencePiece could not train a {model_type} model "
                f"on {len(sentences)} captions: {msg}"
            ) from None
        data = proto.getvalue()
        path = Path(out).expanduser()
        atomic.write_bytes(path, data)
        return cls.from_bytes(data, source=os.fspath(path))

    # -- properties

    @property
    def vocab_size(self) -> int:
        """Number of pieces, special ones included (ids are 0 … vocab_size − 1)."""
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        """Padding id (0 for models trained here)."""
        return self._sp.pad_id()

    @property
    def eos_id(self) -> int:
        """End-of-caption id (2 for models trained here)."""
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        """Unknown-piece id (1 for models trained here)."""
        return self._sp.unk_id()

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"

    # -- use

    def encode(self, captions: Sequence[str], context_length: int = 77) -> np.ndarray:
        """Token ids int64 (B, context_length): lower-cased caption, then eos, then pad.

        A caption longer than ``context_length − 1`` pieces is cut so that eos still ends
        it: every row holds exactly one eos, and the decoder always sees where text ends.

        Example:
            >>> import tempfile, os
            >>> tok = Tokenizer.train(["a cat", "a dog"] * 3, 11, os.path.join(tempfile.mkdtemp(), "m"))
            >>> ids = tok.encode(["A CAT", "a dog, a cat, a dog"], context_length=8)
            >>> ids.dtype.name, (ids == tok.eos_id).sum(axis=1).tolist(), tok.decode(ids)[0]
            ('int64', [1, 1], 'a cat')
        """
        if isinstance(captions, str) or not isinstance(captions, Sequence):
            raise TypeError(
                f"captions: expected a list of strings, got {type(captions).__name__}"
                + ("; wrap one caption in a list" if isinstance(captions, str) else "")
            )
        if (
            not isinstance(context_length, (int, np.integer))
            or isinstance(context_length, bool)
            or context_length < 1
        ):
            raise ValueError(f"context_length={context_length!r}: expected a positive integer")
        for i, c in enumerate(captions):
            if not isinstance(c, str):
                raise TypeError(f"captions[{i}]: expected str, got {type(c).__name__}")
        out = np.full((len(captions), int(context_length)), self.pad_id, dtype=np.int64)
        if not captions:
            return out
        pieces = self._sp.encode([_clean(c) for c in captions], out_type=int)
        keep = int(context_length) - 1
        for row, ids in enumerate(pieces):
            ids = ids[:keep]
            out[row, : len(ids)] = ids
            out[row, len(ids)] = self.eos_id
        return out

    def decode(self, ids: Any) -> list[str]:
        """Captions from ids (B, T) or one row (T,): read up to the first eos, drop pads.

        Example:
            >>> import tempfile, os
            >>> tok = Tokenizer.train(["a cat", "a dog"] * 3, 11, os.path.join(tempfile.mkdtemp(), "m"))
            >>> row = tok.encode(["a dog"], 8)[0].tolist()  # ... eos pad pad ...
            >>> tok.decode([row, [tok.pad_id] + row[:-1]])
            ['a dog', 'a dog']
        """
        arr = np.asarray(ids)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise ValueError(f"ids: expected (B, T) or (T,) token ids, got shape {arr.shape}")
        if arr.size and arr.dtype.kind not in "iu":
            raise TypeError(f"ids: expected integer token ids, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(
                f"ids: token ids must be in 0…{self.vocab_size - 1} (vocab_size), got "
                f"{int(arr.min())}…{int(arr.max())}"
            )
        texts = []
        for row in arr.tolist():
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            texts.append(self._sp.decode([t for t in row if t != self.pad_id]))
        return texts


def cache_dir() -> Path:
    """Where built tokenizers are cached: ``$AIMV2_CACHE``, else ``$XDG_CACHE_HOME/aimv2``,
    else ``~/.cache/aimv2``.

    Example:
        >>> cache_dir().name != ""
        True
    """
    env = os.environ.get("AIMV2_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "aimv2"


def builtin_tokenizer(name: str, vocab_size: int, *, model_type: str = "bpe") -> Tokenizer:
    """The tokenizer of a builtin source, trained once from all of its captions and cached.

    ``vocab_size`` is an upper bound: the builtin corpora are small (BPE supports about
    260 pieces for ``builtin:digits`` and 330 for ``builtin:shapes``), so a larger request
    gives the largest model the corpus supports; check ``tok.vocab_size``. BPE is the
    default because on such tiny corpora SentencePiece's unigram trainer stops at about
    60 pieces, mostly single characters.

    The cache file (in :func:`cache_dir`, written atomically) is named by a digest of the
    corpus and settings, so a change to either trains a new model; training is
    deterministic, so the bytes are the same on every run with the same SentencePiece.

    Example:
        >>> tok = builtin_tokenizer("builtin:digits", 48)
        >>> tok.vocab_size, tok.decode(tok.encode(["The digit 7"], 16))
        (48, ['the digit 7'])
    """
    corpus = builtin_captions(name)  # validates name
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r}: expected one of {MODEL_TYPES}")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 4:
        raise ValueError(f"vocab_size={vocab_size!r}: expected an integer >= 4")
    settings = {
        "corpus": corpus,
        "vocab_size": vocab_size,
        "model_type": model_type,
        "hard_vocab_limit": False,
        "sentencepiece": spm.__version__,
        "format": 1,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    short = name.split(":", 1)[1]
    path = cache_dir() / f"tokenizer-{short}-{model_type}-{vocab_size}-{digest}.model"
    if path.is_file():
        try:
            return Tokenizer.load(path)
        except ValueError:
            pass  # a damaged cache entry: train again and replace it
    return Tokenizer.train(corpus, vocab_size, path, model_type=model_type, hard_vocab_limit=False)
