"""Progress with tqdm: a bar on a terminal, plain lines in logs, silence when switched off —
for training, probing, ``aimv2 extract`` and ``aimv2 convert``."""

from __future__ import annotations

import argparse
import io
import re

import numpy as np
import pytest
from PIL import Image

import aimv2
from aimv2 import probe
from aimv2.formats import convert, save_pretrained
from aimv2.formats.command import cmd_convert
from aimv2.progress import Progress, is_terminal
from aimv2.training.log import Progress as TrainingProgress

ROW = {"loss": 1.5, "pixel_loss": 0.5, "text_loss": 1.3, "lr": 1e-3, "images_per_s": 512.0}


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_plain_lines_per_interval_and_always_the_last():
    log = io.StringIO()
    with Progress(5, "work", unit="items", file=log, interval=0) as p:
        for _ in range(5):
            p.update(1, "ok")
    lines = log.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"work: {i}/5 items ok" for i in range(1, 6)]
    assert re.fullmatch(r"work: 2/5 items ok \(\d+s, eta \d+s\)", lines[1])
    assert "eta" not in lines[-1]  # done: no time left to estimate

    log = io.StringIO()
    p = Progress(100, "work", file=log, interval=3600)
    for _ in range(40):
        p.update(1)
    assert log.getvalue() == ""  # within the interval
    p.close()
    assert log.getvalue().startswith("work: 40/100 it (")  # the last state, once
    p.close()
    p.update(1)
    assert len(log.getvalue().splitlines()) == 1  # closed: nothing more

    log = io.StringIO()
    p = Progress(3, "work", file=log, interval=3600)
    p.update(3)  # the end is written at once, and closes
    assert p.closed and log.getvalue().startswith("work: 3/3 it")
    log = io.StringIO()
    with Progress(None, "stream", unit="images", file=log, interval=0) as p:
        p.update(7)
    assert log.getvalue().startswith("stream: 7 images (")


def test_a_terminal_gets_a_tqdm_bar_and_disabled_means_silent():
    term = Terminal()
    assert is_terminal(term) and not is_terminal(io.StringIO())
    with Progress(4, "extract", unit="images", file=term) as p:
        assert p.tty
        for _ in range(4):
            p.update(1, "batch ok")
    out = term.getvalue()
    assert "\r" in out and "100%" in out and "4/4" in out and "batch ok" in out
    assert "images/s" in out and "<00:00" in out  # tqdm's own rate and eta
    assert "extract: 1/4" not in out and out.endswith("\n")  # no plain lines
    silent = Terminal()
    with Progress(4, "x", file=silent, enabled=False) as p:
        p.update(4)
    assert silent.getvalue() == ""


def test_training_progress_line_bar_and_quiet():
    log = io.StringIO()
    p = TrainingProgress(10, True, file=log)
    p.update(5, ROW, eta=12.0)
    p.update(10, ROW, eta=0.0)
    p.close()
    assert log.getvalue().splitlines() == [
        "[############------------] 5/10 loss 1.5000 (pixel 0.5000 text 1.3000) lr 1.00e-03 "
        "512 img/s eta 12s",
        "[########################] 10/10 loss 1.5000 (pixel 0.5000 text 1.3000) lr 1.00e-03 "
        "512 img/s eta 0s",
    ]
    term = Terminal()
    p = TrainingProgress(10, True, file=term)
    p.update(5, ROW, eta=75.0)
    p.close()
    out = term.getvalue()
    assert "\r" in out and "5/10" in out and "50%" in out
    assert "loss 1.5000 (pixel 0.5000 text 1.3000) lr 1.00e-03 512 img/s eta 01:15]" in out
    assert "<" not in out and "steps/s" not in out  # the loop's eta, not tqdm's
    quiet = Terminal()
    p = TrainingProgress(10, False, file=quiet)
    p.update(5, ROW, eta=1.0)
    p.close()
    assert quiet.getvalue() == ""


def test_training_progress_defaults_to_stderr(capsys):
    p = TrainingProgress(2, True)
    p.update(2, ROW, eta=0.0)
    p.close()
    captured = capsys.readouterr()
    assert captured.out == "" and " 2/2 loss 1.5000" in captured.err


# ----------------------------------------------------------------------------- probing


ENC = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=4, image_size=8, mlp_hidden=32)


