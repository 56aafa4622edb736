"""Float64 NumPy forward of every spec kind: the oracle both backends are tested against.

Plain, slow and obvious on purpose. ``forward(spec, weights, inputs, **kw)``
dispatches on the spec's kind; ``weights`` maps the canonical names of
:func:`aimv2.weights.parameters` to arrays (any float dtype; computed in float64);
keywords are those of the matching backend module's call.

Example:
    >>> import numpy as np, aimv2
    >>> from aimv2 import reference
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> w = aimv2.init_weights(spec, seed=0)
    >>> reference.forward(spec, w, np.zeros((1, 3, 8, 8))).shape
    (1, 4, 32)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from aimv2 import masks, patches
from aimv2 import specs as S
from aimv2.inputs import check_features, check_tokens
from aimv2.weights import check_weights

__all__ = ["forward", "REGISTRY", "sub", "adamw_step"]

Weights = Mapping[str, np.ndarray]
REGISTRY: dict[str, Callable[..., Any]] = {}

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _register(kind: str):
    def wrap(fn):
        REGISTRY[kind] = fn
        return fn

    return wrap


def sub(weights: Weights, prefix: str) -> dict[str, np.ndarray]:
    """The weights under ``prefix`` with the prefix stripped.

    Example:
        >>> sub({"a.b": 1, "c": 2}, "a.")
        {'b': 1}
    """
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def _f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _linear(w: Weights, name: str, x: np.ndarray) -> np.ndarray:
    y = x @ _f64(w[f"{name}.weight"]).T
    if f"{name}.bias" in w:
        y = y + _f64(w[f"{name}.bias"])
    return y


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


@_register("norm")
def norm(spec: S.NormSpec, w: Weights, x: np.ndarray) -> np.ndarray:
    """RMSNorm or LayerNorm over the last axis.

    Example:
        >>> norm(S.NormSpec(width=2), {"weight": np.ones(2)}, np.array([3.0, 4.0])).round(3)
        array([0.849, 1.131])
    """
    x = _f64(x)
    if spec.type == "rms":
        y = x / np.sqrt((x * x).mean(-1, keepdims=True) + spec.eps)
        return y * _f64(w["weight"])
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + spec.eps) * _f64(w["weight"]) + _f64(w["bias"])


@_register("patch_embed")
def patch_embed(spec: S.PatchEmbedSpec, w: Weights, images: np.ndarray) -> np.ndarray:
    """(B, C, H, W) → (B, N, D): non-overlapping conv as a matmul, then the norm.

    Example:
        >>> spec = S.PatchEmbedSpec(patch_size=2, in_channels=1, width=4)
        >>> from aimv2.weights import init_weights
        >>> patch_embed(spec, init_weights(spec), np.ones((1, 1, 4, 6))).shape
        (1, 6, 4)
    """
    x = patches.patchify(_f64(images), spec.patch_size)  # (B, N, p·p·C), (row, col, ch)
    kernel = _f64(w["proj.weight"]).transpose(0, 2, 3, 1).reshape(spec.width, -1)
    y = x @ kernel.T
    if "proj.bias" in w:
        y = y + _f64(w["proj.bias"])
    return norm(spec.norm_spec, sub(w, "norm."), y)


@_register("pos_embed")
def pos_embed(
    spec: S.PosEmbedSpec, w: Weights, x: np.ndarray, grid: tuple[int, int] | None = None
) -> np.ndarray:
    """Add positions to row-major tokens (B, N, D); ``grid`` is needed for sin-cos.

    Example:
        >>> pos_embed(S.PosEmbedSpec(width=4, type="sincos"), {}, np.zeros((1, 2, 4)),
        ...           grid=(1, 2))[0, 1].round(3).tolist()
        [0.841, 0.54, 0.0, 1.0]
    """
    x = _f64(x)
    if spec.type == "none":
        return x
    if spec.type == "learned":
        return x + _f64(w["pos_embed"])
    rows, cols = grid if grid is not None else spec.grid
    return x + patches.sincos_2d(spec.width, rows, cols, spec.temperature)[None]


def _sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: Any, scale: float) -> np.ndarray:
    scores = (q @ k.swapaxes(-1, -2)) * scale  # (B, H, Nq, Nk)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"mask: expected None, 'causal' or a boolean array, got {mask!r}")
        mask = masks.causal_mask(scores.shape[-1])
    if mask is not None:
        scores = np.where(np.asarray(mask, dtype=bool), scores, -np.inf)
    return _softmax(scores) @ v


@_register("attention")
def attention(spec: S.AttentionSpec, w: Weights, x: np.ndarray, mask: Any = None) -> np.ndarray:
    """Multi-head self-attention; ``mask`` None, ``"causal"`` or boolean (B, 1, N, N).

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.AttentionSpec(width=8, heads=2)
        >>> attention(spec, init_weights(spec), np.ones((1, 3, 8)), "causal").shape
        (1, 3, 8)
    """
    x = _f64(x)
    b, n, d = x.shape
    h, hd = spec.heads, spec.head_dim
    qkv = _linear(w, "qkv", x).reshape(b, n, 3, h, hd).transpose(2, 0, 3, 1, 4)
    o = _sdpa(qkv[0], qkv[1], qkv[2], mask, hd**-0.5)
    return _linear(w, "proj", o.transpose(0, 2, 1, 3).reshape(b, n, d))


@_register("ffn")
def ffn(spec: S.FeedForwardSpec, w: Weights, x: np.ndarray) -> np.ndarray:
    """SwiGLU or exact-GELU MLP.

    Example:
        >>> spec = S.FeedForwardSpec(width=2, hidden=3, type="gelu")
        >>> ffn(spec, {k: np.zeros(v.shape) for k, v in __import__("aimv2").weights.parameters(
        ...     spec).items()}, np.ones((1, 2))).tolist()
        [[0.0, 0.0]]
    """
    x = _f64(x)
    a = _linear(w, "fc1", x)
    if spec.type == "swiglu":
        hidden = a / (1.0 + np.exp(-a)) * _linear(w, "fc3", x)
    else:
        hidden = 0.5 * a * (1.0 + _erf(a / math.sqrt(2.0)))
    return _linear(w, "fc2", hidden)


@_register("block")
def block(spec: S.BlockSpec, w: Weights, x: np.ndarray, mask: Any = None) -> np.ndarray:
    """Pre-norm residual block.

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.BlockSpec(S.NormSpec(8), S.AttentionSpec(8, 2), S.FeedForwardSpec(8, 16))
        >>> block(spec, init_weights(spec), np.ones((2, 3, 8))).shape
        (2, 3, 8)
    """
    x = _f64(x)
    x = x + attention(spec.attn, sub(w, "attn."), norm(spec.norm, sub(w, "norm_1."), x), mask)
    return x + ffn(spec.mlp, sub(w, "mlp."), norm(spec.norm, sub(w, "norm_2."), x))


@_register("trunk")
def trunk(
    spec: S.TrunkSpec, w: Weights, x: np.ndarray, mask: Any = None, return_blocks: bool = False
) -> Any:
    """Blocks then the final norm; with ``return_blocks`` also each block's output.

    Example:
        >>> from aimv2.weights import init_weights
        >>> blk = S.BlockSpec(S.NormSpec(8), S.AttentionSpec(8, 2), S.FeedForwardSpec(8, 16))
        >>> spec = S.TrunkSpec(block=blk, depth=2)
        >>> len(trunk(spec, init_weights(spec), np.ones((1, 3, 8)), return_blocks=True)[1])
        2
    """
    x = _f64(x)
    outs = []
    for i in range(spec.depth):
        x = block(spec.block, sub(w, f"blocks.{i}."), x, mask)
        outs.append(x)
    y = norm(spec.final_norm_spec, sub(w, "post_trunk_norm."), x)
    return (y, outs) if return_blocks else y


@_register("attn_pool")
def attn_pool(spec: S.AttentionPoolSpec, w: Weights, features: np.ndarray) -> np.ndarray:
    """Learned-query attention pooling → (B, out_features).

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.AttentionPoolSpec(width=8, heads=2, out_features=3)
        >>> attn_pool(spec, init_weights(spec), np.ones((2, 5, 8))).shape
        (2, 3)
    """
    x = _f64(features)
    check_features(x.shape, spec.width)
    b, n, d = x.shape
    h, hd = spec.heads, d // spec.heads
    q = np.broadcast_to(_f64(w["cls_token"]), (b, spec.num_queries, d))
    q = q.reshape(b, -1, h, hd).transpose(0, 2, 1, 3)
    k = _linear(w, "k", x).reshape(b, n, h, hd).transpose(0, 2, 1, 3)
    v = _linear(w, "v", x).reshape(b, n, h, hd).transpose(0, 2, 1, 3)
    o = _sdpa(q, k, v, None, hd**-0.5).transpose(0, 2, 1, 3).reshape(b, -1, d)
    return _linear(w, "linear", o.mean(axis=1))


@_register("probe")
def probe(spec: S.ProbeSpec, w: Weights, features: np.ndarray) -> np.ndarray:
    """Attentive or linear probe on features (B, N, D) → logits (B, classes).

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.ProbeSpec(width=8, num_classes=4, type="linear")
        >>> probe(spec, init_weights(spec), np.ones((2, 5, 8))).shape
        (2, 4)
    """
    x = _f64(features)
    check_features(x.shape, spec.width)
    if spec.type == "attentive":
        return attn_pool(spec.pool, sub(w, "pool."), x)
    return _linear(w, "linear", x.mean(axis=1))


def encoder_mask(spec: S.EncoderSpec, prefix_len: Any, batch: int, n: int) -> Any:
    """Boolean prefix mask for ``prefix_len`` (validated), or None when bidirectional.

    Example:
        >>> encoder_mask(None, 2, batch=1, n=3)[0, 0].astype(int).tolist()
        [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    """
    if prefix_len is None:
        return None
    return masks.prefix_mask(masks.check_prefix_len(prefix_len, batch, n), n)


@_register("encoder")
def encoder(
    spec: S.EncoderSpec,
    w: Weights,
    images: np.ndarray,
    prefix_len: Any = None,
    return_blocks: bool = False,
) -> Any:
    """The vision encoder: (B, C, H, W) → (B, N, D) after the final norm.

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.encoder_spec(width=8, depth=1, heads=2, patch_size=2, image_size=4)
        >>> encoder(spec, init_weights(spec), np.zeros((1, 3, 4, 4)), prefix_len=1).shape
        (1, 4, 8)
    """
    raw = np.asarray(images)
    finite = raw.dtype.kind != "f" or bool(np.isfinite(raw).all())
    grid = spec.check_images(raw.shape, finite, raw.dtype.kind)
    images = _f64(raw)
    x = patch_embed(spec.patchifier, sub(w, "preprocessor.patchifier."), images)
    x = pos_embed(spec.pos_embed, sub(w, "preprocessor."), x, grid)
    mask = encoder_mask(spec, prefix_len, images.shape[0], x.shape[1])
    return trunk(spec.trunk, sub(w, "trunk."), x, mask, return_blocks)


@_register("decoder")
def decoder(
    spec: S.DecoderSpec, w: Weights, features: np.ndarray, tokens: Any = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Causal decoder over [image_proj(features); start; text].

    Returns the normalized hidden states of the image positions (B, N, D) and of
    the text positions that predict tokens 1…T, i.e. [start, t_1 … t_{T−1}]
    (B, T, D), or None without tokens.

    Example:
        >>> import aimv2
        >>> dec = aimv2.presets.get("aimv2-test-tiny").decoder
        >>> img, txt = decoder(dec, aimv2.init_weights(dec), np.zeros((1, 4, 32)),
        ...                    np.ones((1, 3), np.int64))
        >>> img.shape, txt.shape
        ((1, 4, 32), (1, 3, 32))
    """
    x = _f64(features)
    check_features(x.shape, spec.in_width)
    b, n, _ = x.shape
    seq = [_linear(w, "image_proj", x)]
    if tokens is not None:
        tokens = np.asarray(tokens)
        check_tokens(
            tokens.shape,
            tokens.dtype.kind,
            int(tokens.min()),
            int(tokens.max()),
            batch=b,
            vocab_size=spec.vocab_size,
            context_length=spec.context_length,
        )
        t = tokens.shape[1]
        text = _f64(w["text_embed.weight"])[tokens]
        start = np.broadcast_to(_f64(w["start_token"]), (b, 1, spec.width))
        text = np.concatenate([start, text], axis=1) + _f64(w["pos_embed"])[:, : t + 1]
        seq.append(text)
    h = np.concatenate(seq, axis=1)
    for i in range(spec.depth):
        h = block(spec.block, sub(w, f"blocks.{i}."), h, "causal")
    h = norm(spec.final_norm_spec, sub(w, "norm."), h)
    return h[:, :n], (h[:, n:-1] if tokens is not None else None)


def pixel_loss(
    spec: S.PixelObjectiveSpec,
    pred: np.ndarray,
    images: np.ndarray,
    patch_size: int,
    prefix_len: np.ndarray | None,
) -> np.ndarray:
    """Next-patch MSE; ``pred`` (B, N−1, p·p·C) predicts patches 1…N−1.

    Example:
        >>> imgs = np.arange(16.0).reshape(1, 1, 4, 4)
        >>> float(pixel_loss(S.PixelObjectiveSpec(patch_norm=False), np.zeros((1, 3, 4)), imgs, 2,
        ...                  np.array([3])))  # only patch 3 (values 10, 11, 14, 15) counts
        160.5
    """
    target = patches.patchify(_f64(images), patch_size)[:, 1:]
    if spec.patch_norm:
        target = patches.normalize_patches(target, spec.eps, spec.unbiased)
    per_patch = ((_f64(pred) - target) ** 2).mean(-1)  # (B, N-1)
    counted = np.ones_like(per_patch, dtype=bool)
    if spec.outside_prefix_only and prefix_len is not None:
        t = np.arange(1, per_patch.shape[1] + 1)
        counted = t[None, :] >= np.asarray(prefix_len)[:, None]
    return (per_patch * counted).sum() / max(int(counted.sum()), 1)


def text_loss(spec: S.TextObjectiveSpec, logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Mean cross-entropy over non-pad target tokens (0 if there are none).

    Example:
        >>> float(text_loss(S.TextObjectiveSpec(pad_id=0), np.zeros((1, 2, 4)),
        ...                 np.array([[3, 0]]))).__round__(4)  # log 4, pad ignored
        1.3863
    """
    logits = _f64(logits)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    picked = np.take_along_axis(logits, np.asarray(tokens)[..., None], axis=-1)[..., 0]
    valid = np.asarray(tokens) != spec.pad_id
    return ((lse - picked) * valid).sum() / max(int(valid.sum()), 1)


@_register("model")
def model(
    spec: S.ModelSpec,
    w: Weights,
    images: np.ndarray,
    tokens: Any = None,
    prefix_len: Any = None,
    return_blocks: bool = False,
) -> Any:
    """Encoder alone (no decoder), or the pre-training model returning the loss dict.

    Example:
        >>> import aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> out = model(spec, aimv2.init_weights(spec), np.zeros((1, 3, 16, 16)),
        ...             tokens=np.ones((1, 4), np.int64), prefix_len=[5])
        >>> out["pixel_pred"].shape, out["text_logits"].shape
        ((1, 15, 48), (1, 4, 64))
    """
    if spec.decoder is None:
        return encoder(spec.encoder, w, images, prefix_len, return_blocks)
    images = _f64(images)
    b = images.shape[0]
    enc_w = sub(w, "encoder.")
    if spec.prefix.mode == "prefix":
        if prefix_len is None:
            raise ValueError("prefix_len: required by a prefix-attention model (one per example)")
    else:
        prefix_len = None
    if spec.has_text_head and tokens is None:
        raise ValueError("tokens: required by a model with a text objective")
    feats = encoder(spec.encoder, enc_w, images, prefix_len)
    n = feats.shape[1]
    m = None if prefix_len is None else masks.check_prefix_len(prefix_len, b, n)
    img_h, txt_h = decoder(
        spec.decoder, sub(w, "decoder."), feats, tokens if spec.has_text_head else None
    )
    out: dict[str, Any] = {"pixel_loss": np.float64(0.0), "text_loss": np.float64(0.0)}
    out["pixel_pred"] = out["text_logits"] = None
    if spec.has_pixel_head:
        out["pixel_pred"] = _linear(w, "pixel_head", img_h[:, :-1])
        out["pixel_loss"] = pixel_loss(
            spec.pixel, out["pixel_pred"], images, spec.encoder.patch_size, m
        )
    if spec.has_text_head:
        out["text_logits"] = _linear(w, "text_head", txt_h)
        out["text_loss"] = text_loss(spec.text, out["text_logits"], tokens)
    out["loss"] = spec.text.weight * out["text_loss"] + spec.pixel.weight * out["pixel_loss"]
    return out


def forward(spec: S.Spec, weights: Weights, inputs: Any, **kwargs: Any) -> Any:
    """Run the float64 reference of ``spec`` on ``inputs`` with canonical ``weights``.

    Weights are checked against the spec first (names and shapes).

    Example:
        >>> from aimv2.specs import NormSpec
        >>> forward(NormSpec(width=2), {"weight": np.ones(2)}, np.array([[3.0, 4.0]])).round(3)
        array([[0.849, 1.131]])
    """
    if spec.kind not in REGISTRY:
        raise TypeError(f"spec: no reference realization for kind {spec.kind!r}")
    check_weights(spec, weights)
    return REGISTRY[spec.kind](spec, weights, inputs, **kwargs)


def adamw_step(
    params: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    state: Mapping[str, Any],
    cfg: Any,
    lr: float,
    decay: Mapping[str, bool],
) -> tuple[dict[str, np.ndarray], dict[str, Any], float]:
    """One AdamW update in float64 with AIMv2's semantics (see :mod:`aimv2.optim`).

    ``state`` holds ``step`` and ``exp_avg.<name>`` / ``exp_avg_sq.<name>`` (empty to
    start). Returns (new params, new state, gradient norm before clipping).

    Example:
        >>> from aimv2.optim import OptimConfig
        >>> p, s, n = adamw_step({"w": np.ones(2)}, {"w": np.ones(2)}, {}, OptimConfig(), 1e-3,
        ...                      {"w": False})
        >>> p["w"].round(6).tolist(), s["step"]
        ([0.999, 0.999], 1)
    """
    b1, b2 = cfg.betas
    t = int(state.get("step", 0)) + 1
    g = {k: _f64(v) for k, v in grads.items()}
    norm = float(np.sqrt(sum((v * v).sum() for v in g.values())))
    if cfg.clip_norm is not None:
        coef = min(1.0, cfg.clip_norm / (norm + 1e-6))
        g = {k: v * coef for k, v in g.items()}
    new_p, new_s = {}, {"step": t}
    shrink = cfg.decay_factor(lr)
    for name, p in params.items():
        m = b1 * _f64(state.get(f"exp_avg.{name}", 0.0)) + (1 - b1) * g[name]
        v = b2 * _f64(state.get(f"exp_avg_sq.{name}", 0.0)) + (1 - b2) * g[name] ** 2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = _f64(p) * (shrink if decay[name] else 1.0)
        new_p[name] = p - lr * m_hat / (np.sqrt(v_hat) + cfg.eps)
        new_s[f"exp_avg.{name}"], new_s[f"exp_avg_sq.{name}"] = m, v
    return new_p, new_s, norm
