"""The backend contract, as code: what a backend package offers the shared drivers.

A backend (``aimv2.backends.torch``, ``aimv2.backends.mlx``) is a package whose top level
satisfies :class:`Backend`; its ``Trainer`` class satisfies :class:`Trainer` and the
object its ``init_distributed`` returns satisfies :class:`Communicator`. Shared drivers
(training, probes, formats, bench, quickstart) use these verbs and nothing else: they
import no framework and never branch on a backend's name. ``tests/test_contract.py``
checks that both backends export exactly these names (their ``__all__``) with the
signatures and defaults written here.

Arrays cross the contract as NumPy in canonical names and torch layouts (Linear
(out, in), conv (out, in, kH, kW)); native arrays (``torch.Tensor``, ``mx.array``) only
go into and come out of a backend's own modules. Dtypes are named by string
(``"float32"``, ``"bfloat16"``, ``"float16"``, ``"float64"``) or given natively.

Example:
    >>> from aimv2 import contract
    >>> "load_weights" in contract.BACKEND_NAMES
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .optim import OptimConfig, ParamGroup
from .specs import Spec

__all__ = [
    "Backend",
    "Trainer",
    "Communicator",
    "BenchBackend",
    "BENCH_NAMES",
    "LossFn",
    "DTYPE_NAMES",
    "BACKEND_NAMES",
    "TRAINER_NAMES",
    "COMMUNICATOR_NAMES",
    "members",
]

# Dtype names every backend understands (MLX has no float64 on most devices; it refuses it
# by name).
DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")

# loss_fn(model, batch of native arrays) -> {"loss": scalar, other reported scalars...}
LossFn = Callable[[Any, Mapping[str, Any]], Mapping[str, Any]]


@runtime_checkable
class Communicator(Protocol):
    """This process's membership of a multi-process group (``torchrun``, ``mlx.launch``).

    Host-side collectives carry small integer vectors (loss counts, agreement checks);
    the gradient collectives stay inside each backend's Trainer.
    """

    rank: int
    size: int
    backend: str
    enforces_timeout: bool  # False: the caller guards collectives with a watchdog

    def sum_ints(self, arr: np.ndarray) -> np.ndarray:
        """Element-wise sum of an integer vector over the ranks."""
        ...

    def max_ints(self, arr: np.ndarray) -> np.ndarray:
        """Element-wise maximum of an integer vector over the ranks."""
        ...

    def barrier(self) -> None:
        """Wait for every rank."""
        ...

    def close(self) -> None:
        """Leave the group (where the framework allows)."""
        ...

    def record_failure(self, err: BaseException, *, secondary: bool = False) -> None:
        """Report ``err`` to the launcher's failure summary (where it has one);
        ``secondary``: this rank failed because another one did (it must not be named
        the root cause)."""
        ...


@runtime_checkable
class Trainer(Protocol):
    """Owns the optimizer state of one model and applies one update per :meth:`step`.

    Constructed as ``Trainer(model, cfg, *, compile="auto", autocast=None, loss_fn=None,
    world=None, shard="none")`` on every backend: ``compile="auto"`` compiles where that
    is cheap (``mx.compile``; not ``torch.compile``, whose warm-up costs tens of seconds),
    ``autocast="bf16"`` runs matmuls in bfloat16 where the device supports it, ``world``
    is an :class:`aimv2.distributed.World` for data parallelism and ``shard`` picks the
    torch sharding (``"none"``: DDP, ``"full"``: FSDP2; MLX holds whole replicas).
    Parameters frozen before (``freeze``) are not optimized. A multi-rank update without
    ``weights`` averages the ranks' gradients and reported values: a loss over rows
    gathered with ``gather_with_grad`` then trains exactly as one process would.
    """

    model: Any
    cfg: OptimConfig
    step_count: int
    names: list[str]  # the trained parameters (those with optimizer state), in model order
    groups: list[ParamGroup]  # the optimizer's groups, from aimv2.optim.param_groups

    def step(
        self,
        micro_batches: Sequence[Mapping[str, Any]],
        lr: float,
        weights: Sequence[Mapping[str, float]] | None = None,
    ) -> dict[str, float]:
        """Forward/backward every micro-batch, clip, update; the mean losses and grad norm."""
        ...

    def weight_arrays(self, *, root_only: bool = False) -> dict[str, np.ndarray]:
        """The model's weights as canonical NumPy arrays (gathered when sharded)."""
        ...

    def state_arrays(self, *, root_only: bool = False) -> dict[str, np.ndarray]:
        """Optimizer moments as ``exp_avg.<name>`` / ``exp_avg_sq.<name>`` arrays."""
        ...

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray], step_count: int) -> None:
        """Restore moments written by :meth:`state_arrays` on any backend."""
        ...


