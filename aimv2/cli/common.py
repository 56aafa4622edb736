"""What several ``aimv2`` commands share: specs and encoders named on the command line,
the flag spellings of the training runs, running one rank of a launched run.

Example:
    >>> load_spec("aimv2-test-tiny").encoder.width
    32
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import checkpoint
from ..backend import BACKENDS, BackendUnavailable, build
from ..distributed import DistributedError, detect_launch
from ..finetune import FinetuneError
from ..flags import Flag
from ..formats import from_pretrained
from ..presets import load_spec
from ..resize import resize_encoder
from ..specs import RealizationError
from ..training import TrainingError

__all__ = ["load_spec", "load_encoder", "USER_ERRORS", "one_line", "RUN_FLAGS", "run_launched"]


# What a command reports as one line and exit status 2 instead of a traceback: errors
# that describe the input, the settings or the machine (a bad spec, weights, checkpoint,
# data, flag value, a full disk). Anything else is a defect and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # SpecError, WeightsError, FormatError, CheckpointError, CorruptSampleError
    OSError,  # missing files, permissions, a full disk
    TrainingError,
    FinetuneError,
    DistributedError,
    BackendUnavailable,
    RealizationError,
)


# Where a training run's flag differs from its config field, the same in ``pretrain``,
# ``finetune`` and ``lit`` (names and meanings users' scripts depend on); each command adds
# its own. Every other field is a flag of its own name, type and default.
RUN_FLAGS = {
    "backend": Flag(choices=BACKENDS),
    "clip_norm": Flag(to_field=lambda v: v if v is not None and v > 0 else None),
    "num_workers": Flag("--workers"),
    "hflip": Flag("--no-hflip", invert=True, help="no horizontal-flip augmentation"),
    "crop_scale": Flag(
        "--crop-scale-min",
        type=float,
        to_field=lambda v: (v, 1.0),
        shown=0.4,
        help="RandomResizedCrop minimum area fraction",
    ),
    "progress": Flag("--quiet", invert=True, help="no progress bar"),
}


def run_launched(
    command: str, train: Callable[[], dict[str, Any]], own: tuple[type[BaseException], ...]
) -> int:
    """Run ``train()`` and print its result as JSON (rank 0 of a launched run, or the only
    process); returns the exit status. The command's ``own`` errors go to
    :func:`aimv2.cli.main` (one line, status 2); under a launcher any other error prints
    its traceback and one line naming the rank (status 1), so the launcher's summary shows
    which rank failed.

    Example:
        >>> run_launched("pretrain", lambda: {"step": 2}, ())
        {"step": 2}
        0
    """
    launch = detect_launch()
    try:
        result = train()
    except own:
        raise
    except Exception as err:
        if launch is None:
            raise
        traceback.print_exc()
        print(f"aimv2 {command}: [rank {launch.rank}] {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if launch is None or launch.rank == 0:
        print(json.dumps(result))
    return 0


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
