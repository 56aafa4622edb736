"""Docstring examples of the package run with the tests, each module imported once under
its installed name.

``backends/`` and ``reference/`` sit at the top of the repository but install as
``aimv2.backends`` and ``aimv2.reference``. pytest's own ``--doctest-modules`` would
import ``backends/torch/layers.py`` a second time as ``backends.torch.layers`` — a
second copy of every class and registry. So the examples are collected here instead,
importing each file by the name it has in the installed package. A backend's examples run
only where its framework is installed (the unit tests in ``tests/`` skip on their own).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from _pytest.doctest import DoctestModule

# the ``backend`` fixture: each test taking it runs once per backend, skipping a missing
# framework (pytest_plugins belongs in the root conftest)
pytest_plugins = ["aimv2.testing.pytest_plugin"]

ROOT = Path(__file__).parent
# folder on disk -> package name once installed (pyproject's [tool.setuptools] package-dir)
PACKAGES = {"aimv2": "aimv2", "backends": "aimv2.backends", "reference": "aimv2.reference"}
FRAMEWORKS = {"backends/torch": "torch", "backends/mlx": "mlx"}


def installed_name(path: Path) -> str | None:
    """``aimv2.backends.torch.layers`` for ``backends/torch/layers.py`` (None outside)."""
    rel = path.resolve().relative_to(ROOT).with_suffix("")
    top, *rest = rel.parts
    if top not in PACKAGES:
        return None
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join([PACKAGES[top], *rest])


class InstalledDoctestModule(DoctestModule):
    """The docstring examples of one module, imported by its installed name."""

    def _getobj(self) -> ModuleType:
        return importlib.import_module(installed_name(self.path))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".py" or installed_name(file_path) is None:
        return None
    rel = file_path.resolve().relative_to(ROOT).as_posix()
    for folder, framework in FRAMEWORKS.items():
        if rel.startswith(folder + "/") and importlib.util.find_spec(framework) is None:
            return None
    return InstalledDoctestModule.from_parent(parent, path=file_path)
