"""The pre-training loop: schedule, micro-batches, logging, checkpoints, resume, and the
rank bookkeeping of data-parallel runs.

It speaks to a backend only through the contract (:mod:`aimv2.contract`): the backend's
``Trainer`` (one update from NumPy micro-batches; optimizer state as canonical NumPy
arrays) and its verbs. Every batch and every prefix length is a pure function of
``(seed, step)``, so a resumed run — on either backend — continues exactly where the
checkpoint left off.

Example:
    >>> import tempfile
    >>> cfg = PretrainConfig(out=tempfile.mkdtemp(), preset="aimv2-test-tiny", steps=2,
    ...                      batch_size=4, progress=False, num_workers=0)
    >>> pretrain(cfg)["step"]
    2
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic, checkpoint
from .. import distributed as D
from .. import specs as S
from ..backend import build, get_weights, load_backend, set_weights
from ..data import Loader, open_source
from ..masks import sample_prefix
from ..optim import lr_at, paper_peak_lr
from ..weights import WeightsError
from .config import PretrainConfig, TrainingError, load_tokenizer, optim_config, resolve_spec
from .evaluate import heldout_eval
from .initial import load_init
from .log import Metrics, Progress

__all__ = ["pretrain", "changed_flags"]


def _comm_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because a peer went away or timed out."""
    names = {k.__name__ for k in type(err).__mro__}
    if names & {"DistError", "DistBackendError", "DistNetworkError", "DistStoreError"}:
        return True
    text = str(err).lower()
    return any(
        k in text
        for k in (
            "[ring]",
            "connection closed",
            "connection reset",
            "peer",
            "timed out",
            "timeout",
            "broken pipe",
            "gloo",
            "nccl",
        )
    )


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
    spec = resolve_spec(cfg)
    if spec.encoder.native:
        raise TrainingError(
            "spec: pre-training needs a fixed image_size (native encoders "
            "are for inference; pick a fixed-size preset)"
        )
    if cfg.shard not in D.SHARD_MODES:
        raise TrainingError(f"--shard {cfg.shard!r}: expected one of {D.SHARD_MODES}")
    try:
        load_backend(cfg.backend).native_device(cfg.device)
    except ValueError as err:
        raise TrainingError(f"PretrainConfig.{err}") from None
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
        world.record_failure(failure, secondary=True)
        raise failure from err
    world.close()
    return result


