"""Training loop: PIT SI-SNR, Adam, clipping, warm-up + plateau-halving schedule, exact checkpoint/resume, DDP.

Resumability: every batch is a pure function of (seed, global step, rank) — dynamic mixtures are drawn with
rng(seed, index) and LibriMix folders are visited in a per-epoch permutation drawn from rng(seed, epoch) — so a
run resumed from a checkpoint (weights, Adam state, schedule state, step, torch RNG) continues exactly as a run
that never stopped. Under torchrun the global batch is split across ranks by index (each rank takes its own
slice of every step's indices: a distributed sampler without state), gradients are averaged by DDP (gloo on
CPU, nccl on CUDA), and rank 0 validates, checkpoints and exports.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import metrics
from ..audio.io import MAX_RATE, MIN_RATE
from ..nets import build_network, named_config
from ..runtime.device import ThreadGovernor, omp_threads_fixed
from .data import DataError, DynamicMixDataset, LibriMixDataset
from .ema import WeightAverage
from .export import export_model_folder
from .mixing import MixOptions


@dataclass
class TrainConfig:
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


class TrainError(RuntimeError):
    pass


class TrainDiverged(TrainError):
    """The loss became NaN/Inf: a failure of the run (exit 1), not a usage error."""


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


def _any_rank(world: int, *flags: bool) -> list[bool]:
    """Each flag, true when it is true on any rank (one all_reduce under torchrun): ranks decide together."""
    if world == 1:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags])
    dist.all_reduce(t)
    return [bool(v > 0) for v in t.tolist()]


def _step_summary(world: int, loss: float, stop: bool) -> tuple[float, bool, bool]:
    """(the step's loss averaged over the ranks' equal shares of the batch, whether any rank's loss is not
    finite, whether any rank must stop): one all_reduce under torchrun."""
    finite = math.isfinite(loss)
    if world == 1:
        return loss, not finite, stop
    t = torch.tensor([loss if finite else 0.0, 0.0 if finite else 1.0, 1.0 if stop else 0.0], dtype=torch.float64)
    dist.all_reduce(t)
    mean, bad, halt = t.tolist()
    return (mean / world if bad == 0 else math.nan), bad > 0, halt > 0


def _dist() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _build(cfg: TrainConfig) -> tuple[torch.nn.Module, str, dict, int]:
    if cfg.init:
        from ..runtime.loader import load_model

        loaded = load_model(cfg.init)
        if cfg.sample_rate is not None and cfg.sample_rate != loaded.sample_rate:
            raise TrainError(f"--init {cfg.init} is a {loaded.sample_rate} Hz model; --sample-rate {cfg.sample_rate} "
                             "would need a new network (--arch)")
        args = dict(loaded.config["arch_args"])
        if not cfg.arch_args or {**args, **cfg.arch_args} == args:
            return loaded.network, loaded.arch, args, loaded.sample_rate
        # overrides that keep the weights' shapes (e.g. S4M's num_blocks, passes of its shared block): the same
        # weights in the network built with them
        if cfg.arch_args.get("sample_rate", loaded.sample_rate) != loaded.sample_rate:
            raise TrainError(f"--init {cfg.init} is a {loaded.sample_rate} Hz model; another sample_rate would need "
                             "a new network (--arch)")
        args.update(cfg.arch_args)
        try:
            net = build_network(loaded.arch, args)
        except (TypeError, ValueError) as exc:
            raise TrainError(f"--init {cfg.init}: arch_args {cfg.arch_args} do not fit arch {loaded.arch!r} "
                             f"({' '.join(str(exc).split())[:200]})") from None
        try:
            net.load_state_dict(loaded.network.state_dict())
        except RuntimeError as exc:
            raise TrainError(f"--init {cfg.init}: arch_args {cfg.arch_args} change the network's weights, which "
                             f"then do not load ({' '.join(str(exc).split())[:200]})") from None
        return net, loaded.arch, args, loaded.sample_rate
    if not cfg.arch:
        raise TrainError("give --arch (a network configuration) or --init (a model to start from)")
    arch, args, sr = named_config(cfg.arch)
    args.update(cfg.arch_args)
    if cfg.sample_rate is not None and cfg.sample_rate != sr:
        sr = cfg.sample_rate
        if "sample_rate" in args:
            args["sample_rate"] = sr
    return build_network(arch, args), arch, args, sr


class Schedule:
    """lr = base * min(1, (step+1)/warmup) * scale; scale halves after `patience` validations without a new best."""

    def __init__(self, base: float, warmup: int, patience: int):
        self.base, self.warmup, self.patience = base, warmup, patience
        self.scale, self.best, self.bad = 1.0, -math.inf, 0
        self.warmup_from = 0  # a run continued from weights alone warms up again from here
        self.val_id: str | None = None  # fingerprint of the validation set that `best` was measured on

    def lr(self, step: int) -> float:
        return self.base * min(1.0, (step - self.warmup_from + 1) / max(1, self.warmup)) * self.scale

    def validated(self, score: float) -> bool:
        """Record a validation score; True when it is a new best."""
        if score > self.best:
            self.best, self.bad = score, 0
            return True
        self.bad += 1
        if self.bad >= self.patience:
            self.scale, self.bad = self.scale * 0.5, 0
        return False

    def use_validation_set(self, val_id: str | None) -> bool:
        """Bind the best score to a validation set. A different (or unrecorded) set than the one `best` was
        measured on restarts the best score and the patience count; the lr scale is kept. True if it did."""
        changed = val_id != self.val_id and (self.val_id is not None or math.isfinite(self.best))
        if changed:
            self.best, self.bad = -math.inf, 0
        self.val_id = val_id
        return changed

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best if math.isfinite(self.best) else None, "bad": self.bad,
                "warmup_from": self.warmup_from, "val_id": self.val_id}

    def load_state_dict(self, d: dict) -> None:
        best = d.get("best")
        self.scale, self.best, self.bad = float(d["scale"]), -math.inf if best is None else float(best), int(d["bad"])
        self.warmup_from = int(d.get("warmup_from", 0))
        self.val_id = d.get("val_id")


def batch_indices(step: int, rank: int, world: int, batch: int, n_items: int | None, seed: int,
                  steps_per_epoch: int | None) -> list[int]:
    """The dataset indices of one rank's share of a global step (pure function: exact resume, no overlap)."""
    if n_items is None:  # dynamic mixing: every index is a new mixture
        base = (step * world + rank) * batch
        return list(range(base, base + batch))
    epoch, pos = divmod(step, steps_per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_items)
    start = (pos * world + rank) * batch
    return [int(perm[(start + j) % n_items]) for j in range(batch)]


