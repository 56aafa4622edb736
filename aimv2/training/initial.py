"""``--init``: start a run from the weights of a checkpoint or a weights file.

Example:
    >>> weight_names(__import__("aimv2").specs.NormSpec(width=2))
    ['weight']
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import checkpoint
from .. import specs as S
from ..tensorfiles import load_file
from ..weights import parameters
from .config import TrainingError

__all__ = ["load_init", "weight_names"]


def load_init(path: str, spec: S.ModelSpec) -> dict[str, np.ndarray]:
    """Weights for ``--init``: a checkpoint of this library with the same spec, or a
    weights file holding the full model or just its encoder (its names under
    ``encoder.``).

    Example:
        >>> import aimv2, tempfile
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> ck = aimv2.checkpoint.save(tempfile.mkdtemp(), 1, spec, aimv2.init_weights(spec))
        >>> len(load_init(str(ck), spec)) == len(aimv2.weights.parameters(spec))
        True
    """
    p = Path(path)
    if not p.exists():
        raise TrainingError(f"--init {path!r}: no such file or directory")
    if p.is_dir() or p.name == "state.json":
        try:
            ck = checkpoint.load(p, optimizer=False)
        except checkpoint.CheckpointError as err:
            raise TrainingError(f"--init: {err}") from None
        weights, saved = ck.weights, ck.spec
    else:
        weights, saved = load_file(p), None
    full = set(weight_names(spec))
    if saved is not None and saved != spec:
        if isinstance(saved, S.ModelSpec) and saved.encoder == spec.encoder:
            weights = {k: v for k, v in weights.items() if k.startswith("encoder.")}
        else:
            raise TrainingError(
                f"--init {path!r}: its spec differs from this run's "
                f"({checkpoint._spec_diff(saved, spec)})"
            )
    if set(weights) != full:
        encoder_only = {
            f"encoder.{k}": v for k, v in weights.items() if not k.startswith("encoder.")
        }
        if set(encoder_only) <= full and encoder_only:
            weights = encoder_only
        if not set(weights) <= full:
            extra = sorted(set(weights) - full)[:5]
            raise TrainingError(f"--init {path!r}: names not in this model: {extra}")
    return weights


def weight_names(spec: S.Spec) -> list[str]:
    """Canonical parameter names of ``spec`` (sorted).

    Example:
        >>> weight_names(S.NormSpec(width=2))
        ['weight']
    """
    return sorted(parameters(spec))
