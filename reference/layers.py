"""Float64 realizations of the built-in layer components.

Example:
    >>> import numpy as np
    >>> from aimv2 import specs, weights
    >>> spec = specs.BlockSpec(specs.NormSpec(8), specs.AttentionSpec(8, 2),
    ...                        specs.FeedForwardSpec(8, 16))
    >>> block(spec, weights.init_weights(spec), np.ones((2, 3, 8))).shape
    (2, 3, 8)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from aimv2 import patches
from aimv2 import specs as S
from aimv2.inputs import check_features

from .ops import Weights, erf, f64, linear, sdpa, silu, sub
from .registry import apply, realizes

__all__ = [
    "norm",
    "patch_embed",
    "pos_embed",
    "attention",
    "ffn",
    "block",
    "trunk",
    "attn_pool",
    "probe",
]


@realizes(S.NormSpec)
def norm(spec: S.NormSpec, w: Weights, x: np.ndarray) -> np.ndarray:
    """RMSNorm or LayerNorm over the last axis.

    Example:
        >>> norm(S.NormSpec(width=2), {"weight": np.ones(2)}, np.array([3.0, 4.0])).round(3)
        array([0.849, 1.131])
    """
    x = f64(x)
    if spec.type == "rms":
        y = x / np.sqrt((x * x).mean(-1, keepdims=True) + spec.eps)
        return y * f64(w["weight"])
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + spec.eps) * f64(w["weight"]) + f64(w["bias"])


@realizes(S.PatchEmbedSpec)
def patch_embed(spec: S.PatchEmbedSpec, w: Weights, images: np.ndarray) -> np.ndarray:
    """(B, C, H, W) → (B, N, D): non-overlapping conv as a matmul, then the norm.

    Example:
        >>> spec = S.PatchEmbedSpec(patch_size=2, in_channels=1, width=4)
        >>> from aimv2.weights import init_weights
        >>> patch_embed(spec, init_weights(spec), np.ones((1, 1, 4, 6))).shape
        (1, 6, 4)
    """
    x = patches.patchify(f64(images), spec.patch_size)  # (B, N, p·p·C), (row, col, ch)
    kernel = f64(w["proj.weight"]).transpose(0, 2, 3, 1).reshape(spec.width, -1)
    y = x @ kernel.T
    if "proj.bias" in w:
        y = y + f64(w["proj.bias"])
    return apply(spec.norm_spec, sub(w, "norm."), y)


@realizes(S.PosEmbedSpec)
def pos_embed(
    spec: S.PosEmbedSpec, w: Weights, x: np.ndarray, grid: tuple[int, int] | None = None
) -> np.ndarray:
    """Add positions to row-major tokens (B, N, D); ``grid`` is needed for sin-cos.

    Example:
        >>> pos_embed(S.PosEmbedSpec(width=4, type="sincos"), {}, np.zeros((1, 2, 4)),
        ...           grid=(1, 2))[0, 1].round(3).tolist()
        [0.841, 0.54, 0.0, 1.0]
    """
    x = f64(x)
    if spec.type == "none":
        return x
    if spec.type == "learned":
        return x + f64(w["pos_embed"])
    rows, cols = grid if grid is not None else spec.grid
    return x + patches.sincos_2d(spec.width, rows, cols, spec.temperature)[None]


@realizes(S.AttentionSpec)
def attention(spec: S.AttentionSpec, w: Weights, x: np.ndarray, mask: Any = None) -> np.ndarray:
    """Multi-head self-attention; ``mask`` None, ``"causal"`` or boolean (B, 1, N, N).

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.AttentionSpec(width=8, heads=2)
        >>> attention(spec, init_weights(spec), np.ones((1, 3, 8)), "causal").shape
        (1, 3, 8)
    """
    x = f64(x)
    b, n, d = x.shape
    h, hd = spec.heads, spec.head_dim
    qkv = linear(w, "qkv", x).reshape(b, n, 3, h, hd).transpose(2, 0, 3, 1, 4)
    o = sdpa(qkv[0], qkv[1], qkv[2], mask, hd**-0.5)
    return linear(w, "proj", o.transpose(0, 2, 1, 3).reshape(b, n, d))


@realizes(S.FeedForwardSpec)
def ffn(spec: S.FeedForwardSpec, w: Weights, x: np.ndarray) -> np.ndarray:
    """SwiGLU or exact-GELU MLP.

    Example:
        >>> from aimv2.weights import parameters
        >>> spec = S.FeedForwardSpec(width=2, hidden=3, type="gelu")
        >>> zeros = {k: np.zeros(v.shape) for k, v in parameters(spec).items()}
        >>> ffn(spec, zeros, np.ones((1, 2))).tolist()
        [[0.0, 0.0]]
    """
    x = f64(x)
    a = linear(w, "fc1", x)
    if spec.type == "swiglu":
        hidden = silu(a) * linear(w, "fc3", x)
    else:
        hidden = 0.5 * a * (1.0 + erf(a / math.sqrt(2.0)))
    return linear(w, "fc2", hidden)


@realizes(S.BlockSpec)
def block(spec: S.BlockSpec, w: Weights, x: np.ndarray, mask: Any = None) -> np.ndarray:
    """Pre-norm residual block over its slots.

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.BlockSpec(S.NormSpec(8), S.AttentionSpec(8, 2), S.FeedForwardSpec(8, 16))
        >>> block(spec, init_weights(spec), np.ones((2, 3, 8))).shape
        (2, 3, 8)
    """
    x = f64(x)
    h = apply(spec.norm, sub(w, "norm_1."), x)
    x = x + apply(spec.attn, sub(w, "attn."), h, mask)
    return x + apply(spec.mlp, sub(w, "mlp."), apply(spec.norm, sub(w, "norm_2."), x))


@realizes(S.TrunkSpec)
def trunk(
    spec: S.TrunkSpec,
    w: Weights,
    x: np.ndarray,
    mask: Any = None,
    return_blocks: bool = False,
    num_blocks: int | None = None,
) -> Any:
    """Blocks then the final norm; with ``return_blocks`` also each block's output.
    ``num_blocks`` runs only the first that many blocks (the final norm then follows the
    last one run).

    Example:
        >>> from aimv2.weights import init_weights
        >>> blk = S.BlockSpec(S.NormSpec(8), S.AttentionSpec(8, 2), S.FeedForwardSpec(8, 16))
        >>> spec = S.TrunkSpec(block=blk, depth=2)
        >>> len(trunk(spec, init_weights(spec), np.ones((1, 3, 8)), return_blocks=True)[1])
        2
    """
    x = f64(x)
    outs = []
    for i in range(spec.depth if num_blocks is None else num_blocks):
        x = apply(spec.block, sub(w, f"blocks.{i}."), x, mask)
        outs.append(x)
    y = apply(spec.final_norm_spec, sub(w, "post_trunk_norm."), x)
    return (y, outs) if return_blocks else y


@realizes(S.AttentionPoolSpec)
def attn_pool(spec: S.AttentionPoolSpec, w: Weights, features: np.ndarray) -> np.ndarray:
    """Learned-query attention pooling → (B, out_features).

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.AttentionPoolSpec(width=8, heads=2, out_features=3)
        >>> attn_pool(spec, init_weights(spec), np.ones((2, 5, 8))).shape
        (2, 3)
    """
    x = f64(features)
    check_features(x.shape, spec.width)
    b, n, d = x.shape
    h, hd = spec.heads, d // spec.heads
    q = np.broadcast_to(f64(w["cls_token"]), (b, spec.num_queries, d))
    q = q.reshape(b, -1, h, hd).transpose(0, 2, 1, 3)
    k = linear(w, "k", x).reshape(b, n, h, hd).transpose(0, 2, 1, 3)
    v = linear(w, "v", x).reshape(b, n, h, hd).transpose(0, 2, 1, 3)
    o = sdpa(q, k, v, None, hd**-0.5).transpose(0, 2, 1, 3).reshape(b, -1, d)
    return linear(w, "linear", o.mean(axis=1))


@realizes(S.ProbeSpec)
def probe(spec: S.ProbeSpec, w: Weights, features: np.ndarray) -> np.ndarray:
    """Attentive or linear probe on features (B, N, D) → logits (B, classes).

    Example:
        >>> from aimv2.weights import init_weights
        >>> spec = S.ProbeSpec(width=8, num_classes=4, type="linear")
        >>> probe(spec, init_weights(spec), np.ones((2, 5, 8))).shape
        (2, 4)
    """
    x = f64(features)
    check_features(x.shape, spec.width)
    if spec.type == "attentive":
        return apply(spec.pool, sub(w, "pool."), x)
    return linear(w, "linear", x.mean(axis=1))
