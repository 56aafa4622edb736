"""The hostile-input catalogue (issue 15), continued: the encoder tools (probe, extract,
convert) and the released-layout readers. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

import aimv2
from aimv2 import checkpoint
from aimv2.cli import main
from aimv2.formats import FormatError, detect, from_pretrained, save_pretrained
from aimv2.probe import source_features
from aimv2.tensorfiles import load_file, save_file

TINY = "aimv2-test-tiny"


def _image_folder(root, classes=("a", "b"), per_class=3, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def _encoder_folder(tmp_path):
    spec = aimv2.presets.get(TINY).encoder
    return save_pretrained(aimv2.build(spec, "torch", seed=0), tmp_path / "enc", format="aimv2")


# --------------------------------------------------------------------------- probe


def test_a_one_class_probe_set_is_a_clear_error(tmp_path, capsys):
    data = _image_folder(tmp_path / "one", classes=("cat",), per_class=6)
    argv = ["probe", "--preset", TINY, "--data", f"imagefolder:{data}", "--epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds 1 class" in err and "at least two classes" in err, err
    assert "Traceback" not in err


def test_the_feature_cache_sees_an_edited_image(tmp_path):
    """Keyed on the source's path alone, the cache handed back stale features after an
    image in the folder changed; it is keyed on the files' sizes and mtimes now."""
    data = _image_folder(tmp_path / "imgs")
    model = aimv2.build(aimv2.presets.get(TINY).encoder, "torch", seed=0)
    source = f"imagefolder:{data}"
    cache = tmp_path / "cache"
    first, _ = source_features(model, source, split="all", cache_dir=cache)
    again, _ = source_features(model, source, split="all", cache_dir=cache)
    np.testing.assert_array_equal(first, again)  # unchanged folder: read from the cache
    edited = data / "a" / "1.png"
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(edited)
    st = os.stat(edited)
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock
    after, _ = source_features(model, source, split="all", cache_dir=cache)
    fresh, _ = source_features(model, source, split="all")
    np.testing.assert_array_equal(after, fresh)
    assert not np.array_equal(after, first)
    assert len(list(cache.glob("features-all-*.npz"))) == 2


def test_a_cached_feature_file_depends_on_blocks_and_the_file_list(tmp_path):
    data = _image_folder(tmp_path / "imgs")
    model = aimv2.build(aimv2.presets.get(TINY).encoder, "torch", seed=0)
    cache = tmp_path / "cache"
    source_features(model, f"imagefolder:{data}", split="all", cache_dir=cache)
    source_features(model, f"imagefolder:{data}", split="all", cache_dir=cache, blocks=2)
    _image_folder(data, classes=("c",), per_class=1)  # a new class folder
    x, y = source_features(model, f"imagefolder:{data}", split="all", cache_dir=cache)
    assert len(list(cache.glob("features-all-*.npz"))) == 3 and len(y) == 7


