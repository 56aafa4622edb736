"""The hostile-input catalogue (issue 15): each case went wrong once; each test failed
before its fix. Grouped by area: weights, inputs, specs, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

import aimv2
from aimv2 import checkpoint, specs, testing
from aimv2.specs import SpecError
from aimv2.weights import WeightsError

TINY = "aimv2-test-tiny"


def _tiny_encoder():
    return aimv2.presets.get(TINY).encoder


# --------------------------------------------------------------------------- weights


def test_get_weights_returns_copies_not_views_of_the_live_parameters(backend):
    model = aimv2.build(_tiny_encoder(), backend, seed=0)
    snap = aimv2.get_weights(model)
    before = snap["trunk.post_trunk_norm.weight"].copy()
    aimv2.set_weights(model, {k: v + 1.0 for k, v in snap.items()})
    assert np.array_equal(snap["trunk.post_trunk_norm.weight"], before)  # the snapshot held
    snap["trunk.post_trunk_norm.weight"][:] = 42.0  # writing to it leaves the model alone
    assert not np.any(aimv2.get_weights(model)["trunk.post_trunk_norm.weight"] == 42.0)


def test_set_weights_is_all_or_nothing(backend):
    model = aimv2.build(_tiny_encoder(), backend, seed=0)
    before = aimv2.get_weights(model)
    bad = {k: v + 1.0 for k, v in before.items()}
    bad["trunk.blocks.1.mlp.fc2.weight"] = np.full(bad["trunk.blocks.1.mlp.fc2.weight"].shape, "x")
    with pytest.raises(WeightsError, match=r"trunk.blocks.1.mlp.fc2.weight.*numeric"):
        aimv2.set_weights(model, bad)
    after = aimv2.get_weights(model)
    assert all(np.array_equal(after[k], before[k]) for k in before)  # nothing half-loaded


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_by_name(backend, value):
    spec = _tiny_encoder()
    weights = aimv2.init_weights(spec, 0)
    weights["trunk.blocks.0.attn.proj.weight"][1, 2] = value
    with pytest.raises(WeightsError, match=r"trunk.blocks.0.attn.proj.weight.*(NaN|infinite)"):
        aimv2.build(spec, backend, weights=weights)
    model = aimv2.build(spec, backend, seed=0)
    with pytest.raises(WeightsError, match="trunk.blocks.0.attn.proj.weight"):
        aimv2.set_weights(model, weights)
    aimv2.set_weights(model, weights, allow_nonfinite=True)  # forensics: on request


def test_object_and_string_arrays_are_a_weights_error(backend):
    model = aimv2.build(specs.NormSpec(width=2), backend)
    for value in (np.array(["a", "b"]), np.array([object(), object()], dtype=object)):
        with pytest.raises(WeightsError, match="weight: expected a numeric array"):
            aimv2.set_weights(model, {"weight": value})


def test_init_spec_refuses_nan_and_negative_std_and_seeds_must_be_non_negative():
    with pytest.raises(SpecError, match="InitSpec.embed_std=nan"):
        specs.InitSpec(embed_std=float("nan"))
    with pytest.raises(SpecError, match="InitSpec.text_pos_std=-1"):
        specs.InitSpec(text_pos_std=-1)
    with pytest.raises(SpecError, match="seed=-1: expected a non-negative integer"):
        aimv2.init_weights(_tiny_encoder(), -1)


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("kind", ["constant", "noise"])
def test_huge_images_are_refused_before_they_overflow(backend, kind):
    model = aimv2.build(_tiny_encoder(), backend)
    be = aimv2.load_backend(backend)
    noise = np.random.default_rng(0).standard_normal((1, 3, 16, 16))
    images = np.full((1, 3, 16, 16), 3e38) if kind == "constant" else 1e30 * noise
    images = images.astype(np.float32)
    assert np.isfinite(images).all()
    with pytest.raises(ValueError, match=r"images: values reach .*normalized pixels"):
        model(be.from_numpy(images))


def test_unnormalized_pixels_warn(backend):
    model = aimv2.build(_tiny_encoder(), backend)
    be = aimv2.load_backend(backend)
    images = np.full((1, 3, 16, 16), 200.0, np.float32)
    with pytest.warns(UserWarning, match="images: values reach 200"):
        model(be.from_numpy(images))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32])
def test_every_integer_token_dtype_is_taken_the_same_way(backend, dtype):
    spec = aimv2.presets.get(TINY)
    batch = testing.random_batch(spec, 0)
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend)
    want = model(
        be.from_numpy(batch["images"]), be.from_numpy(batch["tokens"]), batch["prefix_len"]
    )
    got = model(
        be.from_numpy(batch["images"]),
        be.from_numpy(batch["tokens"].astype(dtype)),
        batch["prefix_len"],
    )
    assert float(be.to_numpy(got["loss"])) == float(be.to_numpy(want["loss"]))


def test_bool_and_float_tokens_are_refused_up_front(backend):
    spec = aimv2.presets.get(TINY)
    batch = testing.random_batch(spec, 0)
    be = aimv2.load_backend(backend)
    model = aimv2.build(spec, backend)
    for bad in (batch["tokens"] > 3, batch["tokens"].astype(np.float32)):
        with pytest.raises(TypeError, match="tokens: expected integer token ids"):
            model(be.from_numpy(batch["images"]), be.from_numpy(bad), batch["prefix_len"])


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch_size": 0}, "patch_size=0: expected a positive integer"),
        ({"image_size": (16,)}, r"image_size=\(16,\): expected \(height, width\)"),
        ({"image_size": 0}, r"image_size=0"),
        ({"depth": -1}, "depth=-1"),
    ],
)
def test_bad_encoder_keywords_are_spec_errors(kwargs, match):
    args = {"width": 32, "depth": 1, "heads": 2, "patch_size": 4, "image_size": 16, **kwargs}
    with pytest.raises(SpecError, match=match):
        aimv2.encoder_spec(**args)


@pytest.mark.parametrize("text", ["{", '{"kind": "norm", "width": "wide"}', "[1, 2]", '{"x": 1}'])
def test_garbage_spec_json_is_a_spec_error(text):
    with pytest.raises(SpecError):
        aimv2.presets.load_spec(text)


# --------------------------------------------------------------------------- checkpoints


def _ckpt(tmp_path, step=3, **kw):
    spec = aimv2.presets.get(TINY)
    w = aimv2.init_weights(spec)
    moments = {
        f"{m}.{k}": np.zeros_like(v) for k, v in w.items() for m in ("exp_avg", "exp_avg_sq")
    }
    return checkpoint.save(tmp_path, step, spec, w, moments, {"seed": 0}, **kw)


def test_state_without_a_step_is_refused_not_taken_as_step_zero(tmp_path):
    path = _ckpt(tmp_path)
    state = json.loads((path / "state.json").read_text())
    del state["step"]
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(checkpoint.CheckpointError, match="state.json has no valid 'step'"):
        checkpoint.load(path)
    state["step"] = 7  # and a step that disagrees with the directory's name
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(
        checkpoint.CheckpointError, match="says step 7, but the directory is ckpt-00000003"
    ):
        checkpoint.load(path)


def test_a_deleted_optimizer_file_makes_the_checkpoint_incomplete(tmp_path):
    path = _ckpt(tmp_path)
    (path / "optimizer.safetensors").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="optimizer.safetensors is missing"):
        checkpoint.load(path)
    assert checkpoint.latest(tmp_path) is None  # not a complete checkpoint any more


def test_a_truncated_file_names_the_damaged_file_and_the_newest_intact(tmp_path):
    older = _ckpt(tmp_path, step=3)
    newer = _ckpt(tmp_path, step=5)
    f = newer / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    with pytest.raises(checkpoint.CheckpointError, match=r"model.safetensors is damaged"):
        checkpoint.load(newer)
    found = checkpoint.newest_intact(tmp_path)
    assert found.path == older and [d.name for d, _ in found.damaged] == ["ckpt-00000005"]


def test_a_checkpoint_is_never_overwritten(tmp_path):
    path = _ckpt(tmp_path, step=4)
    with pytest.raises(checkpoint.CheckpointError, match="ckpt-00000004 exists"):
        _ckpt(tmp_path, step=4)
    assert checkpoint.load(path).step == 4
