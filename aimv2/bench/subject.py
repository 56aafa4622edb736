"""One timed subject of ``aimv2 bench``: its JSON-able description (:class:`Desc`) and
the object that builds and times it in this process (:class:`Local`).

What is timed comes from the subject's backend, through that backend's ``bench``
module (:class:`aimv2.contract.BenchBackend`, reached by :func:`bench_module`); this
module adds what is the same on every backend: warm-up, the inner loop that makes a
short call long enough to time, peak memory on top of the resident parameters, and
the real data loader feeding a training step.

Example:
    >>> d = Desc("aimv2", "torch", "forward", "aimv2 torch", {"kind": "norm", "width": 4}, 2)
    >>> Desc.from_json(d.to_json()) == d
    True
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import specs as S
from ..backend import BackendUnavailable, build, load_backend
from ..data import Loader, open_source
from ..formats import FormatError, save_pretrained
from ..masks import sample_prefix
from ..optim import OptimConfig
from ..testing import random_batch
from ..text import Tokenizer, builtin_tokenizer
from .flops import encoder_of

__all__ = ["Desc", "Skip", "Local", "bench_module"]


@dataclass
class Desc:
    """What one timed subject is; JSON-able, so a worker process can build it too.

    ``impl`` is ``matmul`` (the square-matmul roofline), ``aimv2`` or a peer named by
    the backend (:meth:`aimv2.contract.BenchBackend.peers`); ``isolated`` subjects run
    in a worker of their own, ``reference_blas`` ones on the reference BLAS bundled with
    the framework (:func:`aimv2.blas.bundled_reference_blas`).

    Example:
        >>> d = Desc("matmul", "mlx", "matmul", "matmul (mlx)", {}, 1, image_hw=(8, 8))
        >>> Desc.from_json(d.to_json()).image_hw
        (8, 8)
    """

    impl: str
    backend: str
    mode: str  # forward | backward | train | matmul
    label: str
    spec: dict[str, Any]
    batch: int
    image_hw: tuple[int, int] | None = None
    device: str | None = None
    precision: str = "fp32"
    compile: bool = False
    checkpoint: bool = False
    data: str = "builtin:shapes"
    tokenizer: str | None = None
    workers: int = 2
    seed: int = 0
    matmul_size: int = 2048
    warmup: int = 1
    threads: int | None = None
    tune_alloc: bool = True
    isolated: bool = False  # needs a worker process of its own
    reference_blas: bool = False  # must run on the framework's bundled reference BLAS
    max_rounds: int | None = None
    min_seconds: float = 0.05  # shorter calls are repeated within a round

    def to_json(self) -> str:
        """This description as one line of JSON (what a worker is sent)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Desc:
        """The description :meth:`to_json` wrote."""
        data = json.loads(text)
        if data.get("image_hw") is not None:
            data["image_hw"] = tuple(data["image_hw"])
        return cls(**data)


class Skip(Exception):
    """A subject that cannot run here; the message says why."""


def bench_module(backend: str) -> ModuleType:
    """The ``bench`` module of a backend package (:class:`aimv2.contract.BenchBackend`).

    Raises :class:`aimv2.BackendUnavailable` when the backend's framework is missing.

    Example:
        >>> bench_module("torch").__name__
        'aimv2.backends.torch.bench'
    """
    return importlib.import_module(load_backend(backend).__name__ + ".bench")


