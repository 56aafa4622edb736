"""Fine-tuning a pre-trained encoder as a classifier, end to end, on either backend.

- :mod:`aimv2.finetune.config`: :class:`FinetuneConfig` (``aimv2 finetune``'s flags) and
  the optimizer settings of a run.
- :mod:`aimv2.finetune.model`: the classifier spec and starting weights, layer-wise
  learning-rate decay, frozen blocks, LoRA.
- :mod:`aimv2.finetune.data`: training and held-out sources, classes, accuracy.
- :mod:`aimv2.finetune.loop`: :func:`finetune` — schedule, checkpoints, resume, ranks,
  the merged model and ``finetune.json``.

Example:
    >>> import tempfile
    >>> cfg = FinetuneConfig(out=tempfile.mkdtemp(), preset="aimv2-test-tiny", steps=2,
    ...                      batch_size=8, progress=False, num_workers=0, lora_rank=2)
    >>> result = finetune(cfg)
    >>> result["step"], result["trainable_params"] < result["params"]
    (2, True)
"""

from __future__ import annotations

from .config import HEADS, FinetuneConfig, FinetuneError, optim_config
from .data import Part, accuracy, num_classes, splits
from .loop import finetune, planned_steps
from .model import (
    classifier_spec,
    layer_of,
    layer_scales,
    lr_scales,
    prepare,
    source_encoder,
    trainable_count,
)

__all__ = [
    "HEADS",
    "FinetuneConfig",
    "FinetuneError",
    "optim_config",
    "Part",
    "accuracy",
    "num_classes",
    "splits",
    "finetune",
    "planned_steps",
    "classifier_spec",
    "layer_of",
    "layer_scales",
    "lr_scales",
    "prepare",
    "source_encoder",
    "trainable_count",
]
