"""Doctest collection: the docstring examples of a backend run only where its framework
is installed (the unit tests in ``tests/`` skip on their own)."""

from __future__ import annotations

import importlib.util

collect_ignore: list[str] = []
if importlib.util.find_spec("torch") is None:
    collect_ignore += ["backends/torch"]
if importlib.util.find_spec("mlx") is None:
    collect_ignore += ["backends/mlx"]
