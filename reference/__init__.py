"""The float64 NumPy reference: the oracle both backends are tested against.

Plain, slow and obvious on purpose. Every component has a reference realization,
registered with ``@aimv2.reference.realizes(SpecClass)`` on a function
``(spec, weights, x, **kw)``; composites call their parts through :func:`apply`, so a
user's component in a slot is used by the reference too. ``forward(spec, weights,
inputs, **kw)`` checks the weights against the spec's canonical names and runs it;
``weights`` may hold any float dtype (computed in float64); keywords are those of the
matching backend module's call.

- :mod:`aimv2.reference.ops`: NumPy building blocks (linear, softmax, attention, erf).
- :mod:`aimv2.reference.layers`: the built-in layers.
- :mod:`aimv2.reference.models`: encoder, decoder, pre-training model.
- :mod:`aimv2.reference.lit`: text encoder, LiT two-tower model, contrastive loss.
- :mod:`aimv2.reference.losses`: the pixel and text objectives.
- :mod:`aimv2.reference.optim`: AdamW with AIMv2's semantics.
- :mod:`aimv2.reference.downstream`: resampled positions, LoRA, the mean-pool head and
  the classification loss.

Example:
    >>> import numpy as np, aimv2
    >>> from aimv2 import reference
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> w = aimv2.init_weights(spec, seed=0)
    >>> reference.forward(spec, w, np.zeros((1, 3, 8, 8))).shape
    (1, 4, 32)
"""

from __future__ import annotations

from typing import Any

from aimv2 import specs as S
from aimv2.weights import check_weights

from . import ops
from .downstream import classification_loss, lora, lora_merged, mean_pool, resampled_pos_embed
from .layers import attention, attn_pool, block, ffn, norm, patch_embed, pos_embed, probe, trunk
from .lit import contrastive_loss, first_eos, image_embeds, lit, text_embeds, text_encoder
from .losses import pixel_loss, text_loss
from .models import decoder, encoder, encoder_mask, forward_intermediates, model
from .ops import Weights, sub
from .optim import adamw_step
from .registry import REGISTRY, apply, realizes

__all__ = [
    "forward",
    "apply",
    "realizes",
    "REGISTRY",
    "sub",
    "ops",
    "adamw_step",
    "norm",
    "patch_embed",
    "pos_embed",
    "attention",
    "ffn",
    "block",
    "trunk",
    "attn_pool",
    "probe",
    "encoder_mask",
    "encoder",
    "forward_intermediates",
    "decoder",
    "model",
    "pixel_loss",
    "text_loss",
    "resampled_pos_embed",
    "lora",
    "lora_merged",
    "mean_pool",
    "classification_loss",
    "text_encoder",
    "lit",
    "image_embeds",
    "text_embeds",
    "first_eos",
    "contrastive_loss",
]


def forward(spec: S.Spec, weights: Weights, inputs: Any, **kwargs: Any) -> Any:
    """Run the float64 reference of ``spec`` on ``inputs`` with canonical ``weights``.

    Weights are checked against the spec first (names and shapes).

    Example:
        >>> import numpy as np
        >>> from aimv2.specs import NormSpec
        >>> forward(NormSpec(width=2), {"weight": np.ones(2)}, np.array([[3.0, 4.0]])).round(3)
        array([[0.849, 1.131]])
    """
    realization = REGISTRY.lookup(spec)
    check_weights(spec, weights)
    return realization(spec, weights, inputs, **kwargs)
