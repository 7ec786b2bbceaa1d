"""`sepcli train`: the options become sepcli.train's TrainConfig (with --resume, the run's own options), the
trainer runs, and one line says where it stopped."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import EXIT_FAILED, EXIT_USAGE, exit_code_of
from .main import app
from .options import DebugOpt
from .output import _fail


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
