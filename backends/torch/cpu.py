"""CPU tuning for torch processes (speed only: never changes what a computation returns).

Example:
    >>> import sys
    >>> tune_cpu_allocator() is sys.platform.startswith("linux")
    True
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["tune_cpu_allocator"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_cpu_allocator(trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> bool:
    """Keep freed activation memory in glibc's heap instead of returning it to the OS.

    By default glibc serves each multi-megabyte activation with a fresh ``mmap`` and
    gives it back on free, so every forward touches (page-faults) all of its activation
    memory again; in a VM a fault costs microseconds, and the elementwise ops of a ViT
    on a CPU end up several times slower than their arithmetic. This sets glibc's
    ``M_MMAP_THRESHOLD`` (allocations below it come from the reusable heap; glibc caps
    it at 32 MiB) and ``M_TRIM_THRESHOLD`` (free memory kept at the top of the heap
    before it is returned; 1 GiB). Process-wide; it only changes when memory goes back
    to the OS, never what a computation returns. Returns False where it does not apply
    (not Linux/glibc).

    Example:
        >>> import sys
        >>> tune_cpu_allocator() is sys.platform.startswith("linux")  # glibc on Linux
        True
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (glibc, not musl)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(min(mmap_threshold, 32 << 20)))
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, int(min(trim_threshold, 2**31 - 1))))
