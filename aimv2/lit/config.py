"""A LiT run's configuration (``aimv2 lit``'s flags) and the optimizer settings it implies.

Example:
    >>> cfg = LitConfig(out="runs/lit", steps=100)
    >>> o = optim_config(cfg)
    >>> o.warmup_steps, o.weight_decay, o.decay_mode, o.betas
    (10, 0.2, 'torch', (0.9, 0.95))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .. import specs as S
from ..optim import OptimConfig
from ..training.config import stream_shuffle_field

__all__ = ["LitError", "LitConfig", "IMAGE_TOWERS", "optim_config"]

IMAGE_TOWERS = ("locked", "unlocked", "scratch")


class LitError(ValueError):
    """A LiT run or evaluation cannot start or continue (bad input, a checkpoint that is
    not a LiT model, a mismatched tokenizer…)."""


@dataclass
class LitConfig:
    """Everything a LiT run needs; ``aimv2 lit`` flags map 1:1 onto it.

    The image tower comes from ``image_encoder`` — an AIMv2 checkpoint in any format (a
    run directory, a released folder, a LiT model's image tower), or a preset name for a
    random-init tower drawn from ``seed`` — and gets the LiT preset's pooling head when it
    has none. ``image_tower="locked"`` (LiT) trains only the head, the text tower, the
    projections and the logit scale (a head the checkpoint brought is locked too), with
    the trunk's features computed once when ``cache_features``; ``"unlocked"`` trains the
    whole image tower as well; ``"scratch"`` trains both towers from random init (CLIP).
    ``batch_size`` is the global contrastive batch: under ``torchrun`` / ``mlx.launch``
    each of K ranks holds 1/K of it and the loss sees every rank's embeddings.
    Optimizer defaults follow the CLIP-style recipe (AIMV2.md §5b): AdamW lr 1e-3, betas
    (0.9, 0.95), weight decay 0.2 (torch's ``p·(1 − lr·wd)``; none on biases, norms,
    positions, the query token and the logit scale), warmup then cosine, clip 1.0.

    Example:
        >>> LitConfig(out="o").image_tower
        'locked'
    """

    out: str = field(metadata={"help": "run directory (checkpoints, metrics.jsonl)"})
    preset: str = field(
        default="aimv2-lit-small-patch4-16",
        metadata={"help": "LiT preset: the text tower, the head and the embedding width"},
    )
    spec: S.LiTSpec | None = field(
        default=None, metadata={"help": "LiT spec JSON file or inline JSON (overrides --preset)"}
    )
    image_encoder: str | None = field(
        default=None,
        metadata={
            "help": "image tower: a checkpoint (any format) or a preset name for random init "
            "(default: the LiT preset's tower at random init)"
        },
    )
    image_tower: str = field(
        default="locked",
        metadata={
            "help": "locked (LiT), unlocked (train it too) or scratch (both towers, CLIP)",
            "choices": IMAGE_TOWERS,
        },
    )
    cache_features: bool = field(
        default=True,
        metadata={"help": "locked tower: compute the trunk's features once (no augmentation)"},
    )
    data: str = field(
        default="builtin:digits",
        metadata={"help": "captioned data: builtin:digits, a caption folder, a .jsonl, tar shards"},
    )
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "tokenizer.json (CLIP BPE) or SentencePiece .model (built-in data has its own)"
        },
    )
    backend: str = field(default="torch", metadata={"help": "torch or mlx"})
    steps: int = field(default=500, metadata={"help": "optimizer updates of the whole run"})
    batch_size: int = field(
        default=128,
        metadata={"help": "global contrastive batch; under torchrun/mlx.launch K ranks hold 1/K"},
    )
    seed: int = field(default=0, metadata={"help": "initial weights, data order"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr: float | None = field(default=None, metadata={"help": "final lr (default lr/100)"})
    warmup: int | None = field(default=None, metadata={"help": "warmup updates (default steps/10)"})
    weight_decay: float = field(default=0.2, metadata={"help": "AdamW weight decay"})
    decay_mode: str = field(
        default="torch",
        metadata={
            "help": "torch: p*(1 - lr*wd) as CLIP; decoupled: p*(1 - wd*lr/peak_lr)",
            "choices": ("torch", "decoupled"),
        },
    )
    clip_norm: float | None = field(
        default=1.0, metadata={"help": "global gradient-norm clip (0 disables)"}
    )
    log_every: int = field(default=10, metadata={"help": "updates between metrics rows"})
    save_every: int = field(default=100, metadata={"help": "updates between checkpoints"})
    keep: int = field(default=3, metadata={"help": "checkpoints kept"})
    resume: bool = field(
        default=False, metadata={"help": "continue from the newest checkpoint in --out"}
    )
    num_workers: int = field(default=2, metadata={"help": "data-loader worker processes"})
    stream_shuffle: int = stream_shuffle_field()
    compile: bool = field(default=False, metadata={"help": "torch.compile / mx.compile"})
    device: str | None = field(
        default=None, metadata={"help": "torch device (default: cuda if available)"}
    )
    hflip: bool = field(default=True, metadata={"help": "horizontal flips (uncached images)"})
    crop_scale: tuple[float, float] = field(
        default=(0.4, 1.0), metadata={"help": "RandomResizedCrop area fraction (uncached)"}
    )
    progress: bool = field(default=True, metadata={"help": "progress on stderr"})
    stop_after: int | None = field(
        default=None,
        metadata={"help": "stop (and checkpoint) after this many steps; continue with --resume"},
    )
    dist_timeout: float = field(
        default=600.0,
        metadata={"help": "seconds a collective may wait for the other ranks before the run stops"},
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the spec as its dict).

        Example:
            >>> LitConfig(out="o").to_dict()["image_tower"]
            'locked'
        """
        d = dataclasses.asdict(self)
        d["spec"] = None if self.spec is None else self.spec.to_dict()
        d["crop_scale"] = list(self.crop_scale)
        return d


def optim_config(cfg: LitConfig) -> OptimConfig:
    """The run's AdamW and schedule: warmup ``steps // 10`` unless set, ``min_lr`` lr/100.

    Example:
        >>> optim_config(LitConfig(out="o", steps=50, lr=2e-3)).min_lr
        2e-05
    """
    return OptimConfig(
        lr=cfg.lr,
        min_lr=cfg.min_lr if cfg.min_lr is not None else cfg.lr / 100,
        warmup_steps=cfg.warmup if cfg.warmup is not None else cfg.steps // 10,
        total_steps=cfg.steps,
        weight_decay=cfg.weight_decay,
        decay_mode=cfg.decay_mode,
        clip_norm=cfg.clip_norm,
    )
