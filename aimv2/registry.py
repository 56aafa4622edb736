"""Realization registries: which function or module class realizes each spec class.

The float64 reference and each backend own one :class:`Realizations`; their public
decorators (``aimv2.reference.realizes``, ``aimv2.backends.torch.realizes``,
``aimv2.backends.mlx.realizes``) register into it. Built-in components use the same
decorators as users do. A registry is keyed by the spec class (through its ``kind``):
registering a second, different realization for a class, or looking up a spec whose
class has none, is a :class:`~aimv2.specs.RealizationError` naming the kind and where.

Example:
    >>> from aimv2.specs import NormSpec
    >>> reg = Realizations("doc")
    >>> @reg.realizes(NormSpec)
    ... def my_norm(spec, weights, x):
    ...     return x
    >>> reg.lookup(NormSpec(4)) is my_norm
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from .specs import KINDS, RealizationError, Spec
from .specs.base import realization_key

__all__ = ["Realizations"]

T = TypeVar("T")


class Realizations(Mapping[str, Any]):
    """kind → realization for one backend (a read-only mapping), with registration.

    ``where`` names the backend in errors (``"torch backend"``, ``"reference"``).

    Example:
        >>> reg = Realizations("doc")
        >>> len(reg), "norm" in reg
        (0, False)
    """

    def __init__(self, where: str, hint: str = "") -> None:
        self.where = where
        self.hint = hint
        self._by_kind: dict[str, tuple[type[Spec], Any]] = {}

    def realizes(self, spec_class: type[Spec]) -> Callable[[T], T]:
        """Decorator: register the decorated object as the realization of ``spec_class``.

        Registering the same definition again (a reloaded module) replaces it; a
        different one for a class that has a realization here is an error.

        Example:
            >>> from aimv2.specs import NormSpec
            >>> reg = Realizations("doc")
            >>> _ = reg.realizes(NormSpec)(lambda spec, w, x: x)
            >>> reg.realizes(NormSpec)(print)
            Traceback (most recent call last):
            ...
            aimv2.specs.base.RealizationError: spec kind 'norm' (NormSpec) already has a realization in the doc: aimv2.registry.<lambda>; builtins.print would replace it
        """
        if not (isinstance(spec_class, type) and issubclass(spec_class, Spec)):
            raise RealizationError(
                f"realizes({spec_class!r}): expected a Spec subclass (a spec class, not an "
                f"instance)"
            )
        kind = spec_class.__dict__.get("kind")
        if not kind or KINDS.get(kind) is not spec_class:
            raise RealizationError(
                f"realizes({spec_class.__name__}): the class has no registered kind of its own "
                f"(set a unique class attribute kind = '...')"
            )

        def register(obj: T) -> T:
            old = self._by_kind.get(kind)
            if old is not None and _key(old[1]) != _key(obj):
                raise RealizationError(
                    f"spec kind {kind!r} ({spec_class.__name__}) already has a realization in "
                    f"the {self.where}: {_key(old[1])}; {_key(obj)} would replace it"
                )
            self._by_kind[kind] = (spec_class, obj)
            return obj

        return register

    def lookup(self, spec: Spec) -> Any:
        """The realization of ``spec``'s class; a clear error when there is none.

        Example:
            >>> from aimv2.specs import NormSpec
            >>> Realizations("doc").lookup(NormSpec(4))  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            aimv2.specs.base.RealizationError: spec kind 'norm' (NormSpec) has no realization in the doc...
        """
        if not isinstance(spec, Spec):
            raise TypeError(f"spec: expected an aimv2 spec, got {type(spec).__name__}")
        entry = self._by_kind.get(spec.kind)
        if entry is None or entry[0] is not type(spec):
            cls = type(spec).__name__
            if entry is not None:
                raise RealizationError(
                    f"spec kind {spec.kind!r}: the {self.where} realizes {entry[0].__module__}."
                    f"{entry[0].__qualname__}, not {type(spec).__module__}.{cls}"
                )
            raise RealizationError(
                f"spec kind {spec.kind!r} ({cls}) has no realization in the {self.where}"
                f"{self.hint.format(cls=cls)}"
            )
        return entry[1]

    def spec_class(self, kind: str) -> type[Spec]:
        """The spec class registered under ``kind``.

        Example:
            >>> Realizations("doc").spec_class("norm")
            Traceback (most recent call last):
            ...
            KeyError: "kind 'norm' has no realization in the doc"
        """
        if kind not in self._by_kind:
            raise KeyError(f"kind {kind!r} has no realization in the {self.where}")
        return self._by_kind[kind][0]

    def __getitem__(self, kind: str) -> Any:
        return self._by_kind[kind][1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_kind)

    def __len__(self) -> int:
        return len(self._by_kind)

    def __repr__(self) -> str:
        return f"Realizations({self.where!r}, kinds={sorted(self._by_kind)})"


def _key(obj: Any) -> str:
    return realization_key(obj) if hasattr(obj, "__qualname__") else repr(obj)
