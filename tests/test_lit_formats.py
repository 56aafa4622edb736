"""LiT checkpoints: transformers' ``Aimv2Model``, the official files (torch and MLX layouts)
and this library's own, read and written on both backends.

Fixtures are made here: random-weight ``transformers.Aimv2Model`` models from a config,
official-layout files written from random weights with the official names; nothing is
downloaded. ``logits_per_image`` (and both embeddings) must match at
``aimv2.testing.FORWARD_TOL`` (float32 against float32 transformers, or against the
float64 reference); export → import is bit-exact.

transformers' ``Aimv2TextModel`` builds its causal mask only from an attention mask: with
a padding mask (ones through the first eos, zeros after) it is the released causal
tower; without a mask (and, with the sdpa kernel, with an all-ones mask) it attends
bidirectionally — what a text tower with ``causal=False`` computes. Both are tested.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import aimv2
from aimv2 import formats, reference
from aimv2 import specs as S
from aimv2.formats import FormatError
from aimv2.tensorfiles import save_file
from aimv2.testing import FORWARD_TOL, assert_close, random_captions, random_weights

torch = pytest.importorskip("torch")
INSTALLED = aimv2.available_backends()
IMAGE = 28


def _randomize(model, seed: int) -> None:
    """Every parameter random (norms, positions, the query and the logit scale too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1 + 0.2 * r)
            elif name == "logit_scale":
                p.copy_(torch.tensor(2.0) + 0.5 * r)
            elif p.ndim >= 2 and "position" not in name and "cls_token" not in name:
                p.copy_(r / p[0].numel() ** 0.5)
            else:
                p.copy_(0.2 * r)


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tf_lit(hf, tmp_path_factory):
    """(folder, transformers Aimv2Model) with random weights."""
    cfg = hf.Aimv2Config(
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE,
            patch_size=7,
            use_head=True,
        ),
        text_config=dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=50,
            eos_token_id=49,
            max_position_embeddings=12,
        ),
        projection_dim=32,
    )
    model = hf.Aimv2Model(cfg).eval()
    _randomize(model, 0)
    folder = tmp_path_factory.mktemp("tf-lit")
    model.save_pretrained(folder)
    return folder, model


def _inputs(text_spec, seed=0, batch=3, images=2):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((images, 3, IMAGE, IMAGE)).astype(np.float32)
    tokens = random_captions(text_spec, rng, batch, length=text_spec.context_length, pad_id=0)
    first = (tokens == text_spec.eos_id).argmax(-1)
    mask = (np.arange(tokens.shape[1])[None] <= first[:, None]).astype(np.int64)
    return x, tokens, mask


def _hf_lit(model, x, tokens, mask=None):
    kw = {} if mask is None else {"attention_mask": torch.from_numpy(mask)}
    with torch.no_grad():
        o = model(input_ids=torch.from_numpy(tokens), pixel_values=torch.from_numpy(x), **kw)
    return {k: getattr(o, k).numpy() for k in ("logits_per_image", "image_embeds", "text_embeds")}


def _ours(model, backend, x, tokens):
    be = aimv2.load_backend(backend)
    out = model(be.from_numpy(x), be.from_numpy(tokens))
    return {k: be.to_numpy(out[k]) for k in ("logits_per_image", "image_embeds", "text_embeds")}


def _same(got, want, what):
    return {k: assert_close(got[k], want[k], FORWARD_TOL, f"{what} {k}") for k in want}


@pytest.mark.parametrize("backend", INSTALLED)
def test_transformers_aimv2_model_reproduces_transformers(tf_lit, backend):
    folder, hf_model = tf_lit
    det = formats.detect(folder)
    spec = det.spec
    assert (det.format, det.origin) == ("transformers", str(folder / "config.json"))
    txt = spec.text_encoder
    assert (txt.width, txt.depth, txt.vocab_size, txt.eos_id, txt.context_length) == (
        48,
        2,
        50,
        49,
        12,
    )
    assert txt.causal and spec.embed_dim == 32 and spec.image_encoder.head.heads == 4
    model = formats.from_pretrained(folder, backend=backend)
    x, tokens, mask = _inputs(txt)
    # with an attention mask transformers' text tower is causal: the released model
    _same(_ours(model, backend, x, tokens), _hf_lit(hf_model, x, tokens, mask), "masked")
    # without one it attends both ways: our tower with causal=False reproduces that
    bidir = spec.replace(text_encoder=txt.replace(causal=False))
    unmasked = _hf_lit(hf_model, x, tokens)
    twin = formats.from_pretrained(folder, backend=backend, preset=bidir)
    _same(_ours(twin, backend, x, tokens), unmasked, "unmasked")
    assert (
        np.abs(_ours(model, backend, x, tokens)["text_embeds"] - unmasked["text_embeds"]).max()
        > 1e-2
    )


