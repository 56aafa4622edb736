"""MLX realization of every aimv2 spec kind.

The module tree mirrors the torch backend, so ``tree_flatten(model.parameters())``
yields the same canonical names. The only layout difference is MLX's conv weight
(out, kH, kW, in); :func:`get_weights` / :func:`set_weights` convert it at this
boundary. Attention uses ``mx.fast.scaled_dot_product_attention``, norms
``mx.fast.rms_norm`` / ``mx.fast.layer_norm``. Constant masks are built per call and
never stored as attributes, so they stay out of the parameter tree.

On a Linux CPU, MLX runs each op on one thread per stream, and its elementwise and
exp-based ops (SiLU, softmax) are not vectorized across cores. The encoder and the
pre-training model therefore split a batch over one CPU stream per core
(:func:`cpu_streams`) with the BLAS single-threaded, so all cores work on every op; the
results are the same up to float32 summation order. MLX's CPU ``exp`` is scalar code,
so on the CPU the SwiGLU gate and the attention softmax use an exp built from vectorized
basic ops (Cody–Waite range reduction and a degree-7 polynomial: within 2 float32 ulp).
:func:`set_checkpointing` turns on activation checkpointing.

Example:
    >>> import aimv2, mlx.core as mx
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> model = aimv2.build(spec, backend="mlx")
    >>> model(mx.zeros((2, 3, 8, 8))).shape
    (2, 4, 32)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from aimv2 import masks, patches
from aimv2 import specs as S
from aimv2.inputs import check_features, check_tokens
from aimv2.weights import check_weights

__all__ = [
    "NAME",
    "REGISTRY",
    "build_module",
    "is_module",
    "get_weights",
    "set_weights",
    "load_weights",
    "weight_dtypes",
    "get_weight",
    "cast",
    "native_dtype",
    "inference",
    "default_device",
    "to_numpy",
    "from_numpy",
    "to_model",
    "set_checkpointing",
    "loss_and_grads",
    "output_and_grads",
    "cpu_streams",
    "set_cpu_streams",
    "restore_blas_threads",
    "plan_cpu_batch",
    "Trainer",
    "init_distributed",
    "pretrain_loss",
    "probe_loss",
]

NAME = "mlx"

REGISTRY: dict[str, type[nn.Module]] = {}


def _register(kind: str):
    def wrap(cls):
        REGISTRY[kind] = cls
        return cls

    return wrap


def _as_array(x: Any) -> mx.array:
    return x if isinstance(x, mx.array) else mx.array(np.asarray(x))


def _mask_arg(mask: Any) -> Any:
    if mask is None or isinstance(mask, str):
        return mask
    return _as_array(mask).astype(mx.bool_)


# --------------------------------------------------------------------------- CPU streams

_STREAMS: list[Any] = []
_CPU: dict[str, Any] = {"streams": None, "blas_default": None}
# (set, get) thread-count entry points of the optimized BLAS libraries aimv2 preloads
_BLAS_THREAD_FNS = (
    ("openblas_set_num_threads", "openblas_get_num_threads"),
    ("MKL_Set_Num_Threads", "MKL_Get_Max_Threads"),
    ("bli_thread_set_num_threads", "bli_thread_get_num_threads"),
)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def _blas_threads() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    """The BLAS's thread-count setter and getter, when one is in the global namespace."""
    try:
        lib = ctypes.CDLL(None)
    except OSError:
        return None
    for set_name, get_name in _BLAS_THREAD_FNS:
        setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
        if setter is not None and getter is not None:
            setter.argtypes, setter.restype = [ctypes.c_int], None
            getter.argtypes, getter.restype = [], ctypes.c_int
            return setter, getter
    return None


