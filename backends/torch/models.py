"""Torch realizations of the encoder, the causal decoder and the pre-training model.

The encoder's official layout nests the patchifier inside the position embedding's
namespace (``preprocessor.pos_embed``, ``preprocessor.patchifier.*``), so the
``pos_embed`` slot's module *is* ``preprocessor`` and the patchifier is attached to it.

Example:
    >>> import aimv2, torch
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> aimv2.build(spec, backend="torch")(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 4, 32])
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aimv2 import masks
from aimv2 import specs as S
from aimv2.inputs import check_features, check_layout, check_tokens, intermediate_indices

from .arrays import as_tensor
from .fused import run_in_parts
from .layers import call_block
from .registry import build, realizes

__all__ = ["Encoder", "Decoder", "PretrainModel", "patch_targets"]


def _host(x: Any) -> Any:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


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
    finite, max_abs = True, None
    if kind == "f" and images.numel():
        # min and max are NaN/inf exactly when some element is; no (B, C, H, W) temporaries
        lo, hi = torch.aminmax(images)
        lo, hi = float(lo), float(hi)
        finite = math.isfinite(lo) and math.isfinite(hi)
        max_abs = max(abs(lo), abs(hi))
    spec.check_images(tuple(images.shape), finite, kind, max_abs)


def _check_tokens(tokens: torch.Tensor, batch: int, spec: S.DecoderSpec) -> None:
    kind = "f" if tokens.is_floating_point() else ("b" if tokens.dtype == torch.bool else "i")
    empty = tokens.numel() == 0
    wide = tokens.to(torch.int64) if kind == "i" and not empty else None  # uint16/32: no min
    lo = None if wide is None else int(wide.min())
    hi = None if wide is None else int(wide.max())
    check_tokens(
        tuple(tokens.shape),
        kind,
        lo,
        hi,
        batch=batch,
        vocab_size=spec.vocab_size,
        context_length=spec.context_length,
    )


def _rows(x: Any, rows: slice | None) -> Any:
    return x if x is None or rows is None else x[rows]


@realizes(S.EncoderSpec)
class Encoder(nn.Module):
    """The AIMv2 vision encoder: ``preprocessor`` (positions + ``patchifier``), ``trunk``,
    optional ``head``."""

    def __init__(self, spec: S.EncoderSpec):
        super().__init__()
        self.spec = spec
        self.preprocessor = build(spec.pos_embed)
        self.preprocessor.patchifier = build(spec.patchifier)
        self.trunk = build(spec.trunk)
        if spec.head is not None:
            self.head = build(spec.head)

    def forward(
        self,
        images: torch.Tensor,
        prefix_len: Any = None,
        return_blocks: bool = False,
        check: bool = True,
        pool: bool = False,
    ) -> Any:
        """(B, C, H, W) → (B, N, D) after the final norm (and block outputs if asked).

        ``prefix_len`` (int or one per example, 1…N−1) turns on prefix attention.
        ``check=False`` skips input validation (for compiled training steps); a tensor
        ``prefix_len`` is then used as given. ``pool=True`` returns the head's output on
        the features instead (B, out_dim): a classifier's logits.
        """
        images, m = self._inputs(images, prefix_len, check)
        if pool and not hasattr(self, "head"):
            raise ValueError("pool=True: this encoder has no head (spec.head is None)")
        out = self.encode(images, m, return_blocks)
        if not pool:
            return out
        if return_blocks:
            return self.head(out[0]), out[1]
        return self.head(out)

    def _inputs(self, images: Any, prefix_len: Any, check: bool) -> tuple[torch.Tensor, Any]:
        """Images as a tensor (validated when ``check``) and prefix lengths (B,) or None."""
        images = as_tensor(images)
        if check:
            _check_images(self.spec, images)
        m = None
        if prefix_len is not None:
            p = self.spec.patch_size
            n = (images.shape[-2] // p) * (images.shape[-1] // p)
            m = _prefix_values(prefix_len, images.shape[0], n, images.device, check)
        return images, m

    def forward_intermediates(
        self,
        images: torch.Tensor,
        indices: Any = None,
        norm: bool = False,
        output: str = "NLC",
        stop_early: bool = True,
        prefix_len: Any = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(final features (B, N, D), the outputs of the blocks ``indices`` names, in block
        order), as :func:`aimv2.reference.forward_intermediates`: ``indices`` None (all),
        n (the last n) or block numbers (negative from the end); ``norm`` applies the
        final norm to each; ``output`` ``"NLC"`` or ``"NCHW"`` (B, D, rows, cols);
        ``stop_early`` runs no block after the last one asked for (the final features are
        then the final norm of that block's output, as in timm).

        Example:
            >>> import aimv2
            >>> spec = aimv2.encoder_spec(width=32, depth=3, heads=2, patch_size=4,
            ...                           image_size=8, mlp_hidden=64)
            >>> _, maps = aimv2.build(spec, "torch").forward_intermediates(
            ...     torch.zeros(1, 3, 8, 8), indices=[-1], output="NCHW")
            >>> [m.shape for m in maps]
            [torch.Size([1, 32, 2, 2])]
        """
        take = intermediate_indices(self.spec.depth, indices)
        layout = check_layout(output)
        images, m = self._inputs(images, prefix_len, True)
        x = self.embed(images)
        mask = None if m is None else _prefix_mask(m, x.shape[1])
        if stop_early and isinstance(self.spec.trunk, S.TrunkSpec):  # a user trunk runs whole
            final, blocks = self.trunk(x, mask, return_blocks=True, num_blocks=take[-1] + 1)
        else:
            final, blocks = self.trunk(x, mask, return_blocks=True)
        picked = [blocks[i] for i in take]
        if norm:
            picked = [self.trunk.post_trunk_norm(t) for t in picked]
        if layout == "NCHW":
            p = self.spec.patch_size
            rows, cols = images.shape[-2] // p, images.shape[-1] // p
            picked = [t.transpose(1, 2).reshape(t.shape[0], -1, rows, cols) for t in picked]
        return final, picked

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding plus positions (B, N, D): the trunk's input (what transformers
        calls ``hidden_states[0]``)."""
        dtype = next(self.preprocessor.patchifier.parameters()).dtype
        images = as_tensor(images).to(dtype=dtype)
        p = self.spec.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        return self.preprocessor(self.preprocessor.patchifier(images), grid=grid)

    def encode(self, images: torch.Tensor, m: torch.Tensor | None, return_blocks: bool) -> Any:
        """The encoder on validated images and prefix lengths ``m`` (B,) or None."""
        x = self.embed(images)
        mask = None if m is None else _prefix_mask(m, x.shape[1])
        return self.trunk(x, mask, return_blocks=return_blocks)


@realizes(S.DecoderSpec)
class Decoder(nn.Module):
    """Causal multimodal decoder over [image_proj(features); start; text + positions]."""

    def __init__(self, spec: S.DecoderSpec):
        super().__init__()
        self.spec = spec
        d = spec.width
        self.image_proj = nn.Linear(spec.in_width, d, bias=True)
        self.text_embed = nn.Embedding(spec.vocab_size, d)
        self.start_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.context_length + 1, d))
        self.blocks = nn.ModuleList(build(spec.block) for _ in range(spec.depth))
        self.norm = build(spec.final_norm_spec)
        self.checkpoint = False

    def forward(self, features: torch.Tensor, tokens: Any = None, check: bool = True) -> Any:
        """→ (image hidden (B, N, D), text hidden (B, T, D) predicting tokens 1…T, or None)."""
        if check:
            check_features(features.shape, self.spec.in_width)
        b, n, _ = features.shape
        h = self.image_proj(features)
        if tokens is not None:
            tokens = as_tensor(tokens).to(features.device)
            if check:
                _check_tokens(tokens, b, self.spec)
            tokens = tokens.to(torch.int64)  # any integer width is taken (checked above)
            t = tokens.shape[1]
            start = self.start_token.expand(b, -1, -1)
            text = torch.cat([start, self.text_embed(tokens)], dim=1)
            h = torch.cat([h, text + self.pos_embed[:, : t + 1]], dim=1)
        for blk in self.blocks:
            h = call_block(self, blk, h, "causal")
        h = self.norm(h)
        return h[:, :n], (h[:, n:-1] if tokens is not None else None)


def patch_targets(spec: S.ModelSpec, images: torch.Tensor) -> torch.Tensor:
    """Pixel targets for patches 1…N−1: patchified, per-patch standardized if asked.

    Example:
        >>> import aimv2
        >>> patch_targets(aimv2.presets.get("aimv2-test-tiny"), torch.zeros(1, 3, 16, 16)).shape
        torch.Size([1, 15, 48])
    """
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


@realizes(S.ModelSpec)
class PretrainModel(nn.Module):
    """``encoder``, ``decoder``, ``pixel_head``, ``text_head`` and both losses.

    A ModelSpec without a decoder realizes as a bare encoder (see ``build_module``), so
    released checkpoints keep their official names.
    """

    def __init__(self, spec: S.ModelSpec):
        super().__init__()
        self.spec = spec
        self.encoder = build(spec.encoder)
        self.decoder = build(spec.decoder)
        d = spec.decoder.width
        if spec.has_pixel_head:
            self.pixel_head = nn.Linear(d, spec.encoder.patchifier.patch_dim, bias=False)
        if spec.has_text_head:
            self.text_head = nn.Linear(d, spec.decoder.vocab_size, bias=False)

    def forward(
        self,
        images: torch.Tensor,
        tokens: Any = None,
        prefix_len: Any = None,
        check: bool = True,
    ) -> dict[str, Any]:
        """→ dict(loss, pixel_loss, text_loss, pixel_pred (B, N−1, p²C), text_logits (B, T, V))."""
        spec = self.spec
        images = as_tensor(images)
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
        if not spec.has_text_head:
            tokens = None
        elif tokens is not None:
            tokens = as_tensor(tokens).to(images.device)
            if check:
                _check_tokens(tokens, b, spec.decoder)
            tokens = tokens.to(torch.int64)  # any integer width is taken (checked above)
        parts = run_in_parts(
            b,
            lambda rows: self._partial(_rows(images, rows), _rows(tokens, rows), _rows(m, rows), n),
        )
        return _combine(spec, parts, images.device)

    def _partial(
        self, images: torch.Tensor, tokens: Any, m: torch.Tensor | None, n: int
    ) -> dict[str, Any]:
        """Both objectives' sums and counts over one (part of a) batch."""
        spec = self.spec
        feats = self.encoder.encode(images, m, False)
        img_h, txt_h = self.decoder(feats, tokens, check=False)
        out: dict[str, Any] = {"pixel_sum": None, "text_sum": None}
        if spec.has_pixel_head:
            pred = self.pixel_head(img_h[:, :-1])
            per_patch = (pred.float() - patch_targets(spec, images)).pow(2).mean(-1)
            if spec.pixel.outside_prefix_only and m is not None:
                t = torch.arange(1, n, device=feats.device)
                counted = (t[None, :] >= m[:, None]).float()
            else:
                counted = torch.ones_like(per_patch)
            out.update(pixel_sum=(per_patch * counted).sum(), pixel_count=counted.sum())
            out["pixel_out"] = pred
        if spec.has_text_head:
            tokens = tokens.long()
            logits = self.text_head(txt_h)
            ce = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="none")
            valid = (tokens.flatten() != spec.text.pad_id).float()
            out.update(text_sum=(ce * valid).sum(), text_count=valid.sum(), text_out=logits)
        return out


def _combine(spec: S.ModelSpec, parts: list[dict[str, Any]], device: Any) -> dict[str, Any]:
    """The loss dict from the parts' sums and counts."""
    zero = torch.zeros((), dtype=torch.float32, device=device)
    out: dict[str, Any] = {"pixel_pred": None, "text_logits": None}
    for key in ("pixel", "text"):
        if parts[0][f"{key}_sum"] is None:
            out[f"{key}_loss"] = zero
            continue
        total = sum(part[f"{key}_sum"] for part in parts)
        count = sum(part[f"{key}_count"] for part in parts)
        out[f"{key}_loss"] = total / count.clamp_min(1.0)
        outputs = [part[f"{key}_out"] for part in parts]
        name = "pixel_pred" if key == "pixel" else "text_logits"
        out[name] = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
    out["loss"] = spec.text.weight * out["text_loss"] + spec.pixel.weight * out["pixel_loss"]
    return out
