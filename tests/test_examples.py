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
