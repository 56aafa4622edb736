"""Reduced JPEG decoding: exactly the full path when it does not reduce, within a stated
tolerance of it when it does, reproducible, and a fraction of the cost."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

import aimv2
from aimv2.bench.data import make_photo
from aimv2.data import CorruptSampleError, decode_for_crop, train_transform, transform_encoded
from aimv2.data.decode import encoded_size, reduction_for
from aimv2.data.images import decode_image as _decode_image
from aimv2.data.transforms import _random_resized_box


def enc(image_size):
    return aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=image_size)


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return encode(make_photo(3, (96, 64)), exif=exif.tobytes())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "rotated"])
def test_without_reduction_it_is_train_transform_of_the_decoded_image(fmt):
    data = rotated_jpeg() if fmt == "rotated" else encode(make_photo(1, (90, 70)), fmt)
    if fmt == "rotated":
        assert encoded_size(data) == (64, 96) == _decode_image(data).shape[1::-1]
    for size, seed in ((16, 0), (32, 1), (64, 2)):
        spec = enc(size)
        want = train_transform(_decode_image(data), spec, np.random.default_rng(seed))
        got = transform_encoded(data, spec, np.random.default_rng(seed), reduce=False)
        np.testing.assert_array_equal(got, want)
        if fmt == "PNG":  # nothing to reduce: the same pixels either way
            again = transform_encoded(data, spec, np.random.default_rng(seed))
            np.testing.assert_array_equal(again, want)


def _diffs(target: int, photos: int = 12, crops: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """|reduced − full| decode+bicubic, and |bicubic − bilinear| after a full decode, over
    random crops of 640x480 photos, in 0–255 levels."""
    reduced, filters = [], []
    for p in range(photos):
        data = encode(make_photo(p), quality=90)
        rng = np.random.default_rng(p)
        for _ in range(crops):
            box = _random_resized_box(640, 480, rng, (0.4, 1.0), (3 / 4, 4 / 3))
            size = (target, target)
            a = np.asarray(decode_for_crop(data, box, size), np.int16)
            b = np.asarray(decode_for_crop(data, box, size, reduce=False), np.int16)
            c = np.asarray(decode_for_crop(data, box, size, "bilinear", reduce=False), np.int16)
            reduced.append(np.abs(a - b).ravel())
            filters.append(np.abs(b - c).ravel())
    return np.concatenate(reduced), np.concatenate(filters)


@pytest.mark.parametrize("target", [16, 56, 224])
def test_reduced_decode_matches_full_decode_within_a_filter_choice(target):
    # Tolerance: the reduced path (libjpeg's scaled IDCT, then bicubic) and the full one
    # (bicubic with antialiasing over the full-size pixels) are two area filters of the
    # same image; they must differ by less than the choice between bicubic and bilinear
    # interpolation, which the spec leaves free (preprocess.interpolation) — and by
    # little in absolute terms: mean under 1 level, 99th percentile at most 6 of 255.
    # Measured: reduced 16 px 0.40 / 4, 56 px 0.45 / 4, 224 px 0.12 / 2 (mean / p99);
    # bicubic vs bilinear 1.82 / 12, 0.68 / 8, 0.35 / 3. (PIL's own fast path,
    # resize(reducing_gap=2), differs from bicubic by 0.52 / 4 at 16 px.)
    reduced, filters = _diffs(target)
    assert reduced.mean() < 1.0 and np.percentile(reduced, 99) <= 6
    assert reduced.mean() < filters.mean()
    if target == 16:  # every crop of a 640x480 photo reduces by 8 for 16 px
        assert reduced.mean() > 0


def test_reduced_decode_is_reproducible_and_a_fraction_of_the_cost():
    big = encode(make_photo(7, (1000, 750)).resize((4000, 3000)), quality=90)
    box, size = (500, 400, 2400, 2000), (224, 224)
    assert reduction_for(2400, 2000, 224, 224) == 8
    first = np.asarray(decode_for_crop(big, box, size))
    np.testing.assert_array_equal(np.asarray(decode_for_crop(big, box, size)), first)

    def best(reduce: bool) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            decode_for_crop(big, box, size, reduce=reduce)
            times.append(time.perf_counter() - t0)
        return min(times)

    assert best(True) < 0.5 * best(False)


def test_reduction_for_and_errors():
    assert reduction_for(448, 448, 224, 224) == 2
    assert reduction_for(447, 1000, 224, 224) == 1
    assert reduction_for(128, 130, 16, 16) == 8
    with pytest.raises(CorruptSampleError, match="unreadable"):
        decode_for_crop(encode(make_photo(0, (64, 48)))[:300], (0, 0, 32, 32), (8, 8))
    with pytest.raises(ValueError, match="box="):
        decode_for_crop(encode(make_photo(0, (64, 48))), (40, 0, 32, 32), (8, 8))
    with pytest.raises(CorruptSampleError):
        transform_encoded(b"not an image", enc(16), np.random.default_rng(0))
