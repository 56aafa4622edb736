"""What several ``aimv2`` commands share: specs and encoders named on the command line.

Example:
    >>> load_spec("aimv2-test-tiny").encoder.width
    32
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import checkpoint
from ..backend import BackendUnavailable, build
from ..distributed import DistributedError
from ..formats import from_pretrained
from ..presets import load_spec
from ..resize import resize_encoder
from ..specs import RealizationError
from ..training import TrainingError

__all__ = ["load_spec", "load_encoder", "USER_ERRORS", "one_line"]


# What a command reports as one line and exit status 2 instead of a traceback: errors
# that describe the input, the settings or the machine (a bad spec, weights, checkpoint,
# data, flag value, a full disk). Anything else is a defect and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # SpecError, WeightsError, FormatError, CheckpointError, CorruptSampleError
    OSError,  # missing files, permissions, a full disk
    TrainingError,
    DistributedError,
    BackendUnavailable,
    RealizationError,
)


def one_line(err: BaseException) -> str:
    """An error as one line: its message, or its type when it has none; a ``KeyError``'s
    message without the quotes ``str`` adds.

    Example:
        >>> one_line(ValueError("steps=0: expected a positive integer"))
        'steps=0: expected a positive integer'
        >>> one_line(OSError(28, "No space left on device"))
        '[Errno 28] No space left on device'
    """
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(str(text).split())
    return text or type(err).__name__


def load_encoder(path: str, backend: str, image_size: Any = None) -> Any:
    """An encoder module from a checkpoint directory, a run directory (its newest
    checkpoint) or any weights format :func:`aimv2.from_pretrained` reads (of a LiT
    model, its image tower); with ``image_size``, resized to it
    (:func:`aimv2.resize_encoder`); errors name ``--checkpoint``.

    Example:
        >>> load_encoder("/nonexistent", "torch")
        Traceback (most recent call last):
        ...
        FileNotFoundError: --checkpoint '/nonexistent' does not exist
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--checkpoint {path!r} does not exist")
    ck_dir: Path | None = p
    if p.is_dir() and not (p / "state.json").exists() and checkpoint.latest(p) is not None:
        found = checkpoint.newest_intact(p, optimizer=False)  # a run folder: its newest
        if found.damaged:
            why = found.damaged[0][1]
            offer = (
                f"; the newest intact one is {found.path.name}: pass --checkpoint {found.path}"
                if found.path is not None
                else "; no intact checkpoint is left"
            )
            raise ValueError(f"--checkpoint {path!r}: {why}{offer}")
        ck_dir = found.path
    if ck_dir is not None and (Path(ck_dir) / "state.json").exists():
        spec, weights = checkpoint.encoder_of(checkpoint.load(ck_dir, optimizer=False))
        if image_size is not None:
            try:
                spec, weights = resize_encoder(spec, weights, image_size)
            except (ValueError, TypeError) as err:
                raise ValueError(f"--image-size {image_size!r}: {one_line(err)}") from None
        return build(spec, backend, weights=weights)
    try:
        # of a LiT model, the image tower (with its pooling head) is the encoder
        return from_pretrained(path, backend=backend, image_size=image_size, part="image")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--checkpoint {path!r}: {one_line(err)}") from None
