"""Tensor names: what each released format calls every canonical tensor, and in what layout.

The canonical names are the official ``ml-aim`` names, in torch layouts
(:mod:`aimv2.weights`). Each format holds a canonical tensor under one or more names of its
own (``docs/AIMV2.md`` §2); a *recipe* says which names and how they combine:

- ``copy``: the same array;
- ``conv_mlx``: the MLX file's patch conv (out, kH, kW, in) is torch's (out, in, kH, kW);
- ``qkv``: ``transformers`` splits the fused q/k/v projection into thirds;
- ``pos``: ``transformers`` stores the position table as (N, D), not (1, N, D).

Example:
    >>> names, op = recipe("transformers", "trunk.blocks.3.attn.qkv.weight")
    >>> op, names[1]
    ('qkv', 'encoder.layers.3.attention.k_proj.weight')
"""

from __future__ import annotations

import re

import numpy as np

from ..tensorfiles import FormatError

__all__ = [
    "FORMATS",
    "FormatError",
    "SPEC_KEY",
    "CONV",
    "POS",
    "ANCHORS",
    "LIT_ANCHORS",
    "LIT_TOP",
    "INDEX",
    "WEIGHT_FILES",
    "recipe",
    "is_lit_name",
    "source_shapes",
    "combine",
    "split",
]

#: Formats :func:`~aimv2.formats.save_pretrained` writes and
#: :func:`~aimv2.formats.from_pretrained` reads.
FORMATS: tuple[str, ...] = ("aimv2", "official", "mlx", "transformers", "timm")

SPEC_KEY = "aimv2.spec"  # safetensors metadata entry holding the spec JSON (files we write)
CONV = "preprocessor.patchifier.proj.weight"
POS = "preprocessor.pos_embed"
ANCHORS = {  # the patch conv weight in each naming; finds the format and any name prefix
    "official": CONV,
    "transformers": "embeddings.patch_embed.weight",
    "timm": "patch_embed.proj.weight",
}
INDEX = "model.safetensors.index.json"
WEIGHT_FILES = {  # the unsharded weight file of each released layout, by format
    "official": "model.safetensors",
    "mlx": "mlx_model.safetensors",
}


# FormatError: a checkpoint cannot be read or written in the asked format; the message
# names the file, the tensor key and both shapes where they disagree (defined beside the
# safetensors I/O, which raises it for malformed files).


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
    CONV: "embeddings.patch_embed.weight",
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
    CONV: "patch_embed.proj.weight",
    "preprocessor.patchifier.proj.bias": "patch_embed.proj.bias",
    "preprocessor.patchifier.norm.weight": "patch_embed.norm.weight",
    POS: "pos_embed",
    "trunk.post_trunk_norm.weight": "norm.weight",
}
_BLOCK = re.compile(r"^trunk\.blocks\.(\d+)\.(.+)$")

# The LiT two-tower model (AIMV2.md §5b): the official names are canonical; transformers'
# Aimv2Model holds the towers under vision_model. / text_model. and renames the heads.
LIT_TOWERS = ("image_encoder.", "text_encoder.")
LIT_TOP = {  # canonical -> transformers
    "image_projector.weight": "visual_projection.weight",
    "text_projector.weight": "text_projection.weight",
    "log_logit_scale": "logit_scale",
}
LIT_ANCHORS = {  # (image, text) tensors that mark a LiT model in each naming
    "official": ("image_encoder." + CONV, "text_encoder.preprocessor.text_embedding.weight"),
    "transformers": (
        "vision_model.embeddings.patch_embed.weight",
        "text_model.embeddings.token_embedding.weight",
    ),
}
_TF_TEXT_TOP = {
    "preprocessor.text_embedding.weight": "embeddings.token_embedding.weight",
    "preprocessor.positional_embedding": "embeddings.position_embedding.weight",
    "trunk.post_trunk_norm.weight": "rms_norm.weight",
}


def is_lit_name(name: str) -> bool:
    """Whether canonical ``name`` is a parameter of a LiT model (not of a bare encoder).

    Example:
        >>> is_lit_name("text_encoder.trunk.post_trunk_norm.weight"), is_lit_name(CONV)
        (True, False)
    """
    return name.startswith(LIT_TOWERS) or name in LIT_TOP


