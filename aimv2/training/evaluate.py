"""Held-out evaluation of a pre-training model: the caption loss with the images, and
with blank images (how much the captions owe to the image).

Example:
    >>> import aimv2
    >>> from aimv2.data import open_source
    >>> spec = aimv2.presets.get("aimv2-test-tiny")
    >>> src = open_source("builtin:digits", split="heldout")
    >>> tok = aimv2.text.builtin_tokenizer("builtin:digits", vocab_size=64)
    >>> m = aimv2.build(spec, "torch")
    >>> caption_loss(m, "torch", spec, src, tok, batch_size=128) > 0
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import specs as S
from ..backend import load_backend
from ..data import Loader, open_source
from ..masks import sample_prefix
from .config import PretrainConfig, TrainingError

__all__ = ["caption_loss", "heldout_eval"]


def caption_loss(
    model: Any,
    backend: str,
    spec: S.ModelSpec,
    source: Any,
    tokenizer: Any,
    *,
    blank: bool = False,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Mean held-out caption loss (token-weighted) of a pre-training model over ``source``.

    ``blank=True`` replaces every image by a blank one (zeros after normalization: the
    dataset-mean colour), measuring how much the captions owe to the image.

    Example:
        >>> import aimv2
        >>> from aimv2.data import open_source
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> from aimv2.training import PretrainConfig, load_tokenizer
        >>> cfg = PretrainConfig(out="o", preset="aimv2-test-tiny")
        >>> m = aimv2.build(spec, "torch")
        >>> src = open_source("builtin:digits", split="heldout")
        >>> loss = caption_loss(m, "torch", spec, src, load_tokenizer(cfg, spec), batch_size=128)
        >>> 3.0 < loss < 6.0
        True
    """
    be = load_backend(backend)
    loader = Loader(
        source,
        spec.encoder,
        tokenizer,
        batch_size,
        seed=seed,
        train=False,
        num_workers=0,
        context_length=spec.decoder.context_length,
    )
    n = spec.encoder.num_patches
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        images = batch["images"]
        if blank:
            images = np.zeros_like(images)
        tokens = batch["tokens"]
        prefix = sample_prefix(
            np.random.default_rng([seed, i, 0xE7A1]), len(images), n, spec.prefix
        )
        out = model(be.to_model(model, images), be.to_model(model, tokens), prefix)
        valid = int((tokens != spec.text.pad_id).sum())
        total += float(be.to_numpy(out["text_loss"])) * valid
        count += valid
    if count == 0:
        raise TrainingError("caption_loss: the held-out source holds no caption tokens")
    return total / count


def heldout_eval(cfg: PretrainConfig, spec: S.ModelSpec, model: Any, tokenizer: Any) -> dict:
    """Held-out caption loss with the images and with blank images (built-in data only:
    other sources have no held-out split; ``{}`` then).

    Example:
        >>> heldout_eval(PretrainConfig(out="o", data="folder/"), None, None, None)
        {}
    """
    if tokenizer is None or not cfg.data.startswith("builtin:"):
        return {}
    src = open_source(cfg.data, split="heldout", seed=cfg.seed)
    real = caption_loss(model, cfg.backend, spec, src, tokenizer, seed=cfg.seed)
    blank = caption_loss(model, cfg.backend, spec, src, tokenizer, blank=True, seed=cfg.seed)
    return {"heldout_text_loss": real, "heldout_text_loss_blank_image": blank}
