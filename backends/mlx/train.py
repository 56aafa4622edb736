"""MLX training step: ``nn.value_and_grad`` in a compiled function, gradient accumulation,
global-norm clipping and AIMv2's AdamW (semantics in :mod:`aimv2.optim`: bias
correction on, decay only where :func:`aimv2.optim.decay_mask` says — unlike
``mlx.optimizers.AdamW``'s defaults). Optimizer state lives under canonical names.

Example:
    >>> import aimv2
    >>> from aimv2.optim import OptimConfig
    >>> from aimv2.testing import random_batch
    >>> spec = aimv2.presets.get("aimv2-test-tiny")
    >>> trainer = Trainer(aimv2.build(spec, "mlx"), OptimConfig(lr=1e-3, warmup_steps=1))
    >>> sorted(trainer.step([random_batch(spec)], lr=1e-3))
    ['grad_norm', 'loss', 'pixel_loss', 'text_loss']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from aimv2.inputs import check_pretrain_batch
from aimv2.optim import (
    ALL_FROZEN,
    TERMS,
    OptimConfig,
    ParamGroup,
    check_finite,
    check_moments,
    check_update_weights,
    decay_mask,
    frozen_names,
    moment_names,
    objective_weights,
    param_groups,
    resolve_compile,
)

from .arrays import to_numpy
from .layout import to_canonical, to_mlx
from .weights import get_weights

__all__ = ["Trainer", "pretrain_loss", "probe_loss"]


LossFn = Callable[[Any, Mapping[str, Any]], Mapping[str, mx.array]]


def pretrain_loss(model: Any, batch: Mapping[str, Any]) -> dict[str, mx.array]:
    """The AIMv2 objective of a pre-training model on one (validated) batch of arrays.

    Example:
        >>> import aimv2
        >>> from aimv2.testing import random_batch
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> b = {k: mx.array(v) for k, v in random_batch(spec).items()}
        >>> sorted(pretrain_loss(aimv2.build(spec, "mlx"), b))
        ['loss', 'pixel_loss', 'text_loss']
    """
    out = model(batch["images"], batch.get("tokens"), batch.get("prefix_len"), check=False)
    return {"loss": out["loss"], "pixel_loss": out["pixel_loss"], "text_loss": out["text_loss"]}


def _host_array(value: Any) -> Any:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.int64:
        arr = arr.astype(np.int32)
    return mx.array(arr)


def probe_loss(model: Any, batch: Mapping[str, Any]) -> dict[str, mx.array]:
    """Cross-entropy and accuracy of a probe on ``features`` (B, N, D) and ``labels`` (B,).

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.specs.ProbeSpec(width=8, num_classes=3, heads=2), "mlx")
        >>> out = probe_loss(m, {"features": mx.zeros((2, 4, 8)), "labels": mx.array([0, 2])})
        >>> round(out["loss"].item(), 4)
        1.0986
    """
    logits = model(batch["features"]).astype(mx.float32)
    labels = batch["labels"].astype(mx.int32)
    picked = mx.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    loss = (mx.logsumexp(logits, axis=-1) - picked).mean()
    return {
        "loss": loss,
        "accuracy": (mx.argmax(logits, axis=-1) == labels).astype(mx.float32).mean(),
    }


class Trainer:
    """Owns AdamW state for an MLX model and applies one update per call.

    The loss is AIMv2's pre-training objective unless ``loss_fn(model, batch) -> dict``
    (a ``"loss"`` entry plus any other scalars to report) is given — the probes use
    that. ``compile=True`` compiles the gradient and update functions with ``mx.compile``
    (``"auto"``, the default on every backend, compiles where that is cheap: here); the
    learning rate is an input, so changing it does not recompile. MLX has no autocast
    (``autocast`` must be None) and holds whole replicas (``shard`` must be ``"none"``).
    Weight decay follows :func:`aimv2.optim.decay_mask` of ``model.spec``.
    Parameters with an ``lr_scales`` entry of 0 are frozen (no gradient, no state),
    like those frozen before (``freeze``); the others form the groups of
    :func:`aimv2.optim.param_groups` (``groups``), each updated at ``lr · scale``.

    With a multi-rank ``world`` (:func:`aimv2.distributed.init_world` under
    ``mlx.launch``) every rank holds the whole model; after the local micro-batches the
    gradients (and the reported losses) are averaged over ranks with MLX's
    ``nn.average_gradients`` (bucketed ``mx.distributed.all_sum``), under the world's
    watchdog, so every rank applies the same update.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: OptimConfig,
        *,
        compile: bool | str = "auto",
        autocast: str | None = None,
        loss_fn: LossFn | None = None,
        world: Any = None,
        shard: str = "none",
    ) -> None:
        if autocast is not None:
            raise ValueError(
                f"autocast={autocast!r}: the MLX trainer has no autocast; build the model in "
                f"bfloat16 instead (aimv2.build(..., dtype='bfloat16'))"
            )
        if shard != "none":
            raise ValueError(
                f"shard={shard!r}: MLX data parallelism holds whole replicas; use 'none' "
                f"(FSDP2 sharding is torch's)"
            )
        compile = resolve_compile(compile, cheap=True)
        self.model, self.cfg = model, cfg
        self.loss_fn = loss_fn or pretrain_loss
        self.world = world if world is not None and world.size > 1 else None
        self.world_size = 1 if self.world is None else self.world.size
        self.rank = 0 if self.world is None else self.world.rank
        every = [n for n, _ in tree_flatten(model.parameters())]
        trainable = {n for n, _ in tree_flatten(model.trainable_parameters())}
        held = [n for n in every if n not in trainable]  # frozen before (``freeze``)
        _freeze(model, held + frozen_names(every, cfg))
        flat = tree_flatten(model.trainable_parameters())
        self.names = [n for n, _ in flat]
        if not self.names:
            raise ValueError(ALL_FROZEN)
        self.groups = param_groups(every, decay_mask(model.spec), cfg, exclude=set(held))
        self.optimizer = _adamw(cfg, self.groups)
        self.optimizer.init(model.trainable_parameters())
        self.step_count = 0
        self.state = [model.state, self.optimizer.state]
        keys: list[str] = []
        weights = objective_weights(model.spec)  # 0 for a probe
        term_weight = mx.array([weights[t] for t in TERMS], dtype=mx.float32)
        self._term_weight = term_weight

        def loss_fn_(batch):
            out = self.loss_fn(model, batch)
            keys[:] = list(out)
            return out["loss"], [out[k] for k in keys]

        def weighted_loss_fn_(batch, coefs):
            out = self.loss_fn(model, batch)
            terms = mx.stack([out[t] for t in TERMS])
            return (coefs * term_weight * terms).sum(), terms

        grad_fn = nn.value_and_grad(model, loss_fn_)
        weighted_grad_fn = nn.value_and_grad(model, weighted_loss_fn_)

        def grads_of(batch):
            (_, parts), grads = grad_fn(batch)
            return mx.stack(parts), [g for _, g in tree_flatten(grads)]

        def weighted_grads_of(batch, coefs):
            (_, terms), grads = weighted_grad_fn(batch, coefs)
            return coefs * terms, [g for _, g in tree_flatten(grads)]

        def update(grads, lr):
            return self._update(grads, lr)

        if compile:
            grads_of = mx.compile(grads_of, inputs=[model.state], outputs=[model.state])
            weighted_grads_of = mx.compile(
                weighted_grads_of, inputs=[model.state], outputs=[model.state]
            )
            update = mx.compile(update, inputs=self.state, outputs=self.state)
        self._grads_of, self._apply, self._keys = grads_of, update, keys
        self._weighted_grads_of = weighted_grads_of

    def _update(self, grads: list[mx.array], lr: mx.array) -> None:
        tree = tree_unflatten(list(zip(self.names, grads, strict=True)))
        if self.cfg.clip_norm is not None:
            tree, _ = optim.clip_grad_norm(tree, self.cfg.clip_norm)
        for sub, group in zip(self.optimizer.optimizers, self.groups, strict=True):
            sub.learning_rate = lr * group.scale
        self.optimizer.update(self.model, tree)

    def step(
        self,
        micro_batches: Sequence[Mapping[str, Any]],
        lr: float,
        weights: Sequence[Mapping[str, float]] | None = None,
    ) -> dict[str, float]:
        """Forward/backward every micro-batch (gradients averaged), clip, update.

        With the default loss each micro-batch holds NumPy ``images`` (B, C, H, W),
        ``tokens`` (B, T) or None and ``prefix_len`` (B,), validated on the host first.
        Returns the mean of each loss term and the gradient norm before clipping.
        Raises :class:`NonFiniteLoss` (without updating) on NaN/inf.

        ``weights`` (pre-training loss only; one ``{"pixel_loss": w, "text_loss": w}``
        per micro-batch, from :func:`aimv2.distributed.term_weights`) replaces the plain
        average: the update minimizes Σ over micro-batches and ranks of ``w·term`` (each
        term scaled by its objective weight), and each reported term is that sum over
        ranks — the single-process loss of the global batch. Without ``weights`` a
        multi-rank update averages the ranks' gradients and losses: a loss over rows
        gathered with :func:`~aimv2.backends.mlx.comm.gather_with_grad` (the contrastive
        loss) is the global batch's on every rank, and the average is then the
        single-process update.
        """
        k = len(micro_batches)
        check_update_weights(weights, k, self.loss_fn is pretrain_loss)
        total, acc = None, None
        for i, mb in enumerate(micro_batches):
            if self.loss_fn is pretrain_loss:
                check_pretrain_batch(self.model.spec, mb)
            arrays = {name: _host_array(v) for name, v in mb.items() if v is not None}
            if weights is None:
                parts, grads = self._grads_of(arrays)
            else:
                # x K: the all-reduce below averages over the K ranks; the weights sum.
                scale = float(self.world_size)
                coefs = mx.array([scale * float(weights[i][t]) for t in TERMS], mx.float32)
                parts, grads = self._weighted_grads_of(arrays, coefs)
            total = parts if total is None else total + parts
            acc = grads if acc is None else [a + g for a, g in zip(acc, grads, strict=True)]
        if weights is None:
            total = total / k
            if k > 1:
                acc = [g / k for g in acc]
        if self.world is not None:
            total, *acc = self.world.comm._average([total, *acc])
            with self.world.guard("the gradient all-reduce"):
                mx.eval(total, acc)
        keys = self._keys
        if weights is not None:
            text, pixel = total[0], total[1]
            loss = self._term_weight[0] * text + self._term_weight[1] * pixel
            total = mx.stack([loss, pixel, text])
            keys = ["loss", "pixel_loss", "text_loss"]
        norm = mx.sqrt(sum(mx.sum(mx.square(g)) for g in acc))
        host = total.tolist() + [norm.item()]
        losses = dict(zip([*keys, "grad_norm"], host, strict=True))
        if not all(math.isfinite(v) for v in host):
            check_finite(losses, self.step_count + 1)
        self.step_count += 1
        self._apply(acc, mx.array(lr, dtype=mx.float32))
        mx.eval(self.state)
        return losses

    def weight_arrays(self, *, root_only: bool = False) -> dict[str, np.ndarray]:
        """The model's weights as canonical NumPy arrays (torch layouts).

        ``root_only=True``: ranks other than 0 return ``{}`` (every rank holds the same).

        Example:
            >>> import aimv2
            >>> spec = aimv2.presets.get("aimv2-test-tiny")
            >>> t = Trainer(aimv2.build(spec, "mlx"), OptimConfig())
            >>> t.weight_arrays()["decoder.start_token"].shape
            (1, 1, 32)
        """
        if root_only and self.rank != 0:
            return {}
        return get_weights(self.model)

    def state_arrays(self, *, root_only: bool = False) -> dict[str, np.ndarray]:
        """Optimizer moments as ``exp_avg.<name>`` / ``exp_avg_sq.<name>`` (torch layouts).

        ``root_only`` as in :meth:`weight_arrays`.

        Example:
            >>> import aimv2
            >>> spec = aimv2.presets.get("aimv2-test-tiny")
            >>> t = Trainer(aimv2.build(spec, "mlx"), OptimConfig())
            >>> t.state_arrays()["exp_avg.decoder.start_token"].shape
            (1, 1, 32)
        """
        if root_only and self.rank != 0:
            return {}
        spec, out = self.model.spec, {}
        for n, slot in self._slots().items():
            out[f"exp_avg.{n}"] = to_canonical(spec, n, to_numpy(slot["m"]))
            out[f"exp_avg_sq.{n}"] = to_canonical(spec, n, to_numpy(slot["v"]))
        return {key: out[key] for key in moment_names(self.names)}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray], step_count: int) -> None:
        """Restore moments saved by :meth:`state_arrays` (from either backend).

        Example:
            >>> import aimv2
            >>> spec = aimv2.presets.get("aimv2-test-tiny")
            >>> t = Trainer(aimv2.build(spec, "mlx"), OptimConfig())
            >>> t.load_state_arrays(t.state_arrays(), 3); t.step_count
            3
        """
        spec, slots = self.model.spec, self._slots()
        check_moments(
            arrays, {n: tuple(to_canonical(spec, n, s["m"]).shape) for n, s in slots.items()}
        )
        for n, slot in slots.items():
            for moment, key in (("m", "exp_avg"), ("v", "exp_avg_sq")):
                src = np.asarray(arrays[f"{key}.{n}"], dtype=np.float32)
                slot[moment] = mx.array(to_mlx(spec, n, src)).astype(slot[moment].dtype)
        for sub in self.optimizer.optimizers:
            sub.state["step"] = mx.array(int(step_count), dtype=sub.state["step"].dtype)
        mx.eval(self.optimizer.state)
        self.step_count = int(step_count)

    def _slots(self) -> dict[str, dict[str, mx.array]]:
        """Each parameter's optimizer slot (``{"m": …, "v": …}``, edited in place), by
        canonical name, whichever of the two AdamW groups holds it."""
        slots = {}
        for sub in self.optimizer.optimizers:
            for key, _ in tree_flatten(sub.state):
                if key.endswith(".m"):
                    node: Any = sub.state
                    for part in key[:-2].split("."):
                        node = node[int(part)] if isinstance(node, list) else node[part]
                    slots[key[:-2]] = node
        return {n: slots[n] for n in self.names}


