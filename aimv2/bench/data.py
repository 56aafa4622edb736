"""``aimv2 bench --mode data``: images/s of :class:`aimv2.data.Loader` alone, per worker
count, beside the backend's own data loader (``torch.utils.data.DataLoader``) running
the same PIL transforms with the same number of workers, in the same interleaved
rounds; with and without reduced JPEG decoding; and a per-image profile of where the
time goes (decode, crop and resize, normalize, shared-memory copies).

``--data photos`` (or ``photos?n=500&size=640x480``) generates a folder of JPEG photos
with captions first (:func:`make_photos`): smooth gradients, overlapping blurred shapes
and sensor-like grain, about 50 KB each at 640×480, quality 90.

Example:
    >>> import aimv2
    >>> r = run_data(aimv2.presets.get("aimv2-test-tiny").encoder, "photos?n=8&size=64x48",
    ...              "torch", workers=[0], batch=4, repeats=1, seconds=0.05)
    >>> [row.impl for row in r.rows]
    ['aimv2 Loader, 0 workers', 'aimv2 Loader, 0 workers, full decode', 'torch DataLoader, 0 workers']
"""

from __future__ import annotations

import io
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .. import specs as S
from ..backend import BackendUnavailable
from ..data import IndexedSource, Loader, open_source, train_transform
from ..data.decode import decode_for_crop, encoded_size
from ..data.transforms import _normalize, _random_resized_box
from .report import BenchReport, Row
from .subject import Skip, bench_module

__all__ = ["make_photo", "make_photos", "PILDataset", "profile", "run_data"]


