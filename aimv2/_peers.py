"""Importing peer implementations that need help to import here.

timm imports torchvision at import time (data transforms, ``FrozenBatchNorm2d``), and
PyPI's torchvision does not load beside the CPU torch wheel. timm's ViT code never
calls torchvision, so :func:`import_timm` can let timm import with stand-in
``torchvision`` modules. The stand-in is process-wide: call it only in a process that
runs timm and nothing that would use torchvision (the bench's timm worker, a test
subprocess).

Example:
    >>> from aimv2._peers import import_timm
    >>> callable(import_timm)
    True
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

__all__ = ["import_timm"]

_STAND_IN = {"installed": False}  # whether this process's torchvision is the stand-in


def _install_torchvision_stand_in() -> None:
    import torch

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
    missing and ``stand_in`` is false.

    Example:
        >>> try:
        ...     timm, stubbed = import_timm()
        ... except ImportError:
        ...     stubbed = None
        >>> stubbed in (True, False, None)
        True
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
