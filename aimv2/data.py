"""Image–caption sources, image transforms and deterministic batching.

A *source* yields :class:`Sample` records (an RGB uint8 image, a caption, an optional
class label and a unique key). :func:`open_source` opens one from a string:

- ``builtin:digits`` — the bundled 8×8 handwritten digits (1,797 images), captioned from
  their labels; ``split`` is ``"train"`` (1,438), ``"heldout"`` (359) or ``"all"``.
- ``builtin:shapes`` — procedurally drawn coloured shapes with descriptive captions;
  options ``builtin:shapes?size=64&length=1000``.
- a folder of images with ``.txt`` caption sidecars (same stem);
- a ``.jsonl`` manifest of ``{"image": ..., "caption": ..., "label": ...}`` lines;
- WebDataset-style ``.tar`` shards (a path, a brace/glob pattern, or a list), streamed;
- ``imagefolder:PATH`` — one subfolder per class, for labelled evaluation.

:func:`preprocess` and :func:`train_transform` turn images into normalized
``float32`` arrays following an :class:`~aimv2.specs.EncoderSpec`, and :class:`Loader`
batches a source with background threads so that every batch is a pure function of
``(seed, step, rank, world_size)``.

Unreadable samples never stop a run: they are skipped, counted (``source.skipped``,
``loader.skipped``) and logged once per key on the ``aimv2.data`` logger.

Example:
    >>> from aimv2 import data
    >>> src = data.open_source("builtin:digits", split="heldout")
    >>> len(src), src[0].image.shape, src[0].image.dtype.name
    (359, (8, 8, 3), 'uint8')
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import glob
import importlib.resources
import io
import json
import logging
import math
import os
import re
import tarfile
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from .specs import EncoderSpec

__all__ = [
    "Sample",
    "CorruptSampleError",
    "Source",
    "IndexedSource",
    "StreamSource",
    "DigitsSource",
    "ShapesSource",
    "CaptionFolderSource",
    "ManifestSource",
    "ImageFolderSource",
    "TarShardSource",
    "open_source",
    "expand_shards",
    "builtin_captions",
    "preprocess",
    "train_transform",
    "Loader",
]

log = logging.getLogger("aimv2.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SPLITS = ("train", "heldout", "all")

ImageLike = Image.Image | np.ndarray | str | os.PathLike


class CorruptSampleError(ValueError):
    """A sample exists but cannot be read (bad image bytes, unreadable caption, …)."""


@dataclass(frozen=True, eq=False)
class Sample:
    """One image–caption pair.

    ``image`` is (H, W, 3) uint8 RGB; ``label`` is a class index or None; ``key`` is
    unique within its source.

    Example:
        >>> import numpy as np
        >>> s = Sample(np.zeros((4, 4, 3), np.uint8), "a black square", None, "k0")
        >>> s.image.shape
        (4, 4, 3)
    """

    image: np.ndarray
    caption: str
    label: int | None
    key: str

    def __post_init__(self) -> None:
        img = self.image
        if not (
            isinstance(img, np.ndarray)
            and img.dtype == np.uint8
            and img.ndim == 3
            and img.shape[2] == 3
            and img.shape[0] > 0
            and img.shape[1] > 0
        ):
            desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img)
            raise ValueError(f"Sample.image: expected an (H, W, 3) uint8 array, got {desc}")
        if not isinstance(self.caption, str):
            raise TypeError(f"Sample.caption: expected str, got {type(self.caption).__name__}")


# ----------------------------------------------------------------------------- helpers

_M64 = (1 << 64) - 1


def _mix64(*values: int) -> int:
    """A fixed 64-bit hash of integers (splitmix64 chained); independent of numpy versions."""
    h = 0x243F6A8885A308D3
    for v in values:
        z = (h ^ (v & _M64)) + 0x9E3779B97F4A7C15 & _M64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _M64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
        h = z ^ (z >> 31)
    return h


def _decode_image(data: bytes | str | os.PathLike) -> np.ndarray:
    """Decode an image file (bytes or path) to (H, W, 3) uint8 RGB, honouring EXIF rotation."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(src) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        rgb = im.convert("RGB")
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CorruptSampleError(f"decoded image has shape {arr.shape}")
    return arr


