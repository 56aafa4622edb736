"""The MLX backend's registry: ``@realizes(SpecClass)`` on module classes, and building.

Example:
    >>> from aimv2.specs import NormSpec
    >>> build_module(NormSpec(width=4)).weight.shape
    (4,)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.nn as nn

from aimv2 import specs as S
from aimv2.registry import Realizations

__all__ = ["REGISTRY", "realizes", "build", "build_part", "build_module", "is_module"]

REGISTRY = Realizations(
    "MLX backend",
    hint=": decorate an mlx.nn.Module class constructed from the spec with "
    "@aimv2.backends.mlx.realizes({cls})",
)


def realizes(spec_class: type[S.Spec]) -> Callable[[type], type]:
    """Register an ``mlx.nn.Module`` class, constructed as ``cls(spec)``, as the MLX
    realization of ``spec_class``. Its parameters must carry the spec's canonical names.

    Example:
        >>> from aimv2.specs import NormSpec
        >>> REGISTRY.lookup(NormSpec(4)).__name__
        'Norm'
    """
    register = REGISTRY.realizes(spec_class)

    def wrap(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise S.RealizationError(
                f"MLX realizes({spec_class.__name__}): expected an mlx.nn.Module class, got {cls!r}"
            )
        return register(cls)

    return wrap


def build(spec: S.Spec) -> nn.Module:
    """Construct the registered module of ``spec`` (composites call this for their slots,
    so any registered component of the slot's role fits).

    Example:
        >>> from aimv2.specs import AttentionSpec
        >>> type(build(AttentionSpec(8, 2))).__name__
        'Attention'
    """
    module = REGISTRY.lookup(spec)(spec)
    if getattr(module, "spec", None) is not spec:
        module.spec = spec
    return module


def build_part(spec: S.Spec) -> Any:
    """The module of a part, for a composite's constructor: ``self.mlp = build_part(
    spec.mlp)`` builds whatever registered component fills the slot (weights are set
    later, on the whole model). The public name of :func:`build`.

    Example:
        >>> from aimv2.specs import FeedForwardSpec
        >>> type(build_part(FeedForwardSpec(8, 16))).__name__
        'FeedForward'
    """
    return build(spec)


def build_module(spec: S.Spec) -> Any:
    """The module realizing ``spec`` (float32; weights not yet set — MLX is lazy, so the
    initial values are never computed). A ModelSpec without a decoder realizes as its
    encoder (official names).

    Example:
        >>> build_module(S.NormSpec(width=4)).weight.dtype
        mlx.core.float32
    """
    if isinstance(spec, S.ModelSpec) and spec.decoder is None:
        spec = spec.encoder
    return build(spec)


def is_module(obj: Any) -> bool:
    """True for an MLX module built from a spec.

    Example:
        >>> is_module(build_module(S.NormSpec(width=4))), is_module(object())
        (True, False)
    """
    return isinstance(obj, nn.Module) and isinstance(getattr(obj, "spec", None), S.Spec)
