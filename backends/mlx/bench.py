"""What ``aimv2 bench`` times on MLX: the square-matmul roofline, the encoder's forward
and forward+backward, and one training step through :class:`Trainer`, with bfloat16
weights, ``mx.compile``, activation checkpointing and peak memory.

The mirror image of ``aimv2.backends.torch.bench``: both satisfy
:class:`aimv2.contract.BenchBackend` (same names, same signatures); the driver
(:mod:`aimv2.bench`) does the rest. On a CPU every call first plans the batch split
over MLX streams (:func:`plan_cpu_batch`: a compiled function does not re-plan) and
the matmul gives the BLAS its threads back (:func:`restore_blas_threads`). The peers
offered under ``--compare`` are the torch backend and MLX itself on the reference BLAS
bundled with ``mlx[cpu]``; MLX processes want an optimized BLAS preloaded
(:data:`PRELOAD_BLAS`, :mod:`aimv2.blas`).

Example:
    >>> call, sync, info = matmul(64, "cpu")
    >>> call(), info["flops"]
    (None, 524288)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from aimv2.optim import OptimConfig
from aimv2.specs import Spec
from aimv2.weights import init_weights

from .cpu import plan_cpu_batch, restore_blas_threads
from .registry import build_module
from .runtime import set_checkpointing
from .train import Trainer
from .weights import set_weights

__all__ = [
    "PRELOAD_BLAS",
    "prepare",
    "describe",
    "peers",
    "matmul",
    "encoder",
    "train_step",
    "peak_memory",
    "data_loader",
]

NAME = "mlx"
PRELOAD_BLAS = True  # mlx[cpu] on Linux bundles the reference BLAS; an optimized one is ~40x


def prepare(device: str | None = None, threads: int | None = None, tune_alloc: bool = True) -> str:
    """Set this process up for timing and return the device subjects run on: ``cpu`` or
    ``gpu`` made MLX's default device (MLX's own default when none is named).
    ``threads`` and ``tune_alloc`` are torch's and do not apply.

    Raises NotImplementedError for a device MLX does not have.

    Example:
        >>> prepare("cpu")
        'cpu'
    """
    if device:
        if device not in ("cpu", "gpu"):
            raise NotImplementedError(f"device={device!r}: MLX devices are 'cpu' and 'gpu'")
        mx.set_default_device(mx.cpu if device == "cpu" else mx.gpu)
    return "cpu" if mx.default_device() == mx.cpu else "gpu"


def describe(device: str | None = None, compare: bool = False) -> dict[str, str]:
    """The report's line about MLX (its version; the driver adds the BLAS it runs on).

    Example:
        >>> list(describe("cpu", compare=True))
        ['mlx']
    """
    return {NAME: _version("mlx")}


def peers(mode: str) -> list[dict[str, Any]]:
    """The implementations ``--compare`` times beside aimv2 on MLX in ``mode``: the torch
    backend, and (``forward`` only: it is some 40x slower) MLX on the reference BLAS.

    Example:
        >>> [(p["backend"], p.get("reference_blas", False)) for p in peers("forward")]
        [('torch', False), ('mlx', True)]
        >>> [p["label"] for p in peers("train")]
        ['aimv2 torch']
    """
    out: list[dict[str, Any]] = [{"backend": "torch", "impl": "aimv2", "label": "aimv2 torch"}]
    if mode == "forward":
        out.append(
            {
                "backend": NAME,
                "impl": "aimv2",
                "label": "aimv2 mlx, reference BLAS",
                "reference_blas": True,
            }
        )
    return out


def matmul(
    size: int, device: str | None = None, precision: str = "fp32"
) -> tuple[Callable[[], Any], Callable[[], None], dict[str, Any]]:
    """A square ``size``² float32 matmul on the default device: the roofline (float32
    also under ``precision="bf16"``). Each call first gives the BLAS back the threads a
    split batch took.

    Example:
        >>> _, _, info = matmul(64, "cpu", "bf16")
        >>> info["dtype"]
        'float32'
    """
    a, b = mx.random.normal((size, size)), mx.random.normal((size, size))
    mx.eval(a, b)

    def call() -> None:
        restore_blas_threads()  # an encoder batch split over streams set it to 1
        mx.eval(a @ b)

    return call, _sync, {"flops": 2 * size**3, "dtype": "float32"}


def _built(spec: Spec, seed: int) -> nn.Module:
    """``spec`` with the initial weights of ``seed`` (as ``aimv2.build`` makes them)."""
    model = build_module(spec)
    set_weights(model, init_weights(spec, seed))
    return model


def encoder(
    spec: Spec,
    mode: str,
    batch: int,
    image_hw: tuple[int, int] | None = None,
    *,
    impl: str = "aimv2",
    peer_folder: str | None = None,
    device: str | None = None,
    precision: str = "fp32",
    compile: bool = False,
    checkpoint: bool = False,
    seed: int = 0,
) -> tuple[Callable[[], Any], Callable[[], None], dict[str, Any]]:
    """The encoder ``spec`` on a random batch: inference (``mode="forward"``) or forward
    and backward of a scalar (``"backward"``); ``precision="bf16"``: bfloat16 weights.
    ``impl`` must be ``aimv2`` (MLX has no other). ``info["params"]``: parameter bytes.

    Example:
        >>> from aimv2 import presets
        >>> enc = presets.get("aimv2-test-tiny").encoder
        >>> call, sync, info = encoder(enc, "backward", 2, device="cpu")
        >>> call(), info["params"] == 4 * sum(w.size for w in init_weights(enc).values())
        (None, True)
    """
    if mode not in ("forward", "backward"):
        raise ValueError(f"mode={mode!r}: expected 'forward' or 'backward'")
    if impl != "aimv2":
        raise NotImplementedError(f"{impl} has no MLX implementation")
    model = _built(spec, seed)
    if precision == "bf16":
        model.set_dtype(mx.bfloat16)
    if checkpoint:
        set_checkpointing(model)
    info = {"params": _bytes(model)}
    x = mx.random.normal((batch, spec.in_channels, *(image_hw or spec.image_size)))
    mx.eval(x)
    if mode == "forward":
        fn = (lambda im: model(im, check=False)) if compile else model
    else:
        fn = nn.value_and_grad(model, lambda im: model(im, check=False).mean())
    if compile:
        fn = mx.compile(fn, inputs=model.state)

    def call() -> None:
        plan_cpu_batch(batch)
        mx.eval(fn(x))

    return call, _sync, info


def train_step(
    spec: Spec,
    optim: OptimConfig,
    batch: int,
    *,
    device: str | None = None,
    precision: str = "fp32",
    compile: bool = False,
    checkpoint: bool = False,
    seed: int = 0,
) -> tuple[Callable[[Sequence[Mapping[str, Any]]], Any], Callable[[], None], dict[str, Any]]:
    """One pre-training update of ``spec`` (a model with a decoder) through
    :class:`Trainer` (always ``mx.compile``d): ``step(micro_batches)`` at ``optim.lr``.
    ``info["params"]``: parameters and the two AdamW moments, in bytes.

    Raises NotImplementedError for ``precision="bf16"`` (MLX trains in float32).

    Example:
        >>> from aimv2 import presets
        >>> from aimv2.testing import random_batch
        >>> spec = presets.get("aimv2-test-tiny")
        >>> cfg = OptimConfig(lr=1e-4, warmup_steps=0, total_steps=10)
        >>> step, sync, info = train_step(spec, cfg, 2, device="cpu")
        >>> sorted(step([random_batch(spec, 0, batch=2)]))
        ['grad_norm', 'loss', 'pixel_loss', 'text_loss']
    """
    if precision != "fp32":
        raise NotImplementedError("MLX training runs in float32 (precision fp32)")
    model = _built(spec, seed)
    if checkpoint:
        set_checkpointing(model)
    trainer = Trainer(model, optim, compile=True)
    info = {"params": 3 * _bytes(model)}  # + two AdamW moments

    def step(micro_batches: Sequence[Mapping[str, Any]]) -> Any:
        plan_cpu_batch(batch)  # the compiled step does not re-plan the CPU split
        return trainer.step(micro_batches, lr=optim.lr)

    return step, _sync, info


def peak_memory(call: Callable[[], Any], device: str | None = None) -> int | None:
    """Run ``call`` once; the memory it needed on top of what was live before (MLX's
    allocator peak, its cache cleared first).

    Example:
        >>> peak_memory(lambda: mx.eval(mx.ones((1 << 20,))), "cpu") >= 1 << 22
        True
    """
    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    call()
    return max(0, mx.get_peak_memory() - before)


def data_loader(
    dataset: Any, batch: int, workers: int, seed: int = 0
) -> tuple[Callable[[], Any], Callable[[], None], dict[str, Any]]:
    """MLX has no data loader of its own (MLX programs use NumPy-based loaders, such as
    :class:`aimv2.data.Loader`): there is no baseline to time, so this raises
    NotImplementedError and ``aimv2 bench --mode data`` lists it as skipped.

    Example:
        >>> try:
        ...     data_loader([], 1, 0)
        ... except NotImplementedError as err:
        ...     print(err)
        mlx has no DataLoader: nothing to compare aimv2.data.Loader with
    """
    raise NotImplementedError("mlx has no DataLoader: nothing to compare aimv2.data.Loader with")


def _sync() -> None:
    """Nothing to wait for: ``mx.eval`` returns when the work is done."""


def _bytes(model: nn.Module) -> int:
    return int(sum(v.nbytes for _, v in tree_flatten(model.parameters())))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"