@runtime_checkable
class Backend(Protocol):
    """The top level of a backend package."""

    NAME: str
    REGISTRY: Mapping[str, Any]
    Trainer: type

    def realizes(self, spec_class: type[Spec]) -> Callable[[type], type]:
        """Class decorator registering a module class as the realization of ``spec_class``."""
        ...

    def build_module(self, spec: Spec) -> Any:
        """The native module realizing ``spec`` (weights not yet set)."""
        ...

    def build_part(self, spec: Spec) -> Any:
        """The module of a part, inside a composite's constructor (any registered
        component of the slot's role)."""
        ...

    def is_module(self, obj: Any) -> bool:
        """True for a module this backend built."""
        ...

    def get_weights(self, module: Any) -> dict[str, np.ndarray]:
        """Canonical name -> NumPy array (torch layouts) of every parameter."""
        ...

    def set_weights(
        self, module: Any, weights: Mapping[str, Any], *, allow_nonfinite: bool = False
    ) -> None:
        """Load canonical weights after a strict name/shape/value check, all or nothing."""
        ...

    def load_weights(
        self,
        spec: Spec,
        tensors: Iterable[tuple[str, Any]],
        *,
        dtype: Any = None,
        device: Any = None,
        allow_nonfinite: bool = False,
    ) -> Any:
        """Build ``spec`` in ``dtype`` on ``device`` and stream canonical tensors into it,
        one at a time (no second copy of a large model); every parameter must arrive."""
        ...

    def weight_dtypes(self, module: Any) -> dict[str, str]:
        """Canonical name -> dtype name (``"float32"``, ``"bfloat16"``…) of each parameter."""
        ...

    def get_weight(self, module: Any, name: str) -> np.ndarray:
        """One parameter as a canonical NumPy array (bf16/fp16 widened to float32)."""
        ...

    def to_numpy(self, x: Any) -> np.ndarray:
        """A native array as NumPy (bf16/fp16 as float32)."""
        ...

    def from_numpy(self, x: np.ndarray, like: Any = None) -> Any:
        """A NumPy array as a native array (floats cast to ``like``'s dtype if given)."""
        ...

    def to_model(self, module: Any, x: np.ndarray) -> Any:
        """``x`` as a native array on ``module``'s device, floats in its parameter dtype."""
        ...

    def cast(self, module: Any, dtype: Any = None, device: Any = None) -> Any:
        """Move/cast ``module`` (in place) and return it."""
        ...

    def native_dtype(self, dtype: Any) -> Any:
        """The framework dtype for a dtype name or a native dtype; None stays None."""
        ...

    def native_device(self, device: Any) -> Any:
        """The framework device for a device name or a native device; None stays None.
        A device the backend cannot use is a ValueError naming it."""
        ...

    def inference(self) -> AbstractContextManager[Any]:
        """A context in which calls build no autograd graph."""
        ...

    def default_device(self) -> str:
        """The device a run uses when none is named (``"cuda"``/``"gpu"`` if present)."""
        ...

    def set_checkpointing(self, model: Any, enabled: bool = True) -> int:
        """Activation checkpointing on (or off) for every block stack; how many switched."""
        ...

    def loss_and_grads(
        self, model: Any, images: Any, tokens: Any = None, prefix_len: Any = None
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """One forward and backward of a pre-training model: losses and canonical grads."""
        ...

    def output_and_grads(
        self, module: Any, inputs: Sequence[Any], cotangent: np.ndarray, **kwargs: Any
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``module(*inputs, **kwargs)`` and the gradient of ``sum(output * cotangent)``
        with respect to every parameter (canonical names and layouts)."""
        ...

    def init_distributed(
        self,
        *,
        timeout_s: float = 600.0,
        device: str | None = None,
        local_rank: int = 0,
        environ: Mapping[str, str] | None = None,
    ) -> Communicator:
        """Join the process group the launcher set up for this process (``environ``:
        the launcher's variables, default ``os.environ``)."""
        ...

    def pretrain_loss(self, model: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
        """AIMv2's objective on one batch of native arrays (a :data:`LossFn`)."""
        ...

    def probe_loss(self, model: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Cross-entropy and accuracy of a probe on ``features`` and ``labels``."""
        ...

    def classifier_loss(self, label_smoothing: float = 0.0) -> LossFn:
        """The fine-tuning :data:`LossFn`: label-smoothed cross-entropy and accuracy of an
        encoder's head output ``model(images, pool=True)`` on ``images`` and ``labels``."""
        ...

    def contrastive_loss(
        self, model: Any, batch: Mapping[str, Any], world: Any = None
    ) -> dict[str, Any]:
        """The symmetric contrastive loss of a LiT model on ``tokens`` with ``images`` or
        ``image_features``; under a multi-rank ``world`` over embeddings gathered from
        every rank (``functools.partial(contrastive_loss, world=world)`` is a
        :data:`LossFn`)."""
        ...

    def gather_with_grad(self, x: Any, world: Any = None) -> Any:
        """The rows of ``x`` from every rank, in rank order; the gradient reaching this
        rank's rows is summed over the ranks (each rank's loss of the gathered rows counts),
        so averaging the ranks' gradients gives the single-process gradient."""
        ...

    def freeze(self, model: Any, prefixes: Sequence[str]) -> int:
        """Stop training the parameters whose canonical names start with ``prefixes``: no
        gradient, left out of a Trainer built afterwards. Returns how many."""
        ...

    def value_and_grads(
        self, model: Any, loss_fn: LossFn, batch: Mapping[str, Any]
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """``loss_fn(model, batch of NumPy values)``: every reported value as a float, and
        the gradient of ``"loss"`` for every parameter (canonical names and layouts)."""
        ...


def members(protocol: type) -> list[str]:
    """The names a class satisfying ``protocol`` must offer (attributes and methods).

    Example:
        >>> members(Communicator)[:4]
        ['backend', 'barrier', 'close', 'enforces_timeout']
    """
    names = set(getattr(protocol, "__annotations__", {}))
    for name, value in vars(protocol).items():
        if not name.startswith("_") and callable(value):
            names.add(name)
    return sorted(names)


BACKEND_NAMES = tuple(members(Backend))
TRAINER_NAMES = tuple(members(Trainer))
COMMUNICATOR_NAMES = tuple(members(Communicator))


@runtime_checkable
class BenchBackend(Protocol):
    """The ``bench`` module of a backend package (``aimv2.backends.<name>.bench``): what
    ``aimv2 bench`` (:mod:`aimv2.bench`, which imports no framework) times on it.

    The driver plans the subjects, runs each in the process its BLAS needs, warms it
    up, times it in interleaved rounds and reports; the backend builds each subject as
    ``(call, sync, info)``: ``call()`` runs it once, ``sync()`` waits for the device,
    ``info`` holds ``params`` (resident bytes), and a peer's ``note`` and
    ``max_abs_diff``, a matmul's ``flops`` and ``dtype``. A subject that cannot run here
    (an option the backend lacks, a peer that does not import or is not the same model)
    raises NotImplementedError saying why; the driver lists it as skipped. ``device`` is
    what :meth:`prepare` returned. Both backends export exactly these names with these
    signatures (``tests/test_bench.py``).
    """

    PRELOAD_BLAS: bool  # whether this backend's processes get an optimized BLAS preloaded

    def prepare(
        self, device: str | None = None, threads: int | None = None, tune_alloc: bool = True
    ) -> str:
        """Set this process up for timing (device, threads, allocator); the device name."""
        ...

    def describe(self, device: str | None = None, compare: bool = False) -> dict[str, str]:
        """The report's machine lines about this backend (and, with ``compare``, its peers)."""
        ...

    def peers(self, mode: str) -> list[dict[str, Any]]:
        """What ``--compare`` times beside aimv2 in ``mode``: one dict per peer, with
        ``backend`` (the backend whose bench module builds it), ``impl`` (its ``encoder``
        ``impl``), ``label`` (its row), and optionally ``isolated`` (needs a process of its
        own) and ``reference_blas`` (runs on the BLAS bundled with the framework)."""
        ...

    def matmul(
        self, size: int, device: str | None = None, precision: str = "fp32"
    ) -> tuple[Callable[[], Any], Callable[[], None], dict[str, Any]]:
        """A square ``size``² matmul in the dtype the model's GEMMs run in: the roofline."""
        ...

    def encoder(
        self,
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
        """The encoder ``spec`` (weights from ``seed``) as ``impl`` on a random batch:
        inference (``mode="forward"``) or forward and backward (``"backward"``). A peer
        ``impl`` loads ``peer_folder``, which the driver exported in the peer's format
        from the same weights."""
        ...

    def train_step(
        self,
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
        """One pre-training update through the backend's Trainer, as
        ``(step(micro_batches), sync, info)``; the driver feeds it from the data loader."""
        ...

    def peak_memory(self, call: Callable[[], Any], device: str | None = None) -> int | None:
        """Run ``call`` once; the bytes it needed on top of what was live (None: unknown)."""
        ...

    def data_loader(
        self, dataset: Any, batch: int, workers: int, seed: int = 0
    ) -> tuple[Callable[[], Any], Callable[[], None], dict[str, Any]]:
        """The framework's own data loader over ``dataset`` (``len()`` and ``dataset[i]``,
        picklable), shuffled from ``seed``, endless: ``call()`` returns the next batch;
        ``info["close"]`` stops its workers. The baseline ``aimv2 bench --mode data``
        times :class:`aimv2.data.Loader` against; a framework without one raises
        NotImplementedError."""
        ...


BENCH_NAMES = tuple(members(BenchBackend))
