"""safetensors files on the NumPy side, through the ``safetensors`` package.

The reference, checkpoints and format conversion read and write NumPy arrays here
(bfloat16 as ``ml_dtypes.bfloat16``); the backends read with their framework's own path
(``safe_open(..., framework="pt")``, ``mx.load``) for loading models. Reads are lazy and
one tensor at a time (the file is memory-mapped), so a checkpoint larger than memory can
be converted or loaded tensor by tensor. Writes are atomic (:mod:`aimv2.atomic`). A
malformed or unreadable file is a :class:`FormatError` naming the file (and the tensor,
where the problem is one tensor), never the library's bare error.

Example:
    >>> import tempfile, numpy as np
    >>> p = save_file({"w": np.arange(3, dtype=np.float32)}, tempfile.mkdtemp() + "/m.safetensors",
    ...               dtype="bfloat16")
    >>> read_header(p)[0]["w"]
    TensorInfo(dtype='BF16', shape=(3,))
    >>> load_file(p, dtype=np.float32)["w"].tolist()
    [0.0, 1.0, 2.0]
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file as _save_numpy

from . import atomic

__all__ = [
    "FormatError",
    "TensorInfo",
    "DTYPE_CODES",
    "read_header",
    "iter_tensors",
    "load_file",
    "save_file",
    "save_streaming",
    "cast",
    "Stored",
    "STORED_OPS",
]

PathLike = str | os.PathLike

# safetensors dtype codes of the float dtypes a model file holds, and their NumPy types
DTYPE_CODES: dict[str, Any] = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
}
_NAMES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}


# How the stored parts of a canonical tensor combine (``Stored.op``); each backend reads
# the parts with its own framework and applies these itself.
STORED_OPS = {
    "copy": "the one part as it is",
    "pos": "the one part with a leading axis added: (N, D) -> (1, N, D)",
    "qkv": "the parts (q, k, v) concatenated along axis 0",
    "conv_mlx": "the one part from MLX's (out, kH, kW, in) to (out, in, kH, kW)",
}


class FormatError(ValueError):
    """A checkpoint file or folder is malformed, or does not match what it must hold."""


@dataclass(frozen=True)
class Stored:
    """Where a canonical tensor is stored: ``parts`` as ``(file, key)`` pairs, combined by
    ``op`` (one of :data:`STORED_OPS`) into the canonical (torch) layout. A backend's
    ``load_weights`` reads these with its own framework (``safe_open(..., framework="pt")``
    straight to the target device; ``mx.load``), one tensor at a time.

    Example:
        >>> Stored((("model.safetensors", "trunk.blocks.0.attn.qkv.weight"),)).op
        'copy'
    """

    parts: tuple[tuple[str, str], ...]
    op: str = "copy"

    def __post_init__(self) -> None:
        if self.op not in STORED_OPS:
            raise ValueError(f"Stored.op={self.op!r}: expected one of {sorted(STORED_OPS)}")
        if not self.parts:
            raise ValueError("Stored.parts: expected at least one (file, key) pair")


@dataclass(frozen=True)
class TensorInfo:
    """What a file's header says of one tensor: its dtype code and shape.

    Example:
        >>> TensorInfo("F32", (2, 3)).size
        6
    """

    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))


def _bad(path: PathLike, err: BaseException) -> FormatError:
    text = str(err).removeprefix("Error while deserializing header: ")
    if isinstance(err, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return FormatError(f"{os.fspath(path)}: cannot read ({err.strerror or err})")
    return FormatError(f"{os.fspath(path)}: not a valid safetensors file ({text})")


def _open(path: PathLike) -> Any:
    try:
        return safe_open(os.fspath(path), framework="numpy")
    except (SafetensorError, OSError, ValueError) as err:
        raise _bad(path, err) from None


def _dtype_code(dtype: Any) -> str | None:
    """The safetensors code for a dtype name, a NumPy dtype or ``ml_dtypes.bfloat16``."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype.upper() in DTYPE_CODES:
        return dtype.upper()
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    code = _NAMES.get(str(name).lower())
    if code is None:
        raise ValueError(
            f"dtype={dtype!r}: expected one of {sorted(_NAMES)} (or a float NumPy dtype)"
        )
    return code


def cast(arr: np.ndarray, dtype: Any) -> np.ndarray:
    """A float array as ``dtype`` (bfloat16 rounds to nearest even, via ml_dtypes);
    integer and bool arrays, and ``dtype=None``, pass through.

    Example:
        >>> cast(np.array([1.00390625], np.float32), "bfloat16").astype(np.float32).tolist()
        [1.0]
    """
    code = _dtype_code(dtype)
    if code is None or np.asarray(arr).dtype.kind not in "fV":
        return arr
    return np.asarray(arr).astype(DTYPE_CODES[code])


