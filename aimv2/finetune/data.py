"""A fine-tuning run's data: the labelled training and held-out sources, the number of
classes, and top-1 accuracy of a classifier over a source.

Example:
    >>> train, heldout = splits("builtin:digits", None, seed=0)
    >>> len(train), len(heldout), num_classes(train)
    (1438, 359, 10)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import backend_of
from ..data import IndexedSource, Loader, Sample, Source, open_source
from .config import FinetuneError

__all__ = ["Part", "splits", "num_classes", "accuracy"]


class Part(IndexedSource):
    """The samples ``indices`` of an indexed source, in that order (a fixed split).

    Example:
        >>> from aimv2.data import open_source
        >>> part = Part(open_source("builtin:digits", split="all"), [5, 0], "first")
        >>> len(part), part[1].key == open_source("builtin:digits", split="all")[0].key
        (2, True)
    """

    def __init__(self, source: IndexedSource, indices: Any, which: str) -> None:
        super().__init__(f"{source.name}[{which}]")
        self.source = source
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, index: int) -> Sample:
        return self.source[self.indices[index]]

    def key(self, index: int) -> str:
        """The key of the sample in the source.

        Example:
            >>> part = Part(open_source("builtin:digits", split="all"), [7], "one")
            >>> part.key(0) == part.source.key(7)
            True
        """
        return self.source.key(self.indices[index])


def _open(text: str, split: str, seed: int) -> Source:
    try:
        return open_source(text, split=split, seed=seed)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise FinetuneError(f"data {text!r}: {err}") from None


def splits(data: str, heldout: str | None, seed: int) -> tuple[Source, Source]:
    """(training source, held-out source): ``heldout`` if given (read whole); else the
    source's own held-out split (built-in sets); else a fixed 80/20 split of the source
    (a permutation seeded with 0, as the probes use).

    Example:
        >>> tr, te = splits("builtin:shapes?length=50", None, seed=0)
        >>> len(tr), len(te)
        (50, 50)
    """
    if heldout is not None:
        return _open(data, "train", seed), _open(heldout, "all", seed)
    try:
        return _open(data, "train", seed), _open(data, "heldout", seed)
    except ValueError:
        pass
    every = _open(data, "all", seed)
    if not isinstance(every, IndexedSource):
        raise FinetuneError(
            f"data {data!r}: a streamed source has no held-out part; give heldout (--heldout)"
        )
    order = np.random.default_rng(0).permutation(len(every))
    cut = int(0.8 * len(every))
    return Part(every, order[:cut], "train"), Part(every, order[cut:], "heldout")


def num_classes(source: Source) -> int:
    """Classes of a labelled source: its ``classes`` if it lists them, else the largest
    label + 1 (every sample is read once). Unlabelled samples are an error.

    Example:
        >>> from aimv2.data import open_source
        >>> num_classes(open_source("builtin:digits", split="heldout"))
        10
    """
    inner = source.source if isinstance(source, Part) else source
    classes = getattr(inner, "classes", None)
    if classes:
        return len(classes)
    labels = getattr(inner, "labels", None)
    if labels is None:
        labels = [s.label for s in source]
    if any(label is None or label < 0 for label in labels):
        raise FinetuneError(
            f"data {source.name!r}: some samples have no label; fine-tuning needs labelled data "
            "(built-in sets, imagefolder:DIR, or a JSONL with labels)"
        )
    if len(labels) == 0:
        raise FinetuneError(f"data {source.name!r}: no readable samples")
    return int(max(labels)) + 1


def accuracy(
    model: Any, source: Source, batch_size: int = 256, limit: int | None = None
) -> tuple[float, int]:
    """(top-1 accuracy, samples scored) of a classifier (an encoder with a head; logits
    ``model(images, pool=True)``) over ``source`` in order, preprocessed without
    augmentation; at most ``limit`` samples.

    Example:
        >>> import aimv2
        >>> from aimv2.finetune.model import classifier_spec
        >>> enc = aimv2.encoder_spec(width=8, depth=1, heads=2, patch_size=4, image_size=8)
        >>> m = aimv2.build(classifier_spec(enc, 10, "linear"), "torch")
        >>> acc, n = accuracy(m, open_source("builtin:digits", split="heldout"), limit=100)
        >>> n, 0.0 <= acc <= 1.0
        (100, True)
    """
    be = backend_of(model)
    loader = Loader(source, model.spec, None, batch_size, seed=0, train=False, num_workers=0)
    right = seen = 0
    for batch in loader:
        images, labels = batch["images"], batch["labels"]
        if limit is not None:
            images, labels = images[: limit - seen], labels[: limit - seen]
        with be.inference():
            logits = be.to_numpy(model(be.to_model(model, images), pool=True))
        right += int((logits.argmax(-1) == labels).sum())
        seen += len(labels)
        if limit is not None and seen >= limit:
            break
    if seen == 0:
        raise FinetuneError(f"data {source.name!r}: no readable samples to score")
    return right / seen, seen
