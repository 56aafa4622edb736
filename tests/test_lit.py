"""The LiT components: the text encoder, the image pooling head and the two-tower model —
parity of forward, contrastive loss and every gradient (torch ≈ float64 reference ≈ MLX),
the causal mask, eos pooling, frozen parameters, and bad input.

Tolerances: ``aimv2.testing.FORWARD_TOL`` (1e-4 of the output scale) for outputs, logits,
embeddings and the loss against the float64 reference; ``GRAD_TOL`` (1e-3 of the
gradient scale) between backends and against central differences of the reference — the
encoder's tolerances, reasoned in :mod:`aimv2.testing.tolerances`. The towers here are as
deep and wide as the encoders drawn there (≤ 2 blocks, width ≤ 48), and the contrastive
loss adds one (B, B) softmax.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aimv2
from aimv2 import reference, specs, testing
from aimv2.optim import OptimConfig

INSTALLED = aimv2.available_backends()
needs_backend = pytest.mark.skipif(not INSTALLED, reason="no backend installed")


@needs_backend
@settings(max_examples=10)
@given(testing.text_encoder_specs(), st.integers(0, 2**16))
def test_text_encoder_parity(spec, seed):
    report = testing.assert_backends_agree(spec, seed=seed, backends=INSTALLED)
    assert set(report) == set(INSTALLED)
    if len(INSTALLED) == 2:  # every parameter's gradient compared between the backends
        assert {f"grad:{n}" for n in spec.parameters()} <= set(report["mlx"])


@needs_backend
@settings(max_examples=10)
@given(
    st.sampled_from([8, 16, 32]),
    st.sampled_from([1, 2, 4, 8]),
    st.sampled_from([None, 6]),
    st.integers(0, 2**16),
)
def test_pooling_head_parity(width, heads, out_features, seed):
    """The image tower's attention-pooling head: forward and every gradient."""
    spec = specs.AttentionPoolSpec(width=width, heads=heads, out_features=out_features)
    report = testing.assert_backends_agree(spec, seed=seed, backends=INSTALLED)
    if len(INSTALLED) == 2:
        assert {f"grad:{n}" for n in spec.parameters()} <= set(report["mlx"])


@needs_backend
@settings(max_examples=10)
@given(testing.lit_specs(), st.integers(0, 2**16), st.integers(1, 3))
def test_lit_parity_forward_loss_and_every_gradient(spec, seed, batch):
    data = testing.random_batch(spec, seed, batch=batch)
    report = testing.assert_backends_agree(spec, batch=data, seed=seed, backends=INSTALLED)
    for checks in report.values():
        assert {"loss", "logits_per_image", "text_embeds", "logit_scale"} <= set(checks)
    if len(INSTALLED) == 2:
        assert {f"grad:{n}" for n in spec.parameters()} <= set(report["mlx"])


@given(testing.lit_specs(), st.integers(0, 2**16))
@settings(max_examples=5)
def test_lit_from_image_features_equals_lit_from_images(spec, seed):
    """A locked trunk's cached output gives the same embeddings as the images."""
    w = testing.random_weights(spec, seed)
    data = testing.random_batch(spec, seed)
    feats = reference.forward(
        spec.image_encoder, reference.sub(w, "image_encoder."), data["images"]
    )
    want = reference.lit(spec, w, data["images"], data["tokens"])
    for backend in INSTALLED:
        be = aimv2.load_backend(backend)
        model = aimv2.build(spec, backend, weights=w)
        got = model(tokens=be.from_numpy(data["tokens"]), image_features=be.from_numpy(feats))
        testing.assert_close(be.to_numpy(got["logits_per_image"]), want["logits_per_image"])


