"""Read and write safetensors files with NumPy only.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of
UTF-8 JSON describing every tensor (``dtype``, ``shape`` and ``data_offsets``
relative to the start of the data buffer, plus an optional ``__metadata__``
string map), then the raw little-endian, C-order data buffer. This module reads
and writes that format without torch, MLX or the ``safetensors`` package.

* :func:`save_file` writes atomically (temp file in the same directory, fsync,
  ``os.replace``), tensors sorted by name; ``dtype="bf16"`` stores floating
  tensors as bfloat16 with round-to-nearest-even, as does wrapping one array in
  :class:`BFloat16`.
* :func:`read_header` validates the header and returns :class:`TensorInfo` per
  tensor; :func:`load_file` and :func:`iter_tensors` read tensors one at a time,
  so loading a subset reads only that subset. NumPy has no bfloat16, so BF16
  tensors are returned as float32 (exactly) unless another float dtype is asked.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_file({"w": np.ones((2, 3), np.float32)}, path, metadata={"format": "np"})
    >>> load_file(path)["w"].shape
    (2, 3)
    >>> read_header(path)[1]
    {'format': 'np'}
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DTYPES",
    "BFloat16",
    "SafetensorsError",
    "TensorInfo",
    "from_bf16_bits",
    "iter_tensors",
    "load_file",
    "read_header",
    "save_file",
    "to_bf16_bits",
]

PathLike = str | os.PathLike[str]

# Stored dtype code -> little-endian NumPy dtype of the raw bytes. BF16 is read as its
# uint16 bit patterns and BOOL as bytes (normalized to 0/1 on load).
_RAW: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("u1"),
}

#: The dtype codes this module reads and writes.
DTYPES: tuple[str, ...] = tuple(_RAW)

# (NumPy kind, itemsize) -> stored dtype code, for arrays written as they are.
_CODE_OF = {
    ("f", 8): "F64",
    ("f", 4): "F32",
    ("f", 2): "F16",
    ("i", 8): "I64",
    ("i", 4): "I32",
    ("i", 2): "I16",
    ("i", 1): "I8",
    ("u", 8): "U64",
    ("u", 4): "U32",
    ("u", 2): "U16",
    ("u", 1): "U8",
    ("b", 1): "BOOL",
}

# Accepted spellings of save_file(dtype=...) -> stored code for floating tensors.
_FLOAT_TARGETS = {
    "bf16": "BF16",
    "bfloat16": "BF16",
    "f16": "F16",
    "fp16": "F16",
    "float16": "F16",
    "half": "F16",
    "f32": "F32",
    "fp32": "F32",
    "float32": "F32",
    "float": "F32",
    "f64": "F64",
    "fp64": "F64",
    "float64": "F64",
    "double": "F64",
}

_METADATA = "__metadata__"


class SafetensorsError(ValueError):
    """A file is not a valid safetensors file; the message names the path and tensor."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry.

    ``dtype`` is the stored code (``"F32"``, ``"BF16"``, ...), ``shape`` the tensor
    shape and ``offsets`` the ``(begin, end)`` byte range in the data buffer.

    Example:
        >>> TensorInfo("BF16", (2, 3), (0, 12)).nbytes
        12
    """

    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Bytes the tensor occupies in the file."""
        return self.offsets[1] - self.offsets[0]

    @property
    def size(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True, eq=False)
class BFloat16:
    """Raw bfloat16 bit patterns (a uint16 array) that :func:`save_file` writes as BF16.

    Build one from floats with :meth:`from_float` (round-to-nearest-even) or from
    existing bit patterns with ``BFloat16(bits)``.

    Example:
        >>> b = BFloat16.from_float(np.array([1.0, 3.14159], np.float32))
        >>> b.bits.tolist(), b.to_float32().tolist()
        ([16256, 16457], [1.0, 3.140625])
    """

    bits: np.ndarray

    def __post_init__(self) -> None:
        bits = np.asarray(self.bits)
        if bits.dtype.kind not in "iu" or bits.dtype.itemsize != 2:
            raise TypeError(
                f"BFloat16.bits: expected a uint16 (or int16) array of bit patterns, got "
                f"dtype {bits.dtype}; use BFloat16.from_float(x) to convert floats"
            )
        object.__setattr__(self, "bits", bits.view(np.uint16))

    @classmethod
    def from_float(cls, x: Any) -> BFloat16:
        """Round a floating array to bfloat16 (nearest, ties to even).

        Example:
            >>> BFloat16.from_float(np.float32(2.0)).bits.tolist()
            16384
        """
        return cls(to_bf16_bits(x))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the tensor."""
        return tuple(self.bits.shape)

    def to_float32(self) -> np.ndarray:
        """The values as float32 (exact).

        Example:
            >>> BFloat16(np.array([0x3F80], np.uint16)).to_float32().tolist()
            [1.0]
        """
        return from_bf16_bits(self.bits)


# --------------------------------------------------------------------------- bfloat16


def _f64_to_f32_round_to_odd(a: np.ndarray) -> np.ndarray:
    """float64 -> float32 bit patterns, rounding inexact values to odd.

    Rounding to odd keeps a sticky bit, so a second round-to-nearest-even to a
    narrower format (bfloat16 has 16 fewer bits than float32) gives the correctly
    rounded result, avoiding double-rounding errors.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.asarray(a.astype(np.float32))
        back = r.astype(np.float64)
        inexact = np.isfinite(a) & (back != a)
        toward_zero = inexact & (np.abs(back) > np.abs(a))
        r = np.where(toward_zero, np.nextafter(r, np.float32(0)), r).astype(np.float32)
    bits = r.view(np.uint32)
    return np.where(inexact, bits | np.uint32(1), bits).astype(np.uint32)