def _pretrain(cfg: PretrainConfig, spec: S.ModelSpec, world: Any) -> dict[str, Any]:
    chunks = None
    if world.distributed:
        try:
            chunks = D.plan_update(cfg.batch_size, cfg.accumulate, world.size, world.rank)
        except ValueError as err:
            raise TrainingError(str(err)) from None
    out = Path(cfg.out)
    found = checkpoint.newest_intact(out)
    existing = found.path
    if world.distributed:
        seen = int(existing.name.split("-")[-1]) if existing is not None else -1
        if not world.agree([seen, D.fingerprint(cfg.to_dict())]):
            raise TrainingError(
                "the ranks disagree about the run: every rank must get the same flags and see "
                f"the same --out (a filesystem shared by all nodes); this rank sees newest "
                f"checkpoint {existing.name if existing else None}"
            )
    held = existing or (found.damaged[0][0] if found.damaged else None)
    if held is not None and not cfg.resume:
        raise TrainingError(
            f"--out {str(out)!r} already holds a run (newest {held.name}); pass --resume "
            f"to continue it or choose another --out"
        )
    if cfg.resume and found.damaged:
        _set_aside_damaged(found, world)
    try:
        source = open_source(
            cfg.data,
            split="train",
            seed=cfg.seed,
            image_column=cfg.image_column,
            caption_columns=cfg.caption_columns,
            allow_outside=cfg.allow_outside_paths,
        )
    except (FileNotFoundError, ValueError, ImportError) as err:
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
        if ck.state.get("seed", cfg.seed) != cfg.seed:
            raise TrainingError(
                f"--resume: the checkpoint was made with --seed {ck.state['seed']}, not {cfg.seed}"
            )
        changed = changed_flags(ck.state.get("config"), cfg, spec)
        if changed:
            raise TrainingError(
                f"--resume: flags differ from the checkpoint's run: {'; '.join(changed)} "
                f"(resume with the run's own flags, or start a new run from its weights with "
                f"--init {existing})"
            )
        set_weights(model, ck.weights)
        start = ck.step
    elif cfg.init:
        try:
            set_weights(model, {**get_weights(model), **load_init(cfg.init, spec)})
        except WeightsError as err:
            raise TrainingError(f"--init {cfg.init!r}: {err}") from None
    optim = optim_config(cfg, spec)
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
    if start >= end:  # nothing to train; a finished run killed in its evaluation gets it
        done = _final_eval(cfg, spec, world, model, tokenizer, out) if start == cfg.steps else {}
        return {**done, "step": start, "checkpoint": str(existing), "loss": None, "elapsed_s": 0.0}

    metrics = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        if world.is_main:
            metrics = Metrics(out / "metrics.jsonl", start if cfg.resume else None)
            atomic.write_json(out / "config.json", cfg.to_dict() | {"spec": spec.to_dict()})
    except OSError as err:
        raise TrainingError(f"--out {str(out)!r}: {err}") from None
    local_batch = cfg.batch_size // world.size
    position, shuffle = D.stream_resume(source, ck.state if ck else None, world, cfg.stream_shuffle)
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
            caption_sampling=cfg.caption_sampling,
            reduced_decode=cfg.reduced_decode,
            stream_shuffle=shuffle,
            stream_position=position,
        )
    except ValueError as err:  # e.g. fewer tar shards than ranks, a bad crop scale
        raise TrainingError(f"data loader: {err}") from None
    n = spec.encoder.num_patches
    progress = Progress(cfg.steps, cfg.progress and world.is_main)
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
    position = None  # where this rank's tar-shard stream is, after the last batch
    try:
        for batch in loader:
            if step >= end:
                break
            position = batch.get("stream_position")
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
                row = {
                    "step": step,
                    **losses,
                    "lr": lr,
                    "images_per_s": window_n / max(now - window_t, 1e-9),
                    "elapsed_s": now - t0,
                    "skipped": skipped,
                }
                if metrics is not None:
                    metrics.write(row)
                eta = (now - t0) / max(step - start, 1) * (cfg.steps - step)
                progress.update(step, row, eta)
                window_t, window_n = now, 0
            if step % cfg.save_every == 0 or step == end:
                extra = {"optimizer_step": trainer.step_count} | D.stream_state(
                    world, position, shuffle
                )
                last_ckpt = _save(cfg, spec, world, trainer, model, out, step, state | extra)
    except OSError as err:  # a full disk, a vanished --out, a read-only filesystem
        where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint yet"
        raise TrainingError(f"training stopped at step {step}: {err}; {where}") from None
    finally:
        progress.close()
        close = getattr(loader, "close", None)
        if close:
            close()
    evaluation = _final_eval(cfg, spec, world, model, tokenizer, out) if step == cfg.steps else {}
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
        return checkpoint.save(
            out, step, spec, get_weights(model), trainer.state_arrays(), state, keep=cfg.keep
        )
    weights = trainer.weight_arrays(root_only=True)
    moments = trainer.state_arrays(root_only=True)
    if world.is_main:
        return checkpoint.save(out, step, spec, weights, moments, state, keep=cfg.keep)
    return checkpoint.directory(out, step)


