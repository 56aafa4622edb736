"""The deterministic, resumable :class:`Loader` and its thread-pool helpers."""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np

from ..specs import EncoderSpec
from .sample import IndexedSource, Sample, Source
from .shards import TarShardSource, _check_rank
from .sources import open_source
from .transforms import _check_range, _check_spec, _eval_array, _stack, train_transform


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


class _Inline:
    """An executor that runs work at once in the calling thread (num_workers=0)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as err:  # re-raised by fut.result() in the consumer
            fut.set_exception(err)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _ordered_map(pool: Any, fn: Callable[[Any], Any], items: Iterable[Any], window: int):
    """``map(fn, items)`` in order, with at most ``window`` calls in flight on ``pool``."""
    pending: deque[cf.Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class Loader:
    """Deterministic, resumable batches of a source, prepared by background threads.

    Each batch is ``{"images": float32 (B, C, H, W), "tokens": int64 (B, context_length)
    or None, "labels": int64 (B,) (-1 where a sample has no label), "keys": list[str],
    "step": int}`` and depends only on ``(seed, step, rank, world_size)``: resuming
    at ``start_step`` gives exactly the batches an uninterrupted run would have.

    Indexed sources, ``train=True``: an endless stream, a seeded permutation per epoch;
    the global batch of step s is stream positions ``[s·B·K, (s+1)·B·K)`` (K =
    world_size) and rank r takes its r-th slice of B, so K ranks with batch B see, as a
    whole, what one process with batch K·B sees at the same step, with the same
    augmentation (the per-sample RNG is seeded by (seed, step, position in the global
    batch)). An unreadable sample is replaced by the next readable one in source order.
    ``train=False``: one pass in source order with :func:`preprocess`, no augmentation,
    unreadable samples dropped (the last batch may be short).

    Streams (tar shards) are read in order; with K ranks each rank reads its own shards
    (:meth:`TarShardSource.shard_split`). Training repeats the shards endlessly;
    resuming re-reads (decodes, does not transform) the samples before ``start_step``.

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
        self.seed = _nonneg_int("seed", seed)
        self.start_step = _nonneg_int("start_step", start_step)
        self.num_workers = _nonneg_int("num_workers", num_workers)
        self.prefetch = max(2, self.num_workers) if prefetch is None else prefetch
        if not isinstance(self.prefetch, int) or self.prefetch < 1:
            raise ValueError(f"prefetch={prefetch!r}: expected a positive integer")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.train = bool(train)
        self.rank, self.world_size = rank, world_size
        self.context_length = context_length
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        if isinstance(source, TarShardSource) and world_size > 1:
            source = source.shard_split(rank, world_size)
        elif not isinstance(source, (IndexedSource, TarShardSource)):
            raise TypeError(f"source: unsupported source type {type(source).__name__}")
        self.source = source
        self._skipped = 0
        self._bad: set[int] = set()
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

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
        out, skipped = self._indexed_batch(step)
        self._skipped += skipped
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pool: Any = (
            cf.ThreadPoolExecutor(self.num_workers, thread_name_prefix="aimv2-loader")
            if self.num_workers
            else _Inline()
        )
        try:
            if isinstance(self.source, IndexedSource):
                steps: Iterable[int] = self._train_steps() if self.train else self._eval_steps()
                jobs: Iterable[tuple[Callable[..., Any], tuple[Any, ...]]] = (
                    (self._indexed_batch, (s,)) for s in steps
                )
            else:
                jobs = self._stream_jobs(pool)
            pending: deque[cf.Future] = deque()
            for fn, args in jobs:
                pending.append(pool.submit(fn, *args))
                if len(pending) > self.prefetch:
                    yield from self._hand_out(pending.popleft())
            while pending:
                yield from self._hand_out(pending.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- internals

    def _hand_out(self, fut: cf.Future) -> Iterator[dict[str, Any]]:
        out, skipped = fut.result()
        self._skipped += skipped
        if out is not None:
            yield out

    def _train_steps(self) -> Iterator[int]:
        step = self.start_step
        while True:
            yield step
            step += 1

    def _eval_steps(self) -> list[int]:
        n, g, b = len(self.source), self.global_batch_size, self.batch_size
        total = -(-n // g)
        return [s for s in range(self.start_step, total) if s * g + self.rank * b < n]

    def _perm(self, epoch: int) -> np.ndarray:
        with self._lock:
            perm = self._perms.get(epoch)
            if perm is not None:
                return perm
        perm = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.source))
        with self._lock:
            self._perms[epoch] = perm
            while len(self._perms) > 4:
                self._perms.popitem(last=False)
        return perm

    def _sample_rng(self, step: int, position: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 1, step, position])

    def _read_replacing(self, index: int) -> tuple[Sample, int]:
        """Sample ``index`` or, if unreadable, the next readable one in source order."""
        src: IndexedSource = self.source  # type: ignore[assignment]
        n, skipped = len(src), 0
        for t in range(n):
            i = (index + t) % n
            if i in self._bad:
                skipped += 1
                continue
            sample = src.get(i)
            if sample is not None:
                return sample, skipped
            self._bad.add(i)
            skipped += 1
        raise RuntimeError(f"source {src.name}: no readable samples ({n} tried)")

    def _indexed_batch(self, step: int) -> tuple[dict[str, Any] | None, int]:
        src: IndexedSource = self.source  # type: ignore[assignment]
        n, b = len(src), self.batch_size
        base = step * self.global_batch_size + self.rank * b
        arrays, samples, skipped = [], [], 0
        for j in range(b):
            position, g = self.rank * b + j, base + j
            if self.train:
                sample, s = self._read_replacing(int(self._perm(g // n)[g % n]))
                skipped += s
                arrays.append(self._transform(sample, step, position))
            else:
                if g >= n:
                    break
                sample = src.get(g)
                if sample is None:
                    skipped += 1
                    continue
                arrays.append(_eval_array(sample.image, self.spec))
            samples.append(sample)
        if not samples:
            return None, skipped
        return self._collate(step, samples, arrays), skipped

    def _transform(self, sample: Sample, step: int, position: int) -> np.ndarray:
        return train_transform(
            sample.image,
            self.spec,
            self._sample_rng(step, position),
            self.scale,
            self.ratio,
            self.hflip,
        )

    def _collate(self, step: int, samples: list[Sample], arrays: list[np.ndarray]) -> dict:
        tokens = None
        if self.tokenizer is not None:
            tokens = np.asarray(
                self.tokenizer.encode([s.caption for s in samples], self.context_length),
                dtype=np.int64,
            )
        labels = np.asarray([-1 if s.label is None else s.label for s in samples], np.int64)
        return {
            "images": _stack(arrays),
            "tokens": tokens,
            "labels": labels,
            "keys": [s.key for s in samples],
            "step": step,
        }

    def _stream_batch(self, step: int, samples: list[Sample], skipped: int) -> tuple[dict, int]:
        if self.train:
            arrays = [
                self._transform(s, step, self.rank * self.batch_size + j)
                for j, s in enumerate(samples)
            ]
        else:
            arrays = [_eval_array(s.image, self.spec) for s in samples]
        return self._collate(step, samples, arrays), skipped

    def _stream_samples(self, pool: Any) -> Iterator[Sample | None]:
        src: TarShardSource = self.source  # type: ignore[assignment]
        window = max(2, self.num_workers) * self.batch_size
        while True:
            readable = False
            for sample in _ordered_map(pool, src.decode, src.records(), window):
                readable = readable or sample is not None
                yield sample
            if not self.train:
                return
            if not readable:
                raise RuntimeError(f"source {src.name}: no readable samples in a full pass")

    def _stream_jobs(self, pool: Any) -> Iterator[tuple[Callable[..., Any], tuple[Any, ...]]]:
        stream = self._stream_samples(pool)
        to_skip = self.start_step * self.batch_size
        while to_skip:
            sample = next(stream, StopIteration)
            if sample is StopIteration:
                return
            if sample is not None:
                to_skip -= 1
        step = self.start_step
        while True:
            samples: list[Sample] = []
            skipped = 0
            for sample in stream:
                if sample is None:
                    skipped += 1
                    continue
                samples.append(sample)
                if len(samples) == self.batch_size:
                    break
            if not samples:
                self._skipped += skipped  # unreadable samples after the last batch
                return
            yield self._stream_batch, (step, samples, skipped)
            step += 1
