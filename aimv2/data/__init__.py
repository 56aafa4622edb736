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
- ``imagefolder:PATH`` — one subfolder per class, for labelled evaluation.

:func:`preprocess` and :func:`train_transform` turn images into normalized
``float32`` arrays following an :class:`~aimv2.specs.EncoderSpec`, and :class:`Loader`
batches a source with background threads so that every batch is a pure function of
``(seed, step, rank, world_size)``.

Unreadable samples never stop a run: they are skipped, counted (``source.skipped``,
``loader.skipped``) and logged once per key on the ``aimv2.data`` logger.

The package's modules, from the bottom up: :mod:`~aimv2.data.sample` (samples, the
source base classes, image decoding), :mod:`~aimv2.data.builtin`,
:mod:`~aimv2.data.files` and :mod:`~aimv2.data.shards` (the sources),
:mod:`~aimv2.data.sources` (:func:`open_source`), :mod:`~aimv2.data.transforms` and
:mod:`~aimv2.data.loader`.

Example:
    >>> from aimv2 import data
    >>> src = data.open_source("builtin:digits", split="heldout")
    >>> len(src), src[0].image.shape, src[0].image.dtype.name
    (359, (8, 8, 3), 'uint8')
"""

from .builtin import SHAPE_CLASSES as SHAPE_CLASSES  # public constant, not in __all__
from .builtin import DigitsSource, ShapesSource, builtin_captions
from .files import CaptionFolderSource, ImageFolderSource, ManifestSource
from .loader import Loader
from .sample import CorruptSampleError, IndexedSource, Sample, Source, StreamSource
from .shards import TarShardSource, expand_shards
from .sources import open_source
from .transforms import preprocess, train_transform

__all__ = [
    "Sample",
    "CorruptSampleError",
    "Source",
    "IndexedSource",
    "StreamSource",
    "DigitsSource",
    "ShapesSource",
    "CaptionFolderSource",
    "ManifestSource",
    "ImageFolderSource",
    "TarShardSource",
    "open_source",
    "expand_shards",
    "builtin_captions",
    "preprocess",
    "train_transform",
    "Loader",
]
