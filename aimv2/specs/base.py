"""The spec base class, parameter declarations, slots and the registry of kinds.

A *component* is a spec class (a frozen dataclass subclassing :class:`Spec`) plus its
realizations in the float64 reference, torch and MLX. The spec class declares:

- ``kind``: a unique string; specs round-trip through JSON by it (:func:`from_dict`).
- ``role``: the slot it can fill in a composite (``"ffn"``, ``"attention"``, ``"norm"``,
  …; see :data:`ROLES`), or None for a top-level spec.
- ``__post_init__``: validation raising :class:`SpecError` that names field and value.
- ``parameters()``: its canonical parameter names (relative to where it sits), shapes
  and roles (:class:`ParamInfo`: initialization and weight decay). Composite specs build
  theirs from their children with :func:`nested`.

Defining the class registers its kind; registering a second, different class under a
taken kind is a :class:`RealizationError`.

Example:
    >>> from dataclasses import dataclass
    >>> from typing import ClassVar
    >>> @dataclass(frozen=True)
    ... class ScaleSpec(Spec):
    ...     kind: ClassVar[str] = "doc_scale"
    ...     role: ClassVar[str] = "ffn"
    ...     width: int
    ...     def parameters(self):
    ...         return {"gamma": ParamInfo((self.width,), "scale", fill=0.1)}
    >>> ScaleSpec(4).parameters()["gamma"].decay
    False
    >>> from_dict({"kind": "doc_scale", "width": 4})
    ScaleSpec(width=4)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "SpecError",
    "RealizationError",
    "Spec",
    "ParamInfo",
    "PARAM_ROLES",
    "ROLES",
    "KINDS",
    "from_dict",
    "from_json",
    "nested",
    "linear_params",
    "check_slot",
    "require",
    "positive_int",
    "one_of",
    "realization_key",
    "walk",
]


class SpecError(ValueError):
    """A spec field holds a value the architecture cannot realize."""


class RealizationError(TypeError):
    """A spec kind is registered twice, or a backend has no realization for it."""


# --------------------------------------------------------------------------- validation


def require(ok: bool, spec: str, name: str, value: Any, expected: str) -> None:
    """Raise :class:`SpecError` ``"<spec>.<name>=<value>: <expected>"`` unless ``ok``.

    Example:
        >>> require(False, "MySpec", "width", 0, "expected a positive integer")
        Traceback (most recent call last):
        ...
        aimv2.specs.base.SpecError: MySpec.width=0: expected a positive integer
    """
    if not ok:
        raise SpecError(f"{spec}.{name}={value!r}: {expected}")


def positive_int(spec: str, name: str, value: Any) -> None:
    """Require a positive ``int`` (``bool`` is refused).

    Example:
        >>> positive_int("MySpec", "depth", True)
        Traceback (most recent call last):
        ...
        aimv2.specs.base.SpecError: MySpec.depth=True: expected a positive integer
    """
    require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        spec,
        name,
        value,
        "expected a positive integer",
    )


def one_of(spec: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Require ``value`` to be one of ``choices``.

    Example:
        >>> one_of("NormSpec", "type", "batch", ("rms", "layer"))
        Traceback (most recent call last):
        ...
        aimv2.specs.base.SpecError: NormSpec.type='batch': expected one of ('rms', 'layer')
    """
    require(value in choices, spec, name, value, f"expected one of {choices}")


# --------------------------------------------------------------------------- parameters

# role -> (initialization, weight decay). Initialization is drawn by aimv2.init_weights
# with NumPy from the seed; ``fill`` on a ParamInfo overrides it with a constant.
PARAM_ROLES: dict[str, tuple[str, bool]] = {
    "linear": ("xavier-uniform", True),
    "conv": ("xavier-uniform on the flattened kernel; MLX stores it (out, kH, kW, in)", True),
    "head": ("xavier-uniform, scaled by 1/sqrt(2·decoder depth)", True),
    "embed": ("normal(0, init.embed_std)", True),
    "bias": ("zeros", False),
    "norm": ("ones", False),
    "norm_bias": ("zeros", False),
    "pos": ("normal(0, init.embed_std)", False),
    "text_pos": ("normal(0, init.text_pos_std)", False),
    "token": ("normal(0, init.embed_std)", False),
    "scale": ("the ParamInfo's fill value", False),
}


_XAVIER = ("linear", "conv", "head")


