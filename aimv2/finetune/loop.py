"""The fine-tuning loop: schedule, micro-batches, logging, checkpoints, resume, ranks, and
the final merged model and ``finetune.json``.

It speaks to a backend only through the contract: the backend's ``Trainer`` (with the
run's per-parameter learning-rate scales in its :class:`~aimv2.optim.OptimConfig`) and
its ``classifier_loss`` verb. Every batch is a pure function of ``(seed, step)``, so a
resumed run — on either backend — continues exactly where the checkpoint left off, and
K ranks with global batch B follow the run of one process with batch B.

Example:
    >>> import tempfile
    >>> cfg = FinetuneConfig(out=tempfile.mkdtemp(), preset="aimv2-test-tiny", steps=2,
    ...                      batch_size=8, progress=False, num_workers=0)
    >>> r = finetune(cfg)
    >>> r["step"], 0.0 <= r["heldout_accuracy"] <= 1.0
    (2, True)
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from .. import atomic, checkpoint
from .. import distributed as D
from .. import specs as S
from ..backend import build, load_backend
from ..data import IndexedSource, Loader
from ..formats import save_pretrained
from ..inputs import check_classifier_batch
from ..lora import has_lora, merge_lora
from ..optim import lr_at
from ..progress import OWN_ETA_FORMAT, Progress
from ..training.log import Metrics
from .config import FinetuneConfig, FinetuneError, optim_config
from .data import accuracy, num_classes, splits
from .model import prepare, source_encoder, trainable_count

__all__ = ["finetune", "planned_steps"]

# samples of the training split scored for the train accuracy in finetune.json
TRAIN_EVAL_LIMIT = 10_000


def planned_steps(cfg: FinetuneConfig, train_size: int | None) -> int:
    """Updates of the whole run: ``steps``, or ``ceil(epochs · train_size / batch_size)``.

    Example:
        >>> planned_steps(FinetuneConfig(out="o", epochs=2.0, batch_size=64), 1438)
        45
    """
    if cfg.steps is not None:
        return cfg.steps
    if train_size is None:
        raise FinetuneError("a streamed training source has no length: give steps (--steps)")
    return max(1, math.ceil(cfg.epochs * train_size / cfg.batch_size))


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run (or resume) fine-tuning; returns the final step, accuracies and paths.

    Writes ``OUT/metrics.jsonl``, ``OUT/ckpt-*`` (training state, adapters unmerged, for
    ``resume``), and at the end ``OUT/model/`` (the classifier, LoRA merged: a plain
    encoder with its head that loads anywhere) and ``OUT/finetune.json`` (train and
    held-out accuracy). Under ``torchrun`` / ``mlx.launch`` this process runs its share
    of every global batch; rank 0 writes. A NaN/inf loss stops the run, naming the last
    good checkpoint.

    Example:
        >>> import tempfile
        >>> r = finetune(FinetuneConfig(out=tempfile.mkdtemp(), preset="aimv2-test-tiny",
        ...              steps=1, batch_size=4, progress=False, num_workers=0, head="linear"))
        >>> Path(r["model"]).name, r["finite"]
        ('model', True)
    """
    try:
        world = D.init_world(cfg.backend, timeout_s=cfg.dist_timeout, device=cfg.device)
    except D.DistributedError as err:
        raise FinetuneError(str(err)) from None
    if not world.distributed:
        return _finetune(cfg, world)
    try:
        result = _finetune(cfg, world)
    except FinetuneError as err:
        failure = FinetuneError(f"{world.tag} {err}")
        world.record_failure(failure)
        raise failure from None
    except Exception as err:
        world.record_failure(err)
        raise
    world.close()
    return result


