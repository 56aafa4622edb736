"""Line charts of training metrics, drawn with Pillow only (no matplotlib).

:func:`plot_metrics` reads a run's ``metrics.jsonl`` (one JSON object per line,
with ``step`` and numeric values) and draws the chosen keys against ``step``;
:func:`plot_series` draws any ``{name: (xs, ys)}`` series. Charts have a white
background, light grid lines at round tick values, one coloured line per series
(colours from :data:`PALETTE`, in order), a legend and an optional title; the
y axis switches to log scale when the values span more than two decades.

Example:
    >>> import json, os, tempfile
    >>> run = tempfile.mkdtemp()
    >>> with open(os.path.join(run, "metrics.jsonl"), "w") as f:
    ...     for step in range(1, 51):
    ...         _ = f.write(json.dumps({"step": step, "loss": 5.0 / step}) + "\\n")
    >>> plot_metrics(run, os.path.join(run, "loss.png")).name
    'loss.png'
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["BACKGROUND", "PALETTE", "nice_ticks", "plot_metrics", "plot_series", "read_metrics"]

#: Background colour of every chart.
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

#: Line colours, used in order (series ``i`` gets ``PALETTE[i % len(PALETTE)]``).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)

_AXIS = (70, 70, 70)
_GRID = (232, 232, 232)
_TEXT = (30, 30, 30)
_LEGEND_EDGE = (200, 200, 200)

PathLike = str | os.PathLike[str]
Series = tuple[Sequence[float], Sequence[float]]


# --------------------------------------------------------------------------- reading


def _number(v: Any) -> float | None:
    """``v`` as a finite float, or None (bools, strings, NaN and inf are not numbers)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def read_metrics(
    metrics_path_or_dir: PathLike, keys: Iterable[str] | None = None
) -> dict[str, tuple[list[float], list[float]]]:
    """Read ``metrics.jsonl`` into ``{key: (steps, values)}``, sorted by step.

    Lines that are not JSON objects with a finite numeric ``step`` are skipped, as
    are non-numeric or non-finite values. When a step appears more than once (a
    resumed run), the last row wins. Keys with no values are left out.

    Args:
        metrics_path_or_dir: the ``.jsonl`` file, or a run directory holding
            ``metrics.jsonl``.
        keys: the keys to read; ``None`` reads every numeric key except ``step``.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
        >>> _ = open(path, "w").write('{"step": 2, "loss": 1.5}\\nnot json\\n{"step": 1, "loss": 2}\\n')
        >>> read_metrics(path)
        {'loss': ([1.0, 2.0], [2.0, 1.5])}
    """
    path = _metrics_file(metrics_path_or_dir)
    wanted = None if keys is None else _key_list(keys)
    rows: dict[float, dict[str, float]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            step = _number(row.get("step"))
            if step is None:
                continue
            names = wanted if wanted is not None else [k for k in row if k != "step"]
            values = {k: v for k in names if (v := _number(row.get(k))) is not None}
            if values:
                rows.setdefault(step, {}).update(values)
    out: dict[str, tuple[list[float], list[float]]] = {}
    order = (
        wanted if wanted is not None else list(dict.fromkeys(k for r in rows.values() for k in r))
    )
    for key in order:
        pts = [(s, r[key]) for s, r in sorted(rows.items()) if key in r]
        if pts:
            out[key] = ([s for s, _ in pts], [v for _, v in pts])
    return out


def _metrics_file(p: Any) -> Path:
    if not isinstance(p, (str, os.PathLike)):
        raise TypeError(
            f"metrics_path_or_dir must be a path to metrics.jsonl or a run directory, "
            f"got {type(p).__name__}"
        )
    path = Path(p)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {str(path)!r} does not exist")
    return path


def _key_list(keys: Any) -> list[str]:
    if isinstance(keys, str):
        return [keys]
    out = list(dict.fromkeys(keys))
    if not out or not all(isinstance(k, str) for k in out):
        raise TypeError(f"keys must be a non-empty sequence of strings, got {keys!r}")
    return out


# --------------------------------------------------------------------------- ticks


def nice_ticks(lo: float, hi: float, max_ticks: int = 8) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) within [lo, hi].

    Returns at most ``max_ticks`` values, and at least one.

    Example:
        >>> nice_ticks(0, 1)
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        >>> nice_ticks(3, 97)
        [20.0, 40.0, 60.0, 80.0]
    """
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"nice_ticks: need finite lo <= hi, got lo={lo}, hi={hi}")
    if max_ticks < 2:
        raise ValueError(f"nice_ticks: max_ticks must be >= 2, got {max_ticks}")
    if lo == hi:
        return [lo]
    step = _nice_step(lo, hi, max_ticks)
    return _ticks_with_step(lo, hi, step)


def _nice_step(lo: float, hi: float, max_ticks: int) -> float:
    """The smallest step of 1, 2, 2.5 or 5 times a power of ten giving <= max_ticks ticks."""
    mag = 10.0 ** math.floor(math.log10((hi - lo) / max_ticks))
    while True:
        for m in (1.0, 2.0, 2.5, 5.0):
            step = m * mag
            if len(_ticks_with_step(lo, hi, step)) <= max_ticks:
                return step
        mag *= 10.0


def _ticks_with_step(lo: float, hi: float, step: float) -> list[float]:
    eps = step * 1e-9
    k0, k1 = math.ceil((lo - eps) / step), math.floor((hi + eps) / step)
    digits = max(0, 3 - math.floor(math.log10(step)))  # drop float noise like 0.30000000000000004
    return [round(k * step, digits) + 0.0 for k in range(k0, k1 + 1)]


def _log_ticks(lo: float, hi: float, max_ticks: int) -> list[float]:
    """Ticks for a log axis over [lo, hi] (both > 0): decades, thinned or refined."""
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    every = max(1, math.ceil((e1 - e0 + 1) / max_ticks))
    ticks = [10.0**e for e in range(e0, e1 + 1) if (e - e0) % every == 0]
    inside = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    if len(inside) < 3:
        more = sorted({m * 10.0**e for e in range(e0, e1 + 1) for m in (1, 2, 5)})
        inside = [t for t in more if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    if len(inside) > max_ticks:
        inside = inside[:: math.ceil(len(inside) / max_ticks)]
    if len(inside) < 2:
        inside = [t for t in nice_ticks(lo, hi, max_ticks) if t > 0]
    return inside


def _labels(ticks: list[float], log: bool) -> list[str]:
    if log:
        out = []
        for t in ticks:
            e = math.floor(math.log10(t) + 1e-9)
            m = round(t / 10.0**e, 6)
            if -3 <= e <= 4:
                out.append(f"{t:.{max(0, -e)}f}")
            else:
                out.append(f"1e{e}" if m == 1 else f"{m:g}e{e}")
        return out
    if len(ticks) < 2:
        return [f"{t:.4g}" for t in ticks]
    step = abs(ticks[1] - ticks[0])
    top = max(abs(t) for t in ticks)
    scale, suffix = 1.0, ""
    for s, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if top >= 10 * s:
            scale, suffix = s, suf
            break
    if suffix == "" and 0 < top < 1e-3:
        return [f"{t:.1e}" for t in ticks]
    decimals = max(0, -math.floor(math.log10(step / scale) + 1e-9))
    if f"{step / scale:.{decimals}f}" != f"{step / scale:g}":  # steps like 2.5
        decimals += 1
    return [("0" if t == 0 else f"{t / scale:.{decimals}f}{suffix}") for t in ticks]


# --------------------------------------------------------------------------- drawing


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, AttributeError, OSError, ImportError):  # pragma: no cover
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]


def _auto_log(ys: list[np.ndarray]) -> bool:
    """Log scale when all values are positive and span more than two decades."""
    vals = np.concatenate(ys) if ys else np.zeros(0)
    if vals.size == 0 or (vals <= 0).any():
        return False
    return float(vals.max()) / float(vals.min()) > 100.0


def _clean(name: str, xy: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, ys)`` as float arrays sorted by x, non-finite points dropped."""
    if not isinstance(xy, (tuple, list)) or len(xy) != 2:
        raise TypeError(f"series[{name!r}] must be an (xs, ys) pair, got {type(xy).__name__}")
    try:
        xs = np.asarray(xy[0], dtype=np.float64).reshape(-1)
        ys = np.asarray(xy[1], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise TypeError(f"series[{name!r}]: xs and ys must be numeric sequences ({e})") from None
    if xs.shape != ys.shape:
        raise ValueError(f"series[{name!r}]: xs and ys differ in length ({xs.size} vs {ys.size})")
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    order = np.argsort(xs, kind="stable")
    return xs[order], ys[order]


def _decimate(px: np.ndarray, py: np.ndarray, width: int) -> list[tuple[float, float]]:
    """Pixel polyline; beyond ~4 points per pixel column keep each column's envelope."""
    if px.size <= 4 * max(width, 1):
        return list(zip(px.tolist(), py.tolist(), strict=True))
    col = np.round(px).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
    ends = np.r_[starts[1:], col.size] - 1
    lo, hi = np.minimum.reduceat(py, starts), np.maximum.reduceat(py, starts)
    pts: list[tuple[float, float]] = []
    for c, a, b, mn, mx in zip(col[starts], starts, ends, lo, hi, strict=True):
        pts += [(c, py[a]), (c, mn), (c, mx), (c, py[b])]
    return [(float(x), float(y)) for x, y in pts]


def plot_series(
    series: Mapping[str, Series],
    out_png: PathLike,
    *,
    title: str | None = None,
    xlabel: str | None = "step",
    ylabel: str | None = None,
    size: tuple[int, int] = (900, 500),
    log_y: bool | None = None,
) -> Path:
    """Draw ``{name: (xs, ys)}`` as a line chart and save it as a PNG.

    Args:
        series: name -> ``(xs, ys)``; points with a non-finite coordinate are
            dropped and each series is drawn in x order, in ``PALETTE`` colours in
            the mapping's order. Series left with no points are omitted.
        out_png: where to write the PNG (parent directories are created).
        title, xlabel, ylabel: optional text (``None`` leaves it out).
        size: ``(width, height)`` in pixels, at least ``(200, 150)``.
        log_y: force a log (``True``) or linear (``False``) y axis; ``None``
            picks log when all values are positive and span more than 2 decades.

    Returns:
        The path written.

    Example:
        >>> import os, tempfile
        >>> out = os.path.join(tempfile.mkdtemp(), "s.png")
        >>> plot_series({"a": ([0, 1, 2], [3.0, 1.0, 2.0])}, out, title="demo").suffix
        '.png'
    """
    if not isinstance(series, Mapping) or not series:
        raise ValueError("plot_series: series must be a non-empty mapping of name -> (xs, ys)")
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        or size[0] < 200
        or size[1] < 150
    ):
        raise ValueError(
            f"plot_series: size must be (width, height) ints >= (200, 150), got {size!r}"
        )
    data = []
    for i, (name, xy) in enumerate(series.items()):
        xs, ys = _clean(str(name), xy)
        if xs.size:
            data.append((str(name), PALETTE[i % len(PALETTE)], xs, ys))
    if not data:
        raise ValueError(
            f"plot_series: no finite points to plot in series {', '.join(map(repr, series))}"
        )
    log = _auto_log([d[3] for d in data]) if log_y is None else bool(log_y)
    if log and any((d[3] <= 0).any() for d in data):
        bad = next(d[0] for d in data if (d[3] <= 0).any())
        raise ValueError(f"plot_series: log_y=True needs positive values; {bad!r} has values <= 0")

    width, height = size
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    f_tick, f_label, f_title = _font(12), _font(13), _font(16)

    # Data limits: x exact, y padded by 5% (in log10 space on a log axis).
    xmin = min(float(d[2].min()) for d in data)
    xmax = max(float(d[2].max()) for d in data)
    if xmin == xmax:
        xmin, xmax = xmin - 1.0, xmax + 1.0
    tf = np.log10 if log else (lambda v: np.asarray(v, dtype=np.float64))
    tmin = min(float(tf(d[3]).min()) for d in data)
    tmax = max(float(tf(d[3]).max()) for d in data)
    if tmin == tmax:
        pad = 0.5 if log else max(abs(tmin) * 0.1, 1.0)
    else:
        pad = 0.05 * (tmax - tmin)
    tmin, tmax = tmin - pad, tmax + pad
    if log:
        yticks = _log_ticks(10.0**tmin, 10.0**tmax, 8)
    else:
        yticks = nice_ticks(tmin, tmax, 8)
    ylabels = _labels(yticks, log)

    # Layout: margins sized to the text that goes in them.
    label_w = max(_text_size(draw, s, f_tick)[0] for s in ylabels)
    tick_h = _text_size(draw, "0123456789k", f_tick)[1]
    left = 14 + label_w + 8 + (_text_size(draw, ylabel, f_label)[1] + 10 if ylabel else 0)
    top = 16 + (_text_size(draw, title, f_title)[1] + 14 if title else 0)
    bottom = 10 + tick_h + 8 + (_text_size(draw, xlabel, f_label)[1] + 10 if xlabel else 0)
    x0, y0, x1, y1 = left, top, width - 24, height - bottom
    if x1 - x0 < 50 or y1 - y0 < 50:
        raise ValueError(f"plot_series: size {size!r} leaves no room for the plot area")

    def X(v: Any) -> np.ndarray:
        return x0 + (np.asarray(v, dtype=np.float64) - xmin) / (xmax - xmin) * (x1 - x0)

    def Y(v: Any) -> np.ndarray:
        return y1 - (tf(v) - tmin) / (tmax - tmin) * (y1 - y0)

    # x ticks: as many as fit without labels colliding.
    xticks: list[float] = []
    for n in (10, 8, 6, 5, 4, 3, 2):
        xticks = nice_ticks(xmin, xmax, n)
        xlabels = _labels(xticks, False)
        widest = max(_text_size(draw, s, f_tick)[0] for s in xlabels)
        if len(xticks) < 2 or (x1 - x0) / max(len(xticks), 1) > widest + 16:
            break

    # Grid and tick labels.
    for t, s in zip(yticks, ylabels, strict=True):
        y = float(Y(t))
        if y0 - 0.5 <= y <= y1 + 0.5:
            draw.line([(x0, y), (x1, y)], fill=_GRID, width=1)
            tw, th = _text_size(draw, s, f_tick)
            draw.text((x0 - 8 - tw, y - th / 2 - 2), s, fill=_TEXT, font=f_tick)
    for t, s in zip(xticks, xlabels, strict=True):
        x = float(X(t))
        if x0 - 0.5 <= x <= x1 + 0.5:
            draw.line([(x, y0), (x, y1)], fill=_GRID, width=1)
            draw.line([(x, y1), (x, y1 + 4)], fill=_AXIS, width=1)
            tw, _ = _text_size(draw, s, f_tick)
            draw.text((x - tw / 2, y1 + 7), s, fill=_TEXT, font=f_tick)
    draw.rectangle([x0, y0, x1, y1], outline=_AXIS, width=1)

    # Series (clipped to the plot area by construction: limits come from the data).
    for _, color, xs, ys in data:
        pts = _decimate(X(xs), Y(ys), x1 - x0)
        if len(pts) == 1:
            (px, py) = pts[0]
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        else:
            draw.line(pts, fill=color, width=2, joint="curve")

    # Text: title, axis labels.
    if title:
        tw, _ = _text_size(draw, title, f_title)
        draw.text(((x0 + x1 - tw) / 2, 12), title, fill=_TEXT, font=f_title)
    if xlabel:
        tw, _ = _text_size(draw, xlabel, f_label)
        draw.text(((x0 + x1 - tw) / 2, y1 + 10 + tick_h + 6), xlabel, fill=_TEXT, font=f_label)
    if ylabel:
        tw, th = _text_size(draw, ylabel, f_label)
        mask = Image.new("L", (tw + 4, th + 8), 0)
        ImageDraw.Draw(mask).text((2, 0), ylabel, fill=255, font=f_label)
        mask = mask.rotate(90, expand=True)
        img.paste(_TEXT, (10, int((y0 + y1 - mask.height) / 2)), mask)

    _legend(img, draw, data, (x0, y0, x1, y1), f_label)

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    return out


