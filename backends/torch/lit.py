"""Torch realizations of the text encoder and the LiT two-tower model, and the
contrastive loss the LiT trainer minimizes.

Parameter names are the official ones (``text_encoder.preprocessor.text_embedding.weight``,
``image_projector.weight``, ``log_logit_scale`` …). The text tower runs the same trunk
component as the image tower, under a causal mask.

Example:
    >>> import aimv2, torch
    >>> m = aimv2.build(aimv2.presets.get("aimv2-lit-test-tiny"), backend="torch")
    >>> out = m(torch.zeros(2, 3, 16, 16), torch.tensor([[5, 2, 0], [2, 0, 0]]))
    >>> tuple(out["logits_per_image"].shape), tuple(out["text_embeds"].shape)
    ((2, 2), (2, 24))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aimv2 import specs as S
from aimv2.inputs import check_features, check_text_tokens

from .arrays import as_tensor
from .comm import gather_with_grad
from .registry import build, realizes

__all__ = ["TextEncoder", "LiT", "first_eos", "contrastive_loss"]


def first_eos(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Index of the first ``eos_id`` of each row (the tie-free ``argmax(ids == eos_id)``).

    Example:
        >>> first_eos(torch.tensor([[4, 9, 9], [9, 1, 1]]), 9).tolist()
        [1, 0]
    """
    t = tokens.shape[-1]
    # a unique maximum at the first eos: (T - position) where eos, else 0
    rank = torch.arange(t, 0, -1, device=tokens.device)
    return ((tokens == eos_id) * rank).argmax(dim=-1)


def _check_tokens(spec: S.TextEncoderSpec, tokens: torch.Tensor) -> None:
    kind = "f" if tokens.is_floating_point() else ("b" if tokens.dtype == torch.bool else "i")
    ok = kind == "i" and tokens.numel() > 0
    missing = 0
    if ok and tokens.ndim == 2:
        missing = int((~(tokens == spec.eos_id).any(dim=-1)).sum())
    check_text_tokens(
        tuple(tokens.shape),
        kind,
        int(tokens.min()) if ok else None,
        int(tokens.max()) if ok else None,
        missing,
        vocab_size=spec.vocab_size,
        context_length=spec.context_length,
        eos_id=spec.eos_id,
    )


class TextPreprocessor(nn.Module):
    """``text_embedding`` (vocab, D) and ``positional_embedding`` (context, D)."""

    def __init__(self, spec: S.TextEncoderSpec):
        super().__init__()
        self.text_embedding = nn.Embedding(spec.vocab_size, spec.width)
        self.positional_embedding = nn.Parameter(torch.zeros(spec.context_length, spec.width))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]


@realizes(S.TextEncoderSpec)
class TextEncoder(nn.Module):
    """``preprocessor`` (token embedding + positions), ``trunk`` (causal), eos pooling."""

    def __init__(self, spec: S.TextEncoderSpec):
        super().__init__()
        self.spec = spec
        self.preprocessor = TextPreprocessor(spec)
        self.trunk = build(spec.trunk)

    def forward(self, tokens: Any, return_features: bool = False, check: bool = True) -> Any:
        """(B, T) token ids → features of the first eos (B, D) (and of every position)."""
        device = self.preprocessor.positional_embedding.device
        tokens = as_tensor(tokens).to(device)
        if check:
            _check_tokens(self.spec, tokens)
        tokens = tokens.long()
        h = self.trunk(self.preprocessor(tokens), "causal" if self.spec.causal else None)
        pooled = h[torch.arange(h.shape[0], device=device), first_eos(tokens, self.spec.eos_id)]
        return (pooled, h) if return_features else pooled


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