def _to_pil(image: Any, name: str = "image") -> Image.Image:
    """A PIL RGB image from a PIL image, a uint8 array ((H, W), (H, W, 1|3)) or a path."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        if not os.path.exists(image):
            raise FileNotFoundError(f"{name}: no such file {os.fspath(image)!r}")
        return Image.fromarray(_decode_image(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(
                f"{name}: expected a uint8 array of pixels 0-255, got dtype {image.dtype}"
            )
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(
                f"{name}: expected an (H, W, 3) or (H, W) uint8 array, got shape {image.shape}"
            )
        return Image.fromarray(np.ascontiguousarray(image))
    raise TypeError(
        f"{name}: expected a PIL image, a uint8 numpy array or a path, got {type(image).__name__}"
    )


class _SkipLog:
    """Thread-safe skip counter that logs one warning per distinct key."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.count = 0
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def add(self, key: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self.count += n
            first = key not in self._warned
            self._warned.add(key)
        if first:
            log.warning("%s: skipped %s: %s", self.owner, key, reason)


# ----------------------------------------------------------------------------- sources


class Source:
    """Base of every source: a name, a ``skipped`` counter and iteration over samples.

    Example:
        >>> src = open_source("builtin:digits", split="heldout")
        >>> isinstance(src, Source), src.skipped
        (True, 0)
    """

    indexable: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self._skips = _SkipLog(name)

    @property
    def skipped(self) -> int:
        """How many samples were skipped (unreadable or incomplete) so far."""
        return self._skips.count

    def _skip(self, key: str, reason: str, n: int = 1) -> None:
        self._skips.add(key, reason, n)

    def __iter__(self) -> Iterator[Sample]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class IndexedSource(Source):
    """A source with random access: ``len(src)``, ``src[i]`` and ``src.get(i)``.

    ``src[i]`` raises :class:`CorruptSampleError` for an unreadable sample;
    ``src.get(i)`` returns None instead and counts it in ``skipped``; iteration skips it.

    Example:
        >>> src = open_source("builtin:shapes?length=4")
        >>> [s.key for s in src]
        ['shapes/0/0', 'shapes/0/1', 'shapes/0/2', 'shapes/0/3']
    """

    indexable = True

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> Sample:
        raise NotImplementedError

    def key(self, index: int) -> str:
        """The unique key of sample ``index`` (no decoding)."""
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index: {index} out of range for {self.name} of length {n}")
        return index

    def __getitem__(self, index: int) -> Sample:
        index = self._check_index(index)
        try:
            return self._load(index)
        except Exception as err:
            raise CorruptSampleError(
                f"{self.name}[{index}] ({self.key(index)}): unreadable: {err}"
            ) from err

    def get(self, index: int) -> Sample | None:
        """Sample ``index``, or None (counted and logged) when it cannot be read.

        Example:
            >>> open_source("builtin:digits").get(0).label
            0
        """
        index = self._check_index(index)
        try:
            return self._load(index)
        except Exception as err:
            self._skip(self.key(index), f"{type(err).__name__}: {err}")
            return None

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            sample = self.get(i)
            if sample is not None:
                yield sample


class StreamSource(Source):
    """A source read front to back only (e.g. tar shards); see :class:`TarShardSource`.

    Example:
        >>> issubclass(TarShardSource, StreamSource)
        True
    """


def _check_split(split: str, allowed: tuple[str, ...], name: str) -> None:
    if split not in allowed:
        raise ValueError(f"split={split!r}: expected one of {allowed} for {name}")


def _user_split(split: str, name: str) -> None:
    if split == "heldout":
        raise ValueError(
            f"split='heldout': {name} has no built-in held-out part; keep held-out data in "
            "its own folder/manifest/shards and open it with split='all'"
        )
    _check_split(split, ("train", "all"), name)


# ---- builtin:digits

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_TEMPLATES = (
    "a handwritten digit {word}",
    "the number {d} written by hand",
    "a scanned image of the digit {word}",
    "a low resolution photo of a handwritten {word}",
    "the digit {d}",
    "a blurry handwritten number {word}",
    "an 8 by 8 pixel image of the digit {word}",
    "a pixelated {d} drawn by hand",
)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    data = (importlib.resources.files("aimv2") / "assets" / "digits.npz").read_bytes()
    with np.load(io.BytesIO(data)) as npz:
        images, labels = npz["images"], npz["labels"]
    # 0..16 -> 0..255, rounded half up, gray replicated to RGB.
    scaled = ((images.astype(np.uint16) * 255 + 8) // 16).astype(np.uint8)
    rgb = np.repeat(scaled[..., None], 3, axis=3)
    rgb.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return rgb, labels


def _digit_caption(index: int, label: int) -> str:
    template = _DIGIT_TEMPLATES[_mix64(7, index) % len(_DIGIT_TEMPLATES)]
    return template.format(word=_DIGIT_WORDS[label], d=label)


class DigitsSource(IndexedSource):
    """``builtin:digits``: the bundled 8×8 handwritten digits as RGB uint8 (0–255).

    The held-out split is a fixed fifth (359 images) chosen by a hash of the index that
    never changes; ``"train"`` is the other 1,438, ``"all"`` all 1,797 in file order.

    Example:
        >>> s = DigitsSource("train")[0]
        >>> s.image.shape, s.label in range(10), s.caption.startswith(("a", "the"))
        ((8, 8, 3), True, True)
    """

    def __init__(self, split: str = "train") -> None:
        _check_split(split, SPLITS, "builtin:digits")
        super().__init__(f"builtin:digits[{split}]")
        images, _ = _digits_arrays()
        n = len(images)
        order = sorted(range(n), key=lambda i: _mix64(0, i))
        heldout = sorted(order[: n // 5])
        if split == "all":
            idx = list(range(n))
        elif split == "heldout":
            idx = heldout
        else:
            held = set(heldout)
            idx = [i for i in range(n) if i not in held]
        self.indices = np.asarray(idx, dtype=np.int64)
        self.split = split

    def __len__(self) -> int:
        return len(self.indices)

    def key(self, index: int) -> str:
        """``digits/NNNN`` with the index in the original file."""
        return f"digits/{int(self.indices[index]):04d}"

    def _load(self, index: int) -> Sample:
        images, labels = _digits_arrays()
        i = int(self.indices[index])
        label = int(labels[i])
        return Sample(images[i], _digit_caption(i, label), label, self.key(index))


# ---- builtin:shapes

SHAPE_CLASSES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
    "white": (245, 245, 245),
    "cyan": (40, 210, 220),
}
_SIZES = {"small": (0.10, 0.14), "large": (0.21, 0.25)}
# name -> (x, y) anchor: -1 near the low edge, 0 centre, 1 near the high edge.
_POSITIONS = {
    "top left": (-1, -1),
    "top": (0, -1),
    "top right": (1, -1),
    "left": (-1, 0),
    "center": (0, 0),
    "right": (1, 0),
    "bottom left": (-1, 1),
    "bottom": (0, 1),
    "bottom right": (1, 1),
}
_WHERE = {
    "top left": ("at the top left", "in the top left corner"),
    "top": ("at the top", "near the top edge"),
    "top right": ("at the top right", "in the top right corner"),
    "left": ("on the left", "at the left side"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "at the right side"),
    "bottom left": ("at the bottom left", "in the bottom left corner"),
    "bottom": ("at the bottom", "near the bottom edge"),
    "bottom right": ("at the bottom right", "in the bottom right corner"),
}
_SHAPE_TEMPLATES = (
    "a {size} {colour} {shape} {where}",
    "a picture of a {size} {colour} {shape} {where}",
    "there is a {size} {colour} {shape} {where}",
    "{where}, a {size} {colour} {shape}",
    "one {size} {shape} in {colour} {where} on a dark background",
)
_HELDOUT_OFFSET = 1 << 40


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = 0.85 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
        angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
    else:
        n = {"triangle": 3, "hexagon": 6}[shape]
        radii = [r] * n
        angles = [-math.pi / 2 + k * 2 * math.pi / n for k in range(n)]
    return [
        (cx + q * math.cos(a), cy + q * math.sin(a)) for q, a in zip(radii, angles, strict=True)
    ]


class ShapesSource(IndexedSource):
    """``builtin:shapes``: one coloured shape per image, drawn from (seed, index) alone.

    Shapes: circle, square, triangle, diamond, star, hexagon (``label`` is the index into
    :data:`SHAPE_CLASSES`); 8 colours; small/large; 9 positions. Captions read like
    "a large red circle at the top left". ``"train"`` holds indices 0…length−1,
    ``"heldout"`` a disjoint range of ``length`` (default 1,000) scenes, ``"all"`` both.

    Example:
        >>> src = ShapesSource(size=32, length=10)
        >>> s = src[3]
        >>> s.image.shape, s.caption == src[3].caption, src.classes[s.label] in s.caption
        ((32, 32, 3), True, True)
    """

    classes = SHAPE_CLASSES

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        size: int = 32,
        length: int | None = None,
    ) -> None:
        _check_split(split, SPLITS, "builtin:shapes")
        if not isinstance(size, int) or size < 8:
            raise ValueError(f"builtin:shapes size={size!r}: expected an integer >= 8")
        if length is not None and (not isinstance(length, int) or length < 1):
            raise ValueError(f"builtin:shapes length={length!r}: expected a positive integer")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r}: expected a non-negative integer")
        super().__init__(f"builtin:shapes[{split}]")
        self.split, self.seed, self.size = split, seed, size
        train_len = length or 50_000
        held_len = length or 1_000
        self._ranges: list[tuple[int, int]] = []  # (first scene id, count)
        if split in ("train", "all"):
            self._ranges.append((0, train_len))
        if split in ("heldout", "all"):
            self._ranges.append((_HELDOUT_OFFSET, held_len))
        self._len = sum(n for _, n in self._ranges)

    def __len__(self) -> int:
        return self._len

    def _scene_id(self, index: int) -> int:
        for start, n in self._ranges:
            if index < n:
                return start + index
            index -= n
        raise IndexError(index)

    def key(self, index: int) -> str:
        """``shapes/SEED/SCENE`` (held-out scenes have ids from 2**40)."""
        return f"shapes/{self.seed}/{self._scene_id(index)}"

    def scene(self, index: int) -> dict[str, Any]:
        """The drawn parameters of sample ``index`` (shape, colour, size, position, …).

        Example:
            >>> sorted(ShapesSource(length=1).scene(0))[:3]
            ['background', 'caption', 'colour']
        """
        rng = np.random.default_rng([self.seed, self._scene_id(index)])
        shape = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        colour = list(_COLOURS)[int(rng.integers(len(_COLOURS)))]
        size = list(_SIZES)[int(rng.integers(len(_SIZES)))]
        position = list(_POSITIONS)[int(rng.integers(len(_POSITIONS)))]
        lo, hi = _SIZES[size]
        radius = float(rng.uniform(lo, hi))
        jitter = rng.uniform(-0.03, 0.03, size=2)
        background = int(rng.integers(0, 64))
        where = _WHERE[position][int(rng.integers(2))]
        template = _SHAPE_TEMPLATES[int(rng.integers(len(_SHAPE_TEMPLATES)))]
        caption = template.format(size=size, colour=colour, shape=shape, where=where)
        return {
            "shape": shape,
            "colour": colour,
            "size": size,
            "position": position,
            "radius": radius,
            "jitter": (float(jitter[0]), float(jitter[1])),
            "background": background,
            "caption": caption,
        }

    def _draw(self, scene: dict[str, Any]) -> np.ndarray:
        ss = 4  # supersampling factor: draw large, then box-filter down for clean edges
        n = self.size * ss
        img = Image.new("RGB", (n, n), (scene["background"],) * 3)
        draw = ImageDraw.Draw(img)
        r = scene["radius"]
        margin = 0.05
        ax, ay = _POSITIONS[scene["position"]]
        centre = [
            0.5 + a * (0.5 - r - margin) + j for a, j in zip((ax, ay), scene["jitter"], strict=True)
        ]
        cx, cy, rad = centre[0] * n, centre[1] * n, r * n
        fill = _COLOURS[scene["colour"]]
        if scene["shape"] == "circle":
            draw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=fill)
        else:
            draw.polygon(_polygon(scene["shape"], cx, cy, rad), fill=fill)
        small = img.resize((self.size, self.size), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.uint8)

    def _load(self, index: int) -> Sample:
        scene = self.scene(index)
        label = SHAPE_CLASSES.index(scene["shape"])
        return Sample(self._draw(scene), scene["caption"], label, self.key(index))


