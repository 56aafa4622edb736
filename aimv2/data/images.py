"""Reading image files safely: regular files only, a pixel limit checked from the header,
and every PIL mode brought to 8-bit RGB by its own range (or refused by name).

- :func:`open_image` opens bytes or a path; a path must be a regular file (a FIFO named
  ``x.jpg`` or ``/dev/stdin`` would block forever, a device never end).
- :func:`pixel_reduction` checks the size in the header against :func:`max_pixels`
  before anything is decoded; a JPEG over the limit is decoded at 1/2, 1/4 or 1/8 scale
  (libjpeg's draft mode) when that fits, anything else is refused.
- :func:`to_rgb` scales 16-bit (``I;16*``) images by 65535 and float (``F``) images from
  [0, 1]; ``I`` (32-bit integers, no fixed range) is refused by name.

Example:
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.fromarray(np.full((2, 2), 32768, np.uint16)).save(buf, "PNG")
    >>> decode_image(buf.getvalue())[0, 0]
    array([128, 128, 128], dtype=uint8)
"""

from __future__ import annotations

import io
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "CorruptSampleError",
    "DEFAULT_MAX_PIXELS",
    "max_pixels",
    "set_max_pixels",
    "open_image",
    "read_regular",
    "pixel_reduction",
    "to_rgb",
    "decode_image",
]

DEFAULT_MAX_PIXELS = 2**26  # 8192 x 8192: above any camera, below PIL's bomb warning
_ENV = "AIMV2_MAX_PIXELS"  # read by every process, so loader workers see the same limit
_REDUCTIONS = (2, 4, 8)  # the scales libjpeg decodes at


class CorruptSampleError(ValueError):
    """A sample exists but cannot be read (bad image bytes, unreadable caption, …).

    Example:
        >>> import tempfile, pathlib, json
        >>> from aimv2.data import open_source
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.png").write_bytes(b"not a png")
        >>> _ = (d / "m.jsonl").write_text(json.dumps({"image": "a.png", "caption": "x"}))
        >>> src = open_source(d / "m.jsonl")
        >>> try:
        ...     src[0]
        ... except CorruptSampleError as err:
        ...     print(isinstance(err, ValueError), "unreadable" in str(err))
        True True
    """


def max_pixels() -> int:
    """The most pixels (width × height in the file's header) an image may have.

    Example:
        >>> max_pixels() == DEFAULT_MAX_PIXELS or max_pixels() > 0
        True
    """
    text = os.environ.get(_ENV)
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{_ENV}={text!r}: expected a positive integer") from None
    if value < 1:
        raise ValueError(f"{_ENV}={text!r}: expected a positive integer")
    return value


def set_max_pixels(limit: int | None) -> None:
    """Set the pixel limit for this process and the loader workers it starts
    (``None``: back to :data:`DEFAULT_MAX_PIXELS`); also settable as ``AIMV2_MAX_PIXELS``.

    Example:
        >>> set_max_pixels(10**8); max_pixels()
        100000000
        >>> set_max_pixels(None); max_pixels() == DEFAULT_MAX_PIXELS
        True
    """
    if limit is None:
        os.environ.pop(_ENV, None)
        return
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit={limit!r}: expected a positive integer or None")
    os.environ[_ENV] = str(limit)


