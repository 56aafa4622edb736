"""Architecture specs: frozen dataclasses that describe a model and nothing else.

Every layer kind and every composite has one spec class. Specs carry no framework
types and no hidden defaults: eps, biases, mask semantics, preprocessing constants
and initialization all live here, so the PyTorch, MLX and NumPy realizations read
the same numbers. A spec is validated when it is constructed and round-trips
through plain dicts (``to_dict`` / ``from_dict``), so a checkpoint can carry it.

Example:
    >>> from aimv2 import specs
    >>> norm = specs.NormSpec(width=64, type="rms", eps=1e-5)
    >>> specs.from_dict(norm.to_dict()) == norm
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "SpecError",
    "Spec",
    "NormSpec",
    "PatchEmbedSpec",
    "PosEmbedSpec",
    "AttentionSpec",
    "FeedForwardSpec",
    "BlockSpec",
    "TrunkSpec",
    "AttentionPoolSpec",
    "PreprocessSpec",
    "ProbeSpec",
    "InitSpec",
    "EncoderSpec",
    "DecoderSpec",
    "PrefixSpec",
    "PixelObjectiveSpec",
    "TextObjectiveSpec",
    "ModelSpec",
    "KINDS",
    "CONFIG_KINDS",
    "from_dict",
    "from_json",
    "swiglu_hidden",
    "encoder_spec",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SpecError(ValueError):
    """A spec field holds a value the architecture cannot realize."""


def _require(ok: bool, spec: str, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise SpecError(f"{spec}.{name}={value!r}: {expected}")


def _positive_int(spec: str, name: str, value: Any) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        spec,
        name,
        value,
        "expected a positive integer",
    )


def _one_of(spec: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    _require(value in choices, spec, name, value, f"expected one of {choices}")


def swiglu_hidden(width: int, multiple_of: int = 256) -> int:
    """AIMv2's SwiGLU hidden size: ``int(8 * width / 3)`` rounded up to ``multiple_of``.

    Example:
        >>> swiglu_hidden(1024)
        2816
    """
    return multiple_of * math.ceil(int(8 * width / 3) / multiple_of)


KINDS: dict[str, type[Spec]] = {}
# Kinds that configure a realized kind rather than being realized themselves: they are
# read by the ``encoder`` (preprocess) and ``model`` (prefix, objectives, init) realizations.
CONFIG_KINDS = frozenset({"preprocess", "init", "prefix", "pixel_objective", "text_objective"})


@dataclass(frozen=True)
class Spec:
    """Base class of every spec: a ``kind`` tag, validation and dict/JSON round-trip."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            KINDS[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-ready) with a ``kind`` key at every level.

        Example:
            >>> AttentionSpec(width=64, heads=2).to_dict()["kind"]
            'attention'
        """
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict`.

        Example:
            >>> NormSpec(width=8).to_json(indent=None)[:16]
            '{"kind": "norm",'
        """
        return json.dumps(self.to_dict(), indent=indent)

    def replace(self, **changes: Any) -> Spec:
        """A copy with some fields changed (validated again).

        Example:
            >>> NormSpec(width=8).replace(type="layer").type
            'layer'
        """
        return dataclasses.replace(self, **changes)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Spec):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(value: Any) -> Any:
    if isinstance(value, dict) and "kind" in value:
        return from_dict(value)
    if isinstance(value, list):
        return tuple(_from_plain(v) for v in value)
    return value


def from_dict(data: dict[str, Any]) -> Spec:
    """Rebuild a spec from :meth:`Spec.to_dict` output, dispatching on ``kind``.

    Example:
        >>> from_dict({"kind": "norm", "width": 8, "type": "rms", "eps": 1e-5})
        NormSpec(width=8, type='rms', eps=1e-05)
    """
    if not isinstance(data, dict) or "kind" not in data:
        raise SpecError(f"spec dict: expected a dict with a 'kind' key, got {data!r:.200}")
    kind = data["kind"]
    if kind not in KINDS:
        raise SpecError(f"spec dict kind={kind!r}: expected one of {sorted(KINDS)}")
    cls = KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"kind"})
    if unknown:
        raise SpecError(f"{cls.__name__}: unknown fields {unknown}")
    return cls(**{k: _from_plain(v) for k, v in data.items() if k != "kind"})


