"""A fine-tuning run's configuration (``aimv2 finetune``'s flags) and its optimizer settings.

Example:
    >>> cfg = FinetuneConfig(out="runs/ft", preset="aimv2-test-tiny", steps=100)
    >>> optim_config(cfg, 100).warmup_steps, optim_config(cfg, 100).min_lr
    (10, 1e-05)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..optim import OptimConfig
from ..training.config import stream_shuffle_field

__all__ = ["FinetuneError", "FinetuneConfig", "optim_config", "HEADS"]

HEADS = ("attentive", "linear")


class FinetuneError(RuntimeError):
    """A fine-tuning run cannot start or continue (bad input, NaN loss, mismatched run)."""


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs; ``aimv2 finetune`` flags map 1:1 onto it.

    The encoder comes from ``checkpoint`` (a run or checkpoint directory, or any format
    :func:`aimv2.from_pretrained` reads) or, at random initialization, from ``preset``.
    A classifier head replaces any head it had: ``attentive`` (attention pooling with
    one learned query, AIMv2's probe head) or ``linear`` (on mean-pooled tokens).

    The learning rate of a parameter is ``lr · layer_decay^(depth + 1 − layer)`` where
    ``layer`` is 0 for the patch embedding and positions, i + 1 for trunk block i, and
    depth + 1 for the final norm and the head (:func:`aimv2.finetune.layer_scales`);
    ``freeze_blocks=k`` freezes the patch embedding, the positions and blocks 0…k−1.
    ``lora_rank > 0`` freezes the whole encoder and trains LoRA adapters on every block's
    attention and feed-forward projections (``alpha / rank`` scale) plus the head; the
    saved model has them merged. ``batch_size`` is the global batch of one update
    (under ``torchrun`` / ``mlx.launch`` each of K ranks loads 1/K of it).
    ``steps=None`` runs ``epochs`` passes over the training split; ``warmup=None`` is a
    tenth of the steps and ``min_lr=None`` lr / 100. ``heldout`` names a labelled
    held-out source; without it a built-in set's own held-out split is used, or a fixed
    20% of the training source.

    Example:
        >>> FinetuneConfig(out="o").head
        'attentive'
    """

    out: str = field(metadata={"help": "run directory (checkpoints, metrics.jsonl, model/)"})
    checkpoint: str | None = field(
        default=None, metadata={"help": "pre-trained encoder: run/checkpoint dir or any format"}
    )
    preset: str | None = field(
        default=None, metadata={"help": "random-init encoder of this preset/spec instead"}
    )
    data: str = field(
        default="builtin:digits",
        metadata={"help": "labelled data: builtin:digits, imagefolder:DIR, a .jsonl with labels"},
    )
    heldout: str | None = field(
        default=None, metadata={"help": "labelled held-out source (default: see docs)"}
    )
    backend: str = field(default="torch", metadata={"help": "torch or mlx"})
    head: str = field(
        default="attentive",
        metadata={"help": "classifier head", "choices": HEADS},
    )
    head_heads: int = field(default=8, metadata={"help": "heads of the attentive head"})
    num_classes: int | None = field(
        default=None, metadata={"help": "classes (default: from the training labels)"}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "fine-tune at this input size (positions resampled)"}
    )
    epochs: float = field(default=10.0, metadata={"help": "passes over the training split"})
    steps: int | None = field(default=None, metadata={"help": "updates (overrides --epochs)"})
    batch_size: int = field(default=64, metadata={"help": "global batch per update"})
    lr: float = field(default=1e-3, metadata={"help": "peak lr of the head (top layer)"})
    min_lr: float | None = field(default=None, metadata={"help": "final lr (default lr/100)"})
    warmup: int | None = field(default=None, metadata={"help": "warmup updates (default steps/10)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    decay_mode: str = field(
        default="torch",
        metadata={
            "help": "torch: p*(1 - lr*wd); decoupled: p*(1 - wd*lr/peak_lr) as in pre-training",
            "choices": ("decoupled", "torch"),
        },
    )
    layer_decay: float = field(
        default=0.75, metadata={"help": "lr factor per block below the head (1: off)"}
    )
    freeze_blocks: int = field(
        default=0, metadata={"help": "freeze the patch embedding and the first k blocks"}
    )
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank (0: full fine-tuning)"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scale alpha/rank)"})
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing"})
    clip_norm: float | None = field(
        default=1.0, metadata={"help": "global gradient-norm clip (0 disables)"}
    )
    accumulate: int = field(default=1, metadata={"help": "micro-batches per update"})
    crop_scale: tuple[float, float] = field(
        default=(0.4, 1.0), metadata={"help": "RandomResizedCrop area fraction (min, max)"}
    )
    hflip: bool = field(default=True, metadata={"help": "horizontal-flip augmentation"})
    seed: int = field(default=0, metadata={"help": "head/adapter init, data order"})
    log_every: int = field(default=10, metadata={"help": "updates between metrics rows"})
    save_every: int = field(default=200, metadata={"help": "updates between checkpoints"})
    eval_every: int = field(
        default=0, metadata={"help": "updates between held-out evaluations (0: at the end)"}
    )
    keep: int = field(default=2, metadata={"help": "checkpoints kept"})
    resume: bool = field(
        default=False, metadata={"help": "continue from the newest checkpoint in --out"}
    )
    num_workers: int = field(default=2, metadata={"help": "data-loader worker processes"})
    stream_shuffle: int = stream_shuffle_field()
    compile: bool = field(default=False, metadata={"help": "torch.compile / mx.compile"})
    autocast: str | None = field(
        default=None, metadata={"help": "bf16 autocast (torch, CUDA)", "choices": ("bf16",)}
    )
    device: str | None = field(
        default=None, metadata={"help": "torch device (default: cuda if available)"}
    )
    progress: bool = field(default=True, metadata={"help": "progress bar on stderr"})
    stop_after: int | None = field(
        default=None,
        metadata={"help": "stop (and checkpoint) after this many steps; continue with --resume"},
    )
    shard: str = field(
        default="none",
        metadata={"help": "under torchrun: none = DDP, full = FSDP2", "choices": ("none", "full")},
    )
    dist_timeout: float = field(
        default=600.0, metadata={"help": "seconds a collective may wait for the other ranks"}
    )

    def __post_init__(self) -> None:
        checks = [
            (self.head in HEADS, "head", f"expected one of {HEADS}"),
            (self.epochs > 0, "epochs", "expected > 0"),
            (self.steps is None or self.steps >= 1, "steps", "expected >= 1"),
            (self.batch_size >= 1, "batch_size", "expected >= 1"),
            (self.lr > 0, "lr", "expected > 0"),
            (0 < self.layer_decay <= 1, "layer_decay", "expected 0 < value <= 1"),
            (self.freeze_blocks >= 0, "freeze_blocks", "expected >= 0"),
            (self.lora_rank >= 0, "lora_rank", "expected >= 0 (0: no LoRA)"),
            (self.lora_alpha > 0, "lora_alpha", "expected > 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "expected 0 <= value < 1"),
            (self.accumulate >= 1, "accumulate", "expected >= 1"),
            (self.head_heads >= 1, "head_heads", "expected >= 1"),
            (self.num_classes is None or self.num_classes >= 2, "num_classes", "expected >= 2"),
            (self.log_every >= 1, "log_every", "expected >= 1"),
            (self.save_every >= 1, "save_every", "expected >= 1"),
            (self.eval_every >= 0, "eval_every", "expected >= 0"),
        ]
        for ok, name, expected in checks:
            if not ok:
                flag = "--" + name.replace("_", "-")
                raise FinetuneError(f"{name}={getattr(self, name)!r} ({flag}): {expected}")
        if self.lora_rank and self.freeze_blocks:
            raise FinetuneError(
                "--freeze-blocks with --lora-rank: LoRA already freezes the whole encoder"
            )
        self.crop_scale = tuple(self.crop_scale)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict.

        Example:
            >>> FinetuneConfig(out="o").to_dict()["crop_scale"]
            [0.4, 1.0]
        """
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(self.crop_scale)
        return d


def optim_config(
    cfg: FinetuneConfig, steps: int, lr_scales: dict[str, float] | None = None
) -> OptimConfig:
    """The run's AdamW settings for ``steps`` updates: warmup a tenth of them unless
    ``warmup`` is set, cosine to ``min_lr`` (lr / 100 by default), per-parameter
    ``lr_scales`` (layer-wise decay and freezing).

    Example:
        >>> optim_config(FinetuneConfig(out="o", lr=2e-3), 50).min_lr
        2e-05
    """
    warmup = cfg.warmup if cfg.warmup is not None else steps // 10
    return OptimConfig(
        lr=cfg.lr,
        min_lr=cfg.min_lr if cfg.min_lr is not None else cfg.lr / 100,
        warmup_steps=warmup,
        total_steps=steps,
        weight_decay=cfg.weight_decay,
        decay_mode=cfg.decay_mode,
        clip_norm=cfg.clip_norm if cfg.clip_norm else None,
        accumulate=cfg.accumulate,
        lr_scales=lr_scales or {},
    )
