"""Checkpoint formats: load and save AIMv2 encoders in every layout they are released in.

One tensor table maps this library's canonical names (the official ``ml-aim`` names) to
each format's names and layouts:

- ``official``: ``model.safetensors`` with the official names, torch layouts;
- ``mlx``: ``mlx_model.safetensors``, the official names, the patch conv as (out, kH, kW, in);
- ``transformers``: a ``transformers`` ``Aimv2VisionModel`` folder (``config.json``,
  ``model.safetensors`` or shards with ``model.safetensors.index.json``); q/k/v are split,
  the position table is (N, D);
- ``timm``: a ``timm`` AIMv2 ``VisionTransformer`` state dict (``patch_embed.proj``,
  ``blocks.{i}.norm1``, ``mlp.fc1_g`` …), with a timm hub ``config.json`` when saved here;
- ``aimv2``: this library's own checkpoint directory (:mod:`aimv2.checkpoint`); of a
  pre-training checkpoint only the encoder (``encoder.*``) is read.

:func:`from_pretrained` detects the format from the tensor names themselves, takes the
spec from (in order) ``preset=``, ``config.json``, a spec stored in the file, or the tensor
shapes and AIMv2's conventions, checks every tensor name and shape *before* building
anything, then streams tensors into the module one at a time (the torch module is built on
the ``meta`` device, so no throwaway initialization and never two copies of the weights).
:func:`save_pretrained` writes any of the formats atomically, one tensor at a time.

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

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint as _ckpt
from . import presets
from . import specs as S
from .backend import backend_of, load_backend
from .safetensors import TensorInfo, load_file, read_header, to_bf16_bits
from .weights import parameters

__all__ = [
    "FORMATS",
    "FormatError",
    "Detected",
    "detect",
    "from_pretrained",
    "save_pretrained",
    "convert",
    "add_convert_parser",
    "cmd_convert",
]

#: Formats :func:`save_pretrained` writes and :func:`from_pretrained` reads.
FORMATS: tuple[str, ...] = ("aimv2", "official", "mlx", "transformers", "timm")

PathLike = str | os.PathLike

_SPEC_KEY = "aimv2.spec"  # safetensors metadata entry holding the spec JSON (files we write)
_CONV = "preprocessor.patchifier.proj.weight"
_POS = "preprocessor.pos_embed"
_ANCHORS = {  # the patch conv weight in each naming; finds the format and any name prefix
    "official": _CONV,
    "transformers": "embeddings.patch_embed.weight",
    "timm": "patch_embed.proj.weight",
}
_INDEX = "model.safetensors.index.json"
_OWN_FILES = {  # files a folder written here may hold (what overwrite=True may replace)
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "mlx_model.safetensors",
    _INDEX,
    "state.json",
}
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_HEAD_DIM = 128  # every released AIMv2 size
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_DTYPE_CODES = {
    "float32": "F32", "fp32": "F32", "f32": "F32", "float": "F32",
    "bfloat16": "BF16", "bf16": "BF16",
    "float16": "F16", "fp16": "F16", "f16": "F16", "half": "F16",
    "float64": "F64", "fp64": "F64", "f64": "F64", "double": "F64",
}  # fmt: skip


class FormatError(ValueError):
    """A checkpoint cannot be read or written in the asked format; the message names the
    file, the tensor key and both shapes where they disagree."""


# ----------------------------------------------------------------------- tensor table

# Per block: canonical suffix -> transformers / timm suffix (``attn.qkv`` is special-cased).
_TF_BLOCK = {
    "norm_1.weight": "rms_norm1.weight",
    "norm_2.weight": "rms_norm2.weight",
    "attn.proj.weight": "attention.out_proj.weight",
    "attn.proj.bias": "attention.out_proj.bias",
    "mlp.fc1.weight": "ffn.gate_proj.weight",
    "mlp.fc1.bias": "ffn.gate_proj.bias",
    "mlp.fc3.weight": "ffn.up_proj.weight",
    "mlp.fc3.bias": "ffn.up_proj.bias",
    "mlp.fc2.weight": "ffn.down_proj.weight",
    "mlp.fc2.bias": "ffn.down_proj.bias",
}
_TF_TOP = {
    _CONV: "embeddings.patch_embed.weight",
    "preprocessor.patchifier.proj.bias": "embeddings.patch_embed.bias",
    "preprocessor.patchifier.norm.weight": "embeddings.rms_norm.weight",
    "trunk.post_trunk_norm.weight": "rms_norm.weight",
    "head.cls_token": "head.cls_token",
    "head.k.weight": "head.k_proj.weight",
    "head.k.bias": "head.k_proj.bias",
    "head.v.weight": "head.v_proj.weight",
    "head.v.bias": "head.v_proj.bias",
    "head.linear.weight": "head.output_proj.weight",
    "head.linear.bias": "head.output_proj.bias",
}
_TIMM_BLOCK = {
    "norm_1.weight": "norm1.weight",
    "norm_2.weight": "norm2.weight",
    "attn.qkv.weight": "attn.qkv.weight",
    "attn.qkv.bias": "attn.qkv.bias",
    "attn.proj.weight": "attn.proj.weight",
    "attn.proj.bias": "attn.proj.bias",
    "mlp.fc1.weight": "mlp.fc1_g.weight",
    "mlp.fc1.bias": "mlp.fc1_g.bias",
    "mlp.fc3.weight": "mlp.fc1_x.weight",
    "mlp.fc3.bias": "mlp.fc1_x.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_TIMM_TOP = {
    _CONV: "patch_embed.proj.weight",
    "preprocessor.patchifier.proj.bias": "patch_embed.proj.bias",
    "preprocessor.patchifier.norm.weight": "patch_embed.norm.weight",
    _POS: "pos_embed",
    "trunk.post_trunk_norm.weight": "norm.weight",
}
_BLOCK = re.compile(r"^trunk\.blocks\.(\d+)\.(.+)$")


def _recipe(fmt: str, name: str) -> tuple[tuple[str, ...], str]:
    """The format's tensor names holding canonical ``name`` and how they combine into it:
    ``copy``, ``conv_mlx`` ((out,kH,kW,in) -> (out,in,kH,kW)), ``qkv`` (concatenate q, k, v
    rows) or ``pos`` ((N, D) -> (1, N, D))."""
    if fmt in ("official", "aimv2"):
        return (name,), "copy"
    if fmt == "mlx":
        return (name,), "conv_mlx" if name == _CONV else "copy"
    m = _BLOCK.match(name)
    if fmt == "transformers":
        if name == _POS:
            return ("embeddings.position_embedding.weight",), "pos"
        if m:
            i, rest = m.groups()
            base = f"encoder.layers.{i}."
            if rest in ("attn.qkv.weight", "attn.qkv.bias"):
                kind = rest.rsplit(".", 1)[1]
                return tuple(f"{base}attention.{p}_proj.{kind}" for p in "qkv"), "qkv"
            if rest in _TF_BLOCK:
                return (base + _TF_BLOCK[rest],), "copy"
        elif name in _TF_TOP:
            return (_TF_TOP[name],), "copy"
    elif fmt == "timm":
        if m and m.group(2) in _TIMM_BLOCK:
            return (f"blocks.{m.group(1)}.{_TIMM_BLOCK[m.group(2)]}",), "copy"
        if not m and name in _TIMM_TOP:
            return (_TIMM_TOP[name],), "copy"
    else:
        raise ValueError(f"format={fmt!r}: expected one of {FORMATS}")
    raise FormatError(f"format {fmt!r} has no tensor for the parameter {name!r}")


def _source_shapes(op: str, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    if op == "conv_mlx":
        o, i, kh, kw = shape
        return [(o, kh, kw, i)]
    if op == "qkv":
        return [(shape[0] // 3, *shape[1:])] * 3
    if op == "pos":
        return [tuple(shape[1:])]
    return [tuple(shape)]


def _combine(op: str, parts: list[np.ndarray]) -> np.ndarray:
    if op == "conv_mlx":
        return np.ascontiguousarray(parts[0].transpose(0, 3, 1, 2))
    if op == "qkv":
        return np.concatenate(parts, axis=0)
    if op == "pos":
        return parts[0][None]
    return parts[0]


def _split(op: str, canonical: np.ndarray, index: int) -> np.ndarray:
    if op == "conv_mlx":
        return canonical.transpose(0, 2, 3, 1)
    if op == "qkv":
        n = canonical.shape[0] // 3
        return canonical[index * n : (index + 1) * n]
    if op == "pos":
        return canonical[0]
    return canonical


# ----------------------------------------------------------------------- tensor stores


@dataclass
class _Store:
    """Every tensor a checkpoint's safetensors files hold: name -> (file, TensorInfo)."""

    tensors: dict[str, tuple[Path, TensorInfo]]
    metadata: dict[str, str]
    files: list[Path]

    @classmethod
    def open(cls, files: list[Path], weight_map: Mapping[str, str] | None = None) -> _Store:
        tensors: dict[str, tuple[Path, TensorInfo]] = {}
        metadata: dict[str, str] = {}
        for f in files:
            if not f.is_file():
                raise FormatError(f"{f}: shard file is missing")
            infos, meta = read_header(f)
            metadata.update(meta)
            for name, info in infos.items():
                if weight_map is not None and weight_map.get(name) != f.name:
                    continue
                if name in tensors:
                    raise FormatError(
                        f"tensor {name!r} is stored twice: in {tensors[name][0]} and {f}"
                    )
                tensors[name] = (f, info)
        if weight_map is not None:
            lost = sorted(n for n in weight_map if n not in tensors)
            if lost:
                raise FormatError(
                    f"{files[0].parent / _INDEX}: names {len(lost)} tensors its shards do not hold "
                    f"(first: {lost[0]!r} in {weight_map[lost[0]]!r})"
                )
        return cls(tensors, metadata, files)

    def shape(self, name: str) -> tuple[int, ...] | None:
        hit = self.tensors.get(name)
        return None if hit is None else hit[1].shape

    def read(self, name: str) -> np.ndarray:
        path, _ = self.tensors[name]
        return load_file(path, names=[name], dtype=np.float32)[name]


