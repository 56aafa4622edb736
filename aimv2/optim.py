"""AIMv2's optimizer recipe as data: AdamW hyper-parameters, the lr schedule, decay groups.

The update rule itself is realized per backend (``aimv2.backends.*.train``) and in the
float64 reference (:func:`aimv2.reference.adamw_step`), all with the same semantics:

1. gradients (averaged over accumulation micro-batches) are clipped to a global L2
   norm of ``clip_norm`` (coefficient ``min(1, clip_norm / (norm + 1e-6))``);
2. ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²``, bias-corrected by ``1−β^t``;
3. parameters with decay are shrunk first: ``p ← p·(1 − wd·lr/peak_lr)`` ("decoupled",
   the paper's default) or ``p ← p·(1 − lr·wd)`` ("torch", ``torch.optim.AdamW``);
4. ``p ← p − lr·m̂/(√v̂ + eps)``.

No decay on biases, norms, position embeddings, start and cls tokens (see
:attr:`aimv2.weights.ParamInfo.decay`).

``OptimConfig.lr_scales`` multiplies the scheduled learning rate per parameter (layer-wise
decay when fine-tuning); a scale of 0 freezes a parameter (no gradient, no update, no
decay, no optimizer state). Both backends turn it into the same parameter groups
(:func:`param_groups`): one per (decay, scale), each run at ``lr · scale``. The decay of
step 3 scales with it (``p·(1 − wd·scale·lr/peak_lr)``), as in timm's layer-wise decay.

Example:
    >>> cfg = OptimConfig(lr=1e-3, warmup_steps=10, total_steps=100)
    >>> round(lr_at(cfg, 4), 6), round(lr_at(cfg, 99), 6)
    (0.0005, 1e-05)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from . import specs as S
from .weights import parameters

__all__ = [
    "OptimConfig",
    "ParamGroup",
    "param_groups",
    "frozen_names",
    "lr_at",
    "decay_mask",
    "paper_peak_lr",
    "NonFiniteLoss",
    "TERMS",
    "objective_weights",
    "check_update_weights",
    "check_finite",
    "moment_names",
    "check_moments",
    "resolve_compile",
]

# The loss terms a weighted (distributed) update combines, in the order trainers stack them.
TERMS = ("text_loss", "pixel_loss")


class NonFiniteLoss(FloatingPointError):
    """The loss or the gradient norm is NaN/inf; no update was applied."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + warmup/cosine settings (AIMV2.md §4 defaults).

    Example:
        >>> OptimConfig(lr=4e-4, warmup_steps=0, total_steps=10).betas
        (0.9, 0.95)
    """

    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 12_500
    total_steps: int = 1_500_000
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 1e-4
    decay_mode: str = "decoupled"
    clip_norm: float | None = 1.0
    accumulate: int = 1
    lr_scales: tuple[tuple[str, float], ...] = field(default=())

    def __post_init__(self) -> None:
        items = self.lr_scales.items() if isinstance(self.lr_scales, Mapping) else self.lr_scales
        try:
            scales = tuple((str(n), float(v)) for n, v in items)
        except (TypeError, ValueError):
            raise ValueError(
                f"OptimConfig.lr_scales={self.lr_scales!r:.80}: expected a mapping of "
                f"parameter name -> learning-rate multiplier"
            ) from None
        for name, v in scales:
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(
                    f"OptimConfig.lr_scales[{name!r}]={v!r}: expected a finite value >= 0"
                )
        if len({n for n, _ in scales}) != len(scales):
            raise ValueError("OptimConfig.lr_scales: a parameter is named twice")
        object.__setattr__(self, "lr_scales", scales)
        checks = [
            (self.lr > 0, "lr", "expected > 0"),
            (0 <= self.min_lr <= self.lr, "min_lr", f"expected 0 <= min_lr <= lr={self.lr}"),
            (self.warmup_steps >= 0, "warmup_steps", "expected >= 0"),
            (self.total_steps >= 1, "total_steps", "expected >= 1"),
            (all(0 <= b < 1 for b in self.betas), "betas", "expected two values in [0, 1)"),
            (self.eps > 0, "eps", "expected > 0"),
            (self.weight_decay >= 0, "weight_decay", "expected >= 0"),
            (self.decay_mode in ("decoupled", "torch"), "decay_mode", "'decoupled' or 'torch'"),
            (self.clip_norm is None or self.clip_norm > 0, "clip_norm", "None or > 0"),
            (self.accumulate >= 1, "accumulate", "expected >= 1"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"OptimConfig.{name}={getattr(self, name)!r}: {expected}")
        object.__setattr__(self, "betas", tuple(self.betas))

    def decay_factor(self, lr: float) -> float:
        """Multiplier applied to decayed parameters at learning rate ``lr``.

        Example:
            >>> OptimConfig(lr=1e-3, weight_decay=0.1).decay_factor(5e-4)
            0.95
        """
        if self.decay_mode == "decoupled":
            return 1.0 - self.weight_decay * lr / self.lr
        return 1.0 - lr * self.weight_decay

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready).

        Example:
            >>> OptimConfig().to_dict()["decay_mode"]
            'decoupled'
        """
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["lr_scales"] = dict(self.lr_scales)
        return d

    def lr_scale(self, name: str) -> float:
        """The learning-rate multiplier of parameter ``name`` (1 unless ``lr_scales`` says).

        Example:
            >>> OptimConfig(lr_scales={"w": 0.5}).lr_scale("w"), OptimConfig().lr_scale("w")
            (0.5, 1.0)
        """
        return dict(self.lr_scales).get(name, 1.0)


