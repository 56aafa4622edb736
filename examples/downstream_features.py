"""Features from chosen blocks into a downstream head: a frozen encoder's block outputs
(``forward_intermediates``) as feature maps, and a small classifier trained on them —
the last block alone, and the mean of the last blocks (AIMv1's layer averaging).

Run: python examples/downstream_features.py [--checkpoint runs/quickstart/pretrain]
     [--backend torch] [--blocks -1 -2 -3] [--epochs 60]
"""

from __future__ import annotations

import argparse

import numpy as np

import aimv2
from aimv2 import checkpoint
from aimv2.data import Loader, open_source
from aimv2.probe import ProbeConfig, extract_features, fit_and_score, standardize


def images_and_labels(spec: aimv2.EncoderSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    source = open_source("builtin:digits", split=split)
    batches = list(Loader(source, spec, None, 512, seed=0, train=False, num_workers=0))
    images = np.concatenate([b["images"] for b in batches])
    return images, np.concatenate([b["labels"] for b in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a run or checkpoint directory (default: random)")
    parser.add_argument("--preset", default="aimv2-small-patch4-16")
    parser.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    parser.add_argument("--blocks", type=int, nargs="+", default=[-1, -2, -3])
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()

    if args.checkpoint:
        found = checkpoint.latest(args.checkpoint) or args.checkpoint
        spec, weights = checkpoint.encoder_of(checkpoint.load(found, optimizer=False))
    else:
        spec = aimv2.presets.get(args.preset).encoder
        weights = aimv2.init_weights(spec, seed=0)
    encoder = aimv2.build(spec, args.backend, weights=weights)
    be = aimv2.load_backend(args.backend)

    # 1. The feature API: final features and the chosen blocks, as maps for a dense head.
    tx, ty = images_and_labels(spec, "train")
    vx, vy = images_and_labels(spec, "heldout")
    with be.inference():
        final, maps = encoder.forward_intermediates(be.from_numpy(tx[:4]), indices=args.blocks,
                                                    output="NCHW")  # fmt: skip
    print(f"final {tuple(final.shape)}; blocks {sorted(b % spec.depth for b in args.blocks)} "
          f"-> {[tuple(m.shape) for m in maps]} (B, D, rows, cols)")  # fmt: skip

    # 2. A downstream head on frozen features: last block vs mean of the chosen blocks.
    cfg = ProbeConfig(epochs=args.epochs, seed=0)
    for label, options in (
        ("last block (final norm)", {}),
        (f"mean of blocks {args.blocks}", {"blocks": args.blocks, "pool": "mean-last-n"}),
    ):
        feats = [extract_features(encoder, a, 256, **options) for a in (tx, vx)]
        train_f, test_f = standardize(*feats)
        res = fit_and_score(train_f, ty, test_f, vy, "attentive", args.backend, cfg, 10)
        print(f"attentive head on {label}: held-out {100 * res['heldout']:.1f}%")


if __name__ == "__main__":
    main()
