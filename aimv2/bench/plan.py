"""The subjects of an ``aimv2 bench`` run and the process each runs in.

A run times, per mode, aimv2 on the chosen backend and (with ``compare``) the peers
that backend's ``bench`` module offers (:meth:`aimv2.contract.BenchBackend.peers`), and
a square matmul on every backend among them (the roofline). Where a subject runs
follows from BLAS needs alone (:mod:`aimv2.blas`): a backend that wants an optimized
BLAS preloaded (``PRELOAD_BLAS``) gets a worker with it, one that must never have it
runs without, a subject on the bundled reference BLAS runs without, and an
``isolated`` peer gets a worker of its own.

Example:
    >>> import aimv2
    >>> cfg = Config(backend="torch", modes=["forward"], compare=True)
    >>> [d.label for d in plan(cfg, aimv2.presets.get("aimv2-test-tiny"))]
    ['matmul (torch)', 'aimv2 torch', 'transformers', 'timm']
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import presets
from .. import specs as S
from .subject import Desc, bench_module

__all__ = ["Config", "resolve_spec", "plan", "process_for"]

_PEER_KEYS = {"backend", "impl", "label", "isolated", "reference_blas"}


@dataclass
class Config:
    """The settings of one run (:func:`aimv2.bench.run`'s arguments, checked); the
    report's ``settings``.

    Example:
        >>> Config(backend="mlx").modes
        ['forward']
    """

    backend: str = field(default="torch", metadata={"help": "the backend timed"})
    modes: list[str] = field(
        default_factory=lambda: ["forward"],
        metadata={
            "help": "forward, backward, train or all (these three); data: the data loader "
            "alone vs the backend's DataLoader"
        },
    )
    batch_size: int = field(default=4, metadata={"help": "images per call"})
    repeats: int = field(default=5, metadata={"help": "interleaved timed rounds"})
    warmup: int = field(default=1, metadata={"help": "untimed calls per subject first"})
    compare: bool = field(
        default=False,
        metadata={
            "help": "time the peers too (torch: transformers, timm; mlx: the torch backend "
            "and MLX on its bundled reference BLAS)"
        },
    )
    device: str | None = field(
        default=None, metadata={"help": "torch: cpu, cuda, cuda:1, ...; mlx: cpu or gpu"}
    )
    precision: str = field(
        default="fp32",
        metadata={
            "help": "bf16: autocast on torch, bfloat16 weights on MLX",
            "choices": ("fp32", "bf16"),
        },
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile / mx.compile"})
    checkpoint: bool = field(default=False, metadata={"help": "activation checkpointing"})
    data: str = field(
        default="builtin:shapes",
        metadata={
            "help": "what feeds --mode train (a data source or 'synthetic') and --mode data "
            "(a source, or 'photos[?n=500&size=640x480]': generated JPEG photos)"
        },
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "SentencePiece model for a non-builtin --data"}
    )
    workers: int = field(
        default=2,
        metadata={
            "help": "data-loader worker processes (--mode data times each count given, "
            "--mode train uses the last)"
        },
    )
    image_hw: tuple[int, int] | None = None
    threads: int | None = field(default=None, metadata={"help": "torch intra-op threads"})
    matmul_size: int = field(default=2048, metadata={"help": "side of the roofline matmul"})
    reference_repeats: int = field(
        default=1,
        metadata={"help": "rounds of MLX on the reference BLAS under --compare (0: none)"},
    )
    tune_alloc: bool = field(
        default=True, metadata={"help": "tune glibc's allocator in torch processes"}
    )
    settle: float = 0.2
    seed: int = field(default=0, metadata={"help": "weights and inputs"})


def resolve_spec(spec: Any) -> S.EncoderSpec | S.ModelSpec:
    """The encoder or pre-training spec that ``spec`` (a preset name, spec JSON text or
    file, or a spec) names; a name or file that is no such spec raises ValueError.

    Example:
        >>> resolve_spec("aimv2-test-tiny").encoder.width
        32
        >>> resolve_spec("aimv2-test-tyni")
        Traceback (most recent call last):
        ...
        ValueError: preset name='aimv2-test-tyni' is unknown; did you mean ['aimv2-test-tiny', 'aimv2-lit-test-tiny']?
    """
    if isinstance(spec, (S.EncoderSpec, S.ModelSpec)):
        return spec
    if isinstance(spec, str):
        try:
            loaded = presets.load_spec(spec)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        except (FileNotFoundError, S.SpecError) as err:
            raise ValueError(str(err)) from None
        return resolve_spec(loaded)
    raise TypeError(
        f"spec: expected a preset name, spec JSON, EncoderSpec or ModelSpec, got {spec!r:.80}"
    )


def plan(cfg: Config, spec: S.Spec) -> list[Desc]:
    """The subjects of a run, in order: a matmul per backend involved, then per mode
    aimv2 on ``cfg.backend`` followed by its peers (with ``cfg.compare``).

    Raises :class:`aimv2.BackendUnavailable` when ``cfg.backend`` is not installed.

    Example:
        >>> import aimv2
        >>> cfg = Config(backend="torch", modes=["train"], compare=True)
        >>> [d.label for d in plan(cfg, aimv2.presets.get("aimv2-test-tiny"))]
        ['matmul (torch)', 'aimv2 torch']
    """
    common: dict[str, Any] = dict(
        spec=spec.to_dict(),
        batch=cfg.batch_size,
        image_hw=cfg.image_hw,
        device=cfg.device,
        precision=cfg.precision,
        compile=cfg.compile,
        checkpoint=cfg.checkpoint,
        data=cfg.data,
        tokenizer=cfg.tokenizer,
        workers=cfg.workers,
        seed=cfg.seed,
        matmul_size=cfg.matmul_size,
        warmup=cfg.warmup,
        threads=cfg.threads,
        tune_alloc=cfg.tune_alloc,
    )
    own = bench_module(cfg.backend)
    per_mode: list[Desc] = []
    for mode in cfg.modes:
        per_mode.append(Desc("aimv2", cfg.backend, mode, f"aimv2 {cfg.backend}", **common))
        for peer in own.peers(mode) if cfg.compare else []:
            desc = _peer_desc(peer, mode, cfg, common)
            if desc is not None:
                per_mode.append(desc)
    backends = dict.fromkeys(d.backend for d in per_mode)
    matmuls = [Desc("matmul", b, "matmul", f"matmul ({b})", **common) for b in backends]
    return matmuls + per_mode


def _peer_desc(
    peer: Mapping[str, Any], mode: str, cfg: Config, common: dict[str, Any]
) -> Desc | None:
    unknown = set(peer) - _PEER_KEYS
    if unknown or not {"backend", "impl", "label"} <= set(peer):
        raise ValueError(f"peer {dict(peer)!r}: expected the keys {sorted(_PEER_KEYS)}")
    names = dict(impl=peer["impl"], backend=peer["backend"], mode=mode, label=peer["label"])
    isolated = bool(peer.get("isolated", False))
    if not peer.get("reference_blas", False):
        return Desc(**names, **common, isolated=isolated)
    if cfg.reference_repeats == 0:
        return None
    # ~30x slower: no warmup call, and only the first few rounds
    return Desc(
        **names,
        **{**common, "warmup": 0},
        isolated=isolated,
        reference_blas=True,
        max_rounds=cfg.reference_repeats,
    )


def process_for(desc: Desc, preload: bool, main_preloaded: bool, lib: str | None) -> str:
    """Where ``desc`` runs: ``main`` (this process), or a worker: ``clean`` (no BLAS
    preload: a backend that must not have one, or the bundled reference BLAS), the
    subject's own ``impl`` name (``isolated``), or ``optimized`` (the optimized BLAS
    ``lib`` preloaded, for a backend whose ``PRELOAD_BLAS`` is ``preload``).

    Example:
        >>> d = Desc("aimv2", "mlx", "forward", "aimv2 mlx", {}, 4)
        >>> lib = "/usr/lib/libopenblas.so.0"
        >>> process_for(d, True, False, lib) == ("optimized" if sys.platform == "linux" else "main")
        True
    """
    if not sys.platform.startswith("linux"):
        return "main"
    if desc.isolated:
        return desc.impl
    if not preload or desc.reference_blas:
        return "clean" if main_preloaded else "main"
    return "optimized" if lib is not None and not main_preloaded else "main"
