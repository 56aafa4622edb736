"""What several ``aimv2`` commands share: specs and encoders named on the command line.

Example:
    >>> load_spec("aimv2-test-tiny").encoder.width
    32
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import checkpoint, presets, specs
from ..backend import build
from ..formats import detect, from_pretrained

__all__ = ["load_spec", "load_encoder"]


def load_spec(text: str) -> specs.Spec:
    """:func:`aimv2.presets.load_spec` for the command line: a bad spec ends the command
    with a one-line message.

    Example:
        >>> load_spec("aimv2-test-tiny").encoder.width
        32
    """
    try:
        return presets.load_spec(text)
    except KeyError as err:
        raise SystemExit(f"aimv2: {err.args[0]}") from None
    except (FileNotFoundError, specs.SpecError) as err:
        raise SystemExit(f"aimv2: {err}") from None


def load_encoder(path: str, backend: str) -> Any:
    """An encoder module from a checkpoint directory, a run directory (its newest
    checkpoint) or any weights format :func:`aimv2.from_pretrained` reads; of a LiT model,
    its image tower.

    Example:
        >>> load_encoder("/nonexistent", "torch")
        Traceback (most recent call last):
        ...
        SystemExit: aimv2: --checkpoint '/nonexistent' does not exist
    """
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"aimv2: --checkpoint {path!r} does not exist")
    ck_dir = checkpoint.latest(p) if p.is_dir() and not (p / "state.json").exists() else p
    if ck_dir is not None and (Path(ck_dir) / "state.json").exists():
        try:
            spec, weights = checkpoint.encoder_of(checkpoint.load(ck_dir, optimizer=False))
        except checkpoint.CheckpointError as err:
            raise SystemExit(f"aimv2: {err}") from None
        return build(spec, backend, weights=weights)
    try:
        found = detect(path).spec
        # a LiT model's image tower (with its pooling head) is the encoder
        preset = found.image_encoder if isinstance(found, specs.LiTSpec) else None
        return from_pretrained(path, backend=backend, preset=preset)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise SystemExit(f"aimv2: --checkpoint {path!r}: {err}") from None
