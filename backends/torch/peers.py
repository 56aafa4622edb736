"""The other AIMv2 implementations on torch that ``aimv2 bench --compare`` times:
``transformers``' ``Aimv2VisionModel`` and ``timm``'s AIMv2 ``VisionTransformer``,
each loaded the way a user loads it from this library's own export
(:func:`aimv2.save_pretrained`, done by the bench driver), so it holds exactly aimv2's
weights.

timm imports torchvision at import time (data transforms, ``FrozenBatchNorm2d``), and
PyPI's torchvision does not load beside the CPU torch wheel. timm's ViT code never
calls torchvision, so :func:`import_timm` can let timm import with stand-in
``torchvision`` modules. The stand-in is process-wide: call it only in a process that
runs timm and nothing that would use torchvision (the bench's timm worker, a test
subprocess).

Example:
    >>> import aimv2, tempfile
    >>> spec = aimv2.encoder_spec(width=32, depth=1, heads=2, patch_size=4, image_size=8,
    ...                           mlp_hidden=64)
    >>> ours = aimv2.build(spec, "torch")
    >>> folder = aimv2.save_pretrained(ours, tempfile.mkdtemp() + "/peer", format="transformers")
    >>> peer, note = load_peer("transformers", folder)
    >>> max_abs_diff(ours, peer, "transformers", spec) < 1e-5
    True
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aimv2 import specs as S

__all__ = ["PEERS", "import_timm", "load_peer", "forward_of", "max_abs_diff"]

PEERS = ("transformers", "timm")  # the implementations load_peer knows

_STAND_IN = {"installed": False}  # whether this process's torchvision is the stand-in


def _install_torchvision_stand_in() -> None:
    class _Anything(type(torch.nn.Module)):  # type: ignore[misc]
        def __getattr__(cls, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            kids = cls.__dict__["_kids"]
            if name not in kids:
                kids[name] = _Anything(name, (cls,), {"_kids": {}})
            return kids[name]

    class _Stub(torch.nn.Module, metaclass=_Anything):
        _kids: dict[str, Any] = {}

    class _StubModule(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return getattr(_Stub, name)

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
            if fullname.split(".")[0] == "torchvision":
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec: Any) -> types.ModuleType:
            module = _StubModule(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module: types.ModuleType) -> None:
            pass

    for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
        del sys.modules[name]  # a half-imported real torchvision
    sys.meta_path.insert(0, _Finder())
    _STAND_IN["installed"] = True


def import_timm(stand_in: bool = True) -> tuple[Any, bool]:
    """``(timm, stubbed)``: timm imported, with stand-in torchvision modules when the
    real one does not import and ``stand_in`` is true (``stubbed`` says whether timm
    runs on the stand-in in this process).

    Raises the original ImportError when timm itself is missing, or when torchvision is
    missing and ``stand_in`` is false. It needs timm and changes the process it runs
    in, so its example is a test (``tests/test_bench.py::test_import_timm``)::

        timm, stubbed = import_timm()
        model = timm.create_model("local-dir:/path/to/export", pretrained=True)
    """
    try:
        import timm

        return timm, _STAND_IN["installed"]
    except ModuleNotFoundError as err:
        if not stand_in or not (err.name or "").startswith("torchvision"):
            raise
    for name in [n for n in sys.modules if n.split(".")[0] == "timm"]:
        del sys.modules[name]
    _install_torchvision_stand_in()
    import timm

    return timm, True


def load_peer(impl: str, folder: str | Path) -> tuple[nn.Module, str]:
    """``(model, note)``: the peer ``impl`` (one of :data:`PEERS`) loaded from ``folder``,
    an export of aimv2's weights in ``impl``'s format
    (``aimv2.save_pretrained(model, folder, format=impl)``) — the way its users load it.

    Raises NotImplementedError, saying why, when ``impl`` is unknown or does not import
    here.

    Example:
        >>> load_peer("jax", None)
        Traceback (most recent call last):
        ...
        NotImplementedError: unknown implementation 'jax'
    """
    if impl not in PEERS:
        raise NotImplementedError(f"unknown implementation {impl!r}")
    try:
        if impl == "transformers":
            from transformers import Aimv2VisionModel
        else:
            timm, stubbed = import_timm()
    except Exception as err:  # noqa: BLE001 (any import failure means: skip it)
        raise NotImplementedError(
            f"{impl} does not import here: {type(err).__name__}: {err}"
        ) from None
    if impl == "transformers":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the bench's output is the report
        model = Aimv2VisionModel.from_pretrained(str(folder), attn_implementation="sdpa")
        return model, f"transformers {_version('transformers')} Aimv2VisionModel, sdpa"
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    note = f"timm {_version('timm')} VisionTransformer (AIMv2 config)"
    if stubbed:
        note += "; imported with stand-in torchvision modules (it never calls them)"
    return model, note


def forward_of(impl: str, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function from images to the last hidden state (B, N, D) of ``model``, an
    encoder of implementation ``impl`` (``aimv2`` or one of :data:`PEERS`).

    Example:
        >>> import aimv2
        >>> enc = aimv2.presets.get("aimv2-test-tiny").encoder
        >>> forward_of("aimv2", aimv2.build(enc, "torch"))(torch.zeros(1, 3, 16, 16)).shape
        torch.Size([1, 16, 32])
    """
    if impl == "transformers":
        return lambda x: model(pixel_values=x).last_hidden_state
    if impl == "timm":
        return model.forward_features
    return model


def max_abs_diff(
    ours: nn.Module, peer: nn.Module, impl: str, spec: S.EncoderSpec, seed: int = 0
) -> float:
    """Largest |output difference| between aimv2's encoder ``ours`` and the peer ``impl``
    on one random image (drawn from ``seed``).

    Example:
        >>> import aimv2
        >>> enc = aimv2.presets.get("aimv2-test-tiny").encoder
        >>> m = aimv2.build(enc, "torch")
        >>> max_abs_diff(m, m, "aimv2", enc)
        0.0
    """
    hw = spec.image_size or (spec.patch_size * 4, spec.patch_size * 4)
    x = torch.randn(1, spec.in_channels, *hw, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return float((ours(x) - forward_of(impl, peer.eval())(x)).abs().max())


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"
