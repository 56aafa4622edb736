"""The machine section of an ``aimv2 bench`` report: CPU, cores, Python, load, and one
line per backend involved (its ``describe``), with the BLAS a backend that wants an
optimized one (``PRELOAD_BLAS``) runs on.

Example:
    >>> info = machine(["torch"], "torch", "cpu", compare=False)
    >>> "torch" in info, "mlx" in info, "peers" in info
    (True, False, False)
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from .. import blas
from ..backend import BACKENDS, BackendUnavailable
from .subject import bench_module

__all__ = ["machine", "loadavg", "optimized_blas"]


def machine(
    backends: Sequence[str], backend: str, device: str | None, compare: bool
) -> dict[str, Any]:
    """Report lines (name → text) for a run of ``backend`` whose subjects use
    ``backends``; ``compare`` adds the backend's line about its peers.

    Example:
        >>> info = machine(["torch"], "torch", "cpu", True)
        >>> list(info)[:2], "peers" in info
        (['machine', 'python'], True)
    """
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count()
    info: dict[str, Any] = {
        "machine": f"{platform.system()} {platform.machine()}, {_cpu_name()}, {cores} cores",
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        info["load average (1, 5, 15 min) at start"] = loadavg()
    for name in BACKENDS:  # a fixed order, whichever backend the run is for
        if name not in backends:
            continue
        try:
            bench = bench_module(name)
        except BackendUnavailable:
            info[name] = "not installed"
            continue
        lines = bench.describe(device, compare and name == backend)
        if bench.PRELOAD_BLAS:
            lines[name] = _with_blas(lines[name])
        info.update(lines)
    return info


def _with_blas(line: str) -> str:
    lib = blas.preloaded_blas() or optimized_blas()
    if lib:
        where = "preloaded" if blas.preloaded_blas() else "preloaded in its worker"
        return f"{line}, BLAS {lib} ({where})"
    if blas.bundled_reference_blas():
        return f"{line}, the bundled reference BLAS. {blas.advice()}"
    return line


def loadavg() -> str:
    """The load averages over 1, 5 and 15 minutes, as one line.

    Example:
        >>> len(loadavg().split())
        3
    """
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def optimized_blas(env: Mapping[str, str] | None = None) -> str | None:
    """:func:`aimv2.blas.find_optimized_blas`, with a bad ``AIMV2_BLAS`` read as none.

    Example:
        >>> optimized_blas({"AIMV2_BLAS": "/no/such/libopenblas.so.0"}) is None
        True
    """
    try:
        return blas.find_optimized_blas(env)
    except ValueError:
        return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
