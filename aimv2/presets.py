"""Named model specs: every released AIMv2 size, plus small ones for tests and examples.

``get(name)`` returns the whole pre-training :class:`~aimv2.specs.ModelSpec` (encoder,
the paper's decoder and objectives); ``.encoder`` is what a released checkpoint holds.
The ``-lit`` names are :class:`~aimv2.specs.LiTSpec` two-tower models (their ``.encoder``
is the image tower).

Example:
    >>> from aimv2 import presets
    >>> spec = presets.get("aimv2-huge-patch14-336")
    >>> spec.encoder.width, spec.encoder.num_patches, spec.decoder.width
    (1536, 576, 1024)
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from . import specs as S
from .specs import encoder_spec

__all__ = ["get", "names", "register", "load_spec", "SIZES"]

# width, depth, heads (head dim 128 for the released sizes)
SIZES: dict[str, tuple[int, int, int]] = {
    "base": (768, 12, 6),
    "large": (1024, 24, 8),
    "huge": (1536, 24, 12),
    "1B": (2048, 24, 16),
    "3B": (3072, 24, 24),
}

_REGISTRY: dict[str, S.ModelSpec] = {}


def register(name: str, spec: S.ModelSpec | S.LiTSpec) -> None:
    """Add a named spec (a user's own variant, say) to :func:`get` and :func:`names`.

    Example:
        >>> register("my-variant", get("aimv2-test-tiny"))
        >>> "my-variant" in names()
        True
    """
    if not isinstance(spec, (S.ModelSpec, S.LiTSpec)):
        raise TypeError(f"spec: expected a ModelSpec or a LiTSpec, got {type(spec).__name__}")
    if spec.name != name:
        spec = spec.replace(name=name)
    _REGISTRY[name] = spec


def names() -> list[str]:
    """Every registered preset name.

    Example:
        >>> "aimv2-large-patch14-native" in names()
        True
    """
    return sorted(_REGISTRY)


def get(name: str) -> S.ModelSpec | S.LiTSpec:
    """The whole-model spec named ``name``; unknown names get close matches suggested.

    Example:
        >>> get("aimv2-1B-patch14-448").encoder.trunk.block.mlp.hidden
        5632
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {close}?" if close else "; see aimv2.presets.names()"
        raise KeyError(f"preset name={name!r} is unknown{hint}")
    return _REGISTRY[name]


def load_spec(text: str) -> S.Spec:
    """A spec from a preset name, a JSON file (a spec, or a run's ``config.json`` /
    checkpoint ``state.json`` holding one under ``"spec"``), or inline JSON text.

    Raises :class:`~aimv2.specs.SpecError` for an unknown preset name (with close
    matches) and for JSON that is not a spec, :class:`FileNotFoundError` for a missing
    file.

    Example:
        >>> load_spec("aimv2-test-tiny").encoder.width
        32
        >>> load_spec('{"kind": "norm", "width": 4}').width
        4
    """
    if text in _REGISTRY:
        return _REGISTRY[text]
    if text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise S.SpecError(f"spec JSON: {err}") from None
        return S.from_dict(data)
    path = Path(text)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"spec file {text!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise S.SpecError(f"spec file {text!r}: not JSON ({err})") from None
        if isinstance(data, dict) and isinstance(data.get("spec"), dict):
            data = data["spec"]
        return S.from_dict(data)
    try:
        return get(text)
    except KeyError as err:
        raise S.SpecError(err.args[0]) from None


def _paper_model(encoder: S.EncoderSpec, name: str) -> S.ModelSpec:
    return S.ModelSpec(
        encoder=encoder,
        decoder=S.DecoderSpec.paper(in_width=encoder.width),
        name=name,
    )


def _register_released() -> None:
    for size, (width, depth, heads) in SIZES.items():
        resolutions = (224,) if size == "base" else (224, 336, 448)
        for res in resolutions:
            name = f"aimv2-{size}-patch14-{res}"
            register(name, _paper_model(encoder_spec(width, depth, heads, 14, res), name))
    for res in (224, 336):
        base = _REGISTRY[f"aimv2-large-patch14-{res}"]
        register(f"aimv2-large-patch14-{res}-distilled", base)
    native = encoder_spec(1024, 24, 8, 14, None, preprocess=S.PreprocessSpec(resize=0, crop=False))
    register("aimv2-large-patch14-native", _paper_model(native, "aimv2-large-patch14-native"))


def _small(
    name: str,
    *,
    width: int,
    depth: int,
    heads: int,
    patch: int,
    image: int | None,
    mlp: int,
    dec_width: int,
    dec_depth: int,
    dec_heads: int,
    vocab: int,
    context: int,
    in_channels: int = 3,
    preprocess: S.PreprocessSpec | None = None,
) -> None:
    enc = encoder_spec(
        width, depth, heads, patch, image, mlp, in_channels=in_channels, preprocess=preprocess
    )
    dec_norm = S.NormSpec(dec_width)
    dec = S.DecoderSpec(
        in_width=width,
        block=S.BlockSpec(
            norm=dec_norm,
            attn=S.AttentionSpec(dec_width, dec_heads),
            mlp=S.FeedForwardSpec(dec_width, 2 * dec_width),
        ),
        depth=dec_depth,
        vocab_size=vocab,
        context_length=context,
    )
    register(name, S.ModelSpec(encoder=enc, decoder=dec, name=name))


def _register_small() -> None:
    # A table: encoder sizes on the first line of each call, decoder sizes on the second.
    # fmt: off
    # For unit tests: everything tiny, runs in milliseconds on a CPU.
    _small(
        "aimv2-test-tiny",
        width=32, depth=2, heads=2, patch=4, image=16, mlp=64,
        dec_width=32, dec_depth=2, dec_heads=2, vocab=64, context=16,
    )
    # For examples and the built-in pre-training job (16 px images, 16 patches).
    _small(
        "aimv2-small-patch4-16",
        width=128, depth=4, heads=4, patch=4, image=16, mlp=256,
        dec_width=128, dec_depth=2, dec_heads=4, vocab=512, context=24,
    )
    # fmt: on


def _register_lit() -> None:
    # The released LiT model (AIMV2.md §5b): AIMv2-L with its 8-head pooling head, a
    # 768-wide 12-block causal text tower (CLIP BPE: vocab 49,408, eos = pad = 49,407).
    large = encoder_spec(1024, 24, 8, 14, 224, head=True)
    text = S.text_encoder_spec(768, 12, 6, vocab_size=49408, context_length=77)
    name = "aimv2-large-patch14-224-lit"
    register(name, S.lit_spec(large, text, 768, name=name))
    # Small ones use this library's SentencePiece tokenizers (pad 0, unk 1, eos 2).
    # fmt: off
    tiny = S.text_encoder_spec(32, 2, 2, vocab_size=64, eos_id=2, context_length=16,
                               mlp_hidden=64)
    register("aimv2-lit-test-tiny",
             S.lit_spec(get("aimv2-test-tiny").encoder, tiny, 24, name="aimv2-lit-test-tiny"))
    # The main job's: the digits encoder, a 2-block 64-wide text tower.
    small = S.text_encoder_spec(64, 2, 2, vocab_size=512, eos_id=2, context_length=24,
                                mlp_hidden=128)
    register("aimv2-lit-small-patch4-16",
             S.lit_spec(get("aimv2-small-patch4-16").encoder, small, 64,
                        name="aimv2-lit-small-patch4-16"))
    # fmt: on


_register_released()
_register_small()
_register_lit()
