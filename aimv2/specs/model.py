"""The pre-training model: the causal multimodal decoder, the prefix, both objectives,
initialization, and the whole-model composite.

Example:
    >>> from aimv2.specs import DecoderSpec
    >>> DecoderSpec.paper(in_width=1024).block.attn.heads
    8
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from .base import ParamInfo, Spec, check_slot, linear_params, nested, one_of, positive_int, require
from .encoder import EncoderSpec
from .layers import block_spec

__all__ = [
    "InitSpec",
    "DecoderSpec",
    "PrefixSpec",
    "PixelObjectiveSpec",
    "TextObjectiveSpec",
    "ModelSpec",
    "decoder_spec",
]


@dataclass(frozen=True)
class InitSpec(Spec):
    """Backend-independent initialization, drawn with NumPy from a seed.

    Linear and conv weights: xavier-uniform (conv on its flattened fan-in/out);
    biases zero; norm weights one (biases zero); learned encoder positions and
    tokens normal(0, ``embed_std``); decoder text positions normal(0, ``text_pos_std``);
    text embedding normal(0, ``embed_std``); heads scaled by ``1/sqrt(2·depth)`` of the
    decoder when ``scale_heads_by_depth``.

    Example:
        >>> InitSpec().text_pos_std
        0.01
    """

    kind: ClassVar[str] = "init"
    configures_owner: ClassVar[bool] = True
    embed_std: float = 0.02
    text_pos_std: float = 0.01
    scale_heads_by_depth: bool = True

    def __post_init__(self) -> None:
        for name in ("embed_std", "text_pos_std"):
            value = getattr(self, name)
            require(
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value >= 0,
                "InitSpec",
                name,
                value,
                "expected a finite number >= 0",
            )


@dataclass(frozen=True)
class DecoderSpec(Spec):
    """AIMv2's causal multimodal decoder over ``[image_proj(features); start; text]``.

    Image features enter through ``image_proj`` (Linear in_width→width with bias, no
    position embedding). Text: ``text_embed`` (vocab_size, width), a learned
    ``start_token`` prepended, learned ``pos_embed`` (1, context_length + 1, width).
    Then ``depth`` blocks (slot ``block``, role ``block``) under a causal mask and a
    final ``norm``.

    Example:
        >>> DecoderSpec.paper(in_width=1024).block.attn.heads
        8
    """

    kind: ClassVar[str] = "decoder"
    in_width: int
    block: Spec
    depth: int
    vocab_size: int
    context_length: int = 77
    final_norm: Spec | None = None
    causal: bool = True

    def __post_init__(self) -> None:
        positive_int("DecoderSpec", "in_width", self.in_width)
        check_slot("DecoderSpec", "block", self.block, "block")
        positive_int("DecoderSpec", "depth", self.depth)
        positive_int("DecoderSpec", "vocab_size", self.vocab_size)
        positive_int("DecoderSpec", "context_length", self.context_length)
        require(
            self.causal is True,
            "DecoderSpec",
            "causal",
            self.causal,
            "the autoregressive decoder must be causal",
        )
        if self.final_norm is not None:
            check_slot("DecoderSpec", "final_norm", self.final_norm, "norm")
        require(
            self.final_norm_spec.width == self.block.width,
            "DecoderSpec",
            "final_norm.width",
            self.final_norm_spec.width,
            f"expected the block width {self.block.width}",
        )

    @property
    def final_norm_spec(self) -> Spec:
        """``final_norm``, or the block's norm when None."""
        return self.final_norm if self.final_norm is not None else self.block.norm

    @property
    def width(self) -> int:
        """Decoder width."""
        return self.block.width

    def parameters(self) -> dict[str, ParamInfo]:
        """``image_proj``, ``text_embed``, ``start_token``, ``pos_embed``, ``blocks.{i}.*``
        and ``norm.*``.

        Example:
            >>> sorted(DecoderSpec.paper(in_width=64).parameters())[0]
            'blocks.0.attn.proj.weight'
        """
        d = self.width
        own = {
            **linear_params("image_proj", d, self.in_width, True),
            "text_embed.weight": ParamInfo((self.vocab_size, d), "embed"),
            "start_token": ParamInfo((1, 1, d), "token"),
            "pos_embed": ParamInfo((1, self.context_length + 1, d), "text_pos"),
        }
        blocks = [(f"blocks.{i}.", self.block) for i in range(self.depth)]
        return nested(("", own), *blocks, ("norm.", self.final_norm_spec))

    @classmethod
    def paper(cls, in_width: int, vocab_size: int = 32000, context_length: int = 77) -> DecoderSpec:
        """The decoder of every released AIMv2 size: 1024 wide, 12 blocks, 8 heads.

        Example:
            >>> DecoderSpec.paper(in_width=2048).width
            1024
        """
        return decoder_spec(
            in_width, 1024, 12, 8, vocab_size=vocab_size, context_length=context_length
        )