def _finetune(cfg: FinetuneConfig, world: Any) -> dict[str, Any]:
    try:
        chunks = D.plan_update(cfg.batch_size, cfg.accumulate, world.size, world.rank)
    except ValueError as err:
        raise FinetuneError(str(err)) from None
    out = Path(cfg.out)
    existing = checkpoint.latest(out)
    if world.distributed and not world.agree(
        [int(existing.name.split("-")[-1]) if existing else -1, D.fingerprint(cfg.to_dict())]
    ):
        raise FinetuneError(
            "the ranks disagree about the run: every rank must get the same flags and see the "
            "same --out"
        )
    if existing is not None and not cfg.resume:
        raise FinetuneError(
            f"out={str(out)!r} already holds a run (newest {existing.name}); pass resume "
            f"(--resume) to continue it or choose another out"
        )
    try:
        train_src, heldout_src = splits(cfg.data, cfg.heldout, cfg.seed)
        classes = cfg.num_classes or num_classes(train_src)
    except ValueError as err:
        raise FinetuneError(f"data: {err}") from None
    train_size = len(train_src) if isinstance(train_src, IndexedSource) else None
    steps = planned_steps(cfg, train_size)
    spec, weights, scales = prepare(cfg, classes, source_encoder(cfg))
    optim = optim_config(cfg, steps, scales)
    be = load_backend(cfg.backend)
    start, ck = 0, None
    if cfg.resume and existing is not None:
        try:
            ck = checkpoint.load(existing, spec)
        except checkpoint.CheckpointError as err:
            raise FinetuneError(f"resume: {err}") from None
        weights, start = ck.weights, ck.step
    model = build(spec, cfg.backend, weights=weights)
    if not world.distributed:
        model = be.cast(model, device=cfg.device or be.default_device())
    try:
        trainer = be.Trainer(
            model,
            optim,
            compile=cfg.compile,
            autocast=cfg.autocast,
            loss_fn=be.classifier_loss(cfg.label_smoothing),
            world=world if world.distributed else None,
            shard=cfg.shard,
        )
    except ValueError as err:  # e.g. autocast on MLX
        raise FinetuneError(str(err)) from None
    if ck is not None and ck.optimizer is not None:
        trainer.load_state_arrays(ck.optimizer, ck.state.get("optimizer_step", ck.step))
    end = steps if cfg.stop_after is None else min(steps, cfg.stop_after)
    trained, total = trainable_count(spec, scales)
    state = {"seed": cfg.seed, "config": cfg.to_dict(), "kind": "finetune", "steps": steps}
    out.mkdir(parents=True, exist_ok=True)
    metrics = (
        Metrics(out / "metrics.jsonl", start if cfg.resume else None) if world.is_main else None
    )
    if world.is_main:
        atomic.write_json(out / "config.json", cfg.to_dict() | {"spec": spec.to_dict()})
    local = cfg.batch_size // world.size
    position, shuffle = D.stream_resume(
        train_src, ck.state if ck else None, world, cfg.stream_shuffle
    )
    try:
        loader = Loader(
            train_src,
            spec,
            None,
            local,
            seed=cfg.seed,
            train=True,
            num_workers=cfg.num_workers,
            start_step=start,
            rank=world.rank,
            world_size=world.size,
            scale=tuple(cfg.crop_scale),
            hflip=cfg.hflip,
            stream_shuffle=shuffle,
            stream_position=position,
        )
    except ValueError as err:
        raise FinetuneError(f"data loader: {err}") from None
    progress = Progress(
        steps,
        "finetune",
        unit="steps",
        enabled=cfg.progress and world.is_main,
        interval=0,
        bar_format=OWN_ETA_FORMAT,
    )
    progress.moveto(start)
    last_ckpt, row, step = existing, {}, start
    t0 = time.perf_counter()
    try:
        position = None  # where a tar-shard stream is, after the last batch
        for batch in loader if start < end else ():
            if step >= end:
                break
            position = batch["stream_position"]
            parts = [
                {
                    "images": batch["images"][c.start : c.stop],
                    "labels": batch["labels"][c.start : c.stop],
                }
                for c in chunks
            ]
            try:
                check_classifier_batch(spec, batch)
            except ValueError as err:
                raise FinetuneError(f"data: {err}") from None
            lr = lr_at(optim, step)
            try:
                losses = trainer.step(parts, lr)
            except FloatingPointError as err:
                where = f"; the last good checkpoint is {last_ckpt}" if last_ckpt else ""
                raise FinetuneError(f"training stopped: {err}{where}") from None
            step += 1
            if step % cfg.log_every == 0 or step == end:
                elapsed = time.perf_counter() - t0
                row = {"step": step, **losses, "lr": lr, "elapsed_s": elapsed}
                if cfg.eval_every and step % cfg.eval_every == 0 and step != end:
                    row["heldout_accuracy"] = accuracy(model, heldout_src)[0]
                if metrics is not None:
                    metrics.write(row)
                eta = elapsed / max(step - start, 1) * (steps - step)
                progress.moveto(
                    step,
                    f"loss {losses['loss']:.4f} acc {losses.get('accuracy', 0.0):.3f} "
                    f"lr {lr:.2e} eta {eta:.0f}s",
                )
            if step % cfg.save_every == 0 or step == end:
                extra = D.stream_state(world, position, shuffle)
                last_ckpt = _save(cfg, spec, world, trainer, out, step, state | extra)
    finally:
        progress.close()
        close = getattr(loader, "close", None)
        if close:
            close()
    result: dict[str, Any] = {
        "step": step,
        "steps": steps,
        "loss": row.get("loss"),
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "metrics": str(out / "metrics.jsonl"),
        "elapsed_s": time.perf_counter() - t0,
        "finite": math.isfinite(row.get("loss", 0.0) or 0.0),
        "trainable_params": trained,
        "params": total,
    }
    if step < steps:
        return result
    return {**result, **_finish(cfg, spec, trainer, world, out, train_src, heldout_src, step)}


