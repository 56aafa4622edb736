"""Checkpoints: one directory per checkpoint, written atomically, backend-neutral.

Layout of ``OUT/ckpt-00000100/``:

- ``model.safetensors``: canonical names, torch layouts, float32;
- ``optimizer.safetensors``: ``exp_avg.<name>`` / ``exp_avg_sq.<name>`` (optional);
- ``state.json``: ``{"format": "aimv2-checkpoint", "version": 1, "spec": …, "step": …,
  "optimizer_step": …, "seed": …, "config": …, "tokenizer": …}``.

A checkpoint is written into a hidden temporary directory, every file fsync'ed, then
renamed into place in one step: a killed writer leaves only a ``.tmp`` directory that
:func:`latest` ignores (and :func:`save` cleans up), never a half checkpoint.

Example:
    >>> import tempfile, aimv2
    >>> spec = aimv2.presets.get("aimv2-test-tiny")
    >>> d = tempfile.mkdtemp()
    >>> path = save(d, 5, spec, aimv2.init_weights(spec))
    >>> latest(d).name, load(path).step
    ('ckpt-00000005', 5)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic
from . import specs as S
from .tensorfiles import FormatError, load_file, read_header, save_file
from .weights import WeightsError, check_weights

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Intact",
    "verify",
    "newest_intact",
    "save",
    "load",
    "latest",
    "complete",
    "directory",
    "encoder_of",
    "FORMAT",
]

FORMAT = "aimv2-checkpoint"
_NAME = re.compile(r"^ckpt-(\d{8})$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not match what it is loaded into."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: spec, weights, optimizer moments and the JSON state."""

    path: Path
    spec: S.Spec
    weights: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] | None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        """Training steps completed when it was written (validated on load)."""
        return int(self.state["step"])


def directory(out_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of ``step`` lives under ``out_dir`` (written or not).

    Example:
        >>> directory("runs/x", 100).name
        'ckpt-00000100'
    """
    return Path(out_dir) / f"ckpt-{int(step):08d}"


def save(
    out_dir: str | os.PathLike,
    step: int,
    spec: S.Spec,
    weights: Mapping[str, np.ndarray],
    optimizer: Mapping[str, np.ndarray] | None = None,
    state: Mapping[str, Any] | None = None,
    keep: int | None = None,
) -> Path:
    """Write ``OUT/ckpt-<step>`` atomically; keep only the newest ``keep`` checkpoints.

    Example:
        >>> import tempfile, aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> save(tempfile.mkdtemp(), 1, spec, aimv2.init_weights(spec)).name
        'ckpt-00000001'
    """
    check_weights(spec, weights, where="checkpoint weights")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in (".ckpt-*.tmp*", ".ckpt-*.old*"):  # of a run killed mid-save
        atomic.remove_stale(out, leftover)
    final = directory(out, step)
    if final.exists():
        raise CheckpointError(
            f"{final.name} exists under {str(out)!r}: a checkpoint is never overwritten "
            f"(resume from the newest, or write the run to another --out)"
        )
    with atomic.atomic_directory(final, replace=False) as tmp:
        save_file(
            {k: np.asarray(v, np.float32) for k, v in weights.items()},
            tmp / "model.safetensors",
            metadata={"format": FORMAT},
        )
        if optimizer is not None:
            save_file(
                {k: np.asarray(v, np.float32) for k, v in optimizer.items()},
                tmp / "optimizer.safetensors",
                metadata={"format": FORMAT},
            )
        body = {"format": FORMAT, "version": 1, "spec": spec.to_dict(), "step": int(step)}
        body.update(state or {})
        # the manifest: a checkpoint whose files are not all there, whole, is not complete
        names = ["model.safetensors"] + (["optimizer.safetensors"] if optimizer is not None else [])
        body["files"] = {n: (tmp / n).stat().st_size for n in names}
        atomic.write_json(tmp / "state.json", body, sort_keys=True)
    if keep is not None and keep > 0:
        for old in complete(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def complete(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories under ``out_dir``, oldest first.

    Example:
        >>> import tempfile
        >>> complete(tempfile.mkdtemp())
        []
    """
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = []
    for p, _ in _candidates(out):
        try:
            verify(p)
        except CheckpointError:
            continue
        found.append(p)
    return found


def _candidates(out: Path) -> list[tuple[Path, int]]:
    """Checkpoint directories by name (``ckpt-<8 digits>``), oldest first."""
    found = []
    for p in out.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append((p, int(m.group(1))))
    return sorted(found, key=lambda item: item[1])


@dataclass
class Intact:
    """The newest intact checkpoint of a run (``path``, None if there is none) and the
    newer ones found damaged, each with the reason."""

    path: Path | None
    damaged: list[tuple[Path, str]]


def newest_intact(out_dir: str | os.PathLike, optimizer: bool = True) -> Intact:
    """The newest checkpoint under ``out_dir`` that :func:`verify` accepts, and every
    newer one it refused (a truncated file, a missing optimizer state, bad metadata…);
    ``optimizer=False`` for weights-only use (the optimizer state is not needed).

    Example:
        >>> import tempfile
        >>> newest_intact(tempfile.mkdtemp())
        Intact(path=None, damaged=[])
    """
    out = Path(out_dir)
    damaged: list[tuple[Path, str]] = []
    if not out.is_dir():
        return Intact(None, damaged)
    for p, _ in reversed(_candidates(out)):
        try:
            verify(p, optimizer=optimizer)
        except CheckpointError as err:
            damaged.append((p, str(err)))
            continue
        return Intact(p, damaged)
    return Intact(None, damaged)


def verify(path: str | os.PathLike, optimizer: bool = True) -> dict[str, Any]:
    """Check a checkpoint without loading its tensors and return its ``state.json``:
    the metadata (format, a spec, a ``step`` that matches the directory's name), and
    every file its manifest lists, present, of the recorded size, with a readable header
    (``optimizer=False``: all but the optimizer state, for weights-only use).

    Example:
        >>> import tempfile, aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> verify(save(tempfile.mkdtemp(), 2, spec, aimv2.init_weights(spec)))["step"]
        2
    """
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    state_file = path / "state.json"
    if not state_file.is_file():
        raise CheckpointError(f"{where}: no state.json (not a complete checkpoint)")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{where}: state.json is not JSON ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{where}: format {got!r} is not {FORMAT!r}")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{where}: state.json has no valid 'step' (got {step!r})")
    m = _NAME.match(path.name)
    if m and int(m.group(1)) != step:
        raise CheckpointError(
            f"{where}: state.json says step {step}, but the directory is {path.name}"
        )
    if not isinstance(state.get("spec"), dict):
        raise CheckpointError(f"{where}: state.json holds no spec")
    files = state.get("files", {"model.safetensors": None})  # checkpoints before manifests
    if not isinstance(files, dict) or "model.safetensors" not in files:
        raise CheckpointError(f"{where}: state.json's file manifest is malformed")
    for name, size in files.items():
        if not optimizer and name == "optimizer.safetensors":
            continue
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{where}: {name} is missing")
        if size is not None and f.stat().st_size != size:
            raise CheckpointError(
                f"{where}: {name} is damaged ({f.stat().st_size} bytes, written as {size})"
            )
        try:
            read_header(f)
        except FormatError as err:
            raise CheckpointError(f"{where}: {name} is damaged ({err})") from None
    return state