# ----------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Detected:
    """What a checkpoint holds: its ``format``, the encoder ``spec`` it realizes, where the
    spec came from (``origin``), the safetensors ``files`` and the name ``prefix`` of the
    encoder inside them.

    Example:
        >>> Detected("official", None, "tensor shapes", ()).format
        'official'
    """

    format: str
    spec: S.EncoderSpec
    origin: str
    files: tuple[Path, ...]
    prefix: str = ""
    store: _Store | None = field(default=None, repr=False, compare=False)

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
            src, op = _recipe(self.format, name)
            out[name] = (tuple(self.prefix + s for s in src), op)
        return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(f"{path}: cannot read JSON ({err})") from err
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _locate(path: Path, backend: str | None) -> tuple[str, Any, Path]:
    """('checkpoint', state_dir, folder) | ('files', (files, weight_map), folder)."""
    if not path.exists():
        raise FileNotFoundError(f"path={str(path)!r}: no such file or folder")
    if path.is_file():
        if path.name == "state.json":
            return "checkpoint", path.parent, path.parent
        if path.name.endswith(".index.json"):
            return "files", _index(path), path.parent
        if path.suffix != ".safetensors":
            raise FormatError(
                f"path={str(path)!r}: expected a .safetensors file, a model.safetensors.index.json"
                f" or a folder (pickle checkpoints such as .bin/.pt are not read)"
            )
        return "files", ([path], None), path.parent
    if (path / "state.json").is_file():
        return "checkpoint", path, path
    newest = _ckpt.latest(path)
    if newest is not None:
        return "checkpoint", newest, newest
    if (path / _INDEX).is_file():
        return "files", _index(path / _INDEX), path
    standard = [
        p for p in (path / "model.safetensors", path / "mlx_model.safetensors") if p.is_file()
    ]
    if len(standard) == 2:
        standard = [standard[1] if backend == "mlx" else standard[0]]
    if not standard:
        standard = sorted(
            p for p in path.glob("*.safetensors") if p.is_file() and not p.name.startswith(".")
        )
    if len(standard) != 1:
        have = sorted(p.name for p in path.iterdir())[:12]
        what = "several" if standard else "no"
        raise FormatError(
            f"folder {str(path)!r}: found {what} candidate .safetensors files (expected "
            f"model.safetensors, mlx_model.safetensors, {_INDEX} or state.json); it holds {have}"
        )
    return "files", (standard, None), path


def _index(path: Path) -> tuple[list[Path], dict[str, str]]:
    data = _read_json(path)
    wmap = data.get("weight_map")
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise FormatError(f"{path}: expected a 'weight_map' object of tensor name -> shard file")
    files = [path.parent / name for name in sorted(set(wmap.values()))]
    return files, wmap


def _find_format(store: _Store, where: str) -> tuple[str, str]:
    found = []
    for key in store.tensors:
        for fmt, anchor in _ANCHORS.items():
            if key == anchor or key.endswith("." + anchor):
                found.append((fmt, key[: len(key) - len(anchor)]))
    if not found:
        names = sorted(store.tensors)
        raise FormatError(
            f"{where}: not an AIMv2 checkpoint: none of the patch-embedding keys "
            f"{sorted(_ANCHORS.values())} is present (it holds {len(names)} tensors, e.g. "
            f"{names[:6]})"
        )
    if len(found) > 1:
        raise FormatError(f"{where}: holds several AIMv2 encoders (format, prefix): {found}")
    fmt, prefix = found[0]
    if fmt == "official":
        fmt = _official_or_mlx(store, prefix + _CONV)
    return fmt, prefix


