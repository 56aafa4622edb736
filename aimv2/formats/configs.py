"""The ``config.json`` files of ``transformers`` and ``timm``: spec fields read from them,
and the configs written beside an export.

Reading gives a flat dict of spec fields (``width``, ``depth``, ``heads``, ``hidden``,
``image``, ``qkv_bias`` …) that :mod:`aimv2.formats.infer` lays over what the tensor
shapes say; writing spells an :class:`~aimv2.specs.EncoderSpec` the way each library's
loader expects (``Aimv2VisionConfig``, ``CLIPImageProcessor``, a timm hub config).

Example:
    >>> import aimv2
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> fields = config_fields(transformers_config(spec, "F32"), "config.json")
    >>> fields["width"], fields["hidden"], fields["image"]
    (32, 64, 8)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .. import presets
from .. import specs as S
from .names import FormatError
from .store import read_json
from .writer import DTYPE_NAMES

__all__ = [
    "config_fields",
    "folder_config",
    "preprocessor_fields",
    "transformers_config",
    "processor_config",
    "timm_config",
]

_TIMM_ARGS = (  # timm model_args key -> spec field
    ("embed_dim", "width"),
    ("depth", "depth"),
    ("num_heads", "heads"),
    ("patch_size", "patch"),
    ("img_size", "image"),
    ("in_chans", "in_channels"),
    ("qkv_bias", "qkv_bias"),
    ("proj_bias", "proj_bias"),
)
_TF_FIELDS = {  # Aimv2VisionConfig field -> spec field
    "hidden_size": "width",
    "num_hidden_layers": "depth",
    "num_attention_heads": "heads",
    "intermediate_size": "hidden",
    "patch_size": "patch",
    "image_size": "image",
    "rms_norm_eps": "eps",
    "num_channels": "in_channels",
    "qkv_bias": "qkv_bias",
    "mlp_bias": "mlp_bias",
    "use_head": "use_head",
    "is_native": "native",
}


# model_type of the transformers configs this reads: the vision tower alone, or a whole
# Aimv2Model / the remote-code configs of the released folders
MODEL_TYPES = ("aimv2_vision_model", "aimv2")


def config_fields(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Spec fields named by a transformers-style or timm ``config.json`` (others: empty).

    Example:
        >>> config_fields({"architecture": "aimv2_huge_patch14_336"}, "config.json")["width"]
        1536
        >>> config_fields({"model_type": "bert"}, "config.json")
        {}
    """
    if isinstance(cfg.get("vision_config"), dict):  # a whole Aimv2Model (vision + text)
        cfg = cfg["vision_config"]
    out: dict[str, Any] = {}
    model_type = cfg.get("model_type")
    if "hidden_size" in cfg and model_type is not None and model_type not in MODEL_TYPES:
        raise FormatError(
            f"{where}: model_type={model_type!r} is not an AIMv2 config "
            f"(expected one of {', '.join(map(repr, MODEL_TYPES))})"
        )
    if "architecture" in cfg:  # timm hub config
        m = re.match(r"^aimv2_(large|huge|1b|3b)_patch(\d+)_(\d+)", str(cfg["architecture"]))
        args = dict(cfg.get("model_args") or {})
        if m:
            size = {"large": "large", "huge": "huge", "1b": "1B", "3b": "3B"}[m.group(1)]
            width, depth, heads = presets.SIZES[size]
            out.update(width=width, depth=depth, heads=heads, patch=int(m.group(2)))
            out["image"] = int(m.group(3))
        for key, dst in _TIMM_ARGS:
            if key in args:
                out[dst] = args[key]
        if "mlp_ratio" in args and "width" in out:
            out["hidden"] = int(out["width"] * float(args["mlp_ratio"]))
        if "proj_bias" in out:
            out["mlp_bias"] = out["proj_bias"]
        pre = cfg.get("pretrained_cfg") or {}
        if isinstance(pre.get("mean"), list) and isinstance(pre.get("std"), list):
            out["mean"], out["std"] = tuple(pre["mean"]), tuple(pre["std"])
        _check_values(out, {dst: f"model_args.{key}" for key, dst in _TIMM_ARGS}, where)
        return out
    if "hidden_size" not in cfg:
        return out
    if cfg.get("model_type") == "aimv2_vision_model":
        # transformers fills absent fields with Aimv2VisionConfig's defaults
        out.update(eps=1e-5, in_channels=3, qkv_bias=False, mlp_bias=False)
        out.update(use_head=True, native=False)
    for key, dst in _TF_FIELDS.items():
        if key in cfg:
            out[dst] = cfg[key]
    if "qkv_bias" in out:  # transformers ties the out-projection bias to qkv_bias
        out["proj_bias"] = out["qkv_bias"]
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise FormatError(f"{where}: hidden_act={act!r}; AIMv2's SwiGLU needs 'silu'")
    _check_values(out, {dst: key for key, dst in _TF_FIELDS.items()}, where)
    return out


