"""The error hierarchy (sepcli/errors.py): each error carries the exit code the CLI documents for it, the classes
keep the built-in bases code catches them by, and one_line folds a message the way the removed copies did."""

import pytest

from sepcli import errors
from sepcli.audio.io import AudioError
from sepcli.evaluate import NothingScored
from sepcli.kernels import ScanBackendError
from sepcli.runtime import loader, registry
from sepcli.runtime.archive import ArchiveError
from sepcli.runtime.catalogue import CatalogueError
from sepcli.runtime.download import DiskFull, DownloadError
from sepcli.runtime.pull import PullError
from sepcli.runtime.spmamba_import import CheckpointError, ConfigError
from sepcli.runtime.store import SettingsError
from sepcli.separate import Busy, Cancelled
from sepcli.train.config import TrainDiverged, TrainError
from sepcli.train.data import DataError


@pytest.mark.parametrize("exc, code, builtin", [
    (AudioError("a.wav", "not audio"), 1, Exception),
    (loader.ModelError("m: bad weights"), 1, Exception),
    (loader.UnknownModel("unknown model 'x'"), 2, LookupError),
    (registry.UnknownName("unknown model 'x'", "x"), 2, LookupError),
    (CheckpointError("c.pth: not a checkpoint"), 1, ValueError),
    (ConfigError("conf.yml: bad"), 2, ValueError),  # a bad conf.yml is a bad argument, unlike its parent
    (ArchiveError("a.zip: damaged"), 1, ValueError),
    (CatalogueError("catalogue: bad"), 1, ValueError),
    (DownloadError("u: failed"), 1, Exception),
    (DiskFull("disk full"), 1, Exception),
    (PullError("failed"), 1, Exception),
    (PullError("unknown name", 2), 2, Exception),
    (SettingsError("settings.json: unreadable"), 1, OSError),
    (TrainError("--lr must be positive"), 2, RuntimeError),
    (TrainDiverged("loss is NaN"), 1, RuntimeError),  # a failure of the run, unlike its parent
    (DataError("d: not a LibriMix folder"), 2, ValueError),
    (NothingScored([{"file": "m.wav", "error": "m.wav: unreadable"}]), 1, ValueError),
    (ScanBackendError("no backend"), 1, RuntimeError),
    (Busy("another sepcli process is writing its outputs"), 1, Exception),
    (Cancelled("cancelled"), 1, Exception),
])
def test_each_error_carries_its_exit_code_and_keeps_its_builtin_base(exc, code, builtin):
    assert isinstance(exc, errors.SepcliError) and isinstance(exc, builtin)
    assert errors.exit_code_of(exc) == code
    if code == 2 and not isinstance(exc, PullError):  # (a pull's code is per instance: an unknown name is 2)
        assert isinstance(exc, errors.UsageError)


def test_one_unknown_model_class():
    assert registry.ModelNotFound is loader.UnknownModel is errors.UnknownModel
    assert issubclass(errors.UnknownModel, loader.ModelError)  # `except ModelError` still catches it


def test_exit_code_of_other_exceptions_is_the_default():
    assert errors.exit_code_of(ValueError("x")) == 1
    assert errors.exit_code_of(FileNotFoundError("x"), default=2) == 2


@pytest.mark.parametrize("given, limit, expected", [
    (ValueError("a.wav:\n  bad\tchunk \u00a0size"), None, "a.wav: bad chunk size"),  # every whitespace run folds
    (ValueError("  x  "), None, "x"),
    (ValueError("abcdef"), 3, "abc"),
    (ValueError(""), None, "ValueError"),  # an exception without a message: its class name
    (ValueError("\n"), 10, "ValueError"),
    ("", 10, ""),  # a string stays a string: no class name to give
    ("one\ntwo", None, "one two"),
])
def test_one_line(given, limit, expected):
    assert errors.one_line(given, limit) == expected
    if isinstance(given, BaseException):  # the copies it replaced (loader, download, audio.io)
        folded = " ".join(str(given).split())
        assert expected == ((folded[:limit] if limit is not None else folded) or type(given).__name__)
