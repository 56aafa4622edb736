"""Where a :class:`~aimv2.data.Loader` makes its batches: in the calling thread
(:class:`InlineRunner`, ``num_workers=0``), in threads (:class:`ThreadRunner`) or in
worker processes that write images into shared memory (:class:`ProcessRunner`).

All three run the same jobs through the same :class:`~aimv2.data.batches.BatchMaker`,
so the batches do not depend on which runs them or how many workers there are. A job
writes into a *slot* (one batch of images); the loader holds at most ``prefetch`` slots,
which bounds the work in flight and the memory.

Worker processes: one job queue and one result pipe each (a worker that dies cannot
leave a shared queue locked), jobs dealt out in turn, images written to a
``multiprocessing.shared_memory`` slot and copied out once when the batch is handed
over. A worker that dies (killed, out of memory, a crash in a decoder) is reported,
replaced and its jobs redone — a job is a pure function of its step, so the batches
are the same; a job that kills two workers raises :class:`DataWorkerError`, as does an
exception inside a worker. Workers ignore SIGINT (the parent stops them), stop when
the parent goes away, and are stopped by :meth:`ProcessRunner.close`.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import traceback
from multiprocessing.connection import wait as wait_any
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from .batches import BatchMaker, Made
from .sample import UnreadableSourceError

__all__ = [
    "DataWorkerError",
    "InlineRunner",
    "ThreadRunner",
    "ProcessRunner",
    "default_start_method",
]

log = logging.getLogger("aimv2.data")

_SHM_DIR = "/dev/shm"


class DataWorkerError(RuntimeError):
    """A loader worker failed: an exception while making a batch (its traceback is in
    the message), or a job that killed two worker processes.

    Example:
        >>> issubclass(DataWorkerError, RuntimeError)
        True
    """


def default_start_method() -> str:
    """How worker processes start: ``fork`` on Linux (what ``torch.utils.data.DataLoader``
    does there: instant, and no re-import of the caller's ``__main__``), ``spawn``
    elsewhere (where fork is unsafe; the script then needs an
    ``if __name__ == "__main__":`` guard, as with torch).

    Example:
        >>> default_start_method() in ("fork", "spawn")
        True
    """
    return "fork" if sys.platform.startswith("linux") else "spawn"


class _Runner:
    """Slots and jobs; subclasses say where jobs run."""

    def __init__(self, maker: BatchMaker) -> None:
        self.maker = maker
        self.shape = maker.image_shape()
        self._tickets = 0
        self.closed = False

    def acquire(self) -> int:
        """A free slot (the loader never holds more than its prefetch)."""
        raise NotImplementedError

    def buffer(self, slot: int) -> np.ndarray | None:
        """The images of ``slot``, (batch_size, C, H, W) float32 (None: no fixed shape)."""
        raise NotImplementedError

    def release(self, slot: int) -> None:
        """Give ``slot`` back."""

    def images(self, slot: int, count: int) -> np.ndarray:
        """The first ``count`` images of ``slot``, as an array the caller may keep."""
        buf = self.buffer(slot)
        assert buf is not None
        return buf[:count]

    def submit(self, job: tuple[Any, ...], slot: int) -> int:
        """Start ``job`` writing into ``slot``; a ticket for :meth:`wait`."""
        raise NotImplementedError

    def wait(self, ticket: int) -> Made:
        """The result of a job (its exception, if it raised)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the workers and free the slots (idempotent)."""
        self.closed = True


class InlineRunner(_Runner):
    """Jobs run at once in the calling thread; each slot is a fresh array.

    Example:
        >>> import aimv2
        >>> from aimv2.data import open_source
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8)
        >>> r = InlineRunner(BatchMaker(open_source("builtin:digits"), spec, seed=0,
        ...                             batch_size=2))
        >>> slot = r.acquire(); r.wait(r.submit(("indexed", 0), slot)).count
        2
    """

    def __init__(self, maker: BatchMaker) -> None:
        super().__init__(maker)
        self._slots: dict[int, np.ndarray | None] = {}
        self._results: dict[int, cf.Future] = {}
        self._next_slot = 0

    def acquire(self) -> int:
        self._next_slot += 1
        shape = None if self.shape is None else (self.maker.batch_size, *self.shape)
        self._slots[self._next_slot] = None if shape is None else np.empty(shape, np.float32)
        return self._next_slot

    def buffer(self, slot: int) -> np.ndarray | None:
        return self._slots[slot]

    def release(self, slot: int) -> None:
        self._slots.pop(slot, None)

    def _run(self, job: tuple[Any, ...], slot: int) -> Made:
        return self.maker.run(job, self._slots[slot])

    def submit(self, job: tuple[Any, ...], slot: int) -> int:
        self._tickets += 1
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(self._run(job, slot))
        except BaseException as err:  # re-raised by wait()
            fut.set_exception(err)
        self._results[self._tickets] = fut
        return self._tickets

    def wait(self, ticket: int) -> Made:
        return self._results.pop(ticket).result()


class ThreadRunner(InlineRunner):
    """Jobs run in ``workers`` threads of this process (the GIL limits how far decoding
    and augmentation scale; :class:`ProcessRunner` does not share it)."""

    def __init__(self, maker: BatchMaker, workers: int) -> None:
        super().__init__(maker)
        self._pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="aimv2-loader")

    def submit(self, job: tuple[Any, ...], slot: int) -> int:
        self._tickets += 1
        self._results[self._tickets] = self._pool.submit(self._run, job, slot)
        return self._tickets

    def close(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)


def check_shared_memory(nbytes: int, what: str) -> None:
    """Raise a clear error when ``/dev/shm`` cannot hold ``nbytes`` (writing past its end
    would kill the workers with SIGBUS instead).

    Example:
        >>> check_shared_memory(1 << 20, "prefetch")
    """
    if not os.path.isdir(_SHM_DIR):
        return
    st = os.statvfs(_SHM_DIR)
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise MemoryError(
            f"{what}: the loader's shared memory needs {nbytes / 2**20:.0f} MiB but "
            f"{_SHM_DIR} has {free / 2**20:.0f} MiB free; lower prefetch or batch_size, "
            "or enlarge /dev/shm (docker: --shm-size)"
        )


class _Worker:
    """One worker process: its job queue, result pipe and process."""

    def __init__(self, ctx: Any, index: int, args: tuple[Any, ...]) -> None:
        self.index = index
        self.jobs = ctx.Queue()
        self.results, child_end = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(
            target=_worker_main,
            args=(index, *args, self.jobs, child_end, os.getpid()),
            name=f"aimv2-loader-{index}",
            daemon=True,
        )
        self.proc.start()
        child_end.close()
        self.pending: list[int] = []  # tickets sent to it, oldest first

    def stop(self, timeout: float) -> None:
        if self.proc.is_alive():
            try:
                self.jobs.put(None)
            except (OSError, ValueError):
                pass
            self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(1.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(1.0)
        self.jobs.cancel_join_thread()
        self.jobs.close()
        self.results.close()


class ProcessRunner(_Runner):
    """Jobs run in ``workers`` processes that write images into ``slots`` shared-memory
    batch buffers.

    Example:
        >>> import aimv2
        >>> from aimv2.data import open_source
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8)
        >>> maker = BatchMaker(open_source("builtin:digits"), spec, seed=0, batch_size=2)
        >>> r = ProcessRunner(maker, workers=2, slots=2)
        >>> slot = r.acquire(); made = r.wait(r.submit(("indexed", 3), slot))
        >>> made.keys == maker.indexed(3, np.empty((2, 3, 8, 8), np.float32)).keys
        True
        >>> r.close()
    """

    def __init__(
        self, maker: BatchMaker, workers: int, slots: int, start_method: str | None = None
    ) -> None:
        method = start_method or default_start_method()
        if method not in mp.get_all_start_methods():
            raise ValueError(
                f"start_method={start_method!r}: expected one of {mp.get_all_start_methods()}"
            )
        super().__init__(maker)
        self._ctx = mp.get_context(method)
        self._shm: list[SharedMemory] = []
        self._views: list[np.ndarray | None] = []
        self._free = list(range(slots))
        self._workers: list[_Worker] = []
        self._jobs: dict[int, tuple[tuple[Any, ...], int, int]] = {}  # ticket -> job, slot, deaths
        self._done: dict[int, tuple[str, Any]] = {}
        self._next = 0
        try:
            if self.shape is not None:
                nbytes = maker.batch_size * int(np.prod(self.shape)) * 4
                check_shared_memory(nbytes * slots, f"prefetch={slots}")
                for _ in range(slots):
                    shm = SharedMemory(create=True, size=max(nbytes, 1))
                    self._shm.append(shm)
                    shape = (maker.batch_size, *self.shape)
                    self._views.append(np.ndarray(shape, np.float32, buffer=shm.buf))
            else:
                self._views = [None] * slots
            self._args = (pickle.dumps(maker), [s.name for s in self._shm], self.shape)
            self._workers = [_Worker(self._ctx, i, self._args) for i in range(workers)]
        except BaseException:
            self.close()
            raise

    def acquire(self) -> int:
        return self._free.pop()

    def buffer(self, slot: int) -> np.ndarray | None:
        return self._views[slot]

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def images(self, slot: int, count: int) -> np.ndarray:
        return np.array(super().images(slot, count))  # the slot is reused: copy out

    def submit(self, job: tuple[Any, ...], slot: int) -> int:
        self._tickets += 1
        self._jobs[self._tickets] = (job, slot, 0)
        worker = self._workers[self._next % len(self._workers)]
        self._next += 1
        self._send(worker, self._tickets)
        return self._tickets

    def _send(self, worker: _Worker, ticket: int) -> None:
        job, slot, _ = self._jobs[ticket]
        worker.pending.append(ticket)
        worker.jobs.put((ticket, job, slot))

    def wait(self, ticket: int) -> Made:
        while ticket not in self._done:
            if self.closed:
                raise DataWorkerError("data loader: the workers were stopped (close())")
            self._pump()
        status, payload = self._done.pop(ticket)
        del self._jobs[ticket]
        if status == "error":
            raise DataWorkerError(payload)
        if status == "raise":
            raise payload
        return payload

    def _pump(self) -> None:
        """Receive whatever results are ready; replace workers that died."""
        by_handle: dict[Any, _Worker] = {}
        for w in self._workers:
            by_handle[w.results] = w
            by_handle[w.proc.sentinel] = w
        for handle in wait_any(list(by_handle), timeout=5.0):
            w = by_handle[handle]
            if handle is w.results:
                self._receive(w)
        for i, w in enumerate(self._workers):
            if w.proc.exitcode is not None:
                while self._receive(w):  # results it sent before it died
                    pass
                self._replace(i, w)

    def _receive(self, w: _Worker) -> bool:
        try:
            if not w.results.poll():
                return False
            ticket, status, payload = w.results.recv()
        except (EOFError, OSError, pickle.UnpicklingError):
            return False
        if status == "fatal":
            raise DataWorkerError(payload)
        if ticket in w.pending:
            w.pending.remove(ticket)
            self._done[ticket] = (status, payload)
        return True

    def _replace(self, i: int, w: _Worker) -> None:
        code = w.proc.exitcode
        w.stop(0.0)
        if w.pending:
            first = w.pending[0]
            job, slot, deaths = self._jobs[first]
            self._jobs[first] = (job, slot, deaths + 1)
            what = f"step {job[1]}"
            if deaths + 1 >= 2:
                raise DataWorkerError(
                    f"data loader: worker {i} died (exit code {code}) making {what}, and "
                    "so did the worker that retried it; the batch cannot be made"
                )
            log.warning(
                "data loader: worker %d (pid %s) died with exit code %s making %s; "
                "restarting it and redoing its %d job(s)",
                i,
                w.proc.pid,
                code,
                what,
                len(w.pending),
            )
        else:
            log.warning("data loader: idle worker %d died with exit code %s; restarting", i, code)
        fresh = _Worker(self._ctx, i, self._args)
        self._workers[i] = fresh
        for ticket in w.pending:
            self._send(fresh, ticket)

    def worker_pids(self) -> list[int | None]:
        """The process ids of the workers (for tests and diagnostics)."""
        return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        if getattr(self, "closed", True):  # closed, or __init__ failed before it began
            return
        self.closed = True
        for w in getattr(self, "_workers", []):
            w.stop(0.5)
        self._views = []
        for shm in getattr(self, "_shm", []):
            try:
                shm.close()
            except BufferError:  # a view still alive somewhere: the mapping goes with it
                pass
            try:
                shm.unlink()
            except (FileNotFoundError, OSError):
                pass
        self._shm = []

    def __del__(self) -> None:
        self.close()


def _worker_main(
    index: int,
    blob: bytes,
    shm_names: list[str],
    shape: tuple[int, ...] | None,
    jobs: Any,
    results: Any,
    parent: int,
) -> None:
    """The loop of a worker process: jobs in, images to shared memory, results out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    try:
        maker: BatchMaker = pickle.loads(blob)
        maker.source._skips.capture = []
        shms = [SharedMemory(name=name) for name in shm_names]
        views = [np.ndarray((maker.batch_size, *shape), np.float32, buffer=s.buf) for s in shms]
    except Exception as err:  # nothing can run here: say why, once
        text = f"data loader worker {index} could not start: {type(err).__name__}: {err}"
        results.send((None, "fatal", text))
        return
    try:
        while True:
            try:
                msg = jobs.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return
                continue
            if msg is None:
                return
            ticket, job, slot = msg
            try:
                made = maker.run(job, views[slot] if views else None)
                made.worker = index
                reply: tuple[int, str, Any] = (ticket, "ok", made)
            except UnreadableSourceError as err:  # about the data: the parent raises it as is
                reply = (ticket, "raise", err)
            except Exception as err:
                text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
                reply = (
                    ticket,
                    "error",
                    f"data loader worker {index}: {type(err).__name__}: {err}\n{text}",
                )
            try:
                results.send(reply)
            except (BrokenPipeError, OSError):
                return
    finally:
        del views
        for s in shms:
            s.close()