def make_photo(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A procedurally drawn RGB "photo" of ``size`` (width, height): a lit gradient,
    6–13 blurred ellipses and polygons, and grain — JPEG-compressible like a photo.

    Example:
        >>> make_photo(0, (64, 48)).size
        (64, 48)
    """
    w, h = size
    rng = np.random.default_rng([seed, 0xF0])
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    tilt = rng.uniform(-80, 80, (3, 2))
    img = np.stack(
        [base[c] + (x / w - 0.5) * tilt[c, 0] + (y / h - 0.5) * tilt[c, 1] for c in range(3)], -1
    )
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    scale = min(w, h) / 480
    for _ in range(int(rng.integers(6, 14))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 160) * scale
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r], fill=colour)
        else:
            angles = np.sort(rng.uniform(0, 2 * math.pi, 5))
            draw.polygon(
                [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles], fill=colour
            )
    arr = np.asarray(pil.filter(ImageFilter.GaussianBlur(1.2)), np.float32)
    arr = arr + rng.normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_photos(
    folder: str | os.PathLike, n: int = 500, size: tuple[int, int] = (640, 480), quality: int = 90
) -> Path:
    """Write ``n`` photos (:func:`make_photo`) as ``NNNNN.jpg`` with ``NNNNN.txt`` captions
    into ``folder`` (a caption folder for :func:`aimv2.data.open_source`); kept if there.

    Example:
        >>> import tempfile
        >>> from aimv2.data import open_source
        >>> len(open_source(make_photos(tempfile.mkdtemp(), 3, (64, 48))))
        3
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: expected a positive number of photos")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        jpg = root / f"{i:05d}.jpg"
        if not jpg.exists():
            buf = io.BytesIO()
            make_photo(i, size).save(buf, "JPEG", quality=quality)
            tmp = root / f".{i:05d}.jpg.tmp"
            tmp.write_bytes(buf.getvalue())
            tmp.replace(jpg)
        (root / f"{i:05d}.txt").write_text(f"a photo, number {i}\n")
    return root


def _photos_source(data: str) -> str:
    """The folder a ``photos?n=…&size=WxH`` source names (generated once, in the temp dir)."""
    _, _, query = data.partition("?")
    opts = dict(parse_qsl(query))
    unknown = set(opts) - {"n", "size"}
    if unknown:
        raise ValueError(f"data={data!r}: unknown options {sorted(unknown)}; photos takes n, size")
    try:
        n = int(opts.get("n", 500))
        w, h = (int(v) for v in opts.get("size", "640x480").split("x"))
    except ValueError:
        raise ValueError(f"data={data!r}: expected photos?n=INT&size=WxH") from None
    folder = Path(tempfile.gettempdir()) / f"aimv2-bench-photos-{n}-{w}x{h}"
    return str(make_photos(folder, n, (w, h)))


class PILDataset:
    """The baseline's dataset: sample ``i`` of an indexed source, its image decoded in
    full and put through :func:`aimv2.data.train_transform` (the loader's PIL
    transforms) with an RNG from ``(seed, i)``; returns (image, caption).

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8)
        >>> ds = PILDataset(open_source("builtin:digits"), spec)
        >>> len(ds), ds[0][0].shape
        (1438, (3, 8, 8))
    """

    def __init__(self, source: IndexedSource, spec: S.EncoderSpec, seed: int = 0) -> None:
        self.source, self.spec, self.seed, self.epoch = source, spec, seed, 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[np.ndarray, str]:
        raw = self.source._load_raw(int(i))
        rng = np.random.default_rng([self.seed, int(i)])
        return train_transform(raw.image, self.spec, rng), raw.captions[0]


class _Subject:
    """One loader being timed: ``next_batch()``, a prefetch depth, and how to stop it."""

    def __init__(self, label: str, make: Callable[[], tuple[Callable[[], Any], int, Callable]]):
        self.label, self.make = label, make
        self.next_batch: Callable[[], Any] = lambda: None
        self.prefetch, self.stop = 0, (lambda: None)
        self.batches = 1

    def prepare(self, seconds: float) -> None:
        """Start the loader, and size a round to about ``seconds`` at steady state."""
        self.next_batch, self.prefetch, self.stop = self.make()
        for _ in range(2 * self.prefetch + 1):  # started, prefetch filled and drained
            self.next_batch()
        t0 = time.perf_counter()
        for _ in range(3):
            self.next_batch()
        took = max((time.perf_counter() - t0) / 3, 1e-4)
        self.batches = min(max(3, math.ceil(seconds / took)), 1000)

    def run(self) -> float:
        """Seconds per batch at steady state: the batches made while idle are taken first."""
        for _ in range(self.prefetch):
            self.next_batch()
        t0 = time.perf_counter()
        for _ in range(self.batches):
            self.next_batch()
        return (time.perf_counter() - t0) / self.batches


def profile(source: IndexedSource, spec: S.EncoderSpec, n: int = 40, seed: int = 0) -> dict:
    """Milliseconds per image, in this process, of each stage of the loader's work on
    the first ``n`` samples: reading the caption and file, the full decode, crop+resize
    after it, the reduced decode+resize, flip+normalize, and the copy of the result
    into and out of a shared slot.

    Example:
        >>> import aimv2, tempfile
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8)
        >>> src = open_source(make_photos(tempfile.mkdtemp(), 2, (64, 48)))
        >>> sorted(profile(src, spec, 2))[:3]
        ['copies', 'crop+resize (full)', 'decode (full)']
    """
    th, tw = spec.image_size
    names = (
        "read",
        "decode (full)",
        "crop+resize (full)",
        "decode+resize (reduced)",
        "flip+normalize",
        "copies",
    )
    total = dict.fromkeys(names, 0.0)
    n = min(n, len(source))
    slot = np.empty((1, spec.in_channels, th, tw), np.float32)
    for i in range(n):
        t = [time.perf_counter()]
        raw = source._load_raw(i)
        data = raw.image if isinstance(raw.image, bytes) else Path(raw.image).read_bytes()
        t.append(time.perf_counter())
        w, h = encoded_size(data)
        left, top, cw, ch = box = _random_resized_box(
            w, h, np.random.default_rng([seed, i]), (0.4, 1.0), (3 / 4, 4 / 3)
        )
        full = Image.open(io.BytesIO(data)).convert("RGB")
        t.append(time.perf_counter())
        img = full.crop((left, top, left + cw, top + ch)).resize((tw, th), Image.Resampling.BICUBIC)
        t.append(time.perf_counter())
        decode_for_crop(data, box, (tw, th))
        t.append(time.perf_counter())
        arr = _normalize(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), spec)
        t.append(time.perf_counter())
        slot[0] = arr
        np.array(slot)
        t.append(time.perf_counter())
        for name, t0, t1 in zip(names, t[:-1], t[1:], strict=True):
            total[name] += t1 - t0
    return {k: v / n * 1e3 for k, v in total.items()}


