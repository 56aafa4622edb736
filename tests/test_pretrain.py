"""The pre-training model: losses, predictions and gradients agree across realizations,
and the objective means what the paper says (no leakage, prefix-only counting, pads ignored).

Tolerances: ``FORWARD_TOL`` (1e-4 of scale) for losses and predictions against the
float64 reference; ``GRAD_TOL`` (1e-3 of the gradient tensor's scale) for torch vs MLX
gradients and for backend gradients against central finite differences of the reference
(step 1e-6 in float64: truncation and rounding errors ~1e-9, far below float32 noise).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aimv2
from aimv2 import patches, reference, specs, testing


def _batch_for(spec, data, seed):
    caption = data.draw(st.sampled_from(["random", "all_pad", "full"]))
    batch = testing.random_batch(spec, seed)
    if batch["tokens"] is not None:
        pad = spec.text.pad_id
        if caption == "all_pad":
            batch["tokens"][:] = pad
        elif caption == "full":
            batch["tokens"][batch["tokens"] == pad] = (pad + 1) % spec.decoder.vocab_size
    n = spec.encoder.num_patches
    which = data.draw(st.sampled_from(["sampled", "one", "last"]))
    if which != "sampled":
        batch["prefix_len"] = np.full(2, 1 if which == "one" else n - 1, np.int64)
    return batch


@given(testing.model_specs(), st.integers(0, 2**16), st.data())
def test_losses_predictions_and_gradients_agree(spec, seed, data):
    installed = aimv2.available_backends()
    if len(installed) < 2:
        pytest.skip(f"needs two backends to compare, installed: {installed or 'none'}")
    batch = _batch_for(spec, data, seed)
    report = testing.assert_backends_agree(spec, batch=batch, seed=seed, backends=installed)
    grads = [k for k in report["mlx"] if k.startswith("grad:")]
    assert len(grads) == len(aimv2.weights.parameters(spec))


def _ref_loss(spec, w, batch):
    out = reference.forward(
        spec, w, batch["images"], tokens=batch["tokens"], prefix_len=batch["prefix_len"]
    )
    return float(out["loss"])


@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_match_finite_differences_of_the_reference(backend, seed):
    spec = aimv2.presets.get("aimv2-test-tiny")
    w = {k: v.astype(np.float64) for k, v in testing.random_weights(spec, seed).items()}
    batch = testing.random_batch(spec, seed)
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend, weights=w)
    _, grads = be.loss_and_grads(model, batch["images"], batch["tokens"], batch["prefix_len"])
    rng = np.random.default_rng(seed)
    names = sorted(w)
    h = 1e-6
    for name in rng.choice(names, 12, replace=False):
        idx = tuple(int(rng.integers(0, s)) for s in w[name].shape)
        plus, minus = dict(w), dict(w)
        plus[name], minus[name] = w[name].copy(), w[name].copy()
        plus[name][idx] += h
        minus[name][idx] -= h
        fd = (_ref_loss(spec, plus, batch) - _ref_loss(spec, minus, batch)) / (2 * h)
        bound = testing.GRAD_TOL.bound(grads[name])
        assert abs(grads[name][idx] - fd) <= bound, (name, idx, grads[name][idx], fd)


def _tiny(**changes):
    return aimv2.presets.get("aimv2-test-tiny").replace(**changes)


def _run(model, be, images, tokens, prefix):
    out = model(be.from_numpy(images), be.from_numpy(tokens), prefix)
    return {k: (None if v is None else be.to_numpy(v)) for k, v in out.items()}


@given(seed=st.integers(0, 2**16), m=st.integers(1, 15))
def test_no_pixel_leakage_from_the_target_or_later_patches(backend, seed, m):
    spec = _tiny()
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend, weights=testing.random_weights(spec, seed))
    batch = testing.random_batch(spec, seed, batch=1)
    rng = np.random.default_rng(seed)
    target = int(rng.integers(m, 16))  # a patch outside the prefix (index >= m)
    changed = batch["images"].copy()
    grid = patches.patchify(changed, 4)
    grid[:, target:] += rng.standard_normal(grid[:, target:].shape).astype(np.float32)
    changed = grid.reshape(1, 4, 4, 4, 4, 3).transpose(0, 5, 1, 3, 2, 4).reshape(1, 3, 16, 16)
    assert np.allclose(patches.patchify(changed, 4), grid)
    a = _run(model, be, batch["images"], batch["tokens"], [m])
    b = _run(model, be, changed, batch["tokens"], [m])
    # pixel_pred[:, t - 1] predicts patch t; every prediction of a patch >= target
    # must ignore patches >= target.
    np.testing.assert_allclose(a["pixel_pred"][:, :target], b["pixel_pred"][:, :target], atol=1e-5)
    if target < 15:
        assert np.abs(a["pixel_pred"][:, target:] - b["pixel_pred"][:, target:]).max() > 1e-4


@given(seed=st.integers(0, 2**16), t=st.integers(0, 15))
def test_no_text_leakage_from_the_predicted_token_or_later(backend, seed, t):
    spec = _tiny()
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend, weights=testing.random_weights(spec, seed))
    batch = testing.random_batch(spec, seed, batch=1)
    tokens = np.random.default_rng(seed).integers(1, 64, (1, 16))
    changed = tokens.copy()
    changed[:, t:] = (changed[:, t:] + 7) % 63 + 1
    a = _run(model, be, batch["images"], tokens, batch["prefix_len"])
    b = _run(model, be, batch["images"], changed, batch["prefix_len"])
    # text_logits[:, k] predicts token k, so logits 0..t must not see tokens t...
    np.testing.assert_allclose(
        a["text_logits"][:, : t + 1], b["text_logits"][:, : t + 1], atol=1e-5
    )
    if t < 15:
        assert np.abs(a["text_logits"][:, t + 1 :] - b["text_logits"][:, t + 1 :]).max() > 1e-4


@given(seed=st.integers(0, 2**16))
def test_pixel_loss_counts_exactly_the_patches_outside_the_prefix(backend, seed):
    spec = _tiny()
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend, weights=testing.random_weights(spec, seed))
    batch = testing.random_batch(spec, seed, batch=3)
    out = _run(model, be, batch["images"], batch["tokens"], batch["prefix_len"])
    target = patches.normalize_patches(patches.patchify(batch["images"].astype(np.float64), 4))
    per_patch = ((out["pixel_pred"] - target[:, 1:]) ** 2).mean(-1)  # targets 1..15
    counted = [per_patch[i, m - 1 :] for i, m in enumerate(batch["prefix_len"])]
    want = np.concatenate(counted).mean()
    assert abs(out["pixel_loss"] - want) <= 1e-5 * max(1.0, want)
    assert sum(len(c) for c in counted) == sum(16 - m for m in batch["prefix_len"])


def test_text_loss_ignores_pad_positions(backend):
    spec = _tiny()
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend, weights=testing.random_weights(spec, 0))
    batch = testing.random_batch(spec, 0, batch=2)
    short = np.random.default_rng(0).integers(1, 64, (2, 6))
    padded = np.concatenate([short, np.zeros((2, 10), np.int64)], axis=1)
    a = _run(model, be, batch["images"], short, batch["prefix_len"])
    b = _run(model, be, batch["images"], padded, batch["prefix_len"])
    assert abs(a["text_loss"] - b["text_loss"]) < 1e-5
    # Manual mean over the non-pad positions of the padded caption.
    logits = b["text_logits"].astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ce = lse - np.take_along_axis(logits, padded[..., None], -1)[..., 0]
    assert abs(b["text_loss"] - ce[:, :6].mean()) < 1e-5
    empty = _run(model, be, batch["images"], np.zeros((2, 16), np.int64), batch["prefix_len"])
    assert empty["text_loss"] == 0.0 and np.isfinite(empty["loss"])


def test_alpha_scales_only_the_pixel_term(backend):
    batch = testing.random_batch(_tiny(), 2)
    outs = []
    for alpha in (0.4, 0.8):
        spec = _tiny(pixel=specs.PixelObjectiveSpec(weight=alpha))
        be = aimv2.load_backend(backend)
        model = aimv2.build(spec, backend, weights=testing.random_weights(spec, 2))
        outs.append(_run(model, be, batch["images"], batch["tokens"], batch["prefix_len"]))
    a, b = outs
    assert a["pixel_loss"] == pytest.approx(b["pixel_loss"], rel=1e-6)
    assert a["text_loss"] == pytest.approx(b["text_loss"], rel=1e-6)
    assert a["loss"] == pytest.approx(a["text_loss"] + 0.4 * a["pixel_loss"], rel=1e-6)
    assert b["loss"] - a["loss"] == pytest.approx(0.4 * a["pixel_loss"], rel=1e-4)


def test_an_objective_with_weight_zero_builds_no_head():
    pixel_only = _tiny(text=specs.TextObjectiveSpec(weight=0.0))
    caption_only = _tiny(
        pixel=specs.PixelObjectiveSpec(weight=0.0), prefix=specs.PrefixSpec(mode="bidirectional")
    )
    installed = aimv2.available_backends()
    if not installed:
        pytest.skip("no backend installed: pip install 'aimv2[torch]' or 'aimv2[mlx]'")
    for backend in installed:
        names = set(aimv2.get_weights(aimv2.build(pixel_only, backend)))
        assert "pixel_head.weight" in names and "text_head.weight" not in names
        names = set(aimv2.get_weights(aimv2.build(caption_only, backend)))
        assert "text_head.weight" in names and "pixel_head.weight" not in names


BAD_CALLS = [
    ({"tokens": np.full((2, 4), 64)}, ValueError, "must be < vocab_size=64, got 64"),
    ({"tokens": np.full((2, 4), -1)}, ValueError, "must be >= 0, got -1"),
    ({"tokens": np.ones((2, 17), np.int64)}, ValueError, "exceeds the decoder context_length=16"),
    ({"tokens": np.ones((3, 4), np.int64)}, ValueError, "batch size 3 disagrees"),
    ({"tokens": np.ones((2, 4), np.float32)}, TypeError, "expected integer token ids"),
    ({"prefix_len": [0, 3]}, ValueError, r"must lie in 1..15"),
    ({"prefix_len": [16, 3]}, ValueError, r"must lie in 1..15"),
    ({"prefix_len": [3, 3, 3]}, ValueError, "expected an int or 2 integers"),
    ({"prefix_len": None}, ValueError, "prefix_len: required"),
    ({"tokens": None}, ValueError, "tokens: required"),
]


# every backend and the reference; this parametrization takes the place of the fixture
@pytest.mark.parametrize("backend", [*aimv2.BACKENDS, "reference"])
@pytest.mark.parametrize("change, exc, match", BAD_CALLS)
def test_bad_model_inputs_get_clear_errors(backend, change, exc, match):
    spec = _tiny()
    call = {"tokens": np.ones((2, 4), np.int64), "prefix_len": [3, 3]}
    call.update(change)
    images = np.zeros((2, 3, 16, 16), np.float32)
    if backend == "reference":
        with pytest.raises(exc, match=match):
            reference.forward(spec, aimv2.init_weights(spec), images, **call)
        return
    try:
        be = aimv2.load_backend(backend)
    except aimv2.BackendUnavailable as err:
        pytest.skip(str(err))
    model = aimv2.build(spec, backend)
    tokens = None if call["tokens"] is None else be.from_numpy(call["tokens"])
    with pytest.raises(exc, match=match):
        model(be.from_numpy(images), tokens, call["prefix_len"])
