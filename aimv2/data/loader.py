"""The deterministic, resumable :class:`Loader`: which batch comes next, and handing
batches over in order; the batches themselves are made by
:class:`~aimv2.data.batches.BatchMaker` in the runners of :mod:`aimv2.data.workers`."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..specs import EncoderSpec
from .batches import CAPTION_SAMPLING, BatchMaker, Item, Made
from .sample import IndexedSource, Source, unreadable
from .shards import TarShardSource, _check_rank
from .sources import open_source
from .transforms import _check_range, _check_spec
from .workers import InlineRunner, ProcessRunner, ThreadRunner, _Runner

WORKER_TYPES = ("process", "thread")


class CaptionEncoder(Protocol):
    """Anything with ``encode(captions, context_length) -> int array (B, context_length)``.

    Example:
        >>> import aimv2, numpy as np
        >>> class Lengths:
        ...     def encode(self, captions, context_length):
        ...         return np.array([[len(c)] * context_length for c in captions])
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8)
        >>> ld = Loader("builtin:digits", spec, Lengths(), 2, seed=0, context_length=3)
        >>> tokens = ld.batch(0)["tokens"]
        >>> tokens.shape, tokens.dtype.name
        ((2, 3), 'int64')
    """

    def encode(self, captions: list[str], context_length: int) -> np.ndarray: ...


def _nonneg_int(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}={value!r}: expected a non-negative integer")
    return int(value)


def _shuffled(items: Iterator[Item], size: int, rng: np.random.Generator) -> Iterator[Item]:
    """``items`` mixed through a buffer of ``size``: once it is full, each new item takes
    the place of a random one, which is handed out; the rest at the end, in random order."""
    buffer: list[Item] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        buffer[j], item = item, buffer[j]
        yield item
    for j in rng.permutation(len(buffer)).tolist():
        yield buffer[j]


Position = tuple[int, int]  # (pass, items of that pass already handed out)
STREAM_SHUFFLE = 1000  # the default sample buffer of tar-shard streams


class _Pushback:
    """An iterator of (position, item) with ``take(n)`` and ``push_front(entries)``."""

    def __init__(self, it: Iterator[tuple[Position, Item]]) -> None:
        self._it, self._front, self._ended = it, deque(), False

    @property
    def exhausted(self) -> bool:
        return self._ended and not self._front

    def take(self, n: int) -> list[tuple[Position, Item]]:
        out: list[tuple[Position, Item]] = []
        while len(out) < n:
            if self._front:
                out.append(self._front.popleft())
                continue
            if self._ended:
                break
            try:
                out.append(next(self._it))
            except StopIteration:
                self._ended = True
        return out

    def push_front(self, entries: list[tuple[Position, Item]]) -> None:
        self._front.extendleft(reversed(entries))


@dataclass
class _Job:
    step: int
    entries: list[tuple[Position, Item]]
    ticket: int


@dataclass
class _Part:
    """A stream batch being filled: its slot and what its jobs made so far."""

    slot: int
    made: list[Made] = field(default_factory=list)
    filled: int = 0
    skipped: int = 0
    last: Position | None = None  # the position of the last item this batch took


class Loader:
    """Deterministic, resumable batches of a source, made by worker processes.

    Each batch is ``{"images": float32 (B, C, H, W), "tokens": int64 (B, context_length)
    or None, "labels": int64 (B,) (-1 where a sample has no label), "keys": list[str],
    "captions": list[str], "step": int, "worker": int, "stream_position": (pass, items) or
    None}`` and depends only on
    ``(seed, step, rank, world_size)`` — not on ``num_workers``, ``worker_type`` or
    ``prefetch``: resuming at ``start_step`` gives exactly the batches an uninterrupted
    run would have.

    Indexed sources, ``train=True``: an endless stream, a seeded permutation per epoch
    (:class:`~aimv2.data.batches.EpochOrder`; Parquet row groups are permuted, then
    the rows inside each); the global batch of step s is stream positions
    ``[s·B·K, (s+1)·B·K)`` (K = world_size) and rank r takes its r-th slice of B, so K
    ranks with batch B see, as a whole, what one process with batch K·B sees at the
    same step, with the same augmentation (the per-sample RNG is seeded by (seed, step,
    position in the global batch)). An unreadable sample is replaced by the next
    readable one in source order. ``train=False``: one pass in source order with
    :func:`preprocess`, no augmentation, unreadable samples dropped (the last batch may
    be short).

    Streams (tar shards): with K ranks each rank reads its own shards
    (:meth:`TarShardSource.shard_split`). Training repeats them endlessly, each pass in
    a new seeded shard order with the samples mixed through a buffer of
    ``stream_shuffle`` samples (drawn from (seed, rank, pass); the buffer is emptied at
    the end of a pass, so a pass still holds every sample once); ``stream_shuffle=1``
    only reorders the shards, ``0`` reads everything in file order. The buffer holds
    encoded images: 1000 samples of ~100 KB JPEGs are ~100 MB per rank. Evaluation
    reads in file order. A stream batch carries ``"stream_position"`` (pass, items of
    that pass consumed through this batch, unreadable ones included); resuming at
    ``start_step`` with ``stream_position`` = the previous batch's reads at most one
    pass of this rank's shards and decodes nothing before it. Without it, the samples
    before ``start_step`` are re-read and decoded to find the unreadable ones.

    ``caption_sampling``: ``"first"`` caption of each sample, a seeded ``"random"`` one
    (drawn from (seed, step, position)), or ``"all"`` (each caption makes a sample of
    its own, so an image with k captions comes k times per epoch). Evaluation uses the
    first. ``reduced_decode``: decode JPEGs at 1/2, 1/4 or 1/8 scale when the crop allows
    (:func:`aimv2.data.decode_for_crop`); in-memory images are never affected.

    Workers: ``num_workers`` processes (``worker_type="process"``: decoding and
    augmentation scale with the cores; images come back through shared memory) or
    threads (``"thread"``), 0 for the calling thread. At most ``prefetch`` batches
    (default 2 per worker) are in flight. Workers stop when the iteration ends, breaks,
    raises, or on :meth:`close`; a worker that dies is replaced and its batch redone
    (:mod:`aimv2.data.workers`).

    ``skipped`` counts unreadable samples met while making the batches yielded so far.

    Example:
        >>> import aimv2
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8)
        >>> loader = Loader("builtin:digits", spec, None, 4, seed=0, num_workers=0)
        >>> b = next(iter(loader))
        >>> b["images"].shape, b["labels"].dtype.name, b["tokens"], b["step"]
        ((4, 3, 8, 8), 'int64', None, 0)
    """

    def __init__(
        self,
        source: Source | str,
        spec: EncoderSpec,
        tokenizer: CaptionEncoder | None,
        batch_size: int,
        *,
        seed: int,
        train: bool = True,
        num_workers: int = 2,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        context_length: int = 77,
        prefetch: int | None = None,
        scale: tuple[float, float] = (0.4, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        caption_sampling: str = "first",
        reduced_decode: bool = True,
        stream_shuffle: int = STREAM_SHUFFLE,
        stream_position: Sequence[int] | None = None,
        worker_type: str = "process",
        start_method: str | None = None,
    ) -> None:
        self.spec = _check_spec(spec)
        if isinstance(source, (str, os.PathLike, list, tuple)):
            source = open_source(source)
        if not isinstance(source, Source):
            raise TypeError(f"source: expected a Source or a source string, got {source!r:.80}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        if tokenizer is not None and not callable(getattr(tokenizer, "encode", None)):
            raise TypeError("tokenizer: expected None or an object with encode(captions, length)")
        if not isinstance(context_length, int) or context_length < 1:
            raise ValueError(f"context_length={context_length!r}: expected a positive integer")
        _check_rank(rank, world_size)
        if train:
            _check_range("scale", scale, lambda v: v > 0, "0 < low <= high")
            _check_range("ratio", ratio, lambda v: v > 0, "0 < low <= high")
            if spec.image_size is None:
                raise ValueError(
                    "spec: training batches need a fixed-size encoder (spec.image_size); "
                    "native-resolution images differ in size and cannot be stacked"
                )
        if caption_sampling not in CAPTION_SAMPLING:
            raise ValueError(
                f"caption_sampling={caption_sampling!r}: expected one of {CAPTION_SAMPLING}"
            )
        if worker_type not in WORKER_TYPES:
            raise ValueError(f"worker_type={worker_type!r}: expected one of {WORKER_TYPES}")
        self.seed = _nonneg_int("seed", seed)
        self.start_step = _nonneg_int("start_step", start_step)
        self.num_workers = _nonneg_int("num_workers", num_workers)
        self.stream_shuffle = _nonneg_int("stream_shuffle", stream_shuffle)
        self.stream_position: Position | None = None
        if stream_position is not None:
            if not isinstance(source, TarShardSource) or not train:
                raise ValueError(
                    "stream_position: only a training loader over tar shards has one "
                    f"(this source is {type(source).__name__}, train={train})"
                )
            if (
                not isinstance(stream_position, (tuple, list))
                or len(stream_position) != 2
                or not all(
                    isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
                    for v in stream_position
                )
            ):
                raise ValueError(
                    f"stream_position={stream_position!r}: expected (pass, items) as two "
                    "non-negative integers, a batch's 'stream_position'"
                )
            self.stream_position = (int(stream_position[0]), int(stream_position[1]))
        self.prefetch = 2 * max(1, self.num_workers) if prefetch is None else prefetch
        if (
            not isinstance(self.prefetch, int)
            or isinstance(self.prefetch, bool)
            or self.prefetch < 1
        ):
            raise ValueError(f"prefetch={prefetch!r}: expected a positive integer")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.train = bool(train)
        self.rank, self.world_size = rank, world_size
        self.context_length = context_length
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        self.caption_sampling, self.reduced_decode = caption_sampling, bool(reduced_decode)
        self.worker_type, self.start_method = worker_type, start_method
        if isinstance(source, TarShardSource) and world_size > 1:
            source = source.shard_split(rank, world_size)
        elif not isinstance(source, (IndexedSource, TarShardSource)):
            raise TypeError(f"source: unsupported source type {type(source).__name__}")
        self.source = source
        self.maker = BatchMaker(
            source,
            self.spec,
            seed=self.seed,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            train=self.train,
            scale=self.scale,
            ratio=self.ratio,
            hflip=hflip,
            caption_sampling=caption_sampling,
            reduced_decode=self.reduced_decode,
        )
        self._skipped = 0
        self._runners: list[_Runner] = []
        self._pass_len: int | None = None

    # -- public

    @property
    def skipped(self) -> int:
        """Unreadable samples met while making the batches handed out so far."""
        return self._skipped

    @property
    def global_batch_size(self) -> int:
        """batch_size × world_size."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Batches left for this rank (evaluation over an indexed source only)."""
        if self.train or not isinstance(self.source, IndexedSource):
            raise TypeError("len(loader): only an evaluation loader over an indexed source")
        return len(self._eval_steps())

    def batch(self, step: int) -> dict[str, Any] | None:
        """Make the batch of ``step`` directly, in this thread (indexed sources only).

        Returns None for an evaluation step with nothing left for this rank.

        Example:
            >>> import aimv2
            >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4,
            ...                           image_size=8)
            >>> ld = Loader("builtin:digits", spec, None, 2, seed=0, num_workers=0)
            >>> ld.batch(5)["keys"] == ld.batch(5)["keys"]
            True
        """
        if not isinstance(self.source, IndexedSource):
            raise TypeError("Loader.batch(step): random access needs an indexed source")
        step = _nonneg_int("step", step)
        runner = InlineRunner(self.maker)
        slot = runner.acquire()
        return next(
            iter(self._hand_out(runner, step, slot, runner.submit(("indexed", step), slot))), None
        )

    def close(self) -> None:
        """Stop the workers of every iteration still open (the iterations end).

        Example:
            >>> import aimv2
            >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4,
            ...                           image_size=8)
            >>> ld = Loader("builtin:digits", spec, None, 2, seed=0, num_workers=1)
            >>> it = iter(ld); _ = next(it); ld.close()
            >>> next(it, "ended")
            'ended'
        """
        for runner in list(self._runners):
            runner.close()
        self._runners.clear()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        runner = self._runner()
        self._runners.append(runner)
        try:
            if isinstance(self.source, IndexedSource):
                yield from self._iter_indexed(runner)
            else:
                yield from self._iter_stream(runner)
        finally:
            runner.close()
            if runner in self._runners:
                self._runners.remove(runner)

    # -- internals

    def _runner(self) -> _Runner:
        if self.num_workers == 0:
            return InlineRunner(self.maker)
        if self.worker_type == "thread":
            return ThreadRunner(self.maker, self.num_workers)
        return ProcessRunner(self.maker, self.num_workers, self.prefetch, self.start_method)

    def _window(self) -> int:
        return 1 if self.num_workers == 0 else self.prefetch

    def _iter_indexed(self, runner: _Runner) -> Iterator[dict[str, Any]]:
        steps: Iterable[int] = self._train_steps() if self.train else self._eval_steps()
        pending: deque[tuple[int, int, int]] = deque()
        window = self._window()
        for step in steps:
            if len(pending) >= window:
                yield from self._hand_out(runner, *pending.popleft())
                if runner.closed:
                    return
            slot = runner.acquire()
            pending.append((step, slot, runner.submit(("indexed", step), slot)))
        while pending:
            yield from self._hand_out(runner, *pending.popleft())

    def _hand_out(
        self, runner: _Runner, step: int, slot: int, ticket: int
    ) -> Iterator[dict[str, Any]]:
        try:
            made = runner.wait(ticket)
            self._replay(made)
            self._skipped += made.skipped
            batch = self._collate(runner, step, slot, [made]) if made.count else None
        finally:
            runner.release(slot)
        if batch is not None:
            yield batch

    def _replay(self, made: Made) -> None:
        for key, reason, n in made.skips:
            self.source._skip(key, reason, n)

    def _collate(self, runner: _Runner, step: int, slot: int, made: list[Made]) -> dict:
        count = sum(m.count for m in made)
        if made[0].images is not None:
            images = np.concatenate([m.images for m in made if m.images is not None])
        else:
            images = runner.images(slot, count)
        captions = [c for m in made for c in m.captions]
        tokens = None
        if self.tokenizer is not None:
            tokens = np.asarray(self.tokenizer.encode(captions, self.context_length), np.int64)
        return {
            "images": images,
            "tokens": tokens,
            "labels": np.asarray([x for m in made for x in m.labels], np.int64),
            "keys": [k for m in made for k in m.keys],
            "captions": captions,
            "step": step,
            "worker": made[0].worker,
            "stream_position": None,
        }

    def _train_steps(self) -> Iterator[int]:
        step = self.start_step
        while True:
            yield step
            step += 1

    def _eval_steps(self) -> list[int]:
        n, g, b = len(self.source), self.global_batch_size, self.batch_size
        total = -(-n // g)
        return [s for s in range(self.start_step, total) if s * g + self.rank * b < n]

    def _stream_items(self, start: Position) -> Iterator[tuple[Position, Item]]:
        """The stream's items with their positions, from ``start`` (the first items of
        that pass are read and dropped, not decoded)."""
        src: TarShardSource = self.source  # type: ignore[assignment]
        every = self.caption_sampling == "all"
        shuffle = self.stream_shuffle if self.train else 0
        passes, skip = start
        while True:
            count = [0]  # records read in this pass
            rng = np.random.default_rng([self.seed, 4, self.rank, passes])
            order = rng.permutation(len(src.shards)).tolist() if shuffle else None
            items = self._pass_items(src, order, every, count)
            for k, item in enumerate(_shuffled(items, shuffle, rng) if shuffle > 1 else items):
                if k >= skip:
                    yield (passes, k + 1), item
            skip = 0
            n = self._pass_len = count[0]
            passes += 1
            if not self.train:
                return
            if n == 0:
                raise unreadable(src)

    @staticmethod
    def _pass_items(
        src: TarShardSource, order: list[int] | None, every: bool, count: list[int]
    ) -> Iterator[Item]:
        """One pass over the shards (in ``order``) as items, counting records in ``count``."""
        for rec in src.records(order):
            count[0] += 1
            raw = src.raw(rec)
            if every and raw is not None and len(raw.captions) > 1:
                for k in range(len(raw.captions)):
                    yield raw, k
            else:
                yield raw, -1

    def _iter_stream(self, runner: _Runner) -> Iterator[dict[str, Any]]:
        """Batches of a stream. Which items make batch s depends on how many before it were
        unreadable, known only once decoded: jobs are sent assuming every item is
        readable, and when one is not, the later jobs are withdrawn, their items put
        back, and the batch is topped up from the next items (rare: corrupt samples)."""
        b, window = self.batch_size, self._window()
        known = self.stream_position is not None  # where start_step begins: no replay
        items = _Pushback(self._stream_items(self.stream_position or (0, 0)))
        self._pass_len = None
        pending: deque[_Job] = deque()
        parts: dict[int, _Part] = {}
        next_step, failed_in_row = (self.start_step if known else 0), 0

        def send(step: int, start: int, chunk: list[tuple[Position, Item]], slot: int) -> _Job:
            job = ("stream", step, start, [item for _, item in chunk], step < self.start_step)
            return _Job(step, chunk, runner.submit(job, slot))

        try:
            while True:
                while len(parts) < window and not items.exhausted:
                    chunk = items.take(b)
                    if not chunk:
                        break
                    parts[next_step] = _Part(runner.acquire())
                    pending.append(send(next_step, 0, chunk, parts[next_step].slot))
                    next_step += 1
                if not pending:
                    return
                job = pending.popleft()
                made = runner.wait(job.ticket)
                part = parts[job.step]
                part.made.append(made)
                part.filled += made.count
                part.skipped += made.skipped
                part.last = job.entries[-1][0]
                if job.step >= self.start_step:
                    self._replay(made)
                failed_in_row = failed_in_row + len(job.entries) if made.count == 0 else 0
                if self._pass_len and failed_in_row >= self._pass_len:
                    raise unreadable(self.source)
                if part.filled < b and made.count < len(job.entries):
                    for stale in pending:  # their items start later than they assumed
                        runner.wait(stale.ticket)
                    items.push_front([e for stale in pending for e in stale.entries])
                    pending.clear()
                    for step in [s for s in parts if s > job.step]:
                        runner.release(parts.pop(step).slot)
                    next_step = job.step + 1
                    more = items.take(b - part.filled)
                    if more:
                        pending.appendleft(send(job.step, part.filled, more, part.slot))
                if part.filled == b or not (pending and pending[0].step == job.step):
                    del parts[job.step]
                    batch = None
                    if job.step >= self.start_step:
                        self._skipped += part.skipped
                        if part.filled:
                            batch = self._collate(runner, job.step, part.slot, part.made)
                            batch["stream_position"] = part.last
                    runner.release(part.slot)
                    if batch is not None:
                        yield batch
                        if runner.closed:
                            return
        finally:
            for part in parts.values():
                runner.release(part.slot)