def from_json(text: str) -> Spec:
    """Rebuild a spec from :meth:`Spec.to_json` text.

    Example:
        >>> from_json(NormSpec(width=8).to_json()) == NormSpec(width=8)
        True
    """
    return from_dict(json.loads(text))


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class NormSpec(Spec):
    """RMSNorm (weight only) or LayerNorm (weight and bias) over the last axis.

    Example:
        >>> NormSpec(width=1024).eps
        1e-05
    """

    kind: ClassVar[str] = "norm"
    width: int
    type: str = "rms"
    eps: float = 1e-5

    def __post_init__(self) -> None:
        _positive_int("NormSpec", "width", self.width)
        _one_of("NormSpec", "type", self.type, ("rms", "layer"))
        _require(
            isinstance(self.eps, (int, float)) and self.eps > 0,
            "NormSpec",
            "eps",
            self.eps,
            "expected a positive float",
        )


@dataclass(frozen=True)
class PatchEmbedSpec(Spec):
    """Conv2d(in_channels -> width, kernel = stride = patch_size), flatten row-major, norm.

    Call: ``(images (B, C, H, W)) -> (B, N, width)`` with N = (H/p)·(W/p).

    Example:
        >>> PatchEmbedSpec(patch_size=14, in_channels=3, width=1024).norm_spec.type
        'rms'
    """

    kind: ClassVar[str] = "patch_embed"
    patch_size: int
    in_channels: int
    width: int
    bias: bool = True
    norm: NormSpec | None = None

    def __post_init__(self) -> None:
        _positive_int("PatchEmbedSpec", "patch_size", self.patch_size)
        _positive_int("PatchEmbedSpec", "in_channels", self.in_channels)
        _positive_int("PatchEmbedSpec", "width", self.width)
        _require(
            self.norm_spec.width == self.width,
            "PatchEmbedSpec",
            "norm.width",
            self.norm_spec.width,
            f"expected the patch width {self.width}",
        )

    @property
    def norm_spec(self) -> NormSpec:
        """The norm after the projection (``norm``, or RMSNorm of the width when None)."""
        return self.norm if self.norm is not None else NormSpec(width=self.width)

    @property
    def patch_dim(self) -> int:
        """Values per patch: patch_size² · in_channels."""
        return self.patch_size * self.patch_size * self.in_channels


@dataclass(frozen=True)
class PosEmbedSpec(Spec):
    """Position embedding added to row-major patch tokens.

    ``learned``: a table (1, N, width) for a fixed ``grid`` (rows, cols).
    ``sincos``: parameter-free 2D sin-cos for any grid, channels
    [sin(col·ω), cos(col·ω), sin(row·ω), cos(row·ω)] with ω_k = temperature^(−k/(width/4)).
    ``none``: nothing is added.

    Example:
        >>> PosEmbedSpec(width=64, type="learned", grid=(4, 4)).num_positions
        16
    """

    kind: ClassVar[str] = "pos_embed"
    width: int
    type: str = "learned"
    grid: tuple[int, int] | None = None
    temperature: float = 10000.0

    def __post_init__(self) -> None:
        _positive_int("PosEmbedSpec", "width", self.width)
        _one_of("PosEmbedSpec", "type", self.type, ("learned", "sincos", "none"))
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(self.grid))
            _require(
                len(self.grid) == 2 and all(isinstance(g, int) and g > 0 for g in self.grid),
                "PosEmbedSpec",
                "grid",
                self.grid,
                "expected (rows, cols) of positive integers",
            )
        if self.type == "learned":
            _require(
                self.grid is not None,
                "PosEmbedSpec",
                "grid",
                self.grid,
                "a learned position table needs a fixed grid (rows, cols)",
            )
        if self.type == "sincos":
            _require(
                self.width % 4 == 0,
                "PosEmbedSpec",
                "width",
                self.width,
                "2D sin-cos positions need a width divisible by 4",
            )

    @property
    def num_positions(self) -> int | None:
        """Number of positions of a fixed grid, else None."""
        return None if self.grid is None else self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class AttentionSpec(Spec):
    """Multi-head self-attention with a fused qkv projection.

    qkv rows [0:D] are q, [D:2D] k, [2D:3D] v; scale head_dim^-0.5.
    Call: ``(x (B, N, D), mask=None)`` where mask is None (bidirectional),
    ``"causal"``, or a boolean (B, 1, N, N) array with True = may attend.

    Example:
        >>> AttentionSpec(width=1024, heads=8).head_dim
        128
    """

    kind: ClassVar[str] = "attention"
    width: int
    heads: int
    qkv_bias: bool = False
    proj_bias: bool = False

    def __post_init__(self) -> None:
        _positive_int("AttentionSpec", "width", self.width)
        _positive_int("AttentionSpec", "heads", self.heads)
        _require(
            self.width % self.heads == 0,
            "AttentionSpec",
            "width",
            self.width,
            f"must be divisible by heads={self.heads}",
        )

    @property
    def head_dim(self) -> int:
        """Channels per head."""
        return self.width // self.heads


