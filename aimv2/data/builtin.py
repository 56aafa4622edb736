"""The built-in sets ``builtin:digits`` and ``builtin:shapes``, and every caption they
can produce (:func:`builtin_captions`)."""

from __future__ import annotations

import functools
import importlib.resources
import io
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .sample import IndexedSource, Sample, _check_split

SPLITS = ("train", "heldout", "all")

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
