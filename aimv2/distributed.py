"""Data-parallel and sharded pre-training on the frameworks' own runtimes.

``aimv2 pretrain`` runs unchanged under ``torchrun --nproc-per-node K`` (torch.distributed:
gloo on CPU, NCCL on CUDA; ``--shard none`` wraps the model in DistributedDataParallel,
``--shard full`` shards it with FSDP2 ``fully_shard``) and under ``mlx.launch -n K``
(``mx.distributed``: ring/TCP, MPI or NCCL; gradients averaged with
``nn.average_gradients``). The launcher's environment says which one is running; this
module only reads it, plans the work of one rank and keeps the run honest. It imports neither framework: the
framework calls live in ``aimv2.backends.<name>.train`` (``init_distributed``).

What makes K ranks equal one process:

- ``--batch-size B`` is the *global* batch of one update. Rank r loads its slice
  ``[r·B/K, (r+1)·B/K)`` of the global batch (:class:`aimv2.data.Loader` with ``rank`` /
  ``world_size``) and takes the same slice of the prefix lengths, which are drawn for
  the whole global batch from ``(seed, step)``.
- The losses are means over *counted* items: the pixel loss over target patches
  outside the prefix, the text loss over non-pad tokens, each within one micro-batch
  of the single process (``--accumulate`` micro-batches of ``B/accumulate``). A rank's
  share of a single-process micro-batch is a :class:`Chunk`; its loss terms are
  weighted by (its count) / (the micro-batch's count summed over all ranks), so the sum
  over ranks of the weighted terms is exactly the single-process loss
  (:func:`term_weights`, counts from :func:`loss_counts`). Reported losses are that
  same all-reduced sum: every rank reports the global value.

Example:
    >>> [(c.start, c.stop, c.group) for c in plan_update(8, 1, 2, rank=1)]
    [(0, 4, 0)]
    >>> World().describe()
    'single process'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import specs as S
from .backend import BACKENDS, load_backend

__all__ = [
    "DistributedError",
    "Launch",
    "World",
    "Chunk",
    "Watchdog",
    "detect_launch",
    "init_world",
    "plan_update",
    "loss_counts",
    "term_weights",
    "fingerprint",
    "SHARD_MODES",
    "DEFAULT_TIMEOUT_S",
    "EXIT_TIMEOUT",
]

SHARD_MODES = ("none", "full")
DEFAULT_TIMEOUT_S = 600.0
EXIT_TIMEOUT = 75  # exit status of a rank whose collective outlasted the timeout


class DistributedError(RuntimeError):
    """A multi-process run cannot start or continue (bad launch, ranks disagree, a rank
    stopped or stopped answering)."""


# which framework's runtime each launcher starts, and how to launch a backend
_FRAMEWORK_OF = {"torchrun": "torch", "mlx.launch": "mlx", "mpirun": "mlx"}
_LAUNCH_HINT = {"torch": "torchrun --nproc-per-node K", "mlx": "mlx.launch -n K"}


@dataclass(frozen=True)
class Launch:
    """What the launcher told this process through its environment.

    ``world_size`` is None where only the framework knows it (``mlx.launch``'s ring
    hostfile); ``local_rank`` picks the GPU on a multi-GPU node.

    Example:
        >>> Launch("torchrun", rank=1, world_size=2, local_rank=1).framework
        'torch'
    """

    launcher: str
    rank: int
    world_size: int | None
    local_rank: int = 0

    @property
    def framework(self) -> str:
        """``torch`` for torchrun, ``mlx`` for mlx.launch / mpirun."""
        return _FRAMEWORK_OF[self.launcher]


def _env_int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise DistributedError(f"environment {name}={env[name]!r}: expected an integer") from None


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launcher this process runs under, or None for a plain single process.

    torchrun sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; ``mlx.launch`` sets
    ``MLX_RANK`` (and ``MLX_HOSTFILE`` for ring, ``MLX_WORLD_SIZE`` for NCCL); ``mpirun``
    (MLX's MPI backend) sets ``OMPI_COMM_WORLD_RANK`` / ``_SIZE`` (Open MPI) or
    ``PMI_RANK`` / ``PMI_SIZE`` (MPICH).

    Example:
        >>> detect_launch({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}).launcher
        'torchrun'
        >>> detect_launch({}) is None
        True
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return Launch(
            "torchrun",
            _env_int(env, "RANK"),
            _env_int(env, "WORLD_SIZE"),
            _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
        )
    if "MLX_RANK" in env:
        size = _env_int(env, "MLX_WORLD_SIZE") if "MLX_WORLD_SIZE" in env else None
        return Launch("mlx.launch", _env_int(env, "MLX_RANK"), size)
    for prefix, local in (
        ("OMPI_COMM_WORLD_", "OMPI_COMM_WORLD_LOCAL_RANK"),
        ("PMI_", "MPI_LOCALRANKID"),
    ):
        if f"{prefix}RANK" in env and f"{prefix}SIZE" in env:
            return Launch(
                "mpirun",
                _env_int(env, f"{prefix}RANK"),
                _env_int(env, f"{prefix}SIZE"),
                _env_int(env, local) if local in env else 0,
            )
    return None


class Watchdog:
    """Ends this process when a guarded section (a collective) outlasts ``timeout_s``.

    MLX's ring backend waits forever on a peer that stopped answering without closing
    its sockets (torch's gloo and NCCL honour ``init_process_group(timeout=...)``
    instead, so torch runs use it only while joining the group). The process exits with
    :data:`EXIT_TIMEOUT` after a message on stderr, and the launcher then stops the
    other ranks. A section that finishes in time leaves no trace.

    Example:
        >>> dog = Watchdog(60.0, "[rank 0/2] ")
        >>> with dog.guard("all_sum"):
        ...     total = 1 + 1
        >>> total, dog._since is None  # done in time: nothing pending
        (2, True)
    """

    def __init__(self, timeout_s: float, tag: str = "") -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r}: expected a positive number of seconds")
        self.timeout_s, self.tag = float(timeout_s), tag
        self._since: float | None = None
        self._what = ""
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run the body under the timeout (re-entrant calls keep the outer deadline)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="aimv2-watchdog", daemon=True
                )
                self._thread.start()
        outer = self._since is not None
        if not outer:
            self._since, self._what = time.monotonic(), what
        try:
            yield
        finally:
            if not outer:
                self._since = None

    def _watch(self) -> None:
        tick = min(1.0, self.timeout_s / 10)
        while True:
            time.sleep(tick)
            since = self._since
            if since is not None and time.monotonic() - since > self.timeout_s:
                sys.stderr.write(
                    f"\naimv2 pretrain {self.tag}: {self._what} did not complete within "
                    f"{self.timeout_s:.0f} s: another rank stopped or stopped answering "
                    f"(its own error, if any, is printed by it or by the launcher); "
                    f"exiting with status {EXIT_TIMEOUT}\n"
                )
                sys.stderr.flush()
                os._exit(EXIT_TIMEOUT)


class World:
    """The ranks of one run: this process's ``rank`` of ``size``, and host collectives.

    A plain ``World()`` is one process (rank 0 of 1) and needs no framework. A launched
    one (:func:`init_world`) holds the backend's communicator ``comm`` (from
    ``aimv2.backends.<name>.train.init_distributed``), which offers ``sum_ints``,
    ``max_ints``, ``barrier`` and ``close`` over host integer arrays; the gradient
    collectives live in the backend's Trainer.

    Example:
        >>> w = World()
        >>> w.is_main, w.sum_ints([1, 2]).tolist(), w.agree([3])
        (True, [1, 2], True)
    """

    def __init__(
        self,
        rank: int = 0,
        size: int = 1,
        *,
        backend: str | None = None,
        comm: Any = None,
        launch: Launch | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"rank={rank}, size={size}: expected 0 <= rank < size")
        if size > 1 and comm is None:
            raise ValueError("a World of more than one rank needs a communicator")
        self.rank, self.size, self.backend = rank, size, backend
        self.comm, self.launch, self.timeout_s = comm, launch, timeout_s
        # a communicator whose collectives enforce the timeout themselves (torch's gloo and
        # NCCL) needs no watchdog; MLX's do not
        guarded = size > 1 and not getattr(comm, "enforces_timeout", False)
        self.watchdog = Watchdog(timeout_s, self.tag) if guarded else None

    @property
    def is_main(self) -> bool:
        """True on rank 0: it writes metrics, progress and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one rank."""
        return self.size > 1

    @property
    def tag(self) -> str:
        """``[rank r/K]`` (empty for a single process), for messages."""
        return f"[rank {self.rank}/{self.size}]" if self.size > 1 else ""

    def describe(self) -> str:
        """One line for logs: launcher, framework, ranks."""
        if not self.distributed:
            return "single process"
        how = self.launch.launcher if self.launch else "launcher"
        return f"{self.size} ranks ({how}, {self.backend}), this is rank {self.rank}"

    def guard(self, what: str) -> Any:
        """Context manager: the body (a collective) must finish within the timeout.

        Example:
            >>> w = World()
            >>> with w.guard("nothing"):  # one process: no collective, no watchdog
            ...     pass
            >>> w.watchdog is None
            True
        """
        return self.watchdog.guard(what) if self.watchdog else contextlib.nullcontext()

    def sum_ints(self, values: Sequence[int] | np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks of small non-negative integer vectors (int64).

        Example:
            >>> World().sum_ints(np.array([4, 5])).tolist()
            [4, 5]
        """
        arr = np.asarray(values, dtype=np.int64).reshape(-1)
        if not self.distributed:
            return arr.copy()
        with self.guard("an all-reduce of counts"):
            return np.asarray(self.comm.sum_ints(arr), dtype=np.int64)

    def agree(self, values: Sequence[int]) -> bool:
        """True on every rank iff every rank passed the same integers.

        Example:
            >>> World().agree([1, 2, 3])
            True
        """
        arr = np.asarray(values, dtype=np.int64).reshape(-1)
        if not self.distributed:
            return True
        with self.guard("a consistency check across ranks"):
            both = np.asarray(self.comm.max_ints(np.concatenate([arr, -arr])), np.int64)
        return bool((both[: len(arr)] == -both[len(arr) :]).all())

    def barrier(self) -> None:
        """Wait for every rank (a no-op for one process)."""
        if self.distributed:
            with self.guard("a barrier"):
                self.comm.barrier()

    def close(self) -> None:
        """Release the communicator (torch: destroy the process group)."""
        if self.comm is not None:
            self.comm.close()
            self.comm = None

    def record_failure(self, err: BaseException, *, secondary: bool = False) -> None:
        """Hand ``err`` to the launcher's error reporting (torchrun's error file);
        ``secondary``: this rank stopped because another rank failed first.

        Example:
            >>> w = World()
            >>> w.record_failure(ValueError("x"))  # one process: nothing to hand it to
            >>> w.comm is None
            True
        """
        if self.comm is not None and hasattr(self.comm, "record_failure"):
            self.comm.record_failure(err, secondary=secondary)


