"""Validation of model-call inputs, shared by every realization.

Backends reduce their arrays to shapes, dtype kinds and a few scalars (min, max,
finiteness) and call these checks, so every backend rejects bad input with the
same message before any framework kernel sees it.

Example:
    >>> from aimv2 import inputs
    >>> inputs.check_tokens((2, 5), "i", 0, 9, batch=2, vocab_size=10, context_length=77)
"""

from __future__ import annotations

__all__ = ["check_tokens", "check_features"]


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


def check_features(shape: tuple[int, ...], width: int, name: str = "features") -> None:
    """Check a (B, N, width) feature batch.

    Example:
        >>> check_features((2, 3, 8), 8)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[-1] != width:
        raise ValueError(f"{name}: expected shape (B, N, {width}), got {shape}")
