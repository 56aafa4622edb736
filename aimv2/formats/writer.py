"""Writing a model file: the tensors an export produces, stored in the dtype asked for.

This module names dtypes the way users spell them and writes an export's lazily produced
tensors with :func:`aimv2.tensorfiles.save_streaming` (atomic, one tensor in memory at a
time: exporting a large model never holds a second copy of it).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from aimv2.tensorfiles import read_header
    >>> e = Entry("w", (2, 2), "F16", lambda: np.eye(2))
    >>> p = write_entries(Path(tempfile.mkdtemp()) / "a.safetensors", [e], {})
    >>> read_header(p)[0]["w"].dtype
    'F16'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..tensorfiles import DTYPE_CODES as FLOAT_TYPES
from ..tensorfiles import save_streaming

__all__ = ["ITEMSIZE", "DTYPE_CODES", "DTYPE_NAMES", "dtype_code", "Entry", "write_entries"]

# bytes per element of the float codes a checkpoint may store
ITEMSIZE = {code: np.dtype(t).itemsize for code, t in FLOAT_TYPES.items()}
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


def write_entries(path: Path, entries: list[Entry], metadata: Mapping[str, str]) -> Path:
    """Write ``entries`` (sorted by name) to ``path``, atomically, each tensor produced
    only when it is written; returns ``path``.

    Example:
        >>> import tempfile
        >>> from aimv2.tensorfiles import load_file
        >>> e = Entry("b", (2,), "BF16", lambda: np.array([1.0, 3.0]))
        >>> p = write_entries(Path(tempfile.mkdtemp()) / "b.safetensors", [e], {"format": "pt"})
        >>> load_file(p, dtype="float32")["b"].tolist()
        [1.0, 3.0]
    """
    items = [(e.name, e.shape, e.code, e.produce) for e in sorted(entries, key=lambda e: e.name)]
    return save_streaming(path, items, metadata)
