"""PyTorch training step: autograd, gradient accumulation, ``clip_grad_norm_`` and
``torch.optim.AdamW`` set up with AIMv2's semantics (:mod:`aimv2.optim`), with optional
``torch.compile`` and bf16 autocast. Optimizer state lives under canonical names.

Example:
    >>> import aimv2, numpy as np
    >>> from aimv2.optim import OptimConfig
    >>> from aimv2.testing import random_batch
    >>> spec = aimv2.presets.get("aimv2-test-tiny")
    >>> trainer = Trainer(aimv2.build(spec, "torch"), OptimConfig(lr=1e-3, warmup_steps=1))
    >>> out = trainer.step([random_batch(spec)], lr=1e-3)
    >>> sorted(out)
    ['grad_norm', 'loss', 'pixel_loss', 'text_loss']
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import distribute_tensor
from torch.nn.parallel import DistributedDataParallel

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

__all__ = ["Trainer", "pretrain_loss", "probe_loss"]


LossFn = Callable[[Any, Mapping[str, Any]], Mapping[str, torch.Tensor]]


def pretrain_loss(model: Any, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The AIMv2 objective of a pre-training model on one (validated) batch of tensors.

    Example:
        >>> import aimv2
        >>> from aimv2.testing import random_batch
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> b = {k: torch.as_tensor(v) for k, v in random_batch(spec).items()}
        >>> sorted(pretrain_loss(aimv2.build(spec, "torch"), b))
        ['loss', 'pixel_loss', 'text_loss']
    """
    out = model(batch["images"], batch.get("tokens"), batch.get("prefix_len"), check=False)
    return {"loss": out["loss"], "pixel_loss": out["pixel_loss"], "text_loss": out["text_loss"]}