def builtin_captions(name: str) -> list[str]:
    """Every caption a builtin source can produce, in a fixed order (a tokenizer corpus).

    Example:
        >>> caps = builtin_captions("builtin:digits")
        >>> len(caps), caps[0]
        (80, 'a handwritten digit zero')
    """
    if name == "builtin:digits":
        return [t.format(word=_DIGIT_WORDS[d], d=d) for t in _DIGIT_TEMPLATES for d in range(10)]
    if name == "builtin:shapes":
        return [
            t.format(size=size, colour=colour, shape=shape, where=where)
            for t in _SHAPE_TEMPLATES
            for size in _SIZES
            for colour in _COLOURS
            for shape in SHAPE_CLASSES
            for pos in _POSITIONS
            for where in _WHERE[pos]
        ]
    raise ValueError(f"name={name!r}: expected 'builtin:digits' or 'builtin:shapes'")


# ---- folders and manifests


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _visible_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(out)


def _require_path(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what}: no such file or directory {os.fspath(path)!r}")
    return p


class CaptionFolderSource(IndexedSource):
    """A folder (searched recursively) of images with ``.txt`` captions of the same stem.

    Images without a caption file are skipped and counted (``unpaired``, also in
    ``skipped``); caption files without an image are counted in ``orphan_captions``. A
    folder with no image–caption pair at all is an error.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / "a.png")
        >>> _ = (d / "a.txt").write_text("A black square")
        >>> CaptionFolderSource(d)[0].caption
        'A black square'
    """

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        root = _require_path(root, "caption folder")
        if not root.is_dir():
            raise NotADirectoryError(f"caption folder: {os.fspath(root)!r} is not a directory")
        _user_split(split, "a caption folder")
        super().__init__(os.fspath(root))
        self.root = root
        files = _visible_files(root)
        captions = {p.with_suffix(""): p for p in files if p.suffix.lower() == ".txt"}
        images = [p for p in files if _is_image(p)]
        self.pairs: list[tuple[Path, Path]] = []
        unpaired = 0
        for img in images:
            txt = captions.pop(img.with_suffix(""), None)
            if txt is None:
                unpaired += 1
            else:
                self.pairs.append((img, txt))
        self.unpaired = unpaired
        self.orphan_captions = len(captions)
        if not self.pairs:
            if not images and captions:
                raise ValueError(
                    f"caption folder {os.fspath(root)!r}: found {len(captions)} caption files "
                    f"(.txt) but no images with the same stem ({', '.join(IMAGE_EXTENSIONS)})"
                )
            if images:
                raise ValueError(
                    f"caption folder {os.fspath(root)!r}: found {len(images)} images but no "
                    "caption files (.txt with the same stem); for one subfolder per class use "
                    f"'imagefolder:{os.fspath(root)}'"
                )
            raise ValueError(
                f"caption folder {os.fspath(root)!r}: no images found "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)} with .txt captions)"
            )
        if unpaired:
            self._skip("<scan>", f"{unpaired} images without a .txt caption", n=unpaired)
        if self.orphan_captions:
            log.warning(
                "%s: %d caption files without an image ignored", self.name, self.orphan_captions
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def key(self, index: int) -> str:
        """The image path relative to the folder, without its extension."""
        return self.pairs[index][0].relative_to(self.root).with_suffix("").as_posix()

    def _load(self, index: int) -> Sample:
        img, txt = self.pairs[index]
        caption = txt.read_text(encoding="utf-8").strip()
        return Sample(_decode_image(img), caption, None, self.key(index))


class ManifestSource(IndexedSource):
    """A JSONL manifest: one ``{"image": path, "caption": text, "label": int?}`` per line.

    Relative image paths are relative to the manifest's folder. Malformed lines are
    skipped and counted at open; missing or corrupt images when read.

    Example:
        >>> import tempfile, pathlib, json, numpy as np
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / "a.png")
        >>> _ = (d / "m.jsonl").write_text(json.dumps({"image": "a.png", "caption": "x"}))
        >>> ManifestSource(d / "m.jsonl")[0].caption
        'x'
    """

    def __init__(self, path: str | os.PathLike, split: str = "train") -> None:
        path = _require_path(path, "manifest")
        if not path.is_file():
            raise IsADirectoryError(f"manifest: {os.fspath(path)!r} is not a file")
        _user_split(split, "a manifest")
        super().__init__(os.fspath(path))
        self.path = path
        self.entries: list[tuple[Path, str, int | None, str]] = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                key = f"{path.name}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    self._skip(key, f"invalid JSON: {err}")
                    continue
                problem = _manifest_problem(rec)
                if problem:
                    self._skip(key, problem)
                    continue
                image = Path(rec["image"]).expanduser()
                if not image.is_absolute():
                    image = path.parent / image
                self.entries.append((image, rec["caption"], rec.get("label"), key))
        if not self.entries:
            raise ValueError(
                f"manifest {os.fspath(path)!r}: no usable lines; expected JSON objects like "
                '{"image": "a.jpg", "caption": "a cat", "label": 3}'
            )

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, index: int) -> str:
        """``MANIFEST_NAME:LINE``."""
        return self.entries[index][3]

    def _load(self, index: int) -> Sample:
        image, caption, label, key = self.entries[index]
        return Sample(_decode_image(image), caption, label, key)


