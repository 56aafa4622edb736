"""Components for using a pre-trained encoder downstream: a learned position table
resampled to any grid, LoRA adapters on attention and feed-forward projections, and a
classifier head on mean-pooled features.

- :class:`ResampledPosEmbedSpec` (role ``pos_embed``): the learned table of a fixed grid,
  resampled in 2D (bicubic, antialiased, half-pixel centers: timm's
  ``resample_abs_pos_embed``) to the grid of each input, so a 224 encoder takes any size.
- :class:`LoRAAttentionSpec` / :class:`LoRAFeedForwardSpec` (roles ``attention`` /
  ``ffn``): any attention or feed-forward component with a low-rank update on chosen
  linear projections, ``W x + (alpha/rank)·B A x``. The base keeps its parameter names;
  the adapter adds ``<target>.lora_a`` (rank, in) and ``<target>.lora_b`` (out, rank,
  zeros at init, so an adapted model starts as its base). Merging
  (:func:`aimv2.lora.merge_lora`) folds ``(alpha/rank)·B A`` into ``W``.
- :class:`MeanPoolSpec` (role ``pool``): mean over tokens, then ``linear`` to the classes.

Example:
    >>> from aimv2.specs import AttentionSpec
    >>> a = LoRAAttentionSpec(AttentionSpec(64, 2), rank=4, alpha=8.0)
    >>> a.heads, a.scale, sorted(a.parameters())[:2]
    (2, 2.0, ['proj.lora_a', 'proj.lora_b'])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .base import ParamInfo, Spec, check_slot, linear_params, positive_int, require

__all__ = [
    "ResampledPosEmbedSpec",
    "LoRAAttentionSpec",
    "LoRAFeedForwardSpec",
    "MeanPoolSpec",
    "LORA_SPECS",
]


@dataclass(frozen=True)
class ResampledPosEmbedSpec(Spec):
    """A learned position table stored for ``grid`` (rows, cols) and resampled to the
    grid of every input (any size; the same grid adds the table unchanged).

    Call: ``(x (B, N, width), grid=(rows, cols)) -> (B, N, width)``. Its parameter is the
    learned table's own (``pos_embed``, (1, rows·cols, width)), so a released table loads
    as is.

    Example:
        >>> ResampledPosEmbedSpec(width=8, grid=(16, 16)).parameters()["pos_embed"].shape
        (1, 256, 8)
    """

    kind: ClassVar[str] = "resampled_pos_embed"
    role: ClassVar[str] = "pos_embed"
    width: int
    grid: tuple[int, int]

    def __post_init__(self) -> None:
        positive_int("ResampledPosEmbedSpec", "width", self.width)
        grid = tuple(self.grid) if isinstance(self.grid, (tuple, list)) else self.grid
        object.__setattr__(self, "grid", grid)
        require(
            isinstance(grid, tuple)
            and len(grid) == 2
            and all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid),
            "ResampledPosEmbedSpec",
            "grid",
            self.grid,
            "expected (rows, cols) of positive integers: the grid the table was learned at",
        )

    @property
    def num_positions(self) -> int:
        """Rows × cols of the stored table."""
        return self.grid[0] * self.grid[1]

    @property
    def fixed_grid(self) -> None:
        """None: any input grid is accepted (the table is resampled to it)."""
        return None

    def parameters(self) -> dict[str, ParamInfo]:
        """``pos_embed`` (1, rows·cols, width), no weight decay.

        Example:
            >>> list(ResampledPosEmbedSpec(4, (2, 3)).parameters())
            ['pos_embed']
        """
        return {"pos_embed": ParamInfo((1, self.num_positions, self.width), "pos")}


class _LoRA(Spec):
    """What both LoRA adapter specs share: the base component, rank, alpha, targets.

    Fields the adapter does not have (``heads``, ``hidden``, ``head_dim``…) are read from
    ``base``: the adapter answers for the component it adapts, so the base's own
    realization runs it with the adapter as its spec.
    """

    base_role: ClassVar[str] = ""

    def _validate(self) -> None:
        name = type(self).__name__
        check_slot(name, "base", self.base, self.base_role)
        require(
            not isinstance(self.base, _LoRA),
            name,
            "base",
            self.base,
            "is already a LoRA adapter; give the rank of one adapter instead",
        )
        positive_int(name, "rank", self.rank)
        require(
            isinstance(self.alpha, (int, float))
            and not isinstance(self.alpha, bool)
            and self.alpha > 0,
            name,
            "alpha",
            self.alpha,
            "expected a positive number (the update is scaled by alpha / rank)",
        )
        object.__setattr__(self, "alpha", float(self.alpha))
        table = self.base.parameters()
        linear = sorted(
            n[: -len(".weight")]
            for n, info in table.items()
            if n.endswith(".weight") and len(info.shape) == 2 and info.role == "linear"
        )
        targets = self.targets
        if targets is None:
            targets = tuple(linear)
        if isinstance(targets, str):
            targets = (targets,)
        targets = tuple(targets)
        object.__setattr__(self, "targets", targets)
        require(len(targets) > 0, name, "targets", targets, f"expected some of {linear}")
        for t in targets:
            require(
                t in linear,
                name,
                "targets",
                targets,
                f"{t!r} is not a linear projection of {type(self.base).__name__} "
                f"(its projections: {linear})",
            )
        require(len(set(targets)) == len(targets), name, "targets", targets, "names a target twice")

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes the adapter lacks: read them from the base.
        if name.startswith("_") or "base" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["base"], name)

    @property
    def width(self) -> int:
        """The base component's width."""
        return self.base.width

    @property
    def scale(self) -> float:
        """alpha / rank: the factor of the low-rank update."""
        return self.alpha / self.rank

    def parameters(self) -> dict[str, ParamInfo]:
        """The base's parameters, plus ``<t>.lora_a`` (rank, in; xavier-uniform, decayed)
        and ``<t>.lora_b`` (out, rank; zeros, not decayed) for every target ``t``."""
        out = dict(self.base.parameters())
        for t in self.targets:
            n_out, n_in = out[f"{t}.weight"].shape
            out[f"{t}.lora_a"] = ParamInfo((self.rank, n_in), "linear", n_in, self.rank)
            out[f"{t}.lora_b"] = ParamInfo((n_out, self.rank), "scale", fill=0.0)
        return out