@realizes(S.LiTSpec)
class LiT(nn.Module):
    """``image_encoder`` (with its pooling ``head``), ``text_encoder``, the projectors and
    ``log_logit_scale``."""

    def __init__(self, spec: S.LiTSpec):
        super().__init__()
        self.spec = spec
        self.image_encoder = build(spec.image_encoder)
        self.text_encoder = build(spec.text_encoder)
        e = spec.embed_dim
        self.image_projector = nn.Linear(spec.image_width, e, bias=False)
        self.text_projector = nn.Linear(spec.text_encoder.width, e, bias=False)
        self.log_logit_scale = nn.Parameter(torch.zeros(()))

    def logit_scale(self) -> torch.Tensor:
        """``exp(clamp(log_logit_scale, 0, log max_logit_scale))``."""
        return self.log_logit_scale.clamp(0.0, self.spec.max_log_logit_scale).exp()

    def embed_images(
        self, images: Any = None, image_features: Any = None, check: bool = True
    ) -> torch.Tensor:
        """Normalized image embeddings (B, E) of images, or of the image trunk's output
        ``image_features`` (B, N, D) given instead."""
        if (images is None) == (image_features is None):
            raise ValueError("images / image_features: give exactly one of them")
        if image_features is None:
            feats = self.image_encoder(images, check=check)
        else:
            feats = as_tensor(image_features).to(self.log_logit_scale.device)
            if check:
                check_features(feats.shape, self.spec.image_encoder.width, "image_features")
            feats = feats.to(self.image_projector.weight.dtype)
        return _normalize(self.image_projector(self.image_encoder.head(feats)))

    def embed_texts(self, tokens: Any, check: bool = True) -> torch.Tensor:
        """Normalized text embeddings (B, E) of captions (B, T)."""
        return _normalize(self.text_projector(self.text_encoder(tokens, check=check)))

    def forward(
        self,
        images: Any = None,
        tokens: Any = None,
        *,
        image_features: Any = None,
        return_loss: bool = False,
        check: bool = True,
    ) -> dict[str, Any]:
        """→ dict(logits_per_image (B, B'), logits_per_text, image_embeds, text_embeds,
        logit_scale[, loss])."""
        if tokens is None:
            raise ValueError("tokens: required (captions (B, T) of token ids)")
        img = self.embed_images(images, image_features, check)
        txt = self.embed_texts(tokens, check)
        scale = self.logit_scale().float()
        per_text = scale * txt @ img.t()
        out = {
            "logits_per_image": per_text.t(),
            "logits_per_text": per_text,
            "image_embeds": img,
            "text_embeds": txt,
            "logit_scale": scale,
        }
        if return_loss:
            out["loss"] = _symmetric_ce(per_text.t())
        return out


def _symmetric_ce(logits: torch.Tensor) -> torch.Tensor:
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(
            f"logits_per_image: the contrastive loss pairs image i with caption i and needs a "
            f"square (B, B) matrix, got shape {tuple(logits.shape)}"
        )
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def contrastive_loss(
    model: Any, batch: Mapping[str, Any], world: Any = None
) -> dict[str, torch.Tensor]:
    """The symmetric contrastive loss of a LiT model on one batch of tensors: ``tokens``
    with ``images`` or ``image_features`` (a locked trunk's output). Under a multi-rank
    ``world`` both embeddings are gathered from every rank (:func:`gather_with_grad`), so
    every rank computes the loss of the global batch — K ranks equal one process. Also
    reports the logit scale and the image→text top-1 accuracy within the batch.

    Example:
        >>> import aimv2
        >>> m = aimv2.build(aimv2.presets.get("aimv2-lit-test-tiny"), "torch")
        >>> out = contrastive_loss(m, {"images": torch.zeros(2, 3, 16, 16),
        ...                            "tokens": torch.tensor([[5, 2], [7, 2]])})
        >>> sorted(out), round(float(out["logit_scale"]), 3)
        (['accuracy', 'logit_scale', 'loss'], 14.286)
    """
    out = model(
        batch.get("images"),
        batch["tokens"],
        image_features=batch.get("image_features"),
        check=False,
    )
    img = gather_with_grad(out["image_embeds"], world)
    txt = gather_with_grad(out["text_embeds"], world)
    scale = out["logit_scale"]
    logits = scale * img @ txt.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    accuracy = (logits.detach().argmax(-1) == labels).float().mean()
    return {"loss": _symmetric_ce(logits), "logit_scale": scale.detach(), "accuracy": accuracy}
