"""Random weights, batches and example inputs for any spec.

:func:`example_inputs` draws the call arguments of a component from its slot role (a
feed-forward gets ``x (B, N, width)``, an attention also a mask…); a component whose
inputs are special (a fixed token count, say) registers its own drawer with
:func:`inputs_for`.

Example:
    >>> import numpy as np
    >>> from aimv2 import specs as S
    >>> args, kwargs = example_inputs(S.AttentionSpec(8, 2), np.random.default_rng(0))
    >>> args[0].shape[-1], sorted(kwargs)
    (8, ['mask'])
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np

from .. import specs as S
from ..masks import prefix_mask, sample_prefix
from ..weights import parameters

__all__ = [
    "random_weights",
    "random_batch",
    "random_captions",
    "example_inputs",
    "inputs_for",
    "write_tar_shards",
]

Inputs = tuple[list[Any], dict[str, Any]]
_DRAWERS: dict[type, Callable[[S.Spec, np.random.Generator], Inputs]] = {}


def random_weights(spec: S.Spec, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 weights where *every* parameter is random (norm weights, biases and
    positions included), so parity tests see each one used.

    Example:
        >>> w = random_weights(S.NormSpec(width=4))
        >>> bool(abs(w["weight"] - 1).max() > 0)
        True
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, info in parameters(spec).items():
        shape = info.shape
        if info.role in ("norm", "scale"):
            w = 1.0 + 0.2 * rng.standard_normal(shape)
        elif info.role in ("bias", "norm_bias", "pos", "text_pos", "token"):
            w = 0.2 * rng.standard_normal(shape)
        elif info.role == "embed":
            w = rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) / np.sqrt(info.fan_in)
        out[name] = w.astype(np.float32)
    return out


def random_captions(
    spec: S.TextEncoderSpec,
    rng: np.random.Generator,
    batch: int = 2,
    length: int | None = None,
    pad_id: int | None = None,
) -> np.ndarray:
    """Token ids (batch, length ≤ context) for a text encoder: random text, one eos at a
    random position of each row, then padding — ``pad_id``, or (None) a coin flip between
    the eos itself (the CLIP convention, eos = pad) and random ids, so that pooling must
    pick the *first* eos and ignore what follows it.

    Example:
        >>> t = S.text_encoder_spec(8, 1, 2, vocab_size=10, context_length=6)
        >>> ids = random_captions(t, np.random.default_rng(0), batch=3)
        >>> ids.shape[0], bool((ids == t.eos_id).any(axis=1).all())
        (3, True)
    """
    t = length if length is not None else int(rng.integers(1, spec.context_length + 1))
    others = [i for i in range(spec.vocab_size) if i != spec.eos_id] or [spec.eos_id]
    ids = rng.choice(others, size=(batch, t))
    eos_at = rng.integers(0, t, batch)
    pad_with_eos = bool(rng.integers(0, 2)) if pad_id is None else False
    for row, at in enumerate(eos_at):
        ids[row, at] = spec.eos_id
        if pad_with_eos:
            ids[row, at + 1 :] = spec.eos_id
        elif pad_id is not None:
            ids[row, at + 1 :] = pad_id
    return ids.astype(np.int64)


def random_batch(
    spec: S.ModelSpec | S.EncoderSpec | S.LiTSpec,
    seed: int = 0,
    batch: int = 2,
    image_hw: tuple[int, int] | None = None,
    caption_len: int | None = None,
) -> dict[str, np.ndarray | None]:
    """Images (normal), captions (some pad at the end) and prefix lengths for ``spec``
    (a LiT model: images and :func:`random_captions`, one per image).

    Example:
        >>> import aimv2
        >>> b = random_batch(aimv2.presets.get("aimv2-test-tiny"))
        >>> b["images"].shape, b["tokens"].shape
        ((2, 3, 16, 16), (2, 16))
    """
    rng = np.random.default_rng(seed)
    enc = spec.encoder if isinstance(spec, (S.ModelSpec, S.LiTSpec)) else spec
    if image_hw is None:
        image_hw = enc.image_size or (enc.patch_size * 3, enc.patch_size * 2)
    p = enc.patch_size
    n = (image_hw[0] // p) * (image_hw[1] // p)
    images = rng.standard_normal((batch, enc.in_channels, *image_hw)).astype(np.float32)
    out: dict[str, np.ndarray | None] = {"images": images, "tokens": None, "prefix_len": None}
    if n >= 2:
        out["prefix_len"] = sample_prefix(rng, batch, n)
    if isinstance(spec, S.ModelSpec) and spec.decoder is not None:
        dec = spec.decoder
        t = caption_len or dec.context_length
        pad = spec.text.pad_id
        tokens = rng.integers(0, dec.vocab_size, (batch, t))
        tokens[tokens == pad] = (pad + 1) % dec.vocab_size
        lengths = rng.integers(0, t + 1, batch)
        tokens[np.arange(t)[None, :] >= lengths[:, None]] = pad
        out["tokens"] = tokens.astype(np.int64)
    if isinstance(spec, S.LiTSpec):
        out["tokens"] = random_captions(spec.text_encoder, rng, batch, caption_len)
    return out


def inputs_for(
    spec_class: type[S.Spec],
) -> Callable[[Callable[[Any, np.random.Generator], Inputs]], Any]:
    """Decorator registering ``fn(spec, rng) -> (args, kwargs)`` as the example-input
    drawer of ``spec_class`` (for components whose role's default inputs do not fit).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Nine(S.Spec):
        ...     kind = "doc_nine_tokens"  # class attributes, not fields
        ...     role = "ffn"
        ...     width: int
        >>> @inputs_for(Nine)
        ... def _nine(spec, rng):
        ...     return [rng.standard_normal((2, 9, spec.width))], {}
        >>> example_inputs(Nine(4), np.random.default_rng(0))[0][0].shape
        (2, 9, 4)
    """

    def register(fn: Callable[[Any, np.random.Generator], Inputs]) -> Any:
        _DRAWERS[spec_class] = fn
        return fn

    return register


def _tokens(spec: Any, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    n = int(rng.integers(2, 7)) if n is None else n
    return rng.standard_normal((2, n, spec.width))


def _mask(rng: np.random.Generator, n: int) -> Any:
    kind = int(rng.integers(0, 3))
    if kind == 1:
        return "causal"
    if kind == 2:
        return prefix_mask(rng.integers(1, n, 2), n)
    return None


def example_inputs(spec: S.Spec, rng: np.random.Generator) -> Inputs:
    """Call arguments ``(args, kwargs)`` for a module realizing ``spec`` (NumPy float64).

    A drawer registered with :func:`inputs_for` wins; otherwise the inputs follow the
    spec's slot role (see :data:`aimv2.specs.ROLES`) or its built-in kind.

    Example:
        >>> args, kw = example_inputs(S.PatchEmbedSpec(2, 3, 8), np.random.default_rng(1))
        >>> args[0].shape[:2]
        (2, 3)
    """
    drawer = _DRAWERS.get(type(spec))
    if drawer is not None:
        return drawer(spec, rng)
    role = type(spec).role
    if role == "patch_embed":
        p = spec.patch_size
        rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        return [rng.standard_normal((2, spec.in_channels, p * rows, p * cols))], {}
    if role == "pos_embed":
        grid = getattr(spec, "fixed_grid", None)
        if grid is None:
            grid = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        return [_tokens(spec, rng, grid[0] * grid[1])], {"grid": tuple(grid)}
    if role in ("attention", "block", "trunk"):
        x = _tokens(spec, rng)
        return [x], {"mask": _mask(rng, x.shape[1])}
    if role in ("norm", "ffn", "pool") or isinstance(spec, S.ProbeSpec):
        return [_tokens(spec, rng)], {}
    if isinstance(spec, S.EncoderSpec):
        batch = random_batch(spec, int(rng.integers(0, 2**31)))
        return [batch["images"]], {"prefix_len": batch["prefix_len"]}
    if isinstance(spec, S.ModelSpec):
        batch = random_batch(spec, int(rng.integers(0, 2**31)))
        return [batch["images"]], {"tokens": batch["tokens"], "prefix_len": batch["prefix_len"]}
    if isinstance(spec, S.TextEncoderSpec):
        return [random_captions(spec, rng, int(rng.integers(1, 4)))], {}
    raise TypeError(
        f"example_inputs: no inputs known for {type(spec).__name__} (role {role!r}); register "
        f"a drawer with @aimv2.testing.inputs_for({type(spec).__name__})"
    )


def write_tar_shards(
    folder: str | os.PathLike,
    shards: int,
    per_shard: int,
    *,
    corrupt: Collection[tuple[int, int]] = (),
    size: tuple[int, int] = (20, 24),
    classes: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Write ``shards`` WebDataset tar shards ``s-0.tar …`` of ``per_shard`` samples each
    (random-noise PNGs of ``size`` = (width, height) and a caption naming the sample;
    with ``classes``, a ``.cls`` label: the sample's index modulo ``classes``); the
    samples at (shard, index) in ``corrupt`` get unreadable image bytes. Returns the
    captions in file order.

    Example:
        >>> import tempfile
        >>> from aimv2.data import open_source
        >>> d = tempfile.mkdtemp()
        >>> write_tar_shards(d, 2, 3)[:2]
        ['a noisy picture number 0', 'a noisy picture number 1']
        >>> len(list(open_source(d + "/s-*.tar")))
        6
    """
    from PIL import Image

    captions = []
    rng = np.random.default_rng(seed)
    for s in range(shards):
        with tarfile.open(Path(folder) / f"s-{s}.tar", "w") as tf:
            for k in range(per_shard):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, "PNG")
                image = b"not an image" if (s, k) in corrupt else buf.getvalue()
                captions.append(f"a noisy picture number {k}")
                members = [(f"{s}{k:04d}.png", image), (f"{s}{k:04d}.txt", captions[-1])]
                if classes:
                    members.append((f"{s}{k:04d}.cls", str(k % classes)))
                for name, data in members:
                    payload = data.encode() if isinstance(data, str) else data
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    return captions
