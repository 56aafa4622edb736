"""aimv2: AIMv2 vision encoders and their pre-training, on PyTorch or MLX.

Architectures are specs (:mod:`aimv2.specs`) made of components, realized by a backend
(:func:`build`) and checked against a float64 NumPy reference (:mod:`aimv2.reference`).
``import aimv2`` needs neither torch nor MLX: every subpackage (``aimv2.reference``,
``aimv2.testing``, ``aimv2.training``, ``aimv2.formats``…) is an attribute loaded on first
use, and a framework is imported only when a backend is asked for.

Example:
    >>> import aimv2
    >>> spec = aimv2.encoder_spec(width=64, depth=2, heads=2, patch_size=4, image_size=16)
    >>> spec.num_patches, spec.trunk.block.mlp.hidden
    (16, 256)
    >>> aimv2.reference.forward.__name__  # loaded on first use
    'forward'
"""

from __future__ import annotations

import importlib
from typing import Any

from . import masks, patches, presets, specs, weights
from .backend import (
    BACKENDS,
    BackendUnavailable,
    available_backends,
    backend_of,
    build,
    get_weights,
    load_backend,
    set_weights,
)
from .specs import (
    AttentionPoolSpec,
    AttentionSpec,
    BlockSpec,
    DecoderSpec,
    EncoderSpec,
    FeedForwardSpec,
    LiTSpec,
    ModelSpec,
    NormSpec,
    PatchEmbedSpec,
    PosEmbedSpec,
    PreprocessSpec,
    RealizationError,
    Spec,
    SpecError,
    TextEncoderSpec,
    TrunkSpec,
    decoder_spec,
    encoder_spec,
    lit_spec,
    text_encoder_spec,
)
from .weights import ParamInfo, WeightsError, check_weights, init_weights

__version__ = "0.1.0"

# Subpackages and modules reachable as attributes, imported on first access.
SUBMODULES = (
    "atomic",
    "backends",
    "bench",
    "blas",
    "checkpoint",
    "cli",
    "contract",
    "data",
    "distributed",
    "finetune",
    "formats",
    "inputs",
    "lit",
    "lora",
    "optim",
    "plot",
    "probe",
    "progress",
    "quickstart",
    "reference",
    "registry",
    "resize",
    "tensorfiles",
    "testing",
    "text",
    "training",
)
# Public names of lazily imported modules: name -> module.
_LAZY = {
    "FORMATS": "formats",
    "FormatError": "formats",
    "convert": "formats",
    "detect": "formats",
    "from_pretrained": "formats",
    "save_pretrained": "formats",
    "preprocess": "data",
    "extract_features": "probe",
    "resize_encoder": "resize",
    "merge_lora": "lora",
    "encode_images": "lit",
    "encode_texts": "lit",
    "zero_shot": "lit",
    "load_lit": "lit",
}

__all__ = [
    "AttentionPoolSpec",
    "AttentionSpec",
    "BlockSpec",
    "DecoderSpec",
    "EncoderSpec",
    "FeedForwardSpec",
    "LiTSpec",
    "ModelSpec",
    "NormSpec",
    "PatchEmbedSpec",
    "PosEmbedSpec",
    "PreprocessSpec",
    "TrunkSpec",
    "TextEncoderSpec",
    "Spec",
    "ParamInfo",
    "BACKENDS",
    "BackendUnavailable",
    "RealizationError",
    "SpecError",
    "WeightsError",
    "available_backends",
    "backend_of",
    "build",
    "check_weights",
    "decoder_spec",
    "encoder_spec",
    "lit_spec",
    "text_encoder_spec",
    "get_weights",
    "init_weights",
    "load_backend",
    "masks",
    "patches",
    "presets",
    "set_weights",
    "specs",
    "weights",
    *_LAZY,
    *SUBMODULES,
]


def __getattr__(name: str) -> Any:
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'aimv2' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
