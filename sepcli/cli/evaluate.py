"""`sepcli eval`: a model scored on a LibriMix-style folder by sepcli.evaluate, the figures printed."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import typer

from ..errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, exit_code_of
from .interrupts import _interrupt_exit, _interruptible
from .main import app
from .options import OVERLAP_HELP, SEGMENT_HELP, DebugOpt, PrecisionOpt, ShiftsOpt, ThreadsOpt, _make_separator
from .output import _error, _fail, _json_default, _stderr_console


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
    typer.echo(_figures_text(sep.model.name, res))
    raise typer.Exit(code)


def _figures_text(model_name: str, res: dict) -> str:
    """eval's figures for a reader: mean and median of each score, then SI-SNRi per speaker pair."""
    not_scored = f", {len(res['failed'])} could not be scored" if res["failed"] else ""
    lines = [f"{model_name} on {res['data']} ({res['n']} mixtures{not_scored})"]

    def db(v, width):
        return f"{'-':>{width}s}" if v is None else f"{v:{width}.2f}"

    for key in ("si_snri", "sdri", "si_snr", "sdr"):
        if key in res:
            st = res[key]
            skipped = f"   ({res['n'] - st['n']} files without a finite score)" if st["n"] < res["n"] else ""
            lines.append(f"  {key:8s} mean {db(st['mean'], 7)} dB   median {db(st['median'], 7)} dB{skipped}")
    for pair, r in res.get("pairs", {}).items():
        lines.append(f"  {pair:32s} n={r['n']:3d}  SI-SNRi {db(r['si_snri']['mean'], 6)} dB")
    return "\n".join(lines)
