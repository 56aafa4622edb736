"""What ``aimv2 bench`` times on torch: the square-matmul roofline, the encoder's forward
and forward+backward, and one training step through :class:`Trainer`, with device
sync, bf16 autocast, ``torch.compile``, activation checkpointing and peak memory.

The mirror image of ``aimv2.backends.mlx.bench``: both satisfy
:class:`aimv2.contract.BenchBackend` (same names, same signatures); the driver
(:mod:`aimv2.bench`) does the rest. The peers offered under ``--compare`` are
``transformers`` and ``timm`` (:mod:`aimv2.backends.torch.peers`); every subject runs
with :func:`tune_cpu_allocator` unless told not to, peers included, so the comparison
stays fair. A torch process never gets an optimized BLAS preloaded
(:data:`PRELOAD_BLAS`): it would compete with torch's own.

Example:
    >>> call, sync, info = matmul(64, "cpu")
    >>> tuple(call().shape), info["flops"]
    ((64, 64), 524288)
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

import torch

from aimv2.optim import OptimConfig
from aimv2.specs import EncoderSpec, Spec
from aimv2.weights import init_weights

from .cpu import tune_cpu_allocator
from .peers import PEERS, forward_of, load_peer, max_abs_diff
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

NAME = "torch"
PRELOAD_BLAS = False  # a preloaded OpenBLAS competes with torch's own BLAS: never


def prepare(device: str | None = None, threads: int | None = None, tune_alloc: bool = True) -> str:
    """Set this process up for timing and return the device subjects run on (``cuda``
    when a GPU is visible and none is named): ``threads`` intra-op threads, glibc's
    allocator tuned (:func:`tune_cpu_allocator`) when ``tune_alloc``.

    Example:
        >>> prepare("cpu", tune_alloc=False)
        'cpu'
    """
    if threads:
        torch.set_num_threads(threads)
    if tune_alloc:
        tune_cpu_allocator()
    return str(_device(device))


def describe(device: str | None = None, compare: bool = False) -> dict[str, str]:
    """The report's line about torch (version, threads, GPU) and, with ``compare``, the
    versions of the peers.

    Example:
        >>> sorted(describe("cpu", compare=True))
        ['peers', 'torch']
    """
    gpu = ""
    if torch.cuda.is_available() and (device or "cuda").startswith("cuda"):
        gpu = f", GPU {torch.cuda.get_device_name()}"
    out = {NAME: f"{torch.__version__}, {torch.get_num_threads()} threads{gpu}"}
    if compare:
        out["peers"] = ", ".join(f"{name} {_version(name)}" for name in PEERS)
    return out


def peers(mode: str) -> list[dict[str, Any]]:
    """The implementations ``--compare`` times beside aimv2 in ``mode``: transformers and
    timm (timm in a process of its own, since it may import with stand-in torchvision
    modules); neither has AIMv2 pre-training.

    Example:
        >>> [p["impl"] for p in peers("forward")], peers("train")
        (['transformers', 'timm'], [])
    """
    if mode == "train":
        return []
    return [
        {"backend": NAME, "impl": "transformers", "label": "transformers"},
        {"backend": NAME, "impl": "timm", "label": "timm", "isolated": True},
    ]


def matmul(
    size: int, device: str | None = None, precision: str = "fp32"
) -> tuple[Callable[[], Any], Callable[[], None], dict[str, Any]]:
    """A square ``size``² matmul in the precision the model runs in (bf16 autocast:
    bf16 GEMMs): the roofline.

    Example:
        >>> _, _, info = matmul(64, "cpu", "bf16")
        >>> info["dtype"]
        'bfloat16'
    """
    dev = _device(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=dev, dtype=dtype)
    b = torch.randn(size, size, device=dev, dtype=dtype)
    info = {"flops": 2 * size**3, "dtype": "bfloat16" if precision == "bf16" else "float32"}
    return (lambda: a @ b), _sync(dev), info


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
    and backward of a scalar (``"backward"``), as ``impl`` (``aimv2`` or a peer holding
    the same weights, checked on one image). ``info["params"]``: parameter bytes.

    Example:
        >>> from aimv2 import presets
        >>> enc = presets.get("aimv2-test-tiny").encoder
        >>> call, sync, info = encoder(enc, "forward", 2, device="cpu")
        >>> tuple(call().shape), info["params"] == 4 * sum(
        ...     w.size for w in init_weights(enc).values())
        ((2, 16, 32), True)
    """
    if mode not in ("forward", "backward"):
        raise ValueError(f"mode={mode!r}: expected 'forward' or 'backward'")
    dev = _device(device)
    x = torch.randn(batch, spec.in_channels, *(image_hw or spec.image_size), device=dev)
    model, info = _encoder_model(spec, impl, peer_folder, checkpoint, seed)
    model = model.to(dev).train(mode != "forward")
    fwd = forward_of(impl, torch.compile(model) if compile else model)
    autocast = _autocast(precision, dev)
    if mode == "forward":

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

    return call, _sync(dev), info


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
    :class:`Trainer`: ``step(micro_batches)`` at ``optim.lr``. ``info["params"]``:
    parameters and the two AdamW moments, in bytes.

    Example:
        >>> from aimv2 import presets
        >>> from aimv2.testing import random_batch
        >>> spec = presets.get("aimv2-test-tiny")
        >>> cfg = OptimConfig(lr=1e-4, warmup_steps=0, total_steps=10)
        >>> step, sync, info = train_step(spec, cfg, 2, device="cpu")
        >>> sorted(step([random_batch(spec, 0, batch=2)]))
        ['grad_norm', 'loss', 'pixel_loss', 'text_loss']
    """
    dev = _device(device)
    model = _built(spec, seed).to(dev)
    if checkpoint:
        set_checkpointing(model)
    autocast = "bf16" if precision == "bf16" else None
    trainer = Trainer(model, optim, compile=compile, autocast=autocast)
    info = {"params": 3 * _bytes(model.parameters())}  # + two AdamW moments

    def step(micro_batches: Sequence[Mapping[str, Any]]) -> Any:
        return trainer.step(micro_batches, lr=optim.lr)

    return step, _sync(dev), info


def peak_memory(call: Callable[[], Any], device: str | None = None) -> int | None:
    """Run ``call`` once; the memory it needed on top of what was live before. CUDA:
    the allocator's peak; CPU: the process's peak resident set over the call, after
    handing free heap memory back to the OS (approximate: allocator slack counts; None
    where ``/proc`` cannot tell).

    Example:
        >>> extra = peak_memory(lambda: torch.ones(1 << 24), "cpu")  # 64 MiB
        >>> extra is None or 48 << 20 < extra < 96 << 20
        True
    """
    dev = _device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        call()
        torch.cuda.synchronize(dev)
        return max(0, torch.cuda.max_memory_allocated(dev) - before)
    _malloc_trim()
    before = _proc_status().get("VmRSS")
    if before is None or not _reset_rss_peak():
        call()
        return None
    call()
    return max(0, _proc_status().get("VmHWM", before) - before)


def data_loader(
    dataset: Any, batch: int, workers: int, seed: int = 0
) -> tuple[Callable[[], Any], Callable[[], None], dict[str, Any]]:
    """``torch.utils.data.DataLoader`` over ``dataset`` as PyTorch users run it: shuffled
    (a sampler seeded with ``seed``, a new permutation each epoch, endless), ``workers``
    worker processes with the default ``prefetch_factor`` (2 batches each), default
    collation (NumPy arrays become one tensor, made in the worker's shared memory):
    ``call()`` returns the next collated batch. ``info["close"]()`` stops the workers.

    Example:
        >>> import numpy as np
        >>> call, sync, info = data_loader([np.full(3, i, np.float32) for i in range(8)], 4, 0)
        >>> tuple(call().shape), info["prefetch"]
        ((4, 3), 0)
    """
    from torch.utils.data import DataLoader, RandomSampler

    gen = torch.Generator()
    gen.manual_seed(seed)
    # one endless iterator: a new permutation every len(dataset) samples
    sampler = RandomSampler(dataset, num_samples=1 << 40, generator=gen)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    state: dict[str, Any] = {"it": iter(loader)}

    def call() -> Any:
        return next(state["it"])

    def close() -> None:
        state.clear()  # the iterator shuts its workers down when it is collected

    info = {
        "prefetch": 2 * workers,
        "note": f"torch.utils.data.DataLoader {torch.__version__}, prefetch_factor 2",
        "close": close,
    }
    return call, lambda: None, info


def _built(spec: Spec, seed: int) -> torch.nn.Module:
    """``spec`` with the initial weights of ``seed`` (as ``aimv2.build`` makes them)."""
    model = build_module(spec)
    set_weights(model, init_weights(spec, seed))
    return model


def _encoder_model(
    spec: EncoderSpec, impl: str, peer_folder: str | None, checkpoint: bool, seed: int
) -> tuple[torch.nn.Module, dict[str, Any]]:
    ours = _built(spec, seed)
    if impl == "aimv2":
        if checkpoint:
            set_checkpointing(ours)
        return ours, {"params": _bytes(ours.parameters())}
    if checkpoint:
        raise NotImplementedError(
            "activation checkpointing is an aimv2 option; peers run without it"
        )
    if peer_folder is None:
        raise NotImplementedError(f"{impl}: no exported folder to load it from")
    model, note = load_peer(impl, peer_folder)
    err = max_abs_diff(ours, model, impl, spec, seed)
    if not err < 1e-3:
        raise NotImplementedError(f"outputs differ from aimv2's by {err:.2e}: not the same model")
    return model, {"note": note, "max_abs_diff": err, "params": _bytes(model.parameters())}


def _device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(dev: torch.device) -> Callable[[], None]:
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def _autocast(precision: str, dev: torch.device) -> Callable[[], Any]:
    if precision == "bf16":
        return lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _bytes(params: Iterable[torch.Tensor]) -> int:
    return int(sum(p.numel() * p.element_size() for p in params))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


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
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
