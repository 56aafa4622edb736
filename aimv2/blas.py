"""An optimized BLAS for MLX on Linux CPUs.

The ``mlx[cpu]`` wheel for Linux links the *reference* BLAS (netlib) that it bundles
in ``mlx_cpu.libs``: a 2048² float32 matmul runs at a few GFLOP/s, some 40× below an
optimized BLAS on the same cores. MLX calls the standard CBLAS entry points
(``cblas_sgemm``, …), so a library that exports them — OpenBLAS, BLIS, MKL — takes
over when it is preloaded into the process (``LD_PRELOAD``). The same preload slows
PyTorch (its own MKL then competes with it), so it is applied only to processes that
run MLX alone, never to torch ones.

The ``aimv2`` command does this by itself for its own MLX processes
(:func:`ensure_fast_blas` re-executes the process once with the library preloaded);
for your own scripts, prefix them with :func:`preload_prefix`. Set ``AIMV2_BLAS`` to
a library path to choose one, or to ``none`` to turn the preload off.

Example:
    >>> from aimv2 import blas
    >>> blas.plan_reexec("torch", env={}, lib="/usr/lib/libopenblas.so.0") is None  # never
    True
    >>> blas.without_preload({"LD_PRELOAD": "/usr/lib/libopenblas.so.0"})  # a torch child's
    {}
"""

from __future__ import annotations

import mmap
import os
import platform
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "ENV_LIBRARY",
    "exports_symbol",
    "candidate_paths",
    "find_optimized_blas",
    "bundled_reference_blas",
    "preloaded_blas",
    "advice",
    "preload_prefix",
    "plan_reexec",
    "ensure_fast_blas",
    "without_preload",
]

ENV_LIBRARY = "AIMV2_BLAS"  # a library path, or "none" to disable the preload
_ENV_GUARD = "_AIMV2_BLAS_EXEC"  # "<pid>:<library>" set for the one re-executed process
_ENV_PREV = "_AIMV2_BLAS_PREV_PRELOAD"  # LD_PRELOAD as it was before the re-exec
_OFF = {"", "0", "none", "off", "no", "false"}
# Library file names that are optimized BLAS implementations exporting CBLAS. A plain
# ``libblas.so.3`` is left out on purpose: on many systems it *is* the reference BLAS.
_NAMES = (
    "libopenblas.so.0",
    "libopenblasp.so.0",
    "libopenblaso.so.0",
    "libblis.so.4",
    "libmkl_rt.so.2",
    "libmkl_rt.so",
)
_SUBDIRS = (
    "",
    "openblas-pthread",
    "openblas-openmp",
    "openblas-serial",
    "blis-pthread",
    "blis-openmp",
)


def exports_symbol(path: str | os.PathLike, symbol: str = "cblas_sgemm") -> bool:
    """True when the ELF64 shared library at ``path`` *defines* (exports) ``symbol``.

    Reads the dynamic symbol table without loading the library (loading a BLAS into a
    torch process is what must be avoided). Libraries that only import ``symbol``,
    missing files and non-ELF files give False.

    Example:
        >>> exports_symbol("/no/such/lib.so")
        False
    """
    want = symbol.encode()
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _elf_defines(m, want)
    except (OSError, ValueError, struct.error):
        return False


def _elf_defines(m: mmap.mmap, want: bytes) -> bool:
    if m[:4] != b"\x7fELF" or m[4] != 2 or m[5] != 1:  # ELF, 64-bit, little-endian
        return False
    shoff = struct.unpack_from("<Q", m, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", m, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", m, shoff + i * shentsize) for i in range(shnum)]
    for sec in sections:
        if sec[1] != 11:  # SHT_DYNSYM
            continue
        sym_off, sym_size, link, entsize = sec[4], sec[5], sec[6], sec[9] or 24
        str_off, str_size = sections[link][4], sections[link][5]
        strtab = m[str_off : str_off + str_size]
        pos = strtab.find(b"\0" + want + b"\0")
        if pos < 0:
            return False
        name_index = pos + 1
        for i in range(sym_size // entsize):
            st_name, _info, _other, st_shndx = struct.unpack_from("<IBBH", m, sym_off + i * entsize)
            if st_name == name_index and st_shndx != 0:  # 0 = SHN_UNDEF (an import)
                return True
        return False
    return False


def _multiarch() -> str:
    machine = platform.machine() or "x86_64"
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)
    return f"{machine}-linux-gnu"


