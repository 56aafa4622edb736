"""The ``aimv2 bench`` command (also ``python -m aimv2.bench``).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="aimv2")
    >>> _ = add_bench_parser(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["bench", "--mode", "all"]).mode
    ['all']
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from ..backend import BACKENDS, BackendUnavailable
from .flops import MODES
from .runner import DEFAULT_SPEC, run
from .worker import worker_main

__all__ = ["add_bench_parser", "main"]


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` command to an ``argparse`` sub-parser set (``aimv2 bench``).

    Example:
        >>> parser = argparse.ArgumentParser(prog="aimv2")
        >>> _ = add_bench_parser(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["bench", "--compare"]).compare
        True
    """
    p = subparsers.add_parser(
        "bench",
        help="throughput (img/s, GFLOP/s, share of the matmul rate, memory) and peers",
        description="Time the encoder forward, forward+backward and the whole training "
        "step; with --compare, the other implementations on the same config, interleaved.",
    )
    p.add_argument(
        "spec",
        nargs="?",
        default=DEFAULT_SPEC,
        help=f"preset name, spec JSON file or inline JSON (default {DEFAULT_SPEC})",
    )
    p.add_argument("--backend", default="torch", choices=list(BACKENDS))
    p.add_argument("--device", help="torch: cpu, cuda, cuda:1, ...; mlx: cpu or gpu")
    p.add_argument(
        "--mode",
        action="append",
        choices=[*MODES, "all", "data"],
        help="forward (default), backward, train or all (these three); data: the data "
        "loader alone vs the backend's DataLoader; repeatable",
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--image-size", type=int, help="for native-resolution encoders")
    p.add_argument("--decoder-depth", type=int, help="replace the spec's decoder depth")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per subject first")
    p.add_argument(
        "--compare",
        action="store_true",
        help="time the peers too (torch: transformers, timm; mlx: the torch "
        "backend and MLX on its bundled reference BLAS)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: autocast on torch, bfloat16 weights on MLX",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile / mx.compile")
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing")
    p.add_argument(
        "--data",
        default="builtin:shapes",
        help="what feeds --mode train (a data source or 'synthetic') and --mode data (a "
        "source, or 'photos[?n=500&size=640x480]': generated JPEG photos)",
    )
    p.add_argument("--tokenizer", help="SentencePiece model for a non-builtin --data")
    p.add_argument(
        "--workers",
        type=int,
        action="append",
        help="data-loader worker processes (default 2); repeatable: --mode data times "
        "each count, --mode train uses the last",
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument(
        "--reference-repeats",
        type=int,
        default=1,
        help="rounds of MLX on the reference BLAS under --compare (0: none)",
    )
    p.add_argument(
        "--no-tune-alloc",
        action="store_true",
        help="leave glibc's allocator as it is in torch processes",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_cmd_bench)
    return p


def _cmd_bench(args: argparse.Namespace) -> int:
    modes = args.mode or ["forward"]
    if "all" in modes:
        modes = list(MODES)
    command = getattr(args, "command_line", None)
    if command is None:
        argv = sys.argv[sys.argv.index("bench") :] if "bench" in sys.argv else ["bench"]
        command = "aimv2 " + shlex.join(argv)

    def say(line: str) -> None:
        if not args.quiet:
            print(f"[bench] {line}", file=sys.stderr, flush=True)

    try:
        report = run(
            args.spec,
            args.backend,
            modes=modes,
            batch_size=args.batch_size,
            repeats=args.repeats,
            warmup=args.warmup,
            compare=args.compare,
            device=args.device,
            precision=args.precision,
            compile=args.compile,
            checkpoint=args.checkpoint,
            data=args.data,
            tokenizer=args.tokenizer,
            workers=args.workers or [2],
            image_size=args.image_size,
            decoder_depth=args.decoder_depth,
            threads=args.threads,
            matmul_size=args.matmul_size,
            reference_repeats=args.reference_repeats,
            tune_alloc=not args.no_tune_alloc,
            seed=args.seed,
            command=command,
            progress=say,
        )
    except (ValueError, TypeError, KeyError, BackendUnavailable) as err:
        print(f"aimv2 bench: {err}", file=sys.stderr)
        return 2
    print(report.text(), end="", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return 0 if report.rows else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m aimv2.bench [options]``: the same as ``aimv2 bench [options]``.

    Example:
        >>> main(["aimv2-test-tiny", "--repeats", "1", "--quiet"])  # doctest: +ELLIPSIS
        ### aimv2 bench: aimv2-test-tiny: ...
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return worker_main()
    parser = argparse.ArgumentParser(prog="python -m aimv2.bench")
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *argv])
    args.command_line = "aimv2 " + shlex.join(["bench", *argv])
    return args.func(args)
