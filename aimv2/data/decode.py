"""Decoding no more pixels than a crop needs, and the training transform of an image that
is still encoded.

A JPEG can be decoded at 1/2, 1/4 or 1/8 of its size for a fraction of a full decode
(libjpeg scales in the DCT domain: no full-size inverse transform, colour conversion or
upsampling). Before a downscale that is nearly free quality-wise: a random crop of a
4000-px photo resized to 224 px never needs the full-size pixels.
:func:`decode_for_crop` picks the largest reduction that still leaves the crop at least
as large as its target, so nothing is ever upsampled that the full path would not
upsample; other formats, and crops too small to reduce, take exactly the full path
(decode, crop, resize), pixel for pixel.

The difference from a full decode followed by the same resize is the difference
between two approximations of the same area filter (libjpeg's scaled inverse DCT, and
the antialiasing of the bicubic resize); ``tests/test_data_decode.py`` bounds it.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

from ..specs import EncoderSpec
from .images import CorruptSampleError, open_image, pixel_reduction, to_rgb
from .transforms import _RESAMPLE, _check_range, _check_spec, _normalize, _random_resized_box

__all__ = ["REDUCTIONS", "encoded_size", "reduction_for", "decode_for_crop", "transform_encoded"]

REDUCTIONS = (8, 4, 2)  # the scales libjpeg decodes at, largest first
_ORIENTATION = 0x0112  # EXIF tag
_SWAPS = (5, 6, 7, 8)  # orientations that exchange width and height


class _BoxError(ValueError):
    """A crop box outside the image: the caller's mistake, not a corrupt file."""


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # a broken EXIF block: decode as stored, as exif_transpose would
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def encoded_size(data: bytes | str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an encoded image as displayed (EXIF rotation applied), read
    from its header without decoding the pixels.

    Example:
        >>> import io, numpy as np
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(buf, "JPEG")
        >>> encoded_size(buf.getvalue())
        (40, 30)
    """
    with open_image(data) as im:
        w, h = im.size
        return (h, w) if _orientation(im) in _SWAPS else (w, h)


def reduction_for(box_w: int, box_h: int, target_w: int, target_h: int) -> int:
    """The largest JPEG reduction (8, 4, 2, else 1) that keeps a ``box_w × box_h`` crop at
    least ``target_w × target_h``.

    Example:
        >>> reduction_for(450, 400, 224, 224), reduction_for(450, 400, 16, 16)
        (1, 8)
    """
    for s in REDUCTIONS:
        if box_w >= s * target_w and box_h >= s * target_h:
            return s
    return 1


def decode_for_crop(
    data: bytes | str | os.PathLike,
    box: tuple[int, int, int, int],
    size: tuple[int, int],
    interpolation: str = "bicubic",
    *,
    reduce: bool = True,
) -> Image.Image:
    """Decode the region ``box`` = (left, top, width, height) of an encoded image (in its
    displayed orientation) resized to ``size`` = (width, height), as an RGB PIL image.

    With ``reduce``, a JPEG whose crop is at least twice the target on both sides is
    decoded at 1/2, 1/4 or 1/8 scale (:func:`reduction_for`) and the box resized from the
    reduced image; otherwise (and for any other format) the image is decoded in full,
    cropped and resized — the same pixels as :func:`aimv2.data.train_transform` on the
    decoded image. Errors in the file raise :class:`~aimv2.data.CorruptSampleError`.

    Example:
        >>> import io, numpy as np
        >>> from PIL import Image
        >>> img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        >>> buf = io.BytesIO(); Image.fromarray(img).save(buf, "JPEG")
        >>> small = decode_for_crop(buf.getvalue(), (100, 50, 400, 400), (16, 16))
        >>> full = decode_for_crop(buf.getvalue(), (100, 50, 400, 400), (16, 16), reduce=False)
        >>> small.size, full.size
        ((16, 16), (16, 16))
    """
    try:
        with open_image(data) as im:
            return _decode_open(im, box, size, interpolation, reduce)
    except (_BoxError, CorruptSampleError):
        raise
    except Exception as err:
        raise CorruptSampleError(f"unreadable image: {type(err).__name__}: {err}") from err


def _decode_open(
    im: Image.Image,
    box: tuple[int, int, int, int],
    size: tuple[int, int],
    interpolation: str,
    reduce: bool,
    orientation: int | None = None,
) -> Image.Image:
    """:func:`decode_for_crop` of an image opened (not loaded) by the caller."""
    left, top, cw, ch = box
    tw, th = size
    resample = _RESAMPLE[interpolation]
    if orientation is None:
        orientation = _orientation(im)
    raw_w, raw_h = im.size
    ow, oh = (raw_h, raw_w) if orientation in _SWAPS else (raw_w, raw_h)
    if not (0 <= left and 0 <= top and 0 < cw and 0 < ch) or (left + cw > ow or top + ch > oh):
        raise _BoxError(
            f"box={box!r}: expected (left, top, width, height) inside the {ow}x{oh} image"
        )
    s = reduction_for(cw, ch, tw, th) if reduce and im.format == "JPEG" else 1
    s = max(s, pixel_reduction(im))  # an image over the pixel limit: reduced, or refused
    if s > 1:
        im.draft("RGB", (raw_w // s, raw_h // s))
    im.load()
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    rgb = to_rgb(im)
    if rgb.width <= 0 or rgb.height <= 0:
        raise CorruptSampleError(f"decoded image has size {rgb.size}")
    if rgb.size == (ow, oh):  # not reduced: exactly the full path
        return rgb.crop((left, top, left + cw, top + ch)).resize((tw, th), resample)
    fx, fy = ow / rgb.width, oh / rgb.height
    region = (left / fx, top / fy, (left + cw) / fx, (top + ch) / fy)
    return rgb.resize((tw, th), resample, box=region)


def transform_encoded(
    data: bytes | str | os.PathLike,
    spec: EncoderSpec,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    *,
    reduce: bool = True,
) -> np.ndarray:
    """:func:`aimv2.data.train_transform` of an encoded image (bytes or path), decoding
    only what the crop needs (:func:`decode_for_crop`). It draws from ``rng`` exactly
    what ``train_transform`` draws, so with ``reduce=False`` the output is identical
    to ``train_transform`` of the decoded image.

    Example:
        >>> import io, aimv2, numpy as np
        >>> from PIL import Image
        >>> from aimv2.data import train_transform
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=16)
        >>> img = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
        >>> buf = io.BytesIO(); Image.fromarray(img).save(buf, "PNG")
        >>> a = transform_encoded(buf.getvalue(), spec, np.random.default_rng(3))
        >>> b = train_transform(img, spec, np.random.default_rng(3))
        >>> a.shape, bool((a == b).all())
        ((3, 16, 16), True)
    """
    spec = _check_spec(spec)
    if spec.image_size is None:
        raise ValueError("spec: training crops need a fixed-size encoder (spec.image_size)")
    _check_range("scale", scale, lambda v: v > 0, "0 < low <= high")
    _check_range("ratio", ratio, lambda v: v > 0, "0 < low <= high")
    th, tw = spec.image_size
    try:
        with open_image(data) as im:  # one open: the header gives the size the box needs
            orientation = _orientation(im)
            w, h = im.size[::-1] if orientation in _SWAPS else im.size
            if w <= 0 or h <= 0:
                raise CorruptSampleError(f"image header says {w}x{h}")
            box = _random_resized_box(w, h, rng, tuple(scale), tuple(ratio))
            img = _decode_open(
                im, box, (tw, th), spec.preprocess.interpolation, reduce, orientation
            )
    except CorruptSampleError:
        raise
    except Exception as err:
        raise CorruptSampleError(f"unreadable image: {type(err).__name__}: {err}") from err
    if hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _normalize(img, spec)
