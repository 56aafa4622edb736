"""``aimv2 bench``: throughput of the encoder and of pre-training, beside the machine's
matmul rate and the other AIMv2 implementations installed.

Three modes, each timed per batch: ``forward`` (encoder inference), ``backward``
(encoder forward + backward, as in fine-tuning) and ``train`` (one whole pre-training
update through the backend's ``Trainer``: encoder with prefix attention, decoder, both
losses, clipping and AdamW, fed by the real data loader). For each: images/s, achieved
GFLOP/s from an exact count of the model's matmul FLOPs (:func:`count_flops`), that rate
as a share of a square float32 matmul timed in the same process (the roofline ratio),
and peak memory.

``compare=True`` adds peers on the same spec, weights and batch: for torch,
``transformers``' ``Aimv2VisionModel`` and ``timm``'s AIMv2 ``VisionTransformer``
(each skipped, with the reason printed, when it does not import); for MLX, the torch
backend and MLX on the reference BLAS bundled with ``mlx[cpu]``. Every subject is timed
once per round, the rounds interleave them (in a rotating order), so background load
hits all alike, and ratios are medians of per-round ratios. Subjects that need another
BLAS setup — torch must never share a process with an MLX-preloaded OpenBLAS — run in
worker processes, still one at a time.

Example:
    >>> from aimv2 import bench
    >>> report = bench.run("aimv2-test-tiny", backend="torch", repeats=1)
    >>> row = report.rows[0]
    >>> row.impl, row.mode, row.images_per_s > 0
    ('aimv2 torch', 'forward', True)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from . import blas
from . import specs as S

__all__ = ["MODES", "DEFAULT_SPEC", "count_flops", "Row", "BenchReport", "run",
           "add_bench_parser", "main"]  # fmt: skip

MODES = ("forward", "backward", "train")
DEFAULT_SPEC = "aimv2-base-patch14-224"

# --------------------------------------------------------------------------- FLOPs


def _block_flops(block: S.BlockSpec, b: int, n: int) -> int:
    d, hidden = block.width, block.mlp.hidden
    qkv = 2 * b * n * d * 3 * d
    attn = 2 * 2 * b * n * n * d  # q·kᵀ and attention·v, all heads together
    proj = 2 * b * n * d * d
    ffn = (3 if block.mlp.type == "swiglu" else 2) * 2 * b * n * d * hidden
    return qkv + attn + proj + ffn


def _num_patches(enc: S.EncoderSpec, image_hw: tuple[int, int] | None) -> int:
    if image_hw is None:
        if enc.image_size is None:
            raise ValueError("image_hw: a native-resolution encoder needs an image size")
        image_hw = enc.image_size
    p = enc.patch_size
    h, w = (int(v) for v in image_hw)
    if h % p or w % p or h < p or w < p:
        raise ValueError(f"image_hw={image_hw}: expected positive multiples of the patch {p}")
    return (h // p) * (w // p)


def count_flops(
    spec: S.Spec,
    mode: str = "forward",
    batch: int = 1,
    image_hw: tuple[int, int] | None = None,
) -> int:
    """Model FLOPs of one batch: 2·m·n·k for every matmul (patch-embedding conv, qkv,
    q·kᵀ, attention·v, output projection, feed-forward; decoder and heads in ``train``).

    ``forward`` and ``backward`` are the encoder's trunk (the optional pooling head is
    not part of the encoder's forward). ``backward`` is forward + backward: twice the
    forward again for the input and weight gradients of every matmul, except that the
    images get no gradient (the patch embedding's backward is its weight gradient only).
    ``train`` is forward + backward of the whole pre-training model (``spec`` a
    :class:`~aimv2.specs.ModelSpec` with a decoder), captions at the decoder's full
    context length. Attention counts the full N×N square even where a mask hides part
    of it; norms, activations, losses and the optimizer are not counted (memory-bound,
    a few percent of the time).

    Example:
        >>> import aimv2
        >>> enc = aimv2.presets.get("aimv2-base-patch14-224").encoder
        >>> round(count_flops(enc, "forward", batch=1) / 1e9, 2)
        46.13
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch={batch!r}: expected a positive integer")
    if isinstance(spec, S.ModelSpec):
        model, enc = spec, spec.encoder
    elif isinstance(spec, S.EncoderSpec):
        model, enc = None, spec
    else:
        raise TypeError(f"spec: expected an EncoderSpec or ModelSpec, got {type(spec).__name__}")
    n = _num_patches(enc, image_hw)
    patch = 2 * batch * n * enc.patchifier.patch_dim * enc.width
    forward = patch + enc.depth * _block_flops(enc.trunk.block, batch, n)
    if mode == "forward":
        return forward
    if mode == "backward":
        return 3 * forward - patch
    if model is None or model.decoder is None:
        raise ValueError("mode='train': needs a ModelSpec with a decoder (a preset, say)")
    dec = model.decoder
    t = dec.context_length if model.has_text_head else 0
    seq = n + (t + 1 if model.has_text_head else 0)  # images, start token, caption
    forward += 2 * batch * n * dec.in_width * dec.width  # image_proj
    forward += dec.depth * _block_flops(dec.block, batch, seq)
    if model.has_pixel_head:
        forward += 2 * batch * (n - 1) * dec.width * enc.patchifier.patch_dim
    if model.has_text_head:
        forward += 2 * batch * t * dec.width * dec.vocab_size
    return 3 * forward - patch


# --------------------------------------------------------------------------- memory


def _proc_status() -> dict[str, int]:
    out = {}
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


# --------------------------------------------------------------------------- subjects


@dataclass
class _Desc:
    """What one timed subject is; JSON-able, so a worker process can build it too."""

    impl: str  # aimv2 | transformers | timm | matmul
    backend: str  # torch | mlx
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
    reference_blas: bool = False  # must run on MLX's bundled reference BLAS
    max_rounds: int | None = None
    min_seconds: float = 0.05  # shorter calls are repeated within a round

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> _Desc:
        data = json.loads(text)
        if data.get("image_hw") is not None:
            data["image_hw"] = tuple(data["image_hw"])
        return cls(**data)


class _Skip(Exception):
    """A subject that cannot run here; the message says why."""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


class _Local:
    """A subject built and timed in this process."""

    def __init__(self, desc: _Desc) -> None:
        self.desc = desc
        self.info: dict[str, Any] = {}
        self.call: Callable[[], Any] = lambda: None
        self.sync: Callable[[], None] = lambda: None
        self.inner = 1
        self.wait = 0.0

    def prepare(self) -> dict[str, Any]:
        """Build, warm up, size the inner loop, measure peak memory; returns info."""
        d = self.desc
        spec = S.from_dict(d.spec)
        if d.impl == "matmul":
            self._build_matmul()
        elif d.backend == "torch":
            self._build_torch(spec)
        else:
            self._build_mlx(spec)
        for _ in range(d.warmup):
            self.call()
            self.sync()
        if d.warmup > 0:
            t0 = time.perf_counter()
            peak = self._peak_memory()
            took = time.perf_counter() - t0
            self.inner = max(1, min(1000, math.ceil(d.min_seconds / max(took, 1e-9))))
            if d.impl != "matmul":
                self.info["peak_bytes"] = peak
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
        self.call = lambda: None

    # -- builders

    def _build_matmul(self) -> None:
        d, n = self.desc, self.desc.matmul_size
        if d.backend == "torch":
            torch = _torch_setup(d)
            dev = _torch_device(d)
            # the roofline of the precision the model runs in (bf16 autocast: bf16 GEMMs)
            dtype = torch.bfloat16 if d.precision == "bf16" else torch.float32
            a = torch.randn(n, n, device=dev, dtype=dtype)
            b = torch.randn(n, n, device=dev, dtype=dtype)
            self.call, self.sync = (lambda: a @ b), _torch_sync(dev)
        else:
            mx = _mlx_setup(d)
            from .backends.mlx import restore_blas_threads

            a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
            mx.eval(a, b)

            def call() -> None:
                restore_blas_threads()  # an encoder batch split over streams set it to 1
                mx.eval(a @ b)

            self.call = call
        self.info["flops"] = 2 * n**3

    def _build_torch(self, spec: S.Spec) -> None:
        d = self.desc
        torch = _torch_setup(d)
        dev = _torch_device(d)
        self.sync = _torch_sync(dev)
        if d.mode == "train":
            self._build_torch_train(spec, dev)
            return
        enc = _encoder_of(spec)
        x = torch.randn(d.batch, enc.in_channels, *(d.image_hw or enc.image_size), device=dev)
        model = self._torch_encoder(enc).to(dev).train(d.mode != "forward")
        fwd = _peer_forward(d.impl, torch.compile(model) if d.compile else model)
        autocast = _torch_autocast(d, dev)
        if d.mode == "forward":

            def call() -> Any:
                with torch.inference_mode(), autocast():
                    return fwd(x)

        else:
            params = [p for p in model.parameters() if p.requires_grad]

            def call() -> Any:
                for p in params:
                    p.grad = None
                with autocast():
                    out = fwd(x)
                out.float().mean().backward()

        self.call = call

    def _torch_encoder(self, enc: S.EncoderSpec) -> Any:
        import aimv2

        d = self.desc
        ours = aimv2.build(enc, "torch", seed=d.seed)
        if d.impl == "aimv2":
            if d.checkpoint:
                from .backends.torch import set_checkpointing

                set_checkpointing(ours)
            self.info["params"] = _torch_bytes(ours.parameters())
            return ours
        if d.checkpoint:
            raise _Skip("activation checkpointing is an aimv2 option; peers run without it")
        if d.impl not in ("transformers", "timm"):
            raise _Skip(f"unknown implementation {d.impl!r}")
        model, self.info["note"] = _peer_model(d.impl, ours)
        err = _max_diff(ours, model, d.impl, enc, d.seed)
        self.info["max_abs_diff"] = err
        if not err < 1e-3:
            raise _Skip(f"outputs differ from aimv2's by {err:.2e}: not the same model")
        self.info["params"] = _torch_bytes(model.parameters())
        return model

    def _build_torch_train(self, spec: S.Spec, dev: Any) -> None:
        import aimv2

        from .backends.torch import set_checkpointing
        from .backends.torch.train import Trainer

        d = self.desc
        if d.impl != "aimv2":
            raise _Skip(f"{d.impl} has no AIMv2 pre-training")
        model_spec = _train_spec(spec)
        model = aimv2.build(model_spec, "torch", seed=d.seed).to(dev)
        if d.checkpoint:
            set_checkpointing(model)
        autocast = "bf16" if d.precision == "bf16" else None
        trainer = Trainer(model, _optim(), compile=d.compile, autocast=autocast)
        self.info["params"] = 3 * _torch_bytes(model.parameters())  # + two AdamW moments
        self._train_loop(model_spec, trainer)

    def _build_mlx(self, spec: S.Spec) -> None:
        import aimv2

        d = self.desc
        if d.impl != "aimv2":
            raise _Skip(f"{d.impl} has no MLX implementation")
        mx = _mlx_setup(d)
        import mlx.nn as nn

        from .backends.mlx import set_checkpointing

        if d.mode == "train":
            from .backends.mlx.train import Trainer

            if d.precision != "fp32":
                raise _Skip("MLX training runs in float32 (precision fp32)")
            model_spec = _train_spec(spec)
            model = aimv2.build(model_spec, "mlx", seed=d.seed)
            if d.checkpoint:
                set_checkpointing(model)
            trainer = Trainer(model, _optim(), compile=True)
            self.info["params"] = 3 * _mlx_bytes(model)  # + two AdamW moments
            self._train_loop(model_spec, trainer)
            return
        enc = _encoder_of(spec)
        model = aimv2.build(enc, "mlx", seed=d.seed)
        if d.precision == "bf16":
            model.set_dtype(mx.bfloat16)
        if d.checkpoint:
            set_checkpointing(model)
        self.info["params"] = _mlx_bytes(model)
        x = mx.random.normal((d.batch, enc.in_channels, *(d.image_hw or enc.image_size)))
        mx.eval(x)
        if d.mode == "forward":
            fn = (lambda im: model(im, check=False)) if d.compile else model
        else:
            fn = nn.value_and_grad(model, lambda im: model(im, check=False).mean())
        if d.compile:
            fn = mx.compile(fn, inputs=model.state)
        plan = _cpu_plan(d)

        def call() -> None:
            plan()
            mx.eval(fn(x))

        self.call = call

    def _train_loop(self, model_spec: S.ModelSpec, trainer: Any) -> None:
        from .masks import sample_prefix

        d = self.desc
        n = model_spec.encoder.num_patches
        batches = _batches(model_spec, d)
        rng = np.random.default_rng([d.seed, 0xBE7C])
        plan = _cpu_plan(d)

        def call() -> Any:
            plan()
            t0 = time.perf_counter()
            batch = next(batches)
            self.wait += time.perf_counter() - t0
            prefix = sample_prefix(rng, d.batch, n, model_spec.prefix)
            micro = {"images": batch["images"], "tokens": batch.get("tokens"), "prefix_len": prefix}
            return trainer.step([micro], lr=1e-4)

        self.call = call
        self.info["note"] = f"data: {d.data}"

    def _peak_memory(self) -> int | None:
        """Run one call; the memory it needed on top of what was live before, plus the
        subject's own parameters (and optimizer state). CUDA and MLX: allocator peaks;
        CPU torch: the process's peak resident set over the call, after handing free heap
        memory back to the OS (approximate: allocator slack counts)."""
        d = self.desc
        resident = int(self.info.get("params", 0))
        if d.backend == "mlx":
            import mlx.core as mx

            mx.clear_cache()
            before = mx.get_active_memory()
            mx.reset_peak_memory()
            self.call()
            return resident + max(0, mx.get_peak_memory() - before)
        import torch

        dev = _torch_device(d)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            self.call()
            torch.cuda.synchronize(dev)
            return resident + max(0, torch.cuda.max_memory_allocated(dev) - before)
        _malloc_trim()
        before = _proc_status().get("VmRSS")
        if before is None or not _reset_rss_peak():
            self.call()
            return None
        self.call()
        return resident + max(0, _proc_status().get("VmHWM", before) - before)


def _encoder_of(spec: S.Spec) -> S.EncoderSpec:
    return spec.encoder if isinstance(spec, S.ModelSpec) else spec


def _cpu_plan(d: _Desc) -> Callable[[], Any]:
    """MLX: re-plan the CPU batch split before each call (a compiled function does not)."""
    if d.backend != "mlx":
        return lambda: None
    from .backends.mlx import plan_cpu_batch

    return lambda: plan_cpu_batch(d.batch)


def _torch_setup(d: _Desc) -> Any:
    import torch

    if d.threads:
        torch.set_num_threads(d.threads)
    if d.tune_alloc:
        from .backends.torch import tune_cpu_allocator

        tune_cpu_allocator()
    return torch


def _mlx_setup(d: _Desc) -> Any:
    import mlx.core as mx

    if d.device:
        if d.device not in ("cpu", "gpu"):
            raise _Skip(f"device={d.device!r}: MLX devices are 'cpu' and 'gpu'")
        mx.set_default_device(mx.cpu if d.device == "cpu" else mx.gpu)
    return mx


def _torch_device(d: _Desc) -> Any:
    import torch

    if d.device:
        return torch.device(d.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _torch_sync(dev: Any) -> Callable[[], None]:
    import torch

    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def _torch_autocast(d: _Desc, dev: Any) -> Callable[[], Any]:
    import torch

    if d.precision == "bf16":
        return lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _torch_bytes(params: Any) -> int:
    return int(sum(p.numel() * p.element_size() for p in params))


def _mlx_bytes(model: Any) -> int:
    from mlx.utils import tree_flatten

    return int(sum(v.nbytes for _, v in tree_flatten(model.parameters())))


def _peer_forward(impl: str, model: Any) -> Callable[[Any], Any]:
    if impl == "transformers":
        return lambda x: model(pixel_values=x).last_hidden_state
    if impl == "timm":
        return model.forward_features
    return model


def _train_spec(spec: S.Spec) -> S.ModelSpec:
    if not isinstance(spec, S.ModelSpec) or spec.decoder is None:
        raise _Skip("train needs a pre-training spec with a decoder (a preset, say)")
    if spec.encoder.native:
        raise _Skip("train needs a fixed-size encoder (pre-training batches stack images)")
    return spec


def _optim() -> Any:
    from .optim import OptimConfig

    return OptimConfig(lr=1e-4, min_lr=0.0, warmup_steps=0, total_steps=1_000_000)


def _batches(spec: S.ModelSpec, d: _Desc) -> Iterator[dict[str, Any]]:
    """An endless stream of pre-training batches: the real loader, or one random batch."""
    if d.data == "synthetic":
        from .testing import random_batch

        fixed = random_batch(spec, d.seed, batch=d.batch)
        return iter(lambda: fixed, None)
    from .data import Loader, open_source
    from .text import Tokenizer, builtin_tokenizer

    tokenizer = None
    if spec.has_text_head:
        if d.tokenizer:
            tokenizer = Tokenizer.load(d.tokenizer)
        elif d.data.startswith("builtin:"):
            tokenizer = builtin_tokenizer(d.data.split("?")[0], vocab_size=spec.decoder.vocab_size)
        else:
            raise _Skip(f"data {d.data!r} needs a tokenizer (or use builtin:shapes)")
    try:
        source = open_source(d.data, split="train", seed=d.seed)
    except (FileNotFoundError, ValueError) as err:
        raise _Skip(f"data {d.data!r}: {err}") from None
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


# --------------------------------------------------------------------------- peers


def _peer_model(impl: str, ours: Any) -> tuple[Any, str]:
    """``(model, note)``: the peer ``impl`` holding ``ours``'s weights, loaded the way a
    user loads it from this library's own export (:func:`aimv2.save_pretrained`)."""
    import tempfile
    from pathlib import Path

    from .formats import FormatError, save_pretrained

    try:
        import torch  # noqa: F401

        if impl == "transformers":
            from transformers import Aimv2VisionModel
        else:
            from ._peers import import_timm

            timm, stubbed = import_timm()
    except Exception as err:  # noqa: BLE001 (any import failure means: skip it)
        raise _Skip(f"{impl} does not import here: {type(err).__name__}: {err}") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = save_pretrained(ours, Path(tmp) / "peer", format=impl)
        except FormatError as err:
            raise _Skip(f"this spec is not expressible in {impl}: {err}") from None
        if impl == "transformers":
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # the bench's output is the report
            model = Aimv2VisionModel.from_pretrained(folder, attn_implementation="sdpa")
            return model, f"transformers {_version('transformers')} Aimv2VisionModel, sdpa"
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    note = f"timm {_version('timm')} VisionTransformer (AIMv2 config)"
    if stubbed:
        note += "; imported with stand-in torchvision modules (it never calls them)"
    return model, note


def _max_diff(ours: Any, peer: Any, impl: str, enc: S.EncoderSpec, seed: int) -> float:
    """Largest |output difference| between aimv2 and a peer on one random image."""
    import torch

    hw = enc.image_size or (enc.patch_size * 4, enc.patch_size * 4)
    x = torch.randn(1, enc.in_channels, *hw, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return float((ours(x) - _peer_forward(impl, peer.eval())(x)).abs().max())


# --------------------------------------------------------------------------- workers


class _Worker:
    """``python -m aimv2.bench --worker`` in its own environment (an LD_PRELOAD or none)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aimv2.bench", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.count = 0

    def add(self, desc: _Desc) -> int:
        self.count += 1
        self.ask({"op": "add", "key": self.count, "desc": desc.to_json()})
        return self.count

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise _Skip(f"its worker process ended (exit status {self.proc.poll()})")
        reply = json.loads(line)
        if "skip" in reply:
            raise _Skip(reply["skip"])
        return reply

    def close(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


class _Remote:
    """A subject living in a :class:`_Worker`; the same verbs as :class:`_Local`."""

    def __init__(self, desc: _Desc, worker: _Worker) -> None:
        self.desc, self.worker, self.key = desc, worker, worker.add(desc)

    def prepare(self) -> dict[str, Any]:
        return self.worker.ask({"op": "prepare", "key": self.key})

    def run(self) -> dict[str, float]:
        return self.worker.ask({"op": "run", "key": self.key})

    def close(self) -> None:
        """The worker closes with the run."""


def _worker_main() -> int:
    """The worker loop: one JSON request per stdin line, one JSON reply per stdout line."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever else gets printed goes to stderr, not into the protocol
    subjects: dict[int, _Local] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg.get("op")
        if op == "quit":
            break
        try:
            if op == "add":
                subjects[msg["key"]] = _Local(_Desc.from_json(msg["desc"]))
                reply: dict[str, Any] = {"ok": True}
            elif op == "prepare":
                reply = subjects[msg["key"]].prepare()
            elif op == "run":
                reply = subjects[msg["key"]].run()
            else:
                reply = {"skip": f"unknown request {op!r}"}
        except _Skip as err:
            reply = {"skip": str(err)}
        except Exception as err:  # noqa: BLE001 (the parent reports it as a skip)
            reply = {"skip": f"{type(err).__name__}: {err}"}
        replies.write(json.dumps(reply) + "\n")
    return 0


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    """One subject's result, medians over the interleaved rounds.

    ``relative``: this subject's throughput ÷ the aimv2 row's of the chosen backend in
    the same mode (median of per-round ratios). ``of_matmul``: achieved FLOP rate ÷ the
    same backend's square-matmul rate in the same round. ``data_wait``: the share of a
    training step spent waiting for the loader.

    Example:
        >>> Row("forward", "aimv2 torch", "", 4, 1.0, 4.0, 184.5, 0.96, None, 1.0, None).gflops
        184.5
    """

    mode: str
    impl: str
    note: str
    batch: int
    seconds: float
    images_per_s: float
    gflops: float | None
    of_matmul: float | None
    peak_bytes: int | None
    relative: float | None
    data_wait: float | None
    times: list[float] = field(default_factory=list)


@dataclass
class BenchReport:
    """Everything ``aimv2 bench`` found; :meth:`text` is the form to paste into an issue.

    Example:
        >>> BenchReport("aimv2 bench", "t", {}, {}, {}, [], [], [], {}).to_dict()["rows"]
        []
    """

    command: str
    title: str
    machine: dict[str, Any]
    flops: dict[str, int]
    matmul: dict[str, float]
    rows: list[Row]
    skipped: list[tuple[str, str]]
    summary: list[str]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole report."""
        return dataclasses.asdict(self)

    def text(self) -> str:
        """Markdown: the command, the machine, FLOPs, the table, skips and the summary.

        Example:
            >>> BenchReport("aimv2 bench", "t", {}, {}, {}, [], [], [], {}).text().split()[:2]
            ['###', 't']
        """
        batch = max(int(self.settings.get("batch_size", 1)), 1)
        size = self.settings.get("matmul_size", 2048)
        lines = [f"### {self.title}", "", f"    {self.command}", ""]
        lines += [f"- {key}: {value}" for key, value in self.machine.items()]
        dtypes = {"torch": "bfloat16" if self.settings.get("precision") == "bf16" else "float32",
                  "mlx": "float32"}  # fmt: skip
        lines += [f"- matmul {size}×{size} {dtypes.get(backend, 'float32')}, {backend}: "
                  f"{rate:.1f} GFLOP/s (median)" for backend, rate in self.matmul.items()]  # fmt: skip
        lines += [f"- model FLOPs, {mode}: {value / 1e9:.4g} G per batch, "
                  f"{value / batch / 1e9:.4g} G per image" for mode, value in self.flops.items()]  # fmt: skip
        lines += [
            "",
            "| mode | implementation | img/s | ms/batch | GFLOP/s | of matmul | peak mem "
            "| relative | data wait |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            cells = [r.mode, r.impl, f"{r.images_per_s:.3g}", _ms(r.seconds),
                     _fmt(r.gflops, ".4g"), _fmt(r.of_matmul, ".0%"), _bytes(r.peak_bytes),
                     _fmt(r.relative, ".2f", "×"), _fmt(r.data_wait, ".0%")]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        notes = dict.fromkeys(f"- {r.impl}: {r.note}" for r in self.rows if r.note)
        if notes:
            lines += ["", *notes]
        if self.skipped:
            lines += ["", "Skipped:", *dict.fromkeys(f"- {n}: {why}" for n, why in self.skipped)]
        if self.summary:
            lines += ["", *[f"**{line}**" for line in self.summary]]
        lines += [
            "",
            "relative = throughput ÷ the first aimv2 row's (median of per-round ratios, "
            "rounds interleaved); of matmul = achieved GFLOP/s ÷ the same round's square "
            "matmul; data wait = share of a training step spent waiting for the loader.",
        ]
        return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    """Milliseconds with 4 significant digits, never in exponent notation."""
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 1000 else f"{ms:.4g}"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else format(value, spec) + suffix


def _bytes(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _machine(cfg: _Config) -> dict[str, Any]:
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count()
    info: dict[str, Any] = {
        "machine": f"{platform.system()} {platform.machine()}, {_cpu_name()}, {cores} cores",
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        info["load average (1, 5, 15 min) at start"] = _loadavg()
    if cfg.backend == "torch" or cfg.compare:
        try:
            import torch

            gpu = ""
            if torch.cuda.is_available() and (cfg.device or "cuda").startswith("cuda"):
                gpu = f", GPU {torch.cuda.get_device_name()}"
            info["torch"] = f"{torch.__version__}, {torch.get_num_threads()} threads{gpu}"
        except ImportError:
            info["torch"] = "not installed"
    if cfg.backend == "mlx":
        lib = blas.preloaded_blas() or _optimized_blas()
        if lib:
            where = "preloaded" if blas.preloaded_blas() else "preloaded in its worker"
            info["mlx"] = f"{_version('mlx')}, BLAS {lib} ({where})"
        elif blas.bundled_reference_blas():
            info["mlx"] = f"{_version('mlx')}, the bundled reference BLAS. {blas.advice()}"
        else:
            info["mlx"] = _version("mlx")
    if cfg.compare and cfg.backend == "torch":
        info["peers"] = f"transformers {_version('transformers')}, timm {_version('timm')}"
    return info


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _optimized_blas() -> str | None:
    try:
        return blas.find_optimized_blas()
    except ValueError:
        return None


# --------------------------------------------------------------------------- running


@dataclass
class _Config:
    backend: str
    modes: list[str]
    batch_size: int
    repeats: int
    warmup: int
    compare: bool
    device: str | None
    precision: str
    compile: bool
    checkpoint: bool
    data: str
    tokenizer: str | None
    workers: int
    image_hw: tuple[int, int] | None
    threads: int | None
    matmul_size: int
    reference_repeats: int
    tune_alloc: bool
    settle: float
    seed: int


def _resolve_spec(spec: Any) -> S.Spec:
    if isinstance(spec, (S.EncoderSpec, S.ModelSpec)):
        return spec
    if isinstance(spec, str):
        from .cli import load_spec

        try:
            return _resolve_spec(load_spec(spec))
        except SystemExit as err:
            raise ValueError(str(err)) from None
    raise TypeError(
        f"spec: expected a preset name, spec JSON, EncoderSpec or ModelSpec, got {spec!r:.80}"
    )


def _plan(cfg: _Config, spec: S.Spec) -> list[_Desc]:
    """The subjects of a run: matmul rates, aimv2 per mode, and the peers if asked."""
    common = dict(spec=spec.to_dict(), batch=cfg.batch_size, image_hw=cfg.image_hw,
                  device=cfg.device, precision=cfg.precision, compile=cfg.compile,
                  checkpoint=cfg.checkpoint, data=cfg.data, tokenizer=cfg.tokenizer,
                  workers=cfg.workers, seed=cfg.seed, matmul_size=cfg.matmul_size,
                  warmup=cfg.warmup, threads=cfg.threads, tune_alloc=cfg.tune_alloc)  # fmt: skip
    backend = cfg.backend
    backends = [backend] + (["torch"] if cfg.compare and backend == "mlx" else [])
    out = [_Desc("matmul", b, "matmul", f"matmul ({b})", **common) for b in backends]
    for mode in cfg.modes:
        out.append(_Desc("aimv2", backend, mode, f"aimv2 {backend}", **common))
        if not cfg.compare or mode == "train" and backend == "torch":
            continue
        if backend == "torch":
            out.append(_Desc("transformers", "torch", mode, "transformers", **common))
            out.append(_Desc("timm", "torch", mode, "timm", **common))
            continue
        out.append(_Desc("aimv2", "torch", mode, "aimv2 torch", **common))
        if mode == "forward" and cfg.reference_repeats > 0:
            # ~30x slower: no warmup call, and only the first few rounds
            out.append(_Desc("aimv2", "mlx", mode, "aimv2 mlx, reference BLAS",
                             **{**common, "warmup": 0}, reference_blas=True,
                             max_rounds=cfg.reference_repeats))  # fmt: skip
    return out


def _process_for(desc: _Desc, main_preloaded: bool, lib: str | None) -> str:
    """Where ``desc`` runs: ``main`` (this process), or a worker ``clean`` (no BLAS
    preload: torch, MLX's reference BLAS), ``timm`` (no preload; timm alone, since it
    may import with stand-in torchvision modules) or ``optimized`` (the optimized BLAS
    preloaded)."""
    if not sys.platform.startswith("linux"):
        return "main"
    if desc.impl == "timm":
        return "timm"  # its own process: timm may need stand-in torchvision modules
    if desc.backend == "torch" or desc.reference_blas:
        return "clean" if main_preloaded else "main"
    return "optimized" if lib is not None and not main_preloaded else "main"


def _prepare(cfg: _Config, spec: S.Spec, say: Callable[[str], None]) -> tuple[list, list, dict]:
    main_preloaded = blas.preloaded_blas() is not None
    lib = _optimized_blas()
    workers: dict[str, _Worker] = {}
    subjects: list[tuple[_Desc, Any, dict[str, Any]]] = []
    skipped: list[tuple[str, str]] = []
    for desc in _plan(cfg, spec):
        name = desc.label if desc.impl == "matmul" else f"{desc.label}, {desc.mode}"
        if desc.reference_blas and blas.bundled_reference_blas() is None:
            skipped.append((name, "this MLX install bundles no reference BLAS"))
            continue
        if desc.reference_blas and not (main_preloaded or lib):
            skipped.append((name, "no optimized BLAS here: the aimv2 mlx row runs on it"))
            continue
        where = _process_for(desc, main_preloaded, lib)
        say(f"preparing {name} ({'this process' if where == 'main' else where + ' worker'})")
        try:
            if where == "main":
                subject: Any = _Local(desc)
            else:
                if where not in workers:
                    env = blas.without_preload()
                    env[blas.ENV_LIBRARY] = "none"
                    if where == "optimized" and lib:
                        env["LD_PRELOAD"] = lib
                    workers[where] = _Worker(env)
                subject = _Remote(desc, workers[where])
            info = subject.prepare()
        except _Skip as err:
            skipped.append((name, str(err)))
            continue
        except Exception as err:
            if desc.impl == "aimv2" or desc.impl == "matmul":
                raise
            skipped.append((name, f"{type(err).__name__}: {err}"))  # a peer's own failure
            continue
        subjects.append((desc, subject, info))
    return subjects, skipped, workers


def _rounds(cfg: _Config, subjects: list, skipped: list, say: Callable[[str], None]) -> tuple:
    times: list[dict[int, float]] = [{} for _ in subjects]
    waits: list[list[float]] = [[] for _ in subjects]
    for r in range(cfg.repeats):
        shift = r % max(len(subjects), 1)
        for i in [*range(shift, len(subjects)), *range(shift)]:
            desc, subject, _ = subjects[i]
            if desc.max_rounds is not None and r >= desc.max_rounds:
                continue
            say(f"round {r + 1}/{cfg.repeats}: {desc.label}, {desc.mode}")
            time.sleep(cfg.settle)  # let the last subject's BLAS/OpenMP threads stop spinning
            try:
                out = subject.run()
            except _Skip as err:
                skipped.append((f"{desc.label}, {desc.mode}", str(err)))
                desc.max_rounds = r
                continue
            times[i][r] = out["seconds"]
            waits[i].append(out.get("wait", 0.0) / max(out["seconds"], 1e-12))
    return times, waits


def run(
    spec: Any = DEFAULT_SPEC,
    backend: str = "torch",
    *,
    modes: Sequence[str] = ("forward",),
    batch_size: int = 4,
    repeats: int = 5,
    warmup: int = 1,
    compare: bool = False,
    device: str | None = None,
    precision: str = "fp32",
    compile: bool = False,
    checkpoint: bool = False,
    data: str = "builtin:shapes",
    tokenizer: str | None = None,
    workers: int = 2,
    image_size: int | tuple[int, int] | None = None,
    decoder_depth: int | None = None,
    threads: int | None = None,
    matmul_size: int = 2048,
    reference_repeats: int = 1,
    tune_alloc: bool = True,
    settle: float = 0.2,
    seed: int = 0,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time ``modes`` of ``spec`` (preset name, spec JSON or spec) on ``backend``.

    Each subject gets ``warmup`` untimed calls, then ``repeats`` interleaved rounds (a
    call under 50 ms is repeated within its round and averaged). ``compare`` adds the
    peers (module docstring); MLX on the reference BLAS is timed in the first
    ``reference_repeats`` rounds only (0 leaves it out). ``precision="bf16"``: autocast
    on torch, bfloat16 weights on MLX (forward, backward). ``compile``: ``torch.compile``
    / ``mx.compile``. ``checkpoint``: activation checkpointing. ``data`` feeds ``train``:
    a source for :class:`aimv2.data.Loader` (``builtin:shapes``) or ``"synthetic"``.
    ``tune_alloc``: :func:`aimv2.backends.torch.tune_cpu_allocator` in torch processes.
    ``decoder_depth``: replace the decoder depth of a pre-training spec (e.g. a base
    encoder with a 4-block decoder). ``settle``: seconds of quiet before each timed round. ``progress`` gets one line per
    step of the run.

    Example:
        >>> r = run("aimv2-test-tiny", "torch", modes=["forward", "backward"], repeats=1)
        >>> [row.mode for row in r.rows]
        ['forward', 'backward']
    """
    if backend not in ("torch", "mlx"):
        raise ValueError(f"backend={backend!r}: expected 'torch' or 'mlx'")
    modes = list(dict.fromkeys([modes] if isinstance(modes, str) else modes))
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes={modes!r}: expected some of {MODES}")
    for name, value, low in (("batch_size", batch_size, 1), ("repeats", repeats, 1),
                             ("warmup", warmup, 0), ("workers", workers, 0),
                             ("matmul_size", matmul_size, 1),
                             ("reference_repeats", reference_repeats, 0)):  # fmt: skip
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r}: expected an integer >= {low}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={precision!r}: expected 'fp32' or 'bf16'")
    resolved = _resolve_spec(spec)
    if decoder_depth is not None:
        if (
            not isinstance(decoder_depth, int)
            or isinstance(decoder_depth, bool)
            or decoder_depth < 1
        ):
            raise ValueError(f"decoder_depth={decoder_depth!r}: expected an integer >= 1")
        if not isinstance(resolved, S.ModelSpec) or resolved.decoder is None:
            raise ValueError("decoder_depth: the spec has no decoder (give a pre-training spec)")
        resolved = dataclasses.replace(
            resolved, decoder=dataclasses.replace(resolved.decoder, depth=decoder_depth)
        )
    enc = _encoder_of(resolved)
    image_hw = None
    if image_size is not None:
        image_hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if enc.image_size is not None and tuple(image_hw) != tuple(enc.image_size):
            raise ValueError(f"image_size={image_size!r}: this encoder takes {enc.image_size} "
                             "only (only native-resolution encoders take another size)")  # fmt: skip
    elif enc.image_size is None:
        raise ValueError("image_size: a native-resolution encoder needs one (e.g. 224)")
    flops = {}
    for mode in modes:
        try:
            flops[mode] = count_flops(resolved, mode, batch_size, image_hw)
        except ValueError:
            if mode != "train":
                raise
            flops[mode] = 0  # an encoder-only spec: the train subject says why it skips
    cfg = _Config(backend, modes, batch_size, repeats, warmup, compare, device, precision,
                  compile, checkpoint, data, tokenizer, workers, image_hw, threads,
                  matmul_size, reference_repeats, tune_alloc, settle, seed)  # fmt: skip
    say = progress or (lambda _line: None)
    machine = _machine(cfg)
    subjects, skipped, pool = _prepare(cfg, resolved, say)
    try:
        times, waits = _rounds(cfg, subjects, skipped, say)
    finally:
        for _, subject, _ in subjects:
            subject.close()
        for worker in pool.values():
            worker.close()
    if hasattr(os, "getloadavg"):
        machine["load average (1, 5, 15 min) at end"] = _loadavg()
    return _report(cfg, resolved, flops, subjects, times, waits, skipped, machine, command)


def _report(
    cfg: _Config,
    spec: S.Spec,
    flops: dict[str, int],
    subjects: list,
    times: list[dict[int, float]],
    waits: list[list[float]],
    skipped: list[tuple[str, str]],
    machine: dict[str, Any],
    command: str | None,
) -> BenchReport:
    matmul_rounds: dict[str, dict[int, float]] = {}
    for (desc, _, info), ts in zip(subjects, times, strict=True):
        if desc.impl == "matmul":
            matmul_rounds[desc.backend] = {r: info["flops"] / t / 1e9 for r, t in ts.items()}
    matmul = {b: statistics.median(v.values()) for b, v in matmul_rounds.items() if v}
    ours = {}  # mode -> index of the chosen backend's aimv2 subject
    for i, (desc, _, _) in enumerate(subjects):
        if desc.impl == "aimv2" and desc.backend == cfg.backend and not desc.reference_blas:
            ours.setdefault(desc.mode, i)
    rows = []
    for i, (desc, _, info) in enumerate(subjects):
        ts = times[i]
        if desc.impl == "matmul" or not ts:
            continue
        seconds = statistics.median(ts.values())
        fl = flops.get(desc.mode) or None
        roof = None
        rates = matmul_rounds.get(desc.backend, {})
        if fl and not desc.reference_blas:
            per = [fl / t / 1e9 / rates[r] for r, t in ts.items() if r in rates]
            roof = statistics.median(per) if per else None
        rel = None
        if desc.mode in ours:
            base = times[ours[desc.mode]]
            per = [base[r] / t for r, t in ts.items() if r in base]
            rel = statistics.median(per) if per else None
        note = info.get("note", "")
        if "max_abs_diff" in info:
            note += f"; same weights as aimv2, max |Δ output| {info['max_abs_diff']:.1e}"
        rows.append(Row(
            mode=desc.mode, impl=desc.label, note=note, batch=desc.batch, seconds=seconds,
            images_per_s=desc.batch / seconds, gflops=fl / seconds / 1e9 if fl else None,
            of_matmul=roof, peak_bytes=info.get("peak_bytes"), relative=rel,
            data_wait=statistics.median(waits[i]) if desc.mode == "train" else None,
            times=[ts[r] for r in sorted(ts)],
        ))  # fmt: skip
    rows.sort(key=lambda row: MODES.index(row.mode))
    enc = _encoder_of(spec)
    hw = cfg.image_hw or enc.image_size
    name = getattr(spec, "name", "") or "custom spec"
    title = (f"aimv2 bench: {name}: encoder {enc.width} wide × {enc.depth} blocks, "
             f"{enc.trunk.block.attn.heads} heads, {hw[0]}×{hw[1]} px, batch {cfg.batch_size}, "
             f"{cfg.precision}" + (", compiled" if cfg.compile else "")
             + (", activation checkpointing" if cfg.checkpoint else ""))  # fmt: skip
    return BenchReport(
        command=command or "aimv2.bench.run(...)",
        title=title,
        machine=machine,
        flops={k: v for k, v in flops.items() if v},
        matmul=matmul,
        rows=rows,
        skipped=skipped,
        summary=_summary(cfg, rows, subjects, times),
        settings={
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()
        },  # fmt: skip
    )


def _summary(cfg: _Config, rows: list[Row], subjects: list, times: list) -> list[str]:
    out = []
    me = f"aimv2 {cfg.backend}"
    index = {(d.label, d.mode): i for i, (d, _, _) in enumerate(subjects)}
    for mode in cfg.modes:
        mine = next((r for r in rows if r.mode == mode and r.impl == me), None)
        if mine is None:
            continue
        if mine.of_matmul is not None:
            out.append(f"{mode}: {me} reaches {mine.of_matmul:.0%} of the measured matmul rate")
        others = [r for r in rows if r.mode == mode and r is not mine]
        peers = [r for r in others if not r.impl.startswith("aimv2")]
        if peers:  # per round: aimv2 against the fastest peer of that round
            my_times = times[index[(me, mode)]]
            per = []
            for r, t in my_times.items():
                theirs = [times[index[(p.impl, mode)]].get(r) for p in peers]
                theirs = [x for x in theirs if x is not None]
                if theirs:
                    per.append(min(theirs) / t)
            if per:
                out.append(f"{mode}: {me} throughput ÷ the fastest peer's = "
                           f"{statistics.median(per):.2f}× (median of {len(per)} interleaved "
                           f"rounds; lowest {min(per):.2f}×)")  # fmt: skip
        for r in others:
            if r.relative is None:
                continue
            if r.impl == "aimv2 torch" and cfg.backend == "mlx":
                out.append(f"{mode}: aimv2 torch is {r.relative:.2f}× as fast as aimv2 mlx")
            if r.impl.endswith("reference BLAS"):
                out.append(f"{mode}: aimv2 mlx is {1 / r.relative:.1f}× as fast as on the "
                           "reference BLAS bundled with mlx[cpu]")  # fmt: skip
    return out


# --------------------------------------------------------------------------- CLI


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` command to an ``argparse`` sub-parser set (``aimv2 bench``).

    Example:
        >>> parser = argparse.ArgumentParser(prog="aimv2")
        >>> _ = add_bench_parser(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["bench", "--compare"]).compare
        True
    """
    p = subparsers.add_parser(
        "bench",
        help="throughput (img/s, GFLOP/s, share of the matmul rate, memory) and peers",
        description="Time the encoder forward, forward+backward and the whole training "
        "step; with --compare, the other implementations on the same config, interleaved.",
    )
    p.add_argument(
        "spec",
        nargs="?",
        default=DEFAULT_SPEC,
        help=f"preset name, spec JSON file or inline JSON (default {DEFAULT_SPEC})",
    )
    p.add_argument("--backend", default="torch", choices=["torch", "mlx"])
    p.add_argument("--device", help="torch: cpu, cuda, cuda:1, ...; mlx: cpu or gpu")
    p.add_argument(
        "--mode",
        action="append",
        choices=[*MODES, "all"],
        help="forward (default), backward, train or all; repeatable",
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--image-size", type=int, help="for native-resolution encoders")
    p.add_argument("--decoder-depth", type=int, help="replace the spec's decoder depth")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per subject first")
    p.add_argument(
        "--compare",
        action="store_true",
        help="time the peers too (torch: transformers, timm; mlx: the torch "
        "backend and MLX on its bundled reference BLAS)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: autocast on torch, bfloat16 weights on MLX",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile / mx.compile")
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing")
    p.add_argument(
        "--data",
        default="builtin:shapes",
        help="what feeds --mode train: a data source or 'synthetic'",
    )
    p.add_argument("--tokenizer", help="SentencePiece model for a non-builtin --data")
    p.add_argument("--workers", type=int, default=2, help="data-loader threads")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument(
        "--reference-repeats",
        type=int,
        default=1,
        help="rounds of MLX on the reference BLAS under --compare (0: none)",
    )
    p.add_argument(
        "--no-tune-alloc",
        action="store_true",
        help="leave glibc's allocator as it is in torch processes",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_cmd_bench)  # fmt: skip
    return p


def _cmd_bench(args: argparse.Namespace) -> int:
    modes = args.mode or ["forward"]
    if "all" in modes:
        modes = list(MODES)
    command = getattr(args, "command_line", None)
    if command is None:
        argv = sys.argv[sys.argv.index("bench") :] if "bench" in sys.argv else ["bench"]
        command = "aimv2 " + shlex.join(argv)

    def say(line: str) -> None:
        if not args.quiet:
            print(f"[bench] {line}", file=sys.stderr, flush=True)

    try:
        report = run(
            args.spec,
            args.backend,
            modes=modes,
            batch_size=args.batch_size,
            repeats=args.repeats,
            warmup=args.warmup,
            compare=args.compare,
            device=args.device,
            precision=args.precision,
            compile=args.compile,
            checkpoint=args.checkpoint,
            data=args.data,
            tokenizer=args.tokenizer,
            workers=args.workers,
            image_size=args.image_size,
            decoder_depth=args.decoder_depth,
            threads=args.threads,
            matmul_size=args.matmul_size,
            reference_repeats=args.reference_repeats,
            tune_alloc=not args.no_tune_alloc,
            seed=args.seed,
            command=command,
            progress=say,
        )
    except (ValueError, TypeError, KeyError) as err:
        print(f"aimv2 bench: {err}", file=sys.stderr)
        return 2
    print(report.text(), end="", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return 0 if report.rows else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m aimv2.bench [options]``: the same as ``aimv2 bench [options]``.

    Example:
        >>> main(["aimv2-test-tiny", "--repeats", "1", "--quiet"])  # doctest: +ELLIPSIS
        ### aimv2 bench: aimv2-test-tiny: ...
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker_main()
    parser = argparse.ArgumentParser(prog="python -m aimv2.bench")
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *argv])
    args.command_line = "aimv2 " + shlex.join(["bench", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
