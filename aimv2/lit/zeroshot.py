"""Embedding images and texts in the shared space, and zero-shot classification.

Every function takes a LiT model built by either backend (:func:`aimv2.build`,
:func:`aimv2.from_pretrained`, :func:`load_lit`) and speaks to it through the backend
contract; inputs may be NumPy or the backend's arrays, outputs are the backend's arrays.

Zero-shot: every prompt template is filled with each class name, embedded and
normalized; a class's embedding is the mean of its templates' embeddings, normalized
again; an image's class logits are ``logit_scale · image · classᵀ``.

Example:
    >>> import numpy as np, aimv2
    >>> from aimv2.text import builtin_tokenizer
    >>> model = aimv2.build(aimv2.presets.get("aimv2-lit-test-tiny"), "torch")
    >>> tok = builtin_tokenizer("builtin:digits", 64)
    >>> logits = zero_shot(model, np.zeros((3, 3, 16, 16), np.float32), ["one", "two"],
    ...                    templates=["the digit {}"], tokenizer=tok)
    >>> tuple(logits.shape)
    (3, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import specs as S
from ..backend import backend_of
from .tokenizer import tokenize

__all__ = [
    "DEFAULT_TEMPLATES",
    "check_lit",
    "encode_images",
    "encode_texts",
    "classifier",
    "zero_shot",
]

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def check_lit(model: Any, what: str = "model") -> Any:
    """The backend of ``model`` after checking it is a LiT model (else a TypeError that
    says what it is).

    Example:
        >>> import aimv2
        >>> check_lit(aimv2.build(aimv2.presets.get("aimv2-test-tiny").encoder, "torch"))
        Traceback (most recent call last):
        ...
        TypeError: model: expected a LiT model (image and text towers; aimv2.presets.get('aimv2-large-patch14-224-lit'), a LiT checkpoint), got a 'encoder' model
    """
    be = backend_of(model)
    if not isinstance(getattr(model, "spec", None), S.LiTSpec):
        raise TypeError(
            f"{what}: expected a LiT model (image and text towers; "
            f"aimv2.presets.get('aimv2-large-patch14-224-lit'), a LiT checkpoint), got a "
            f"{model.spec.kind!r} model"
        )
    return be


def _batches(be: Any, model: Any, x: Any, batch_size: int):
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    n = len(x)
    for i in range(0, n, batch_size):
        part = x[i : i + batch_size]
        yield be.to_model(model, part) if isinstance(part, np.ndarray) else part


def encode_images(model: Any, images: Any, *, batch_size: int = 64) -> Any:
    """Normalized image embeddings (B, E) of preprocessed images (B, C, H, W), computed
    ``batch_size`` at a time.

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.presets.get("aimv2-lit-test-tiny"), "mlx")
        >>> e = encode_images(m, np.ones((5, 3, 16, 16), np.float32), batch_size=2)
        >>> e.shape, round(float((e * e).sum(axis=1)[0]), 4)
        ((5, 24), 1.0)
    """
    be = check_lit(model)
    if getattr(images, "ndim", None) != 4:
        raise ValueError(
            f"images: expected a batch (B, C, H, W), got shape {tuple(getattr(images, 'shape', ()))}"
        )
    return _embed(be, model, model.embed_images, images, batch_size)


def encode_texts(model: Any, tokens: Any, *, batch_size: int = 256) -> Any:
    """Normalized text embeddings (B, E) of token ids (B, T) (:func:`tokenize` makes
    them), computed ``batch_size`` at a time.

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.presets.get("aimv2-lit-test-tiny"), "torch")
        >>> tuple(encode_texts(m, np.array([[4, 2], [5, 2]])).shape)
        (2, 24)
    """
    be = check_lit(model)
    if getattr(tokens, "ndim", None) != 2:
        raise ValueError(
            f"tokens: expected token ids (B, T), got shape {tuple(getattr(tokens, 'shape', ()))}"
        )
    return _embed(be, model, model.embed_texts, tokens, batch_size)


def _embed(be: Any, model: Any, embed: Any, x: Any, batch_size: int) -> Any:
    """``embed`` of ``x`` ``batch_size`` rows at a time, concatenated as float32."""
    with be.inference():
        chunks = [be.to_numpy(embed(part)) for part in _batches(be, model, x, batch_size)]
    return be.from_numpy(np.concatenate(chunks).astype(np.float32))


def _tokenizer(model: Any, tokenizer: Any) -> Any:
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError(
            "tokenizer: required (aimv2.lit.load_tokenizer(...)); a model from "
            "aimv2.lit.load_lit carries the one of its folder or run"
        )
    return tok


def _check_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TypeError(
            f"class_names: expected a list of class names, got {type(class_names).__name__}"
        )
    names = list(class_names)
    if not names:
        raise ValueError("class_names: expected at least one class, got an empty list")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            raise ValueError(f"class_names[{i}]: expected a non-empty string, got {n!r}")
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        key = n.strip().lower()
        if key in seen:
            raise ValueError(
                f"class_names[{i}]: {n!r} repeats class_names[{seen[key]}] "
                f"({names[seen[key]]!r}); every class needs its own name"
            )
        seen[key] = i
    return names


def _check_templates(templates: Sequence[str]) -> list[str]:
    if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
        raise ValueError(
            "templates: expected a non-empty list of prompts with one '{}' for the class name"
        )
    for i, t in enumerate(templates):
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"templates[{i}]: {t!r} must hold exactly one '{{}}' (the class name)")
    return list(templates)


def classifier(
    model: Any,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    tokenizer: Any = None,
) -> Any:
    """Class embeddings (C, E): each template filled with each name, embedded, normalized,
    averaged per class, normalized again.

    Example:
        >>> import aimv2
        >>> from aimv2.text import builtin_tokenizer
        >>> m = aimv2.build(aimv2.presets.get("aimv2-lit-test-tiny"), "torch")
        >>> classifier(m, ["one", "one"], tokenizer=builtin_tokenizer("builtin:digits", 64))
        Traceback (most recent call last):
        ...
        ValueError: class_names[1]: 'one' repeats class_names[0] ('one'); every class needs its own name
    """
    be = check_lit(model)
    names, prompts = _check_names(class_names), _check_templates(templates)
    tok = _tokenizer(model, tokenizer)
    texts = [t.format(n) for n in names for t in prompts]
    tokens = tokenize(tok, texts, model.spec.text_encoder.context_length, what="prompts")
    emb = be.to_numpy(encode_texts(model, tokens)).astype(np.float64)
    emb = emb.reshape(len(names), len(prompts), -1).mean(axis=1)
    emb /= np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    return be.from_numpy(emb.astype(np.float32))


def zero_shot(
    model: Any,
    images: Any,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    tokenizer: Any = None,
    batch_size: int = 64,
) -> Any:
    """Zero-shot class logits (B, C) of preprocessed images: ``logit_scale · image ·
    classᵀ`` with the class embeddings of :func:`classifier`; ``argmax`` is the predicted
    class. ``tokenizer`` defaults to the one :func:`load_lit` attached to the model.

    Example:
        >>> import aimv2
        >>> from aimv2.text import builtin_tokenizer
        >>> m = aimv2.build(aimv2.presets.get("aimv2-lit-test-tiny"), "mlx")
        >>> zero_shot(m, np.zeros((1, 3, 16, 16), np.float32), [],
        ...           tokenizer=builtin_tokenizer("builtin:digits", 64))
        Traceback (most recent call last):
        ...
        ValueError: class_names: expected at least one class, got an empty list
    """
    be = check_lit(model)
    weights = be.to_numpy(classifier(model, class_names, templates, tokenizer=tokenizer))
    img = be.to_numpy(encode_images(model, images, batch_size=batch_size))
    with be.inference():
        scale = float(be.to_numpy(model.logit_scale()))
    return be.from_numpy((scale * img @ weights.T).astype(np.float32))