def _official_spec():
    # widths of 128 so that the heads follow from AIMv2's head dim of 128
    enc = aimv2.encoder_spec(128, 1, 1, 7, IMAGE, 256)
    txt = S.text_encoder_spec(128, 2, 1, vocab_size=30, context_length=10, mlp_hidden=256)
    return S.lit_spec(enc, txt, 64)


@pytest.mark.parametrize("layout", ["official", "mlx"])
def test_official_files_without_a_spec_reproduce_the_reference(tmp_path, layout):
    """Official names, no config and no stored spec: the towers come from the shapes and
    the conventions (head dim 128, eos = vocab − 1, context = the position table)."""
    spec = _official_spec()
    w = random_weights(spec, 1)
    stored = dict(w)
    name = "model.safetensors"
    if layout == "mlx":
        conv = "image_encoder.preprocessor.patchifier.proj.weight"
        stored[conv] = np.ascontiguousarray(w[conv].transpose(0, 2, 3, 1))
        name = "mlx_model.safetensors"
    save_file(stored, tmp_path / name)
    det = formats.detect(tmp_path)
    assert (det.format, det.origin, det.spec) == (layout, "tensor shapes", spec)
    x, tokens, _ = _inputs(spec.text_encoder, seed=2)
    want = reference.lit(spec, w, x, tokens)
    for backend in INSTALLED:
        got = _ours(formats.from_pretrained(tmp_path, backend=backend), backend, x, tokens)
        _same(got, {k: want[k] for k in got}, f"{layout}/{backend}")


@pytest.mark.parametrize("src", INSTALLED)
def test_export_to_transformers_gives_the_same_logits(hf, tmp_path, src):
    enc = aimv2.encoder_spec(32, 2, 2, 7, IMAGE, 64)
    txt = S.text_encoder_spec(32, 2, 2, vocab_size=40, context_length=9, mlp_hidden=64)
    spec = S.lit_spec(enc, txt, 16, head_heads=2)  # transformers' head has the trunk's heads
    w = random_weights(spec, 3)
    out = formats.save_pretrained(
        aimv2.build(spec, src, weights=w), tmp_path / "tf", "transformers"
    )
    loaded = hf.Aimv2Model.from_pretrained(out).eval()
    x, tokens, mask = _inputs(txt, seed=4, batch=2, images=3)
    want = reference.lit(spec, w, x, tokens)
    _same(
        _hf_lit(loaded, x, tokens, mask),
        {k: want[k] for k in ("logits_per_image", "image_embeds", "text_embeds")},
        "transformers",
    )
    assert float(loaded.logit_scale.detach()) == float(w["log_logit_scale"])
    for backend in INSTALLED:  # and back: bit-exact
        back = aimv2.get_weights(formats.from_pretrained(out, backend=backend))
        assert all(np.array_equal(back[k], w[k]) for k in w)


@pytest.mark.parametrize("fmt", ["official", "mlx", "transformers", "aimv2"])
def test_lit_round_trips_exactly_across_backends(tmp_path, fmt):
    spec = aimv2.presets.get("aimv2-lit-test-tiny")
    if fmt == "transformers":
        spec = spec.replace(
            image_encoder=spec.image_encoder.replace(head=spec.image_encoder.head.replace(heads=2))
        )
    w = random_weights(spec, 5)
    for src in INSTALLED:
        out = formats.save_pretrained(aimv2.build(spec, src, weights=w), tmp_path / src, fmt)
        assert formats.detect(out).format == fmt
        for dst in INSTALLED:
            model = formats.from_pretrained(out, backend=dst)
            assert model.spec == spec
            got = aimv2.get_weights(model)
            assert all(np.array_equal(got[k], w[k]) for k in w), (fmt, src, dst)


