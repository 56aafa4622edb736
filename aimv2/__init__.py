"""aimv2: AIMv2 vision encoders and their pre-training, on PyTorch or MLX.

Architectures are specs (:mod:`aimv2.specs`), realized by a backend
(:func:`build`) and checked against a float64 NumPy reference
(:mod:`aimv2.reference`). ``import aimv2`` needs neither torch nor MLX.

Example:
    >>> import aimv2
    >>> spec = aimv2.encoder_spec(width=64, depth=2, heads=2, patch_size=4, image_size=16)
    >>> spec.num_patches, spec.trunk.block.mlp.hidden
    (16, 256)
"""

from __future__ import annotations

from . import masks, patches, presets, specs, weights
from .backend import (
    BACKENDS,
    BackendUnavailable,
    available_backends,
    build,
    get_weights,
    load_backend,
    set_weights,
)
from .data import preprocess
from .formats import FORMATS, FormatError, convert, detect, from_pretrained, save_pretrained
from .specs import (
    AttentionPoolSpec,
    AttentionSpec,
    BlockSpec,
    DecoderSpec,
    EncoderSpec,
    FeedForwardSpec,
    ModelSpec,
    NormSpec,
    PatchEmbedSpec,
    PosEmbedSpec,
    PreprocessSpec,
    SpecError,
    TrunkSpec,
    encoder_spec,
)
from .weights import WeightsError, check_weights, init_weights

__version__ = "0.1.0"

__all__ = [
    "AttentionPoolSpec",
    "AttentionSpec",
    "BlockSpec",
    "DecoderSpec",
    "EncoderSpec",
    "FeedForwardSpec",
    "ModelSpec",
    "NormSpec",
    "PatchEmbedSpec",
    "PosEmbedSpec",
    "PreprocessSpec",
    "TrunkSpec",
    "BACKENDS",
    "FORMATS",
    "BackendUnavailable",
    "FormatError",
    "convert",
    "detect",
    "from_pretrained",
    "save_pretrained",
    "preprocess",
    "SpecError",
    "WeightsError",
    "available_backends",
    "build",
    "check_weights",
    "encoder_spec",
    "get_weights",
    "init_weights",
    "load_backend",
    "masks",
    "patches",
    "presets",
    "set_weights",
    "specs",
    "weights",
]
