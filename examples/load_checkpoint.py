"""Load a released AIMv2 checkpoint and extract features from an image file.

The checkpoint can be any format :func:`aimv2.formats.from_pretrained` reads: a Hugging Face
folder of the official release (``model.safetensors`` / ``mlx_model.safetensors``), a
``transformers`` ``Aimv2VisionModel`` folder, a timm state dict, or an ``aimv2`` checkpoint.
The image goes through the released processor's preprocessing (:func:`aimv2.data.preprocess`:
resize the shorter side, center-crop, CLIP mean/std; the native checkpoint keeps its size).

Run:
    python examples/load_checkpoint.py                       # offline: a tiny random model
    python examples/load_checkpoint.py ~/aimv2-large-patch14-224 --image cat.jpg
    python examples/load_checkpoint.py ~/aimv2-large-patch14-224 --backend mlx
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import aimv2
from aimv2 import data, formats, testing


def make_demo_folder(root: Path) -> Path:
    """A tiny random transformers-format checkpoint (with the pooling head), made here."""
    spec = aimv2.encoder_spec(
        width=64, depth=2, heads=2, patch_size=7, image_size=28, mlp_hidden=128
    )
    spec = spec.replace(head=aimv2.AttentionPoolSpec(width=64, heads=2))
    model = aimv2.build(spec, backend="torch", weights=testing.random_weights(spec, seed=0))
    return formats.save_pretrained(model, root / "tiny-aimv2", format="transformers")


def make_demo_image(path: Path) -> Path:
    """A 60x45 PNG with a gradient and a few shapes (not square, so resize and crop matter)."""
    y, x = np.mgrid[0:45, 0:60]
    rgb = np.stack([x * 4, y * 5, 255 - x * 2], axis=-1).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 6, 30, 28), fill=(250, 200, 40))
    draw.rectangle((34, 18, 54, 40), fill=(30, 120, 220))
    image.save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the checkpoint, print feature shapes and statistics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint file or folder (default: demo)")
    parser.add_argument("--image", help="image file (default: a generated PNG)")
    parser.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.checkpoint) if args.checkpoint else make_demo_folder(Path(tmp))
        image = Path(args.image) if args.image else make_demo_image(Path(tmp) / "demo.png")

        found = formats.detect(folder)
        print(f"checkpoint: {folder} ({found.format}; spec from {found.origin})")
        model = formats.from_pretrained(folder, backend=args.backend)
        spec = model.spec

        pixels = data.preprocess(image, spec)  # (1, C, H, W) float32, normalized
        be = aimv2.load_backend(args.backend)
        features = model(be.from_numpy(pixels))
        out = be.to_numpy(features)
        print(f"image: {image} -> pixels {pixels.shape}")
        print(f"features {out.shape}: mean {out.mean():+.4f}, std {out.std():.4f}")
        if spec.head is not None:
            pooled = be.to_numpy(model.head(features))
            print(f"pooled {pooled.shape}: norm {np.linalg.norm(pooled):.4f}")


if __name__ == "__main__":
    main()