def _manifest_problem(rec: Any) -> str:
    if not isinstance(rec, dict):
        return "expected a JSON object"
    if not isinstance(rec.get("image"), str) or not rec["image"]:
        return "expected a non-empty string 'image'"
    if not isinstance(rec.get("caption"), str):
        return "expected a string 'caption'"
    label = rec.get("label")
    if label is not None and (not isinstance(label, int) or isinstance(label, bool) or label < 0):
        return f"expected 'label' to be a non-negative integer, got {label!r}"
    return ""


class ImageFolderSource(IndexedSource):
    """``imagefolder:PATH``: one subfolder per class; label = sorted class index,
    caption = the class (folder) name.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for c in ("cat", "dog"):
        ...     (d / c).mkdir()
        ...     Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / c / "0.png")
        >>> src = ImageFolderSource(d)
        >>> src.classes, src[1].label, src[1].caption
        (('cat', 'dog'), 1, 'dog')
    """

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        root = _require_path(root, "imagefolder")
        if not root.is_dir():
            raise NotADirectoryError(f"imagefolder: {os.fspath(root)!r} is not a directory")
        _user_split(split, "an image folder")
        super().__init__(f"imagefolder:{os.fspath(root)}")
        self.root = root
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not dirs:
            raise ValueError(
                f"imagefolder {os.fspath(root)!r}: no class subfolders (expected ROOT/CLASS/img)"
            )
        self.classes = tuple(d.name for d in dirs)
        self.items: list[tuple[Path, int]] = []
        for label, d in enumerate(dirs):
            imgs = [p for p in _visible_files(d) if _is_image(p)]
            if not imgs:
                log.warning("%s: class folder %r holds no images", self.name, d.name)
            self.items.extend((p, label) for p in imgs)
        if not self.items:
            raise ValueError(
                f"imagefolder {os.fspath(root)!r}: no images in any class subfolder "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
            )

    def __len__(self) -> int:
        return len(self.items)

    def key(self, index: int) -> str:
        """The image path relative to the root, without its extension."""
        return self.items[index][0].relative_to(self.root).with_suffix("").as_posix()

    def _load(self, index: int) -> Sample:
        path, label = self.items[index]
        return Sample(_decode_image(path), self.classes[label], label, self.key(index))


# ---- tar shards


