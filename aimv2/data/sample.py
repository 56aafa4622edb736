"""Samples and the source base classes: :class:`Sample`, :class:`Source` /
:class:`IndexedSource` / :class:`StreamSource` and the per-source skip log
(:class:`CorruptSampleError` and image decoding are in :mod:`aimv2.data.images`)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .images import CorruptSampleError, decode_image

log = logging.getLogger("aimv2.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class UnreadableSourceError(ValueError):
    """A source of which no sample could be read: the message names the source, how many
    were tried and the first reasons.

    Example:
        >>> issubclass(UnreadableSourceError, ValueError)
        True
    """


def unreadable(src: Source) -> UnreadableSourceError:
    """The :class:`UnreadableSourceError` of ``src`` after a full pass read nothing.

    Example:
        >>> from aimv2.data import open_source
        >>> str(unreadable(open_source("builtin:digits")))
        'source builtin:digits[train]: no sample could be read in a full pass'
    """
    seen = src._skips.examples
    why = f" (first: {'; '.join(seen)})" if seen else ""
    return UnreadableSourceError(f"source {src.name}: no sample could be read in a full pass{why}")


@dataclass(frozen=True, eq=False)
class Sample:
    """One image with its caption(s).

    ``image`` is (H, W, 3) uint8 RGB; ``caption`` is the first caption and ``captions``
    all of them (alt-text, synthetic…; ``(caption,)`` when not given); ``label`` is a
    class index or None; ``key`` is unique within its source.

    Example:
        >>> import numpy as np
        >>> s = Sample(np.zeros((4, 4, 3), np.uint8), "a black square", None, "k0")
        >>> s.image.shape, s.captions
        ((4, 4, 3), ('a black square',))
    """

    image: np.ndarray
    caption: str
    label: int | None
    key: str
    captions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        img = self.image
        if not (
            isinstance(img, np.ndarray)
            and img.dtype == np.uint8
            and img.ndim == 3
            and img.shape[2] == 3
            and img.shape[0] > 0
            and img.shape[1] > 0
        ):
            desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img)
            raise ValueError(f"Sample.image: expected an (H, W, 3) uint8 array, got {desc}")
        if not isinstance(self.caption, str):
            raise TypeError(f"Sample.caption: expected str, got {type(self.caption).__name__}")
        object.__setattr__(self, "captions", _check_captions(self.captions, self.caption))


def _check_captions(captions: Any, first: str) -> tuple[str, ...]:
    """``captions`` as a tuple of str starting with ``first`` (``(first,)`` when empty)."""
    captions = tuple(captions) if captions else (first,)
    if not all(isinstance(c, str) for c in captions):
        raise TypeError("Sample.captions: expected a sequence of str")
    if captions[0] != first:
        raise ValueError("Sample.captions: the first caption must be Sample.caption")
    return captions


@dataclass(frozen=True, eq=False)
class RawSample:
    """A sample whose image is still encoded: the file's bytes or its path.

    What file-backed sources hand the :class:`~aimv2.data.Loader`, so that a training
    crop decodes no more pixels than it needs (:func:`aimv2.data.decode_for_crop`);
    :meth:`decode` gives the :class:`Sample`.

    Example:
        >>> import io, numpy as np
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(buf, "PNG")
        >>> RawSample(buf.getvalue(), ("dark", "black"), None, "k").decode().image.shape
        (4, 6, 3)
    """

    image: bytes | str
    captions: tuple[str, ...]
    label: int | None
    key: str

    def decode(self) -> Sample:
        """The decoded :class:`Sample` (any decoding error propagates)."""
        return Sample(
            decode_image(self.image), self.captions[0], self.label, self.key, self.captions
        )


# ----------------------------------------------------------------------------- helpers


class _SkipLog:
    """Thread-safe skip counter that logs one warning per distinct key.

    In a loader's worker process ``capture`` is a list: skips are recorded there (and
    neither counted nor logged) for the parent to replay into its own log.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.count = 0
        self.capture: list[tuple[str, str, int]] | None = None
        self._warned: set[str] = set()
        self.examples: list[str] = []  # the first few "key: reason", for error messages
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, key: str, reason: str, n: int = 1) -> None:
        if self.capture is not None:
            self.capture.append((key, reason, n))
            return
        with self._lock:
            self.count += n
            first = key not in self._warned
            self._warned.add(key)
            if first and len(self.examples) < 3:
                self.examples.append(f"{key}: {reason}")
        if first:
            log.warning("%s: skipped %s: %s", self.owner, key, reason)


# ----------------------------------------------------------------------------- sources


