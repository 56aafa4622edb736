"""The ``aimv2`` command: one sub-command per task, each defined beside its kind of work.

- :mod:`aimv2.cli.tools`: ``presets``, ``parity``.
- :mod:`aimv2.cli.train`: ``pretrain``, ``tokenizer train``, ``plot``.
- :mod:`aimv2.cli.evaluate`: ``quickstart``, ``probe``, ``extract``.
- :mod:`aimv2.cli.finetune`: ``finetune``.
- :mod:`aimv2.cli.lit`: ``lit``, ``zeroshot``, ``retrieval``.
- ``convert`` (:mod:`aimv2.formats.command`) and ``bench`` (:mod:`aimv2.bench.command`).

Example:
    >>> build_parser().parse_args(["convert", "in/", "out/", "--to", "mlx"]).command
    'convert'
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Any

from .. import blas
from ..bench import add_bench_parser
from ..formats import add_convert_parser
from . import evaluate, finetune, lit, tools, train
from .common import USER_ERRORS, load_encoder, load_spec, one_line

__all__ = ["main", "build_parser", "mlx_only", "load_spec", "load_encoder", "one_line"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``aimv2`` command.

    Example:
        >>> build_parser().parse_args(["parity", "aimv2-test-tiny"]).spec
        'aimv2-test-tiny'
    """
    parser = argparse.ArgumentParser(
        prog="aimv2", description="AIMv2 vision encoders on PyTorch or MLX."
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (repeatable): registers the components it defines, so "
        "specs and checkpoints that use them load",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    tools.add_parsers(sub)
    train.add_parsers(sub)
    evaluate.add_parsers(sub)
    finetune.add_parsers(sub)
    lit.add_parsers(sub)
    add_convert_parser(sub)
    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aimv2`` command; returns the exit status.

    Example:
        >>> main(["presets"]) == 0  # doctest: +ELLIPSIS
        aimv2-...
        True
        >>> main(["--import", "no_such_module", "presets"])
        Traceback (most recent call last):
        ...
        SystemExit: aimv2: --import no_such_module: No module named 'no_such_module'
    """
    args = build_parser().parse_args(argv)
    for name in args.imports:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise SystemExit(f"aimv2: --import {name}: {err}") from None
    if argv is None and mlx_only(args):
        # the command line of an MLX-only run: re-execute once on an optimized BLAS
        blas.ensure_fast_blas("mlx")
    name = " ".join(
        [args.command] + ([args.tokenizer_command] if args.command == "tokenizer" else [])
    )
    try:
        with warnings.catch_warnings():  # restores showwarning after the command
            warnings.showwarning = _warning_line(name, warnings.showwarning)
            status = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
        return status
    except BrokenPipeError:  # `aimv2 presets | head -1`: the reader is done; so are we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE
    except KeyboardInterrupt:
        if os.environ.get("AIMV2_DEBUG"):
            raise
        print(f"aimv2 {name}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get("AIMV2_DEBUG"):
            raise
        print(f"aimv2 {name}: {one_line(err)}", file=sys.stderr)
        return 2


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _warning_line(name: str, fallback: Any) -> Any:
    """A ``warnings.showwarning`` that prints the library's own warnings as one line,
    ``aimv2 CMD: warning: …`` (others as Python shows them).

    Example:
        >>> show = _warning_line("probe", None)
        >>> show(UserWarning("left out: x"), UserWarning, __file__, 1, file=sys.stdout)
        aimv2 probe: warning: left out: x
    """

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if os.path.abspath(filename).startswith(_PACKAGE + os.sep) or fallback is None:
            print(f"aimv2 {name}: warning: {one_line(message)}", file=file or sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def mlx_only(args: argparse.Namespace) -> bool:
    """Whether a parsed ``aimv2`` command runs MLX and never torch in this process.

    Such a process may get an optimized BLAS preloaded (:mod:`aimv2.blas`); a process
    that runs torch must not (the preload slows torch). ``bench`` arranges its own
    processes and is never re-executed.

    Example:
        >>> mlx_only(build_parser().parse_args(["probe", "--backend", "mlx", "--out", "o"]))
        True
        >>> mlx_only(build_parser().parse_args(["parity", "aimv2-test-tiny"]))
        False
    """
    if args.command == "parity":
        return args.backend is not None and set(args.backend) == {"mlx"}
    if args.command in (
        "pretrain",
        "finetune",
        "quickstart",
        "probe",
        "extract",
        "lit",
        "zeroshot",
        "retrieval",
    ):
        return args.backend == "mlx"
    return False


if __name__ == "__main__":
    sys.exit(main())
