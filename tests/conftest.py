"""Shared test settings: bounded hypothesis runs, no deadlines (CPU timing varies), and the
``backend`` fixture of :mod:`aimv2.testing.pytest_plugin` (one run per backend, skipped
where that backend's framework is missing)."""

from __future__ import annotations

import os

import pytest
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


@pytest.fixture
def replayed(monkeypatch) -> list[int]:
    """The steps of the tar-stream jobs that decode samples only to skip them (what a
    resume without a stream position replays), recorded while the test runs; loaders
    with in-process workers only."""
    from aimv2.data.batches import BatchMaker

    steps: list[int] = []
    real = BatchMaker.run

    def spy(self, job, out):
        if job[0] == "stream" and job[4]:  # a check-only job
            steps.append(job[1])
        return real(self, job, out)

    monkeypatch.setattr(BatchMaker, "run", spy)
    return steps
