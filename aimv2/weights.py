"""Canonical parameter names, shapes and layouts, derived from a spec.

Each spec declares its own table (``Spec.parameters()``; composites build theirs from
their children). It is the single source of truth for what a realization must hold: the
backends build their module trees so that their parameter names equal these keys,
the reference reads weights by these keys, :func:`init_weights` draws them, and
:func:`check_weights` validates any weight dict (a checkpoint, a user's arrays)
before anything is loaded. Layouts are PyTorch's (Linear (out, in); conv
(out, in, kH, kW)); a backend converts only at its own boundary.

Example:
    >>> import aimv2
    >>> spec = aimv2.encoder_spec(width=64, depth=1, heads=2, patch_size=4, image_size=8)
    >>> aimv2.weights.parameters(spec)["trunk.blocks.0.attn.qkv.weight"].shape
    (192, 64)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import specs as S
from .specs import ParamInfo

__all__ = [
    "ParamInfo",
    "WeightsError",
    "parameters",
    "init_weights",
    "check_weights",
    "check_value",
    "numeric_array",
]


class WeightsError(ValueError):
    """A weight dict does not match the spec it is loaded into."""


def parameters(spec: S.Spec) -> dict[str, ParamInfo]:
    """Canonical name → :class:`ParamInfo` for every parameter ``spec`` realizes
    (``spec.parameters()``, checked).

    A :class:`~aimv2.specs.ModelSpec` without a decoder has the encoder's bare names;
    with a decoder, the encoder's names sit under ``encoder.``.

    Example:
        >>> from aimv2.specs import NormSpec
        >>> list(parameters(NormSpec(width=8, type="layer")))
        ['weight', 'bias']
    """
    if not isinstance(spec, S.Spec):
        raise TypeError(f"spec: expected an aimv2 spec, got {type(spec).__name__}")
    table = spec.parameters()
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, ParamInfo) for k, v in table.items()
    ):
        raise TypeError(f"{type(spec).__name__}.parameters(): expected a dict of name -> ParamInfo")
    return table


def _decoder_depth(spec: S.Spec) -> int:
    if isinstance(spec, S.ModelSpec) and spec.decoder is not None:
        return spec.decoder.depth
    return 1


def init_weights(spec: S.Spec, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw float32 initial weights for ``spec`` with NumPy, identical on every backend.

    Each parameter draws from its own stream (seeded by ``seed`` and its name), so
    adding a head does not change the encoder's initial weights.

    Example:
        >>> from aimv2.specs import NormSpec
        >>> init_weights(NormSpec(width=4))["weight"].tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise S.SpecError(f"seed={seed!r}: expected a non-negative integer")
    init = spec.init if isinstance(spec, S.ModelSpec) else S.InitSpec()
    depth = _decoder_depth(spec)
    out: dict[str, np.ndarray] = {}
    for name, info in parameters(spec).items():
        key = [seed] + list(name.encode())
        rng = np.random.default_rng(key)
        role = info.role
        if info.fill is not None:
            w = np.full(info.shape, float(info.fill))
        elif role in ("bias", "norm_bias"):
            w = np.zeros(info.shape)
        elif role == "norm":
            w = np.ones(info.shape)
        elif role in ("pos", "token", "embed"):
            w = rng.normal(0.0, init.embed_std, info.shape)
        elif role == "text_pos":
            w = rng.normal(0.0, init.text_pos_std, info.shape)
        else:  # linear, conv, head: xavier-uniform
            bound = np.sqrt(6.0 / (info.fan_in + info.fan_out))
            w = rng.uniform(-bound, bound, info.shape)
            if role == "head" and init.scale_heads_by_depth:
                w = w / np.sqrt(2.0 * depth)
        out[name] = w.astype(np.float32)
    return out


def check_weights(spec: S.Spec, weights: Mapping[str, object], where: str = "weights") -> None:
    """Raise :class:`WeightsError` listing missing, unexpected and mis-shaped keys.

    Accepts any arrays with a ``shape``; checks only names and shapes.

    Example:
        >>> from aimv2.specs import NormSpec
        >>> check_weights(NormSpec(width=4), {"weight": np.ones(3)})
        Traceback (most recent call last):
        ...
        aimv2.weights.WeightsError: weights do not match NormSpec: mis-shaped: weight: expected (4,), got (3,)
    """
    expected = parameters(spec)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    misshaped = []
    for name in sorted(set(expected) & set(weights)):
        got = tuple(int(s) for s in getattr(weights[name], "shape", ()))
        if got != expected[name].shape:
            misshaped.append(f"{name}: expected {expected[name].shape}, got {got}")
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:20])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:20])}")
        if misshaped:
            parts.append(f"mis-shaped: {'; '.join(misshaped[:20])}")
        raise WeightsError(f"{where} do not match {type(spec).__name__}: " + "; ".join(parts))


def numeric_array(name: str, value: Any, where: str = "weights") -> np.ndarray:
    """``value`` as a NumPy array of numbers; strings, objects and the like are a
    :class:`WeightsError` naming ``name`` (never a framework's cast error later).

    Example:
        >>> numeric_array("w", [1, 2]).dtype.kind
        'i'
        >>> numeric_array("w", ["a"])
        Traceback (most recent call last):
        ...
        aimv2.weights.WeightsError: weights: w: expected a numeric array, got dtype <U1
    """
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{where}: {name}: expected a numeric array ({err})") from None
    if arr.dtype.kind not in "biuf" and arr.dtype.name != "bfloat16":
        raise WeightsError(f"{where}: {name}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def check_value(
    name: str, finite: bool, where: str = "weights", allow_nonfinite: bool = False
) -> None:
    """Raise :class:`WeightsError` naming ``name`` when its values are not all finite
    (``allow_nonfinite=True``: load it anyway, e.g. to inspect a diverged run).

    Example:
        >>> check_value("trunk.x", finite=False)
        Traceback (most recent call last):
        ...
        aimv2.weights.WeightsError: weights: trunk.x holds NaN or infinite values (pass allow_nonfinite=True to load it anyway)
    """
    if not finite and not allow_nonfinite:
        raise WeightsError(
            f"{where}: {name} holds NaN or infinite values (pass allow_nonfinite=True to load "
            f"it anyway)"
        )
