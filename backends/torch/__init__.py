"""PyTorch realization of every aimv2 spec kind.

Module attribute names follow the canonical names of :mod:`aimv2.weights`, so
``named_parameters()`` yields them directly (official AIMv2 names for the encoder).
Attention runs through ``scaled_dot_product_attention``; without a prefix the
encoder passes no mask, so the fused kernels stay available. The residual adds of the
attention output projection and of the feed-forward down projection are fused into
their matmuls (``addmm``); without autograd the SwiGLU product runs in place.
:func:`set_checkpointing` turns on activation checkpointing per block, and
:func:`tune_cpu_allocator` stops glibc from returning (and re-faulting) the memory of
every freed activation — on CPUs that alone is worth 20–40% of a forward.

Example:
    >>> import aimv2, torch
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> model = aimv2.build(spec, backend="torch")
    >>> model(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 4, 32])
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

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
    "tune_cpu_allocator",
    "Trainer",
    "init_distributed",
    "pretrain_loss",
    "probe_loss",
]

NAME = "torch"

REGISTRY: dict[str, type[nn.Module]] = {}


def _register(kind: str):
    def wrap(cls):
        REGISTRY[kind] = cls
        return cls

    return wrap


def _linear(n_in: int, n_out: int, bias: bool) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=bias)


def _as_tensor(x: Any, like: torch.Tensor | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if like is not None:
        x = x.to(device=like.device, dtype=like.dtype if x.is_floating_point() else x.dtype)
    return x


def _plain_matmul(x: torch.Tensor) -> bool:
    """Whether ``addmm`` may fuse a residual add here: under autocast it would cast the
    residual stream down to the autocast dtype, so the unfused path is kept there."""
    return not torch.is_autocast_enabled(x.device.type)


def _linear_residual(layer: nn.Linear, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``residual + layer(x)`` with the add done by the GEMM (beta = 1) when possible."""
    if layer.bias is not None or not _plain_matmul(x) or residual.dtype != x.dtype:
        return residual + layer(x)
    shape = residual.shape
    out = torch.addmm(residual.reshape(-1, shape[-1]), x.reshape(-1, x.shape[-1]), layer.weight.t())
    return out.view(shape)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _mask_arg(mask: Any, device: torch.device) -> Any:
    if mask is None or isinstance(mask, str):
        return mask
    return _as_tensor(mask).to(device=device, dtype=torch.bool)


@_register("norm")
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


@_register("patch_embed")
class Patchifier(nn.Module):
    """Conv2d(kernel = stride = patch) → (B, N, D) row-major → norm."""

    def __init__(self, spec: S.PatchEmbedSpec):
        super().__init__()
        self.spec = spec
        p = spec.patch_size
        self.proj = nn.Conv2d(spec.in_channels, spec.width, p, stride=p, bias=spec.bias)
        self.norm = Norm(spec.norm_spec)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2)
        return self.norm(x)


@functools.lru_cache(maxsize=64)
def _sincos(width: int, rows: int, cols: int, temperature: float, device: str, dtype):
    table = patches.sincos_2d(width, rows, cols, temperature, np.float32)
    return torch.from_numpy(table).to(device=device, dtype=dtype)[None]


@_register("pos_embed")
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


class Preprocessor(PositionEmbedding):
    """``preprocessor``: the patchifier plus the position embedding (official names)."""

    def __init__(self, patch_spec: S.PatchEmbedSpec, pos_spec: S.PosEmbedSpec):
        super().__init__(pos_spec)
        self.patchifier = Patchifier(patch_spec)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        p = self.patchifier.spec.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        return super().forward(self.patchifier(images), grid)


def _sdpa(q, k, v, mask: Any) -> torch.Tensor:
    if isinstance(mask, str):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@_register("attention")
