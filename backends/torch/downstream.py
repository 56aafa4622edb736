"""Torch realizations of the downstream components — resampled positions, LoRA adapters,
the mean-pool head — and the fine-tuning loss.

A LoRA adapter is realized as its base component's own module with each target
``nn.Linear`` replaced by a :class:`LoRALinear` holding the same ``weight`` (and ``bias``)
plus ``lora_a`` / ``lora_b``: parameter names stay the base's, and the base's code runs
unchanged (it reads its other fields, e.g. ``heads``, through the adapter spec).

Example:
    >>> import aimv2, torch
    >>> from aimv2 import specs as S
    >>> spec = S.LoRAAttentionSpec(S.AttentionSpec(8, 2), rank=2)
    >>> m = aimv2.build(spec, "torch")
    >>> sorted(n for n, _ in m.named_parameters())[:2], m(torch.zeros(1, 3, 8)).shape
    (['proj.lora_a', 'proj.lora_b'], torch.Size([1, 3, 8]))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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


@realizes(S.ResampledPosEmbedSpec)
class ResampledPositionEmbedding(nn.Module):
    """``pos_embed`` learned at ``spec.grid``, resampled to each input's grid with
    ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` (timm's
    ``resample_abs_pos_embed``); the stored grid adds the table as is."""

    def __init__(self, spec: S.ResampledPosEmbedSpec):
        super().__init__()
        self.spec = spec
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_positions, spec.width))

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        return x + self.table(self.spec.grid if grid is None else grid).to(x.dtype)

    def table(self, grid: tuple[int, int]) -> torch.Tensor:
        """The table resampled to ``grid`` (1, rows·cols, width).

        Example:
            >>> import aimv2
            >>> m = aimv2.build(S.ResampledPosEmbedSpec(width=4, grid=(2, 2)), "torch")
            >>> tuple(m.table((3, 5)).shape)
            (1, 15, 4)
        """
        rows, cols = self.spec.grid
        if tuple(grid) == (rows, cols):
            return self.pos_embed
        d = self.spec.width
        t = self.pos_embed.float().reshape(1, rows, cols, d).permute(0, 3, 1, 2)
        t = F.interpolate(t, size=tuple(grid), mode="bicubic", antialias=True, align_corners=False)
        return t.permute(0, 2, 3, 1).reshape(1, -1, d)


class LoRALinear(nn.Module):
    """``linear(x) + scale·(x Aᵀ) Bᵀ`` around an existing ``nn.Linear``'s ``weight`` and
    ``bias`` (kept under those names).

    Example:
        >>> layer = LoRALinear(nn.Linear(4, 3, bias=False), rank=2, scale=1.0)
        >>> sorted(n for n, _ in layer.named_parameters())
        ['lora_a', 'lora_b', 'weight']
    """

    def __init__(self, linear: nn.Linear, rank: int, scale: float):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        n_out, n_in = linear.weight.shape
        like = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.lora_a = nn.Parameter(torch.zeros(rank, n_in, **like))
        self.lora_b = nn.Parameter(torch.zeros(n_out, rank, **like))
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x, self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + self.scale * update


def _swap(module: nn.Module, path: str, make: Callable[[nn.Module], nn.Module]) -> None:
    """Replace the submodule at dotted ``path`` by ``make(old)``."""
    *parents, leaf = path.split(".")
    owner = module.get_submodule(".".join(parents)) if parents else module
    old = getattr(owner, leaf, None)
    if not isinstance(old, nn.Linear):
        raise S.RealizationError(
            f"LoRA target {path!r}: expected an nn.Linear in the torch module "
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

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_features(features.shape, self.spec.width)
        return self.linear(features.mean(dim=1))


def classifier_loss(
    label_smoothing: float = 0.0,
) -> Callable[[Any, Mapping[str, Any]], dict[str, torch.Tensor]]:
    """The fine-tuning loss (a :data:`aimv2.contract.LossFn`): cross-entropy with label
    smoothing ``ε`` (targets ``(1 − ε)·onehot + ε/K``) of an encoder's head output
    ``model(images, pool=True)`` against ``labels``, and the batch's accuracy.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           head=S.MeanPoolSpec(8, 3))
        >>> m = aimv2.build(spec, "torch")
        >>> out = classifier_loss(0.1)(m, {"images": torch.zeros(2, 3, 8, 8),
        ...                                "labels": torch.tensor([0, 2])})
        >>> sorted(out)
        ['accuracy', 'loss']
    """
    smoothing = float(label_smoothing)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r}: expected 0 <= value < 1")
    return functools.partial(_classifier_loss, smoothing=smoothing)


def _classifier_loss(model: Any, batch: Mapping[str, Any], smoothing: float) -> dict:
    logits = model(batch["images"], pool=True, check=False).float()
    labels = batch["labels"].long()
    loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    return {"loss": loss, "accuracy": (logits.argmax(-1) == labels).float().mean()}
