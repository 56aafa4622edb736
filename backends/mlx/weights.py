"""Weights across the MLX boundary: canonical NumPy arrays (torch layouts) in and out,
streaming loads and dtype casts. Layouts convert only here, through
:mod:`aimv2.backends.mlx.layout`.

Example:
    >>> import numpy as np
    >>> from aimv2 import specs as S
    >>> from aimv2.backends.mlx.registry import build_module
    >>> m = build_module(S.NormSpec(width=2)); set_weights(m, {"weight": np.ones(2)})
    >>> get_weights(m)["weight"].tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from aimv2 import specs as S
from aimv2.tensorfiles import Stored
from aimv2.weights import check_value, check_weights, numeric_array

from .arrays import dtype_name, native_device, native_dtype, to_numpy
from .layout import to_canonical, to_mlx
from .registry import build_module

__all__ = ["get_weights", "set_weights", "load_weights", "weight_dtypes", "get_weight", "cast"]


def get_weights(module: nn.Module) -> dict[str, np.ndarray]:
    """Canonical name → NumPy array (torch layouts: conv weights back to (out, in, kH, kW)).

    Example:
        >>> sorted(get_weights(build_module(S.NormSpec(width=4, type="layer"))))
        ['bias', 'weight']
    """
    spec = module.spec
    return {n: to_canonical(spec, n, to_numpy(v)) for n, v in tree_flatten(module.parameters())}


def _staged(name: str, value: Any, allow_nonfinite: bool) -> mx.array:
    """``value`` as an MLX array, checked: numeric, and finite unless allowed."""
    arr = value if isinstance(value, mx.array) else mx.array(numeric_array(name, value))
    if mx.issubdtype(arr.dtype, mx.floating):
        check_value(name, bool(mx.all(mx.isfinite(arr)).item()), allow_nonfinite=allow_nonfinite)
    return arr


def set_weights(
    module: nn.Module, weights: Mapping[str, Any], *, allow_nonfinite: bool = False
) -> None:
    """Load canonical weights (torch layouts) after a strict name/shape check and a check
    of every value (numeric; finite unless ``allow_nonfinite``): all or nothing.

    Example:
        >>> m = build_module(S.NormSpec(width=2))
        >>> set_weights(m, {"weight": np.array([2.0, 3.0])})
        >>> m.weight.tolist()
        [2.0, 3.0]
    """
    spec = module.spec
    check_weights(spec, weights)
    current = dict(tree_flatten(module.parameters()))
    new = []
    for name, value in weights.items():
        arr = _staged(name, value, allow_nonfinite)
        new.append((name, to_mlx(spec, name, arr).astype(current[name].dtype)))
    module.update(tree_unflatten(new))
    mx.eval(module.parameters())


def load_weights(
    spec: S.Spec,
    tensors: Iterable[tuple[str, np.ndarray | Stored]],
    *,
    dtype: Any = None,
    device: Any = None,
    allow_nonfinite: bool = False,
) -> nn.Module:
    """Build ``spec`` in ``dtype`` and stream canonical ``(name, value)`` pairs into it one
    at a time (MLX is lazy: the module's own initial values are never computed); every
    parameter must arrive exactly once. A value is a NumPy array, or a
    :class:`~aimv2.tensorfiles.Stored` read here with ``mx.load`` (no NumPy copy). ``device`` (``"cpu"``/``"gpu"``; memory is
    unified) becomes MLX's default device.

    Example:
        >>> m = load_weights(S.NormSpec(width=2), [("weight", np.ones(2))], dtype="bfloat16")
        >>> m.weight.dtype
        mlx.core.bfloat16
    """
    if device is not None:
        mx.set_default_device(native_device(device))
    target = native_dtype(dtype)
    module = build_module(spec)
    if target is not None:
        module.set_dtype(target)
    current = dict(tree_flatten(module.parameters()))
    seen: set[str] = set()
    files: dict[str, dict[str, mx.array]] = {}  # mx.load is lazy: a tensor is read when used
    for name, value in tensors:
        if name not in current:
            raise KeyError(f"load_weights: {name!r} is not a parameter of {spec.kind!r}")
        if name in seen:
            raise KeyError(f"load_weights: {name!r} arrived twice")
        seen.add(name)
        if isinstance(value, Stored):
            for path, _ in value.parts:
                if path not in files:
                    files[path] = mx.load(path)
            arr = _combine(value.op, [files[path][key] for path, key in value.parts])
        else:
            arr = numeric_array(name, value)
            arr = mx.array(arr.astype(np.float32) if arr.dtype == np.float64 else arr)
        if mx.issubdtype(arr.dtype, mx.floating):
            check_value(
                name, bool(mx.all(mx.isfinite(arr)).item()), allow_nonfinite=allow_nonfinite
            )
        value = to_mlx(module.spec, name, arr).astype(current[name].dtype)
        mx.eval(value)
        module.update(tree_unflatten([(name, value)]))
    missing = sorted(set(current) - seen)
    if missing:
        raise KeyError(f"load_weights: {len(missing)} parameters never arrived: {missing[:5]}")
    return module


def _combine(op: str, parts: list[mx.array]) -> mx.array:
    """The canonical tensor that stored ``parts`` make under ``op`` (STORED_OPS)."""
    if op == "qkv":
        return mx.concatenate(parts, axis=0)
    if op == "pos":
        return parts[0][None]
    if op == "conv_mlx":
        return parts[0].transpose(0, 3, 1, 2)
    return parts[0]


def weight_dtypes(module: nn.Module) -> dict[str, str]:
    """Canonical name → dtype name of every parameter.

    Example:
        >>> m = build_module(S.NormSpec(width=2)); m.set_dtype(mx.bfloat16)
        >>> weight_dtypes(m)
        {'weight': 'bfloat16'}
    """
    return {n: dtype_name(p.dtype) for n, p in tree_flatten(module.parameters())}


def get_weight(module: nn.Module, name: str) -> np.ndarray:
    """One parameter as a canonical NumPy array (torch layout; bf16/fp16 as float32).

    Example:
        >>> get_weight(build_module(S.NormSpec(width=2)), "weight").shape
        (2,)
    """
    params = dict(tree_flatten(module.parameters()))
    if name not in params:
        raise KeyError(f"name={name!r}: not a parameter of this {type(module).__name__}")
    return to_canonical(module.spec, name, to_numpy(params[name]))


def cast(module: nn.Module, dtype: Any = None, device: Any = None) -> nn.Module:
    """Cast floating parameters to ``dtype`` (a name or an MLX dtype). MLX memory is
    unified: ``device`` (``"cpu"``, ``"gpu"`` or an ``mx.Device``) only sets MLX's default
    device.

    Example:
        >>> cast(build_module(S.NormSpec(width=2)), dtype="float16").weight.dtype
        mlx.core.float16
    """
    if device is not None:
        mx.set_default_device(native_device(device))
    if dtype is not None:
        module.set_dtype(native_dtype(dtype))
    return module
