"""The backend-agnostic pre-training driver: loop, schedule, logging, checkpoints, resume.

It speaks to a backend only through ``aimv2.backends.<name>.train.Trainer`` (one
update from NumPy micro-batches; optimizer state as canonical NumPy arrays) and the
verbs of :mod:`aimv2.backend`. Every batch and every prefix length is a pure function
of ``(seed, step)``, so a resumed run — on either backend — continues exactly where
the checkpoint left off.

Example:
    >>> import tempfile
    >>> cfg = PretrainConfig(out=tempfile.mkdtemp(), preset="aimv2-test-tiny", steps=2,
    ...                      batch_size=4, progress=False, num_workers=0)
    >>> result = pretrain(cfg)
    >>> result["step"]
    2
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint, presets
from . import specs as S
from .backend import build, get_weights, load_backend, set_weights
from .masks import sample_prefix
from .optim import OptimConfig, lr_at, paper_peak_lr

__all__ = [
    "PretrainConfig",
    "TrainingError",
    "pretrain",
    "resolve_spec",
    "load_tokenizer",
    "caption_loss",
]


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the spec as its dict).

        Example:
            >>> PretrainConfig(out="o").to_dict()["backend"]
            'torch'
        """
        d = dataclasses.asdict(self)
        d["spec"] = None if self.spec is None else self.spec.to_dict()
        d["crop_scale"] = list(self.crop_scale)
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
    from .text import Tokenizer, builtin_tokenizer

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


def _optim_config(cfg: PretrainConfig, spec: S.ModelSpec) -> OptimConfig:
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


def _load_init(path: str, spec: S.ModelSpec) -> dict[str, np.ndarray]:
    """Weights for ``--init``: a checkpoint of this library with the same spec, or a
    weights file holding the full model or just its encoder."""
    from .safetensors import load_file

    p = Path(path)
    if not p.exists():
        raise TrainingError(f"--init {path!r}: no such file or directory")
    if p.is_dir() or p.name == "state.json":
        try:
            ck = checkpoint.load(p, optimizer=False)
        except checkpoint.CheckpointError as err:
            raise TrainingError(f"--init: {err}") from None
        weights, saved = ck.weights, ck.spec
    else:
        weights, saved = load_file(p), None
    full = set(get_weights_names(spec))
    if saved is not None and saved != spec:
        if isinstance(saved, S.ModelSpec) and saved.encoder == spec.encoder:
            weights = {k: v for k, v in weights.items() if k.startswith("encoder.")}
        else:
            raise TrainingError(
                f"--init {path!r}: its spec differs from this run's "
                f"({checkpoint._spec_diff(saved, spec)})"
            )
    if set(weights) != full:
        encoder_only = {
            f"encoder.{k}": v for k, v in weights.items() if not k.startswith("encoder.")
        }
        if set(encoder_only) <= full and encoder_only:
            weights = encoder_only
        if not set(weights) <= full:
            extra = sorted(set(weights) - full)[:5]
            raise TrainingError(f"--init {path!r}: names not in this model: {extra}")
    return weights


def get_weights_names(spec: S.Spec) -> list[str]:
    """Canonical parameter names of ``spec`` (sorted).

    Example:
        >>> get_weights_names(S.NormSpec(width=2))
        ['weight']
    """
    from .weights import parameters

    return sorted(parameters(spec))