def test_probe_on_a_run_with_a_damaged_newest_checkpoint_offers_the_intact_one(tmp_path, capsys):
    spec = aimv2.presets.get(TINY)
    w = aimv2.init_weights(spec)
    run = tmp_path / "run"
    checkpoint.save(run, 3, spec, w, {}, {"seed": 0})
    newest = checkpoint.save(run, 5, spec, w, {}, {"seed": 0})
    blob = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(blob[:-64])
    argv = ["probe", "--checkpoint", str(run), "--data", "builtin:digits", "--epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ckpt-00000005" in err and "model.safetensors" in err, err
    assert f"pass --checkpoint {run / 'ckpt-00000003'}" in err, err


def test_extract_names_a_corrupt_image(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i}.jpg")
    blob = (folder / "1.jpg").read_bytes()
    (folder / "1.jpg").write_bytes(blob[: len(blob) // 2])
    argv = ["extract", "--checkpoint", str(_encoder_folder(tmp_path)), "--images", str(folder)]
    assert main([*argv, "--out", str(tmp_path / "f.npy"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"image {str(folder / '1.jpg')!r}: unreadable" in err, err
    assert not (tmp_path / "f.npy").exists()


# --------------------------------------------------------------------------- convert


def _official_with(tmp_path, change):
    spec = aimv2.presets.get(TINY).encoder
    path = save_pretrained(aimv2.build(spec, "torch", seed=0), tmp_path / "m", format="official")
    f = path / "model.safetensors"
    tensors = load_file(f)
    change(tensors)
    save_file(tensors, f)
    return path, spec


def test_convert_refuses_non_finite_tensors_by_name_and_writes_nothing(tmp_path, capsys):
    key = "trunk.blocks.0.mlp.fc1.weight"

    def poison(t):
        t[key][0, 0] = np.nan

    src, spec = _official_with(tmp_path, poison)
    dst = tmp_path / "out"
    argv = ["convert", str(src), str(dst), "--to", "mlx", "--preset", TINY, "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert key in err and "NaN or infinite" in err, err
    assert not dst.exists()
    assert main([*argv, "--allow-nonfinite"]) == 0  # forensics: converted as it is
    assert np.isnan(load_file(next(dst.glob("*.safetensors")))[key]).any()


def test_a_tensor_the_layout_does_not_account_for_is_named(tmp_path):
    def extra(t):
        t["trunk.extra.weight"] = np.zeros((2, 2), np.float32)

    src, spec = _official_with(tmp_path, extra)
    with pytest.raises(FormatError, match="unexpected 1: trunk.extra.weight"):
        from_pretrained(src, preset=spec)


# --------------------------------------------------------------------------- LiT parts


def _lit_file(tmp_path, fmt="official"):
    spec = aimv2.presets.get("aimv2-lit-test-tiny")
    return save_pretrained(aimv2.build(spec, "torch", seed=0), tmp_path / "lit", format=fmt), spec


def test_a_lit_file_loads_whole_and_its_image_tower_only_when_asked(tmp_path):
    path, spec = _lit_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the whole model: nothing left out, no warning
        whole = from_pretrained(path)
    assert whole.spec == spec
    with pytest.warns(UserWarning, match=r"left out: .*text_encoder\.\* \(\d+ tensors\)"):
        tower = from_pretrained(path, part="image")
    assert tower.spec == spec.image_encoder
    with pytest.raises(ValueError, match="part='text'"):
        detect(path, part="text")


def test_a_lit_file_with_an_unknown_tensor_is_refused_by_name(tmp_path):
    path, spec = _lit_file(tmp_path)
    f = path / "model.safetensors"
    tensors = load_file(f)
    tensors["text_encoder.surprise"] = np.zeros(3, np.float32)
    save_file(tensors, f)
    with pytest.raises(FormatError, match="unexpected 1: text_encoder.surprise"):
        from_pretrained(path, preset=spec)


# --------------------------------------------------------------------------- config.json


def _transformers_folder(tmp_path, **config_changes):
    spec = aimv2.presets.get(TINY).encoder
    path = save_pretrained(aimv2.build(spec, "torch"), tmp_path / "tf", format="transformers")
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(config_changes)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"model_type": "bert"}, "model_type='bert' is not an AIMv2 config"),
        ({"num_attention_heads": 3}, "num_attention_heads=3: expected a divisor of the width"),
        ({"num_attention_heads": 0}, "num_attention_heads=0: expected a positive integer"),
        ({"rms_norm_eps": -1e-5}, "rms_norm_eps=-1e-05: expected a small positive number"),
        ({"rms_norm_eps": "1e-5"}, "rms_norm_eps='1e-5': expected a small positive number"),
        ({"qkv_bias": "no"}, "qkv_bias='no': expected true or false"),
    ],
)
def test_config_values_the_shapes_cannot_confirm_are_validated(tmp_path, changes, match):
    path = _transformers_folder(tmp_path, **changes)
    with pytest.raises(FormatError, match=match):
        detect(path)


def test_a_valid_transformers_config_still_loads(tmp_path):
    path = _transformers_folder(tmp_path)
    assert detect(path).spec == aimv2.presets.get(TINY).encoder


def test_the_command_line_says_what_a_lit_image_tower_leaves_out_in_one_line(tmp_path, capsys):
    path, _ = _lit_file(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "a.png")
    argv = ["extract", "--checkpoint", str(path), "--images", str(folder)]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main([*argv, "--out", str(tmp_path / "f.npy"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "aimv2 extract: warning: " in err and "left out: " in err, err
    assert "UserWarning" not in err and "load.py" not in err, err
