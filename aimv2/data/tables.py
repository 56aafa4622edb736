"""Sources over column stores read with ``pyarrow``: Parquet files
(:class:`ParquetSource`, read a row group at a time) and Arrow files / Hugging Face
``datasets`` folders written by ``save_to_disk`` (:class:`ArrowSource`, memory-mapped).

A row holds an image — encoded bytes, a path, or Hugging Face's ``Image`` struct
``{bytes, path}`` — and one or more caption columns, each a string or a list of strings
(alt-text and synthetic captions side by side); a sample's captions are those columns
in order, empty ones left out. Column names are arguments; by default the first of
:data:`IMAGE_COLUMNS` and of :data:`CAPTION_COLUMNS` the table has, a ``label``
integer column when there is one, and ``__key__``/``key``/``uid`` for keys (else
``FILE_STEM/ROW``). ``pyarrow`` is imported when such a source is opened: install it
(``pip install pyarrow``) to read these formats.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .sample import IndexedSource, RawSample, Sample, _user_split
from .shards import expand_shards

__all__ = ["IMAGE_COLUMNS", "CAPTION_COLUMNS", "ParquetSource", "ArrowSource"]

IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img", "image_bytes")
CAPTION_COLUMNS = ("caption", "captions", "text", "txt")
_KEY_COLUMNS = ("__key__", "key", "uid")


def _pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet
    except ImportError:
        raise ImportError("Parquet and Arrow sources need pyarrow: pip install pyarrow") from None
    return pyarrow


class _Columns:
    """Which columns hold what, checked against a schema; turns a row into a sample."""

    def __init__(
        self,
        schema: Any,
        where: str,
        image: str | None,
        captions: str | Sequence[str] | None,
        label: str | None,
        key: str | None,
    ) -> None:
        pa = _pyarrow()
        names = list(schema.names)

        def pick(arg: str, given: str | None, defaults: tuple[str, ...]) -> str | None:
            if given is not None:
                if not isinstance(given, str) or given not in names:
                    raise ValueError(f"{arg}={given!r}: {where} has the columns {names}")
                return given
            return next((n for n in defaults if n in names), None)

        self.image = pick("image_column", image, IMAGE_COLUMNS)
        if self.image is None:
            raise ValueError(
                f"image_column: none of {IMAGE_COLUMNS} in {where}; its columns are {names}"
            )
        if isinstance(captions, str):
            captions = [captions]
        if captions is None:
            found = pick("caption_columns", None, CAPTION_COLUMNS)
            if found is None:
                raise ValueError(
                    f"caption_columns: none of {CAPTION_COLUMNS} in {where}; its columns are "
                    f"{names}"
                )
            captions = [found]
        captions = list(captions)
        if not captions:
            raise ValueError("caption_columns: expected at least one column name")
        self.captions = [pick("caption_columns", c, ()) for c in captions]
        for c in self.captions:
            t = schema.field(c).type
            ok = pa.types.is_string(t) or pa.types.is_large_string(t)
            if pa.types.is_list(t) or pa.types.is_large_list(t):
                ok = pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
            if not ok:
                raise ValueError(
                    f"caption_columns: column {c!r} of {where} is {t}; expected strings or "
                    "lists of strings"
                )
        t = schema.field(self.image).type
        struct_ok = pa.types.is_struct(t) and {"bytes", "path"} & {f.name for f in t}
        if not (
            pa.types.is_binary(t)
            or pa.types.is_large_binary(t)
            or pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or struct_ok
        ):
            raise ValueError(
                f"image_column: column {self.image!r} of {where} is {t}; expected encoded "
                "bytes, a path, or an Image struct {bytes, path}"
            )
        self.label = pick("label_column", label, ())
        if self.label is not None and not pa.types.is_integer(schema.field(self.label).type):
            raise ValueError(
                f"label_column: column {self.label!r} of {where} is "
                f"{schema.field(self.label).type}; expected integers (class indices)"
            )
        if label is None and "label" in names and pa.types.is_integer(schema.field("label").type):
            self.label = "label"
        self.key = pick("key_column", key, _KEY_COLUMNS)
        if self.key is not None:
            t = schema.field(self.key).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)):
                if key is None:  # a default name holding something else: not a key
                    self.key = None
                else:
                    raise ValueError(
                        f"key_column: column {self.key!r} of {where} is {t}; expected strings "
                        "or integers"
                    )
        self.names = list(dict.fromkeys([self.image, *self.captions, self.label, self.key]))
        self.names = [n for n in self.names if n is not None]

    def captions_of(self, row: dict[str, Any]) -> tuple[str, ...]:
        out: list[str] = []
        for c in self.captions:
            value = row.get(c)
            if isinstance(value, str):
                value = [value]
            out.extend(v.strip() for v in value or () if isinstance(v, str) and v.strip())
        return tuple(out)

    def sample(self, row: dict[str, Any], folder: Path, default_key: str) -> RawSample:
        image = row[self.image]
        if isinstance(image, dict):
            image = image.get("bytes") or image.get("path")
        if isinstance(image, str):
            path = Path(image).expanduser()
            image = str(path if path.is_absolute() else folder / path)
        if not image:
            raise ValueError(f"no image in column {self.image!r}")
        captions = self.captions_of(row)
        if not captions:
            raise ValueError(f"no caption in columns {self.captions}")
        label = None if self.label is None else row.get(self.label)
        if label is not None and (not isinstance(label, int) or label < 0):
            raise ValueError(f"label {label!r} is not a non-negative integer")
        key = default_key if self.key is None or row.get(self.key) is None else str(row[self.key])
        return RawSample(image, captions, label, key)

    def counts(self, table: Any) -> np.ndarray:
        """Captions per row of ``table`` (a table with the caption columns)."""
        total = np.zeros(table.num_rows, np.int64)
        for c in self.captions:
            for i, value in enumerate(table.column(c).to_pylist()):
                if isinstance(value, str):
                    value = [value]
                total[i] += sum(1 for v in value or () if isinstance(v, str) and v.strip())
        return total


class _TableSource(IndexedSource):
    """Rows of several files in order; ``self._files`` and ``self._starts`` (cumulative row
    counts per file) set by the subclass."""

    _files: list[str]
    _starts: np.ndarray
    columns: _Columns

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_open")}

    def content_files(self) -> list[str]:
        """The table files (images held in them by path are not followed)."""
        return [os.fspath(p) for p in self._files]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _file_row(self, index: int) -> tuple[int, int]:
        f = int(np.searchsorted(self._starts, index, side="right")) - 1
        return f, index - int(self._starts[f])

    def key(self, index: int) -> str:
        """The key column's value, else ``FILE_STEM/ROW``."""
        f, row = self._file_row(index)
        if self.columns.key is not None:
            try:
                return self._load_raw(index).key
            except Exception:
                pass
        return f"{Path(self._files[f]).stem}/{row}"

    def _row(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def _load_raw(self, index: int) -> RawSample:
        f, row = self._file_row(index)
        return self.columns.sample(
            self._row(index), Path(self._files[f]).parent, f"{Path(self._files[f]).stem}/{row}"
        )

    def _load(self, index: int) -> Sample:
        return self._load_raw(index).decode()


class ParquetSource(_TableSource):
    """Parquet files (a file, a folder of ``*.parquet``, a glob or brace pattern, or a
    list), read one row group at a time with column projection.

    Random access within a row group is cheap, across row groups it is not: the loader
    permutes row groups and then the rows inside each (:meth:`blocks`), so write sets
    pre-shuffled (DataComp and DFN subsets are) with row groups of a few hundred to a
    few thousand rows. Each process keeps the last two row groups it read.

    Example:
        >>> import io, tempfile, os, numpy as np, pyarrow as pa, pyarrow.parquet as pq
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, "PNG")
        >>> d = tempfile.mkdtemp(); path = os.path.join(d, "part-0.parquet")
        >>> pq.write_table(pa.table({"jpg": [buf.getvalue()] * 3, "txt": ["a", "b", "c"],
        ...                          "syn": [["x", "y"], [], None]}), path, row_group_size=2)
        >>> src = ParquetSource(path, caption_columns=["txt", "syn"])
        >>> len(src), src.blocks().tolist(), src[0].captions, src[2].key
        (3, [2, 1], ('a', 'x', 'y'), 'part-0/2')
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        split: str = "train",
        *,
        image_column: str | None = None,
        caption_columns: str | Sequence[str] | None = None,
        label_column: str | None = None,
        key_column: str | None = None,
    ) -> None:
        pq = _pyarrow().parquet
        _user_split(split, "Parquet files")
        files = _expand(paths, ".parquet", "Parquet")
        super().__init__(f"{files[0]}" + (f" (+{len(files) - 1} more)" if len(files) > 1 else ""))
        self._files = files
        groups, starts = [], [0]
        self.columns = None  # type: ignore[assignment]
        for path in files:
            try:
                meta = pq.ParquetFile(path)
            except Exception as err:
                raise ValueError(f"Parquet file {path!r}: unreadable: {err}") from None
            cols = _Columns(
                meta.schema_arrow,
                repr(path),
                image_column,
                caption_columns,
                label_column,
                key_column,
            )
            if self.columns is None:
                self.columns = cols
            elif cols.names != self.columns.names:
                raise ValueError(f"Parquet file {path!r}: columns differ from {files[0]!r}")
            sizes = [meta.metadata.row_group(g).num_rows for g in range(meta.num_row_groups)]
            groups.extend(sizes)
            starts.append(starts[-1] + sum(sizes))
        self._starts = np.asarray(starts, np.int64)
        self._groups = np.asarray(groups, np.int64)
        self._group_starts = np.concatenate([[0], np.cumsum(self._groups)])
        self._group_file = np.repeat(
            np.arange(len(files)), [pq.ParquetFile(p).num_row_groups for p in files]
        )
        if len(self) == 0:
            raise ValueError(f"Parquet files {self.name!r}: no rows")

    def blocks(self) -> np.ndarray:
        """Rows per row group, in file order."""
        return self._groups.copy()

    def caption_counts(self) -> np.ndarray | None:
        """Captions per row (reads the caption columns only)."""
        pq = _pyarrow().parquet
        counts = [
            self.columns.counts(pq.read_table(p, columns=self.columns.captions))
            for p in self._files
        ]
        out = np.concatenate(counts)
        return None if (out == 1).all() else out

    def _row(self, index: int) -> dict[str, Any]:
        g = int(np.searchsorted(self._group_starts, index, side="right")) - 1
        table = self._group(g)
        row = index - int(self._group_starts[g])
        return {name: table.column(name)[row].as_py() for name in self.columns.names}

    def _group(self, g: int) -> Any:
        cache: OrderedDict[int, Any] = self.__dict__.setdefault("_open_groups", OrderedDict())
        table = cache.get(g)
        if table is None:
            f = int(self._group_file[g])
            first = int(np.searchsorted(self._group_file, f))
            handles = self.__dict__.setdefault("_open_files", {})
            if f not in handles:
                handles.clear()
                handles[f] = _pyarrow().parquet.ParquetFile(self._files[f])
            table = handles[f].read_row_group(g - first, columns=self.columns.names)
            cache[g] = table
            while len(cache) > 2:
                cache.popitem(last=False)
        else:
            cache.move_to_end(g)
        return table


class ArrowSource(_TableSource):
    """Arrow IPC files (stream or file format), or a Hugging Face ``datasets`` folder
    written by ``Dataset.save_to_disk`` (its ``state.json`` lists the files; a
    ``DatasetDict`` folder holds one per split: ``split="train"`` picks ``train/``, or
    pass the split's folder). Files are memory-mapped: any row is cheap to reach, so
    the loader permutes all rows freely.

    Example:
        >>> import io, tempfile, os, numpy as np, pyarrow as pa
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, "PNG")
        >>> path = os.path.join(tempfile.mkdtemp(), "data.arrow")
        >>> table = pa.table({"image": [{"bytes": buf.getvalue(), "path": None}],
        ...                   "text": ["a black square"]})
        >>> with pa.ipc.new_stream(path, table.schema) as w:
        ...     w.write_table(table)
        >>> src = ArrowSource(path)
        >>> len(src), src[0].caption, src[0].image.shape
        (1, 'a black square', (4, 4, 3))
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        *,
        image_column: str | None = None,
        caption_columns: str | Sequence[str] | None = None,
        label_column: str | None = None,
        key_column: str | None = None,
    ) -> None:
        _pyarrow()
        files = _arrow_files(Path(path).expanduser(), split)
        super().__init__(os.fspath(path))
        self._files = files
        starts = [0]
        self.columns = None  # type: ignore[assignment]
        for f in files:
            table = _read_arrow(f)
            cols = _Columns(
                table.schema, repr(f), image_column, caption_columns, label_column, key_column
            )
            if self.columns is None:
                self.columns = cols
            elif cols.names != self.columns.names:
                raise ValueError(f"Arrow file {f!r}: columns differ from {files[0]!r}")
            starts.append(starts[-1] + table.num_rows)
        self._starts = np.asarray(starts, np.int64)
        if len(self) == 0:
            raise ValueError(f"Arrow source {os.fspath(path)!r}: no rows")

    def caption_counts(self) -> np.ndarray | None:
        """Captions per row."""
        out = np.concatenate([self.columns.counts(self._table(i)) for i in range(len(self._files))])
        return None if (out == 1).all() else out

    def _table(self, f: int) -> Any:
        tables = self.__dict__.setdefault("_open_tables", {})
        if f not in tables:
            tables[f] = _read_arrow(self._files[f])
        return tables[f]

    def _row(self, index: int) -> dict[str, Any]:
        f, row = self._file_row(index)
        table = self._table(f)
        return {name: table.column(name)[row].as_py() for name in self.columns.names}


