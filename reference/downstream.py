"""Float64 realizations of the downstream components (resampled positions, LoRA adapters,
the mean-pool head) and the classification loss of fine-tuning.

Example:
    >>> import numpy as np
    >>> from aimv2 import specs as S
    >>> spec = S.MeanPoolSpec(width=2, out_features=1)
    >>> mean_pool(spec, {"linear.weight": np.ones((1, 2)), "linear.bias": np.zeros(1)},
    ...           np.ones((1, 3, 2))).tolist()
    [[2.0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aimv2 import patches
from aimv2 import specs as S
from aimv2.inputs import check_features

from .ops import Weights, f64, linear
from .registry import apply, realizes

__all__ = ["resampled_pos_embed", "lora", "lora_merged", "mean_pool", "classification_loss"]


@realizes(S.ResampledPosEmbedSpec)
def resampled_pos_embed(
    spec: S.ResampledPosEmbedSpec, w: Weights, x: np.ndarray, grid: tuple[int, int] | None = None
) -> np.ndarray:
    """Add the stored table resampled to ``grid`` (bicubic, antialiased, half-pixel
    centers; :func:`aimv2.patches.resample_grid`).

    Example:
        >>> spec = S.ResampledPosEmbedSpec(width=1, grid=(1, 2))
        >>> resampled_pos_embed(spec, {"pos_embed": np.array([[[0.0], [1.0]]])},
        ...                     np.zeros((1, 4, 1)), grid=(1, 4))[0, :, 0].round(4).tolist()
        [-0.0882, 0.2071, 0.7929, 1.0882]
    """
    x = f64(x)
    grid = spec.grid if grid is None else tuple(grid)
    return x + patches.resample_grid(f64(w["pos_embed"]), spec.grid, grid)


def lora_merged(spec: Any, w: Weights) -> dict[str, np.ndarray]:
    """The base component's weights with each target's update folded in:
    ``W + (alpha/rank)·B A`` in float64 (the LoRA parameters dropped).

    Example:
        >>> spec = S.LoRAFeedForwardSpec(S.FeedForwardSpec(1, 1, type="gelu"), rank=1,
        ...                              alpha=2.0, targets=("fc1",))
        >>> w = {"fc1.weight": np.ones((1, 1)), "fc2.weight": np.ones((1, 1)),
        ...      "fc1.lora_a": np.full((1, 1), 3.0), "fc1.lora_b": np.full((1, 1), 0.5)}
        >>> lora_merged(spec, w)["fc1.weight"].tolist()
        [[4.0]]
    """
    out = {k: f64(v) for k, v in w.items() if not k.endswith((".lora_a", ".lora_b"))}
    for t in spec.targets:
        delta = f64(w[f"{t}.lora_b"]) @ f64(w[f"{t}.lora_a"])
        out[f"{t}.weight"] = out[f"{t}.weight"] + spec.scale * delta
    return out


@realizes(S.LoRAAttentionSpec)
def lora(spec: Any, w: Weights, x: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
    """The base component run with ``W + (alpha/rank)·B A`` for every target ``W``: by
    linearity the same as ``W x + (alpha/rank)·B (A x)``, the adapter's definition.

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.LoRAAttentionSpec(S.AttentionSpec(8, 2), rank=2)
        >>> w = init_weights(spec)  # lora_b starts at zero: the base's output
        >>> base = apply(spec.base, {k: v for k, v in w.items() if "lora" not in k},
        ...              np.ones((1, 3, 8)))
        >>> bool(np.allclose(lora(spec, w, np.ones((1, 3, 8))), base))
        True
    """
    return apply(spec.base, lora_merged(spec, w), x, *args, **kwargs)


realizes(S.LoRAFeedForwardSpec)(lora)


@realizes(S.MeanPoolSpec)
def mean_pool(spec: S.MeanPoolSpec, w: Weights, features: np.ndarray) -> np.ndarray:
    """Mean over tokens, then ``linear`` → (B, out_features).

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.MeanPoolSpec(width=4, out_features=3)
        >>> mean_pool(spec, init_weights(spec), np.ones((2, 5, 4))).shape
        (2, 3)
    """
    x = f64(features)
    check_features(x.shape, spec.width)
    return linear(w, "linear", x.mean(axis=1))


def classification_loss(
    logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0
) -> tuple[float, float]:
    """(mean cross-entropy against targets ``(1 − ε)·onehot + ε/K``, top-1 accuracy).

    Example:
        >>> loss, acc = classification_loss(np.zeros((2, 4)), np.array([0, 3]), 0.1)
        >>> round(loss, 4), acc
        (1.3863, 0.5)
    """
    z = f64(logits)
    y = np.asarray(labels).astype(np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"logits (B, K) and labels (B,): got {z.shape} and {y.shape}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing!r}: expected 0 <= value < 1")
    m = z.max(axis=1, keepdims=True)
    logp = z - (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))
    picked = logp[np.arange(len(y)), y]
    per = -(1.0 - label_smoothing) * picked - label_smoothing * logp.mean(axis=1)
    return float(per.mean()), float((z.argmax(axis=1) == y).mean())