@dataclass(frozen=True)
class LoRAAttentionSpec(_LoRA):
    """LoRA on an attention component's projections (default: all, e.g. ``qkv`` and
    ``proj``). Fits any ``attention`` slot.

    Example:
        >>> from aimv2.specs import AttentionSpec
        >>> LoRAAttentionSpec(AttentionSpec(8, 2), rank=2, alpha=2, targets=("qkv",)).targets
        ('qkv',)
    """

    kind: ClassVar[str] = "lora_attention"
    role: ClassVar[str] = "attention"
    base_role: ClassVar[str] = "attention"
    base: Spec
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self._validate()


@dataclass(frozen=True)
class LoRAFeedForwardSpec(_LoRA):
    """LoRA on a feed-forward component's projections (default: all, e.g. SwiGLU's
    ``fc1``, ``fc2``, ``fc3``). Fits any ``ffn`` slot.

    Example:
        >>> from aimv2.specs import FeedForwardSpec
        >>> LoRAFeedForwardSpec(FeedForwardSpec(8, 16), rank=2).targets
        ('fc1', 'fc2', 'fc3')
    """

    kind: ClassVar[str] = "lora_ffn"
    role: ClassVar[str] = "ffn"
    base_role: ClassVar[str] = "ffn"
    base: Spec
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self._validate()


LORA_SPECS = (LoRAAttentionSpec, LoRAFeedForwardSpec)


@dataclass(frozen=True)
class MeanPoolSpec(Spec):
    """A classifier head: mean over tokens, then ``linear`` (with bias) to ``out_features``.

    Call: ``(features (B, N, width)) -> (B, out_features)``.

    Example:
        >>> MeanPoolSpec(width=16, out_features=10).parameters()["linear.weight"].shape
        (10, 16)
    """

    kind: ClassVar[str] = "mean_pool"
    role: ClassVar[str] = "pool"
    width: int
    out_features: int

    def __post_init__(self) -> None:
        positive_int("MeanPoolSpec", "width", self.width)
        positive_int("MeanPoolSpec", "out_features", self.out_features)

    @property
    def out_dim(self) -> int:
        """Output features."""
        return self.out_features

    def parameters(self) -> dict[str, ParamInfo]:
        """``linear.weight`` (out_features, width) and ``linear.bias``.

        Example:
            >>> sorted(MeanPoolSpec(4, 3).parameters())
            ['linear.bias', 'linear.weight']
        """
        return linear_params("linear", self.out_features, self.width, True, role="head")
