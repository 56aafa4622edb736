"""Opening a source from a string: :func:`open_source` picks the source class, and
parses the options of a builtin spec."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from .builtin import DigitsSource, ShapesSource
from .files import CaptionFolderSource, ImageFolderSource, ManifestSource, _require_path
from .sample import IMAGE_EXTENSIONS, IndexedSource, Source, _user_split
from .shards import TarShardSource
from .tables import ArrowSource, ParquetSource


def _builtin(spec: str, split: str, seed: int) -> IndexedSource:
    name, _, query = spec.partition("?")
    try:
        opts = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError as err:
        raise ValueError(f"source={spec!r}: malformed options {query!r}: {err}") from None
    if name == "builtin:digits":
        if opts:
            raise ValueError(f"source={spec!r}: builtin:digits takes no options")
        return DigitsSource(split)
    if name == "builtin:shapes":
        unknown = sorted(set(opts) - {"size", "length"})
        if unknown:
            raise ValueError(
                f"source={spec!r}: unknown options {unknown}; builtin:shapes takes size, length"
            )
        ints: dict[str, int] = {}
        for k, v in opts.items():
            if not v.isdigit():
                raise ValueError(f"source={spec!r}: option {k}={v!r} must be a positive integer")
            ints[k] = int(v)
        return ShapesSource(split, seed, **ints)
    raise ValueError(f"source={spec!r}: expected 'builtin:digits' or 'builtin:shapes'")


def _is_table_dir(path: Path) -> str | None:
    """``arrow`` for a ``save_to_disk`` folder, ``parquet`` for a folder of Parquet files
    without images, else None."""
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return "arrow"
    if any(path.rglob("*.parquet")) and not any(
        p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*")
    ):
        return "parquet"
    return None


def open_source(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    split: str = "train",
    seed: int = 0,
    image_column: str | None = None,
    caption_columns: str | Sequence[str] | None = None,
    label_column: str | None = None,
    key_column: str | None = None,
    allow_outside: bool = False,
) -> Source:
    """Open a source from a string (see :mod:`aimv2.data` for the forms).

    ``split`` chooses a fixed part of a builtin set (``train``/``heldout``/``all``); your
    own data is used whole (``train`` or ``all``). ``seed`` only varies ``builtin:shapes``.
    The ``*_column(s)`` arguments name the columns of Parquet and Arrow sources
    (:mod:`aimv2.data.tables`; by default the usual names are looked for).
    ``allow_outside`` lets a ``.jsonl`` manifest name images outside its folder.

    Example:
        >>> len(open_source("builtin:digits", split="all"))
        1797
        >>> open_source("builtin:shapes?size=16&length=5", split="heldout")[0].image.shape
        (16, 16, 3)
    """
    columns = dict(
        image_column=image_column,
        caption_columns=caption_columns,
        label_column=label_column,
        key_column=key_column,
    )
    source_obj = _open(source, split, seed, columns, allow_outside)
    if not isinstance(source_obj, (ParquetSource, ArrowSource)):
        given = [k for k, v in columns.items() if v is not None]
        if given:
            raise ValueError(
                f"{given[0]}: only Parquet and Arrow sources have columns, not {source_obj!r}"
            )
    return source_obj


def _open(
    source: Any, split: str, seed: int, columns: dict[str, Any], allow_outside: bool
) -> Source:
    if not isinstance(split, str):
        raise TypeError(f"split: expected a str, got {type(split).__name__}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")
    if isinstance(source, (list, tuple)):
        if source and all(os.fspath(p).endswith(".parquet") for p in source):
            return ParquetSource(source, split, **columns)
        _user_split(split, "tar shards")
        return TarShardSource(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source: expected a str, a path or a list of shard paths, got {type(source).__name__}"
        )
    text = os.fspath(source)
    if not text:
        raise ValueError("source: expected a source string, got ''")
    if text.startswith("builtin:"):
        return _builtin(text, split, seed)
    if text.startswith("imagefolder:"):
        return ImageFolderSource(text[len("imagefolder:") :], split)
    if text.startswith("parquet:"):
        return ParquetSource(text[len("parquet:") :], split, **columns)
    if text.startswith("arrow:"):
        return ArrowSource(text[len("arrow:") :], split, **columns)
    if text.endswith(".parquet"):
        return ParquetSource(text, split, **columns)
    if text.endswith(".arrow"):
        return ArrowSource(text, split, **columns)
    if text.endswith(".tar") or "{" in text or glob.has_magic(text):
        _user_split(split, "tar shards")
        return TarShardSource(text)
    path = _require_path(text, "source")
    if path.is_dir():
        kind = _is_table_dir(path)
        if kind == "arrow":
            return ArrowSource(path, split, **columns)
        if kind == "parquet":
            return ParquetSource(path, split, **columns)
        return CaptionFolderSource(path, split)
    if path.suffix.lower() == ".jsonl":
        return ManifestSource(path, split, allow_outside=allow_outside)
    raise ValueError(
        f"source={text!r}: expected 'builtin:NAME', 'imagefolder:DIR', a folder of images "
        "with .txt captions, a .jsonl manifest, .tar shards, .parquet files or an Arrow / "
        "Hugging Face save_to_disk folder"
    )
