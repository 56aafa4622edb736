"""Charts of a run, drawn with matplotlib: loss curves and probe accuracies.

:func:`plot_metrics` reads a run's ``metrics.jsonl`` (one JSON object per line, with
``step`` and numeric values) and draws one panel per loss term — the raw logged points
and a smoothed line over them, on a log y axis — plus a panel of the learning rate
(:func:`loss_figure` returns the figure itself). :func:`plot_probes` draws the probe
accuracies of the quickstart report as grouped bars (:func:`probe_figure`). For any
other chart, use matplotlib directly.

Figures are ``matplotlib.figure.Figure`` objects on an Agg canvas, never pyplot's: no
display is needed and the backend a user chose for ``pyplot`` is left alone. matplotlib
is imported when the first figure is drawn, not with this module: it takes about half a
second, and the ``aimv2`` command imports this module at every start.

Example:
    >>> import json, os, tempfile
    >>> run = tempfile.mkdtemp()
    >>> with open(os.path.join(run, "metrics.jsonl"), "w") as f:
    ...     for step in range(1, 51):
    ...         _ = f.write(json.dumps({"step": step, "loss": 5.0 / step, "lr": 1e-3}) + "\\n")
    >>> plot_metrics(run, os.path.join(run, "loss.png")).name
    'loss.png'
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import atomic_file

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "LOSS_KEYS",
    "loss_figure",
    "plot_metrics",
    "plot_probes",
    "probe_figure",
    "read_metrics",
    "save_figure",
    "smooth",
]

PathLike = str | os.PathLike[str]
Series = tuple[Sequence[float], Sequence[float]]
Metrics = Mapping[str, Series]

#: The loss terms a pre-training run logs, one panel each.
LOSS_KEYS: tuple[str, ...] = ("loss", "pixel_loss", "text_loss")

_TITLES = {
    "loss": "total loss",
    "pixel_loss": "pixel loss (next-patch MSE)",
    "text_loss": "text loss (caption cross-entropy)",
    "lr": "learning rate",
}
_YLABELS = {
    "loss": "loss",
    "pixel_loss": "MSE (normalized pixels)",
    "text_loss": "cross-entropy (nats)",
    "lr": "learning rate",
}
_PROBE_ROWS = {
    "pretrained": "AIMv2 pre-trained",
    "random_init": "random init\n(same architecture)",
    "raw_pixels": "raw pixels\n(no encoder)",
}
_PROBE_KINDS = {
    "attentive": "attentive probe",
    "linear": "linear probe",
    "finetuned": "fine-tuned end to end",
}
_MIN_SIZE = (320, 240)
_DPI = 100


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


# --------------------------------------------------------------------------- helpers


def smooth(values: Sequence[float], window: int, *, log: bool = False) -> np.ndarray:
    """Centred moving average over ``window`` points (odd; fewer at the ends).

    ``log=True`` averages the logarithms (a geometric mean), the smoothing that looks
    right on a log axis: one spike does not lift the line by decades.

    Example:
        >>> smooth([1.0, 2.0, 3.0, 10.0], 3).tolist()
        [1.5, 2.0, 5.0, 6.5]
        >>> smooth([1.0, 100.0], 3, log=True).round(6).tolist()
        [10.0, 10.0]
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"smooth: window must be a positive int, got {window!r}")
    if log:
        if (v <= 0).any():
            raise ValueError("smooth: log=True needs positive values")
        v = np.log(v)
    half = window // 2
    csum = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(v.size)
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, v.size)
    out = (csum[hi] - csum[lo]) / (hi - lo)
    return np.exp(out) if log else out


def _window(n: int) -> int:
    """A smoothing window of about 1/25 of the points, odd, at least 3 (1 under 3 points)."""
    return 1 if n < 3 else max(3, round(n / 25)) | 1