def _official_or_mlx(store: _Store, conv: str) -> str:
    path, _ = store.tensors[conv]
    if store.metadata.get("format") == "mlx" or path.name.startswith("mlx_"):
        return "mlx"
    shape = store.shape(conv) or ()
    if len(shape) == 4 and shape[1] == shape[2] and shape[2] != shape[3]:
        return "mlx"  # (out, kH, kW, in) with in != kW
    return "official"


def _spec_of(preset: Any) -> tuple[S.EncoderSpec, str]:
    if isinstance(preset, str):
        try:
            spec = presets.get(preset)
        except KeyError as err:
            raise FormatError(f"preset: {err.args[0]}") from None
        return spec.encoder, f"preset {preset!r}"
    if isinstance(preset, S.ModelSpec):
        return preset.encoder, f"preset {preset.name or 'spec'!r}"
    if isinstance(preset, S.EncoderSpec):
        return preset, "the given EncoderSpec"
    raise TypeError(
        f"preset: expected a preset name, a ModelSpec or an EncoderSpec, got {type(preset).__name__}"
    )


def detect(path: PathLike, preset: Any = None, backend: str | None = None) -> Detected:
    """Find what ``path`` holds (format, spec, files) and check every tensor name and shape.

    Reads only headers and JSON. ``preset`` (a preset name, ``ModelSpec`` or ``EncoderSpec``)
    overrides the spec found in the checkpoint; it must then match the tensors. ``backend``
    picks ``mlx_model.safetensors`` over ``model.safetensors`` when a folder has both.

    Example:
        >>> import tempfile, aimv2
        >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           mlp_hidden=64)
        >>> p = save_pretrained(aimv2.build(spec), tempfile.mkdtemp() + "/m", format="mlx")
        >>> d = detect(p)
        >>> d.format, d.spec.depth, d.origin
        ('mlx', 1, 'the spec stored in the file')
    """
    path = Path(os.fspath(path))
    kind, found, folder = _locate(path, backend)
    if kind == "checkpoint":
        return _detect_checkpoint(found, preset)
    files, wmap = found
    store = _Store.open(files, wmap)
    where = str(path)
    fmt, prefix = _find_format(store, where)
    config, cfg_path = _folder_config(folder)
    stored = _stored_spec(store, where)
    if preset is not None:
        spec, origin = _spec_of(preset)
    elif stored is not None and not config:
        spec, origin = stored, "the spec stored in the file"
    else:
        spec, origin = _infer_spec(store, fmt, prefix, folder, where, config, cfg_path)
        if stored is not None and stored.replace(preprocess=spec.preprocess) == spec:
            spec = stored  # same architecture; keeps preprocessing a config cannot spell
    det = Detected(fmt, spec, origin, tuple(store.files), prefix, store)
    _check_tensors(det, where)
    return det


def _stored_spec(store: _Store, where: str) -> S.EncoderSpec | None:
    """The spec a file written by :func:`save_pretrained` carries in its metadata."""
    if _SPEC_KEY not in store.metadata:
        return None
    try:
        spec = S.from_json(store.metadata[_SPEC_KEY])
    except (S.SpecError, ValueError, TypeError) as err:
        raise FormatError(f"{where}: the spec stored in its metadata is invalid ({err})") from err
    if not isinstance(spec, S.EncoderSpec):
        raise FormatError(f"{where}: the stored spec is a {spec.kind!r}, expected 'encoder'")
    return spec


def _folder_config(folder: Path) -> tuple[dict[str, Any], str]:
    """Spec fields of ``folder/config.json`` (transformers-style or timm); empty when absent
    or of another kind."""
    path = folder / "config.json"
    if not path.is_file():
        return {}, ""
    return _config_fields(_read_json(path), str(path)), str(path)


def _detect_checkpoint(ckpt_dir: Path, preset: Any) -> Detected:
    state = _read_json(ckpt_dir / "state.json")
    if state.get("format") != _ckpt.FORMAT:
        raise FormatError(
            f"{ckpt_dir / 'state.json'}: format {state.get('format')!r} is not {_ckpt.FORMAT!r}"
        )
    try:
        saved = S.from_dict(state.get("spec"))
    except (S.SpecError, TypeError) as err:
        raise FormatError(f"{ckpt_dir / 'state.json'}: invalid spec ({err})") from err
    if isinstance(saved, S.ModelSpec):
        prefix = "encoder." if saved.decoder is not None else ""
        spec = saved.encoder
    elif isinstance(saved, S.EncoderSpec):
        prefix, spec = "", saved
    else:
        raise FormatError(f"{ckpt_dir}: holds a {saved.kind!r} spec, expected an encoder or model")
    origin = f"{ckpt_dir / 'state.json'}"
    if preset is not None:
        spec, origin = _spec_of(preset)
    weights = ckpt_dir / "model.safetensors"
    store = _Store.open([weights])
    det = Detected("aimv2", spec, origin, (weights,), prefix, store)
    _check_tensors(det, str(ckpt_dir))
    return det


def _check_tensors(det: Detected, where: str) -> None:
    """Every expected tensor present with its expected shape, nothing unexpected, floats."""
    store = det.store
    assert store is not None
    expected: dict[str, tuple[int, ...]] = {}
    shapes = parameters(det.spec)
    for name, (src, op) in det.plan().items():
        for key, shape in zip(src, _source_shapes(op, shapes[name].shape), strict=True):
            expected[key] = shape
    have = {k for k in store.tensors if k.startswith(det.prefix)}
    missing = sorted(set(expected) - have)
    unexpected = sorted(have - set(expected))
    bad = []
    for key in sorted(set(expected) & have):
        got = store.shape(key)
        if got != expected[key]:
            bad.append(f"{key!r}: {det.origin} expects {expected[key]}, the file has {got}")
        elif store.tensors[key][1].dtype not in _ITEMSIZE:
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


# ----------------------------------------------------------------------- spec inference


def _canonical_shape(store: _Store, fmt: str, prefix: str, name: str) -> tuple[int, ...] | None:
    """Shape of canonical ``name`` as the file stores it (None when absent)."""
    try:
        src, op = _recipe(fmt, name)
    except FormatError:
        return None
    shapes = [store.shape(prefix + s) for s in src]
    if any(s is None for s in shapes):
        return None
    first = shapes[0]
    if op == "conv_mlx" and len(first) == 4:
        return (first[0], first[3], first[1], first[2])
    if op == "qkv":
        return (sum(s[0] for s in shapes), *first[1:])
    if op == "pos":
        return (1, *first)
    return first