def latest(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``out_dir``, or None.

    Example:
        >>> import tempfile
        >>> latest(tempfile.mkdtemp()) is None
        True
    """
    found = complete(out_dir)
    return found[-1] if found else None


def load(path: str | os.PathLike, spec: S.Spec | None = None, optimizer: bool = True) -> Checkpoint:
    """Read a checkpoint directory (or its ``state.json``); with ``spec``, insist it matches.

    Example:
        >>> import tempfile, aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> p = save(tempfile.mkdtemp(), 2, spec, aimv2.init_weights(spec))
        >>> load(p, spec).spec == spec
        True
    """
    path = Path(path)
    if path.name == "state.json":
        path = path.parent
    state = verify(path, optimizer=optimizer)
    try:
        saved = S.from_dict(state["spec"])
    except S.SpecError as err:  # e.g. a user component whose module is not imported
        raise CheckpointError(
            f"checkpoint {str(path)!r}: its spec cannot be rebuilt: {err}"
        ) from None
    if spec is not None and saved != spec:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a different spec than this run "
            f"({_spec_diff(saved, spec)})"
        )
    weights = _read(path, "model.safetensors")
    try:
        check_weights(saved, weights, where=f"checkpoint {str(path)!r} weights")
    except WeightsError as err:
        raise CheckpointError(str(err)) from err
    opt = None
    if optimizer and "optimizer.safetensors" in state.get("files", {}):
        opt = _read(path, "optimizer.safetensors")
    elif optimizer and "files" not in state and (path / "optimizer.safetensors").is_file():
        opt = _read(path, "optimizer.safetensors")
    return Checkpoint(path=path, spec=saved, weights=weights, optimizer=opt, state=state)


def _read(path: Path, name: str) -> dict[str, np.ndarray]:
    try:
        return load_file(path / name)
    except FormatError as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: {name} is damaged ({err})") from None


def _spec_diff(a: S.Spec, b: S.Spec, prefix: str = "") -> str:
    """The first differing field between two specs, as ``field: saved vs wanted``."""
    da, db = a.to_dict(), b.to_dict()

    def walk(x: Any, y: Any, path: str) -> str | None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                found = walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
                if found:
                    return found
            return None
        return None if x == y else f"{path}: checkpoint has {x!r}, this run has {y!r}"

    return walk(da, db, prefix) or "specs differ"


def encoder_of(ck: Checkpoint) -> tuple[S.EncoderSpec, dict[str, np.ndarray]]:
    """The encoder spec and its weights (official names) of a loaded checkpoint (of a LiT
    model: its image tower).

    Example:
        >>> import tempfile, aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> ck = load(save(tempfile.mkdtemp(), 1, spec, aimv2.init_weights(spec)))
        >>> enc, w = encoder_of(ck)
        >>> enc == spec.encoder, "trunk.post_trunk_norm.weight" in w
        (True, True)
    """
    spec = ck.spec
    if isinstance(spec, S.EncoderSpec):
        return spec, dict(ck.weights)
    if isinstance(spec, S.ModelSpec) and spec.decoder is None:
        return spec.encoder, dict(ck.weights)
    if isinstance(spec, (S.ModelSpec, S.LiTSpec)):  # a LiT model's image tower, head included
        pre = "encoder." if isinstance(spec, S.ModelSpec) else "image_encoder."
        n = len(pre)
        return spec.encoder, {k[n:]: v for k, v in ck.weights.items() if k.startswith(pre)}
    raise CheckpointError(f"checkpoint {str(ck.path)!r}: holds a {spec.kind!r}, not an encoder")