def init_world(
    backend: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    device: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> World:
    """Join the launcher's process group for ``backend``, or a one-process World.

    A launcher of the other framework is an error (torchrun starts no MLX group and
    mlx.launch no torch one), as is a non-positive ``timeout_s``. Collectives that
    outlast ``timeout_s`` end the run (torch: ``init_process_group(timeout=)``; MLX:
    :class:`Watchdog`).

    Example:
        >>> init_world("torch", environ={}).size
        1
    """
    if backend not in BACKENDS:
        raise DistributedError(f"backend={backend!r}: expected one of {BACKENDS}")
    if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise DistributedError(f"--dist-timeout {timeout_s!r}: expected a positive number")
    launch = detect_launch(environ)
    if launch is None or launch.world_size == 1:
        return World(backend=backend, launch=launch, timeout_s=timeout_s)
    if launch.framework != backend:
        right = _LAUNCH_HINT[backend]
        raise DistributedError(
            f"launched by {launch.launcher} but --backend {backend}: {launch.launcher} starts "
            f"{launch.framework}'s runtime; launch --backend {backend} with {right}"
        )
    be = load_backend(backend)
    joining = Watchdog(timeout_s, f"[rank {launch.rank}]")
    with joining.guard(f"joining the {launch.launcher} process group"):
        comm = be.init_distributed(
            timeout_s=timeout_s, device=device, local_rank=launch.local_rank, environ=environ
        )
    if comm.size == 1:
        comm.close()
        return World(backend=backend, launch=launch, timeout_s=timeout_s)
    return World(
        comm.rank, comm.size, backend=backend, comm=comm, launch=launch, timeout_s=timeout_s
    )


@dataclass(frozen=True)
class Chunk:
    """A rank's share of one single-process micro-batch: rows ``[start, stop)`` of the
    rank's local batch, belonging to micro-batch ``group`` of the update."""

    start: int
    stop: int
    group: int


def plan_update(batch_size: int, accumulate: int, world_size: int, rank: int) -> list[Chunk]:
    """The micro-batches rank ``rank`` runs for one update of global ``batch_size``.

    The single process splits the global batch into ``accumulate`` micro-batches of
    ``batch_size // accumulate``; rank r owns rows ``[r·B/K, (r+1)·B/K)``. Each chunk is
    the overlap of the two, so no chunk is larger than a single-process micro-batch
    (accumulation still bounds memory). Every rank must run the same number of chunks
    (FSDP gathers parameters in every forward).

    Example:
        >>> [(c.start, c.stop, c.group) for c in plan_update(8, 4, 2, rank=0)]
        [(0, 2, 0), (2, 4, 1)]
        >>> plan_update(6, 1, 4, rank=0)
        Traceback (most recent call last):
        ...
        ValueError: --batch-size 6: the global batch must split evenly over 4 ranks
    """
    for name, v in (
        ("--batch-size", batch_size),
        ("--accumulate", accumulate),
        ("world size", world_size),
    ):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} {v!r}: expected a positive integer")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank}: expected 0 <= rank < {world_size}")
    if batch_size % accumulate:
        raise ValueError(
            f"--batch-size {batch_size}: expected a multiple of --accumulate {accumulate}"
        )
    if batch_size % world_size:
        raise ValueError(
            f"--batch-size {batch_size}: the global batch must split evenly over {world_size} ranks"
        )

    def chunks(r: int) -> list[Chunk]:
        local, micro = batch_size // world_size, batch_size // accumulate
        lo, hi = r * local, (r + 1) * local
        out = []
        for j in range(accumulate):
            s, e = max(lo, j * micro), min(hi, (j + 1) * micro)
            if s < e:
                out.append(Chunk(s - lo, e - lo, j))
        return out

    counts = {len(chunks(r)) for r in range(world_size)}
    if len(counts) > 1:
        raise ValueError(
            f"--accumulate {accumulate} with {world_size} ranks and --batch-size {batch_size}: "
            f"ranks would run different numbers of micro-batches ({sorted(counts)}); pick "
            f"--accumulate a multiple or a divisor of the number of ranks"
        )
    return chunks(rank)


