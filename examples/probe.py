"""Probe a frozen encoder the paper's way: attentive probe vs linear probe, on either
backend, for a pre-trained checkpoint or the same architecture at random init.

Run: python examples/probe.py [--checkpoint runs/digits] [--backend torch] [--epochs 100]
"""

from __future__ import annotations

import argparse
import json

import aimv2
from aimv2 import checkpoint
from aimv2.probe import ProbeConfig, probe_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a run or checkpoint directory (default: random init)")
    parser.add_argument("--preset", default="aimv2-small-patch4-16")
    parser.add_argument("--data", default="builtin:digits")
    parser.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.checkpoint:
        found = checkpoint.latest(args.checkpoint) or args.checkpoint
        spec, weights = checkpoint.encoder_of(checkpoint.load(found, optimizer=False))
        encoder = aimv2.build(spec, args.backend, weights=weights)
    else:
        encoder = aimv2.build(aimv2.presets.get(args.preset).encoder, args.backend, seed=args.seed)
    result = probe_encoder(
        encoder, args.data, args.backend, ProbeConfig(epochs=args.epochs, seed=args.seed)
    )
    print(json.dumps({k: result[k] for k in ("attentive", "linear", "num_classes")}, indent=2))


if __name__ == "__main__":
    main()
