"""The vision encoder spec: preprocessing constants, the encoder composite and
:func:`encoder_spec`, the common encoder in one call.

Example:
    >>> from aimv2.specs import encoder_spec
    >>> s = encoder_spec(width=1024, depth=24, heads=8)
    >>> s.trunk.block.mlp.hidden, s.num_patches
    (2816, 256)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import ClassVar

from .base import ParamInfo, Spec, SpecError, check_slot, nested, one_of, positive_int, require
from .layers import AttentionPoolSpec, NormSpec, PatchEmbedSpec, PosEmbedSpec, TrunkSpec, block_spec

__all__ = [
    "WARN_INPUT",
    "MAX_INPUT",
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PreprocessSpec",
    "EncoderSpec",
    "encoder_spec",
]

# The input range of an encoder: normalized pixels are O(1) (CLIP or ImageNet statistics
# map [0, 1] into about [-2.2, 2.7]). Past WARN_INPUT they look unnormalized; past
# MAX_INPUT float32 attention scores overflow (|x|² · width).
WARN_INPUT = 50.0
MAX_INPUT = 1e4

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec(Spec):
    """How raw images become encoder input: resize the shorter side (bicubic) to
    ``resize`` (None: the encoder's image size; 0: no resize), center-crop to the
    image size, scale to [0, 1], then ``(x - mean) / std`` per channel.

    Example:
        >>> PreprocessSpec().mean[0]
        0.48145466
    """

    kind: ClassVar[str] = "preprocess"
    configures_owner: ClassVar[bool] = True
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    resize: int | None = None
    crop: bool = True
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        require(
            len(self.mean) == len(self.std),
            "PreprocessSpec",
            "std",
            self.std,
            f"expected {len(self.mean)} values like mean",
        )
        require(all(s > 0 for s in self.std), "PreprocessSpec", "std", self.std, "expected > 0")
        one_of(
            "PreprocessSpec",
            "interpolation",
            self.interpolation,
            ("bicubic", "bilinear", "nearest"),
        )


@dataclass(frozen=True)
class EncoderSpec(Spec):
    """The AIMv2 vision encoder: patchifier, positions, trunk, optional pooling head.

    ``image_size`` is (H, W) for fixed-size encoders, or None for a native-resolution
    encoder that takes any H, W divisible by the patch size (sin-cos positions).
    Slots: ``patchifier`` (role ``patch_embed``), ``pos_embed`` (``pos_embed``),
    ``trunk`` (``trunk``), ``head`` (``pool``, optional).
    Call: ``(images (B, C, H, W), prefix_len=None, return_blocks=False)``.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=64, depth=2, heads=2, patch_size=4, image_size=16)
        >>> spec.num_patches
        16
    """

    kind: ClassVar[str] = "encoder"
    patchifier: Spec
    pos_embed: Spec
    trunk: Spec
    image_size: tuple[int, int] | None = None
    head: Spec | None = None
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)

    def __post_init__(self) -> None:
        check_slot("EncoderSpec", "patchifier", self.patchifier, "patch_embed")
        check_slot("EncoderSpec", "pos_embed", self.pos_embed, "pos_embed")
        check_slot("EncoderSpec", "trunk", self.trunk, "trunk")
        if self.image_size is not None:
            size = self.image_size
            if isinstance(size, int):
                size = (size, size)
            object.__setattr__(self, "image_size", tuple(size))
            require(
                len(self.image_size) == 2
                and all(isinstance(s, int) and s > 0 for s in self.image_size),
                "EncoderSpec",
                "image_size",
                self.image_size,
                "expected (height, width) of positive integers, or None for native resolution",
            )
            p = self.patchifier.patch_size
            require(
                all(s % p == 0 for s in self.image_size),
                "EncoderSpec",
                "image_size",
                self.image_size,
                f"must be divisible by patch_size={p}",
            )
        w = self.patchifier.width
        for name, part in (("pos_embed", self.pos_embed), ("trunk", self.trunk)):
            require(
                part.width == w,
                "EncoderSpec",
                f"{name}.width",
                part.width,
                f"expected the patch width {w}",
            )
        if self.head is not None:
            check_slot("EncoderSpec", "head", self.head, "pool")
            require(
                self.head.width == w,
                "EncoderSpec",
                "head.width",
                self.head.width,
                f"expected the encoder width {w}",
            )
        fixed = getattr(self.pos_embed, "fixed_grid", None)
        if fixed is not None:
            require(
                self.image_size is not None and tuple(fixed) == self.grid,
                "EncoderSpec",
                "pos_embed.grid",
                fixed,
                f"a learned table must match the patch grid {self.grid} of image_size "
                f"{self.image_size}; native resolution needs sin-cos or no positions",
            )
        require(
            len(self.preprocess.mean) == self.patchifier.in_channels,
            "EncoderSpec",
            "preprocess.mean",
            self.preprocess.mean,
            f"expected {self.patchifier.in_channels} values (one per input channel)",
        )

    @property
    def width(self) -> int:
        """Feature width D."""
        return self.patchifier.width

    @property
    def patch_size(self) -> int:
        """Patch side in pixels."""
        return self.patchifier.patch_size

    @property
    def in_channels(self) -> int:
        """Input channels C."""
        return self.patchifier.in_channels

    @property
    def depth(self) -> int:
        """Number of trunk blocks."""
        return self.trunk.depth

    @property
    def native(self) -> bool:
        """True for a native-resolution encoder (any H, W divisible by the patch)."""
        return self.image_size is None

    @property
    def grid(self) -> tuple[int, int] | None:
        """(rows, cols) of patches for a fixed-size encoder, else None."""
        if self.image_size is None:
            return None
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def num_patches(self) -> int | None:
        """Tokens per image for a fixed-size encoder, else None."""
        g = self.grid
        return None if g is None else g[0] * g[1]

    def parameters(self) -> dict[str, ParamInfo]:
        """Official names: ``preprocessor.patchifier.*``, ``preprocessor.pos_embed``,
        ``trunk.*`` and ``head.*``.

        Example:
            >>> import aimv2
            >>> s = aimv2.encoder_spec(width=64, depth=1, heads=2, patch_size=4, image_size=8)
            >>> s.parameters()["trunk.blocks.0.attn.qkv.weight"].shape
            (192, 64)
        """
        parts: list[tuple[str, Spec]] = [
            ("preprocessor.patchifier.", self.patchifier),
            ("preprocessor.", self.pos_embed),
            ("trunk.", self.trunk),
        ]
        if self.head is not None:
            parts.append(("head.", self.head))
        return nested(*parts)

    def check_images(
        self,
        shape: tuple[int, ...],
        finite: bool = True,
        dtype_kind: str = "f",
        max_abs: float | None = None,
    ) -> tuple[int, int]:
        """Validate an image batch shape (B, C, H, W) and, given ``max_abs`` (the largest
        absolute value), its range; return its patch grid (rows, cols).

        Encoder inputs are normalized pixels, of order 1 (:func:`aimv2.preprocess`): values
        beyond :data:`MAX_INPUT` are refused (they overflow float32 attention scores or
        drown every other input), and values beyond :data:`WARN_INPUT` warn (they look like
        unnormalized 0–255 pixels).

        Example:
            >>> import aimv2
            >>> aimv2.encoder_spec(width=64, depth=1, heads=2, patch_size=4, image_size=16
            ...     ).check_images((2, 3, 16, 16))
            (4, 4)
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4:
            raise ValueError(
                f"images: expected a 4-D batch (B, C, H, W), got shape {shape} ({len(shape)}-D)"
            )
        if dtype_kind != "f":
            raise TypeError(
                f"images: expected a floating-point array (normalized pixels), got dtype kind "
                f"{dtype_kind!r}; convert with aimv2.preprocess or cast to float32"
            )
        b, c, h, w = shape
        if b < 1:
            raise ValueError(f"images: expected at least one image, got shape {shape}")
        if c != self.in_channels:
            raise ValueError(
                f"images: expected {self.in_channels} channels (B, C, H, W), got shape {shape}"
            )
        p = self.patch_size
        if h % p or w % p or h == 0 or w == 0:
            raise ValueError(
                f"images: height and width must be positive multiples of patch_size={p}, "
                f"got {h}x{w}"
            )
        if self.image_size is not None and (h, w) != self.image_size:
            raise ValueError(
                f"images: this encoder takes {self.image_size[0]}x{self.image_size[1]} images "
                f"(fixed-size learned positions), got {h}x{w}"
            )
        if not finite:
            raise ValueError("images: contains NaN or infinite values")
        if max_abs is not None and max_abs > MAX_INPUT:
            raise ValueError(
                f"images: values reach {max_abs:.3g}; encoder inputs are normalized pixels of "
                f"order 1 (aimv2.preprocess), and beyond {MAX_INPUT:g} float32 overflows"
            )
        if max_abs is not None and max_abs > WARN_INPUT:
            warnings.warn(
                f"images: values reach {max_abs:.3g}; encoder inputs are normalized pixels of "
                f"order 1 — are these unnormalized 0-255 pixels? (aimv2.preprocess)",
                stacklevel=3,
            )
        return (h // p, w // p)


def encoder_spec(
    width: int,
    depth: int,
    heads: int,
    patch_size: int = 14,
    image_size: int | tuple[int, int] | None = 224,
    mlp_hidden: int | None = None,
    pos_embed: str | Spec | None = None,
    norm: str | Spec = "rms",
    ffn: str | Spec = "swiglu",
    *,
    attention: Spec | None = None,
    in_channels: int = 3,
    eps: float = 1e-5,
    head: bool | Spec = False,
    preprocess: PreprocessSpec | None = None,
) -> EncoderSpec:
    """The common encoder in one call.

    ``image_size=None`` means native resolution (any H, W divisible by the patch,
    sin-cos positions). ``mlp_hidden=None`` uses AIMv2's SwiGLU rule
    (``256·ceil(int(8D/3)/256)``) or 4·D for GELU. ``pos_embed`` defaults to
    ``"learned"`` for a fixed size and ``"sincos"`` for native resolution.
    ``head=True`` adds the 8-head attention-pooling head. ``preprocess`` defaults to the
    CLIP mean/std for 3 channels, else mean = std = 0.5 per channel.

    Slots take a registered component instead of a name: ``ffn`` (role ``ffn``),
    ``attention`` (role ``attention``), ``norm`` (role ``norm``), ``pos_embed`` (role
    ``pos_embed``) and ``head`` (role ``pool``), each of the encoder's width.

    Example:
        >>> s = encoder_spec(width=1024, depth=24, heads=8)
        >>> s.trunk.block.mlp.hidden, s.num_patches
        (2816, 256)
        >>> from aimv2.specs import FeedForwardSpec
        >>> encoder_spec(64, 1, 2, ffn=FeedForwardSpec(64, 96, type="gelu")).trunk.block.mlp.hidden
        96
    """
    for name, value in (("width", width), ("depth", depth), ("heads", heads)):
        positive_int("encoder_spec", name, value)
    positive_int("encoder_spec", "patch_size", patch_size)
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        positive_int("encoder_spec", "image_size", image_size)
        image_size = (image_size, image_size)
    if image_size is not None:
        image_size = tuple(image_size) if isinstance(image_size, (tuple, list)) else image_size
        require(
            isinstance(image_size, tuple)
            and len(image_size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_size),
            "encoder_spec",
            "image_size",
            image_size,
            "expected (height, width) of positive integers, an integer, or None (native)",
        )
    if image_size is not None and any(s % patch_size for s in image_size):
        raise SpecError(
            f"encoder_spec image_size={image_size!r}: must be divisible by patch_size={patch_size}"
        )
    grid = (
        None if image_size is None else (image_size[0] // patch_size, image_size[1] // patch_size)
    )
    if isinstance(pos_embed, Spec):
        check_slot("encoder_spec", "pos_embed", pos_embed, "pos_embed", width)
        pos_spec = pos_embed
    else:
        if pos_embed is None:
            pos_embed = "sincos" if image_size is None else "learned"
        if pos_embed == "learned" and image_size is None:
            raise SpecError(
                "encoder_spec pos_embed='learned': a learned table needs a fixed image_size; "
                "native resolution (image_size=None) uses 'sincos' or 'none'"
            )
        pos_spec = PosEmbedSpec(
            width=width, type=pos_embed, grid=grid if pos_embed == "learned" else None
        )
    block = block_spec(
        width,
        heads,
        mlp_hidden=mlp_hidden,
        norm=norm,
        ffn=ffn,
        attention=attention,
        eps=eps,
        owner="encoder_spec",
    )
    norm_spec = block.norm
    if head is True:
        head = AttentionPoolSpec(width=width, heads=heads if width % 8 else 8)
    elif isinstance(head, Spec):
        check_slot("encoder_spec", "head", head, "pool", width)
    return EncoderSpec(
        patchifier=PatchEmbedSpec(
            patch_size=patch_size,
            in_channels=in_channels,
            width=width,
            norm=None if norm_spec == NormSpec(width=width) else norm_spec,
        ),
        pos_embed=pos_spec,
        trunk=TrunkSpec(block=block, depth=depth),
        image_size=image_size,
        head=head or None,
        preprocess=preprocess or _default_preprocess(in_channels),
    )


def _default_preprocess(channels: int) -> PreprocessSpec:
    # CLIP constants for RGB (the released processors); others map [0, 1] to [-1, 1].
    if channels == 3:
        return PreprocessSpec()
    return PreprocessSpec(mean=(0.5,) * channels, std=(0.5,) * channels)
