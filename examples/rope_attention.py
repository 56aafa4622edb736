"""Two-dimensional rotary attention (RoPE over the patch grid) as a user component: the
second component of ``examples/custom_components.py``, kept in its own module as a user
would keep one component per file. Importing it registers the kind
``rope_2d_attention`` with the reference, torch and MLX.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import aimv2
import aimv2.backends.mlx
import aimv2.backends.torch
from aimv2 import masks, reference, testing
from aimv2.reference import ops
from aimv2.specs import (
    ParamInfo,
    Spec,
    SpecError,
    linear_params,
    positive_int,
)

# =========================================================================== 2D RoPE


@dataclass(frozen=True)
class RoPEAttentionSpec(Spec):
    """Multi-head self-attention with 2D axial rotary positions (slot role
    ``"attention"``), for an encoder over a fixed patch ``grid=(rows, cols)``.

    Parameters are those of :class:`~aimv2.specs.AttentionSpec`: fused ``qkv`` (rows
    [0:D] q, [D:2D] k, [2D:3D] v) and ``proj``; scale head_dim^-0.5. Before attention,
    q and k of every head are rotated by their token's grid position:

    - tokens are row-major: token t sits at row ``t // cols``, column ``t % cols``; the
      call needs exactly N = rows·cols tokens (a ValueError says so otherwise);
    - with q = head_dim / 4 (head_dim divisible by 4) and ω_j = ``base``^(−j/q),
      j = 0…q−1, channels [0, 2q) rotate with the **column** and [2q, 4q) with the
      **row**; within each half, channel j pairs with channel j + q (split halves,
      not interleaved): (a, b) → (a·cos θ_j − b·sin θ_j, b·cos θ_j + a·sin θ_j),
      θ_j = position·ω_j;
    - v is not rotated; the mask (None, ``"causal"``, boolean (B, 1, N, N) with
      True = may attend) is honoured as by the built-in attention.

    Example:
        >>> spec = RoPEAttentionSpec(width=32, heads=2, grid=(4, 4))
        >>> spec.head_dim, sorted(spec.parameters())
        (16, ['proj.weight', 'qkv.weight'])
        >>> RoPEAttentionSpec(width=24, heads=4, grid=(2, 2))
        Traceback (most recent call last):
        ...
        aimv2.specs.base.SpecError: RoPEAttentionSpec.heads=4: head_dim 6 must be divisible by 4 (2D RoPE)
    """

    kind: ClassVar[str] = "rope_2d_attention"
    role: ClassVar[str] = "attention"
    width: int
    heads: int
    grid: tuple[int, int]
    base: float = 10000.0
    qkv_bias: bool = False
    proj_bias: bool = False

    def __post_init__(self) -> None:
        positive_int("RoPEAttentionSpec", "width", self.width)
        positive_int("RoPEAttentionSpec", "heads", self.heads)
        if self.width % self.heads:
            raise SpecError(
                f"RoPEAttentionSpec.width={self.width!r}: must be divisible by heads={self.heads}"
            )
        if self.head_dim % 4:
            raise SpecError(
                f"RoPEAttentionSpec.heads={self.heads!r}: head_dim {self.head_dim} must be "
                f"divisible by 4 (2D RoPE)"
            )
        grid = tuple(self.grid) if isinstance(self.grid, (tuple, list)) else self.grid
        object.__setattr__(self, "grid", grid)
        if not (
            isinstance(grid, tuple)
            and len(grid) == 2
            and all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)
        ):
            raise SpecError(
                f"RoPEAttentionSpec.grid={self.grid!r}: expected (rows, cols) of positive integers"
            )
        if not (isinstance(self.base, (int, float)) and math.isfinite(self.base) and self.base > 1):
            raise SpecError(f"RoPEAttentionSpec.base={self.base!r}: expected a finite float > 1")

    @property
    def head_dim(self) -> int:
        """Channels per head."""
        return self.width // self.heads

    @property
    def num_tokens(self) -> int:
        """rows · cols: the only token count the attention accepts."""
        return self.grid[0] * self.grid[1]

    def check_tokens(self, n: int) -> None:
        """Raise ValueError unless ``n`` tokens fill the grid.

        Example:
            >>> RoPEAttentionSpec(8, 2, grid=(2, 3)).check_tokens(5)
            Traceback (most recent call last):
            ...
            ValueError: RoPEAttentionSpec(grid=(2, 3)): expected 6 tokens (rows·cols, row-major), got 5
        """
        if n != self.num_tokens:
            raise ValueError(
                f"RoPEAttentionSpec(grid={self.grid}): expected {self.num_tokens} tokens "
                f"(rows·cols, row-major), got {n}"
            )

    def parameters(self) -> dict[str, ParamInfo]:
        """``qkv`` (3·width, width) and ``proj`` (width, width), as the built-in attention."""
        d = self.width
        return {
            **linear_params("qkv", 3 * d, d, self.qkv_bias),
            **linear_params("proj", d, d, self.proj_bias),
        }


@functools.lru_cache(maxsize=64)
def rope_tables(grid: tuple[int, int], head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the rotation angles, float64 (N, 2, head_dim/4): axis 1 is
    (column, row), the last axis the frequency j. Read-only (cached).

    Example:
        >>> cos, sin = rope_tables((2, 3), 8, 100.0)
        >>> cos.shape
        (6, 2, 2)
        >>> t = 5  # row 1, column 2
        >>> np.allclose(np.arctan2(sin[t, :, 1], cos[t, :, 1]), [2 * 0.1, 1 * 0.1])
        True
    """
    rows, cols = grid
    q = head_dim // 4
    omega = float(base) ** (-np.arange(q) / q)
    t = np.arange(rows * cols)
    pos = np.stack([t % cols, t // cols], axis=-1).astype(np.float64)  # (N, 2): col, row
    angles = pos[:, :, None] * omega
    cos, sin = np.cos(angles), np.sin(angles)
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin


def rope_rotate_reference(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate (..., N, head_dim) by the tables of :func:`rope_tables`.

    Example:
        >>> cos, sin = rope_tables((1, 2), 4, 10000.0)
        >>> x = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
        >>> rope_rotate_reference(x, cos, sin).round(3).tolist()  # column 1 turns by 1 rad
        [[1.0, 0.0, 1.0, 0.0], [0.54, 0.841, 1.0, 0.0]]
    """
    *lead, n, hd = x.shape
    x = x.reshape(*lead, n, 2, 2, hd // 4)  # (..., N, axis, half, j)
    a, b = x[..., 0, :], x[..., 1, :]
    out = np.stack([a * cos - b * sin, b * cos + a * sin], axis=-2)
    return out.reshape(*lead, n, hd)


@reference.realizes(RoPEAttentionSpec)
def rope_attention_reference(
    spec: RoPEAttentionSpec, w: ops.Weights, x: np.ndarray, mask: Any = None
) -> np.ndarray:
    """Float64 2D-RoPE attention.

    Example:
        >>> spec = RoPEAttentionSpec(width=8, heads=2, grid=(2, 2))
        >>> rope_attention_reference(spec, aimv2.init_weights(spec), np.ones((1, 4, 8))).shape
        (1, 4, 8)
    """
    x = ops.f64(x)
    b, n, d = x.shape
    spec.check_tokens(n)
    h, hd = spec.heads, spec.head_dim
    qkv = ops.linear(w, "qkv", x).reshape(b, n, 3, h, hd).transpose(2, 0, 3, 1, 4)
    cos, sin = rope_tables(spec.grid, hd, spec.base)
    q = rope_rotate_reference(qkv[0], cos, sin)
    k = rope_rotate_reference(qkv[1], cos, sin)
    o = ops.sdpa(q, k, qkv[2], mask, hd**-0.5)
    return ops.linear(w, "proj", o.transpose(0, 2, 1, 3).reshape(b, n, d))


def rope_rotate_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`rope_rotate_reference` in torch."""
    *lead, n, hd = x.shape
    x = x.reshape(*lead, n, 2, 2, hd // 4)
    a, b = x[..., 0, :], x[..., 1, :]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-2).reshape(*lead, n, hd)


@aimv2.backends.torch.realizes(RoPEAttentionSpec)
class TorchRoPEAttention(nn.Module):
    """PyTorch 2D-RoPE attention through ``scaled_dot_product_attention``. The angle
    tables are built per call from the cached float64 NumPy tables (no buffers: the
    library builds modules on the meta device and loads parameters only).

    Example:
        >>> spec = RoPEAttentionSpec(width=8, heads=2, grid=(2, 2))
        >>> aimv2.build(spec, backend="torch")(torch.zeros(3, 4, 8), "causal").shape
        torch.Size([3, 4, 8])
    """

    def __init__(self, spec: RoPEAttentionSpec) -> None:
        super().__init__()
        self.spec = spec
        self.qkv = nn.Linear(spec.width, 3 * spec.width, bias=spec.qkv_bias)
        self.proj = nn.Linear(spec.width, spec.width, bias=spec.proj_bias)

    def forward(self, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """(B, N, width), mask None | "causal" | bool (B, 1, N, N) -> (B, N, width)."""
        spec = self.spec
        b, n, d = x.shape
        spec.check_tokens(n)
        qkv = self.qkv(x).view(b, n, 3, spec.heads, spec.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        cos, sin = (
            torch.tensor(t, device=x.device, dtype=q.dtype)
            for t in rope_tables(spec.grid, spec.head_dim, spec.base)
        )
        q, k = rope_rotate_torch(q, cos, sin), rope_rotate_torch(k, cos, sin)
        if isinstance(mask, str):
            if mask != "causal":
                raise ValueError(f"mask: expected None, 'causal' or a boolean array, got {mask!r}")
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            if mask is not None:
                mask = torch.as_tensor(mask, device=x.device).to(torch.bool)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(o.transpose(1, 2).reshape(b, n, d))


def rope_rotate_mlx(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """:func:`rope_rotate_reference` in MLX."""
    *lead, n, hd = x.shape
    x = x.reshape(*lead, n, 2, 2, hd // 4)
    a, b = x[..., 0, :], x[..., 1, :]
    return mx.stack([a * cos - b * sin, b * cos + a * sin], axis=-2).reshape(*lead, n, hd)


@aimv2.backends.mlx.realizes(RoPEAttentionSpec)
class MLXRoPEAttention(mnn.Module):
    """MLX 2D-RoPE attention, the mirror image of :class:`TorchRoPEAttention`. The angle
    tables are made per call and never stored as ``mx.array`` attributes, which MLX
    would count as parameters.

    Example:
        >>> from mlx.utils import tree_flatten
        >>> spec = RoPEAttentionSpec(width=8, heads=2, grid=(2, 2))
        >>> m = aimv2.build(spec, backend="mlx")
        >>> m(mx.zeros((3, 4, 8)), "causal").shape, len(tree_flatten(m.parameters()))
        ((3, 4, 8), 2)
    """

    def __init__(self, spec: RoPEAttentionSpec) -> None:
        super().__init__()
        self.spec = spec
        self.qkv = mnn.Linear(spec.width, 3 * spec.width, bias=spec.qkv_bias)
        self.proj = mnn.Linear(spec.width, spec.width, bias=spec.proj_bias)

    def __call__(self, x: mx.array, mask: Any = None) -> mx.array:
        """(B, N, width), mask None | "causal" | bool (B, 1, N, N) -> (B, N, width)."""
        spec = self.spec
        b, n, d = x.shape
        spec.check_tokens(n)
        qkv = self.qkv(x).reshape(b, n, 3, spec.heads, spec.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        cos, sin = (
            mx.array(t.astype(np.float32)).astype(q.dtype)
            for t in rope_tables(spec.grid, spec.head_dim, spec.base)
        )
        q, k = rope_rotate_mlx(q, cos, sin), rope_rotate_mlx(k, cos, sin)
        if isinstance(mask, str) and mask != "causal":
            raise ValueError(f"mask: expected None, 'causal' or a boolean array, got {mask!r}")
        if mask is not None and not isinstance(mask, str):
            mask = mx.array(mask) if isinstance(mask, np.ndarray) else mask
            mask = mask.astype(mx.bool_)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=spec.head_dim**-0.5, mask=mask)
        return self.proj(o.transpose(0, 2, 1, 3).reshape(b, n, d))


@testing.inputs_for(RoPEAttentionSpec)
def rope_attention_inputs(
    spec: RoPEAttentionSpec, rng: np.random.Generator
) -> tuple[list[Any], dict[str, Any]]:
    """Example inputs for the parity kit: x (2, rows·cols, width) and a drawn mask (None,
    ``"causal"`` or an AIMv2 prefix mask) — the role's default draws any token count.

    Example:
        >>> args, kw = rope_attention_inputs(RoPEAttentionSpec(8, 2, grid=(2, 3)),
        ...                                  np.random.default_rng(0))
        >>> args[0].shape, sorted(kw)
        ((2, 6, 8), ['mask'])
    """
    n = spec.num_tokens
    x = rng.standard_normal((2, n, spec.width))
    return [x], {"mask": draw_mask(rng, n)}


def draw_mask(rng: np.random.Generator, n: int) -> Any:
    """None, ``"causal"`` or a boolean prefix mask (2, 1, n, n), drawn uniformly.

    Example:
        >>> draw_mask(np.random.default_rng(0), 1) in (None, "causal")
        True
    """
    choice = int(rng.integers(0, 3 if n >= 2 else 2))
    if choice == 0:
        return None
    if choice == 1:
        return "causal"
    return masks.prefix_mask(rng.integers(1, n, 2), n)
