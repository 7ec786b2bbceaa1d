"""The user's choices for a separation (SeparationOptions), checked before any work, and the output names they
give: the name template, the paths it makes (never outside the output folder) and the output folder itself.
Kept apart from the streaming core so that the CLI can check options and folders without loading a model."""

from __future__ import annotations

import errno
import math
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .. import errors
from ..audio.io import MAX_RATE, MIN_RATE, OUTPUT_FORMATS, AudioError, check_output_format, os_problem
from ..runtime.device import PRECISIONS

if TYPE_CHECKING:
    from .separator import Separator

TEMPLATE_FIELDS = ("stem", "k", "ext")


class UsageError(errors.UsageError, ValueError):
    """An invalid option value (exit code 2, carried by sepcli.errors.UsageError)."""


MAX_SHIFTS = 16
MAX_SEGMENT_S = 86400.0  # --segment above a day is a typo, and far beyond it the sample count overflows
SHIFT_STEP_S = 0.0005  # --shifts: the k-th pass delays the input by k * 0.5 ms (8 samples at 16 kHz)


@dataclass
class SeparationOptions:
    """Every choice of `sepcli separate` / `batch` (see the CLI's --help for their meaning)."""

    segment: float | None = None  # seconds; None = the model's default; 0 = the whole input in one pass
    overlap: float | None = None  # fraction of a segment (0-0.5); None = the model's default
    batch_size: int = 1
    shifts: int = 1  # passes with the input delayed by 0, 0.5, 1, ... ms, aligned and averaged (Separator._forward)
    channel: int | None = None  # 1-based input channel; None = downmix to mono
    sample_rate: str | int = "input"  # "input" | "model" | Hz
    format: str = "wav"
    subtype: str | None = None
    name: str = "{stem}_spk{k}.{ext}"
    loudness: str | float = "match"  # "match" | "off" (one segment: the network's own samples) | target LUFS
    drop_silent: bool = False
    silent_lu: float = 30.0  # an output this many LU below the loudest one is flagged silent
    overwrite: bool = False
    device: str = "auto"
    threads: int | None = None
    precision: str = "auto"  # "auto" | "fp32" | "bf16": the model's autocast dtype (runtime.device.resolve_precision)

    def validated(self) -> SeparationOptions:
        """A normalised copy; raises UsageError naming the option."""
        o = replace(self)
        if o.segment is not None and (not math.isfinite(o.segment) or not 0 <= o.segment <= MAX_SEGMENT_S):
            raise UsageError(f"--segment must be between 0 and {MAX_SEGMENT_S:g} seconds, got {o.segment}")
        if o.overlap is not None and not (0 <= o.overlap <= 0.5):
            raise UsageError(f"--overlap must be between 0 and 0.5, got {o.overlap}")
        if o.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {o.batch_size}")
        if not 1 <= o.shifts <= MAX_SHIFTS:
            raise UsageError(f"--shifts must be between 1 and {MAX_SHIFTS}, got {o.shifts}")
        if o.channel is not None and o.channel < 1:
            raise UsageError(f"--channel counts from 1, got {o.channel}")
        sr = o.sample_rate
        if isinstance(sr, str) and sr not in ("input", "model"):
            try:
                sr = int(sr)
            except ValueError:
                raise UsageError(f"--sample-rate must be input, model or a rate in Hz, got {sr!r}") from None
        if isinstance(sr, int) and not (MIN_RATE <= sr <= MAX_RATE):
            raise UsageError(f"--sample-rate must be between {MIN_RATE} and {MAX_RATE} Hz, got {sr}")
        o.sample_rate = sr
        o.format = o.format.lower().lstrip(".")
        if o.format not in OUTPUT_FORMATS:
            raise UsageError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {o.format!r}")
        try:
            # a fixed --sample-rate the format cannot store is an option error, not every input's (16 kHz: any)
            o.subtype = check_output_format(o.format, o.subtype, sr if isinstance(sr, int) else 16000)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        lo = o.loudness
        if isinstance(lo, str) and lo.lower() in ("match", "off"):
            o.loudness = lo.lower()
        else:
            try:
                lo = float(lo)
            except (TypeError, ValueError):
                raise UsageError(f"--loudness must be match, off or a LUFS target such as -23, got {lo!r}") from None
            if not (-70 <= lo <= 0):
                raise UsageError(f"--loudness target must be between -70 and 0 LUFS, got {lo}")
            o.loudness = lo
        o.precision = str(o.precision).lower()
        if o.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {o.precision!r}")
        check_template(o.name)
        return o


