"""Judging a LiT model: zero-shot accuracy on a labelled source and image↔text retrieval
(recall@1/5/10 both ways) on a captioned one.

Example:
    >>> import numpy as np
    >>> img = np.eye(3)
    >>> r = retrieval_metrics(img, img[[0, 1, 2, 2]], np.array([0, 1, 2, 2]), ks=(1,))
    >>> r["image_to_text"]["R@1"], r["text_to_image"]["R@1"]
    (1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data import Loader, open_source
from ..progress import Progress
from .zeroshot import DEFAULT_TEMPLATES, check_lit, classifier, encode_images, encode_texts

__all__ = [
    "recall_at_k",
    "retrieval_metrics",
    "source_pairs",
    "evaluate_zero_shot",
    "evaluate_retrieval",
]


def recall_at_k(
    similarity: np.ndarray, relevant: np.ndarray, ks: Sequence[int]
) -> dict[str, float]:
    """Share of queries (rows of ``similarity`` (Q, G)) with a relevant gallery item
    (``relevant`` (Q, G) bool) among their k most similar, for each k.

    Example:
        >>> sim = np.array([[0.9, 0.1], [0.8, 0.2]])
        >>> recall_at_k(sim, np.eye(2, dtype=bool), ks=(1, 2))
        {'R@1': 0.5, 'R@2': 1.0}
    """
    sim = np.asarray(similarity, dtype=np.float64)
    rel = np.asarray(relevant, dtype=bool)
    if sim.shape != rel.shape or sim.ndim != 2:
        raise ValueError(f"similarity {sim.shape} and relevant {rel.shape}: expected (Q, G) both")
    if not rel.any(axis=1).all():
        raise ValueError("relevant: every query needs at least one relevant gallery item")
    order = np.argsort(-sim, axis=1, kind="stable")
    hits = np.take_along_axis(rel, order, axis=1)
    first = hits.argmax(axis=1)  # rank of the best-ranked relevant item
    return {f"R@{k}": float((first < k).mean()) for k in ks}


def retrieval_metrics(
    image_embeds: np.ndarray,
    text_embeds: np.ndarray,
    text_image: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """Recall@k image→text and text→image of normalized embeddings; caption t describes
    image ``text_image[t]`` (an image may have several captions: image→text counts a hit
    when any of them is among the k nearest).

    Example:
        >>> e = np.eye(2)
        >>> retrieval_metrics(e, e[::-1], np.array([0, 1]), ks=(1,))["image_to_text"]
        {'R@1': 0.0}
    """
    img, txt = np.asarray(image_embeds), np.asarray(text_embeds)
    owner = np.asarray(text_image, dtype=np.int64).reshape(-1)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"image_embeds {img.shape}, text_embeds {txt.shape}: expected (N, E), (T, E)"
        )
    if len(owner) != len(txt) or (len(owner) and (owner.min() < 0 or owner.max() >= len(img))):
        raise ValueError(f"text_image: expected one image index in 0..{len(img) - 1} per caption")
    sim = img.astype(np.float64) @ txt.astype(np.float64).T  # (N, T)
    rel = owner[None, :] == np.arange(len(img))[:, None]
    return {
        "image_to_text": recall_at_k(sim, rel, ks),
        "text_to_image": recall_at_k(sim.T, rel.T, ks),
    }


def source_pairs(
    data: str,
    encoder_spec: Any,
    split: str = "heldout",
    *,
    tokenizer: Any = None,
    context_length: int = 77,
    progress: bool = False,
) -> dict[str, Any]:
    """The preprocessed images, labels (-1: none) and, with a ``tokenizer``, the caption
    tokens (cut to ``context_length``, eos kept) of one split of a source, in source order
    (``heldout`` falls back to every sample when the source has no held-out split).

    Example:
        >>> import aimv2
        >>> enc = aimv2.presets.get("aimv2-lit-test-tiny").image_encoder
        >>> p = source_pairs("builtin:digits", enc)
        >>> p["images"].shape, p["tokens"], p["split"]
        ((359, 3, 16, 16), None, 'heldout')
    """
    try:
        source = open_source(data, split=split)
    except ValueError:
        if split != "heldout":
            raise
        source, split = open_source(data, split="all"), "all"
    loader = Loader(
        source,
        encoder_spec,
        tokenizer,
        256,
        seed=0,
        train=False,
        num_workers=0,
        context_length=context_length,
    )
    images, labels, tokens = [], [], []
    try:
        total = len(source)
    except TypeError:
        total = None
    with Progress(total, f"images {split}", unit="images", enabled=progress) as shown:
        for batch in loader:
            images.append(batch["images"])
            labels.append(batch["labels"])
            tokens.append(batch["tokens"])
            shown.update(len(batch["labels"]))
    if not images:
        raise ValueError(f"--data {data!r}: no readable images in split {split!r}")
    return {
        "images": np.concatenate(images),
        "labels": np.concatenate(labels).astype(np.int64),
        "tokens": None if tokenizer is None else np.concatenate(tokens),
        "split": split,
    }


def evaluate_zero_shot(
    model: Any,
    data: str,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    tokenizer: Any = None,
    split: str = "heldout",
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-1 (and top-5 with ≥ 5 classes) zero-shot accuracy on a labelled source, whose
    label i is ``class_names[i]``.

    Example:
        >>> import aimv2
        >>> from aimv2.text import builtin_tokenizer
        >>> m = aimv2.build(aimv2.presets.get("aimv2-lit-test-tiny"), "torch")
        >>> r = evaluate_zero_shot(m, "builtin:digits", [str(d) for d in range(10)],
        ...                        ["the digit {}"], tokenizer=builtin_tokenizer("builtin:digits", 64))
        >>> r["images"], 0.0 <= r["top1"] <= 1.0
        (359, True)
    """
    be = check_lit(model)
    # the class embeddings first: bad names, templates or tokenizer fail before any image
    weights = be.to_numpy(classifier(model, class_names, templates, tokenizer=tokenizer))
    pairs = source_pairs(data, model.spec.image_encoder, split, progress=progress)
    labels = pairs["labels"]
    if (labels < 0).any():
        raise ValueError(f"--data {data!r}: zero-shot accuracy needs labelled images")
    if labels.max() >= len(class_names):
        raise ValueError(
            f"class_names: {len(class_names)} classes, but the labels of {data!r} go up to "
            f"{int(labels.max())} (label i is class_names[i])"
        )
    img = be.to_numpy(encode_images(model, pairs["images"], batch_size=batch_size))
    logits = img @ weights.T  # the logit scale changes no ranking
    order = np.argsort(-logits, axis=1, kind="stable")
    out: dict[str, Any] = {
        "data": data,
        "split": pairs["split"],
        "images": len(labels),
        "classes": list(class_names),
        "templates": list(templates),
        "top1": float((order[:, 0] == labels).mean()),
    }
    if len(class_names) >= 5:
        out["top5"] = float((order[:, :5] == labels[:, None]).any(axis=1).mean())
    per_class = {}
    for i, name in enumerate(class_names):
        mask = labels == i
        if mask.any():
            per_class[name] = float((order[mask, 0] == i).mean())
    out["per_class_top1"] = per_class
    return out


