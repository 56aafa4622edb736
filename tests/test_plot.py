"""aimv2.plot: loss curves and probe bars drawn with matplotlib, checked on the figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aimv2.plot import (
    loss_figure,
    plot_metrics,
    plot_probes,
    probe_figure,
    read_metrics,
    save_figure,
    smooth,
)


def _write_metrics(path, rows, extra_lines=()):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


def _rows(n=200, lr=True):
    rng = np.random.default_rng(0)
    out = []
    for s in range(1, n + 1):
        row = {
            "step": s,
            "loss": 500 * math.exp(-s / 20) + 1 + 0.1 * rng.random(),  # spans 2+ decades
            "pixel_loss": 3 * math.exp(-s / 50) + 0.5 + 0.05 * rng.random(),
            "text_loss": 2 * math.exp(-s / 50) + 0.5 + 0.05 * rng.random(),
            "images_per_s": 100.0,
        }
        if lr:
            row["lr"] = 1e-3 * min(1.0, s / 20)
        out.append(row)
    return out


def _lines(ax):
    return {line.get_label(): line for line in ax.lines}


def _smoothed(ax):
    return next(line for label, line in _lines(ax).items() if label.startswith("smoothed"))


# ----------------------------------------------------------------------------- loss curves


def test_plot_metrics_draws_one_panel_per_loss_term_and_the_learning_rate(tmp_path):
    _write_metrics(
        tmp_path / "metrics.jsonl",
        _rows(),
        extra_lines=["", "not json", "[1, 2]", '{"loss": 1.0}', '{"step": "x", "loss": 1}'],
    )
    out = plot_metrics(tmp_path, tmp_path / "plots" / "m.png", title="pre-training")
    assert out == tmp_path / "plots" / "m.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (1120, 840)  # 2 x 2 panels + title
    assert not list((tmp_path / "plots").glob(".*tmp*"))  # written atomically

    fig = loss_figure(read_metrics(tmp_path), title="pre-training")
    assert fig._suptitle.get_text() == "pre-training"
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [
        "total loss",
        "pixel loss (next-patch MSE)",
        "text loss (caption cross-entropy)",
        "learning rate",
    ]
    assert [ax.get_ylabel() for ax in axes] == [
        "loss",
        "MSE (normalized pixels)",
        "cross-entropy (nats)",
        "learning rate",
    ]
    assert {ax.get_xlabel() for ax in axes} == {"step"}
    assert [ax.get_yscale() for ax in axes] == ["log", "log", "log", "linear"]
    for k, ax in enumerate(axes[:3]):
        raw, smoothed = _lines(ax)["raw"], _smoothed(ax)
        assert smoothed.get_label() == "smoothed (9-point mean)"  # 200 points / 25, odd
        assert len(raw.get_xdata()) == len(smoothed.get_xdata()) == 200
        assert raw.get_color() == smoothed.get_color() == f"C{k}"
        assert smoothed.get_linewidth() > raw.get_linewidth() and raw.get_alpha() < 1
        # the smoothed line is smoother: smaller step-to-step changes in log space
        r, s = np.log(raw.get_ydata()), np.log(smoothed.get_ydata())
        assert np.abs(np.diff(s, 2)).sum() < np.abs(np.diff(r, 2)).sum()
    assert len(axes[3].lines) == 1  # the schedule is exact: no smoothing
    assert axes[3].lines[0].get_ydata()[-1] == pytest.approx(1e-3)
    assert axes[0].get_legend() is not None  # names raw and smoothed once
    # log scale with plain tick labels on a loss axis that spans decades
    ticks = [t.get_text() for t in axes[0].get_yticklabels()]
    assert "1" in ticks and "10" in ticks and "100" in ticks


def test_panels_follow_the_keys_present_and_keep_their_colour(tmp_path):
    rows = [{"step": s, "loss": 1 / s} for s in range(1, 30)]
    path = _write_metrics(tmp_path / "m.jsonl", rows)
    fig = loss_figure(read_metrics(path))
    assert [ax.get_title() for ax in fig.axes] == ["total loss"]  # no lr logged, no lr panel
    out = plot_metrics(path, tmp_path / "m.png", size=(640, 360))
    with Image.open(out) as img:
        assert img.size == (640, 360)
    # A key's colour follows its position in `keys`, whichever keys are present.
    fig = loss_figure(read_metrics(path), keys=("text_loss", "loss"))
    assert [line.get_color() for line in fig.axes[0].lines] == ["C1", "C1"]
    # pixel-only run: three panels in a row
    rows = [{"step": s, "loss": 2 / s, "pixel_loss": 1 / s, "lr": 0.1} for s in range(1, 9)]
    fig = loss_figure(read_metrics(_write_metrics(tmp_path / "p.jsonl", rows)))
    assert [ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes] == [(1, 3)] * 3
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "loss",
        "MSE (normalized pixels)",
        "learning rate",
    ]


def test_log_axis_choice_and_narrow_ranges_get_labels():
    m = {"loss": ([1, 2, 3, 4], [1.0, -0.5, 0.2, 0.1])}  # a non-positive value: linear
    assert loss_figure(m).axes[0].get_yscale() == "linear"
    with pytest.raises(ValueError, match="log_y=True needs positive"):
        loss_figure(m, log_y=True)
    m = {"loss": ([1, 2, 3, 4, 5], [1.08, 1.06, 1.04, 1.02, 1.0])}
    assert loss_figure(m, log_y=False).axes[0].get_yscale() == "linear"
    ax = loss_figure(m).axes[0]
    assert ax.get_yscale() == "log"
    lo, hi = ax.get_ylim()
    labels = [
        t.get_text()
        for t, v in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True)
        if lo <= v <= hi
    ]
    assert len(labels) >= 3 and all(labels), labels  # not a lone "1" on a 1.0-1.08 axis


def test_an_axis_of_one_or_two_decades_has_plain_minor_labels():
    """0.2 to 6 (the quickstart's caption loss) once came out as 2×10⁻¹ … 6×10⁰."""
    steps = list(range(1, 101))
    ax = loss_figure({"text_loss": (steps, list(np.geomspace(6.0, 0.2, 100)))}).axes[0]
    ax.figure.canvas.draw()
    lo, hi = ax.get_ylim()
    shown = [
        t.get_text()
        for t, v in zip(ax.get_yticklabels(minor=True), ax.get_yticks(minor=True), strict=True)
        if lo <= v <= hi and t.get_text()
    ]
    assert shown and not any("times" in s or "^" in s for s in shown), shown
    assert {"0.2", "0.5", "2", "5"} <= set(shown), shown


def test_a_short_run_still_draws_raw_points_and_a_line():
    ax = loss_figure({"loss": ([1, 2], [2.0, 1.0])}).axes[0]
    assert _lines(ax)["raw"].get_marker() == "o"
    assert _smoothed(ax).get_label() == "smoothed (1-point mean)"
    ax = loss_figure({"loss": ([5], [3.0])}).axes[0]
    assert list(_lines(ax)["raw"].get_ydata()) == [3.0]


def test_smooth():
    assert smooth([1.0, 2.0, 3.0, 10.0], 3).tolist() == [1.5, 2.0, 5.0, 6.5]
    assert smooth([4.0, 8.0], 1).tolist() == [4.0, 8.0]
    x = np.r_[np.ones(10), 1000.0, np.ones(10)]  # one spike
    assert smooth(x, 5, log=True).max() == pytest.approx(1000 ** (1 / 5))  # geometric mean
    assert smooth(x, 5).max() == pytest.approx(1004 / 5)  # arithmetic: 5x higher
    with pytest.raises(ValueError, match="window"):
        smooth(x, 0)
    with pytest.raises(ValueError, match="positive values"):
        smooth([1.0, 0.0], 3, log=True)


def test_many_points_are_drawn_whole(tmp_path):
    xs = np.arange(1, 200_001)
    ys = np.exp(-xs / 50_000) + 0.1 * np.random.default_rng(0).random(xs.size)
    fig = loss_figure({"loss": (xs, ys)})
    assert len(_lines(fig.axes[0])["raw"].get_xdata()) == xs.size
    assert _smoothed(fig.axes[0]).get_label() == "smoothed (8001-point mean)"
    assert save_figure(fig, tmp_path / "big.png").stat().st_size > 0


# ----------------------------------------------------------------------------- reading + errors


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
    # only the learning rate is numeric: still no loss to draw
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": "high", "lr": 0.1}\n')
    with pytest.raises(ValueError, match="no usable rows"):
        plot_metrics(tmp_path, tmp_path / "x.png")
    with pytest.raises(TypeError, match="keys"):
        plot_metrics(tmp_path, tmp_path / "x.png", keys=[1])
    with pytest.raises(TypeError, match="metrics_path_or_dir"):
        plot_metrics(3, tmp_path / "x.png")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(ValueError, match="size"):
        plot_metrics(tmp_path, tmp_path / "x.png", size=(50, 50))
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*"))


def test_loss_figure_validation():
    with pytest.raises(TypeError, match=r"'loss'.*pair"):
        loss_figure({"loss": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"'loss'.*differ in length"):
        loss_figure({"loss": ([1, 2, 3], [1, 2])})
    with pytest.raises(ValueError, match="no finite values"):
        loss_figure({"loss": ([1.0], [float("nan")])})
    with pytest.raises(ValueError, match="no finite values"):
        loss_figure({"acc": ([1.0], [0.5])})


# ----------------------------------------------------------------------------- probe bars


PROBES = {
    "pretrained": {"attentive": {"train": 1.0, "heldout": 0.983}, "linear": {"heldout": 0.978}},
    "random_init": {"attentive": {"heldout": 0.889}, "linear": {"heldout": 0.799}},
    "raw_pixels": {"linear": {"train": 1.0, "heldout": 0.961}},
}


def test_probe_figure_bars_labels_and_legend(tmp_path):
    fig = probe_figure(PROBES)
    (ax,) = fig.axes
    att, lin = ax.containers
    assert [round(b.get_height(), 1) for b in att] == [98.3, 88.9]
    assert [round(b.get_height(), 1) for b in lin] == [97.8, 79.9, 96.1]
    assert [t.get_text() for t in ax.texts] == ["98.3%", "88.9%", "97.8%", "79.9%", "96.1%"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "AIMv2 pre-trained",
        "random init\n(same architecture)",
        "raw pixels\n(no encoder)",
    ]
    # paired bars straddle their group; raw pixels' lone linear bar is centred
    centres = [b.get_x() + b.get_width() / 2 for b in (*att, *lin)]
    assert centres[0] < 0 < centres[2] and centres[1] < 1 < centres[3]
    assert centres[4] == pytest.approx(2.0)
    assert att[0].get_facecolor() != lin[0].get_facecolor()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["attentive probe", "linear probe"]
    assert ax.get_ylabel() == "held-out top-1 accuracy (%)"
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] > 100  # room for the value labels
    assert ax.get_title() == "Frozen-trunk probes: held-out accuracy"
    out = plot_probes(PROBES, tmp_path / "probes.png")
    with Image.open(out) as img:
        assert img.size == (760, 460)


def test_probe_figure_errors_and_unknown_encoders():
    with pytest.raises(ValueError, match="non-empty"):
        probe_figure({})
    with pytest.raises(ValueError, match="no held-out accuracy"):
        probe_figure({"pretrained": {"linear": {"train": 1.0}}})
    ax = probe_figure({"mine": {"linear": {"heldout": 0.5}}}, title=None).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["mine"] and ax.get_title() == ""


# ----------------------------------------------------------------------------- isolation


def test_no_pyplot_no_framework_and_a_cheap_import(tmp_path):
    """The command does not pay for matplotlib at start; drawing leaves the user's
    pyplot backend alone and loads neither pyplot nor a framework."""
    code = f"""
import sys
import aimv2.cli
assert "matplotlib" not in sys.modules, "aimv2.cli imported matplotlib"
import matplotlib
matplotlib.use("svg")
from aimv2.plot import plot_probes, plot_metrics
import aimv2.progress
open({str(tmp_path / "metrics.jsonl")!r}, "w").write('{{"step": 1, "loss": 2.0, "lr": 0.1}}\\n')
plot_metrics({str(tmp_path)!r}, {str(tmp_path / "l.png")!r})
plot_probes({{"pretrained": {{"linear": {{"heldout": 0.9}}}}}}, {str(tmp_path / "p.png")!r})
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
assert not {{m.split(".")[0] for m in sys.modules}} & {{"torch", "mlx"}}
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "l.png").exists() and (tmp_path / "p.png").exists()


# ----------------------------------------------------------------------------- quickstart


def test_quickstart_report_links_the_loss_curves_and_the_probe_bars(tmp_path, capsys):
    from aimv2 import quickstart

    r = quickstart.run(
        str(tmp_path),
        steps=4,
        batch_size=8,
        probe_epochs=1,
        progress=True,
        finetune_epochs=0,
        lit_steps=2,
    )
    assert r["loss_plot"] == str(tmp_path / "loss.png")
    assert r["probe_plot"] == str(tmp_path / "probes.png")
    for name in ("loss.png", "probes.png"):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG"
    md = (tmp_path / "report.md").read_text()
    assert "![loss curves](loss.png)" in md and "![probe accuracies](probes.png)" in md
    fig = probe_figure(r["probes"])
    assert [len(c) for c in fig.axes[0].containers] == [2, 3]  # attentive x2, linear x3
    # progress=True reaches the probes too (the --quiet switch turns all of it off)
    err = capsys.readouterr().err
    assert "features train:" in err and "attentive probe:" in err and "linear probe:" in err
