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
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from ..backend import BACKENDS
from ..data import open_source
from ..distributed import detect_launch
from ..plot import plot_metrics
from ..text import Tokenizer
from ..training import PretrainConfig, TrainingError, pretrain
from .common import load_spec

__all__ = ["add_parsers"]


def _cmd_pretrain(args: argparse.Namespace) -> int:
    spec = None
    if args.spec:
        spec = load_spec(args.spec)
    cfg = PretrainConfig(
        out=args.out,
        preset=args.preset,
        spec=spec,
        data=args.data,
        backend=args.backend,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        decay_mode=args.decay_mode,
        clip_norm=args.clip_norm if args.clip_norm > 0 else None,
        accumulate=args.accumulate,
        log_every=args.log_every,
        save_every=args.save_every,
        keep=args.keep,
        init=args.init,
        resume=args.resume,
        tokenizer=args.tokenizer,
        num_workers=args.workers,
        compile=args.compile,
        autocast=args.autocast,
        device=args.device,
        hflip=not args.no_hflip,
        crop_scale=(args.crop_scale_min, 1.0),
        progress=not args.quiet,
        stop_after=args.stop_after,
        shard=args.shard,
        dist_timeout=args.dist_timeout,
        image_column=args.image_column,
        caption_columns=tuple(args.caption_column) if args.caption_column else None,
        caption_sampling=args.caption_sampling,
        reduced_decode=not args.full_decode,
    )
    launch = detect_launch()
    try:
        result = pretrain(cfg)
    except TrainingError as err:
        print(f"aimv2 pretrain: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if launch is None:
            raise
        # One rank of a launched run: its traceback, then one line that names it.
        traceback.print_exc()
        print(f"aimv2 pretrain: [rank {launch.rank}] {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if launch is None or launch.rank == 0:
        print(json.dumps(result))
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    try:
        source = open_source(
            args.data, split="all" if args.data.startswith("builtin:") else "train"
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"aimv2 tokenizer train: --data {args.data!r}: {err}", file=sys.stderr)
        return 2
    captions = (s.caption for s in itertools.islice(source, args.max_captions))
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
    p.add_argument("--preset", default="aimv2-small-patch4-16")
    p.add_argument("--spec", help="spec JSON file or inline JSON (overrides --preset)")
    p.add_argument(
        "--data",
        default="builtin:digits",
        help="builtin:digits, builtin:shapes, a caption folder, a .jsonl, .tar shards, "
        ".parquet files or an Arrow / Hugging Face save_to_disk folder",
    )
    p.add_argument("--image-column", help="Parquet/Arrow: the image column (default: image, jpg…)")
    p.add_argument(
        "--caption-column",
        action="append",
        help="Parquet/Arrow: a caption column (repeatable: alt-text, synthetic…; default: "
        "caption, text…)",
    )
    p.add_argument(
        "--caption-sampling",
        choices=["first", "random", "all"],
        default="first",
        help="several captions per image: the first, a seeded random one per step, or "
        "all (each caption a sample)",
    )
    p.add_argument(
        "--full-decode",
        action="store_true",
        help="decode JPEGs in full (default: at the reduced size the crop needs)",
    )
    p.add_argument("--backend", default="torch", choices=BACKENDS)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="global batch per update; under torchrun/mlx.launch each of K ranks loads 1/K",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl)")
    p.add_argument("--init", help="start from these weights (checkpoint or .safetensors)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--lr", type=float, help="peak lr (default: the paper's for the size)")
    p.add_argument("--min-lr", type=float)
    p.add_argument("--warmup", type=int, help="warmup updates (default steps/10)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--decay-mode", choices=["decoupled", "torch"], default="decoupled")
    p.add_argument("--clip-norm", type=float, default=1.0, help="0 disables clipping")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per update")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    p.add_argument("--tokenizer", help="SentencePiece model (built-in data has its own)")
    p.add_argument("--workers", type=int, default=2, help="data-loader worker processes")
    p.add_argument("--compile", action="store_true", help="torch.compile / mx.compile")
    p.add_argument("--autocast", choices=["bf16"], help="bf16 autocast (torch)")
    p.add_argument("--device", help="torch device (default: cuda if available)")
    p.add_argument("--no-hflip", action="store_true", help="no horizontal-flip augmentation")
    p.add_argument(
        "--crop-scale-min", type=float, default=0.4, help="RandomResizedCrop minimum area fraction"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--stop-after",
        type=int,
        help="stop (and checkpoint) after this many steps; the schedule still "
        "plans for --steps; continue with --resume",
    )
    p.add_argument(
        "--shard",
        choices=["none", "full"],
        default="none",
        help="under torchrun: none = DDP (replicated model), full = FSDP2 fully_shard "
        "(parameters, gradients and optimizer state sharded over ranks)",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        help="seconds a collective may wait for the other ranks before the run stops",
    )
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("tokenizer", help="SentencePiece tokenizers")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a tokenizer from a data source's captions")
    t.add_argument("--data", required=True)
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    t.add_argument("--max-captions", type=int, default=1_000_000)
    t.set_defaults(func=_cmd_tokenizer_train)

    p = sub.add_parser("plot", help="draw a run's loss curves to a PNG")
    p.add_argument("dir", help="run directory (or metrics.jsonl)")
    p.add_argument("--out", help="PNG path (default DIR/loss.png)")
    p.set_defaults(func=_cmd_plot)