@torch.no_grad()
def validate(model: torch.nn.Module, ds: LibriMixDataset, batch: int = 4, limit: int | None = None,
             should_stop=None) -> dict | None:
    """Mean SI-SNR and SI-SNRi (dB) of the model on whole validation mixtures (PIT-matched); None when
    `should_stop()` turns true between batches (a signal: the run stops without waiting for the whole set).
    Mixtures with a silent source are left out, as `sepcli eval` leaves them out (their SI-SNR is only its
    epsilon's); `n` counts the mixtures scored."""
    was = model.training
    model.eval()
    n = len(ds) if limit is None else min(limit, len(ds))
    vals, imps = [], []
    for i in range(0, n, batch):
        if should_stop is not None and should_stop():
            model.train(was)
            return None
        by_length: dict[int, list] = {}  # whole files: only mixtures of one length share a forward pass
        for j in range(i, min(n, i + batch)):
            m, src = ds[j]
            if not metrics.silent_reference(src[:, : m.shape[-1]].numpy(), m.numpy()):
                by_length.setdefault(m.shape[-1], []).append((m, src))
        for items in by_length.values():
            mix = torch.stack([m for m, _ in items])
            ref = torch.stack([s[:, : m.shape[-1]] for m, s in items])
            est = model(mix)
            score, _ = metrics.pit_si_snr(est, ref)
            base = metrics.si_snr(mix.unsqueeze(1).expand_as(ref), ref).mean(-1)
            vals += score.tolist()
            imps += (score - base).tolist()
    model.train(was)
    if not vals:
        raise DataError(f"{ds.folder}: no validation mixture can be scored (each has a silent source)")
    return {"si_snr": float(np.mean(vals)), "si_snri": float(np.mean(imps)), "n": len(vals)}


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, mix: torch.Tensor, ref: torch.Tensor,
               clip: float, autocast=None) -> torch.Tensor:
    """One optimisation step: forward, PIT SI-SNR loss, backward, gradient clipping, Adam. Returns the loss."""
    with autocast if autocast is not None else _null():
        est = net(mix)
    loss = metrics.pit_loss(est.float(), ref)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()
    return loss


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(state, tmp)
    except RuntimeError as exc:  # torch's C++ writer: "open file failed with strerror: Permission denied", ...
        tmp.unlink(missing_ok=True)
        why = str(exc).rsplit("strerror:", 1)[-1].strip() if "strerror:" in str(exc) else " ".join(str(exc).split())
        raise OSError(f"cannot write the checkpoint ({why})") from None
    os.replace(tmp, path)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state()}


