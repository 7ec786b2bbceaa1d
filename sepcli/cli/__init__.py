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
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import traceback
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__
from ..errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, exit_code_of, one_line

EXIT_HELP = ("Exit codes: 0 = every input done (or skipped as already done); 1 = at least one input failed "
             "(or the model could not be loaded, or the output folder cannot be written); 2 = usage error (bad "
             "option, unknown model); 130 = interrupted (Ctrl-C), 143 = terminated (SIGTERM): finished outputs "
             "are kept, nothing partial is left.")

app = typer.Typer(
    name="sepcli",
    help="Split recordings of overlapping talkers into one file per speaker (S4M / SPMamba models).\n\n"
    + EXIT_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(help="List models, show a model card, import official SPMamba releases, choose your "
                         "default model, remove your models.",
                         invoke_without_command=True, add_completion=False)
app.add_typer(models_app, name="models")


# ---------------------------------------------------------------------- presentation helpers
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


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM turned into an exception, so every `finally` (temporary files, locks) runs."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _interruptible:
    """While active (main thread only), SIGINT and SIGTERM raise Interrupted; further signals are ignored
    until the command has cleaned up (a second Ctrl-C must not cut the cleanup short). Restores the
    previous handlers on exit."""

    def __enter__(self):
        import signal
        import threading

        self._old = {}
        if threading.current_thread() is not threading.main_thread():
            return self

        def handler(signum, frame):
            for sig in self._old:
                signal.signal(sig, signal.SIG_IGN)
            raise Interrupted(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, h in self._old.items():
            signal.signal(sig, h)


def _interrupt_exit(exc: KeyboardInterrupt,
                    what: str = "finished outputs kept, unfinished ones removed (rerun to complete)") -> typer.Exit:
    import signal

    signum = getattr(exc, "signum", signal.SIGINT)
    _error(f"interrupted by {signal.Signals(signum).name}: {what}")
    return typer.Exit(128 + signum)


def _check_out(out: Path, debug: bool) -> None:
    """Fail before any work when the output folder cannot be used: -o naming a file is a usage error (2), a
    folder that cannot be created or written (permissions, read-only, full) a failure (1)."""
    from ..audio.io import AudioError
    from ..separate import check_output_folder

    if out.exists() and not out.is_dir():
        _error(f"{out}: -o must name a folder, but this is a file")
        raise typer.Exit(EXIT_USAGE)
    try:
        check_output_folder(out)
    except AudioError as exc:
        raise _fail(exc, debug) from None


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"sepcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """sepcli: one file per speaker from a recording of overlapping talkers."""


def run() -> None:
    """The console entry point: the app, with the option parser's errors (a bad value, an unknown option, a
    missing argument) as one `sepcli: error:` line and exit code 2, not Typer's boxed panel."""
    from ..runtime import early

    early.record()  # the idle-CPU measurement's first sample, before torch is imported (runtime/early.py)
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
    sys.exit(code if isinstance(code, int) else EXIT_OK)


# ---------------------------------------------------------------------- shared options
def _options(segment, overlap, batch_size, shifts, channel, sample_rate, fmt, subtype, name, loudness, drop_silent,
             overwrite, device, threads, precision="auto"):
    from ..separate import SeparationOptions

    return SeparationOptions(segment=segment, overlap=overlap, batch_size=batch_size, shifts=shifts, channel=channel,
                             sample_rate=sample_rate, format=fmt, subtype=subtype, name=name, loudness=loudness,
                             drop_silent=drop_silent, overwrite=overwrite, device=device, threads=threads,
                             precision=precision)


def _make_separator(model: str, opts, debug: bool):
    from ..separate import Separator, UsageError
    from ..runtime.device import threads_for_idle_cpus
    from ..runtime.loader import ModelError

    if opts.threads is None:  # not more threads than idle CPUs: spinning OpenMP threads on busy cores are slow
        opts = replace(opts, threads=threads_for_idle_cpus())
    try:
        return Separator(model, opts)
    except UsageError as exc:
        raise _fail(exc, debug, EXIT_USAGE) from None
    except ModelError as exc:  # exit 2 for an unknown model (UnknownModel), 1 for one that cannot be loaded
        raise _fail(exc, debug) from None


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


def _json_default(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return str(v)


# ---------------------------------------------------------------------- separate
SEGMENT_HELP = "Segment length in seconds (default: the model's; 0 = whole input in one pass)."
OVERLAP_HELP = "Overlap between segments as a fraction of a segment, 0-0.5 (default: the model's)."
LOUD_HELP = ("Output loudness: 'match' (each speaker at its level in the mix, outputs sum to the input), "
             "a LUFS target such as -23 (each output normalised, peaks <= -1 dBFS, never clipped), "
             "or 'off' (no loudness gain; the whole input in one segment, e.g. --segment 0, is written as the "
             "network's own samples).")

# Options shared by `separate` and `batch` (one declaration each; the commands differ only in their own options).
ModelOpt = Annotated[str, typer.Option("-m", "--model", help="Zoo model name/alias or a model folder path.")]
SegmentOpt = Annotated[Optional[float], typer.Option(help=SEGMENT_HELP)]  # noqa: UP045 (typer reads it)
OverlapOpt = Annotated[Optional[float], typer.Option(help=OVERLAP_HELP)]  # noqa: UP045
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Segments per model call.")]
ShiftsOpt = Annotated[int, typer.Option("--shifts", help="Average this many passes over the input delayed by "
                                        "0, 0.5, 1, ... ms: slightly better separation (+0.1 dB at 4 for an "
                                        "earlier default model) for N times the model time.")]
ChannelOpt = Annotated[Optional[int], typer.Option(  # noqa: UP045
    help="Use only this input channel (1 = first) instead of the mono downmix.")]
SampleRateOpt = Annotated[str, typer.Option("--sample-rate", help="Output rate: input, model or Hz.")]
FormatOpt = Annotated[str, typer.Option("--format", help="Output format: wav, flac, ogg, mp3.")]
SubtypeOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045
    help="PCM_16, PCM_24 or FLOAT (wav/flac; default PCM_16).")]
