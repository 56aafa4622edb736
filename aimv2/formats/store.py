"""Tensor stores: which safetensors files a path means, and what they hold (headers only).

A path may be a ``.safetensors`` file, a ``model.safetensors.index.json`` of shards, a
folder holding one of those, or an ``aimv2`` checkpoint directory (``state.json``).
:func:`locate` says which; :class:`Store` maps every tensor name to its file and header
entry and reads one tensor at a time.

Example:
    >>> import tempfile
    >>> from aimv2.tensorfiles import save_file
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = save_file({"w": np.ones((2, 3), np.float32)}, d / "model.safetensors")
    >>> kind, (files, _), _ = locate(d)
    >>> kind, Store.open(files).shape("w")
    ('files', (2, 3))
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint as _ckpt
from ..tensorfiles import TensorInfo, load_file, read_header
from .names import INDEX, WEIGHT_FILES, FormatError

__all__ = ["Store", "read_json", "locate"]


@dataclass
class Store:
    """Every tensor a checkpoint's safetensors files hold: name -> (file, TensorInfo).

    Example:
        >>> import tempfile
        >>> from aimv2.tensorfiles import save_file
        >>> p = Path(tempfile.mkdtemp()) / "a.safetensors"
        >>> _ = save_file({"w": np.arange(3, dtype=np.float32)}, p)
        >>> Store.open([p]).read("w").tolist()
        [0.0, 1.0, 2.0]
    """

    tensors: dict[str, tuple[Path, TensorInfo]]
    metadata: dict[str, str]
    files: list[Path]

    @classmethod
    def open(cls, files: list[Path], weight_map: Mapping[str, str] | None = None) -> Store:
        """Read the headers of ``files``; with ``weight_map`` (an index's tensor name ->
        shard file), each tensor must sit in the shard the index names."""
        tensors: dict[str, tuple[Path, TensorInfo]] = {}
        metadata: dict[str, str] = {}
        for f in files:
            if not f.is_file():
                raise FormatError(f"{f}: shard file is missing")
            infos, meta = read_header(f)
            metadata.update(meta)
            for name, info in infos.items():
                if weight_map is not None and weight_map.get(name) != f.name:
                    continue
                if name in tensors:
                    raise FormatError(
                        f"tensor {name!r} is stored twice: in {tensors[name][0]} and {f}"
                    )
                tensors[name] = (f, info)
        if weight_map is not None:
            lost = sorted(n for n in weight_map if n not in tensors)
            if lost:
                raise FormatError(
                    f"{files[0].parent / INDEX}: names {len(lost)} tensors its shards do not hold "
                    f"(first: {lost[0]!r} in {weight_map[lost[0]]!r})"
                )
        return cls(tensors, metadata, files)

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The stored shape of tensor ``name`` (None when absent)."""
        hit = self.tensors.get(name)
        return None if hit is None else hit[1].shape

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as stored, floats widened to float32 (float64 stays)."""
        path, info = self.tensors[name]
        arr = load_file(path, names=[name])[name]
        return arr if info.dtype in ("F32", "F64") else arr.astype(np.float32)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; anything else raises :class:`FormatError` naming it.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "c.json"; _ = p.write_text("[1]")
        >>> try:
        ...     read_json(p)
        ... except FormatError as err:
        ...     str(err).endswith("expected a JSON object, got list")
        True
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(f"{path}: cannot read JSON ({err})") from err
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def locate(path: Path) -> tuple[str, Any, Path]:
    """What ``path`` names: ``('checkpoint', state_dir, folder)`` for an ``aimv2``
    checkpoint, else ``('files', (files, weight_map or None), folder)``.

    A folder holding both released layouts (``model.safetensors`` and
    ``mlx_model.safetensors``: the same weights) yields the official file.

    Example:
        >>> import tempfile
        >>> from aimv2.tensorfiles import save_file
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in WEIGHT_FILES.values():
        ...     _ = save_file({"w": np.ones(1, np.float32)}, d / name)
        >>> locate(d)[1][0][0].name
        'model.safetensors'
    """
    if not path.exists():
        raise FileNotFoundError(f"path={str(path)!r}: no such file or folder")
    if path.is_file():
        if path.name == "state.json":
            return "checkpoint", path.parent, path.parent
        if path.name.endswith(".index.json"):
            return "files", _index(path), path.parent
        if path.suffix != ".safetensors":
            raise FormatError(
                f"path={str(path)!r}: expected a .safetensors file, a model.safetensors.index.json"
                f" or a folder (pickle checkpoints such as .bin/.pt are not read)"
            )
        return "files", ([path], None), path.parent
    if (path / "state.json").is_file():
        return "checkpoint", path, path
    newest = _ckpt.latest(path)
    if newest is not None:
        return "checkpoint", newest, newest
    if (path / INDEX).is_file():
        return "files", _index(path / INDEX), path
    standard = [path / name for name in WEIGHT_FILES.values() if (path / name).is_file()]
    if len(standard) == len(WEIGHT_FILES):  # the same weights in both layouts
        standard = [path / WEIGHT_FILES["official"]]
    if not standard:
        standard = sorted(
            p for p in path.glob("*.safetensors") if p.is_file() and not p.name.startswith(".")
        )
    if len(standard) != 1:
        have = sorted(p.name for p in path.iterdir())[:12]
        what = "several" if standard else "no"
        raise FormatError(
            f"folder {str(path)!r}: found {what} candidate .safetensors files (expected "
            f"model.safetensors, mlx_model.safetensors, {INDEX} or state.json); it holds {have}"
        )
    return "files", (standard, None), path


def _index(path: Path) -> tuple[list[Path], dict[str, str]]:
    data = read_json(path)
    wmap = data.get("weight_map")
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise FormatError(f"{path}: expected a 'weight_map' object of tensor name -> shard file")
    files = [path.parent / name for name in sorted(set(wmap.values()))]
    return files, wmap
