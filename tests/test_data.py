"""Sources, transforms and the deterministic loader of ``aimv2.data``."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import aimv2
from aimv2.data import (
    CorruptSampleError,
    Loader,
    open_source,
    preprocess,
    train_transform,
)
from aimv2.data import builtin as datasets

FAST = settings(max_examples=15, deadline=None)


def enc(image_size=16, patch_size=4, **kw):
    return aimv2.encoder_spec(
        width=8, depth=1, heads=2, patch_size=patch_size, image_size=image_size, **kw
    )


def png_bytes(color=(10, 20, 30), size=(12, 10), noise_seed=None) -> bytes:
    w, h = size
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = color
    if noise_seed is not None:
        arr = np.random.default_rng(noise_seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def corrupt_png() -> bytes:
    return png_bytes(noise_seed=99)[:60]  # a valid header, then cut short


@pytest.fixture
def caption_folder(tmp_path: Path) -> Path:
    root = tmp_path / "captions"
    (root / "sub").mkdir(parents=True)
    for i in range(6):
        folder = root / "sub" if i % 2 else root
        (folder / f"img{i}.png").write_bytes(png_bytes((i * 40, 0, 0), noise_seed=i))
        (folder / f"img{i}.txt").write_text(f"Picture number {i}\n")
    (root / "bad.png").write_bytes(corrupt_png())
    (root / "bad.txt").write_text("a broken picture")
    (root / "nocaption.png").write_bytes(png_bytes())
    (root / "lonely.txt").write_text("a caption without an image")
    return root


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    lines = []
    for i in range(4):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(png_bytes((0, i * 50, 0)))
        lines.append(json.dumps({"image": f"imgs/{i}.png", "caption": f"green {i}", "label": i}))
    absolute = tmp_path / "abs.png"
    absolute.write_bytes(png_bytes((1, 2, 3)))
    lines.append(json.dumps({"image": str(absolute), "caption": "absolute"}))
    lines.append("{not json")
    lines.append(json.dumps({"image": "imgs/0.png"}))  # no caption
    lines.append(json.dumps({"image": "imgs/0.png", "caption": "x", "label": "three"}))
    lines.append(json.dumps({"image": "imgs/missing.png", "caption": "gone"}))
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shard(path: Path, start: int, n: int, corrupt: int | None = None) -> Path:
    with tarfile.open(path, "w") as tf:
        for k in range(start, start + n):
            img = corrupt_png() if k == corrupt else png_bytes((k, k, k), noise_seed=k)
            add(tf, f"s{k:04d}.png", img)
            add(tf, f"s{k:04d}.txt", f"sample {k}".encode())
            add(tf, f"s{k:04d}.cls", str(k % 3).encode())
    return path


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    out = [write_shard(tmp_path / f"shard-{s:02d}.tar", 10 * s, 6) for s in range(4)]
    # shard 1: one corrupt image and one sample without a caption
    with tarfile.open(out[1], "w") as tf:
        for k in range(10, 16):
            add(tf, f"s{k:04d}.png", corrupt_png() if k == 12 else png_bytes(noise_seed=k))
            if k != 14:
                add(tf, f"s{k:04d}.txt", f"sample {k}".encode())
    return out


# ----------------------------------------------------------------------------- builtin


def test_digits_splits_are_fixed_and_disjoint():
    train = open_source("builtin:digits", split="train")
    held = open_source("builtin:digits", split="heldout")
    full = open_source("builtin:digits", split="all")
    assert (len(train), len(held), len(full)) == (1438, 359, 1797)
    tk = {train.key(i) for i in range(len(train))}
    hk = {held.key(i) for i in range(len(held))}
    assert not tk & hk and tk | hk == {full.key(i) for i in range(len(full))}
    # the held-out split must never change: pin its first members and a digest of all
    keys = [held.key(i) for i in range(len(held))]
    assert keys[:4] == ["digits/0003", "digits/0004", "digits/0007", "digits/0017"]
    assert hashlib.sha256(",".join(keys).encode()).hexdigest()[:16] == "bb5412fe3343b19b"


def test_digits_samples():
    src = open_source("builtin:digits", split="all")
    labels = [src[i].label for i in range(len(src))]
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    s = src[0]
    assert s.image.shape == (8, 8, 3) and s.image.dtype == np.uint8
    assert (s.image[..., 0] == s.image[..., 2]).all()
    values = np.unique(np.stack([src[i].image for i in range(50)]))
    assert values.min() == 0 and values.max() == 255
    assert set(values.tolist()) <= {(v * 255 + 8) // 16 for v in range(17)}
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    templates = set()
    for i in range(60):
        smp = src[i]
        tokens = smp.caption.split()
        assert words[smp.label] in tokens or str(smp.label) in tokens, smp.caption
        templates.add(smp.caption.replace(words[smp.label], "#").replace(str(smp.label), "#"))
    assert len(templates) >= 5  # captions vary


def test_shapes_deterministic_and_seeded():
    a = open_source("builtin:shapes?length=20", seed=3)
    b = open_source("builtin:shapes?length=20", seed=3)
    c = open_source("builtin:shapes?length=20", seed=4)
    assert all(np.array_equal(a[i].image, b[i].image) for i in range(20))
    assert [a[i].caption for i in range(20)] == [b[i].caption for i in range(20)]
    assert [a[i].caption for i in range(20)] != [c[i].caption for i in range(20)]
    held = open_source("builtin:shapes?length=20", split="heldout", seed=3)
    assert not {a.key(i) for i in range(20)} & {held.key(i) for i in range(20)}
    assert len(open_source("builtin:shapes?length=20", split="all")) == 40
    assert open_source("builtin:shapes?size=64&length=2")[1].image.shape == (64, 64, 3)


@FAST
@given(index=st.integers(0, 10_000), seed=st.integers(0, 5))
def test_shapes_caption_describes_the_image(index, seed):
    src = datasets.ShapesSource(seed=seed, size=32)
    sample, scene = src[index], src.scene(index)
    assert datasets.SHAPE_CLASSES[sample.label] == scene["shape"]
    for word in (scene["shape"], scene["colour"], scene["size"]):
        assert word in sample.caption
    img = sample.image.astype(np.int64)
    fg = np.abs(img - scene["background"]).sum(axis=2) > 60
    assert fg.sum() > 4
    ys, xs = np.nonzero(fg)
    cx, cy = xs.mean() / 32, ys.mean() / 32
    pos = scene["position"]
    if "left" in pos:
        assert cx < 0.45
    if "right" in pos:
        assert cx > 0.55
    if "top" in pos:
        assert cy < 0.45
    if "bottom" in pos:
        assert cy > 0.55
    if pos == "center":
        assert abs(cx - 0.5) < 0.1 and abs(cy - 0.5) < 0.1
    # the drawn area matches the shape's area at the drawn radius (in pixels)
    r = scene["radius"] * 32
    area = {
        "circle": math.pi,
        "square": 1.7**2,
        "diamond": 2.0,
        "triangle": 3 * math.sqrt(3) / 4,
        "hexagon": 3 * math.sqrt(3) / 2,
        "star": 5 * 0.45 * math.sin(math.radians(36)),
    }[scene["shape"]] * r**2
    colour = np.array(datasets._COLOURS[scene["colour"]]) - scene["background"]
    coverage = ((img - scene["background"]) @ colour / (colour @ colour)).sum()
    assert 0.85 * area < coverage < 1.15 * area
    assert scene["radius"] > 0.2 if scene["size"] == "large" else scene["radius"] < 0.15


def test_builtin_errors():
    with pytest.raises(ValueError, match="builtin:digits"):
        open_source("builtin:mnist")
    with pytest.raises(ValueError, match="split='valid'"):
        open_source("builtin:digits", split="valid")
    with pytest.raises(ValueError, match="unknown options"):
        open_source("builtin:shapes?colour=red")
    with pytest.raises(ValueError, match="size"):
        open_source("builtin:shapes?size=4")
    with pytest.raises(ValueError, match="positive integer"):
        open_source("builtin:shapes?length=-3")


# ----------------------------------------------------------------------------- files


def test_caption_folder(caption_folder: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="aimv2.data"):
        src = open_source(str(caption_folder))
    assert len(src) == 7  # 6 good pairs + the corrupt one (found only when read)
    assert src.unpaired == 1 and src.orphan_captions == 1 and src.skipped == 1
    keys = [src.key(i) for i in range(len(src))]
    assert "sub/img1" in keys and "img0" in keys
    samples = list(src)
    assert len(samples) == 6 and src.skipped == 2
    assert {s.caption for s in samples} == {f"Picture number {i}" for i in range(6)}
    assert all(s.label is None and s.image.shape == (10, 12, 3) for s in samples)
    assert "bad" in caplog.text
    bad = keys.index("bad")
    with pytest.raises(CorruptSampleError, match="bad"):
        src[bad]
    assert src.get(bad) is None


def test_folder_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_source(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images found"):
        open_source(str(empty))
    only_txt = tmp_path / "only_txt"
    only_txt.mkdir()
    (only_txt / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match="caption files .* but no images"):
        open_source(str(only_txt))
    only_img = tmp_path / "only_img"
    only_img.mkdir()
    (only_img / "a.png").write_bytes(png_bytes())
    with pytest.raises(ValueError, match="no caption files"):
        open_source(str(only_img))
    with pytest.raises(ValueError, match="held-out"):
        open_source(str(only_img), split="heldout")


def test_manifest(manifest: Path):
    confined = open_source(str(manifest))  # the absolute path is outside its folder
    assert len(confined) == 5 and confined.skipped == 4
    src = open_source(str(manifest), allow_outside=True)
    assert len(src) == 6 and src.skipped == 3  # bad JSON, no caption, bad label
    samples = list(src)
    assert [s.caption for s in samples] == ["green 0", "green 1", "green 2", "green 3", "absolute"]
    assert [s.label for s in samples] == [0, 1, 2, 3, None]
    assert samples[2].image[0, 0].tolist() == [0, 100, 0]
    assert src.skipped == 4  # + the missing image file
    empty = manifest.parent / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no usable lines"):
        open_source(str(empty))
    with pytest.raises(FileNotFoundError, match="gone.jsonl"):
        open_source(str(manifest.parent / "gone.jsonl"))


def test_imagefolder(tmp_path: Path):
    for cls, n in (("zebra", 2), ("ant", 3)):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "ds" / cls / f"{i}.png").write_bytes(png_bytes((i, 0, 0)))
    src = open_source(f"imagefolder:{tmp_path / 'ds'}")
    assert src.classes == ("ant", "zebra")
    assert [(s.label, s.caption) for s in src] == [(0, "ant")] * 3 + [(1, "zebra")] * 2
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(png_bytes())
    with pytest.raises(ValueError, match="no class subfolders"):
        open_source(f"imagefolder:{tmp_path / 'flat'}")
    with pytest.raises(FileNotFoundError, match="nope"):
        open_source(f"imagefolder:{tmp_path / 'nope'}")


def test_tar_shards(shards: list[Path], tmp_path: Path):
    pattern = str(tmp_path / "shard-{00..03}.tar")
    src = open_source(pattern)
    samples = list(src)
    assert len(samples) == 22 and src.skipped == 2
    assert [s.key for s in samples[:3]] == ["s0000", "s0001", "s0002"]
    assert samples[0].caption == "sample 0" and samples[4].label == 1
    assert "s0012" not in {s.key for s in samples} and "s0014" not in {s.key for s in samples}
    globbed = open_source(str(tmp_path / "shard-*.tar"))
    listed = open_source([str(p) for p in shards])
    assert globbed.shards == listed.shards == src.shards
    parts = [src.shard_split(r, 2) for r in range(2)]
    keys = [{s.key for s in p} for p in parts]
    assert not keys[0] & keys[1] and keys[0] | keys[1] == {s.key for s in samples}
    with pytest.raises(ValueError, match="world_size=5"):
        src.shard_split(0, 5)
    with pytest.raises(ValueError, match="rank=2"):
        src.shard_split(2, 2)
    with pytest.raises(FileNotFoundError, match="shard-04.tar"):
        open_source(str(tmp_path / "shard-{03..04}.tar"))


def test_eval_stream_counts_trailing_corrupt_samples(tmp_path: Path):
    write_shard(tmp_path / "a.tar", 0, 3, corrupt=2)
    loader = Loader(str(tmp_path / "a.tar"), enc(8), None, 2, seed=0, train=False)
    assert keys_of(list(loader)) == [["s0000", "s0001"]] and loader.skipped == 1


def test_truncated_shard_is_counted(tmp_path: Path):
    good = write_shard(tmp_path / "a.tar", 0, 5)
    data = good.read_bytes()
    (tmp_path / "b.tar").write_bytes(data[: len(data) // 2])
    src = open_source(str(tmp_path / "{a,b}.tar"))
    samples = list(src)
    assert 5 <= len(samples) < 10 and src.skipped >= 1


# ----------------------------------------------------------------------------- transforms


def test_preprocess_constant_image_matches_hand_computation():
    spec = enc(16)
    img = np.empty((20, 30, 3), np.uint8)
    img[:] = (200, 100, 50)
    x = preprocess(img, spec)
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32
    mean, std = np.array(spec.preprocess.mean), np.array(spec.preprocess.std)
    expect = (np.array([200, 100, 50]) / 255.0 - mean) / std
    np.testing.assert_allclose(x[0], np.broadcast_to(expect[:, None, None], (3, 16, 16)), atol=1e-6)
    imagenet = enc(16, preprocess=aimv2.PreprocessSpec(mean=(0.5,) * 3, std=(0.25,) * 3))
    np.testing.assert_allclose(preprocess(img, imagenet)[0, 1], (100 / 255 - 0.5) / 0.25, atol=1e-6)


def test_preprocess_resize_and_center_crop():
    spec = enc(16)
    img = np.random.default_rng(0).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    ref = Image.fromarray(img).resize((32, 16), Image.Resampling.BICUBIC).crop((8, 0, 24, 16))
    expect = (np.asarray(ref) / 255.0 - spec.preprocess.mean) / spec.preprocess.std
    np.testing.assert_allclose(preprocess(img, spec)[0], expect.transpose(2, 0, 1), atol=1e-5)
    # resize=0: no resize, only the centred crop (wide and tall images)
    white = preprocess(np.full((16, 16, 3), 255, np.uint8), spec)
    no_resize = enc(16, preprocess=aimv2.PreprocessSpec(resize=0))
    bands = np.zeros((16, 48, 3), np.uint8)
    bands[:, 16:32] = 255
    assert np.allclose(preprocess(bands, no_resize), white)
    assert np.allclose(preprocess(np.ascontiguousarray(bands.transpose(1, 0, 2)), no_resize), white)
    with pytest.raises(ValueError, match="smaller than the crop"):
        preprocess(
            np.zeros((8, 8, 3), np.uint8), enc(16, preprocess=aimv2.PreprocessSpec(resize=0))
        )


def test_preprocess_inputs_agree(tmp_path: Path):
    spec = enc(8)
    img = np.random.default_rng(1).integers(0, 256, (11, 13, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    ref = preprocess(img, spec)
    for other in (Image.fromarray(img), path, str(path), [img], img[None]):
        np.testing.assert_array_equal(preprocess(other, spec), ref)
    assert preprocess([img, img, img], spec).shape == (3, 3, 8, 8)
    gray = preprocess(img[:, :, 0], spec)
    assert np.allclose(gray[0, 0], gray[0, 0])  # (H, W) input accepted
    with pytest.raises(TypeError, match="uint8"):
        preprocess(img.astype(np.float32), spec)
    with pytest.raises(TypeError, match="EncoderSpec"):
        preprocess(img, spec.preprocess)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        preprocess(tmp_path / "missing.png", spec)
    with pytest.raises(ValueError, match="empty"):
        preprocess([], spec)


def test_preprocess_native_resolution():
    spec = enc(None)
    img = np.zeros((21, 30, 3), np.uint8)
    assert preprocess(img, spec).shape == (1, 3, 20, 28)
    native = enc(None, preprocess=aimv2.PreprocessSpec(resize=9))
    assert preprocess(img, native).shape == (1, 3, 8, 12)
    with pytest.raises(ValueError, match="one size"):
        preprocess([img, np.zeros((8, 8, 3), np.uint8)], spec)
    with pytest.raises(ValueError, match="native-resolution"):
        train_transform(img, spec, np.random.default_rng(0))


def test_train_transform_deterministic():
    spec = enc(16)
    img = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    runs = [train_transform(img, spec, np.random.default_rng(s)) for s in (5, 5, 6, 7)]
    assert runs[0].shape == (3, 16, 16) and runs[0].dtype == np.float32
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2]) or not np.array_equal(runs[0], runs[3])


def test_train_transform_full_crop_is_preprocess_or_its_flip():
    spec = enc(16)
    img = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    plain = preprocess(img, spec)[0]
    flips = []
    for s in range(20):
        out = train_transform(img, spec, np.random.default_rng(s), scale=(1, 1), ratio=(1, 1))
        if np.allclose(out, plain, atol=1e-6):
            flips.append(False)
        else:
            np.testing.assert_allclose(out, plain[:, :, ::-1], atol=1e-6)
            flips.append(True)
    assert 0 < sum(flips) < 20
    never = train_transform(
        img, spec, np.random.default_rng(0), scale=(1, 1), ratio=(1, 1), hflip=False
    )
    np.testing.assert_allclose(never, plain, atol=1e-6)


@FAST
@given(
    h=st.integers(1, 50),
    w=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
    lo=st.floats(0.05, 1.0),
)
def test_train_transform_any_image(h, w, seed, lo):
    spec = enc(8)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    a = train_transform(img, spec, np.random.default_rng(seed), scale=(lo, 1.0))
    b = train_transform(img, spec, np.random.default_rng(seed), scale=(lo, 1.0))
    assert a.shape == (3, 8, 8) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_train_transform_errors():
    spec, img = enc(8), np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="scale"):
        train_transform(img, spec, np.random.default_rng(0), scale=(0.9, 0.1))
    with pytest.raises(ValueError, match="ratio"):
        train_transform(img, spec, np.random.default_rng(0), ratio=(0, 1))
    with pytest.raises(TypeError, match="rng"):
        train_transform(img, spec, 0)


# ----------------------------------------------------------------------------- loader


def keys_of(batches):
    return [b["keys"] for b in batches]


def take(loader, n):
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            break
    return out


def test_loader_deterministic_for_a_seed():
    spec = enc(8)
    a = take(Loader("builtin:digits", spec, None, 8, seed=1), 4)
    b = take(Loader("builtin:digits", spec, None, 8, seed=1, num_workers=0), 4)
    c = take(Loader("builtin:digits", spec, None, 8, seed=2), 4)
    assert keys_of(a) == keys_of(b) != keys_of(c)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["images"], y["images"])
        np.testing.assert_array_equal(x["labels"], y["labels"])
    first = a[0]
    assert first["images"].shape == (8, 3, 8, 8) and first["images"].dtype == np.float32
    assert first["labels"].dtype == np.int64 and first["tokens"] is None
    assert [b["step"] for b in a] == [0, 1, 2, 3]


def test_loader_resume_equals_uninterrupted():
    spec = enc(8)
    full = take(Loader("builtin:shapes?size=16&length=30", spec, None, 4, seed=7), 12)
    resumed = take(
        Loader("builtin:shapes?size=16&length=30", spec, None, 4, seed=7, start_step=9), 3
    )
    assert keys_of(resumed) == keys_of(full[9:])
    for x, y in zip(resumed, full[9:], strict=True):
        np.testing.assert_array_equal(x["images"], y["images"])
        assert x["step"] == y["step"]


def test_loader_augmentation_depends_on_step():
    spec = enc(8)
    loader = Loader("builtin:shapes?size=32&length=1", spec, None, 1, seed=0, num_workers=0)
    images = [loader.batch(step)["images"][0] for step in range(5)]  # one scene, 5 draws
    assert len({im.tobytes() for im in images}) >= 4


def test_loader_epochs_are_permutations():
    spec = enc(8)
    loader = Loader("builtin:shapes?size=8&length=24", spec, None, 4, seed=0, num_workers=0)
    epoch0 = sum((loader.batch(s)["keys"] for s in range(6)), [])
    epoch1 = sum((loader.batch(s)["keys"] for s in range(6, 12)), [])
    assert sorted(epoch0) == sorted(epoch1) == sorted(f"shapes/0/{i}" for i in range(24))
    assert epoch0 != epoch1


@FAST
@given(
    batch=st.integers(1, 4),
    step=st.integers(0, 400),
    world=st.integers(2, 3),
    seed=st.integers(0, 3),
)
def test_loader_rank_split(batch, step, world, seed):
    spec = enc(8)
    src = open_source("builtin:digits")
    one = Loader(src, spec, None, batch * world, seed=seed, num_workers=0).batch(step)
    ranks = [
        Loader(src, spec, None, batch, seed=seed, num_workers=0, rank=r, world_size=world).batch(
            step
        )
        for r in range(world)
    ]
    assert sum((r["keys"] for r in ranks), []) == one["keys"]
    np.testing.assert_array_equal(np.concatenate([r["images"] for r in ranks]), one["images"])


def test_loader_rank_split_iterated():
    spec = enc(8)
    one = take(Loader("builtin:digits", spec, None, 6, seed=3), 2)
    r0 = take(Loader("builtin:digits", spec, None, 3, seed=3, rank=0, world_size=2), 2)
    r1 = take(Loader("builtin:digits", spec, None, 3, seed=3, rank=1, world_size=2), 2)
    for b in range(2):
        assert r0[b]["keys"] + r1[b]["keys"] == one[b]["keys"]
        assert not set(r0[b]["keys"]) & set(r1[b]["keys"])


def test_loader_skips_corrupt_samples(caption_folder: Path):
    spec = enc(8)
    src = open_source(str(caption_folder))
    batches = take(Loader(src, spec, None, 4, seed=0), 6)  # 24 draws over 7 entries
    assert all(len(b["keys"]) == 4 for b in batches)
    seen = {k for b in batches for k in b["keys"]}
    assert "bad" not in seen and len(seen) == 6
    loader = Loader(src, spec, None, 4, seed=0)
    take(loader, 6)
    assert loader.skipped >= 3  # "bad" is drawn once per epoch, 3+ epochs
    again = Loader(src, spec, None, 4, seed=0)
    assert keys_of(take(again, 6)) == keys_of(batches) and again.skipped == loader.skipped


def test_loader_eval_single_pass(manifest: Path):
    spec = enc(8)
    src = open_source(str(manifest), allow_outside=True)
    loader = Loader(src, spec, None, 4, seed=0, train=False)
    batches = list(loader)
    assert [b["keys"] for b in batches] == [
        ["data.jsonl:1", "data.jsonl:2", "data.jsonl:3", "data.jsonl:4"],
        ["data.jsonl:5"],
    ]
    assert batches[1]["labels"].tolist() == [-1] and loader.skipped == 1
    ranks = [
        list(Loader(src, spec, None, 2, seed=0, train=False, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert sorted(k for r in ranks for b in r for k in b["keys"]) == sorted(
        k for b in batches for k in b["keys"]
    )
    np.testing.assert_allclose(
        batches[0]["images"][2], preprocess(manifest.parent / "imgs" / "2.png", spec)[0]
    )


def test_loader_tokens(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AIMV2_CACHE", str(tmp_path / "cache"))
    from aimv2.text import builtin_tokenizer

    tok = builtin_tokenizer("builtin:digits", 48)
    batch = next(iter(Loader("builtin:digits", enc(8), tok, 5, seed=0, context_length=64)))
    assert batch["tokens"].shape == (5, 64) and batch["tokens"].dtype == np.int64
    captions = {s.key: s.caption for s in open_source("builtin:digits", split="all")}
    assert tok.decode(batch["tokens"]) == [captions[k] for k in batch["keys"]]
    labels = {s.key: s.label for s in open_source("builtin:digits", split="all")}
    assert batch["labels"].tolist() == [labels[k] for k in batch["keys"]]


def test_loader_tar_stream(shards: list[Path], tmp_path: Path):
    spec = enc(8)
    pattern = str(tmp_path / "shard-*.tar")
    full = take(Loader(pattern, spec, None, 5, seed=0), 7)  # 22 readable: wraps an epoch
    assert all(len(b["keys"]) == 5 for b in full)
    order = [s.key for s in open_source(pattern)]
    first = sum(keys_of(full), [])[:22]  # a pass: every readable sample once, shuffled
    assert sorted(first) == sorted(order) and first != order
    in_order = take(Loader(pattern, spec, None, 5, seed=0, stream_shuffle=0), 5)
    assert sum(keys_of(in_order), [])[:22] == order
    resumed = take(Loader(pattern, spec, None, 5, seed=0, start_step=3), 4)
    assert keys_of(resumed) == keys_of(full[3:])
    for x, y in zip(resumed, full[3:], strict=True):
        np.testing.assert_array_equal(x["images"], y["images"])
    counted = Loader(pattern, spec, None, 5, seed=0, stream_shuffle=0)  # bad ones in 1-16
    take(counted, 3)
    assert counted.skipped == 2
    r = [take(Loader(pattern, spec, None, 3, seed=0, rank=k, world_size=2), 2) for k in (0, 1)]
    k0, k1 = (set(sum(keys_of(x), [])) for x in r)
    assert not k0 & k1
    ev = list(Loader(pattern, spec, None, 5, seed=0, train=False))
    assert sum(keys_of(ev), []) == order and len(ev[-1]["keys"]) == 2


def test_loader_errors():
    spec = enc(8)
    with pytest.raises(ValueError, match="batch_size"):
        Loader("builtin:digits", spec, None, 0, seed=0)
    with pytest.raises(ValueError, match="rank=2"):
        Loader("builtin:digits", spec, None, 2, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed"):
        Loader("builtin:digits", spec, None, 2, seed=-1)
    with pytest.raises(ValueError, match="image_size"):
        Loader("builtin:digits", enc(None), None, 2, seed=0)
    with pytest.raises(TypeError, match="tokenizer"):
        Loader("builtin:digits", spec, object(), 2, seed=0)


def test_tar_stream_passes_are_reshuffled_and_reproducible(tmp_path: Path):
    spec = enc(8)
    for s in range(4):
        write_shard(tmp_path / f"p-{s}.tar", 10 * s, 5)
    pattern = str(tmp_path / "p-*.tar")
    order = [s.key for s in open_source(pattern)]

    def passes(**kw):
        keys = sum(keys_of(take(Loader(pattern, spec, None, 4, seed=0, **kw), 15)), [])
        return [keys[i : i + 20] for i in (0, 20, 40)]

    got = passes(stream_shuffle=1000)
    for one in got:
        assert sorted(one) == sorted(order)  # each pass: every sample exactly once
    assert got[0] != order and got[1] != got[0] and got[2] != got[1]
    assert got == passes(stream_shuffle=1000, num_workers=2)
    # a buffer of 1 keeps the samples of a shard together; the shards still move
    for one in passes(stream_shuffle=1):
        runs = [one[i : i + 5] for i in range(0, 20, 5)]
        assert all(r == [f"s{int(r[0][1:]) + j:04d}" for j in range(5)] for r in runs)
    firsts = [tuple(one[::5]) for one in passes(stream_shuffle=1)]
    assert all(k.endswith("0") for f in firsts for k in f) and len(set(firsts)) > 1
    with pytest.raises(ValueError, match="stream_shuffle=-1: expected"):
        Loader(pattern, spec, None, 4, seed=0, stream_shuffle=-1)


def test_tar_stream_resumes_from_its_position_without_replaying(
    shards: list[Path], tmp_path: Path, replayed: list[int]
):
    spec = enc(8)
    pattern = str(tmp_path / "shard-*.tar")
    kw = dict(seed=0, num_workers=0, stream_shuffle=7)
    full = take(Loader(pattern, spec, None, 5, **kw), 12)  # 22 readable a pass: 2.7 passes
    positions = [b["stream_position"] for b in full]
    assert positions[0][0] == 0 and positions[-1][0] == 2  # (pass, items) moves on
    for s in (1, 4, 5, 9, 11):
        got = take(
            Loader(pattern, spec, None, 5, start_step=s, stream_position=positions[s - 1], **kw),
            12 - s,
        )
        assert keys_of(got) == keys_of(full[s:]) and [b["step"] for b in got] == list(range(s, 12))
        for x, y in zip(got, full[s:], strict=True):
            np.testing.assert_array_equal(x["images"], y["images"])
        assert [b["stream_position"] for b in got] == positions[s:]
    assert replayed == []
    kw2 = {**kw, "num_workers": 2}
    got = take(Loader(pattern, spec, None, 5, start_step=5, stream_position=positions[4], **kw2), 7)
    assert keys_of(got) == keys_of(full[5:])
    take(Loader(pattern, spec, None, 5, start_step=4, **kw), 1)  # without it: replayed
    assert sorted(set(replayed)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="stream_position=.*expected \\(pass, items\\)"):
        Loader(pattern, spec, None, 5, seed=0, stream_position=(1,))
    with pytest.raises(ValueError, match="stream_position: only a training loader over tar"):
        Loader("builtin:digits", spec, None, 5, seed=0, stream_position=(0, 3))
    assert Loader("builtin:digits", spec, None, 2, seed=0).batch(0)["stream_position"] is None
