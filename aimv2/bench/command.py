"""The ``aimv2 bench`` command (also ``python -m aimv2.bench``).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="aimv2")
    >>> _ = add_bench_parser(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["bench", "--mode", "all"]).modes
    ['all']
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from typing import Any

from ..backend import BACKENDS, BackendUnavailable
from ..flags import Flag, add_config_flags
from .flops import MODES
from .plan import Config
from .runner import DEFAULT_SPEC, run
from .worker import worker_main

__all__ = ["add_bench_parser", "main", "BENCH_FLAGS"]

# Where a bench flag differs from its Config field (names users' scripts depend on);
# every other field is a flag of its own name, type and default.
BENCH_FLAGS = {
    "backend": Flag(choices=BACKENDS),
    "modes": Flag("--mode", repeat=True, choices=(*MODES, "all", "data")),
    "workers": Flag(repeat=True),
    "tune_alloc": Flag(
        "--no-tune-alloc", invert=True, help="leave glibc's allocator as it is in torch processes"
    ),
    "image_hw": Flag(skip=True),  # from --image-size and the spec
    "settle": Flag(skip=True),
}


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
    add_config_flags(p, Config, BENCH_FLAGS)
    p.add_argument("--image-size", type=int, help="for native-resolution encoders")
    p.add_argument("--decoder-depth", type=int, help="replace the spec's decoder depth")
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_cmd_bench)
    return p


def _cmd_bench(args: argparse.Namespace) -> int:
    modes = [
        m for given in args.modes or ["forward"] for m in (MODES if given == "all" else [given])
    ]
    command = getattr(args, "command_line", None)
    if command is None:
        argv = sys.argv[sys.argv.index("bench") :] if "bench" in sys.argv else ["bench"]
        command = "aimv2 " + shlex.join(argv)

    def say(line: str) -> None:
        if not args.quiet:
            print(f"[bench] {line}", file=sys.stderr, flush=True)

    settings = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Config)
        if hasattr(args, f.name) and not BENCH_FLAGS.get(f.name, Flag()).skip
    }
    settings.update(modes=modes, workers=args.workers or [2])
    try:
        report = run(
            args.spec,
            **settings,
            image_size=args.image_size,
            decoder_depth=args.decoder_depth,
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
