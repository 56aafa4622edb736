"""What a loader worker computes: the batch of a step as a pure function of
``(seed, step, rank, world_size)`` (:class:`BatchMaker`), and the epoch orders it draws
from (:class:`EpochOrder`).

A :class:`BatchMaker` holds everything a batch depends on and nothing that depends on
how many workers make batches; it is pickled into each worker process. It writes the
images of a batch into a buffer it is handed (a shared-memory slot in a worker
process) and returns the rest as a :class:`Made`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..specs import EncoderSpec
from .decode import transform_encoded
from .sample import (
    CorruptSampleError,
    IndexedSource,
    RawSample,
    Sample,
    Source,
    UnreadableSourceError,
)
from .transforms import _eval_array, _stack, train_transform

__all__ = ["CAPTION_SAMPLING", "EpochOrder", "Made", "BatchMaker"]

CAPTION_SAMPLING = ("first", "random", "all")

Item = tuple[Sample | RawSample | None, int]  # a stream item: (sample, caption index or -1)


@dataclass
class Made:
    """What making (part of) a batch produced besides the images written to its buffer.

    ``count`` images were written at rows ``start … start + count``; ``images`` holds them
    instead when the batch has no fixed shape (native-resolution evaluation);
    ``skips`` are the skip records a worker process captured for the parent to log.

    Example:
        >>> Made(0).count, Made(0).keys
        (0, [])
    """

    count: int
    keys: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    skipped: int = 0
    skips: list[tuple[str, str, int]] = field(default_factory=list)
    images: np.ndarray | None = None
    worker: int = 0


class EpochOrder:
    """The order a training loader visits a source in: item ``i`` of the endless stream
    is ``order.item(i)`` = (sample index, caption index or -1).

    One item per sample, or one per caption with ``caption_sampling="all"``. Each epoch
    is a seeded permutation — of every item (the order :class:`~aimv2.data.Loader` has
    always used), or, for a source with :meth:`~aimv2.data.IndexedSource.blocks` (Parquet
    row groups), of the blocks and then of the items inside each block, so that a batch
    reads one or two blocks, not one block per sample.

    Example:
        >>> from aimv2.data import open_source
        >>> order = EpochOrder(open_source("builtin:shapes?length=6"), seed=0)
        >>> sorted(order.item(i)[0] for i in range(6))
        [0, 1, 2, 3, 4, 5]
    """

    def __init__(self, source: IndexedSource, seed: int, caption_sampling: str = "first") -> None:
        self.seed = seed
        n = len(source)
        counts = source.caption_counts() if caption_sampling == "all" else None
        if counts is not None:
            counts = np.asarray(counts, np.int64)
            if counts.shape != (n,) or (counts < 1).any():
                raise ValueError(f"source {source.name}: caption_counts() must be >= 1 per sample")
            self.offsets: np.ndarray | None = np.concatenate([[0], np.cumsum(counts)])
            self.size = int(self.offsets[-1])
        else:
            self.offsets, self.size = None, n
        blocks = source.blocks()
        self.block_starts: np.ndarray | None = None
        if blocks is not None:
            rows = np.concatenate([[0], np.cumsum(np.asarray(blocks, np.int64))])
            if rows[-1] != n:
                raise ValueError(f"source {source.name}: blocks() must add up to len(source)")
            self.block_starts = rows if self.offsets is None else self.offsets[rows]
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_cache")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache, self._lock = OrderedDict(), threading.Lock()

    def _memo(self, key: tuple[int, ...], make: Any) -> np.ndarray:
        with self._lock:
            got = self._cache.get(key)
            if got is not None:
                self._cache.move_to_end(key)
                return got
        got = make()
        with self._lock:
            self._cache[key] = got
            while len(self._cache) > 8:
                self._cache.popitem(last=False)
        return got

    def item(self, position: int) -> tuple[int, int]:
        """(sample index, caption index — -1 unless ``caption_sampling="all"``) of stream
        position ``position``."""
        epoch, i = divmod(position, self.size)
        if self.block_starts is None:
            perm = self._memo(
                (0, epoch),
                lambda: np.random.default_rng([self.seed, 0, epoch]).permutation(self.size),
            )
            item = int(perm[i])
        else:
            starts = self.block_starts
            nb = len(starts) - 1

            def blocks() -> np.ndarray:
                perm = np.random.default_rng([self.seed, 0, epoch]).permutation(nb)
                return np.stack([perm, np.cumsum((starts[1:] - starts[:-1])[perm])])

            perm, ends = self._memo((1, epoch), blocks)
            j = int(np.searchsorted(ends, i, side="right"))
            block = int(perm[j])
            first = int(ends[j - 1]) if j else 0
            size = int(starts[block + 1] - starts[block])
            inner = self._memo(
                (2, epoch, block),
                lambda: np.random.default_rng([self.seed, 2, epoch, block]).permutation(size),
            )
            item = int(starts[block]) + int(inner[i - first])
        if self.offsets is None:
            return item, -1
        row = int(np.searchsorted(self.offsets, item, side="right")) - 1
        return row, item - int(self.offsets[row])


class BatchMaker:
    """Makes the batch of a step — the same bytes in whichever process, thread or worker
    count — writing its images into a buffer of shape (batch_size, C, H, W).

    Example:
        >>> import aimv2
        >>> from aimv2.data import open_source
        >>> spec = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8)
        >>> maker = BatchMaker(open_source("builtin:digits"), spec, seed=0, batch_size=2)
        >>> out = np.empty((2, 3, 8, 8), np.float32)
        >>> made = maker.indexed(0, out)
        >>> made.count, made.keys == maker.indexed(0, out.copy()).keys
        (2, True)
    """

    def __init__(
        self,
        source: Source,
        spec: EncoderSpec,
        *,
        seed: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        train: bool = True,
        scale: tuple[float, float] = (0.4, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        caption_sampling: str = "first",
        reduced_decode: bool = True,
    ) -> None:
        if caption_sampling not in CAPTION_SAMPLING:
            raise ValueError(
                f"caption_sampling={caption_sampling!r}: expected one of {CAPTION_SAMPLING}"
            )
        self.source, self.spec, self.seed = source, spec, seed
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.train, self.scale, self.ratio, self.hflip = train, scale, ratio, hflip
        self.caption_sampling, self.reduced_decode = caption_sampling, reduced_decode
        self.order = (
            EpochOrder(source, seed, caption_sampling)
            if train and isinstance(source, IndexedSource)
            else None
        )
        self._bad: set[int] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_bad"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bad = set()

    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of every image, or None for a native-resolution encoder."""
        if self.spec.image_size is None:
            return None
        return (self.spec.in_channels, *self.spec.image_size)

    def run(self, job: tuple[Any, ...], out: np.ndarray | None) -> Made:
        """Run a job: ``("indexed", step)`` or ``("stream", step, start, items, check)``."""
        if job[0] == "indexed":
            made = self.indexed(job[1], out)
        else:
            rows = None if out is None else out[job[2] :]
            made = self.stream(job[1], job[2], job[3], rows, check_only=job[4])
        capture = self.source._skips.capture
        if capture:
            made.skips, capture[:] = list(capture), []
        return made

    # -- indexed sources

    def indexed(self, step: int, out: np.ndarray | None) -> Made:
        """The batch of ``step`` from an indexed source (training: the epoch order with
        unreadable samples replaced; evaluation: source order, unreadable ones dropped)."""
        src: IndexedSource = self.source  # type: ignore[assignment]
        b = self.batch_size
        base = step * b * self.world_size + self.rank * b
        made, arrays = Made(0), []
        for j in range(b):
            position, g = self.rank * b + j, base + j
            if self.train:
                assert self.order is not None
                index, k = self.order.item(g)
                array, raw, skipped = self._read_replacing(index, k, step, position)
                made.skipped += skipped
                caption = self._caption(raw.captions, k, step, position)
            else:
                if g >= len(src):
                    break
                sample = src.get(g)
                if sample is None:
                    made.skipped += 1
                    continue
                array, raw, caption = _eval_array(sample.image, self.spec), sample, sample.caption
            self._put(made, arrays, out, array, raw, caption)
        return self._finish(made, arrays)

    def _read_replacing(
        self, index: int, k: int, step: int, position: int
    ) -> tuple[np.ndarray, Sample | RawSample, int]:
        """Sample ``index`` transformed or, if unreadable, the next readable one in source
        order (with its first caption)."""
        src: IndexedSource = self.source  # type: ignore[assignment]
        n, skipped, why = len(src), 0, []
        for t in range(n):
            i = (index + t) % n
            if i in self._bad:
                skipped += 1
                continue
            try:
                raw = src._load_raw(i)
            except Exception as err:
                reason, key = f"{type(err).__name__}: {err}", src.key(i)
            else:
                try:
                    return self._transform(raw, step, position), raw, skipped
                except CorruptSampleError as err:
                    reason, key = str(err), raw.key
            src._skip(key, reason)
            if len(why) < 3:
                why.append(f"{key}: {reason}")
            self._bad.add(i)
            skipped += 1
        first = f" (first: {'; '.join(why)})" if why else ""
        raise UnreadableSourceError(
            f"source {src.name}: none of the {n} samples tried could be read{first}"
        )

    # -- streams

    def stream(
        self,
        step: int,
        start: int,
        items: Sequence[Item],
        out: np.ndarray | None,
        check_only: bool = False,
    ) -> Made:
        """Rows ``start …`` of the batch of ``step`` from stream ``items`` in order; an
        unreadable item is skipped (the next readable one takes its place)."""
        made, arrays = Made(0), []
        for raw, k in items:
            if raw is None:  # incomplete record, counted when it was read
                made.skipped += 1
                continue
            position = self.rank * self.batch_size + start + made.count
            try:
                if self.train:
                    array = self._transform(raw, step, position)
                else:
                    image = raw.decode().image if isinstance(raw, RawSample) else raw.image
                    array = _eval_array(image, self.spec)
            except Exception as err:
                self.source._skip(raw.key, f"{type(err).__name__}: {err}")
                made.skipped += 1
                continue
            if check_only:
                made.count += 1
                continue
            self._put(made, arrays, out, array, raw, self._caption(raw.captions, k, step, position))
        return self._finish(made, arrays)

    # -- shared

    def _transform(self, raw: Sample | RawSample, step: int, position: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, step, position])
        if isinstance(raw, RawSample):
            return transform_encoded(
                raw.image,
                self.spec,
                rng,
                self.scale,
                self.ratio,
                self.hflip,
                reduce=self.reduced_decode,
            )
        return train_transform(raw.image, self.spec, rng, self.scale, self.ratio, self.hflip)

    def _caption(self, captions: tuple[str, ...], k: int, step: int, position: int) -> str:
        if k >= 0:
            return captions[min(k, len(captions) - 1)]
        if self.caption_sampling == "random" and len(captions) > 1:
            rng = np.random.default_rng([self.seed, 3, step, position])
            return captions[int(rng.integers(len(captions)))]
        return captions[0]

    def _put(
        self,
        made: Made,
        arrays: list[np.ndarray],
        out: np.ndarray | None,
        array: np.ndarray,
        raw: Sample | RawSample,
        caption: str,
    ) -> None:
        if out is None:
            arrays.append(array)
        else:
            out[made.count] = array
        made.count += 1
        made.keys.append(raw.key)
        made.captions.append(caption)
        made.labels.append(-1 if raw.label is None else raw.label)

    def _finish(self, made: Made, arrays: list[np.ndarray]) -> Made:
        if arrays:
            made.images = _stack(arrays)
        return made
