"""The MLX backend: the realization of every component, and the contract's verbs.

Its top level is exactly the backend contract (:class:`aimv2.contract.Backend`; the torch
backend exports the same names with the same signatures). Inside, module for module the
mirror image of the torch backend:

- :mod:`~aimv2.backends.mlx.registry`: ``realizes`` and building modules from specs.
- :mod:`~aimv2.backends.mlx.layers`, :mod:`~aimv2.backends.mlx.models`,
  :mod:`~aimv2.backends.mlx.lit`: the built-in
  components (the same canonical names as torch).
- :mod:`~aimv2.backends.mlx.fused`: the speed paths (the vectorized CPU exp behind SiLU
  and softmax), each one named function.
- :mod:`~aimv2.backends.mlx.cpu`: one CPU stream per core and the BLAS threads to match.
- :mod:`~aimv2.backends.mlx.layout`: the one torch ↔ MLX layout converter (conv kernels).
- :mod:`~aimv2.backends.mlx.arrays`, :mod:`~aimv2.backends.mlx.weights`: NumPy in and
  out, dtypes, canonical weights, streaming loads.
- :mod:`~aimv2.backends.mlx.runtime`: inference, devices, checkpointing, gradients.
- :mod:`~aimv2.backends.mlx.train`, :mod:`~aimv2.backends.mlx.comm`: the Trainer (AdamW,
  data parallelism) and the ``mlx.launch`` communicator.

Example:
    >>> import aimv2, mlx.core as mx
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> model = aimv2.build(spec, backend="mlx")
    >>> model(mx.zeros((2, 3, 8, 8))).shape
    (2, 4, 32)
"""

from __future__ import annotations

from . import layers as _layers  # noqa: F401 - registers the built-in layers
from . import lit as _lit  # noqa: F401 - registers the text encoder and the LiT model
from . import models as _models  # noqa: F401 - registers the encoder, decoder and model
from .arrays import from_numpy, native_device, native_dtype, to_model, to_numpy
from .comm import gather_with_grad, init_distributed
from .downstream import classifier_loss
from .lit import contrastive_loss
from .registry import REGISTRY, build_module, build_part, is_module, realizes
from .runtime import (
    default_device,
    freeze,
    inference,
    loss_and_grads,
    output_and_grads,
    set_checkpointing,
    value_and_grads,
)
from .train import Trainer, pretrain_loss, probe_loss
from .weights import cast, get_weight, get_weights, load_weights, set_weights, weight_dtypes

__all__ = [
    "NAME",
    "REGISTRY",
    "Trainer",
    "build_module",
    "build_part",
    "cast",
    "classifier_loss",
    "contrastive_loss",
    "default_device",
    "freeze",
    "from_numpy",
    "gather_with_grad",
    "get_weight",
    "get_weights",
    "inference",
    "init_distributed",
    "is_module",
    "load_weights",
    "loss_and_grads",
    "native_device",
    "native_dtype",
    "output_and_grads",
    "pretrain_loss",
    "probe_loss",
    "realizes",
    "set_checkpointing",
    "set_weights",
    "to_model",
    "to_numpy",
    "value_and_grads",
    "weight_dtypes",
]

NAME = "mlx"
