"""LiT checkpoints (``aimv2-large-patch14-224-lit``): which layout a file holds, the spec
of one without a spec, and the ``config.json`` of a transformers ``Aimv2Model`` export.

Layouts (tensor names in :mod:`aimv2.formats.names`): the official files
(``image_encoder.*``, ``text_encoder.*``, ``image_projector.weight``,
``text_projector.weight``, ``log_logit_scale``), the official MLX file (the same names,
the patch conv (out, kH, kW, in)) and transformers' ``Aimv2Model`` folders
(``vision_model.*``, ``text_model.*``, ``visual_projection``, ``text_projection``,
``logit_scale``). Official files carry no config: the towers come from the tensor shapes
and AIMv2's conventions — head dim 128, eos = pad = vocab − 1 (the CLIP tokenizer's
``<|endoftext|>``), context = the position table's length, RMSNorm eps 1e-5, a clamp of
the logit scale at 100.

Example:
    >>> import aimv2
    >>> cfg = transformers_config(aimv2.presets.get("aimv2-large-patch14-224-lit"), "F32")
    >>> cfg["projection_dim"], cfg["text_config"]["eos_token_id"], cfg["vision_config"]["use_head"]
    (768, 49407, True)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import specs as S
from .configs import config_fields
from .configs import transformers_config as vision_config
from .infer import HEAD_DIM, canonical_shape, infer_spec
from .names import LIT_ANCHORS, FormatError
from .store import Store
from .writer import DTYPE_NAMES

__all__ = [
    "lit_layout",
    "infer_lit_spec",
    "transformers_config",
    "check_exportable",
    "describe",
    "IMAGE_PREFIX",
]

IMAGE_PREFIX = {"transformers": "vision_model."}  # else "image_encoder."
_TEXT = "text_encoder."


def lit_layout(store: Store) -> str | None:
    """``"official"`` (or MLX: the caller tells them apart by the patch conv) or
    ``"transformers"`` when the files hold a LiT model, else None.

    Example:
        >>> lit_layout(Store({}, {}, [])) is None
        True
    """
    for fmt, (image, text) in LIT_ANCHORS.items():
        if image in store.tensors and text in store.tensors:
            return fmt
    return None


def _text_config(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = raw.get("text_config")
    return cfg if isinstance(cfg, dict) else {}


def infer_lit_spec(
    store: Store, fmt: str, folder: Path, where: str, raw: dict[str, Any], cfg_path: str
) -> tuple[S.LiTSpec, str]:
    """The LiT spec of ``store`` (format ``fmt``) from its shapes, overridden by the
    whole-model ``config.json`` ``raw`` (read from ``cfg_path``; ``{}`` when absent).

    Example:
        >>> import tempfile, aimv2
        >>> from aimv2.tensorfiles import save_file
        >>> enc = aimv2.encoder_spec(128, 1, 1, 4, 8, 256)
        >>> txt = S.text_encoder_spec(128, 1, 1, vocab_size=20, context_length=6, mlp_hidden=256)
        >>> spec = S.lit_spec(enc, txt, 64)
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = save_file(aimv2.init_weights(spec), d / "model.safetensors")
        >>> store = Store.open([d / "model.safetensors"])
        >>> infer_lit_spec(store, "official", d, "m", {}, "") == (spec, "tensor shapes")
        True
    """
    image_prefix = IMAGE_PREFIX.get(fmt, "image_encoder.")
    vision_fields = config_fields(raw, cfg_path) if raw else {}
    image, origin = infer_spec(store, fmt, image_prefix, folder, where, vision_fields, cfg_path)
    if image.head is None:
        raise FormatError(
            f"{where}: a LiT image tower needs its pooling head ({image_prefix}head.*)"
        )

    def shape(name: str) -> tuple[int, ...] | None:
        return canonical_shape(store, fmt, "", name)

    emb = shape(_TEXT + "preprocessor.text_embedding.weight")
    pos = shape(_TEXT + "preprocessor.positional_embedding")
    if emb is None or len(emb) != 2 or pos is None or len(pos) != 2:
        raise FormatError(
            f"{where}: text tower embedding {emb} / positions {pos}: expected (vocab, width) "
            f"and (context, width)"
        )
    vocab, width = emb
    depth = 0
    while shape(f"{_TEXT}trunk.blocks.{depth}.norm_1.weight") is not None:
        depth += 1
    fc1 = shape(_TEXT + "trunk.blocks.0.mlp.fc1.weight")
    if depth == 0 or fc1 is None:
        raise FormatError(f"{where}: no text tower blocks found (expected {_TEXT}trunk.blocks.0.*)")
    tcfg = _text_config(raw)

    def has(name: str) -> bool:
        return shape(_TEXT + name) is not None

    heads = tcfg.get("num_attention_heads")
    if heads is None:
        if width % HEAD_DIM:
            raise FormatError(
                f"{where}: cannot infer the text tower's attention heads: no config.json and "
                f"width {width} is not a multiple of AIMv2's head dim {HEAD_DIM}; pass preset="
            )
        heads = width // HEAD_DIM
    eos = tcfg.get("eos_token_id", vocab - 1)
    if isinstance(eos, list):  # transformers allows several; the tower pools the first listed
        eos = eos[0]
    proj_bias = bool(tcfg.get("qkv_bias", has("trunk.blocks.0.attn.proj.bias")))
    eps = float(tcfg.get("rms_norm_eps", 1e-5))
    norm = S.NormSpec(width, "layer" if has("trunk.blocks.0.norm_1.bias") else "rms", eps)
    block = S.BlockSpec(
        norm=norm,
        attn=S.AttentionSpec(
            width,
            int(heads),
            bool(tcfg.get("qkv_bias", has("trunk.blocks.0.attn.qkv.bias"))),
            proj_bias,
        ),
        mlp=S.FeedForwardSpec(
            width,
            int(fc1[0]),
            "swiglu" if has("trunk.blocks.0.mlp.fc3.weight") else "gelu",
            bool(tcfg.get("mlp_bias", has("trunk.blocks.0.mlp.fc1.bias"))),
        ),
    )
    proj = shape("image_projector.weight")
    if proj is None or len(proj) != 2:
        raise FormatError(f"{where}: no image projector (image_projector.weight) found")
    init = raw.get("logit_scale_init_value")
    try:
        text = S.TextEncoderSpec(
            trunk=S.TrunkSpec(block=block, depth=depth),
            vocab_size=int(vocab),
            eos_id=int(eos),
            context_length=int(tcfg.get("max_position_embeddings", pos[0])),
            causal=True,
        )
        spec = S.LiTSpec(
            image_encoder=image,
            text_encoder=text,
            embed_dim=int(proj[0]),
            init_temperature=0.07 if init is None else math.exp(-float(init)),
            max_logit_scale=float(raw.get("max_logit_scale", 100.0)),
        )
    except (ValueError, TypeError) as err:
        raise FormatError(f"{where}: the LiT spec from {origin} is invalid: {err}") from err
    return spec, origin


def transformers_config(spec: S.LiTSpec, code: str) -> dict[str, Any]:
    """The ``Aimv2Config`` of a LiT ``spec`` with weights stored as ``code`` (``"F32"`` …).

    Example:
        >>> import aimv2
        >>> cfg = transformers_config(aimv2.presets.get("aimv2-large-patch14-224-lit"), "BF16")
        >>> cfg["text_config"]["max_position_embeddings"], cfg["dtype"]
        (77, 'bfloat16')
    """
    txt = spec.text_encoder
    blk = txt.trunk.block
    return {
        "architectures": ["Aimv2Model"],
        "model_type": "aimv2",
        "dtype": DTYPE_NAMES.get(code, "float32"),
        "projection_dim": spec.embed_dim,
        "logit_scale_init_value": math.log(1.0 / spec.init_temperature),
        "max_logit_scale": spec.max_logit_scale,
        "initializer_factor": 1.0,
        "vision_config": vision_config(spec.image_encoder, code),
        "text_config": {
            "model_type": "aimv2_text_model",
            "vocab_size": txt.vocab_size,
            "hidden_size": txt.width,
            "intermediate_size": blk.mlp.hidden,
            "num_hidden_layers": txt.depth,
            "num_attention_heads": blk.attn.heads,
            "max_position_embeddings": txt.context_length,
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "eos_token_id": txt.eos_id,
            "rms_norm_eps": blk.norm.eps,
            "qkv_bias": blk.attn.qkv_bias,
            "mlp_bias": blk.mlp.bias,
            "initializer_range": 0.02,
        },
    }


def check_exportable(spec: S.LiTSpec, fmt: str) -> None:
    """Raise :class:`FormatError` naming the first field of ``spec`` that ``fmt`` cannot
    hold (the image tower is checked by the encoder rules as well).

    Example:
        >>> import aimv2
        >>> check_exportable(aimv2.presets.get("aimv2-lit-test-tiny"), "timm")
        Traceback (most recent call last):
        ...
        aimv2.tensorfiles.FormatError: format='timm' cannot hold a LiT model (timm has AIMv2 image encoders only); use 'official', 'mlx', 'transformers' or 'aimv2'
    """
    if fmt == "timm":
        raise FormatError(
            "format='timm' cannot hold a LiT model (timm has AIMv2 image encoders only); use "
            "'official', 'mlx', 'transformers' or 'aimv2'"
        )
    if fmt == "aimv2":
        return
    txt = spec.text_encoder
    blk = txt.trunk.block
    checks: list[tuple[str, Any, str, bool]] = [
        ("text_encoder.causal", txt.causal, "a causal text tower", txt.causal),
    ]
    if fmt == "transformers":
        eps = blk.norm.eps
        checks += [
            (
                "text_encoder.trunk.block.norm.type",
                blk.norm.type,
                "RMSNorm only",
                blk.norm.type == "rms",
            ),
            (
                "text_encoder.trunk.final_norm.eps",
                txt.trunk.final_norm_spec.eps,
                f"one eps for every norm ({eps})",
                txt.trunk.final_norm_spec.eps == eps and txt.trunk.final_norm_spec.type == "rms",
            ),
            (
                "text_encoder.trunk.block.mlp.type",
                blk.mlp.type,
                "SwiGLU only",
                blk.mlp.type == "swiglu",
            ),
            (
                "text_encoder.trunk.block.attn.proj_bias",
                blk.attn.proj_bias,
                f"the out-projection bias tied to qkv_bias={blk.attn.qkv_bias}",
                blk.attn.proj_bias == blk.attn.qkv_bias,
            ),
        ]
    for name, value, holds, ok in checks:
        if not ok:
            raise FormatError(f"format={fmt!r} cannot hold spec.{name}={value!r}: it holds {holds}")


def describe(spec: S.LiTSpec) -> str:
    """One line about a LiT spec (``aimv2 convert`` prints it).

    Example:
        >>> import aimv2
        >>> describe(aimv2.presets.get("aimv2-large-patch14-224-lit"))
        'LiT: image width=1024 depth=24 image=224x224, text width=768 depth=12 vocab=49408 context=77 eos=49407, embed=768'
    """
    img, txt = spec.image_encoder, spec.text_encoder
    size = "native" if img.native else "x".join(map(str, img.image_size))
    return (
        f"LiT: image width={img.width} depth={img.depth} image={size}, text width={txt.width} "
        f"depth={txt.depth} vocab={txt.vocab_size} context={txt.context_length} "
        f"eos={txt.eos_id}, embed={spec.embed_dim}"
    )
