"""`sepcli separate` and `sepcli batch`: the inputs and the output folder checked, then sepcli.separate's
Separator (per input) or separate_batch (a folder) does the work."""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

import typer

from ..errors import EXIT_USAGE
from .interrupts import _interrupt_exit, _interruptible
from .main import EXIT_HELP, app
from .options import (NAME_DEFAULT, BatchSizeOpt, ChannelOpt, DebugOpt, DeviceOpt, DropSilentOpt, FormatOpt,
                      JsonOpt, LoudnessOpt, ModelOpt, NameOpt, OverlapOpt, PrecisionOpt, QuietOpt, SampleRateOpt,
                      SegmentOpt, ShiftsOpt, SubtypeOpt, ThreadsOpt, _make_separator, _options)
from .output import _error, _fail, _progress, _stderr_console
from .summary import _emit, _report


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