@functools.lru_cache(maxsize=1)
def _auto_streams() -> int:
    if not sys.platform.startswith("linux"):
        return 1  # macOS: Accelerate and the GPU parallelize on their own
    env = os.environ.get("AIMV2_MLX_CPU_STREAMS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"AIMV2_MLX_CPU_STREAMS={env!r}: expected an integer") from None
    cores = min(_cores(), 8)
    if cores < 2:
        return 1
    if _blas_threads() is not None:
        return cores  # an optimized BLAS whose threads we can set to one per stream
    from aimv2 import blas

    # No optimized BLAS mapped: MLX runs on the single-threaded reference BLAS of mlx[cpu].
    # An optimized one we cannot make single-threaded would be oversubscribed: no split.
    return cores if blas.preloaded_blas() is None else 1


def cpu_streams() -> int:
    """How many CPU streams the MLX encoder and pre-training model split a batch over.

    Automatic on Linux: one per core when the BLAS in the process is single-threaded or
    can be made so (OpenBLAS, MKL, BLIS), else 1; ``AIMV2_MLX_CPU_STREAMS`` or
    :func:`set_cpu_streams` overrides it. Only CPU-device computations are split.

    Example:
        >>> cpu_streams() >= 1
        True
    """
    return _CPU["streams"] if _CPU["streams"] is not None else _auto_streams()


def set_cpu_streams(count: int | None) -> None:
    """Split CPU batches over ``count`` streams (1 turns splitting off; None: automatic).

    Example:
        >>> set_cpu_streams(1); cpu_streams()
        1
        >>> set_cpu_streams(None)
    """
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise ValueError(f"count={count!r}: expected a positive integer or None")
    _CPU["streams"] = count
    if count == 1:
        restore_blas_threads()


def restore_blas_threads() -> None:
    """Give the BLAS back the thread count it had before a split batch set it to one.

    A split batch makes the BLAS single-threaded when its graph is built (the streams
    are the parallelism); the next batch run whole restores it by itself. Call this
    before timing or running your own large matmuls right after a split batch.

    Example:
        >>> restore_blas_threads()
    """
    threads = _blas_threads()
    if threads is not None and _CPU["blas_default"] is not None:
        threads[0](_CPU["blas_default"])
    _CPU["blas_default"] = None


def plan_cpu_batch(batch: int) -> int:
    """Into how many parts a CPU batch of ``batch`` examples is split, with the BLAS
    thread count set to match (one per stream when splitting, its own otherwise).

    The encoder and the pre-training model call this when they build their graph. A
    compiled training step builds its graph once, so a loop that runs other batch sizes
    between compiled steps should call it with the step's batch size before each step.

    Example:
        >>> plan_cpu_batch(1)
        1
    """
    if mx.default_device() != mx.cpu:
        return 1
    k = min(cpu_streams(), batch)
    if k <= 1:
        restore_blas_threads()
        return 1
    threads = _blas_threads()
    if threads is not None and _CPU["blas_default"] is None:
        _CPU["blas_default"] = threads[1]()
        threads[0](1)
    return k


def _rows(x: Any, rows: slice | None) -> Any:
    return x if x is None or rows is None else x[rows]


def _per_part(batch: int, fn: Callable[[slice | None], Any]) -> list[Any]:
    """``fn(rows)`` for each part of a CPU batch, each part on its own CPU stream
    (:func:`plan_cpu_batch`); ``[fn(None)]`` when the batch runs whole."""
    k = plan_cpu_batch(batch)
    if k <= 1:
        return [fn(None)]
    while len(_STREAMS) < k:
        _STREAMS.append(mx.new_stream(mx.cpu))
    parts, lo = [], 0
    for i in range(k):
        hi = lo + batch // k + (1 if i < batch % k else 0)
        with mx.stream(_STREAMS[i]):
            parts.append(fn(slice(lo, hi)))
        lo = hi
    return parts


# --------------------------------------------------------------------------- CPU exp

_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 0.693145751953125, 1.428606765330187e-06  # ln 2 = hi + lo, hi exact × k
# exp(r) ≈ 1 + r + r²·P(r) on |r| ≤ ln2/2 (Cephes expf)
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1)  # fmt: skip


@mx.custom_function
def _cpu_exp(x: mx.array) -> mx.array:
    """float32 exp from vectorized ops: exp(x) = 2^k · exp(r), r = x − k·ln2."""
    x = mx.clip(x, -87.0, 88.0)  # keeps 2^k a normal float; NaN passes through
    k = mx.floor(x * _LOG2E + 0.5)
    r = x - k * _LN2_HI - k * _LN2_LO
    poly = _EXP_P[0] * r + _EXP_P[1]
    for c in _EXP_P[2:]:
        poly = poly * r + c
    poly = poly * (r * r) + r + 1.0
    return poly * mx.left_shift(k.astype(mx.int32) + 127, 23).view(mx.float32)


@_cpu_exp.vjp
def _cpu_exp_vjp(primals: Any, cotangent: mx.array, output: mx.array) -> tuple[mx.array]:
    return (cotangent * output,)


def _fast_exp_ok(x: mx.array) -> bool:
    return x.dtype == mx.float32 and mx.default_device() == mx.cpu


