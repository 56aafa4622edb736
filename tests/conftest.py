"""Shared test settings: bounded hypothesis runs, no deadlines (CPU timing varies), and the
``backend`` fixture of :mod:`aimv2.testing.pytest_plugin` (one run per backend, skipped
where that backend's framework is missing)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["aimv2.testing.pytest_plugin"]

settings.register_profile(
    "default",
    max_examples=int(os.environ.get("AIMV2_MAX_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("default")
