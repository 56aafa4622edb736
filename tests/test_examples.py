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


def test_downstream_features_example_feeds_blocks_into_a_head(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["downstream_features.py", "--epochs", "2"])
    runpy.run_path(str(EXAMPLES / "downstream_features.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "blocks [1, 2, 3] -> [(4, 128, 4, 4)" in out
    assert out.count("held-out") == 2


def test_resize_example_runs_the_224_encoder_at_336_and_448(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["resize_224_to_336.py"])
    runpy.run_path(str(EXAMPLES / "resize_224_to_336.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "224 -> 336: positions (16, 16) -> (24, 24)" in out
    rel = float(out.split("pooled features differ by ")[1].split()[0])
    assert rel < 1e-2  # see tests/test_resize.py for why a 2x upsample matches


def test_lora_example_merges_and_loads_on_the_other_backend(tmp_path, monkeypatch, capsys):
    argv = ["lora_finetune.py", "--epochs", "0.1", "--rank", "2", "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(str(EXAMPLES / "lora_finetune.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "LoRA rank 2: trained" in out and "LoRA left: False" in out
    assert (tmp_path / "model" / "state.json").is_file()