def decoder_spec(
    in_width: int,
    width: int,
    depth: int,
    heads: int,
    *,
    vocab_size: int,
    context_length: int = 77,
    mlp_hidden: int | None = None,
    norm: str | Spec = "rms",
    ffn: str | Spec = "swiglu",
    attention: Spec | None = None,
    eps: float = 1e-5,
) -> DecoderSpec:
    """The causal decoder in one call; slots as in :func:`aimv2.encoder_spec`.

    Example:
        >>> d = decoder_spec(32, 64, 2, 4, vocab_size=100, ffn="gelu")
        >>> d.block.mlp.type, d.width
        ('gelu', 64)
    """
    block = block_spec(
        width,
        heads,
        mlp_hidden=mlp_hidden,
        norm=norm,
        ffn=ffn,
        attention=attention,
        eps=eps,
        owner="decoder_spec",
    )
    return DecoderSpec(
        in_width=in_width,
        block=block,
        depth=depth,
        vocab_size=vocab_size,
        context_length=context_length,
    )


@dataclass(frozen=True)
class PrefixSpec(Spec):
    """Encoder attention during pre-training.

    ``mode="prefix"``: per image sample M uniformly from ``low``…``high`` (None: N−1);
    query i sees key j iff j < M or j ≤ i. ``mode="bidirectional"``: no mask.

    Example:
        >>> PrefixSpec().low
        1
    """

    kind: ClassVar[str] = "prefix"
    configures_owner: ClassVar[bool] = True
    mode: str = "prefix"
    low: int = 1
    high: int | None = None

    def __post_init__(self) -> None:
        one_of("PrefixSpec", "mode", self.mode, ("prefix", "bidirectional"))
        positive_int("PrefixSpec", "low", self.low)
        if self.high is not None:
            positive_int("PrefixSpec", "high", self.high)
            require(
                self.high >= self.low,
                "PrefixSpec",
                "high",
                self.high,
                f"expected >= low={self.low}",
            )

    def bounds(self, num_patches: int) -> tuple[int, int]:
        """Inclusive (low, high) for an image of ``num_patches`` tokens.

        Example:
            >>> PrefixSpec().bounds(16)
            (1, 15)
        """
        high = num_patches - 1 if self.high is None else min(self.high, num_patches - 1)
        if num_patches < 2 or self.low > high:
            raise ValueError(
                f"prefix: cannot sample a prefix in {self.low}..{high} for {num_patches} patches"
            )
        return self.low, high


@dataclass(frozen=True)
class PixelObjectiveSpec(Spec):
    """Next-patch pixel regression.

    The decoder output at image position i predicts patch i + ``shift``. Targets are
    patches (row-major, values ordered (row, col, channel) inside a patch) of the
    normalized input; with ``patch_norm`` each is standardized by its own mean and
    variance (unbiased when ``unbiased``) + ``eps``. MSE over the patch values, then
    the mean over all counted target patches in the batch; with ``outside_prefix_only``
    only targets at positions ≥ M count. Total loss adds ``weight`` × this.

    Example:
        >>> PixelObjectiveSpec().weight
        0.4
    """

    kind: ClassVar[str] = "pixel_objective"
    configures_owner: ClassVar[bool] = True
    weight: float = 0.4
    patch_norm: bool = True
    eps: float = 1e-6
    unbiased: bool = True
    shift: int = 1
    outside_prefix_only: bool = True

    def __post_init__(self) -> None:
        require(self.weight >= 0, "PixelObjectiveSpec", "weight", self.weight, "expected >= 0")
        require(self.eps > 0, "PixelObjectiveSpec", "eps", self.eps, "expected > 0")
        require(self.shift == 1, "PixelObjectiveSpec", "shift", self.shift, "only 1 is supported")


