"""Separator: audio in -> one stream per speaker out. The one path used by `separate`, `batch` and `eval`.

Data flow of one input (nothing holds the whole signal; see the README, "How it works"):
  blocks (soundfile) -> mono (mean, or one channel) -> soxr to the model's rate
  [first pass, only when the model wants a normalised input (not for raw outputs, see `off` below):
   streaming BS.1770 loudness -> input gain]
  -> SegmentStream (segments of `segment` s, `overlap` fraction) -> model, `batch_size` segments at a time
  -> Stitcher (speaker order aligned on the overlap, least-squares gain per speaker, crossfade summing to one)
  -> soxr back to the output rate (default: the input's rate and exactly the input's length)
  -> output loudness:  off   = written as produced (one pass); an input separated in one segment (--segment 0,
                               or not longer than one) is then the network's own output for the input's samples as
                               they are (no input normalisation, no stitcher gain), as the authors' code computes
                               it; with several segments the stitcher's gains stay (their scales must agree)
                       match = each speaker at its level in the mix (the stitcher makes the speakers add up to
                               the mixture); a raw float32 temporary stream is written first, and if a speaker
                               would clip a fixed-point file (pass -1 dBFS in a lossy one) all speakers are
                               lowered by one common gain (flag `scaled_to_avoid_clipping`);
                       LUFS  = each speaker normalised to that integrated loudness from the raw temporary
                               stream, the gain lowered if the peak would pass -1 dBFS (flag `peak_limited`)
  -> each speaker streamed to its file through a temporary file renamed when complete.

Reliability (see also audio/io.py):
- every problem with one input is a FileResult with status `error` and a one-line message naming the file;
  separate_file never raises for a per-file problem (only UsageError for bad options, and
  KeyboardInterrupt/SystemExit, after cleaning up);
- no partial output: outputs are written to temporary files, all finished before any is renamed, and if the
  run fails or is interrupted after some were renamed, those are removed again (all speakers or none); a
  process killed outright (SIGKILL, the OOM killer, power loss) cannot clean up, so its claim's lock file
  journals the temporary files and, during the renames, the outputs: the next run that claims the input removes
  what was left and separates it again (flag `recovered_interrupted_run`), or keeps the outputs if all were
  renamed;
- NaN/Inf input samples are replaced by 0 (flag `nonfinite_input_replaced`); a model that produces NaN/Inf is
  an error, never a file;
- concurrent processes: an input's outputs are claimed with an O_EXCL lock file `.sepcli-lock-<hash>` in the
  output folder (stale locks of dead processes on this host are taken over); a busy input is `skipped`
  (flag `busy`) in batch/resume mode, an error otherwise; outputs are never replaced without --overwrite,
  even by a race (AtomicWriter.commit);
- batch: inputs with the same stem in one folder (a.wav, a.flac) are disambiguated by using the full file
  name as the stem (a.wav_spk1.wav, a.flac_spk1.wav); an output folder equal to the input folder is refused;
  inputs are never written over (protect covers every input of the run, not just this shard).

`SeparationOptions` carries every user choice; `Separator(model, options)` loads the model once.
`model` is a zoo name / alias / folder path, a runtime.loader.LoadedModel, or any callable
[B, T] -> [B, n_src, T] with `sample_rate` and `n_src` attributes (optional `segment`, `overlap`,
`input_loudness`) - which is how tests inject a test double.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .audio.chunking import SegmentStream, Stitcher, align_order, segment_geometry
from .audio.io import (
    MAX_RATE,
    MIN_RATE,
    OUTPUT_FORMATS,
    ArrayInput,
    AtomicWriter,
    AudioError,
    AudioInput,
    LOSSY_FORMATS,
    FloatSpool,
    check_output_format,
    os_problem,
)
from .audio.loudness import PEAK_CEILING_DB, StreamingLoudness, db_to_gain, gain_to_db, target_gain
from .audio.resample import StreamResampler, expected_length
from .runtime.device import PRECISIONS, autocast, bf16_pays, configure, resolve_precision, select_device
from .runtime.loader import LoadedModel, ModelError, load_model

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc")
TEMPLATE_FIELDS = ("stem", "k", "ext")


class UsageError(ValueError):
    """An invalid option value (exit code 2 in the CLI)."""


class Cancelled(Exception):
    """Raised inside a file's processing when Separator.cancel() was called (an interrupted batch)."""


class Busy(Exception):
    """Another live sepcli process holds the claim on an input's outputs."""


