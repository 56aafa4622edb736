"""Float64 losses of the two AIMv2 objectives.

Example:
    >>> import numpy as np
    >>> from aimv2 import specs as S
    >>> float(text_loss(S.TextObjectiveSpec(pad_id=0), np.zeros((1, 1, 2)), np.array([[1]]))) > 0
    True
"""

from __future__ import annotations

import numpy as np

from aimv2 import patches
from aimv2 import specs as S

from .ops import f64

__all__ = ["pixel_loss", "text_loss"]


def pixel_loss(
    spec: S.PixelObjectiveSpec,
    pred: np.ndarray,
    images: np.ndarray,
    patch_size: int,
    prefix_len: np.ndarray | None,
) -> np.ndarray:
    """Next-patch MSE; ``pred`` (B, N−1, p·p·C) predicts patches 1…N−1.

    Example:
        >>> imgs = np.arange(16.0).reshape(1, 1, 4, 4)
        >>> float(pixel_loss(S.PixelObjectiveSpec(patch_norm=False), np.zeros((1, 3, 4)), imgs, 2,
        ...                  np.array([3])))  # only patch 3 (values 10, 11, 14, 15) counts
        160.5
    """
    target = patches.patchify(f64(images), patch_size)[:, 1:]
    if spec.patch_norm:
        target = patches.normalize_patches(target, spec.eps, spec.unbiased)
    per_patch = ((f64(pred) - target) ** 2).mean(-1)  # (B, N-1)
    counted = np.ones_like(per_patch, dtype=bool)
    if spec.outside_prefix_only and prefix_len is not None:
        t = np.arange(1, per_patch.shape[1] + 1)
        counted = t[None, :] >= np.asarray(prefix_len)[:, None]
    return (per_patch * counted).sum() / max(int(counted.sum()), 1)


def text_loss(spec: S.TextObjectiveSpec, logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Mean cross-entropy over non-pad target tokens (0 if there are none).

    Example:
        >>> float(text_loss(S.TextObjectiveSpec(pad_id=0), np.zeros((1, 2, 4)),
        ...                 np.array([[3, 0]]))).__round__(4)  # log 4, pad ignored
        1.3863
    """
    logits = f64(logits)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    picked = np.take_along_axis(logits, np.asarray(tokens)[..., None], axis=-1)[..., 0]
    valid = np.asarray(tokens) != spec.pad_id
    return ((lse - picked) * valid).sum() / max(int(valid.sum()), 1)
