"""Crossing the torch boundary: NumPy in and out, dtype names, devices.

Example:
    >>> import numpy as np, torch
    >>> to_numpy(from_numpy(np.ones(2, np.float32))).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "as_tensor",
    "to_numpy",
    "from_numpy",
    "to_model",
    "native_dtype",
    "native_device",
    "dtype_name",
]

_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
_ALIASES = {
    "fp32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "float": "float32",
    "double": "float64",
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def as_tensor(x: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` as a tensor (NumPy without a copy), moved to ``like``'s device and float dtype.

    Example:
        >>> as_tensor([1, 2]).dtype
        torch.int64
    """
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if like is not None:
        x = x.to(device=like.device, dtype=like.dtype if x.is_floating_point() else x.dtype)
    return x


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A tensor as a NumPy array (bf16/fp16 as float32).

    Example:
        >>> to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype
        dtype('float32')
    """
    x = x.detach().cpu()
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.float()
    return x.numpy()


def from_numpy(x: np.ndarray, like: torch.Tensor | None = None) -> torch.Tensor:
    """A NumPy array as a tensor, on ``like``'s device and float dtype if given.

    Example:
        >>> from_numpy(np.zeros(2)).dtype
        torch.float64
    """
    return as_tensor(np.require(x, requirements="C"), like)  # keeps 0-d arrays 0-d


def to_model(module: nn.Module, x: np.ndarray) -> torch.Tensor:
    """``x`` as a tensor on ``module``'s device (floats in its parameter dtype).

    Example:
        >>> to_model(nn.Linear(2, 2), np.zeros(2)).dtype
        torch.float32
    """
    return as_tensor(np.require(x, requirements="C"), next(module.parameters()))


def native_dtype(dtype: Any) -> Any:
    """The torch dtype for a dtype name (``"bfloat16"``…) or a ``torch.dtype``; None stays None.

    Example:
        >>> native_dtype("bfloat16")
        torch.bfloat16
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    key = _ALIASES.get(key, key)
    if key not in _DTYPES:
        raise TypeError(f"dtype={dtype!r}: expected a torch.dtype or one of {sorted(_DTYPES)}")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """The contract's name of a torch dtype (``"float32"``…).

    Example:
        >>> dtype_name(torch.float16)
        'float16'
    """
    return _NAMES.get(dtype, str(dtype).removeprefix("torch."))


def native_device(device: Any) -> Any:
    """The ``torch.device`` for a device name (``"cpu"``, ``"cuda:1"``…); None stays None.

    Example:
        >>> native_device("cpu")
        device(type='cpu')
        >>> native_device("tpu")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: device='tpu': ...
    """
    if device is None or isinstance(device, torch.device):
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: this torch has no CUDA device (CPU build or no GPU)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: MPS is not available here")
    return dev
