"""Prefix sampling and attention masks (host side, NumPy).

Prefix lengths are drawn here, on the host, from a seeded NumPy generator, so both
backends see the same masks for the same seed. Masks are boolean with True meaning
"query i may attend to key j" (the convention of torch's and MLX's SDPA).

Example:
    >>> import numpy as np
    >>> from aimv2 import masks
    >>> masks.prefix_mask(np.array([2]), 4)[0, 0].astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .specs import PrefixSpec

__all__ = ["sample_prefix", "check_prefix_len", "prefix_mask", "causal_mask"]


def sample_prefix(
    rng: np.random.Generator | int,
    batch: int,
    num_patches: int,
    spec: PrefixSpec | None = None,
) -> np.ndarray:
    """Draw one prefix length per image, uniform over ``spec.bounds(num_patches)``.

    Example:
        >>> p = sample_prefix(0, batch=8, num_patches=16)
        >>> bool(((p >= 1) & (p <= 15)).all())
        True
    """
    spec = spec or PrefixSpec()
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    low, high = spec.bounds(num_patches)
    return rng.integers(low, high + 1, size=batch, dtype=np.int64)


def check_prefix_len(prefix_len: Any, batch: int, num_patches: int) -> np.ndarray:
    """Validate ``prefix_len`` (an int or one integer per example) → int64 array (batch,).

    Example:
        >>> check_prefix_len(3, batch=2, num_patches=16).tolist()
        [3, 3]
    """
    arr = np.asarray(prefix_len)
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"prefix_len: expected an int or integers, one per example, got dtype {arr.dtype}"
        )
    if arr.ndim == 0:
        arr = np.full((batch,), int(arr), dtype=np.int64)
    if arr.shape != (batch,):
        raise ValueError(
            f"prefix_len: expected an int or {batch} integers (one per example), "
            f"got shape {arr.shape}"
        )
    arr = arr.astype(np.int64)
    bad = (arr < 1) | (arr > num_patches - 1)
    if bad.any():
        raise ValueError(
            f"prefix_len: every value must lie in 1..{num_patches - 1} "
            f"(N-1 for N={num_patches} patches), got {arr[bad].tolist()}"
        )
    return arr


def prefix_mask(prefix_len: np.ndarray, n: int) -> np.ndarray:
    """AIMv2 prefix attention mask (B, 1, n, n): key j visible iff j < M or j ≤ i.

    Example:
        >>> prefix_mask(np.array([1]), 2)[0, 0].tolist()
        [[True, False], [True, True]]
    """
    j = np.arange(n)
    m = np.asarray(prefix_len, dtype=np.int64)[:, None, None, None]
    return (j[None, None, None, :] < m) | (j[None, None, None, :] <= j[None, None, :, None])


def causal_mask(n: int) -> np.ndarray:
    """Plain causal mask (n, n): key j visible iff j ≤ i.

    Example:
        >>> causal_mask(2).tolist()
        [[True, False], [True, True]]
    """
    return np.tril(np.ones((n, n), dtype=bool))