class Local:
    """A subject built and timed in this process.

    Example:
        >>> d = Desc("matmul", "torch", "matmul", "matmul (torch)", {}, 1, device="cpu",
        ...          matmul_size=64, tune_alloc=False)
        >>> s = Local(d)
        >>> s.prepare()["flops"], s.run()["seconds"] > 0
        (524288, True)
    """

    def __init__(self, desc: Desc) -> None:
        self.desc = desc
        self.info: dict[str, Any] = {}
        self.call: Callable[[], Any] = lambda: None
        self.sync: Callable[[], None] = lambda: None
        self.inner = 1
        self.wait = 0.0

    def prepare(self) -> dict[str, Any]:
        """Build, warm up, size the inner loop, measure peak memory; returns info.

        Raises :class:`Skip` when the backend cannot run this subject here.
        """
        d = self.desc
        try:
            bench = bench_module(d.backend)
            device = bench.prepare(d.device, d.threads, d.tune_alloc)
            self.call, self.sync, info = self._build(bench, device)
        except (NotImplementedError, BackendUnavailable) as err:
            raise Skip(str(err)) from None
        self.info.update(info)
        for _ in range(d.warmup):
            self.call()
            self.sync()
        if d.warmup > 0:
            t0 = time.perf_counter()
            extra = bench.peak_memory(self.call, device)
            took = time.perf_counter() - t0
            self.inner = max(1, min(1000, math.ceil(d.min_seconds / max(took, 1e-9))))
            if d.impl != "matmul":
                resident = int(self.info.get("params", 0))
                self.info["peak_bytes"] = None if extra is None else resident + extra
        return self.info

    def run(self) -> dict[str, float]:
        """Time one round: ``inner`` calls; seconds per call and loader wait per call."""
        self.wait = 0.0
        self.sync()
        t0 = time.perf_counter()
        for _ in range(self.inner):
            self.call()
        self.sync()
        seconds = (time.perf_counter() - t0) / self.inner
        return {"seconds": seconds, "wait": self.wait / self.inner}

    def close(self) -> None:
        """Drop the subject's model and data (the references its call holds)."""
        self.call = lambda: None

    def _build(self, bench: Any, device: str) -> tuple[Callable[[], Any], Callable[[], None], dict]:
        d = self.desc
        if d.impl == "matmul":
            return bench.matmul(d.matmul_size, device, d.precision)
        spec = S.from_dict(d.spec)
        if d.mode == "train":
            return self._build_train(bench, spec, device)
        enc = encoder_of(spec)
        with tempfile.TemporaryDirectory() as tmp:
            folder = None
            if d.impl != "aimv2":  # a peer loads aimv2's weights from their export
                folder = str(Path(tmp) / d.impl)
                try:
                    save_pretrained(build(enc, d.backend, seed=d.seed), folder, format=d.impl)
                except FormatError as err:
                    raise Skip(f"this spec is not expressible in {d.impl}: {err}") from None
            return bench.encoder(
                enc,
                d.mode,
                d.batch,
                d.image_hw,
                impl=d.impl,
                peer_folder=folder,
                device=device,
                precision=d.precision,
                compile=d.compile,
                checkpoint=d.checkpoint,
                seed=d.seed,
            )

    def _build_train(
        self, bench: Any, spec: S.Spec, device: str
    ) -> tuple[Callable[[], Any], Callable[[], None], dict]:
        d = self.desc
        if d.impl != "aimv2":
            raise Skip(f"{d.impl} has no AIMv2 pre-training")
        model_spec = _train_spec(spec)
        step, sync, info = bench.train_step(
            model_spec,
            _optim(),
            d.batch,
            device=device,
            precision=d.precision,
            compile=d.compile,
            checkpoint=d.checkpoint,
            seed=d.seed,
        )
        n = model_spec.encoder.num_patches
        batches = _batches(model_spec, d)
        rng = np.random.default_rng([d.seed, 0xBE7C])

        def call() -> Any:
            t0 = time.perf_counter()
            batch = next(batches)
            self.wait += time.perf_counter() - t0
            prefix = sample_prefix(rng, d.batch, n, model_spec.prefix)
            micro = {"images": batch["images"], "tokens": batch.get("tokens"), "prefix_len": prefix}
            return step([micro])

        return call, sync, {**info, "note": f"data: {d.data}"}


def _train_spec(spec: S.Spec) -> S.ModelSpec:
    if not isinstance(spec, S.ModelSpec) or spec.decoder is None:
        raise Skip("train needs a pre-training spec with a decoder (a preset, say)")
    if spec.encoder.native:
        raise Skip("train needs a fixed-size encoder (pre-training batches stack images)")
    return spec


def _optim() -> OptimConfig:
    return OptimConfig(lr=1e-4, min_lr=0.0, warmup_steps=0, total_steps=1_000_000)


def _batches(spec: S.ModelSpec, d: Desc) -> Iterator[dict[str, Any]]:
    """An endless stream of pre-training batches: the real loader, or one random batch."""
    if d.data == "synthetic":
        fixed = random_batch(spec, d.seed, batch=d.batch)
        return iter(lambda: fixed, None)
    tokenizer = None
    if spec.has_text_head:
        if d.tokenizer:
            tokenizer = Tokenizer.load(d.tokenizer)
        elif d.data.startswith("builtin:"):
            tokenizer = builtin_tokenizer(d.data.split("?")[0], vocab_size=spec.decoder.vocab_size)
        else:
            raise Skip(f"data {d.data!r} needs a tokenizer (or use builtin:shapes)")
    try:
        source = open_source(d.data, split="train", seed=d.seed)
    except (FileNotFoundError, ValueError) as err:
        raise Skip(f"data {d.data!r}: {err}") from None
    loader = Loader(
        source,
        spec.encoder,
        tokenizer,
        d.batch,
        seed=d.seed,
        train=True,
        num_workers=d.workers,
        context_length=spec.decoder.context_length,
    )
    return iter(loader)
