"""LoRA on an encoder, at the level of specs and canonical weights: add adapters, give them
their initial weights, and merge them back into plain weights that load anywhere.

An adapter (:class:`~aimv2.specs.LoRAAttentionSpec`, :class:`~aimv2.specs.LoRAFeedForwardSpec`)
wraps a block's attention or feed-forward component; its target projections compute
``W x + (alpha/rank)·B A x``. Merging replaces each adapter by its base and each target
weight by ``W + (alpha/rank)·B A``, computed in float64 and rounded once to the weight's
dtype, so a merged model computes what the adapted one did up to that single rounding.

Example:
    >>> import aimv2, numpy as np
    >>> enc = aimv2.encoder_spec(width=16, depth=2, heads=2, patch_size=4, image_size=8)
    >>> spec = add_lora(enc, rank=2, alpha=4.0)
    >>> w = lora_weights(spec, aimv2.init_weights(enc), seed=0)
    >>> merged_spec, merged = merge_lora(spec, w)
    >>> merged_spec == enc, sorted(merged) == sorted(aimv2.init_weights(enc))
    (True, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from . import specs as S
from .weights import check_weights, init_weights, parameters

__all__ = ["add_lora", "strip_lora", "lora_names", "lora_weights", "merge_lora", "has_lora"]


def _rewrite(spec: S.Spec, fn: Callable[[S.Spec], S.Spec | None]) -> S.Spec:
    """``spec`` with every nested spec ``s`` for which ``fn(s)`` is not None replaced by
    it (outermost first; a replacement is not searched again)."""
    new = fn(spec)
    if new is not None:
        return new
    changes = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, S.Spec):
            out = _rewrite(value, fn)
            if out is not value:
                changes[f.name] = out
        elif isinstance(value, tuple) and any(isinstance(v, S.Spec) for v in value):
            out = tuple(_rewrite(v, fn) if isinstance(v, S.Spec) else v for v in value)
            if any(a is not b for a, b in zip(out, value, strict=True)):
                changes[f.name] = out
    return dataclasses.replace(spec, **changes) if changes else spec


def has_lora(spec: S.Spec) -> bool:
    """Whether ``spec`` holds a LoRA adapter anywhere.

    Example:
        >>> import aimv2
        >>> has_lora(aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8))
        False
    """
    return any(isinstance(s, S.LORA_SPECS) for s in S.walk(spec))


def add_lora(
    spec: S.EncoderSpec,
    rank: int = 8,
    alpha: float = 16.0,
    *,
    attention: bool = True,
    ffn: bool = True,
    attention_targets: Sequence[str] | None = None,
    ffn_targets: Sequence[str] | None = None,
) -> S.EncoderSpec:
    """``spec`` with LoRA adapters on its trunk blocks' attention (``qkv``, ``proj``) and
    feed-forward (``fc1``, ``fc2``, ``fc3``) projections, or the ``*_targets`` named.

    Example:
        >>> import aimv2
        >>> enc = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8)
        >>> add_lora(enc, 4, ffn=False).trunk.block.attn.targets
        ('proj', 'qkv')
        >>> add_lora(enc, 0)
        Traceback (most recent call last):
        ...
        aimv2.specs.base.SpecError: LoRAAttentionSpec.rank=0: expected a positive integer
    """
    if not isinstance(spec, S.EncoderSpec):
        raise TypeError(f"spec: expected an EncoderSpec, got {type(spec).__name__}")
    if has_lora(spec):
        raise ValueError("spec: already holds LoRA adapters (merge_lora or strip_lora first)")
    if not (attention or ffn):
        raise ValueError("add_lora: attention=False and ffn=False leave nothing to adapt")

    def adapt(block: S.Spec) -> S.Spec | None:
        if not isinstance(block, S.BlockSpec):
            return None
        changes: dict[str, Any] = {}
        if attention:
            changes["attn"] = S.LoRAAttentionSpec(block.attn, rank, alpha, attention_targets)
        if ffn:
            changes["mlp"] = S.LoRAFeedForwardSpec(block.mlp, rank, alpha, ffn_targets)
        return block.replace(**changes)

    return spec.replace(trunk=_rewrite(spec.trunk, adapt))


def strip_lora(spec: S.Spec) -> S.Spec:
    """``spec`` with every LoRA adapter replaced by its base component.

    Example:
        >>> import aimv2
        >>> enc = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8)
        >>> strip_lora(add_lora(enc, 2)) == enc
        True
    """
    return _rewrite(spec, lambda s: s.base if isinstance(s, S.LORA_SPECS) else None)


def lora_names(spec: S.Spec) -> dict[str, tuple[str, str, float]]:
    """Each adapted weight's canonical name → (its ``lora_a`` name, ``lora_b`` name,
    scale alpha/rank).

    Which adapter a parameter belongs to is read from the parameter table itself:
    giving one adapter another rank changes exactly the shapes of its own LoRA
    parameters (wherever composites place them).

    Example:
        >>> import aimv2
        >>> enc = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8)
        >>> lora_names(add_lora(enc, 2, alpha=1.0, ffn=False))["trunk.blocks.0.attn.qkv.weight"]
        ('trunk.blocks.0.attn.qkv.lora_a', 'trunk.blocks.0.attn.qkv.lora_b', 0.5)
    """
    table = parameters(spec)
    adapters = list(dict.fromkeys(s for s in S.walk(spec) if isinstance(s, S.LORA_SPECS)))
    out: dict[str, tuple[str, str, float]] = {}
    for adapter in adapters:
        bumped = adapter.replace(rank=adapter.rank + 1)
        other = parameters(_rewrite(spec, lambda s, a=adapter, b=bumped: b if s == a else None))
        for name, info in table.items():
            if name.endswith(".lora_a") and other[name].shape != info.shape:
                stem = name[: -len(".lora_a")]
                out[f"{stem}.weight"] = (name, f"{stem}.lora_b", adapter.scale)
    return out


def lora_weights(
    spec: S.Spec, base: Mapping[str, np.ndarray], seed: int = 0
) -> dict[str, np.ndarray]:
    """Weights for an adapted ``spec``: ``base`` (the weights of :func:`strip_lora` of it,
    checked) plus freshly initialized adapters (``lora_a`` drawn from ``seed``,
    ``lora_b`` zeros: the adapted model starts as the base).

    Example:
        >>> import aimv2
        >>> enc = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8)
        >>> w = lora_weights(add_lora(enc, 2), aimv2.init_weights(enc))
        >>> float(abs(w["trunk.blocks.0.mlp.fc2.lora_b"]).max())
        0.0
    """
    check_weights(strip_lora(spec), base, where="base weights")
    fresh = init_weights(spec, seed)
    out = {k: np.asarray(v) for k, v in base.items()}
    for a, b, _ in lora_names(spec).values():
        out[a], out[b] = fresh[a], fresh[b]
    check_weights(spec, out)
    return out


def merge_lora(
    spec: S.Spec, weights: Mapping[str, np.ndarray]
) -> tuple[S.Spec, dict[str, np.ndarray]]:
    """(the spec without adapters, its weights): every adapted ``W`` becomes
    ``W + (alpha/rank)·B A`` (float64, then the weight's own dtype); the LoRA parameters
    go. A spec without adapters comes back unchanged.

    Example:
        >>> import aimv2
        >>> enc = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8)
        >>> spec = add_lora(enc, 1, alpha=2.0, ffn=False)
        >>> w = lora_weights(spec, aimv2.init_weights(enc))
        >>> w["trunk.blocks.0.attn.proj.lora_b"][:] = 1.0
        >>> _, m = merge_lora(spec, w)
        >>> delta = m["trunk.blocks.0.attn.proj.weight"] - w["trunk.blocks.0.attn.proj.weight"]
        >>> bool(np.allclose(delta, 2.0 * w["trunk.blocks.0.attn.proj.lora_a"].sum(0)))
        True
    """
    check_weights(spec, weights)
    names = lora_names(spec)
    dropped = {n for a, b, _ in names.values() for n in (a, b)}
    out = {k: np.asarray(v) for k, v in weights.items() if k not in dropped}
    for name, (a, b, scale) in names.items():
        w = np.asarray(weights[name])
        delta = np.asarray(weights[b], np.float64) @ np.asarray(weights[a], np.float64)
        out[name] = (w.astype(np.float64) + scale * delta).astype(w.dtype)
    merged = strip_lora(spec)
    check_weights(merged, out)
    return merged, out
