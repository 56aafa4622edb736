"""Hypothesis strategies for small specs of every built-in kind, and
:func:`property_test`, which turns a strategy for *your* spec into a parity test.

Needs ``hypothesis`` (the ``dev`` extra).

Example:
    >>> from hypothesis import find
    >>> find(attention_specs(), lambda spec: spec.heads == 2).heads
    2
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from .. import specs as S
from .compare import assert_backends_agree

__all__ = [
    "norm_specs",
    "attention_specs",
    "ffn_specs",
    "block_specs",
    "encoder_specs",
    "model_specs",
    "layer_specs",
    "text_encoder_specs",
    "lit_specs",
    "property_test",
]


def _width_heads(draw, widths=(8, 16, 24, 32, 48, 64)) -> tuple[int, int]:
    width = draw(st.sampled_from(widths))
    heads = draw(st.sampled_from([h for h in (1, 2, 4) if width % h == 0]))
    return width, heads


def norm_specs(width: int | None = None) -> Any:
    """Strategy: RMS or Layer norm specs with a drawn eps.

    Example:
        >>> from hypothesis import find
        >>> find(norm_specs(8), bool).width
        8
    """
    return st.builds(
        S.NormSpec,
        width=st.just(width) if width else st.sampled_from([4, 8, 16, 32]),
        type=st.sampled_from(["rms", "layer"]),
        eps=st.sampled_from([1e-5, 1e-6, 1e-3]),
    )


def attention_specs() -> Any:
    """Strategy: attention specs (with and without biases).

    Example:
        >>> from hypothesis import find
        >>> find(attention_specs(), bool).kind
        'attention'
    """

    @st.composite
    def draw_it(draw):
        width, heads = _width_heads(draw)
        return S.AttentionSpec(
            width=width, heads=heads, qkv_bias=draw(st.booleans()), proj_bias=draw(st.booleans())
        )

    return draw_it()


def ffn_specs(width: int | None = None) -> Any:
    """Strategy: SwiGLU or GELU feed-forward specs.

    Example:
        >>> from hypothesis import find
        >>> find(ffn_specs(16), bool).width
        16
    """
    return st.builds(
        S.FeedForwardSpec,
        width=st.just(width) if width else st.sampled_from([8, 16, 32]),
        hidden=st.sampled_from([8, 24, 64]),
        type=st.sampled_from(["swiglu", "gelu"]),
        bias=st.booleans(),
    )


def block_specs(width: int | None = None, heads: int | None = None) -> Any:
    """Strategy: pre-norm block specs.

    Example:
        >>> from hypothesis import find
        >>> find(block_specs(), bool).kind
        'block'
    """

    @st.composite
    def draw_it(draw):
        w, h = (width, heads) if width else _width_heads(draw)
        return S.BlockSpec(
            norm=draw(norm_specs(w)),
            attn=S.AttentionSpec(w, h, qkv_bias=draw(st.booleans())),
            mlp=draw(ffn_specs(w)),
        )

    return draw_it()


def encoder_specs(native: bool | None = None, max_depth: int = 3) -> Any:
    """Strategy: small encoders over widths, heads, depths, patch and image sizes (non-square
    and native included), both norms, both FFNs, every position embedding, optional head.

    Example:
        >>> from hypothesis import find
        >>> find(encoder_specs(), bool).kind
        'encoder'
    """

    @st.composite
    def draw_it(draw):
        width, heads = _width_heads(draw, (8, 16, 32, 48))
        p = draw(st.integers(1, 4))
        is_native = draw(st.booleans()) if native is None else native
        if is_native:
            image_size = None
            pos = draw(st.sampled_from(["sincos", "none"]))
        else:
            rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 4))
            if rows * cols < 2:
                cols = 2
            image_size = (rows * p, cols * p)
            pos = draw(st.sampled_from(["learned", "sincos", "none"]))
        return S.encoder_spec(
            width=width,
            depth=draw(st.integers(1, max_depth)),
            heads=heads,
            patch_size=p,
            image_size=image_size,
            mlp_hidden=draw(st.sampled_from([16, 40, 64])),
            pos_embed=pos,
            norm=draw(st.sampled_from(["rms", "layer"])),
            ffn=draw(st.sampled_from(["swiglu", "gelu"])),
            in_channels=draw(st.sampled_from([1, 3])),
            head=draw(st.booleans()),
        )

    return draw_it()


def model_specs() -> Any:
    """Strategy: small pre-training models — both objectives, pixel-only, caption-only
    (prefix or bidirectional), other decoder widths/depths, LayerNorm/GELU blocks.

    Example:
        >>> from hypothesis import find
        >>> find(model_specs(), bool).kind
        'model'
    """

    @st.composite
    def draw_it(draw):
        enc = draw(encoder_specs(native=False, max_depth=2))
        dw, dh = _width_heads(draw, (8, 16, 32))
        dec = S.DecoderSpec(
            in_width=enc.width,
            block=draw(block_specs(dw, dh)),
            depth=draw(st.integers(1, 2)),
            vocab_size=draw(st.sampled_from([5, 17, 50])),
            context_length=draw(st.sampled_from([1, 3, 8])),
        )
        variant = draw(st.sampled_from(["both", "pixel", "caption", "caption_bidir"]))
        pixel_w = 0.0 if variant.startswith("caption") else draw(st.sampled_from([0.4, 1.0]))
        text_w = 0.0 if variant == "pixel" else 1.0
        mode = "bidirectional" if variant == "caption_bidir" else "prefix"
        return S.ModelSpec(
            encoder=enc,
            decoder=dec,
            prefix=S.PrefixSpec(mode=mode),
            pixel=S.PixelObjectiveSpec(weight=pixel_w, patch_norm=draw(st.booleans())),
            text=S.TextObjectiveSpec(weight=text_w, pad_id=draw(st.sampled_from([0, 1]))),
        )

    return draw_it()


def text_encoder_specs(max_depth: int = 2) -> Any:
    """Strategy: small text towers — widths, heads, depths, vocabularies, contexts, any
    eos id, both norms and feed-forwards, causal or bidirectional.

    Example:
        >>> from hypothesis import find
        >>> find(text_encoder_specs(), lambda s: not s.causal).kind
        'text_encoder'
    """

    @st.composite
    def draw_it(draw):
        width, heads = _width_heads(draw, (8, 16, 32))
        vocab = draw(st.sampled_from([3, 11, 40]))
        return S.text_encoder_spec(
            width,
            draw(st.integers(1, max_depth)),
            heads,
            vocab_size=vocab,
            eos_id=draw(st.integers(0, vocab - 1)),
            context_length=draw(st.sampled_from([1, 4, 9])),
            mlp_hidden=draw(st.sampled_from([16, 40])),
            norm=draw(st.sampled_from(["rms", "layer"])),
            ffn=draw(st.sampled_from(["swiglu", "gelu"])),
            causal=draw(st.booleans()),
        )

    return draw_it()


def lit_specs() -> Any:
    """Strategy: small LiT models — an encoder (any position embedding, fixed size) with a
    pooling head of drawn heads, queries and output width, a text tower, an embedding
    width and a logit-scale clamp.

    Example:
        >>> from hypothesis import find
        >>> find(lit_specs(), bool).kind
        'lit'
    """

    @st.composite
    def draw_it(draw):
        enc = draw(encoder_specs(native=False, max_depth=2))
        _, heads = _width_heads(draw, (enc.width,))
        head = S.AttentionPoolSpec(
            width=enc.width,
            heads=heads,
            out_features=draw(st.sampled_from([None, 12])),
            num_queries=draw(st.integers(1, 2)),
        )
        return S.LiTSpec(
            image_encoder=enc.replace(head=head),
            text_encoder=draw(text_encoder_specs()),
            embed_dim=draw(st.sampled_from([4, 16])),
            init_temperature=0.07,
            max_logit_scale=draw(st.sampled_from([2.0, 100.0])),
        )

    return draw_it()


def layer_specs() -> Any:
    """Strategy: one spec of any layer kind (norm, patch/pos embedding, attention, ffn,
    block, trunk, attention pooling, probe).

    Example:
        >>> from hypothesis import find
        >>> find(layer_specs(), bool).kind in S.KINDS
        True
    """

    @st.composite
    def patch(draw):
        w = draw(st.sampled_from([8, 16]))
        return S.PatchEmbedSpec(
            patch_size=draw(st.integers(1, 4)),
            in_channels=draw(st.sampled_from([1, 3])),
            width=w,
            bias=draw(st.booleans()),
            norm=draw(norm_specs(w)),
        )

    @st.composite
    def pos(draw):
        kind = draw(st.sampled_from(["learned", "sincos", "none"]))
        grid = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        return S.PosEmbedSpec(width=draw(st.sampled_from([8, 16])), type=kind, grid=grid)

    @st.composite
    def trunk(draw):
        blk = draw(block_specs())
        return S.TrunkSpec(block=blk, depth=draw(st.integers(1, 3)))

    @st.composite
    def pool(draw):
        width, heads = _width_heads(draw)
        return S.AttentionPoolSpec(
            width=width,
            heads=heads,
            out_features=draw(st.sampled_from([None, 5])),
            num_queries=draw(st.integers(1, 2)),
            kv_bias=draw(st.booleans()),
        )

    @st.composite
    def probe(draw):
        width, heads = _width_heads(draw)
        return S.ProbeSpec(
            width=width,
            num_classes=draw(st.integers(1, 12)),
            type=draw(st.sampled_from(["attentive", "linear"])),
            heads=heads,
        )

    return st.one_of(
        norm_specs(),
        patch(),
        pos(),
        attention_specs(),
        ffn_specs(),
        block_specs(),
        trunk(),
        pool(),
        probe(),
    )


def property_test(
    strategy: Any,
    *,
    backends: Sequence[str] | None = None,
    max_examples: int = 10,
    **compare_kwargs: Any,
) -> Callable[..., None]:
    """A hypothesis test that every drawn spec agrees across the backends and with the
    reference (forward, loss or output, every gradient): bind it to a ``test_*`` name in
    your test module and pytest runs it.

    Example:
        >>> test_norm_parity = property_test(norm_specs(), backends=["torch"], max_examples=2)
        >>> test_norm_parity(); print("agree")  # pytest calls it the same way; raises if not
        agree
    """

    @settings(max_examples=max_examples, deadline=None, derandomize=True)
    @given(spec=strategy, seed=st.integers(0, 2**16))
    def test(spec: S.Spec, seed: int) -> None:
        assert_backends_agree(spec, seed=seed, backends=backends, **compare_kwargs)

    return test
