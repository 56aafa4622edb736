"""NumPy building blocks for float64 realizations (yours too): linear layers, softmax,
scaled dot-product attention, erf, and the weight-name helper :func:`sub`.

Example:
    >>> import numpy as np
    >>> from aimv2.reference import ops
    >>> ops.linear({"w.weight": np.eye(2), "w.bias": np.ones(2)}, "w", np.zeros((1, 2))).tolist()
    [[1.0, 1.0]]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from aimv2 import masks

__all__ = ["Weights", "sub", "f64", "linear", "softmax", "sdpa", "erf", "silu"]

Weights = Mapping[str, np.ndarray]

_erf = np.vectorize(math.erf, otypes=[np.float64])


def sub(weights: Weights, prefix: str) -> dict[str, np.ndarray]:
    """The weights under ``prefix`` with the prefix stripped.

    Example:
        >>> sub({"a.b": 1, "c": 2}, "a.")
        {'b': 1}
    """
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def f64(a: Any) -> np.ndarray:
    """``a`` as a float64 array.

    Example:
        >>> f64([1, 2]).dtype
        dtype('float64')
    """
    return np.asarray(a, dtype=np.float64)


def linear(w: Weights, name: str, x: np.ndarray) -> np.ndarray:
    """``x @ w[name.weight].T + w[name.bias]`` (the bias only when present).

    Example:
        >>> linear({"p.weight": np.ones((3, 2))}, "p", np.ones((1, 2))).tolist()
        [[2.0, 2.0, 2.0]]
    """
    y = x @ f64(w[f"{name}.weight"]).T
    if f"{name}.bias" in w:
        y = y + f64(w[f"{name}.bias"])
    return y


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``.

    Example:
        >>> softmax(np.array([0.0, 0.0])).tolist()
        [0.5, 0.5]
    """
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: Any, scale: float) -> np.ndarray:
    """Attention over (B, H, N, hd) arrays; ``mask`` None, ``"causal"`` or boolean
    (True = may attend), broadcast to (B, H, Nq, Nk).

    Example:
        >>> q = np.zeros((1, 1, 2, 1)); v = np.array([[[[1.0], [3.0]]]])
        >>> sdpa(q, q, v, "causal", 1.0)[0, 0, :, 0].tolist()
        [1.0, 2.0]
    """
    scores = (q @ k.swapaxes(-1, -2)) * scale
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"mask: expected None, 'causal' or a boolean array, got {mask!r}")
        mask = masks.causal_mask(scores.shape[-1])
    if mask is not None:
        scores = np.where(np.asarray(mask, dtype=bool), scores, -np.inf)
    return softmax(scores) @ v


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, element-wise, in float64.

    Example:
        >>> round(float(erf(np.array(1.0))), 6)
        0.842701
    """
    return _erf(x)


def silu(x: np.ndarray) -> np.ndarray:
    """``x · sigmoid(x)``.

    Example:
        >>> silu(np.array([0.0])).tolist()
        [0.0]
    """
    return x / (1.0 + np.exp(-x))