# options whose change on --resume makes it no longer the same run (--lr-scale is the way to change the rate; the
# network itself is compared with the checkpoint's)
RUN_OPTIONS = ("data", "pools", "sample_rate", "segment", "batch_size", "lr", "reverb_prob",
               "noise_prob", "real_share", "mixed_share", "person_power", "variants", "ema")


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


def _load_checkpoint(path: Path) -> dict:
    """A run's last.pt, loaded without unpickling code; TrainError naming it when it cannot be read."""
    from ..runtime.loader import torch_load_problem

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (a truncated zip, a pickle with foreign globals, ...)
        why = torch_load_problem(exc)
    else:
        if isinstance(state, dict) and {"model", "optimizer", "step", "arch"} <= set(state):
            return state
        why = "not a sepcli training checkpoint"
    raise TrainError(f"{path}: not a readable training checkpoint ({why}); move it away to start again")


# what `--resume` takes from the run's checkpoint when the command line does not give it again
RESUMED_OPTIONS = ("arch", "init", "data", "pools", "val_data", "sample_rate", "segment", "batch_size", "steps",
                   "epochs", "epoch_steps", "lr", "reverb_prob", "noise_prob", "real_share", "mixed_share",
                   "person_power", "variants", "ema", "name", "val_limit")
_EITHER = (("arch", "init"), ("data", "pools"), ("steps", "epochs"))  # giving one of a pair replaces both


def saved_options(out: Path, given: set[str]) -> dict:
    """The options OUT/last.pt's run was started with, for those of RESUMED_OPTIONS not in `given` (the
    TrainConfig fields given on the command line), so `sepcli train -o RUN --resume` alone continues the run.
    {} when there is no checkpoint."""
    ckpt = Path(out) / "last.pt"
    if not ckpt.is_file():
        return {}
    saved = json.loads(_load_checkpoint(ckpt).get("config") or "{}")
    skip = set(given)
    for pair in _EITHER:
        if skip & set(pair):
            skip |= set(pair)
    found = {}
    for k in RESUMED_OPTIONS:
        if k in skip or k not in saved:
            continue
        v = saved[k]
        found[k] = Path(v) if k in ("data", "pools", "val_data") and v is not None else v
    # runs of earlier versions: --sample-rate 0 meant the configuration's rate; --steps won over --epochs
    if found.get("sample_rate") == 0:
        found["sample_rate"] = None
    if found.get("steps") is not None and found.get("epochs") is not None:
        found["epochs"] = None
    return found


