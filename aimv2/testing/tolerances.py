"""Stated tolerances and the comparisons that apply them.

Example:
    >>> import numpy as np
    >>> assert_close(np.ones(2), np.ones(2) + 1e-7)
    1.0000000005838672e-07
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Tolerance",
    "FORWARD_TOL",
    "GRAD_TOL",
    "TRAINING_TOL",
    "Check",
    "max_error",
    "assert_close",
]


@dataclass(frozen=True)
class Tolerance:
    """``max|got − want| ≤ tol · max(1, max|want|)``: an error relative to the tensor's scale.

    Example:
        >>> Tolerance(1e-4).ok(np.array([1.00001]), np.array([1.0]))
        True
    """

    tol: float

    def bound(self, want: np.ndarray) -> float:
        """The largest allowed absolute error for ``want``."""
        return self.tol * max(1.0, float(np.max(np.abs(want))) if np.size(want) else 1.0)

    def ok(self, got: np.ndarray, want: np.ndarray) -> bool:
        """True when ``got`` is within tolerance of ``want``."""
        return max_error(got, want) <= self.bound(want)


# Float32 forward against the float64 reference. Unit roundoff is 6e-8; the drawn
# models have ≤ 4 blocks of width ≤ 64 (dot products of ≤ 256 terms), and the
# errors observed are ~1e-6 of the output scale. 1e-4 leaves room for the norm's
# 1/rms amplification on small activations without hiding a wrong formula (a
# missing bias, eps or scale moves outputs by ≥ 1e-2).
FORWARD_TOL = Tolerance(1e-4)
# Gradients sum over batch, positions and both losses and pass back through every
# block and the softmax, so they accumulate more float32 rounding (observed ~1e-5
# of scale): 1e-3.
GRAD_TOL = Tolerance(1e-3)
# Torch vs MLX training losses over tens of float32 steps from the same weights and data:
# both backends round differently at every step and AdamW amplifies the difference a
# little (observed ≤ 2e-6 of the loss); a wrong optimizer detail (bias correction, decay
# on the wrong group, a missed clip) moves the loss by ≥ 1e-3 within 20 steps.
TRAINING_TOL = Tolerance(1e-4)


@dataclass(frozen=True)
class Check:
    """One compared tensor: its largest absolute error and the bound it must stay under.

    Example:
        >>> Check(1e-6, 1e-4).ok
        True
    """

    error: float
    bound: float

    @property
    def ok(self) -> bool:
        """True within tolerance."""
        return self.error <= self.bound


def max_error(got: Any, want: Any) -> float:
    """Largest absolute difference (inf when shapes differ).

    Example:
        >>> max_error(np.ones(2), np.zeros(2))
        1.0
    """
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    return float(np.max(np.abs(got - want))) if got.size else 0.0


def assert_close(got: Any, want: Any, tol: Tolerance = FORWARD_TOL, what: str = "") -> float:
    """Assert ``got`` ≈ ``want`` under ``tol``; return the error.

    Example:
        >>> assert_close(np.ones(2), np.ones(2))
        0.0
    """
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape} != expected {want.shape}")
    err = max_error(got, want)
    if not err <= tol.bound(want):
        raise AssertionError(
            f"{what}: max abs error {err:.3e} > tolerance {tol.bound(want):.3e} "
            f"(tol {tol.tol:g} × scale)"
        )
    return err
