"""The torch backend's speed paths, each behind one named function.

The layers call these where the MLX backend calls its mirror-image functions of the same
names; here they pick a faster kernel sequence when it gives the same numbers:

- :func:`add_residual`: the residual add of the attention output projection and of the
  feed-forward down projection is done by the GEMM itself (``addmm``, beta = 1).
- :func:`qkv_heads`: at inference q, k and v come from one GEMM per third of the fused
  qkv weight (row slices are views), so they come out densely packed for the kernel.
- :func:`swiglu`: at inference the SiLU gate and product run in place.
- :func:`run_in_parts`: torch runs a batch whole (its kernels use every core).

Example:
    >>> import torch
    >>> from torch import nn
    >>> layer = nn.Linear(4, 4, bias=False)
    >>> x, r = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    >>> bool(torch.allclose(linear_residual(layer, x, r), r + layer(x), atol=1e-6))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "needs_grad",
    "linear_residual",
    "add_residual",
    "qkv_heads",
    "swiglu",
    "sdpa",
    "run_in_parts",
]


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record an op on ``tensors``.

    Example:
        >>> needs_grad(torch.ones(1)), needs_grad(torch.ones(1, requires_grad=True))
        (False, True)
    """
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _plain_matmul(x: torch.Tensor) -> bool:
    """Whether ``addmm`` may fuse a residual add here: under autocast it would cast the
    residual stream down to the autocast dtype, so the unfused path is kept there."""
    return not torch.is_autocast_enabled(x.device.type)


def linear_residual(layer: nn.Linear, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + layer(x)`` with the add done by the GEMM (beta = 1) when possible.

    Example:
        >>> layer = nn.Linear(2, 2, bias=True)
        >>> linear_residual(layer, torch.zeros(1, 2), torch.ones(1, 2)).shape
        torch.Size([1, 2])
    """
    plain = type(layer) is nn.Linear  # an adapter (e.g. LoRA) around a Linear runs its own call
    if not plain or layer.bias is not None or not _plain_matmul(x) or residual.dtype != x.dtype:
        return residual + layer(x)
    shape = residual.shape
    out = torch.addmm(residual.reshape(-1, shape[-1]), x.reshape(-1, x.shape[-1]), layer.weight.t())
    return out.view(shape)


def add_residual(residual: torch.Tensor, layer: nn.Module, x: torch.Tensor, *args: Any) -> Any:
    """``residual + layer(x, *args)``. This backend's attention and feed-forward modules
    offer ``forward_residual(x, residual, *args)``, which adds inside their last GEMM;
    any other (user) module is called plainly.

    Example:
        >>> add_residual(torch.ones(1, 2), nn.Identity(), torch.ones(1, 2)).tolist()
        [[2.0, 2.0]]
    """
    fused = getattr(layer, "forward_residual", None)
    if fused is not None:
        return fused(x, residual, *args)
    return residual + layer(x, *args)


def qkv_heads(
    qkv: nn.Linear, x: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, H, N, hd) of ``x`` (B, N, D) through a fused qkv projection (rows [0:D]
    q, [D:2D] k, [2D:3D] v).

    Example:
        >>> q, k, v = qkv_heads(nn.Linear(4, 12, bias=False), torch.ones(2, 3, 4), heads=2)
        >>> tuple(q.shape)
        (2, 2, 3, 2)
    """
    b, n, d = x.shape
    if type(qkv) is not nn.Linear or needs_grad(x, qkv.weight):
        return qkv(x).view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
    # inference: one GEMM per third of the fused weight (row slices are views), so q, k
    # and v come out densely packed for the attention kernel
    w, bias = qkv.weight, qkv.bias
    q, k, v = (
        F.linear(x, w[i * d : (i + 1) * d], None if bias is None else bias[i * d : (i + 1) * d])
        .view(b, n, heads, d // heads)
        .transpose(1, 2)
        for i in range(3)
    )
    return q, k, v


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``; in place when no autograd graph is kept.

    Example:
        >>> swiglu(torch.zeros(2), torch.ones(2)).tolist()
        [0.0, 0.0]
    """
    if needs_grad(gate, up):
        return F.silu(gate) * up
    return F.silu(gate, inplace=True).mul_(up)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None) -> torch.Tensor:
    """Scaled dot-product attention; ``mask`` None, ``"causal"`` or boolean (True = see).

    Example:
        >>> q = torch.zeros(1, 1, 2, 1); v = torch.tensor([[[[1.0], [3.0]]]])
        >>> sdpa(q, q, v, "causal")[0, 0, :, 0].tolist()
        [1.0, 2.0]
    """
    if isinstance(mask, str):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def run_in_parts(batch: int, fn: Callable[[slice | None], Any]) -> list[Any]:
    """``[fn(None)]``: a torch batch runs whole (the MLX backend splits CPU batches over
    streams here).

    Example:
        >>> run_in_parts(4, lambda rows: rows)
        [None]
    """
    return [fn(None)]
