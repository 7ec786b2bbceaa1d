"""What a command writes for the user on stderr: one-line errors (the one place an exception becomes the
command's exit), the rich console on a terminal, the progress bar; and the JSON encoder's fallback."""

from __future__ import annotations

import math
import os
import re
import sys
import traceback
import unicodedata
from pathlib import Path

import typer

from ..errors import exit_code_of


def _stderr_console(quiet: bool):
    """A rich console on stderr when it is a terminal and not --quiet, else None (no decoration)."""
    if quiet or not sys.stderr.isatty():
        return None
    from rich.console import Console

    return Console(stderr=True)


_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")  # embeddings, overrides, isolates


def _error(msg: str) -> None:
    """One line on stderr: a newline or other control character, a line or paragraph separator, or a bidi
    override (in a file name) is written escaped; other characters, Unicode spaces and joiners included, are
    written as they are, so the name shown is the name."""
    line = "".join(repr(ch)[1:-1] if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in _BIDI else ch
                   for ch in msg)  # Cs: a lone surrogate, an undecodable byte of a file name
    typer.echo(f"sepcli: error: {line}", err=True)


def _one_line(text: str) -> str:
    """The option parser's message on one line: runs of ASCII whitespace (its wrapped lines) become one space; a
    no-break or other Unicode space, which may be part of a value, stays. (Not errors.one_line, which folds every
    whitespace: the parser quotes the user's value, and the name shown must be the name.)"""
    return re.sub(r"[ \t\r\n\f\v]+", " ", text).strip(" ")


def _fail(exc: BaseException, debug: bool, code: int | None = None) -> typer.Exit:
    """The one place an error becomes the command's end: its one-line message (and with --debug its traceback)
    on stderr, and the exit code it carries (errors.SepcliError.exit_code; 1 for any other exception). `code`
    is given only where a command means otherwise: the option checks of the pipeline (its UsageError, exit 2,
    is not on the hierarchy yet), or a context-specific code (see models default, train, eval)."""
    if code is None:
        code = exit_code_of(exc)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    _error(str(exc).strip("\n") or type(exc).__name__)  # _error escapes the rest: a file name is shown as it is
    return typer.Exit(code)


class _progress:
    """Context manager giving a progress callback (a rich bar on a terminal, else a no-op)."""

    def __init__(self, console, label: str):
        self.console, self.label = console, label
        self._p = None

    def __enter__(self):
        if self.console is None:
            return None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                           TimeElapsedColumn(), console=self.console, transient=True)
        self._p.start()
        task = self._p.add_task(os.path.basename(self.label), total=1.0)
        return lambda f: self._p.update(task, completed=f)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.stop()


def _json_default(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return str(v)