def _config_fields(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Spec fields named by a transformers-style or timm ``config.json`` (others: empty)."""
    if isinstance(cfg.get("vision_config"), dict):  # a whole Aimv2Model (vision + text)
        cfg = cfg["vision_config"]
    out: dict[str, Any] = {}
    if "architecture" in cfg:  # timm hub config
        m = re.match(r"^aimv2_(large|huge|1b|3b)_patch(\d+)_(\d+)", str(cfg["architecture"]))
        args = dict(cfg.get("model_args") or {})
        if m:
            size = {"large": "large", "huge": "huge", "1b": "1B", "3b": "3B"}[m.group(1)]
            width, depth, heads = presets.SIZES[size]
            out.update(width=width, depth=depth, heads=heads, patch=int(m.group(2)))
            out["image"] = int(m.group(3))
        for key, dst in (("embed_dim", "width"), ("depth", "depth"), ("num_heads", "heads"),
                         ("patch_size", "patch"), ("img_size", "image"), ("in_chans", "in_channels"),
                         ("qkv_bias", "qkv_bias"), ("proj_bias", "proj_bias")):  # fmt: skip
            if key in args:
                out[dst] = args[key]
        if "mlp_ratio" in args and "width" in out:
            out["hidden"] = int(out["width"] * float(args["mlp_ratio"]))
        if "proj_bias" in out:
            out["mlp_bias"] = out["proj_bias"]
        pre = cfg.get("pretrained_cfg") or {}
        if isinstance(pre.get("mean"), list) and isinstance(pre.get("std"), list):
            out["mean"], out["std"] = tuple(pre["mean"]), tuple(pre["std"])
        return out
    if "hidden_size" not in cfg:
        return out
    names = {
        "hidden_size": "width", "num_hidden_layers": "depth", "num_attention_heads": "heads",
        "intermediate_size": "hidden", "patch_size": "patch", "image_size": "image",
        "rms_norm_eps": "eps", "num_channels": "in_channels", "qkv_bias": "qkv_bias",
        "mlp_bias": "mlp_bias", "use_head": "use_head", "is_native": "native",
    }  # fmt: skip
    if cfg.get("model_type") == "aimv2_vision_model":
        # transformers fills absent fields with Aimv2VisionConfig's defaults
        out.update(eps=1e-5, in_channels=3, qkv_bias=False, mlp_bias=False)
        out.update(use_head=True, native=False)
    for key, dst in names.items():
        if key in cfg:
            out[dst] = cfg[key]
    if "qkv_bias" in out:  # transformers ties the out-projection bias to qkv_bias
        out["proj_bias"] = out["qkv_bias"]
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise FormatError(f"{where}: hidden_act={act!r}; AIMv2's SwiGLU needs 'silu'")
    return out


def _preprocessor_fields(folder: Path) -> dict[str, Any]:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    cfg = _read_json(path)
    out: dict[str, Any] = {}
    if isinstance(cfg.get("image_mean"), list) and isinstance(cfg.get("image_std"), list):
        out["mean"], out["std"] = tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return out


def _infer_spec(
    store: _Store,
    fmt: str,
    prefix: str,
    folder: Path,
    where: str,
    cfg: dict[str, Any],
    cfg_path: str,
) -> tuple[S.EncoderSpec, str]:
    """Fields from the tensor shapes, overridden by config.json; then the spec."""

    def shape(name: str) -> tuple[int, ...] | None:
        return _canonical_shape(store, fmt, prefix, name)

    def has(name: str) -> bool:
        return shape(name) is not None

    conv = shape(_CONV)
    if conv is None or len(conv) != 4 or conv[2] != conv[3]:
        raise FormatError(
            f"{where}: patch conv {prefix + _CONV!r} has shape {conv}, "
            f"expected (width, channels, patch, patch)"
        )
    width, in_ch, patch = conv[0], conv[1], conv[2]
    f: dict[str, Any] = {"width": width, "in_channels": in_ch, "patch": patch, "eps": 1e-5}
    f["conv_bias"] = has("preprocessor.patchifier.proj.bias")
    f["norm"] = "layer" if has("preprocessor.patchifier.norm.bias") else "rms"
    pos = shape(_POS)
    f["native"] = pos is None
    if pos is not None:
        f["positions"] = pos[1]
    depth = 0
    while has(f"trunk.blocks.{depth}.norm_1.weight"):
        depth += 1
    f["depth"] = depth
    fc1 = shape("trunk.blocks.0.mlp.fc1.weight")
    f["hidden"] = fc1[0] if fc1 else None
    f["ffn"] = "swiglu" if has("trunk.blocks.0.mlp.fc3.weight") else "gelu"
    f["mlp_bias"] = has("trunk.blocks.0.mlp.fc1.bias")
    f["qkv_bias"] = has("trunk.blocks.0.attn.qkv.bias")
    f["proj_bias"] = has("trunk.blocks.0.attn.proj.bias")
    cls = shape("head.cls_token")
    f["use_head"] = cls is not None
    if cls is not None:
        lin = shape("head.linear.weight") or (width, width)
        f["head_queries"] = cls[1]
        f["head_out"] = None if lin[0] == width else lin[0]
        f["head_kv_bias"] = has("head.k.bias")
        f["head_out_bias"] = has("head.linear.bias")
    origin = "tensor shapes"
    if cfg:
        origin = cfg_path
        if "heads" in cfg and fmt == "transformers":
            f["head_heads"] = cfg["heads"]  # transformers' head uses the trunk's heads
        if "qkv_bias" in cfg and fmt == "transformers":
            f["head_kv_bias"] = cfg["qkv_bias"]
        f.update(cfg)
    f.update(_preprocessor_fields(folder))
    if not f.get("native") and "image" not in f and "positions" not in f:
        raise FormatError(f"{where}: fixed-size per {origin} but no {_POS!r} and no image_size")
    if depth == 0 and "depth" not in f:
        raise FormatError(f"{where}: no trunk blocks found (expected {prefix}… block 0 keys)")
    if f.get("hidden") is None:
        raise FormatError(f"{where}: no feed-forward weight for block 0; cannot infer its size")
    try:
        return _build_spec(f, where), origin
    except FormatError:
        raise
    except (ValueError, TypeError) as err:  # SpecError, or a config value of the wrong type
        raise FormatError(f"{where}: the spec from {origin} is invalid: {err}") from err


def _build_spec(f: dict[str, Any], where: str) -> S.EncoderSpec:
    width, patch = int(f["width"]), int(f["patch"])
    heads = f.get("heads")
    if heads is None:
        if width % _HEAD_DIM:
            raise FormatError(
                f"{where}: cannot infer the number of attention heads: no config.json and "
                f"width {width} is not a multiple of AIMv2's head dim {_HEAD_DIM}; pass preset="
            )
        heads = width // _HEAD_DIM
    native = bool(f.get("native"))
    image: tuple[int, int] | None = None
    if not native:
        if "image" in f:
            size = f["image"]
            image = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        else:
            side = math.isqrt(int(f["positions"]))
            if side * side != f["positions"]:
                raise FormatError(
                    f"{where}: {_POS} holds {f['positions']} positions, not a square grid; "
                    f"pass preset= to say the image size"
                )
            image = (side * patch, side * patch)
    c = int(f.get("in_channels", 3))
    norm = S.NormSpec(width, type=f.get("norm", "rms"), eps=float(f.get("eps", 1e-5)))
    mlp_bias = bool(f.get("mlp_bias", False))
    block = S.BlockSpec(
        norm=norm,
        attn=S.AttentionSpec(width, int(heads), bool(f.get("qkv_bias")), bool(f.get("proj_bias"))),
        mlp=S.FeedForwardSpec(width, int(f["hidden"]), f.get("ffn", "swiglu"), mlp_bias),
    )
    grid = None if image is None else (image[0] // patch, image[1] // patch)
    head = None
    if f.get("use_head"):
        head_heads = f.get("head_heads") or (int(heads) if width % 8 else 8)
        head = S.AttentionPoolSpec(
            width=width,
            heads=int(head_heads),
            out_features=f.get("head_out"),
            num_queries=int(f.get("head_queries", 1)),
            kv_bias=bool(f.get("head_kv_bias", False)),
            out_bias=bool(f.get("head_out_bias", True)),
        )
    if native:
        pre = S.PreprocessSpec(resize=0, crop=False)
    elif c == 3:
        pre = S.PreprocessSpec()
    else:
        pre = S.PreprocessSpec(mean=(0.5,) * c, std=(0.5,) * c)
    if "mean" in f and len(f["mean"]) == c and len(f.get("std", ())) == c:
        pre = pre.replace(mean=tuple(f["mean"]), std=tuple(f["std"]))
    return S.EncoderSpec(
        patchifier=S.PatchEmbedSpec(
            patch,
            c,
            width,
            bias=bool(f.get("conv_bias", True)),
            norm=None if norm == S.NormSpec(width) else norm,
        ),
        pos_embed=S.PosEmbedSpec(width, "sincos" if native else "learned", grid),
        trunk=S.TrunkSpec(block=block, depth=int(f["depth"])),
        image_size=image,
        head=head,
        preprocess=pre,
    )


# ----------------------------------------------------------------------- loading


def _iter_canonical(det: Detected) -> Iterator[tuple[str, np.ndarray]]:
    """(canonical name, float array in torch layout), one parameter at a time, in file order."""
    store = det.store
    assert store is not None
    plan = det.plan()

    def position(item: tuple[str, tuple[tuple[str, ...], str]]) -> tuple[str, int]:
        path, info = store.tensors[item[1][0][0]]
        return (str(path), info.offsets[0])

    for name, (src, op) in sorted(plan.items(), key=position):
        yield name, _combine(op, [store.read(key) for key in src])


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    code = _DTYPE_CODES.get(str(dtype).lower()) if isinstance(dtype, str) else None
    if code is None:
        raise TypeError(f"dtype={dtype!r}: expected a torch.dtype or one of {sorted(_DTYPE_CODES)}")
    return {
        "F32": torch.float32,
        "BF16": torch.bfloat16,
        "F16": torch.float16,
        "F64": torch.float64,
    }[code]


def _mlx_dtype(dtype: Any) -> Any:
    import mlx.core as mx

    if dtype is None or isinstance(dtype, mx.Dtype):
        return dtype
    code = _DTYPE_CODES.get(str(dtype).lower()) if isinstance(dtype, str) else None
    if code is None or code == "F64":
        raise TypeError(
            f"dtype={dtype!r}: expected an mlx.core.Dtype or one of 'float32', 'bfloat16', "
            f"'float16'"
        )
    return {"F32": mx.float32, "BF16": mx.bfloat16, "F16": mx.float16}[code]


def _load_torch(det: Detected, dtype: Any, device: Any) -> Any:
    import torch

    be = load_backend("torch")
    with torch.device("meta"):
        module = be.build_module(det.spec)
    if any(True for _ in module.buffers()):  # pragma: no cover - encoders hold no buffers
        raise RuntimeError("formats: the torch encoder holds buffers; meta build is unsafe")
    if dtype is not None:
        module = module.to(dtype=dtype)
    module = module.to_empty(device=device if device is not None else "cpu")
    params = dict(module.named_parameters())
    if set(params) != set(parameters(det.spec)):  # pragma: no cover - a backend bug
        raise RuntimeError("formats: torch module names differ from aimv2.weights.parameters")
    with torch.no_grad():
        for name, arr in _iter_canonical(det):
            params[name].copy_(torch.from_numpy(arr))
    return module


def _load_mlx(det: Detected, dtype: Any) -> Any:
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    be = load_backend("mlx")
    module = be.build_module(det.spec)  # MLX is lazy: the random init is never evaluated
    if dtype is not None:
        module.set_dtype(dtype)
    current = dict(tree_flatten(module.parameters()))
    if set(current) != set(parameters(det.spec)):  # pragma: no cover - a backend bug
        raise RuntimeError("formats: MLX module names differ from aimv2.weights.parameters")
    for name, arr in _iter_canonical(det):
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        value = mx.array(arr)
        if value.ndim == 4:
            value = value.transpose(0, 2, 3, 1)
        value = value.astype(current[name].dtype)
        mx.eval(value)
        module.update(tree_unflatten([(name, value)]))
    return module


def from_pretrained(
    path: PathLike,
    backend: str = "torch",
    dtype: Any = None,
    preset: Any = None,
    *,
    device: Any = None,
) -> Any:
    """Build an AIMv2 encoder from a checkpoint file or folder in any supported format.

    The format is detected from the tensor names (see the module docstring); the spec comes
    from ``preset`` (a preset name, ``ModelSpec`` or ``EncoderSpec``), else ``config.json``
    (transformers or timm), else the spec :func:`save_pretrained` stores in the file, else
    the tensor shapes with AIMv2's conventions (head dim 128, eps 1e-5, square grid). Every tensor name and shape is checked before anything
    is built; a mismatch raises :class:`FormatError` naming the key and both shapes. Weights
    stored as bf16/fp16/fp32 load into ``dtype`` (None: float32; or ``"bfloat16"``,
    ``"float16"``, a ``torch.dtype`` / ``mlx.core.Dtype``). Tensors stream into the module one
    at a time. ``device`` is a torch device (MLX uses its default device).

    Example:
        >>> import tempfile, aimv2
        >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           mlp_hidden=64)
        >>> p = save_pretrained(aimv2.build(spec), tempfile.mkdtemp() + "/m", format="official")
        >>> m = from_pretrained(p, backend="torch")
        >>> sorted(aimv2.get_weights(m)) == sorted(aimv2.weights.parameters(spec))
        True
    """
    if backend not in ("torch", "mlx"):
        raise ValueError(f"backend={backend!r}: expected 'torch' or 'mlx'")
    load_backend(backend)  # a missing framework fails before any file is read
    if backend == "mlx" and device is not None:
        raise ValueError("device: only the torch backend takes a device (MLX memory is unified)")
    target = _torch_dtype(dtype) if backend == "torch" else _mlx_dtype(dtype)
    det = detect(path, preset=preset, backend=backend)
    if backend == "torch":
        return _load_torch(det, target, device)
    return _load_mlx(det, target)


# ----------------------------------------------------------------------- writing


@dataclass
class _Entry:
    """One tensor to write: its name, shape, stored dtype code and a producer of its values."""

    name: str
    shape: tuple[int, ...]
    code: str
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEMSIZE[self.code]


def _encode(arr: np.ndarray, code: str) -> np.ndarray:
    if code == "BF16":
        return to_bf16_bits(arr).astype("<u2", copy=False)
    dt = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}[code]
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(arr, dtype=dt)


def _write_safetensors(path: Path, entries: list[_Entry], metadata: Mapping[str, str]) -> None:
    """Write ``entries`` to ``path`` one tensor at a time (temp file, fsync, os.replace)."""
    entries = sorted(entries, key=lambda e: e.name)
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.code, "shape": list(e.shape),
                          "data_offsets": [offset, offset + e.nbytes]}  # fmt: skip
        offset += e.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for e in entries:
                arr = np.asarray(e.produce())
                if tuple(arr.shape) != e.shape:  # pragma: no cover - guards a table bug
                    raise RuntimeError(
                        f"tensor {e.name!r}: produced {arr.shape}, expected {e.shape}"
                    )
                f.write(_encode(arr, e.code).reshape(-1).view(np.uint8))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Canonical:
    """Canonical tensors (torch layout) of a model or a detected checkpoint, produced lazily;
    one kept tensor lets q, k and v split from a single fetch of qkv."""

    def __init__(self, spec: S.Spec, codes: dict[str, str], fetch: Callable[[str], np.ndarray]):
        self.spec = spec
        self.codes = codes
        self._fetch = fetch
        self._cache: dict[str, np.ndarray] = {}

    def get(self, name: str, keep: bool = False) -> np.ndarray:
        """The canonical tensor ``name``; ``keep`` holds it (one at a time) for the next call."""
        if name in self._cache:
            return self._cache[name]
        value = self._fetch(name)
        if keep:
            self._cache.clear()
            self._cache[name] = value
        return value

    @classmethod
    def of_model(cls, model: Any) -> _Canonical:
        be = backend_of(model)
        spec = model.spec
        if be.__name__.endswith(".torch"):
            params = dict(model.named_parameters())
            names = {"torch.bfloat16": "BF16", "torch.float16": "F16", "torch.float64": "F64"}
            codes = {n: names.get(str(p.dtype), "F32") for n, p in params.items()}
            return cls(spec, codes, lambda n: be.to_numpy(params[n]))
        from mlx.utils import tree_flatten

        params = dict(tree_flatten(model.parameters()))
        names = {"mlx.core.bfloat16": "BF16", "mlx.core.float16": "F16"}
        codes = {n: names.get(str(p.dtype), "F32") for n, p in params.items()}

        def fetch(n: str) -> np.ndarray:
            arr = be.to_numpy(params[n])
            return arr.transpose(0, 3, 1, 2) if arr.ndim == 4 else arr

        return cls(spec, codes, fetch)

    @classmethod
    def of_checkpoint(cls, det: Detected) -> _Canonical:
        store = det.store
        assert store is not None
        plan = det.plan()
        codes = {n: store.tensors[src[0]][1].dtype for n, (src, _) in plan.items()}

        def fetch(n: str) -> np.ndarray:
            src, op = plan[n]
            return _combine(op, [store.read(k) for k in src])

        return cls(det.spec, codes, fetch)


def _dtype_code(dtype: Any) -> str | None:
    if dtype is None:
        return None
    code = _DTYPE_CODES.get(str(dtype).lower()) if isinstance(dtype, str) else None
    if code is None:
        raise ValueError(f"dtype={dtype!r}: expected None, 'float32', 'bfloat16' or 'float16'")
    return code


def _entries(
    src: _Canonical, spec: S.Spec, fmt: str, prefix: str, code: str | None
) -> list[_Entry]:
    out = []
    for name, info in parameters(spec).items():
        keys, op = _recipe(fmt, name)
        for i, (key, shape) in enumerate(zip(keys, _source_shapes(op, info.shape), strict=True)):
            full = prefix + name

            def produce(full: str = full, op: str = op, i: int = i) -> np.ndarray:
                return _split(op, src.get(full, keep=op == "qkv"), i)

            out.append(_Entry(key, shape, code or src.codes[full], produce))
    return out


def _check_exportable(spec: S.EncoderSpec, fmt: str) -> None:
    """Raise FormatError naming the first spec field the format cannot represent."""
    if fmt not in ("transformers", "timm"):
        return
    blk, pos, head = spec.trunk.block, spec.pos_embed, spec.head
    # (field, value, what the format holds, ok)
    checks: list[tuple[str, Any, str, bool]] = []
    for where, norm in (
        ("patchifier.norm", spec.patchifier.norm_spec),
        ("trunk.block.norm", blk.norm),
        ("trunk.final_norm", spec.trunk.final_norm_spec),
    ):
        checks.append((f"{where}.type", norm.type, "RMSNorm only", norm.type == "rms"))
        checks.append((f"{where}.eps", norm.eps, f"one eps for every norm ({blk.norm.eps})",
                       norm.eps == blk.norm.eps))  # fmt: skip
    checks += [
        ("trunk.block.mlp.type", blk.mlp.type, "SwiGLU only", blk.mlp.type == "swiglu"),
        ("patchifier.bias", spec.patchifier.bias, "a patch conv with bias", spec.patchifier.bias),
    ]
    if fmt == "transformers":
        checks += [
            ("trunk.block.attn.proj_bias", blk.attn.proj_bias,
             f"the out-projection bias tied to qkv_bias={blk.attn.qkv_bias}",
             blk.attn.proj_bias == blk.attn.qkv_bias),
            ("pos_embed.type", pos.type, "a learned table (fixed size) or 2D sin-cos (native)",
             pos.type == ("sincos" if spec.native else "learned")),
            ("pos_embed.temperature", pos.temperature, "sin-cos temperature 10000",
             pos.temperature == 10000.0),
            ("image_size", spec.image_size, "square images",
             spec.native or spec.image_size[0] == spec.image_size[1]),
        ]  # fmt: skip
        if head is not None:
            for name, value, want in (
                ("heads", head.heads, blk.attn.heads),
                ("kv_bias", head.kv_bias, blk.attn.qkv_bias),
                ("out_bias", head.out_bias, True),
                ("num_queries", head.num_queries, 1),
                ("out_dim", head.out_dim, spec.width),
            ):
                checks.append((f"head.{name}", value, f"a head with {name}={want}", value == want))
    else:
        checks += [
            ("trunk.block.mlp.bias", blk.mlp.bias,
             f"the MLP bias tied to attn.proj_bias={blk.attn.proj_bias}",
             blk.mlp.bias == blk.attn.proj_bias),
            ("pos_embed.type", pos.type, "a learned table (timm's AIMv2 has no native model)",
             pos.type == "learned"),
            ("trunk.block.norm.eps", blk.norm.eps, "timm's AIMv2 RMSNorm eps 1e-5",
             blk.norm.eps == 1e-5),
            ("head", "AttentionPoolSpec", "no attention-pooling head (timm's AIMv2 has none; "
             "use 'transformers' or 'official')", head is None),
        ]  # fmt: skip
    for name, value, holds, ok in checks:
        if not ok:
            raise FormatError(f"format={fmt!r} cannot hold spec.{name}={value!r}: it holds {holds}")


def _transformers_config(spec: S.EncoderSpec, code: str) -> dict[str, Any]:
    blk = spec.trunk.block
    return {
        "architectures": ["Aimv2VisionModel"],
        "model_type": "aimv2_vision_model",
        "attention_dropout": 0.0,
        "dtype": {"BF16": "bfloat16", "F16": "float16", "F64": "float64"}.get(code, "float32"),
        "hidden_act": "silu",
        "hidden_size": spec.width,
        # native models ignore image_size (positions are computed per input)
        "image_size": spec.image_size[0] if spec.image_size else 16 * spec.patch_size,
        "initializer_range": 0.02,
        "intermediate_size": blk.mlp.hidden,
        "is_native": spec.native,
        "mlp_bias": blk.mlp.bias,
        "num_attention_heads": blk.attn.heads,
        "num_channels": spec.in_channels,
        "num_hidden_layers": spec.depth,
        "patch_size": spec.patch_size,
        "qkv_bias": blk.attn.qkv_bias,
        "rms_norm_eps": blk.norm.eps,
        "use_head": spec.head is not None,
    }


def _processor_config(spec: S.EncoderSpec) -> dict[str, Any]:
    pre = spec.preprocess
    out: dict[str, Any] = {
        "image_processor_type": "CLIPImageProcessor",
        "do_convert_rgb": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
        "resample": {"bicubic": 3, "bilinear": 2, "nearest": 0}[pre.interpolation],
    }
    if spec.image_size is None:
        out.update(do_resize=False, do_center_crop=False)
    else:
        side = min(spec.image_size) if pre.resize is None else pre.resize
        out.update(do_resize=pre.resize != 0, size={"shortest_edge": side})
        h, w = spec.image_size
        out.update(do_center_crop=pre.crop, crop_size={"height": h, "width": w})
    return out


def _timm_config(spec: S.EncoderSpec) -> dict[str, Any]:
    blk = spec.trunk.block
    h, w = spec.image_size
    arch = "aimv2_large_patch14_224"
    for size, (width, depth, heads) in presets.SIZES.items():
        if (spec.width, spec.depth, blk.attn.heads, spec.patch_size) == (width, depth, heads, 14):
            if size != "base" and h == w and h in (224, 336, 448):
                arch = f"aimv2_{size.lower()}_patch14_{h}"
    return {
        "architecture": arch,
        "num_classes": 0,
        "num_features": spec.width,
        "global_pool": "avg",
        "model_args": {
            "img_size": h if h == w else [h, w],
            "patch_size": spec.patch_size,
            "in_chans": spec.in_channels,
            "embed_dim": spec.width,
            "depth": spec.depth,
            "num_heads": blk.attn.heads,
            # timm: hidden = int(embed_dim * mlp_ratio); the +0.25 survives float rounding
            "mlp_ratio": (blk.mlp.hidden + 0.25) / spec.width,
            "qkv_bias": blk.attn.qkv_bias,
            "proj_bias": blk.attn.proj_bias,
        },
        "pretrained_cfg": {
            "tag": "aimv2",
            "custom_load": False,
            "input_size": [spec.in_channels, h, w],
            "fixed_input_size": True,
            "interpolation": spec.preprocess.interpolation,
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(spec.preprocess.mean),
            "std": list(spec.preprocess.std),
            "num_classes": 0,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
    }


def _parse_size(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\s*", str(value).upper())
    if not m:
        raise ValueError(f"max_shard_size={value!r}: expected bytes (int) or a size like '5GB'")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)]
    return max(1, int(float(m.group(1)) * scale))


def _shards(entries: list[_Entry], limit: int | None) -> list[list[_Entry]]:
    if limit is None:
        return [entries]
    out: list[list[_Entry]] = [[]]
    size = 0
    for e in sorted(entries, key=lambda e: e.name):
        if out[-1] and size + e.nbytes > limit:
            out.append([])
            size = 0
        out[-1].append(e)
        size += e.nbytes
    return out


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _write_weights(
    folder: Path, stem: str, entries: list[_Entry], meta: dict[str, str], limit: int | None
) -> None:
    groups = _shards(entries, limit)
    if len(groups) == 1:
        _write_safetensors(folder / f"{stem}.safetensors", groups[0], meta)
        return
    wmap = {}
    for k, group in enumerate(groups, 1):
        name = f"{stem}-{k:05d}-of-{len(groups):05d}.safetensors"
        _write_safetensors(folder / name, group, meta)
        wmap.update({e.name: name for e in group})
    total = sum(e.nbytes for e in entries)
    _write_json(folder / f"{stem}.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": wmap})  # fmt: skip


def _write_format(
    src: _Canonical,
    fmt: str,
    path: Path,
    code: str | None,
    limit: int | None,
    overwrite: bool,
) -> Path:
    full = src.spec
    enc = full.encoder if isinstance(full, S.ModelSpec) else full
    prefix = "encoder." if isinstance(full, S.ModelSpec) and full.decoder is not None else ""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: expected one of {FORMATS}")
    _check_exportable(enc, fmt)
    if limit is not None and fmt not in ("transformers", "official"):
        raise ValueError(f"max_shard_size: only 'transformers' and 'official' shard, not {fmt!r}")
    if fmt == "aimv2":
        entries = _entries(src, full, "aimv2", "", code or "F32")
    else:
        entries = _entries(src, enc, fmt, prefix, code)
    first = entries[0].code
    meta = {"format": "mlx" if fmt == "mlx" else "pt"}
    if fmt != "aimv2":
        meta[_SPEC_KEY] = enc.to_json(indent=None)
    if path.suffix == ".safetensors":
        if fmt not in ("official", "mlx", "timm") or limit is not None:
            raise ValueError(
                f"path={str(path)!r}: a single .safetensors file holds only the 'official', "
                f"'mlx' or 'timm' formats (unsharded); use a folder for {fmt!r}"
            )
        if path.exists() and not overwrite:
            raise FileExistsError(f"path={str(path)!r} exists; pass overwrite=True to replace it")
        if not path.parent.is_dir():
            raise FileNotFoundError(
                f"path={str(path)!r}: folder {str(path.parent)!r} does not exist"
            )
        _write_safetensors(path, entries, meta)
        return path
    _check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        if fmt == "aimv2":
            _write_weights(tmp, "model", entries, {"format": _ckpt.FORMAT}, None)
            state = {"format": _ckpt.FORMAT, "version": 1, "spec": full.to_dict(), "step": 0}
            _write_json(tmp / "state.json", state)
        elif fmt == "transformers":
            _write_weights(tmp, "model", entries, meta, limit)
            _write_json(tmp / "config.json", _transformers_config(enc, first))
            _write_json(tmp / "preprocessor_config.json", _processor_config(enc))
        elif fmt == "timm":
            _write_weights(tmp, "model", entries, meta, None)
            _write_json(tmp / "config.json", _timm_config(enc))
        else:
            stem = "mlx_model" if fmt == "mlx" else "model"
            _write_weights(tmp, stem, entries, meta, limit)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _check_target(path: Path, overwrite: bool) -> None:
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"path={str(path)!r} exists and is not a folder")
    names = [p.name for p in path.iterdir()]
    if not names:
        return
    foreign = sorted(n for n in names if n not in _OWN_FILES and not _SHARD.match(n))
    if foreign:
        raise FileExistsError(
            f"path={str(path)!r} holds files a model folder does not ({foreign[:5]}); "
            f"choose a new or empty folder"
        )
    if not overwrite:
        raise FileExistsError(
            f"path={str(path)!r} holds a model; pass overwrite=True to replace it"
        )


def _swap_in(tmp: Path, path: Path) -> None:
    os.chmod(tmp, 0o755)
    if path.exists():
        old = path.parent / f".{path.name}.old{os.getpid()}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def save_pretrained(
    model: Any,
    path: PathLike,
    format: str = "aimv2",
    *,
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (built by :func:`aimv2.build` or :func:`from_pretrained`, torch or MLX)
    to ``path`` in ``format``; returns the path written.

    - ``aimv2``: a checkpoint directory (``state.json`` + ``model.safetensors``) that
      :func:`aimv2.checkpoint.load` reads; a pre-training model is saved whole.
    - ``official`` / ``mlx``: ``model.safetensors`` / ``mlx_model.safetensors`` with the
      official names (MLX: patch conv (out, kH, kW, in)); ``path`` may also be a
      ``.safetensors`` file.
    - ``transformers``: ``config.json`` + ``model.safetensors`` (sharded with
      ``max_shard_size``, e.g. ``"5GB"``) + ``preprocessor_config.json``, loadable by
      ``transformers.Aimv2VisionModel.from_pretrained``.
    - ``timm``: timm key names + a timm hub ``config.json`` (``timm.create_model(
      "local-dir:PATH", pretrained=True)``); a ``.safetensors`` path writes the state dict only.

    Of a pre-training model, the non-``aimv2`` formats take the encoder. ``dtype`` stores
    floats as ``"float32"``, ``"bfloat16"`` or ``"float16"`` (None: the model's dtype;
    ``aimv2`` defaults to float32). Writes go to a temporary file or folder renamed into
    place, one tensor at a time. An existing model folder is replaced only with
    ``overwrite=True``; a folder holding other files never is.

    Example:
        >>> import tempfile, aimv2
        >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           mlp_hidden=64)
        >>> out = save_pretrained(aimv2.build(spec), tempfile.mkdtemp() + "/m", format="mlx")
        >>> sorted(p.name for p in out.iterdir())
        ['mlx_model.safetensors']
    """
    src = _Canonical.of_model(model)
    return _write_format(
        src,
        format,
        Path(os.fspath(path)),
        _dtype_code(dtype),
        _parse_size(max_shard_size),
        overwrite,
    )


