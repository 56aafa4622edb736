"""Torch realizations of the built-in layer components.

Module attribute names follow the canonical names of the specs' ``parameters()``, so
``named_parameters()`` yields them directly (official AIMv2 names). Composites build
their slots through the registry, so any registered component of the slot's role fits.
Attention runs through ``scaled_dot_product_attention``; the speed paths (fused residual
adds, split q/k/v GEMMs and an in-place SwiGLU at inference) are the named functions of
:mod:`aimv2.backends.torch.fused`.

Example:
    >>> import torch
    >>> from aimv2 import specs as S
    >>> from aimv2.backends.torch.registry import build_module
    >>> blk = build_module(S.BlockSpec(S.NormSpec(8), S.AttentionSpec(8, 2), S.FeedForwardSpec(8, 16)))
    >>> blk(torch.zeros(2, 3, 8), "causal").shape
    torch.Size([2, 3, 8])
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from aimv2 import patches
from aimv2 import specs as S
from aimv2.inputs import check_features

from .arrays import as_tensor
from .fused import add_residual, linear_residual, needs_grad, qkv_heads, sdpa, swiglu
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


def mask_arg(mask: Any, device: torch.device) -> Any:
    """An attention mask as the kernels take it: None, ``"causal"``, or a bool tensor.

    Example:
        >>> mask_arg([[True]], torch.device("cpu")).dtype
        torch.bool
    """
    if mask is None or isinstance(mask, str):
        return mask
    return as_tensor(mask).to(device=device, dtype=torch.bool)


@realizes(S.NormSpec)
class Norm(nn.Module):
    """RMSNorm (weight) or LayerNorm (weight, bias); eps from the spec."""

    def __init__(self, spec: S.NormSpec):
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.ones(spec.width))
        if spec.type == "layer":
            self.bias = nn.Parameter(torch.zeros(spec.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (self.spec.width,)
        if self.spec.type == "rms":
            return F.rms_norm(x, shape, self.weight, self.spec.eps)
        return F.layer_norm(x, shape, self.weight, self.bias, self.spec.eps)


@realizes(S.PatchEmbedSpec)
class Patchifier(nn.Module):
    """Conv2d(kernel = stride = patch) → (B, N, D) row-major → norm."""

    def __init__(self, spec: S.PatchEmbedSpec):
        super().__init__()
        self.spec = spec
        p = spec.patch_size
        self.proj = nn.Conv2d(spec.in_channels, spec.width, p, stride=p, bias=spec.bias)
        self.norm = build(spec.norm_spec)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2)
        return self.norm(x)


@functools.lru_cache(maxsize=64)
def _sincos(width: int, rows: int, cols: int, temperature: float, device: str, dtype: Any):
    table = patches.sincos_2d(width, rows, cols, temperature, np.float32)
    return torch.from_numpy(table).to(device=device, dtype=dtype)[None]


@realizes(S.PosEmbedSpec)
class PositionEmbedding(nn.Module):
    """Learned table (``pos_embed``), 2D sin-cos (cached per grid), or nothing."""

    def __init__(self, spec: S.PosEmbedSpec):
        super().__init__()
        self.spec = spec
        if spec.type == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_positions, spec.width))

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        spec = self.spec
        if spec.type == "learned":
            return x + self.pos_embed
        if spec.type == "none":
            return x
        rows, cols = grid if grid is not None else spec.grid
        return x + _sincos(spec.width, rows, cols, spec.temperature, str(x.device), x.dtype)


@realizes(S.AttentionSpec)
class Attention(nn.Module):
    """Fused-qkv multi-head self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, spec: S.AttentionSpec):
        super().__init__()
        self.spec = spec
        self.qkv = nn.Linear(spec.width, 3 * spec.width, bias=spec.qkv_bias)
        self.proj = nn.Linear(spec.width, spec.width, bias=spec.proj_bias)

    def forward(self, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        return self.proj(self._attend(x, mask))

    def forward_residual(
        self, x: torch.Tensor, residual: torch.Tensor, mask: Any = None
    ) -> torch.Tensor:
        """``residual + self(x, mask)``, the add fused into the output projection."""
        return linear_residual(self.proj, self._attend(x, mask), residual)

    def _attend(self, x: torch.Tensor, mask: Any) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = qkv_heads(self.qkv, x, self.spec.heads)
        return sdpa(q, k, v, mask_arg(mask, x.device)).transpose(1, 2).reshape(b, n, d)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self._hidden(x))

    def forward_residual(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)``, the add fused into ``fc2``."""
        return linear_residual(self.fc2, self._hidden(x), residual)

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.type == "swiglu":
            return swiglu(self.fc1(x), self.fc3(x))
        return F.gelu(self.fc1(x))


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

    def forward(self, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        x = add_residual(x, self.attn, self.norm_1(x), mask)
        return add_residual(x, self.mlp, self.norm_2(x))


def call_block(owner: nn.Module, blk: nn.Module, x: torch.Tensor, mask: Any) -> torch.Tensor:
    """``blk(x, mask)``; with ``owner.checkpoint`` and autograd on, the block's activations
    are recomputed in the backward pass instead of kept.

    Example:
        >>> blk = build(S.BlockSpec(S.NormSpec(4), S.AttentionSpec(4, 1), S.FeedForwardSpec(4, 8)))
        >>> owner = nn.Module(); owner.checkpoint = True
        >>> call_block(owner, blk, torch.zeros(1, 2, 4), None).shape
        torch.Size([1, 2, 4])
    """
    if owner.checkpoint and needs_grad(x, *blk.parameters()):
        return _checkpoint(blk, x, mask, use_reentrant=False)
    return blk(x, mask)


@realizes(S.TrunkSpec)
class Trunk(nn.Module):
    """``blocks`` then ``post_trunk_norm``. ``checkpoint = True`` recomputes each
    block's activations in the backward pass (see ``set_checkpointing``)."""

    def __init__(self, spec: S.TrunkSpec):
        super().__init__()
        self.spec = spec
        self.blocks = nn.ModuleList(build(spec.block) for _ in range(spec.depth))
        self.post_trunk_norm = build(spec.final_norm_spec)
        self.checkpoint = False

    def forward(
        self,
        x: torch.Tensor,
        mask: Any = None,
        return_blocks: bool = False,
        num_blocks: int | None = None,
    ) -> Any:
        """``num_blocks`` runs only the first that many blocks (the final norm follows the
        last one run)."""
        mask = mask_arg(mask, x.device)
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
        self.cls_token = nn.Parameter(torch.zeros(1, spec.num_queries, d))
        self.k = nn.Linear(d, d, bias=spec.kv_bias)
        self.v = nn.Linear(d, d, bias=spec.kv_bias)
        self.linear = nn.Linear(d, spec.out_dim, bias=spec.out_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_features(features.shape, self.spec.width)
        b, n, d = features.shape
        h = self.spec.heads
        q = self.cls_token.expand(b, -1, -1).reshape(b, -1, h, d // h).transpose(1, 2)
        k = self.k(features).view(b, n, h, d // h).transpose(1, 2)
        v = self.v(features).view(b, n, h, d // h).transpose(1, 2)
        o = sdpa(q, k, v).transpose(1, 2).reshape(b, -1, d)
        return self.linear(o.mean(dim=1))


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

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_features(features.shape, self.spec.width)
        if self.spec.type == "attentive":
            return self.pool(features)
        return self.linear(features.mean(dim=1))