def read_header(path: PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Every tensor's :class:`TensorInfo` and the file's string metadata, without
    reading tensor data.

    Example:
        >>> import tempfile
        >>> p = save_file({"a": np.zeros((2, 2))}, tempfile.mkdtemp() + "/a.safetensors",
        ...               metadata={"format": "pt"})
        >>> read_header(p)
        ({'a': TensorInfo(dtype='F64', shape=(2, 2))}, {'format': 'pt'})
    """
    with _open(path) as f:
        try:
            infos = {}
            for name in f.keys():
                part = f.get_slice(name)
                infos[name] = TensorInfo(part.get_dtype(), tuple(int(s) for s in part.get_shape()))
            return infos, dict(f.metadata() or {})
        except (SafetensorError, ValueError) as err:
            raise _bad(path, err) from None


def iter_tensors(
    path: PathLike, names: Iterable[str] | None = None, dtype: Any = None
) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, array)`` one tensor at a time, in file order (or ``names``' order); float
    tensors cast to ``dtype`` when given.

    Example:
        >>> import tempfile
        >>> p = save_file({"a": np.ones(2), "b": np.zeros(1)}, tempfile.mkdtemp() + "/t.safetensors")
        >>> [name for name, _ in iter_tensors(p)]
        ['a', 'b']
    """
    with _open(path) as f:
        keys = list(f.keys())
        wanted = keys if names is None else list(names)
        missing = [n for n in wanted if n not in keys]
        if missing:
            raise KeyError(
                f"{os.fspath(path)}: no tensor named {missing[:5]} (it holds {len(keys)})"
            )
        for name in wanted:
            try:
                arr = f.get_tensor(name)
            except (SafetensorError, ValueError, OSError) as err:
                raise FormatError(
                    f"{os.fspath(path)}: tensor {name!r} cannot be read ({err})"
                ) from None
            yield name, cast(arr, dtype)


def load_file(
    path: PathLike, names: Iterable[str] | None = None, dtype: Any = None
) -> dict[str, np.ndarray]:
    """Every tensor (or those in ``names``) as NumPy arrays; float tensors cast to
    ``dtype`` when given.

    Example:
        >>> import tempfile
        >>> p = save_file({"a": np.ones(2, np.float16)}, tempfile.mkdtemp() + "/h.safetensors")
        >>> load_file(p, dtype="float32")["a"].dtype
        dtype('float32')
    """
    return dict(iter_tensors(path, names, dtype))


def save_file(
    tensors: Mapping[str, Any],
    path: PathLike,
    metadata: Mapping[str, str] | None = None,
    dtype: Any = None,
) -> Path:
    """Write ``tensors`` (name → array) to ``path`` atomically; float tensors cast to
    ``dtype`` (``"bfloat16"``, ``"float16"``, ``"float32"``…) when given.

    Example:
        >>> import tempfile
        >>> p = save_file({"a": np.ones(2)}, tempfile.mkdtemp() + "/s.safetensors", dtype="float16")
        >>> read_header(p)[0]["a"].dtype
        'F16'
    """
    out = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor name {name!r}: expected a string")
        arr = np.asarray(value)
        if arr.dtype.kind not in "biufV" or arr.dtype == object:
            raise TypeError(f"tensor {name!r}: expected a numeric array, got dtype {arr.dtype}")
        arr = cast(arr, dtype)
        out[name] = np.ascontiguousarray(arr).reshape(arr.shape)  # 0-d stays 0-d
    meta = None
    if metadata is not None:
        bad = {
            k: v for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)
        }
        if bad:
            raise TypeError(f"metadata: expected str -> str, got {bad!r:.200}")
        meta = dict(metadata)
    with atomic.atomic_file(path) as tmp:
        try:
            _save_numpy(out, os.fspath(tmp), metadata=meta)
        except SafetensorError as err:  # the package reports a failed write as its own
            raise _os_error(err, path) from None
    return Path(path)


def _os_error(err: Exception, path: PathLike) -> Exception:
    """An ``OSError`` for a safetensors write that failed in the operating system (a full
    disk: ``ENOSPC``), so callers see the errno; any other error unchanged."""
    m = re.search(r"\(os error (\d+)\)", str(err))
    if m is None:
        return err
    code = int(m.group(1))
    return OSError(code, os.strerror(code), os.fspath(path))


def save_streaming(
    path: PathLike,
    tensors: Sequence[tuple[str, tuple[int, ...], str, Callable[[], np.ndarray]]],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``(name, shape, dtype code, produce)`` tensors to ``path`` (atomically), calling
    each ``produce()`` only when its bytes are written: one tensor in memory at a time.

    Kept hand-written (40 lines, the file layout only; every read goes through the
    ``safetensors`` package, which is how the tests check these files) because the package
    serializes a whole dict in memory: exporting a model file would need the file's full
    size again (12 GB for a float32 3B encoder), where this needs its largest tensor.

    Example:
        >>> import tempfile
        >>> item = ("w", (2,), "BF16", lambda: np.array([1.0, 3.0]))
        >>> p = save_streaming(tempfile.mkdtemp() + "/w.safetensors", [item], {"format": "pt"})
        >>> load_file(p, dtype="float32")["w"].tolist(), read_header(p)[1]
        ([1.0, 3.0], {'format': 'pt'})
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, shape, code, _ in tensors:
        end = offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPE_CODES[code]).itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with atomic.atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape, code, produce in tensors:
            arr = np.asarray(produce())
            if tuple(arr.shape) != tuple(shape):
                raise ValueError(f"tensor {name!r}: produced shape {arr.shape}, expected {shape}")
            target = np.dtype(DTYPE_CODES[code]).newbyteorder("<")
            with np.errstate(over="ignore"):  # float16 of a huge value is inf, as in torch
                data = np.ascontiguousarray(arr.astype(target, copy=False))
            if data.nbytes:
                f.write(data.reshape(-1).view(np.uint8))  # the buffer itself, no bytes copy
    return Path(path)