def _check_values(out: dict[str, Any], names: dict[str, str], where: str) -> None:
    """The values a config states that the tensor shapes cannot confirm: positive
    integer sizes, heads that divide the width, a small positive norm eps, booleans."""

    def bad(field: str, expected: str) -> FormatError:
        return FormatError(
            f"{where}: {names.get(field, field)}={out[field]!r}: expected {expected}"
        )

    for f in ("width", "depth", "heads", "hidden", "patch", "in_channels"):
        v = out.get(f)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise bad(f, "a positive integer")
    image = out.get("image")
    if image is not None:
        sizes = image if isinstance(image, (list, tuple)) else [image]
        if len(sizes) not in (1, 2) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes
        ):
            raise bad("image", "a positive integer or a (height, width) pair")
    if out.get("heads") and out.get("width") and out["width"] % out["heads"]:
        raise bad("heads", f"a divisor of the width {out['width']}")
    eps = out.get("eps")
    if eps is not None and (
        not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 0.1
    ):
        raise bad("eps", "a small positive number (AIMv2 uses 1e-5)")
    for f in ("qkv_bias", "mlp_bias", "use_head", "native"):
        if f in out and not isinstance(out[f], bool):
            raise bad(f, "true or false")


def folder_config(folder: Path) -> tuple[dict[str, Any], str]:
    """Spec fields of ``folder/config.json`` (transformers-style or timm) and its path;
    empty when absent or of another kind.

    Example:
        >>> import tempfile
        >>> folder_config(Path(tempfile.mkdtemp()))
        ({}, '')
    """
    path = folder / "config.json"
    if not path.is_file():
        return {}, ""
    return config_fields(read_json(path), str(path)), str(path)


def preprocessor_fields(folder: Path) -> dict[str, Any]:
    """Normalization ``mean`` / ``std`` from ``folder/preprocessor_config.json`` (if any).

    Example:
        >>> import json, tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "preprocessor_config.json").write_text(
        ...     json.dumps({"image_mean": [0.5], "image_std": [0.25]}))
        >>> preprocessor_fields(d)
        {'mean': (0.5,), 'std': (0.25,)}
    """
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    cfg = read_json(path)
    out: dict[str, Any] = {}
    if isinstance(cfg.get("image_mean"), list) and isinstance(cfg.get("image_std"), list):
        out["mean"], out["std"] = tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return out


def transformers_config(spec: S.EncoderSpec, code: str) -> dict[str, Any]:
    """The ``Aimv2VisionConfig`` of ``spec`` with weights stored as ``code`` (``"BF16"`` …).

    Example:
        >>> import aimv2
        >>> cfg = transformers_config(aimv2.presets.get("aimv2-large-patch14-224").encoder,
        ...                           "BF16")
        >>> cfg["intermediate_size"], cfg["dtype"]
        (2816, 'bfloat16')
    """
    blk = spec.trunk.block
    return {
        "architectures": ["Aimv2VisionModel"],
        "model_type": "aimv2_vision_model",
        "attention_dropout": 0.0,
        "dtype": DTYPE_NAMES.get(code, "float32"),
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


def processor_config(spec: S.EncoderSpec) -> dict[str, Any]:
    """The ``CLIPImageProcessor`` config (``preprocessor_config.json``) of ``spec``.

    Example:
        >>> import aimv2
        >>> cfg = processor_config(aimv2.presets.get("aimv2-large-patch14-336").encoder)
        >>> cfg["size"], cfg["crop_size"]
        ({'shortest_edge': 336}, {'height': 336, 'width': 336})
    """
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


def timm_config(spec: S.EncoderSpec) -> dict[str, Any]:
    """The timm hub ``config.json`` of ``spec`` (architecture name, model args, pretrained cfg).

    Example:
        >>> import aimv2
        >>> timm_config(aimv2.presets.get("aimv2-huge-patch14-448").encoder)["architecture"]
        'aimv2_huge_patch14_448'
    """
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
