"""Weights across the torch boundary: canonical NumPy arrays in and out, streaming loads,
dtype and device casts. Canonical layouts are torch's, so nothing is transposed here.

Example:
    >>> import numpy as np
    >>> from aimv2 import specs as S
    >>> from aimv2.backends.torch.registry import build_module
    >>> m = build_module(S.NormSpec(width=2)); set_weights(m, {"weight": np.ones(2)})
    >>> get_weights(m)["weight"].tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from aimv2 import specs as S
from aimv2.tensorfiles import Stored
from aimv2.weights import check_weights

from .arrays import dtype_name, native_device, native_dtype, to_numpy
from .registry import REGISTRY, build

__all__ = ["get_weights", "set_weights", "load_weights", "weight_dtypes", "get_weight", "cast"]


def get_weights(module: nn.Module) -> dict[str, np.ndarray]:
    """Canonical name → NumPy array for every parameter (torch layouts).

    Example:
        >>> from aimv2.backends.torch.registry import build_module
        >>> sorted(get_weights(build_module(S.NormSpec(width=4, type="layer"))))
        ['bias', 'weight']
    """
    return {name: to_numpy(p) for name, p in module.named_parameters()}


@torch.no_grad()
def set_weights(module: nn.Module, weights: Mapping[str, Any]) -> None:
    """Copy canonical weights in, after a strict name/shape check against the spec.

    Example:
        >>> from aimv2.backends.torch.registry import build_module
        >>> m = build_module(S.NormSpec(width=2))
        >>> set_weights(m, {"weight": np.array([2.0, 3.0])})
        >>> m.weight.tolist()
        [2.0, 3.0]
    """
    check_weights(module.spec, weights)
    params = dict(module.named_parameters())
    for name, value in weights.items():
        target = params[name]
        src = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        target.copy_(src.to(device=target.device, dtype=target.dtype))


def load_weights(
    spec: S.Spec,
    tensors: Iterable[tuple[str, np.ndarray | Stored]],
    *,
    dtype: Any = None,
    device: Any = None,
) -> nn.Module:
    """Build ``spec`` directly in ``dtype`` on ``device`` (no random init, no float32 copy)
    and copy canonical ``(name, value)`` pairs into it one at a time; every parameter must
    arrive exactly once. A value is a NumPy array, or a :class:`~aimv2.tensorfiles.Stored`
    read here with ``safe_open(..., framework="pt")`` straight onto ``device`` (no NumPy
    copy).

    Example:
        >>> m = load_weights(S.NormSpec(width=2), [("weight", np.ones(2))], dtype="bfloat16")
        >>> m.weight.dtype
        torch.bfloat16
    """
    target = native_dtype(dtype)
    if isinstance(spec, S.ModelSpec) and spec.decoder is None:
        spec = spec.encoder
    REGISTRY.lookup(spec)
    with torch.device("meta"):
        module = build(spec)
    if target is not None:
        module = module.to(dtype=target)
    module = module.to_empty(device=native_device(device) or "cpu")
    params = dict(module.named_parameters())
    seen: set[str] = set()
    place = native_device(device) or torch.device("cpu")

    def part(path: str, key: str) -> torch.Tensor:
        # one mapping per tensor: the file's pages are released as soon as each is copied,
        # so resident memory stays the model plus one tensor
        with safe_open(path, framework="pt", device=str(place)) as f:
            return f.get_tensor(key)

    with torch.no_grad():
        for name, value in tensors:
            if name not in params:
                raise KeyError(f"load_weights: {name!r} is not a parameter of {spec.kind!r}")
            if name in seen:
                raise KeyError(f"load_weights: {name!r} arrived twice")
            seen.add(name)
            if isinstance(value, Stored):
                src = _combine(value.op, [part(path, key) for path, key in value.parts])
            else:
                src = torch.from_numpy(np.require(value, requirements="C"))
            params[name].copy_(src)
    missing = sorted(set(params) - seen)
    if missing:
        raise KeyError(f"load_weights: {len(missing)} parameters never arrived: {missing[:5]}")
    return module


def _combine(op: str, parts: list[torch.Tensor]) -> torch.Tensor:
    """The canonical tensor that stored ``parts`` make under ``op`` (STORED_OPS)."""
    if op == "qkv":
        return torch.cat(parts, dim=0)
    if op == "pos":
        return parts[0][None]
    if op == "conv_mlx":
        return parts[0].permute(0, 3, 1, 2)
    return parts[0]


def weight_dtypes(module: nn.Module) -> dict[str, str]:
    """Canonical name → dtype name of every parameter.

    Example:
        >>> from aimv2.backends.torch.registry import build_module
        >>> weight_dtypes(build_module(S.NormSpec(width=2)).to(torch.bfloat16))
        {'weight': 'bfloat16'}
    """
    return {n: dtype_name(p.dtype) for n, p in module.named_parameters()}


def get_weight(module: nn.Module, name: str) -> np.ndarray:
    """One parameter as a canonical NumPy array (bf16/fp16 as float32).

    Example:
        >>> from aimv2.backends.torch.registry import build_module
        >>> get_weight(build_module(S.NormSpec(width=2)), "weight").shape
        (2,)
    """
    params = dict(module.named_parameters())
    if name not in params:
        raise KeyError(f"name={name!r}: not a parameter of this {type(module).__name__}")
    return to_numpy(params[name])


def cast(module: nn.Module, dtype: Any = None, device: Any = None) -> nn.Module:
    """Move/cast a module in place and return it (``dtype`` a name or a torch dtype).

    Example:
        >>> from aimv2.backends.torch.registry import build_module
        >>> cast(build_module(S.NormSpec(width=2)), dtype="float64").weight.dtype
        torch.float64
    """
    return module.to(device=native_device(device), dtype=native_dtype(dtype))