def convert(
    src: PathLike,
    dst: PathLike,
    to: str,
    *,
    preset: Any = None,
    backend: str | None = None,
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a checkpoint to format ``to``; returns the path written.

    With ``backend=None`` tensors stream from file to file through NumPy (no framework, one
    tensor in memory at a time); with ``"torch"``/``"mlx"`` the model is built first (a full
    load check). ``preset``, ``dtype``, ``max_shard_size`` and ``overwrite`` are as in
    :func:`from_pretrained` / :func:`save_pretrained`.

    Example:
        >>> import tempfile, aimv2
        >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           mlp_hidden=64)
        >>> d = tempfile.mkdtemp()
        >>> a = save_pretrained(aimv2.build(spec), d + "/a", format="official")
        >>> detect(convert(a, d + "/b", to="transformers")).format
        'transformers'
    """
    if backend is not None:
        model = from_pretrained(src, backend=backend, preset=preset)
        return save_pretrained(
            model, dst, to, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite
        )
    det = detect(src, preset=preset)
    return _write_format(
        _Canonical.of_checkpoint(det),
        to,
        Path(os.fspath(dst)),
        _dtype_code(dtype),
        _parse_size(max_shard_size),
        overwrite,
    )


# ----------------------------------------------------------------------- command line


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``aimv2 convert SRC DST --to FORMAT`` to an ``add_subparsers()`` object.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> _ = add_convert_parser(parser.add_subparsers())
        >>> parser.parse_args(["convert", "a", "b", "--to", "mlx"]).to
        'mlx'
    """
    p = subparsers.add_parser(
        "convert",
        help="convert a checkpoint between formats (official, mlx, transformers, timm, aimv2)",
        description="Convert an AIMv2 checkpoint (file or folder, format detected from its "
        "tensor names) to another format.",
    )
    p.add_argument("src", help="checkpoint file or folder")
    p.add_argument("dst", help="output folder (or .safetensors file for official/mlx/timm)")
    p.add_argument("--to", required=True, choices=FORMATS, help="output format")
    p.add_argument(
        "--backend",
        choices=["torch", "mlx"],
        help="build the model with this backend first (default: stream tensors with NumPy)",
    )
    p.add_argument("--preset", help="spec to use: preset name, spec JSON file or inline JSON")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="stored dtype")
    p.add_argument("--shard-size", help="shard transformers/official weights, e.g. 5GB")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    p.set_defaults(func=cmd_convert)
    return p


