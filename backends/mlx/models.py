"""MLX realizations of the encoder, the causal decoder and the pre-training model
(mirror images of :mod:`aimv2.backends.torch.models`).

On a Linux CPU the encoder and the pre-training model split a batch over one CPU stream
per core (:func:`aimv2.backends.mlx.cpu.run_in_parts`).

Example:
    >>> import aimv2, mlx.core as mx
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> aimv2.build(spec, backend="mlx")(mx.zeros((2, 3, 8, 8))).shape
    (2, 4, 32)
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from aimv2 import masks
from aimv2 import specs as S
from aimv2.inputs import check_features, check_layout, check_tokens, intermediate_indices

from .arrays import as_array
from .cpu import rows_of, run_in_parts
from .layers import call_block
from .registry import build, realizes

__all__ = ["Encoder", "Decoder", "PretrainModel", "patch_targets"]


def _prefix_values(prefix_len: Any, b: int, n: int) -> np.ndarray:
    if isinstance(prefix_len, mx.array):
        prefix_len = np.array(prefix_len)
    return masks.check_prefix_len(prefix_len, b, n)


def _prefix_mask(m: mx.array, n: int) -> mx.array:
    j = mx.arange(n)
    return ((j[None, None, :] < m[:, None, None]) | (j[None, None, :] <= j[None, :, None]))[:, None]


def _check_images(spec: S.EncoderSpec, images: mx.array) -> None:
    kind = "f" if mx.issubdtype(images.dtype, mx.floating) else "i"
    finite, max_abs = True, None
    if kind == "f" and images.size:
        finite = bool(mx.all(mx.isfinite(images)).item())
        max_abs = float(mx.max(mx.abs(images)).item())
    spec.check_images(tuple(images.shape), finite, kind, max_abs)


@realizes(S.EncoderSpec)
class Encoder(nn.Module):
    """The AIMv2 vision encoder: ``preprocessor`` (positions + ``patchifier``), ``trunk``,
    optional ``head``."""

    def __init__(self, spec: S.EncoderSpec):
        super().__init__()
        self.spec = spec
        self.preprocessor = build(spec.pos_embed)
        self.preprocessor.patchifier = build(spec.patchifier)
        self.trunk = build(spec.trunk)
        if spec.head is not None:
            self.head = build(spec.head)

    def __call__(
        self,
        images: mx.array,
        prefix_len: Any = None,
        return_blocks: bool = False,
        check: bool = True,
        pool: bool = False,
    ) -> Any:
        """(B, C, H, W) → (B, N, D) after the final norm (and block outputs if asked).

        ``prefix_len`` (int or one per example, 1…N−1) turns on prefix attention.
        ``check=False`` skips validation (compiled steps; prefix_len then an mx.array).
        ``pool=True`` returns the head's output on the features instead (B, out_dim): a
        classifier's logits.
        """
        images, m = self._inputs(images, prefix_len, check)
        if pool and "head" not in self:
            raise ValueError("pool=True: this encoder has no head (spec.head is None)")
        b = images.shape[0]
        parts = run_in_parts(
            b, lambda rows: self.encode(rows_of(images, rows), rows_of(m, rows), return_blocks)
        )
        if len(parts) == 1:
            out = parts[0]
        elif not return_blocks:
            out = mx.concatenate(parts, axis=0)
        else:
            y = mx.concatenate([part[0] for part in parts], axis=0)
            per_block = zip(*(part[1] for part in parts), strict=True)
            out = (y, [mx.concatenate(outs, axis=0) for outs in per_block])
        if not pool:
            return out
        if return_blocks:
            return self.head(out[0]), out[1]
        return self.head(out)

    def _inputs(self, images: Any, prefix_len: Any, check: bool) -> tuple[mx.array, Any]:
        """Images as an array (validated when ``check``) and prefix lengths (B,) or None."""
        images = as_array(images)
        if check:
            _check_images(self.spec, images)
        b = images.shape[0]
        m = None
        if prefix_len is not None:
            p = self.spec.patch_size
            n = (images.shape[-2] // p) * (images.shape[-1] // p)
            m = prefix_len if not check else mx.array(_prefix_values(prefix_len, b, n))
            m = mx.broadcast_to(as_array(m), (b,))
        return images, m

    def forward_intermediates(
        self,
        images: mx.array,
        indices: Any = None,
        norm: bool = False,
        output: str = "NLC",
        stop_early: bool = True,
        prefix_len: Any = None,
    ) -> tuple[mx.array, list[mx.array]]:
        """(final features (B, N, D), the outputs of the blocks ``indices`` names, in block
        order), as :func:`aimv2.reference.forward_intermediates`: ``indices`` None (all),
        n (the last n) or block numbers (negative from the end); ``norm`` applies the
        final norm to each; ``output`` ``"NLC"`` or ``"NCHW"`` (B, D, rows, cols);
        ``stop_early`` runs no block after the last one asked for (the final features are
        then the final norm of that block's output, as in timm).

        Example:
            >>> import aimv2
            >>> spec = aimv2.encoder_spec(width=32, depth=3, heads=2, patch_size=4,
            ...                           image_size=8, mlp_hidden=64)
            >>> _, maps = aimv2.build(spec, "mlx").forward_intermediates(
            ...     mx.zeros((1, 3, 8, 8)), indices=[-1], output="NCHW")
            >>> [m.shape for m in maps]
            [(1, 32, 2, 2)]
        """
        take = intermediate_indices(self.spec.depth, indices)
        layout = check_layout(output)
        images, m = self._inputs(images, prefix_len, True)
        x = self.embed(images)
        mask = None if m is None else _prefix_mask(m, x.shape[1])
        if stop_early and isinstance(self.spec.trunk, S.TrunkSpec):  # a user trunk runs whole
            final, blocks = self.trunk(x, mask, return_blocks=True, num_blocks=take[-1] + 1)
        else:
            final, blocks = self.trunk(x, mask, return_blocks=True)
        picked = [blocks[i] for i in take]
        if norm:
            picked = [self.trunk.post_trunk_norm(t) for t in picked]
        if layout == "NCHW":
            p = self.spec.patch_size
            rows, cols = images.shape[-2] // p, images.shape[-1] // p
            picked = [t.transpose(0, 2, 1).reshape(t.shape[0], -1, rows, cols) for t in picked]
        return final, picked

    def embed(self, images: mx.array) -> mx.array:
        """Patch embedding plus positions (B, N, D): the trunk's input (what transformers
        calls ``hidden_states[0]``)."""
        dtype = tree_flatten(self.preprocessor.patchifier.parameters())[0][1].dtype
        images = as_array(images).astype(dtype)
        p = self.spec.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        return self.preprocessor(self.preprocessor.patchifier(images), grid=grid)

    def encode(self, images: mx.array, m: mx.array | None, return_blocks: bool) -> Any:
        """The encoder on validated images and prefix lengths ``m`` (B,) or None."""
        x = self.embed(images)
        mask = None if m is None else _prefix_mask(m, x.shape[1])
        return self.trunk(x, mask, return_blocks=return_blocks)


@realizes(S.DecoderSpec)
class Decoder(nn.Module):
    """Causal multimodal decoder over [image_proj(features); start; text + positions]."""

    def __init__(self, spec: S.DecoderSpec):
        super().__init__()
        self.spec = spec
        d = spec.width
        self.image_proj = nn.Linear(spec.in_width, d, bias=True)
        self.text_embed = nn.Embedding(spec.vocab_size, d)
        self.start_token = mx.zeros((1, 1, d))
        self.pos_embed = mx.zeros((1, spec.context_length + 1, d))
        self.blocks = [build(spec.block) for _ in range(spec.depth)]
        self.norm = build(spec.final_norm_spec)
        self.checkpoint = False

    def __call__(self, features: mx.array, tokens: Any = None, check: bool = True) -> Any:
        """→ (image hidden (B, N, D), text hidden (B, T, D) predicting tokens 1…T, or None)."""
        if check:
            check_features(features.shape, self.spec.in_width)
        b, n, _ = features.shape
        h = self.image_proj(features)
        if tokens is not None:
            tokens = as_array(tokens)
            if check:
                _check_tokens(tokens, b, self.spec)
            t = tokens.shape[1]
            start = mx.broadcast_to(self.start_token, (b, 1, self.spec.width))
            text = mx.concatenate([start, self.text_embed(tokens)], axis=1)
            h = mx.concatenate([h, text + self.pos_embed[:, : t + 1]], axis=1)
        for blk in self.blocks:
            h = call_block(self, blk, h, "causal")
        h = self.norm(h)
        return h[:, :n], (h[:, n:-1] if tokens is not None else None)


def _check_tokens(tokens: mx.array, batch: int, spec: S.DecoderSpec) -> None:
    if tokens.dtype == mx.bool_:
        kind = "b"
    elif mx.issubdtype(tokens.dtype, mx.integer):
        kind = "i"
    else:
        kind = "f"
    ok = kind == "i" and tokens.size > 0
    lo = int(tokens.min().item()) if ok else None
    hi = int(tokens.max().item()) if ok else None
    check_tokens(
        tuple(tokens.shape),
        kind,
        lo,
        hi,
        batch=batch,
        vocab_size=spec.vocab_size,
        context_length=spec.context_length,
    )


def patch_targets(spec: S.ModelSpec, images: mx.array) -> mx.array:
    """Pixel targets for patches 1…N−1: patchified, per-patch standardized if asked.

    Example:
        >>> import aimv2
        >>> patch_targets(aimv2.presets.get("aimv2-test-tiny"), mx.zeros((1, 3, 16, 16))).shape
        (1, 15, 48)
    """
    b, c, hh, ww = images.shape
    p = spec.encoder.patch_size
    x = images.reshape(b, c, hh // p, p, ww // p, p).transpose(0, 2, 4, 3, 5, 1)
    x = x.reshape(b, (hh // p) * (ww // p), p * p * c)[:, 1:].astype(mx.float32)
    obj = spec.pixel
    if obj.patch_norm:
        mean = x.mean(axis=-1, keepdims=True)
        var = mx.var(x, axis=-1, keepdims=True, ddof=1 if obj.unbiased else 0)
        x = (x - mean) / mx.sqrt(var + obj.eps)
    return x


@realizes(S.ModelSpec)
class PretrainModel(nn.Module):
    """``encoder``, ``decoder``, ``pixel_head``, ``text_head`` and both losses."""

    def __init__(self, spec: S.ModelSpec):
        super().__init__()
        self.spec = spec
        self.encoder = build(spec.encoder)
        self.decoder = build(spec.decoder)
        d = spec.decoder.width
        if spec.has_pixel_head:
            self.pixel_head = nn.Linear(d, spec.encoder.patchifier.patch_dim, bias=False)
        if spec.has_text_head:
            self.text_head = nn.Linear(d, spec.decoder.vocab_size, bias=False)

    def __call__(
        self,
        images: mx.array,
        tokens: Any = None,
        prefix_len: Any = None,
        check: bool = True,
    ) -> dict[str, Any]:
        """→ dict(loss, pixel_loss, text_loss, pixel_pred (B, N−1, p²C), text_logits (B, T, V)).

        With ``check=False`` (compiled steps) ``prefix_len`` must be an int32 mx.array (B,).
        """
        spec = self.spec
        images = as_array(images)
        if check:
            _check_images(spec.encoder, images)
            if spec.has_text_head and tokens is None:
                raise ValueError("tokens: required by a model with a text objective")
        if spec.prefix.mode == "prefix":
            if prefix_len is None:
                raise ValueError(
                    "prefix_len: required by a prefix-attention model (one per example)"
                )
        else:
            prefix_len = None
        b = images.shape[0]
        p = spec.encoder.patch_size
        n = (images.shape[2] // p) * (images.shape[3] // p)
        m = None
        if prefix_len is not None:
            m = mx.array(_prefix_values(prefix_len, b, n)) if check else as_array(prefix_len)
            m = mx.broadcast_to(m, (b,))
        if not spec.has_text_head:
            tokens = None
        elif tokens is not None:
            tokens = as_array(tokens)
            if check:
                _check_tokens(tokens, b, spec.decoder)
        parts = run_in_parts(
            b,
            lambda rows: self._partial(
                rows_of(images, rows), rows_of(tokens, rows), rows_of(m, rows), n
            ),
        )
        return _combine(spec, parts)

    def _partial(
        self, images: mx.array, tokens: mx.array | None, m: mx.array | None, n: int
    ) -> dict[str, Any]:
        """Both objectives' sums and counts over one (part of a) batch."""
        spec = self.spec
        feats = self.encoder.encode(images, m, False)
        img_h, txt_h = self.decoder(feats, tokens, check=False)
        out: dict[str, Any] = {"pixel_sum": None, "text_sum": None}
        if spec.has_pixel_head:
            pred = self.pixel_head(img_h[:, :-1])
            per_patch = mx.square(pred.astype(mx.float32) - patch_targets(spec, images)).mean(-1)
            if spec.pixel.outside_prefix_only and m is not None:
                t = mx.arange(1, n)
                counted = (t[None, :] >= m[:, None]).astype(mx.float32)
            else:
                counted = mx.ones_like(per_patch)
            out.update(pixel_sum=(per_patch * counted).sum(), pixel_count=counted.sum())
            out["pixel_out"] = pred
        if spec.has_text_head:
            logits = self.text_head(txt_h)
            lf = logits.astype(mx.float32)
            picked = mx.take_along_axis(lf, tokens[..., None].astype(mx.int32), axis=-1)[..., 0]
            ce = mx.logsumexp(lf, axis=-1) - picked
            valid = (tokens != spec.text.pad_id).astype(mx.float32)
            out.update(text_sum=(ce * valid).sum(), text_count=valid.sum(), text_out=logits)
        return out


def _combine(spec: S.ModelSpec, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The loss dict from the parts' sums and counts."""
    out: dict[str, Any] = {"pixel_pred": None, "text_logits": None}
    for key in ("pixel", "text"):
        if parts[0][f"{key}_sum"] is None:
            out[f"{key}_loss"] = mx.array(0.0)
            continue
        total = sum(part[f"{key}_sum"] for part in parts)
        count = sum(part[f"{key}_count"] for part in parts)
        out[f"{key}_loss"] = total / mx.maximum(count, 1.0)
        outputs = [part[f"{key}_out"] for part in parts]
        name = "pixel_pred" if key == "pixel" else "text_logits"
        out[name] = outputs[0] if len(outputs) == 1 else mx.concatenate(outputs, axis=0)
    out["loss"] = spec.text.weight * out["text_loss"] + spec.pixel.weight * out["pixel_loss"]
    return out
