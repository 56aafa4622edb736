"""The built-in layer components: norm, patch and position embedding, attention,
feed-forward, block, trunk, attention pooling and the probe.

Each is a :class:`~aimv2.specs.base.Spec` with a ``kind``, a slot ``role`` and its own
``parameters()``; composites (block, trunk) hold their parts in slots that any
registered component of the same role fits.

Example:
    >>> from aimv2.specs import BlockSpec, NormSpec, AttentionSpec, FeedForwardSpec
    >>> b = BlockSpec(NormSpec(64), AttentionSpec(64, 2), FeedForwardSpec(64, 128))
    >>> sorted(b.parameters())[:3]
    ['attn.proj.weight', 'attn.qkv.weight', 'mlp.fc1.weight']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .base import (
    ParamInfo,
    Spec,
    check_slot,
    linear_params,
    nested,
    one_of,
    positive_int,
    require,
)

__all__ = [
    "NormSpec",
    "PatchEmbedSpec",
    "PosEmbedSpec",
    "AttentionSpec",
    "FeedForwardSpec",
    "BlockSpec",
    "TrunkSpec",
    "AttentionPoolSpec",
    "ProbeSpec",
    "swiglu_hidden",
    "block_spec",
]


def swiglu_hidden(width: int, multiple_of: int = 256) -> int:
    """AIMv2's SwiGLU hidden size: ``int(8 * width / 3)`` rounded up to ``multiple_of``.

    Example:
        >>> swiglu_hidden(1024)
        2816
    """
    return multiple_of * math.ceil(int(8 * width / 3) / multiple_of)


@dataclass(frozen=True)
class NormSpec(Spec):
    """RMSNorm (weight only) or LayerNorm (weight and bias) over the last axis.

    Example:
        >>> NormSpec(width=1024).eps
        1e-05
    """

    kind: ClassVar[str] = "norm"
    role: ClassVar[str] = "norm"
    width: int
    type: str = "rms"
    eps: float = 1e-5

    def __post_init__(self) -> None:
        positive_int("NormSpec", "width", self.width)
        one_of("NormSpec", "type", self.type, ("rms", "layer"))
        require(
            isinstance(self.eps, (int, float)) and self.eps > 0,
            "NormSpec",
            "eps",
            self.eps,
            "expected a positive float",
        )

    def parameters(self) -> dict[str, ParamInfo]:
        """``weight`` (and ``bias`` for LayerNorm).

        Example:
            >>> list(NormSpec(width=8, type="layer").parameters())
            ['weight', 'bias']
        """
        out = {"weight": ParamInfo((self.width,), "norm")}
        if self.type == "layer":
            out["bias"] = ParamInfo((self.width,), "norm_bias")
        return out


@dataclass(frozen=True)
class PatchEmbedSpec(Spec):
    """Conv2d(in_channels -> width, kernel = stride = patch_size), flatten row-major, norm.

    Call: ``(images (B, C, H, W)) -> (B, N, width)`` with N = (H/p)·(W/p).

    Example:
        >>> PatchEmbedSpec(patch_size=14, in_channels=3, width=1024).norm_spec.type
        'rms'
    """

    kind: ClassVar[str] = "patch_embed"
    role: ClassVar[str] = "patch_embed"
    patch_size: int
    in_channels: int
    width: int
    bias: bool = True
    norm: Spec | None = None

    def __post_init__(self) -> None:
        positive_int("PatchEmbedSpec", "patch_size", self.patch_size)
        positive_int("PatchEmbedSpec", "in_channels", self.in_channels)
        positive_int("PatchEmbedSpec", "width", self.width)
        if self.norm is not None:
            check_slot("PatchEmbedSpec", "norm", self.norm, "norm")
        require(
            self.norm_spec.width == self.width,
            "PatchEmbedSpec",
            "norm.width",
            self.norm_spec.width,
            f"expected the patch width {self.width}",
        )

    @property
    def norm_spec(self) -> Spec:
        """The norm after the projection (``norm``, or RMSNorm of the width when None)."""
        return self.norm if self.norm is not None else NormSpec(width=self.width)

    @property
    def patch_dim(self) -> int:
        """Values per patch: patch_size² · in_channels."""
        return self.patch_size * self.patch_size * self.in_channels

    def parameters(self) -> dict[str, ParamInfo]:
        """``proj.weight`` (conv, torch layout (out, in, kH, kW)), ``proj.bias``, ``norm.*``.

        Example:
            >>> PatchEmbedSpec(2, 3, 8).parameters()["proj.weight"].shape
            (8, 3, 2, 2)
        """
        k, c, d = self.patch_size, self.in_channels, self.width
        own = {"proj.weight": ParamInfo((d, c, k, k), "conv", c * k * k, d * k * k)}
        if self.bias:
            own["proj.bias"] = ParamInfo((d,), "bias")
        return nested(("", own), ("norm.", self.norm_spec))


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
    role: ClassVar[str] = "pos_embed"
    width: int
    type: str = "learned"
    grid: tuple[int, int] | None = None
    temperature: float = 10000.0

    def __post_init__(self) -> None:
        positive_int("PosEmbedSpec", "width", self.width)
        one_of("PosEmbedSpec", "type", self.type, ("learned", "sincos", "none"))
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(self.grid))
            require(
                len(self.grid) == 2 and all(isinstance(g, int) and g > 0 for g in self.grid),
                "PosEmbedSpec",
                "grid",
                self.grid,
                "expected (rows, cols) of positive integers",
            )
        if self.type == "learned":
            require(
                self.grid is not None,
                "PosEmbedSpec",
                "grid",
                self.grid,
                "a learned position table needs a fixed grid (rows, cols)",
            )
        if self.type == "sincos":
            require(
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

    @property
    def fixed_grid(self) -> tuple[int, int] | None:
        """The one grid this embedding accepts (a learned table), else None (any grid)."""
        return self.grid if self.type == "learned" else None

    def parameters(self) -> dict[str, ParamInfo]:
        """``pos_embed`` (1, N, width) for a learned table; nothing otherwise.

        Example:
            >>> PosEmbedSpec(8, "learned", (2, 3)).parameters()["pos_embed"].shape
            (1, 6, 8)
        """
        if self.type != "learned":
            return {}
        return {"pos_embed": ParamInfo((1, self.num_positions, self.width), "pos")}


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
    role: ClassVar[str] = "attention"
    width: int
    heads: int
    qkv_bias: bool = False
    proj_bias: bool = False

    def __post_init__(self) -> None:
        positive_int("AttentionSpec", "width", self.width)
        positive_int("AttentionSpec", "heads", self.heads)
        require(
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

    def parameters(self) -> dict[str, ParamInfo]:
        """``qkv`` (3·width, width) and ``proj`` (width, width), biases if asked.

        Example:
            >>> AttentionSpec(8, 2).parameters()["qkv.weight"].shape
            (24, 8)
        """
        d = self.width
        return {
            **linear_params("qkv", 3 * d, d, self.qkv_bias),
            **linear_params("proj", d, d, self.proj_bias),
        }


@dataclass(frozen=True)
class FeedForwardSpec(Spec):
    """SwiGLU ``fc2(silu(fc1 x) * fc3 x)`` or GELU MLP ``fc2(gelu(fc1 x))`` (exact erf GELU).

    Example:
        >>> FeedForwardSpec(width=1024, hidden=2816).type
        'swiglu'
    """

    kind: ClassVar[str] = "ffn"
    role: ClassVar[str] = "ffn"
    width: int
    hidden: int
    type: str = "swiglu"
    bias: bool = False

    def __post_init__(self) -> None:
        positive_int("FeedForwardSpec", "width", self.width)
        positive_int("FeedForwardSpec", "hidden", self.hidden)
        one_of("FeedForwardSpec", "type", self.type, ("swiglu", "gelu"))

    def parameters(self) -> dict[str, ParamInfo]:
        """``fc1`` (gate), ``fc2`` (down), and ``fc3`` (up) for SwiGLU.

        Example:
            >>> sorted(FeedForwardSpec(8, 16, type="gelu").parameters())
            ['fc1.weight', 'fc2.weight']
        """
        d, h, b = self.width, self.hidden, self.bias
        out = {**linear_params("fc1", h, d, b), **linear_params("fc2", d, h, b)}
        if self.type == "swiglu":
            out.update(linear_params("fc3", h, d, b))
        return out


@dataclass(frozen=True)
class BlockSpec(Spec):
    """Pre-norm block: ``x += attn(norm_1 x); x += mlp(norm_2 x)``.

    Slots: ``norm`` (role ``norm``, used for both norms), ``attn`` (role ``attention``),
    ``mlp`` (role ``ffn``); each must have the block's width.

    Example:
        >>> b = BlockSpec(norm=NormSpec(64), attn=AttentionSpec(64, 2), mlp=FeedForwardSpec(64, 128))
        >>> b.width
        64
    """

    kind: ClassVar[str] = "block"
    role: ClassVar[str] = "block"
    norm: Spec
    attn: Spec
    mlp: Spec

    def __post_init__(self) -> None:
        check_slot("BlockSpec", "norm", self.norm, "norm")
        check_slot("BlockSpec", "attn", self.attn, "attention")
        check_slot("BlockSpec", "mlp", self.mlp, "ffn")
        for name in ("attn", "mlp"):
            require(
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

    def parameters(self) -> dict[str, ParamInfo]:
        """``norm_1.*``, ``attn.*``, ``norm_2.*``, ``mlp.*`` from the slots.

        Example:
            >>> b = BlockSpec(NormSpec(8), AttentionSpec(8, 2), FeedForwardSpec(8, 16))
            >>> len(b.parameters())
            7
        """
        return nested(
            ("norm_1.", self.norm), ("attn.", self.attn), ("norm_2.", self.norm), ("mlp.", self.mlp)
        )


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
    role: ClassVar[str] = "trunk"
    block: Spec
    depth: int
    final_norm: Spec | None = None

    def __post_init__(self) -> None:
        check_slot("TrunkSpec", "block", self.block, "block")
        positive_int("TrunkSpec", "depth", self.depth)
        if self.final_norm is not None:
            check_slot("TrunkSpec", "final_norm", self.final_norm, "norm")
        require(
            self.final_norm_spec.width == self.block.width,
            "TrunkSpec",
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
        """Residual stream width."""
        return self.block.width

    def parameters(self) -> dict[str, ParamInfo]:
        """``blocks.{i}.*`` for every block, then ``post_trunk_norm.*``.

        Example:
            >>> blk = BlockSpec(NormSpec(8), AttentionSpec(8, 2), FeedForwardSpec(8, 16))
            >>> sorted(TrunkSpec(blk, 2).parameters())[-1]
            'post_trunk_norm.weight'
        """
        blocks = [(f"blocks.{i}.", self.block) for i in range(self.depth)]
        return nested(*blocks, ("post_trunk_norm.", self.final_norm_spec))


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
    role: ClassVar[str] = "pool"
    width: int
    heads: int = 8
    out_features: int | None = None
    num_queries: int = 1
    kv_bias: bool = False
    out_bias: bool = True

    def __post_init__(self) -> None:
        positive_int("AttentionPoolSpec", "width", self.width)
        positive_int("AttentionPoolSpec", "heads", self.heads)
        positive_int("AttentionPoolSpec", "num_queries", self.num_queries)
        require(
            self.width % self.heads == 0,
            "AttentionPoolSpec",
            "width",
            self.width,
            f"must be divisible by heads={self.heads}",
        )
        if self.out_features is not None:
            positive_int("AttentionPoolSpec", "out_features", self.out_features)

    @property
    def out_dim(self) -> int:
        """Output features: ``out_features``, or the width when None."""
        return self.out_features if self.out_features is not None else self.width

    def parameters(self) -> dict[str, ParamInfo]:
        """``cls_token`` (1, queries, width), ``k``, ``v`` and the ``linear`` head.

        Example:
            >>> sorted(AttentionPoolSpec(8, 2, out_features=3).parameters())[0]
            'cls_token'
        """
        d = self.width
        return {
            "cls_token": ParamInfo((1, self.num_queries, d), "token"),
            **linear_params("k", d, d, self.kv_bias),
            **linear_params("v", d, d, self.kv_bias),
            **linear_params("linear", self.out_dim, d, self.out_bias, role="head"),
        }


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
        positive_int("ProbeSpec", "width", self.width)
        positive_int("ProbeSpec", "num_classes", self.num_classes)
        one_of("ProbeSpec", "type", self.type, ("attentive", "linear"))
        positive_int("ProbeSpec", "heads", self.heads)
        if self.type == "attentive":
            require(
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

    def parameters(self) -> dict[str, ParamInfo]:
        """``pool.*`` (attentive) or ``linear.*`` (linear, with bias).

        Example:
            >>> sorted(ProbeSpec(8, 3, type="linear").parameters())
            ['linear.bias', 'linear.weight']
        """
        if self.type == "attentive":
            return nested(("pool.", self.pool))
        return linear_params("linear", self.num_classes, self.width, True, role="head")


def block_spec(
    width: int,
    heads: int,
    *,
    mlp_hidden: int | None = None,
    norm: str | Spec = "rms",
    ffn: str | Spec = "swiglu",
    attention: Spec | None = None,
    eps: float = 1e-5,
    owner: str = "block_spec",
) -> BlockSpec:
    """A pre-norm block from keywords or parts.

    ``norm`` is ``"rms"``/``"layer"`` (with ``eps``) or a spec of role ``norm``; ``ffn`` is
    ``"swiglu"``/``"gelu"`` (hidden ``mlp_hidden``, default AIMv2's SwiGLU rule or 4·width
    for GELU) or a spec of role ``ffn``; ``attention`` is None (multi-head attention with
    ``heads`` heads) or a spec of role ``attention``. A part of the wrong role or width is
    a :class:`SpecError` naming it.

    Example:
        >>> block_spec(64, 2, ffn="gelu").mlp.hidden
        256
        >>> block_spec(64, 2, ffn=NormSpec(64))
        Traceback (most recent call last):
        ...
        aimv2.specs.base.SpecError: block_spec.ffn=NormSpec(width=64, type='rms', eps=1e-05): expected a spec of role 'ffn' (e.g. FeedForwardSpec), got role 'norm'
    """
    if isinstance(norm, Spec):
        check_slot(owner, "norm", norm, "norm", width)
        norm_spec = norm
    else:
        norm_spec = NormSpec(width=width, type=norm, eps=eps)
    if isinstance(ffn, Spec):
        check_slot(owner, "ffn", ffn, "ffn", width)
        require(
            mlp_hidden is None,
            owner,
            "mlp_hidden",
            mlp_hidden,
            "is set by the ffn spec given; leave it None",
        )
        ffn_spec = ffn
    else:
        if mlp_hidden is None:
            mlp_hidden = swiglu_hidden(width) if ffn == "swiglu" else 4 * width
        ffn_spec = FeedForwardSpec(width=width, hidden=mlp_hidden, type=ffn)
    if attention is None:
        attention = AttentionSpec(width=width, heads=heads)
    else:
        check_slot(owner, "attention", attention, "attention", width)
    return BlockSpec(norm=norm_spec, attn=attention, mlp=ffn_spec)