@dataclass(frozen=True)
class FeedForwardSpec(Spec):
    """SwiGLU ``fc2(silu(fc1 x) * fc3 x)`` or GELU MLP ``fc2(gelu(fc1 x))`` (exact erf GELU).

    Example:
        >>> FeedForwardSpec(width=1024, hidden=2816).type
        'swiglu'
    """

    kind: ClassVar[str] = "ffn"
    width: int
    hidden: int
    type: str = "swiglu"
    bias: bool = False

    def __post_init__(self) -> None:
        _positive_int("FeedForwardSpec", "width", self.width)
        _positive_int("FeedForwardSpec", "hidden", self.hidden)
        _one_of("FeedForwardSpec", "type", self.type, ("swiglu", "gelu"))


@dataclass(frozen=True)
class BlockSpec(Spec):
    """Pre-norm block: ``x += attn(norm_1 x); x += mlp(norm_2 x)``.

    Example:
        >>> b = BlockSpec(norm=NormSpec(64), attn=AttentionSpec(64, 2), mlp=FeedForwardSpec(64, 128))
        >>> b.width
        64
    """

    kind: ClassVar[str] = "block"
    norm: NormSpec
    attn: AttentionSpec
    mlp: FeedForwardSpec

    def __post_init__(self) -> None:
        for name in ("attn", "mlp"):
            _require(
                getattr(self, name).width == self.norm.width,
                "BlockSpec",
                f"{name}.width",
                getattr(self, name).width,
                f"expected the block width {self.norm.width} (norm.width)",
            )

    @property
    def width(self) -> int:
        """Residual stream width."""
        return self.norm.width


@dataclass(frozen=True)
class TrunkSpec(Spec):
    """``depth`` identical blocks then an optional final norm (``post_trunk_norm``).

    Call: ``(x (B, N, D), mask=None, return_blocks=False)``.

    Example:
        >>> blk = BlockSpec(NormSpec(64), AttentionSpec(64, 2), FeedForwardSpec(64, 128))
        >>> TrunkSpec(block=blk, depth=2).final_norm_spec.width
        64
    """

    kind: ClassVar[str] = "trunk"
    block: BlockSpec
    depth: int
    final_norm: NormSpec | None = None

    def __post_init__(self) -> None:
        _positive_int("TrunkSpec", "depth", self.depth)
        _require(
            self.final_norm_spec.width == self.block.width,
            "TrunkSpec",
            "final_norm.width",
            self.final_norm_spec.width,
            f"expected the block width {self.block.width}",
        )

    @property
    def final_norm_spec(self) -> NormSpec:
        """``final_norm``, or the block's norm when None."""
        return self.final_norm if self.final_norm is not None else self.block.norm

    @property
    def width(self) -> int:
        """Residual stream width."""
        return self.block.width


@dataclass(frozen=True)
class AttentionPoolSpec(Spec):
    """Attention pooling: one learned query (used directly as q), k/v projections,
    multi-head attention, mean over queries, then ``linear`` to ``out_features``.

    Call: ``(features (B, N, D)) -> (B, out_features)``.

    Example:
        >>> AttentionPoolSpec(width=1024, heads=8).out_dim
        1024
    """

    kind: ClassVar[str] = "attn_pool"
    width: int
    heads: int = 8
    out_features: int | None = None
    num_queries: int = 1
    kv_bias: bool = False
    out_bias: bool = True

    def __post_init__(self) -> None:
        _positive_int("AttentionPoolSpec", "width", self.width)
        _positive_int("AttentionPoolSpec", "heads", self.heads)
        _positive_int("AttentionPoolSpec", "num_queries", self.num_queries)
        _require(
            self.width % self.heads == 0,
            "AttentionPoolSpec",
            "width",
            self.width,
            f"must be divisible by heads={self.heads}",
        )
        if self.out_features is not None:
            _positive_int("AttentionPoolSpec", "out_features", self.out_features)

    @property
    def out_dim(self) -> int:
        """Output features: ``out_features``, or the width when None."""
        return self.out_features if self.out_features is not None else self.width