def check_template(template: str) -> None:
    """A name template must use {k} and only {stem}, {k}, {ext}, and produce a relative path inside the
    output folder."""
    import string

    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise UsageError(f"--name {template!r}: {exc}") from None
    unknown = fields - set(TEMPLATE_FIELDS)
    if unknown:
        raise UsageError(f"--name {template!r}: unknown field(s) {', '.join(sorted(unknown))} "
                         f"(use {{stem}}, {{k}}, {{ext}})")
    if "k" not in fields:
        raise UsageError(f"--name {template!r} must contain {{k}} (the speaker number), or outputs collide")
    try:
        name = template.format(stem="x", k=1, ext="wav")
    except (ValueError, IndexError, KeyError) as exc:
        raise UsageError(f"--name {template!r}: {exc}") from None
    if template.startswith("~"):
        raise UsageError(f"--name {template!r} must stay inside the output folder ('~' is not expanded)")
    safe_relative(name, template)


def check_distinct_outputs(sep: Separator, planned: list[tuple[str, str, Path]]) -> None:
    """UsageError, before any work, when two inputs ((input, stem, output folder) each) would write the same
    output file: a --name without {stem}, for instance, names every input's speaker 1 alike. An input whose
    own names are bad (its stem '..', too long) fails alone in its turn; when the template is bad for a plain
    stem and for every input too, the run is refused with the first input's problem."""
    owner: dict[str, str] = {}
    problems = []
    for inp, stem, folder in planned:
        try:
            paths = sep.planned_outputs(stem, folder)
        except UsageError as exc:
            problems.append(exc)
            continue
        for p in paths:
            key = os.path.normcase(os.path.abspath(p))
            if owner.setdefault(key, inp) != inp:
                raise UsageError(f"{owner[key]} and {inp} would both write {p} (put {{stem}} in --name)")
    if planned and len(problems) == len(planned):
        try:
            sep.planned_outputs("x", planned[0][2])
        except UsageError:
            first = str(problems[0])
            raise UsageError(first if first.startswith("--name") else
                             f"--name {sep.options.name!r} fits no input: {first}") from None


def safe_relative(name: str, what: str) -> Path:
    """`name` as a relative path that cannot leave the output folder (no absolute path, no '..' part, no
    empty name). '~' is not expanded anywhere, so a file name such as "~draft" is an ordinary name; only a
    template starting with '~' is refused (check_template), since its author expects a home folder."""
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or "\0" in name:
        raise UsageError(f"output name {what!r} must stay inside the output folder (no absolute paths or '..')")
    return p


def output_paths(template: str, stem: str, ext: str, n_src: int, folder: Path) -> list[Path]:
    """The n_src output paths for `stem`; UsageError if one would leave `folder` or has a file name the
    file system cannot hold (over 255 bytes)."""
    out = []
    for k in range(1, n_src + 1):
        name = template.format(stem=stem, k=k, ext=ext)
        rel = safe_relative(name, name)
        if any(len(os.fsencode(part)) > 255 for part in rel.parts):
            raise UsageError(f"output name {name!r} is longer than 255 bytes")
        out.append(folder / rel)
    if len(set(out)) != len(out):
        raise UsageError(f"--name {template!r} gives the same file name to several speakers")
    return out


def make_output_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` (and parents) if missing; AudioError naming it when that is impossible (a file in the
    way, permission denied, read-only file system)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "a file is in the way" if exc.errno in (errno.EEXIST, errno.ENOTDIR) else os_problem(exc)
        raise AudioError(folder, f"cannot create the output folder ({why})") from None
    return folder


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and check that files can be created in it (a probe file, removed at once).
    AudioError naming the folder otherwise. Used by the CLI before any work, so an unwritable output folder is
    one message rather than one per input."""
    folder = make_output_folder(folder)
    probe = folder / f".sepcli-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise AudioError(folder, f"cannot write in the output folder ({os_problem(exc)})") from None
    return folder