def _expand(paths: Any, suffix: str, what: str) -> list[str]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[str] = []
    for item in items:
        p = Path(os.fspath(item)).expanduser()
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob(f"*{suffix}") if not f.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"{what}: no {suffix} files under {os.fspath(item)!r}")
            out.extend(found)
        else:
            out.extend(expand_shards(item))
    return out


def _arrow_files(path: Path, split: str) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"Arrow source: no such file or directory {os.fspath(path)!r}")
    if path.is_file():
        _user_split(split, "an Arrow file")
        return [str(path)]
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        if split in ("train", "heldout") and split in splits:
            return _arrow_files(path / split, "all")
        raise ValueError(
            f"split={split!r}: {os.fspath(path)!r} is a DatasetDict with the splits {splits}; "
            f"pass one split's folder (e.g. {os.fspath(path / splits[0]) if splits else ''!r})"
        )
    _user_split(split, "an Arrow dataset")
    state = path / "state.json"
    if state.is_file():
        names = [f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
        files = [str(path / n) for n in names]
    else:
        files = sorted(str(f) for f in path.glob("*.arrow"))
    if not files:
        raise FileNotFoundError(f"Arrow source: no .arrow files in {os.fspath(path)!r}")
    return files


def _read_arrow(path: str) -> Any:
    pa = _pyarrow()
    source = pa.memory_map(path)
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source = pa.memory_map(path)
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid as err:
            raise ValueError(f"Arrow file {path!r}: not an Arrow IPC file: {err}") from None