def _changed_options(saved_json: str | None, cfg: TrainConfig) -> list[str]:
    """'batch_size 4 -> 2' for each RUN_OPTIONS entry that differs from the checkpoint's saved configuration."""
    try:
        saved = json.loads(saved_json) if saved_json else {}
    except ValueError:
        return []
    saved, now = _absolute_folders(saved), _saved_config(cfg)  # older checkpoints kept folders as given
    return [f"{k} {saved[k]} -> {now[k]}" for k in RUN_OPTIONS if k in saved and saved[k] != now.get(k)]


def _changed_facts(saved: dict | None, now: dict) -> list[str]:
    """What changed around a resumed run that its options do not show (checkpoints from before these were
    recorded compare nothing)."""
    if not saved:
        return []
    out = []
    if saved.get("world") != now["world"]:
        out.append(f"processes {saved.get('world')} -> {now['world']} (mixtures per step "
                   f"{saved.get('batch_per_step')} -> {now['batch_per_step']})")
    if saved.get("data_items") is not None and now["data_items"] is not None:
        if saved["data_items"] != now["data_items"]:
            out.append(f"data folder's mixtures {saved['data_items']} -> {now['data_items']}")
        elif saved.get("data_names") != now["data_names"]:
            out.append("data folder's mixtures: same number, other files")
    return out


def _saved_config(cfg: TrainConfig) -> dict:
    """The run's configuration as its checkpoint keeps it: JSON, folders absolute (so `--resume` from another
    working directory finds them, and a folder given relative or absolute compares equal)."""
    return _absolute_folders(json.loads(json.dumps(asdict(cfg), default=str)))