def evaluate_retrieval(
    model: Any,
    data: str,
    *,
    tokenizer: Any = None,
    split: str = "heldout",
    batch_size: int = 64,
    ks: Sequence[int] = (1, 5, 10),
    progress: bool = False,
) -> dict[str, Any]:
    """Recall@k image→text and text→image on a captioned source (each image with its own
    caption as the one relevant match).

    Example:
        >>> import aimv2
        >>> from aimv2.text import builtin_tokenizer
        >>> m = aimv2.build(aimv2.presets.get("aimv2-lit-test-tiny"), "mlx")
        >>> r = evaluate_retrieval(m, "builtin:digits", tokenizer=builtin_tokenizer("builtin:digits", 64))
        >>> sorted(r["image_to_text"])
        ['R@1', 'R@10', 'R@5']
    """
    be = check_lit(model)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("tokenizer: required (aimv2.lit.load_tokenizer(...))")
    # captions longer than the context are cut (as in training), not refused
    context = model.spec.text_encoder.context_length
    pairs = source_pairs(
        data,
        model.spec.image_encoder,
        split,
        tokenizer=tok,
        context_length=context,
        progress=progress,
    )
    img = be.to_numpy(encode_images(model, pairs["images"], batch_size=batch_size))
    txt = be.to_numpy(encode_texts(model, pairs["tokens"]))
    metrics = retrieval_metrics(img, txt, np.arange(len(img)), ks)
    return {"data": data, "split": pairs["split"], "pairs": len(img), **metrics}
