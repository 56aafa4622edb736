"""Atomic writes: a file or a folder appears whole under its final name, or not at all.

Everything this library writes that a later run reads back (checkpoints, exported model
folders, tokenizers, feature caches, metrics, reports) goes through here: the content is
written under a hidden temporary name beside the target, flushed to disk, and renamed
into place in one step. A process killed mid-write leaves at most a hidden ``.*.tmp*``
entry, never a truncated file under the real name.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> p = write_json(Path(tempfile.mkdtemp()) / "a.json", {"step": 3})
    >>> json.loads(p.read_text())["step"]
    3
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_file",
    "atomic_directory",
    "write_bytes",
    "write_text",
    "write_json",
    "remove_stale",
]


def _fsync_dir(path: str | os.PathLike) -> None:
    """Persist the entries (renames) of folder ``path``; best effort where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, the file
    written there is flushed and renamed onto ``path`` (replacing it). On error it is removed.

    ``mode``: permission bits of the result (default: those of the file it replaces, else
    0o644). The folder of ``path`` is created if needed.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> target = Path(tempfile.mkdtemp()) / "x.bin"
        >>> with atomic_file(target) as tmp:
        ...     _ = tmp.write_bytes(b"abc")
        >>> target.read_bytes()
        b'abc'
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if mode is None:
            try:
                mode = os.stat(final).st_mode & 0o7777
            except FileNotFoundError:
                mode = 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path.

    Example:
        >>> import tempfile
        >>> write_bytes(tempfile.mkdtemp() + "/b", b"x").read_bytes()
        b'x'
    """
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path.

    Example:
        >>> import tempfile
        >>> write_text(tempfile.mkdtemp() + "/t.txt", "hi").read_text()
        'hi'
    """
    return write_bytes(path, text.encode("utf-8"))


def write_json(
    path: str | os.PathLike, data: Any, *, indent: int | None = 2, sort_keys: bool = False
) -> Path:
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically.

    Example:
        >>> import tempfile
        >>> write_json(tempfile.mkdtemp() + "/d.json", [1, 2], indent=None).read_text()
        '[1, 2]\\n'
    """
    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")


def remove_stale(folder: str | os.PathLike, pattern: str) -> int:
    """Remove leftovers of interrupted writes (``pattern`` is a glob like ``.ckpt-*.tmp*``)
    in ``folder``; returns how many were removed.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> d = Path(tempfile.mkdtemp()); (d / ".x.tmp1").mkdir()
        >>> remove_stale(d, ".x.tmp*")
        1
    """
    count = 0
    for stale in Path(folder).glob(pattern):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        count += 1
    return count


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block ends without error its
    files are flushed and the folder is renamed onto ``path``. An existing ``path`` is
    moved aside first and deleted after the rename (``replace=False``: refuse instead).
    On error the temporary folder is removed and ``path`` is untouched.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> target = Path(tempfile.mkdtemp()) / "ckpt"
        >>> with atomic_directory(target) as tmp:
        ...     _ = (tmp / "state.json").write_text("{}")
        >>> sorted(p.name for p in target.iterdir())
        ['state.json']
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not replace:
        raise FileExistsError(f"{str(final)!r} exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(tmp)
        os.chmod(tmp, 0o755)
        if final.exists():
            if not replace:
                raise FileExistsError(f"{str(final)!r} exists")
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.rmdir(old)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final.parent)
