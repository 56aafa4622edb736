"""Float64 realizations of the text encoder and the LiT two-tower model, and the
symmetric contrastive loss.

Example:
    >>> import numpy as np, aimv2
    >>> spec = aimv2.presets.get("aimv2-lit-test-tiny")
    >>> tokens = np.array([[5, 6, 2, 0], [7, 2, 0, 0]])
    >>> out = lit(spec, aimv2.init_weights(spec), np.zeros((2, 3, 16, 16)), tokens,
    ...           return_loss=True)
    >>> out["logits_per_image"].shape, round(float(out["logit_scale"]), 3)
    ((2, 2), 14.286)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aimv2 import specs as S
from aimv2.inputs import check_features, check_text_tokens

from .ops import Weights, f64, linear, sub
from .registry import apply, realizes

__all__ = [
    "first_eos",
    "text_encoder",
    "image_embeds",
    "text_embeds",
    "l2_normalize",
    "contrastive_loss",
    "lit",
]


def first_eos(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """Index of the first ``eos_id`` in each row (``argmax(ids == eos_id)``).

    Example:
        >>> first_eos(np.array([[4, 9, 9], [9, 1, 1]]), 9).tolist()
        [1, 0]
    """
    return (np.asarray(tokens) == eos_id).argmax(axis=-1)


def _check(spec: S.TextEncoderSpec, tokens: np.ndarray) -> None:
    ok = tokens.dtype.kind in "iu" and tokens.size
    missing = int((~(tokens == spec.eos_id).any(axis=-1)).sum()) if ok and tokens.ndim == 2 else 0
    check_text_tokens(
        tokens.shape,
        tokens.dtype.kind,
        int(tokens.min()) if ok else None,
        int(tokens.max()) if ok else None,
        missing,
        vocab_size=spec.vocab_size,
        context_length=spec.context_length,
        eos_id=spec.eos_id,
    )


@realizes(S.TextEncoderSpec)
def text_encoder(
    spec: S.TextEncoderSpec, w: Weights, tokens: Any, return_features: bool = False
) -> Any:
    """Tokens (B, T) → features of the first eos (B, D) after the final norm (and the
    features (B, T, D) of every position with ``return_features``).

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.text_encoder_spec(8, 1, 2, vocab_size=5, context_length=4)
        >>> text_encoder(spec, init_weights(spec), np.array([[1, 2, 4, 4]])).shape
        (1, 8)
    """
    tokens = np.asarray(tokens)
    _check(spec, tokens)
    t = tokens.shape[1]
    x = f64(w["preprocessor.text_embedding.weight"])[tokens]
    x = x + f64(w["preprocessor.positional_embedding"])[None, :t]
    h = apply(spec.trunk, sub(w, "trunk."), x, "causal" if spec.causal else None)
    pooled = h[np.arange(len(h)), first_eos(tokens, spec.eos_id)]
    return (pooled, h) if return_features else pooled


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (at least 1e-12, as ``F.normalize``).

    Example:
        >>> l2_normalize(np.array([[3.0, 4.0]])).tolist()
        [[0.6, 0.8]]
    """
    x = f64(x)
    return x / np.maximum(np.sqrt((x * x).sum(-1, keepdims=True)), 1e-12)


def image_embeds(
    spec: S.LiTSpec, w: Weights, images: Any = None, image_features: Any = None
) -> np.ndarray:
    """Normalized image embeddings (B, E) of images, or of the image trunk's output
    ``image_features`` (B, N, D) when given instead (a locked tower's cached features).

    Example:
        >>> import aimv2
        >>> spec = aimv2.presets.get("aimv2-lit-test-tiny")
        >>> image_embeds(spec, aimv2.init_weights(spec), np.ones((1, 3, 16, 16))).shape
        (1, 24)
    """
    enc = spec.image_encoder
    enc_w = sub(w, "image_encoder.")
    if (images is None) == (image_features is None):
        raise ValueError("images / image_features: give exactly one of them")
    if image_features is None:
        feats = apply(enc, enc_w, images)
    else:
        feats = f64(image_features)
        check_features(feats.shape, enc.width, "image_features")
    pooled = apply(enc.head, sub(enc_w, "head."), feats)
    return l2_normalize(linear(w, "image_projector", pooled))


def text_embeds(spec: S.LiTSpec, w: Weights, tokens: Any) -> np.ndarray:
    """Normalized text embeddings (B, E) of captions (B, T).

    Example:
        >>> import aimv2
        >>> spec = aimv2.presets.get("aimv2-lit-test-tiny")
        >>> text_embeds(spec, aimv2.init_weights(spec), np.array([[3, 2]])).shape
        (1, 24)
    """
    pooled = apply(spec.text_encoder, sub(w, "text_encoder."), tokens)
    return l2_normalize(linear(w, "text_projector", pooled))


def contrastive_loss(logits_per_image: np.ndarray) -> np.ndarray:
    """Symmetric InfoNCE of a square logit matrix (pair i is image i with caption i):
    the mean of the image→text and text→image cross-entropies.

    Example:
        >>> round(float(contrastive_loss(np.zeros((4, 4)))), 4)  # log 4
        1.3863
    """
    logits = f64(logits_per_image)
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(
            f"logits_per_image: the contrastive loss pairs image i with caption i and needs a "
            f"square (B, B) matrix, got shape {logits.shape}"
        )

    def ce(x: np.ndarray) -> float:
        m = x.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))[:, 0]
        return (lse - np.diag(x)).mean()

    return np.float64(0.5 * (ce(logits) + ce(logits.T)))


@realizes(S.LiTSpec)
def lit(
    spec: S.LiTSpec,
    w: Weights,
    images: Any = None,
    tokens: Any = None,
    image_features: Any = None,
    return_loss: bool = False,
) -> dict[str, Any]:
    """Both towers: logits both ways, the normalized embeddings, the logit scale (and
    the contrastive loss with ``return_loss``).

    Example:
        >>> import aimv2
        >>> spec = aimv2.presets.get("aimv2-lit-test-tiny")
        >>> out = lit(spec, aimv2.init_weights(spec), np.zeros((3, 3, 16, 16)),
        ...           np.array([[4, 2]]))
        >>> out["logits_per_text"].shape
        (1, 3)
    """
    if tokens is None:
        raise ValueError("tokens: required (captions (B, T) of token ids)")
    img = image_embeds(spec, w, images, image_features)
    txt = text_embeds(spec, w, tokens)
    scale = np.exp(np.clip(f64(w["log_logit_scale"]), 0.0, spec.max_log_logit_scale))
    per_text = scale * txt @ img.T
    out: dict[str, Any] = {
        "logits_per_image": per_text.T,
        "logits_per_text": per_text,
        "image_embeds": img,
        "text_embeds": txt,
        "logit_scale": scale,
    }
    if return_loss:
        out["loss"] = contrastive_loss(per_text.T)
    return out
