"""What a fine-tuning run trains: the classifier spec and its starting weights, and the
learning-rate scale of every parameter (layer-wise decay, frozen blocks, LoRA).

Example:
    >>> import aimv2
    >>> enc = aimv2.encoder_spec(width=16, depth=2, heads=2, patch_size=4, image_size=8)
    >>> spec = classifier_spec(enc, 10, "linear")
    >>> s = layer_scales(spec, 0.5)
    >>> s["preprocessor.pos_embed"], s["trunk.blocks.1.mlp.fc1.weight"], s["head.linear.bias"]
    (0.125, 0.5, 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint, presets
from .. import specs as S
from ..backend import get_weights
from ..formats import from_pretrained
from ..lora import add_lora, lora_weights
from ..resize import resize_encoder
from ..weights import init_weights, parameters
from .config import FinetuneConfig, FinetuneError

__all__ = [
    "source_encoder",
    "classifier_spec",
    "layer_of",
    "layer_scales",
    "lr_scales",
    "prepare",
    "trainable_count",
]


def source_encoder(cfg: FinetuneConfig) -> tuple[S.EncoderSpec, dict[str, np.ndarray]]:
    """The encoder to fine-tune, as (spec, canonical weights): from ``cfg.checkpoint`` (a
    run directory's newest checkpoint, a checkpoint directory, or any format
    :func:`aimv2.from_pretrained` reads) or ``cfg.preset`` at random init (``cfg.seed``).

    Example:
        >>> spec, w = source_encoder(FinetuneConfig(out="o", preset="aimv2-test-tiny"))
        >>> spec.width, "trunk.post_trunk_norm.weight" in w
        (32, True)
    """
    if (cfg.checkpoint is None) == (cfg.preset is None):
        raise FinetuneError("give exactly one of checkpoint (--checkpoint) or preset (--preset)")
    if cfg.preset is not None:
        try:
            spec = presets.load_spec(cfg.preset)
        except (KeyError, FileNotFoundError, S.SpecError) as err:
            raise FinetuneError(f"preset={cfg.preset!r}: {err}") from None
        spec = spec.encoder if isinstance(spec, S.ModelSpec) else spec
        if not isinstance(spec, S.EncoderSpec):
            raise FinetuneError(f"preset={cfg.preset!r}: not an encoder ({spec.kind})")
        return spec, init_weights(spec, cfg.seed)
    path = cfg.checkpoint
    found = checkpoint.latest(path)
    ck_dir = found if found is not None else path
    try:
        if (Path(ck_dir) / "state.json").exists():
            return checkpoint.encoder_of(checkpoint.load(ck_dir, optimizer=False))
        model = from_pretrained(path, backend=cfg.backend)
    except (checkpoint.CheckpointError, ValueError, KeyError, FileNotFoundError) as err:
        raise FinetuneError(f"checkpoint={path!r}: {err}") from None
    return model.spec, get_weights(model)


def classifier_spec(
    encoder: S.EncoderSpec, num_classes: int, head: str = "attentive", heads: int = 8
) -> S.EncoderSpec:
    """``encoder`` with a classifier head of ``num_classes`` outputs in its ``head`` slot
    (replacing any head it had): ``attentive`` attention pooling (``heads`` heads, fewer
    if the width needs) or ``linear`` on mean-pooled tokens.

    Example:
        >>> import aimv2
        >>> enc = aimv2.encoder_spec(width=24, depth=1, heads=2, patch_size=4, image_size=8)
        >>> classifier_spec(enc, 5, heads=16).head.heads
        12
    """
    if head == "linear":
        return encoder.replace(head=S.MeanPoolSpec(width=encoder.width, out_features=num_classes))
    if head != "attentive":
        raise FinetuneError(f"head={head!r}: expected 'attentive' or 'linear'")
    while encoder.width % heads:
        heads -= 1
    pool = S.AttentionPoolSpec(width=encoder.width, heads=heads, out_features=num_classes)
    return encoder.replace(head=pool)


def layer_of(name: str, depth: int) -> int:
    """The layer of parameter ``name`` for layer-wise decay: 0 for the patch embedding
    and positions (``preprocessor.*``), i + 1 for trunk block i, depth + 1 for the rest
    (the final norm, the head).

    Example:
        >>> layer_of("preprocessor.patchifier.proj.weight", 24), layer_of("trunk.blocks.3.attn.qkv.weight", 24)
        (0, 4)
    """
    if name.startswith("preprocessor."):
        return 0
    if name.startswith("trunk.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def layer_scales(spec: S.EncoderSpec, decay: float) -> dict[str, float]:
    """``decay^(depth + 1 − layer)`` for every parameter (:func:`layer_of`): the head
    and final norm learn at the full rate, block i at ``decay^(depth − i)``, the patch
    embedding at ``decay^(depth + 1)`` (BEiT's and timm's layer-wise decay).

    Example:
        >>> import aimv2
        >>> enc = aimv2.encoder_spec(width=16, depth=3, heads=2, patch_size=4, image_size=8)
        >>> layer_scales(enc, 0.5)["trunk.blocks.0.attn.proj.weight"]
        0.125
    """
    depth = spec.depth
    return {n: float(decay) ** (depth + 1 - layer_of(n, depth)) for n in parameters(spec)}


def lr_scales(
    spec: S.EncoderSpec, layer_decay: float, freeze_blocks: int = 0, lora: bool = False
) -> dict[str, float]:
    """Every parameter's learning-rate scale: :func:`layer_scales`, with 0 (frozen) for
    the patch embedding, positions and blocks below ``freeze_blocks``, or — with
    ``lora`` — for every parameter but the adapters and the head. Scales of 1 are left
    out.

    Example:
        >>> import aimv2
        >>> enc = aimv2.encoder_spec(width=16, depth=3, heads=2, patch_size=4, image_size=8)
        >>> s = lr_scales(classifier_spec(enc, 4, "linear"), 1.0, freeze_blocks=1)
        >>> s["trunk.blocks.0.mlp.fc1.weight"], "trunk.blocks.1.mlp.fc1.weight" in s
        (0.0, False)
    """
    if freeze_blocks > spec.depth:
        raise FinetuneError(
            f"freeze_blocks={freeze_blocks} (--freeze-blocks): the encoder has {spec.depth} blocks"
        )
    out = layer_scales(spec, layer_decay)
    for name in out:
        if lora:
            trained = name.endswith((".lora_a", ".lora_b")) or name.startswith("head.")
        else:
            trained = layer_of(name, spec.depth) > freeze_blocks or freeze_blocks == 0
        if not trained:
            out[name] = 0.0
    return {n: s for n, s in out.items() if s != 1.0}


def prepare(
    cfg: FinetuneConfig,
    num_classes: int,
    source: tuple[S.EncoderSpec, Mapping[str, np.ndarray]] | None = None,
) -> tuple[S.EncoderSpec, dict[str, np.ndarray], dict[str, float]]:
    """(spec, initial weights, lr scales) of the run: the source encoder resized to
    ``cfg.image_size`` if set, with a fresh classifier head (and LoRA adapters) drawn
    from ``cfg.seed``.

    Example:
        >>> cfg = FinetuneConfig(out="o", preset="aimv2-test-tiny", lora_rank=2)
        >>> spec, w, scales = prepare(cfg, 10)
        >>> spec.head.out_dim, scales["trunk.post_trunk_norm.weight"]
        (10, 0.0)
    """
    enc, weights = source if source is not None else source_encoder(cfg)
    weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
    enc = enc.replace(head=None)
    if cfg.image_size is not None:
        try:
            enc, weights = resize_encoder(enc, weights, cfg.image_size)
        except (ValueError, TypeError) as err:
            raise FinetuneError(f"image_size: {err}") from None
    if enc.image_size is None:
        raise FinetuneError(
            "the encoder takes any size (native resolution): give image_size (--image-size) "
            "to fine-tune at"
        )
    spec = classifier_spec(enc, num_classes, cfg.head, cfg.head_heads)
    fresh = init_weights(spec, cfg.seed)
    weights = {**weights, **{k: v for k, v in fresh.items() if k.startswith("head.")}}
    if cfg.lora_rank:
        spec = add_lora(spec, cfg.lora_rank, cfg.lora_alpha)
        weights = lora_weights(spec, weights, seed=cfg.seed)
    scales = lr_scales(spec, cfg.layer_decay, cfg.freeze_blocks, lora=bool(cfg.lora_rank))
    return spec, weights, scales


def trainable_count(spec: S.Spec, scales: Mapping[str, float]) -> tuple[int, int]:
    """(trainable, total) parameter counts under ``scales`` (scale 0: frozen).

    Example:
        >>> import aimv2
        >>> enc = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8)
        >>> trainable_count(enc, {"trunk.post_trunk_norm.weight": 0.0})[0] < trainable_count(enc, {})[0]
        True
    """
    table: dict[str, Any] = parameters(spec)
    total = sum(int(np.prod(info.shape)) for info in table.values())
    frozen = sum(int(np.prod(table[n].shape)) for n, s in scales.items() if s == 0.0)
    return total - frozen, total
