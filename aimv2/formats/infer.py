"""The encoder spec of a checkpoint without one: from its tensor shapes and AIMv2's
conventions, overridden field by field by a ``config.json``.

The shapes give width, channels, patch size, depth, feed-forward size, biases, the
position table and the pooling head; what they cannot give comes from the config or from
AIMv2's conventions (head dim 128, RMSNorm eps 1e-5, a square position grid).

Example:
    >>> HEAD_DIM  # heads = width // HEAD_DIM when no config names them
    128
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import specs as S
from .configs import preprocessor_fields
from .names import CONV, POS, FormatError, recipe
from .store import Store

__all__ = ["HEAD_DIM", "canonical_shape", "infer_spec"]

HEAD_DIM = 128  # every released AIMv2 size


def canonical_shape(store: Store, fmt: str, prefix: str, name: str) -> tuple[int, ...] | None:
    """Shape of canonical ``name`` as the file stores it (None when absent).

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from aimv2.tensorfiles import save_file
        >>> p = Path(tempfile.mkdtemp()) / "a.safetensors"
        >>> _ = save_file({"embeddings.position_embedding.weight": np.zeros((4, 8), "f4")}, p)
        >>> canonical_shape(Store.open([p]), "transformers", "", POS)
        (1, 4, 8)
    """
    try:
        src, op = recipe(fmt, name)
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


def infer_spec(
    store: Store,
    fmt: str,
    prefix: str,
    folder: Path,
    where: str,
    cfg: dict[str, Any],
    cfg_path: str,
) -> tuple[S.EncoderSpec, str]:
    """Fields from the tensor shapes, overridden by the config fields ``cfg`` (read from
    ``cfg_path``) and ``folder``'s ``preprocessor_config.json``; then the spec and where
    it came from.

    Example:
        >>> import tempfile, aimv2
        >>> from aimv2.tensorfiles import save_file
        >>> spec = aimv2.encoder_spec(width=128, depth=2, heads=1, patch_size=4, image_size=8,
        ...                           mlp_hidden=256)
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = save_file(aimv2.init_weights(spec), d / "model.safetensors")
        >>> store = Store.open([d / "model.safetensors"])
        >>> infer_spec(store, "official", "", d, "m", {}, "") == (spec, "tensor shapes")
        True
    """

    def shape(name: str) -> tuple[int, ...] | None:
        return canonical_shape(store, fmt, prefix, name)

    def has(name: str) -> bool:
        return shape(name) is not None

    conv = shape(CONV)
    if conv is None or len(conv) != 4 or conv[2] != conv[3]:
        raise FormatError(
            f"{where}: patch conv {prefix + CONV!r} has shape {conv}, "
            f"expected (width, channels, patch, patch)"
        )
    width, in_ch, patch = conv[0], conv[1], conv[2]
    f: dict[str, Any] = {"width": width, "in_channels": in_ch, "patch": patch, "eps": 1e-5}
    f["conv_bias"] = has("preprocessor.patchifier.proj.bias")
    f["norm"] = "layer" if has("preprocessor.patchifier.norm.bias") else "rms"
    pos = shape(POS)
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
    f.update(preprocessor_fields(folder))
    if not f.get("native") and "image" not in f and "positions" not in f:
        raise FormatError(f"{where}: fixed-size per {origin} but no {POS!r} and no image_size")
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
        if width % HEAD_DIM:
            raise FormatError(
                f"{where}: cannot infer the number of attention heads: no config.json and "
                f"width {width} is not a multiple of AIMv2's head dim {HEAD_DIM}; pass preset="
            )
        heads = width // HEAD_DIM
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
                    f"{where}: {POS} holds {f['positions']} positions, not a square grid; "
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
