"""Running torch modules: inference, the default device, activation checkpointing and
gradients for tests and tools.

Example:
    >>> import torch
    >>> with inference():
    ...     torch.ones(1, requires_grad=True).mul(2).requires_grad
    False
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .arrays import from_numpy, to_numpy

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
    """A context in which module calls build no autograd graph (``torch.no_grad``).

    Example:
        >>> with inference():
        ...     torch.ones(1, requires_grad=True).mul(2).requires_grad
        False
    """
    return torch.no_grad()


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``.

    Example:
        >>> default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
        True
    """
    return "cuda" if torch.cuda.is_available() else "cpu"


def loss_and_grads(
    model: nn.Module, images: Any, tokens: Any = None, prefix_len: Any = None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One forward and backward of a pre-training model: float losses and canonical grads.

    Example:
        >>> import aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> m = aimv2.build(spec, backend="torch")
        >>> img, tok = np.zeros((1, 3, 16, 16), np.float32), np.ones((1, 4), np.int64)
        >>> losses, grads = loss_and_grads(m, img, tok, [3])
        >>> grads["decoder.start_token"].shape
        (1, 1, 32)
    """
    model.zero_grad(set_to_none=True)
    out = model(from_numpy(images), tokens, prefix_len)
    out["loss"].backward()
    grads = {
        name: to_numpy(p.grad) if p.grad is not None else np.zeros(tuple(p.shape), np.float32)
        for name, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    return {k: float(out[k].detach()) for k in ("loss", "pixel_loss", "text_loss")}, grads


def output_and_grads(
    module: nn.Module, inputs: Sequence[Any], cotangent: np.ndarray, **kwargs: Any
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``module(*inputs, **kwargs)`` and the gradient of ``sum(output · cotangent)`` with
    respect to every parameter (canonical names; zeros for unused ones).

    Example:
        >>> from aimv2 import specs as S
        >>> from aimv2.backends.torch import build_module, set_weights
        >>> m = build_module(S.NormSpec(width=2)); set_weights(m, {"weight": np.ones(2)})
        >>> out, g = output_and_grads(m, [np.array([[3.0, 4.0]], np.float32)], np.ones((1, 2)))
        >>> [round(float(v), 3) for v in g["weight"]]
        [0.849, 1.131]
    """
    module.zero_grad(set_to_none=True)
    args = [from_numpy(x) if isinstance(x, np.ndarray) else x for x in inputs]
    kw = {k: from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    out = module(*args, **kw)
    cot = torch.from_numpy(np.ascontiguousarray(cotangent, dtype=np.float32)).to(out.device)
    (out.float() * cot).sum().backward()
    grads = {
        name: to_numpy(p.grad) if p.grad is not None else np.zeros(tuple(p.shape), np.float32)
        for name, p in module.named_parameters()
    }
    module.zero_grad(set_to_none=True)
    return to_numpy(out), grads


def _grads(module: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter's gradient (canonical names; zeros where none arrived)."""
    return {
        name: to_numpy(p.grad) if p.grad is not None else np.zeros(tuple(p.shape), np.float32)
        for name, p in module.named_parameters()
    }


def value_and_grads(
    model: nn.Module, loss_fn: Callable[[Any, Mapping[str, Any]], Mapping[str, Any]], batch: Any
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``loss_fn(model, batch)`` on NumPy ``batch`` values (as tensors) and the gradient
    of its ``"loss"`` with respect to every parameter (canonical names; zeros for unused
    and frozen ones); every reported value as a float.

    Example:
        >>> import aimv2
        >>> from aimv2.backends.torch.train import probe_loss
        >>> m = aimv2.build(aimv2.specs.ProbeSpec(width=4, num_classes=2, heads=1), "torch")
        >>> vals, g = value_and_grads(m, probe_loss, {"features": np.ones((2, 3, 4), np.float32),
        ...                                           "labels": np.array([0, 1])})
        >>> sorted(vals), g["pool.cls_token"].shape
        (['accuracy', 'loss'], (1, 1, 4))
    """
    model.zero_grad(set_to_none=True)
    tensors = {k: from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
    out = loss_fn(model, tensors)
    out["loss"].backward()
    grads = _grads(model)
    model.zero_grad(set_to_none=True)
    return {k: float(v.detach()) for k, v in out.items()}, grads


def freeze(model: nn.Module, prefixes: Sequence[str]) -> int:
    """Stop training every parameter whose canonical name starts with one of ``prefixes``
    (``requires_grad`` off): it gets no gradient and a Trainer built afterwards leaves it
    out of its optimizer (no update, no weight decay). Returns how many were frozen.

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.presets.get("aimv2-lit-test-tiny"), "torch")
        >>> freeze(m, ["image_encoder.trunk.", "image_encoder.preprocessor."])
        19
        >>> m.image_encoder.head.cls_token.requires_grad
        True
    """
    if isinstance(prefixes, str):
        raise TypeError("prefixes: expected a list of name prefixes, got one str")
    count = 0
    for name, p in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            p.requires_grad_(False)
            count += 1
    return count


def set_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Turn activation checkpointing on (or off) for every block stack in ``model``
    (encoder trunk, decoder): each block's activations are then recomputed during the
    backward pass instead of being kept — about one more forward of compute for a
    memory footprint of one block plus the block inputs. For the large presets. Returns
    how many block stacks were switched.

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.presets.get("aimv2-test-tiny"), backend="torch")
        >>> set_checkpointing(m)
        2
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch module, got {type(model).__name__}")
    count = 0
    for module in model.modules():
        # the block stacks (Trunk, Decoder) carry a ``checkpoint`` flag; matched by the
        # flag, not the class, so a second import of this module (doctests) agrees
        if isinstance(getattr(module, "checkpoint", None), bool):
            module.checkpoint = bool(enabled)
            count += 1
    return count