@dataclass(frozen=True)
class ProbeSpec(Spec):
    """A classifier on frozen encoder features (AIMV2.md §5).

    ``attentive``: attention pooling (one learned query, k/v projections, ``heads``
    heads) whose ``linear`` maps to the classes — names under ``pool.``. ``linear``:
    mean over tokens, then ``linear``. Call: ``(features (B, N, width)) -> (B, classes)``.

    Example:
        >>> ProbeSpec(width=64, num_classes=10).pool.out_dim
        10
    """

    kind: ClassVar[str] = "probe"
    width: int
    num_classes: int
    type: str = "attentive"
    heads: int = 8

    def __post_init__(self) -> None:
        _positive_int("ProbeSpec", "width", self.width)
        _positive_int("ProbeSpec", "num_classes", self.num_classes)
        _one_of("ProbeSpec", "type", self.type, ("attentive", "linear"))
        _positive_int("ProbeSpec", "heads", self.heads)
        if self.type == "attentive":
            _require(
                self.width % self.heads == 0,
                "ProbeSpec",
                "width",
                self.width,
                f"must be divisible by heads={self.heads}",
            )

    @property
    def pool(self) -> AttentionPoolSpec:
        """The attention-pooling head of an attentive probe."""
        return AttentionPoolSpec(width=self.width, heads=self.heads, out_features=self.num_classes)


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
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    resize: int | None = None
    crop: bool = True
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        _require(
            len(self.mean) == len(self.std),
            "PreprocessSpec",
            "std",
            self.std,
            f"expected {len(self.mean)} values like mean",
        )
        _require(all(s > 0 for s in self.std), "PreprocessSpec", "std", self.std, "expected > 0")
        _one_of(
            "PreprocessSpec",
            "interpolation",
            self.interpolation,
            ("bicubic", "bilinear", "nearest"),
        )


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
    embed_std: float = 0.02
    text_pos_std: float = 0.01
    scale_heads_by_depth: bool = True


# ----------------------------------------------------------------------- encoder


