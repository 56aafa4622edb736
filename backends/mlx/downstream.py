"""MLX realizations of the downstream components — resampled positions, LoRA adapters,
the mean-pool head — and the fine-tuning loss (mirror images of
:mod:`aimv2.backends.torch.downstream`).

A LoRA adapter is realized as its base component's own module with each target
``nn.Linear`` replaced by a :class:`LoRALinear` holding the same ``weight`` (and ``bias``)
plus ``lora_a`` / ``lora_b``: parameter names stay the base's, and the base's code runs
unchanged (it reads its other fields, e.g. ``heads``, through the adapter spec).

Example:
    >>> import aimv2, mlx.core as mx
    >>> from aimv2 import specs as S
    >>> spec = S.LoRAAttentionSpec(S.AttentionSpec(8, 2), rank=2)
    >>> m = aimv2.build(spec, "mlx")
    >>> sorted(aimv2.get_weights(m))[:2], m(mx.zeros((1, 3, 8))).shape
    (['proj.lora_a', 'proj.lora_b'], (1, 3, 8))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from aimv2 import patches
from aimv2 import specs as S
from aimv2.inputs import check_features

from .registry import build, realizes

__all__ = [
    "ResampledPositionEmbedding",
    "LoRALinear",
    "LoRA",
    "MeanPool",
    "classifier_loss",
]


@functools.lru_cache(maxsize=64)
def _resampler(n_in: int, n_out: int) -> mx.array:
    return mx.array(patches.resample_matrix(n_in, n_out).astype(np.float32))


@realizes(S.ResampledPosEmbedSpec)
class ResampledPositionEmbedding(nn.Module):
    """``pos_embed`` learned at ``spec.grid``, resampled to each input's grid by the
    bicubic antialiased weights of :func:`aimv2.patches.resample_matrix` (one matmul per
    axis; MLX has no antialiased bicubic interpolation); the stored grid adds the table
    as is."""

    def __init__(self, spec: S.ResampledPosEmbedSpec):
        super().__init__()
        self.spec = spec
        self.pos_embed = mx.zeros((1, spec.num_positions, spec.width))

    def __call__(self, x: mx.array, grid: tuple[int, int] | None = None) -> mx.array:
        return x + self.table(self.spec.grid if grid is None else grid).astype(x.dtype)

    def table(self, grid: tuple[int, int]) -> mx.array:
        """The table resampled to ``grid`` (1, rows·cols, width).

        Example:
            >>> import aimv2
            >>> m = aimv2.build(S.ResampledPosEmbedSpec(width=4, grid=(2, 2)), "mlx")
            >>> tuple(m.table((3, 5)).shape)
            (1, 15, 4)
        """
        (r0, c0), (r1, c1) = self.spec.grid, tuple(grid)
        if (r0, c0) == (r1, c1):
            return self.pos_embed
        d = self.spec.width
        t = self.pos_embed.astype(mx.float32).reshape(r0, c0 * d)
        t = (_resampler(r0, r1) @ t).reshape(r1, c0, d)
        t = _resampler(c0, c1)[None] @ t
        return t.reshape(1, r1 * c1, d)


class LoRALinear(nn.Module):
    """``linear(x) + scale·(x Aᵀ) Bᵀ`` around an existing ``nn.Linear``'s ``weight`` and
    ``bias`` (kept under those names).

    Example:
        >>> from mlx.utils import tree_flatten
        >>> layer = LoRALinear(nn.Linear(4, 3, bias=False), rank=2, scale=1.0)
        >>> sorted(n for n, _ in tree_flatten(layer.parameters()))
        ['lora_a', 'lora_b', 'weight']
    """

    def __init__(self, linear: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.weight = linear.weight
        if "bias" in linear:
            self.bias = linear.bias
        n_out, n_in = linear.weight.shape
        self.lora_a = mx.zeros((rank, n_in), dtype=linear.weight.dtype)
        self.lora_b = mx.zeros((n_out, rank), dtype=linear.weight.dtype)
        self._scale = float(scale)

    def __call__(self, x: mx.array) -> mx.array:
        y = x @ self.weight.T
        if "bias" in self:
            y = y + self.bias
        return y + self._scale * ((x @ self.lora_a.T) @ self.lora_b.T)


def _swap(module: nn.Module, path: str, make: Callable[[nn.Module], nn.Module]) -> None:
    """Replace the submodule at dotted ``path`` by ``make(old)``."""
    *parents, leaf = path.split(".")
    owner: Any = module
    for part in parents:
        owner = owner[int(part)] if isinstance(owner, list) else owner[part]
    old = owner.get(leaf) if isinstance(owner, dict) else None
    if not isinstance(old, nn.Linear):
        raise S.RealizationError(
            f"LoRA target {path!r}: expected an nn.Linear in the MLX module "
            f"{type(module).__name__}, found {type(old).__name__}"
        )
    setattr(owner, leaf, make(old))


@realizes(S.LoRAAttentionSpec)
class LoRA(nn.Module):
    """A LoRA adapter: built as the base component's module (see the module docstring);
    the same class realizes :class:`~aimv2.specs.LoRAFeedForwardSpec`."""

    def __new__(cls, spec: Any) -> nn.Module:  # type: ignore[misc]
        module = build(spec.base)
        for target in spec.targets:
            _swap(module, target, lambda old: LoRALinear(old, spec.rank, spec.scale))
        module.spec = spec
        return module


realizes(S.LoRAFeedForwardSpec)(LoRA)


@realizes(S.MeanPoolSpec)
class MeanPool(nn.Module):
    """Mean over tokens → ``linear`` → (B, out_features)."""

    def __init__(self, spec: S.MeanPoolSpec):
        super().__init__()
        self.spec = spec
        self.linear = nn.Linear(spec.width, spec.out_features, bias=True)

    def __call__(self, features: mx.array) -> mx.array:
        check_features(features.shape, self.spec.width)
        return self.linear(features.mean(axis=1))


def classifier_loss(
    label_smoothing: float = 0.0,
) -> Callable[[Any, Mapping[str, Any]], dict[str, mx.array]]:
    """The fine-tuning loss (a :data:`aimv2.contract.LossFn`): cross-entropy with label
    smoothing ``ε`` (targets ``(1 − ε)·onehot + ε/K``) of an encoder's head output
    ``model(images, pool=True)`` against ``labels``, and the batch's accuracy.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           head=S.MeanPoolSpec(8, 3))
        >>> m = aimv2.build(spec, "mlx")
        >>> out = classifier_loss(0.1)(m, {"images": mx.zeros((2, 3, 8, 8)),
        ...                                "labels": mx.array([0, 2])})
        >>> sorted(out)
        ['accuracy', 'loss']
    """
    smoothing = float(label_smoothing)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r}: expected 0 <= value < 1")
    return functools.partial(_classifier_loss, smoothing=smoothing)


def _classifier_loss(model: Any, batch: Mapping[str, Any], smoothing: float) -> dict:
    logits = model(batch["images"], pool=True, check=False).astype(mx.float32)
    labels = batch["labels"].astype(mx.int32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    loss = -((1.0 - smoothing) * picked + smoothing * logp.mean(axis=-1)).mean()
    accuracy = (mx.argmax(logits, axis=-1) == labels).astype(mx.float32).mean()
    return {"loss": loss, "accuracy": accuracy}
