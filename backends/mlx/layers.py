"""MLX realizations of the built-in layer components (mirror images of
:mod:`aimv2.backends.torch.layers`).

The module tree mirrors the torch backend, so ``tree_flatten(model.parameters())``
yields the same canonical names. Norms use ``mx.fast.rms_norm`` /
``mx.fast.layer_norm``; attention and SwiGLU go through the named functions of
:mod:`aimv2.backends.mlx.fused`. Constant masks are built per call and never stored as
attributes, so they stay out of the parameter tree.

Example:
    >>> import mlx.core as mx
    >>> from aimv2 import specs as S
    >>> from aimv2.backends.mlx.registry import build_module
    >>> blk = build_module(S.BlockSpec(S.NormSpec(8), S.AttentionSpec(8, 2), S.FeedForwardSpec(8, 16)))
    >>> blk(mx.zeros((2, 3, 8)), "causal").shape
    (2, 3, 8)
"""

from __future__ import annotations

import functools
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from aimv2 import patches
from aimv2 import specs as S
from aimv2.inputs import check_features

from .arrays import as_array
from .fused import add_residual, qkv_heads, sdpa, swiglu
from .registry import build, realizes

__all__ = [
    "Norm",
    "Patchifier",
    "PositionEmbedding",
    "Attention",
    "FeedForward",
    "Block",
    "Trunk",
    "AttentionPool",
    "Probe",
    "call_block",
    "mask_arg",
]


def mask_arg(mask: Any) -> Any:
    """An attention mask as the kernels take it: None, ``"causal"``, or a bool array.

    Example:
        >>> mask_arg([[True]]).dtype
        mlx.core.bool
    """
    if mask is None or isinstance(mask, str):
        return mask
    return as_array(mask).astype(mx.bool_)


@realizes(S.NormSpec)
class Norm(nn.Module):
    """RMSNorm (weight) or LayerNorm (weight, bias); eps from the spec."""

    def __init__(self, spec: S.NormSpec):
        super().__init__()
        self.spec = spec
        self.weight = mx.ones((spec.width,))
        if spec.type == "layer":
            self.bias = mx.zeros((spec.width,))

    def __call__(self, x: mx.array) -> mx.array:
        if self.spec.type == "rms":
            return mx.fast.rms_norm(x, self.weight, self.spec.eps)
        return mx.fast.layer_norm(x, self.weight, self.bias, self.spec.eps)


@realizes(S.PatchEmbedSpec)
class Patchifier(nn.Module):
    """Conv2d(kernel = stride = patch) on NHWC → (B, N, D) row-major → norm."""

    def __init__(self, spec: S.PatchEmbedSpec):
        super().__init__()
        self.spec = spec
        p = spec.patch_size
        self.proj = nn.Conv2d(spec.in_channels, spec.width, p, stride=p, bias=spec.bias)
        self.norm = build(spec.norm_spec)

    def __call__(self, images: mx.array) -> mx.array:
        x = self.proj(images.transpose(0, 2, 3, 1))  # (B, h, w, D)
        b, h, w, d = x.shape
        return self.norm(x.reshape(b, h * w, d))


@functools.lru_cache(maxsize=64)
def _sincos(width: int, rows: int, cols: int, temperature: float, dtype: Any) -> mx.array:
    table = patches.sincos_2d(width, rows, cols, temperature, np.float32)
    return mx.array(table).astype(dtype)[None]


@realizes(S.PosEmbedSpec)
class PositionEmbedding(nn.Module):
    """Learned table (``pos_embed``), 2D sin-cos (cached per grid), or nothing."""

    def __init__(self, spec: S.PosEmbedSpec):
        super().__init__()
        self.spec = spec
        if spec.type == "learned":
            self.pos_embed = mx.zeros((1, spec.num_positions, spec.width))

    def __call__(self, x: mx.array, grid: tuple[int, int] | None = None) -> mx.array:
        spec = self.spec
        if spec.type == "learned":
            return x + self.pos_embed
        if spec.type == "none":
            return x
        rows, cols = grid if grid is not None else spec.grid
        return x + _sincos(spec.width, rows, cols, spec.temperature, x.dtype)


@realizes(S.AttentionSpec)
class Attention(nn.Module):
    """Fused-qkv multi-head self-attention."""

    def __init__(self, spec: S.AttentionSpec):
        super().__init__()
        self.spec = spec
        self.qkv = nn.Linear(spec.width, 3 * spec.width, bias=spec.qkv_bias)
        self.proj = nn.Linear(spec.width, spec.width, bias=spec.proj_bias)

    def __call__(self, x: mx.array, mask: Any = None) -> mx.array:
        return self.proj(self._attend(x, mask))

    def _attend(self, x: mx.array, mask: Any) -> mx.array:
        b, n, d = x.shape
        q, k, v = qkv_heads(self.qkv, x, self.spec.heads)
        return sdpa(q, k, v, mask_arg(mask)).transpose(0, 2, 1, 3).reshape(b, n, d)