def probe_loss(model: Any, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Cross-entropy and accuracy of a probe on ``features`` (B, N, D) and ``labels`` (B,).

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.specs.ProbeSpec(width=8, num_classes=3, heads=2), "torch")
        >>> out = probe_loss(m, {"features": torch.zeros(2, 4, 8), "labels": torch.tensor([0, 2])})
        >>> round(float(out["loss"].detach()), 4)
        1.0986
    """
    logits = model(batch["features"]).float()
    labels = batch["labels"].long()
    loss = torch.nn.functional.cross_entropy(logits, labels)
    return {"loss": loss, "accuracy": (logits.argmax(-1) == labels).float().mean()}


class Trainer:
    """Owns AdamW state for a torch model and applies one update per call.

    The loss is AIMv2's pre-training objective unless ``loss_fn(model, batch) -> dict``
    (a ``"loss"`` entry plus any other scalars to report) is given — the probes use
    that. ``compile=True`` wraps the forward in ``torch.compile`` (``"auto"``, the
    default on every backend, compiles where that is cheap: not here); ``autocast``
    (``"bf16"``) runs matmuls in bfloat16 while parameters and optimizer state stay
    float32. Weight decay follows :func:`aimv2.optim.decay_mask` of ``model.spec``.
    Parameters with an ``lr_scales`` entry of 0 are frozen (no gradient, no state),
    like those frozen before (``freeze``); the others form the groups of
    :func:`aimv2.optim.param_groups` (``groups``), each updated at ``lr · scale``.

    With a multi-rank ``world`` (:func:`aimv2.distributed.init_world` under torchrun)
    the model is wrapped once, here: ``shard="none"`` in DistributedDataParallel (every
    rank holds the whole model and the same optimizer state), ``shard="full"`` with
    FSDP2 ``fully_shard`` on every transformer block and the root (parameters, gradients
    and AdamW moments are sharded DTensors; ``torch.optim.AdamW`` updates each rank's
    shards and ``clip_grad_norm_`` sums the norm over shards). Weights must be loaded into
    ``model`` before it is wrapped; :meth:`weight_arrays`, :meth:`state_arrays` and
    :meth:`load_state_arrays` speak full canonical arrays whatever the sharding.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: OptimConfig,
        *,
        compile: bool | str = "auto",
        autocast: str | None = None,
        loss_fn: LossFn | None = None,
        world: Any = None,
        shard: str = "none",
    ) -> None:
        if shard not in ("none", "full"):
            raise ValueError(f"shard={shard!r}: expected 'none' (DDP) or 'full' (FSDP2)")
        self.model, self.cfg = model, cfg
        self.loss_fn = loss_fn or pretrain_loss
        self.world = world if world is not None and world.size > 1 else None
        self.world_size = 1 if self.world is None else self.world.size
        self.rank = 0 if self.world is None else self.world.rank
        self.sharded = self.world is not None and shard == "full"
        self._ddp: Any = None
        wrapped: Any = model
        frozen = set(frozen_names([n for n, _ in model.named_parameters()], cfg))
        held = {n for n, p in model.named_parameters() if not p.requires_grad}  # ``freeze``
        for name, p in model.named_parameters():  # before wrapping: DDP reads requires_grad
            p.requires_grad_(name not in frozen and name not in held)
        if self.world is not None:
            comm = self.world.comm
            if self.sharded:
                # Blocks return a reshaped view of their fused residual GEMM; FSDP2 warns
                # that an in-place op on such a view would skip its pre-backward hook.
                # Nothing modifies block outputs in place (the FSDP trajectory test in
                # tests/test_distributed.py would catch wrong gradients).
                warnings.filterwarnings(
                    "ignore", message=r"FSDP2-wrapped module \(FSDPBlock\) returned a view"
                )
                mesh = comm._mesh()
                for sub in model.modules():
                    spec = getattr(sub, "spec", None)
                    if sub is not model and getattr(spec, "role", None) == "block":
                        fully_shard(sub, mesh=mesh)
                fully_shard(model, mesh=mesh)
            else:
                model.to(comm.device)
                ids = [comm.device.index] if comm.device.type == "cuda" else None
                self._ddp = wrapped = DistributedDataParallel(model, device_ids=ids)
        self._all = list(model.named_parameters())
        named = [(n, p) for n, p in self._all if p.requires_grad]
        if not named:
            raise ValueError(ALL_FROZEN)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.step_count = 0
        self.device = self.params[0].device
        self.groups = param_groups(
            [n for n, _ in self._all], decay_mask(model.spec), cfg, exclude=held
        )
        self.optimizer = _adamw(cfg, named, self.groups, self.device)
        self.forward = torch.compile(wrapped) if resolve_compile(compile, cheap=False) else wrapped
        if autocast not in (None, "bf16"):
            raise ValueError(f"autocast={autocast!r}: expected None or 'bf16'")
        self.autocast = autocast
        self._term_weight = objective_weights(model.spec)  # 0 for a probe

    def _autocast(self) -> Any:
        if self.autocast == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _tensor(self, x: Any) -> Any:
        if x is None:
            return None
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.require(x, requirements="C"))
        return t.to(self.device, non_blocking=True)

    @contextlib.contextmanager
    def _gradient_sync(self, enabled: bool) -> Any:
        """Reduce gradients across ranks only in the last backward of an update."""
        if self.world is None or enabled:
            if self.sharded:
                self.model.set_requires_gradient_sync(True)
            yield
        elif self.sharded:
            self.model.set_requires_gradient_sync(False)
            yield
        else:
            with self._ddp.no_sync():
                yield

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
        average: the update minimizes Σ over micro-batches and ranks of
        ``w·term`` (each term scaled by its objective weight), and each reported term is
        that sum over ranks — the single-process loss of the global batch. Without
        ``weights`` a multi-rank update averages the ranks' gradients and losses: a loss
        over rows gathered with :func:`~aimv2.backends.torch.comm.gather_with_grad` (the
        contrastive loss) is the global batch's on every rank, and the average is then the
        single-process update.
        """
        k = len(micro_batches)
        check_update_weights(weights, k, self.loss_fn is pretrain_loss)
        sums: torch.Tensor | None = None
        keys: list[str] = []
        for i, mb in enumerate(micro_batches):
            if self.loss_fn is pretrain_loss:
                check_pretrain_batch(self.model.spec, mb)
            tensors = {name: self._tensor(value) for name, value in mb.items()}
            with self._gradient_sync(i == k - 1):
                with self._autocast():
                    out = self.loss_fn(self.forward, tensors)
                if weights is None:
                    objective = out["loss"] / k  # DDP/FSDP average it over the ranks
                else:
                    objective = sum(
                        self._term_weight[t] * float(weights[i][t]) * out[t] for t in TERMS
                    )
                if self.world_size > 1 and weights is not None:
                    # each rank's weighted terms are its share of the global sum, which
                    # DDP/FSDP's average over ranks would divide by K; a plain mean loss
                    # per rank is meant to be averaged
                    objective = objective * self.world_size
                objective.backward()
            if weights is None:
                keys = list(out)
                parts = torch.stack([out[key].detach().float() for key in keys])
            else:
                keys = list(TERMS)
                parts = torch.stack([float(weights[i][t]) * out[t].detach().float() for t in TERMS])
            sums = parts if sums is None else sums + parts
        for p in self.params:  # a parameter unused by this batch still decays, as in MLX
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        # the global norm before clipping (a DTensor's is summed over shards), then clipped
        clip = self.cfg.clip_norm if self.cfg.clip_norm is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        if self.sharded:
            norm = norm.full_tensor()
        if weights is None:
            sums = sums / k
        if self.world is not None:
            reduced = self.world.comm._all_reduce(sums.clone())
            sums = reduced if weights is not None else reduced / self.world_size
        if weights is not None:
            text, pixel = sums[0], sums[1]
            total = self._term_weight["text_loss"] * text + self._term_weight["pixel_loss"] * pixel
            sums = torch.stack([total, pixel, text])
            keys = ["loss", "pixel_loss", "text_loss"]
        host = torch.cat([sums, norm[None]]).tolist()
        losses = dict(zip([*keys, "grad_norm"], host, strict=True))
        if not all(math.isfinite(v) for v in host):
            self.model.zero_grad(set_to_none=True)
            check_finite(losses, self.step_count + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.optimizer.step()
        self.step_count += 1
        self.model.zero_grad(set_to_none=True)
        return losses

    def _moments(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every parameter's first and second moments (zeros before the first update)."""
        state = self.optimizer.state
        exp_avg = [state[p]["exp_avg"] if p in state else torch.zeros_like(p) for p in self.params]
        sq = [state[p]["exp_avg_sq"] if p in state else torch.zeros_like(p) for p in self.params]
        return exp_avg, sq

    @torch.no_grad()
    def _gather(self, tensors: Sequence[Any], names: Sequence[str], root_only: bool) -> dict:
        """Full NumPy arrays; sharded tensors are all-gathered one at a time (a
        collective: every rank must call), and kept on rank 0 only with ``root_only``."""
        keep = not root_only or self.rank == 0
        out = {}
        for name, t in zip(names, tensors, strict=True):
            if self.sharded:
                full = t.full_tensor()
                if keep:
                    out[name] = to_numpy(full)
                del full
            elif keep:
                out[name] = to_numpy(t)
        return out

    def weight_arrays(self, *, root_only: bool = False) -> dict[str, np.ndarray]:
        """The model's weights as canonical NumPy arrays (gathered when sharded).

        ``root_only=True``: ranks other than 0 take part in the gather and return ``{}``.

        Example:
            >>> import aimv2
            >>> spec = aimv2.presets.get("aimv2-test-tiny")
            >>> t = Trainer(aimv2.build(spec, "torch"), OptimConfig())
            >>> t.weight_arrays()["decoder.start_token"].shape
            (1, 1, 32)
        """
        return self._gather([p for _, p in self._all], [n for n, _ in self._all], root_only)

    def state_arrays(self, *, root_only: bool = False) -> dict[str, np.ndarray]:
        """Optimizer moments as ``exp_avg.<name>`` / ``exp_avg_sq.<name>`` NumPy arrays.

        Full arrays whatever the sharding (a collective when sharded); ``root_only``
        as in :meth:`weight_arrays`.

        Example:
            >>> import aimv2
            >>> spec = aimv2.presets.get("aimv2-test-tiny")
            >>> t = Trainer(aimv2.build(spec, "torch"), OptimConfig())
            >>> t.state_arrays()["exp_avg.decoder.start_token"].shape
            (1, 1, 32)
        """
        names = [f"{k}.{n}" for k in ("exp_avg", "exp_avg_sq") for n in self.names]
        exp_avg, exp_avg_sq = self._moments()
        out = self._gather([*exp_avg, *exp_avg_sq], names, root_only)
        if not out:
            return out
        return {key: out[key] for key in moment_names(self.names)}

    @torch.no_grad()
    def load_state_arrays(self, arrays: Mapping[str, np.ndarray], step_count: int) -> None:
        """Restore moments saved by :meth:`state_arrays` (from either backend, any
        number of ranks); a sharded trainer keeps its own shard of each full array.

        Example:
            >>> import aimv2
            >>> spec = aimv2.presets.get("aimv2-test-tiny")
            >>> t = Trainer(aimv2.build(spec, "torch"), OptimConfig())
            >>> t.load_state_arrays(t.state_arrays(), 3); t.step_count
            3
        """
        check_moments(
            arrays, {n: tuple(p.shape) for n, p in zip(self.names, self.params, strict=True)}
        )
        moments = {}
        for n, p in zip(self.names, self.params, strict=True):
            entry = {"step": torch.tensor(float(step_count))}
            for key in ("exp_avg", "exp_avg_sq"):
                src = np.require(arrays[f"{key}.{n}"], requirements="C")  # 0-d stays 0-d
                full = torch.from_numpy(src).to(device=self.device, dtype=p.dtype)
                if self.sharded:  # this rank's shard of the full array
                    full = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
                entry[key] = full
            moments[p] = entry
        # the optimizer's own format: state by parameter position over its groups
        saved = self.optimizer.state_dict()
        order = [p for group in self.optimizer.param_groups for p in group["params"]]
        saved["state"] = {i: moments[p] for i, p in enumerate(order)}
        self.optimizer.load_state_dict(saved)
        self.step_count = int(step_count)