def _lit_recipe(fmt: str, name: str) -> tuple[tuple[str, ...], str]:
    if fmt in ("official", "aimv2"):
        return (name,), "copy"
    if fmt == "mlx":
        return (name,), "conv_mlx" if name == "image_encoder." + CONV else "copy"
    if fmt != "transformers":
        raise FormatError(
            f"format {fmt!r} holds no LiT model (timm has AIMv2 image encoders only); use "
            f"'official', 'mlx', 'transformers' or 'aimv2'"
        )
    if name in LIT_TOP:
        return (LIT_TOP[name],), "copy"
    if name.startswith("image_encoder."):
        src, op = recipe("transformers", name[len("image_encoder.") :])
        return tuple("vision_model." + s for s in src), op
    rest = name[len("text_encoder.") :]
    m = _BLOCK.match(rest)
    if m:
        i, part = m.groups()
        base = f"text_model.encoder.layers.{i}."
        if part in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = part.rsplit(".", 1)[1]
            return tuple(f"{base}attention.{p}_proj.{kind}" for p in "qkv"), "qkv"
        if part in _TF_BLOCK:
            return (base + _TF_BLOCK[part],), "copy"
    elif rest in _TF_TEXT_TOP:
        return ("text_model." + _TF_TEXT_TOP[rest],), "copy"
    raise FormatError(f"format 'transformers' has no tensor for the parameter {name!r}")


def recipe(fmt: str, name: str) -> tuple[tuple[str, ...], str]:
    """The format's tensor names holding canonical ``name`` and how they combine into it:
    ``copy``, ``conv_mlx`` ((out,kH,kW,in) -> (out,in,kH,kW)), ``qkv`` (concatenate q, k, v
    rows) or ``pos`` ((N, D) -> (1, N, D)). The parameters of a LiT model (``image_encoder.*``,
    ``text_encoder.*``, the projectors, ``log_logit_scale``) are mapped too.

    Example:
        >>> recipe("timm", "trunk.blocks.0.mlp.fc3.weight")
        (('blocks.0.mlp.fc1_x.weight',), 'copy')
        >>> recipe("mlx", CONV)
        (('preprocessor.patchifier.proj.weight',), 'conv_mlx')
        >>> recipe("transformers", "text_encoder.trunk.blocks.2.mlp.fc1.weight")
        (('text_model.encoder.layers.2.ffn.gate_proj.weight',), 'copy')
        >>> recipe("transformers", "image_encoder." + POS)
        (('vision_model.embeddings.position_embedding.weight',), 'pos')
    """
    if is_lit_name(name):
        return _lit_recipe(fmt, name)
    if fmt in ("official", "aimv2"):
        return (name,), "copy"
    if fmt == "mlx":
        return (name,), "conv_mlx" if name == CONV else "copy"
    m = _BLOCK.match(name)
    if fmt == "transformers":
        if name == POS:
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


def source_shapes(op: str, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The shapes of the stored tensors that ``op`` combines into a canonical ``shape``.

    Example:
        >>> source_shapes("qkv", (96, 32))
        [(32, 32), (32, 32), (32, 32)]
        >>> source_shapes("conv_mlx", (32, 3, 4, 4))
        [(32, 4, 4, 3)]
    """
    if op == "conv_mlx":
        o, i, kh, kw = shape
        return [(o, kh, kw, i)]
    if op == "qkv":
        return [(shape[0] // 3, *shape[1:])] * 3
    if op == "pos":
        return [tuple(shape[1:])]
    return [tuple(shape)]


def combine(op: str, parts: list[np.ndarray]) -> np.ndarray:
    """The canonical tensor (torch layout) that the stored ``parts`` make under ``op``.

    Example:
        >>> combine("pos", [np.zeros((16, 8))]).shape
        (1, 16, 8)
        >>> combine("qkv", [np.full((2, 4), k) for k in range(3)])[:, 0].tolist()
        [0, 0, 1, 1, 2, 2]
    """
    if op == "conv_mlx":
        return np.ascontiguousarray(parts[0].transpose(0, 3, 1, 2))
    if op == "qkv":
        return np.concatenate(parts, axis=0)
    if op == "pos":
        return parts[0][None]
    return parts[0]


def split(op: str, canonical: np.ndarray, index: int) -> np.ndarray:
    """Stored tensor ``index`` of those that ``op`` combines into ``canonical``: the
    inverse of :func:`combine`.

    Example:
        >>> qkv = np.arange(6).reshape(6, 1)
        >>> split("qkv", qkv, 2).ravel().tolist()
        [4, 5]
        >>> split("conv_mlx", np.zeros((8, 3, 4, 4)), 0).shape
        (8, 4, 4, 3)
    """
    if op == "conv_mlx":
        return canonical.transpose(0, 2, 3, 1)
    if op == "qkv":
        n = canonical.shape[0] // 3
        return canonical[index * n : (index + 1) * n]
    if op == "pos":
        return canonical[0]
    return canonical
