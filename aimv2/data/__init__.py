"""Image–caption sources, image transforms and deterministic batching.

A *source* yields :class:`Sample` records (an RGB uint8 image, a caption, an optional
class label and a unique key). :func:`open_source` opens one from a string:

- ``builtin:digits`` — the bundled 8×8 handwritten digits (1,797 images), captioned from
  their labels; ``split`` is ``"train"`` (1,438), ``"heldout"`` (359) or ``"all"``.
- ``builtin:shapes`` — procedurally drawn coloured shapes with descriptive captions;
  options ``builtin:shapes?size=64&length=1000``.
- a folder of images with ``.txt`` caption sidecars (same stem);
- a ``.jsonl`` manifest of ``{"image": ..., "caption": ..., "label": ...}`` lines;
- WebDataset-style ``.tar`` shards (a path, a brace/glob pattern, or a list), streamed;
- Parquet files (``.parquet``, a folder of them, a pattern, ``parquet:PATH``) and Arrow
  files or Hugging Face ``save_to_disk`` folders (``arrow:PATH``), with image bytes or
  paths and one or more caption columns (:mod:`~aimv2.data.tables`);
- ``imagefolder:PATH`` — one subfolder per class, for labelled evaluation.

:func:`preprocess` and :func:`train_transform` turn images into normalized
``float32`` arrays following an :class:`~aimv2.specs.EncoderSpec`, and :class:`Loader`
batches a source with worker processes so that every batch is a pure function of
``(seed, step, rank, world_size)``, whatever the number of workers; JPEGs are decoded
at the reduced size a crop needs (:func:`decode_for_crop`).

Unreadable samples never stop a run: they are skipped, counted (``source.skipped``,
``loader.skipped``) and logged once per key on the ``aimv2.data`` logger; a source of
which nothing can be read is an :class:`UnreadableSourceError`. Images are read from
regular files only, checked against a pixel limit from their header before decoding
(:func:`set_max_pixels`), and every PIL mode is scaled by its own range
(:mod:`~aimv2.data.images`); a manifest's images must lie inside its folder unless
``allow_outside=True``.

The package's modules, from the bottom up: :mod:`~aimv2.data.images` (reading and
decoding image files), :mod:`~aimv2.data.sample` (samples, the source base classes), :mod:`~aimv2.data.builtin`,
:mod:`~aimv2.data.files`, :mod:`~aimv2.data.shards` and :mod:`~aimv2.data.tables` (the
sources), :mod:`~aimv2.data.sources` (:func:`open_source`),
:mod:`~aimv2.data.transforms`, :mod:`~aimv2.data.decode` (reduced decoding),
:mod:`~aimv2.data.batches` (the batch of a step), :mod:`~aimv2.data.workers` (processes,
threads, shared memory) and :mod:`~aimv2.data.loader`.

Example:
    >>> from aimv2 import data
    >>> src = data.open_source("builtin:digits", split="heldout")
    >>> len(src), src[0].image.shape, src[0].image.dtype.name
    (359, (8, 8, 3), 'uint8')
"""

from .batches import CAPTION_SAMPLING
from .builtin import SHAPE_CLASSES as SHAPE_CLASSES  # public constant, not in __all__
from .builtin import DigitsSource, ShapesSource, builtin_captions
from .decode import decode_for_crop, transform_encoded
from .files import CaptionFolderSource, ImageFolderSource, ManifestSource
from .images import CorruptSampleError, max_pixels, set_max_pixels
from .loader import Loader
from .sample import (
    IndexedSource,
    RawSample,
    Sample,
    Source,
    StreamSource,
    UnreadableSourceError,
    fingerprint,
)
from .shards import TarShardSource, expand_shards
from .sources import open_source
from .tables import ArrowSource, ParquetSource
from .transforms import preprocess, train_transform
from .workers import DataWorkerError

__all__ = [
    "Sample",
    "RawSample",
    "CorruptSampleError",
    "UnreadableSourceError",
    "fingerprint",
    "max_pixels",
    "set_max_pixels",
    "DataWorkerError",
    "CAPTION_SAMPLING",
    "Source",
    "IndexedSource",
    "StreamSource",
    "DigitsSource",
    "ShapesSource",
    "CaptionFolderSource",
    "ManifestSource",
    "ImageFolderSource",
    "TarShardSource",
    "ParquetSource",
    "ArrowSource",
    "open_source",
    "expand_shards",
    "builtin_captions",
    "preprocess",
    "train_transform",
    "decode_for_crop",
    "transform_encoded",
    "Loader",
]
