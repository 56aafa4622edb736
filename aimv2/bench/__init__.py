"""``aimv2 bench``: throughput of the encoder and of pre-training, beside the machine's
matmul rate and the other AIMv2 implementations installed.

Three modes, each timed per batch: ``forward`` (encoder inference), ``backward``
(encoder forward + backward, as in fine-tuning) and ``train`` (one whole pre-training
update through the backend's ``Trainer``: encoder with prefix attention, decoder, both
losses, clipping and AdamW, fed by the real data loader). For each: images/s, achieved
GFLOP/s from an exact count of the model's matmul FLOPs (:func:`count_flops`), that rate
as a share of a square float32 matmul timed in the same process (the roofline ratio),
and peak memory.

``compare=True`` adds the peers that the backend offers on the same spec, weights and
batch: for torch, ``transformers``' ``Aimv2VisionModel`` and ``timm``'s AIMv2
``VisionTransformer`` (each skipped, with the reason printed, when it does not import);
for MLX, the torch backend and MLX on the reference BLAS bundled with ``mlx[cpu]``.
Every subject is timed once per round, the rounds interleave them (in a rotating
order), so background load hits all alike, and ratios are medians of per-round ratios.
Subjects that need another BLAS setup — torch must never share a process with an
MLX-preloaded OpenBLAS — run in worker processes, still one at a time.

This package is the driver and imports no framework: what is timed on a backend comes
from that backend's ``bench`` module (``aimv2.backends.torch.bench``,
``aimv2.backends.mlx.bench``), which satisfies :class:`aimv2.contract.BenchBackend`.
Modules: :mod:`~.flops` (FLOP counts), :mod:`~.plan` (subjects and their processes),
:mod:`~.subject` (building and timing one), :mod:`~.worker` (worker processes),
:mod:`~.runner` (:func:`run`), :mod:`~.summary` (ratios), :mod:`~.report` (rows, text,
JSON), :mod:`~.machine` (the machine section), :mod:`~.command` (the command line).

Example:
    >>> from aimv2 import bench
    >>> report = bench.run("aimv2-test-tiny", backend="torch", repeats=1)
    >>> row = report.rows[0]
    >>> row.impl, row.mode, row.images_per_s > 0
    ('aimv2 torch', 'forward', True)
"""

from __future__ import annotations

from .command import add_bench_parser, main
from .flops import MODES, count_flops
from .report import BenchReport, Row
from .runner import DEFAULT_SPEC, run

__all__ = [
    "MODES",
    "DEFAULT_SPEC",
    "count_flops",
    "Row",
    "BenchReport",
    "run",
    "add_bench_parser",
    "main",
]
