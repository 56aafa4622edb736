"""``aimv2 presets`` and ``aimv2 parity``: what is defined, and whether the backends agree.

Example:
    >>> import argparse
    >>> sub = argparse.ArgumentParser().add_subparsers()
    >>> add_parsers(sub)
    >>> sorted(sub.choices)
    ['parity', 'presets']
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import presets
from ..backend import BACKENDS, available_backends
from ..testing import compare_backends, random_batch
from .common import load_spec

__all__ = ["add_parsers"]


def _cmd_presets(args: argparse.Namespace) -> int:
    for name in presets.names():
        enc = presets.get(name).encoder
        size = "native" if enc.native else "x".join(map(str, enc.image_size))
        print(f"{name:40s} width={enc.width:<5d} depth={enc.depth:<3d} image={size}")
    return 0


def _cmd_parity(args: argparse.Namespace) -> int:
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


def add_parsers(sub: Any) -> None:
    """Add the ``presets`` and ``parity`` commands to ``sub``.

    Example:
        >>> sub = argparse.ArgumentParser().add_subparsers()
        >>> add_parsers(sub); "parity" in sub.choices
        True
    """
    p = sub.add_parser("presets", help="list the named specs")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser(
        "parity",
        help="forward, loss and gradient parity of every installed backend vs the reference",
    )
    p.add_argument("spec", help="preset name, spec JSON file, or inline JSON")
    p.add_argument("--backend", action="append", choices=BACKENDS, help="repeatable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--no-grads", action="store_true", help="skip the gradient comparison")
    p.add_argument("--top", type=int, default=12, help="rows shown per backend")
    p.add_argument("--all", action="store_true", help="show every tensor")
    p.set_defaults(func=_cmd_parity)