def _clean(name: str, xy: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, ys)`` as float arrays sorted by x, non-finite points dropped."""
    if not isinstance(xy, (tuple, list)) or len(xy) != 2:
        raise TypeError(f"metrics[{name!r}] must be an (xs, ys) pair, got {type(xy).__name__}")
    try:
        xs = np.asarray(xy[0], dtype=np.float64).reshape(-1)
        ys = np.asarray(xy[1], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metrics[{name!r}]: xs and ys must be numeric sequences ({e})") from None
    if xs.shape != ys.shape:
        raise ValueError(f"metrics[{name!r}]: xs and ys differ in length ({xs.size} vs {ys.size})")
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    order = np.argsort(xs, kind="stable")
    return xs[order], ys[order]


def _check_size(size: Any, where: str) -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        or size[0] < _MIN_SIZE[0]
        or size[1] < _MIN_SIZE[1]
    ):
        raise ValueError(f"{where}: size must be (width, height) ints >= {_MIN_SIZE}, got {size!r}")
    return int(size[0]), int(size[1])


def _figure(size: tuple[int, int]) -> Figure:
    """An empty figure of ``size`` pixels on its own Agg canvas (pyplot is never used)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plain_log_labels(ax: Axes) -> None:
    """Log-axis tick labels as plain numbers (0.3, 1, 2) instead of 3×10⁻¹, and enough
    of them: under a decade matplotlib's decade ticks would leave the axis unlabelled."""
    from matplotlib.ticker import (
        FuncFormatter,
        LogLocator,
        MaxNLocator,
        NullFormatter,
        ScalarFormatter,
    )

    fmt = FuncFormatter(lambda v, _pos: f"{v:.3g}")
    ax.yaxis.set_major_formatter(fmt)
    lo, hi = ax.get_ylim()
    if hi / lo < 10:
        plain = ScalarFormatter(useOffset=False)
        plain.set_scientific(False)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
    elif hi / lo < 30:
        ax.yaxis.set_minor_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        ax.yaxis.set_minor_formatter(fmt)
    elif hi / lo < 300:  # a decade or two: label 2 and 5 of each, plainly
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(fmt)
    else:  # decades: the decade ticks alone
        ax.yaxis.set_minor_formatter(NullFormatter())


def save_figure(fig: Figure, out_png: PathLike) -> Path:
    """Write ``fig`` as a PNG to ``out_png`` atomically (parent folders are created).

    Example:
        >>> import os, tempfile
        >>> fig = loss_figure({"loss": ([0, 1], [1.0, 2.0])})
        >>> save_figure(fig, os.path.join(tempfile.mkdtemp(), "a.png")).read_bytes()[:4]
        b'\\x89PNG'
    """
    out = Path(out_png)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return out


# --------------------------------------------------------------------------- loss curves


def _grid(n: int) -> tuple[int, int]:
    if n <= 3:
        return 1, n
    if n == 4:
        return 2, 2
    return math.ceil(n / 3), 3


def loss_figure(
    metrics: Metrics,
    keys: Sequence[str] = LOSS_KEYS,
    *,
    lr: str | None = "lr",
    title: str | None = None,
    size: tuple[int, int] | None = None,
    log_y: bool | None = None,
) -> Figure:
    """One panel per loss term in ``keys`` and one of the learning rate, as a Figure.

    Each loss panel draws the raw logged values (thin, faint) and a centred moving
    average over them (:func:`smooth`, geometric on a log axis); the legend of the first
    panel names both. Keys absent from ``metrics`` get no panel; a key keeps the colour
    of its position in ``keys`` either way.

    Args:
        metrics: ``{key: (steps, values)}``, as :func:`read_metrics` returns.
        keys: the loss terms to draw.
        lr: the learning-rate key (drawn raw, linear axis); None for no such panel.
        title: the figure's title; None for none.
        size: ``(width, height)`` in pixels; None sizes it to the panels.
        log_y: log (True) or linear (False) loss axes; None: log wherever all values
            are positive.

    Example:
        >>> fig = loss_figure({"loss": ([1, 2, 3], [3.0, 2.0, 1.0]),
        ...                    "lr": ([1, 2, 3], [1e-3, 1e-3, 5e-4])})
        >>> [(ax.get_title(), ax.get_yscale()) for ax in fig.axes]
        [('total loss', 'log'), ('learning rate', 'linear')]
    """
    from matplotlib.ticker import MaxNLocator

    wanted = _key_list(keys)
    panels = [(i, k) for i, k in enumerate(wanted) if k in metrics]
    if lr is not None and lr in metrics and lr not in wanted:
        panels.append((len(wanted), lr))
    data = []
    for i, key in panels:
        xs, ys = _clean(key, metrics[key])
        if xs.size:
            data.append((i, key, xs, ys))
    if not data:
        raise ValueError(f"loss_figure: no finite values for any of {wanted}")
    rows, cols = _grid(len(data))
    if size is None:
        size = (min(560 * cols, 1500), 400 * rows + (40 if title else 0))
    fig = _figure(_check_size(size, "loss_figure"))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(data) :]:
        ax.set_visible(False)
    legend_done = False
    for ax, (i, key, xs, ys) in zip(axes, data, strict=False):
        color = f"C{i % 10}"
        ax.set_title(_TITLES.get(key, key))
        ax.set_xlabel("step")
        ax.set_ylabel(_YLABELS.get(key, key))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.3)
        if key == lr:
            ax.plot(xs, ys, color=color, lw=1.5)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            continue
        log = bool((ys > 0).all()) if log_y is None else bool(log_y)
        if log and (ys <= 0).any():
            raise ValueError(f"loss_figure: log_y=True needs positive values; {key!r} has <= 0")
        window = _window(ys.size)
        marker = "o" if ys.size <= 50 else None
        ax.plot(xs, ys, color=color, lw=0.8, alpha=0.35, marker=marker, ms=3, label="raw")
        ax.plot(
            xs,
            smooth(ys, window, log=log),
            color=color,
            lw=2.0,
            label=f"smoothed ({window}-point mean)",
        )
        if log:
            ax.set_yscale("log")
            ax.grid(True, which="minor", axis="y", alpha=0.12)
            _plain_log_labels(ax)
        if not legend_done:
            ax.legend(loc="upper right", fontsize="small")
            legend_done = True
    if title:
        fig.suptitle(title)
    return fig


