"""Evaluation the paper's way: frozen features, an attentive probe and a linear baseline.

Features are extracted once per split (and cached on disk when asked), optionally
standardized per channel with the training split's statistics (the affine-free
normalization AIMv1 puts before its probe), then an attentive probe (learned query,
k/v projections, multi-head pooling, linear classifier) and a linear probe on
mean-pooled features are trained with AdamW, warmup + cosine and gradient clipping
on the chosen backend.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((64, 4, 8)).astype(np.float32)
    >>> y = (x.mean(axis=1)[:, 0] > 0).astype(np.int64)
    >>> res = fit_and_score(x, y, x, y, "linear", "torch", ProbeConfig(epochs=200, lr=0.05), 2)
    >>> res["train"] > 0.9
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic
from . import specs as S
from .backend import backend_of, build, get_weights, load_backend
from .inputs import intermediate_indices
from .optim import OptimConfig, lr_at
from .progress import Progress

__all__ = [
    "ProbeConfig",
    "POOLS",
    "extract_features",
    "check_extract_options",
    "source_features",
    "standardize",
    "fit_and_score",
    "probe_encoder",
    "raw_pixel_features",
]


@dataclass(frozen=True)
class ProbeConfig:
    """Probe training settings (AdamW, warmup + cosine, clip 3.0 as in AIMV2.md §5).

    Example:
        >>> ProbeConfig().clip_norm
        3.0
    """

    epochs: int = field(default=100, metadata={"help": "passes over the training features"})
    batch_size: int = field(default=256, metadata={"help": "features per update"})
    lr: float = field(default=5e-3, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-6, metadata={"help": "final learning rate"})
    warmup_frac: float = field(default=0.1, metadata={"help": "share of the updates warming up"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    clip_norm: float = field(default=3.0, metadata={"help": "global gradient-norm clip"})
    heads: int = field(default=8, metadata={"help": "attention heads of the attentive probe"})
    normalize: bool = field(
        default=True, metadata={"help": "standardize features per channel (train statistics)"}
    )
    blocks: int = field(
        default=1,
        metadata={
            "help": "probe the mean of the last k blocks' outputs (AIMv1's layer averaging); "
            "1: the encoder output"
        },
    )
    seed: int = field(default=0, metadata={"help": "probe initialization and batch order"})

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "heads", "blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ProbeConfig.{name}={value!r}: expected a positive integer")


POOLS = ("none", "mean", "attn", "mean-last-n")


def extract_features(
    model: Any,
    images: np.ndarray,
    batch_size: int = 64,
    blocks: int | Sequence[int] | None = None,
    *,
    pool: str = "none",
    layout: str = "nlc",
    norm: bool = False,
) -> np.ndarray:
    """Frozen encoder features of a NumPy batch of images, as float32.

    ``blocks=None``: the encoder output (after the final norm), (B, N, D). Otherwise the
    outputs of trunk blocks (``model.forward_intermediates``; before the final norm
    unless ``norm``): an int n takes the last n, a sequence those blocks (negative from
    the end), stacked in block order as (B, K, N, D). ``pool``: ``"none"`` keeps the
    tokens, ``"mean"`` averages them, ``"attn"`` runs the encoder's attention-pooling
    head, ``"mean-last-n"`` averages the chosen blocks into one (B, N, D) (AIMv1's
    layer averaging). ``layout="nchw"`` returns tokens as maps (…, D, rows, cols).

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=16, depth=3, heads=2, patch_size=4, image_size=8,
        ...                           mlp_hidden=32)
        >>> m = aimv2.build(spec, "torch")
        >>> x = np.zeros((3, 3, 8, 8), np.float32)
        >>> extract_features(m, x, batch_size=2).shape
        (3, 4, 16)
        >>> extract_features(m, x, blocks=[-1, 0], layout="nchw").shape
        (3, 2, 16, 2, 2)
        >>> extract_features(m, x, blocks=2, pool="mean-last-n").shape
        (3, 4, 16)
    """
    be = backend_of(model)
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images: expected (B, C, H, W), got shape {images.shape}")
    spec = model.spec
    check_extract_options(spec, blocks, pool, layout)
    out = []
    for i in range(0, len(images), batch_size):
        x = be.to_model(model, images[i : i + batch_size])
        with be.inference():
            if blocks is None:
                feats = [model(x)]
            else:
                _, feats = model.forward_intermediates(x, indices=blocks, norm=norm)
            if pool == "attn":
                feats = [model.head(f) for f in feats]
            arrays = np.stack([be.to_numpy(f) for f in feats], axis=1)
        if pool == "mean":
            arrays = arrays.mean(axis=2)
        elif pool == "mean-last-n":
            arrays = arrays.mean(axis=1, keepdims=True)
        if blocks is None or pool == "mean-last-n":
            arrays = arrays[:, 0]
        out.append(arrays.astype(np.float32))
    feats_all = np.concatenate(out, axis=0)
    if layout == "nchw" and pool in ("none", "mean-last-n"):
        p = spec.patch_size
        rows, cols = images.shape[-2] // p, images.shape[-1] // p
        feats_all = np.moveaxis(feats_all.reshape(*feats_all.shape[:-2], rows, cols, -1), -1, -3)
    return feats_all


def check_extract_options(spec: Any, blocks: Any, pool: str, layout: str) -> None:
    """Refuse a bad :func:`extract_features` request before any image is read.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=8, depth=2, heads=2, patch_size=4, image_size=8)
        >>> check_extract_options(spec, None, "attn", "nlc")
        Traceback (most recent call last):
        ...
        ValueError: pool='attn': needs an encoder with an attention-pooling head (e.g. the -lit checkpoint)
    """
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}: expected one of {POOLS}")
    if layout not in ("nlc", "nchw"):
        raise ValueError(f"layout={layout!r}: expected 'nlc' or 'nchw'")
    if pool == "mean-last-n" and blocks is None:
        raise ValueError("pool='mean-last-n': give the blocks to average (blocks=n or indices)")
    if pool == "attn" and getattr(spec, "head", None) is None:
        raise ValueError(
            "pool='attn': needs an encoder with an attention-pooling head (e.g. the -lit "
            "checkpoint)"
        )
    if blocks is not None:
        intermediate_indices(spec.depth, blocks)


def _probe_features(model: Any, images: np.ndarray, batch_size: int, blocks: int) -> np.ndarray:
    """A probe's features: the encoder output (``blocks=1``) or the mean of the last
    ``blocks`` block outputs (before the final norm)."""
    if blocks == 1:
        return extract_features(model, images, batch_size)
    depth = model.spec.depth
    if not 1 <= blocks <= depth:
        raise ValueError(f"blocks={blocks}: expected 1..{depth} (the encoder's depth)")
    return extract_features(model, images, batch_size, blocks, pool="mean-last-n")


# Bumped whenever the evaluation preprocessing (decode, resize, crop, normalization) of
# aimv2.data changes what features a cached file would hold.
PREPROCESSING_VERSION = 1


def _cache_key(model: Any, source: Any, split: str, blocks: int) -> str:
    """What the features depend on: the encoder (spec and every weight), the source's
    contents (:func:`aimv2.data.fingerprint`: its files' paths, sizes and mtimes), the
    split, the blocks read and their pooling, and the preprocessing."""
    from .data import fingerprint

    h = hashlib.sha256()
    h.update(json.dumps(model.spec.to_dict(), sort_keys=True).encode())
    for name, w in sorted(get_weights(model).items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(w).tobytes())
    pool = "mean-last-n" if blocks > 1 else "last"
    h.update(f"{fingerprint(source)}|{split}|{blocks}|{pool}|{PREPROCESSING_VERSION}".encode())
    return h.hexdigest()[:16]


def source_features(
    model: Any,
    source: Any,
    *,
    split: str = "train",
    batch_size: int = 64,
    blocks: int = 1,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(features (B, N, D), labels (B,)) of a labelled source, computed once and cached
    when ``cache_dir`` is given, keyed on everything they depend on: spec, weights, the
    source's files (paths, sizes, mtimes), split, blocks, pooling and preprocessing.

    ``progress=True`` shows the images done on stderr (:class:`aimv2.progress.Progress`).

    Example:
        >>> import aimv2
        >>> from aimv2.data import open_source
        >>> spec = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           mlp_hidden=32)
        >>> f, y = source_features(aimv2.build(spec, "torch"), open_source("builtin:digits",
        ...                        split="heldout"), batch_size=128)
        >>> f.shape, y.shape
        ((359, 4, 16), (359,))
    """
    from .data import Loader

    if isinstance(source, str):
        from .data import open_source

        source = open_source(source, split=split)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"features-{split}-{_cache_key(model, source, split, blocks)}.npz"
        if path.exists():
            with np.load(path) as data:
                return data["features"], data["labels"]
    loader = Loader(source, model.spec, None, batch_size, seed=0, train=False, num_workers=0)
    feats, labels = [], []
    try:
        total = len(source)
    except TypeError:  # a streamed source (tar shards) has no length
        total = None
    with Progress(total, f"features {split}", unit="images", enabled=progress) as shown:
        for batch in loader:
            feats.append(_probe_features(model, batch["images"], batch_size, blocks))
            labels.append(batch["labels"])
            shown.update(len(batch["labels"]))
    if not feats:
        raise ValueError(f"source {getattr(source, 'name', source)!r}: no readable images")
    f, y = np.concatenate(feats), np.concatenate(labels).astype(np.int64)
    if (y < 0).any():
        raise ValueError(
            f"source {getattr(source, 'name', source)!r}: some samples have no label; "
            "probing needs labelled data (built-in sets, imagefolder:DIR, or a JSONL with labels)"
        )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_file(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, features=f, labels=y)
    return f, y


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Per-channel (x − mean) / std with the training split's statistics.

    Example:
        >>> a = np.array([[[0.0, 2.0]], [[2.0, 6.0]]])
        >>> standardize(a)[0][:, 0].round(4).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]
    """
    axes = tuple(range(train.ndim - 1))
    mean = train.mean(axis=axes, keepdims=True)
    std = train.std(axis=axes, keepdims=True) + 1e-6
    return [((x - mean) / std).astype(np.float32) for x in (train, *others)]


def _predict(model: Any, features: np.ndarray, batch_size: int) -> np.ndarray:
    be = backend_of(model)
    out = []
    for i in range(0, len(features), batch_size):
        with be.inference():
            logits = model(be.to_model(model, features[i : i + batch_size]))
        out.append(be.to_numpy(logits).argmax(-1))
    return np.concatenate(out)


def fit_and_score(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    kind: str,
    backend: str,
    cfg: ProbeConfig,
    num_classes: int,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one probe (``attentive`` or ``linear``) and return its top-1 accuracies.

    ``progress=True`` shows the epochs done and the last batch's loss on stderr.

    Example:
        >>> x = np.eye(4, dtype=np.float32)[:, None, :].repeat(8, 0)  # 8 copies of each class
        >>> y = np.repeat(np.arange(4), 8)
        >>> fit_and_score(x, y, x, y, "linear", "torch", ProbeConfig(epochs=200, lr=0.05), 4)["heldout"]
        1.0
    """
    if kind not in ("attentive", "linear"):
        raise ValueError(f"kind={kind!r}: expected 'attentive' or 'linear'")
    if train_x.ndim != 3:
        raise ValueError(f"train_x: expected features (B, N, D), got shape {train_x.shape}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("features and labels disagree in length")
    if train_y.min() < 0 or train_y.max() >= num_classes:
        raise ValueError(
            f"labels: expected 0..{num_classes - 1}, got {train_y.min()}..{train_y.max()}"
        )
    width = train_x.shape[-1]
    heads = cfg.heads
    while width % heads:
        heads -= 1
    spec = S.ProbeSpec(width=width, num_classes=num_classes, type=kind, heads=heads)
    model = build(spec, backend, seed=cfg.seed)
    steps_per_epoch = int(np.ceil(len(train_x) / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    optim = OptimConfig(
        lr=cfg.lr,
        min_lr=min(cfg.min_lr, cfg.lr),
        warmup_steps=int(cfg.warmup_frac * total),
        total_steps=total,
        weight_decay=cfg.weight_decay,
        decay_mode="torch",
        clip_norm=cfg.clip_norm,
    )
    be = load_backend(backend)
    trainer = be.Trainer(model, optim, loss_fn=be.probe_loss)
    rng = np.random.default_rng([cfg.seed, 0x9B0E])
    step = 0
    with Progress(cfg.epochs, f"{kind} probe", unit="epochs", enabled=progress) as shown:
        for _ in range(cfg.epochs):
            order = rng.permutation(len(train_x))
            for i in range(0, len(order), cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                batch = [{"features": train_x[idx], "labels": train_y[idx]}]
                losses = trainer.step(batch, lr_at(optim, step))
                step += 1
            shown.update(1, f"loss {losses['loss']:.4f}")
    train_acc = float((_predict(model, train_x, 1024) == train_y).mean())
    test_acc = float((_predict(model, test_x, 1024) == test_y).mean())
    return {"train": train_acc, "heldout": test_acc, "model": model}


def probe_encoder(
    encoder: Any,
    data: str,
    backend: str,
    cfg: ProbeConfig | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    kinds: tuple[str, ...] = ("attentive", "linear"),
    progress: bool = False,
) -> dict[str, Any]:
    """Attentive and linear probe accuracies of a frozen encoder on a labelled source.

    The source's ``train`` split trains the probes, its fixed ``heldout`` split scores
    them; sources without a held-out split (``imagefolder:DIR``, manifests) are split
    80/20 by a fixed permutation. ``progress=True`` shows feature extraction and each
    probe's epochs on stderr.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           mlp_hidden=32)
        >>> r = probe_encoder(aimv2.build(spec, "torch"), "builtin:digits", "torch",
        ...                   ProbeConfig(epochs=2), kinds=("linear",))
        >>> 0.0 <= r["linear"]["heldout"] <= 1.0
        True
    """
    cfg = cfg or ProbeConfig()
    tr_x, tr_y, te_x, te_y = _splits(encoder, data, cfg, cache_dir, progress)
    _check_probe_sets(data, tr_y, te_y)
    if cfg.normalize:
        tr_x, te_x = standardize(tr_x, te_x)
    num_classes = int(max(tr_y.max(), te_y.max())) + 1
    out: dict[str, Any] = {
        "num_classes": num_classes,
        "train_size": len(tr_y),
        "heldout_size": len(te_y),
        "config": asdict(cfg),
    }
    for kind in kinds:
        res = fit_and_score(
            tr_x, tr_y, te_x, te_y, kind, backend, cfg, num_classes, progress=progress
        )
        out[kind] = {"train": res["train"], "heldout": res["heldout"]}
    return out


def _check_probe_sets(data: str, train_y: np.ndarray, test_y: np.ndarray) -> None:
    """A probe needs two classes to tell apart and a held-out sample to score."""
    classes = np.unique(train_y)
    if len(classes) < 2:
        raise ValueError(
            f"data {data!r}: the probe's training split holds {len(classes)} class "
            f"(labels {classes.tolist()}); a probe needs at least two classes"
        )
    if len(test_y) == 0:
        raise ValueError(
            f"data {data!r}: the held-out split is empty ({len(train_y)} training samples); "
            "a probe needs held-out samples to score"
        )


def _splits(encoder: Any, data: str, cfg: ProbeConfig, cache_dir: Any, progress: bool) -> tuple:
    from .data import open_source

    common = {"blocks": cfg.blocks, "cache_dir": cache_dir, "progress": progress}
    try:
        train = open_source(data, split="train", seed=cfg.seed)
        heldout = open_source(data, split="heldout", seed=cfg.seed)
    except ValueError:
        every = open_source(data, split="all", seed=cfg.seed)
        x, y = source_features(encoder, every, split="all", **common)
        order = np.random.default_rng(0).permutation(len(y))
        cut = int(0.8 * len(y))
        return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]
    tr = source_features(encoder, train, split="train", **common)
    te = source_features(encoder, heldout, split="heldout", **common)
    return (*tr, *te)


def raw_pixel_features(data: str, spec: S.EncoderSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed pixels as one token per image (B, 1, C·H·W): the raw-pixel baseline.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8)
        >>> x, y = raw_pixel_features("builtin:digits", spec, "heldout")
        >>> x.shape
        (359, 1, 192)
    """
    from .data import Loader, open_source

    loader = Loader(
        open_source(data, split=split), spec, None, 256, seed=0, train=False, num_workers=0
    )
    xs, ys = [], []
    for batch in loader:
        xs.append(batch["images"].reshape(len(batch["images"]), 1, -1))
        ys.append(batch["labels"])
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)