def test_lit_preset_matches_the_release():
    lit = aimv2.presets.get("aimv2-large-patch14-224-lit")
    img, txt = lit.image_encoder, lit.text_encoder
    assert (img.width, img.depth, img.trunk.block.attn.heads, img.trunk.block.mlp.hidden) == (
        1024,
        24,
        8,
        2816,
    )
    assert img.num_patches == 256 and img.patch_size == 14
    head = img.head
    assert (head.heads, head.num_queries, head.kv_bias, head.out_bias, head.out_dim) == (
        8,
        1,
        False,
        True,
        1024,
    )
    assert (txt.width, txt.depth, txt.trunk.block.attn.heads, txt.trunk.block.mlp.hidden) == (
        768,
        12,
        6,
        2048,
    )
    assert (txt.vocab_size, txt.eos_id, txt.context_length, txt.causal) == (49408, 49407, 77, True)
    blk = txt.trunk.block
    assert blk.norm.type == "rms" and blk.norm.eps == 1e-5 and blk.mlp.type == "swiglu"
    assert not (blk.attn.qkv_bias or blk.attn.proj_bias or blk.mlp.bias)
    assert lit.embed_dim == 768 and lit.max_logit_scale == 100.0
    p = lit.parameters()
    assert p["image_projector.weight"].shape == (768, 1024)
    assert p["text_projector.weight"].shape == (768, 768)
    assert p["text_encoder.preprocessor.text_embedding.weight"].shape == (49408, 768)
    assert p["text_encoder.preprocessor.positional_embedding"].shape == (77, 768)
    assert p["image_encoder.head.cls_token"].shape == (1, 1, 1024)
    assert abs(p["log_logit_scale"].fill - np.log(1 / 0.07)) < 1e-12
    assert (
        not p["log_logit_scale"].decay
        and not p["text_encoder.preprocessor.positional_embedding"].decay
    )


@pytest.mark.parametrize("causal", [True, False])
def test_causal_mask_hides_later_tokens(causal):
    """No feature at position i depends on a token after i (and a bidirectional tower's do)."""
    spec = specs.text_encoder_spec(16, 2, 2, vocab_size=12, eos_id=11, context_length=8)
    spec = spec.replace(causal=causal)
    w = testing.random_weights(spec, 1)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 11, (1, 8))
    a[0, -1] = 11
    for j in range(1, 7):
        b = a.copy()
        b[0, j] = (a[0, j] + 1) % 11
        outs = {
            "reference": (
                reference.text_encoder(spec, w, a, True)[1],
                reference.text_encoder(spec, w, b, True)[1],
            )
        }
        for backend in INSTALLED:
            be = aimv2.load_backend(backend)
            m = aimv2.build(spec, backend, weights=w)
            outs[backend] = tuple(
                be.to_numpy(m(be.from_numpy(x), return_features=True)[1]) for x in (a, b)
            )
        for name, (fa, fb) in outs.items():
            before = np.abs(fa[0, :j] - fb[0, :j]).max()
            after = np.abs(fa[0, j:] - fb[0, j:]).max()
            assert after > 1e-3, (name, j)
            if causal:
                assert before == 0.0, (name, j, before)
            else:
                assert before > 1e-3, (name, j)


def test_eos_pooling_picks_the_first_eos_and_ignores_padding():
    spec = specs.text_encoder_spec(16, 1, 2, vocab_size=12, eos_id=11, context_length=8)
    w = testing.random_weights(spec, 2)
    base = np.array(
        [
            [3, 4, 11, 11, 11, 11, 11, 11],  # CLIP style: pad = eos
            [5, 6, 7, 11, 0, 0, 0, 0],  # another pad id
            [11, 1, 2, 3, 4, 5, 6, 7],  # eos first
        ]
    )
    other = base.copy()
    other[0, 3:] = [1, 2, 3, 4, 5]
    other[1, 4:] = [11, 9, 8, 11]
    want_at = [2, 3, 0]
    for name in ["reference", *INSTALLED]:
        if name == "reference":
            run = lambda x: reference.text_encoder(spec, w, x, True)  # noqa: E731
        else:
            be = aimv2.load_backend(name)
            m = aimv2.build(spec, name, weights=w)

            def run(x, m=m, be=be):
                pooled, feats = m(be.from_numpy(x), return_features=True)
                return be.to_numpy(pooled), be.to_numpy(feats)

        pooled, feats = run(base)
        for row, at in enumerate(want_at):
            assert np.array_equal(pooled[row], feats[row, at]), (name, row)
        testing.assert_close(run(other)[0], pooled, what=f"{name}: padding after eos")