def plot_metrics(
    metrics_path_or_dir: PathLike,
    out_png: PathLike,
    keys: Sequence[str] = LOSS_KEYS,
    title: str | None = None,
    *,
    size: tuple[int, int] | None = None,
    log_y: bool | None = None,
) -> Path:
    """Plot the loss terms ``keys`` (and the learning rate) of a run to a PNG.

    Malformed lines are skipped (see :func:`read_metrics`); keys absent from the file
    get no panel. The panels are :func:`loss_figure`'s.

    Args:
        metrics_path_or_dir: ``metrics.jsonl`` or the run directory holding it.
        out_png: where to write the PNG.
        keys: loss terms to draw, one panel each.
        title: figure title; ``None`` for none.
        size, log_y: as in :func:`loss_figure`.

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
    found = read_metrics(path, [*wanted, "lr"])
    if not any(k in found for k in wanted):
        raise ValueError(
            f"{path}: no usable rows: need JSON lines with a numeric 'step' and a finite "
            f"value for at least one of {wanted}"
        )
    fig = loss_figure(found, wanted, title=title, size=size, log_y=log_y)
    return save_figure(fig, out_png)


# --------------------------------------------------------------------------- probes


def probe_figure(
    probes: Mapping[str, Mapping[str, Any]],
    *,
    title: str | None = "Frozen-trunk probes: held-out accuracy",
    size: tuple[int, int] = (760, 460),
) -> Figure:
    """Grouped bars of held-out probe accuracies, one group per encoder.

    ``probes`` is the quickstart report's: ``{encoder: {"attentive"|"linear"|"finetuned":
    {"heldout": fraction, ...}}}``, encoders ``pretrained``, ``random_init``,
    ``raw_pixels`` (others are drawn under their own names). A group's missing kind
    (raw pixels have no attentive probe) leaves no gap. Each bar carries its value.

    Example:
        >>> fig = probe_figure({"pretrained": {"attentive": {"heldout": 0.98},
        ...                                    "linear": {"heldout": 0.97}},
        ...                     "raw_pixels": {"linear": {"heldout": 0.96}}})
        >>> ax = fig.axes[0]
        >>> [t.get_text() for t in ax.texts]  # attentive bars, then linear ones
        ['98.0%', '97.0%', '96.0%']
    """
    if not isinstance(probes, Mapping) or not probes:
        raise ValueError("probe_figure: probes must be a non-empty mapping of encoder -> results")
    groups = []
    for name, res in probes.items():
        got = {}
        for kind in _PROBE_KINDS:
            acc = res.get(kind, {}).get("heldout") if isinstance(res, Mapping) else None
            if _number(acc) is not None:
                got[kind] = 100.0 * float(acc)
        if got:
            groups.append((_PROBE_ROWS.get(name, name), got))
    if not groups:
        raise ValueError(f"probe_figure: no held-out accuracy in {sorted(map(str, probes))}")
    fig = _figure(_check_size(size, "probe_figure"))
    ax = fig.subplots()
    width = 0.76 / max(len(got) for _, got in groups)
    for k, (kind, label) in enumerate(_PROBE_KINDS.items()):
        xs, hs = [], []
        for g, (_, got) in enumerate(groups):
            if kind in got:
                present = [kd for kd in _PROBE_KINDS if kd in got]
                offset = (present.index(kind) - (len(present) - 1) / 2) * width
                xs.append(g + offset)
                hs.append(got[kind])
        if xs:
            bars = ax.bar(xs, hs, width * 0.95, color=f"C{k}", label=label)
            ax.bar_label(bars, fmt="%.1f%%", padding=2, fontsize="small")
    ax.set_xticks(range(len(groups)), [name for name, _ in groups])
    ax.set_ylim(0, 108)
    ax.set_ylabel("held-out top-1 accuracy (%)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.legend(loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    if title:
        ax.set_title(title)
    return fig


def plot_probes(
    probes: Mapping[str, Mapping[str, Any]],
    out_png: PathLike,
    *,
    title: str | None = "Frozen-trunk probes: held-out accuracy",
    size: tuple[int, int] = (760, 460),
) -> Path:
    """:func:`probe_figure` saved as a PNG; returns the path written.

    Example:
        >>> import os, tempfile
        >>> out = os.path.join(tempfile.mkdtemp(), "probes.png")
        >>> plot_probes({"pretrained": {"linear": {"heldout": 0.9}}}, out).name
        'probes.png'
    """
    return save_figure(probe_figure(probes, title=title, size=size), out_png)
