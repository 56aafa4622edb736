"""Checkpoint formats: load and save AIMv2 encoders in every layout they are released in.

One tensor table (:mod:`~aimv2.formats.names`) maps this library's canonical names (the
official ``ml-aim`` names) to each format's names and layouts:

- ``official``: ``model.safetensors`` with the official names, torch layouts;
- ``mlx``: ``mlx_model.safetensors``, the official names, the patch conv as (out, kH, kW, in);
- ``transformers``: a ``transformers`` ``Aimv2VisionModel`` folder (``config.json``,
  ``model.safetensors`` or shards with ``model.safetensors.index.json``); q/k/v are split,
  the position table is (N, D);
- ``timm``: a ``timm`` AIMv2 ``VisionTransformer`` state dict (``patch_embed.proj``,
  ``blocks.{i}.norm1``, ``mlp.fc1_g`` …), with a timm hub ``config.json`` when saved here;
- ``aimv2``: this library's own checkpoint directory (:mod:`aimv2.checkpoint`); of a
  pre-training checkpoint only the encoder (``encoder.*``) is read.

The LiT two-tower model (``aimv2-large-patch14-224-lit``, :class:`~aimv2.specs.LiTSpec`)
is read and written whole in the ``official`` and ``mlx`` layouts (``image_encoder.*``,
``text_encoder.*``, ``image_projector.weight``, ``text_projector.weight``,
``log_logit_scale``), as a transformers ``Aimv2Model`` folder (``vision_model.*``,
``text_model.*``, ``visual_projection``, ``text_projection``, ``logit_scale``) and as an
``aimv2`` checkpoint (:mod:`aimv2.formats.lit`); an encoder ``preset=`` reads its image
tower alone.

:func:`from_pretrained` detects the format from the tensor names themselves, takes the
spec from (in order) ``preset=``, ``config.json``, a spec stored in the file, or the tensor
shapes and AIMv2's conventions, checks every tensor name and shape *before* building
anything, then streams tensors into the module one at a time (through the backend's
``load_weights`` verb: never two copies of the weights). :func:`save_pretrained` writes
any of the formats atomically, one tensor at a time. This package imports no framework.

Modules: ``names`` (tensor names per format), ``store`` (safetensors files of a path),
``configs`` (transformers / timm ``config.json``), ``infer`` (a spec from shapes), ``lit``
(LiT layouts, their spec and ``Aimv2Config``),
``detect``, ``load``, ``writer`` (the streaming safetensors writer), ``export`` and
``command`` (``aimv2 convert``).

Example:
    >>> import tempfile, aimv2
    >>> from aimv2 import formats
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> model = aimv2.build(spec, backend="torch")
    >>> out = formats.save_pretrained(model, tempfile.mkdtemp() + "/m", format="transformers")
    >>> formats.detect(out).format
    'transformers'
    >>> formats.from_pretrained(out, backend="torch").spec == spec
    True
"""

from __future__ import annotations

from .command import add_convert_parser, cmd_convert
from .detect import Detected, PathLike, detect
from .export import convert, save_pretrained
from .load import from_pretrained
from .names import FORMATS, FormatError

__all__ = [
    "FORMATS",
    "FormatError",
    "Detected",
    "PathLike",
    "detect",
    "from_pretrained",
    "save_pretrained",
    "convert",
    "add_convert_parser",
    "cmd_convert",
]
