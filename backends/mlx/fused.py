"""The MLX backend's speed paths, each behind one named function (mirror images of the
torch backend's :mod:`aimv2.backends.torch.fused`).

MLX's CPU ``exp`` is scalar code, so on the CPU the SwiGLU gate and the attention softmax
use :func:`cpu_exp`, an exp built from vectorized basic ops (Cody–Waite range reduction
and a degree-7 polynomial: within 2 float32 ulp). :func:`run_in_parts` splits CPU
batches over streams (:mod:`aimv2.backends.mlx.cpu`).

Example:
    >>> import mlx.core as mx
    >>> x = mx.array([-3.0, 0.0, 2.5])
    >>> bool(mx.allclose(cpu_exp(x), mx.exp(x), rtol=1e-6))
    True
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .cpu import run_in_parts

__all__ = [
    "cpu_exp",
    "fast_exp_ok",
    "add_residual",
    "qkv_heads",
    "swiglu",
    "sdpa",
    "run_in_parts",
]

_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693145751953125, 1.428606765330187e-06  # ln 2 = hi + lo, hi exact × k
# exp(r) ≈ 1 + r + r²·P(r) on |r| ≤ ln2/2 (Cephes expf)
_EXP_P = (
    1.9875691500e-4,
    1.3981999507e-3,
    8.3334519073e-3,
    4.1665795894e-2,
    1.6666665459e-1,
    5.0000001201e-1,
)


@mx.custom_function
def cpu_exp(x: mx.array) -> mx.array:
    """float32 exp from vectorized ops: exp(x) = 2^k · exp(r), r = x − k·ln2.

    Example:
        >>> cpu_exp(mx.array([0.0])).item()
        1.0
    """
    x = mx.clip(x, -87.0, 88.0)  # keeps 2^k a normal float; NaN passes through
    k = mx.floor(x * _LOG2E + 0.5)
    r = x - k * _LN2_HI - k * _LN2_LO
    poly = _EXP_P[0] * r + _EXP_P[1]
    for c in _EXP_P[2:]:
        poly = poly * r + c
    poly = poly * (r * r) + r + 1.0
    return poly * mx.left_shift(k.astype(mx.int32) + 127, 23).view(mx.float32)


@cpu_exp.vjp
def _cpu_exp_vjp(primals: Any, cotangent: mx.array, output: mx.array) -> tuple[mx.array]:
    return (cotangent * output,)


def fast_exp_ok(x: mx.array) -> bool:
    """Whether :func:`cpu_exp` serves ``x``: float32 on the CPU device.

    Example:
        >>> fast_exp_ok(mx.zeros((1,), dtype=mx.float16))
        False
    """
    return x.dtype == mx.float32 and mx.default_device() == mx.cpu


def sdpa(
    q: mx.array, k: mx.array, v: mx.array, mask: Any = None, scale: float | None = None
) -> mx.array:
    """Scaled dot-product attention; ``mask`` None, ``"causal"`` or boolean (True = see);
    ``scale`` defaults to head_dim^-0.5.

    Example:
        >>> q = mx.zeros((1, 1, 2, 1)); v = mx.array([[[[1.0], [3.0]]]])
        >>> sdpa(q, q, v, "causal")[0, 0, :, 0].tolist()
        [1.0, 2.0]
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if not fast_exp_ok(q):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    scores = (q * scale) @ k.swapaxes(-1, -2)
    if isinstance(mask, str):
        n_q, n_k = scores.shape[-2:]
        mask = mx.arange(n_k)[None, :] <= mx.arange(n_k - n_q, n_k)[:, None]
    if mask is not None:
        scores = mx.where(mask, scores, -mx.inf)
    e = cpu_exp(scores - scores.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ v


def add_residual(residual: mx.array, layer: nn.Module, x: mx.array, *args: Any) -> mx.array:
    """``residual + layer(x, *args)`` (MLX fuses elementwise adds in its own graph).

    Example:
        >>> add_residual(mx.ones((1, 2)), nn.Identity(), mx.ones((1, 2))).tolist()
        [[2.0, 2.0]]
    """
    return residual + layer(x, *args)


def qkv_heads(qkv: nn.Linear, x: mx.array, heads: int) -> tuple[mx.array, mx.array, mx.array]:
    """q, k, v (B, H, N, hd) of ``x`` (B, N, D) through a fused qkv projection (rows [0:D]
    q, [D:2D] k, [2D:3D] v).

    Example:
        >>> q, k, v = qkv_heads(nn.Linear(4, 12, bias=False), mx.ones((2, 3, 4)), heads=2)
        >>> q.shape
        (2, 2, 3, 2)
    """
    b, n, d = x.shape
    t = qkv(x).reshape(b, n, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
    return t[0], t[1], t[2]


def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """``silu(gate) * up``, through :func:`cpu_exp` on the CPU.

    Example:
        >>> swiglu(mx.zeros((2,)), mx.ones((2,))).tolist()
        [0.0, 0.0]
    """
    if fast_exp_ok(gate):
        return gate * up / (1.0 + cpu_exp(-gate))
    return nn.silu(gate) * up
