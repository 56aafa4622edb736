"""``aimv2 probe``, ``aimv2 extract`` and ``aimv2 quickstart``: using and judging encoders.

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> add_parsers(sub)
    >>> sorted(sub.choices)
    ['extract', 'probe', 'quickstart']
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic
from ..backend import BACKENDS, build
from ..data import preprocess
from ..flags import Flag, add_config_flags, config_from_args
from ..probe import POOLS, ProbeConfig, check_extract_options, extract_features, probe_encoder
from ..progress import Progress
from ..quickstart import FINETUNE_EPOCHS, format_report, run
from .common import load_encoder, load_spec

__all__ = ["add_parsers"]


# Where a probe flag differs from its ProbeConfig field; every other field is a flag of its
# own name, type and default.
PROBE_FLAGS = {
    "normalize": Flag("--no-normalize", invert=True, help="skip feature standardization"),
}


def _cmd_probe(args: argparse.Namespace) -> int:
    if bool(args.checkpoint) == bool(args.preset):
        print(
            "aimv2 probe: give exactly one of --checkpoint PATH or --preset NAME", file=sys.stderr
        )
        return 2
    if args.checkpoint:
        encoder = load_encoder(args.checkpoint, args.backend)
    else:
        spec = load_spec(args.preset)
        encoder = build(getattr(spec, "encoder", spec), args.backend, seed=args.seed)
    cfg = config_from_args(ProbeConfig, args, PROBE_FLAGS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = probe_encoder(
            encoder,
            args.data,
            args.backend,
            cfg,
            cache_dir=out / "features",
            progress=not args.quiet,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"aimv2 probe: {err}", file=sys.stderr)
        return 2
    result = {k: v for k, v in result.items()}
    atomic.write_json(out / "probe.json", result)
    a, lin = result["attentive"], result["linear"]
    print(
        f"probe {args.data}: attentive {a['heldout']:.4f} (train {a['train']:.4f}), "
        f"linear {lin['heldout']:.4f} (train {lin['train']:.4f}) -> {out / 'probe.json'}"
    )
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    if args.blocks is not None and args.last_blocks is not None:
        print("aimv2 extract: give --blocks or --last-blocks, not both", file=sys.stderr)
        return 2
    blocks = args.blocks if args.blocks is not None else args.last_blocks
    size = args.image_size
    if size is not None and len(size) > 2:
        print("aimv2 extract: --image-size takes H or H W", file=sys.stderr)
        return 2
    size = None if size is None else (size[0], size[-1])
    encoder = load_encoder(args.checkpoint, args.backend, size)
    p = Path(args.images)
    if p.is_dir():
        files = sorted(
            str(f)
            for f in p.iterdir()
            if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp")
        )
    else:
        files = sorted(glob.glob(args.images))
    if not files:
        print(f"aimv2 extract: --images {args.images!r} matches no image files", file=sys.stderr)
        return 2
    try:  # a bad selection or pooling fails before any image is read
        check_extract_options(encoder.spec, blocks, args.pool, args.layout)
    except (ValueError, TypeError) as err:
        print(f"aimv2 extract: {err}", file=sys.stderr)
        return 2
    options = {"pool": args.pool, "layout": args.layout, "norm": args.norm}
    chunks = []
    shown = Progress(len(files), "extract", unit="images", enabled=not args.quiet)
    for i in range(0, len(files), args.batch_size):
        images = preprocess(files[i : i + args.batch_size], encoder.spec)
        chunks.append(extract_features(encoder, images, args.batch_size, blocks, **options))
        shown.moveto(min(i + args.batch_size, len(files)))  # closes itself at the end
    out = np.concatenate(chunks)
    target = args.out if args.out.endswith(".npy") else args.out + ".npy"  # as np.save names it
    with atomic.atomic_file(target) as tmp, open(tmp, "wb") as fh:
        np.save(fh, out)
    atomic.write_text(Path(args.out).with_suffix(".txt"), "\n".join(files) + "\n")
    print(f"wrote {args.out} {tuple(out.shape)} (+ {Path(args.out).with_suffix('.txt')})")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    report = run(
        args.out,
        backend=args.backend,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        probe_epochs=args.probe_epochs,
        lit_steps=args.lit_steps,
        progress=not args.quiet,
        finetune_epochs=args.finetune_epochs,
    )
    print(format_report(report))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def add_parsers(sub: Any) -> None:
    """Add the ``quickstart``, ``probe`` and ``extract`` commands to ``sub``.

    Example:
        >>> sub = argparse.ArgumentParser().add_subparsers()
        >>> add_parsers(sub); sub.choices["probe"].parse_args(["--out", "o"]).epochs
        100
    """
    p = sub.add_parser("quickstart", help="the main job: pre-train on digits, probe, report")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--backend", default="torch", choices=BACKENDS)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-epochs", type=int, default=100)
    p.add_argument(
        "--finetune-epochs",
        type=float,
        default=FINETUNE_EPOCHS,
        help=f"epochs of each fine-tuning run (0: none; default {FINETUNE_EPOCHS:g})",
    )
    p.add_argument("--lit-steps", type=int, default=300, help="LiT steps per text tower")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("probe", help="attentive + linear probe of a frozen encoder")
    p.add_argument("--checkpoint", help="checkpoint dir, run dir or weights (any format)")
    p.add_argument("--preset", help="random-init encoder of this preset/spec instead")
    p.add_argument(
        "--data",
        default="builtin:digits",
        help="labelled source: builtin:digits, builtin:shapes, imagefolder:DIR, .jsonl",
    )
    p.add_argument("--backend", default="torch", choices=BACKENDS)
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_config_flags(p, ProbeConfig, PROBE_FLAGS)
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("extract", help="features of a folder or glob of images to .npy")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="a folder or a glob pattern")
    p.add_argument("--out", required=True, help="FILE.npy")
    p.add_argument(
        "--blocks",
        type=int,
        nargs="+",
        metavar="I",
        help="trunk blocks to take (e.g. -1 -6 -12; negative from the end), saved in block "
        "order as (B, K, ...); default: the encoder output",
    )
    p.add_argument("--last-blocks", type=int, metavar="N", help="the last N blocks")
    p.add_argument(
        "--pool",
        choices=POOLS,
        default="none",
        help="none: tokens; mean: over tokens; attn: the encoder's head; mean-last-n: the "
        "mean of the chosen blocks (AIMv1's layer averaging)",
    )
    p.add_argument("--layout", choices=["nlc", "nchw"], default="nlc", help="token layout")
    p.add_argument("--norm", action="store_true", help="pass block outputs through the final norm")
    p.add_argument(
        "--image-size", type=int, nargs="+", metavar="PX", help="resize the encoder first (H [W])"
    )
    p.add_argument("--backend", default="torch", choices=BACKENDS)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_extract)
