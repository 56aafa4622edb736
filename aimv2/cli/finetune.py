"""``aimv2 finetune``: train a classifier on a pre-trained (or random-init) encoder.

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> add_parsers(sub)
    >>> sub.choices["finetune"].parse_args(["--out", "o", "--lora-rank", "4"]).lora_rank
    4
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from typing import Any

from ..backend import BACKENDS
from ..distributed import detect_launch
from ..finetune import FinetuneConfig, FinetuneError, finetune
from ..flags import Flag, add_config_flags, config_from_args

__all__ = ["add_parsers", "FINETUNE_FLAGS"]

# Where a fine-tuning flag differs from its FinetuneConfig field (the same spellings as
# ``aimv2 pretrain``); every other field is a flag of its own name, type and default.
FINETUNE_FLAGS = {
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


def _cmd_finetune(args: argparse.Namespace) -> int:
    launch = detect_launch()
    try:
        cfg = config_from_args(FinetuneConfig, args, FINETUNE_FLAGS)
        result = finetune(cfg)
    except FinetuneError as err:
        print(f"aimv2 finetune: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if launch is None:
            raise
        traceback.print_exc()
        print(f"aimv2 finetune: [rank {launch.rank}] {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if launch is None or launch.rank == 0:
        print(json.dumps(result))
    return 0


def add_parsers(sub: Any) -> None:
    """Add the ``finetune`` command to ``sub``.

    Example:
        >>> sub = argparse.ArgumentParser().add_subparsers()
        >>> add_parsers(sub); sub.choices["finetune"].parse_args(["--out", "o"]).layer_decay
        0.75
    """
    p = sub.add_parser(
        "finetune",
        help="fine-tune an encoder as a classifier (layer-wise lr decay, freezing, LoRA)",
    )
    add_config_flags(p, FinetuneConfig, FINETUNE_FLAGS)
    p.set_defaults(func=_cmd_finetune)
