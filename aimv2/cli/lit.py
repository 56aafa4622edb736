"""``aimv2 lit``, ``aimv2 zeroshot`` and ``aimv2 retrieval``: training and judging a text
tower in the image tower's space.

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> add_parsers(sub)
    >>> sorted(sub.choices)
    ['lit', 'retrieval', 'zeroshot']
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import atomic
from ..backend import BACKENDS
from ..flags import Flag, add_config_flags, config_from_args
from ..lit import (
    DEFAULT_TEMPLATES,
    LitConfig,
    LitError,
    evaluate_retrieval,
    evaluate_zero_shot,
    lit_train,
    load_lit,
)
from .common import RUN_FLAGS, load_spec, run_launched

__all__ = ["add_parsers", "LIT_FLAGS", "parse_classes"]

# Where a LiT flag differs from its LitConfig field; every other field is a flag of its own
# name, type and default.
LIT_FLAGS = {
    **RUN_FLAGS,
    "spec": Flag(to_field=lambda text: None if text is None else load_spec(text)),
    "cache_features": Flag(
        "--no-cache-features",
        invert=True,
        help="run the locked trunk on augmented images every step instead",
    ),
    "crop_scale": Flag(
        "--crop-scale-min",
        type=float,
        to_field=lambda v: (v, 1.0),
        shown=0.4,
        help="RandomResizedCrop minimum area fraction (uncached images)",
    ),
}


def parse_classes(text: str) -> list[str]:
    """Class names from ``--classes``: a file with one name per line, or names separated by
    commas.

    Example:
        >>> parse_classes("cat, dog,bird")
        ['cat', 'dog', 'bird']
    """
    p = Path(text)
    if p.is_file():
        names = [line.strip() for line in p.read_text().splitlines()]
        return [n for n in names if n]
    return [n.strip() for n in text.split(",")]


def _write(out: str | None, default_name: str, result: dict[str, Any]) -> Path | None:
    if out is None:
        return None
    path = Path(out)
    if path.suffix != ".json":
        path.mkdir(parents=True, exist_ok=True)
        path = path / default_name
    atomic.write_json(path, result)
    return path


def _cmd_lit(args: argparse.Namespace) -> int:
    cfg = config_from_args(LitConfig, args, LIT_FLAGS)
    return run_launched("lit", lambda: lit_train(cfg), (LitError,))


def _cmd_zeroshot(args: argparse.Namespace) -> int:
    try:
        model = load_lit(args.checkpoint, args.backend, tokenizer=args.tokenizer)
        result = evaluate_zero_shot(
            model,
            args.data,
            parse_classes(args.classes),
            args.template or list(DEFAULT_TEMPLATES),
            split=args.split,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
    except (LitError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"aimv2 zeroshot: {err}", file=sys.stderr)
        return 2
    result["checkpoint"] = str(args.checkpoint)
    path = _write(args.out, "zeroshot.json", result)
    top5 = f", top-5 {result['top5']:.4f}" if "top5" in result else ""
    where = f" -> {path}" if path else ""
    print(
        f"zero-shot {args.data} [{result['split']}, {result['images']} images, "
        f"{len(result['classes'])} classes]: top-1 {result['top1']:.4f}{top5}{where}"
    )
    return 0


def _cmd_retrieval(args: argparse.Namespace) -> int:
    try:
        model = load_lit(args.checkpoint, args.backend, tokenizer=args.tokenizer)
        result = evaluate_retrieval(
            model, args.data, split=args.split, batch_size=args.batch_size, progress=not args.quiet
        )
    except (LitError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"aimv2 retrieval: {err}", file=sys.stderr)
        return 2
    result["checkpoint"] = str(args.checkpoint)
    path = _write(args.out, "retrieval.json", result)

    def fmt(d: dict[str, float]) -> str:
        return " ".join(f"{k} {v:.4f}" for k, v in d.items())

    where = f" -> {path}" if path else ""
    print(
        f"retrieval {args.data} [{result['split']}, {result['pairs']} pairs]: image->text "
        f"{fmt(result['image_to_text'])}; text->image {fmt(result['text_to_image'])}{where}"
    )
    return 0


def _eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a LiT run or checkpoint, or a released LiT file or folder (any layout)",
    )
    p.add_argument("--data", default="builtin:digits", help="a source (see aimv2 pretrain)")
    p.add_argument(
        "--split", default="heldout", help="heldout (default; all when absent), train, all"
    )
    p.add_argument("--backend", default="torch", choices=BACKENDS)
    p.add_argument(
        "--tokenizer", help="tokenizer.json or .model (default: the run's or the folder's)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward")
    p.add_argument("--out", help="a .json file, or a folder to write the JSON into")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def add_parsers(sub: Any) -> None:
    """Add the ``lit``, ``zeroshot`` and ``retrieval`` commands to ``sub``.

    Example:
        >>> sub = argparse.ArgumentParser().add_subparsers()
        >>> add_parsers(sub); sub.choices["lit"].parse_args(["--out", "o"]).image_tower
        'locked'
    """
    p = sub.add_parser("lit", help="train a text tower against an image tower (LiT / CLIP)")
    add_config_flags(p, LitConfig, LIT_FLAGS)
    p.set_defaults(func=_cmd_lit)

    p = sub.add_parser("zeroshot", help="zero-shot classification accuracy of a LiT model")
    _eval_flags(p)
    p.add_argument(
        "--classes",
        required=True,
        help="class names, comma-separated or a file (one per line); label i is name i",
    )
    p.add_argument(
        "--template",
        action="append",
        help=f"prompt with one {{}} for the class name (repeatable; default {DEFAULT_TEMPLATES[0]!r})",
    )
    p.set_defaults(func=_cmd_zeroshot)

    p = sub.add_parser("retrieval", help="image<->text recall@1/5/10 of a LiT model")
    _eval_flags(p)
    p.set_defaults(func=_cmd_retrieval)
