"""The hostile-input catalogue (issue 15), data: image modes, files that block, paths
that escape, decompression bombs, sources with nothing readable. Each test failed before
its fix."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import aimv2
from aimv2.data import (
    CorruptSampleError,
    Loader,
    UnreadableSourceError,
    decode_for_crop,
    open_source,
    preprocess,
    set_max_pixels,
)
from aimv2.data.images import decode_image


def _encoded(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kw)
    return buf.getvalue()


def _finishes(fn, seconds: float = 10.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it blocks."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            out["error"] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"blocked for more than {seconds} s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


# --------------------------------------------------------------------------- image modes


def test_16_bit_grey_pngs_are_scaled_by_their_range_not_saturated():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 65536, (32, 32), dtype=np.uint16)
    data = _encoded(x, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    got = decode_image(data)[:, :, 0].astype(np.int64)
    want = np.rint(x / 257.0).astype(np.int64)
    assert np.abs(got - want).max() <= 1  # was: 99.8% of pixels 255
    assert decode_image(_encoded(np.full((2, 2), 32768, np.uint16), "PNG"))[0, 0, 0] == 128
    # the training path (crop + resize of the encoded image) agrees
    crop = decode_for_crop(data, (0, 0, 32, 32), (32, 32))
    assert np.abs(np.asarray(crop)[:, :, 0].astype(np.int64) - want).max() <= 1


def test_float_tiffs_are_read_from_0_1_and_out_of_range_floats_refused_by_name():
    x = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    got = decode_image(_encoded(x, "TIFF"))[:, :, 0]
    assert np.array_equal(got, np.rint(x * 255).astype(np.uint8))  # was: all black
    with pytest.raises(CorruptSampleError, match=r"float \('F'\) image .* values 0\.\.3"):
        decode_image(_encoded(x * 3, "TIFF"))
    nan = x.copy()
    nan[0, 0] = np.nan
    with pytest.raises(CorruptSampleError, match="non-finite"):
        decode_image(_encoded(nan, "TIFF"))


def test_32_bit_integer_images_are_refused_by_mode():
    im = Image.fromarray(np.full((4, 4), 70000, np.int32))
    assert im.mode == "I"
    with pytest.raises(CorruptSampleError, match="PIL mode 'I'"):
        preprocess(im, aimv2.presets.get("aimv2-test-tiny").encoder)


def test_a_pil_image_of_16_bits_given_to_preprocess_is_scaled_too():
    spec = aimv2.presets.get("aimv2-test-tiny").encoder
    grey16 = Image.fromarray(np.full((16, 16), 65535, np.uint16))
    white = Image.fromarray(np.full((16, 16, 3), 255, np.uint8))
    assert np.array_equal(preprocess(grey16, spec), preprocess(white, spec))


# --------------------------------------------------------------------------- files that block


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.png").write_bytes(_encoded(np.full((8, 8, 3), 40 * i, np.uint8), "PNG"))
        (d / f"{i}.txt").write_text(f"grey {i}")
    return d


def test_a_fifo_named_like_an_image_is_left_out_of_a_caption_folder(folder):
    os.mkfifo(folder / "trap.jpg")
    (folder / "trap.txt").write_text("never read")
    src = _finishes(lambda: open_source(folder))
    assert sorted(s.caption for s in _finishes(lambda: list(src))) == [
        "grey 0",
        "grey 1",
        "grey 2",
    ]


def test_a_fifo_caption_file_is_a_corrupt_sample_not_a_hang(folder):
    os.remove(folder / "1.txt")
    os.mkfifo(folder / "1.txt")  # listed as a caption only after the scan: not a regular file
    src = _finishes(lambda: open_source(folder))
    assert len(src) == 2  # the FIFO is not listed


def test_manifest_lines_naming_devices_or_fifos_are_skipped_not_read(folder):
    os.mkfifo(folder / "pipe.png")
    lines = [
        {"image": "0.png", "caption": "fine"},
        {"image": "/dev/stdin", "caption": "absolute"},
        {"image": "pipe.png", "caption": "a fifo inside the folder"},
    ]
    (folder / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    src = open_source(folder / "m.jsonl")
    assert len(src) == 2 and src.skipped == 1  # /dev/stdin: outside the folder
    assert [s.caption for s in _finishes(lambda: list(src))] == ["fine"]
    assert src.skipped == 2  # the FIFO, found not regular when read
    loose = open_source(folder / "m.jsonl", allow_outside=True)
    assert len(loose) == 3
    with pytest.raises(CorruptSampleError, match="'/dev/stdin' is not a regular file"):
        _finishes(lambda: loose[1])


def test_manifest_paths_are_confined_to_its_folder_unless_allowed(tmp_path, folder):
    outside = tmp_path / "secret.png"
    outside.write_bytes(_encoded(np.zeros((8, 8, 3), np.uint8), "PNG"))
    lines = [
        {"image": "0.png", "caption": "inside"},
        {"image": "sub/../1.png", "caption": "inside, with a detour"},
        {"image": "../secret.png", "caption": "climbs out"},
        {"image": str(outside), "caption": "absolute"},
    ]
    (folder / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    src = open_source(folder / "m.jsonl")
    assert [src.key(i) for i in range(len(src))] == ["m.jsonl:1", "m.jsonl:2"]
    assert src.skipped == 2
    assert len(open_source(folder / "m.jsonl", allow_outside=True)) == 4


# --------------------------------------------------------------------------- decompression bombs


@pytest.fixture
def bomb() -> bytes:
    """A 12000 x 12000 PNG of a few kilobytes: 144 M pixels once decoded."""
    big = Image.new("L", (12000, 12000))
    buf = io.BytesIO()
    big.save(buf, "PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(bomb):
    assert len(bomb) < 200_000
    t = time.perf_counter()
    with pytest.raises(CorruptSampleError, match=r"12000x12000 = 144,000,000 pixels .* limit"):
        decode_image(bomb)
    with pytest.raises(CorruptSampleError, match="over the limit"):
        decode_for_crop(bomb, (0, 0, 6000, 6000), (16, 16))
    assert time.perf_counter() - t < 2.0  # not decoded (that took 23 s and 1.9 GB)


def test_the_pixel_limit_is_configurable_and_jpegs_over_it_decode_reduced():
    x = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg, png = _encoded(x, "JPEG", quality=95), _encoded(x, "PNG")
    try:
        set_max_pixels(300)  # 64 x 64 = 4096: a JPEG at 1/4 is 256 pixels
        assert decode_image(jpeg).shape == (16, 16, 3)
        with pytest.raises(CorruptSampleError, match="4,096 pixels is over the limit of 300"):
            decode_image(png)
        crop = decode_for_crop(jpeg, (0, 0, 64, 64), (8, 8))
        assert crop.size == (8, 8)
    finally:
        set_max_pixels(None)
    assert decode_image(png).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="limit=0"):
        set_max_pixels(0)


# --------------------------------------------------------------------------- nothing readable


@pytest.mark.parametrize("workers", [0, 2])
def test_a_source_with_nothing_readable_says_so_with_the_first_reasons(tmp_path, workers):
    d = tmp_path / "broken"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.png").write_bytes(b"not an image")
        (d / f"{i}.txt").write_text("x")
    spec = aimv2.presets.get("aimv2-test-tiny").encoder
    loader = Loader(open_source(d), spec, None, 2, seed=0, num_workers=workers)
    with pytest.raises(
        UnreadableSourceError,
        match=r"could be read \(first: \d: image '.*\.png': unreadable: not an image format",
    ):
        next(iter(loader))
    loader.close()


def test_a_truncated_image_file_is_named_in_the_error(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "cut.jpg"
    path.write_bytes(_encoded(x, "JPEG")[:600])
    with pytest.raises(CorruptSampleError, match=r"image '.*cut\.jpg': unreadable \(OSError"):
        decode_image(path)
    spec = aimv2.presets.get("aimv2-test-tiny").encoder
    with pytest.raises(CorruptSampleError, match=r"cut\.jpg"):
        preprocess([str(path)], spec)
