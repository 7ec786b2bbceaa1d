"""The end of a `separate` or `batch` run: one line per failed input, the table on a terminal, the JSON summary
on stdout, and the exit code."""

from __future__ import annotations

import json
import sys
import traceback

import typer

from .. import __version__
from ..errors import EXIT_FAILED, EXIT_OK
from .output import _error, _json_default


def _summary_table(console, results, title: str) -> None:
    from rich.table import Table

    t = Table(title=title)
    for col in ("input", "status", "outputs", "loudness (LUFS)", "flags", "RTF"):
        t.add_column(col)
    for r in results:
        louds = ", ".join("-" if o.loudness_lufs is None else f"{o.loudness_lufs:.1f}" for o in r.outputs
                          if r.status == "ok")
        t.add_row(r.input, r.status if r.status != "error" else "[red]error[/red]",
                  str(sum(1 for o in r.outputs if o.path)), louds, ", ".join(r.flags) or (r.error or ""),
                  "-" if r.rtf is None else f"{r.rtf:.3f}")
    console.print(t)


def _report(r, debug: bool) -> None:
    """A failed input's one line (and, with --debug, the traceback of an unexpected exception)."""
    if debug and r.exception is not None:
        traceback.print_exception(r.exception, file=sys.stderr)
    _error(r.error or f"{r.input}: failed")


def _emit(results, sep, as_json: bool, console, title: str, extra: dict | None = None,
          debug: bool = False, reported: bool = False) -> int:
    """The summary table (terminal) or JSON (stdout); each failed input's line unless `reported` already.
    Returns the exit code."""
    for r in results:
        if r.status == "error" and not reported:
            _report(r, debug)
    counts = {s: sum(1 for r in results if r.status == s) for s in ("ok", "error", "skipped")}
    if console is not None and results:
        _summary_table(console, results, title)
    if as_json:
        m = sep.model
        doc = {"sepcli": __version__,
               "model": {"name": m.name, "arch": m.arch, "sample_rate": m.sample_rate, "n_src": m.n_src},
               "runtime": sep.runtime_info(),
               "options": {k: v for k, v in vars(sep.options).items()},
               "results": [r.to_dict() for r in results],
               "summary": {"ok": counts["ok"], "failed": counts["error"], "skipped": counts["skipped"]}}
        if extra:
            doc.update(extra)
        typer.echo(json.dumps(doc, indent=2, default=_json_default))
    return EXIT_FAILED if counts["error"] else EXIT_OK
