"""Parity testing as a feature: hypothesis strategies and backend-agreement checks.

For people who compose their own variants: draw small specs, weights and batches,
and check that every installed backend agrees with the float64 reference (forward,
losses, every gradient) within stated float32 tolerances.

Example:
    >>> import aimv2
    >>> from aimv2 import testing
    >>> report = testing.assert_backends_agree(aimv2.presets.get("aimv2-test-tiny"))
    >>> sorted(report)[:1]
    ['mlx']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import reference
from . import specs as S
from .backend import available_backends, build, load_backend
from .masks import sample_prefix
from .weights import parameters

__all__ = [
    "Tolerance",
    "FORWARD_TOL",
    "GRAD_TOL",
    "random_weights",
    "random_batch",
    "max_error",
    "assert_close",
    "Check",
    "compare_backends",
    "assert_backends_agree",
    "norm_specs",
    "attention_specs",
    "ffn_specs",
    "block_specs",
    "encoder_specs",
    "model_specs",
    "layer_specs",
]


@dataclass(frozen=True)
class Tolerance:
    """``max|got − want| ≤ tol · max(1, max|want|)``: an error relative to the tensor's scale.

    Example:
        >>> Tolerance(1e-4).ok(np.array([1.00001]), np.array([1.0]))
        True
    """

    tol: float

    def bound(self, want: np.ndarray) -> float:
        """The largest allowed absolute error for ``want``."""
        return self.tol * max(1.0, float(np.max(np.abs(want))) if np.size(want) else 1.0)

    def ok(self, got: np.ndarray, want: np.ndarray) -> bool:
        """True when ``got`` is within tolerance of ``want``."""
        return max_error(got, want) <= self.bound(want)


# Float32 forward against the float64 reference. Unit roundoff is 6e-8; the drawn
# models have ≤ 4 blocks of width ≤ 64 (dot products of ≤ 256 terms), and the
# errors observed are ~1e-6 of the output scale. 1e-4 leaves room for the norm's
# 1/rms amplification on small activations without hiding a wrong formula (a
# missing bias, eps or scale moves outputs by ≥ 1e-2).
FORWARD_TOL = Tolerance(1e-4)
# Gradients sum over batch, positions and both losses and pass back through every
# block and the softmax, so they accumulate more float32 rounding (observed ~1e-5
# of scale): 1e-3.
GRAD_TOL = Tolerance(1e-3)


def max_error(got: Any, want: Any) -> float:
    """Largest absolute difference (inf when shapes differ).

    Example:
        >>> max_error(np.ones(2), np.zeros(2))
        1.0
    """
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    return float(np.max(np.abs(got - want))) if got.size else 0.0


def assert_close(got: Any, want: Any, tol: Tolerance = FORWARD_TOL, what: str = "") -> float:
    """Assert ``got`` ≈ ``want`` under ``tol``; return the error.

    Example:
        >>> assert_close(np.ones(2), np.ones(2))
        0.0
    """
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape} != expected {want.shape}")
    err = max_error(got, want)
    if not err <= tol.bound(want):
        raise AssertionError(
            f"{what}: max abs error {err:.3e} > tolerance {tol.bound(want):.3e} "
            f"(tol {tol.tol:g} × scale)"
        )
    return err


def random_weights(spec: S.Spec, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 weights where *every* parameter is random (norm weights, biases and
    positions included), so parity tests see each one used.

    Example:
        >>> w = random_weights(S.NormSpec(width=4))
        >>> bool(abs(w["weight"] - 1).max() > 0)
        True
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, info in parameters(spec).items():
        shape = info.shape
        if info.role == "norm":
            w = 1.0 + 0.2 * rng.standard_normal(shape)
        elif info.role in ("bias", "norm_bias", "pos", "text_pos", "token"):
            w = 0.2 * rng.standard_normal(shape)
        elif info.role == "embed":
            w = rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) / np.sqrt(info.fan_in)
        out[name] = w.astype(np.float32)
    return out


def random_batch(
    spec: S.ModelSpec | S.EncoderSpec,
    seed: int = 0,
    batch: int = 2,
    image_hw: tuple[int, int] | None = None,
    caption_len: int | None = None,
) -> dict[str, np.ndarray | None]:
    """Images (normal), captions (some pad at the end) and prefix lengths for ``spec``.

    Example:
        >>> import aimv2
        >>> b = random_batch(aimv2.presets.get("aimv2-test-tiny"))
        >>> b["images"].shape, b["tokens"].shape
        ((2, 3, 16, 16), (2, 16))
    """
    rng = np.random.default_rng(seed)
    enc = spec.encoder if isinstance(spec, S.ModelSpec) else spec
    if image_hw is None:
        image_hw = enc.image_size or (enc.patch_size * 3, enc.patch_size * 2)
    p = enc.patch_size
    n = (image_hw[0] // p) * (image_hw[1] // p)
    images = rng.standard_normal((batch, enc.in_channels, *image_hw)).astype(np.float32)
    out: dict[str, np.ndarray | None] = {"images": images, "tokens": None, "prefix_len": None}
    if n >= 2:
        out["prefix_len"] = sample_prefix(rng, batch, n)
    if isinstance(spec, S.ModelSpec) and spec.decoder is not None:
        dec = spec.decoder
        t = caption_len or dec.context_length
        pad = spec.text.pad_id
        tokens = rng.integers(0, dec.vocab_size, (batch, t))
        tokens[tokens == pad] = (pad + 1) % dec.vocab_size
        lengths = rng.integers(0, t + 1, batch)
        tokens[np.arange(t)[None, :] >= lengths[:, None]] = pad
        out["tokens"] = tokens.astype(np.int64)
    return out


def _to_numpy(be: Any, x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return [_to_numpy(be, v) for v in x]
    return be.to_numpy(x)


@dataclass(frozen=True)
class Check:
    """One compared tensor: its largest absolute error and the bound it must stay under."""

    error: float
    bound: float

    @property
    def ok(self) -> bool:
        """True within tolerance."""
        return self.error <= self.bound


def compare_backends(
    spec: S.Spec,
    weights: Mapping[str, np.ndarray] | None = None,
    batch: Mapping[str, Any] | None = None,
    *,
    backends: Sequence[str] | None = None,
    seed: int = 0,
    forward_tol: Tolerance = FORWARD_TOL,
    grad_tol: Tolerance = GRAD_TOL,
    check_grads: bool = True,
) -> dict[str, dict[str, Check]]:
    """Compare every installed backend with the float64 reference and with each other.

    For an encoder (or a ModelSpec without a decoder): the output, every block's output
    and the pooling head. For a pre-training model: ``loss``, ``pixel_loss``,
    ``text_loss``, ``pixel_pred``, ``text_logits`` against the reference and, with
    ``check_grads``, every parameter's gradient of each backend against the first one.
    Returns ``{backend: {tensor: Check}}`` without raising.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=2, image_size=4,
        ...                           mlp_hidden=32)
        >>> compare_backends(spec, backends=["torch"])["torch"]["output"].ok
        True
    """
    backends = list(backends) if backends is not None else available_backends()
    if not backends:
        raise RuntimeError("compare_backends: no backend is installed (torch or mlx)")
    weights = dict(weights) if weights is not None else random_weights(spec, seed)
    model_spec = spec
    if isinstance(spec, S.ModelSpec) and spec.decoder is None:
        spec = spec.encoder
    if not isinstance(spec, (S.EncoderSpec, S.ModelSpec)):
        raise TypeError(
            f"spec: compare_backends takes an EncoderSpec or ModelSpec, got {spec.kind!r}"
        )
    batch = dict(batch) if batch is not None else random_batch(spec, seed)

    def check(got: Any, want: Any, tol: Tolerance) -> Check:
        return Check(max_error(got, want), tol.bound(want))

    report: dict[str, dict[str, Check]] = {}
    grads: dict[str, dict[str, np.ndarray]] = {}
    prefix = batch.get("prefix_len")
    if isinstance(spec, S.EncoderSpec):
        want, want_blocks = reference.forward(
            spec, weights, batch["images"], prefix_len=prefix, return_blocks=True
        )
    else:
        want = reference.forward(
            spec, weights, batch["images"], tokens=batch["tokens"], prefix_len=prefix
        )
    for name in backends:
        be = load_backend(name)
        model = build(model_spec, name, weights=weights)
        checks: dict[str, Check] = {}
        images = be.from_numpy(batch["images"])
        if isinstance(spec, S.EncoderSpec):
            got, blocks = model(images, prefix, return_blocks=True)
            checks["output"] = check(be.to_numpy(got), want, forward_tol)
            for i, (g, w) in enumerate(zip(_to_numpy(be, blocks), want_blocks, strict=True)):
                checks[f"block.{i}"] = check(g, w, forward_tol)
            if spec.head is not None:
                pooled = reference.forward(spec.head, reference.sub(weights, "head."), want)
                checks["head"] = check(be.to_numpy(model.head(got)), pooled, forward_tol)
        else:
            tokens = None if batch["tokens"] is None else be.from_numpy(batch["tokens"])
            out = model(images, tokens, prefix)
            for key in ("loss", "pixel_loss", "text_loss", "pixel_pred", "text_logits"):
                if want[key] is None:
                    checks[key] = Check(0.0 if out[key] is None else float("inf"), 0.0)
                    continue
                checks[key] = check(be.to_numpy(out[key]), want[key], forward_tol)
            if check_grads:
                _, grads[name] = be.loss_and_grads(model, batch["images"], batch["tokens"], prefix)
        report[name] = checks
    if len(grads) > 1:
        first, *others = list(grads)
        for other in others:
            for pname, g in grads[first].items():
                report[other][f"grad:{pname}"] = check(grads[other][pname], g, grad_tol)
    return report


def assert_backends_agree(
    spec: S.Spec,
    weights: Mapping[str, np.ndarray] | None = None,
    batch: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, dict[str, float]]:
    """:func:`compare_backends`, raising AssertionError that lists every tensor past
    tolerance; returns ``{backend: {tensor: max abs error}}``. Call it from your own tests.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=16, depth=1, heads=2, patch_size=2, image_size=4,
        ...                           mlp_hidden=32)
        >>> assert_backends_agree(spec, backends=["torch"])["torch"]["output"] < 1e-4
        True
    """
    report = compare_backends(spec, weights, batch, **kwargs)
    bad = [
        f"{be} {name}: error {c.error:.3e} > bound {c.bound:.3e}"
        for be, checks in report.items()
        for name, c in checks.items()
        if not c.ok
    ]
    if bad:
        raise AssertionError("backends disagree:\n  " + "\n  ".join(bad))
    return {be: {name: c.error for name, c in checks.items()} for be, checks in report.items()}


# ----------------------------------------------------------------- hypothesis strategies

try:
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    st = None


def _need_hypothesis() -> None:
    if st is None:
        raise ImportError("aimv2.testing strategies need hypothesis: pip install 'aimv2[dev]'")


def _width_heads(draw, widths=(8, 16, 24, 32, 48, 64)) -> tuple[int, int]:
    width = draw(st.sampled_from(widths))
    heads = draw(st.sampled_from([h for h in (1, 2, 4) if width % h == 0]))
    return width, heads


def norm_specs(width: int | None = None) -> Any:
    """Strategy: RMS or Layer norm specs with a drawn eps.

    Example:
        >>> norm_specs(8).example().width
        8
    """
    _need_hypothesis()
    return st.builds(
        S.NormSpec,
        width=st.just(width) if width else st.sampled_from([4, 8, 16, 32]),
        type=st.sampled_from(["rms", "layer"]),
        eps=st.sampled_from([1e-5, 1e-6, 1e-3]),
    )


def attention_specs() -> Any:
    """Strategy: attention specs (with and without biases).

    Example:
        >>> attention_specs().example().kind
        'attention'
    """
    _need_hypothesis()

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
        >>> ffn_specs(16).example().width
        16
    """
    _need_hypothesis()
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
        >>> block_specs().example().kind
        'block'
    """
    _need_hypothesis()

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
        >>> encoder_specs().example().kind
        'encoder'
    """
    _need_hypothesis()

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
        >>> model_specs().example().kind
        'model'
    """
    _need_hypothesis()

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


def layer_specs() -> Any:
    """Strategy: one spec of any layer kind (norm, patch/pos embedding, attention, ffn,
    block, trunk, attention pooling, probe).

    Example:
        >>> layer_specs().example().kind in S.KINDS
        True
    """
    _need_hypothesis()

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
