"""aimv2.plot: metrics.jsonl charts drawn with Pillow."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from aimv2.plot import (
    BACKGROUND,
    PALETTE,
    _auto_log,
    _labels,
    _log_ticks,
    nice_ticks,
    plot_metrics,
    plot_series,
    read_metrics,
)


def _write_metrics(path, rows, extra_lines=()):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


def _color_count(img: Image.Image, color) -> int:
    a = np.asarray(img.convert("RGB"))
    return int((a == np.array(color, np.uint8)).all(-1).sum())


def _rows(n=200):
    return [
        {
            "step": s,
            "loss": 5 * math.exp(-s / 50) + 1,
            "pixel_loss": 3 * math.exp(-s / 50) + 0.5,
            "text_loss": 2 * math.exp(-s / 50) + 0.5,
            "lr": 1e-3,
        }
        for s in range(1, n + 1)
    ]


def test_plot_metrics_png_size_and_line_colours(tmp_path):
    _write_metrics(
        tmp_path / "metrics.jsonl",
        _rows(),
        extra_lines=["", "not json", "[1, 2]", '{"loss": 1.0}', '{"step": "x", "loss": 1}'],
    )
    out = plot_metrics(tmp_path, tmp_path / "plots" / "m.png", title="pre-training")
    assert out == tmp_path / "plots" / "m.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (900, 500)
        img.load()
        assert img.getpixel((2, 2))[:3] == BACKGROUND
        for color in PALETTE[:3]:
            assert _color_count(img, color) > 200, color
        assert _color_count(img, PALETTE[3]) == 0  # only three series drawn


def test_plot_metrics_only_draws_present_keys_and_custom_size(tmp_path):
    path = _write_metrics(tmp_path / "m.jsonl", [{"step": s, "loss": 1 / s} for s in range(1, 30)])
    out = plot_metrics(path, tmp_path / "m.png", size=(640, 360))
    with Image.open(out) as img:
        assert img.size == (640, 360)
        assert _color_count(img, PALETTE[0]) > 50
        assert _color_count(img, PALETTE[1]) == 0 and _color_count(img, PALETTE[2]) == 0
    # A key's colour follows its position in `keys`, whichever keys are present.
    out = plot_metrics(path, tmp_path / "m2.png", keys=("text_loss", "loss"))
    with Image.open(out) as img:
        assert _color_count(img, PALETTE[1]) > 50 and _color_count(img, PALETTE[0]) == 0


def test_read_metrics_skips_malformed_and_keeps_last_duplicate(tmp_path):
    path = _write_metrics(
        tmp_path / "metrics.jsonl",
        [
            {"step": 3, "loss": 3.0, "text_loss": "n/a"},
            {"step": 1, "loss": 1.0, "pixel_loss": True},
            {"step": 2, "loss": float("nan")},
            {"step": 3, "loss": 2.5},  # resumed run re-logs step 3
        ],
        extra_lines=["{broken", '"just a string"', '{"step": null, "loss": 9}'],
    )
    got = read_metrics(path, ["loss", "text_loss", "pixel_loss"])
    assert got == {"loss": ([1.0, 3.0], [1.0, 2.5])}
    assert set(read_metrics(tmp_path)) == {"loss"}


def test_errors_on_missing_or_empty_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_metrics(tmp_path, tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        plot_metrics(tmp_path / "nope.jsonl", tmp_path / "x.png")
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no usable rows"):
        plot_metrics(tmp_path, tmp_path / "x.png")
    (tmp_path / "metrics.jsonl").write_text('garbage\n{"step": 1, "acc": 0.5}\n{"loss": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: no usable rows.*'loss'"):
        plot_metrics(tmp_path, tmp_path / "x.png")
    with pytest.raises(TypeError, match="keys"):
        plot_metrics(tmp_path, tmp_path / "x.png", keys=[1])
    assert not (tmp_path / "x.png").exists()


def test_plot_series_validation(tmp_path):
    out = tmp_path / "s.png"
    with pytest.raises(ValueError, match="non-empty"):
        plot_series({}, out)
    with pytest.raises(ValueError, match=r"'a'.*differ in length"):
        plot_series({"a": ([1, 2, 3], [1, 2])}, out)
    with pytest.raises(TypeError, match=r"'a'.*pair"):
        plot_series({"a": [1, 2, 3]}, out)
    with pytest.raises(ValueError, match="no finite points"):
        plot_series({"a": ([1.0], [float("nan")])}, out)
    with pytest.raises(ValueError, match="log_y=True needs positive"):
        plot_series({"a": ([1, 2], [0.0, 1.0])}, out, log_y=True)
    with pytest.raises(ValueError, match="size"):
        plot_series({"a": ([1, 2], [1, 2])}, out, size=(50, 50))
    assert not out.exists()


def test_plot_series_single_point_and_many_points(tmp_path):
    out = plot_series({"one": ([5], [3.0])}, tmp_path / "one.png", ylabel="value")
    with Image.open(out) as img:
        assert _color_count(img, PALETTE[0]) > 10
    xs = np.arange(200_000)
    ys = np.sin(xs / 5000.0) + 0.1 * np.random.default_rng(0).standard_normal(xs.size)
    out = plot_series({"noisy": (xs, ys), "smooth": (xs, np.sin(xs / 5000.0))}, tmp_path / "n.png")
    with Image.open(out) as img:
        assert img.size == (900, 500)
        assert _color_count(img, PALETTE[0]) > 5000  # the noise band is filled in
        assert _color_count(img, PALETTE[1]) > 300


def test_log_scale_is_chosen_when_values_span_more_than_two_decades(tmp_path):
    assert _auto_log([np.array([100.0, 0.5])])
    assert not _auto_log([np.array([50.0, 1.0])])
    assert not _auto_log([np.array([1000.0, -1.0])])
    xs = np.arange(1, 500)
    ys = 1000.0 * np.exp(-xs / 50.0)  # four decades
    log_png = plot_series({"a": (xs, ys)}, tmp_path / "log.png")
    lin_png = plot_series({"a": (xs, ys)}, tmp_path / "lin.png", log_y=False)
    with Image.open(log_png) as a, Image.open(lin_png) as b:
        # On a log axis the exponential is a straight line through the middle of the plot;
        # on a linear axis most of it hugs the bottom rows.
        rows_log = np.nonzero((np.asarray(a) == PALETTE[0]).all(-1))[0]
        rows_lin = np.nonzero((np.asarray(b) == PALETTE[0]).all(-1))[0]
        assert np.median(rows_log) < np.median(rows_lin) - 100


def test_nice_ticks():
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(3, 97) == [20.0, 40.0, 60.0, 80.0]
    assert nice_ticks(0, 20000, 5) == [0.0, 5000.0, 10000.0, 15000.0, 20000.0]
    assert nice_ticks(-1.3, 1.3, 6) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert nice_ticks(0.1, 0.3) == [0.1, 0.15, 0.2, 0.25, 0.3]  # no float noise
    assert nice_ticks(2.0, 2.0) == [2.0]
    rng = np.random.default_rng(0)
    for _ in range(200):
        lo = float(rng.uniform(-1e4, 1e4))
        hi = lo + float(10 ** rng.uniform(-6, 6))
        n = int(rng.integers(2, 12))
        t = nice_ticks(lo, hi, n)
        assert 1 <= len(t) <= n
        assert all(lo - 1e-9 * abs(hi - lo) <= v <= hi + 1e-9 * abs(hi - lo) for v in t)
        steps = np.diff(t)
        if len(steps):
            mant = steps[0] / 10 ** math.floor(math.log10(steps[0]))
            assert any(abs(mant - m) < 1e-3 for m in (1, 2, 2.5, 5, 10)), (lo, hi, t)
    with pytest.raises(ValueError, match="lo <= hi"):
        nice_ticks(2, 1)


def test_tick_labels_and_log_ticks():
    assert _labels([0.0, 5000.0, 10000.0, 15000.0], False) == ["0", "5k", "10k", "15k"]
    assert _labels([0.0, 2.5, 5.0], False) == ["0", "2.5", "5.0"]
    assert _labels([0.001, 0.01, 0.1, 1.0, 10.0], True) == ["0.001", "0.01", "0.1", "1", "10"]
    assert _labels([1e-6, 1e6], True) == ["1e-6", "1e6"]
    assert _log_ticks(0.005, 200, 8) == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert len(_log_ticks(1e-12, 1e12, 8)) <= 8
    assert _log_ticks(0.3, 4.0, 8) == [0.5, 1.0, 2.0]
