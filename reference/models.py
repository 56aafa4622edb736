"""Float64 realizations of the encoder, the causal decoder and the pre-training model.

Example:
    >>> import numpy as np, aimv2
    >>> spec = aimv2.presets.get("aimv2-test-tiny")
    >>> out = model(spec, aimv2.init_weights(spec), np.zeros((1, 3, 16, 16)),
    ...             tokens=np.ones((1, 4), np.int64), prefix_len=[5])
    >>> sorted(k for k in out if k.endswith("loss"))
    ['loss', 'pixel_loss', 'text_loss']
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aimv2 import masks
from aimv2 import specs as S
from aimv2.inputs import check_features, check_layout, check_tokens, intermediate_indices

from .losses import pixel_loss, text_loss
from .ops import Weights, f64, linear, sub
from .registry import apply, realizes

__all__ = ["encoder_mask", "encoder", "forward_intermediates", "decoder", "model"]


def encoder_mask(spec: S.EncoderSpec, prefix_len: Any, batch: int, n: int) -> Any:
    """Boolean prefix mask for ``prefix_len`` (validated), or None when bidirectional.

    Example:
        >>> encoder_mask(None, 2, batch=1, n=3)[0, 0].astype(int).tolist()
        [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    """
    if prefix_len is None:
        return None
    return masks.prefix_mask(masks.check_prefix_len(prefix_len, batch, n), n)


@realizes(S.EncoderSpec)
def encoder(
    spec: S.EncoderSpec,
    w: Weights,
    images: np.ndarray,
    prefix_len: Any = None,
    return_blocks: bool = False,
    pool: bool = False,
) -> Any:
    """The vision encoder: (B, C, H, W) → (B, N, D) after the final norm; ``pool=True``
    returns the head's output on it instead (B, out_dim).

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.encoder_spec(width=8, depth=1, heads=2, patch_size=2, image_size=4)
        >>> encoder(spec, init_weights(spec), np.zeros((1, 3, 4, 4)), prefix_len=1).shape
        (1, 4, 8)
    """
    x, mask, _ = _embed(spec, w, images, prefix_len)
    out = apply(spec.trunk, sub(w, "trunk."), x, mask, return_blocks=return_blocks)
    if not pool:
        return out
    if spec.head is None:
        raise ValueError("pool=True: this encoder has no head (spec.head is None)")
    feats = out[0] if return_blocks else out
    pooled = apply(spec.head, sub(w, "head."), feats)
    return (pooled, out[1]) if return_blocks else pooled


def _embed(spec: S.EncoderSpec, w: Weights, images: Any, prefix_len: Any) -> tuple:
    """Validated images → (trunk input (B, N, D), mask or None, patch grid)."""
    raw = np.asarray(images)
    finite = raw.dtype.kind != "f" or bool(np.isfinite(raw).all())
    max_abs = float(np.abs(raw).max()) if raw.dtype.kind == "f" and raw.size and finite else None
    grid = spec.check_images(raw.shape, finite, raw.dtype.kind, max_abs)
    images = f64(raw)
    x = apply(spec.patchifier, sub(w, "preprocessor.patchifier."), images)
    x = apply(spec.pos_embed, sub(w, "preprocessor."), x, grid=grid)
    return x, encoder_mask(spec, prefix_len, images.shape[0], x.shape[1]), grid


def forward_intermediates(
    spec: S.EncoderSpec,
    w: Weights,
    images: np.ndarray,
    indices: Any = None,
    norm: bool = False,
    output: str = "NLC",
    stop_early: bool = True,
    prefix_len: Any = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(final features (B, N, D), the outputs of the blocks ``indices`` names, in block
    order): timm's feature API.

    ``indices``: None (every block), n (the last n) or block numbers (negative from the
    end); ``norm``: pass each through the final norm; ``output``: ``"NLC"`` tokens or
    ``"NCHW"`` maps (B, D, rows, cols); ``stop_early``: run no block after the last one
    asked for, the final features then being the final norm of that block's output (as
    timm does).

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.encoder_spec(width=8, depth=3, heads=2, patch_size=2, image_size=4)
        >>> y, inter = forward_intermediates(spec, init_weights(spec), np.zeros((1, 3, 4, 4)),
        ...                                  indices=[0, -1], output="NCHW")
        >>> y.shape, [t.shape for t in inter]
        ((1, 4, 8), [(1, 8, 2, 2), (1, 8, 2, 2)])
    """
    take = intermediate_indices(spec.depth, indices)
    layout = check_layout(output)
    x, mask, grid = _embed(spec, w, images, prefix_len)
    tw = sub(w, "trunk.")
    if stop_early and isinstance(spec.trunk, S.TrunkSpec):  # a user trunk runs whole
        final, blocks = apply(spec.trunk, tw, x, mask, return_blocks=True, num_blocks=take[-1] + 1)
    else:
        final, blocks = apply(spec.trunk, tw, x, mask, return_blocks=True)
    picked = [blocks[i] for i in take]
    if norm:
        final_norm = spec.trunk.final_norm_spec
        picked = [apply(final_norm, sub(tw, "post_trunk_norm."), t) for t in picked]
    if layout == "NCHW":
        picked = [t.reshape(t.shape[0], *grid, t.shape[-1]).transpose(0, 3, 1, 2) for t in picked]
    return final, picked


@realizes(S.DecoderSpec)
def decoder(
    spec: S.DecoderSpec, w: Weights, features: np.ndarray, tokens: Any = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Causal decoder over [image_proj(features); start; text].

    Returns the normalized hidden states of the image positions (B, N, D) and of
    the text positions that predict tokens 1…T, i.e. [start, t_1 … t_{T−1}]
    (B, T, D), or None without tokens.

    Example:
        >>> import aimv2
        >>> dec = aimv2.presets.get("aimv2-test-tiny").decoder
        >>> img, txt = decoder(dec, aimv2.init_weights(dec), np.zeros((1, 4, 32)),
        ...                    np.ones((1, 3), np.int64))
        >>> img.shape, txt.shape
        ((1, 4, 32), (1, 3, 32))
    """
    x = f64(features)
    check_features(x.shape, spec.in_width)
    b, n, _ = x.shape
    seq = [linear(w, "image_proj", x)]
    if tokens is not None:
        tokens = np.asarray(tokens)
        check_tokens(
            tokens.shape,
            tokens.dtype.kind,
            int(tokens.min()),
            int(tokens.max()),
            batch=b,
            vocab_size=spec.vocab_size,
            context_length=spec.context_length,
        )
        t = tokens.shape[1]
        text = f64(w["text_embed.weight"])[tokens]
        start = np.broadcast_to(f64(w["start_token"]), (b, 1, spec.width))
        text = np.concatenate([start, text], axis=1) + f64(w["pos_embed"])[:, : t + 1]
        seq.append(text)
    h = np.concatenate(seq, axis=1)
    for i in range(spec.depth):
        h = apply(spec.block, sub(w, f"blocks.{i}."), h, "causal")
    h = apply(spec.final_norm_spec, sub(w, "norm."), h)
    return h[:, :n], (h[:, n:-1] if tokens is not None else None)


@realizes(S.ModelSpec)
def model(
    spec: S.ModelSpec,
    w: Weights,
    images: np.ndarray,
    tokens: Any = None,
    prefix_len: Any = None,
    return_blocks: bool = False,
) -> Any:
    """Encoder alone (no decoder), or the pre-training model returning the loss dict.

    Example:
        >>> import aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> out = model(spec, aimv2.init_weights(spec), np.zeros((1, 3, 16, 16)),
        ...             tokens=np.ones((1, 4), np.int64), prefix_len=[5])
        >>> out["pixel_pred"].shape, out["text_logits"].shape
        ((1, 15, 48), (1, 4, 64))
    """
    if spec.decoder is None:
        return apply(spec.encoder, w, images, prefix_len, return_blocks)
    images = f64(images)
    b = images.shape[0]
    enc_w = sub(w, "encoder.")
    if spec.prefix.mode == "prefix":
        if prefix_len is None:
            raise ValueError("prefix_len: required by a prefix-attention model (one per example)")
    else:
        prefix_len = None
    if spec.has_text_head and tokens is None:
        raise ValueError("tokens: required by a model with a text objective")
    feats = apply(spec.encoder, enc_w, images, prefix_len)
    n = feats.shape[1]
    m = None if prefix_len is None else masks.check_prefix_len(prefix_len, b, n)
    img_h, txt_h = apply(
        spec.decoder, sub(w, "decoder."), feats, tokens if spec.has_text_head else None
    )
    out: dict[str, Any] = {"pixel_loss": np.float64(0.0), "text_loss": np.float64(0.0)}
    out["pixel_pred"] = out["text_logits"] = None
    if spec.has_pixel_head:
        out["pixel_pred"] = linear(w, "pixel_head", img_h[:, :-1])
        out["pixel_loss"] = pixel_loss(
            spec.pixel, out["pixel_pred"], images, spec.encoder.patch_size, m
        )
    if spec.has_text_head:
        out["text_logits"] = linear(w, "text_head", txt_h)
        out["text_loss"] = text_loss(spec.text, out["text_logits"], tokens)
    out["loss"] = spec.text.weight * out["text_loss"] + spec.pixel.weight * out["pixel_loss"]
    return out
