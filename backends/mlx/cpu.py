"""MLX on Linux CPUs: one CPU stream per core, and the BLAS threads to match.

On a Linux CPU, MLX runs each op on one thread per stream, and its elementwise and
exp-based ops (SiLU, softmax) are not vectorized across cores. The encoder and the
pre-training model therefore split a batch over one CPU stream per core
(:func:`run_in_parts`) with the BLAS single-threaded, so all cores work on every op; the
results are the same up to float32 summation order. BLAS thread counts are read and set
with threadpoolctl, on the optimized BLAS aimv2 preloads for MLX (OpenBLAS, MKL, BLIS).

Example:
    >>> set_cpu_streams(1); plan_cpu_batch(8)
    1
    >>> set_cpu_streams(None)
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import mlx.core as mx
from threadpoolctl import ThreadpoolController

from aimv2 import blas

__all__ = [
    "cpu_streams",
    "set_cpu_streams",
    "restore_blas_threads",
    "plan_cpu_batch",
    "run_in_parts",
    "rows_of",
]

_STREAMS: list[Any] = []
_CPU: dict[str, Any] = {"streams": None, "blas_default": None}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def _mlx_blas() -> Any:
    """threadpoolctl's controller of the BLAS MLX calls: the optimized one aimv2 preloaded
    into this process (OpenBLAS, MKL, BLIS), or None (MLX's bundled reference BLAS is
    single-threaded). Other BLAS copies in the process (NumPy's) are left alone."""
    path = blas.preloaded_blas()
    if path is None:
        return None
    for lib in ThreadpoolController().lib_controllers:
        if os.path.realpath(lib.filepath) == os.path.realpath(path):
            return lib
    return None


@functools.lru_cache(maxsize=1)
def _auto_streams() -> int:
    if not sys.platform.startswith("linux"):
        return 1  # macOS: Accelerate and the GPU parallelize on their own
    env = os.environ.get("AIMV2_MLX_CPU_STREAMS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"AIMV2_MLX_CPU_STREAMS={env!r}: expected an integer") from None
    cores = min(_cores(), 8)
    if cores < 2:
        return 1
    if _mlx_blas() is not None:
        return cores  # an optimized BLAS whose threads we can set to one per stream
    # No optimized BLAS mapped: MLX runs on the single-threaded reference BLAS of mlx[cpu].
    # An optimized one we cannot make single-threaded would be oversubscribed: no split.
    return cores if blas.preloaded_blas() is None else 1


def cpu_streams() -> int:
    """How many CPU streams the MLX encoder and pre-training model split a batch over.

    Automatic on Linux: one per core when the BLAS in the process is single-threaded or
    can be made so (OpenBLAS, MKL, BLIS), else 1; ``AIMV2_MLX_CPU_STREAMS`` or
    :func:`set_cpu_streams` overrides it. Only CPU-device computations are split.

    Example:
        >>> cpu_streams() >= 1
        True
    """
    return _CPU["streams"] if _CPU["streams"] is not None else _auto_streams()


def set_cpu_streams(count: int | None) -> None:
    """Split CPU batches over ``count`` streams (1 turns splitting off; None: automatic).

    Example:
        >>> set_cpu_streams(1); cpu_streams()
        1
        >>> set_cpu_streams(None)
    """
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise ValueError(f"count={count!r}: expected a positive integer or None")
    _CPU["streams"] = count
    if count == 1:
        restore_blas_threads()


def restore_blas_threads() -> None:
    """Give the BLAS back the thread count it had before a split batch set it to one.

    A split batch makes the BLAS single-threaded when its graph is built (the streams
    are the parallelism); the next batch run whole restores it by itself. Call this
    before timing or running your own large matmuls right after a split batch.

    Example:
        >>> _ = plan_cpu_batch(8)  # may set the BLAS to one thread per stream
        >>> restore_blas_threads()
        >>> _CPU["blas_default"] is None  # nothing left to restore
        True
    """
    lib = _mlx_blas()
    if lib is not None and _CPU["blas_default"] is not None:
        lib.set_num_threads(_CPU["blas_default"])
    _CPU["blas_default"] = None


def plan_cpu_batch(batch: int) -> int:
    """Into how many parts a CPU batch of ``batch`` examples is split, with the BLAS
    thread count set to match (one per stream when splitting, its own otherwise).

    The encoder and the pre-training model call this when they build their graph. A
    compiled training step builds its graph once, so a loop that runs other batch sizes
    between compiled steps should call it with the step's batch size before each step.

    Example:
        >>> plan_cpu_batch(1)
        1
    """
    if mx.default_device() != mx.cpu:
        return 1
    k = min(cpu_streams(), batch)
    if k <= 1:
        restore_blas_threads()
        return 1
    lib = _mlx_blas()
    if lib is not None and _CPU["blas_default"] is None:
        _CPU["blas_default"] = lib.get_num_threads()
        lib.set_num_threads(1)
    return k


def rows_of(x: Any, rows: slice | None) -> Any:
    """``x[rows]`` (None and a whole batch pass through).

    Example:
        >>> rows_of([1, 2, 3], slice(1, None)), rows_of(None, slice(0, 1))
        ([2, 3], None)
    """
    return x if x is None or rows is None else x[rows]


def run_in_parts(batch: int, fn: Callable[[slice | None], Any]) -> list[Any]:
    """``fn(rows)`` for each part of a CPU batch, each part on its own CPU stream
    (:func:`plan_cpu_batch`); ``[fn(None)]`` when the batch runs whole.

    Example:
        >>> set_cpu_streams(1); run_in_parts(4, lambda rows: rows)
        [None]
        >>> set_cpu_streams(None)
    """
    k = plan_cpu_batch(batch)
    if k <= 1:
        return [fn(None)]
    while len(_STREAMS) < k:
        _STREAMS.append(mx.new_stream(mx.cpu))
    parts, lo = [], 0
    for i in range(k):
        hi = lo + batch // k + (1 if i < batch % k else 0)
        with mx.stream(_STREAMS[i]):
            parts.append(fn(slice(lo, hi)))
        lo = hi
    return parts
