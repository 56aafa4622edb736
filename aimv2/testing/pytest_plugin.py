"""A pytest plugin with a ``backend`` fixture: each test using it runs once per backend,
skipped (naming the extra to install) where that backend's framework is missing.

Use it from your own ``conftest.py``: ``pytest_plugins = ["aimv2.testing.pytest_plugin"]``.

Example:
    >>> BACKENDS  # the fixture's parameters, in order
    ('torch', 'mlx')
"""

from __future__ import annotations

import pytest

from ..backend import BACKENDS, BackendUnavailable, load_backend

__all__ = ["backend"]


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """The name of one installed backend (``"torch"``, ``"mlx"``)."""
    try:
        load_backend(request.param)
    except BackendUnavailable as err:
        pytest.skip(str(err))
    return request.param