@dataclass(frozen=True)
class TextObjectiveSpec(Spec):
    """Next-token cross-entropy over the caption; ``pad_id`` positions are ignored and the
    loss is the mean over the batch's non-pad target tokens (0 when there are none).

    Example:
        >>> TextObjectiveSpec().weight
        1.0
    """

    kind: ClassVar[str] = "text_objective"
    configures_owner: ClassVar[bool] = True
    weight: float = 1.0
    pad_id: int = 0

    def __post_init__(self) -> None:
        require(self.weight >= 0, "TextObjectiveSpec", "weight", self.weight, "expected >= 0")
        require(
            isinstance(self.pad_id, int) and self.pad_id >= 0,
            "TextObjectiveSpec",
            "pad_id",
            self.pad_id,
            "expected a non-negative token id",
        )


@dataclass(frozen=True)
class ModelSpec(Spec):
    """A whole model: the encoder, and for pre-training the decoder and objectives.

    With ``decoder=None`` it describes an encoder alone (what a released checkpoint
    holds). An objective with weight 0 builds no head.

    Example:
        >>> import aimv2
        >>> aimv2.presets.get("aimv2-large-patch14-224").encoder.width
        1024
    """

    kind: ClassVar[str] = "model"
    encoder: EncoderSpec
    decoder: DecoderSpec | None = None
    prefix: PrefixSpec = field(default_factory=PrefixSpec)
    pixel: PixelObjectiveSpec = field(default_factory=PixelObjectiveSpec)
    text: TextObjectiveSpec = field(default_factory=TextObjectiveSpec)
    init: InitSpec = field(default_factory=InitSpec)
    name: str = ""

    def __post_init__(self) -> None:
        if self.decoder is None:
            return
        require(
            self.decoder.in_width == self.encoder.width,
            "ModelSpec",
            "decoder.in_width",
            self.decoder.in_width,
            f"expected the encoder width {self.encoder.width}",
        )
        require(
            self.pixel.weight > 0 or self.text.weight > 0,
            "ModelSpec",
            "pixel.weight",
            self.pixel.weight,
            "at least one of pixel.weight and text.weight must be > 0",
        )
        require(
            not (self.pixel.weight > 0 and self.prefix.mode == "bidirectional"),
            "ModelSpec",
            "prefix.mode",
            self.prefix.mode,
            "a bidirectional encoder sees the patches it must predict; use it with "
            "pixel.weight=0 (caption-only) or keep mode='prefix'",
        )
        require(
            self.text.pad_id < self.decoder.vocab_size,
            "ModelSpec",
            "text.pad_id",
            self.text.pad_id,
            f"expected < decoder.vocab_size={self.decoder.vocab_size}",
        )
        if self.pixel.weight > 0:
            require(
                self.encoder.native or (self.encoder.num_patches or 0) >= 2,
                "ModelSpec",
                "encoder.image_size",
                self.encoder.image_size,
                "next-patch prediction needs at least 2 patches",
            )

    @property
    def has_pixel_head(self) -> bool:
        """True when the pixel objective is on (weight > 0) and there is a decoder."""
        return self.decoder is not None and self.pixel.weight > 0

    @property
    def has_text_head(self) -> bool:
        """True when the text objective is on (weight > 0) and there is a decoder."""
        return self.decoder is not None and self.text.weight > 0

    def parameters(self) -> dict[str, ParamInfo]:
        """Without a decoder the encoder's bare (official) names; with one, ``encoder.*``,
        ``decoder.*``, ``pixel_head.weight`` and ``text_head.weight`` (heads only for
        objectives with weight > 0).

        Example:
            >>> import aimv2
            >>> p = aimv2.presets.get("aimv2-test-tiny").parameters()
            >>> p["pixel_head.weight"].shape, p["pixel_head.weight"].role
            ((48, 32), 'head')
        """
        if self.decoder is None:
            return self.encoder.parameters()
        d = self.decoder.width
        heads: dict[str, ParamInfo] = {}
        if self.has_pixel_head:
            heads.update(
                linear_params("pixel_head", self.encoder.patchifier.patch_dim, d, False, "head")
            )
        if self.has_text_head:
            heads.update(linear_params("text_head", self.decoder.vocab_size, d, False, "head"))
        return nested(("encoder.", self.encoder), ("decoder.", self.decoder), ("", heads))