def _final_eval(
    cfg: PretrainConfig, spec: S.ModelSpec, world: Any, model: Any, tokenizer: Any, out: Path
) -> dict[str, Any]:
    """The held-out evaluation of a finished run, written once to ``eval.json`` (read back
    when a resumed finished run already has it)."""
    path = out / "eval.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            saved = None
        if isinstance(saved, dict) and saved.get("step") == cfg.steps:
            return {k: v for k, v in saved.items() if k != "step"}
    evaluation = heldout_eval(cfg, spec, model, tokenizer)
    if world.is_main:
        atomic.write_json(path, {"step": cfg.steps, **evaluation})
    return evaluation


def _set_aside_damaged(found: checkpoint.Intact, world: Any) -> None:
    """Move checkpoints newer than the one a run resumes from, found damaged, to
    ``damaged-ckpt-…`` (never deleted, never overwritten), saying so on stderr; with no
    intact checkpoint left the run stops, naming each and why."""
    reasons = [(p, why.split(": ", 1)[-1]) for p, why in found.damaged]
    if found.path is None:
        listed = "; ".join(f"{p.name}: {why}" for p, why in reasons)
        raise TrainingError(
            f"--resume: no intact checkpoint under {str(found.damaged[0][0].parent)!r} ({listed})"
        )
    if world.is_main:
        for p, why in reasons:
            aside = p.with_name(f"damaged-{p.name}")
            n = 1
            while aside.exists():
                aside, n = p.with_name(f"damaged-{p.name}.{n}"), n + 1
            p.rename(aside)
            print(
                f"aimv2 pretrain: {p.name} is damaged ({why}); resuming from "
                f"{found.path.name} (the damaged one is kept as {aside.name})",
                file=sys.stderr,
            )
    world.barrier()


# Flags that may change between a run and its resumption: they do not shape the
# numbers (where and how fast it runs, what it logs and keeps, when it stops).
RESUMABLE = frozenset(
    {
        "out", "resume", "init", "log_every", "save_every", "keep", "num_workers",
        "progress", "stop_after", "dist_timeout", "device", "compile", "backend", "shard",
        "spec", "preset",
    }
)  # fmt: skip


def changed_flags(
    saved: dict[str, Any] | None, cfg: PretrainConfig, spec: S.ModelSpec
) -> list[str]:
    """The flags of ``cfg`` that differ from a checkpoint's recorded run config, as
    ``--flag: old -> new`` (defaults resolved first: an explicit ``--lr`` equal to the
    default is no change). The spec itself is compared by :func:`aimv2.checkpoint.load`.

    Example:
        >>> import aimv2
        >>> a = PretrainConfig(out="o", preset="aimv2-test-tiny")
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> changed_flags(a.to_dict(), PretrainConfig(out="p", preset="aimv2-test-tiny",
        ...                                            lr=2e-3, keep=9), spec)
        ['--lr: 0.001 -> 0.002']
    """
    if not isinstance(saved, dict):
        return []  # a checkpoint from before runs recorded their flags
    old, new = _effective(saved, spec), _effective(cfg.to_dict(), spec)
    both_default = saved.get("min_lr") is None and cfg.min_lr is None  # lr/100 follows lr
    return [
        f"--{k.replace('_', '-')}: {old.get(k)!r} -> {new[k]!r}"
        for k in new
        if k not in RESUMABLE
        and k in old
        and old[k] != new[k]
        and not (k == "min_lr" and both_default)
    ]


def _effective(d: dict[str, Any], spec: S.ModelSpec) -> dict[str, Any]:
    """A run config with the defaults that depend on the spec and the steps resolved."""
    d = dict(d)
    lr = d.get("lr") if d.get("lr") is not None else paper_peak_lr(spec)
    d["lr"] = float(lr)
    d["min_lr"] = float(d["min_lr"]) if d.get("min_lr") is not None else lr / 100
    if d.get("warmup") is None:
        d["warmup"] = min(12_500, int(d.get("steps", 0)) // 10)
    d["clip_norm"] = d.get("clip_norm") or None
    if d.get("crop_scale") is not None:
        d["crop_scale"] = [float(x) for x in d["crop_scale"]]
    return d
