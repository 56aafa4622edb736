"""The import layering of DESIGN.md holds (import-linter, as CI runs it), and the check
catches a violation: an import pointing up, and a framework imported by a shared driver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("importlinter")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as installed (backends/ and reference/ inside aimv2/)."""
    site = tmp_path_factory.mktemp("layout") / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "--target", str(site), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=tmp_path_factory.getbasetemp(),
    )
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' scratch folder
    return site


def _lint(site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIMV2_LAYOUT": str(site)}
    return subprocess.run(
        ["bash", str(ROOT / ".ci" / "lint-imports")], env=env, capture_output=True, text=True
    )


def test_the_layering_holds(layout):
    out = _lint(layout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_the_check_catches_an_upward_import_and_a_framework_in_a_driver(layout, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(layout, site)
    with open(site / "aimv2" / "specs" / "base.py", "a") as f:
        f.write("\nfrom aimv2 import training  # noqa\n")
    with open(site / "aimv2" / "formats" / "load.py", "a") as f:
        f.write("\nimport torch  # noqa\n")
    out = _lint(site)
    assert out.returncode != 0
    assert "Layers: specs -> weights" in out.stdout and "BROKEN" in out.stdout
    assert "aimv2.specs.base -> aimv2.training" in out.stdout
    assert "aimv2.formats.load -> torch" in out.stdout
