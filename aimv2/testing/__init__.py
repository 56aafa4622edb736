"""Parity testing as a feature: check that your components and variants agree across
backends and with the float64 reference.

- :func:`assert_backends_agree` / :func:`compare_backends`: any spec — a layer, a
  component of your own, an encoder, a pre-training model, a text tower, a LiT model — on
  every installed backend
  against the reference and each other: forward, losses, every gradient.
- :func:`property_test`: a hypothesis strategy for your spec becomes a pytest test.
- :func:`example_inputs` / :func:`inputs_for`: call arguments by slot role, or your own.
- :func:`random_weights`, :func:`random_batch`, :func:`random_captions`,
  :func:`write_tar_shards`: fixtures.
- Tolerances (:data:`FORWARD_TOL`, :data:`GRAD_TOL`) with the reasoning behind them.
- :mod:`aimv2.testing.pytest_plugin`: a ``backend`` fixture over the installed backends.

Example:
    >>> import aimv2
    >>> from aimv2 import testing
    >>> report = testing.assert_backends_agree(aimv2.presets.get("aimv2-test-tiny"))
    >>> sorted(report)
    ['mlx', 'torch']
"""

from __future__ import annotations

from .compare import (
    DEFAULT_FD_SAMPLES,
    assert_backends_agree,
    assert_matches_reference,
    compare_backends,
)
from .fixtures import (
    example_inputs,
    inputs_for,
    random_batch,
    random_captions,
    random_weights,
    write_tar_shards,
)
from .tolerances import (
    FORWARD_TOL,
    GRAD_TOL,
    TRAINING_TOL,
    Check,
    Tolerance,
    assert_close,
    max_error,
)

__all__ = [
    "Tolerance",
    "FORWARD_TOL",
    "GRAD_TOL",
    "TRAINING_TOL",
    "DEFAULT_FD_SAMPLES",
    "Check",
    "random_weights",
    "random_batch",
    "write_tar_shards",
    "example_inputs",
    "inputs_for",
    "max_error",
    "assert_close",
    "compare_backends",
    "assert_backends_agree",
    "assert_matches_reference",
    "property_test",
    "norm_specs",
    "attention_specs",
    "ffn_specs",
    "block_specs",
    "encoder_specs",
    "model_specs",
    "layer_specs",
    "text_encoder_specs",
    "lit_specs",
    "random_captions",
]

_STRATEGIES = {
    "property_test",
    "norm_specs",
    "attention_specs",
    "ffn_specs",
    "block_specs",
    "encoder_specs",
    "model_specs",
    "layer_specs",
    "text_encoder_specs",
    "lit_specs",
}


def __getattr__(name: str):  # hypothesis is a dev dependency: imported on first use
    if name in _STRATEGIES:
        try:
            from . import strategies
        except ImportError as err:
            raise ImportError(
                f"aimv2.testing.{name} needs hypothesis: pip install 'aimv2[dev]'"
            ) from err
        return getattr(strategies, name)
    raise AttributeError(f"module 'aimv2.testing' has no attribute {name!r}")
