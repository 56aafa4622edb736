"""Specs: validation with named errors, JSON round-trip, presets, the convenience constructor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given

import aimv2
from aimv2 import presets, specs, testing
from aimv2.specs import SpecError


@given(testing.layer_specs())
def test_layer_specs_round_trip_through_json(spec):
    text = json.dumps(spec.to_dict())
    assert specs.from_dict(json.loads(text)) == spec


@given(testing.model_specs())
def test_model_specs_round_trip_through_json(spec):
    assert specs.from_json(spec.to_json()) == spec


@given(testing.encoder_specs())
def test_encoder_specs_round_trip_through_json(spec):
    assert specs.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: specs.AttentionSpec(width=100, heads=6), "AttentionSpec.width=100"),
        (lambda: aimv2.encoder_spec(width=100, depth=1, heads=6), "AttentionSpec.width=100"),
        (lambda: specs.NormSpec(width=8, type="batch"), "NormSpec.type='batch'"),
        (lambda: specs.NormSpec(width=8, eps=0), "NormSpec.eps=0"),
        (lambda: specs.NormSpec(width=0), "NormSpec.width=0"),
        (
            lambda: aimv2.encoder_spec(width=64, depth=1, heads=2, patch_size=14, image_size=100),
            "image_size=(100, 100)",
        ),
        (
            lambda: aimv2.encoder_spec(
                width=64, depth=1, heads=2, image_size=None, pos_embed="learned"
            ),
            "pos_embed='learned'",
        ),
        (lambda: specs.PosEmbedSpec(width=6, type="sincos"), "PosEmbedSpec.width=6"),
        (lambda: specs.FeedForwardSpec(width=8, hidden=8, type="relu"), "FeedForwardSpec.type"),
        (lambda: specs.PrefixSpec(low=3, high=2), "PrefixSpec.high=2"),
        (lambda: specs.PixelObjectiveSpec(weight=-1.0), "PixelObjectiveSpec.weight=-1.0"),
        (lambda: specs.TrunkSpec(block=_block(8), depth=0), "TrunkSpec.depth=0"),
    ],
)
def test_bad_specs_name_field_and_value(make, field):
    with pytest.raises(SpecError, match=field.replace("(", r"\(").replace(")", r"\)")):
        make()


def _block(width):
    return specs.BlockSpec(
        norm=specs.NormSpec(width),
        attn=specs.AttentionSpec(width, 2),
        mlp=specs.FeedForwardSpec(width, 2 * width),
    )


def test_parts_must_agree_on_width():
    with pytest.raises(SpecError, match=r"BlockSpec.attn.width=16: expected the block width 8"):
        specs.BlockSpec(
            norm=specs.NormSpec(8), attn=specs.AttentionSpec(16, 2), mlp=specs.FeedForwardSpec(8, 8)
        )
    tiny = presets.get("aimv2-test-tiny")
    with pytest.raises(SpecError, match=r"ModelSpec.decoder.in_width=64"):
        tiny.replace(decoder=tiny.decoder.replace(in_width=64))


def test_model_spec_rejects_meaningless_variants():
    tiny = presets.get("aimv2-test-tiny")
    with pytest.raises(SpecError, match="ModelSpec.prefix.mode='bidirectional'"):
        tiny.replace(prefix=specs.PrefixSpec(mode="bidirectional"))
    with pytest.raises(SpecError, match="at least one of pixel.weight and text.weight"):
        tiny.replace(
            pixel=specs.PixelObjectiveSpec(weight=0.0), text=specs.TextObjectiveSpec(weight=0.0)
        )
    with pytest.raises(SpecError, match="ModelSpec.text.pad_id=64"):
        tiny.replace(text=specs.TextObjectiveSpec(pad_id=64))


def test_from_dict_rejects_unknown_kind_and_fields():
    with pytest.raises(SpecError, match="kind='nope'"):
        specs.from_dict({"kind": "nope"})
    with pytest.raises(SpecError, match=r"unknown fields \['colour'\]"):
        specs.from_dict({"kind": "norm", "width": 4, "colour": "red"})


# Released sizes from AIMV2.md §2: width, blocks, heads, SwiGLU hidden, params @224.
RELEASED = {
    "base": (768, 12, 6, 2048, 86e6),
    "large": (1024, 24, 8, 2816, 309e6),
    "huge": (1536, 24, 12, 4096, 681e6),
    "1B": (2048, 24, 16, 5632, 1.24e9),
    "3B": (3072, 24, 24, 8192, 2.72e9),
}


@pytest.mark.parametrize("size", sorted(RELEASED))
def test_released_presets_match_the_paper(size):
    width, depth, heads, hidden, params = RELEASED[size]
    resolutions = (224,) if size == "base" else (224, 336, 448)
    for res in resolutions:
        spec = presets.get(f"aimv2-{size}-patch14-{res}")
        enc = spec.encoder
        assert (enc.width, enc.depth, enc.trunk.block.attn.heads) == (width, depth, heads)
        assert enc.trunk.block.attn.head_dim == 128 or size == "base"
        assert enc.trunk.block.mlp.hidden == hidden == specs.swiglu_hidden(width)
        assert enc.num_patches == (res // 14) ** 2
        assert enc.patchifier.bias and enc.pos_embed.type == "learned"
        n = sum(int(np.prod(p.shape)) for p in aimv2.weights.parameters(enc).values())
        if res == 224:
            assert abs(n - params) / params < 0.01
        dec = spec.decoder
        assert (dec.width, dec.depth, dec.block.attn.heads) == (1024, 12, 8)
        assert (dec.vocab_size, dec.context_length) == (32000, 77)
        assert spec.pixel.weight == 0.4 and spec.text.weight == 1.0


def test_native_preset_and_aliases():
    native = presets.get("aimv2-large-patch14-native").encoder
    assert native.native and native.pos_embed.type == "sincos" and native.image_size is None
    assert native.preprocess.resize == 0 and not native.preprocess.crop
    assert (
        presets.get("aimv2-large-patch14-224-distilled").encoder
        == presets.get("aimv2-large-patch14-224").encoder
    )
    for name in presets.names():
        assert presets.get(name).name == name


def test_unknown_preset_suggests_close_names():
    with pytest.raises(KeyError, match="did you mean"):
        presets.get("aimv2-large-patch14-225")


def test_encoder_spec_defaults():
    spec = aimv2.encoder_spec(width=64, depth=2, heads=2, patch_size=4, image_size=(8, 12))
    assert spec.grid == (2, 3) and spec.pos_embed.grid == (2, 3)
    assert spec.trunk.block.mlp.hidden == 256  # 256 * ceil(int(8*64/3) / 256)
    gelu = aimv2.encoder_spec(width=64, depth=2, heads=2, ffn="gelu", norm="layer")
    assert gelu.trunk.block.mlp.hidden == 256 and gelu.trunk.final_norm_spec.type == "layer"
    native = aimv2.encoder_spec(width=64, depth=1, heads=2, image_size=None)
    assert native.pos_embed.type == "sincos"


def test_replacing_a_part_rederives_the_defaults_that_follow_it():
    import dataclasses

    tiny = presets.get("aimv2-test-tiny")
    wider = dataclasses.replace(tiny.decoder, block=_block(64))
    assert wider.final_norm is None and wider.final_norm_spec.width == 64
    enc = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=2, image_size=4)
    trunk = dataclasses.replace(enc.trunk, block=_block(8))
    assert trunk.final_norm_spec.width == 8
    assert specs.from_json(wider.to_json()) == wider
