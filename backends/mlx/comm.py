"""MLX's membership of an ``mlx.launch`` group (the contract's Communicator).

Example:
    >>> _launcher_backend({"MLX_HOSTFILE": "hosts.json"})
    'ring'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

__all__ = ["MLXComm", "init_distributed", "gather_with_grad"]


def _launcher_backend(env: Mapping[str, str]) -> str:
    """The ``mx.distributed`` backend the launcher prepared (``any`` if unknown)."""
    if "OMPI_COMM_WORLD_RANK" in env or "PMI_RANK" in env:
        return "mpi"
    if "MLX_JACCL_COORDINATOR" in env or "MLX_IBV_DEVICES" in env:
        return "jaccl"
    if "NCCL_HOST_IP" in env and "MLX_WORLD_SIZE" in env:
        return "nccl"
    if env.get("MLX_HOSTFILE"):
        return "ring"
    return "any"


class MLXComm:
    """This process's membership of the ``mx.distributed`` group ``mlx.launch`` set up
    (ring over TCP from its hostfile, MPI under mpirun, NCCL on CUDA). Built by
    :func:`init_distributed`. MLX collectives have no timeout of their own: callers
    guard them with :class:`aimv2.distributed.Watchdog`.
    """

    # MLX collectives have no timeout: aimv2.distributed guards them with a watchdog
    enforces_timeout = False

    def __init__(self, *, backend: str | None = None) -> None:
        self.backend = backend or _launcher_backend(os.environ)
        self.group = mx.distributed.init(strict=True, backend=self.backend)
        self.rank, self.size = self.group.rank(), self.group.size()

    def _host_ints(self, arr: np.ndarray) -> mx.array:
        arr = np.asarray(arr, dtype=np.int64)
        if arr.size and np.abs(arr).max() >= 2**31:
            raise ValueError("MLX host collectives carry int32 values; got one past 2**31")
        return mx.array(arr.astype(np.int32))

    def sum_ints(self, arr: np.ndarray) -> np.ndarray:
        """Element-wise sum of an integer vector over the ranks."""
        out = mx.distributed.all_sum(self._host_ints(arr), group=self.group, stream=mx.cpu)
        return np.array(out).astype(np.int64)

    def max_ints(self, arr: np.ndarray) -> np.ndarray:
        """Element-wise maximum of an integer vector over the ranks."""
        out = mx.distributed.all_max(self._host_ints(arr), group=self.group, stream=mx.cpu)
        return np.array(out).astype(np.int64)

    def _average(self, arrays: Sequence[mx.array]) -> list[mx.array]:
        """The mean over ranks of each array (``nn.average_gradients``: concatenated into
        ~32 MiB all-reduces); lazy until evaluated."""
        return list(nn.average_gradients(list(arrays), group=self.group))

    def barrier(self) -> None:
        """Wait for every rank."""
        mx.eval(mx.distributed.all_sum(mx.array(1), group=self.group, stream=mx.cpu))

    def close(self) -> None:
        """Nothing to release: MLX keeps its group for the life of the process."""

    def record_failure(self, err: BaseException, *, secondary: bool = False) -> None:
        """Nothing to record: ``mlx.launch`` has no failure file; the error is printed."""


def gather_with_grad(x: mx.array, world: Any = None) -> mx.array:
    """The rows of ``x`` (B, ...) from every rank of ``world``, concatenated in rank order
    (K·B, ...), with gradient: the gradient reaching this rank's rows is summed over the
    ranks (``all_sum`` of the cotangent, then this rank's rows), so a loss every rank
    computes over the gathered rows trains as that loss of one process with the global
    batch once the trainer averages the ranks' gradients. Every rank must pass the same
    shape. One process (``world`` None or of size 1): ``x``.

    Example:
        >>> x = mx.ones((2, 3))
        >>> gather_with_grad(x) is x
        True
    """
    if world is None or world.size == 1:
        return x
    group, rank = world.comm.group, world.rank

    @mx.custom_function
    def gather(rows: mx.array) -> mx.array:
        return mx.distributed.all_gather(rows, group=group)

    @gather.vjp
    def gather_vjp(primals: Any, cotangent: mx.array, output: mx.array) -> mx.array:
        # one input: MLX passes it (and takes its cotangent) as a bare array
        n = (primals if isinstance(primals, mx.array) else primals[0]).shape[0]
        summed = mx.distributed.all_sum(cotangent, group=group)
        return summed[rank * n : (rank + 1) * n]

    return gather(x)


_LAUNCH_VARS = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def init_distributed(
    *,
    timeout_s: float = 600.0,
    device: str | None = None,
    local_rank: int = 0,
    environ: Mapping[str, str] | None = None,
) -> MLXComm:
    """Join the group ``mlx.launch`` (or ``mpirun``) set up for this process.

    Called by :func:`aimv2.distributed.init_world`; ``timeout_s`` is enforced there by a
    watchdog, and ``device`` / ``local_rank`` are torch's concern (MLX picks its device).
    A process no launcher started gets a clear error.

    Example:
        >>> init_distributed(environ={})
        Traceback (most recent call last):
        ...
        RuntimeError: init_distributed: this process was not started by mlx.launch or mpirun (none of MLX_RANK, OMPI_COMM_WORLD_RANK, PMI_RANK is set)
    """
    env = os.environ if environ is None else environ
    if not any(k in env for k in _LAUNCH_VARS):
        raise RuntimeError(
            "init_distributed: this process was not started by mlx.launch or mpirun (none of "
            f"{', '.join(_LAUNCH_VARS)} is set)"
        )
    return MLXComm(backend=_launcher_backend(env))