def _legend(
    img: Image.Image,
    draw: ImageDraw.ImageDraw,
    data: list[tuple[str, tuple[int, int, int], np.ndarray, np.ndarray]],
    box: tuple[float, float, float, float],
    font: Any,
) -> None:
    """A boxed legend in the plot-area corner that covers the fewest drawn pixels."""
    x0, y0, x1, y1 = box
    sizes = [_text_size(draw, name, font) for name, *_ in data]
    row_h = max(16, max(h for _, h in sizes) + 6)
    w = 10 + 24 + 8 + max(tw for tw, _ in sizes) + 10
    h = 8 + row_h * len(data) + 4
    corners = [
        (x1 - 8 - w, y0 + 8),  # top right
        (x0 + 8, y0 + 8),  # top left
        (x1 - 8 - w, y1 - 8 - h),  # bottom right
        (x0 + 8, y1 - 8 - h),  # bottom left
    ]
    pixels = np.asarray(img)

    def covered(c: tuple[float, float]) -> int:
        cx, cy = int(c[0]), int(c[1])
        region = pixels[max(cy, 0) : cy + int(h), max(cx, 0) : cx + int(w)]
        return int((region != np.array(BACKGROUND, dtype=np.uint8)).any(-1).sum())

    lx, ly = min(corners, key=covered)
    draw.rectangle([lx, ly, lx + w, ly + h], fill=BACKGROUND, outline=_LEGEND_EDGE, width=1)
    for i, ((name, color, _, _), (_, th)) in enumerate(zip(data, sizes, strict=True)):
        cy = ly + 8 + i * row_h + row_h / 2 - 2
        draw.line([(lx + 10, cy), (lx + 34, cy)], fill=color, width=3)
        draw.text((lx + 42, cy - th / 2 - 3), name, fill=_TEXT, font=font)