NameOpt = Annotated[str, typer.Option("--name", help="Output name template: {stem}, {k} (speaker, from 1), {ext}.")]
LoudnessOpt = Annotated[str, typer.Option(help=LOUD_HELP)]
DropSilentOpt = Annotated[bool, typer.Option("--drop-silent", help="Do not write outputs flagged silent.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(  # noqa: UP045
    help="CPU threads for the model (default: one per idle core, at most PyTorch's default and a container's "
         "CPU quota).")]
PrecisionOpt = Annotated[str, typer.Option(
    help="Model precision: auto (bf16 on a GPU, and on a CPU with native bf16 - AMX or AVX512-BF16 - for networks "
         "faster in bf16; else fp32), fp32 or bf16 (emulated and slower on a CPU without native bf16).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar or table.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
NAME_DEFAULT = "{stem}_spk{k}.{ext}"


@app.command(epilog=EXIT_HELP)
def separate(
    inputs: list[str] = typer.Argument(..., help="Audio files (WAV, FLAC, OGG, Opus, MP3, AIFF); '-' = stdin."),  # noqa: B008
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (created if missing)."),  # noqa: B008
    model: ModelOpt = "default",
    segment: SegmentOpt = None,
    overlap: OverlapOpt = None,
    batch_size: BatchSizeOpt = 1,
    shifts: ShiftsOpt = 1,
    channel: ChannelOpt = None,
    sample_rate: SampleRateOpt = "input",
    fmt: FormatOpt = "wav",
    subtype: SubtypeOpt = None,
    name: NameOpt = NAME_DEFAULT,
    loudness: LoudnessOpt = "match",
    drop_silent: DropSilentOpt = False,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Separate each INPUT into one file per speaker under OUT.

    Example: sepcli separate interview.mp3 -o out/   ->  out/interview_spk1.wav, out/interview_spk2.wav
    """
    opts = _options(segment, overlap, batch_size, shifts, channel, sample_rate, fmt, subtype, name, loudness,
                    drop_silent, overwrite, device, threads, precision)
    stems = [("stdin" if i == "-" else Path(i).stem) for i in inputs]
    if len(set(stems)) != len(stems):
        stem = next(s for s in stems if stems.count(s) > 1)
        same = [i for i, s in zip(inputs, stems) if s == stem]
        _error(f"{', '.join(same[:3])}: the same file name stem {stem!r}, so their outputs would collide "
               "(separate them into different output folders)")
        raise typer.Exit(EXIT_USAGE)
    if inputs.count("-") > 1:
        _error("stdin ('-') can be given only once")
        raise typer.Exit(EXIT_USAGE)
    from ..separate import UsageError, check_distinct_outputs

    with _interruptible():
        try:
            sep = _make_separator(model, opts, debug)  # options and model first: a usage error creates nothing
            try:
                check_distinct_outputs(sep, [(i, s, out) for i, s in zip(inputs, stems)])
            except UsageError as exc:
                raise _fail(exc, debug, EXIT_USAGE) from None
            with _made_if_missing(out):
                _check_out(out, debug)
                results = _separate_all(sep, inputs, stems, out, quiet, debug)
        except KeyboardInterrupt as exc:
            raise _interrupt_exit(exc, "finished outputs kept, unfinished ones removed (give the unfinished inputs "
                                       "again; `sepcli batch` skips finished files)") from None
    raise typer.Exit(_emit(results, sep, as_json, _stderr_console(quiet), "sepcli separate", debug=debug))


class _made_if_missing:
    """Around a command's work: an output folder that did not exist before and is still empty after (every
    input failed, or an interruption came first) is removed again, with the parents the run made for it (-o
    new/deeper/out), so a failed run leaves nothing."""

    def __init__(self, out: Path):
        self.missing = []  # deepest first
        p = Path(os.path.abspath(out))
        while not os.path.lexists(p) and p != p.parent:
            self.missing.append(p)
            p = p.parent

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.missing:
            try:
                p.rmdir()  # only if empty
            except OSError:
                break
        return False


def _separate_all(sep, inputs: list[str], stems: list[str], out: Path, quiet: bool, debug: bool) -> list:
    """The per-input loop of `separate`: one FileResult per input, in order."""
    from ..audio.io import AudioError, spool_stdin
    from ..separate import FileResult, UsageError

    console = _stderr_console(quiet)
    protect = {Path(i) for i in inputs if i != "-"}
    results = []
    for inp, stem in zip(inputs, stems):
        tmp = None
        try:
            if inp == "-":
                out.mkdir(parents=True, exist_ok=True)
                tmp = spool_stdin(out)
                path = tmp
            else:
                path = Path(inp)
            progress = _progress(console, inp)
            with progress as cb:
                r = sep.separate_file(path, out, stem=stem, protect=protect, progress=cb)
            if tmp is not None:
                r.input = "-"
                if r.error:
                    r.error = r.error.replace(str(tmp), "-")
        except UsageError as exc:
            raise _fail(exc, debug, EXIT_USAGE) from None
        except AudioError as exc:
            r = FileResult(input=inp, status="error", error=str(exc))
        except Exception as exc:  # unexpected: still one line per file unless --debug  # noqa: BLE001
            if debug:
                traceback.print_exc()
            r = FileResult(input=inp, status="error", error=f"{inp}: {type(exc).__name__}: {exc}")
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        results.append(r)
    return results


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


# ---------------------------------------------------------------------- batch
@app.command(epilog=EXIT_HELP)
def batch(
    folder: Path = typer.Argument(..., help="Folder to walk (recursively)."),  # noqa: B008
    out: Path = typer.Option(..., "-o", "--out", help="Output folder; the input tree is mirrored under it."),  # noqa: B008
    glob: str | None = typer.Option(None, help="Only files matching this pattern (e.g. '*.flac'); "
                                                 "default: every audio extension."),
    manifest: Path | None = typer.Option(None, help="Append one JSON line per input (status, outputs, "  # noqa: B008
                                                      "error) to this file."),
    jobs: int = typer.Option(1, help="Files decoded/encoded in parallel while one model runs."),
    shard: str | None = typer.Option(None, help="Process only shard I/N of the sorted file list (0 <= I < N); "
                                                  "default: torchrun's RANK/WORLD_SIZE when set."),
    model: ModelOpt = "default",
    segment: SegmentOpt = None,
    overlap: OverlapOpt = None,
    batch_size: BatchSizeOpt = 1,
    shifts: ShiftsOpt = 1,
    channel: ChannelOpt = None,
    sample_rate: SampleRateOpt = "input",
    fmt: FormatOpt = "wav",
    subtype: SubtypeOpt = None,
    name: NameOpt = NAME_DEFAULT,
    loudness: LoudnessOpt = "match",
    drop_silent: DropSilentOpt = False,
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo inputs whose outputs exist."),
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Separate every audio file under FOLDER into OUT, mirroring the tree; reruns skip finished files.

    Example: sepcli batch calls/ -o separated/ --manifest separated/manifest.jsonl --jobs 2
    """
    from ..separate import UsageError, parse_shard

    opts = _options(segment, overlap, batch_size, shifts, channel, sample_rate, fmt, subtype, name, loudness,
                    drop_silent, overwrite, device, threads, precision)
    try:
        shard_ix = parse_shard(shard)
    except UsageError as exc:
        raise _fail(exc, debug, EXIT_USAGE) from None
    if not folder.is_dir():
        _error(f"{folder}: not a folder")
        raise typer.Exit(EXIT_USAGE)
    if jobs < 1:
        _error(f"--jobs must be at least 1, got {jobs}")
        raise typer.Exit(EXIT_USAGE)
    with _interruptible():
        try:
            sep = _make_separator(model, opts, debug)
            with _made_if_missing(out):
                _check_out(out, debug)
                results, extra = _batch_run(sep, folder, out, glob, jobs, shard_ix, manifest, quiet, debug)
        except KeyboardInterrupt as exc:
            raise _interrupt_exit(exc) from None
    raise typer.Exit(_emit(results, sep, as_json, _stderr_console(quiet),
                           f"sepcli batch (shard {shard_ix[0]}/{shard_ix[1]})", extra, debug=debug, reported=True))


def _batch_run(sep, folder: Path, out: Path, glob, jobs: int, shard_ix, manifest, quiet: bool, debug: bool):
    """Run separate_batch with a progress bar on a terminal; (results, extra JSON fields)."""
    from ..separate import UsageError, separate_batch

    console = _stderr_console(quiet)
    bar = None
    if console is not None:
        from rich.progress import Progress

        bar = Progress(console=console, transient=True)
        bar.start()
        task = bar.add_task("batch", total=None)
    t0 = time.perf_counter()

    def on_result(r) -> None:  # a bad file is reported when it fails, not after hours of the others
        if r.status == "error":
            _report(r, debug)
        if bar is not None:
            bar.advance(task)

    try:
        results = separate_batch(sep, folder, out, glob=glob, jobs=jobs, shard=shard_ix, manifest=manifest,
                                 on_result=on_result,
                                 on_plan=(lambda fs: bar.update(task, total=len(fs))) if bar is not None else None)
    except UsageError as exc:
        raise _fail(exc, debug, EXIT_USAGE) from None
    finally:
        if bar is not None:
            bar.stop()
    if not results:  # a typo in --glob or an empty drop folder: say so, a silent success hides it from scripts
        where = f" matching --glob {glob!r}" if glob else ""
        part = f" in shard {shard_ix[0]}/{shard_ix[1]}" if shard_ix[1] > 1 else ""
        typer.echo(f"sepcli: warning: no audio files under {folder}{where}{part}; nothing to do", err=True)
    return results, {"shard": list(shard_ix), "wall_s": round(time.perf_counter() - t0, 3)}


# ---------------------------------------------------------------------- models
def _quality_summary(ev: dict) -> str:
    """'SI-SNRi 3.1 dB held-out real, 5.2 dB synthetic' from a config's eval figures, else its plain numbers."""
    parts = []
    for key, label in (("test_real", "held-out real"), ("test_synth", "held-out synthetic"), ("val", "validation")):
        mean = ((ev.get(key) or {}).get("si_snri") or {}).get("mean") if isinstance(ev.get(key), dict) else None
        if isinstance(mean, (int, float)):
            parts.append(f"{mean:.1f} dB {label}")
    if parts:
        return "SI-SNRi " + ", ".join(parts)
    return ", ".join(f"{k}={v}" for k, v in ev.items() if isinstance(v, (int, float, str)) and v is not None)


def _catalogue_rows() -> list[dict]:
    """Rows of `sepcli models` for the catalogue models that are not installed (installed: false)."""
    from ..runtime import catalogue
    from ..runtime.registry import find_installed

    try:
        entries = catalogue.entries()
    except catalogue.CatalogueError as exc:  # a bad SEPCLI_CATALOGUE must not hide the installed models
        typer.echo(f"sepcli: warning: {exc}", err=True)
        return []
    return [{"name": e.name, "aliases": [], "source": "catalogue", "installed": False,
             "arch": "spmamba" if e.importer == "spmamba-release" else None, "sample_rate": e.sample_rate,
             "n_src": e.n_src, "url": e.url, "licence": e.licence, "published": e.figures_line(),
             "published_short": e.figures_line(source=False),
             "pull": f"sepcli models pull {e.name}" + ("" if e.url else " --from FILE"), "path": None,
             "params": None, "size_bytes": None, "eval": {}, "default": False, "default_why": None}
            for e in entries if find_installed(e.name) is None]


@models_app.callback()
def models(ctx: typer.Context,
           as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
    """List the models: name, where it lives (shipped, SEPCLI_ZOO, user), architecture, sample rate, parameters,
    size, measured quality, and which one `default` means and why."""
    if ctx.invoked_subcommand is not None:
        return
    from ..runtime.loader import ModelError, weights_summary
    from ..runtime.registry import ModelNotFound, default_choice, list_zoo, resolve, zoo_conflicts

    rows = []
    for line in zoo_conflicts():
        typer.echo(f"sepcli: warning: {line}", err=True)
    try:
        default_folder, why = resolve("default"), default_choice()[1]
    except ModelNotFound as exc:  # e.g. a user default whose model was removed: said, the list still shown
        try:
            chosen = default_choice()[0]
        except ModelNotFound:  # settings.json unreadable: exc says so
            chosen = "?"
        if chosen is not None:  # (no model with the alias `default`: zoo_conflicts said why)
            typer.echo(f"sepcli: warning: {exc}", err=True)
        default_folder, why = None, None
    why_text = {"SEPCLI_MODEL": "SEPCLI_MODEL", "user setting": "user setting (sepcli models default)"}
    for e in list_zoo():
        try:
            if e.problem:
                raise ModelError(e.problem)
            n, size = weights_summary(e.folder)
        except ModelError as exc:  # one unreadable model (a Git LFS pointer, garbage) must not hide the others
            typer.echo(f"sepcli: warning: skipped zoo model {e.folder}: {one_line(str(exc))}", err=True)
            continue
        cfg = e.config
        is_default = default_folder is not None and default_folder == e.folder
        # `default` is listed only where it leads (SEPCLI_MODEL or the user's setting may take it from the alias)
        aliases = [a for a in e.aliases if a != "default" or default_folder in (None, e.folder)]
        rows.append({"name": e.name, "aliases": aliases, "source": e.source, "arch": cfg.get("arch"),
                     "sample_rate": cfg.get("sample_rate"), "n_src": cfg.get("n_src"), "params": n,
                     "size_bytes": size, "eval": cfg.get("eval", {}), "path": str(e.folder),
                     "default": is_default,
                     "default_why": (why_text.get(why, f"alias 'default' of a {e.source} model")
                                     if is_default else None)})
    pending = _catalogue_rows()  # catalogue models not installed yet, listed after the installed ones
    if as_json:
        typer.echo(json.dumps([{**r, "installed": True} for r in rows] + pending, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="sepcli models")
    for col in ("name", "aliases", "source", "arch", "rate", "params", "size", "quality"):
        t.add_column(col)
    for r in rows:
        quality = _quality_summary(r["eval"] or {})
        name = f"{r['name']} *" if r["default"] else r["name"]
        t.add_row(name, ", ".join(r["aliases"]), r["source"], str(r["arch"]), f"{r['sample_rate']} Hz",
                  f"{r['params'] / 1e6:.2f} M", f"{r['size_bytes'] / 1e6:.1f} MB", quality or "-")
    for r in pending:
        t.add_row(f"{r['name']} (not installed)", "", r["source"], str(r["arch"] or "-"),
                  f"{r['sample_rate']} Hz" if r["sample_rate"] else "-", "-", "-",
                  f"published: {r['published_short']}" if r["published_short"] else "-")
    if not rows:
        typer.echo("no models installed", err=True)
    console = Console(width=max(100, Console().width))
    console.print(t)
    if pending:
        console.print("not installed: get one with `sepcli models pull NAME` (the only command that downloads)",
                      highlight=False)
    chosen = next((r for r in rows if r["default"]), None)
    if chosen is not None:
        console.print(f"* default: {chosen['name']} ({chosen['default_why']})", highlight=False)
    elif default_folder is not None:
        console.print(f"default: {default_folder} ({why_text.get(why, why)})", highlight=False)


@models_app.command("info")
def models_info(name: str = typer.Argument(..., help="Zoo name, alias or model folder path."),
                debug: DebugOpt = False) -> None:
    """Show one model: its config and its model card."""
    from ..runtime.loader import ModelError, _locate, read_config, weights_summary
    from ..runtime.registry import ModelNotFound, UnknownName, resolve

    try:
        folder, weights = _locate(resolve(name))
        cfg = read_config(folder)
    except ModelError as exc:  # exit 2 for an unknown model (ModelNotFound), 1 for one that cannot be read
        if isinstance(exc, UnknownName):
            from ..runtime.catalogue import not_installed_hint  # a catalogue model not pulled yet: how to get it

            hint = not_installed_hint(exc.name)
            exc = ModelNotFound(hint) if hint else exc
        raise _fail(exc, debug) from None
    try:
        n, size = weights_summary(weights)
    except ModelError as exc:  # e.g. a Git LFS pointer or garbage in the weights, a .pth holding Python objects
        raise _fail(exc, debug) from None
    typer.echo(f"{cfg['name']}  ({folder})")
    typer.echo(f"  arch {cfg['arch']}, {cfg['sample_rate']} Hz, {cfg['n_src']} speakers, {n / 1e6:.2f} M params, "
               f"{size / 1e6:.1f} MB")
    typer.echo(f"  segment {cfg['segment']} s, overlap {cfg['overlap']}, input loudness {cfg['input_loudness']}")
    if cfg.get("aliases"):
        typer.echo(f"  aliases: {', '.join(cfg['aliases'])}")
    for key in ("description", "provenance"):
        if cfg.get(key):
            typer.echo(f"  {key}: {cfg[key] if isinstance(cfg[key], str) else json.dumps(cfg[key])}")
    if cfg.get("eval"):
        typer.echo(f"  eval: {json.dumps(cfg['eval'])}")
    card = folder / "MODEL_CARD.md"
    if card.is_file():
        typer.echo("")
        typer.echo(card.read_text())


@models_app.command("import-spmamba")
def models_import_spmamba(
    source: Path | None = typer.Argument(  # noqa: B008
        None, help="The release zip (e.g. SPMamba-LibriMix.zip), a folder holding conf.yml and a checkpoint, or a "
                   "checkpoint file (then give --config).", show_default=False),
    config: Path | None = typer.Option(  # noqa: B008
        None, "--config", help="The training config (conf.yml); by default the one in SOURCE."),
    checkpoint: Path | None = typer.Option(  # noqa: B008
        None, "--checkpoint", help="best_model.pth or a Lightning .ckpt (the older form of SOURCE)."),
    name: str | None = typer.Option(None, "--name", help="Install into your model store under this name "
                                    "(default: from conf.yml, e.g. spmamba-libri2mix)."),
    out: Path | None = typer.Option(None, "--out", help="Write the model folder here instead."),  # noqa: B008
    debug: DebugOpt = False,
) -> None:
    """Convert an official SPMamba release (JusperLee/SPMamba) into a sepcli model.

    Installs into your model store ($SEPCLI_HOME/models, see `sepcli models`) under --name, or under a name
    taken from conf.yml (its experiment name, e.g. spmamba-libri2mix); --out writes the folder elsewhere. A name
    is one plain folder name that no installed model uses as folder, name or alias (a new model must not shadow
    `default`). Exit 1 for an archive or checkpoint that cannot be imported, 2 for a bad name or conf.yml."""
    if (source is None) == (checkpoint is None):
        _error("give the release zip, folder or checkpoint as SOURCE (or --checkpoint with --config), once")
        raise typer.Exit(EXIT_USAGE)
    if name is not None and out is not None:
        _error("give at most one of --name (install into your model store) or --out (a folder)")
        raise typer.Exit(EXIT_USAGE)
    src = source if source is not None else checkpoint
    try:
        from ..runtime.spmamba_import import CheckpointError, ConfigError
    except ImportError as exc:
        raise _fail(RuntimeError(f"SPMamba import is not available ({exc})"), debug, EXIT_FAILED) from None
    try:
        with _interruptible():
            result, name = _import_release(src, config, name, out)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the temporary folders are removed, nothing installed
        raise _interrupt_exit(exc, "nothing installed") from None
    except CheckpointError as exc:  # exit 1; 2 for a bad conf.yml (ConfigError), a bad argument like an option
        # (its exit_code says so; the isinstance default serves a stand-in converter module, as tests use)
        code = exit_code_of(exc, EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED)
        raise _fail(exc, debug, code) from None
    for note in result.notes:
        typer.echo(f"sepcli: note: {note}", err=True)
    typer.echo(f"wrote {result.folder}" + (f" (use it with -m {name})" if name else ""))


def _import_release(src: Path, config: Path | None, name: str | None, out: Path | None):
    """import-spmamba's work: the name (given, or from conf.yml) checked, then the import. Returns (ImportResult,
    the name the model is reached by, None for --out)."""
    from ..runtime import store
    from ..runtime.registry import new_name_problem, zoo_dirs
    from ..runtime.spmamba_import import import_release, suggest_name

    if out is None:
        option = "--name"
        if name is None:
            name, option = suggest_name(src, config), "the name from conf.yml"
        problem = new_name_problem(name)
        if problem:
            _error(f"{option}: {problem}" + ("" if option == "--name" else " (give --name)"))
            raise typer.Exit(EXIT_USAGE)
        out = store.models_dir() / name
    elif out.parent.resolve() in {d.resolve() for d in [*zoo_dirs(), store.models_dir()]}:  # the same rules
        problem = new_name_problem(out.name)
        if problem:
            _error(f"--out {out}: {problem}")
            raise typer.Exit(EXIT_USAGE)
    return import_release(src, out, name=name or out.name, config=config), name


@models_app.command("remove")
def models_remove(name: str = typer.Argument(..., help="The name of a model in your model store."),
                  debug: DebugOpt = False) -> None:
    """Delete a model from your model store ($SEPCLI_HOME/models).

    Shipped and SEPCLI_ZOO models are never removed (exit 2)."""
    from ..runtime import store
    from ..runtime.registry import USER, find_installed, installed_names

    entry = find_installed(name)
    if entry is None or name in entry.aliases and name not in (entry.name, entry.folder.name):
        _error(f"no installed model named {name!r} (installed: {installed_names()})")
        raise typer.Exit(EXIT_USAGE)
    if entry.source != USER:
        _error(f"{entry.name!r} is a {entry.source} model ({entry.folder}): only models in your model store "
               f"({store.models_dir()}) can be removed")
        raise typer.Exit(EXIT_USAGE)
    try:
        store.remove_model(entry.folder)
        was_default = store.get_user_default() == entry.name
    except OSError as exc:
        raise _fail(exc, debug) from None
    typer.echo(f"removed {entry.name} ({entry.folder})")
    if was_default:
        typer.echo(f"sepcli: warning: {entry.name!r} was your default model: run `sepcli models default --reset` "
                   "or choose another", err=True)


@models_app.command("default")
def models_default(name: str | None = typer.Argument(None, help="An installed model's name.",
                                                        show_default=False),
                   reset: bool = typer.Option(False, "--reset", help="Forget your default: `default` is the "
                                              "shipped model again."),
                   debug: DebugOpt = False) -> None:
    """Choose the model that `default` (and no -m) means for you; without NAME, say which it is and why.

    Kept in $SEPCLI_HOME/settings.json; the environment variable SEPCLI_MODEL overrides it."""
    from ..runtime import store
    from ..runtime.registry import DEFAULT, ModelNotFound, default_choice, find_installed, installed_names, resolve

    if name is not None and reset:
        _error("give NAME or --reset, not both")
        raise typer.Exit(EXIT_USAGE)
    try:
        if reset:
            had = store.reset_user_default()
            typer.echo("your default model is reset" if had else "no default model was set")
        elif name is not None:
            entry = find_installed(name) if name != DEFAULT else None
            if entry is None:
                why = ("'default' is what this command sets; use --reset for the shipped default" if name == DEFAULT
                       else f"no installed model named {name!r} (installed: {installed_names()})")
                _error(why)
                raise typer.Exit(EXIT_USAGE)
            store.set_user_default(entry.name)
            typer.echo(f"default model: {entry.name} ({entry.folder})")
        target, why = default_choice()
        folder = resolve(DEFAULT)
    except (store.SettingsError, ModelNotFound) as exc:  # the setting, not an argument, is wrong: exit 1 (not
        raise _fail(exc, debug, EXIT_FAILED) from None  # ModelNotFound's 2) for a default that names no model
    if name is None and not reset:
        label = {"SEPCLI_MODEL": "from SEPCLI_MODEL", "user setting": "your setting (sepcli models default)"}
        typer.echo(f"default model: {target or folder.name} ({folder}), {label.get(why, 'the alias default')}")
    elif why == "SEPCLI_MODEL":
        typer.echo(f"sepcli: warning: SEPCLI_MODEL={target} overrides it in this shell", err=True)


PULL_EXIT_HELP = ("Exit codes: 0 = installed (or already installed); 1 = failed (network, checksum, archive), nothing "
                  "installed; 2 = usage error (unknown name, missing --from file); 130 = interrupted (Ctrl-C), 143 = "
                  "terminated (SIGTERM): nothing installed, a partial download is resumed by the next pull.")


@models_app.command("pull", epilog=PULL_EXIT_HELP)
def models_pull(
    name: str = typer.Argument(..., help="Catalogue name, e.g. spmamba-libri2mix (`sepcli models` lists them)."),
    source: str | None = typer.Option(None, "--from", help="A mirror URL or a local copy of the release file "
                                      "(for machines without internet)."),
    force: bool = typer.Option(False, "--force", help="Download and install again over an installed copy."),
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Download a catalogue model and install it into the user store ($SEPCLI_HOME/models/NAME).

    The only command that uses the network: a progress bar on stderr (plain lines when stderr is not a terminal,
    nothing with -q), timeouts, retries, resume of a partial download; the sha256 is checked against a pinned one
    or printed and recorded in the model's provenance. On a slow link: SEPCLI_DOWNLOAD_TIMEOUT (seconds without
    data before a retry, default 30), SEPCLI_DOWNLOAD_RETRIES (default 3)."""
    from ..runtime.pull import pull

    try:
        with _interruptible():
            result = pull(name, source=source, force=force, quiet=quiet)
    except KeyboardInterrupt as exc:
        raise _interrupt_exit(exc, "nothing installed (pull again to resume the download)") from None
    except Exception as exc:  # noqa: BLE001 (PullError: its code; unexpected: 1, one line unless --debug)
        raise _fail(exc, debug) from None
    if result.already_installed:
        typer.echo(f"{name} is already installed in {result.folder} (--force downloads it again)")
        return
    if not quiet:
        for note in result.notes:
            typer.echo(f"sepcli: note: {note}", err=True)
    check = "matches the catalogue" if result.sha256_pinned else "recorded in its provenance"
    typer.echo(f"installed {name} in {result.folder} (sha256 {result.sha256}, {check}); "
               f"use it with `sepcli separate -m {name} ...`")


# ---------------------------------------------------------------------- bench
@app.command()
def bench(
    model: str = typer.Option("default", "-m", "--model", help="Zoo model name/alias or a model folder path."),
    seconds: float = typer.Option(30.0, min=0.1, max=3600.0, help="Length of the synthetic input in seconds "
                                  "(0.1-3600; it is held in memory)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = "auto",
    repeat: int = typer.Option(3, min=1, help="Timed runs after one warm-up (the median is reported)."),
    bound: bool = typer.Option(True, "--bound/--no-bound", help="Also count the network's FLOPs and scan updates, "
                               "measure this CPU's GEMM (fp32, bf16) and scan throughput, and print the lower bound "
                               "on the RTF they give and the measured RTF as a multiple of it (CPU only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    debug: DebugOpt = False,
) -> None:
    """Measure the real-time factor of a model on a synthetic input (RTF < 1 is faster than real time)."""
    from ..separate import SeparationOptions, bench_model

    sep = _make_separator(model, SeparationOptions(device=device, threads=threads, precision=precision), debug)
    try:
        fig = bench_model(sep, seconds=seconds, repeat=repeat)
        if bound:
            fig.update(_bound_figures(sep, fig["rtf_model"]))
    except MemoryError:
        raise _fail(MemoryError(f"out of memory for {seconds:g} s of input (try a smaller --seconds)"), debug,
                    EXIT_FAILED) from None
    if as_json:
        typer.echo(json.dumps(fig, indent=2))
        return
    width = max(map(len, fig))
    for k, v in fig.items():
        typer.echo(f"{k:>{width}}: {v}")


def _bound_figures(sep, measured_rtf: float) -> dict:
    """sepcli.runtime.roofline's figures for `bench` (a CPU network only)."""
    import torch

    if sep.device.type != "cpu" or not isinstance(sep.model.network, torch.nn.Module):
        return {"rtf_bound": "not measured (CPU networks only)"}
    from ..runtime.roofline import bound_figures

    return bound_figures(sep.model.network, sep.model.sample_rate, sep.precision.name, measured_rtf)


# ---------------------------------------------------------------------- train / eval
# >>> train / eval (thin wrappers over sepcli.train and sepcli.evaluate)
TRAIN_EXIT_HELP = ("Exit codes: 0 = done, or stopped by --max-minutes (checkpoint saved); 1 = failed; 2 = usage "
                   "error (bad option, unknown model, unusable data folder, a run folder without --resume); "
                   "130 = interrupted (Ctrl-C), 143 = terminated (SIGTERM): a checkpoint is saved, --resume goes on.")


# options of dynamic mixing (--pools), refused with --data, where they would be ignored
POOLS_ONLY = ("epoch_steps", "reverb", "noise", "real_share", "mixed_share", "person_power", "variants")


@app.command(epilog=TRAIN_EXIT_HELP)
def train(
    ctx: typer.Context,
    out: Path = typer.Option(..., "-o", "--out", help="Run folder: checkpoints (last.pt), log.jsonl, best/ model."),
    arch: str | None = typer.Option(None, help="Network configuration, e.g. s4m-tiny-16k, s4m-16k, spmamba-8k."),
    init: str | None = typer.Option(None, help="Start from this model (zoo name or folder) instead of --arch."),
    data: Path | None = typer.Option(None, help="LibriMix-style folder (mix/, s1/, s2/) to train on."),
    pools: Path | None = typer.Option(None, help="Speaker pools (recipes/make_data.py) for dynamic mixing."),
    val_data: Path | None = typer.Option(None, help="LibriMix-style folder for validation SI-SNRi."),
    sample_rate: int | None = typer.Option(None, help="Training rate (default: the configuration's)."),
    segment: float = typer.Option(2.0, min=0.01, help="Training segment length in seconds."),
    batch_size: int = typer.Option(4, min=1, help="Mixtures per step (per process under torchrun)."),
    steps: int | None = typer.Option(None, min=1, help="Total optimiser steps."),
    epochs: int | None = typer.Option(None, min=1, help="Epochs over --data (or of --epoch-steps with --pools)."),
    epoch_steps: int = typer.Option(500, min=1, help="With --pools: steps between validations."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (Adam), after warm-up; halves on plateaus."),
    resume: bool = typer.Option(False, help="Continue from OUT/last.pt (same step, identical state); without it "
                                "a folder holding a run is refused."),
    lr_scale: float | None = typer.Option(None, help="With --resume: set the lr to --lr times this from here on "
                                          "(e.g. after adding training data; it still halves on plateaus)."),
    name: str | None = typer.Option(None, help="Name of the exported model (default: the run folder's)."),
    threads: int | None = typer.Option(None, help="CPU threads (default: PyTorch's count, at most a container's CPU "
                                       "quota, lowered while other "
                                       "processes keep CPUs busy, and raised again when they stop)."),
    max_minutes: float | None = typer.Option(None, help="Stop cleanly with a checkpoint after this long."),
    reverb: float = typer.Option(0.0, help="With --pools: share of sources given synthetic reverberation."),
    noise: float = typer.Option(0.0, help="With --pools: share of mixtures given background noise."),
    real_share: float | None = typer.Option(None, help="With --pools: chance each source is a real recorded "
                                            "person (default: persons drawn uniformly)."),
    mixed_share: float | None = typer.Option(None, min=0.0, max=1.0, help="With --real-share: chance of a "
                                             "real+synthetic pair; the other mixtures pair two real or two "
                                             "synthetic persons (default: each source drawn independently)."),
    person_power: float = typer.Option(0.0, min=0.0, max=1.0, help="With --pools: draw persons with probability "
                                       "proportional to their seconds of speech to this power (0: every person "
                                       "alike; 1: by amount of audio; 0.5: in between)."),
    variants: bool = typer.Option(False, "--variants", help="With --pools: also train on the pools' voice "
                                  "variants (each real person with formants and pitch shifted; recipes/make_data.py "
                                  "--stage variants)."),
    ema: float | None = typer.Option(None, help="Validate and export a moving average of "
                                     "the weights with this decay per step (e.g. 0.999: about the last 1000 "
                                     "steps) instead of the raw weights; log.jsonl also shows the raw score."),
    bf16: bool = typer.Option(False, help="bfloat16 autocast on CPU (for CPUs with AMX/AVX512-BF16)."),
    compile_net: bool = typer.Option(False, "--compile", help="torch.compile the training step's network "
                                     "(a one-off compile of a few minutes; needs a C++ compiler on CPU; "
                                     "faster or slower depending on the machine: time a few steps first)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
    debug: DebugOpt = False,
) -> None:
    """Train a separation network (negative SI-SNR with PIT). Checkpoints every few minutes and on Ctrl-C;
    `torchrun --nproc_per_node N $(which sepcli) train ...` trains data-parallel (gloo on CPU, nccl on GPU).
    OUT/best/ is the model of the best validation so far, or the latest weights without --val-data."""
    from ..train.trainer import TrainConfig, TrainError
    from ..train.trainer import train as run_training

    from ..train.checkpoint import resumed_config

    kw = dict(out=out, arch=arch, init=init, data=data, pools=pools, val_data=val_data,
              sample_rate=sample_rate, segment=segment, batch_size=batch_size, steps=steps, epochs=epochs,
              epoch_steps=epoch_steps, lr=lr, resume=resume, lr_scale=lr_scale, name=name, threads=threads,
              max_minutes=max_minutes, reverb_prob=reverb, noise_prob=noise, real_share=real_share,
              mixed_share=mixed_share, person_power=person_power, variants=variants, ema=ema, bf16=bf16,
              compile=compile_net, quiet=quiet)
    sources = {p: getattr(ctx.get_parameter_source(p), "name", "DEFAULT") for p in ctx.params}
    given = {p for p, src in sources.items() if src not in ("DEFAULT", "DEFAULT_MAP")}
    try:
        renamed = {"reverb": "reverb_prob", "noise": "noise_prob", "compile_net": "compile"}  # TrainConfig's names
        cfg = resumed_config(TrainConfig(**kw), {renamed.get(p, p) for p in given})  # --resume: the run's options
        mixing = [f"--{p.replace('_', '-')}" for p in POOLS_ONLY if p in given]
        if cfg.data and mixing:  # they would be ignored
            raise TrainError(f"{', '.join(mixing)} apply to dynamic mixing (--pools) only; with --data the "
                             "mixtures are the folder's and an epoch is one pass over it")
        result = run_training(cfg)
    except OSError as exc:  # the run folder cannot be created or written (permissions, read-only, full)
        from ..audio.io import os_problem

        where = exc.filename if exc.filename is not None else out
        raise _fail(OSError(f"{where}: {os_problem(exc)}"), debug, EXIT_FAILED) from None
    except Exception as exc:  # noqa: BLE001 (one line, not a traceback, unless --debug)
        # the error's own code (TrainError, DataError 2; TrainDiverged 1; --init's ModelError 1, UnknownModel 2);
        # any other ValueError is a bad option value (2)
        code = exit_code_of(exc, EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED)
        raise _fail(exc, debug, code) from None
    if result.get("rank", 0) != 0:  # under torchrun rank 0 reports for the run
        if result.get("signal") and result["stopped"]:
            raise typer.Exit(128 + int(result["signal"]))
        return
    state = "stopped (resume with --resume)" if result["stopped"] else "done"
    best = result["best"]
    model_dir = result["export"] if Path(result["export"]).is_dir() else "none yet (no validation has scored)"
    typer.echo(f"{state} at step {result['step']}/{result['total']}; best validation SI-SNRi "
               f"{'-' if best == float('-inf') else f'{best:.2f} dB'}; model: {model_dir}", err=True)
    if result.get("signal") and result["stopped"]:  # stopped by Ctrl-C or SIGTERM (checkpoint saved): scripts must
        raise typer.Exit(128 + int(result["signal"]))  # tell it from done (a signal after the last step stops nothing)


EVAL_EXIT_HELP = ("Exit codes: 0 = every mixture scored; 1 = a mixture could not be read or scored (one line "
                  "names each; the figures and the CSV cover the others), or the model could not be loaded; 2 = "
                  "usage error (bad option, unknown model, not a LibriMix folder, unwritable --csv); 130 = "
                  "interrupted (Ctrl-C), 143 = terminated (SIGTERM): no CSV is written.")


@app.command("eval", epilog=EVAL_EXIT_HELP)
def eval_cmd(
    data_dir: Path = typer.Argument(..., help="LibriMix-style folder: mix/, s1/, s2/ (same file names)."),
    model: str = typer.Option("default", "-m", "--model", help="Zoo model name/alias or a model folder path."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write per-file scores to this CSV."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (and per-file scores) as JSON."),
    sdr: bool = typer.Option(True, "--sdr/--no-sdr", help="Also compute BSS-eval SDR(i) (slower)."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N mixtures."),
    segment: float | None = typer.Option(None, help=SEGMENT_HELP),
    overlap: float | None = typer.Option(None, help=OVERLAP_HELP),
    shifts: ShiftsOpt = 1,
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = "auto",
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
    debug: DebugOpt = False,
) -> None:
    """Score a model: SI-SNRi and SDRi (permutation-matched, against the mixture) through the same pipeline
    as `separate`. Prints mean and median, per speaker pair when metadata.csv names them."""
    from ..evaluate import NothingScored, evaluate
    from ..separate import SeparationOptions

    sep = _make_separator(model, SeparationOptions(segment=segment, overlap=overlap, shifts=shifts, device=device,
                                                   threads=threads, precision=precision), debug)
    console = _stderr_console(quiet)
    try:
        with _interruptible():
            if console is not None:
                from rich.progress import Progress

                with Progress(console=console, transient=True) as bar:
                    task = bar.add_task("evaluating", total=None)
                    res = evaluate(sep, data_dir, csv_out, sdr, limit,
                                   progress=lambda i, n: bar.update(task, completed=i, total=n))
            else:
                res = evaluate(sep, data_dir, csv_out, sdr, limit)
    except KeyboardInterrupt as exc:
        raise _interrupt_exit(exc, "no scores written") from None
    except NothingScored as exc:  # every mixture named, one line each (and in the JSON a script reads)
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        for f in exc.failed:
            _error(f["error"])
        if as_json and exc.summary is not None:
            typer.echo(json.dumps({"model": sep.model.name, **exc.summary}, indent=2, default=_json_default))
        raise typer.Exit(EXIT_FAILED) from None
    except Exception as exc:  # noqa: BLE001 (DataError: 2; a missing data folder is a bad argument too)
        code = exit_code_of(exc, EXIT_USAGE if isinstance(exc, FileNotFoundError) else EXIT_FAILED)
        raise _fail(exc, debug, code) from None
    for f in res["failed"]:  # one line each; the figures cover the other mixtures
        _error(f["error"])
    code = EXIT_FAILED if res["failed"] else EXIT_OK
    if as_json:
        typer.echo(json.dumps({"model": sep.model.name, "runtime": sep.runtime_info(), **res}, indent=2,
                              default=_json_default))
        raise typer.Exit(code)
    res.pop("files")
    not_scored = f", {len(res['failed'])} could not be scored" if res["failed"] else ""
    lines = [f"{sep.model.name} on {res['data']} ({res['n']} mixtures{not_scored})"]

    def db(v, width):
        return f"{'-':>{width}s}" if v is None else f"{v:{width}.2f}"

    for key in ("si_snri", "sdri", "si_snr", "sdr"):
        if key in res:
            st = res[key]
            skipped = f"   ({res['n'] - st['n']} files without a finite score)" if st["n"] < res["n"] else ""
            lines.append(f"  {key:8s} mean {db(st['mean'], 7)} dB   median {db(st['median'], 7)} dB{skipped}")
    for pair, r in res.get("pairs", {}).items():
        lines.append(f"  {pair:32s} n={r['n']:3d}  SI-SNRi {db(r['si_snri']['mean'], 6)} dB")
    typer.echo("\n".join(lines))
    raise typer.Exit(code)
# <<<
