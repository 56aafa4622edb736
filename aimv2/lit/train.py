"""LiT training on either backend: the contrastive loss, the pre-training machinery.

The image tower is locked (LiT: its trunk's features may be computed once), unlocked or
trained from scratch with the text tower (CLIP); the text tower, the projections and the
logit scale always train, with the symmetric contrastive loss of the global batch. The
backend's ``Trainer`` does the update (AdamW, clipping; frozen parameters are not
optimized); this driver does the schedule, the batches (a pure function of ``(seed,
step)``, so a resumed run — on either backend — continues exactly), ``metrics.jsonl``,
progress and atomic checkpoints. Under ``torchrun`` / ``mlx.launch`` each of K ranks
holds 1/K of every global batch and the loss gathers every rank's embeddings
(``gather_with_grad``): K ranks train as one process with the same batch.

Example:
    >>> import tempfile
    >>> r = lit_train(LitConfig(out=tempfile.mkdtemp(), preset="aimv2-lit-test-tiny", steps=2,
    ...                         batch_size=8, progress=False, num_workers=0))
    >>> r["step"], {"loss", "accuracy", "logit_scale", "grad_norm"} <= set(r["final"])
    (2, True)
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic, checkpoint, presets
from .. import distributed as D
from .. import specs as S
from ..backend import build, get_weights, load_backend, set_weights
from ..data import Loader, open_source
from ..optim import lr_at
from ..probe import extract_features
from ..progress import OWN_ETA_FORMAT, Progress
from ..training.log import Metrics
from ..weights import init_weights
from .config import IMAGE_TOWERS, LitConfig, LitError, optim_config
from .evaluate import source_pairs
from .load import check_tokenizer, image_tower
from .tokenizer import load_tokenizer

__all__ = ["lit_train", "resolve_model", "frozen_prefixes"]

_LOCKED = ("image_encoder.preprocessor.", "image_encoder.trunk.")


def frozen_prefixes(image_tower: str, own_head: bool) -> list[str]:
    """Parameter prefixes a run does not train: the image trunk when locked (and the
    pooling head when the checkpoint brought it).

    Example:
        >>> frozen_prefixes("locked", own_head=True)
        ['image_encoder.preprocessor.', 'image_encoder.trunk.', 'image_encoder.head.']
    """
    if image_tower != "locked":
        return []
    return [*_LOCKED, *(["image_encoder.head."] if own_head else [])]


def _base_spec(cfg: LitConfig) -> S.LiTSpec:
    spec = cfg.spec
    if spec is None:
        try:
            spec = presets.get(cfg.preset)
        except KeyError as err:
            raise LitError(err.args[0]) from None
    if not isinstance(spec, S.LiTSpec):
        raise LitError(
            f"--preset {cfg.preset!r}: a {spec.kind!r} spec, not a LiT model; use a -lit preset "
            f"(e.g. aimv2-lit-small-patch4-16, aimv2-large-patch14-224-lit)"
        )
    return spec


def resolve_model(cfg: LitConfig) -> tuple[S.LiTSpec, dict[str, np.ndarray], list[str]]:
    """The run's LiT spec, its initial weights and the prefixes it keeps frozen.

    Example:
        >>> spec, w, frozen = resolve_model(LitConfig(out="o", preset="aimv2-lit-test-tiny",
        ...                                           image_encoder="aimv2-test-tiny"))
        >>> spec.image_encoder.head.heads, frozen
        (8, ['image_encoder.preprocessor.', 'image_encoder.trunk.'])
    """
    if cfg.image_tower not in IMAGE_TOWERS:
        raise LitError(f"--image-tower {cfg.image_tower!r}: expected one of {IMAGE_TOWERS}")
    base = _base_spec(cfg)
    if cfg.image_tower == "scratch":
        if cfg.image_encoder is not None:
            raise LitError(
                "--image-tower scratch trains both towers from random init; drop "
                f"--image-encoder {cfg.image_encoder!r} (or use --image-tower unlocked)"
            )
        return base, init_weights(base, cfg.seed), []
    enc, tower, own_head = image_tower(cfg.image_encoder, base, cfg.seed, cfg.backend)
    try:
        spec = base.replace(image_encoder=enc)
    except (ValueError, TypeError) as err:
        raise LitError(f"--image-encoder {cfg.image_encoder!r}: {err}") from None
    weights = init_weights(spec, cfg.seed)
    weights.update({f"image_encoder.{k}": v for k, v in tower.items()})
    return spec, weights, frozen_prefixes(cfg.image_tower, own_head)


def _tokenizer(cfg: LitConfig, spec: S.LiTSpec) -> tuple[Any, str]:
    ref = cfg.tokenizer
    if ref is None:
        if not cfg.data.startswith("builtin:"):
            raise LitError(
                f"--data {cfg.data!r} needs --tokenizer (a tokenizer.json or a SentencePiece "
                f".model: 'aimv2 tokenizer train --data {cfg.data} --out FILE')"
            )
        ref = cfg.data.split("?")[0]
    try:
        tok = load_tokenizer(ref, vocab_size=spec.text_encoder.vocab_size)
    except (FileNotFoundError, ValueError) as err:
        raise LitError(f"--tokenizer: {err}") from None
    return check_tokenizer(tok, spec, f"--tokenizer {ref!r}"), ref


def _cached_batches(
    features: np.ndarray, tokens: np.ndarray, cfg: LitConfig, start: int, lo: int, local: int
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of cached trunk features: global batch s is positions [s·B, (s+1)·B) of a
    stream of per-epoch permutations seeded by (seed, epoch); this rank takes rows
    [lo, lo + local) of it."""
    n, b = len(features), cfg.batch_size
    perms: dict[int, np.ndarray] = {}

    def perm(epoch: int) -> np.ndarray:
        if epoch not in perms:
            perms.clear()
            perms[epoch] = np.random.default_rng([cfg.seed, epoch, 0x11E]).permutation(n)
        return perms[epoch]

    step = start
    while True:
        pos = np.arange(step * b + lo, step * b + lo + local)
        idx = np.array([perm(int(p // n))[p % n] for p in pos])
        yield {"image_features": features[idx], "tokens": tokens[idx]}
        step += 1


def _image_batches(
    cfg: LitConfig,
    spec: S.LiTSpec,
    tok: Any,
    start: int,
    world: Any,
    local: int,
    state: dict[str, Any] | None,
) -> Iterator[dict[str, Any]]:
    try:
        source = open_source(cfg.data, split="train", seed=cfg.seed)
        position, shuffle = D.stream_resume(source, state, world, cfg.stream_shuffle)
        loader = Loader(
            source,
            spec.image_encoder,
            tok,
            local,
            seed=cfg.seed,
            train=True,
            num_workers=cfg.num_workers,
            start_step=start,
            rank=world.rank,
            world_size=world.size,
            context_length=spec.text_encoder.context_length,
            scale=tuple(cfg.crop_scale),
            hflip=cfg.hflip,
            stream_shuffle=shuffle,
            stream_position=position,
        )
    except (FileNotFoundError, ValueError) as err:
        raise LitError(f"--data {cfg.data!r}: {err}") from None
    try:
        for batch in loader:
            yield {
                "images": batch["images"],
                "tokens": batch["tokens"],
                "stream_position": batch["stream_position"],
                "stream_shuffle": shuffle,
            }
    finally:
        loader_close = getattr(loader, "close", None)
        if loader_close:
            loader_close()


def lit_train(cfg: LitConfig) -> dict[str, Any]:
    """Run (or resume) LiT training; returns the final step, values and paths.

    Under ``torchrun`` or ``mlx.launch`` this process joins the launcher's group and runs
    its share of every global batch; rank 0 writes metrics, progress and checkpoints.

    Example:
        >>> import tempfile
        >>> lit_train(LitConfig(out=tempfile.mkdtemp(), preset="aimv2-test-tiny"))
        Traceback (most recent call last):
        ...
        aimv2.lit.config.LitError: --preset 'aimv2-test-tiny': a 'model' spec, not a LiT model; use a -lit preset (e.g. aimv2-lit-small-patch4-16, aimv2-large-patch14-224-lit)
    """
    if cfg.steps < 1:
        raise LitError(f"--steps {cfg.steps}: expected >= 1")
    if cfg.batch_size < 2:
        raise LitError(f"--batch-size {cfg.batch_size}: a contrastive batch needs >= 2 pairs")
    spec, weights, frozen = resolve_model(cfg)
    try:
        world = D.init_world(cfg.backend, timeout_s=cfg.dist_timeout, device=cfg.device)
    except D.DistributedError as err:
        raise LitError(str(err)) from None
    try:
        result = _train(cfg, spec, weights, frozen, world)
    except Exception as err:
        if world.distributed:
            failure = LitError(f"{world.tag} {type(err).__name__}: {err}")
            world.record_failure(failure)
            raise failure from err
        raise
    world.close()
    return result


def _train(
    cfg: LitConfig, spec: S.LiTSpec, weights: dict, frozen: list[str], world: Any
) -> dict[str, Any]:
    if cfg.batch_size % world.size:
        raise LitError(
            f"--batch-size {cfg.batch_size}: the global batch must split evenly over "
            f"{world.size} ranks"
        )
    out = Path(cfg.out)
    existing = checkpoint.latest(out)
    if world.distributed and not world.agree(
        [int(existing.name.split("-")[-1]) if existing else -1, D.fingerprint(cfg.to_dict())]
    ):
        raise LitError("the ranks disagree about the run: same flags and a shared --out needed")
    if existing is not None and not cfg.resume:
        raise LitError(
            f"--out {str(out)!r} already holds a run (newest {existing.name}); pass --resume "
            f"to continue it or choose another --out"
        )
    tok, tok_ref = _tokenizer(cfg, spec)
    be = load_backend(cfg.backend)
    model = build(spec, cfg.backend, weights=weights)
    start, ck = 0, None
    if cfg.resume and existing is not None:
        try:
            ck = checkpoint.load(existing, spec)
        except checkpoint.CheckpointError as err:
            raise LitError(f"--resume: {err}") from None
        if ck.state.get("seed", cfg.seed) != cfg.seed:
            raise LitError(f"--resume: the checkpoint was made with --seed {ck.state['seed']}")
        set_weights(model, ck.weights)
        start = ck.step
    be.freeze(model, frozen)
    local = cfg.batch_size // world.size
    lo = world.rank * local
    cached = cfg.image_tower == "locked" and cfg.cache_features
    if cached:
        pairs = source_pairs(
            cfg.data,
            spec.image_encoder,
            "train",
            tokenizer=tok,
            context_length=spec.text_encoder.context_length,
            progress=cfg.progress and world.is_main,
        )
        feats = extract_features(model.image_encoder, pairs["images"], batch_size=128)
        batches = _cached_batches(feats, pairs["tokens"], cfg, start, lo, local)
    else:
        batches = _image_batches(cfg, spec, tok, start, world, local, ck.state if ck else None)
    if not world.distributed:
        model = be.cast(model, device=cfg.device or be.default_device())
    optim = optim_config(cfg)
    loss_fn = functools.partial(be.contrastive_loss, world=world if world.distributed else None)
    trainer = be.Trainer(
        model,
        optim,
        compile=cfg.compile,
        loss_fn=loss_fn,
        world=world if world.distributed else None,
    )
    if ck is not None and ck.optimizer is not None:
        trainer.load_state_arrays(ck.optimizer, ck.state.get("optimizer_step", ck.step))
    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    if start >= end:
        return {"step": start, "checkpoint": str(existing), "final": {}, "elapsed_s": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    metrics = (
        Metrics(out / "metrics.jsonl", start if cfg.resume else None) if world.is_main else None
    )
    if world.is_main:
        atomic.write_json(out / "config.json", cfg.to_dict() | {"spec": spec.to_dict()})
    state = {"seed": cfg.seed, "config": cfg.to_dict(), "tokenizer": tok_ref, "frozen": frozen}
    shown = Progress(
        cfg.steps,
        "lit",
        unit="steps",
        enabled=cfg.progress and world.is_main,
        interval=0,
        bar_format=OWN_ETA_FORMAT,
    )
    shown.moveto(start)
    t0 = time.perf_counter()
    window_t, window_n, step, row, last = t0, 0, start, {}, existing
    try:
        position = None  # where a tar-shard stream is, after the last batch
        for batch in batches:
            if step >= end:
                break
            position = batch.pop("stream_position", None)
            shuffle = batch.pop("stream_shuffle", None)
            lr = lr_at(optim, step)
            try:
                values = trainer.step([batch], lr)
            except FloatingPointError as err:
                raise LitError(
                    f"training stopped: {err}; the last good checkpoint is {last}"
                ) from None
            step += 1
            window_n += cfg.batch_size
            if step % cfg.log_every == 0 or step == end:
                now = time.perf_counter()
                row = {
                    "step": step,
                    **values,
                    "lr": lr,
                    "pairs_per_s": window_n / max(now - window_t, 1e-9),
                    "elapsed_s": now - t0,
                }
                if metrics is not None:
                    metrics.write(row)
                eta = (now - t0) / max(step - start, 1) * (cfg.steps - step)
                shown.moveto(
                    step,
                    f"loss {values['loss']:.4f} acc {values['accuracy']:.3f} scale "
                    f"{values['logit_scale']:.1f} lr {lr:.2e} eta {eta:.0f}s",
                )
                window_t, window_n = now, 0
            if step % cfg.save_every == 0 or step == end:
                extra = D.stream_state(world, position, shuffle)
                last = _save(cfg, spec, world, trainer, model, out, step, state | extra)
    finally:
        shown.close()
        close = getattr(batches, "close", None)
        if close:
            close()
    return {
        "step": step,
        "final": {k: v for k, v in row.items() if k not in ("step",)},
        "checkpoint": str(last) if last else None,
        "metrics": str(out / "metrics.jsonl"),
        "elapsed_s": time.perf_counter() - t0,
        "finite": math.isfinite(row.get("loss", 0.0)),
        "frozen": frozen,
    }


def _save(
    cfg: LitConfig,
    spec: S.LiTSpec,
    world: Any,
    trainer: Any,
    model: Any,
    out: Path,
    step: int,
    state: dict[str, Any],
) -> Path:
    """One checkpoint, written atomically by rank 0 (every rank holds the whole model)."""
    moments = trainer.state_arrays(root_only=True)
    state = {**state, "optimizer_step": trainer.step_count}
    if world.distributed:
        state["world_size"] = world.size
    if world.is_main:
        return checkpoint.save(out, step, spec, get_weights(model), moments, state, keep=cfg.keep)
    return checkpoint.directory(out, step)
