"""WebDataset-style ``.tar`` shards, streamed, and brace/glob expansion of shard paths."""

from __future__ import annotations

import glob
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .sample import IMAGE_EXTENSIONS, RawSample, Sample, StreamSource


def _expand_braces(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        width = len(a) if a.startswith("0") or len(a) == len(b) else 0
        step = 1 if int(b) >= int(a) else -1
        options = [f"{k:0{width}d}" for k in range(int(a), int(b) + step, step)]
    else:
        options = body.split(",")
    return [x for opt in options for x in _expand_braces(head + opt + tail)]


def expand_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard paths from a path, a brace pattern (``a-{000..009}.tar``, ``{x,y}.tar``), a
    glob (``data/*.tar``), or a list of those; every result must exist.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> for i in range(3):
        ...     open(os.path.join(d, f"s-{i:02d}.tar"), "wb").close()
        >>> [os.path.basename(p) for p in expand_shards(os.path.join(d, "s-{00..02}.tar"))]
        ['s-00.tar', 's-01.tar', 's-02.tar']
    """
    items = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    if not items:
        raise ValueError("shards: expected at least one shard path or pattern, got none")
    out: list[str] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"shards: expected paths or patterns, got {type(item).__name__}")
        for path in _expand_braces(os.path.expanduser(os.fspath(item))):
            if glob.has_magic(path):
                found = sorted(glob.glob(path))
                if not found:
                    raise FileNotFoundError(f"shards: pattern {path!r} matches no files")
                out.extend(found)
            elif not os.path.isfile(path):
                raise FileNotFoundError(f"shards: no such file {path!r}")
            else:
                out.append(path)
    return out


def _check_rank(rank: int, world_size: int) -> None:
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: expected a positive integer")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank!r}: expected an integer in [0, world_size={world_size})")


@dataclass
class _Record:
    key: str
    image: bytes | None = None
    caption: str | None = None
    label: str | None = None


class TarShardSource(StreamSource):
    """WebDataset-style ``.tar`` shards (``KEY.jpg|png`` + ``KEY.txt``, optional
    ``KEY.cls``), streamed member by member without extracting to disk.

    Members of one sample must be consecutive (the WebDataset convention); incomplete
    samples, corrupt images and truncated shards are skipped and counted.
    :meth:`shard_split` gives each rank a disjoint subset of the shards.

    Example:
        >>> import tarfile, tempfile, io, os, numpy as np
        >>> from PIL import Image
        >>> d = tempfile.mkdtemp(); buf = io.BytesIO()
        >>> Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, "PNG")
        >>> with tarfile.open(os.path.join(d, "0.tar"), "w") as tf:
        ...     for name, data in (("k.png", buf.getvalue()), ("k.txt", b"dark")):
        ...         info = tarfile.TarInfo(name); info.size = len(data)
        ...         tf.addfile(info, io.BytesIO(data))
        >>> [(s.key, s.caption) for s in TarShardSource(os.path.join(d, "0.tar"))]
        [('k', 'dark')]
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        self.shards = tuple(expand_shards(shards))
        first = self.shards[0]
        more = f" (+{len(self.shards) - 1} more)" if len(self.shards) > 1 else ""
        super().__init__(f"{first}{more}")

    def content_files(self) -> list[str]:
        """The shard files."""
        return list(self.shards)

    def shard_split(self, rank: int, world_size: int) -> TarShardSource:
        """The shards of ``rank`` out of ``world_size``: every world_size-th from ``rank``.

        Example:
            >>> import tempfile, os
            >>> d = tempfile.mkdtemp()
            >>> for i in range(4):
            ...     open(os.path.join(d, f"{i}.tar"), "wb").close()
            >>> src = TarShardSource(os.path.join(d, "*.tar")).shard_split(1, 2)
            >>> [os.path.basename(s) for s in src.shards]
            ['1.tar', '3.tar']
        """
        _check_rank(rank, world_size)
        if world_size > len(self.shards):
            raise ValueError(
                f"world_size={world_size}: only {len(self.shards)} shards in {self.name}; "
                "each rank needs at least one shard"
            )
        return TarShardSource(list(self.shards[rank::world_size]))

    def records(self, order: Sequence[int] | None = None) -> Iterator[_Record | None]:
        """Raw samples shard by shard — in ``order`` (indices into ``shards``) when given,
        else in file order (None for an incomplete one, already counted)."""
        for i in range(len(self.shards)) if order is None else order:
            yield from self._shard_records(self.shards[i])

    def _shard_records(self, shard: str) -> Iterator[_Record | None]:
        current: _Record | None = None
        try:
            with tarfile.open(shard, mode="r|*") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    folder, _, base = member.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if not dot or base.startswith("."):
                        continue
                    key = f"{folder}/{stem}" if folder else stem
                    if current is not None and key != current.key:
                        yield self._finish(current)
                        current = None
                    if current is None:
                        current = _Record(key)
                    f = tf.extractfile(member)
                    data = f.read() if f is not None else b""
                    ext = ext.lower()
                    if "." + ext in IMAGE_EXTENSIONS:
                        current.image = data
                    elif ext == "txt":
                        current.caption = data.decode("utf-8", errors="replace").strip()
                    elif ext == "cls":
                        current.label = data.decode("utf-8", errors="replace").strip()
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:
            self._skip(f"{shard}@end", f"shard unreadable or truncated: {err}")
        if current is not None:
            yield self._finish(current)

    def _finish(self, rec: _Record) -> _Record | None:
        if rec.image is None or rec.caption is None:
            missing = "image" if rec.image is None else "caption (.txt)"
            self._skip(rec.key, f"no {missing}")
            return None
        return rec

    def raw(self, rec: _Record | None) -> RawSample | None:
        """A record with its image still encoded; None (counted) for an incomplete one or
        a bad label. The image is decoded later (by the loader's workers)."""
        if rec is None:
            return None
        try:
            label = None
            if rec.label is not None:
                label = int(rec.label)
                if label < 0:
                    raise ValueError(f"negative class label {label}")
        except Exception as err:
            self._skip(rec.key, f"{type(err).__name__}: {err}")
            return None
        assert rec.image is not None and rec.caption is not None  # _finish checked
        return RawSample(rec.image, (rec.caption,), label, rec.key)

    def decode(self, rec: _Record | None) -> Sample | None:
        """Decode a raw record; None (counted) when it cannot be read."""
        raw = self.raw(rec)
        if raw is None:
            return None
        try:
            return raw.decode()
        except Exception as err:
            self._skip(raw.key, f"{type(err).__name__}: {err}")
            return None

    def captions(self) -> Iterator[tuple[str, ...]]:
        """Every complete record's captions in shard order; no image is decoded.

        Example:
            >>> import tempfile
            >>> from aimv2.testing import write_tar_shards
            >>> d = tempfile.mkdtemp(); _ = write_tar_shards(d, 1, 2, corrupt={(0, 0)})
            >>> list(TarShardSource(d + "/s-0.tar").captions())
            [('a noisy picture number 0',), ('a noisy picture number 1',)]
        """
        for rec in self.records():
            raw = self.raw(rec)
            if raw is not None:
                yield raw.captions

    def __iter__(self) -> Iterator[Sample]:
        for rec in self.records():
            sample = self.decode(rec)
            if sample is not None:
                yield sample
