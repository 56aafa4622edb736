"""A pre-training run's configuration: flags, the model spec, the tokenizer, the optimizer.

Example:
    >>> cfg = PretrainConfig(out="runs/x", preset="aimv2-test-tiny", steps=100)
    >>> optim_config(cfg, resolve_spec(cfg)).warmup_steps
    10
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import presets
from .. import specs as S
from ..optim import OptimConfig, paper_peak_lr
from ..text import Tokenizer, builtin_tokenizer

__all__ = ["TrainingError", "PretrainConfig", "resolve_spec", "load_tokenizer", "optim_config"]


class TrainingError(RuntimeError):
    """A run cannot start or continue (bad input, NaN loss, mismatched checkpoint)."""


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
    per image and ``reduced_decode`` decodes JPEGs at the size the crop needs
    (:class:`aimv2.data.Loader`); ``num_workers`` are loader processes.

    Example:
        >>> PretrainConfig(out="runs/x").preset
        'aimv2-small-patch4-16'
    """

    out: str
    preset: str = "aimv2-small-patch4-16"
    spec: S.ModelSpec | None = None
    data: str = "builtin:digits"
    backend: str = "torch"
    steps: int = 300
    batch_size: int = 64
    seed: int = 0
    lr: float | None = None
    min_lr: float | None = None
    warmup: int | None = None
    weight_decay: float = 1e-4
    decay_mode: str = "decoupled"
    clip_norm: float | None = 1.0
    accumulate: int = 1
    log_every: int = 10
    save_every: int = 100
    keep: int = 3
    init: str | None = None
    resume: bool = False
    tokenizer: str | None = None
    num_workers: int = 2
    compile: bool = False
    autocast: str | None = None
    device: str | None = None
    hflip: bool = True
    crop_scale: tuple[float, float] = (0.4, 1.0)
    progress: bool = True
    stop_after: int | None = None
    shard: str = "none"
    dist_timeout: float = 600.0
    image_column: str | None = None
    caption_columns: tuple[str, ...] | None = None
    caption_sampling: str = "first"
    reduced_decode: bool = True

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
    warmup = cfg.warmup if cfg.warmup is not None else min(12_500, cfg.steps // 10)
    return OptimConfig(
        lr=lr,
        min_lr=cfg.min_lr if cfg.min_lr is not None else lr / 100,
        warmup_steps=warmup,
        total_steps=cfg.steps,
        weight_decay=cfg.weight_decay,
        decay_mode=cfg.decay_mode,
        clip_norm=cfg.clip_norm,
        accumulate=cfg.accumulate,
    )
