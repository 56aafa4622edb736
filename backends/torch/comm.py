"""Torch's membership of a ``torchrun`` process group (the contract's Communicator).

Example:
    >>> init_distributed(environ={"RANK": "0"})
    Traceback (most recent call last):
    ...
    RuntimeError: init_distributed: this process was not started by torchrun (WORLD_SIZE, MASTER_ADDR, MASTER_PORT unset)
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

from .runtime import default_device

__all__ = ["TorchComm", "init_distributed", "gather_with_grad"]


class TorchComm:
    """This process's membership of the torchrun-launched ``torch.distributed`` group.

    gloo on CPU, NCCL on CUDA (one GPU per rank: ``cuda:<LOCAL_RANK>``). Every
    collective, the DDP/FSDP ones included, fails after ``timeout_s`` instead of
    waiting forever for a rank that stopped. Built by :func:`init_distributed`.
    """

    # gloo and NCCL end a collective that outlasts the group's timeout themselves
    enforces_timeout = True

    def __init__(self, *, timeout_s: float, device: str | None = None, local_rank: int = 0):
        dev = torch.device(device or default_device())
        if dev.type == "cuda":
            if dev.index is None:
                dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        elif dev.type != "cpu":
            raise ValueError(f"--device {device!r}: distributed runs use cpu (gloo) or cuda (nccl)")
        self.device = dev
        self.backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(
                self.backend,
                timeout=datetime.timedelta(seconds=float(timeout_s)),
                device_id=dev if dev.type == "cuda" else None,
            )
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self._device_mesh: Any = None

    def _mesh(self) -> Any:
        """The 1-D device mesh over every rank (FSDP2 shards over it)."""
        if self._device_mesh is None:
            self._device_mesh = init_device_mesh(self.device.type, (self.size,))
        return self._device_mesh

    def _reduce(self, arr: np.ndarray, op: Any) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64)).to(self.device)
        dist.all_reduce(t, op=op)
        return t.cpu().numpy()

    def sum_ints(self, arr: np.ndarray) -> np.ndarray:
        """Element-wise sum of an int64 vector over the ranks."""
        return self._reduce(arr, dist.ReduceOp.SUM)

    def max_ints(self, arr: np.ndarray) -> np.ndarray:
        """Element-wise maximum of an int64 vector over the ranks."""
        return self._reduce(arr, dist.ReduceOp.MAX)

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks in place (on this rank's device) and return it."""
        dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        """Wait for every rank."""
        dist.barrier()

    def close(self) -> None:
        """Destroy the process group."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def record_failure(self, err: BaseException, *, secondary: bool = False) -> None:
        """Write ``err`` to torchrun's error file, so its failure summary shows it.

        torchrun names as root cause the error with the smallest timestamp, in whole
        seconds, ties going to the lowest rank; a ``secondary`` failure (this rank lost a
        peer that failed first) is written in the next second so that the peer's own error
        is the one named.
        """
        if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
            return
        if secondary:
            time.sleep(1.0 - time.time() % 1.0 + 0.01)
        try:
            ErrorHandler().record_exception(err)
        except Exception:  # noqa: BLE001 - reporting must never mask the error
            pass


class _GatherRows(torch.autograd.Function):
    """All-gather along the first axis whose backward sums the incoming gradient over the
    ranks and keeps this rank's rows: every rank differentiates the same loss of the
    gathered rows, so each row's gradient is the sum of what every rank's loss sends it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rank: int, size: int) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x)
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        lo = ctx.rank * ctx.rows
        return grad[lo : lo + ctx.rows], None, None


def gather_with_grad(x: torch.Tensor, world: Any = None) -> torch.Tensor:
    """The rows of ``x`` (B, ...) from every rank of ``world``, concatenated in rank order
    (K·B, ...), with gradient: the gradient reaching this rank's rows is summed over the
    ranks, so a loss every rank computes over the gathered rows trains as that loss of one
    process with the global batch once the trainer averages the ranks' gradients. Every
    rank must pass the same shape. One process (``world`` None or of size 1): ``x``.

    Example:
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> gather_with_grad(x) is x
        True
    """
    if world is None or world.size == 1:
        return x
    return _GatherRows.apply(x, world.rank, world.size)


_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init_distributed(
    *,
    timeout_s: float = 600.0,
    device: str | None = None,
    local_rank: int = 0,
    environ: Mapping[str, str] | None = None,
) -> TorchComm:
    """Join the process group torchrun set up (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``…).

    Called by :func:`aimv2.distributed.init_world`; a single process never calls it, and
    a process that torchrun did not start gets a clear error instead of a hang.

    Example:
        >>> init_distributed(environ={})
        Traceback (most recent call last):
        ...
        RuntimeError: init_distributed: this process was not started by torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT unset)
    """
    env = os.environ if environ is None else environ
    missing = [k for k in _LAUNCH_VARS if k not in env]
    if missing:
        raise RuntimeError(
            f"init_distributed: this process was not started by torchrun ({', '.join(missing)} "
            f"unset)"
        )
    return TorchComm(timeout_s=timeout_s, device=device, local_rank=local_rank)
