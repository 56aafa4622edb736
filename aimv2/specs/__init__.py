"""Architecture specs: frozen dataclasses that describe a model and nothing else.

Every component has one spec class; composites hold their parts in slots that any
registered component of the slot's role fits. Specs carry no framework types and no
hidden defaults: eps, biases, mask semantics, preprocessing constants and
initialization all live here, so the PyTorch, MLX and NumPy realizations read the same
numbers. A spec is validated when it is constructed, declares its own canonical
parameters (``parameters()``), and round-trips through plain dicts (``to_dict`` /
``from_dict``), so a checkpoint can carry it.

- :mod:`aimv2.specs.base`: :class:`Spec`, :class:`ParamInfo`, roles and slots, the
  registry of kinds, JSON round-trip.
- :mod:`aimv2.specs.layers`: norm, patch/position embedding, attention, feed-forward,
  block, trunk, attention pooling, probe.
- :mod:`aimv2.specs.encoder`: preprocessing and the vision encoder.
- :mod:`aimv2.specs.model`: decoder, prefix, objectives, init and the whole model.
- :mod:`aimv2.specs.downstream`: resampled positions, LoRA adapters, a mean-pool head.
- :mod:`aimv2.specs.lit`: the text encoder and the LiT two-tower model.

Example:
    >>> from aimv2 import specs
    >>> norm = specs.NormSpec(width=64, type="rms", eps=1e-5)
    >>> specs.from_dict(norm.to_dict()) == norm
    True
"""

from __future__ import annotations

from .base import (
    KINDS,
    PARAM_ROLES,
    ROLES,
    ParamInfo,
    RealizationError,
    Spec,
    SpecError,
    check_slot,
    from_dict,
    from_json,
    linear_params,
    nested,
    one_of,
    positive_int,
    require,
    walk,
)
from .downstream import (
    LORA_SPECS,
    LoRAAttentionSpec,
    LoRAFeedForwardSpec,
    MeanPoolSpec,
    ResampledPosEmbedSpec,
)
from .encoder import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderSpec,
    PreprocessSpec,
    encoder_spec,
)
from .layers import (
    AttentionPoolSpec,
    AttentionSpec,
    BlockSpec,
    FeedForwardSpec,
    NormSpec,
    PatchEmbedSpec,
    PosEmbedSpec,
    ProbeSpec,
    TrunkSpec,
    block_spec,
    swiglu_hidden,
)
from .lit import LiTSpec, TextEncoderSpec, lit_spec, text_encoder_spec
from .model import (
    DecoderSpec,
    InitSpec,
    ModelSpec,
    PixelObjectiveSpec,
    PrefixSpec,
    TextObjectiveSpec,
    decoder_spec,
)

__all__ = [
    "SpecError",
    "RealizationError",
    "Spec",
    "ParamInfo",
    "PARAM_ROLES",
    "ROLES",
    "NormSpec",
    "PatchEmbedSpec",
    "PosEmbedSpec",
    "AttentionSpec",
    "FeedForwardSpec",
    "BlockSpec",
    "TrunkSpec",
    "AttentionPoolSpec",
    "PreprocessSpec",
    "ProbeSpec",
    "InitSpec",
    "EncoderSpec",
    "DecoderSpec",
    "PrefixSpec",
    "PixelObjectiveSpec",
    "TextObjectiveSpec",
    "ModelSpec",
    "ResampledPosEmbedSpec",
    "LoRAAttentionSpec",
    "LoRAFeedForwardSpec",
    "LORA_SPECS",
    "MeanPoolSpec",
    "TextEncoderSpec",
    "LiTSpec",
    "KINDS",
    "CONFIG_KINDS",
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "config_kinds",
    "check_slot",
    "require",
    "positive_int",
    "one_of",
    "from_dict",
    "from_json",
    "linear_params",
    "nested",
    "walk",
    "swiglu_hidden",
    "block_spec",
    "encoder_spec",
    "decoder_spec",
    "text_encoder_spec",
    "lit_spec",
]


def config_kinds() -> frozenset[str]:
    """Kinds that configure the composite holding them (read by its realization) rather
    than being realized themselves — built-in and user-registered.

    Example:
        >>> sorted(config_kinds())[:2]
        ['init', 'pixel_objective']
    """
    return frozenset(kind for kind, cls in KINDS.items() if cls.configures_owner)


# The built-in configuration kinds (see config_kinds() for user-registered ones too).
CONFIG_KINDS = config_kinds()