@dataclass(frozen=True)
class ParamGroup:
    """Parameters that share an update rule: ``decay`` (weight decay on or off) and
    ``scale`` (their learning rate is ``lr · scale``).

    Example:
        >>> ParamGroup(("w",), True, 0.5).scale
        0.5
    """

    names: tuple[str, ...]
    decay: bool
    scale: float


# What both trainers say when nothing is left to train.
ALL_FROZEN = "nothing to train: every parameter is frozen (OptimConfig.lr_scales of 0, or freeze)"


def param_groups(
    names: Sequence[str],
    decay: Mapping[str, bool],
    cfg: OptimConfig,
    exclude: Collection[str] = (),
) -> list[ParamGroup]:
    """The optimizer groups of parameters ``names`` (in model order): one per (decay,
    scale) pair, in order of first appearance; parameters with scale 0 are frozen and in
    no group, nor are those of ``exclude`` (frozen otherwise, e.g. a locked tower). A
    scale naming no parameter of ``names`` is a ValueError.

    Example:
        >>> cfg = OptimConfig(lr_scales={"a": 0.5, "c": 0.0})
        >>> [(g.names, g.decay, g.scale) for g in param_groups("abc", dict.fromkeys("abc", True), cfg)]
        [(('a',), True, 0.5), (('b',), True, 1.0)]
    """
    known = set(names)
    unknown = sorted(n for n, _ in cfg.lr_scales if n not in known)
    if unknown:
        raise ValueError(
            f"OptimConfig.lr_scales: {unknown[:3]} are not parameters of this model "
            f"({len(unknown)} unknown)"
        )
    scales = dict(cfg.lr_scales)
    groups: dict[tuple[bool, float], list[str]] = {}
    for name in names:
        scale = scales.get(name, 1.0)
        if scale == 0.0 or name in exclude:
            continue
        groups.setdefault((bool(decay[name]), scale), []).append(name)
    return [ParamGroup(tuple(ns), d, sc) for (d, sc), ns in groups.items()]


def frozen_names(names: Sequence[str], cfg: OptimConfig) -> list[str]:
    """The parameters of ``names`` with learning-rate scale 0 (frozen).

    Example:
        >>> frozen_names(["a", "b"], OptimConfig(lr_scales={"b": 0.0}))
        ['b']
    """
    zero = {n for n, v in cfg.lr_scales if v == 0.0}
    return [n for n in names if n in zero]


