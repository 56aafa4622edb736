"""Exact model FLOPs of a batch: 2·m·n·k for every matmul of the encoder (and, for a
training step, of the decoder and both heads), forward and backward.

Example:
    >>> import aimv2
    >>> tiny = aimv2.presets.get("aimv2-test-tiny")
    >>> count_flops(tiny, "backward", 2) == 3 * count_flops(tiny, "forward", 2) - 98_304
    True
"""

from __future__ import annotations

from .. import specs as S

__all__ = ["MODES", "count_flops", "encoder_of", "num_patches"]

MODES = ("forward", "backward", "train")


def encoder_of(spec: S.Spec) -> S.EncoderSpec:
    """The encoder of a pre-training spec, or the encoder spec itself.

    Example:
        >>> import aimv2
        >>> encoder_of(aimv2.presets.get("aimv2-test-tiny")).width
        32
    """
    return spec.encoder if isinstance(spec, S.ModelSpec) else spec


def num_patches(enc: S.EncoderSpec, image_hw: tuple[int, int] | None = None) -> int:
    """Patches per image of ``enc`` at ``image_hw`` (default: the encoder's own size).

    Example:
        >>> import aimv2
        >>> num_patches(aimv2.presets.get("aimv2-large-patch14-native").encoder, (224, 448))
        512
    """
    if image_hw is None:
        if enc.image_size is None:
            raise ValueError("image_hw: a native-resolution encoder needs an image size")
        image_hw = enc.image_size
    p = enc.patch_size
    h, w = (int(v) for v in image_hw)
    if h % p or w % p or h < p or w < p:
        raise ValueError(f"image_hw={image_hw}: expected positive multiples of the patch {p}")
    return (h // p) * (w // p)


def _block_flops(block: S.BlockSpec, b: int, n: int) -> int:
    d, hidden = block.width, block.mlp.hidden
    qkv = 2 * b * n * d * 3 * d
    attn = 2 * 2 * b * n * n * d  # q·kᵀ and attention·v, all heads together
    proj = 2 * b * n * d * d
    ffn = (3 if block.mlp.type == "swiglu" else 2) * 2 * b * n * d * hidden
    return qkv + attn + proj + ffn


def count_flops(
    spec: S.Spec,
    mode: str = "forward",
    batch: int = 1,
    image_hw: tuple[int, int] | None = None,
) -> int:
    """Model FLOPs of one batch: 2·m·n·k for every matmul (patch-embedding conv, qkv,
    q·kᵀ, attention·v, output projection, feed-forward; decoder and heads in ``train``).

    ``forward`` and ``backward`` are the encoder's trunk (the optional pooling head is
    not part of the encoder's forward). ``backward`` is forward + backward: twice the
    forward again for the input and weight gradients of every matmul, except that the
    images get no gradient (the patch embedding's backward is its weight gradient only).
    ``train`` is forward + backward of the whole pre-training model (``spec`` a
    :class:`~aimv2.specs.ModelSpec` with a decoder), captions at the decoder's full
    context length. Attention counts the full N×N square even where a mask hides part
    of it; norms, activations, losses and the optimizer are not counted (memory-bound,
    a few percent of the time).

    Example:
        >>> import aimv2
        >>> enc = aimv2.presets.get("aimv2-base-patch14-224").encoder
        >>> round(count_flops(enc, "forward", batch=1) / 1e9, 2)
        46.13
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch={batch!r}: expected a positive integer")
    if isinstance(spec, S.ModelSpec):
        model, enc = spec, spec.encoder
    elif isinstance(spec, S.EncoderSpec):
        model, enc = None, spec
    else:
        raise TypeError(f"spec: expected an EncoderSpec or ModelSpec, got {type(spec).__name__}")
    n = num_patches(enc, image_hw)
    patch = 2 * batch * n * enc.patchifier.patch_dim * enc.width
    forward = patch + enc.depth * _block_flops(enc.trunk.block, batch, n)
    if mode == "forward":
        return forward
    if mode == "backward":
        return 3 * forward - patch
    if model is None or model.decoder is None:
        raise ValueError("mode='train': needs a ModelSpec with a decoder (a preset, say)")
    dec = model.decoder
    t = dec.context_length if model.has_text_head else 0
    seq = n + (t + 1 if model.has_text_head else 0)  # images, start token, caption
    forward += 2 * batch * n * dec.in_width * dec.width  # image_proj
    forward += dec.depth * _block_flops(dec.block, batch, seq)
    if model.has_pixel_head:
        forward += 2 * batch * (n - 1) * dec.width * enc.patchifier.patch_dim
    if model.has_text_head:
        forward += 2 * batch * t * dec.width * dec.vocab_size
    return 3 * forward - patch