def _adamw(
    cfg: OptimConfig,
    named: Sequence[tuple[str, torch.nn.Parameter]],
    groups: Sequence[ParamGroup],
    device: torch.device,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with one parameter group per :class:`aimv2.optim.ParamGroup`
    (its ``names``, ``lr_scale`` and decay: on weights only). The paper's fully
    decoupled decay ``p·(1 − wd·lr/peak_lr)`` is torch's ``p·(1 − lr·wd')`` with
    ``wd' = wd / peak_lr``; ``decay_mode="torch"`` uses ``wd`` as given. ``foreach`` on the
    CPU, ``fused`` on CUDA.

    Example:
        >>> m = torch.nn.Linear(2, 2)
        >>> named = list(m.named_parameters())
        >>> cfg = OptimConfig(lr=1e-3, weight_decay=0.1)
        >>> opt = _adamw(cfg, named, param_groups(["weight", "bias"],
        ...              {"weight": True, "bias": False}, cfg), torch.device("cpu"))
        >>> [round(g["weight_decay"], 6) for g in opt.param_groups]
        [100.0, 0.0]
    """
    wd = cfg.weight_decay / cfg.lr if cfg.decay_mode == "decoupled" else cfg.weight_decay
    params = dict(named)
    torch_groups = [
        {
            "params": [params[n] for n in g.names],
            "names": list(g.names),
            "lr_scale": g.scale,
            "lr": cfg.lr * g.scale,
            "weight_decay": wd if g.decay else 0.0,
        }
        for g in groups
    ]
    kernel = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(torch_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kernel)
