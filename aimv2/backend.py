"""Choosing and calling a backend: the small dispatch layer above the backend contract.

A backend package (``aimv2.backends.torch``, ``aimv2.backends.mlx``) satisfies
:class:`aimv2.contract.Backend`; this module imports one only when it is asked for
(:func:`load_backend`), builds models from specs (:func:`build`) and finds the backend
of a model (:func:`backend_of`). Shared drivers call the contract's verbs on the package
these return and nothing else.

Example:
    >>> import aimv2
    >>> "torch" in aimv2.BACKENDS
    True
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from . import specs as S
from .weights import init_weights

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "load_backend",
    "available_backends",
    "backend_of",
    "build",
    "get_weights",
    "set_weights",
]

BACKENDS = ("torch", "mlx")
_FRAMEWORK = {"torch": "torch", "mlx": "mlx"}


class BackendUnavailable(ImportError):
    """The requested backend's framework is not installed."""


def load_backend(name: str) -> ModuleType:
    """Import ``aimv2.backends.<name>``; a missing framework names the extra to install.

    Example:
        >>> load_backend("torch").__name__
        'aimv2.backends.torch'
    """
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r}: expected one of {BACKENDS}")
    try:
        return importlib.import_module(f"aimv2.backends.{name}")
    except ImportError as err:
        missing = (err.name or "").split(".")[0]
        if missing == _FRAMEWORK[name]:
            raise BackendUnavailable(
                f"backend={name!r} needs {_FRAMEWORK[name]}, which is not installed: "
                f"pip install 'aimv2[{name}]'"
            ) from err
        raise


def available_backends() -> list[str]:
    """The backends whose framework imports here.

    Example:
        >>> set(available_backends()) <= set(BACKENDS)
        True
    """
    out = []
    for name in BACKENDS:
        try:
            load_backend(name)
        except BackendUnavailable:
            continue
        out.append(name)
    return out


def backend_of(model: Any) -> ModuleType:
    """The backend package that built ``model`` (torch ``nn.Module`` or MLX ``nn.Module``).

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.specs.NormSpec(width=4), backend="torch")
        >>> backend_of(m).__name__
        'aimv2.backends.torch'
    """
    for name, framework in _FRAMEWORK.items():
        if framework in sys.modules:
            be = load_backend(name)
            if be.is_module(model):
                return be
    raise TypeError(
        f"model: expected a module built by aimv2.build (torch or MLX), got {type(model).__name__}"
    )


def build(
    spec: S.Spec,
    backend: str = "torch",
    *,
    seed: int | None = 0,
    weights: Mapping[str, np.ndarray] | None = None,
    dtype: Any = None,
    device: Any = None,
) -> Any:
    """Realize ``spec`` as a native module of ``backend``.

    Weights come from ``weights`` (canonical names, checked strictly) or else are
    drawn by :func:`aimv2.init_weights` from ``seed`` — the same numbers on every
    backend. ``dtype`` / ``device`` are backend-native (e.g. ``torch.bfloat16``,
    ``"cuda"``; ``mx.float16``).

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           mlp_hidden=64)
        >>> m = aimv2.build(spec, backend="torch", seed=0)
        >>> sorted(aimv2.get_weights(m))[0]
        'preprocessor.patchifier.norm.weight'
    """
    if not isinstance(spec, S.Spec):
        raise TypeError(f"spec: expected an aimv2 spec, got {type(spec).__name__}")
    be = load_backend(backend)
    module = be.build_module(spec)
    if weights is None:
        weights = init_weights(spec, 0 if seed is None else seed)
    be.set_weights(module, weights)
    if dtype is not None or device is not None:
        module = be.cast(module, dtype=dtype, device=device)
    return module


def get_weights(model: Any) -> dict[str, np.ndarray]:
    """Canonical name → NumPy array (torch layouts) of every parameter of ``model``.

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.specs.NormSpec(width=4), backend="torch")
        >>> aimv2.get_weights(m)["weight"].shape
        (4,)
    """
    return backend_of(model).get_weights(model)


def set_weights(
    model: Any, weights: Mapping[str, np.ndarray], *, allow_nonfinite: bool = False
) -> None:
    """Load canonical weights into ``model``: strict about names and shapes, values numeric
    and finite (``allow_nonfinite=True`` to inspect a diverged run), all or nothing.

    Example:
        >>> import aimv2, numpy as np
        >>> m = aimv2.build(aimv2.specs.NormSpec(width=4), backend="torch")
        >>> aimv2.set_weights(m, {"weight": np.full(4, 2.0, np.float32)})
        >>> aimv2.get_weights(m)["weight"].tolist()
        [2.0, 2.0, 2.0, 2.0]
    """
    backend_of(model).set_weights(model, weights, allow_nonfinite=allow_nonfinite)
