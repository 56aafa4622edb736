"""A pre-training run's configuration: flags, the model spec, the tokenizer, the optimizer.

Example:
    >>> cfg = PretrainConfig(out="runs/x", preset="aimv2-test-tiny", steps=100)
    >>> optim_config(cfg, resolve_spec(cfg)).warmup_steps
    10
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import presets
from .. import specs as S
from ..data.loader import STREAM_SHUFFLE
from ..optim import OptimConfig, paper_peak_lr
from ..text import Tokenizer, builtin_tokenizer

__all__ = [
    "TrainingError",
    "PretrainConfig",
    "resolve_spec",
    "load_tokenizer",
    "optim_config",
    "stream_shuffle_field",
]


class TrainingError(RuntimeError):
    """A run cannot start or continue (bad input, NaN loss, mismatched checkpoint)."""


def stream_shuffle_field() -> Any:
    """The ``stream_shuffle`` field every training config has (pretrain, LiT, finetune):
    its default and its flag's help, written once.

    Example:
        >>> stream_shuffle_field().default
        1000
    """
    return field(
        default=STREAM_SHUFFLE,
        metadata={
            "help": "tar shards: samples mixed through a buffer of this many, shards in a new "
            "order each pass (1: shards only, 0: file order; a resumed run keeps its own)"
        },
    )


@dataclass
class PretrainConfig:
    """Everything a pre-training run needs; ``aimv2 pretrain`` flags map 1:1 onto it.

    ``batch_size`` is the (global) batch of one update; ``accumulate`` splits it into
    that many micro-batches. Under ``torchrun`` / ``mlx.launch`` with K ranks each rank
    loads ``batch_size // K`` of it and the run equals one process with the same
    ``batch_size`` (see :mod:`aimv2.distributed`); ``shard`` picks DDP (``"none"``) or
    FSDP2 (``"full"``) on torch, and collectives that outlast ``dist_timeout`` seconds
    end the run. ``lr=None`` takes the paper's peak lr for the encoder size;
    ``warmup=None`` is min(12,500, steps // 10); ``min_lr=None`` is lr / 100.
    ``stop_after`` ends the run (with a checkpoint) after that many steps while the
    schedule stays planned for ``steps`` — continue later with ``resume``.
    ``image_column`` / ``caption_columns`` name the columns of Parquet and Arrow data;
    ``caption_sampling`` (``first``, ``random``, ``all``) picks among several captions
    per image and ``reduced_decode`` decodes JPEGs at the size the crop needs;
    ``stream_shuffle`` is the sample buffer of tar shards (:class:`aimv2.data.Loader`);
    ``num_workers`` are loader processes.

    Example:
        >>> PretrainConfig(out="runs/x").preset
        'aimv2-small-patch4-16'
    """

    out: str = field(metadata={"help": "run directory (checkpoints, metrics.jsonl)"})
    preset: str = field(default="aimv2-small-patch4-16", metadata={"help": "model preset"})
    spec: S.ModelSpec | None = field(
        default=None, metadata={"help": "spec JSON file or inline JSON (overrides --preset)"}
    )
    data: str = field(
        default="builtin:digits",
        metadata={
            "help": "builtin:digits, builtin:shapes, a caption folder, a .jsonl, .tar shards, .parquet files or an Arrow / save_to_disk folder"
        },
    )
    backend: str = field(default="torch", metadata={"help": "torch or mlx"})
    steps: int = field(default=300, metadata={"help": "optimizer updates of the whole run"})
    batch_size: int = field(
        default=64,
        metadata={
            "help": "global batch per update; under torchrun/mlx.launch each of K ranks loads 1/K"
        },
    )
    seed: int = field(default=0, metadata={"help": "initial weights, data order, prefixes"})
    lr: float | None = field(
        default=None, metadata={"help": "peak lr (default: the paper's for the encoder size)"}
    )
    min_lr: float | None = field(default=None, metadata={"help": "final lr (default lr/100)"})
    warmup: int | None = field(
        default=None, metadata={"help": "warmup updates (default min(12500, steps/10))"}
    )
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    decay_mode: str = field(
        default="decoupled",
        metadata={
            "help": "decoupled: p*(1 - wd*lr/peak_lr) as in the paper; torch: p*(1 - lr*wd)",
            "choices": ("decoupled", "torch"),
        },
    )
    clip_norm: float | None = field(
        default=1.0, metadata={"help": "global gradient-norm clip (0 disables)"}
    )
    accumulate: int = field(default=1, metadata={"help": "micro-batches per update"})
    log_every: int = field(default=10, metadata={"help": "updates between metrics rows"})
    save_every: int = field(default=100, metadata={"help": "updates between checkpoints"})
    keep: int = field(default=3, metadata={"help": "checkpoints kept"})
    init: str | None = field(
        default=None, metadata={"help": "start from these weights (checkpoint or .safetensors)"}
    )
    resume: bool = field(
        default=False, metadata={"help": "continue from the newest checkpoint in --out"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "SentencePiece model (built-in data has its own)"}
    )
    num_workers: int = field(default=2, metadata={"help": "data-loader worker processes"})
    compile: bool = field(default=False, metadata={"help": "torch.compile / mx.compile"})
    autocast: str | None = field(
        default=None, metadata={"help": "bf16 autocast (torch)", "choices": ("bf16",)}
    )
    device: str | None = field(
        default=None, metadata={"help": "torch device (default: cuda if available)"}
    )
    hflip: bool = field(default=True, metadata={"help": "horizontal-flip augmentation"})
    crop_scale: tuple[float, float] = field(
        default=(0.4, 1.0), metadata={"help": "RandomResizedCrop area fraction (min, max)"}
    )
    progress: bool = field(default=True, metadata={"help": "progress bar on stderr"})
    stop_after: int | None = field(
        default=None,
        metadata={
            "help": "stop (and checkpoint) after this many steps; the schedule still plans "
            "for --steps; continue with --resume"
        },
    )
    shard: str = field(
        default="none",
        metadata={
            "help": "under torchrun: none = DDP (replicated model), full = FSDP2 fully_shard "
            "(parameters, gradients and optimizer state sharded over ranks)",
            "choices": ("none", "full"),
        },
    )
    dist_timeout: float = field(
        default=600.0,
        metadata={"help": "seconds a collective may wait for the other ranks before the run stops"},
    )
    image_column: str | None = field(
        default=None, metadata={"help": "Parquet/Arrow: the image column (default: image, jpg…)"}
    )
    caption_columns: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "help": "Parquet/Arrow: caption columns (alt-text, synthetic…; default: caption, text…)"
        },
    )
    caption_sampling: str = field(
        default="first",
        metadata={
            "help": "several captions per image: the first, a seeded random one per step, or "
            "all (each caption a sample)",
            "choices": ("first", "random", "all"),
        },
    )
    reduced_decode: bool = field(
        default=True, metadata={"help": "decode JPEGs at the reduced size the crop needs"}
    )
    stream_shuffle: int = stream_shuffle_field()
    allow_outside_paths: bool = field(
        default=False,
        metadata={
            "help": "let a .jsonl manifest name images outside its folder (absolute paths, "
            "../); off: such lines are skipped"
        },
    )

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the spec as its dict).

        Example:
            >>> PretrainConfig(out="o").to_dict()["backend"]
            'torch'
        """
        d = dataclasses.asdict(self)
        d["spec"] = None if self.spec is None else self.spec.to_dict()
        d["crop_scale"] = list(self.crop_scale)
        if self.caption_columns is not None:
            d["caption_columns"] = list(self.caption_columns)
        return d


def _bad(name: str, value: Any, expected: str) -> TrainingError:
    return TrainingError(f"PretrainConfig.{name}={value!r}: expected {expected}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate(cfg: PretrainConfig) -> None:
    """Refuse settings no run can use, by field name, before anything is built or written."""
    if not isinstance(cfg.out, (str, Path)) or not str(cfg.out):
        raise _bad("out", cfg.out, "a directory path")
    for name in ("steps", "batch_size", "accumulate", "log_every", "save_every", "keep"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _bad(name, value, "a positive integer")
    for name in ("stop_after",):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise _bad(name, value, "a positive integer or None")
    for name in ("seed", "num_workers", "stream_shuffle"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _bad(name, value, "a non-negative integer")
    if cfg.warmup is not None and (not isinstance(cfg.warmup, int) or cfg.warmup < 0):
        raise _bad("warmup", cfg.warmup, "a non-negative integer or None")
    if cfg.lr is not None and not (_number(cfg.lr) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise _bad("lr", cfg.lr, "a finite number > 0 or None")
    if cfg.min_lr is not None:
        if not (_number(cfg.min_lr) and math.isfinite(cfg.min_lr) and cfg.min_lr >= 0):
            raise _bad("min_lr", cfg.min_lr, "a finite number >= 0 or None")
        if cfg.lr is not None and cfg.min_lr > cfg.lr:
            raise TrainingError(
                f"PretrainConfig.min_lr={cfg.min_lr!r}: expected 0 <= min_lr <= lr (lr={cfg.lr!r})"
            )
    for name in ("weight_decay", "dist_timeout"):
        value = getattr(cfg, name)
        if not (_number(value) and math.isfinite(value) and value >= 0):
            raise _bad(name, value, "a finite number >= 0")
    if cfg.dist_timeout == 0:
        raise _bad("dist_timeout", cfg.dist_timeout, "seconds > 0")
    if cfg.clip_norm is not None and not (
        _number(cfg.clip_norm) and math.isfinite(cfg.clip_norm) and cfg.clip_norm >= 0
    ):
        raise _bad("clip_norm", cfg.clip_norm, "a finite number >= 0 (0 or None: no clipping)")
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            raise _bad(f.name, value, f"one of {choices}")
    lo, hi = (tuple(cfg.crop_scale) + (None, None))[:2]
    if not (_number(lo) and _number(hi) and 0 < lo <= hi <= 1):
        raise _bad("crop_scale", cfg.crop_scale, "(min, max) with 0 < min <= max <= 1")
    if cfg.batch_size % cfg.accumulate:
        raise TrainingError(
            f"PretrainConfig.batch_size={cfg.batch_size}: expected a multiple of "
            f"accumulate={cfg.accumulate} (each update splits the batch into that many "
            f"micro-batches)"
        )


def resolve_spec(cfg: PretrainConfig) -> S.ModelSpec:
    """The run's model spec: ``cfg.spec`` or the named preset; it must have a decoder.

    Example:
        >>> resolve_spec(PretrainConfig(out="o", preset="aimv2-test-tiny")).encoder.width
        32
    """
    spec = cfg.spec
    if spec is None:
        try:
            spec = presets.get(cfg.preset)
        except KeyError as err:
            raise TrainingError(err.args[0]) from None
    if not isinstance(spec, S.ModelSpec) or spec.decoder is None:
        raise TrainingError("spec: pre-training needs a ModelSpec with a decoder and objectives")
    return spec


def load_tokenizer(cfg: PretrainConfig, spec: S.ModelSpec) -> Any:
    """The run's tokenizer: ``cfg.tokenizer``, or a deterministic one for a built-in set.

    Example:
        >>> tok = load_tokenizer(PretrainConfig(out="o", preset="aimv2-test-tiny"),
        ...                      presets.get("aimv2-test-tiny"))
        >>> tok.vocab_size <= 64
        True
    """
    if not spec.has_text_head:
        return None
    vocab = spec.decoder.vocab_size
    if cfg.tokenizer:
        if not Path(cfg.tokenizer).is_file():
            raise TrainingError(f"--tokenizer {cfg.tokenizer!r}: no such file")
        tok = Tokenizer.load(cfg.tokenizer)
    elif cfg.data.startswith("builtin:"):
        tok = builtin_tokenizer(cfg.data.split("?")[0], vocab_size=vocab)
    else:
        raise TrainingError(
            f"--data {cfg.data!r} needs --tokenizer FILE (train one with "
            f"'aimv2 tokenizer train --data {cfg.data} --vocab-size {vocab} --out FILE')"
        )
    if tok.vocab_size > vocab:
        raise TrainingError(
            f"tokenizer has {tok.vocab_size} pieces but the decoder's vocab_size is {vocab}"
        )
    return tok


def optim_config(cfg: PretrainConfig, spec: S.ModelSpec) -> OptimConfig:
    """The run's optimizer settings: the paper's peak lr for the encoder size unless
    ``lr`` is set, warmup min(12,500, steps // 10), min_lr lr / 100.

    Example:
        >>> optim_config(PretrainConfig(out="o", preset="aimv2-test-tiny"), presets.get(
        ...     "aimv2-test-tiny")).lr
        0.001
    """
    lr = cfg.lr if cfg.lr is not None else paper_peak_lr(spec)
    if cfg.min_lr is not None and cfg.min_lr > lr:
        raise TrainingError(
            f"PretrainConfig.min_lr={cfg.min_lr!r}: expected 0 <= min_lr <= lr (the paper's "
            f"peak lr for this encoder, {lr!r}, as --lr is not set)"
        )
    warmup = cfg.warmup if cfg.warmup is not None else min(12_500, cfg.steps // 10)
    return OptimConfig(
        lr=lr,
        min_lr=cfg.min_lr if cfg.min_lr is not None else lr / 100,
        warmup_steps=warmup,
        total_steps=cfg.steps,
        weight_decay=cfg.weight_decay,
        decay_mode=cfg.decay_mode,
        clip_norm=cfg.clip_norm or None,
        accumulate=cfg.accumulate,
    )
