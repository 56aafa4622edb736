"""Crossing the MLX boundary: NumPy in and out, dtype names.

Example:
    >>> import numpy as np
    >>> to_numpy(from_numpy(np.ones(2, np.float32))).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

__all__ = [
    "as_array",
    "to_numpy",
    "from_numpy",
    "to_model",
    "native_dtype",
    "native_device",
    "dtype_name",
]

_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
_ALIASES = {
    "fp32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "float": "float32",
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def as_array(x: Any) -> mx.array:
    """``x`` as an MLX array (MLX arrays pass through).

    Example:
        >>> as_array([1, 2]).dtype
        mlx.core.int64
    """
    return x if isinstance(x, mx.array) else mx.array(np.asarray(x))


def to_numpy(x: mx.array) -> np.ndarray:
    """An array as NumPy (bf16/fp16 as float32).

    Example:
        >>> to_numpy(mx.ones((2,), dtype=mx.bfloat16)).dtype
        dtype('float32')
    """
    if x.dtype in (mx.bfloat16, mx.float16):
        x = x.astype(mx.float32)
    return np.array(x)


def from_numpy(x: np.ndarray, like: mx.array | None = None) -> mx.array:
    """A NumPy array as an MLX array (float cast to ``like``'s dtype if given).

    Example:
        >>> from_numpy(np.zeros(2, np.float32)).dtype
        mlx.core.float32
    """
    a = mx.array(np.asarray(x))
    if like is not None and mx.issubdtype(a.dtype, mx.floating):
        a = a.astype(like.dtype)
    return a


def to_model(module: nn.Module, x: np.ndarray) -> mx.array:
    """``x`` as an MLX array (floats in ``module``'s parameter dtype).

    Example:
        >>> to_model(nn.Linear(2, 2), np.zeros(2)).dtype
        mlx.core.float32
    """
    return from_numpy(x, tree_flatten(module.parameters())[0][1])


def native_dtype(dtype: Any) -> Any:
    """The MLX dtype for a dtype name (``"bfloat16"``…) or an ``mx.Dtype``; None stays None.
    ``float64`` is refused: MLX computes it on the CPU only.

    Example:
        >>> native_dtype("bfloat16")
        mlx.core.bfloat16
    """
    if dtype is None or isinstance(dtype, mx.Dtype):
        return dtype
    key = str(dtype).lower().removeprefix("mlx.core.")
    key = _ALIASES.get(key, key)
    if key not in _DTYPES:
        raise TypeError(f"dtype={dtype!r}: expected an mlx.core.Dtype or one of {sorted(_DTYPES)}")
    return _DTYPES[key]


def dtype_name(dtype: Any) -> str:
    """The contract's name of an MLX dtype (``"float32"``…).

    Example:
        >>> dtype_name(mx.float16)
        'float16'
    """
    return _NAMES.get(dtype, str(dtype).removeprefix("mlx.core."))


def native_device(device: Any) -> Any:
    """The ``mx.Device`` for ``"cpu"`` or ``"gpu"``; None stays None. MLX memory is
    unified, so a device only says where MLX computes.

    Example:
        >>> native_device("cpu") == mx.cpu
        True
        >>> native_device("cuda")
        Traceback (most recent call last):
        ...
        ValueError: device='cuda': MLX devices are 'cpu' and 'gpu'
    """
    if device is None or isinstance(device, mx.Device):
        return device
    if device == "cpu":
        return mx.Device(mx.cpu)
    if device == "gpu":
        return mx.Device(mx.gpu)
    raise ValueError(f"device={device!r}: MLX devices are 'cpu' and 'gpu'")