def to_bf16_bits(x: Any) -> np.ndarray:
    """Round a floating array to bfloat16 and return the uint16 bit patterns.

    Rounding is to nearest, ties to even (float64 input is rounded once, directly,
    not via float32); values beyond the bfloat16 range become ``inf``, NaN stays a
    (quiet) NaN.

    Example:
        >>> to_bf16_bits(np.array([1.0, -2.0, 1.00390625], np.float32)).tolist()
        [16256, 49152, 16256]
    """
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise TypeError(f"to_bf16_bits: expected a floating array, got dtype {a.dtype}")
    if a.dtype.itemsize > 4:
        bits = _f64_to_f32_round_to_odd(a.astype(np.float64))
    else:
        bits = np.require(a, np.float32, "C").view(np.uint32)
    # Round-to-nearest-even on the 16 discarded bits; uint32 wrap-around only
    # happens for NaN patterns, which are replaced below.
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    with np.errstate(over="ignore"):
        rounded = ((bits + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet = ((bits >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return np.asarray(np.where(nan, quiet, rounded), dtype=np.uint16)


def from_bf16_bits(bits: Any) -> np.ndarray:
    """Convert bfloat16 bit patterns (uint16) to float32, exactly.

    Example:
        >>> from_bf16_bits(np.array([0x3F80, 0xC000], np.uint16)).tolist()
        [1.0, -2.0]
    """
    b = np.asarray(bits)
    if b.dtype.kind not in "iu" or b.dtype.itemsize != 2:
        raise TypeError(f"from_bf16_bits: expected a uint16 array, got dtype {b.dtype}")
    wide = b.view(np.uint16).astype(np.uint32) << np.uint32(16)
    return wide.view(np.float32)


# --------------------------------------------------------------------------- writing


@dataclass
class _Pending:
    """A tensor validated for writing; its bytes are produced only when written."""

    name: str
    source: np.ndarray | BFloat16
    code: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _RAW[self.code].itemsize
        for d in self.shape:
            n *= d
        return n

    def materialize(self) -> np.ndarray:
        """The tensor as a C-contiguous little-endian array of the stored dtype."""
        src = self.source
        if isinstance(src, BFloat16):
            out = src.bits
        elif self.code == "BF16":
            out = to_bf16_bits(src)
        else:
            with np.errstate(over="ignore"):
                out = np.asarray(src).astype(_RAW[self.code], copy=False)
        return np.require(out, _RAW[self.code], "C")


def _float_target(dtype: Any) -> str | None:
    """Stored code that ``save_file(dtype=...)`` casts floating tensors to."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype.lower() in _FLOAT_TARGETS:
        return _FLOAT_TARGETS[dtype.lower()]
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is not None and dt.kind == "f" and ("f", dt.itemsize) in _CODE_OF:
        return _CODE_OF[("f", dt.itemsize)]
    raise ValueError(
        f"save_file: dtype must be None, 'bf16', 'f16', 'f32', 'f64' or a NumPy float "
        f"dtype, got {dtype!r}"
    )


def _prepare(name: Any, value: Any, target: str | None, seen: set[str]) -> _Pending:
    if not isinstance(name, str):
        raise TypeError(f"save_file: tensor names must be str, got {type(name).__name__} {name!r}")
    if name == _METADATA:
        raise ValueError(f"save_file: {_METADATA!r} is reserved and cannot name a tensor")
    if name in seen:
        raise ValueError(f"save_file: duplicate tensor name {name!r}")
    seen.add(name)
    if isinstance(value, BFloat16):
        return _Pending(name, value, "BF16", value.shape)
    if not isinstance(value, (np.ndarray, np.generic)) and not hasattr(value, "__array__"):
        raise TypeError(
            f"save_file: tensor {name!r} must be a NumPy array (or BFloat16), got "
            f"{type(value).__name__}"
        )
    arr = np.asarray(value)
    key = (arr.dtype.kind, arr.dtype.itemsize)
    if key not in _CODE_OF:
        raise TypeError(
            f"save_file: tensor {name!r} has dtype {arr.dtype}, which safetensors cannot "
            f"store; expected one of float16/32/64, int8/16/32/64, uint8/16/32/64, bool"
        )
    code = _CODE_OF[key]
    if target is not None and arr.dtype.kind == "f":
        code = target
    return _Pending(name, arr, code, tuple(int(d) for d in arr.shape))


def _write_array(f: Any, arr: np.ndarray) -> None:
    """Write one tensor's bytes (a C-contiguous array) to the open file."""
    if arr.nbytes:
        f.write(arr.reshape(-1).view(np.uint8))


def _fsync_dir(directory: str) -> None:
    """Persist a rename in ``directory`` (best effort; not possible on every OS)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_file(
    tensors: Mapping[str, Any] | Iterable[tuple[str, Any]],
    path: PathLike,
    metadata: Mapping[str, str] | None = None,
    dtype: Any = None,
) -> None:
    """Write ``tensors`` to ``path`` as a safetensors file, atomically.

    Args:
        tensors: name -> NumPy array (float16/32/64, int8-64, uint8-64, bool) or
            :class:`BFloat16`; a mapping or an iterable of ``(name, array)`` pairs.
            Tensors are stored sorted by name.
        path: destination; its directory must exist. The file is written to a
            temporary file in that directory, fsynced, then renamed over ``path``,
            so a failure never leaves a partial file behind.
        metadata: optional ``str -> str`` map stored under ``__metadata__``.
        dtype: store every floating tensor as this type: ``"bf16"`` (round to
            nearest even), ``"f16"``, ``"f32"``, ``"f64"`` or a NumPy float dtype.
            Integer and bool tensors are never cast. ``None`` keeps each dtype.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
        >>> save_file({"w": np.full((2,), 1.00390625)}, path, dtype="bf16")
        >>> read_header(path)[0]["w"].dtype, load_file(path)["w"].tolist()
        ('BF16', [1.0, 1.0])
    """
    target = _float_target(dtype)
    path_s = os.fspath(path)
    if not isinstance(path_s, str):
        path_s = os.fsdecode(path_s)
    directory = os.path.dirname(os.path.abspath(path_s))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"save_file: directory {directory!r} of path {path_s!r} does not exist"
        )
    if os.path.isdir(path_s):
        raise IsADirectoryError(f"save_file: path {path_s!r} is a directory, expected a file")

    meta: dict[str, str] | None = None
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(
                f"save_file: metadata must be a dict of str -> str, got {type(metadata).__name__}"
            )
        meta = {}
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(
                    f"save_file: metadata must map str -> str, got {k!r}: {v!r} "
                    f"({type(k).__name__} -> {type(v).__name__})"
                )
            meta[k] = v

    if isinstance(tensors, Mapping):
        items: Iterable[Any] = tensors.items()
    elif isinstance(tensors, (str, bytes)) or not isinstance(tensors, Iterable):
        raise TypeError(
            f"save_file: tensors must be a mapping of name -> array, got {type(tensors).__name__}"
        )
    else:
        items = tensors
    seen: set[str] = set()
    pending = []
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"save_file: expected (name, array) pairs in tensors, got {item!r}")
        pending.append(_prepare(item[0], item[1], target, seen))
    pending.sort(key=lambda p: p.name)

    header: dict[str, Any] = {}
    if meta is not None:
        header[_METADATA] = meta
    offset = 0
    for p in pending:
        header[p.name] = {
            "dtype": p.code,
            "shape": list(p.shape),
            "data_offsets": [offset, offset + p.nbytes],
        }
        offset += p.nbytes
    blob = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)

    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path_s)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for p in pending:
                arr = p.materialize()
                if arr.nbytes != p.nbytes:  # pragma: no cover - guards a logic error
                    raise SafetensorsError(
                        f"save_file: tensor {p.name!r} produced {arr.nbytes} bytes, "
                        f"expected {p.nbytes}"
                    )
                _write_array(f, arr)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, os.stat(path_s).st_mode & 0o7777)
        except FileNotFoundError:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path_s)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def _no_duplicate_keys(path: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise SafetensorsError(f"{path}: header has duplicate key {k!r}")
            out[k] = v
        return out

    return hook


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_info(path: str, name: str, entry: Any, buffer_len: int) -> TensorInfo:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{where}: header entry must be an object, got {entry!r}")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise SafetensorsError(f"{where}: header entry lacks {', '.join(missing)}")
    code = entry["dtype"]
    if code not in _RAW:
        raise SafetensorsError(f"{where}: unknown dtype {code!r}; supported: {', '.join(DTYPES)}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise SafetensorsError(
            f"{where}: shape must be a list of non-negative integers, got {shape!r}"
        )
    offs = entry["data_offsets"]
    if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs):
        raise SafetensorsError(f"{where}: data_offsets must be [begin, end] integers, got {offs!r}")
    begin, end = offs
    if not 0 <= begin <= end <= buffer_len:
        raise SafetensorsError(
            f"{where}: data_offsets [{begin}, {end}] out of range for the "
            f"{buffer_len}-byte data buffer"
        )
    info = TensorInfo(code, tuple(shape), (begin, end))
    expected = info.size * _RAW[code].itemsize
    if info.nbytes != expected:
        raise SafetensorsError(
            f"{where}: {code} shape {list(shape)} needs {expected} bytes but data_offsets "
            f"[{begin}, {end}] span {info.nbytes}"
        )
    return info


def _parse_header(path: str, f: Any) -> _Header:
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise SafetensorsError(
            f"{path}: file is {size} bytes, shorter than the 8-byte header-length prefix"
        )
    n = int.from_bytes(f.read(8), "little")
    if n > size - 8:
        raise SafetensorsError(
            f"{path}: header length {n} exceeds the {size - 8} bytes after the prefix "
            f"(truncated or not a safetensors file)"
        )
    raw = f.read(n)
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys(path))
    except UnicodeDecodeError as e:
        raise SafetensorsError(f"{path}: header is not valid UTF-8 ({e})") from None
    except json.JSONDecodeError as e:
        raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise SafetensorsError(f"{path}: header must be a JSON object, got {type(obj).__name__}")

    meta = obj.pop(_METADATA, None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise SafetensorsError(f"{path}: {_METADATA} must be an object of strings, got {meta!r}")

    buffer_len = size - 8 - n
    tensors = {name: _parse_info(path, name, e, buffer_len) for name, e in obj.items()}

    # Non-empty tensors must tile the buffer exactly: no gap, no overlap, no tail.
    cursor, prev = 0, None
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].offsets, kv[0])):
        begin, end = info.offsets
        if begin == end:
            continue
        if begin < cursor:
            raise SafetensorsError(
                f"{path}: tensor {name!r} data_offsets [{begin}, {end}] overlap tensor "
                f"{prev!r} (which ends at {cursor})"
            )
        if begin > cursor:
            raise SafetensorsError(
                f"{path}: tensor {name!r} starts at {begin}, leaving bytes [{cursor}, {begin}) "
                f"of the data buffer uncovered"
            )
        cursor, prev = end, name
    if cursor != buffer_len:
        raise SafetensorsError(
            f"{path}: tensors cover {cursor} bytes but the data buffer holds {buffer_len} "
            f"(trailing bytes [{cursor}, {buffer_len}) are not described by the header)"
        )
    return _Header(tensors, dict(meta), 8 + n, size)


def read_header(path: PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate ``path``'s header and return ``({name: TensorInfo}, metadata)``.

    Reads only the header. Raises :class:`SafetensorsError` naming the path (and
    tensor) if the header is malformed, an offset is out of range, tensors
    overlap or leave part of the buffer undescribed, a shape does not match its
    byte length, or a dtype is unknown.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "h.safetensors")
        >>> save_file({"b": np.zeros(3, np.int8), "a": np.zeros((), np.float16)}, path)
        >>> infos, meta = read_header(path)
        >>> infos["b"], meta
        (TensorInfo(dtype='I8', shape=(3,), offsets=(2, 5)), {})
    """
    p = _path_str(path)
    with open(p, "rb") as f:
        h = _parse_header(p, f)
    return h.tensors, h.metadata


def _path_str(path: Any) -> str:
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fsdecode(os.fspath(path))


def _half_target(dtype: Any, fn: str) -> np.dtype | None:
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f":
        raise TypeError(
            f"{fn}: dtype must be None or a NumPy float dtype (e.g. np.float32), got {dtype!r}"
        )
    return dt


def _select(path: str, h: _Header, names: Iterable[str] | None, fn: str) -> list[str]:
    if names is None:
        return [n for n, _ in sorted(h.tensors.items(), key=lambda kv: (kv[1].offsets, kv[0]))]
    if isinstance(names, (str, bytes)):
        raise TypeError(f"{fn}: names must be an iterable of tensor names, not a single string")
    wanted = list(dict.fromkeys(names))
    bad = [n for n in wanted if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{fn}: names must be strings, got {bad[0]!r}")
    missing = [n for n in wanted if n not in h.tensors]
    if missing:
        have = sorted(h.tensors)
        shown = ", ".join(repr(n) for n in have[:8]) + (", ..." if len(have) > 8 else "")
        raise KeyError(
            f"{path}: no tensor named {', '.join(repr(n) for n in missing)} "
            f"(the file has {len(have)}: {shown})"
        )
    return wanted


def _read_tensor(path: str, f: Any, h: _Header, name: str, half: np.dtype | None) -> np.ndarray:
    info = h.tensors[name]
    raw = np.empty(info.shape, dtype=_RAW[info.dtype])
    if info.nbytes:
        f.seek(h.data_start + info.offsets[0])
        view = memoryview(raw.reshape(-1).view(np.uint8))
        got = 0
        while got < info.nbytes:
            k = f.readinto(view[got:])
            if not k:
                raise SafetensorsError(
                    f"{path}: tensor {name!r}: file ended after {got} of {info.nbytes} bytes "
                    f"(was it truncated while reading?)"
                )
            got += k
    if info.dtype == "BOOL":
        return raw != 0
    if info.dtype in ("BF16", "F16"):
        out = from_bf16_bits(raw) if info.dtype == "BF16" else raw
        if half is None or half == out.dtype:
            return out
        with np.errstate(over="ignore"):  # BF16 -> float16 overflows to inf, as documented
            return out.astype(half)
    if sys.byteorder != "little" and raw.dtype.itemsize > 1:  # pragma: no cover
        return raw.astype(raw.dtype.newbyteorder("="))
    return raw


def iter_tensors(
    path: PathLike,
    dtype: Any = np.float32,
    names: Iterable[str] | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, array)`` one tensor at a time, in file order (or ``names`` order).

    Only one tensor is in memory at a time, so very large checkpoints can be
    converted without holding two full copies. The header is validated (and
    ``names`` checked) when this is called, before the first tensor is read.
    ``dtype`` is as in :func:`load_file`.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "i.safetensors")
        >>> save_file({"a": np.zeros(2), "b": np.ones(1, np.float16)}, path)
        >>> [(k, v.dtype.name) for k, v in iter_tensors(path)]
        [('a', 'float64'), ('b', 'float32')]
    """
    p = _path_str(path)
    half = _half_target(dtype, "iter_tensors")
    with open(p, "rb") as f:
        h = _parse_header(p, f)
    order = _select(p, h, names, "iter_tensors")
    return _iterate(p, h, order, half)


def _iterate(
    path: str, h: _Header, order: list[str], half: np.dtype | None
) -> Iterator[tuple[str, np.ndarray]]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != h.file_size:
            raise SafetensorsError(
                f"{path}: file changed size ({h.file_size} -> {size} bytes) after its "
                f"header was read"
            )
        for name in order:
            yield name, _read_tensor(path, f, h, name, half)


def load_file(
    path: PathLike,
    names: Iterable[str] | None = None,
    dtype: Any = np.float32,
) -> dict[str, np.ndarray]:
    """Load tensors from a safetensors file into NumPy arrays.

    Args:
        path: the file. Its header is validated first (:func:`read_header`).
        names: load only these tensors (only their bytes are read); a missing
            name raises ``KeyError``. ``None`` loads everything.
        dtype: what half-precision tensors become: F16 and BF16 are converted to
            this float dtype (default float32; values beyond its range become inf). ``None`` keeps F16 as float16 and
            returns BF16 as float32 (NumPy has no bfloat16). Other dtypes are
            returned as stored (BOOL as ``bool``).

    Returns:
        ``{name: array}`` in ``names`` order, else in file order.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "l.safetensors")
        >>> save_file({"h": np.ones(2, np.float16), "i": np.arange(3)}, path)
        >>> {k: v.dtype.name for k, v in load_file(path).items()}
        {'h': 'float32', 'i': 'int64'}
        >>> load_file(path, names=["h"], dtype=None)["h"].dtype.name
        'float16'
    """
    half = _half_target(dtype, "load_file")
    p = _path_str(path)
    with open(p, "rb") as f:
        h = _parse_header(p, f)
        order = _select(p, h, names, "load_file")
        return {name: _read_tensor(p, f, h, name, half) for name in order}