def lr_at(cfg: OptimConfig, step: int) -> float:
    """Learning rate of update ``step`` (0-based): linear warmup to ``lr`` over
    ``warmup_steps`` updates, then cosine to ``min_lr`` at ``total_steps − 1``.

    Example:
        >>> lr_at(OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=3), 1)
        0.5
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.total_steps - cfg.warmup_steps - 1, 1)
    frac = min(max((step - cfg.warmup_steps) / span, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * frac))


def decay_mask(spec: S.Spec) -> dict[str, bool]:
    """Canonical name → whether weight decay applies.

    Example:
        >>> import aimv2
        >>> m = decay_mask(aimv2.presets.get("aimv2-test-tiny"))
        >>> m["encoder.trunk.blocks.0.attn.qkv.weight"], m["decoder.start_token"]
        (True, False)
    """
    return {name: info.decay for name, info in parameters(spec).items()}


def paper_peak_lr(spec: S.ModelSpec) -> float:
    """Peak lr of the paper by encoder width: 1e-3 (≤ L), 8e-4 (H, 1B), 4e-4 (3B).

    Example:
        >>> import aimv2
        >>> paper_peak_lr(aimv2.presets.get("aimv2-3B-patch14-224"))
        0.0004
    """
    width = spec.encoder.width
    if width >= 3072:
        return 4e-4
    if width >= 1536:
        return 8e-4
    return 1e-3


def objective_weights(spec: Any) -> dict[str, float]:
    """Each pre-training loss term's weight in the total loss (0 for a model without that
    head, and for specs that are not pre-training models, e.g. probes).

    Example:
        >>> import aimv2
        >>> objective_weights(aimv2.presets.get("aimv2-test-tiny"))
        {'text_loss': 1.0, 'pixel_loss': 0.4}
    """
    return {
        "text_loss": spec.text.weight if getattr(spec, "has_text_head", False) else 0.0,
        "pixel_loss": spec.pixel.weight if getattr(spec, "has_pixel_head", False) else 0.0,
    }


def check_update_weights(
    weights: Sequence[Mapping[str, float]] | None, micro_batches: int, pretraining: bool
) -> None:
    """Validate the per-micro-batch term weights of a weighted (distributed) update.

    Example:
        >>> check_update_weights([{"pixel_loss": 1.0, "text_loss": 1.0}], 2, True)
        Traceback (most recent call last):
        ...
        ValueError: weights: expected 2 entries (one per micro-batch), got 1
    """
    if weights is None:
        return
    if not pretraining:
        raise ValueError("weights: only the pre-training loss has weighted terms")
    if len(weights) != micro_batches:
        raise ValueError(
            f"weights: expected {micro_batches} entries (one per micro-batch), got {len(weights)}"
        )


def check_finite(values: Mapping[str, float], update: int) -> None:
    """Raise :class:`NonFiniteLoss` naming the update when any reported value is NaN/inf.

    Example:
        >>> check_finite({"loss": float("nan"), "grad_norm": 1.0}, 7)
        Traceback (most recent call last):
        ...
        aimv2.optim.NonFiniteLoss: non-finite training values at update 7: {'loss': nan, 'grad_norm': 1.0}
    """
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteLoss(f"non-finite training values at update {update}: {dict(values)}")


def moment_names(names: Sequence[str]) -> list[str]:
    """The optimizer-state keys of parameters ``names``: ``exp_avg.<n>``, ``exp_avg_sq.<n>``
    per parameter, in that order.

    Example:
        >>> moment_names(["w"])
        ['exp_avg.w', 'exp_avg_sq.w']
    """
    return [f"{k}.{n}" for n in names for k in ("exp_avg", "exp_avg_sq")]


def check_moments(arrays: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Check saved optimizer moments against the parameters' canonical ``shapes``.

    Example:
        >>> import numpy as np
        >>> check_moments({"exp_avg.w": np.zeros(2), "exp_avg_sq.w": np.zeros(3)}, {"w": (2,)})
        Traceback (most recent call last):
        ...
        ValueError: optimizer state exp_avg_sq.w: expected shape (2,), got (3,)
    """
    want = set(moment_names(list(shapes)))
    if set(arrays) != want:
        missing, extra = sorted(want - set(arrays)), sorted(set(arrays) - want)
        raise ValueError(
            f"optimizer state does not match the model: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for name, shape in shapes.items():
        for key in (f"exp_avg.{name}", f"exp_avg_sq.{name}"):
            got = tuple(getattr(arrays[key], "shape", ()))
            if got != tuple(shape):
                raise ValueError(f"optimizer state {key}: expected shape {tuple(shape)}, got {got}")


def resolve_compile(compile: bool | str, cheap: bool) -> bool:
    """A trainer's ``compile`` argument as a bool: ``"auto"`` compiles where compiling is
    ``cheap`` (``mx.compile``), not where it costs a long warm-up (``torch.compile``).

    Example:
        >>> resolve_compile("auto", cheap=True), resolve_compile(False, cheap=True)
        (True, False)
    """
    if compile == "auto":
        return cheap
    if not isinstance(compile, bool):
        raise ValueError(f"compile={compile!r}: expected True, False or 'auto'")
    return compile
