"""Validation of model-call inputs, shared by every realization.

Backends reduce their arrays to shapes, dtype kinds and a few scalars (min, max,
finiteness) and call these checks, so every backend rejects bad input with the
same message before any framework kernel sees it.

Example:
    >>> from aimv2 import inputs
    >>> inputs.check_tokens((2, 5), "i", 0, 10, batch=2, vocab_size=10, context_length=77)
    Traceback (most recent call last):
    ...
    ValueError: tokens: token ids must be < vocab_size=10, got 10
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "check_tokens",
    "check_text_tokens",
    "check_features",
    "check_pretrain_batch",
    "intermediate_indices",
    "check_layout",
    "check_classifier_batch",
]

LAYOUTS = ("NLC", "NCHW")


def check_tokens(
    shape: tuple[int, ...],
    dtype_kind: str,
    lo: int | None,
    hi: int | None,
    *,
    batch: int,
    vocab_size: int,
    context_length: int,
) -> None:
    """Check a caption batch: (batch, T) integers, T ≤ context, ids in 0…vocab−1.

    Example:
        >>> check_tokens((1, 78), "i", 0, 1, batch=1, vocab_size=5, context_length=77)
        Traceback (most recent call last):
        ...
        ValueError: tokens: caption length 78 exceeds the decoder context_length=77
    """
    shape = tuple(int(s) for s in shape)
    if dtype_kind not in "iu":
        raise TypeError(f"tokens: expected integer token ids, got dtype kind {dtype_kind!r}")
    if len(shape) != 2:
        raise ValueError(f"tokens: expected a 2-D batch (B, T) of token ids, got shape {shape}")
    if shape[0] != batch:
        raise ValueError(
            f"tokens: batch size {shape[0]} disagrees with the images' batch size {batch}"
        )
    if shape[1] < 1:
        raise ValueError(f"tokens: expected at least one token per caption, got shape {shape}")
    if shape[1] > context_length:
        raise ValueError(
            f"tokens: caption length {shape[1]} exceeds the decoder context_length={context_length}"
        )
    if lo is not None and lo < 0:
        raise ValueError(f"tokens: token ids must be >= 0, got {lo}")
    if hi is not None and hi >= vocab_size:
        raise ValueError(f"tokens: token ids must be < vocab_size={vocab_size}, got {hi}")


def check_text_tokens(
    shape: tuple[int, ...],
    dtype_kind: str,
    lo: int | None,
    hi: int | None,
    rows_without_eos: int,
    *,
    vocab_size: int,
    context_length: int,
    eos_id: int,
) -> None:
    """Check captions for a text encoder: (B, T) integers, 1 ≤ T ≤ context, ids in
    0…vocab−1, and an ``eos_id`` in every row (the tower pools the first one).

    Example:
        >>> check_text_tokens((2, 5), "i", 0, 9, 1, vocab_size=10, context_length=8, eos_id=9)
        Traceback (most recent call last):
        ...
        ValueError: tokens: 1 of 2 captions hold no end-of-text token (eos_id=9); the text encoder pools the first one (tokenize with the model's tokenizer)
    """
    shape = tuple(int(s) for s in shape)
    if dtype_kind not in "iu":
        raise TypeError(f"tokens: expected integer token ids, got dtype kind {dtype_kind!r}")
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"tokens: expected a 2-D batch (B, T) of token ids, got shape {shape}")
    if shape[1] > context_length:
        raise ValueError(
            f"tokens: caption length {shape[1]} exceeds the text encoder's "
            f"context_length={context_length}"
        )
    if lo is not None and lo < 0:
        raise ValueError(f"tokens: token ids must be >= 0, got {lo}")
    if hi is not None and hi >= vocab_size:
        raise ValueError(f"tokens: token ids must be < vocab_size={vocab_size}, got {hi}")
    if rows_without_eos:
        raise ValueError(
            f"tokens: {rows_without_eos} of {shape[0]} captions hold no end-of-text token "
            f"(eos_id={eos_id}); the text encoder pools the first one (tokenize with the "
            f"model's tokenizer)"
        )


def check_features(shape: tuple[int, ...], width: int, name: str = "features") -> None:
    """Check a (B, N, width) feature batch.

    Example:
        >>> check_features((2, 3, 8), 8)  # fine: returns quietly
        >>> check_features((2, 8), 8)
        Traceback (most recent call last):
        ...
        ValueError: features: expected shape (B, N, 8), got (2, 8)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[-1] != width:
        raise ValueError(f"{name}: expected shape (B, N, {width}), got {shape}")


def check_pretrain_batch(spec: Any, batch: Mapping[str, Any]) -> None:
    """Validate a NumPy pre-training micro-batch on the host (before any device work).

    Example:
        >>> import numpy as np, aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> batch = {"images": np.zeros((1, 3, 16, 16), np.float32),
        ...          "tokens": np.ones((1, 4), np.int64), "prefix_len": [3]}
        >>> check_pretrain_batch(spec, batch)  # fine: returns quietly
        >>> check_pretrain_batch(spec, {**batch, "prefix_len": [16]})
        Traceback (most recent call last):
        ...
        ValueError: prefix_len: every value must lie in 1..15 (N-1 for N=16 patches), got [16]
    """
    from .masks import check_prefix_len

    images = np.asarray(batch["images"])
    finite, max_abs = True, None
    if images.dtype.kind == "f" and images.size:
        finite = bool(np.isfinite(images).all())
        max_abs = float(np.abs(images).max()) if finite else None
    grid = spec.encoder.check_images(images.shape, finite, images.dtype.kind, max_abs)
    b, n = images.shape[0], grid[0] * grid[1]
    tokens = batch.get("tokens")
    if spec.has_text_head:
        if tokens is None:
            raise ValueError("tokens: required by a model with a text objective")
        tokens = np.asarray(tokens)
        ok = tokens.dtype.kind in "iu" and tokens.size
        check_tokens(
            tokens.shape,
            tokens.dtype.kind,
            int(tokens.min()) if ok else None,
            int(tokens.max()) if ok else None,
            batch=b,
            vocab_size=spec.decoder.vocab_size,
            context_length=spec.decoder.context_length,
        )
    if spec.prefix.mode == "prefix":
        if batch.get("prefix_len") is None:
            raise ValueError("prefix_len: required by a prefix-attention model (one per example)")
        check_prefix_len(batch["prefix_len"], b, n)


def intermediate_indices(depth: int, indices: Any = None) -> list[int]:
    """The trunk blocks ``indices`` names, as sorted non-negative block numbers.

    ``None``: every block; an int n: the last n blocks; a sequence: those blocks (a
    negative number counts from the end, -1 the last). Out of range, repeated or
    non-integer entries are a ValueError naming ``indices``.

    Example:
        >>> intermediate_indices(12, [-1, -6, 0]), intermediate_indices(12, 2)
        ([0, 6, 11], [10, 11])
        >>> intermediate_indices(4, [4])
        Traceback (most recent call last):
        ...
        ValueError: indices: block 4 is outside the 4 blocks (0..3, or -4..-1 from the end)
    """
    if indices is None:
        return list(range(depth))
    if isinstance(indices, (int, np.integer)) and not isinstance(indices, bool):
        if not 1 <= int(indices) <= depth:
            raise ValueError(
                f"indices={int(indices)}: the last n blocks needs 1 <= n <= {depth} (the depth)"
            )
        return list(range(depth - int(indices), depth))
    try:
        items = list(indices)
    except TypeError:
        raise TypeError(
            f"indices: expected None, an int (the last n blocks) or block numbers, got "
            f"{type(indices).__name__}"
        ) from None
    if not items:
        raise ValueError("indices: expected at least one block number, got none")
    out: list[int] = []
    for i in items:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"indices: block numbers must be integers, got {i!r}")
        if not -depth <= int(i) < depth:
            raise ValueError(
                f"indices: block {int(i)} is outside the {depth} blocks "
                f"(0..{depth - 1}, or -{depth}..-1 from the end)"
            )
        j = int(i) % depth
        if j in out:
            raise ValueError(f"indices: block {j} is named twice in {items}")
        out.append(j)
    return sorted(out)


