"""LiT: the text tower trained contrastively against an AIMv2 image tower, zero-shot
classification and image↔text retrieval — framework-free drivers on the backend contract.

- :mod:`aimv2.lit.tokenizer`: released folders' CLIP BPE ``tokenizer.json`` (``tokenizers``),
  this library's SentencePiece models, strict :func:`tokenize` for prompts.
- :mod:`aimv2.lit.zeroshot`: :func:`encode_images`, :func:`encode_texts`, :func:`classifier`,
  :func:`zero_shot` (also ``aimv2.encode_images`` … at the top level).
- :mod:`aimv2.lit.evaluate`: recall@k both ways, zero-shot accuracy on a labelled source.
- :mod:`aimv2.lit.load`: :func:`load_lit` (a LiT run or released folder, with its tokenizer).
- :mod:`aimv2.lit.config`, :mod:`aimv2.lit.train`: ``aimv2 lit`` — locked, unlocked or
  from-scratch image tower, the contrastive loss over every rank's embeddings.

Example:
    >>> import numpy as np, aimv2
    >>> from aimv2.text import builtin_tokenizer
    >>> model = aimv2.build(aimv2.presets.get("aimv2-lit-test-tiny"), "torch")
    >>> tokens = tokenize(builtin_tokenizer("builtin:digits", 64), ["the digit 7"], 16)
    >>> tuple(encode_texts(model, tokens).shape)
    (1, 24)
"""

from __future__ import annotations

from .config import IMAGE_TOWERS, LitConfig, LitError, optim_config
from .evaluate import (
    evaluate_retrieval,
    evaluate_zero_shot,
    recall_at_k,
    retrieval_metrics,
    source_pairs,
)
from .load import image_tower, load_lit, run_tokenizer
from .tokenizer import BPETokenizer, load_tokenizer, tokenize
from .train import frozen_prefixes, lit_train, resolve_model
from .zeroshot import (
    DEFAULT_TEMPLATES,
    check_lit,
    classifier,
    encode_images,
    encode_texts,
    zero_shot,
)

__all__ = [
    "IMAGE_TOWERS",
    "DEFAULT_TEMPLATES",
    "LitConfig",
    "LitError",
    "BPETokenizer",
    "optim_config",
    "lit_train",
    "resolve_model",
    "frozen_prefixes",
    "load_lit",
    "image_tower",
    "run_tokenizer",
    "load_tokenizer",
    "tokenize",
    "check_lit",
    "encode_images",
    "encode_texts",
    "classifier",
    "zero_shot",
    "recall_at_k",
    "retrieval_metrics",
    "source_pairs",
    "evaluate_zero_shot",
    "evaluate_retrieval",
]
