"""The options `separate`, `batch`, `bench` and `eval` share (one declaration each), and the Separator they
build: options -> SeparationOptions -> Separator, a usage error exiting 2 before any work."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Optional

import typer

from ..errors import EXIT_USAGE
from .output import _fail
from .startup_gc import heavy_imports


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


def _options(segment, overlap, batch_size, shifts, channel, sample_rate, fmt, subtype, name, loudness, drop_silent,
             overwrite, device, threads, precision="auto"):
    with heavy_imports():  # the first import of torch, numpy and the audio libraries in `separate` and `batch`
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
        with heavy_imports():  # the network's modules, its objects and weights: alive until the process ends
            return Separator(model, opts)
    except UsageError as exc:
        raise _fail(exc, debug, EXIT_USAGE) from None
    except ModelError as exc:  # exit 2 for an unknown model (UnknownModel), 1 for one that cannot be loaded
        raise _fail(exc, debug) from None
