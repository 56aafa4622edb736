"""Export: write a model, or convert a checkpoint, to any of the formats.

Tensors come from a :class:`Canonical` source (a built model through its backend's
verbs, or a detected checkpoint read straight from its files) and are written one at a
time, split and renamed per :mod:`aimv2.formats.names`. A folder is written under a
temporary name and renamed into place (:func:`aimv2.atomic.atomic_directory`).

Example:
    >>> import tempfile, aimv2
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> out = save_pretrained(aimv2.build(spec), tempfile.mkdtemp() + "/m", format="timm")
    >>> sorted(p.name for p in out.iterdir())
    ['config.json', 'model.safetensors']
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint as _ckpt
from .. import specs as S
from ..atomic import atomic_directory, write_json
from ..backend import backend_of
from ..progress import Progress
from ..weights import check_value, parameters
from . import lit as lit_formats
from .configs import processor_config, timm_config, transformers_config
from .detect import Detected, PathLike, detect
from .load import from_pretrained
from .names import FORMATS, INDEX, SPEC_KEY, FormatError, combine, recipe, source_shapes, split
from .writer import DTYPE_CODES, Entry, dtype_code, write_entries

__all__ = ["Canonical", "save_pretrained", "convert"]

_OWN_FILES = {  # files a folder written here may hold (what overwrite=True may replace)
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "mlx_model.safetensors",
    INDEX,
    "state.json",
}
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


class Canonical:
    """Canonical tensors (torch layout) of a model or a detected checkpoint, produced lazily;
    one kept tensor lets q, k and v split from a single fetch of qkv.

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.specs.NormSpec(width=4), backend="torch")
        >>> src = Canonical.of_model(m)
        >>> src.codes, src.get("weight").shape
        ({'weight': 'F32'}, (4,))
    """

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
    def of_model(cls, model: Any) -> Canonical:
        """The tensors of a module built by any backend, fetched through its verbs."""
        be = backend_of(model)
        codes = {n: DTYPE_CODES.get(d, "F32") for n, d in be.weight_dtypes(model).items()}
        return cls(model.spec, codes, lambda n: be.get_weight(model, n))

    @classmethod
    def of_checkpoint(cls, det: Detected, allow_nonfinite: bool = False) -> Canonical:
        """The tensors of a detected checkpoint, read from its files as asked; a tensor
        holding NaN or infinity is a :class:`~aimv2.weights.WeightsError` naming it (unless
        ``allow_nonfinite``)."""
        store = det.store
        assert store is not None
        plan = det.plan()
        codes = {n: store.tensors[src[0]][1].dtype for n, (src, _) in plan.items()}

        def fetch(n: str) -> np.ndarray:
            src, op = plan[n]
            value = combine(op, [store.read(k) for k in src])
            finite = bool(np.isfinite(value.astype(np.float32, copy=False)).all())
            where = str(det.files[0] if len(det.files) == 1 else det.files[0].parent)
            check_value(", ".join(src), finite, where, allow_nonfinite)
            return value

        return cls(det.spec, codes, fetch)


def save_pretrained(
    model: Any,
    path: PathLike,
    format: str = "aimv2",
    *,
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``model`` (built by :func:`aimv2.build` or
    :func:`~aimv2.formats.from_pretrained`, torch or MLX) to ``path`` in ``format``;
    returns the path written.

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

    Of a pre-training model, the non-``aimv2`` formats take the encoder. A LiT model is
    written whole (``official``/``mlx``: ``image_encoder.*``, ``text_encoder.*``,
    projectors, ``log_logit_scale``; ``transformers``: an ``Aimv2Model`` folder); timm
    holds no LiT model. ``dtype`` stores
    floats as ``"float32"``, ``"bfloat16"`` or ``"float16"`` (None: the model's dtype;
    ``aimv2`` defaults to float32). Writes go to a temporary file or folder renamed into
    place, one tensor at a time (``progress=True`` counts them on stderr). An existing
    model folder is replaced only with ``overwrite=True``; a folder holding other files
    never is.

    Example:
        >>> import tempfile, aimv2
        >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
        ...                           mlp_hidden=64)
        >>> out = save_pretrained(aimv2.build(spec), tempfile.mkdtemp() + "/m", format="mlx")
        >>> sorted(p.name for p in out.iterdir())
        ['mlx_model.safetensors']
    """
    src = Canonical.of_model(model)
    return _write_format(
        src,
        format,
        Path(os.fspath(path)),
        dtype_code(dtype),
        _parse_size(max_shard_size),
        overwrite,
        progress,
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
    progress: bool = False,
    allow_nonfinite: bool = False,
) -> Path:
    """Convert a checkpoint to format ``to``; returns the path written.

    A tensor holding NaN or infinity stops the conversion naming it, and nothing is
    written (``allow_nonfinite=True`` converts it anyway, without a backend).

    With ``backend=None`` tensors stream from file to file through NumPy (no framework, one
    tensor in memory at a time); with ``"torch"``/``"mlx"`` the model is built first (a full
    load check). ``preset``, ``dtype``, ``max_shard_size``, ``overwrite`` and ``progress``
    are as in :func:`~aimv2.formats.from_pretrained` / :func:`save_pretrained`.

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
            model,
            dst,
            to,
            dtype=dtype,
            max_shard_size=max_shard_size,
            overwrite=overwrite,
            progress=progress,
        )
    det = detect(src, preset=preset)
    return _write_format(
        Canonical.of_checkpoint(det, allow_nonfinite),
        to,
        Path(os.fspath(dst)),
        dtype_code(dtype),
        _parse_size(max_shard_size),
        overwrite,
        progress,
    )


def _write_format(
    src: Canonical,
    fmt: str,
    path: Path,
    code: str | None,
    limit: int | None,
    overwrite: bool,
    progress: bool = False,
) -> Path:
    full = src.spec
    lit = isinstance(full, S.LiTSpec)  # the two-tower model: written whole in every format
    enc = full.encoder if isinstance(full, (S.ModelSpec, S.LiTSpec)) else full
    prefix = "encoder." if isinstance(full, S.ModelSpec) and full.decoder is not None else ""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: expected one of {FORMATS}")
    if lit:
        lit_formats.check_exportable(full, fmt)
    _check_exportable(enc, fmt)
    if limit is not None and fmt not in ("transformers", "official"):
        raise ValueError(f"max_shard_size: only 'transformers' and 'official' shard, not {fmt!r}")
    if fmt == "aimv2":
        entries = _entries(src, full, "aimv2", "", code or "F32")
    else:
        entries = _entries(src, full if lit else enc, fmt, prefix, code)
    if progress:
        entries = _counted(entries, Progress(len(entries), f"write {fmt}", unit="tensors"))
    first = entries[0].code
    meta = {"format": "mlx" if fmt == "mlx" else "pt"}
    if fmt != "aimv2":
        meta[SPEC_KEY] = (full if lit else enc).to_json(indent=None)
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
        return write_entries(path, entries, meta)
    _check_target(path, overwrite)
    with atomic_directory(path, replace=True) as tmp:
        if fmt == "aimv2":
            _write_weights(tmp, "model", entries, {"format": _ckpt.FORMAT}, None)
            state = {"format": _ckpt.FORMAT, "version": 1, "spec": full.to_dict(), "step": 0}
            write_json(tmp / "state.json", state, sort_keys=True)
        elif fmt == "transformers":
            _write_weights(tmp, "model", entries, meta, limit)
            config = (lit_formats.transformers_config if lit else transformers_config)(
                full if lit else enc, first
            )
            write_json(tmp / "config.json", config, sort_keys=True)
            write_json(tmp / "preprocessor_config.json", processor_config(enc), sort_keys=True)
        elif fmt == "timm":
            _write_weights(tmp, "model", entries, meta, None)
            write_json(tmp / "config.json", timm_config(enc), sort_keys=True)
        else:
            stem = "mlx_model" if fmt == "mlx" else "model"
            _write_weights(tmp, stem, entries, meta, limit)
    return path


def _entries(src: Canonical, spec: S.Spec, fmt: str, prefix: str, code: str | None) -> list[Entry]:
    out = []
    for name, info in parameters(spec).items():
        keys, op = recipe(fmt, name)
        for i, (key, shape) in enumerate(zip(keys, source_shapes(op, info.shape), strict=True)):
            full = prefix + name

            def produce(full: str = full, op: str = op, i: int = i) -> np.ndarray:
                return split(op, src.get(full, keep=op == "qkv"), i)

            out.append(Entry(key, shape, code or src.codes[full], produce))
    return out


def _counted(entries: list[Entry], shown: Progress) -> list[Entry]:
    """``entries`` whose producers tick ``shown`` once each (it closes after the last)."""

    def ticking(produce: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            value = produce()
            shown.update(1)
            return value

        return run

    return [dataclasses.replace(e, produce=ticking(e.produce)) for e in entries]


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
        one_eps = f"one eps for every norm ({blk.norm.eps})"
        checks.append((f"{where}.eps", norm.eps, one_eps, norm.eps == blk.norm.eps))
    checks += [
        ("trunk.block.mlp.type", blk.mlp.type, "SwiGLU only", blk.mlp.type == "swiglu"),
        ("patchifier.bias", spec.patchifier.bias, "a patch conv with bias", spec.patchifier.bias),
    ]
    if fmt == "transformers":
        checks += [
            (
                "trunk.block.attn.proj_bias",
                blk.attn.proj_bias,
                f"the out-projection bias tied to qkv_bias={blk.attn.qkv_bias}",
                blk.attn.proj_bias == blk.attn.qkv_bias,
            ),
            (
                "pos_embed.type",
                pos.type,
                "a learned table (fixed size) or 2D sin-cos (native)",
                pos.type == ("sincos" if spec.native else "learned"),
            ),
            (
                "pos_embed.temperature",
                pos.temperature,
                "sin-cos temperature 10000",
                pos.temperature == 10000.0,
            ),
            (
                "image_size",
                spec.image_size,
                "square images",
                spec.native or spec.image_size[0] == spec.image_size[1],
            ),
        ]
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
            (
                "trunk.block.mlp.bias",
                blk.mlp.bias,
                f"the MLP bias tied to attn.proj_bias={blk.attn.proj_bias}",
                blk.mlp.bias == blk.attn.proj_bias,
            ),
            (
                "pos_embed.type",
                pos.type,
                "a learned table (timm's AIMv2 has no native model)",
                pos.type == "learned",
            ),
            (
                "trunk.block.norm.eps",
                blk.norm.eps,
                "timm's AIMv2 RMSNorm eps 1e-5",
                blk.norm.eps == 1e-5,
            ),
            (
                "head",
                "AttentionPoolSpec",
                "no attention-pooling head (timm's AIMv2 has none; use 'transformers' or "
                "'official')",
                head is None,
            ),
        ]
    for name, value, holds, ok in checks:
        if not ok:
            raise FormatError(f"format={fmt!r} cannot hold spec.{name}={value!r}: it holds {holds}")


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


def _shards(entries: list[Entry], limit: int | None) -> list[list[Entry]]:
    if limit is None:
        return [entries]
    out: list[list[Entry]] = [[]]
    size = 0
    for e in sorted(entries, key=lambda e: e.name):
        if out[-1] and size + e.nbytes > limit:
            out.append([])
            size = 0
        out[-1].append(e)
        size += e.nbytes
    return out


def _write_weights(
    folder: Path, stem: str, entries: list[Entry], meta: dict[str, str], limit: int | None
) -> None:
    groups = _shards(entries, limit)
    if len(groups) == 1:
        write_entries(folder / f"{stem}.safetensors", groups[0], meta)
        return
    wmap = {}
    for k, group in enumerate(groups, 1):
        name = f"{stem}-{k:05d}-of-{len(groups):05d}.safetensors"
        write_entries(folder / name, group, meta)
        wmap.update({e.name: name for e in group})
    index = {"metadata": {"total_size": sum(e.nbytes for e in entries)}, "weight_map": wmap}
    write_json(folder / f"{stem}.safetensors.index.json", index, sort_keys=True)


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
