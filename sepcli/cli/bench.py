"""`sepcli bench`: the real-time factor of a model (sepcli.separate.bench_model) and, on a CPU, the lower bound
sepcli.runtime.roofline gives for it."""

from __future__ import annotations

import json

import typer

from ..errors import EXIT_FAILED
from .main import app
from .options import DebugOpt, OverlapOpt, PrecisionOpt, SegmentOpt, ThreadsOpt, _make_separator
from .output import _fail


@app.command()
def bench(
    model: str = typer.Option("default", "-m", "--model", help="Zoo model name/alias or a model folder path."),
    seconds: float = typer.Option(30.0, min=0.1, max=3600.0, help="Length of the synthetic input in seconds "
                                  "(0.1-3600; it is held in memory)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = "auto",
    repeat: int = typer.Option(3, min=1, help="Timed runs after one warm-up (the median is reported)."),
    segment: SegmentOpt = None,
    overlap: OverlapOpt = None,
    bound: bool = typer.Option(True, "--bound/--no-bound", help="Also count the network's FLOPs and scan updates, "
                               "measure this CPU's GEMM (fp32, bf16) and scan throughput, and print the lower bound "
                               "on the RTF they give and the measured RTF as a multiple of it (CPU only): for one "
                               "pass per second of audio (single_pass_*) and for the overlapping segments the "
                               "pipeline runs on this input (as_run_*)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    debug: DebugOpt = False,
) -> None:
    """Measure the real-time factor of a model on a synthetic input (RTF < 1 is faster than real time)."""
    from ..separate import SeparationOptions, bench_model

    opts = SeparationOptions(device=device, threads=threads, precision=precision, segment=segment, overlap=overlap)
    sep = _make_separator(model, opts, debug)
    try:
        fig = bench_model(sep, seconds=seconds, repeat=repeat)
        if bound:
            fig.update(_bound_figures(sep, fig["rtf_model"], seconds))
    except MemoryError:
        raise _fail(MemoryError(f"out of memory for {seconds:g} s of input (try a smaller --seconds)"), debug,
                    EXIT_FAILED) from None
    if as_json:
        typer.echo(json.dumps(fig, indent=2))
        return
    width = max(map(len, fig))
    for k, v in fig.items():
        typer.echo(f"{k:>{width}}: {v}")


def _bound_figures(sep, measured_rtf: float, seconds: float) -> dict:
    """sepcli.runtime.roofline's figures for `bench` (a CPU network only): single pass, and as run on the
    `seconds` of synthetic input bench_model separated (its length in samples as bench_model makes it)."""
    import torch

    if sep.device.type != "cpu" or not isinstance(sep.model.network, torch.nn.Module):
        return {"single_pass_rtf_bound": "not measured (CPU networks only)"}
    from ..runtime.roofline import bound_figures
    from ..separate.bench import synthetic_length

    n = synthetic_length(seconds, sep.model.sample_rate)
    return bound_figures(sep.model.network, sep.model.sample_rate, sep.precision.name, measured_rtf,
                         passes=sep.network_passes(n), audio_samples=n)
