"""Run a 224 encoder at 336 (and 448): resample its learned position grid.

With ``--checkpoint`` pointing at a released folder (e.g. ``aimv2-large-patch14-224``, in
any format ``aimv2.from_pretrained`` reads) it loads it straight at the new sizes. Without
one it uses a small random encoder of the same layout (patch 14, 224 → 16×16 positions)
and checks what the resize means: on an image that is constant on each 224-patch,
upsampled 2×, the 448 model's pooled features stay close to the 224 model's.

Run: python examples/resize_224_to_336.py [--checkpoint aimv2-large-patch14-224/] [--backend mlx]
"""

from __future__ import annotations

import argparse

import numpy as np

import aimv2
from aimv2 import patches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a released 224 folder or file (default: random)")
    parser.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    args = parser.parse_args()
    be = aimv2.load_backend(args.backend)

    if args.checkpoint:  # a released model, resized as it loads (one small tensor resampled)
        for size in (336, 448):
            model = aimv2.from_pretrained(args.checkpoint, backend=args.backend, image_size=size)
            print(f"{size}: grid {model.spec.grid}, {model.spec.num_patches} tokens")
        return

    spec = aimv2.encoder_spec(width=64, depth=2, heads=2, patch_size=14, image_size=224)
    weights = aimv2.init_weights(spec, seed=0)
    # a smooth table, as learned ones are (random init is white noise)
    weights["preprocessor.pos_embed"] = (
        0.5 * patches.sincos_2d(64, 16, 16, temperature=24.0)[None]
    ).astype(np.float32)
    coarse = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    image = coarse.repeat(14, axis=2).repeat(14, axis=3)  # 224 x 224
    model = aimv2.build(spec, args.backend, weights=weights)
    base = be.to_numpy(model(be.from_numpy(image))).mean(axis=1)
    for size in (336, 448):
        big_spec, big_w = aimv2.resize_encoder(spec, weights, image_size=size)
        big = aimv2.build(big_spec, args.backend, weights=big_w)
        line = f"224 -> {size}: positions {spec.pos_embed.grid} -> {big_spec.pos_embed.grid}"
        if size == 448:  # 2x: each 224-patch becomes 2x2 patches of the same colour
            upsampled = image.repeat(2, axis=2).repeat(2, axis=3)
            pooled = be.to_numpy(big(be.from_numpy(upsampled))).mean(axis=1)
            rel = np.abs(pooled - base).max() / np.abs(base).max()
            line += f"; on the image upsampled 2x, pooled features differ by {rel:.1e}"
        print(line)


if __name__ == "__main__":
    main()
