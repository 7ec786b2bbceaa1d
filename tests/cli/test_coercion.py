"""sepcli.cli.coercion: option values of the plain kinds converted without pydantic give exactly what Typer's own
converter (its pydantic TypeAdapter) gives, the value and its type, or hand the value to it (its error message)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer import BadParameter

from sepcli.cli import app
from sepcli.cli import coercion
from sepcli.cli.coercion import PlainValue, SepcliCommand, SepcliGroup, plain_kind, plain_value

pytestmark = pytest.mark.skipif(PlainValue is None, reason="this Typer converts without pydantic")

VALUES = {
    "int": ["5", "007", "+5", "-5", "-0", " 5", "5 ", "1_000", "5.0", "1e3", "", "0x10", "\u0663", "9" * 19, 5, 0, -3,
            True, 5.0, 5.5],
    "float": ["1", "1.5", "-0", "-0.0", ".5", "5.", "0.1", "1e3", "inf", "nan", "1_0", " 2.5", "", "abc", "\u0663",
              "1" * 40, "0." + "3" * 29, "1e400", 1, 1.5, -0.0, True],
    "str": ["abc", "", " x ", "a\udcff", "-", 5, b"bytes"],
    "list[str]": [("a", "b"), ["a"], ("a\udcff",), (), ("a", 5)],
    "bool": [True, False, "true", "1"],
}


def _params():
    """{kind: a parameter of sepcli separate (or the group's help option) of that kind}, with a context."""
    group = typer.main.get_command(app)
    cmd = group.commands["separate"]
    ctx = cmd.make_context("separate", ["in.wav", "-o", "out"])
    by_kind = {}
    for p in cmd.get_params(ctx):
        kind = plain_kind(p.type_descriptor)
        if kind is not None:
            by_kind.setdefault(kind, p)
    return by_kind, ctx


def _typer_converts(param, value, ctx):
    """Typer's own converter for this parameter, built as it builds it (pydantic): (value, type) or the error."""
    from typer._coercion import build_runtime_param

    try:
        out = build_runtime_param(param.type_descriptor).coerce(value, param=param, ctx=ctx)
    except BadParameter as exc:
        return ("error", exc.format_message())
    return (out, type(out))


def _plain_converts(param, value, ctx):
    conv = PlainValue(parameter_info=param.type_descriptor.parameter_info, annotation=param.type_descriptor.annotation,
                      kind=plain_kind(param.type_descriptor))
    try:
        out = conv.coerce(value, param=param, ctx=ctx)
    except BadParameter as exc:
        return ("error", exc.format_message())
    return (out, type(out))


def _same(a, b) -> bool:
    if isinstance(a[0], float) and isinstance(b[0], float) and math.isnan(a[0]):
        return math.isnan(b[0]) and a[1] is b[1]
    if isinstance(a[0], float) and isinstance(b[0], float):  # -0.0 == 0.0: the sign too
        return a == b and math.copysign(1, a[0]) == math.copysign(1, b[0])
    return a == b


def test_the_commands_parameters_are_of_the_plain_kinds():
    by_kind, _ = _params()
    assert set(by_kind) == {"str", "bool", "int", "float", "path", "list[str]"}


@pytest.mark.parametrize("kind", sorted(VALUES))
def test_plain_values_convert_as_typers_converter_does(kind):
    by_kind, ctx = _params()
    param = by_kind[kind]
    for value in VALUES[kind]:
        want, got = _typer_converts(param, value, ctx), _plain_converts(param, value, ctx)
        assert _same(want, got), (kind, value, want, got)


def test_paths_convert_as_typers_converter_does(tmp_path):
    by_kind, ctx = _params()
    param = by_kind["path"]
    (tmp_path / "file").write_text("x")
    (tmp_path / "unreadable").mkdir()
    (tmp_path / "unreadable").chmod(0)  # (root reads it anyway: then both accept it)
    try:
        for value in ["out", "", ".", str(tmp_path), str(tmp_path / "file"), str(tmp_path / "missing" / "x"),
                      str(tmp_path / "unreadable"), "a\udcff", Path("p")]:
            want, got = _typer_converts(param, value, ctx), _plain_converts(param, value, ctx)
            assert want == got, (value, want, got)
    finally:
        (tmp_path / "unreadable").chmod(0o700)


def test_unreadable_existing_paths_go_to_typers_converter(tmp_path, monkeypatch):
    """(As root every path reads: os.access says no here for one path, in both converters.)"""
    import os

    by_kind, ctx = _params()
    param = by_kind["path"]
    locked = tmp_path / "locked"
    locked.write_text("x")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: str(p) != str(locked) and real(p, mode, *a, **k))
    assert plain_value("path", str(locked)) is coercion._MISS
    want, got = _typer_converts(param, str(locked), ctx), _plain_converts(param, str(locked), ctx)
    assert want == got and want[0] == "error" and "locked" in want[1], (want, got)


def test_the_pinned_typer_is_in_the_tested_range():
    """A Typer outside TESTED_TYPER keeps its own conversion (slower, never different); bumping the pin past it
    must come with a look at coercion.py and this file."""
    import re

    pin = re.search(r"^typer==([0-9.]+)$", (Path(__file__).parents[2] / "constraints.txt").read_text(), re.M)
    assert pin and pin.group(1) == typer.__version__
    assert coercion._tested_typer() and coercion.PlainValue is not None


def test_parameters_with_more_checks_keep_typers_converter():
    """min/max (sepcli bench --seconds) and anything else not plain: no PlainValue."""
    group = typer.main.get_command(app)
    bench = group.commands["bench"]
    seconds = next(p for p in bench.params if p.name == "seconds")
    assert plain_kind(seconds.type_descriptor) is None
    assert isinstance(group, SepcliGroup) and isinstance(bench, SepcliCommand)
    assert isinstance(group.commands["models"], SepcliGroup)
    assert isinstance(group.commands["models"].commands["info"], SepcliCommand)


def test_a_separate_run_with_plain_values_does_not_import_pydantic(tmp_path):
    """The parser of `sepcli separate` with the defaults and plain values converts them all itself (a missing input:
    parsed, the model loaded, then the input fails)."""
    code = f"""
import sys
sys.argv = ["sepcli", "separate", "missing.wav", "-o", {str(tmp_path / 'out')!r}, "--segment", "2.5", "--threads",
            "1", "--loudness", "-23", "-q"]
from sepcli.cli import run
try:
    run()
except SystemExit as exc:
    print("exit", exc.code, "pydantic" in sys.modules)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.stdout.strip().splitlines()[-1] == "exit 1 False", (p.stdout, p.stderr)
    assert "missing.wav" in p.stderr