def test_formats_that_cannot_hold_a_lit_model_say_so(tmp_path):
    spec = aimv2.presets.get("aimv2-lit-test-tiny")
    model = aimv2.build(spec, INSTALLED[0])
    with pytest.raises(FormatError, match="format='timm' cannot hold a LiT model"):
        formats.save_pretrained(model, tmp_path / "t", format="timm")
    with pytest.raises(FormatError, match=r"format='transformers' cannot hold spec.head.heads=8"):
        formats.save_pretrained(model, tmp_path / "t", format="transformers")
    bidir = spec.replace(text_encoder=spec.text_encoder.replace(causal=False))
    with pytest.raises(FormatError, match=r"cannot hold spec.text_encoder.causal=False"):
        formats.save_pretrained(aimv2.build(bidir, INSTALLED[0]), tmp_path / "t", format="official")


def test_convert_streams_a_lit_model_between_layouts(tmp_path, capsys):
    from aimv2.cli import main

    spec = _official_spec()
    w = random_weights(spec, 6)
    save_file(w, tmp_path / "model.safetensors")
    args = ["--quiet"]
    assert main(["convert", str(tmp_path), str(tmp_path / "mlx"), "--to", "mlx", *args]) == 0
    assert "(mlx): LiT: image width=128 depth=1" in capsys.readouterr().out
    det = formats.detect(tmp_path / "mlx")
    assert det.format == "mlx" and det.spec == spec
    # transformers' pooling head has the trunk's heads: say so with --preset
    one_head = spec.replace(
        image_encoder=spec.image_encoder.replace(head=spec.image_encoder.head.replace(heads=1))
    )
    assert (
        main(["convert", str(tmp_path), str(tmp_path / "tf"), "--to", "transformers", *args]) == 2
    )
    assert "cannot hold spec.head.heads=8" in capsys.readouterr().err
    cmd = ["convert", str(tmp_path / "mlx"), str(tmp_path / "tf"), "--to", "transformers"]
    assert main([*cmd, "--preset", one_head.to_json(indent=None), *args]) == 0
    assert formats.detect(tmp_path / "tf").spec == one_head
    for folder in ("mlx", "tf"):
        model = formats.from_pretrained(tmp_path / folder, backend=INSTALLED[0])
        back = aimv2.get_weights(model)
        assert all(np.array_equal(back[k], w[k]) for k in w), folder
    assert main(["convert", str(tmp_path), str(tmp_path / "timm"), "--to", "timm", *args]) == 2
    assert "cannot hold a LiT model" in capsys.readouterr().err


def test_lit_files_with_missing_or_extra_tensors(tmp_path):
    spec = _official_spec()
    w = random_weights(spec, 7)
    del w["text_projector.weight"]
    save_file(w, tmp_path / "model.safetensors")
    with pytest.raises(FormatError, match=r"missing 1: text_projector.weight"):
        formats.detect(tmp_path, preset=spec)
    w2 = random_weights(spec, 7)
    w2["text_encoder.extra"] = np.zeros(3, np.float32)
    save_file(w2, tmp_path / "x.safetensors")
    with pytest.raises(FormatError, match=r"unexpected 1: text_encoder.extra"):
        formats.detect(tmp_path / "x.safetensors")


def test_encoder_tools_read_the_image_tower_of_a_lit_model(tmp_path):
    """``aimv2 probe`` / ``extract --pool attn`` take a LiT checkpoint's image tower."""
    from aimv2.cli.common import load_encoder

    spec = aimv2.presets.get("aimv2-lit-test-tiny")
    w = random_weights(spec, 8)
    model = aimv2.build(spec, INSTALLED[0], weights=w)
    for fmt in ("official", "aimv2"):
        out = formats.save_pretrained(model, tmp_path / fmt, format=fmt)
        # a released file lists what is left out; our own checkpoint folder is read with
        # checkpoint.encoder_of, which asks for the encoder by name
        said = pytest.warns(UserWarning, match=r"left out: .*text_encoder\.\*")
        with said if fmt == "official" else contextlib.nullcontext():
            enc = load_encoder(str(out), INSTALLED[0])
        assert enc.spec == spec.image_encoder and enc.spec.head is not None
        got = aimv2.get_weights(enc)
        assert all(np.array_equal(got[k], w["image_encoder." + k]) for k in got)
