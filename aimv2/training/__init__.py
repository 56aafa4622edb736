"""Pre-training on either backend: the run's configuration, the loop, logging, held-out
evaluation and ``--init``.

- :mod:`aimv2.training.config`: :class:`PretrainConfig` (``aimv2 pretrain``'s flags), the
  model spec, tokenizer and optimizer settings of a run.
- :mod:`aimv2.training.loop`: :func:`pretrain` — schedule, micro-batches, checkpoints,
  resume, data-parallel ranks.
- :mod:`aimv2.training.log`: ``metrics.jsonl`` and the progress line.
- :mod:`aimv2.training.evaluate`: the held-out caption loss, with and without the image.
- :mod:`aimv2.training.initial`: starting from another run's weights (``--init``).

Example:
    >>> import tempfile
    >>> cfg = PretrainConfig(out=tempfile.mkdtemp(), preset="aimv2-test-tiny", steps=2,
    ...                      batch_size=4, progress=False, num_workers=0)
    >>> result = pretrain(cfg)
    >>> result["step"]
    2
"""

from __future__ import annotations

from .config import PretrainConfig, TrainingError, load_tokenizer, optim_config, resolve_spec
from .evaluate import caption_loss, heldout_eval
from .initial import load_init, weight_names
from .loop import pretrain

__all__ = [
    "PretrainConfig",
    "TrainingError",
    "pretrain",
    "resolve_spec",
    "load_tokenizer",
    "optim_config",
    "caption_loss",
    "heldout_eval",
    "load_init",
    "weight_names",
]