MAX_SHIFTS = 16
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
        if o.segment is not None and (not math.isfinite(o.segment) or o.segment < 0):
            raise UsageError(f"--segment must be >= 0 seconds, got {o.segment}")
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_after_dead_holder(journal: dict, outs: list[Path]) -> bool:
    """Remove what a process killed while writing these outputs left (its claim's journal): its temporary
    files, and, if it died while renaming the outputs into place, the ones it had renamed, unless all were
    (all speakers or none). Only names of this input's outputs and sepcli temporary files in their folders are
    touched, whatever the journal says. True if anything was removed."""
    folders = {os.path.abspath(p.parent) for p in outs}
    planned = {os.path.abspath(p) for p in outs}
    temps = [Path(t) for t in journal.get("temps", []) if isinstance(t, str)
             and os.path.dirname(t) in folders and fnmatch.fnmatch(os.path.basename(t), ".sepcli-*.part")]
    committing = [Path(c) for c in journal.get("committing", []) if isinstance(c, str) and c in planned]
    # a temporary file that still exists was not renamed yet (commit moves it, or links it and then removes it)
    finished = all(c.exists() for c in committing) and not any(t.exists() for t in temps)
    removed = False
    for f in temps + ([] if finished else committing):
        try:
            f.unlink()
            removed = True
        except FileNotFoundError:
            pass
    return removed


