"""Command-line flags generated from config dataclasses: one source for names, types,
defaults and help.

Each field of a config dataclass (``PretrainConfig``, ``ProbeConfig``, the bench config)
becomes a flag named after it (``batch_size`` → ``--batch-size``), typed from its
annotation, defaulting to its default and documented by its ``metadata["help"]`` (and
``metadata["choices"]``); ``--help`` shows every default. A new field appears on the
command line without a second edit. Where a flag keeps an older name or meaning
(``--workers`` for ``num_workers``, ``--quiet`` for ``progress=False``…), a :class:`Flag`
says so, in one table next to the command that uses it.

Example:
    >>> import argparse
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Job:
    ...     steps: int = field(default=10, metadata={"help": "updates"})
    ...     progress: bool = True
    >>> parser = argparse.ArgumentParser()
    >>> add_config_flags(parser, Job, {"progress": Flag("--quiet", invert=True)})
    >>> config_from_args(Job, parser.parse_args(["--steps", "3", "--quiet"]), {"progress": Flag("--quiet", invert=True)})
    Job(steps=3, progress=False)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Flag", "add_config_flags", "config_from_args", "flag_name"]

_MISSING = dataclasses.MISSING
_UNSET: Any = type("Unset", (), {"__repr__": lambda self: "<unset>"})()  # Flag.shown not given


@dataclass(frozen=True)
class Flag:
    """How one config field appears on the command line, where that differs from the
    field's own name and type.

    ``name``: the flag (default ``--field-name``); ``invert``: a bool whose flag turns it
    off (``--quiet`` for ``progress``, ``--no-hflip`` for ``hflip``); ``type``: parses
    the flag's text; ``to_field``: turns the parsed value into the field's value, and
    ``shown``: the default the flag shows (with ``to_field``, the flag's own default);
    ``choices``, ``help``: override the field's metadata; ``repeat``: the flag may be
    given several times, collecting a tuple (not given: the field's default);
    ``skip``: not a flag at all.

    Example:
        >>> Flag("--workers").name
        '--workers'
    """

    name: str | None = None
    invert: bool = False
    type: Callable[[str], Any] | None = None
    to_field: Callable[[Any], Any] | None = None
    shown: Any = _UNSET
    choices: Sequence[Any] | None = None
    help: str | None = None
    repeat: bool = False
    skip: bool = False


def flag_name(field_name: str) -> str:
    """``--batch-size`` for ``batch_size``.

    Example:
        >>> flag_name("dist_timeout")
        '--dist-timeout'
    """
    return "--" + field_name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def _scalar(annotation: Any) -> tuple[Any, bool]:
    """(the scalar type of ``annotation``, whether it may be None)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return annotation, False


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    flags: Mapping[str, Flag] | None = None,
    exclude: Sequence[str] = (),
) -> None:
    """Add one flag per field of dataclass ``cls`` to ``parser`` (see the module docstring).

    A field without a default becomes a required flag.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class C:
        ...     out: str
        ...     lr: float | None = None
        >>> p = argparse.ArgumentParser(); add_config_flags(p, C)
        >>> p.parse_args(["--out", "o"]).lr is None
        True
    """
    flags = flags or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = flags.get(f.name, Flag())
        if f.name in exclude or flag.skip:
            continue
        default = _default(f)
        name = flag.name or flag_name(f.name)
        help_text = flag.help or f.metadata.get("help", "")
        choices = flag.choices or f.metadata.get("choices")
        kind, optional = _scalar(hints[f.name])
        shown = default if flag.shown is _UNSET else flag.shown
        if kind is bool and flag.type is None:
            parser.add_argument(
                name,
                dest=f.name,
                action="store_false" if flag.invert else "store_true",
                default=default,
                help=help_text,
            )
            continue
        parse = flag.type or (kind if kind in (int, float, str) else str)
        metavar = name.lstrip("-").upper().replace("-", "_")
        if default is _MISSING:
            parser.add_argument(
                name, dest=f.name, type=parse, required=True, metavar=metavar, help=help_text
            )
            continue
        note = "" if shown is None and optional else f" (default: {shown})"
        if flag.repeat:  # argparse appends to a default list: start from None instead
            parse = flag.type or (kind if kind in (int, float, str) else str)
            note = "" if shown is None else f" (default: {shown})"
            help_text += "; repeatable"
        parser.add_argument(
            name,
            dest=f.name,
            type=parse,
            action="append" if flag.repeat else "store",
            default=None if flag.repeat else shown,
            choices=list(choices) if choices else None,
            metavar=None if choices else metavar,
            help=(help_text + note).strip(),
        )


def config_from_args(
    cls: type,
    args: argparse.Namespace,
    flags: Mapping[str, Flag] | None = None,
    **fixed: Any,
) -> Any:
    """An instance of ``cls`` from parsed ``args`` (fields in ``fixed`` given directly).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class C:
        ...     scale: tuple[float, float] = (0.4, 1.0)
        >>> fl = {"scale": Flag("--scale-min", type=float, to_field=lambda v: (v, 1.0), shown=0.4)}
        >>> p = argparse.ArgumentParser(); add_config_flags(p, C, fl)
        >>> config_from_args(C, p.parse_args(["--scale-min", "0.6"]), fl)
        C(scale=(0.6, 1.0))
    """
    flags = flags or {}
    values = dict(fixed)
    for f in dataclasses.fields(cls):
        if f.name in values or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if flags.get(f.name, Flag()).repeat:
            if value is None:
                continue  # not given: the field's default
            value = tuple(value)
        convert = flags.get(f.name, Flag()).to_field
        values[f.name] = convert(value) if convert is not None else value
    return cls(**values)
