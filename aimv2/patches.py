"""Patch layout helpers shared by every realization (NumPy).

Patches are taken row-major over the (rows, cols) grid; inside a patch the values
are ordered (row, col, channel). The pixel head predicts vectors in this order.

Example:
    >>> import numpy as np
    >>> from aimv2 import patches
    >>> patches.patchify(np.zeros((1, 3, 8, 8)), 4).shape
    (1, 4, 48)
"""

from __future__ import annotations

import numpy as np

__all__ = ["patchify", "normalize_patches", "sincos_2d"]


def patchify(images: np.ndarray, patch_size: int) -> np.ndarray:
    """(B, C, H, W) → (B, N, p·p·C) with N = (H/p)(W/p), row-major patches.

    Example:
        >>> patchify(np.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 1].tolist()
        [2.0, 3.0, 6.0, 7.0]
    """
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = x.transpose(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def normalize_patches(x: np.ndarray, eps: float = 1e-6, unbiased: bool = True) -> np.ndarray:
    """Standardize each patch vector by its own mean and variance (+ eps).

    Example:
        >>> v = normalize_patches(np.array([[1.0, 2.0, 3.0]]))
        >>> np.round(v, 3).tolist()
        [[-1.0, 0.0, 1.0]]
    """
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True, ddof=1 if unbiased else 0)
    return (x - mean) / np.sqrt(var + eps)


def sincos_2d(
    width: int, rows: int, cols: int, temperature: float = 10000.0, dtype=np.float64
) -> np.ndarray:
    """AIMv2's 2D sin-cos table (rows·cols, width), tokens row-major.

    With q = width/4 and ω_k = temperature^(−k/q): channels [0:q] sin(col·ω),
    [q:2q] cos(col·ω), [2q:3q] sin(row·ω), [3q:4q] cos(row·ω).

    Example:
        >>> sincos_2d(8, 2, 3).shape
        (6, 8)
    """
    q = width // 4
    omega = 1.0 / temperature ** (np.arange(q, dtype=np.float64) / q)
    row, col = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    col_w = col.reshape(-1, 1) * omega[None]
    row_w = row.reshape(-1, 1) * omega[None]
    table = np.concatenate([np.sin(col_w), np.cos(col_w), np.sin(row_w), np.cos(row_w)], axis=1)
    return table.astype(dtype)