class Source:
    """Base of every source: a name, a ``skipped`` counter and iteration over samples.

    Example:
        >>> from aimv2.data import open_source
        >>> src = open_source("builtin:digits", split="heldout")
        >>> isinstance(src, Source), src.skipped
        (True, 0)
    """

    indexable: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self._skips = _SkipLog(name)

    @property
    def skipped(self) -> int:
        """How many samples were skipped (unreadable or incomplete) so far."""
        return self._skips.count

    def _skip(self, key: str, reason: str, n: int = 1) -> None:
        self._skips.add(key, reason, n)

    def __iter__(self) -> Iterator[Sample]:
        raise NotImplementedError

    def captions(self) -> Iterator[tuple[str, ...]]:
        """Every sample's captions in order, without decoding images where the source
        keeps them encoded (what a tokenizer is trained on). Unreadable samples are
        skipped and counted in ``skipped`` as iteration skips them.

        Example:
            >>> from aimv2.data import open_source
            >>> next(open_source("builtin:digits").captions())
            ('a pixelated 0 drawn by hand',)
        """
        for sample in self:
            yield sample.captions

    def content_files(self) -> list[str]:
        """The files the samples are read from (none for a generated source, whose name
        says it all): what :func:`fingerprint` stats."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def fingerprint(source: Source) -> str:
    """A digest of what ``source``'s samples depend on: its type and name, its length
    (when it has one) and every file it reads with that file's size and modification
    time (ns) — an edited, added or removed image changes it. Used to key caches.

    Example:
        >>> from aimv2.data import open_source
        >>> a = fingerprint(open_source("builtin:digits", split="train"))
        >>> a == fingerprint(open_source("builtin:digits", split="heldout")), len(a)
        (False, 16)
    """
    h = hashlib.sha256(f"{type(source).__name__}\0{source.name}".encode())
    if source.indexable:
        h.update(f"\0{len(source)}".encode())  # type: ignore[arg-type]
    for path in source.content_files():
        try:
            st = os.stat(path)
            h.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"\0{path}\0missing".encode())
    return h.hexdigest()[:16]


class IndexedSource(Source):
    """A source with random access: ``len(src)``, ``src[i]`` and ``src.get(i)``.

    ``src[i]`` raises :class:`CorruptSampleError` for an unreadable sample;
    ``src.get(i)`` returns None instead and counts it in ``skipped``; iteration skips it.

    Example:
        >>> from aimv2.data import open_source
        >>> src = open_source("builtin:shapes?length=4")
        >>> [s.key for s in src]
        ['shapes/0/0', 'shapes/0/1', 'shapes/0/2', 'shapes/0/3']
    """

    indexable = True

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> Sample:
        raise NotImplementedError

    def _load_raw(self, index: int) -> Sample | RawSample:
        """Sample ``index`` with its image still encoded where the source reads files
        (the loader decodes it for the crop); in-memory sources return the Sample."""
        return self._load(index)

    def blocks(self) -> np.ndarray | None:
        """Sizes of the consecutive blocks (e.g. Parquet row groups) random access should
        stay within, or None when any order is cheap."""
        return None

    def caption_counts(self) -> np.ndarray | None:
        """Captions per sample (for ``caption_sampling="all"``), or None when every
        sample has one."""
        return None

    def key(self, index: int) -> str:
        """The unique key of sample ``index`` (no decoding)."""
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index: {index} out of range for {self.name} of length {n}")
        return index

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        try:
            return self._load(index)
        except Exception as err:
            raise CorruptSampleError(
                f"{self.name}[{index}] ({self.key(index)}): unreadable: {err}"
            ) from err

    def get(self, index: int) -> Sample | None:
        """Sample ``index``, or None (counted and logged) when it cannot be read.

        Example:
            >>> from aimv2.data import open_source
            >>> open_source("builtin:digits").get(0).label
            0
        """
        index = self._check_index(index)
        try:
            return self._load(index)
        except Exception as err:
            self._skip(self.key(index), f"{type(err).__name__}: {err}")
            return None

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            sample = self.get(i)
            if sample is not None:
                yield sample

    def captions(self) -> Iterator[tuple[str, ...]]:
        """Every sample's captions in index order, read without decoding the images of
        file-backed sources (:meth:`Source.captions`).

        Example:
            >>> import io, json, tempfile, pathlib
            >>> from aimv2.data import open_source
            >>> d = pathlib.Path(tempfile.mkdtemp())
            >>> _ = (d / "a.jpg").write_bytes(b"never decoded")
            >>> _ = (d / "m.jsonl").write_text(json.dumps({"image": "a.jpg", "caption": ["x", "y"]}))
            >>> list(open_source(d / "m.jsonl").captions())
            [('x', 'y')]
        """
        for i in range(len(self)):
            try:
                yield self._load_raw(i).captions
            except Exception as err:
                self._skip(self.key(i), f"{type(err).__name__}: {err}")


class StreamSource(Source):
    """A source read front to back only (e.g. tar shards); see :class:`TarShardSource`.

    Example:
        >>> from aimv2.data import TarShardSource
        >>> issubclass(TarShardSource, StreamSource)
        True
    """


def _check_split(split: str, allowed: tuple[str, ...], name: str) -> None:
    if split not in allowed:
        raise ValueError(f"split={split!r}: expected one of {allowed} for {name}")


def _user_split(split: str, name: str) -> None:
    if split == "heldout":
        raise ValueError(
            f"split='heldout': {name} has no built-in held-out part; keep held-out data in "
            "its own folder/manifest/shards and open it with split='all'"
        )
    _check_split(split, ("train", "all"), name)