@realizes(S.FeedForwardSpec)
class FeedForward(nn.Module):
    """SwiGLU (fc1 gate, fc3 up, fc2 down) or exact-GELU MLP (fc1, fc2)."""

    def __init__(self, spec: S.FeedForwardSpec):
        super().__init__()
        self.spec = spec
        self.fc1 = nn.Linear(spec.width, spec.hidden, bias=spec.bias)
        self.fc2 = nn.Linear(spec.hidden, spec.width, bias=spec.bias)
        if spec.type == "swiglu":
            self.fc3 = nn.Linear(spec.width, spec.hidden, bias=spec.bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self._hidden(x))

    def _hidden(self, x: mx.array) -> mx.array:
        if self.spec.type == "swiglu":
            return swiglu(self.fc1(x), self.fc3(x))
        return nn.gelu(self.fc1(x))


@realizes(S.BlockSpec)
class Block(nn.Module):
    """Pre-norm block: ``x += attn(norm_1 x); x += mlp(norm_2 x)``."""

    def __init__(self, spec: S.BlockSpec):
        super().__init__()
        self.spec = spec
        self.norm_1 = build(spec.norm)
        self.attn = build(spec.attn)
        self.norm_2 = build(spec.norm)
        self.mlp = build(spec.mlp)

    def __call__(self, x: mx.array, mask: Any = None) -> mx.array:
        x = add_residual(x, self.attn, self.norm_1(x), mask)
        return add_residual(x, self.mlp, self.norm_2(x))


def call_block(owner: nn.Module, blk: nn.Module, x: mx.array, mask: Any) -> mx.array:
    """``blk(x, mask)``; with ``owner.checkpoint`` the block's activations are recomputed
    in the backward pass instead of kept.

    Example:
        >>> blk = build(S.BlockSpec(S.NormSpec(4), S.AttentionSpec(4, 1), S.FeedForwardSpec(4, 8)))
        >>> owner = nn.Module(); owner.checkpoint = True
        >>> call_block(owner, blk, mx.zeros((1, 2, 4)), None).shape
        (1, 2, 4)
    """
    if owner.checkpoint:
        return nn.utils.checkpoint(blk, lambda y: blk(y, mask))(x)
    return blk(x, mask)


@realizes(S.TrunkSpec)
class Trunk(nn.Module):
    """``blocks`` then ``post_trunk_norm``. ``checkpoint = True`` recomputes each
    block's activations in the backward pass (see ``set_checkpointing``)."""

    def __init__(self, spec: S.TrunkSpec):
        super().__init__()
        self.spec = spec
        self.blocks = [build(spec.block) for _ in range(spec.depth)]
        self.post_trunk_norm = build(spec.final_norm_spec)
        self.checkpoint = False

    def __call__(
        self,
        x: mx.array,
        mask: Any = None,
        return_blocks: bool = False,
        num_blocks: int | None = None,
    ) -> Any:
        """``num_blocks`` runs only the first that many blocks (the final norm follows the
        last one run)."""
        mask = mask_arg(mask)
        outs = []
        for blk in self.blocks[:num_blocks]:
            x = call_block(self, blk, x, mask)
            if return_blocks:
                outs.append(x)
        y = self.post_trunk_norm(x)
        return (y, outs) if return_blocks else y


@realizes(S.AttentionPoolSpec)
class AttentionPool(nn.Module):
    """Learned-query attention pooling → ``linear`` → (B, out_features)."""

    def __init__(self, spec: S.AttentionPoolSpec):
        super().__init__()
        self.spec = spec
        d = spec.width
        self.cls_token = mx.zeros((1, spec.num_queries, d))
        self.k = nn.Linear(d, d, bias=spec.kv_bias)
        self.v = nn.Linear(d, d, bias=spec.kv_bias)
        self.linear = nn.Linear(d, spec.out_dim, bias=spec.out_bias)

    def __call__(self, features: mx.array) -> mx.array:
        check_features(features.shape, self.spec.width)
        b, n, d = features.shape
        h = self.spec.heads
        q = mx.broadcast_to(self.cls_token, (b, self.spec.num_queries, d))
        q = q.reshape(b, -1, h, d // h).transpose(0, 2, 1, 3)
        k = self.k(features).reshape(b, n, h, d // h).transpose(0, 2, 1, 3)
        v = self.v(features).reshape(b, n, h, d // h).transpose(0, 2, 1, 3)
        # one query per head: MLX's fused kernel (the polynomial-exp path of ``sdpa``
        # only pays off on the trunk's N x N scores)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=(d // h) ** -0.5)
        return self.linear(o.transpose(0, 2, 1, 3).reshape(b, -1, d).mean(axis=1))


@realizes(S.ProbeSpec)
class Probe(nn.Module):
    """Attentive probe (``pool``) or linear probe on mean-pooled features (``linear``)."""

    def __init__(self, spec: S.ProbeSpec):
        super().__init__()
        self.spec = spec
        if spec.type == "attentive":
            self.pool = build(spec.pool)
        else:
            self.linear = nn.Linear(spec.width, spec.num_classes, bias=True)

    def __call__(self, features: mx.array) -> mx.array:
        check_features(features.shape, self.spec.width)
        if self.spec.type == "attentive":
            return self.pool(features)
        return self.linear(features.mean(axis=1))