class _Metrics:
    """``metrics.jsonl``: one JSON object per logged step, truncated on resume."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        kept = []
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("step", 1 << 60) <= resume_step:
                    kept.append(line)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


class _Progress:
    """One status line, rewritten in place on a terminal, one line per log otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.tty = enabled and sys.stderr.isatty()

    def update(self, step: int, row: dict[str, Any], eta: float) -> None:
        if not self.enabled:
            return
        width = 24
        done = int(width * step / max(self.total, 1))
        bar = "#" * done + "-" * (width - done)
        msg = (
            f"[{bar}] {step}/{self.total} loss {row['loss']:.4f} "
            f"(pixel {row['pixel_loss']:.4f} text {row['text_loss']:.4f}) "
            f"lr {row['lr']:.2e} {row['images_per_s']:.0f} img/s eta {eta:.0f}s"
        )
        sys.stderr.write(("\r" + msg) if self.tty else (msg + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _batches(loader: Any) -> Iterator[dict[str, Any]]:
    yield from loader


def caption_loss(
    model: Any,
    backend: str,
    spec: S.ModelSpec,
    source: Any,
    tokenizer: Any,
    *,
    blank: bool = False,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Mean held-out caption loss (token-weighted) of a pre-training model over ``source``.

    ``blank=True`` replaces every image by a blank one (zeros after normalization: the
    dataset-mean colour), measuring how much the captions owe to the image.

    Example:
        >>> import aimv2
        >>> from aimv2.data import open_source
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> cfg = PretrainConfig(out="o", preset="aimv2-test-tiny")
        >>> m = aimv2.build(spec, "torch")
        >>> src = open_source("builtin:digits", split="heldout")
        >>> loss = caption_loss(m, "torch", spec, src, load_tokenizer(cfg, spec), batch_size=128)
        >>> 3.0 < loss < 6.0
        True
    """
    from .data import Loader

    be = load_backend(backend)
    loader = Loader(source, spec.encoder, tokenizer, batch_size, seed=seed, train=False,
                    num_workers=0, context_length=spec.decoder.context_length)  # fmt: skip
    n = spec.encoder.num_patches
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        images = batch["images"]
        if blank:
            images = np.zeros_like(images)
        tokens = batch["tokens"]
        prefix = sample_prefix(np.random.default_rng([seed, i, 0xE7A1]), len(images), n,
                               spec.prefix)  # fmt: skip
        out = model(be.to_model(model, images), be.to_model(model, tokens), prefix)
        valid = int((tokens != spec.text.pad_id).sum())
        total += float(be.to_numpy(out["text_loss"])) * valid
        count += valid
    if count == 0:
        raise TrainingError("caption_loss: the held-out source holds no caption tokens")
    return total / count


def _heldout_eval(cfg: PretrainConfig, spec: S.ModelSpec, model: Any, tokenizer: Any) -> dict:
    """Held-out caption loss with the images and with blank images (built-in data only)."""
    from .data import open_source

    if tokenizer is None or not cfg.data.startswith("builtin:"):
        return {}
    src = open_source(cfg.data, split="heldout", seed=cfg.seed)
    real = caption_loss(model, cfg.backend, spec, src, tokenizer, seed=cfg.seed)
    blank = caption_loss(model, cfg.backend, spec, src, tokenizer, blank=True, seed=cfg.seed)
    return {"heldout_text_loss": real, "heldout_text_loss_blank_image": blank}


def _comm_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because a peer went away or timed out."""
    names = {k.__name__ for k in type(err).__mro__}
    if names & {"DistError", "DistBackendError", "DistNetworkError", "DistStoreError"}:
        return True
    text = str(err).lower()
    return any(k in text for k in ("[ring]", "connection closed", "connection reset",
                                   "peer", "timed out", "timeout", "broken pipe", "gloo",
                                   "nccl"))  # fmt: skip


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) pre-training; returns the final step, losses and paths.

    Under ``torchrun`` or ``mlx.launch`` this process joins the launcher's group
    (:func:`aimv2.distributed.init_world`) and runs its share of every global batch;
    rank 0 writes metrics, the progress bar and checkpoints. An error names its rank.

    Example:
        >>> import tempfile
        >>> r = pretrain(PretrainConfig(out=tempfile.mkdtemp(), preset="aimv2-test-tiny",
        ...                             steps=1, batch_size=2, progress=False, num_workers=0))
        >>> r["step"], r["finite"]
        (1, True)
    """
    from . import distributed as D

    spec = resolve_spec(cfg)
    if cfg.steps < 1:
        raise TrainingError(f"--steps {cfg.steps}: expected >= 1")
    if cfg.batch_size < 1 or cfg.batch_size % cfg.accumulate:
        raise TrainingError(
            f"--batch-size {cfg.batch_size}: expected a positive multiple of --accumulate "
            f"{cfg.accumulate}"
        )
    if spec.encoder.native:
        raise TrainingError("spec: pre-training needs a fixed image_size (native encoders "
                            "are for inference; pick a fixed-size preset)")  # fmt: skip
    if cfg.shard not in D.SHARD_MODES:
        raise TrainingError(f"--shard {cfg.shard!r}: expected one of {D.SHARD_MODES}")
    try:
        world = D.init_world(cfg.backend, timeout_s=cfg.dist_timeout, device=cfg.device)
    except D.DistributedError as err:
        raise TrainingError(str(err)) from None
    if not world.distributed:
        return _pretrain(cfg, spec, world)
    try:
        result = _pretrain(cfg, spec, world)
    except TrainingError as err:
        failure = TrainingError(f"{world.tag} {err}")
        world.record_failure(failure)
        raise failure from None
    except Exception as err:
        if not _comm_failure(err):
            world.record_failure(err)
            raise
        failure = TrainingError(
            f"{world.tag} lost the other ranks in a collective ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); another rank "
            f"stopped or stopped answering first — its own error is printed by it and in "
            f"the launcher's summary"
        )
        world.record_failure(failure)
        raise failure from err
    world.close()
    return result


def _pretrain(cfg: PretrainConfig, spec: S.ModelSpec, world: Any) -> dict[str, Any]:
    from . import distributed as D
    from .data import Loader, open_source

    chunks = None
    if world.distributed:
        try:
            chunks = D.plan_update(cfg.batch_size, cfg.accumulate, world.size, world.rank)
        except ValueError as err:
            raise TrainingError(str(err)) from None
    out = Path(cfg.out)
    existing = checkpoint.latest(out)
    if world.distributed:
        seen = int(existing.name.split("-")[-1]) if existing is not None else -1
        if not world.agree([seen, D.fingerprint(cfg.to_dict())]):
            raise TrainingError(
                "the ranks disagree about the run: every rank must get the same flags and see "
                f"the same --out (a filesystem shared by all nodes); this rank sees newest "
                f"checkpoint {existing.name if existing else None}"
            )
    if existing is not None and not cfg.resume:
        raise TrainingError(
            f"--out {str(out)!r} already holds a run (newest {existing.name}); pass --resume "
            f"to continue it or choose another --out"
        )
    try:
        source = open_source(cfg.data, split="train", seed=cfg.seed)
    except (FileNotFoundError, ValueError) as err:
        raise TrainingError(f"--data {cfg.data!r}: {err}") from None
    tokenizer = load_tokenizer(cfg, spec)
    be = load_backend(cfg.backend)
    model = build(spec, cfg.backend, seed=cfg.seed)

    start, ck = 0, None
    if cfg.resume and existing is not None:
        try:
            ck = checkpoint.load(existing, spec)
        except checkpoint.CheckpointError as err:
            raise TrainingError(f"--resume: {err}") from None
        set_weights(model, ck.weights)
        start = ck.step
        if ck.state.get("seed", cfg.seed) != cfg.seed:
            raise TrainingError(
                f"--resume: the checkpoint was made with --seed {ck.state['seed']}, not {cfg.seed}"
            )
    elif cfg.init:
        set_weights(model, {**get_weights(model), **_load_init(cfg.init, spec)})
    optim = _optim_config(cfg, spec)
    if not world.distributed:  # else the Trainer places (DDP) or shards (FSDP2) the model
        model = be.cast(model, device=cfg.device or be.default_device())
    trainer = be.Trainer(
        model,
        optim,
        compile=cfg.compile,
        autocast=cfg.autocast,
        world=world if world.distributed else None,
        shard=cfg.shard,
    )
    if ck is not None and ck.optimizer is not None:
        trainer.load_state_arrays(ck.optimizer, ck.state.get("optimizer_step", ck.step))
    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    if start >= end:
        return {"step": start, "checkpoint": str(existing), "loss": None, "elapsed_s": 0.0}

    out.mkdir(parents=True, exist_ok=True)
    metrics = None
    if world.is_main:
        metrics = _Metrics(out / "metrics.jsonl", start if cfg.resume else None)
        (out / "config.json").write_text(
            json.dumps(cfg.to_dict() | {"spec": spec.to_dict()}, indent=2)
        )
    local_batch = cfg.batch_size // world.size
    try:
        loader = Loader(
            source,
            spec.encoder,
            tokenizer,
            local_batch,
            seed=cfg.seed,
            train=True,
            num_workers=cfg.num_workers,
            start_step=start,
            rank=world.rank,
            world_size=world.size,
            context_length=spec.decoder.context_length,
            scale=tuple(cfg.crop_scale),
            hflip=cfg.hflip,
        )
    except ValueError as err:  # e.g. fewer tar shards than ranks, a bad crop scale
        raise TrainingError(f"data loader: {err}") from None
    n = spec.encoder.num_patches
    progress = _Progress(cfg.steps, cfg.progress and world.is_main)
    tokenizer_name = cfg.tokenizer or (cfg.data.split("?")[0] if tokenizer is not None else None)
    state = {"seed": cfg.seed, "config": cfg.to_dict(), "tokenizer": tokenizer_name}
    if world.distributed:
        state["world_size"] = world.size
    last_ckpt = existing
    t0 = time.perf_counter()
    window_t, window_n = t0, 0
    row: dict[str, Any] = {}
    step = start
    micro = cfg.batch_size // cfg.accumulate
    lo = world.rank * local_batch
    try:
        for batch in _batches(loader):
            if step >= end:
                break
            rng = np.random.default_rng([cfg.seed, step, 0x9E37])
            prefix = sample_prefix(rng, cfg.batch_size, n, spec.prefix)
            tokens = batch["tokens"]
            weights = None
            skipped = int(getattr(loader, "skipped", 0))
            if chunks is None:
                parts = [
                    {
                        "images": batch["images"][i : i + micro],
                        "tokens": None if tokens is None else tokens[i : i + micro],
                        "prefix_len": prefix[i : i + micro],
                    }
                    for i in range(0, cfg.batch_size, micro)
                ]
            else:
                # This rank's slice of the global prefix draw, and the global counts
                # that normalize each single-process micro-batch's losses.
                prefix = prefix[lo : lo + local_batch]
                parts = [
                    {
                        "images": batch["images"][c.start : c.stop],
                        "tokens": None if tokens is None else tokens[c.start : c.stop],
                        "prefix_len": prefix[c.start : c.stop],
                    }
                    for c in chunks
                ]
                px, tx = D.loss_counts(spec, tokens, prefix)
                a = cfg.accumulate
                counts = np.zeros(2 * a + 1, dtype=np.int64)
                for c in chunks:
                    counts[c.group] += px[c.start : c.stop].sum()
                    counts[a + c.group] += tx[c.start : c.stop].sum()
                counts[-1] = skipped
                counts = world.sum_ints(counts)
                weights = D.term_weights(chunks, px, tx, counts[:a], counts[a : 2 * a])
                skipped = int(counts[-1])
            lr = lr_at(optim, step)
            try:
                if weights is None:
                    losses = trainer.step(parts, lr)
                else:
                    losses = trainer.step(parts, lr, weights)
            except FloatingPointError as err:
                where = f"; the last good checkpoint is {last_ckpt}" if last_ckpt else ""
                raise TrainingError(f"training stopped: {err}{where}") from None
            step += 1
            window_n += cfg.batch_size
            if step % cfg.log_every == 0 or step == end:
                now = time.perf_counter()
                row = {"step": step, **losses, "lr": lr,
                       "images_per_s": window_n / max(now - window_t, 1e-9),
                       "elapsed_s": now - t0, "skipped": skipped}  # fmt: skip
                if metrics is not None:
                    metrics.write(row)
                eta = (now - t0) / max(step - start, 1) * (cfg.steps - step)
                progress.update(step, row, eta)
                window_t, window_n = now, 0
            if step % cfg.save_every == 0 or step == end:
                last_ckpt = _save(cfg, spec, world, trainer, model, out, step,
                                  {**state, "optimizer_step": trainer.step_count})  # fmt: skip
    finally:
        progress.close()
        close = getattr(loader, "close", None)
        if close:
            close()
    evaluation = _heldout_eval(cfg, spec, model, tokenizer) if step == cfg.steps else {}
    if evaluation and world.is_main:
        (out / "eval.json").write_text(json.dumps({"step": step, **evaluation}, indent=2))
    return {
        **evaluation,
        "step": step,
        "loss": row.get("loss"),
        "pixel_loss": row.get("pixel_loss"),
        "text_loss": row.get("text_loss"),
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "metrics": str(out / "metrics.jsonl"),
        "elapsed_s": time.perf_counter() - t0,
        "finite": math.isfinite(row.get("loss", 0.0) or 0.0),
    }


def _save(
    cfg: PretrainConfig,
    spec: S.ModelSpec,
    world: Any,
    trainer: Any,
    model: Any,
    out: Path,
    step: int,
    state: dict[str, Any],
) -> Path:
    """One logical checkpoint: gathered from every rank (a collective when sharded),
    written atomically by rank 0 alone."""
    if not world.distributed:
        return checkpoint.save(out, step, spec, get_weights(model), trainer.state_arrays(),
                               state, keep=cfg.keep)  # fmt: skip
    weights = trainer.weight_arrays(root_only=True)
    moments = trainer.state_arrays(root_only=True)
    if world.is_main:
        return checkpoint.save(out, step, spec, weights, moments, state, keep=cfg.keep)
    return checkpoint.directory(out, step)
