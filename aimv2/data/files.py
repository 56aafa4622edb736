"""Sources over your own files: caption folders, JSONL manifests and class-per-folder
image folders."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from .images import CorruptSampleError, read_regular
from .sample import IMAGE_EXTENSIONS, IndexedSource, RawSample, Sample, _user_split, log


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _visible_files(root: Path) -> list[Path]:
    """Regular files (or links to them) under ``root``, hidden ones left out; a FIFO,
    device or socket — which would block or never end when read — is logged and left
    out."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            p = Path(dirpath) / f
            if f.startswith("."):
                continue
            try:
                regular = stat.S_ISREG(p.stat().st_mode)
            except OSError:  # a dangling link
                regular = False
            if regular:
                out.append(p)
            else:
                log.warning("%s: skipped %s: not a regular file", os.fspath(root), p)
    return sorted(out)


def _text(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise CorruptSampleError(f"caption file {os.fspath(path)!r} is not UTF-8 ({err})") from None


def _require_path(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what}: no such file or directory {os.fspath(path)!r}")
    return p


class CaptionFolderSource(IndexedSource):
    """A folder (searched recursively) of images with ``.txt`` captions of the same stem.

    Images without a caption file are skipped and counted (``unpaired``, also in
    ``skipped``); caption files without an image are counted in ``orphan_captions``. A
    folder with no image–caption pair at all is an error.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / "a.png")
        >>> _ = (d / "a.txt").write_text("A black square")
        >>> CaptionFolderSource(d)[0].caption
        'A black square'
    """

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        root = _require_path(root, "caption folder")
        if not root.is_dir():
            raise NotADirectoryError(f"caption folder: {os.fspath(root)!r} is not a directory")
        _user_split(split, "a caption folder")
        super().__init__(os.fspath(root))
        self.root = root
        files = _visible_files(root)
        captions = {p.with_suffix(""): p for p in files if p.suffix.lower() == ".txt"}
        images = [p for p in files if _is_image(p)]
        self.pairs: list[tuple[Path, Path]] = []
        unpaired = 0
        for img in images:
            txt = captions.pop(img.with_suffix(""), None)
            if txt is None:
                unpaired += 1
            else:
                self.pairs.append((img, txt))
        self.unpaired = unpaired
        self.orphan_captions = len(captions)
        if not self.pairs:
            if not images and captions:
                raise ValueError(
                    f"caption folder {os.fspath(root)!r}: found {len(captions)} caption files "
                    f"(.txt) but no images with the same stem ({', '.join(IMAGE_EXTENSIONS)})"
                )
            if images:
                raise ValueError(
                    f"caption folder {os.fspath(root)!r}: found {len(images)} images but no "
                    "caption files (.txt with the same stem); for one subfolder per class use "
                    f"'imagefolder:{os.fspath(root)}'"
                )
            raise ValueError(
                f"caption folder {os.fspath(root)!r}: no images found "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)} with .txt captions)"
            )
        if unpaired:
            self._skip("<scan>", f"{unpaired} images without a .txt caption", n=unpaired)
        if self.orphan_captions:
            log.warning(
                "%s: %d caption files without an image ignored", self.name, self.orphan_captions
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def key(self, index: int) -> str:
        """The image path relative to the folder, without its extension."""
        return self.pairs[index][0].relative_to(self.root).with_suffix("").as_posix()

    def content_files(self) -> list[str]:
        """Every image and caption file, in order."""
        return [os.fspath(p) for pair in self.pairs for p in pair]

    def _load(self, index: int) -> Sample:
        return self._load_raw(index).decode()

    def _load_raw(self, index: int) -> RawSample:
        img, txt = self.pairs[index]
        caption = _text(read_regular(txt, "caption file"), txt)
        return RawSample(str(img), (caption,), None, self.key(index))


class ManifestSource(IndexedSource):
    """A JSONL manifest: one ``{"image": path, "caption": text, "label": int?}`` per line.

    ``caption`` may also be a non-empty list of strings (several captions per image,
    e.g. alt-text and a synthetic one; the loader's ``caption_sampling`` picks).
    Image paths are relative to the manifest's folder and must stay inside it: a line
    naming an absolute path or climbing out with ``..`` is skipped and counted, unless
    ``allow_outside=True`` (for a manifest you wrote yourself). Links inside the folder
    are followed (the folder's owner made them). Malformed lines are skipped and counted
    at open; missing or corrupt images when read.

    Example:
        >>> import tempfile, pathlib, json, numpy as np
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / "a.png")
        >>> _ = (d / "m.jsonl").write_text(json.dumps({"image": "a.png", "caption": "x"}))
        >>> ManifestSource(d / "m.jsonl")[0].caption
        'x'
    """

    def __init__(
        self, path: str | os.PathLike, split: str = "train", *, allow_outside: bool = False
    ) -> None:
        path = _require_path(path, "manifest")
        if not path.is_file():
            raise IsADirectoryError(f"manifest: {os.fspath(path)!r} is not a file")
        _user_split(split, "a manifest")
        super().__init__(os.fspath(path))
        self.path = path
        self.entries: list[tuple[Path, tuple[str, ...], int | None, str]] = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                key = f"{path.name}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    self._skip(key, f"invalid JSON: {err}")
                    continue
                problem = _manifest_problem(rec)
                if problem:
                    self._skip(key, problem)
                    continue
                image = Path(rec["image"]).expanduser()
                if not allow_outside and _escapes(image):
                    self._skip(
                        key,
                        f"image {rec['image']!r} is outside the manifest's folder "
                        "(allow_outside=True / --allow-outside-paths allows it)",
                    )
                    continue
                if not image.is_absolute():
                    image = path.parent / image
                caption = rec["caption"]
                captions = (caption,) if isinstance(caption, str) else tuple(caption)
                self.entries.append((image, captions, rec.get("label"), key))
        if not self.entries:
            raise ValueError(
                f"manifest {os.fspath(path)!r}: no usable lines; expected JSON objects like "
                '{"image": "a.jpg", "caption": "a cat", "label": 3}'
            )

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, index: int) -> str:
        """``MANIFEST_NAME:LINE``."""
        return self.entries[index][3]

    def content_files(self) -> list[str]:
        """The manifest and every image it names."""
        return [os.fspath(self.path)] + [os.fspath(e[0]) for e in self.entries]

    def _load(self, index: int) -> Sample:
        return self._load_raw(index).decode()

    def _load_raw(self, index: int) -> RawSample:
        image, captions, label, key = self.entries[index]
        return RawSample(str(image), captions, label, key)

    def caption_counts(self) -> np.ndarray | None:
        """Captions per line (None when every line has one)."""
        counts = np.fromiter((len(e[1]) for e in self.entries), np.int64, len(self.entries))
        return None if (counts == 1).all() else counts


