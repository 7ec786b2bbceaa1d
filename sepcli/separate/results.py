"""What separating one input reports: a FileResult with one OutputInfo per speaker (the CLI prints them, the
batch manifest and --json serialise them), and the model-time counter of one run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..audio.io import AudioError, AudioInput


@dataclass
class OutputInfo:
    speaker: int
    path: str | None
    sample_rate: int
    frames: int
    duration: float
    loudness_lufs: float | None
    peak_dbfs: float | None
    gain_db: float | None  # None for the outputs of a skipped input (measured when they were written)
    flags: list[str] = field(default_factory=list)
    written: bool = True


@dataclass
class FileResult:
    input: str
    status: str  # ok | error | skipped
    outputs: list[OutputInfo] = field(default_factory=list)
    error: str | None = None
    flags: list[str] = field(default_factory=list)
    input_rate: int | None = None
    input_channels: int | None = None
    duration: float | None = None
    timings: dict = field(default_factory=dict)
    rtf: float | None = None

    exception = None  # the unexpected exception behind an error (class attribute default; not serialised)

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _existing_output(speaker: int, path: Path) -> OutputInfo:
    """A finished output a resumed batch skips: its rate and length as the file has them; its loudness, peak and
    gain were measured when it was written and are not known now (None). A file damaged since it was written
    (it does not open, or is a WAV cut short of the length its header declares) has 0 frames."""
    try:
        with AudioInput(path) as f:
            rate, frames = f.rate, (f.frames if f.declared_frames == f.frames else 0)
    except AudioError:  # damaged since it was written: say what is known, the path
        rate, frames = 0, 0
    return OutputInfo(speaker, str(path), rate, frames, frames / rate if rate else 0.0, None, None, None)


def _dropped_output(speaker: int) -> OutputInfo:
    """A speaker a finished --drop-silent run did not write (outputs are committed all or none, so a missing one
    of a finished input was silent)."""
    return OutputInfo(speaker, None, 0, 0, 0.0, None, None, None, flags=["silent"], written=False)


class _Timer:
    def __init__(self):
        self.model = 0.0
        self.model_calls = 0

