"""Running MLX modules: inference, the default device, activation checkpointing and
gradients for tests and tools (mirror images of :mod:`aimv2.backends.torch.runtime`).

Example:
    >>> default_device() in ("cpu", "gpu")
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from .arrays import as_array, to_numpy
from .layout import to_canonical

__all__ = [
    "inference",
    "default_device",
    "set_checkpointing",
    "loss_and_grads",
    "output_and_grads",
    "value_and_grads",
    "freeze",
]


def inference() -> Any:
    """A context for inference calls (MLX builds no graph outside its grad transforms).

    Example:
        >>> with inference():
        ...     mx.ones((1,)).shape
        (1,)
    """
    return contextlib.nullcontext()


def default_device() -> str:
    """The device MLX computes on by default: ``"gpu"`` or ``"cpu"``.

    Example:
        >>> default_device() == ("gpu" if mx.default_device() == mx.gpu else "cpu")
        True
    """
    return "gpu" if mx.default_device() == mx.gpu else "cpu"


def loss_and_grads(
    model: nn.Module, images: Any, tokens: Any = None, prefix_len: Any = None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One forward and backward of a pre-training model: float losses and canonical grads
    (torch layouts).

    Example:
        >>> import aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> m = aimv2.build(spec, backend="mlx")
        >>> img, tok = np.zeros((1, 3, 16, 16), np.float32), np.ones((1, 4), np.int64)
        >>> losses, grads = loss_and_grads(m, img, tok, [3])
        >>> grads["decoder.start_token"].shape
        (1, 1, 32)
    """
    images = as_array(images)
    tokens = None if tokens is None else as_array(tokens)
    parts: dict[str, mx.array] = {}

    def loss_fn(imgs, toks):
        out = model(imgs, toks, prefix_len)
        parts.update({k: out[k] for k in ("pixel_loss", "text_loss")})
        return out["loss"]

    loss, grads = nn.value_and_grad(model, loss_fn)(images, tokens)
    mx.eval(loss, grads, parts)
    flat = {n: to_canonical(model.spec, n, to_numpy(g)) for n, g in tree_flatten(grads)}
    losses = {"loss": float(loss.item())}
    losses.update({k: float(v.item()) for k, v in parts.items()})
    return losses, flat


def output_and_grads(
    module: nn.Module, inputs: Sequence[Any], cotangent: np.ndarray, **kwargs: Any
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``module(*inputs, **kwargs)`` and the gradient of ``sum(output · cotangent)`` with
    respect to every parameter (canonical names, torch layouts).

    Example:
        >>> from aimv2 import specs as S
        >>> from aimv2.backends.mlx import build_module, set_weights
        >>> m = build_module(S.NormSpec(width=2)); set_weights(m, {"weight": np.ones(2)})
        >>> out, g = output_and_grads(m, [np.array([[3.0, 4.0]], np.float32)], np.ones((1, 2)))
        >>> [round(float(v), 3) for v in g["weight"]]
        [0.849, 1.131]
    """
    args = [as_array(x) if isinstance(x, np.ndarray) else x for x in inputs]
    kw = {k: as_array(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    cot = mx.array(np.asarray(cotangent, dtype=np.float32))
    outputs: list[mx.array] = []

    def loss_fn(*xs: Any) -> mx.array:
        out = module(*xs, **kw)
        outputs.append(out)
        return (out.astype(mx.float32) * cot).sum()

    _, grads = nn.value_and_grad(module, loss_fn)(*args)
    mx.eval(grads, outputs)
    flat = {n: to_canonical(module.spec, n, to_numpy(g)) for n, g in tree_flatten(grads)}
    return to_numpy(outputs[-1]), flat


def value_and_grads(
    model: nn.Module, loss_fn: Callable[[Any, Mapping[str, Any]], Mapping[str, Any]], batch: Any
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``loss_fn(model, batch)`` on NumPy ``batch`` values (as arrays) and the gradient of
    its ``"loss"`` with respect to every parameter (canonical names, torch layouts; zeros
    for unused and frozen ones); every reported value as a float.

    Example:
        >>> import aimv2
        >>> from aimv2.backends.mlx.train import probe_loss
        >>> m = aimv2.build(aimv2.specs.ProbeSpec(width=4, num_classes=2, heads=1), "mlx")
        >>> vals, g = value_and_grads(m, probe_loss, {"features": np.ones((2, 3, 4), np.float32),
        ...                                           "labels": np.array([0, 1])})
        >>> sorted(vals), g["pool.cls_token"].shape
        (['accuracy', 'loss'], (1, 1, 4))
    """
    arrays = {k: as_array(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
    keys: list[str] = []

    def fn(b: Mapping[str, Any]) -> Any:
        out = loss_fn(model, b)
        keys[:] = list(out)
        return out["loss"], [out[k] for k in keys]

    (_, values), grads = nn.value_and_grad(model, fn)(arrays)
    mx.eval(values, grads)
    spec = model.spec
    flat = {n: to_canonical(spec, n, to_numpy(g)) for n, g in tree_flatten(grads)}
    for name, p in tree_flatten(model.parameters()):
        if name not in flat:  # frozen: no gradient
            flat[name] = np.zeros(to_canonical(spec, name, to_numpy(p)).shape, np.float32)
    return {k: float(v.item()) for k, v in zip(keys, values, strict=True)}, flat


def freeze(model: nn.Module, prefixes: Sequence[str]) -> int:
    """Stop training every parameter whose canonical name starts with one of ``prefixes``
    (MLX's ``freeze``): it gets no gradient and a Trainer built afterwards leaves it out of
    its optimizer (no update, no weight decay). Returns how many were frozen.

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.presets.get("aimv2-lit-test-tiny"), "mlx")
        >>> freeze(m, ["image_encoder.trunk.", "image_encoder.preprocessor."])
        19
        >>> "image_encoder.head.cls_token" in dict(tree_flatten(m.trainable_parameters()))
        True
    """
    if isinstance(prefixes, str):
        raise TypeError("prefixes: expected a list of name prefixes, got one str")
    count = 0
    for path, module in model.named_modules():
        own = [k for k, v in module.items() if isinstance(v, mx.array)]
        keys = []
        for key in own:
            name = f"{path}.{key}" if path else key
            if any(name.startswith(prefix) for prefix in prefixes):
                keys.append(key)
        if keys:
            module.freeze(recurse=False, keys=keys)
            count += len(keys)
    return count


def set_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Turn activation checkpointing on (or off) for every block stack in ``model``
    (encoder trunk, decoder): each block's activations are recomputed in the backward
    pass instead of kept. For the large presets. Returns how many stacks were switched.

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.presets.get("aimv2-test-tiny"), backend="mlx")
        >>> set_checkpointing(m)
        2
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an MLX module, got {type(model).__name__}")
    count = 0
    for _, module in model.named_modules():
        # the block stacks (Trunk, Decoder) carry a ``checkpoint`` flag; matched by the
        # flag, not the class, so a second import of this module (doctests) agrees
        if isinstance(getattr(module, "checkpoint", None), bool):
            module.checkpoint = bool(enabled)
            count += 1
    return count
