"""The two errors of an SPMamba import: CheckpointError (exit 1) and its usage-error kind ConfigError (exit 2)."""

from __future__ import annotations

from ..errors import FailedError, UsageError

class CheckpointError(FailedError, ValueError):
    """The config or checkpoint cannot be imported; str() names the file and the problem in one line."""


class ConfigError(CheckpointError, UsageError):
    """conf.yml cannot be read or does not describe an SPMamba that can be built: a bad argument (exit 2), like a
    bad option value."""

    exit_code = UsageError.exit_code  # CheckpointError's FailedError comes first in the MRO: say it here
