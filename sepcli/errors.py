"""sepcli's error hierarchy: every error sepcli raises on purpose derives from SepcliError and carries the exit
code the CLI gives it, so the CLI maps an error to its exit code by asking the error (`exit_code_of`), not through
a chain of `except` clauses whose order matters.

    SepcliError            exit 1 unless a subclass says otherwise
    ├── UsageError         exit 2: a bad argument (option value, name, config file) the user can correct
    └── FailedError        exit 1: valid arguments, but the work could not be done (a file, the network, a model)
        ├── ModelError     a model folder or checkpoint that cannot be used
        │   └── UnknownModel   exit 2 (also a UsageError and a LookupError): a name or path that names no model
        └── per-module failures: AudioError, DownloadError, Busy (outputs claimed by another process), Cancelled
            (an interrupted batch), ...

Module-specific classes (AudioError, CheckpointError, DownloadError, ...) stay where they are raised and derive
from one of these; classes that code or tests catch as ValueError, OSError, RuntimeError or LookupError keep that
base as well.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class SepcliError(Exception):
    """Base of sepcli's errors; `exit_code` is the CLI's exit code for it, str() the one-line message."""

    exit_code = EXIT_FAILED


class UsageError(SepcliError):
    """A bad argument: an option value, a model name, a config file the user gave (exit 2)."""

    exit_code = EXIT_USAGE


class FailedError(SepcliError):
    """Valid arguments, but the work failed: an unreadable file, the network, a model that cannot be loaded
    (exit 1)."""

    exit_code = EXIT_FAILED


class ModelError(FailedError):
    """A model folder or checkpoint that cannot be used; str() names the file and the problem."""


class UnknownModel(ModelError, UsageError, LookupError):
    """The name or path given names no model (a usage error, unlike a model that exists but cannot be loaded).
    The one "unknown model" class: the registry raises it (as ModelNotFound), the loader passes it on."""

    exit_code = EXIT_USAGE  # ModelError's FailedError comes first in the MRO: say it here


def exit_code_of(exc: BaseException, default: int = EXIT_FAILED) -> int:
    """The exit code for an error: its own for a SepcliError, `default` for anything else."""
    return exc.exit_code if isinstance(exc, SepcliError) else default


def one_line(exc: BaseException | str, limit: int | None = None) -> str:
    """A message on one line: every run of whitespace (newlines, tabs, Unicode spaces) becomes one space, cut to
    `limit` characters; an exception with an empty message gives its class name."""
    text = " ".join(str(exc).split())
    if limit is not None:
        text = text[:limit]
    if not text and isinstance(exc, BaseException):
        return type(exc).__name__
    return text