@dataclass(frozen=True)
class ParamInfo:
    """Shape and role of one canonical parameter.

    ``role`` (one of :data:`PARAM_ROLES`) decides initialization and weight decay;
    ``fan_in``/``fan_out`` feed xavier initialization (both 0: ``shape[0]`` out and the
    product of the rest in, as for a Linear weight (out, in));
    ``fill`` initializes to a constant instead (e.g. a LayerScale of 1e-5).

    Example:
        >>> ParamInfo((8, 4), "linear").fan_in, ParamInfo((8,), "bias").decay
        (4, False)
    """

    shape: tuple[int, ...]
    role: str
    fan_in: int = 0
    fan_out: int = 0
    fill: float | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise SpecError(f"ParamInfo.shape={self.shape!r}: expected non-negative integers")
        object.__setattr__(self, "shape", shape)
        if self.role not in PARAM_ROLES:
            raise SpecError(f"ParamInfo.role={self.role!r}: expected one of {sorted(PARAM_ROLES)}")
        if self.role == "scale" and self.fill is None:
            raise SpecError("ParamInfo.fill=None: a 'scale' parameter needs a fill value")
        if self.fill is not None and not math.isfinite(float(self.fill)):
            raise SpecError(f"ParamInfo.fill={self.fill!r}: expected a finite number")
        if self.role in _XAVIER and not self.fan_in and not self.fan_out:  # (out, in...)
            fan_out = shape[0] if shape else 1
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else fan_out
            object.__setattr__(self, "fan_in", fan_in)
            object.__setattr__(self, "fan_out", fan_out)

    @property
    def decay(self) -> bool:
        """Whether AIMv2's optimizer applies weight decay to this parameter."""
        return PARAM_ROLES[self.role][1]


def linear_params(
    name: str, n_out: int, n_in: int, bias: bool, role: str = "linear"
) -> dict[str, ParamInfo]:
    """The parameters of a Linear(n_in → n_out) called ``name``: ``name.weight`` (and
    ``name.bias``), torch layout (out, in).

    Example:
        >>> sorted(linear_params("proj", 8, 4, bias=True))
        ['proj.bias', 'proj.weight']
    """
    out = {f"{name}.weight": ParamInfo((n_out, n_in), role, n_in, n_out)}
    if bias:
        out[f"{name}.bias"] = ParamInfo((n_out,), "bias")
    return out


def nested(*parts: tuple[str, Spec | Mapping[str, ParamInfo]]) -> dict[str, ParamInfo]:
    """Merge children's parameter tables under name prefixes (composite specs).

    Each part is ``(prefix, spec_or_table)``; the prefix is prepended as is, so pass
    ``"attn."`` for a child module and ``""`` to merge into the parent's namespace.

    Example:
        >>> from aimv2.specs import NormSpec
        >>> sorted(nested(("norm_1.", NormSpec(4)), ("norm_2.", NormSpec(4))))
        ['norm_1.weight', 'norm_2.weight']
    """
    out: dict[str, ParamInfo] = {}
    for prefix, part in parts:
        table = part.parameters() if isinstance(part, Spec) else part
        for name, info in table.items():
            key = prefix + name
            if key in out:
                raise SpecError(f"parameter name {key!r} is declared twice")
            out[key] = info
    return out


# --------------------------------------------------------------------------- roles, slots

# The slot roles a composite can hold, and the call every component of that role answers.
ROLES: dict[str, str] = {
    "norm": "(x (..., width)) -> same shape",
    "patch_embed": "(images (B, C, H, W)) -> (B, N, width); fields patch_size, in_channels",
    "pos_embed": "(x (B, N, width), grid=(rows, cols)) -> (B, N, width)",
    "attention": "(x (B, N, width), mask=None | 'causal' | bool (B, 1, N, N)) -> (B, N, width)",
    "ffn": "(x (B, N, width)) -> (B, N, width)",
    "block": "(x (B, N, width), mask=None) -> (B, N, width)",
    "trunk": "(x (B, N, width), mask=None, return_blocks=False) -> (B, N, width) [, blocks]",
    "pool": "(features (B, N, width)) -> (B, out_dim)",
}


def check_slot(owner: str, name: str, value: Any, role: str, width: int | None = None) -> None:
    """Validate that slot ``owner.name`` holds a spec of ``role`` (and ``width``).

    Example:
        >>> from aimv2.specs import NormSpec
        >>> check_slot("BlockSpec", "attn", NormSpec(8), "attention")
        Traceback (most recent call last):
        ...
        aimv2.specs.base.SpecError: BlockSpec.attn=NormSpec(width=8, type='rms', eps=1e-05): expected a spec of role 'attention' (e.g. AttentionSpec), got role 'norm'
    """
    if not isinstance(value, Spec):
        raise SpecError(
            f"{owner}.{name}={value!r}: expected a spec of role {role!r}, "
            f"got {type(value).__name__}"
        )
    got = type(value).role
    if got != role:
        example = {"attention": "AttentionSpec", "ffn": "FeedForwardSpec", "norm": "NormSpec"}
        hint = f" (e.g. {example[role]})" if role in example else ""
        raise SpecError(
            f"{owner}.{name}={value!r}: expected a spec of role {role!r}{hint}, got role {got!r}"
        )
    if width is not None:
        require(
            getattr(value, "width", None) == width,
            owner,
            f"{name}.width",
            getattr(value, "width", None),
            f"expected the width {width}",
        )


# --------------------------------------------------------------------------- the base

KINDS: dict[str, type[Spec]] = {}