def _attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: Any) -> mx.array:
    """Scaled dot-product attention; ``mask`` None, ``"causal"`` or boolean (True = see)."""
    if not _fast_exp_ok(q):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    scores = (q * scale) @ k.swapaxes(-1, -2)
    if isinstance(mask, str):
        n_q, n_k = scores.shape[-2:]
        mask = mx.arange(n_k)[None, :] <= mx.arange(n_k - n_q, n_k)[:, None]
    if mask is not None:
        scores = mx.where(mask, scores, -mx.inf)
    e = _cpu_exp(scores - scores.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ v


@_register("norm")
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


@_register("patch_embed")
class Patchifier(nn.Module):
    """Conv2d(kernel = stride = patch) on NHWC → (B, N, D) row-major → norm."""

    def __init__(self, spec: S.PatchEmbedSpec):
        super().__init__()
        self.spec = spec
        p = spec.patch_size
        self.proj = nn.Conv2d(spec.in_channels, spec.width, p, stride=p, bias=spec.bias)
        self.norm = Norm(spec.norm_spec)

    def __call__(self, images: mx.array) -> mx.array:
        x = self.proj(images.transpose(0, 2, 3, 1))  # (B, h, w, D)
        b, h, w, d = x.shape
        return self.norm(x.reshape(b, h * w, d))


@functools.lru_cache(maxsize=64)
def _sincos(width: int, rows: int, cols: int, temperature: float, dtype: Any) -> mx.array:
    table = patches.sincos_2d(width, rows, cols, temperature, np.float32)
    return mx.array(table).astype(dtype)[None]


@_register("pos_embed")
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


class Preprocessor(PositionEmbedding):
    """``preprocessor``: the patchifier plus the position embedding (official names)."""

    def __init__(self, patch_spec: S.PatchEmbedSpec, pos_spec: S.PosEmbedSpec):
        super().__init__(pos_spec)
        self.patchifier = Patchifier(patch_spec)

    def __call__(self, images: mx.array) -> mx.array:  # type: ignore[override]
        p = self.patchifier.spec.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        return super().__call__(self.patchifier(images), grid)


@_register("attention")
class Attention(nn.Module):
    """Fused-qkv multi-head self-attention through ``mx.fast.scaled_dot_product_attention``."""

    def __init__(self, spec: S.AttentionSpec):
        super().__init__()
        self.spec = spec
        self.qkv = nn.Linear(spec.width, 3 * spec.width, bias=spec.qkv_bias)
        self.proj = nn.Linear(spec.width, spec.width, bias=spec.proj_bias)

    def __call__(self, x: mx.array, mask: Any = None) -> mx.array:
        b, n, d = x.shape
        h = self.spec.heads
        qkv = self.qkv(x).reshape(b, n, 3, h, d // h).transpose(2, 0, 3, 1, 4)
        o = _attention(qkv[0], qkv[1], qkv[2], self.spec.head_dim**-0.5, _mask_arg(mask))
        return self.proj(o.transpose(0, 2, 1, 3).reshape(b, n, d))


@_register("ffn")
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
        if self.spec.type == "swiglu":
            gate, up = self.fc1(x), self.fc3(x)
            if _fast_exp_ok(gate):
                return self.fc2(gate * up / (1.0 + _cpu_exp(-gate)))
            return self.fc2(nn.silu(gate) * up)
        return self.fc2(nn.gelu(self.fc1(x)))


@_register("block")
class Block(nn.Module):
    """Pre-norm block: ``x += attn(norm_1 x); x += mlp(norm_2 x)``."""

    def __init__(self, spec: S.BlockSpec):
        super().__init__()
        self.spec = spec
        self.norm_1 = Norm(spec.norm)
        self.attn = Attention(spec.attn)
        self.norm_2 = Norm(spec.norm)
        self.mlp = FeedForward(spec.mlp)

    def __call__(self, x: mx.array, mask: Any = None) -> mx.array:
        x = x + self.attn(self.norm_1(x), mask)
        return x + self.mlp(self.norm_2(x))


def _call_block(owner: nn.Module, blk: Block, x: mx.array, mask: Any) -> mx.array:
    """``blk(x, mask)``; with ``owner.checkpoint`` the block's activations are
    recomputed in the backward pass instead of kept."""
    if owner.checkpoint:
        return nn.utils.checkpoint(blk, lambda y: blk(y, mask))(x)
    return blk(x, mask)


@_register("trunk")
class Trunk(nn.Module):
    """``blocks`` then ``post_trunk_norm``. ``checkpoint = True`` recomputes each
    block's activations in the backward pass (see :func:`set_checkpointing`)."""

    def __init__(self, spec: S.TrunkSpec):
        super().__init__()
        self.spec = spec
        self.blocks = [Block(spec.block) for _ in range(spec.depth)]
        self.post_trunk_norm = Norm(spec.final_norm_spec)
        self.checkpoint = False

    def __call__(self, x: mx.array, mask: Any = None, return_blocks: bool = False) -> Any:
        mask = _mask_arg(mask)
        outs = []
        for blk in self.blocks:
            x = _call_block(self, blk, x, mask)
            if return_blocks:
                outs.append(x)
        y = self.post_trunk_norm(x)
        return (y, outs) if return_blocks else y


@_register("attn_pool")
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
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=(d // h) ** -0.5)
        return self.linear(o.transpose(0, 2, 1, 3).reshape(b, -1, d).mean(axis=1))


@_register("probe")
class Probe(nn.Module):
    """Attentive probe (``pool``) or linear probe on mean-pooled features (``linear``)."""

    def __init__(self, spec: S.ProbeSpec):
        super().__init__()
        self.spec = spec
        if spec.type == "attentive":
            self.pool = AttentionPool(spec.pool)
        else:
            self.linear = nn.Linear(spec.width, spec.num_classes, bias=True)

    def __call__(self, features: mx.array) -> mx.array:
        check_features(features.shape, self.spec.width)
        if self.spec.type == "attentive":
            return self.pool(features)
        return self.linear(features.mean(axis=1))


def _prefix_values(prefix_len: Any, b: int, n: int) -> np.ndarray:
    if isinstance(prefix_len, mx.array):
        prefix_len = np.array(prefix_len)
    return masks.check_prefix_len(prefix_len, b, n)


def _prefix_mask(m: mx.array, n: int) -> mx.array:
    j = mx.arange(n)
    return ((j[None, None, :] < m[:, None, None]) | (j[None, None, :] <= j[None, :, None]))[:, None]


def _check_images(spec: S.EncoderSpec, images: mx.array) -> None:
    kind = "f" if mx.issubdtype(images.dtype, mx.floating) else "i"
    finite = kind != "f" or bool(mx.all(mx.isfinite(images)).item())
    spec.check_images(tuple(images.shape), finite, kind)


@_register("encoder")
class Encoder(nn.Module):
    """The AIMv2 vision encoder: ``preprocessor``, ``trunk``, optional ``head``."""

    def __init__(self, spec: S.EncoderSpec):
        super().__init__()
        self.spec = spec
        self.preprocessor = Preprocessor(spec.patchifier, spec.pos_embed)
        self.trunk = Trunk(spec.trunk)
        if spec.head is not None:
            self.head = AttentionPool(spec.head)

    def __call__(
        self,
        images: mx.array,
        prefix_len: Any = None,
        return_blocks: bool = False,
        check: bool = True,
    ) -> Any:
        """(B, C, H, W) → (B, N, D) after the final norm (and block outputs if asked).

        ``prefix_len`` (int or one per example, 1…N−1) turns on prefix attention.
        ``check=False`` skips validation (compiled steps; prefix_len then an mx.array).
        """
        images = _as_array(images)
        if check:
            _check_images(self.spec, images)
        b = images.shape[0]
        m = None
        if prefix_len is not None:
            p = self.spec.patch_size
            n = (images.shape[-2] // p) * (images.shape[-1] // p)
            m = prefix_len if not check else mx.array(_prefix_values(prefix_len, b, n))
            m = mx.broadcast_to(_as_array(m), (b,))
        parts = _per_part(
            b, lambda rows: self._forward(_rows(images, rows), _rows(m, rows), return_blocks)
        )
        if len(parts) == 1:
            return parts[0]
        if not return_blocks:
            return mx.concatenate(parts, axis=0)
        y = mx.concatenate([part[0] for part in parts], axis=0)
        per_block = zip(*(part[1] for part in parts), strict=True)
        blocks = [mx.concatenate(outs, axis=0) for outs in per_block]
        return y, blocks

    def _forward(self, images: mx.array, m: mx.array | None, return_blocks: bool) -> Any:
        x = self.preprocessor(images.astype(self.preprocessor.patchifier.proj.weight.dtype))
        mask = None if m is None else _prefix_mask(m, x.shape[1])
        return self.trunk(x, mask, return_blocks)


@_register("decoder")
class Decoder(nn.Module):
    """Causal multimodal decoder over [image_proj(features); start; text + positions]."""

    def __init__(self, spec: S.DecoderSpec):
        super().__init__()
        self.spec = spec
        d = spec.width
        self.image_proj = nn.Linear(spec.in_width, d, bias=True)
        self.text_embed = nn.Embedding(spec.vocab_size, d)
        self.start_token = mx.zeros((1, 1, d))
        self.pos_embed = mx.zeros((1, spec.context_length + 1, d))
        self.blocks = [Block(spec.block) for _ in range(spec.depth)]
        self.norm = Norm(spec.final_norm_spec)
        self.checkpoint = False

    def __call__(self, features: mx.array, tokens: Any = None, check: bool = True) -> Any:
        """→ (image hidden (B, N, D), text hidden (B, T, D) predicting tokens 1…T, or None)."""
        if check:
            check_features(features.shape, self.spec.in_width)
        b, n, _ = features.shape
        h = self.image_proj(features)
        if tokens is not None:
            tokens = _as_array(tokens)
            if check:
                _check_tokens(tokens, b, self.spec)
            t = tokens.shape[1]
            start = mx.broadcast_to(self.start_token, (b, 1, self.spec.width))
            text = mx.concatenate([start, self.text_embed(tokens)], axis=1)
            h = mx.concatenate([h, text + self.pos_embed[:, : t + 1]], axis=1)
        for blk in self.blocks:
            h = _call_block(self, blk, h, "causal")
        h = self.norm(h)
        return h[:, :n], (h[:, n:-1] if tokens is not None else None)


def _check_tokens(tokens: mx.array, batch: int, spec: S.DecoderSpec) -> None:
    if tokens.dtype == mx.bool_:
        kind = "b"
    elif mx.issubdtype(tokens.dtype, mx.integer):
        kind = "i"
    else:
        kind = "f"
    ok = kind == "i" and tokens.size > 0
    lo = int(tokens.min().item()) if ok else None
    hi = int(tokens.max().item()) if ok else None
    check_tokens(
        tuple(tokens.shape),
        kind,
        lo,
        hi,
        batch=batch,
        vocab_size=spec.vocab_size,
        context_length=spec.context_length,
    )


def patch_targets(spec: S.ModelSpec, images: mx.array) -> mx.array:
    """Pixel targets for patches 1…N−1: patchified, per-patch standardized if asked."""
    b, c, hh, ww = images.shape
    p = spec.encoder.patch_size
    x = images.reshape(b, c, hh // p, p, ww // p, p).transpose(0, 2, 4, 3, 5, 1)
    x = x.reshape(b, (hh // p) * (ww // p), p * p * c)[:, 1:].astype(mx.float32)
    obj = spec.pixel
    if obj.patch_norm:
        mean = x.mean(axis=-1, keepdims=True)
        var = mx.var(x, axis=-1, keepdims=True, ddof=1 if obj.unbiased else 0)
        x = (x - mean) / mx.sqrt(var + obj.eps)
    return x


@_register("model")
class PretrainModel(nn.Module):
    """``encoder``, ``decoder``, ``pixel_head``, ``text_head`` and both losses."""

    def __init__(self, spec: S.ModelSpec):
        super().__init__()
        self.spec = spec
        self.encoder = Encoder(spec.encoder)
        self.decoder = Decoder(spec.decoder)
        d = spec.decoder.width
        if spec.has_pixel_head:
            self.pixel_head = nn.Linear(d, spec.encoder.patchifier.patch_dim, bias=False)
        if spec.has_text_head:
            self.text_head = nn.Linear(d, spec.decoder.vocab_size, bias=False)

    def __call__(
        self,
        images: mx.array,
        tokens: Any = None,
        prefix_len: Any = None,
        check: bool = True,
    ) -> dict[str, Any]:
        """→ dict(loss, pixel_loss, text_loss, pixel_pred (B, N−1, p²C), text_logits (B, T, V)).

        With ``check=False`` (compiled steps) ``prefix_len`` must be an int32 mx.array (B,).
        """
        spec = self.spec
        images = _as_array(images)
        if check:
            _check_images(spec.encoder, images)
            if spec.has_text_head and tokens is None:
                raise ValueError("tokens: required by a model with a text objective")
        if spec.prefix.mode == "prefix":
            if prefix_len is None:
                raise ValueError(
                    "prefix_len: required by a prefix-attention model (one per example)"
                )
        else:
            prefix_len = None
        b = images.shape[0]
        p = spec.encoder.patch_size
        n = (images.shape[2] // p) * (images.shape[3] // p)
        m = None
        if prefix_len is not None:
            m = mx.array(_prefix_values(prefix_len, b, n)) if check else _as_array(prefix_len)
            m = mx.broadcast_to(m, (b,))
        if not spec.has_text_head:
            tokens = None
        elif tokens is not None:
            tokens = _as_array(tokens)
            if check:
                _check_tokens(tokens, b, spec.decoder)
        parts = _per_part(
            b,
            lambda rows: self._partial(_rows(images, rows), _rows(tokens, rows), _rows(m, rows), n),
        )
        out: dict[str, Any] = {"pixel_pred": None, "text_logits": None}
        for key in ("pixel", "text"):
            if parts[0][f"{key}_sum"] is None:
                out[f"{key}_loss"] = mx.array(0.0)
                continue
            total = sum(part[f"{key}_sum"] for part in parts)
            count = sum(part[f"{key}_count"] for part in parts)
            out[f"{key}_loss"] = total / mx.maximum(count, 1.0)
            outputs = [part[f"{key}_out"] for part in parts]
            name = "pixel_pred" if key == "pixel" else "text_logits"
            out[name] = outputs[0] if len(outputs) == 1 else mx.concatenate(outputs, axis=0)
        out["loss"] = spec.text.weight * out["text_loss"] + spec.pixel.weight * out["pixel_loss"]
        return out

    def _partial(
        self, images: mx.array, tokens: mx.array | None, m: mx.array | None, n: int
    ) -> dict[str, Any]:
        """Both objectives' sums and counts over one (part of a) batch."""
        spec = self.spec
        feats = self.encoder._forward(images, m, False)
        img_h, txt_h = self.decoder(feats, tokens, check=False)
        out: dict[str, Any] = {"pixel_sum": None, "text_sum": None}
        if spec.has_pixel_head:
            pred = self.pixel_head(img_h[:, :-1])
            per_patch = mx.square(pred.astype(mx.float32) - patch_targets(spec, images)).mean(-1)
            if spec.pixel.outside_prefix_only and m is not None:
                t = mx.arange(1, n)
                counted = (t[None, :] >= m[:, None]).astype(mx.float32)
            else:
                counted = mx.ones_like(per_patch)
            out.update(pixel_sum=(per_patch * counted).sum(), pixel_count=counted.sum())
            out["pixel_out"] = pred
        if spec.has_text_head:
            logits = self.text_head(txt_h)
            lf = logits.astype(mx.float32)
            picked = mx.take_along_axis(lf, tokens[..., None].astype(mx.int32), axis=-1)[..., 0]
            ce = mx.logsumexp(lf, axis=-1) - picked
            valid = (tokens != spec.text.pad_id).astype(mx.float32)
            out.update(text_sum=(ce * valid).sum(), text_count=valid.sum(), text_out=logits)
        return out


def build_module(spec: S.Spec) -> nn.Module:
    """The module realizing ``spec`` (float32, weights not yet set).

    Example:
        >>> build_module(S.NormSpec(width=4)).weight.shape
        (4,)
    """
    if isinstance(spec, S.ModelSpec) and spec.decoder is None:
        return Encoder(spec.encoder)
    if spec.kind not in REGISTRY:
        raise TypeError(f"spec: the MLX backend has no realization for kind {spec.kind!r}")
    return REGISTRY[spec.kind](spec)


def is_module(obj: Any) -> bool:
    """True for an MLX module built here.

    Example:
        >>> is_module(build_module(S.NormSpec(width=4)))
        True
    """
    return isinstance(obj, nn.Module) and isinstance(getattr(obj, "spec", None), S.Spec)


def to_numpy(x: mx.array) -> np.ndarray:
    """An array as NumPy (bf16/fp16 as float32).

    Example:
        >>> to_numpy(mx.ones((2,), dtype=mx.bfloat16)).dtype
        dtype('float32')
    """
    if x.dtype in (mx.bfloat16, mx.float16):
        x = x.astype(mx.float32)
    return np.array(x)


def from_numpy(x: np.ndarray, like: mx.array | None = None) -> mx.array:
    """A NumPy array as an MLX array (float cast to ``like``'s dtype if given).

    Example:
        >>> from_numpy(np.zeros(2, np.float32)).dtype
        mlx.core.float32
    """
    a = mx.array(np.asarray(x))
    if like is not None and mx.issubdtype(a.dtype, mx.floating):
        a = a.astype(like.dtype)
    return a


def to_model(module: nn.Module, x: np.ndarray) -> mx.array:
    """``x`` as an MLX array (floats in ``module``'s parameter dtype).

    Example:
        >>> to_model(build_module(S.NormSpec(width=2)), np.zeros(2)).dtype
        mlx.core.float32
    """
    return from_numpy(x, tree_flatten(module.parameters())[0][1])


def get_weights(module: nn.Module) -> dict[str, np.ndarray]:
    """Canonical name → NumPy array (torch layouts: conv weights back to (out, in, kH, kW)).

    Example:
        >>> sorted(get_weights(build_module(S.NormSpec(width=4, type="layer"))))
        ['bias', 'weight']
    """
    out = {}
    for name, value in tree_flatten(module.parameters()):
        arr = to_numpy(value)
        out[name] = arr.transpose(0, 3, 1, 2) if arr.ndim == 4 else arr
    return out


def set_weights(module: nn.Module, weights: Mapping[str, Any]) -> None:
    """Load canonical weights (torch layouts) after a strict name/shape check.

    Example:
        >>> m = build_module(S.NormSpec(width=2))
        >>> set_weights(m, {"weight": np.array([2.0, 3.0])})
        >>> m.weight.tolist()
        [2.0, 3.0]
    """
    check_weights(module.spec, weights)
    current = dict(tree_flatten(module.parameters()))
    new = []
    for name, value in weights.items():
        arr = value if isinstance(value, mx.array) else mx.array(np.asarray(value))
        if arr.ndim == 4:
            arr = arr.transpose(0, 2, 3, 1)
        new.append((name, arr.astype(current[name].dtype)))
    module.update(tree_unflatten(new))
    mx.eval(module.parameters())


def cast(module: nn.Module, dtype: Any = None, device: Any = None) -> nn.Module:
    """Cast floating parameters to ``dtype`` (MLX has unified memory; ``device`` is ignored
    beyond ``mx.set_default_device``).

    Example:
        >>> cast(build_module(S.NormSpec(width=2)), dtype=mx.float16).weight.dtype
        mlx.core.float16
    """
    if device is not None:
        mx.set_default_device(device)
    if dtype is not None:
        module.set_dtype(dtype)
    return module


def loss_and_grads(
    model: nn.Module, images: Any, tokens: Any = None, prefix_len: Any = None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One forward and backward of a pre-training model: float losses and canonical grads
    (torch layouts).

    Example:
        >>> import aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> m = aimv2.build(spec, backend="mlx")
        >>> img, tok = np.zeros((1, 3, 16, 16), np.float32), np.ones((1, 4), np.int64)
        >>> losses, grads = loss_and_grads(m, img, tok, [3])
        >>> grads["decoder.start_token"].shape
        (1, 1, 32)
    """
    images = _as_array(images)
    tokens = None if tokens is None else _as_array(tokens)
    parts: dict[str, mx.array] = {}

    def loss_fn(imgs, toks):
        out = model(imgs, toks, prefix_len)
        parts.update({k: out[k] for k in ("pixel_loss", "text_loss")})
        return out["loss"]

    loss, grads = nn.value_and_grad(model, loss_fn)(images, tokens)
    mx.eval(loss, grads, parts)
    flat = {}
    for name, g in tree_flatten(grads):
        arr = to_numpy(g)
        flat[name] = arr.transpose(0, 3, 1, 2) if arr.ndim == 4 else arr
    losses = {"loss": float(loss.item())}
    losses.update({k: float(v.item()) for k, v in parts.items()})
    return losses, flat


def set_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Turn activation checkpointing on (or off) for every block stack in ``model``
    (encoder trunk, decoder): each block's activations are recomputed in the backward
    pass instead of kept. For the large presets. Returns how many stacks were switched.

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.presets.get("aimv2-test-tiny"), backend="mlx")
        >>> set_checkpointing(m)
        2
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an MLX module, got {type(model).__name__}")
    count = 0
    for _, module in model.named_modules():
        # the block stacks (Trunk, Decoder) carry a ``checkpoint`` flag; matched by the
        # flag, not the class, so a second import of this module (doctests) agrees
        if isinstance(getattr(module, "checkpoint", None), bool):
            module.checkpoint = bool(enabled)
            count += 1
    return count


_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def native_dtype(dtype: Any) -> Any:
    """The MLX dtype for a dtype name (``"bfloat16"``…) or an ``mx.Dtype``; None stays None.
    ``float64`` is refused: MLX computes it on the CPU only.

    Example:
        >>> native_dtype("bfloat16")
        mlx.core.bfloat16
    """
    if dtype is None or isinstance(dtype, mx.Dtype):
        return dtype
    key = str(dtype).lower().removeprefix("mlx.core.")
    key = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
           "float": "float32"}.get(key, key)  # fmt: skip
    if key not in _DTYPES:
        raise TypeError(
            f"dtype={dtype!r}: expected an mlx.core.Dtype or one of {sorted(_DTYPES)}"
        )
    return _DTYPES[key]


def inference() -> Any:
    """A context for inference calls (MLX builds no graph outside its grad transforms).

    Example:
        >>> with inference():
        ...     mx.ones((1,)).shape
        (1,)
    """
    return contextlib.nullcontext()


def default_device() -> str:
    """The device MLX computes on by default: ``"gpu"`` or ``"cpu"``.

    Example:
        >>> default_device() in ("gpu", "cpu")
        True
    """
    return "gpu" if mx.default_device() == mx.gpu else "cpu"


def weight_dtypes(module: nn.Module) -> dict[str, str]:
    """Canonical name → dtype name of every parameter.

    Example:
        >>> m = build_module(S.NormSpec(width=2)); m.set_dtype(mx.bfloat16)
        >>> weight_dtypes(m)
        {'weight': 'bfloat16'}
    """
    return {
        n: _DTYPE_NAMES.get(p.dtype, str(p.dtype)) for n, p in tree_flatten(module.parameters())
    }


def get_weight(module: nn.Module, name: str) -> np.ndarray:
    """One parameter as a canonical NumPy array (torch layout; bf16/fp16 as float32).

    Example:
        >>> get_weight(build_module(S.NormSpec(width=2)), "weight").shape
        (2,)
    """
    params = dict(tree_flatten(module.parameters()))
    if name not in params:
        raise KeyError(f"name={name!r}: not a parameter of this {type(module).__name__}")
    arr = to_numpy(params[name])
    return arr.transpose(0, 3, 1, 2) if arr.ndim == 4 else arr


def load_weights(
    spec: S.Spec,
    tensors: Any,
    *,
    dtype: Any = None,
    device: Any = None,
) -> nn.Module:
    """Build ``spec`` in ``dtype`` and stream canonical ``(name, array)`` pairs into it one
    at a time (MLX is lazy: the module's own initial values are never computed); every
    parameter must arrive exactly once. ``device`` must be None (unified memory).

    Example:
        >>> m = load_weights(S.NormSpec(width=2), [("weight", np.ones(2))], dtype="bfloat16")
        >>> m.weight.dtype
        mlx.core.bfloat16
    """
    if device is not None:
        raise ValueError("device: the MLX backend takes no device (its memory is unified)")
    target = native_dtype(dtype)
    module = build_module(spec)
    if target is not None:
        module.set_dtype(target)
    current = dict(tree_flatten(module.parameters()))
    seen: set[str] = set()
    for name, arr in tensors:
        if name not in current:
            raise KeyError(f"load_weights: {name!r} is not a parameter of {spec.kind!r}")
        if name in seen:
            raise KeyError(f"load_weights: {name!r} arrived twice")
        seen.add(name)
        arr = np.asarray(arr)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        value = mx.array(arr)
        if value.ndim == 4:
            value = value.transpose(0, 2, 3, 1)
        value = value.astype(current[name].dtype)
        mx.eval(value)
        module.update(tree_unflatten([(name, value)]))
    missing = sorted(set(current) - seen)
    if missing:
        raise KeyError(f"load_weights: {len(missing)} parameters never arrived: {missing[:5]}")
    return module


def output_and_grads(
    module: nn.Module, inputs: Any, cotangent: np.ndarray, **kwargs: Any
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``module(*inputs, **kwargs)`` and the gradient of ``sum(output · cotangent)`` with
    respect to every parameter (canonical names, torch layouts).

    Example:
        >>> m = build_module(S.NormSpec(width=2)); set_weights(m, {"weight": np.ones(2)})
        >>> out, g = output_and_grads(m, [np.array([[3.0, 4.0]], np.float32)], np.ones((1, 2)))
        >>> [round(float(v), 3) for v in g["weight"]]
        [0.849, 1.131]
    """
    args = [_as_array(x) if isinstance(x, np.ndarray) else x for x in inputs]
    kw = {k: _as_array(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    cot = mx.array(np.asarray(cotangent, dtype=np.float32))
    outputs: list[mx.array] = []

    def loss_fn(*xs: Any) -> mx.array:
        out = module(*xs, **kw)
        outputs.append(out)
        return (out.astype(mx.float32) * cot).sum()

    _, grads = nn.value_and_grad(module, loss_fn)(*args)
    mx.eval(grads, outputs)
    flat = {}
    for name, g in tree_flatten(grads):
        arr = to_numpy(g)
        flat[name] = arr.transpose(0, 3, 1, 2) if arr.ndim == 4 else arr
    return to_numpy(outputs[-1]), flat


from .train import Trainer, init_distributed, pretrain_loss, probe_loss  # noqa: E402
