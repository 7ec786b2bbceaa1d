"""What a training run is asked to do (`TrainConfig`), the errors it can end with, and the checks of both that
run before anything is written: a usage error must leave no half-made run folder behind."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..audio.io import MAX_RATE, MIN_RATE
from ..errors import EXIT_FAILED, UsageError
from .data import LibriMixDataset


@dataclass
class TrainConfig:
    """Every option of a run. The checkpoint keeps it (as JSON, folders absolute) so that `--resume` alone
    continues the run with its own options and can name those given differently."""

    out: Path
    arch: str | None = None             # a named network configuration (sepcli.nets.configs)
    init: str | None = None             # or a model (name or folder) to fine-tune
    arch_args: dict = field(default_factory=dict)  # overrides of the named configuration's arguments
    data: Path | None = None            # LibriMix-style folder
    pools: Path | None = None           # or speaker pools for dynamic mixing
    val_data: Path | None = None        # LibriMix-style folder for validation SI-SNRi
    sample_rate: int | None = None
    segment: float = 2.0
    batch_size: int = 4
    steps: int | None = None
    epochs: int | None = None
    epoch_steps: int = 500              # with dynamic mixing: steps between validations
    lr: float = 1e-3
    clip: float = 5.0
    warmup: int = 200
    patience: int = 4                   # validations without improvement before the lr halves
    seed: int = 0
    ckpt_minutes: float = 5.0
    max_minutes: float | None = None    # stop cleanly (checkpoint) after this wall time
    resume: bool = False
    continue_init: bool = False         # with --init: also take the step and lr schedule from its provenance
    lr_scale: float | None = None       # when continuing: set the schedule's lr scale (e.g. after new training
                                        # data) and restart its patience count; None keeps the saved scale
    reverb_prob: float = 0.0
    noise_prob: float = 0.0
    speed: float = 0.15
    real_share: float | None = None     # with --pools: chance each source is a real recorded person
    mixed_share: float | None = None    # with real_share: chance of a real+synthetic pair (else same-kind pairs)
    person_power: float = 0.0           # with pools: persons drawn ∝ seconds**person_power (0: uniformly)
    variants: bool = False              # with pools: also draw the pools' voice variants (kind "variant")
    ema: float | None = None            # decay of a moving average of the weights (e.g. 0.999) that is validated
                                        # and exported instead of the raw weights (sepcli.train.ema)
    name: str | None = None             # exported model name
    threads: int | None = None          # None: PyTorch's count, lowered while other processes keep CPUs busy
                                        # (runtime.device.ThreadGovernor; not with OMP_NUM_THREADS, e.g. torchrun)
    bf16: bool = False
    compile: bool = False               # torch.compile the training forward (validation stays eager). On this
                                        # 2-core CPU: 16 % faster at 1 thread, 12 % slower at 2; measure first
    val_limit: int | None = None
    log_every: int = 10
    quiet: bool = False


class TrainError(UsageError, RuntimeError):
    """Options that cannot train (exit 2)."""


class TrainDiverged(TrainError):
    """The loss became NaN/Inf: a failure of the run (exit 1), not a usage error."""

    exit_code = EXIT_FAILED


def data_warnings(cfg: TrainConfig, ds: LibriMixDataset, per_step: int) -> list[str]:
    """What about a --data folder trains other than a user would guess (it still trains)."""
    out = []
    if len(ds) < per_step:
        out.append(f"{cfg.data} holds {len(ds)} mixtures, fewer than a step's {per_step}: mixtures repeat within "
                   "each step (a smaller --batch-size trains as fast per mixture)")
    longest = ds.summary["longest"]
    if cfg.segment > longest + 1e-6:
        out.append(f"--segment {cfg.segment:g} s is longer than every mixture of {cfg.data} (the longest lasts "
                   f"{longest:.2f} s): every crop is zero-padded to it")
    if ds.summary["other_rate"]:
        out.append(f"{ds.summary['other_rate']}: sources are resampled to their mixture's rate")
    other = [r for r in ds.summary["rates"] if r != ds.sample_rate]
    if other:
        out.append(f"{cfg.data} holds mixtures at {', '.join(map(str, other))} Hz: they are resampled to the "
                   f"network's {ds.sample_rate} Hz (an --arch or --sample-rate at the data's rate trains on it as is)")
    return out


def check_config(cfg: TrainConfig) -> None:
    """Usage errors, found before anything is written (TrainError, one line)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"{out}: --out must name a folder, but this is a file")
    if cfg.data and cfg.pools:
        raise TrainError("give --data (a LibriMix-style folder) or --pools (speaker pools), not both")
    if not cfg.data and not cfg.pools:
        raise TrainError("give --data (LibriMix-style folder) or --pools (speaker pools for dynamic mixing)")
    if cfg.init and cfg.arch:
        raise TrainError("give --arch (a new network) or --init (a model to start from), not both")
    for opt, value, low in (("--batch-size", cfg.batch_size, 1), ("--steps", cfg.steps, 1),
                            ("--epochs", cfg.epochs, 1), ("--epoch-steps", cfg.epoch_steps, 1)):
        if value is not None and value < low:
            raise TrainError(f"{opt} must be at least {low}, got {value}")
    if cfg.steps is not None and cfg.epochs is not None:
        raise TrainError("give --steps or --epochs, not both")
    if cfg.lr_scale is not None and not (cfg.resume or cfg.continue_init):
        raise TrainError("--lr-scale changes the lr of a run being continued: give it with --resume (a new run "
                         "takes --lr)")
    if not cfg.segment > 0:
        raise TrainError(f"--segment must be positive, got {cfg.segment}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise TrainError(f"--lr must be a positive number, got {cfg.lr}")
    if cfg.sample_rate is not None and not (MIN_RATE <= cfg.sample_rate <= MAX_RATE):
        raise TrainError(f"--sample-rate must be between {MIN_RATE} and {MAX_RATE} Hz, got {cfg.sample_rate}")
    if cfg.threads is not None and cfg.threads < 1:
        raise TrainError(f"--threads must be at least 1, got {cfg.threads}")
    if cfg.max_minutes is not None and not cfg.max_minutes >= 0:  # 0: one step, then a checkpoint
        raise TrainError(f"--max-minutes must not be negative, got {cfg.max_minutes}")
    for held in ("last.pt", "log.jsonl"):  # a run's log without its checkpoint is still that run's folder
        if (out / held).exists() and not cfg.resume:
            raise TrainError(f"{out}: holds a run already ({held}); continue it with --resume or choose another --out")
    if cfg.resume and not cfg.continue_init and not (out / "last.pt").exists():
        for held in ("log.jsonl", "best"):  # --resume would start again from step 0 over the run's best/
            if (out / held).exists():
                raise TrainError(f"{out}: holds a run ({held}) but no checkpoint (last.pt) to resume from; choose "
                                 "another --out (or move the folder away to start again)")