class Attention(nn.Module):
    """Fused-qkv multi-head self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, spec: S.AttentionSpec):
        super().__init__()
        self.spec = spec
        self.qkv = _linear(spec.width, 3 * spec.width, spec.qkv_bias)
        self.proj = _linear(spec.width, spec.width, spec.proj_bias)

    def forward(
        self, x: torch.Tensor, mask: Any = None, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Self-attention of ``x`` (B, N, D); ``residual + attention`` when ``residual``
        is given (the add is fused into the output projection)."""
        b, n, d = x.shape
        h = self.spec.heads
        if _needs_grad(x, self.qkv.weight):
            q, k, v = self.qkv(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            # inference: one GEMM per third of the fused weight (row slices are views), so
            # q, k and v come out densely packed for the attention kernel
            w, bias = self.qkv.weight, self.qkv.bias
            q, k, v = (
                F.linear(
                    x, w[i * d : (i + 1) * d], None if bias is None else bias[i * d : (i + 1) * d]
                )
                .view(b, n, h, d // h)
                .transpose(1, 2)
                for i in range(3)
            )
        o = _sdpa(q, k, v, _mask_arg(mask, x.device)).transpose(1, 2).reshape(b, n, d)
        if residual is None:
            return self.proj(o)
        return _linear_residual(self.proj, o, residual)


@_register("ffn")
class FeedForward(nn.Module):
    """SwiGLU (fc1 gate, fc3 up, fc2 down) or exact-GELU MLP (fc1, fc2)."""

    def __init__(self, spec: S.FeedForwardSpec):
        super().__init__()
        self.spec = spec
        self.fc1 = _linear(spec.width, spec.hidden, spec.bias)
        self.fc2 = _linear(spec.hidden, spec.width, spec.bias)
        if spec.type == "swiglu":
            self.fc3 = _linear(spec.width, spec.hidden, spec.bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The MLP of ``x``; ``residual + MLP`` when ``residual`` is given (the add is
        fused into ``fc2``)."""
        if self.spec.type == "swiglu":
            gate, up = self.fc1(x), self.fc3(x)
            if _needs_grad(gate, up):
                hidden = F.silu(gate) * up
            else:  # inference: no autograd graph to keep, so reuse the buffers
                hidden = F.silu(gate, inplace=True).mul_(up)
        else:
            hidden = F.gelu(self.fc1(x))
        if residual is None:
            return self.fc2(hidden)
        return _linear_residual(self.fc2, hidden, residual)


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

    def forward(self, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        x = self.attn(self.norm_1(x), mask, residual=x)
        return self.mlp(self.norm_2(x), residual=x)


def _call_block(owner: nn.Module, blk: Block, x: torch.Tensor, mask: Any) -> torch.Tensor:
    """``blk(x, mask)``; with ``owner.checkpoint`` and autograd on, the block's
    activations are recomputed in the backward pass instead of kept."""
    if owner.checkpoint and _needs_grad(x, blk.norm_1.weight):
        return _checkpoint(blk, x, mask, use_reentrant=False)
    return blk(x, mask)


@_register("trunk")
class Trunk(nn.Module):
    """``blocks`` then ``post_trunk_norm``. ``checkpoint = True`` recomputes each
    block's activations in the backward pass (see :func:`set_checkpointing`)."""

    def __init__(self, spec: S.TrunkSpec):
        super().__init__()
        self.spec = spec
        self.blocks = nn.ModuleList(Block(spec.block) for _ in range(spec.depth))
        self.post_trunk_norm = Norm(spec.final_norm_spec)
        self.checkpoint = False

    def forward(self, x: torch.Tensor, mask: Any = None, return_blocks: bool = False) -> Any:
        mask = _mask_arg(mask, x.device)
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
        self.cls_token = nn.Parameter(torch.zeros(1, spec.num_queries, d))
        self.k = _linear(d, d, spec.kv_bias)
        self.v = _linear(d, d, spec.kv_bias)
        self.linear = _linear(d, spec.out_dim, spec.out_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_features(features.shape, self.spec.width)
        b, n, d = features.shape
        h = self.spec.heads
        q = self.cls_token.expand(b, -1, -1).reshape(b, -1, h, d // h).transpose(1, 2)
        k = self.k(features).view(b, n, h, d // h).transpose(1, 2)
        v = self.v(features).view(b, n, h, d // h).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, d)
        return self.linear(o.mean(dim=1))


@_register("probe")
class Probe(nn.Module):
    """Attentive probe (``pool``) or linear probe on mean-pooled features (``linear``)."""

    def __init__(self, spec: S.ProbeSpec):
        super().__init__()
        self.spec = spec
        if spec.type == "attentive":
            self.pool = AttentionPool(spec.pool)
        else:
            self.linear = _linear(spec.width, spec.num_classes, True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_features(features.shape, self.spec.width)
        if self.spec.type == "attentive":
            return self.pool(features)
        return self.linear(features.mean(dim=1))


def _prefix_values(prefix_len: Any, b: int, n: int, device: torch.device, check: bool):
    """Prefix lengths as a (B,) tensor on ``device``; validated on the host when ``check``."""
    if check or not isinstance(prefix_len, torch.Tensor):
        prefix_len = torch.from_numpy(masks.check_prefix_len(_host(prefix_len), b, n))
    return prefix_len.to(device, non_blocking=True)


def _prefix_mask(m: torch.Tensor, n: int) -> torch.Tensor:
    j = torch.arange(n, device=m.device)
    return ((j[None, None, :] < m[:, None, None]) | (j[None, None, :] <= j[None, :, None]))[:, None]


def _check_images(spec: S.EncoderSpec, images: torch.Tensor) -> None:
    kind = "f" if images.is_floating_point() else "i"
    # min and max are NaN/inf exactly when some element is; no (B, C, H, W) temporaries.
    finite = kind != "f" or images.numel() == 0 or bool(torch.isfinite(torch.stack(
        torch.aminmax(images))).all())  # fmt: skip
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

    def forward(
        self,
        images: torch.Tensor,
        prefix_len: Any = None,
        return_blocks: bool = False,
        check: bool = True,
    ) -> Any:
        """(B, C, H, W) → (B, N, D) after the final norm (and block outputs if asked).

        ``prefix_len`` (int or one per example, 1…N−1) turns on prefix attention.
        ``check=False`` skips input validation (for compiled training steps); a tensor
        ``prefix_len`` is then used as given.
        """
        images = _as_tensor(images)
        if check:
            _check_images(self.spec, images)
        w = self.preprocessor.patchifier.proj.weight
        x = self.preprocessor(images.to(dtype=w.dtype))
        mask = None
        if prefix_len is not None:
            m = _prefix_values(prefix_len, *x.shape[:2], x.device, check)
            mask = _prefix_mask(m, x.shape[1])
        return self.trunk(x, mask, return_blocks)


@_register("decoder")
class Decoder(nn.Module):
    """Causal multimodal decoder over [image_proj(features); start; text + positions]."""

    def __init__(self, spec: S.DecoderSpec):
        super().__init__()
        self.spec = spec
        d = spec.width
        self.image_proj = _linear(spec.in_width, d, True)
        self.text_embed = nn.Embedding(spec.vocab_size, d)
        self.start_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.context_length + 1, d))
        self.blocks = nn.ModuleList(Block(spec.block) for _ in range(spec.depth))
        self.norm = Norm(spec.final_norm_spec)
        self.checkpoint = False

    def forward(self, features: torch.Tensor, tokens: Any = None, check: bool = True) -> Any:
        """→ (image hidden (B, N, D), text hidden (B, T, D) predicting tokens 1…T, or None)."""
        if check:
            check_features(features.shape, self.spec.in_width)
        b, n, _ = features.shape
        h = self.image_proj(features)
        if tokens is not None:
            tokens = _as_tensor(tokens).to(features.device)
            if check:
                _check_tokens(tokens, b, self.spec)
            t = tokens.shape[1]
            text = torch.cat([self.start_token.expand(b, -1, -1), self.text_embed(tokens)], 1)
            h = torch.cat([h, text + self.pos_embed[:, : t + 1]], dim=1)
        for blk in self.blocks:
            h = _call_block(self, blk, h, "causal")
        h = self.norm(h)
        return h[:, :n], (h[:, n:-1] if tokens is not None else None)


def _check_tokens(tokens: torch.Tensor, batch: int, spec: S.DecoderSpec) -> None:
    kind = "f" if tokens.is_floating_point() else ("b" if tokens.dtype == torch.bool else "i")
    empty = tokens.numel() == 0
    lo = None if empty or kind != "i" else int(tokens.min())
    hi = None if empty or kind != "i" else int(tokens.max())
    check_tokens(
        tuple(tokens.shape),
        kind,
        lo,
        hi,
        batch=batch,
        vocab_size=spec.vocab_size,
        context_length=spec.context_length,
    )


def patch_targets(spec: S.ModelSpec, images: torch.Tensor) -> torch.Tensor:
    """Pixel targets for patches 1…N−1: patchified, per-patch standardized if asked."""
    b, c, hh, ww = images.shape
    p = spec.encoder.patch_size
    x = images.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 3, 5, 1)
    x = x.reshape(b, (hh // p) * (ww // p), p * p * c)[:, 1:].float()
    obj = spec.pixel
    if obj.patch_norm:
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=obj.unbiased)
        x = (x - mean) / torch.sqrt(var + obj.eps)
    return x


@_register("model")
class PretrainModel(nn.Module):
    """``encoder``, ``decoder``, ``pixel_head``, ``text_head`` and both losses.

    A ModelSpec without a decoder realizes as a bare :class:`Encoder` (see
    :func:`build_module`), so released checkpoints keep their official names.
    """

    def __init__(self, spec: S.ModelSpec):
        super().__init__()
        self.spec = spec
        self.encoder = Encoder(spec.encoder)
        self.decoder = Decoder(spec.decoder)
        d = spec.decoder.width
        if spec.has_pixel_head:
            self.pixel_head = _linear(d, spec.encoder.patchifier.patch_dim, False)
        if spec.has_text_head:
            self.text_head = _linear(d, spec.decoder.vocab_size, False)

    def forward(
        self,
        images: torch.Tensor,
        tokens: Any = None,
        prefix_len: Any = None,
        check: bool = True,
    ) -> dict[str, Any]:
        """→ dict(loss, pixel_loss, text_loss, pixel_pred (B, N−1, p²C), text_logits (B, T, V))."""
        spec = self.spec
        images = _as_tensor(images)
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
        m = None if prefix_len is None else _prefix_values(prefix_len, b, n, images.device, check)
        feats = self.encoder(images, m, check=False)
        img_h, txt_h = self.decoder(feats, tokens if spec.has_text_head else None, check)
        zero = feats.new_zeros((), dtype=torch.float32)
        out: dict[str, Any] = {"pixel_loss": zero, "text_loss": zero}
        out["pixel_pred"] = out["text_logits"] = None
        if spec.has_pixel_head:
            pred = self.pixel_head(img_h[:, :-1])
            per_patch = (pred.float() - patch_targets(spec, images)).pow(2).mean(-1)
            if spec.pixel.outside_prefix_only and m is not None:
                t = torch.arange(1, n, device=feats.device)
                counted = (t[None, :] >= m[:, None]).float()
            else:
                counted = torch.ones_like(per_patch)
            out["pixel_pred"] = pred
            out["pixel_loss"] = (per_patch * counted).sum() / counted.sum().clamp_min(1.0)
        if spec.has_text_head:
            tokens = _as_tensor(tokens).to(feats.device).long()
            logits = self.text_head(txt_h)
            ce = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="none")
            valid = (tokens.flatten() != spec.text.pad_id).float()
            out["text_logits"] = logits
            out["text_loss"] = (ce * valid).sum() / valid.sum().clamp_min(1.0)
        out["loss"] = spec.text.weight * out["text_loss"] + spec.pixel.weight * out["pixel_loss"]
        return out


def _host(x: Any) -> Any:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def build_module(spec: S.Spec) -> nn.Module:
    """The module realizing ``spec`` (float32, CPU, storage uninitialized: weights not yet set).

    Example:
        >>> build_module(S.NormSpec(width=4)).weight.shape
        torch.Size([4])
    """
    if isinstance(spec, S.ModelSpec) and spec.decoder is None:
        spec = spec.encoder
    if spec.kind not in REGISTRY:
        raise TypeError(f"spec: the torch backend has no realization for kind {spec.kind!r}")
    # Built on the meta device and then given real (uninitialized) storage: torch's own
    # random init would be thrown away by set_weights, and costs seconds for large presets.
    with torch.device("meta"):
        module = REGISTRY[spec.kind](spec)
    return module.to_empty(device="cpu")


def is_module(obj: Any) -> bool:
    """True for a torch module built here.

    Example:
        >>> is_module(build_module(S.NormSpec(width=4)))
        True
    """
    return isinstance(obj, nn.Module) and isinstance(getattr(obj, "spec", None), S.Spec)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A tensor as a NumPy array (bf16/fp16 as float32).

    Example:
        >>> to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype
        dtype('float32')
    """
    x = x.detach().cpu()
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.float()
    return x.numpy()


def from_numpy(x: np.ndarray, like: torch.Tensor | None = None) -> torch.Tensor:
    """A NumPy array as a tensor, on ``like``'s device and float dtype if given.

    Example:
        >>> from_numpy(np.zeros(2)).dtype
        torch.float64
    """
    return _as_tensor(np.ascontiguousarray(x), like)


def to_model(module: nn.Module, x: np.ndarray) -> torch.Tensor:
    """``x`` as a tensor on ``module``'s device (floats in its parameter dtype).

    Example:
        >>> to_model(build_module(S.NormSpec(width=2)), np.zeros(2)).dtype
        torch.float32
    """
    return _as_tensor(np.ascontiguousarray(x), next(module.parameters()))


def get_weights(module: nn.Module) -> dict[str, np.ndarray]:
    """Canonical name → NumPy array for every parameter (torch layouts).

    Example:
        >>> sorted(get_weights(build_module(S.NormSpec(width=4, type="layer"))))
        ['bias', 'weight']
    """
    return {name: to_numpy(p) for name, p in module.named_parameters()}


@torch.no_grad()
def set_weights(module: nn.Module, weights: Mapping[str, Any]) -> None:
    """Copy canonical weights in, after a strict name/shape check against the spec.

    Example:
        >>> m = build_module(S.NormSpec(width=2))
        >>> set_weights(m, {"weight": np.array([2.0, 3.0])})
        >>> m.weight.tolist()
        [2.0, 3.0]
    """
    check_weights(module.spec, weights)
    params = dict(module.named_parameters())
    for name, value in weights.items():
        target = params[name]
        src = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        target.copy_(src.to(device=target.device, dtype=target.dtype))


def cast(module: nn.Module, dtype: Any = None, device: Any = None) -> nn.Module:
    """Move/cast a module in place and return it.

    Example:
        >>> cast(build_module(S.NormSpec(width=2)), dtype=torch.float64).weight.dtype
        torch.float64
    """
    return module.to(device=device, dtype=dtype)


def loss_and_grads(
    model: nn.Module, images: Any, tokens: Any = None, prefix_len: Any = None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One forward and backward of a pre-training model: float losses and canonical grads.

    Example:
        >>> import aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> m = aimv2.build(spec, backend="torch")
        >>> img, tok = np.zeros((1, 3, 16, 16), np.float32), np.ones((1, 4), np.int64)
        >>> losses, grads = loss_and_grads(m, img, tok, [3])
        >>> grads["decoder.start_token"].shape
        (1, 1, 32)
    """
    model.zero_grad(set_to_none=True)
    out = model(from_numpy(images), tokens, prefix_len)
    out["loss"].backward()
    grads = {
        name: to_numpy(p.grad) if p.grad is not None else np.zeros(tuple(p.shape), np.float32)
        for name, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    return {k: float(out[k].detach()) for k in ("loss", "pixel_loss", "text_loss")}, grads


def set_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Turn activation checkpointing on (or off) for every block stack in ``model``
    (encoder trunk, decoder): each block's activations are then recomputed during the
    backward pass instead of being kept — about one more forward of compute for a
    memory footprint of one block plus the block inputs. For the large presets. Returns
    how many block stacks were switched.

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.presets.get("aimv2-test-tiny"), backend="torch")
        >>> set_checkpointing(m)
        2
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch module, got {type(model).__name__}")
    count = 0
    for module in model.modules():
        # the block stacks (Trunk, Decoder) carry a ``checkpoint`` flag; matched by the
        # flag, not the class, so a second import of this module (doctests) agrees
        if isinstance(getattr(module, "checkpoint", None), bool):
            module.checkpoint = bool(enabled)
            count += 1
    return count


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_cpu_allocator(trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> bool:
    """Keep freed activation memory in glibc's heap instead of returning it to the OS.

    By default glibc serves each multi-megabyte activation with a fresh ``mmap`` and
    gives it back on free, so every forward touches (page-faults) all of its activation
    memory again; in a VM a fault costs microseconds, and the elementwise ops of a ViT
    on a CPU end up several times slower than their arithmetic. This sets glibc's
    ``M_MMAP_THRESHOLD`` (allocations below it come from the reusable heap; glibc caps
    it at 32 MiB) and ``M_TRIM_THRESHOLD`` (free memory kept at the top of the heap
    before it is returned; 1 GiB). Process-wide; it only changes when memory goes back
    to the OS, never what a computation returns. Returns False where it does not apply
    (not Linux/glibc).

    Example:
        >>> tune_cpu_allocator() in (True, False)
        True
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (glibc, not musl)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(min(mmap_threshold, 32 << 20)))
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, int(min(trim_threshold, 2**31 - 1))))


_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def native_dtype(dtype: Any) -> Any:
    """The torch dtype for a dtype name (``"bfloat16"``…) or a ``torch.dtype``; None stays None.

    Example:
        >>> native_dtype("bfloat16")
        torch.bfloat16
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    key = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
           "float": "float32", "double": "float64"}.get(key, key)  # fmt: skip
    if key not in _DTYPES:
        raise TypeError(f"dtype={dtype!r}: expected a torch.dtype or one of {sorted(_DTYPES)}")
    return _DTYPES[key]


def inference() -> Any:
    """A context in which module calls build no autograd graph (``torch.no_grad``).

    Example:
        >>> with inference():
        ...     torch.ones(1, requires_grad=True).mul(2).requires_grad
        False
    """
    return torch.no_grad()


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``.

    Example:
        >>> default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
        True
    """
    return "cuda" if torch.cuda.is_available() else "cpu"


def weight_dtypes(module: nn.Module) -> dict[str, str]:
    """Canonical name → dtype name of every parameter.

    Example:
        >>> weight_dtypes(build_module(S.NormSpec(width=2)).to(torch.bfloat16))
        {'weight': 'bfloat16'}
    """
    return {n: _DTYPE_NAMES.get(p.dtype, str(p.dtype)) for n, p in module.named_parameters()}


def get_weight(module: nn.Module, name: str) -> np.ndarray:
    """One parameter as a canonical NumPy array (bf16/fp16 as float32).

    Example:
        >>> get_weight(build_module(S.NormSpec(width=2)), "weight").shape
        (2,)
    """
    params = dict(module.named_parameters())
    if name not in params:
        raise KeyError(f"name={name!r}: not a parameter of this {type(module).__name__}")
    return to_numpy(params[name])


def load_weights(
    spec: S.Spec,
    tensors: Any,
    *,
    dtype: Any = None,
    device: Any = None,
) -> nn.Module:
    """Build ``spec`` directly in ``dtype`` on ``device`` (no random init, no float32 copy)
    and copy canonical ``(name, array)`` pairs into it one at a time; every parameter must
    arrive exactly once.

    Example:
        >>> m = load_weights(S.NormSpec(width=2), [("weight", np.ones(2))], dtype="bfloat16")
        >>> m.weight.dtype
        torch.bfloat16
    """
    target = native_dtype(dtype)
    if isinstance(spec, S.ModelSpec) and spec.decoder is None:
        spec = spec.encoder
    if spec.kind not in REGISTRY:
        raise TypeError(f"spec: the torch backend has no realization for kind {spec.kind!r}")
    with torch.device("meta"):
        module = REGISTRY[spec.kind](spec)
    if target is not None:
        module = module.to(dtype=target)
    module = module.to_empty(device=device if device is not None else "cpu")
    params = dict(module.named_parameters())
    seen: set[str] = set()
    with torch.no_grad():
        for name, arr in tensors:
            if name not in params:
                raise KeyError(f"load_weights: {name!r} is not a parameter of {spec.kind!r}")
            if name in seen:
                raise KeyError(f"load_weights: {name!r} arrived twice")
            seen.add(name)
            params[name].copy_(torch.from_numpy(np.ascontiguousarray(arr)))
    missing = sorted(set(params) - seen)
    if missing:
        raise KeyError(f"load_weights: {len(missing)} parameters never arrived: {missing[:5]}")
    return module


def output_and_grads(
    module: nn.Module, inputs: Any, cotangent: np.ndarray, **kwargs: Any
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``module(*inputs, **kwargs)`` and the gradient of ``sum(output · cotangent)`` with
    respect to every parameter (canonical names; zeros for unused ones).

    Example:
        >>> m = build_module(S.NormSpec(width=2)); set_weights(m, {"weight": np.ones(2)})
        >>> out, g = output_and_grads(m, [np.array([[3.0, 4.0]], np.float32)], np.ones((1, 2)))
        >>> [round(float(v), 3) for v in g["weight"]]
        [0.849, 1.131]
    """
    module.zero_grad(set_to_none=True)
    args = [from_numpy(x) if isinstance(x, np.ndarray) else x for x in inputs]
    kw = {k: from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    out = module(*args, **kw)
    cot = torch.from_numpy(np.ascontiguousarray(cotangent, dtype=np.float32)).to(out.device)
    (out.float() * cot).sum().backward()
    grads = {
        name: to_numpy(p.grad) if p.grad is not None else np.zeros(tuple(p.shape), np.float32)
        for name, p in module.named_parameters()
    }
    module.zero_grad(set_to_none=True)
    return to_numpy(out), grads


from .train import Trainer, init_distributed, pretrain_loss, probe_loss  # noqa: E402
