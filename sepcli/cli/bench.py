"""`sepcli bench`: the real-time factor of a model (sepcli.separate.bench_model) and, on a CPU, the lower bound
sepcli.runtime.roofline gives for it."""

from __future__ import annotations

import json

import typer

from ..errors import EXIT_FAILED
from .main import app
from .options import DebugOpt, PrecisionOpt, ThreadsOpt, _make_separator
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