def read_regular(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of ``path``, which must be a regular file (or a link to one): a FIFO,
    a device or a socket is refused before anything blocks on it.

    Example:
        >>> import tempfile
        >>> read_regular("/dev/null")
        Traceback (most recent call last):
        ...
        aimv2.data.images.CorruptSampleError: file '/dev/null' is not a regular file (a device)
    """
    name = os.fspath(path)
    try:  # O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise CorruptSampleError(f"{what} {name!r}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = (
                "a FIFO"
                if stat.S_ISFIFO(mode)
                else "a directory"
                if stat.S_ISDIR(mode)
                else "a socket"
                if stat.S_ISSOCK(mode)
                else "a device"
            )
            raise CorruptSampleError(f"{what} {name!r} is not a regular file ({kind})")
        return f.read()


def open_image(data: bytes | bytearray | memoryview | str | os.PathLike) -> Image.Image:
    """A PIL image (header read, pixels not decoded) from encoded bytes or a regular file.

    Example:
        >>> import io, numpy as np
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.fromarray(np.zeros((3, 5), np.uint8)).save(buf, "PNG")
        >>> open_image(buf.getvalue()).size
        (5, 3)
    """
    where = "image bytes"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        where = _named(data)
        data = read_regular(data, "image")
    try:
        with warnings.catch_warnings():  # our own limit is checked by pixel_reduction
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise CorruptSampleError(f"{where}: unreadable: not an image format PIL can read") from None
    except Image.DecompressionBombError as err:  # over twice PIL's own limit
        raise CorruptSampleError(f"{where}: {err}") from None
    except Exception as err:  # a header cut short or malformed (any plugin's own error)
        raise CorruptSampleError(f"{where}: unreadable ({type(err).__name__}: {err})") from None


def pixel_reduction(im: Image.Image) -> int:
    """1 when an opened image is within :func:`max_pixels`; for a JPEG over it, the
    smallest draft scale (2, 4 or 8) that brings it within; otherwise an error naming
    the size and the limit.

    Example:
        >>> from PIL import Image
        >>> pixel_reduction(Image.new("L", (64, 64)))
        1
    """
    w, h = im.size
    limit = max_pixels()
    if w * h <= limit:
        return 1
    if im.format == "JPEG":
        for s in _REDUCTIONS:
            if -(-w // s) * -(-h // s) <= limit:
                return s
    raise CorruptSampleError(
        f"image of {w}x{h} = {w * h:,} pixels is over the limit of {limit:,} "
        f"(raise it with aimv2.data.set_max_pixels or {_ENV})"
    )


def to_rgb(im: Image.Image, name: str = "image") -> Image.Image:
    """An 8-bit RGB image from any PIL mode, scaled by the mode's own range: 16-bit
    integers by 65535, floats (``F``) from [0, 1]; modes without a known range
    (``I``: 32-bit integers) and floats outside [0, 1] are refused by name.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> np.asarray(to_rgb(Image.fromarray(np.full((1, 1), 0.5, np.float32))))[0, 0]
        array([128, 128, 128], dtype=uint8)
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16"):  # I;16, I;16L, I;16B, I;16N: unsigned 16-bit grey
        x = np.asarray(im).astype(np.uint32)
        return _grey(((x * 255 + 32767) // 65535).astype(np.uint8))
    if mode == "F":
        x = np.asarray(im, dtype=np.float32)
        finite = bool(np.isfinite(x).all())
        if not finite or x.min(initial=0.0) < 0.0 or x.max(initial=0.0) > 1.0:
            got = "non-finite values" if not finite else f"values {x.min():g}..{x.max():g}"
            raise CorruptSampleError(
                f"{name}: a float ('F') image must hold values in [0, 1]; it has {got}"
            )
        return _grey(np.rint(x * 255.0).astype(np.uint8))
    if mode in ("I", "I;32", "I;32L", "I;32B", "I;16S") or mode.startswith("I;"):
        raise CorruptSampleError(
            f"{name}: PIL mode {mode!r} (signed or 32-bit integer pixels) has no fixed value "
            f"range; save it as 8- or 16-bit"
        )
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as err:
        raise CorruptSampleError(
            f"{name}: PIL mode {mode!r} has no RGB conversion ({err})"
        ) from None


def _named(path: str | os.PathLike) -> str:
    return f"image {os.fspath(path)!r}"


def _grey(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.repeat(x[:, :, None], 3, axis=2)))


def decode_image(data: bytes | str | os.PathLike) -> np.ndarray:
    """Decode an image (bytes or a regular file) to (H, W, 3) uint8 RGB: EXIF rotation
    applied, the pixel limit checked first (a JPEG over it decoded at reduced size), every
    mode scaled by its range (:func:`to_rgb`).

    Example:
        >>> import io, numpy as np
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(buf, "PNG")
        >>> decode_image(buf.getvalue()).shape
        (4, 6, 3)
    """
    where = "image" if isinstance(data, (bytes, bytearray, memoryview)) else _named(data)
    with open_image(data) as im:
        s = pixel_reduction(im)
        if s > 1:
            im.draft("RGB", (im.width // s, im.height // s))
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
        except (OSError, ValueError, SyntaxError, EOFError) as err:  # truncated, bad chunks
            raise CorruptSampleError(f"{where}: unreadable ({type(err).__name__}: {err})") from None
        rgb = to_rgb(im, where)
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CorruptSampleError(f"decoded image has shape {arr.shape}")
    return arr
