"""The reference's registry: ``@realizes(SpecClass)`` and :func:`apply`.

Example:
    >>> import numpy as np
    >>> from aimv2.specs import NormSpec
    >>> apply(NormSpec(width=2), {"weight": np.ones(2)}, np.array([3.0, 4.0])).round(3)
    array([0.849, 1.131])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aimv2.registry import Realizations
from aimv2.specs import Spec

from .ops import Weights

__all__ = ["REGISTRY", "realizes", "apply"]

REGISTRY = Realizations(
    "reference",
    hint=": decorate a float64 NumPy function (spec, weights, x, **kw) with "
    "@aimv2.reference.realizes({cls})",
)


def realizes(spec_class: type[Spec]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a float64 NumPy function ``(spec, weights, x, **kw)`` as the reference
    realization of ``spec_class``; ``weights`` holds the spec's canonical names.

    Example:
        >>> from aimv2.specs import NormSpec
        >>> REGISTRY.lookup(NormSpec(4)).__name__
        'norm'
    """
    return REGISTRY.realizes(spec_class)


def apply(spec: Spec, weights: Weights, *args: Any, **kwargs: Any) -> Any:
    """Run ``spec``'s reference realization (no weight check; composites call this on
    their parts with :func:`~aimv2.reference.ops.sub` of their weights).

    Example:
        >>> import numpy as np
        >>> from aimv2.specs import NormSpec
        >>> apply(NormSpec(width=1), {"weight": np.ones(1)}, np.array([2.0])).round(3).tolist()
        [1.0]
    """
    return REGISTRY.lookup(spec)(spec, weights, *args, **kwargs)
