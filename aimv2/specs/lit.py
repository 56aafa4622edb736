"""The LiT two-tower model (AIMV2.md §5b): a causal text encoder, the AIMv2 image encoder
with its attention-pooling head, projections into one embedding space and a learned
logit scale.

The text tower reuses the image trunk's components (a :class:`~aimv2.specs.TrunkSpec`
of pre-norm blocks with RMSNorm, SwiGLU and no biases) under a causal mask; it embeds
tokens, adds learned positions, and pools the features of the first end-of-text token.
Canonical names are the official ``ml-aim`` names (``image_encoder.*``,
``text_encoder.*``, ``image_projector.weight``, ``text_projector.weight``,
``log_logit_scale``).

Example:
    >>> from aimv2.specs import text_encoder_spec
    >>> t = text_encoder_spec(width=768, depth=12, heads=6, vocab_size=49408)
    >>> t.trunk.block.mlp.hidden, t.eos_id, t.context_length
    (2048, 49407, 77)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .base import ParamInfo, Spec, check_slot, linear_params, nested, positive_int, require
from .encoder import EncoderSpec
from .layers import AttentionPoolSpec, TrunkSpec, block_spec

__all__ = ["TextEncoderSpec", "LiTSpec", "text_encoder_spec", "lit_spec"]


@dataclass(frozen=True)
class TextEncoderSpec(Spec):
    """AIMv2's text tower: token embedding, learned positions, a trunk of pre-norm blocks
    (causal attention unless ``causal=False``) with its final norm, and pooling of the
    features at the first ``eos_id`` of each caption (``argmax(ids == eos_id)``).

    Slot: ``trunk`` (role ``trunk``). Call: ``(tokens (B, T) int, T ≤ context_length,
    every row holding an eos) -> (B, width)``; ``return_features=True`` also gives the
    normalized features (B, T, width).

    Example:
        >>> t = text_encoder_spec(width=32, depth=1, heads=2, vocab_size=10, eos_id=2,
        ...                       context_length=8)
        >>> sorted(t.parameters())[-2:]
        ['trunk.blocks.0.norm_2.weight', 'trunk.post_trunk_norm.weight']
    """

    kind: ClassVar[str] = "text_encoder"
    trunk: Spec
    vocab_size: int
    eos_id: int
    context_length: int = 77
    causal: bool = True

    def __post_init__(self) -> None:
        check_slot("TextEncoderSpec", "trunk", self.trunk, "trunk")
        positive_int("TextEncoderSpec", "vocab_size", self.vocab_size)
        positive_int("TextEncoderSpec", "context_length", self.context_length)
        require(
            isinstance(self.eos_id, int)
            and not isinstance(self.eos_id, bool)
            and 0 <= self.eos_id < self.vocab_size,
            "TextEncoderSpec",
            "eos_id",
            self.eos_id,
            f"expected a token id in 0..{self.vocab_size - 1} (vocab_size - 1)",
        )
        require(isinstance(self.causal, bool), "TextEncoderSpec", "causal", self.causal, "a bool")

    @property
    def width(self) -> int:
        """Feature width of the tower."""
        return self.trunk.width

    @property
    def depth(self) -> int:
        """Number of trunk blocks."""
        return self.trunk.depth

    def parameters(self) -> dict[str, ParamInfo]:
        """``preprocessor.text_embedding.weight`` (vocab, width),
        ``preprocessor.positional_embedding`` (context, width) and ``trunk.*``.

        Example:
            >>> t = text_encoder_spec(width=8, depth=1, heads=2, vocab_size=5, context_length=3)
            >>> t.parameters()["preprocessor.positional_embedding"].shape
            (3, 8)
        """
        d = self.width
        own = {
            "preprocessor.text_embedding.weight": ParamInfo((self.vocab_size, d), "embed"),
            "preprocessor.positional_embedding": ParamInfo((self.context_length, d), "text_pos"),
        }
        return nested(("", own), ("trunk.", self.trunk))


@dataclass(frozen=True)
class LiTSpec(Spec):
    """The two-tower model: ``image_encoder`` (an :class:`EncoderSpec` with a pooling
    ``head``) and ``text_encoder`` projected (no bias) into ``embed_dim``, both embeddings
    L2-normalized; ``logits_per_text = exp(clamp(log_logit_scale, 0, log max_logit_scale))
    · text @ imageᵀ``, ``logits_per_image`` its transpose. ``log_logit_scale`` starts at
    ``log(1 / init_temperature)``.

    Call: ``(images (B, C, H, W), tokens (B', T))`` → dict with ``logits_per_image``
    (B, B'), ``logits_per_text``, ``image_embeds``, ``text_embeds``, ``logit_scale``
    (and ``loss``, the symmetric contrastive loss, with ``return_loss=True`` when B = B').

    Example:
        >>> import aimv2
        >>> lit = aimv2.presets.get("aimv2-large-patch14-224-lit")
        >>> lit.parameters()["image_projector.weight"].shape, lit.text_encoder.width
        ((768, 1024), 768)
    """

    kind: ClassVar[str] = "lit"
    image_encoder: EncoderSpec
    text_encoder: TextEncoderSpec
    embed_dim: int
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    name: str = ""

    def __post_init__(self) -> None:
        require(
            isinstance(self.image_encoder, EncoderSpec),
            "LiTSpec",
            "image_encoder",
            type(self.image_encoder).__name__,
            "expected an EncoderSpec",
        )
        require(
            self.image_encoder.head is not None,
            "LiTSpec",
            "image_encoder.head",
            None,
            "the image tower needs a pooling head (e.g. AttentionPoolSpec) to embed images",
        )
        require(
            isinstance(self.text_encoder, TextEncoderSpec),
            "LiTSpec",
            "text_encoder",
            type(self.text_encoder).__name__,
            "expected a TextEncoderSpec",
        )
        positive_int("LiTSpec", "embed_dim", self.embed_dim)
        for name in ("init_temperature", "max_logit_scale"):
            value = getattr(self, name)
            require(
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value > 0,
                "LiTSpec",
                name,
                value,
                "expected a finite number > 0",
            )
        require(
            self.max_logit_scale >= 1.0,
            "LiTSpec",
            "max_logit_scale",
            self.max_logit_scale,
            "expected >= 1 (the log scale is clamped to [0, log max_logit_scale])",
        )

    @property
    def encoder(self) -> EncoderSpec:
        """The image encoder (what tools that take an encoder use: probes, ``extract``)."""
        return self.image_encoder

    @property
    def image_width(self) -> int:
        """Width of the pooled image features (the head's output)."""
        return self.image_encoder.head.out_dim

    @property
    def max_log_logit_scale(self) -> float:
        """The clamp of ``log_logit_scale``: ``log(max_logit_scale)``."""
        return math.log(self.max_logit_scale)

    def parameters(self) -> dict[str, ParamInfo]:
        """``image_encoder.*``, ``text_encoder.*``, ``image_projector.weight``,
        ``text_projector.weight`` and the scalar ``log_logit_scale``.

        Example:
            >>> import aimv2
            >>> p = aimv2.presets.get("aimv2-lit-test-tiny").parameters()
            >>> p["log_logit_scale"].shape, round(p["log_logit_scale"].fill, 4)
            ((), 2.6593)
        """
        e = self.embed_dim
        own = {
            **linear_params("image_projector", e, self.image_width, False),
            **linear_params("text_projector", e, self.text_encoder.width, False),
            "log_logit_scale": ParamInfo((), "scale", fill=math.log(1.0 / self.init_temperature)),
        }
        return nested(
            ("image_encoder.", self.image_encoder), ("text_encoder.", self.text_encoder), ("", own)
        )


def text_encoder_spec(
    width: int,
    depth: int,
    heads: int,
    vocab_size: int,
    *,
    eos_id: int | None = None,
    context_length: int = 77,
    mlp_hidden: int | None = None,
    norm: str | Spec = "rms",
    ffn: str | Spec = "swiglu",
    attention: Spec | None = None,
    eps: float = 1e-5,
    causal: bool = True,
) -> TextEncoderSpec:
    """The text tower in one call; ``eos_id=None`` is AIMv2's convention ``vocab_size − 1``
    (the CLIP tokenizer's ``<|endoftext|>``), ``mlp_hidden=None`` the SwiGLU rule. Slots as
    in :func:`aimv2.encoder_spec`.

    Example:
        >>> text_encoder_spec(64, 2, 2, vocab_size=100, eos_id=2, ffn="gelu").trunk.block.mlp.type
        'gelu'
    """
    block = block_spec(
        width,
        heads,
        mlp_hidden=mlp_hidden,
        norm=norm,
        ffn=ffn,
        attention=attention,
        eps=eps,
        owner="text_encoder_spec",
    )
    return TextEncoderSpec(
        trunk=TrunkSpec(block=block, depth=depth),
        vocab_size=vocab_size,
        eos_id=vocab_size - 1 if eos_id is None else eos_id,
        context_length=context_length,
        causal=causal,
    )


def lit_spec(
    image_encoder: EncoderSpec,
    text_encoder: TextEncoderSpec,
    embed_dim: int,
    *,
    head_heads: int | None = None,
    init_temperature: float = 0.07,
    max_logit_scale: float = 100.0,
    name: str = "",
) -> LiTSpec:
    """A LiT model from its towers; an image encoder without a pooling head gets AIMv2's
    (learned query, k/v without bias, ``head_heads`` heads — default 8 when the width
    allows, linear out with bias).

    Example:
        >>> import aimv2
        >>> enc = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8)
        >>> txt = text_encoder_spec(32, 1, 2, vocab_size=16, context_length=8)
        >>> lit_spec(enc, txt, 24).image_encoder.head.heads
        8
    """
    if image_encoder.head is None:
        w = image_encoder.width
        heads = head_heads or (8 if w % 8 == 0 else image_encoder.trunk.block.attn.heads)
        image_encoder = image_encoder.replace(head=AttentionPoolSpec(width=w, heads=heads))
    return LiTSpec(
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        embed_dim=embed_dim,
        init_temperature=init_temperature,
        max_logit_scale=max_logit_scale,
        name=name,
    )
