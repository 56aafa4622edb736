"""PyTorch training step: autograd, gradient accumulation, global-norm clipping and
AIMv2's AdamW (see :mod:`aimv2.optim` for the exact semantics), with optional
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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from aimv2.inputs import check_pretrain_batch
from aimv2.optim import OptimConfig, decay_mask

from . import to_numpy

__all__ = ["Trainer", "NonFiniteLoss", "default_device", "pretrain_loss", "probe_loss"]


class NonFiniteLoss(FloatingPointError):
    """The loss or the gradient norm is NaN/inf; no update was applied."""


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``.

    Example:
        >>> default_device() in ("cuda", "cpu")
        True
    """
    return "cuda" if torch.cuda.is_available() else "cpu"


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
        >>> round(float(out["loss"]), 4)
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
    that. ``compile=True`` wraps the forward in ``torch.compile``; ``autocast``
    (``"bf16"``) runs matmuls in bfloat16 while parameters and optimizer state stay
    float32. Weight decay follows :func:`aimv2.optim.decay_mask` of ``model.spec``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: OptimConfig,
        *,
        compile: bool = False,
        autocast: str | None = None,
        loss_fn: LossFn | None = None,
    ) -> None:
        self.model, self.cfg = model, cfg
        self.loss_fn = loss_fn or pretrain_loss
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        decay = decay_mask(model.spec)
        self.decay_params = [p for n, p in named if decay[n]]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.step_count = 0
        self.device = self.params[0].device
        self.forward = torch.compile(model) if compile else model
        if autocast not in (None, "bf16"):
            raise ValueError(f"autocast={autocast!r}: expected None or 'bf16'")
        self.autocast = autocast

    def _autocast(self) -> Any:
        if self.autocast == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _tensor(self, x: Any) -> Any:
        if x is None:
            return None
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        return t.to(self.device, non_blocking=True)

    def step(self, micro_batches: Sequence[Mapping[str, Any]], lr: float) -> dict[str, float]:
        """Forward/backward every micro-batch (gradients averaged), clip, update.

        With the default loss each micro-batch holds NumPy ``images`` (B, C, H, W),
        ``tokens`` (B, T) or None and ``prefix_len`` (B,), validated on the host first.
        Returns the mean of each loss term and the gradient norm before clipping.
        Raises :class:`NonFiniteLoss` (without updating) on NaN/inf.
        """
        k = len(micro_batches)
        sums: torch.Tensor | None = None
        keys: list[str] = []
        for mb in micro_batches:
            if self.loss_fn is pretrain_loss:
                check_pretrain_batch(self.model.spec, mb)
            tensors = {name: self._tensor(value) for name, value in mb.items()}
            with self._autocast():
                out = self.loss_fn(self.forward, tensors)
            (out["loss"] / k).backward()
            keys = list(out)
            parts = torch.stack([out[key].detach().float() for key in keys])
            sums = parts if sums is None else sums + parts
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        host = torch.cat([sums / k, norm[None]]).tolist()
        losses = dict(zip([*keys, "grad_norm"], host, strict=True))
        if not all(math.isfinite(v) for v in host):
            self.model.zero_grad(set_to_none=True)
            raise NonFiniteLoss(
                f"non-finite training values at update {self.step_count + 1}: {losses}"
            )
        self._update(grads, norm, lr)
        self.model.zero_grad(set_to_none=True)
        return losses

    @torch.no_grad()
    def _update(self, grads: list[torch.Tensor], norm: torch.Tensor, lr: float) -> None:
        cfg = self.cfg
        b1, b2 = cfg.betas
        if cfg.clip_norm is not None:
            coef = torch.clamp(cfg.clip_norm / (norm + 1e-6), max=1.0)
            torch._foreach_mul_(grads, coef)
        self.step_count += 1
        t = self.step_count
        torch._foreach_lerp_(self.exp_avg, grads, 1 - b1)
        torch._foreach_mul_(self.exp_avg_sq, b2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, value=1 - b2)
        if self.decay_params and cfg.weight_decay:
            torch._foreach_mul_(self.decay_params, cfg.decay_factor(lr))
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, math.sqrt(1 - b2**t))
        torch._foreach_add_(denom, cfg.eps)
        torch._foreach_addcdiv_(self.params, self.exp_avg, denom, value=-lr / (1 - b1**t))

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Optimizer moments as ``exp_avg.<name>`` / ``exp_avg_sq.<name>`` NumPy arrays.

        Example:
            >>> import aimv2
            >>> spec = aimv2.presets.get("aimv2-test-tiny")
            >>> t = Trainer(aimv2.build(spec, "torch"), OptimConfig())
            >>> t.state_arrays()["exp_avg.decoder.start_token"].shape
            (1, 1, 32)
        """
        out = {}
        for n, m, v in zip(self.names, self.exp_avg, self.exp_avg_sq, strict=True):
            out[f"exp_avg.{n}"], out[f"exp_avg_sq.{n}"] = to_numpy(m), to_numpy(v)
        return out

    @torch.no_grad()
    def load_state_arrays(self, arrays: Mapping[str, np.ndarray], step_count: int) -> None:
        """Restore moments saved by :meth:`state_arrays` (from either backend).

        Example:
            >>> import aimv2
            >>> spec = aimv2.presets.get("aimv2-test-tiny")
            >>> t = Trainer(aimv2.build(spec, "torch"), OptimConfig())
            >>> t.load_state_arrays(t.state_arrays(), 3); t.step_count
            3
        """
        want = {f"{k}.{n}" for n in self.names for k in ("exp_avg", "exp_avg_sq")}
        if set(arrays) != want:
            missing, extra = sorted(want - set(arrays)), sorted(set(arrays) - want)
            raise ValueError(
                f"optimizer state does not match the model: missing {missing[:5]}, "
                f"unexpected {extra[:5]}"
            )
        for i, n in enumerate(self.names):
            for store, key in ((self.exp_avg, "exp_avg"), (self.exp_avg_sq, "exp_avg_sq")):
                src = np.asarray(arrays[f"{key}.{n}"])
                if tuple(src.shape) != tuple(store[i].shape):
                    raise ValueError(
                        f"optimizer state {key}.{n}: expected shape {tuple(store[i].shape)}, "
                        f"got {src.shape}"
                    )
                store[i].copy_(torch.from_numpy(src).to(store[i]))
        self.step_count = int(step_count)