def check_layout(output: str) -> str:
    """``output`` of ``forward_intermediates``, upper-cased: ``"NLC"`` (tokens (B, N, D))
    or ``"NCHW"`` (a feature map (B, D, rows, cols)).

    Example:
        >>> check_layout("nchw")
        'NCHW'
        >>> check_layout("NHWC")
        Traceback (most recent call last):
        ...
        ValueError: output='NHWC': expected one of ('NLC', 'NCHW') (any case)
    """
    layout = output.upper() if isinstance(output, str) else output
    if layout not in LAYOUTS:
        raise ValueError(f"output={output!r}: expected one of {LAYOUTS} (any case)")
    return layout


def check_classifier_batch(spec: Any, batch: Mapping[str, Any]) -> None:
    """Validate a NumPy fine-tuning micro-batch (``images``, ``labels``) for an encoder
    with a classifier head, on the host.

    Example:
        >>> import numpy as np, aimv2
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           head=aimv2.specs.MeanPoolSpec(8, 3))
        >>> check_classifier_batch(spec, {"images": np.zeros((2, 3, 8, 8), np.float32),
        ...                               "labels": np.array([0, 3])})
        Traceback (most recent call last):
        ...
        ValueError: labels: expected class ids in 0..2 (the head has 3 outputs), got 0..3
    """
    images = np.asarray(batch["images"])
    spec.check_images(images.shape, bool(np.isfinite(images).all()), images.dtype.kind)
    if spec.head is None:
        raise ValueError("spec: fine-tuning a classifier needs an encoder with a head")
    labels = np.asarray(batch["labels"])
    if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels: expected {images.shape[0]} integer class ids, got {labels.dtype} "
            f"{labels.shape}"
        )
    k = spec.head.out_dim
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(
            f"labels: expected class ids in 0..{k - 1} (the head has {k} outputs), got {lo}..{hi}"
        )