class OutputClaim:
    """An O_EXCL lock file claiming one input's outputs for this process (removed by release()).

    The lock `.sepcli-lock-<hash of the first output path>` lives in the output folder and holds
    "<pid> <host>", then a line of JSON, the journal (`record`): the temporary files being written and, while
    the outputs are being renamed into place, their final names. A lock left by a process that no longer runs
    on this host (killed with SIGKILL, power loss) is stale and taken over: the new holder removes what its
    journal says the dead one left (`recovered` tells whether anything was); a live lock raises Busy naming the
    holder."""

    STALE_EMPTY_S = 30.0  # a lock without content (holder died between create and write) after this long

    @staticmethod
    def lock_path(outs: list[Path]) -> Path:
        first = outs[0]
        digest = hashlib.sha1(os.path.abspath(first).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return first.parent / f".sepcli-lock-{digest}"

    def __init__(self, outs: list[Path]):
        first = outs[0]
        self.path = self.lock_path(outs)
        self._held = False
        self._journal: dict = {}
        self.recovered = False  # files left by a dead holder were removed
        left: dict = {}  # the journal of a dead holder whose lock is taken over
        first.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, host, journal = self._read()
                if self._stale(pid, host):
                    left = journal
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                holder = f"pid {pid} on {host}" if pid is not None else "unknown holder"
                raise Busy(f"another sepcli process is writing its outputs ({holder}; lock file "
                           f"{self.path})") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            self._held = True
            self.recovered = _clean_after_dead_holder(left, outs)  # only once the claim is ours
            return
        raise Busy(f"could not claim the lock file {self.path}")

    def _read(self) -> tuple[int | None, str | None, dict]:
        """The lock's holder (pid, host; None if unreadable) and journal ({} if none or unreadable)."""
        try:
            lines = self.path.read_text().split("\n")
        except OSError:
            return None, None, {}
        try:
            pid, host = lines[0].split()[:2]
            holder = (int(pid), host)
        except ValueError:
            holder = (None, None)
        try:
            journal = json.loads(lines[1])
        except (ValueError, IndexError):
            journal = {}
        return *holder, journal if isinstance(journal, dict) else {}

    def record(self, **entries: list[str]) -> None:
        """Add to the journal (absolute paths) and rewrite the lock with it in one atomic rename."""
        self._journal.update(entries)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(f"{os.getpid()} {socket.gethostname()}\n{json.dumps(self._journal)}\n")
        os.replace(tmp, self.path)

    def _stale(self, pid: int | None, host: str | None) -> bool:
        if pid is None:
            try:
                return time.time() - self.path.stat().st_mtime > self.STALE_EMPTY_S
            except OSError:
                return True  # vanished meanwhile: retry
        return host == socket.gethostname() and not _pid_alive(pid)

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


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


class Separator:
    """Separate recordings with one loaded model. Thread-safe: several files may be processed at once
    (batch --jobs); model calls are serialised so one model runs at a time."""

    def __init__(self, model: str | os.PathLike | LoadedModel | object = "default",
                 options: SeparationOptions | None = None, **overrides):
        self.options = replace(options or SeparationOptions(), **overrides).validated()
        try:
            configure(self.options.threads)
            self.device = select_device(self.options.device)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if isinstance(model, (str, os.PathLike)):
            self.model = load_model(model, self.device)
        elif isinstance(model, LoadedModel):
            self.model = model
        else:
            if not callable(model) or not hasattr(model, "sample_rate") or not hasattr(model, "n_src"):
                raise ModelError("a model object must be callable [B, T] -> [B, n_src, T] and have "
                                 "sample_rate and n_src attributes")
            self.model = LoadedModel(network=model, sample_rate=int(model.sample_rate), n_src=int(model.n_src),
                                     segment=float(getattr(model, "segment", 4.0)),
                                     overlap=float(getattr(model, "overlap", 0.25)),
                                     input_loudness=getattr(model, "input_loudness", None),
                                     name=str(getattr(model, "name", type(model).__name__)))
        if isinstance(self.model.network, torch.nn.Module):
            self.model.network.eval().to(self.device)
        try:
            self.precision = resolve_precision(self.options.precision, self.device, bf16_pays(self.model.network),
                                               self.model.arch or self.model.name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.dtype = self.precision.dtype
        self._lock = threading.Lock()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Make files being processed in other threads stop at their next block (status `error`,
        "cancelled", nothing written). Cleared by reset_cancel()."""
        self._cancel.set()

    def reset_cancel(self) -> None:
        self._cancel.clear()

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled (the run was interrupted)")

    def runtime_info(self) -> dict:
        """Device, threads, inference dtype and the selective-scan backend that runs (for reports)."""
        if self.model.arch == "spmamba":
            from .kernels import backend_for

            backend = backend_for(torch.zeros(1, device=self.device))
        else:
            backend = "none (network has no selective scan)"
        dtype = "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")
        return {"device": str(self.device), "threads": torch.get_num_threads(), "dtype": dtype,
                "precision": self.precision.name, "precision_reason": self.precision.reason,
                "scan_backend": backend}

    # ------------------------------------------------------------------ core stream
    def _forward(self, x: np.ndarray, timer: _Timer) -> np.ndarray:
        """[B, T] float32 -> [B, n_src, T] float32 through the network; with --shifts N, the mean of N passes
        with the input delayed by k * SHIFT_STEP_S (k = 0..N-1), each pass's sources put in the first pass's
        order. A network with a strided encoder sees each delay on a different frame grid, so the passes' errors
        partly cancel (Demucs's "shift trick"; default model at step 46750: +0.10 dB SI-SNRi on validation at N = 4)."""
        y = self._net(x, timer)
        if self.options.shifts == 1:
            return y
        step = max(1, round(SHIFT_STEP_S * self.model.sample_rate))
        total = y.astype(np.float64)
        for k in range(1, self.options.shifts):
            d = k * step
            ys = self._net(np.pad(x, ((0, 0), (d, 0))), timer)[:, :, d:]
            for b in range(len(x)):
                total[b] += ys[b, list(align_order(y[b], ys[b]))]
        return (total / self.options.shifts).astype(np.float32)

    def _net(self, x: np.ndarray, timer: _Timer) -> np.ndarray:
        """One pass: [B, T] float32 -> [B, n_src, T] float32 (model calls serialised across threads)."""
        with self._lock:
            t0 = time.perf_counter()
            with torch.inference_mode(), autocast(self.device, self.dtype):
                y = self.model.network(torch.from_numpy(x).to(self.device))
            y = y.float().cpu().numpy()
            timer.model += time.perf_counter() - t0
            timer.model_calls += 1
        if y.shape != (x.shape[0], self.model.n_src, x.shape[1]):
            raise ModelError(f"model {self.model.name!r} returned shape {tuple(y.shape)} for input "
                             f"{tuple(x.shape)}; expected [B, {self.model.n_src}, T]")
        if not np.isfinite(y).all():
            raise ModelError(f"model {self.model.name!r} produced NaN/Inf values for this input; "
                             f"nothing written")
        return y

    def output_rate(self, input_rate: int) -> int:
        sr = self.options.sample_rate
        return input_rate if sr == "input" else self.model.sample_rate if sr == "model" else int(sr)

    def _stream(self, src, timer: _Timer, progress: Callable[[float], None] | None = None
                ) -> Iterator[np.ndarray]:
        """Yield separated blocks [n_src, k] at the output rate; exactly the expected length in total."""
        o, m = self.options, self.model
        msr, n_src = m.sample_rate, m.n_src
        seg = m.segment if o.segment is None else o.segment
        ov = m.overlap if o.overlap is None else o.overlap
        length, ov_len = segment_geometry(msr, seg, ov)
        # --loudness off and the whole input in one segment: the network's own output for the samples as given
        # (no input normalisation, no stitching gain), as the authors' code computes it
        raw = o.loudness == "off"
        in_gain = 1.0
        if m.input_loudness is not None and not (raw and length <= 0):  # first pass: the level it was trained on
            meter = StreamingLoudness(src.rate)
            for b in src.blocks():
                meter.update(b)
            lufs = meter.loudness()
            if math.isfinite(lufs):
                in_gain = float(np.clip(db_to_gain(m.input_loudness - lufs), 1e-3, 1e3))
        out_rate = self.output_rate(src.rate)
        limit = src.frames if o.sample_rate == "input" else None
        fwd = StreamResampler(src.rate, msr)
        back = StreamResampler(msr, out_rate, channels=n_src, limit=limit)
        segs = SegmentStream(length, ov_len)
        stitch = Stitcher(n_src, ov_len, raw_whole=raw)
        pending: list[tuple[int, np.ndarray, bool]] = []

        def run_batch() -> Iterator[np.ndarray]:
            self._check_cancel()
            lens = [len(s) for _, s, _ in pending]
            ys: list = [None] * len(pending)
            # one model call per segment length: a short last segment zero-padded to its batch's length would be
            # separated with that padding in view (the networks are not causal), so --batch-size changed the output
            for n in dict.fromkeys(lens):
                idx = [i for i, k in enumerate(lens) if k == n]
                if n == 0:  # an input shorter than one sample at the model's rate: nothing to separate
                    y = np.zeros((len(idx), n_src, 0), np.float32)  # (networks need T >= 1); output is silence
                else:
                    start, _, last = pending[idx[0]]
                    g = 1.0 if raw and start == 0 and last else in_gain  # (the whole input is alone in its call)
                    y = self._forward(np.stack([pending[i][1] for i in idx]) * np.float32(g), timer)
                for j, i in enumerate(idx):
                    ys[i] = y[j]
            for i, (_, s, last) in enumerate(pending):
                done = stitch.push(ys[i], s, last)
                if done.shape[1]:
                    out = back.process(done.T if n_src > 1 else done[0])
                    if len(out):
                        yield out.T if n_src > 1 else out[None]
            pending.clear()

        def feed(items) -> Iterator[np.ndarray]:
            for item in items:
                pending.append(item)
                if len(pending) >= o.batch_size:
                    yield from run_batch()

        seen = 0
        for block in src.blocks():
            self._check_cancel()
            seen += len(block)
            yield from feed(segs.push(fwd.process(block)))
            if progress is not None:
                progress(min(seen / max(src.frames, 1), 1.0))
        yield from feed(segs.push(fwd.finish()))
        yield from feed(segs.finish())
        if pending:
            yield from run_batch()
        if o.sample_rate == "input":
            total = fwd.n_in
        elif o.sample_rate == "model":
            total = fwd.n_out
        else:
            total = expected_length(fwd.n_in, src.rate, out_rate)
        if total == 0:  # (a file whose header promised more than decodes; separate_file checks the header)
            raise _too_short(src.path, fwd.n_in, src.rate, out_rate)
        tail = back.finish(total)
        if len(tail):
            yield tail.T if n_src > 1 else tail[None]

    # ------------------------------------------------------------------ arrays
    def separate_array(self, x: np.ndarray, sample_rate: int) -> np.ndarray:
        """Separate an in-memory signal x ([T] or [T, channels]) -> [n_src, T_out] float32 at the output rate
        (by default the input's rate and length), with the same loudness rules as files (no clipping guard
        is needed for float arrays in `match` mode; `off` in one segment gives the network's own samples)."""
        return self._separate_array(x, sample_rate, _Timer())

    def _separate_array(self, x: np.ndarray, sample_rate: int, timer: _Timer) -> np.ndarray:
        src = ArrayInput(x, sample_rate, channel=self.options.channel)
        y = np.concatenate(list(self._stream(src, timer)), axis=1)
        lo = self.options.loudness
        if isinstance(lo, float):
            meters = [StreamingLoudness(self.output_rate(sample_rate)) for _ in range(len(y))]
            for k, meter in enumerate(meters):
                meter.update(y[k])
            for k, (g, _) in enumerate(_lufs_gains(meters, lo, self.options.silent_lu)):
                y[k] *= g
        return y

    # ------------------------------------------------------------------ files
    def planned_outputs(self, stem: str, out_dir: str | os.PathLike) -> list[Path]:
        return output_paths(self.options.name, stem, self.options.format, self.model.n_src, Path(out_dir))

    def separate_file(self, path: str | os.PathLike, out_dir: str | os.PathLike, stem: str | None = None,
                      protect: set[Path] | None = None,
                      progress: Callable[[float], None] | None = None, resume: bool = False) -> FileResult:
        """Separate one file into `out_dir`. Never raises for a problem with this input: the result's status
        is `error` with a one-line message naming the file (an unexpected exception is kept, for --debug, as
        `result.exception`). `protect` lists paths that must never be written (the inputs). UsageError (bad
        options) is raised; so are KeyboardInterrupt/SystemExit, after removing every temporary file and any
        output of this input already renamed (all speakers or none).

        With `resume` (batch), an input whose outputs all exist is `skipped`, and one whose outputs another
        live sepcli process is writing is `skipped` with flag `busy`; without it both are errors unless
        options.overwrite."""
        t_start = time.perf_counter()
        path = Path(path)
        stem = stem if stem is not None else path.stem
        result = FileResult(input=str(path), status="error")
        o = self.options
        timer = _Timer()
        writers: list[AtomicWriter] = []
        spools: list[FloatSpool] = []
        temporaries: list[Path] = []  # every temporary file's name, given before the file is created
        claim: OutputClaim | None = None
        try:
            outs = self.planned_outputs(stem, out_dir)
            protected = {os.path.realpath(p) for p in (protect or set())} | {os.path.realpath(path)}
            for p in outs:
                if os.path.realpath(p) in protected:
                    raise UsageError(f"output {p} would overwrite an input")
            # a lock file means another process is at it, or one died there: decided once the claim is held
            if not OutputClaim.lock_path(outs).exists() and not self._outputs_free(outs, resume, result):
                return result
            with AudioInput(path, channel=o.channel) as src:  # a bad input creates no folder and no lock
                rate = self.output_rate(src.rate)
                if expected_length(src.frames, src.rate, rate) == 0:
                    raise _too_short(path, src.frames, src.rate, rate)
                for parent in dict.fromkeys(p.parent for p in outs):
                    make_output_folder(parent)
                claim = OutputClaim(outs)
                if not self._outputs_free(outs, resume, result):  # again, now that no one else can write them
                    return result
                result.input_rate, result.input_channels = src.rate, src.channels
                result.duration = src.frames / src.rate
                try:
                    check_output_format(o.format, o.subtype, rate)
                except ValueError as exc:  # mp3 and an input rate it cannot store: this file's problem
                    raise UsageError(f"{exc} ({src.rate} Hz input)") from None
                replace = o.overwrite or "replaced_damaged_output" in result.flags
                infos = self._write_outputs(src, outs, rate, timer, writers, spools, progress, claim.record,
                                            temporaries, replace)
                replaced, decoded, declared = src.nonfinite, src.decoded, src.declared_frames
            result.outputs = infos
            result.status = "ok"
            flags = {f for i in infos for f in i.flags} | set(result.flags)
            if replaced:
                flags.add("nonfinite_input_replaced")
            if decoded < declared:  # a cut or damaged file (mp3 most often): the outputs hold what decodes
                flags.add("truncated_input")
                result.duration = decoded / result.input_rate
            if claim.recovered:
                flags.add("recovered_interrupted_run")
            result.flags = sorted(flags)
        except Busy as exc:
            if resume and not o.overwrite:
                result.status, result.flags = "skipped", ["busy"]
            result.error = f"{path}: {exc}"
        except (AudioError, ModelError) as exc:
            result.error = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
        except (UsageError, Cancelled) as exc:
            result.error = f"{path}: {exc}"
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
            result.error = f"{path}: {os_problem(exc)}{where}"
        except MemoryError:
            result.error = f"{path}: out of memory (try a smaller --segment or --batch-size)"
        except Exception as exc:  # a bug or an unforeseen library error: still one line for this file  # noqa: BLE001
            result.error = f"{path}: unexpected error ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
            result.exception = exc
        finally:
            for w in writers:
                w.abort()  # removes the temporary file (no-op after commit)
                if w.committed and result.status != "ok":
                    w.path.unlink(missing_ok=True)  # all speakers or none
            for sp in spools:
                sp.close()
            for t in temporaries:  # one an interruption caught between its creation and its owner's list
                with contextlib.suppress(OSError):
                    t.unlink(missing_ok=True)
            if claim is not None:
                claim.release()
        total = time.perf_counter() - t_start
        result.timings = {"total_s": round(total, 4), "model_s": round(timer.model, 4),
                          "outside_model_s": round(total - timer.model, 4)}
        if result.duration:
            result.rtf = round(total / result.duration, 5)
        return result

    def _outputs_free(self, outs: list[Path], resume: bool, result: FileResult) -> bool:
        """False (result marked skipped) when resuming and the input is finished (every output exists, or with
        --drop-silent at least one); UsageError when an output exists and may not be replaced; True when the
        input is to be processed."""
        if self.options.overwrite:
            return True
        exist = [p.exists() for p in outs]
        # with --drop-silent a finished input may have fewer outputs than speakers (the silent ones were not
        # written); since outputs are committed all-or-none, any output present means the input was finished
        if resume and (all(exist) or (self.options.drop_silent and any(exist))):
            infos = [_existing_output(k + 1, q) if e else _dropped_output(k + 1)
                     for k, (q, e) in enumerate(zip(outs, exist))]
            lengths = {i.frames for i, e in zip(infos, exist) if e}  # the speakers' files are written equally long
            if 0 in lengths or len(lengths) > 1:  # damaged since (emptied, cut short, overwritten)
                result.flags = ["replaced_damaged_output"]  # not finished after all: done again, replacing it
                return True
            result.status, result.outputs = "skipped", infos
            return False
        for p, e in zip(outs, exist):
            if e:
                raise UsageError(f"output {p} exists (use --overwrite to replace it)")
        return True

    def _write_outputs(self, src, outs: list[Path], rate: int, timer: _Timer, writers: list,
                       spools: list, progress, journal: Callable[..., None],
                       temporaries: list[Path], replace: bool) -> list[OutputInfo]:
        """Stream the speakers into `outs` (temporary files, renamed when all are finished). Every temporary file's
        name goes into `temporaries` before the file is created; `journal(temps=..., committing=...)` records in the
        claim what a SIGKILL could leave behind (see _clean_after_dead_holder). `replace`: existing outputs are replaced
        (--overwrite, or a damaged output of a resumed batch), else never."""
        o = self.options
        n_src = self.model.n_src
        meters = [StreamingLoudness(rate) for _ in range(n_src)]
        gains = [1.0] * n_src
        flags: list[list[str]] = [[] for _ in range(n_src)]
        register = temporaries.append

        def temps():
            journal(temps=[os.path.abspath(t) for t in temporaries])

        if o.loudness == "off":  # one pass straight into the files
            writers.extend(AtomicWriter(p, rate, o.format, o.subtype, register) for p in outs)
            temps()
            for block in self._stream(src, timer, progress):
                for k in range(n_src):  # the loudness and peak reported are the file's: measured after clipping
                    meters[k].update(writers[k].write(block[k]))
        else:  # raw float stream first; the gain depends on the whole output
            spools.extend(FloatSpool(p.parent, register) for p in outs)
            temps()
            measure = o.loudness != "match"  # `match` needs only the peaks of the raw streams
            raw = [StreamingLoudness(rate) for _ in range(n_src)]
            peaks = [0.0] * n_src
            for block in self._stream(src, timer, progress):
                for k in range(n_src):
                    spools[k].write(block[k])
                    if measure:
                        raw[k].update(block[k])
                    elif len(block[k]):
                        peaks[k] = max(peaks[k], float(np.abs(block[k]).max()))
            if o.loudness == "match":
                peak = max(peaks)
                # a lossy file decodes with overshoots of a few percent above its encoded peak (measured: +0.3 dB
                # Vorbis, +0.07 dB MP3): it keeps the -1 dBFS headroom of the LUFS mode, a PCM file the full scale
                ceiling = db_to_gain(PEAK_CEILING_DB) if o.format in LOSSY_FORMATS else 1.0
                if o.subtype != "FLOAT" and peak > ceiling:
                    g = ceiling * (1.0 - 1e-6) / peak
                    gains = [g] * n_src
                    flags = [["scaled_to_avoid_clipping"] for _ in range(n_src)]
            else:
                for k, (g, limited) in enumerate(_lufs_gains(raw, float(o.loudness), o.silent_lu)):
                    gains[k] = g
                    if limited:
                        flags[k].append("peak_limited")
            writers.extend(AtomicWriter(p, rate, o.format, o.subtype, register) for p in outs)
            temps()
            for k in range(n_src):
                for block in spools[k].blocks():
                    block = block * np.float32(gains[k])
                    meters[k].update(writers[k].write(block))
                spools[k].close()
        loud = [m.loudness() for m in meters]
        level = [m.level() for m in meters]  # the loudness, or for outputs under 400 ms their ungated level
        top = max(level)
        silents = [not math.isfinite(level[k]) or level[k] < top - o.silent_lu for k in range(n_src)]
        keep = [not (silents[k] and o.drop_silent) for k in range(n_src)]
        for k in range(n_src):  # finish every file before renaming any: the renames are then back to back
            if keep[k]:
                writers[k].close()
            else:
                writers[k].abort()
        journal(committing=[os.path.abspath(outs[k]) for k in range(n_src) if keep[k]])
        for k in range(n_src):
            if keep[k]:
                writers[k].commit(overwrite=replace)
            elif replace and os.path.lexists(outs[k]):
                os.unlink(outs[k])  # replacing this input's outputs: a dropped speaker's old file goes too
        infos = []
        for k in range(n_src):
            silent, written = silents[k], keep[k]
            if silent:
                flags[k].append("silent")
            if writers[k].clipped:
                flags[k].append("clipped")
            frames = writers[k].frames
            infos.append(OutputInfo(speaker=k + 1, path=str(outs[k]) if written else None, sample_rate=rate,
                                    frames=frames, duration=frames / rate, loudness_lufs=_finite(loud[k]),
                                    peak_dbfs=_finite(gain_to_db(meters[k].peak)),
                                    gain_db=round(gain_to_db(gains[k]), 3), flags=flags[k], written=written))
        return infos


def _too_short(path, frames: int, rate: int, out_rate: int) -> AudioError:
    return AudioError(path, f"too short: {frames} sample(s) at {rate} Hz are no sample at the output rate of "
                            f"{out_rate} Hz")


def _lufs_gains(meters: list[StreamingLoudness], target: float, silent_lu: float) -> list[tuple[float, bool]]:
    """(gain, peak_limited) per output measured by `meters` to reach `target` LUFS; a silent output (no loudness,
    or `silent_lu` or more below the loudest) is not amplified to the target: gain 1."""
    loud = [m.loudness() for m in meters]
    top = max(loud)
    return [(1.0, False) if not math.isfinite(lk) or lk < top - silent_lu else target_gain(lk, m.peak, target)
            for lk, m in zip(loud, meters)]


# ---------------------------------------------------------------------- batches
def find_inputs(root: str | os.PathLike, glob: str | None = None,
                exclude: str | os.PathLike | None = None) -> list[Path]:
    """Audio files under root (recursive), sorted; `glob` (e.g. "*.flac" or "a/**/*.wav") filters relative
    paths; files under `exclude` (the output folder) and hidden/temporary files are skipped."""
    root = Path(root)
    real_root = os.path.realpath(root)
    ex = os.path.realpath(exclude) if exclude is not None else None
    if ex is not None and not ex.startswith(real_root.rstrip(os.sep) + os.sep):
        ex = None  # only an output folder strictly inside the tree is excluded (not the root, not an ancestor)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):  # symbolic links to folders are not followed (no loops)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        d = Path(dirpath)
        real = os.path.realpath(d)
        if ex is not None and (real == ex or real.startswith(ex.rstrip(os.sep) + os.sep)):
            dirnames[:] = []
            continue
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            p = d / f
            rel = p.relative_to(root).as_posix()
            if glob:
                if not (fnmatch.fnmatch(rel, glob) or fnmatch.fnmatch(f, glob)):
                    continue
            elif p.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            found.append(p)
    return sorted(found)


def parse_shard(text: str | None, env: dict | None = None) -> tuple[int, int]:
    """(index, count) from "I/N" (0 <= I < N), else torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    env = os.environ if env is None else env
    if text:
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise UsageError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
        if n < 1 or not (0 <= i < n):
            raise UsageError(f"--shard {text}: need 0 <= I < N")
        return i, n
    if "WORLD_SIZE" in env and "RANK" in env:  # both set (as torchrun sets them): they must make sense
        try:
            i, n = int(env["RANK"]), int(env["WORLD_SIZE"])
        except ValueError:
            raise UsageError(f"RANK={env['RANK']} WORLD_SIZE={env['WORLD_SIZE']} in the environment: not integers "
                             "(torchrun sets them; or give --shard I/N)") from None
        if n >= 1 and 0 <= i < n:
            return i, n
        raise UsageError(f"RANK={i} WORLD_SIZE={n} in the environment: need 0 <= RANK < WORLD_SIZE (or give --shard)")
    return 0, 1


def shard_files(files: list[Path], index: int, count: int) -> list[Path]:
    """Every count-th file from `index`: the shards of 0..count-1 partition the (sorted) list."""
    return files[index::count]


def batch_stems(files: list[Path]) -> dict[Path, str]:
    """The output stem of each input: its file stem, or its full file name when several inputs in the same
    folder share a stem (a.wav and a.flac -> "a.wav", "a.flac"), so no input's outputs replace another's.
    Computed on the whole file list (before sharding), so every shard names alike."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    for f in files:
        groups.setdefault((f.parent, f.stem), []).append(f)
    return {f: (f.name if len(groups[(f.parent, f.stem)]) > 1 else f.stem) for f in files}


def separate_batch(sep: Separator, root: str | os.PathLike, out_dir: str | os.PathLike,
                   glob: str | None = None, jobs: int = 1, shard: tuple[int, int] = (0, 1),
                   manifest: str | os.PathLike | None = None,
                   on_result: Callable[[FileResult], None] | None = None,
                   on_plan: Callable[[list[Path]], None] | None = None) -> list[FileResult]:
    """Separate every audio file under root into the mirrored tree under out_dir.

    Inputs whose outputs all exist are `skipped` (a rerun resumes) unless options.overwrite; so are inputs
    another sepcli process is working on (flag `busy`, see OutputClaim). A bad file is an `error` result and
    the batch goes on. `jobs` files are decoded/encoded in parallel while the model runs one batch at a time.
    With `manifest`, one JSON line per input is appended (status, outputs, error).
    `on_plan` receives this shard's file list before work starts; `on_result` each result as it finishes.
    Inputs sharing a stem in one folder are named by their full file name (batch_stems). An output folder
    equal to root is a UsageError (outputs would become inputs of the next run). KeyboardInterrupt (and
    SystemExit from a signal handler) stops the batch: files in progress are abandoned without leaving
    anything, finished ones stay, and the exception propagates.
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder")
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if os.path.realpath(root) == os.path.realpath(out_dir):
        real = Path(os.path.realpath(root))
        sibling = real.parent / f"{real.name}-separated"
        raise UsageError(f"{out_dir}: the output folder is the input folder; outputs would be taken as inputs "
                         f"by the next run (choose a folder outside it, e.g. {sibling})")
    every = find_inputs(root, glob, exclude=out_dir)
    stems = batch_stems(every)
    check_distinct_outputs(sep, [(str(p), stems[p], out_dir / p.relative_to(root).parent) for p in every])
    files = shard_files(every, *shard)
    if on_plan is not None:
        on_plan(files)
    protect = set(every)
    lock = threading.Lock()
    stop = threading.Event()
    sep.reset_cancel()
    try:
        mf = open(manifest, "a", encoding="utf-8") if manifest else None  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"{manifest}: cannot append the manifest here ({exc.strerror or exc})") from None

    def one(p: Path) -> FileResult | None:
        if stop.is_set():
            return None
        try:
            rel = p.relative_to(root)
            folder = out_dir / rel.parent
            r = sep.separate_file(p, folder, stem=stems[p], protect=protect, resume=True)
            if r.status == "ok" and stems[p] != p.stem and any(q.exists() for q in sep.planned_outputs(p.stem, folder)):
                # named by its full name since another file of its stem arrived: the short-named outputs of an
                # earlier run are left as they are (they may be either file's); say so, as scripts glob them
                r.flags = sorted({*r.flags, "older_outputs_under_stem"})
        except UsageError as exc:  # a name this input cannot have (its stem); the options were checked before
            r = FileResult(input=str(p), status="error", error=f"{p}: {exc}")
        except Exception as exc:  # noqa: BLE001  (separate_file reports per-file problems itself)
            r = FileResult(input=str(p), status="error", error=f"{p}: unexpected error ({type(exc).__name__}: "
                                                               f"{' '.join(str(exc).split())[:300]})")
            r.exception = exc
        if stop.is_set():
            return None  # cancelled mid-way: not a result of this file
        with lock:
            if mf is not None:
                mf.write(json.dumps({"input": r.input, "status": r.status,
                                     "outputs": [i.path for i in r.outputs if i.path],
                                     "error": r.error, "flags": r.flags}) + "\n")
                mf.flush()
            if on_result is not None:
                on_result(r)
        return r

    try:
        if jobs == 1:
            results = [one(p) for p in files]
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(one, p) for p in files]
                try:
                    results = [f.result() for f in futures]
                except BaseException:
                    stop.set()  # queued files return at once; running ones stop at their next block
                    sep.cancel()
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        if mf is not None:
            mf.close()
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------- speed
def synthetic_mixture(seconds: float, rate: int, n_src: int = 2, seed: int = 0) -> np.ndarray:
    """Noise 'talkers' with syllable-rate envelopes, summed: a stand-in input for speed measurements."""
    rng = np.random.default_rng(seed)
    n = max(int(seconds * rate), 1)
    t = np.arange(n) / rate
    mix = np.zeros(n, np.float32)
    for k in range(n_src):
        env = 0.55 + 0.45 * np.sin(2 * np.pi * (3.0 + k) * t + rng.uniform(0, 6.28))
        mix += (0.1 * rng.standard_normal(n) * env).astype(np.float32)
    return mix


def bench_model(sep: Separator, seconds: float = 30.0, repeat: int = 3) -> dict:
    """Median timings of separating a synthetic input at the model's rate (after one warm-up)."""
    m = sep.model
    x = synthetic_mixture(seconds, m.sample_rate, m.n_src)
    sep._separate_array(x[: m.sample_rate], m.sample_rate, _Timer())  # warm-up (first-call compilation)
    totals, models = [], []
    for _ in range(max(repeat, 1)):
        timer = _Timer()
        t0 = time.perf_counter()
        sep._separate_array(x, m.sample_rate, timer)
        totals.append(time.perf_counter() - t0)
        models.append(timer.model)
    total, model_t = float(np.median(totals)), float(np.median(models))
    return {"model": m.name, "arch": m.arch, "params_M": round(m.n_params / 1e6, 3), "sample_rate": m.sample_rate,
            **sep.runtime_info(),
            "input_s": seconds, "total_s": round(total, 3), "model_s": round(model_t, 3),
            "rtf_total": round(total / seconds, 4), "rtf_model": round(model_t / seconds, 4),
            "outside_model_share": round(1 - model_t / total, 4) if total > 0 else None}
