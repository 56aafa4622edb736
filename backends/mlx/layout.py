"""The one torch ↔ MLX layout converter.

Canonical layouts are torch's. MLX stores convolution kernels (out, kH, kW, in) where
torch stores (out, in, kH, kW); every other parameter has the same layout. Which
parameters are convolutions is read from the spec (role ``"conv"`` in its
``parameters()``), never guessed from a shape.

Example:
    >>> import numpy as np
    >>> from aimv2 import specs as S
    >>> spec = S.PatchEmbedSpec(patch_size=2, in_channels=3, width=4)
    >>> to_mlx(spec, "proj.weight", np.zeros((4, 3, 2, 2))).shape
    (4, 2, 2, 3)
"""

from __future__ import annotations

import functools
from typing import Any

from aimv2 import specs as S
from aimv2.weights import parameters

__all__ = ["conv_names", "to_mlx", "to_canonical"]


@functools.lru_cache(maxsize=256)
def conv_names(spec: S.Spec) -> frozenset[str]:
    """Canonical names of the convolution kernels of ``spec`` (role ``"conv"``).

    Example:
        >>> import aimv2
        >>> sorted(conv_names(aimv2.presets.get("aimv2-test-tiny")))
        ['encoder.preprocessor.patchifier.proj.weight']
    """
    return frozenset(n for n, info in parameters(spec).items() if info.role == "conv")


def to_mlx(spec: S.Spec, name: str, arr: Any) -> Any:
    """Parameter ``name`` of ``spec`` from torch layout to MLX layout (NumPy or MLX array).

    Example:
        >>> import numpy as np
        >>> to_mlx(S.NormSpec(4), "weight", np.ones(4)).shape
        (4,)
    """
    return arr.transpose(0, 2, 3, 1) if name in conv_names(spec) else arr


def to_canonical(spec: S.Spec, name: str, arr: Any) -> Any:
    """Parameter ``name`` of ``spec`` from MLX layout back to torch layout.

    Example:
        >>> import numpy as np
        >>> spec = S.PatchEmbedSpec(patch_size=2, in_channels=3, width=4)
        >>> to_canonical(spec, "proj.weight", np.zeros((4, 2, 2, 3))).shape
        (4, 3, 2, 2)
    """
    return arr.transpose(0, 3, 1, 2) if name in conv_names(spec) else arr
