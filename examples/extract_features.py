"""Extract features from image files with an encoder's own preprocessing, on torch and MLX,
and show the two backends give the same features.

Run: python examples/extract_features.py [--checkpoint runs/digits] [IMAGE ...]
(with no images it draws a few built-in shapes scenes into a temporary folder).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import aimv2
from aimv2 import checkpoint
from aimv2.data import open_source, preprocess
from aimv2.probe import extract_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*")
    parser.add_argument("--checkpoint", help="a run or checkpoint directory (default: random)")
    parser.add_argument("--preset", default="aimv2-small-patch4-16")
    args = parser.parse_args()

    if args.checkpoint:
        found = checkpoint.latest(args.checkpoint) or args.checkpoint
        spec, weights = checkpoint.encoder_of(checkpoint.load(found, optimizer=False))
    else:
        spec = aimv2.presets.get(args.preset).encoder
        weights = aimv2.init_weights(spec, seed=0)
    files = args.images
    if not files:
        folder = Path(tempfile.mkdtemp())
        shapes = open_source("builtin:shapes", split="heldout")
        for i in range(4):
            Image.fromarray(shapes[i].image).save(folder / f"shape{i}.png")
        files = sorted(str(p) for p in folder.glob("*.png"))
    pixels = preprocess(files, spec)  # resize, center-crop, normalize as the spec says
    features = {}
    for backend in aimv2.available_backends():
        model = aimv2.build(spec, backend, weights=weights)
        features[backend] = extract_features(model, pixels, batch_size=16)
        print(
            f"{backend}: features {features[backend].shape}, mean-pooled norm "
            f"{np.linalg.norm(features[backend].mean(axis=1), axis=1).round(3).tolist()}"
        )
    if len(features) == 2:
        diff = np.abs(features["torch"] - features["mlx"]).max()
        print(f"max |torch - mlx| = {diff:.2e}")


if __name__ == "__main__":
    main()
