"""Compose AIMv2 variants by changing specs, then run each on every installed backend.

Each variant is a ``dataclasses.replace`` of a base spec — no subclassing — and each is
checked against the float64 reference before it is trusted.

Run: python examples/compose_variants.py
"""

from __future__ import annotations

import time

import numpy as np

import aimv2
from aimv2 import specs, testing


def variants() -> dict[str, specs.ModelSpec]:
    """A handful of pre-training variants of one small base model."""
    base = aimv2.presets.get("aimv2-test-tiny")
    dec = base.decoder
    layer_gelu_block = specs.BlockSpec(
        norm=specs.NormSpec(dec.width, type="layer"),
        attn=dec.block.attn,
        mlp=specs.FeedForwardSpec(dec.width, 4 * dec.width, type="gelu"),
    )
    encoder_ln = aimv2.encoder_spec(
        width=32,
        depth=2,
        heads=2,
        patch_size=4,
        image_size=16,
        mlp_hidden=128,
        norm="layer",
        ffn="gelu",
    )
    return {
        "aimv2 (pixel + caption, prefix)": base,
        "pixel only (AIMv1-style)": base.replace(text=specs.TextObjectiveSpec(weight=0.0)),
        "caption only, prefix": base.replace(pixel=specs.PixelObjectiveSpec(weight=0.0)),
        "caption only, bidirectional": base.replace(
            pixel=specs.PixelObjectiveSpec(weight=0.0),
            prefix=specs.PrefixSpec(mode="bidirectional"),
        ),
        "deeper, wider decoder": base.replace(
            decoder=dec.replace(
                depth=3,
                block=specs.BlockSpec(
                    norm=specs.NormSpec(64),
                    attn=specs.AttentionSpec(64, 4),
                    mlp=specs.FeedForwardSpec(64, 128),
                ),
            )
        ),
        "LayerNorm/GELU everywhere": base.replace(
            encoder=encoder_ln, decoder=dec.replace(block=layer_gelu_block)
        ),
        "alpha = 0.6": base.replace(pixel=specs.PixelObjectiveSpec(weight=0.6)),
    }


def main() -> None:
    backends = aimv2.available_backends()
    print(f"backends: {backends}")
    for name, spec in variants().items():
        batch = testing.random_batch(spec, seed=0, batch=2)
        errs = testing.assert_backends_agree(spec, batch=batch, backends=backends)
        worst = max(max(e.values()) for e in errs.values())
        parts = []
        for backend in backends:
            be = aimv2.load_backend(backend)
            model = aimv2.build(spec, backend, seed=0)
            t = time.perf_counter()
            losses, _ = be.loss_and_grads(
                model, batch["images"], batch["tokens"], batch["prefix_len"]
            )
            ms = 1e3 * (time.perf_counter() - t)
            parts.append(f"{backend}: loss {losses['loss']:.4f} ({ms:.0f} ms fwd+bwd)")
        n = sum(int(np.prod(v.shape)) for v in aimv2.weights.parameters(spec).values())
        print(f"{name:34s} {n / 1e3:7.1f}k params | {' | '.join(parts)} | max err {worst:.1e}")


if __name__ == "__main__":
    main()