def _expand_braces(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        width = len(a) if a.startswith("0") or len(a) == len(b) else 0
        step = 1 if int(b) >= int(a) else -1
        options = [f"{k:0{width}d}" for k in range(int(a), int(b) + step, step)]
    else:
        options = body.split(",")
    return [x for opt in options for x in _expand_braces(head + opt + tail)]


def expand_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard paths from a path, a brace pattern (``a-{000..009}.tar``, ``{x,y}.tar``), a
    glob (``data/*.tar``), or a list of those; every result must exist.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> for i in range(3):
        ...     open(os.path.join(d, f"s-{i:02d}.tar"), "wb").close()
        >>> [os.path.basename(p) for p in expand_shards(os.path.join(d, "s-{00..02}.tar"))]
        ['s-00.tar', 's-01.tar', 's-02.tar']
    """
    items = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    if not items:
        raise ValueError("shards: expected at least one shard path or pattern, got none")
    out: list[str] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"shards: expected paths or patterns, got {type(item).__name__}")
        for path in _expand_braces(os.path.expanduser(os.fspath(item))):
            if glob.has_magic(path):
                found = sorted(glob.glob(path))
                if not found:
                    raise FileNotFoundError(f"shards: pattern {path!r} matches no files")
                out.extend(found)
            elif not os.path.isfile(path):
                raise FileNotFoundError(f"shards: no such file {path!r}")
            else:
                out.append(path)
    return out


@dataclass
class _Record:
    key: str
    image: bytes | None = None
    caption: str | None = None
    label: str | None = None


class TarShardSource(StreamSource):
    """WebDataset-style ``.tar`` shards (``KEY.jpg|png`` + ``KEY.txt``, optional
    ``KEY.cls``), streamed member by member without extracting to disk.

    Members of one sample must be consecutive (the WebDataset convention); incomplete
    samples, corrupt images and truncated shards are skipped and counted.
    :meth:`shard_split` gives each rank a disjoint subset of the shards.

    Example:
        >>> import tarfile, tempfile, io, os, numpy as np
        >>> from PIL import Image
        >>> d = tempfile.mkdtemp(); buf = io.BytesIO()
        >>> Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, "PNG")
        >>> with tarfile.open(os.path.join(d, "0.tar"), "w") as tf:
        ...     for name, data in (("k.png", buf.getvalue()), ("k.txt", b"dark")):
        ...         info = tarfile.TarInfo(name); info.size = len(data)
        ...         tf.addfile(info, io.BytesIO(data))
        >>> [(s.key, s.caption) for s in TarShardSource(os.path.join(d, "0.tar"))]
        [('k', 'dark')]
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        self.shards = tuple(expand_shards(shards))
        first = self.shards[0]
        more = f" (+{len(self.shards) - 1} more)" if len(self.shards) > 1 else ""
        super().__init__(f"{first}{more}")

    def shard_split(self, rank: int, world_size: int) -> TarShardSource:
        """The shards of ``rank`` out of ``world_size``: every world_size-th from ``rank``.

        Example:
            >>> import tempfile, os
            >>> d = tempfile.mkdtemp()
            >>> for i in range(4):
            ...     open(os.path.join(d, f"{i}.tar"), "wb").close()
            >>> src = TarShardSource(os.path.join(d, "*.tar")).shard_split(1, 2)
            >>> [os.path.basename(s) for s in src.shards]
            ['1.tar', '3.tar']
        """
        _check_rank(rank, world_size)
        if world_size > len(self.shards):
            raise ValueError(
                f"world_size={world_size}: only {len(self.shards)} shards in {self.name}; "
                "each rank needs at least one shard"
            )
        return TarShardSource(list(self.shards[rank::world_size]))

    def records(self) -> Iterator[_Record | None]:
        """Raw samples in order (None for an incomplete one, already counted)."""
        for shard in self.shards:
            yield from self._shard_records(shard)

    def _shard_records(self, shard: str) -> Iterator[_Record | None]:
        current: _Record | None = None
        try:
            with tarfile.open(shard, mode="r|*") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    folder, _, base = member.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if not dot or base.startswith("."):
                        continue
                    key = f"{folder}/{stem}" if folder else stem
                    if current is not None and key != current.key:
                        yield self._finish(current)
                        current = None
                    if current is None:
                        current = _Record(key)
                    f = tf.extractfile(member)
                    data = f.read() if f is not None else b""
                    ext = ext.lower()
                    if "." + ext in IMAGE_EXTENSIONS:
                        current.image = data
                    elif ext == "txt":
                        current.caption = data.decode("utf-8", errors="replace").strip()
                    elif ext == "cls":
                        current.label = data.decode("utf-8", errors="replace").strip()
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:
            self._skip(f"{shard}@end", f"shard unreadable or truncated: {err}")
        if current is not None:
            yield self._finish(current)

    def _finish(self, rec: _Record) -> _Record | None:
        if rec.image is None or rec.caption is None:
            missing = "image" if rec.image is None else "caption (.txt)"
            self._skip(rec.key, f"no {missing}")
            return None
        return rec

    def decode(self, rec: _Record | None) -> Sample | None:
        """Decode a raw record; None (counted) when it cannot be read."""
        if rec is None:
            return None
        try:
            label = None
            if rec.label is not None:
                label = int(rec.label)
                if label < 0:
                    raise ValueError(f"negative class label {label}")
            return Sample(_decode_image(rec.image), rec.caption, label, rec.key)
        except Exception as err:
            self._skip(rec.key, f"{type(err).__name__}: {err}")
            return None

    def __iter__(self) -> Iterator[Sample]:
        for rec in self.records():
            sample = self.decode(rec)
            if sample is not None:
                yield sample


# ---- open_source


def _builtin(spec: str, split: str, seed: int) -> IndexedSource:
    name, _, query = spec.partition("?")
    try:
        opts = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError as err:
        raise ValueError(f"source={spec!r}: malformed options {query!r}: {err}") from None
    if name == "builtin:digits":
        if opts:
            raise ValueError(f"source={spec!r}: builtin:digits takes no options")
        return DigitsSource(split)
    if name == "builtin:shapes":
        unknown = sorted(set(opts) - {"size", "length"})
        if unknown:
            raise ValueError(
                f"source={spec!r}: unknown options {unknown}; builtin:shapes takes size, length"
            )
        ints: dict[str, int] = {}
        for k, v in opts.items():
            if not v.isdigit():
                raise ValueError(f"source={spec!r}: option {k}={v!r} must be a positive integer")
            ints[k] = int(v)
        return ShapesSource(split, seed, **ints)
    raise ValueError(f"source={spec!r}: expected 'builtin:digits' or 'builtin:shapes'")


def open_source(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    split: str = "train",
    seed: int = 0,
) -> Source:
    """Open a source from a string (see the module docstring for the forms).

    ``split`` chooses a fixed part of a builtin set (``train``/``heldout``/``all``); your
    own data is used whole (``train`` or ``all``). ``seed`` only varies ``builtin:shapes``.

    Example:
        >>> len(open_source("builtin:digits", split="all"))
        1797
        >>> open_source("builtin:shapes?size=16&length=5", split="heldout")[0].image.shape
        (16, 16, 3)
    """
    if not isinstance(split, str):
        raise TypeError(f"split: expected a str, got {type(split).__name__}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")
    if isinstance(source, (list, tuple)):
        _user_split(split, "tar shards")
        return TarShardSource(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source: expected a str, a path or a list of shard paths, got {type(source).__name__}"
        )
    text = os.fspath(source)
    if not text:
        raise ValueError("source: expected a source string, got ''")
    if text.startswith("builtin:"):
        return _builtin(text, split, seed)
    if text.startswith("imagefolder:"):
        return ImageFolderSource(text[len("imagefolder:") :], split)
    if text.endswith(".tar") or "{" in text or glob.has_magic(text):
        _user_split(split, "tar shards")
        return TarShardSource(text)
    path = _require_path(text, "source")
    if path.is_dir():
        return CaptionFolderSource(path, split)
    if path.suffix.lower() == ".jsonl":
        return ManifestSource(path, split)
    raise ValueError(
        f"source={text!r}: expected 'builtin:NAME', 'imagefolder:DIR', a folder of images "
        "with .txt captions, a .jsonl manifest or .tar shards"
    )


# ----------------------------------------------------------------------------- transforms

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def _check_spec(spec: Any) -> EncoderSpec:
    if not isinstance(spec, EncoderSpec):
        raise TypeError(f"spec: expected an aimv2 EncoderSpec, got {type(spec).__name__}")
    if spec.in_channels not in (1, 3):
        raise ValueError(
            f"spec.patchifier.in_channels={spec.in_channels}: images are RGB (3) or gray (1)"
        )
    return spec


def _shorter_side(w: int, h: int, s: int) -> tuple[int, int]:
    """(new_w, new_h) with the shorter side = s and the aspect kept (floored, like timm/HF)."""
    if w <= h:
        return s, max(1, int(s * h / w))
    return max(1, int(s * w / h)), s


def _covering_side(w: int, h: int, tw: int, th: int) -> int:
    """The smallest shorter-side length whose resize covers a tw×th crop."""
    short, long_ = (w, h) if w <= h else (h, w)
    s = max(tw if w <= h else th, math.ceil((th if w <= h else tw) * short / long_))
    while True:
        nw, nh = _shorter_side(w, h, s)
        if nw >= tw and nh >= th:
            return s
        s += 1


def _center_crop(img: Image.Image, tw: int, th: int, what: str) -> Image.Image:
    w, h = img.size
    if w < tw or h < th:
        raise ValueError(
            f"image: {w}x{h} (WxH) after resizing is smaller than the crop {tw}x{th}; {what}"
        )
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def _normalize(img: Image.Image, spec: EncoderSpec) -> np.ndarray:
    if spec.in_channels == 1:
        img = img.convert("L")
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    mean = np.asarray(spec.preprocess.mean, dtype=np.float32)
    std = np.asarray(spec.preprocess.std, dtype=np.float32)
    x = (x / np.float32(255.0) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _eval_image(img: Image.Image, spec: EncoderSpec) -> Image.Image:
    pp = spec.preprocess
    resample = _RESAMPLE[pp.interpolation]
    w, h = img.size
    if spec.image_size is None:
        # Native resolution: optional shorter-side resize, then the largest centred
        # crop whose sides are multiples of the patch size.
        if pp.resize:
            img = img.resize(_shorter_side(w, h, pp.resize), resample)
        p = spec.patch_size
        w, h = img.size
        tw, th = (w // p) * p, (h // p) * p
        if tw == 0 or th == 0:
            raise ValueError(
                f"image: {w}x{h} (WxH) is smaller than one {p}x{p} patch of a native-resolution "
                "encoder; set preprocess.resize or use larger images"
            )
        return _center_crop(img, tw, th, "")
    th, tw = spec.image_size
    if not pp.crop:
        return img.resize((tw, th), resample)
    if pp.resize is None:
        img = img.resize(_shorter_side(w, h, _covering_side(w, h, tw, th)), resample)
        hint = ""
    elif pp.resize > 0:
        img = img.resize(_shorter_side(w, h, pp.resize), resample)
        hint = f"preprocess.resize={pp.resize} is too small for image_size {spec.image_size}"
    else:
        hint = "preprocess.resize=0 (no resize) needs images at least the image size"
    return _center_crop(img, tw, th, hint)


def _eval_array(image: Any, spec: EncoderSpec, name: str = "image") -> np.ndarray:
    return _normalize(_eval_image(_to_pil(image, name), spec), spec)


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (Image.Image, np.ndarray, str, os.PathLike)):
        return [images]
    if isinstance(images, Iterable):
        items = list(images)
        if not items:
            raise ValueError("images: expected at least one image, got an empty sequence")
        return items
    raise TypeError(
        f"images: expected an image, a path, a uint8 array or a sequence of them, "
        f"got {type(images).__name__}"
    )


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"images: a batch needs one size after preprocessing, got shapes {sorted(shapes)}; "
            "native-resolution batches need equal image sizes (or batch size 1)"
        )
    return np.stack(arrays).astype(np.float32, copy=False)


def preprocess(images: ImageLike | Sequence[ImageLike], spec: EncoderSpec) -> np.ndarray:
    """Evaluation preprocessing → float32 (B, C, H, W), as ``spec.preprocess`` describes.

    Fixed-size encoder: resize the shorter side to ``preprocess.resize`` (None: just
    enough to cover the image size; 0: no resize), center-crop to ``image_size``
    (``crop=False``: resize straight to ``image_size``), scale to [0, 1], then
    ``(x - mean) / std``. Native resolution (``image_size=None``): optional resize, then
    center-crop to multiples of the patch size. Accepts PIL images, uint8 (H, W[, 3])
    arrays, a uint8 (B, H, W, 3) batch, paths, or a sequence of those.

    Example:
        >>> import aimv2, numpy as np
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=16)
        >>> x = preprocess(np.full((20, 30, 3), 255, np.uint8), spec)
        >>> x.shape, x.dtype.name, round(float(x[0, 0, 0, 0]), 4)
        ((1, 3, 16, 16), 'float32', 1.9303)
    """
    spec = _check_spec(spec)
    return _stack([_eval_array(im, spec, f"images[{i}]") for i, im in enumerate(_as_list(images))])


def _check_range(name: str, value: Any, lo_ok: Callable[[float], bool], expect: str) -> None:
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
        and lo_ok(value[0])
        and value[0] <= value[1]
    )
    if not ok:
        raise ValueError(f"{name}={value!r}: expected (low, high) with {expect}")


def _random_resized_box(
    w: int,
    h: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (left, top, width, height)."""
    area = w * h
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return left, top, cw, ch
    # Fallback: the whole image, trimmed to the nearest allowed aspect ratio, centred.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    cw, ch = max(1, min(cw, w)), max(1, min(ch, h))
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def train_transform(
    image: ImageLike,
    spec: EncoderSpec,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.4, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    *,
    size: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """Training augmentation → float32 (C, H, W): RandomResizedCrop + horizontal flip.

    A box covering a fraction ``scale`` of the area with a log-uniform aspect ratio in
    ``ratio`` (10 tries, then a centred fallback) is resized to the encoder's image size
    (or ``size``) with ``spec.preprocess.interpolation`` (bicubic by default), flipped
    left–right with probability 0.5 when ``hflip``, then normalized like
    :func:`preprocess`. All randomness comes from ``rng``.

    Example:
        >>> import aimv2, numpy as np
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=16)
        >>> img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
        >>> a = train_transform(img, spec, np.random.default_rng(1))
        >>> b = train_transform(img, spec, np.random.default_rng(1))
        >>> a.shape, bool((a == b).all())
        ((3, 16, 16), True)
    """
    spec = _check_spec(spec)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy Generator, got {type(rng).__name__}")
    _check_range("scale", scale, lambda v: v > 0, "0 < low <= high")
    _check_range("ratio", ratio, lambda v: v > 0, "0 < low <= high")
    if size is None:
        if spec.image_size is None:
            raise ValueError(
                "size: the encoder is native-resolution (spec.image_size=None); "
                "pass size=(H, W) for the training crop"
            )
        th, tw = spec.image_size
    else:
        th, tw = (size, size) if isinstance(size, int) else tuple(size)
        if not all(isinstance(v, int) and v > 0 for v in (th, tw)):
            raise ValueError(f"size={size!r}: expected a positive int or (H, W)")
    img = _to_pil(image)
    left, top, cw, ch = _random_resized_box(img.width, img.height, rng, scale, ratio)
    img = img.crop((left, top, left + cw, top + ch))
    img = img.resize((tw, th), _RESAMPLE[spec.preprocess.interpolation])
    if hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _normalize(img, spec)


# ----------------------------------------------------------------------------- loader


class CaptionEncoder(Protocol):
    """Anything with ``encode(captions, context_length) -> int array (B, context_length)``."""

    def encode(self, captions: list[str], context_length: int) -> np.ndarray: ...


def _check_rank(rank: int, world_size: int) -> None:
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: expected a positive integer")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank!r}: expected an integer in [0, world_size={world_size})")


def _nonneg_int(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}={value!r}: expected a non-negative integer")
    return int(value)


class _Inline:
    """An executor that runs work at once in the calling thread (num_workers=0)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as err:  # re-raised by fut.result() in the consumer
            fut.set_exception(err)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _ordered_map(pool: Any, fn: Callable[[Any], Any], items: Iterable[Any], window: int):
    """``map(fn, items)`` in order, with at most ``window`` calls in flight on ``pool``."""
    pending: deque[cf.Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class Loader:
    """Deterministic, resumable batches of a source, prepared by background threads.

    Each batch is ``{"images": float32 (B, C, H, W), "tokens": int64 (B, context_length)
    or None, "labels": int64 (B,) (-1 where a sample has no label), "keys": list[str],
    "step": int}`` and depends only on ``(seed, step, rank, world_size)``: resuming
    at ``start_step`` gives exactly the batches an uninterrupted run would have.

    Indexed sources, ``train=True``: an endless stream, a seeded permutation per epoch;
    the global batch of step s is stream positions ``[s·B·K, (s+1)·B·K)`` (K =
    world_size) and rank r takes its r-th slice of B, so K ranks with batch B see, as a
    whole, what one process with batch K·B sees at the same step, with the same
    augmentation (the per-sample RNG is seeded by (seed, step, position in the global
    batch)). An unreadable sample is replaced by the next readable one in source order.
    ``train=False``: one pass in source order with :func:`preprocess`, no augmentation,
    unreadable samples dropped (the last batch may be short).

    Streams (tar shards) are read in order; with K ranks each rank reads its own shards
    (:meth:`TarShardSource.shard_split`). Training repeats the shards endlessly;
    resuming re-reads (decodes, does not transform) the samples before ``start_step``.

    ``skipped`` counts unreadable samples met while making the batches yielded so far.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8)
        >>> loader = Loader("builtin:digits", spec, None, 4, seed=0, num_workers=0)
        >>> b = next(iter(loader))
        >>> b["images"].shape, b["labels"].dtype.name, b["tokens"], b["step"]
        ((4, 3, 8, 8), 'int64', None, 0)
    """

    def __init__(
        self,
        source: Source | str,
        spec: EncoderSpec,
        tokenizer: CaptionEncoder | None,
        batch_size: int,
        *,
        seed: int,
        train: bool = True,
        num_workers: int = 2,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        context_length: int = 77,
        prefetch: int | None = None,
        scale: tuple[float, float] = (0.4, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
    ) -> None:
        self.spec = _check_spec(spec)
        if isinstance(source, (str, os.PathLike, list, tuple)):
            source = open_source(source)
        if not isinstance(source, Source):
            raise TypeError(f"source: expected a Source or a source string, got {source!r:.80}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        if tokenizer is not None and not callable(getattr(tokenizer, "encode", None)):
            raise TypeError("tokenizer: expected None or an object with encode(captions, length)")
        if not isinstance(context_length, int) or context_length < 1:
            raise ValueError(f"context_length={context_length!r}: expected a positive integer")
        _check_rank(rank, world_size)
        if train:
            _check_range("scale", scale, lambda v: v > 0, "0 < low <= high")
            _check_range("ratio", ratio, lambda v: v > 0, "0 < low <= high")
            if spec.image_size is None:
                raise ValueError(
                    "spec: training batches need a fixed-size encoder (spec.image_size); "
                    "native-resolution images differ in size and cannot be stacked"
                )
        self.seed = _nonneg_int("seed", seed)
        self.start_step = _nonneg_int("start_step", start_step)
        self.num_workers = _nonneg_int("num_workers", num_workers)
        self.prefetch = max(2, self.num_workers) if prefetch is None else prefetch
        if not isinstance(self.prefetch, int) or self.prefetch < 1:
            raise ValueError(f"prefetch={prefetch!r}: expected a positive integer")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.train = bool(train)
        self.rank, self.world_size = rank, world_size
        self.context_length = context_length
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        if isinstance(source, TarShardSource) and world_size > 1:
            source = source.shard_split(rank, world_size)
        elif not isinstance(source, (IndexedSource, TarShardSource)):
            raise TypeError(f"source: unsupported source type {type(source).__name__}")
        self.source = source
        self._skipped = 0
        self._bad: set[int] = set()
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    # -- public

    @property
    def skipped(self) -> int:
        """Unreadable samples met while making the batches handed out so far."""
        return self._skipped

    @property
    def global_batch_size(self) -> int:
        """batch_size × world_size."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Batches left for this rank (evaluation over an indexed source only)."""
        if self.train or not isinstance(self.source, IndexedSource):
            raise TypeError("len(loader): only an evaluation loader over an indexed source")
        return len(self._eval_steps())

    def batch(self, step: int) -> dict[str, Any] | None:
        """Make the batch of ``step`` directly, in this thread (indexed sources only).

        Returns None for an evaluation step with nothing left for this rank.

        Example:
            >>> import aimv2
            >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4,
            ...                           image_size=8)
            >>> ld = Loader("builtin:digits", spec, None, 2, seed=0, num_workers=0)
            >>> ld.batch(5)["keys"] == ld.batch(5)["keys"]
            True
        """
        if not isinstance(self.source, IndexedSource):
            raise TypeError("Loader.batch(step): random access needs an indexed source")
        step = _nonneg_int("step", step)
        out, skipped = self._indexed_batch(step)
        self._skipped += skipped
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pool: Any = (
            cf.ThreadPoolExecutor(self.num_workers, thread_name_prefix="aimv2-loader")
            if self.num_workers
            else _Inline()
        )
        try:
            if isinstance(self.source, IndexedSource):
                steps: Iterable[int] = self._train_steps() if self.train else self._eval_steps()
                jobs: Iterable[tuple[Callable[..., Any], tuple[Any, ...]]] = (
                    (self._indexed_batch, (s,)) for s in steps
                )
            else:
                jobs = self._stream_jobs(pool)
            pending: deque[cf.Future] = deque()
            for fn, args in jobs:
                pending.append(pool.submit(fn, *args))
                if len(pending) > self.prefetch:
                    yield from self._hand_out(pending.popleft())
            while pending:
                yield from self._hand_out(pending.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- internals

    def _hand_out(self, fut: cf.Future) -> Iterator[dict[str, Any]]:
        out, skipped = fut.result()
        self._skipped += skipped
        if out is not None:
            yield out

    def _train_steps(self) -> Iterator[int]:
        step = self.start_step
        while True:
            yield step
            step += 1

    def _eval_steps(self) -> list[int]:
        n, g, b = len(self.source), self.global_batch_size, self.batch_size
        total = -(-n // g)
        return [s for s in range(self.start_step, total) if s * g + self.rank * b < n]

    def _perm(self, epoch: int) -> np.ndarray:
        with self._lock:
            perm = self._perms.get(epoch)
            if perm is not None:
                return perm
        perm = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.source))
        with self._lock:
            self._perms[epoch] = perm
            while len(self._perms) > 4:
                self._perms.popitem(last=False)
        return perm

    def _sample_rng(self, step: int, position: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 1, step, position])

    def _read_replacing(self, index: int) -> tuple[Sample, int]:
        """Sample ``index`` or, if unreadable, the next readable one in source order."""
        src: IndexedSource = self.source  # type: ignore[assignment]
        n, skipped = len(src), 0
        for t in range(n):
            i = (index + t) % n
            if i in self._bad:
                skipped += 1
                continue
            sample = src.get(i)
            if sample is not None:
                return sample, skipped
            self._bad.add(i)
            skipped += 1
        raise RuntimeError(f"source {src.name}: no readable samples ({n} tried)")

    def _indexed_batch(self, step: int) -> tuple[dict[str, Any] | None, int]:
        src: IndexedSource = self.source  # type: ignore[assignment]
        n, b = len(src), self.batch_size
        base = step * self.global_batch_size + self.rank * b
        arrays, samples, skipped = [], [], 0
        for j in range(b):
            position, g = self.rank * b + j, base + j
            if self.train:
                sample, s = self._read_replacing(int(self._perm(g // n)[g % n]))
                skipped += s
                arrays.append(self._transform(sample, step, position))
            else:
                if g >= n:
                    break
                sample = src.get(g)
                if sample is None:
                    skipped += 1
                    continue
                arrays.append(_eval_array(sample.image, self.spec))
            samples.append(sample)
        if not samples:
            return None, skipped
        return self._collate(step, samples, arrays), skipped

    def _transform(self, sample: Sample, step: int, position: int) -> np.ndarray:
        return train_transform(
            sample.image,
            self.spec,
            self._sample_rng(step, position),
            self.scale,
            self.ratio,
            self.hflip,
        )

    def _collate(self, step: int, samples: list[Sample], arrays: list[np.ndarray]) -> dict:
        tokens = None
        if self.tokenizer is not None:
            tokens = np.asarray(
                self.tokenizer.encode([s.caption for s in samples], self.context_length),
                dtype=np.int64,
            )
        labels = np.asarray([-1 if s.label is None else s.label for s in samples], np.int64)
        return {
            "images": _stack(arrays),
            "tokens": tokens,
            "labels": labels,
            "keys": [s.key for s in samples],
            "step": step,
        }

    def _stream_batch(self, step: int, samples: list[Sample], skipped: int) -> tuple[dict, int]:
        if self.train:
            arrays = [
                self._transform(s, step, self.rank * self.batch_size + j)
                for j, s in enumerate(samples)
            ]
        else:
            arrays = [_eval_array(s.image, self.spec) for s in samples]
        return self._collate(step, samples, arrays), skipped

    def _stream_samples(self, pool: Any) -> Iterator[Sample | None]:
        src: TarShardSource = self.source  # type: ignore[assignment]
        window = max(2, self.num_workers) * self.batch_size
        while True:
            readable = False
            for sample in _ordered_map(pool, src.decode, src.records(), window):
                readable = readable or sample is not None
                yield sample
            if not self.train:
                return
            if not readable:
                raise RuntimeError(f"source {src.name}: no readable samples in a full pass")

    def _stream_jobs(self, pool: Any) -> Iterator[tuple[Callable[..., Any], tuple[Any, ...]]]:
        stream = self._stream_samples(pool)
        to_skip = self.start_step * self.batch_size
        while to_skip:
            sample = next(stream, StopIteration)
            if sample is StopIteration:
                return
            if sample is not None:
                to_skip -= 1
        step = self.start_step
        while True:
            samples: list[Sample] = []
            skipped = 0
            for sample in stream:
                if sample is None:
                    skipped += 1
                    continue
                samples.append(sample)
                if len(samples) == self.batch_size:
                    break
            if not samples:
                self._skipped += skipped  # unreadable samples after the last batch
                return
            yield self._stream_batch, (step, samples, skipped)
            step += 1