def test_bad_captions_get_clear_errors(backend):
    spec = aimv2.presets.get("aimv2-lit-test-tiny")
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend)
    text = model.text_encoder
    images = be.from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    cases = [
        (np.array([[5, 64, 2]]), ValueError, r"token ids must be < vocab_size=64, got 64"),
        (np.array([[-1, 2]]), ValueError, r"token ids must be >= 0"),
        (np.full((1, 17), 2), ValueError, r"caption length 17 exceeds the text encoder's context"),
        (np.array([[5, 6, 7]]), ValueError, r"1 of 1 captions hold no end-of-text token"),
        (np.array([[5.0, 2.0]]), TypeError, r"expected integer token ids"),
        (np.array([5, 2]), ValueError, r"expected a 2-D batch"),
    ]
    for tokens, exc, match in cases:
        with pytest.raises(exc, match=match):
            text(be.from_numpy(tokens))
        with pytest.raises(exc, match=match):
            model(images, be.from_numpy(tokens))
        with pytest.raises(exc, match=match):
            reference.text_encoder(
                spec.text_encoder, testing.random_weights(spec.text_encoder), tokens
            )
    ok = be.from_numpy(np.array([[5, 2]]))
    with pytest.raises(ValueError, match="tokens: required"):
        model(images)
    with pytest.raises(ValueError, match="give exactly one of them"):
        model(tokens=ok)
    with pytest.raises(ValueError, match=r"image_features: expected shape \(B, N, 32\)"):
        model(tokens=ok, image_features=be.from_numpy(np.zeros((1, 16, 8), np.float32)))
    with pytest.raises(ValueError, match=r"square \(B, B\) matrix"):
        model(be.from_numpy(np.zeros((2, 3, 16, 16), np.float32)), ok, return_loss=True)
    with pytest.raises(ValueError, match="images: expected 3 channels"):
        model(be.from_numpy(np.zeros((1, 1, 16, 16), np.float32)), ok)


def test_bad_lit_specs_name_the_field():
    enc = aimv2.encoder_spec(32, 1, 2, 4, 8)
    txt = specs.text_encoder_spec(32, 1, 2, vocab_size=10)
    with pytest.raises(specs.SpecError, match=r"LiTSpec.image_encoder.head=None: the image tower"):
        specs.LiTSpec(enc, txt, 8)
    with pytest.raises(specs.SpecError, match=r"TextEncoderSpec.eos_id=10: expected a token id"):
        specs.text_encoder_spec(32, 1, 2, vocab_size=10, eos_id=10)
    with pytest.raises(specs.SpecError, match=r"LiTSpec.max_logit_scale=0.5"):
        specs.lit_spec(enc, txt, 8, max_logit_scale=0.5)
    with pytest.raises(specs.SpecError, match=r"LiTSpec.embed_dim=0"):
        specs.lit_spec(enc, txt, 0)
    lit = specs.lit_spec(enc, txt, 8)
    assert specs.from_dict(lit.to_dict()) == lit


def test_module_trees_carry_the_official_names(backend):
    spec = aimv2.presets.get("aimv2-lit-test-tiny")
    got = {k: v.shape for k, v in aimv2.get_weights(aimv2.build(spec, backend)).items()}
    assert got == {k: v.shape for k, v in spec.parameters().items()}
    assert "text_encoder.trunk.blocks.1.attn.qkv.weight" in got and "log_logit_scale" in got


def test_frozen_parameters_get_no_update_and_no_decay(backend):
    spec = aimv2.presets.get("aimv2-lit-test-tiny")
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend, seed=0)
    frozen = ["image_encoder.trunk.", "image_encoder.preprocessor."]
    assert be.freeze(model, frozen) == 19
    before = {k: v.copy() for k, v in aimv2.get_weights(model).items()}
    cfg = OptimConfig(lr=1e-2, warmup_steps=0, total_steps=3, weight_decay=0.5)
    trainer = be.Trainer(model, cfg, loss_fn=be.contrastive_loss)
    assert not any(n.startswith(tuple(frozen)) for n in trainer.names)
    assert len(trainer.names) == len(spec.parameters()) - 19
    data = testing.random_batch(spec, 0, batch=4)
    for _ in range(2):
        out = trainer.step([data], 1e-2)
    assert set(out) == {"loss", "logit_scale", "accuracy", "grad_norm"}
    after = aimv2.get_weights(model)
    for name in before:
        same = np.array_equal(before[name], after[name])
        assert same == name.startswith(tuple(frozen)), name
    assert set(trainer.state_arrays()) == {
        f"{k}.{n}" for n in trainer.names for k in ("exp_avg", "exp_avg_sq")
    }
    _, grads = be.value_and_grads(model, be.contrastive_loss, data)
    assert not grads["image_encoder.trunk.blocks.0.attn.qkv.weight"].any()
    assert grads["image_encoder.head.cls_token"].any()


def test_gather_with_grad_is_the_identity_in_one_process(backend):
    be = aimv2.load_backend(backend)
    x = be.from_numpy(np.ones((2, 3), np.float32))
    assert be.gather_with_grad(x) is x
    assert be.gather_with_grad(x, aimv2.distributed.World()) is x
