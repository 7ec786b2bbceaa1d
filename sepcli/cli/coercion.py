"""Command-line values of the plain kinds (str, bool, int, float, Path, list of str) converted without pydantic.

Why: Typer (0.2x) converts every parameter's value, the defaults included, through a pydantic TypeAdapter built on
the parameter's first use. Importing pydantic and building the adapters of `sepcli separate`'s 21 options took
about 0.12 s of every call (AVX2 EPYC, 2 vCPUs), for values that are almost always already of their type (the
defaults) or a plain string of digits or a file name.

How: before a command parses its arguments (SepcliCommand/SepcliGroup.parse_args), each parameter of a plain kind gets
`PlainValue` as its converter (Typer builds its own lazily, only when none is set). PlainValue returns a value
itself only where the result is certain to be the one Typer's adapter gives (same type and value); for anything
else (a float given to an int option, '1_000', ' 5', '0x10', an unreadable existing path, ...) it hands the
value to Typer's own converter, so its result and its error message are Typer's. tests/cli/test_coercion.py
checks PlainValue against Typer's converter on such values.

Parameters with anything Typer would check beyond the type (min/max, a parser, a Path's exists/writable/
resolve_path/dash options, choices, files) keep Typer's converter, and so does everything on a Typer without these
internals (older releases, which do not use pydantic): the class then does nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

# The Typer releases whose private converter interface (typer._coercion's RuntimeParam, a parameter's
# `_runtime_param` and `type_descriptor`) this module was written and tested against (constraints.txt pins
# 0.29.2; tests/cli/test_coercion.py fails when the pin leaves this range, so that a bump is looked at). Any other
# release keeps Typer's own conversion: slower to start, never different.
TESTED_TYPER = ((0, 29), (0, 30))  # [from, to)


def _tested_typer() -> bool:
    try:
        version = tuple(int(p) for p in typer.__version__.split(".")[:2])
    except (AttributeError, ValueError):  # pragma: no cover
        return False
    return TESTED_TYPER[0] <= version < TESTED_TYPER[1]


RuntimeParam = build_runtime_param = None
if _tested_typer():
    try:  # Typer's lazy converter (the releases that convert through pydantic)
        from typer._coercion import RuntimeParam, build_runtime_param
    except ImportError:  # pragma: no cover
        RuntimeParam = build_runtime_param = None

_INT = re.compile(r"-?[0-9]{1,18}")  # what int() and pydantic read alike (no spaces, '+', '_' or other digits)
_FLOAT = re.compile(r"-?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})")  # plain decimals: correctly rounded
# by both float() and pydantic's parser, so the same double
_MISS = object()


def _plain_path_info(info) -> bool:
    """A Path parameter with Typer's default checks only (which PlainValue replicates: a readable path, if it
    exists)."""
    return (not getattr(info, "exists", False) and getattr(info, "file_okay", True)
            and getattr(info, "dir_okay", True) and getattr(info, "readable", True)
            and not getattr(info, "writable", False) and not getattr(info, "resolve_path", False)
            and not getattr(info, "allow_dash", False) and getattr(info, "path_type", None) is None)


def plain_kind(descriptor) -> str | None:
    """'str', 'bool', 'int', 'float', 'path' or 'list[str]' for a parameter PlainValue may convert, else None."""
    info = descriptor.parameter_info
    if (descriptor.file_annotation is not None or getattr(info, "parser", None) is not None
            or getattr(info, "min", None) is not None or getattr(info, "max", None) is not None
            or getattr(info, "click_type", None) is not None):
        return None
    ann = descriptor.annotation
    if ann is str:
        return "str"
    if ann is bool:
        return "bool"
    if ann is int:
        return "int"
    if ann is float:
        return "float"
    if ann is Path:
        return "path" if _plain_path_info(info) else None
    if ann == list[str]:
        return "list[str]"
    return None


def plain_value(kind: str, value: Any) -> Any:
    """The value Typer's converter gives for `value`, or _MISS where that is not certain here."""
    t = type(value)
    if kind == "str":
        return value if t is str else _MISS
    if kind == "bool":  # (Typer itself skips a flag's bool; the help option's unset value is None)
        return value if t is bool else _MISS
    if kind == "int":
        if t is int:
            return value
        return int(value) if t is str and _INT.fullmatch(value) else _MISS
    if kind == "float":
        if t is float:
            return value
        return float(value) if t is str and _FLOAT.fullmatch(value) else _MISS
    if kind == "list[str]":
        return list(value) if t in (tuple, list) and all(type(v) is str for v in value) else _MISS
    if kind == "path":
        if t is not str:
            return _MISS
        path = Path(value)
        try:
            os.stat(path)
        except OSError:  # Typer's check: a path that does not exist is accepted as given
            return path
        return path if os.access(path, os.R_OK) else _MISS  # unreadable: Typer's error message
    return _MISS


if RuntimeParam is not None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class PlainValue(RuntimeParam):
        """Typer's runtime converter contract (None and multi-value checks in RuntimeParam.coerce); the value
        itself where plain_value is certain, else Typer's own converter."""

        kind: str = "str"

        def _coerce_value(self, value, param, ctx):
            out = plain_value(self.kind, value)
            if out is not _MISS:
                return out
            full = build_runtime_param(param.type_descriptor)
            return full._coerce_value(value, param=param, ctx=ctx)
else:  # pragma: no cover
    PlainValue = None


def give_plain_converters(params) -> None:
    """Set PlainValue as the converter of each plain parameter in `params` that has none yet."""
    if PlainValue is None:
        return
    for p in params:
        desc = getattr(p, "type_descriptor", None)
        if desc is None or getattr(p, "_runtime_param", _MISS) is not None:
            continue
        try:  # (an interface that moved under the same version range: Typer's own converter stays)
            kind = plain_kind(desc)
            if kind is not None:
                p._runtime_param = PlainValue(parameter_info=desc.parameter_info, annotation=desc.annotation,
                                              kind=kind)
        except (AttributeError, TypeError):  # pragma: no cover
            continue


class SepcliCommand(TyperCommand):
    """Typer's command; its plain parameters (the help option included) converted by PlainValue."""

    def parse_args(self, ctx, args):
        give_plain_converters(self.get_params(ctx))
        return super().parse_args(ctx, args)


class SepcliGroup(TyperGroup):
    """Typer's group; its plain parameters (--version, the help option) converted by PlainValue."""

    def parse_args(self, ctx, args):
        give_plain_converters(self.get_params(ctx))
        return super().parse_args(ctx, args)


class SepcliTyper(typer.Typer):
    """typer.Typer whose commands are SepcliCommands (and whose group is a SepcliGroup unless `cls` says)."""

    def __init__(self, *args, cls=None, **kwargs):
        super().__init__(*args, cls=cls or SepcliGroup, **kwargs)

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or SepcliCommand, **kwargs)
