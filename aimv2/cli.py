"""The ``aimv2`` command.

Example:
    $ aimv2 parity aimv2-test-tiny
    $ aimv2 presets
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import presets, specs

__all__ = ["main", "load_spec"]


def load_spec(text: str) -> specs.Spec:
    """A spec from a preset name, a JSON file path, or inline JSON.

    Example:
        >>> load_spec("aimv2-test-tiny").encoder.width
        32
    """
    if text in presets.names():
        return presets.get(text)
    path = Path(text)
    if path.suffix == ".json" or path.exists():
        if not path.exists():
            raise SystemExit(f"aimv2: spec file {text!r} does not exist")
        data = json.loads(path.read_text())
        return specs.from_dict(data.get("spec", data))
    if text.lstrip().startswith("{"):
        return specs.from_json(text)
    try:
        return presets.get(text)
    except KeyError as err:
        raise SystemExit(f"aimv2: {err.args[0]}") from None


def _cmd_presets(args: argparse.Namespace) -> int:
    for name in presets.names():
        enc = presets.get(name).encoder
        size = "native" if enc.native else "x".join(map(str, enc.image_size))
        print(f"{name:40s} width={enc.width:<5d} depth={enc.depth:<3d} image={size}")
    return 0


def _cmd_parity(args: argparse.Namespace) -> int:
    from .backend import available_backends
    from .testing import compare_backends, random_batch

    spec = load_spec(args.spec)
    backends = args.backend or available_backends()
    if not backends:
        print("aimv2 parity: no backend installed (pip install 'aimv2[torch]' or 'aimv2[mlx]')")
        return 2
    batch = random_batch(spec, args.seed, batch=args.batch)
    report = compare_backends(
        spec, batch=batch, backends=backends, seed=args.seed, check_grads=not args.no_grads
    )
    failed = 0
    for be, checks in report.items():
        print(f"== {be} (forward vs float64 reference; grads vs {backends[0]})")
        rows = sorted(checks.items(), key=lambda kv: -kv[1].error / max(kv[1].bound, 1e-30))
        shown = rows if args.all else rows[: args.top]
        for name, c in shown:
            flag = "ok  " if c.ok else "FAIL"
            print(f"  {flag} {name:55s} max|err|={c.error:.3e}  bound={c.bound:.3e}")
        if len(rows) > len(shown):
            print(f"  ... {len(rows) - len(shown)} more within tolerance (--all lists them)")
        failed += sum(not c.ok for _, c in rows)
    print("parity: " + ("FAILED" if failed else "ok") + f" ({failed} tensors past tolerance)")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``aimv2`` command.

    Example:
        >>> build_parser().parse_args(["parity", "aimv2-test-tiny"]).spec
        'aimv2-test-tiny'
    """
    parser = argparse.ArgumentParser(prog="aimv2", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the named specs")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser(
        "parity",
        help="forward, loss and gradient parity of every installed backend vs the reference",
    )
    p.add_argument("spec", help="preset name, spec JSON file, or inline JSON")
    p.add_argument("--backend", action="append", choices=["torch", "mlx"], help="repeatable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--no-grads", action="store_true", help="skip the gradient comparison")
    p.add_argument("--top", type=int, default=12, help="rows shown per backend")
    p.add_argument("--all", action="store_true", help="show every tensor")
    p.set_defaults(func=_cmd_parity)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aimv2`` command; returns the exit status.

    Example:
        >>> main(["presets"]) == 0  # doctest: +ELLIPSIS
        aimv2-...
        True
    """
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
