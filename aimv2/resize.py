"""Run an encoder at another input size: resample its learned position grid.

A fixed-size encoder's learned table holds one embedding per patch of its grid (16×16
for 224 with patch 14). :func:`resize_encoder` returns the spec and weights of the same
encoder for another size: the table is resampled in 2D with bicubic, antialiased,
half-pixel-centred weights — what timm's ``resample_abs_pos_embed`` (and its
``set_input_size``) does, computed here in float64 by
:func:`aimv2.patches.resample_grid`, so the result is exactly reproducible. Every other
weight is unchanged. Encoders with sin-cos or no positions (the native-resolution
checkpoint) take any size and need no resampling; their spec only records the new size.
``dynamic=True`` keeps the original table and resamples it on every call instead
(:class:`~aimv2.specs.ResampledPosEmbedSpec`), so one model takes any size.

Example:
    >>> import aimv2
    >>> spec = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=14, image_size=224)
    >>> big, w = resize_encoder(spec, aimv2.init_weights(spec), image_size=336)
    >>> big.image_size, w["preprocessor.pos_embed"].shape
    ((336, 336), (1, 576, 16))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import patches
from . import specs as S
from .weights import check_weights

__all__ = ["resize_encoder", "resized_spec", "POS_NAME"]

POS_NAME = "preprocessor.pos_embed"


def _size(image_size: Any, patch: int) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    try:
        size = tuple(size)
    except TypeError:
        raise TypeError(
            f"image_size: expected an int or (height, width), got {type(image_size).__name__}"
        ) from None
    if len(size) != 2 or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size
    ):
        raise ValueError(f"image_size={image_size!r}: expected (height, width) of positive ints")
    if any(s % patch for s in size):
        raise ValueError(
            f"image_size={tuple(int(s) for s in size)}: must be divisible by the patch size {patch}"
        )
    return (int(size[0]), int(size[1]))


def _encoder(spec: S.Spec) -> tuple[S.EncoderSpec, str]:
    if isinstance(spec, S.EncoderSpec):
        return spec, ""
    if isinstance(spec, S.ModelSpec):
        return spec.encoder, "encoder." if spec.decoder is not None else ""
    raise TypeError(f"spec: expected an EncoderSpec or ModelSpec, got {type(spec).__name__}")


def resized_spec(spec: S.Spec, image_size: Any, *, dynamic: bool = False) -> S.Spec:
    """The spec of ``spec`` at ``image_size`` (an int or (height, width), multiples of the
    patch size); :func:`resize_encoder` without the weights.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=14, image_size=224)
        >>> resized_spec(spec, (224, 448)).pos_embed.grid
        (16, 32)
        >>> resized_spec(spec, 300)
        Traceback (most recent call last):
        ...
        ValueError: image_size=(300, 300): must be divisible by the patch size 14
    """
    enc, _ = _encoder(spec)
    size = _size(image_size, enc.patch_size)
    grid = (size[0] // enc.patch_size, size[1] // enc.patch_size)
    pos = enc.pos_embed
    if dynamic:
        table_grid = _table_grid(pos)
        if table_grid is not None:
            pos = S.ResampledPosEmbedSpec(width=enc.width, grid=table_grid)
        new = enc.replace(pos_embed=pos, image_size=None)
    elif isinstance(pos, S.PosEmbedSpec) and pos.type == "learned":
        new = enc.replace(pos_embed=pos.replace(grid=grid), image_size=size)
    elif isinstance(pos, S.ResampledPosEmbedSpec):
        new = enc.replace(pos_embed=S.PosEmbedSpec(enc.width, "learned", grid), image_size=size)
    elif getattr(pos, "fixed_grid", None) is None:
        new = enc.replace(image_size=size)  # sin-cos, none, or a user's grid-free positions
    else:
        raise ValueError(
            f"spec.pos_embed: {type(pos).__name__} holds a fixed grid this function does not "
            f"know how to resample"
        )
    return new if isinstance(spec, S.EncoderSpec) else spec.replace(encoder=new)


def _table_grid(pos: S.Spec) -> tuple[int, int] | None:
    if isinstance(pos, S.PosEmbedSpec) and pos.type == "learned":
        return pos.grid
    if isinstance(pos, S.ResampledPosEmbedSpec):
        return pos.grid
    return None


def resize_encoder(
    spec: S.Spec,
    weights: Mapping[str, np.ndarray],
    image_size: Any,
    *,
    dynamic: bool = False,
) -> tuple[S.Spec, dict[str, np.ndarray]]:
    """(spec, weights) of the encoder ``spec`` (an EncoderSpec, or a ModelSpec whose
    encoder it resizes) for ``image_size`` (an int or (height, width); non-square is
    fine): the learned position table resampled from the old grid to the new one
    (float64, stored in the table's dtype), everything else unchanged. The same size
    returns the weights as they are. ``dynamic=True`` keeps the table and makes the
    positions a :class:`~aimv2.specs.ResampledPosEmbedSpec` (any input size, resampled
    per call; the spec's ``image_size`` becomes None).

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8)
        >>> w = aimv2.init_weights(spec)
        >>> same, w2 = resize_encoder(spec, w, 8)
        >>> same == spec and bool((w2["preprocessor.pos_embed"] == w["preprocessor.pos_embed"]).all())
        True
    """
    check_weights(spec, weights)
    enc, prefix = _encoder(spec)
    new_spec = resized_spec(spec, image_size, dynamic=dynamic)
    new_enc, _ = _encoder(new_spec)
    out = dict(weights)
    old_grid, new_grid = _table_grid(enc.pos_embed), _table_grid(new_enc.pos_embed)
    name = prefix + POS_NAME
    if old_grid is not None and new_grid is not None and old_grid != new_grid:
        table = np.asarray(weights[name])
        out[name] = patches.resample_grid(table, old_grid, new_grid).astype(table.dtype)
    check_weights(new_spec, out)
    return new_spec, out
