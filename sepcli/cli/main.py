"""The Typer apps (`sepcli` and its `models` group), the --version callback and run(), the console entry point.

The commands register themselves on these apps in the modules that define them (sepcli/cli/__init__.py
imports them in the order `sepcli --help` lists them)."""

from __future__ import annotations

import sys

import typer

from .. import __version__
from ..errors import EXIT_FAILED, EXIT_OK
from .coercion import SepcliTyper
from .output import _error, _one_line


EXIT_HELP = ("Exit codes: 0 = every input done (or skipped as already done); 1 = at least one input failed "
             "(or the model could not be loaded, or the output folder cannot be written); 2 = usage error (bad "
             "option, unknown model); 130 = interrupted (Ctrl-C), 143 = terminated (SIGTERM): finished outputs "
             "are kept, nothing partial is left.")

app = SepcliTyper(  # plain option values converted without pydantic (coercion.py)
    name="sepcli",
    help="Split recordings of overlapping talkers into one file per speaker (S4M / SPMamba models).\n\n"
    + EXIT_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = SepcliTyper(help="List models, show a model card, import official SPMamba releases, choose your "
                         "default model, remove your models.",
                         invoke_without_command=True, add_completion=False)
app.add_typer(models_app, name="models")


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"sepcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """sepcli: one file per speaker from a recording of overlapping talkers."""


def console_main() -> None:
    """The console entry point (the `sepcli` script, `python -m sepcli`): run(), and at its end the process leaves
    without the C++ libraries' teardown where that is safe (process_exit.py)."""
    from . import process_exit

    run(leave=process_exit.leave)


def run(leave=sys.exit) -> None:
    """The command line: the app, with the option parser's errors (a bad value, an unknown option, a missing
    argument) as one `sepcli: error:` line and exit code 2, not Typer's boxed panel; the command's exit code goes
    to `leave` (sys.exit: SystemExit, for a program calling run())."""
    from ..runtime import early
    from . import startup_gc

    early.record()  # the idle-CPU measurement's first sample, before torch is imported (runtime/early.py)
    startup_gc.own_process()  # the collector kept off the start-up's imports and model (startup_gc.py)
    try:
        code = app(prog_name="sepcli", standalone_mode=False)
    except Exception as exc:
        if type(exc).__name__ == "Abort":  # Typer's wrap of an EOFError no command handled (a Ctrl-C is exit 130)
            _error("aborted (end of input)" if isinstance(exc.__cause__, EOFError) else "aborted")
            sys.exit(EXIT_FAILED)
        message, exit_code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
        if message is None or exit_code is None:  # not the parser's (click's) exception
            raise
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `sepcli` alone: the help (Typer has printed it)
            if message().strip():
                typer.echo(message(), err=True)
        else:
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _error(_one_line(message()) + hint)
        sys.exit(exit_code)
    leave(code if isinstance(code, int) else EXIT_OK)
