"""The examples run as shipped (small settings)."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_compose_variants_runs_on_both_backends(capsys):
    runpy.run_path(str(EXAMPLES / "compose_variants.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "backends: ['torch', 'mlx']" in out
    assert out.count("torch: loss") == 7 and out.count("mlx: loss") == 7


def test_pretrain_example_switches_backend_mid_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["pretrain.py", "--steps", "6", "--batch-size", "4", "--preset", "aimv2-test-tiny"]
    monkeypatch.setattr("sys.argv", [*argv, "--out", str(out)])
    runpy.run_path(str(EXAMPLES / "pretrain.py"), run_name="__main__")
    text = capsys.readouterr().out
    assert '"step": 3' in text and '"step": 6' in text
    assert (out / "ckpt-00000006").is_dir()