def candidate_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where an optimized BLAS is looked for, in order (existing or not).

    Debian/Ubuntu multiarch folders (and their ``openblas-*`` alternatives), the
    Fedora/Arch folders, ``/usr/local``, ``/opt/OpenBLAS`` and an active conda prefix.

    Example:
        >>> any(p.name == "libopenblas.so.0" for p in candidate_paths({}))
        True
    """
    env = os.environ if env is None else env
    roots = [
        Path("/usr/lib") / _multiarch(),
        Path("/usr/lib64"),
        Path("/usr/lib"),
        Path("/usr/local/lib"),
        Path("/opt/OpenBLAS/lib"),
    ]
    if env.get("CONDA_PREFIX"):
        roots.insert(0, Path(env["CONDA_PREFIX"]) / "lib")
    return [root / sub / name for root in roots for sub in _SUBDIRS for name in _NAMES]


def _ldconfig_paths() -> list[Path]:
    exe = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None
    )
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        name, _, target = line.strip().partition(" => ")
        if name.split(" ")[0] in _NAMES and target:
            found.append(Path(target.strip()))
    return found


def find_optimized_blas(env: Mapping[str, str] | None = None) -> str | None:
    """Path of an optimized BLAS exporting ``cblas_sgemm``, or None.

    ``AIMV2_BLAS`` (in ``env``, default ``os.environ``) overrides the search: a path to
    use, or ``none`` to report nothing. An ``AIMV2_BLAS`` path that does not export
    CBLAS raises ValueError (better than a silent reference-BLAS run).

    Example:
        >>> find_optimized_blas({"AIMV2_BLAS": "none"}) is None
        True
    """
    env = os.environ if env is None else env
    chosen = env.get(ENV_LIBRARY)
    if chosen is not None:
        if chosen.strip().lower() in _OFF:
            return None
        if not exports_symbol(chosen):
            raise ValueError(
                f"{ENV_LIBRARY}={chosen!r}: not a shared library exporting cblas_sgemm "
                f"(point it at e.g. libopenblas.so.0, or set {ENV_LIBRARY}=none)"
            )
        return str(chosen)
    if not sys.platform.startswith("linux"):
        return None
    for path in [*candidate_paths(env), *_ldconfig_paths()]:
        if path.is_file() and exports_symbol(path):
            return str(path)
    return None


def bundled_reference_blas() -> str | None:
    """The reference BLAS that the installed ``mlx[cpu]`` wheel bundles, or None.

    Example:
        >>> lib = bundled_reference_blas()  # None without mlx[cpu]
        >>> lib is None or exports_symbol(lib, "cblas_sgemm")
        True
    """
    import importlib.util

    spec = importlib.util.find_spec("mlx")
    if spec is None or not spec.submodule_search_locations:
        return None
    site = Path(next(iter(spec.submodule_search_locations))).parent
    libs = site / "mlx_cpu.libs"
    if not libs.is_dir():
        return None
    found = sorted(libs.glob("libblas*.so*"))
    return str(found[0]) if found else None


def preloaded_blas(maps: str | os.PathLike = "/proc/self/maps") -> str | None:
    """The optimized BLAS mapped into this process (preloaded or linked), or None.

    Example:
        >>> preloaded_blas("/no/such/maps") is None
        True
    """
    try:
        text = Path(maps).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if path.startswith("/") and _is_optimized_name(Path(path).name):
            return path
    return None


def _is_optimized_name(name: str) -> bool:
    # numpy's own OpenBLAS (libscipy_openblas64_*) uses prefixed symbols: not a match.
    return name.startswith(("libopenblas", "libblis", "libmkl_rt"))


def preload_prefix(lib: str | None = None) -> str:
    """The shell prefix that runs your own MLX script on the optimized BLAS.

    Example:
        >>> preload_prefix("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")
        'LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0'
    """
    lib = lib or find_optimized_blas()
    if lib is None:
        raise FileNotFoundError("no optimized BLAS found; " + advice())
    return f"LD_PRELOAD={lib}"


def advice() -> str:
    """What to do when MLX would run on the reference BLAS (one line per option).

    Example:
        >>> "libopenblas0-pthread" in advice()
        True
    """
    return (
        "MLX on Linux uses the reference BLAS bundled with mlx[cpu] (matmuls ~40x slower). "
        "Install an optimized BLAS and the aimv2 command preloads it for its MLX runs: "
        "'apt-get install libopenblas0-pthread' (Debian/Ubuntu), 'dnf install openblas' "
        "(Fedora) or 'conda install openblas'; or set AIMV2_BLAS=/path/to/libopenblas.so.0. "
        "Your own scripts: LD_PRELOAD=/path/to/libopenblas.so.0 python script.py. "
        "AIMV2_BLAS=none turns this off."
    )


def _backend_set(backends: str | Iterable[str] | None) -> set[str]:
    if backends is None:
        return set()
    if isinstance(backends, str):
        return {backends}
    return {str(b) for b in backends}


def plan_reexec(
    backends: str | Iterable[str] | None,
    env: Mapping[str, str] | None = None,
    pid: int | None = None,
    lib: str | None = None,
    platform_name: str | None = None,
) -> dict[str, str] | None:
    """The environment to re-execute this process with, or None to run on as is.

    Re-executes only on Linux, only when the process runs MLX and nothing else
    (``backends`` is ``"mlx"`` or ``["mlx"]``: a torch process must never get the
    preload), only once (a guard variable holds this pid), and only when a library is
    found (``lib``, default :func:`find_optimized_blas`) that is not already preloaded.

    Example:
        >>> plan_reexec("torch", env={}, lib="/lib/libopenblas.so.0") is None
        True
        >>> plan_reexec("mlx", env={}, pid=7, lib="/lib/libopenblas.so.0",
        ...             platform_name="linux")["LD_PRELOAD"]
        '/lib/libopenblas.so.0'
    """
    env = dict(os.environ if env is None else env)
    pid = os.getpid() if pid is None else pid
    if not (platform_name or sys.platform).startswith("linux"):
        return None
    if _backend_set(backends) != {"mlx"}:
        return None
    if env.get(_ENV_GUARD, "").split(":", 1)[0] == str(pid):
        return None
    lib = lib if lib is not None else find_optimized_blas(env)
    if lib is None:
        return None
    current = env.get("LD_PRELOAD", "")
    if lib in current.replace(":", " ").split():
        return None
    env[_ENV_PREV] = current
    env["LD_PRELOAD"] = f"{lib} {current}".strip() if current else lib
    env[_ENV_GUARD] = f"{pid}:{lib}"
    return env


def ensure_fast_blas(
    backends: str | Iterable[str] | None,
    argv: list[str] | None = None,
    *,
    quiet: bool = False,
) -> str | None:
    """For the ``aimv2`` command: re-execute an MLX-only process on an optimized BLAS.

    Call it first thing in the command's ``main`` (and only there: it replaces the
    running process). When :func:`plan_reexec` says so it runs ``argv`` (default: this
    interpreter's original command line) again with the library in ``LD_PRELOAD``;
    in the re-executed process it puts ``LD_PRELOAD`` back as it was, so child
    processes (a torch one, say) never inherit it, and returns the library now in
    use. When MLX would run on the bundled reference BLAS it prints :func:`advice` to
    stderr once, unless ``quiet``. Returns None when nothing was preloaded.

    Example:
        >>> ensure_fast_blas("torch") is None
        True
    """
    guard = os.environ.get(_ENV_GUARD, "")
    if guard.split(":", 1)[0] == str(os.getpid()):
        prev = os.environ.pop(_ENV_PREV, "")
        if prev:
            os.environ["LD_PRELOAD"] = prev
        else:
            os.environ.pop("LD_PRELOAD", None)
        os.environ.pop(_ENV_GUARD, None)
        lib = guard.split(":", 1)[1]
        if preloaded_blas() is None and not quiet:
            print(f"aimv2: {lib} could not be preloaded; {advice()}", file=sys.stderr)
            return None
        return lib
    if _backend_set(backends) != {"mlx"} or not sys.platform.startswith("linux"):
        return None
    mapped = preloaded_blas()
    if mapped is not None:
        return mapped
    try:
        env = plan_reexec(backends)
    except ValueError as err:
        if not quiet:
            print(f"aimv2: {err}", file=sys.stderr)
        return None
    if env is None:
        if (
            not quiet
            and os.environ.get(ENV_LIBRARY, "x").strip().lower() not in _OFF
            and bundled_reference_blas() is not None
        ):
            print(f"aimv2: {advice()}", file=sys.stderr)
        return None
    args = list(argv) if argv is not None else [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(args[0], args, env)
    return None  # pragma: no cover (execve does not return)


def without_preload(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` with every optimized-BLAS entry taken out of ``LD_PRELOAD``:
    the environment to start a torch process with.

    Example:
        >>> without_preload({"LD_PRELOAD": "/x/libopenblas.so.0 /y/libfoo.so"})["LD_PRELOAD"]
        '/y/libfoo.so'
    """
    env = dict(os.environ if env is None else env)
    kept = [
        p
        for p in env.get("LD_PRELOAD", "").replace(":", " ").split()
        if not _is_optimized_name(Path(p).name)
    ]
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    for key in (_ENV_GUARD, _ENV_PREV):
        env.pop(key, None)
    return env
