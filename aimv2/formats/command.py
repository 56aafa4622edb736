"""The ``aimv2 convert`` command: any checkpoint format to any other.

Example:
    >>> parser = argparse.ArgumentParser()
    >>> _ = add_convert_parser(parser.add_subparsers())
    >>> parser.parse_args(["convert", "a", "b", "--to", "timm"]).func is cmd_convert
    True
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import presets
from .. import specs as S
from ..backend import BACKENDS
from .detect import detect
from .export import convert
from .lit import describe
from .names import FORMATS, FormatError

__all__ = ["add_convert_parser", "cmd_convert"]


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``aimv2 convert SRC DST --to FORMAT`` to an ``add_subparsers()`` object.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> _ = add_convert_parser(parser.add_subparsers())
        >>> parser.parse_args(["convert", "a", "b", "--to", "mlx"]).to
        'mlx'
    """
    p = subparsers.add_parser(
        "convert",
        help="convert a checkpoint between formats (official, mlx, transformers, timm, aimv2)",
        description="Convert an AIMv2 checkpoint (file or folder, format detected from its "
        "tensor names) to another format.",
    )
    p.add_argument("src", help="checkpoint file or folder")
    p.add_argument("dst", help="output folder (or .safetensors file for official/mlx/timm)")
    p.add_argument("--to", required=True, choices=FORMATS, help="output format")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="build the model with this backend first (default: stream tensors with NumPy)",
    )
    p.add_argument("--preset", help="spec to use: preset name, spec JSON file or inline JSON")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="stored dtype")
    p.add_argument("--shard-size", help="shard transformers/official weights, e.g. 5GB")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="convert tensors holding NaN or inf (refused by default; without --backend)",
    )
    p.set_defaults(func=cmd_convert)
    return p


def cmd_convert(args: argparse.Namespace) -> int:
    """Run ``aimv2 convert`` from parsed arguments; prints a summary, returns the exit status.

    Example:
        >>> cmd_convert(argparse.Namespace(src="/nonexistent", dst="/tmp/x", to="mlx",
        ...             backend=None, preset=None, dtype=None, shard_size=None, overwrite=False,
        ...             quiet=True))
        2
    """
    preset = None if not args.preset else presets.load_spec(args.preset)
    try:
        out = convert(
            args.src,
            args.dst,
            args.to,
            preset=preset,
            backend=args.backend,
            dtype=args.dtype,
            max_shard_size=args.shard_size,
            overwrite=args.overwrite,
            progress=not args.quiet,
            allow_nonfinite=getattr(args, "allow_nonfinite", False),
        )
        det = detect(out)
    except (FormatError, FileNotFoundError, FileExistsError, ValueError, TypeError) as err:
        print(f"aimv2 convert: {err}", file=sys.stderr)
        return 2
    spec = det.spec
    if isinstance(spec, S.LiTSpec):
        print(f"{args.src} -> {out} ({det.format}): {describe(spec)}")
        return 0
    size = "native" if spec.native else "x".join(map(str, spec.image_size))
    print(
        f"{args.src} -> {out} ({det.format}): width={spec.width} depth={spec.depth} "
        f"heads={spec.trunk.block.attn.heads} patch={spec.patch_size} image={size} "
        f"head={'yes' if spec.head else 'no'}"
    )
    return 0