def _escapes(image: Path) -> bool:
    """Whether a manifest's image path leaves its folder: absolute, or climbing out with
    ``..`` (judged on the text, so links the folder's owner made still work)."""
    if image.is_absolute() or image.drive:
        return True
    return os.path.normpath(image).split(os.sep)[0] == ".."


def _manifest_problem(rec: Any) -> str:
    if not isinstance(rec, dict):
        return "expected a JSON object"
    if not isinstance(rec.get("image"), str) or not rec["image"]:
        return "expected a non-empty string 'image'"
    caption = rec.get("caption")
    if not isinstance(caption, str) and not (
        isinstance(caption, list) and caption and all(isinstance(c, str) for c in caption)
    ):
        return "expected a string 'caption' (or a non-empty list of strings)"
    label = rec.get("label")
    if label is not None and (not isinstance(label, int) or isinstance(label, bool) or label < 0):
        return f"expected 'label' to be a non-negative integer, got {label!r}"
    return ""


class ImageFolderSource(IndexedSource):
    """``imagefolder:PATH``: one subfolder per class; label = sorted class index,
    caption = the class (folder) name.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for c in ("cat", "dog"):
        ...     (d / c).mkdir()
        ...     Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / c / "0.png")
        >>> src = ImageFolderSource(d)
        >>> src.classes, src[1].label, src[1].caption
        (('cat', 'dog'), 1, 'dog')
    """

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        root = _require_path(root, "imagefolder")
        if not root.is_dir():
            raise NotADirectoryError(f"imagefolder: {os.fspath(root)!r} is not a directory")
        _user_split(split, "an image folder")
        super().__init__(f"imagefolder:{os.fspath(root)}")
        self.root = root
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not dirs:
            raise ValueError(
                f"imagefolder {os.fspath(root)!r}: no class subfolders (expected ROOT/CLASS/img)"
            )
        self.classes = tuple(d.name for d in dirs)
        self.items: list[tuple[Path, int]] = []
        for label, d in enumerate(dirs):
            imgs = [p for p in _visible_files(d) if _is_image(p)]
            if not imgs:
                log.warning("%s: class folder %r holds no images", self.name, d.name)
            self.items.extend((p, label) for p in imgs)
        if not self.items:
            raise ValueError(
                f"imagefolder {os.fspath(root)!r}: no images in any class subfolder "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
            )

    def content_files(self) -> list[str]:
        """Every image, in order."""
        return [os.fspath(p) for p, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def key(self, index: int) -> str:
        """The image path relative to the root, without its extension."""
        return self.items[index][0].relative_to(self.root).with_suffix("").as_posix()

    def _load(self, index: int) -> Sample:
        return self._load_raw(index).decode()

    def _load_raw(self, index: int) -> RawSample:
        path, label = self.items[index]
        return RawSample(str(path), (self.classes[label],), label, self.key(index))