def _save(
    cfg: FinetuneConfig,
    spec: S.Spec,
    world: Any,
    trainer: Any,
    out: Path,
    step: int,
    state: dict[str, Any],
) -> Path:
    """One checkpoint (a collective when sharded), written atomically by rank 0."""
    weights = trainer.weight_arrays(root_only=True)
    moments = trainer.state_arrays(root_only=True)
    state = {**state, "optimizer_step": trainer.step_count}
    if world.is_main:
        return checkpoint.save(out, step, spec, weights, moments, state, keep=cfg.keep)
    return checkpoint.directory(out, step)


def _finish(
    cfg: FinetuneConfig,
    spec: S.Spec,
    trainer: Any,
    world: Any,
    out: Path,
    train_src: Any,
    heldout_src: Any,
    step: int,
) -> dict[str, Any]:
    """Merge, score and save the final model (rank 0), and write ``finetune.json``."""
    weights = trainer.weight_arrays(root_only=True)
    if not world.is_main:
        world.barrier()
        return {}
    final_spec, final = merge_lora(spec, weights) if has_lora(spec) else (spec, weights)
    model = build(final_spec, cfg.backend, weights=final)
    be = load_backend(cfg.backend)
    if not world.distributed:
        model = be.cast(model, device=cfg.device or be.default_device())
    heldout_acc, heldout_n = accuracy(model, heldout_src)
    train_acc, train_n = accuracy(model, train_src, limit=TRAIN_EVAL_LIMIT)
    path = save_pretrained(model, out / "model", format="aimv2", overwrite=True)
    report = {
        "step": step,
        "train_accuracy": train_acc,
        "train_scored": train_n,
        "heldout_accuracy": heldout_acc,
        "heldout_size": heldout_n,
        "num_classes": final_spec.head.out_dim,
        "lora_merged": has_lora(spec),
        "model": str(path),
        "config": cfg.to_dict(),
    }
    atomic.write_json(out / "finetune.json", report)
    if world.distributed:
        world.barrier()
    return {k: report[k] for k in ("train_accuracy", "heldout_accuracy", "model")}
