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
from typing import Any

from ..finetune import FinetuneConfig, FinetuneError, finetune
from ..flags import add_config_flags, config_from_args
from .common import RUN_FLAGS, run_launched

__all__ = ["add_parsers", "FINETUNE_FLAGS"]

# Where a fine-tuning flag differs from its FinetuneConfig field (the same spellings as
# ``aimv2 pretrain``); every other field is a flag of its own name, type and default.
FINETUNE_FLAGS = dict(RUN_FLAGS)


def _cmd_finetune(args: argparse.Namespace) -> int:
    cfg = config_from_args(FinetuneConfig, args, FINETUNE_FLAGS)
    return run_launched("finetune", lambda: finetune(cfg), (FinetuneError,))


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