def _absolute_folders(d: dict) -> dict:
    for k in ("data", "pools", "val_data", "init"):
        if d.get(k) and (k != "init" or Path(d[k]).exists()):  # init may be a zoo name
            d[k] = os.path.abspath(d[k])
    return d


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training. Returns a summary dict (steps, best validation, export folder; `signal` when
    SIGINT or SIGTERM stopped it)."""
    check_config(cfg)
    rank, world = _dist()
    torch.set_flush_denormal(True)
    governor = None
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    elif not omp_threads_fixed():
        governor = ThreadGovernor()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    ckpt_path = out / "last.pt"

    model, arch, arch_args, sr = _build(cfg)
    n_src = getattr(model, "n_src", 2)
    opts = MixOptions(n_src=n_src, seconds=cfg.segment, reverb_prob=cfg.reverb_prob, noise_prob=cfg.noise_prob,
                      speed=cfg.speed, real_share=cfg.real_share, mixed_share=cfg.mixed_share,
                      person_power=cfg.person_power)
    if cfg.data:
        ds = LibriMixDataset(cfg.data, sr, cfg.segment, cfg.seed)
        n_items = len(ds)
        steps_per_epoch = max(1, n_items // (cfg.batch_size * world))
        if rank == 0:
            for warning in data_warnings(cfg, ds, cfg.batch_size * world):
                print(f"warning: {warning}", file=sys.stderr)
    else:  # --pools (check_config: exactly one of the two)
        ds = DynamicMixDataset(cfg.pools, sr, opts, "train", seed=cfg.seed, variants=cfg.variants)
        n_items, steps_per_epoch = None, cfg.epoch_steps
    total = cfg.steps or (cfg.epochs or 1) * steps_per_epoch
    val_ds = LibriMixDataset(cfg.val_data, sr) if cfg.val_data else None
    # reads every file validated on: a bad one (no samples, NaN, does not decode) is named before the run starts
    val_id = val_ds.fingerprint(cfg.val_limit) if val_ds is not None else None
    if val_ds is not None and val_ds.scorable == 0:
        raise DataError(f"{cfg.val_data}: no validation mixture can be scored (each has a silent source)")
    for folder, d in ((cfg.data, ds if cfg.data else None), (cfg.val_data, val_ds)):
        if d is not None and len(d.sources[0]) != n_src:
            raise TrainError(f"{folder}: {len(d.sources[0])} source folders (s1/ ...) but the network separates "
                             f"{n_src} speakers")
    out.mkdir(parents=True, exist_ok=True)

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = Schedule(cfg.lr, cfg.warmup, cfg.patience)
    step, history, saved_average = 0, [], None
    pending: dict = {"step": None}
    recent_losses: list[float] = []
    # what a resumed run must find as it was, beside its options: the processes and the data folder's mixtures
    facts = {"world": world, "batch_per_step": cfg.batch_size * world,
             "data_items": n_items if cfg.data else None,
             "data_names": hashlib.sha256("\n".join(m.name for m in ds.mixes).encode()).hexdigest()[:16]
             if cfg.data else None}
    resumed = cfg.resume and ckpt_path.exists()
    if resumed:
        state = _load_checkpoint(ckpt_path)
        changed = _changed_options(state.get("config"), cfg) + _changed_facts(state.get("facts"), facts)
        if changed and rank == 0:
            print(f"warning: resuming {ckpt_path} with changed options ({'; '.join(changed)}): the run goes on "
                  "from its saved state but is no longer the run it started as", file=sys.stderr)
        if state["arch"] != arch or state["arch_args"] != arch_args:
            raise TrainError(f"{ckpt_path}: checkpoint is of another network ({state['arch']} {state['arch_args']})")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"]["torch"])
        step, history = int(state["step"]), json.loads(state["history"])
        saved_average = state.get("ema")
        if rank == 0:  # a validation a signal cut short runs first (only rank 0 validates; the others go on)
            pending["step"] = state.get("pending_validation")
        recent_losses = list(state.get("recent_losses") or [])  # the logged train_loss goes on as if never stopped
        if step > total:
            raise TrainError(f"{ckpt_path}: the run is at step {step}, past the {total} steps asked for; give "
                             "more --steps or --epochs to go on")
    elif cfg.init and cfg.continue_init:
        # A committed model folder carries no optimiser state (kept small): continue its step count and lr
        # schedule, and re-warm Adam's moments over `warmup` steps from there.
        from ..runtime.loader import load_model

        prov = load_model(cfg.init).config.get("provenance") or {}
        step = int(prov.get("step") or 0)
        if prov.get("schedule"):
            sched.load_state_dict(prov["schedule"])
        history = list(prov.get("history") or [])
        sched.warmup_from = step
        if rank == 0:
            print(f"continuing {cfg.init} from step {step} (optimiser state re-warmed)", file=sys.stderr)
    elif cfg.resume and rank == 0:
        print(f"no checkpoint in {out}; starting from step 0", file=sys.stderr)

    if cfg.lr_scale is not None:
        if not cfg.lr_scale > 0:
            raise TrainError(f"--lr-scale must be positive, not {cfg.lr_scale}")
        sched.scale, sched.bad = float(cfg.lr_scale), 0
        if rank == 0:
            print(f"lr scale set to {cfg.lr_scale:g}: lr {sched.lr(step):.4g} from step {step}", file=sys.stderr)

    # a validated best/ of this run is not replaced by unscored weights (a run continued from --init has its own)
    keep_best = val_ds is None and resumed and (out / "best").is_dir() and math.isfinite(sched.best)
    if keep_best and rank == 0:
        print(f"no --val-data: {out / 'best'} keeps the run's validated best ({sched.best:.2f} dB SI-SNRi); the "
              f"latest weights are in {ckpt_path.name} (give --val-data to go on selecting)", file=sys.stderr)
    if val_ds is not None and sched.use_validation_set(val_id) and rank == 0:
        print(f"{cfg.val_data}: not the validation set (or --val-limit) of the run's best score so far; best score "
              "and patience start again", file=sys.stderr)

    average = None
    if cfg.ema is not None:
        average = WeightAverage(model, cfg.ema)  # starts from the weights loaded above (init, continuation)
        if saved_average is not None:
            average.load_state_dict(saved_average)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    if cfg.compile:
        net = torch.compile(net)  # same parameters: checkpoints and exports read `model`, not `net`
    model.train()

    stop = {"flag": False, "signal": None}

    def on_signal(signum, frame):
        stop["flag"], stop["signal"] = True, signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    meta = {"arch": arch, "arch_args": arch_args, "sample_rate": sr, "n_src": n_src}

    def checkpoint():
        if rank == 0:
            _save(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                              "schedule": sched.state_dict(), "rng": _rng_state(), "step": step,
                              "arch": arch, "arch_args": arch_args, "history": json.dumps(history),
                              "config": json.dumps(_saved_config(cfg)),
                              "ema": average.state_dict() if average is not None else None,
                              "pending_validation": pending["step"], "recent_losses": list(recent),
                              "facts": facts})

    def do_validation():
        nonlocal history
        if rank != 0:
            return
        rec = {"step": step, "train_loss": float(np.mean(recent)) if recent else None}
        pending["step"] = step  # until it is recorded: a checkpoint taken meanwhile (a signal) redoes it

        def cut_short() -> bool:
            if stop["flag"] and not cfg.quiet:
                print(f"validation of step {step} interrupted; it runs first on --resume", file=sys.stderr)
            return stop["flag"]

        # the raw weights' score first, to show what the average buys; the rest runs on the average
        raw = None
        if val_ds is not None and average is not None:
            scores = validate(model, val_ds, limit=cfg.val_limit, should_stop=cut_short)
            if scores is None:
                return
            raw = scores["si_snri"]
        with average.applied(model) if average is not None else _null():
            if val_ds is not None:
                scores = validate(model, val_ds, limit=cfg.val_limit, should_stop=cut_short)
                if scores is None:
                    return
                rec.update(scores)
                if raw is not None:
                    rec["raw_si_snri"] = raw
                better = sched.validated(rec["si_snri"])
            else:
                better = not keep_best
            rec["lr"] = sched.lr(step)
            history.append(rec)
            with open(out / "log.jsonl", "a") as f:  # strict JSON: a non-finite figure is null, not NaN
                f.write(json.dumps({k: metrics.finite_or_none(v) for k, v in rec.items()}) + "\n")
            if better:
                export_model_folder(out / "best", model, meta, name=cfg.name or out.resolve().name, history=history,
                                    train_config=asdict(cfg), seconds_per_step=sec_per_step(),
                                    schedule=sched.state_dict())
        pending["step"] = None
        if not cfg.quiet:
            print(f"[validate] step {step}: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                         for k, v in rec.items()), file=sys.stderr, flush=True)

    recent: list[float] = recent_losses
    times: list[float] = []

    def sec_per_step() -> float | None:
        return float(np.mean(times)) if times else None  # mean: stalls (a busy CPU) must show

    bar = _progress_bar(total, step) if rank == 0 and not cfg.quiet and sys.stderr.isatty() else None
    t_start = last_ckpt = time.time()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.bf16 else _null()
    stop_now = False
    try:
        if pending["step"] == step:  # cut short by a signal before the checkpoint: redo it on the same weights
            do_validation()
            checkpoint()  # done (or cut short again): the checkpoint says which
        stop_now, = _any_rank(world, pending["step"] is not None)  # cut short again (only rank 0 validates)
        while step < total and not stop_now:
            t0 = time.perf_counter()
            idx = batch_indices(step, rank, world, cfg.batch_size, n_items, cfg.seed, steps_per_epoch)
            if isinstance(ds, LibriMixDataset):
                ds.epoch = step // steps_per_epoch
            bad: DataError | None = None
            try:
                items = [ds[i] for i in idx]
            except DataError as exc:  # a file that does not decode or holds NaN: named, and the run kept
                bad = exc
            if _any_rank(world, bad is not None)[0]:  # one process: no collective
                # every rank stops before the step (its gradient all_reduce would wait for the rank that
                # stopped); rank 0 saves, and the others wait for the save before they say it is done
                checkpoint()  # the step has not started: --resume redoes it
                _any_rank(world, True)
                saved = f"the run is saved at step {step} in {ckpt_path}"
                if bad is None:
                    raise DataError(f"stopped: another process drew a training file it could not use ({saved})")
                raise DataError(f"{bad} ({saved}: replace or remove the file, then --resume)") from None
            mix = torch.stack([m for m, _ in items])
            ref = torch.stack([s for _, s in items])
            for g in opt.param_groups:
                g["lr"] = sched.lr(step)
            loss = train_step(net, opt, mix, ref, cfg.clip, autocast)
            if average is not None:
                average.update(model)
            step += 1
            if governor is not None and governor.poll() is not None and rank == 0 and not cfg.quiet:
                print(f"threads: {governor.threads} (other processes kept {governor.others:.1f} of "
                      f"{len(governor.cpus)} CPUs busy)", file=sys.stderr, flush=True)
            times.append(time.perf_counter() - t0)
            times[:] = times[-50:]
            # one rank's NaN reaches every rank's weights through the gradients; one collective per step decides
            # both, and gives the loss of the whole step (every rank's share), which the log shows
            out_of_time = cfg.max_minutes is not None and time.time() - t_start > cfg.max_minutes * 60
            step_loss, diverged, want_stop = _step_summary(world, loss.item(), stop["flag"] or out_of_time)
            recent.append(step_loss)
            recent[:] = recent[-100:]
            if bar is not None:
                bar[0].update(bar[1], completed=step, loss=float(np.mean(recent[-cfg.log_every:])))
            elif rank == 0 and not cfg.quiet and (step % cfg.log_every == 0 or step == total):
                sps = sec_per_step()
                print(f"step {step}/{total} loss {np.mean(recent[-cfg.log_every:]):.3f} {sps:.2f} s/step "
                      f"ETA {format_eta(sps * (total - step))}", file=sys.stderr, flush=True)
            if diverged:  # the weights are lost: stop before a validation, checkpoint or export takes them
                before = (f"{ckpt_path} holds the last checkpoint before it" if ckpt_path.exists()
                          else "no checkpoint was written before it")
                raise TrainDiverged(f"training diverged at step {step}: the loss is not finite; {before} "
                                    "(start again or resume with a lower --lr or --lr-scale)")
            if step % steps_per_epoch == 0 or step == total:
                do_validation()  # a signal during it (rank 0) must stop every rank: decide again
                want_stop, = _any_rank(world, want_stop or stop["flag"])
            if want_stop or time.time() - last_ckpt > cfg.ckpt_minutes * 60 or step == total:
                checkpoint()
                last_ckpt = time.time()
            if want_stop:
                break
    finally:
        if bar is not None:
            bar[0].stop()
        for s, h in old.items():
            signal.signal(s, h)
    if world > 1:
        dist.barrier()
    return {"step": step, "total": total, "best": sched.best,
            "stopped": step < total or pending["step"] is not None or stop_now,
            "export": str(out / "best"), "history": history, "signal": stop["signal"], "rank": rank}


def format_eta(seconds: float) -> str:
    """Remaining time for the log line: "45s", "12m05s", "3h07m" (rounded to the unit shown)."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    m = int(round(s / 60))
    return f"{m // 60}h{m % 60:02d}m"


def _progress_bar(total: int, start: int):
    """A rich progress bar on stderr (steps, loss, rate, ETA); only used when stderr is a terminal."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    # on stderr, the terminal that was checked (rich's default console is stdout: with stdout redirected the bar
    # was drawn nowhere and the log lines were off too)
    prog = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=False)
    task = prog.add_task("train", total=total, completed=start, loss=float("nan"))
    prog.start()
    return prog, task


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


__all__ = ["TrainConfig", "TrainError", "train", "validate", "batch_indices", "Schedule", "DataError", "format_eta"]
