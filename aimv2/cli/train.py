"""``aimv2 pretrain``, ``aimv2 tokenizer train`` and ``aimv2 plot``: running pre-training.

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> add_parsers(sub)
    >>> sorted(sub.choices)
    ['plot', 'pretrain', 'tokenizer']
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from ..data import open_source
from ..flags import Flag, add_config_flags, config_from_args
from ..plot import plot_metrics
from ..text import Tokenizer
from ..training import PretrainConfig, TrainingError, pretrain
from .common import RUN_FLAGS, load_spec, run_launched

__all__ = ["add_parsers"]


# Where a pre-training flag differs from its PretrainConfig field (names and meanings users'
# scripts depend on): every other field is a flag of its own name, type and default.
PRETRAIN_FLAGS = {
    **RUN_FLAGS,
    "spec": Flag(to_field=lambda text: None if text is None else load_spec(text)),
    "caption_columns": Flag("--caption-column", repeat=True),
    "reduced_decode": Flag(
        "--full-decode", invert=True, help="decode JPEGs in full (default: at the reduced size)"
    ),
}


def _cmd_pretrain(args: argparse.Namespace) -> int:
    cfg = config_from_args(PretrainConfig, args, PRETRAIN_FLAGS)
    return run_launched("pretrain", lambda: pretrain(cfg), (TrainingError,))


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    try:
        source = open_source(
            args.data, split="all" if args.data.startswith("builtin:") else "train"
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"aimv2 tokenizer train: --data {args.data!r}: {err}", file=sys.stderr)
        return 2
    # every caption of every sample (alt-text and synthetic alike), images not decoded
    captions = itertools.islice(itertools.chain.from_iterable(source.captions()), args.max_captions)
    try:
        tok = Tokenizer.train(captions, args.vocab_size, args.out, model_type=args.model_type)
    except ValueError as err:
        print(f"aimv2 tokenizer train: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({tok.vocab_size} pieces)")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    out = args.out or str(Path(args.dir) / "loss.png")
    try:
        path = plot_metrics(args.dir, out)
    except (FileNotFoundError, ValueError) as err:
        print(f"aimv2 plot: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def add_parsers(sub: Any) -> None:
    """Add the ``pretrain``, ``tokenizer`` and ``plot`` commands to ``sub``.

    Example:
        >>> sub = argparse.ArgumentParser().add_subparsers()
        >>> add_parsers(sub); sub.choices["pretrain"].parse_args(["--out", "o"]).steps
        300
    """
    p = sub.add_parser("pretrain", help="pre-train with the AIMv2 objective")
    add_config_flags(p, PretrainConfig, PRETRAIN_FLAGS)
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("tokenizer", help="SentencePiece tokenizers")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a tokenizer from a data source's captions")
    t.add_argument("--data", required=True)
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    t.add_argument(
        "--max-captions",
        type=int,
        default=1_000_000,
        help="train on at most this many captions (each of a sample's captions counts)",
    )
    t.set_defaults(func=_cmd_tokenizer_train)

    p = sub.add_parser("plot", help="draw a run's loss curves to a PNG")
    p.add_argument("dir", help="run directory (or metrics.jsonl)")
    p.add_argument("--out", help="PNG path (default DIR/loss.png)")
    p.set_defaults(func=_cmd_plot)