def cmd_convert(args: argparse.Namespace) -> int:
    """Run ``aimv2 convert`` from parsed arguments; prints a summary, returns the exit status.

    Example:
        >>> cmd_convert(argparse.Namespace(src="/nonexistent", dst="/tmp/x", to="mlx",
        ...             backend=None, preset=None, dtype=None, shard_size=None, overwrite=False))
        2
    """
    preset = None
    if args.preset:
        from .cli import load_spec

        preset = load_spec(args.preset)
    try:
        out = convert(
            args.src,
            args.dst,
            args.to,
            preset=preset,
            backend=args.backend,
            dtype=args.dtype,
            max_shard_size=args.shard_size,
            overwrite=args.overwrite,
        )
        det = detect(out, backend=args.backend)
    except (FormatError, FileNotFoundError, FileExistsError, ValueError, TypeError) as err:
        print(f"aimv2 convert: {err}", file=sys.stderr)
        return 2
    spec = det.spec
    size = "native" if spec.native else "x".join(map(str, spec.image_size))
    print(
        f"{args.src} -> {out} ({det.format}): width={spec.width} depth={spec.depth} "
        f"heads={spec.trunk.block.attn.heads} patch={spec.patch_size} image={size} "
        f"head={'yes' if spec.head else 'no'}"
    )
    return 0
