"""Loading: build an encoder from a checkpoint in any format, on any backend.

The checkpoint is detected and checked first (:func:`aimv2.formats.detect`); then the
backend's ``load_weights`` verb builds the module directly in the asked dtype and takes
the canonical tensors one at a time, in file order (never two copies of the weights).
Nothing here knows a framework: dtype and device go to the backend as given.

Example:
    >>> import tempfile, aimv2
    >>> from aimv2.formats import save_pretrained
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> p = save_pretrained(aimv2.build(spec), tempfile.mkdtemp() + "/m", format="timm")
    >>> m = from_pretrained(p, backend="torch", dtype="bfloat16")
    >>> set(aimv2.load_backend("torch").weight_dtypes(m).values())
    {'bfloat16'}
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from .. import patches
from ..backend import load_backend
from ..resize import POS_NAME, resized_spec
from ..tensorfiles import Stored, iter_tensors
from .detect import Detected, PathLike, detect
from .writer import DTYPE_CODES, DTYPE_NAMES

__all__ = ["from_pretrained"]


def from_pretrained(
    path: PathLike,
    backend: str = "torch",
    dtype: Any = None,
    preset: Any = None,
    *,
    device: Any = None,
    image_size: Any = None,
    part: str | None = None,
) -> Any:
    """Build an AIMv2 encoder — or a LiT two-tower model, from a LiT checkpoint — from a
    checkpoint file or folder in any supported format.

    The format is detected from the tensor names (see :mod:`aimv2.formats`); the spec comes
    from ``preset`` (a preset name, ``ModelSpec`` or ``EncoderSpec``), else ``config.json``
    (transformers or timm), else the spec :func:`~aimv2.formats.save_pretrained` stores in
    the file, else the tensor shapes with AIMv2's conventions (head dim 128, eps 1e-5,
    square grid). Every tensor name and shape is checked before anything is built; a
    mismatch raises :class:`~aimv2.formats.FormatError` naming the key and both shapes.
    Weights stored as bf16/fp16/fp32 load into ``dtype`` (None: float32; or
    ``"bfloat16"``, ``"float16"``, a ``torch.dtype`` / ``mlx.core.Dtype``). Tensors stream
    into the module one at a time. ``device``: where the weights go (a torch device;
    ``"cpu"``/``"gpu"`` for MLX, whose memory is unified: it becomes MLX's default device).
    ``image_size`` (an int or (height, width)) loads the encoder for another input size:
    its learned position table is resampled on the way in, as
    :func:`aimv2.resize_encoder` does (e.g. the released 224 model at 336 or 448).
    ``part="image"`` reads only the image tower of a LiT model (the groups left out are
    listed once in a warning); a tensor the detected layout does not account for is a
    :class:`~aimv2.formats.FormatError` naming it.

    Example:
        >>> import tempfile, aimv2
        >>> from aimv2.formats import save_pretrained
        >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           mlp_hidden=64)
        >>> p = save_pretrained(aimv2.build(spec), tempfile.mkdtemp() + "/m", format="official")
        >>> m = from_pretrained(p, backend="torch")
        >>> sorted(aimv2.get_weights(m)) == sorted(aimv2.weights.parameters(spec))
        True
    """
    be = load_backend(backend)  # an unknown name or a missing framework fails before any read
    target = _native_dtype(be, dtype)  # so does a dtype the backend cannot hold
    place = be.native_device(device)  # and a device it cannot place weights on
    det = detect(path, preset=preset, part=part)
    if image_size is None:
        return be.load_weights(det.spec, _stored(det), dtype=target, device=place)
    spec = resized_spec(det.spec, image_size)
    return be.load_weights(spec, _resized(det, spec), dtype=target, device=place)


def _resized(det: Detected, spec: Any) -> Iterator[tuple[str, Any]]:
    """:func:`_stored` with the position table resampled to ``spec``'s grid (read into
    NumPy: it is one small tensor)."""
    old = getattr(det.spec.pos_embed, "grid", None)
    new = getattr(spec.pos_embed, "grid", None)
    for name, stored in _stored(det):
        if name != POS_NAME or old == new:
            yield name, stored
            continue
        (file, key), *_ = stored.parts
        _, table = next(iter_tensors(file, [key], dtype="float32"))
        table = table[None] if stored.op == "pos" else table
        yield name, patches.resample_grid(table, old, new).astype(np.float32)


def _native_dtype(be: ModuleType, dtype: Any) -> Any:
    """The backend's dtype for ``dtype``: a spelling the formats accept (``"bf16"``,
    ``"f16"``, ``"double"``…) goes to the backend by the contract's name; native dtypes and
    other names go as given. A refusal names ``dtype`` as the caller spelled it."""
    code = DTYPE_CODES.get(dtype.lower()) if isinstance(dtype, str) else None
    try:
        return be.native_dtype(dtype if code is None else DTYPE_NAMES[code])
    except TypeError:
        be.native_dtype(dtype)  # refused as spelled too: the backend's error names it
        raise


def _stored(det: Detected) -> Iterator[tuple[str, Stored]]:
    """(canonical name, where its parts are stored), one parameter at a time, in file
    order; the backend reads them with its own framework."""
    store = det.store
    assert store is not None
    order = {key: i for i, key in enumerate(store.tensors)}  # file by file, header order
    plan = sorted(det.plan().items(), key=lambda item: order[item[1][0][0]])
    for name, (src, op) in plan:
        yield name, Stored(tuple((str(store.tensors[k][0]), k) for k in src), op)