def plot_metrics(
    metrics_path_or_dir: PathLike,
    out_png: PathLike,
    keys: Sequence[str] = ("loss", "pixel_loss", "text_loss"),
    title: str | None = None,
    *,
    size: tuple[int, int] = (900, 500),
    log_y: bool | None = None,
) -> Path:
    """Plot ``keys`` from a run's ``metrics.jsonl`` against ``step`` and save a PNG.

    Malformed lines are skipped (see :func:`read_metrics`); keys absent from the
    file are left out of the chart (the colour order follows ``keys``).

    Args:
        metrics_path_or_dir: ``metrics.jsonl`` or the run directory holding it.
        out_png: where to write the PNG.
        keys: metric names to draw.
        title: chart title; ``None`` for none.
        size, log_y: as in :func:`plot_series`.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: no such file (or no ``metrics.jsonl`` in the directory).
        ValueError: no row has a numeric ``step`` and any of ``keys``.

    Example:
        >>> import os, tempfile
        >>> run = tempfile.mkdtemp()
        >>> _ = open(os.path.join(run, "metrics.jsonl"), "w").write('{"step": 1, "loss": 2.0}\\n')
        >>> plot_metrics(run, os.path.join(run, "m.png"), title="run").exists()
        True
    """
    wanted = _key_list(keys)
    path = _metrics_file(metrics_path_or_dir)
    found = read_metrics(path, wanted)
    if not found:
        raise ValueError(
            f"{path}: no usable rows: need JSON lines with a numeric 'step' and a finite "
            f"value for at least one of {wanted}"
        )
    # Keep each key's palette slot stable whichever keys are present.
    series: dict[str, Series] = {}
    for k in wanted:
        series[k] = found.get(k, ([], []))
    return plot_series(series, out_png, title=title, size=size, log_y=log_y)