def run_data(
    spec: S.EncoderSpec,
    data: str,
    backend: str,
    *,
    workers: Sequence[int] = (1, 2),
    batch: int = 32,
    repeats: int = 5,
    seed: int = 0,
    seconds: float = 1.5,
    settle: float = 0.2,
    command: str | None = None,
    machine_info: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time the loader on ``data`` at ``spec``'s crop size for each worker count, beside
    the ``backend``'s data loader (skipped, with the reason, where it has none), in
    ``repeats`` interleaved rounds of about ``seconds`` each; the rows, the ratios and a
    profile in a :class:`~aimv2.bench.report.BenchReport`.

    Example:
        >>> import aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny").encoder
        >>> r = run_data(spec, "builtin:digits", "torch", workers=(0,), batch=16, repeats=1,
        ...              seconds=0.05, settle=0.0)
        >>> r.rows[0].impl
        'aimv2 Loader, 0 workers'
    """
    say = progress or (lambda _line: None)
    if spec.image_size is None:
        raise ValueError("spec: --mode data needs a fixed-size encoder (its crop size)")
    path = _photos_source(data) if data.split("?")[0] == "photos" else data
    try:
        source = open_source(path, split="train", seed=seed)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"data {data!r}: {err}") from None
    if not isinstance(source, IndexedSource):
        raise ValueError(f"data {data!r}: --mode data compares indexed sources (not shards)")
    subjects: list[_Subject] = []
    skipped: list[tuple[str, str]] = []
    bench, reason = None, ""
    try:
        bench = bench_module(backend)
    except BackendUnavailable as err:
        reason = str(err)
    for n in workers:
        for reduced in (True, False):

            def ours(n: int = n, reduced: bool = reduced) -> tuple[Callable, int, Callable]:
                loader = Loader(
                    source, spec, None, batch, seed=seed, num_workers=n, reduced_decode=reduced
                )
                it = iter(loader)
                return lambda: next(it), loader.prefetch if n else 0, it.close

            label = f"aimv2 Loader, {n} workers" + ("" if reduced else ", full decode")
            subjects.append(_Subject(label, ours))

        def theirs(n: int = n) -> tuple[Callable, int, Callable]:
            if bench is None:
                raise Skip(reason)
            try:
                call, _, info = bench.data_loader(PILDataset(source, spec, seed), batch, n, seed)
            except NotImplementedError as err:
                raise Skip(str(err)) from None
            return call, int(info.get("prefetch", 0)), info.get("close", lambda: None)

        subjects.append(_Subject(f"{backend} DataLoader, {n} workers", theirs))
    ready = []
    try:
        for s in subjects:
            say(f"preparing {s.label}")
            try:
                s.prepare(seconds)
                ready.append(s)
            except Skip as err:
                skipped.append((s.label, str(err)))
        times: list[dict[int, float]] = [{} for _ in ready]
        for r in range(repeats):
            shift = r % max(len(ready), 1)
            for i in [*range(shift, len(ready)), *range(shift)]:
                say(f"round {r + 1}/{repeats}: {ready[i].label}")
                time.sleep(settle)
                times[i][r] = ready[i].run()
    finally:
        for s in subjects:
            s.stop()
    rows = _rows(ready, times, batch)
    summary = _summary(ready, times, workers, backend)
    first = source._load_raw(0).image if len(source) else None
    if isinstance(first, (bytes, str, os.PathLike)):
        prof = profile(source, spec, seed=seed)
        summary.append(
            "data: per image on one core (ms): "
            + ", ".join(f"{k} {v:.2f}" for k, v in prof.items())
        )
    else:  # a source of decoded arrays (builtin:*): nothing to decode
        summary.append(f"data: no per-image decode profile ({source.name} holds decoded images)")
    th, tw = spec.image_size
    return BenchReport(
        command=command or "aimv2.bench.data.run_data(...)",
        title=f"aimv2 bench: data loader: {data}, {len(source)} images, crops {th}×{tw}, "
        f"batch {batch}",
        machine=machine_info or {},
        flops={},
        matmul={},
        rows=rows,
        skipped=skipped,
        summary=summary,
        settings={"data": data, "workers": list(workers), "batch_size": batch, "repeats": repeats},
    )


def _rows(ready: list[_Subject], times: list[dict[int, float]], batch: int) -> list[Row]:
    rows = []
    base = times[0] if times else {}
    for s, ts in zip(ready, times, strict=True):
        seconds = statistics.median(ts.values())
        per = [base[r] / t for r, t in ts.items() if r in base]
        rows.append(
            Row(
                mode="data",
                impl=s.label,
                note="",
                batch=batch,
                seconds=seconds,
                images_per_s=batch / seconds,
                gflops=None,
                of_matmul=None,
                peak_bytes=None,
                relative=statistics.median(per) if per else None,
                data_wait=None,
                times=[ts[r] for r in sorted(ts)],
            )
        )
    return rows


def _summary(
    ready: list[_Subject], times: list[dict[int, float]], workers: Sequence[int], backend: str
) -> list[str]:
    by = {s.label: ts for s, ts in zip(ready, times, strict=True)}

    def ratio(a: str, b: str) -> tuple[float, float, int] | None:
        if a not in by or b not in by:
            return None
        per = [by[b][r] / t for r, t in by[a].items() if r in by[b]]
        return (statistics.median(per), min(per), len(per)) if per else None

    out = []
    for n in workers:
        ours = f"aimv2 Loader, {n} workers"
        pairs = [
            (
                f"{backend} DataLoader, {n} workers",
                f"aimv2 Loader ÷ {backend} DataLoader, {n} workers",
            ),
            (f"{ours}, full decode", f"reduced ÷ full decode, {n} workers"),
        ]
        if n != workers[0]:
            first = f"aimv2 Loader, {workers[0]} workers"
            pairs.append((first, f"aimv2 Loader, {n} ÷ {workers[0]} workers"))
        for other, text in pairs:
            got = ratio(ours, other)
            if got:
                out.append(
                    f"data: {text} = {got[0]:.2f}× (median of {got[2]} interleaved rounds; "
                    f"lowest {got[1]:.2f}×)"
                )
    return out