def _freeze(model: nn.Module, names: Sequence[str]) -> None:
    """Make exactly the parameters ``names`` (canonical, dotted) untrainable.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> _freeze(m, ["layers.0.bias"]); sorted(n for n, _ in tree_flatten(
        ...     m.trainable_parameters()))
        ['layers.0.weight']
    """
    model.unfreeze()
    for name in names:
        *path, key = name.split(".")
        owner: Any = model
        for part in path:
            owner = owner[int(part)] if isinstance(owner, list) else owner[part]
        owner.freeze(recurse=False, keys=[key])


def _adamw(cfg: OptimConfig, groups: Sequence[ParamGroup]) -> optim.MultiOptimizer:
    """``mlx.optimizers.AdamW`` with bias correction, one per
    :class:`aimv2.optim.ParamGroup` (its learning rate is set to ``lr · scale`` at every
    update), decaying only the groups with ``decay`` (MLX's AdamW alone decays
    everything). The paper's fully decoupled decay ``p·(1 − wd·lr/peak_lr)`` is MLX's
    ``p·(1 − lr·wd')`` with ``wd' = wd / peak_lr``; ``decay_mode="torch"`` uses ``wd`` as
    given.

    Example:
        >>> cfg = OptimConfig(lr=1e-3, weight_decay=0.1)
        >>> opt = _adamw(cfg, param_groups(["w", "b"], {"w": True, "b": False}, cfg))
        >>> [round(o.weight_decay, 6) for o in opt.optimizers]
        [100.0, 0.0]
    """
    wd = cfg.weight_decay / cfg.lr if cfg.decay_mode == "decoupled" else cfg.weight_decay

    def adamw(group: ParamGroup) -> optim.AdamW:
        return optim.AdamW(
            learning_rate=cfg.lr * group.scale,
            betas=list(cfg.betas),
            eps=cfg.eps,
            weight_decay=wd if group.decay else 0.0,
            bias_correction=True,
        )

    def member(names: frozenset[str]) -> Callable[[str, Any], bool]:
        return lambda path, _: path in names

    filters = [member(frozenset(g.names)) for g in groups[:-1]]
    return optim.MultiOptimizer([adamw(g) for g in groups], filters)
