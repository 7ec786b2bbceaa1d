"""The `sepcli` command line: options -> SeparationOptions -> Separator -> results on screen.

No audio math here: everything a library user would need lives in sepcli.separate and sepcli.runtime.
Progress bars and tables go to stderr (only when stderr is a terminal and --quiet is not given); --json prints
a machine-readable summary on stdout. Errors are one line naming the file and the problem (--debug shows the
traceback).

Exit codes: 0 all inputs done (or skipped as already done), 1 at least one input failed (or the model could not
be loaded, or the output folder cannot be written), 2 usage error (bad option, unknown model name, missing
argument, -o naming a file, batch output folder equal to the input folder), 130 interrupted by SIGINT (Ctrl-C),
143 terminated by SIGTERM. An interrupted run keeps every finished output and leaves no partial or temporary
file; rerunning `batch` completes the rest.

Modules: main (the Typer apps, run() the command line, console_main() the entry point), coercion (option values
converted without pydantic), process_exit (the end of the process), output (one-line errors, console, progress),
interrupts (Ctrl-C / SIGTERM), options (the options several commands share), summary (the end of a separate/batch
run), and one module per command or group: separate (separate, batch), models (list, info), models_store
(import-spmamba, remove, default, pull), bench, train, evaluate (eval). Commands are thin: the work is done by
sepcli.separate, sepcli.runtime, sepcli.train and sepcli.evaluate.
"""

from __future__ import annotations

from .interrupts import Interrupted, _interrupt_exit, _interruptible
from .main import app, console_main, models_app, run
from .output import _error, _fail, _one_line

# Each module registers its commands on `app` when imported: this order is the order `sepcli --help` lists them.
from . import separate, models, models_store, bench, train, evaluate

__all__ = ["app", "console_main", "models_app", "run", "Interrupted", "_interruptible", "_interrupt_exit", "_error",
           "_fail", "_one_line", "separate", "models", "models_store", "bench", "train", "evaluate"]
