"""The safetensors writer of the formats: one tensor at a time, from lazy producers.

Hand-written because it streams: each :class:`Entry` produces its array only when its
bytes are due, so exporting a model never holds a second copy of its weights (a later
change moves this onto the ``safetensors`` package). Files appear atomically
(:func:`aimv2.atomic.atomic_file`).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from aimv2.safetensors import load_file
    >>> e = Entry("w", (2,), "BF16", lambda: np.array([1.0, 2.0]))
    >>> p = write_safetensors(Path(tempfile.mkdtemp()) / "a.safetensors", [e], {"format": "pt"})
    >>> load_file(p)["w"].tolist()
    [1.0, 2.0]
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..safetensors import to_bf16_bits

__all__ = ["ITEMSIZE", "DTYPE_CODES", "DTYPE_NAMES", "dtype_code", "Entry", "write_safetensors"]

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}  # the float codes a checkpoint may store
# fmt: off
DTYPE_CODES = {  # dtype spellings -> safetensors code
    "float32": "F32", "fp32": "F32", "f32": "F32", "float": "F32",
    "bfloat16": "BF16", "bf16": "BF16",
    "float16": "F16", "fp16": "F16", "f16": "F16", "half": "F16",
    "float64": "F64", "fp64": "F64", "f64": "F64", "double": "F64",
}
# fmt: on
DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def dtype_code(dtype: Any) -> str | None:
    """The safetensors code to store floats as, for an export's ``dtype`` argument.

    Example:
        >>> dtype_code("bf16"), dtype_code(None)
        ('BF16', None)
    """
    if dtype is None:
        return None
    code = DTYPE_CODES.get(str(dtype).lower()) if isinstance(dtype, str) else None
    if code is None:
        raise ValueError(f"dtype={dtype!r}: expected None, 'float32', 'bfloat16' or 'float16'")
    return code


@dataclass
class Entry:
    """One tensor to write: its name, shape, stored dtype code and a producer of its values.

    Example:
        >>> Entry("w", (3, 4), "F16", lambda: np.zeros((3, 4))).nbytes
        24
    """

    name: str
    shape: tuple[int, ...]
    code: str
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes in the file."""
        return math.prod(self.shape) * ITEMSIZE[self.code]


def _encode(arr: np.ndarray, code: str) -> np.ndarray:
    if code == "BF16":
        return to_bf16_bits(arr).astype("<u2", copy=False)
    dt = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}[code]
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(arr, dtype=dt)


def write_safetensors(path: Path, entries: list[Entry], metadata: Mapping[str, str]) -> Path:
    """Write ``entries`` (sorted by name) to ``path`` one tensor at a time, atomically;
    returns ``path``.

    Example:
        >>> import tempfile
        >>> from aimv2.safetensors import read_header
        >>> e = Entry("w", (2, 2), "F16", lambda: np.eye(2))
        >>> p = write_safetensors(Path(tempfile.mkdtemp()) / "a.safetensors", [e], {})
        >>> read_header(p)[0]["w"].dtype
        'F16'
    """
    entries = sorted(entries, key=lambda e: e.name)
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for e in entries:
        end = offset + e.nbytes
        header[e.name] = {"dtype": e.code, "shape": list(e.shape), "data_offsets": [offset, end]}
        offset = end
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for e in entries:
            arr = np.asarray(e.produce())
            if tuple(arr.shape) != e.shape:  # pragma: no cover - guards a table bug
                raise RuntimeError(f"tensor {e.name!r}: produced {arr.shape}, expected {e.shape}")
            f.write(_encode(arr, e.code).reshape(-1).view(np.uint8))
    return path
