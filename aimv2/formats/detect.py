"""Format detection: what a checkpoint holds, found from its tensor names, and a check of
every tensor name and shape against the spec before anything is built.

The format (and any name prefix of the encoder) comes from where the patch-embedding
weight sits; the spec from (in order) ``preset=``, ``config.json``, a spec stored in the
file's metadata, or the tensor shapes (:mod:`aimv2.formats.infer`). Only headers and JSON
are read.

Example:
    >>> import tempfile, aimv2
    >>> from aimv2.tensorfiles import save_file
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> p = Path(tempfile.mkdtemp()) / "bare.safetensors"
    >>> _ = save_file({"model." + k: v for k, v in aimv2.init_weights(spec).items()}, p)
    >>> d = detect(p, preset=spec)
    >>> d.format, d.prefix, d.origin
    ('official', 'model.', 'the given EncoderSpec')
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import checkpoint as _ckpt
from .. import presets
from .. import specs as S
from ..weights import parameters
from .configs import folder_config
from .infer import infer_spec
from .lit import IMAGE_PREFIX, infer_lit_spec, lit_layout
from .names import ANCHORS, CONV, LIT_ANCHORS, SPEC_KEY, FormatError, recipe, source_shapes
from .store import Store, locate, read_json
from .writer import ITEMSIZE

__all__ = ["PathLike", "Detected", "detect"]

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Detected:
    """What a checkpoint holds: its ``format``, the ``spec`` it realizes (an encoder, or a
    :class:`~aimv2.specs.LiTSpec` two-tower model), where the spec came from (``origin``),
    the safetensors ``files`` and the name ``prefix`` of the model inside them.

    Example:
        >>> Detected("official", None, "tensor shapes", ()).format
        'official'
    """

    format: str
    spec: S.EncoderSpec
    origin: str
    files: tuple[Path, ...]
    prefix: str = ""
    store: Store | None = field(default=None, repr=False, compare=False)

    def plan(self) -> dict[str, tuple[tuple[str, ...], str]]:
        """Canonical name -> (names in the files, combine op), for every parameter.

        Example:
            >>> import aimv2
            >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4,
            ...                           image_size=8, mlp_hidden=64)
            >>> Detected("transformers", spec, "", ()).plan()["preprocessor.pos_embed"]
            (('embeddings.position_embedding.weight',), 'pos')
        """
        out = {}
        for name in parameters(self.spec):
            src, op = recipe(self.format, name)
            out[name] = (tuple(self.prefix + s for s in src), op)
        return out


PARTS = (None, "image")


def detect(path: PathLike, preset: Any = None, part: str | None = None) -> Detected:
    """Find what ``path`` holds (format, spec, files) and check every tensor name and shape.

    Reads only headers and JSON. ``preset`` (a preset name, ``ModelSpec``, ``EncoderSpec``
    or ``LiTSpec``) overrides the spec found in the checkpoint; it must then match the
    tensors. A folder holding both released layouts is read from ``model.safetensors``
    (both hold the same weights, and every backend loads either). A LiT model (official,
    MLX or transformers ``Aimv2Model`` names) is detected whole; ``part="image"`` (or an
    encoder ``preset``) reads its image tower alone, and the groups left out are listed
    once in a warning. A tensor the detected layout does not account for is an error.

    Example:
        >>> import tempfile, aimv2
        >>> from aimv2.formats import save_pretrained
        >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           mlp_hidden=64)
        >>> p = save_pretrained(aimv2.build(spec), tempfile.mkdtemp() + "/m", format="mlx")
        >>> d = detect(p)
        >>> d.format, d.spec.depth, d.origin
        ('mlx', 1, 'the spec stored in the file')
    """
    if part not in PARTS:
        raise ValueError(f"part={part!r}: expected None (the whole model) or 'image'")
    path = Path(os.fspath(path))
    kind, found, folder = locate(path)
    if kind == "checkpoint":
        return _detect_checkpoint(found, preset, part)
    files, wmap = found
    store = Store.open(files, wmap)
    where = str(path)
    layout = lit_layout(store)
    if layout is not None:
        return _detect_lit(store, layout, folder, where, preset, part)
    fmt, prefix = _find_format(store, where)
    config, cfg_path = folder_config(folder)
    stored = _stored_spec(store, where)
    if preset is not None:
        spec, origin = _spec_of(preset)
    elif stored is not None and not config:
        spec, origin = stored, "the spec stored in the file"
    else:
        spec, origin = infer_spec(store, fmt, prefix, folder, where, config, cfg_path)
        if stored is not None and stored.replace(preprocess=spec.preprocess) == spec:
            spec = stored  # same architecture; keeps preprocessing a config cannot spell
    det = Detected(fmt, spec, origin, tuple(store.files), prefix, store)
    _check_tensors(det, where)
    return det


def _find_format(store: Store, where: str) -> tuple[str, str]:
    found = []
    for key in store.tensors:
        for fmt, anchor in ANCHORS.items():
            if key == anchor or key.endswith("." + anchor):
                found.append((fmt, key[: len(key) - len(anchor)]))
    if not found:
        names = sorted(store.tensors)
        raise FormatError(
            f"{where}: not an AIMv2 checkpoint: none of the patch-embedding keys "
            f"{sorted(ANCHORS.values())} is present (it holds {len(names)} tensors, e.g. "
            f"{names[:6]})"
        )
    if len(found) > 1:
        raise FormatError(f"{where}: holds several AIMv2 encoders (format, prefix): {found}")
    fmt, prefix = found[0]
    if fmt == "official":
        fmt = _official_or_mlx(store, prefix + CONV)
    return fmt, prefix


def _official_or_mlx(store: Store, conv: str) -> str:
    path, _ = store.tensors[conv]
    if store.metadata.get("format") == "mlx" or path.name.startswith("mlx_"):
        return "mlx"
    shape = store.shape(conv) or ()
    if len(shape) == 4 and shape[1] == shape[2] and shape[2] != shape[3]:
        return "mlx"  # (out, kH, kW, in) with in != kW
    return "official"


def _is_lit(preset: Any) -> bool:
    if isinstance(preset, str):
        try:
            preset = presets.get(preset)
        except KeyError as err:
            raise FormatError(f"preset: {err.args[0]}") from None
    return isinstance(preset, S.LiTSpec)


def _lit_spec_of(preset: Any) -> tuple[S.LiTSpec, str]:
    if isinstance(preset, str):
        return presets.get(preset), f"preset {preset!r}"
    return preset, f"preset {preset.name or 'spec'!r}"


def _detect_lit(
    store: Store, layout: str, folder: Path, where: str, preset: Any, part: str | None
) -> Detected:
    """A LiT model's files: the whole model, or its image tower (``part="image"`` or an
    encoder preset)."""
    fmt = _official_or_mlx(store, LIT_ANCHORS[layout][0]) if layout == "official" else layout
    if part == "image" or (preset is not None and not _is_lit(preset)):
        if preset is not None and not _is_lit(preset):
            spec, origin = _spec_of(preset)
        else:
            whole = _detect_lit(store, layout, folder, where, preset, None)
            spec, origin = whole.spec.image_encoder, f"{whole.origin} (its image tower)"
        prefix = IMAGE_PREFIX.get(fmt, "image_encoder.")
        det = Detected(fmt, spec, origin, tuple(store.files), prefix, store)
        _check_tensors(det, where)
        _warn_left_out(store, prefix, where)
        return det
    cfg_file = folder / "config.json"
    raw = read_json(cfg_file) if cfg_file.is_file() else {}
    stored = _stored_spec(store, where, S.LiTSpec)
    if preset is not None:
        spec, origin = _lit_spec_of(preset)
    elif stored is not None and not raw:
        spec, origin = stored, "the spec stored in the file"
    else:
        spec, origin = infer_lit_spec(store, fmt, folder, where, raw, str(cfg_file) if raw else "")
        same = spec.image_encoder.preprocess
        if stored is not None and stored.replace(
            image_encoder=stored.image_encoder.replace(preprocess=same)
        ) == spec.replace(name=stored.name):
            spec = stored  # same architecture; keeps what a config cannot spell
    det = Detected(fmt, spec, origin, tuple(store.files), "", store)
    _check_tensors(det, where)
    return det


def _spec_of(preset: Any) -> tuple[S.EncoderSpec, str]:
    if isinstance(preset, str):
        try:
            spec = presets.get(preset)
        except KeyError as err:
            raise FormatError(f"preset: {err.args[0]}") from None
        return spec.encoder, f"preset {preset!r}"
    if isinstance(preset, (S.ModelSpec, S.LiTSpec)):
        return preset.encoder, f"preset {preset.name or 'spec'!r}"
    if isinstance(preset, S.EncoderSpec):
        return preset, "the given EncoderSpec"
    raise TypeError(
        "preset: expected a preset name, a ModelSpec or an EncoderSpec, "
        f"got {type(preset).__name__}"
    )


def _stored_spec(store: Store, where: str, want: type = S.EncoderSpec) -> Any:
    """The spec a file written by :func:`~aimv2.formats.save_pretrained` carries in its
    metadata."""
    if SPEC_KEY not in store.metadata:
        return None
    try:
        spec = S.from_json(store.metadata[SPEC_KEY])
    except (S.SpecError, ValueError, TypeError) as err:
        raise FormatError(f"{where}: the spec stored in its metadata is invalid ({err})") from err
    if not isinstance(spec, want):
        raise FormatError(f"{where}: the stored spec is a {spec.kind!r}, expected {want.kind!r}")
    return spec


def _warn_left_out(store: Store, prefix: str, where: str) -> None:
    """Say once which groups of a LiT model are not read when only its image tower is."""
    groups = Counter(
        k.split(".", 1)[0] + (".*" if "." in k else "")
        for k in store.tensors
        if not k.startswith(prefix)
    )
    if groups:
        listed = ", ".join(f"{g} ({n} tensors)" if n > 1 else g for g, n in groups.items())
        warnings.warn(
            f"{where}: reading the image tower of a LiT model; left out: {listed}",
            UserWarning,
            stacklevel=4,
        )


def _detect_checkpoint(ckpt_dir: Path, preset: Any, part: str | None = None) -> Detected:
    state = read_json(ckpt_dir / "state.json")
    if state.get("format") != _ckpt.FORMAT:
        raise FormatError(
            f"{ckpt_dir / 'state.json'}: format {state.get('format')!r} is not {_ckpt.FORMAT!r}"
        )
    try:
        saved = S.from_dict(state.get("spec"))
    except (S.SpecError, TypeError) as err:
        raise FormatError(f"{ckpt_dir / 'state.json'}: invalid spec ({err})") from err
    lit = isinstance(saved, S.LiTSpec) and part is None and (preset is None or _is_lit(preset))
    if lit:
        prefix, spec = "", saved
    elif isinstance(saved, S.LiTSpec):
        prefix, spec = "image_encoder.", saved.image_encoder
    elif isinstance(saved, S.ModelSpec):
        prefix = "encoder." if saved.decoder is not None else ""
        spec = saved.encoder
    elif isinstance(saved, S.EncoderSpec):
        prefix, spec = "", saved
    else:
        raise FormatError(
            f"{ckpt_dir}: holds a {saved.kind!r} spec, expected an encoder, model or LiT model"
        )
    origin = f"{ckpt_dir / 'state.json'}"
    if preset is not None:
        spec, origin = _lit_spec_of(preset) if lit else _spec_of(preset)
    weights = ckpt_dir / "model.safetensors"
    store = Store.open([weights])
    det = Detected("aimv2", spec, origin, (weights,), prefix, store)
    _check_tensors(det, str(ckpt_dir))
    if isinstance(saved, S.LiTSpec) and not lit:
        _warn_left_out(store, prefix, str(ckpt_dir))
    return det


def _check_tensors(det: Detected, where: str) -> None:
    """Every expected tensor present with its expected shape, nothing unexpected, floats."""
    store = det.store
    assert store is not None
    expected: dict[str, tuple[int, ...]] = {}
    shapes = parameters(det.spec)
    for name, (src, op) in det.plan().items():
        for key, shape in zip(src, source_shapes(op, shapes[name].shape), strict=True):
            expected[key] = shape
    have = {k for k in store.tensors if k.startswith(det.prefix)}
    missing = sorted(set(expected) - have)
    unexpected = sorted(have - set(expected))
    bad = []
    for key in sorted(set(expected) & have):
        got = store.shape(key)
        if got != expected[key]:
            bad.append(f"{key!r}: {det.origin} expects {expected[key]}, the file has {got}")
        elif store.tensors[key][1].dtype not in ITEMSIZE:
            bad.append(f"{key!r}: dtype {store.tensors[key][1].dtype} is not a float type")
    if missing or unexpected or bad:
        parts = []
        if bad:
            parts.append("mis-shaped: " + "; ".join(bad[:10]))
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:10])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:10])}")
        raise FormatError(
            f"{where} ({det.format} format) does not match the spec from {det.origin}: "
            + "; ".join(parts)
        )