def test_probe_progress_covers_features_and_epochs(capsys):
    model = aimv2.build(ENC, "torch", seed=0)
    cfg = probe.ProbeConfig(epochs=2)
    probe.probe_encoder(model, "builtin:digits", "torch", cfg, kinds=("linear",), progress=True)
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("features train: 1438/1438 images") for line in err), err
    assert any(line.startswith("features heldout: 359/359 images") for line in err), err
    last = [line for line in err if line.startswith("linear probe:")][-1]
    assert re.match(r"linear probe: 2/2 epochs loss \d+\.\d{4} \(", last), last
    probe.probe_encoder(model, "builtin:digits", "torch", cfg, kinds=("linear",))
    assert capsys.readouterr().err == ""  # progress is off by default


def test_probe_fit_progress_shows_each_epoch_on_a_terminal(monkeypatch):
    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    x = np.eye(4, dtype=np.float32)[:, None, :].repeat(8, 0)
    y = np.repeat(np.arange(4), 8)
    cfg = probe.ProbeConfig(epochs=3, lr=0.05)
    probe.fit_and_score(x, y, x, y, "attentive", "torch", cfg, 4, progress=True)
    out = term.getvalue()
    assert "attentive probe" in out and "3/3" in out and "loss " in out and "\r" in out


# ----------------------------------------------------------------------------- extract, convert


def test_extract_command_progress_and_quiet(tmp_path, capsys):
    from aimv2 import checkpoint
    from aimv2.cli import main

    spec = aimv2.presets.get("aimv2-test-tiny")
    checkpoint.save(tmp_path / "run", 1, spec, aimv2.init_weights(spec))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(5):
        Image.new("RGB", (24, 20), (i * 40, 10, 10)).save(imgs / f"{i}.png")
    args = ["extract", "--checkpoint", str(tmp_path / "run"), "--images", str(imgs)]
    assert main([*args, "--out", str(tmp_path / "f.npy"), "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("extract: 5/5 images (") and err.count("\n") == 1, err
    assert main([*args, "--out", str(tmp_path / "g.npy"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert np.load(tmp_path / "g.npy").shape == np.load(tmp_path / "f.npy").shape


def test_probe_command_progress_and_quiet(tmp_path, capsys):
    from aimv2.cli import main

    root = tmp_path / "classes"
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (20, 20), (200 * c, 10 * i, 0)).save(root / f"class{c}" / f"{i}.png")
    args = ["probe", "--preset", "aimv2-test-tiny", "--data", f"imagefolder:{root}"]
    assert main([*args, "--out", str(tmp_path / "p"), "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "features all: 10/10 images" in err and "attentive probe: 2/2 epochs" in err, err
    assert main([*args, "--out", str(tmp_path / "q"), "--epochs", "2", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_convert_counts_tensors_written(tmp_path, capsys):
    spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8, mlp_hidden=64)
    model = aimv2.build(spec, "torch")
    src = save_pretrained(model, tmp_path / "a", format="official", progress=True)
    n = len(aimv2.weights.parameters(spec))
    assert capsys.readouterr().err.startswith(f"write official: {n}/{n} tensors (")
    # transformers splits qkv into q, k and v: three tensors written for one
    convert(src, tmp_path / "b", to="transformers", progress=True)
    err = capsys.readouterr().err
    assert re.match(rf"write transformers: {n + 2}/{n + 2} tensors \(", err), err
    convert(src, tmp_path / "c", to="mlx")
    assert capsys.readouterr().err == ""  # off by default in the library

    ns = dict(backend=None, preset=None, dtype=None, shard_size=None, overwrite=False)
    assert (
        cmd_convert(
            argparse.Namespace(src=str(src), dst=str(tmp_path / "d"), to="timm", quiet=False, **ns)
        )
        == 0
    )
    assert "write timm:" in capsys.readouterr().err
    assert (
        cmd_convert(
            argparse.Namespace(src=str(src), dst=str(tmp_path / "e"), to="timm", quiet=True, **ns)
        )
        == 0
    )
    assert capsys.readouterr().err == ""


def test_a_refused_convert_shows_no_progress(tmp_path, capsys):
    spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8, mlp_hidden=64)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        save_pretrained(aimv2.build(spec, "torch"), tmp_path / "x", format="aimv2", progress=True)
    assert capsys.readouterr().err == ""  # refused before any tensor: no progress at all