def realization_key(cls: type) -> str:
    """``module.qualname`` of a class: the identity that registries compare, so that
    re-importing (reloading) the same definition replaces it instead of clashing.

    Example:
        >>> realization_key(Spec)
        'aimv2.specs.base.Spec'
    """
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class Spec:
    """Base class of every spec: ``kind`` and ``role`` tags, validation, the parameter
    table and dict/JSON round-trip.

    Subclasses set the class attributes ``kind`` (unique) and ``role`` (a key of
    :data:`ROLES`, or None), validate in ``__post_init__`` and override
    :meth:`parameters`. ``configures_owner = True`` marks a spec that configures the
    composite holding it (objectives, prefix, init, preprocessing) and is not realized
    by itself.
    """

    kind: ClassVar[str] = ""
    role: ClassVar[str | None] = None
    configures_owner: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if not kind:
            return
        if not isinstance(kind, str):
            raise RealizationError(f"{cls.__name__}.kind={kind!r}: expected a string")
        role = cls.__dict__.get("role", cls.role)
        if role is not None and role not in ROLES:
            raise RealizationError(
                f"{cls.__name__}.role={role!r}: expected None or one of {sorted(ROLES)}"
            )
        old = KINDS.get(kind)
        if old is not None and realization_key(old) != realization_key(cls):
            raise RealizationError(
                f"spec kind {kind!r} is already taken by {realization_key(old)}; "
                f"give {cls.__name__} another kind"
            )
        KINDS[kind] = cls

    def parameters(self) -> dict[str, ParamInfo]:
        """Canonical name → :class:`ParamInfo` of every parameter this spec realizes
        (relative names; a composite prefixes its children's). None by default.

        Example:
            >>> from aimv2.specs import AttentionSpec
            >>> sorted(AttentionSpec(width=8, heads=2).parameters())
            ['proj.weight', 'qkv.weight']
        """
        return {}

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-ready) with a ``kind`` key at every level.

        Example:
            >>> from aimv2.specs import AttentionSpec
            >>> AttentionSpec(width=64, heads=2).to_dict()["kind"]
            'attention'
        """
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict`.

        Example:
            >>> from aimv2.specs import NormSpec
            >>> NormSpec(width=8).to_json(indent=None)[:16]
            '{"kind": "norm",'
        """
        return json.dumps(self.to_dict(), indent=indent)

    def replace(self, **changes: Any) -> Spec:
        """A copy with some fields changed (validated again).

        Example:
            >>> from aimv2.specs import NormSpec
            >>> NormSpec(width=8).replace(type="layer").type
            'layer'
        """
        return dataclasses.replace(self, **changes)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Spec):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(value: Any) -> Any:
    if isinstance(value, dict) and "kind" in value:
        return from_dict(value)
    if isinstance(value, list):
        return tuple(_from_plain(v) for v in value)
    return value


def from_dict(data: dict[str, Any]) -> Spec:
    """Rebuild a spec from :meth:`Spec.to_dict` output, dispatching on ``kind``.

    A kind defined outside this library must have been registered (its module
    imported) first; otherwise the error says which kind is missing.

    Example:
        >>> from_dict({"kind": "norm", "width": 8, "type": "rms", "eps": 1e-5})
        NormSpec(width=8, type='rms', eps=1e-05)
        >>> from_dict({"kind": "moe_ffn_not_imported", "width": 8})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        aimv2.specs.base.SpecError: spec dict kind='moe_ffn_not_imported' is not registered: import the module that defines its spec class before loading (known kinds: ...)
    """
    if not isinstance(data, dict) or "kind" not in data:
        raise SpecError(f"spec dict: expected a dict with a 'kind' key, got {data!r:.200}")
    kind = data["kind"]
    if kind not in KINDS:
        known = ", ".join(sorted(KINDS))
        if not isinstance(kind, str):
            raise SpecError(f"spec dict kind={kind!r}: expected one of {sorted(KINDS)}")
        raise SpecError(
            f"spec dict kind={kind!r} is not registered: import the module that defines its "
            f"spec class before loading (known kinds: {known})"
        )
    cls = KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"kind"})
    if unknown:
        raise SpecError(f"{cls.__name__}: unknown fields {unknown}")
    try:
        return cls(**{k: _from_plain(v) for k, v in data.items() if k != "kind"})
    except TypeError as err:  # a required field missing, say
        raise SpecError(f"{cls.__name__}: {err}") from None


def from_json(text: str) -> Spec:
    """Rebuild a spec from :meth:`Spec.to_json` text.

    Example:
        >>> from aimv2.specs import NormSpec
        >>> from_json(NormSpec(width=8).to_json()) == NormSpec(width=8)
        True
    """
    return from_dict(json.loads(text))


def walk(spec: Spec) -> Iterable[Spec]:
    """``spec`` and every spec nested in its fields, depth first.

    Example:
        >>> from aimv2.specs import BlockSpec, NormSpec, AttentionSpec, FeedForwardSpec
        >>> b = BlockSpec(NormSpec(8), AttentionSpec(8, 2), FeedForwardSpec(8, 16))
        >>> [s.kind for s in walk(b)]
        ['block', 'norm', 'attention', 'ffn']
    """
    yield spec
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, Spec):
                yield from walk(v)
