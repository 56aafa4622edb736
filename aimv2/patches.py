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

from typing import Any

import numpy as np

__all__ = ["patchify", "normalize_patches", "sincos_2d", "resample_matrix", "resample_grid"]


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
    width: int, rows: int, cols: int, temperature: float = 10000.0, dtype: Any = np.float64
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


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.5`` (the kernel of PIL's and torch's
    antialiased bicubic resampling)."""
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights that resample n_in samples to n_out along one axis:
    bicubic with half-pixel centers (``align_corners=False``), antialiased, as
    ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` — timm's
    position-embedding resampling.

    Output i sits at ``c = (i + 0.5)·n_in/n_out`` in input coordinates; inputs j with
    ``|j + 0.5 − c| < support`` contribute ``cubic((j + 0.5 − c)·k)``, normalized to sum
    1, where shrinking (n_in > n_out) widens the kernel to ``support = 2·n_in/n_out`` and
    ``k = n_out/n_in`` (the antialiasing), and growing keeps ``support = 2``, ``k = 1``.
    Taps past the border are dropped (not clamped). The same size gives the identity.

    Example:
        >>> resample_matrix(3, 3).tolist() == np.eye(3).tolist()
        True
        >>> resample_matrix(2, 4).sum(axis=1).round(12).tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    for name, n in (("n_in", n_in), ("n_out", n_out)):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name}={n!r}: expected a positive integer")
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1.0 else 2.0
    k = 1.0 / scale if scale >= 1.0 else 1.0
    out = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        taps = _cubic((np.arange(lo, hi) + 0.5 - center) * k)
        total = taps.sum()
        out[i, lo:hi] = taps / total if total != 0.0 else taps
    return out


def resample_grid(table: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Resample row-major grid tokens ``table`` (..., rows·cols, D) from grid ``src`` to
    ``dst`` (rows, cols) in float64 with :func:`resample_matrix` along each axis.

    Example:
        >>> t = np.arange(8.0).reshape(1, 4, 2)
        >>> resample_grid(t, (2, 2), (2, 2)).tolist() == t.tolist()
        True
        >>> resample_grid(t, (2, 2), (3, 5)).shape
        (1, 15, 2)
    """
    table = np.asarray(table, dtype=np.float64)
    (r0, c0), (r1, c1) = tuple(src), tuple(dst)
    if table.ndim < 2 or table.shape[-2] != r0 * c0:
        raise ValueError(
            f"table: expected (..., {r0 * c0}, D) tokens of the grid {(r0, c0)}, got shape "
            f"{table.shape}"
        )
    grid = table.reshape(*table.shape[:-2], r0, c0, table.shape[-1])
    rows, cols = resample_matrix(r0, r1), resample_matrix(c0, c1)
    out = np.einsum("ri,...ijd,sj->...rsd", rows, grid, cols)
    return out.reshape(*table.shape[:-2], r1 * c1, table.shape[-1])