@dataclass(frozen=True)
class EncoderSpec(Spec):
    """The AIMv2 vision encoder: patchifier, positions, trunk, optional pooling head.

    ``image_size`` is (H, W) for fixed-size encoders, or None for a native-resolution
    encoder that takes any H, W divisible by the patch size (sin-cos positions).
    Call: ``(images (B, C, H, W), prefix_len=None, return_blocks=False)``.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=64, depth=2, heads=2, patch_size=4, image_size=16)
        >>> spec.num_patches
        16
    """

    kind: ClassVar[str] = "encoder"
    patchifier: PatchEmbedSpec
    pos_embed: PosEmbedSpec
    trunk: TrunkSpec
    image_size: tuple[int, int] | None = None
    head: AttentionPoolSpec | None = None
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)

    def __post_init__(self) -> None:
        if self.image_size is not None:
            size = self.image_size
            if isinstance(size, int):
                size = (size, size)
            object.__setattr__(self, "image_size", tuple(size))
            _require(
                len(self.image_size) == 2
                and all(isinstance(s, int) and s > 0 for s in self.image_size),
                "EncoderSpec",
                "image_size",
                self.image_size,
                "expected (height, width) of positive integers, or None for native resolution",
            )
            p = self.patchifier.patch_size
            _require(
                all(s % p == 0 for s in self.image_size),
                "EncoderSpec",
                "image_size",
                self.image_size,
                f"must be divisible by patch_size={p}",
            )
        w = self.patchifier.width
        for name, part in (("pos_embed", self.pos_embed), ("trunk", self.trunk)):
            _require(
                part.width == w,
                "EncoderSpec",
                f"{name}.width",
                part.width,
                f"expected the patch width {w}",
            )
        if self.head is not None:
            _require(
                self.head.width == w,
                "EncoderSpec",
                "head.width",
                self.head.width,
                f"expected the encoder width {w}",
            )
        if self.pos_embed.type == "learned":
            _require(
                self.image_size is not None and self.pos_embed.grid == self.grid,
                "EncoderSpec",
                "pos_embed.grid",
                self.pos_embed.grid,
                f"a learned table must match the patch grid {self.grid} of image_size "
                f"{self.image_size}; native resolution needs sin-cos or no positions",
            )
        _require(
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

    def check_images(
        self, shape: tuple[int, ...], finite: bool = True, dtype_kind: str = "f"
    ) -> tuple[int, int]:
        """Validate an image batch shape (B, C, H, W); return its patch grid (rows, cols).

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
        return (h // p, w // p)


# ----------------------------------------------------------------------- decoder


@dataclass(frozen=True)
class DecoderSpec(Spec):
    """AIMv2's causal multimodal decoder over ``[image_proj(features); start; text]``.

    Image features enter through ``image_proj`` (Linear in_width→width with bias, no
    position embedding). Text: ``text_embed`` (vocab_size, width), a learned
    ``start_token`` prepended, learned ``pos_embed`` (1, context_length + 1, width).
    Then ``depth`` blocks under a causal mask and a final ``norm``.

    Example:
        >>> DecoderSpec.paper(in_width=1024).block.attn.heads
        8
    """

    kind: ClassVar[str] = "decoder"
    in_width: int
    block: BlockSpec
    depth: int
    vocab_size: int
    context_length: int = 77
    final_norm: NormSpec | None = None
    causal: bool = True

    def __post_init__(self) -> None:
        _positive_int("DecoderSpec", "in_width", self.in_width)
        _positive_int("DecoderSpec", "depth", self.depth)
        _positive_int("DecoderSpec", "vocab_size", self.vocab_size)
        _positive_int("DecoderSpec", "context_length", self.context_length)
        _require(
            self.causal is True,
            "DecoderSpec",
            "causal",
            self.causal,
            "the autoregressive decoder must be causal",
        )
        _require(
            self.final_norm_spec.width == self.block.width,
            "DecoderSpec",
            "final_norm.width",
            self.final_norm_spec.width,
            f"expected the block width {self.block.width}",
        )

    @property
    def final_norm_spec(self) -> NormSpec:
        """``final_norm``, or the block's norm when None."""
        return self.final_norm if self.final_norm is not None else self.block.norm

    @property
    def width(self) -> int:
        """Decoder width."""
        return self.block.width

    @classmethod
    def paper(cls, in_width: int, vocab_size: int = 32000, context_length: int = 77) -> DecoderSpec:
        """The decoder of every released AIMv2 size: 1024 wide, 12 blocks, 8 heads.

        Example:
            >>> DecoderSpec.paper(in_width=2048).width
            1024
        """
        return cls(
            in_width=in_width,
            block=BlockSpec(
                norm=NormSpec(1024),
                attn=AttentionSpec(1024, 8),
                mlp=FeedForwardSpec(1024, swiglu_hidden(1024)),
            ),
            depth=12,
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
    mode: str = "prefix"
    low: int = 1
    high: int | None = None

    def __post_init__(self) -> None:
        _one_of("PrefixSpec", "mode", self.mode, ("prefix", "bidirectional"))
        _positive_int("PrefixSpec", "low", self.low)
        if self.high is not None:
            _positive_int("PrefixSpec", "high", self.high)
            _require(
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
    weight: float = 0.4
    patch_norm: bool = True
    eps: float = 1e-6
    unbiased: bool = True
    shift: int = 1
    outside_prefix_only: bool = True

    def __post_init__(self) -> None:
        _require(self.weight >= 0, "PixelObjectiveSpec", "weight", self.weight, "expected >= 0")
        _require(self.eps > 0, "PixelObjectiveSpec", "eps", self.eps, "expected > 0")
        _require(self.shift == 1, "PixelObjectiveSpec", "shift", self.shift, "only 1 is supported")


@dataclass(frozen=True)
class TextObjectiveSpec(Spec):
    """Next-token cross-entropy over the caption; ``pad_id`` positions are ignored and the
    loss is the mean over the batch's non-pad target tokens (0 when there are none).

    Example:
        >>> TextObjectiveSpec().weight
        1.0
    """

    kind: ClassVar[str] = "text_objective"
    weight: float = 1.0
    pad_id: int = 0

    def __post_init__(self) -> None:
        _require(self.weight >= 0, "TextObjectiveSpec", "weight", self.weight, "expected >= 0")
        _require(
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
        _require(
            self.decoder.in_width == self.encoder.width,
            "ModelSpec",
            "decoder.in_width",
            self.decoder.in_width,
            f"expected the encoder width {self.encoder.width}",
        )
        _require(
            self.pixel.weight > 0 or self.text.weight > 0,
            "ModelSpec",
            "pixel.weight",
            self.pixel.weight,
            "at least one of pixel.weight and text.weight must be > 0",
        )
        _require(
            not (self.pixel.weight > 0 and self.prefix.mode == "bidirectional"),
            "ModelSpec",
            "prefix.mode",
            self.prefix.mode,
            "a bidirectional encoder sees the patches it must predict; use it with "
            "pixel.weight=0 (caption-only) or keep mode='prefix'",
        )
        _require(
            self.text.pad_id < self.decoder.vocab_size,
            "ModelSpec",
            "text.pad_id",
            self.text.pad_id,
            f"expected < decoder.vocab_size={self.decoder.vocab_size}",
        )
        if self.pixel.weight > 0:
            _require(
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


def encoder_spec(
    width: int,
    depth: int,
    heads: int,
    patch_size: int = 14,
    image_size: int | tuple[int, int] | None = 224,
    mlp_hidden: int | None = None,
    pos_embed: str | None = None,
    norm: str = "rms",
    ffn: str = "swiglu",
    *,
    in_channels: int = 3,
    eps: float = 1e-5,
    head: bool | AttentionPoolSpec = False,
    preprocess: PreprocessSpec | None = None,
) -> EncoderSpec:
    """The common encoder in one call.

    ``image_size=None`` means native resolution (any H, W divisible by the patch,
    sin-cos positions). ``mlp_hidden=None`` uses AIMv2's SwiGLU rule
    (``256·ceil(int(8D/3)/256)``) or 4·D for GELU. ``pos_embed`` defaults to
    ``"learned"`` for a fixed size and ``"sincos"`` for native resolution.
    ``head=True`` adds the 8-head attention-pooling head. ``preprocess`` defaults to the
    CLIP mean/std for 3 channels, else mean = std = 0.5 per channel.

    Example:
        >>> s = encoder_spec(width=1024, depth=24, heads=8)
        >>> s.trunk.block.mlp.hidden, s.num_patches
        (2816, 256)
    """
    if pos_embed is None:
        pos_embed = "sincos" if image_size is None else "learned"
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if mlp_hidden is None:
        mlp_hidden = swiglu_hidden(width) if ffn == "swiglu" else 4 * width
    if pos_embed == "learned" and image_size is None:
        raise SpecError(
            "encoder_spec pos_embed='learned': a learned table needs a fixed image_size; "
            "native resolution (image_size=None) uses 'sincos' or 'none'"
        )
    if image_size is not None and any(s % patch_size for s in image_size):
        raise SpecError(
            f"encoder_spec image_size={image_size!r}: must be divisible by patch_size={patch_size}"
        )
    grid = (
        None if image_size is None else (image_size[0] // patch_size, image_size[1] // patch_size)
    )
    norm_spec = NormSpec(width=width, type=norm, eps=eps)
    block = BlockSpec(
        norm=norm_spec,
        attn=AttentionSpec(width=width, heads=heads),
        mlp=FeedForwardSpec(width=width, hidden=mlp_hidden, type=ffn),
    )
    if head is True:
        head = AttentionPoolSpec(width=width, heads=heads if width % 8 else 8)
    return EncoderSpec(
        patchifier=PatchEmbedSpec(
            patch_size=patch_size,
            in_channels=in_channels,
            width=width,
            norm=None if norm_spec == NormSpec(width=width) else norm_spec,
        ),
        pos_embed=PosEmbedSpec(
            width=width, type=pos_embed, grid=grid if pos_embed == "learned" else None
        ),
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