def loss_counts(
    spec: S.ModelSpec, tokens: np.ndarray | None, prefix_len: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per example: how many target patches the pixel loss counts and how many tokens the
    text loss counts — the denominators of the model's two means.

    The pixel loss predicts patches 1..N−1; with ``outside_prefix_only`` (and prefix
    attention) only targets at positions ≥ M count, i.e. N − M of them. The text loss
    counts tokens that are not ``pad_id``. A head the spec does not build counts 0.

    Example:
        >>> import aimv2
        >>> spec = aimv2.presets.get("aimv2-test-tiny")
        >>> n = spec.encoder.num_patches
        >>> px, tx = loss_counts(spec, np.array([[5, 6, 0], [7, 0, 0]]), np.array([1, n - 1]))
        >>> px.tolist() == [n - 1, 1], tx.tolist()
        (True, [2, 1])
    """
    m = np.asarray(prefix_len, dtype=np.int64).reshape(-1)
    n = spec.encoder.num_patches
    if spec.has_pixel_head:
        if spec.pixel.outside_prefix_only and spec.prefix.mode == "prefix":
            t = np.arange(1, n)
            pixel = (t[None, :] >= m[:, None]).sum(1).astype(np.int64)
        else:
            pixel = np.full(len(m), n - 1, dtype=np.int64)
    else:
        pixel = np.zeros(len(m), dtype=np.int64)
    if spec.has_text_head:
        if tokens is None:
            raise ValueError("tokens: required by a model with a text objective")
        tok = np.asarray(tokens)
        if tok.ndim != 2 or len(tok) != len(m):
            raise ValueError(f"tokens: expected shape ({len(m)}, T), got {tok.shape}")
        text = (tok != spec.text.pad_id).sum(1).astype(np.int64)
    else:
        text = np.zeros(len(m), dtype=np.int64)
    return pixel, text


def term_weights(
    chunks: Sequence[Chunk],
    pixel: np.ndarray,
    text: np.ndarray,
    group_pixel: np.ndarray,
    group_text: np.ndarray,
) -> list[dict[str, float]]:
    """Weights of each chunk's ``pixel_loss`` / ``text_loss`` so that their sum over
    chunks and ranks is the single-process loss of the update.

    ``pixel`` / ``text`` are this rank's per-example counts (:func:`loss_counts`);
    ``group_pixel`` / ``group_text`` the counts of each single-process micro-batch summed
    over all ranks. The single process averages its ``accumulate`` micro-batch losses,
    each a mean over that micro-batch's counted items; a chunk holding c of the C items
    of micro-batch j therefore weighs its own mean by c / (max(C, 1) · accumulate).

    Example:
        >>> term_weights([Chunk(0, 2, 0)], np.array([3, 1]), np.array([2, 2]),
        ...              np.array([8]), np.array([8]))
        [{'pixel_loss': 0.5, 'text_loss': 0.5}]
    """
    a = len(group_pixel)
    if len(group_text) != a:
        raise ValueError("group_pixel and group_text: expected one count per micro-batch")
    out = []
    for c in chunks:
        if not 0 <= c.group < a:
            raise ValueError(f"chunk {c}: group outside the {a} micro-batches")
        wp = float(pixel[c.start : c.stop].sum()) / (max(int(group_pixel[c.group]), 1) * a)
        wt = float(text[c.start : c.stop].sum()) / (max(int(group_text[c.group]), 1) * a)
        out.append({"pixel_loss": wp, "text_loss": wt})
    return out


def stream_state(world: World, position: Sequence[int] | None, shuffle: int) -> dict[str, Any]:
    """What a checkpoint records of a tar-shard stream: every rank's position (pass,
    items), gathered (a collective on every rank), and the stream's shuffle buffer, so
    that a resumed run starts each rank's stream where it was (:func:`stream_resume`).
    Empty when there is no stream (``position`` None on every rank).

    Example:
        >>> stream_state(World(), (2, 17), 1000)
        {'stream_positions': [[2, 17]], 'stream_shuffle': 1000}
        >>> stream_state(World(), None, 1000)
        {}
    """
    if position is None:
        return {}
    flat = np.zeros(2 * world.size, np.int64)
    flat[2 * world.rank : 2 * world.rank + 2] = position
    positions = world.sum_ints(flat).reshape(world.size, 2).tolist()
    return {"stream_positions": positions, "stream_shuffle": shuffle}


def stream_resume(
    source: Any, state: Mapping[str, Any] | None, world: World, shuffle: int
) -> tuple[list[int] | None, int]:
    """(stream position, stream shuffle) for this rank's loader over ``source`` when
    resuming from a checkpoint's ``state`` (None: a fresh run, which gets ``shuffle``;
    a source that is not tar shards has no position). The
    checkpoint records both (``stream_positions`` per rank, ``stream_shuffle``); with
    another number of ranks there is no position (the loader replays the stream up to
    the step). A checkpoint without positions comes from before streams were shuffled:
    its run read the shards in file order and keeps doing so (shuffle 0), so that the
    resumed run is the uninterrupted one.

    Example:
        >>> import tempfile
        >>> from aimv2.data import open_source
        >>> from aimv2.testing import write_tar_shards
        >>> d = tempfile.mkdtemp(); _ = write_tar_shards(d, 1, 2)
        >>> tar = open_source(d + "/s-0.tar")
        >>> stream_resume(tar, {"stream_positions": [[0, 5]], "stream_shuffle": 8}, World(), 1000)
        ([0, 5], 8)
        >>> stream_resume(tar, {"step": 3}, World(), 1000), stream_resume(tar, None, World(), 1000)
        ((None, 0), (None, 1000))
    """
    from .data import TarShardSource

    if state is None or not isinstance(source, TarShardSource):
        return None, shuffle
    positions = state.get("stream_positions")
    if not isinstance(positions, list):
        return None, 0
    shuffle = state.get("stream_shuffle", shuffle)
    if len(positions) != world.size:
        return None, shuffle
    return positions[world.rank], shuffle


def fingerprint(obj: Any) -> int:
    """A 31-bit hash of a JSON-able object: ranks compare run configs with it.

    Example:
        >>> fingerprint({"a": 1}) == fingerprint({"a": 1}), 0 <= fingerprint([1]) < 2**31
        (True, True)
    """
    text = json.dumps(obj, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big") & 0x7FFFFFFF
