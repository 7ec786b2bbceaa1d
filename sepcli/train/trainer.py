"""Training: the `Trainer` (PIT SI-SNR, Adam, clipping, warm-up + plateau-halving schedule, exact
checkpoint/resume, DDP) and `train(cfg)`, its entry point for the CLI and the recipes.

Resumability: every batch is a pure function of (seed, global step, rank) — dynamic mixtures are drawn with
rng(seed, index) and LibriMix folders are visited in a per-epoch permutation drawn from rng(seed, epoch) — so a
run resumed from a checkpoint (weights, Adam state, schedule state, step, torch RNG) continues exactly as a run
that never stopped. Under torchrun the global batch is split across ranks by index (each rank takes its own
slice of every step's indices: a distributed sampler without state), gradients are averaged by DDP (gloo on
CPU, nccl on CUDA), and rank 0 validates, checkpoints and exports.

The parts live beside this module: the options and their checks in `config`, the checkpoint and what --resume
takes from it in `checkpoint`, the lr and batch schedules in `schedule`, the decisions of all ranks in
`distributed`, the network in `network`, the validation score in `validation`.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import metrics
from ..runtime.device import ThreadGovernor, omp_threads_fixed
from .checkpoint import changed_facts, changed_options, load_checkpoint, rng_state, save_checkpoint, saved_config
from .config import TrainConfig, TrainDiverged, TrainError, check_config, data_warnings
from .data import DataError, DynamicMixDataset, LibriMixDataset
from .distributed import any_rank, join, step_summary
from .ema import WeightAverage
from .export import export_model_folder
from .mixing import MixOptions
from .network import network_for
from .progress import format_eta, progress_bar
from .schedule import Schedule, batch_indices
from .validation import validate


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, mix: torch.Tensor, ref: torch.Tensor,
               clip: float, autocast=None) -> torch.Tensor:
    """One optimisation step: forward, PIT SI-SNR loss, backward, gradient clipping, Adam. Returns the loss."""
    with autocast if autocast is not None else nullcontext():
        est = net(mix)
    loss = metrics.pit_loss(est.float(), ref)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()
    return loss


@dataclass
class RunState:
    """Where a run is: what its checkpoint carries beside the weights, optimiser and schedule, so that a resumed
    run takes it over whole and its log goes on as if it had never stopped."""

    step: int = 0
    history: list[dict] = field(default_factory=list)  # one record a validation (the lines of log.jsonl)
    recent_losses: list[float] = field(default_factory=list)  # the last 100 steps' losses (the logged train_loss)
    pending_validation: int | None = None  # the step of a validation a signal cut short: it runs first on --resume


class Trainer:
    """One training run, in the steps a reader looks for: `setup` (network, data, optimiser, processes),
    `restore` (--resume, or an --init model's schedule continued), `step` (one optimisation step and what the
    ranks decide after it), `validate`, `export`, `checkpoint`; `run` ties them together.

    Under torchrun every rank runs the same steps on its own slice of each batch; rank 0 alone validates,
    checkpoints and exports. A decision that one rank could take alone (a signal, a bad file, a NaN, the time
    limit) is taken by all ranks together, or the others would wait for ever in the next gradient all_reduce."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.ckpt_path = self.out / "last.pt"
        self.state = RunState()
        self.signal: int | None = None  # SIGINT or SIGTERM once one came: the run stops after the step
        self.governor: ThreadGovernor | None = None
        self.average: WeightAverage | None = None
        self.times: list[float] = []  # seconds of the last 50 steps
        self.resumed = self.keep_best = False
        self.bar = None

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Everything the first step needs. The order matters: the options are checked before anything is
        written, the seed is set before the network is built (its initial weights are the seed's), and every
        file validated on is read before the run folder is made (a bad one is named before the run starts)."""
        cfg = self.cfg
        check_config(cfg)
        self.rank, self.world = join()
        torch.set_flush_denormal(True)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        elif not omp_threads_fixed():
            self.governor = ThreadGovernor()
        torch.manual_seed(cfg.seed)
        self.model, arch, arch_args, sr = network_for(cfg)
        self.meta = {"arch": arch, "arch_args": arch_args, "sample_rate": sr,
                     "n_src": getattr(self.model, "n_src", 2)}
        self._setup_data()
        self.out.mkdir(parents=True, exist_ok=True)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.sched = Schedule(cfg.lr, cfg.warmup, cfg.patience)
        # what a resumed run must find as it was, beside its options: the processes and the data folder's mixtures
        self.facts = {"world": self.world, "batch_per_step": cfg.batch_size * self.world,
                      "data_items": self.n_items if cfg.data else None,
                      "data_names": hashlib.sha256("\n".join(m.name for m in self.ds.mixes).encode()).hexdigest()[:16]
                      if cfg.data else None}

    def _setup_data(self) -> None:
        """The training data (a LibriMix folder, or pools mixed on the fly), the steps of an epoch and of the run,
        and the validation set with its fingerprint (a best score holds only for the set it was measured on)."""
        cfg, sr, n_src = self.cfg, self.meta["sample_rate"], self.meta["n_src"]
        per_step = cfg.batch_size * self.world
        opts = MixOptions(n_src=n_src, seconds=cfg.segment, reverb_prob=cfg.reverb_prob, noise_prob=cfg.noise_prob,
                          speed=cfg.speed, real_share=cfg.real_share, mixed_share=cfg.mixed_share,
                          person_power=cfg.person_power)
        if cfg.data:
            self.ds = LibriMixDataset(cfg.data, sr, cfg.segment, cfg.seed)
            self.n_items = len(self.ds)
            self.steps_per_epoch = max(1, self.n_items // per_step)
            if self.rank == 0:
                for warning in data_warnings(cfg, self.ds, per_step):
                    print(f"warning: {warning}", file=sys.stderr)
        else:  # --pools (check_config: exactly one of the two)
            self.ds = DynamicMixDataset(cfg.pools, sr, opts, "train", seed=cfg.seed, variants=cfg.variants)
            self.n_items, self.steps_per_epoch = None, cfg.epoch_steps
        self.total = cfg.steps or (cfg.epochs or 1) * self.steps_per_epoch
        self.val_ds = LibriMixDataset(cfg.val_data, sr) if cfg.val_data else None
        # reads every file validated on: a bad one (no samples, NaN, does not decode) is named before the run starts
        self.val_id = self.val_ds.fingerprint(cfg.val_limit) if self.val_ds is not None else None
        if self.val_ds is not None and self.val_ds.scorable == 0:
            raise DataError(f"{cfg.val_data}: no validation mixture can be scored (each has a silent source)")
        for folder, d in ((cfg.data, self.ds if cfg.data else None), (cfg.val_data, self.val_ds)):
            if d is not None and len(d.sources[0]) != n_src:
                raise TrainError(f"{folder}: {len(d.sources[0])} source folders (s1/ ...) but the network separates "
                                 f"{n_src} speakers")

    # ------------------------------------------------------------------ restore / resume
    def restore(self) -> None:
        """Where the run starts. With --resume and a checkpoint: its whole state (weights, Adam moments, schedule,
        RNG, step), so that the run goes on exactly as one that never stopped, with a warning when options or facts
        changed since. With --continue-init: the step and schedule of the --init model's provenance (a model folder
        keeps no optimiser state: Adam re-warms). Then what this command line sets on top (--lr-scale, another
        validation set) and the weight average."""
        cfg, rank = self.cfg, self.rank
        self.resumed = cfg.resume and self.ckpt_path.exists()
        saved_average = None
        if self.resumed:
            saved_average = self._resume(load_checkpoint(self.ckpt_path))
        elif cfg.init and cfg.continue_init:
            self._continue_init()
        elif cfg.resume and rank == 0:
            print(f"no checkpoint in {self.out}; starting from step 0", file=sys.stderr)
        sched, step = self.sched, self.state.step
        if cfg.lr_scale is not None:
            if not cfg.lr_scale > 0:
                raise TrainError(f"--lr-scale must be positive, not {cfg.lr_scale}")
            sched.scale, sched.bad = float(cfg.lr_scale), 0
            if rank == 0:
                print(f"lr scale set to {cfg.lr_scale:g}: lr {sched.lr(step):.4g} from step {step}", file=sys.stderr)
        # a validated best/ of this run is not replaced by unscored weights (a run continued from --init has its own)
        best = self.out / "best"
        self.keep_best = self.val_ds is None and self.resumed and best.is_dir() and math.isfinite(sched.best)
        if self.keep_best and rank == 0:
            print(f"no --val-data: {best} keeps the run's validated best ({sched.best:.2f} dB SI-SNRi); the latest "
                  f"weights are in {self.ckpt_path.name} (give --val-data to go on selecting)", file=sys.stderr)
        if self.val_ds is not None and sched.use_validation_set(self.val_id) and rank == 0:
            print(f"{cfg.val_data}: not the validation set (or --val-limit) of the run's best score so far; best "
                  "score and patience start again", file=sys.stderr)
        if cfg.ema is not None:
            self.average = WeightAverage(self.model, cfg.ema)  # from the weights loaded above (init, continuation)
            if saved_average is not None:
                self.average.load_state_dict(saved_average)

    def _resume(self, saved: dict) -> dict | None:
        """Take over a checkpoint's state; returns its weight average's state (None without one)."""
        changed = changed_options(saved.get("config"), self.cfg) + changed_facts(saved.get("facts"), self.facts)
        if changed and self.rank == 0:
            print(f"warning: resuming {self.ckpt_path} with changed options ({'; '.join(changed)}): the run goes on "
                  "from its saved state but is no longer the run it started as", file=sys.stderr)
        if saved["arch"] != self.meta["arch"] or saved["arch_args"] != self.meta["arch_args"]:
            raise TrainError(f"{self.ckpt_path}: checkpoint is of another network ({saved['arch']} "
                             f"{saved['arch_args']})")
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["schedule"])
        torch.set_rng_state(saved["rng"]["torch"])
        s = self.state
        s.step, s.history = int(saved["step"]), json.loads(saved["history"])
        if self.rank == 0:  # a validation a signal cut short runs first (only rank 0 validates; the others go on)
            s.pending_validation = saved.get("pending_validation")
        s.recent_losses = list(saved.get("recent_losses") or [])  # the logged train_loss goes on as if never stopped
        if s.step > self.total:
            raise TrainError(f"{self.ckpt_path}: the run is at step {s.step}, past the {self.total} steps asked for; "
                             "give more --steps or --epochs to go on")
        return saved.get("ema")

    def _continue_init(self) -> None:
        """A committed model folder carries no optimiser state (kept small): continue its step count and lr
        schedule, and re-warm Adam's moments over `warmup` steps from there."""
        from ..runtime.loader import load_model

        prov = load_model(self.cfg.init).config.get("provenance") or {}
        self.state.step = int(prov.get("step") or 0)
        if prov.get("schedule"):
            self.sched.load_state_dict(prov["schedule"])
        self.state.history = list(prov.get("history") or [])
        self.sched.warmup_from = self.state.step
        if self.rank == 0:
            print(f"continuing {self.cfg.init} from step {self.state.step} (optimiser state re-warmed)",
                  file=sys.stderr)

    # ------------------------------------------------------------------ one step
    def step(self) -> bool:
        """One optimisation step on this rank's share of the step's batch, then one collective that gives the
        whole step's loss (for the log) and decides for all ranks: a loss that is not finite on any rank ends the
        run (TrainDiverged: one rank's NaN reaches every rank's weights through the gradients), and a stop asked
        on any rank (a signal, --max-minutes) is returned, to stop every rank after this step."""
        cfg, s = self.cfg, self.state
        t0 = time.perf_counter()
        items = self._batch()
        mix = torch.stack([m for m, _ in items])
        ref = torch.stack([src for _, src in items])
        for g in self.opt.param_groups:
            g["lr"] = self.sched.lr(s.step)
        loss = train_step(self.net, self.opt, mix, ref, cfg.clip, self.autocast)
        if self.average is not None:
            self.average.update(self.model)
        s.step += 1
        gov = self.governor
        if gov is not None and gov.poll() is not None and self.rank == 0 and not cfg.quiet:
            print(f"threads: {gov.threads} (other processes kept {gov.others:.1f} of {len(gov.cpus)} CPUs busy)",
                  file=sys.stderr, flush=True)
        self.times.append(time.perf_counter() - t0)
        self.times[:] = self.times[-50:]
        out_of_time = cfg.max_minutes is not None and time.time() - self.t_start > cfg.max_minutes * 60
        step_loss, diverged, want_stop = step_summary(self.world, loss.item(), self.signal is not None or out_of_time)
        s.recent_losses.append(step_loss)
        s.recent_losses[:] = s.recent_losses[-100:]
        self._show_progress()
        if diverged:  # the weights are lost: stop before a validation, checkpoint or export takes them
            before = (f"{self.ckpt_path} holds the last checkpoint before it" if self.ckpt_path.exists()
                      else "no checkpoint was written before it")
            raise TrainDiverged(f"training diverged at step {s.step}: the loss is not finite; {before} "
                                "(start again or resume with a lower --lr or --lr-scale)")
        return want_stop

    def _batch(self) -> list:
        """This rank's (mixture, sources) items of the step. A file that does not decode or holds NaN stops every
        rank before the step (its gradient all_reduce would wait for the rank that stopped): rank 0 saves, the
        others wait for the save, and the error names the file (the run is kept: fix the file, then --resume)."""
        cfg, step, ds = self.cfg, self.state.step, self.ds
        idx = batch_indices(step, self.rank, self.world, cfg.batch_size, self.n_items, cfg.seed, self.steps_per_epoch)
        if isinstance(ds, LibriMixDataset):
            ds.epoch = step // self.steps_per_epoch
        bad: DataError | None = None
        try:
            items = [ds[i] for i in idx]
        except DataError as exc:
            bad = exc
        if any_rank(self.world, bad is not None)[0]:  # one process: no collective
            self.checkpoint()  # the step has not started: --resume redoes it
            any_rank(self.world, True)
            saved = f"the run is saved at step {step} in {self.ckpt_path}"
            if bad is None:
                raise DataError(f"stopped: another process drew a training file it could not use ({saved})")
            raise DataError(f"{bad} ({saved}: replace or remove the file, then --resume)") from None
        return items

    def _show_progress(self) -> None:
        cfg, step, recent = self.cfg, self.state.step, self.state.recent_losses
        if self.bar is not None:
            self.bar[0].update(self.bar[1], completed=step, loss=float(np.mean(recent[-cfg.log_every:])))
        elif self.rank == 0 and not cfg.quiet and (step % cfg.log_every == 0 or step == self.total):
            sps = self.seconds_per_step()
            print(f"step {step}/{self.total} loss {np.mean(recent[-cfg.log_every:]):.3f} {sps:.2f} s/step "
                  f"ETA {format_eta(sps * (self.total - step))}", file=sys.stderr, flush=True)

    def seconds_per_step(self) -> float | None:
        return float(np.mean(self.times)) if self.times else None  # mean: stalls (a busy CPU) must show

    # ------------------------------------------------------------------ validate, export, checkpoint
    def validate(self) -> None:
        """Score the weights on the validation set (with --ema: the raw weights first, to show what the average
        buys, then the average, which is what is kept), log the record to log.jsonl and export a new best. Without
        --val-data every validation exports the latest weights, unless the run keeps a validated best/. Rank 0
        only. The validation is pending until recorded: a signal cuts it short, and --resume runs it first."""
        if self.rank != 0:
            return
        cfg, s, val_ds = self.cfg, self.state, self.val_ds
        rec = {"step": s.step, "train_loss": float(np.mean(s.recent_losses)) if s.recent_losses else None}
        s.pending_validation = s.step
        raw = None  # `validate` below is the function of sepcli.train.validation, not this method
        if val_ds is not None and self.average is not None:
            scores = validate(self.model, val_ds, limit=cfg.val_limit, should_stop=self._cut_short)
            if scores is None:
                return
            raw = scores["si_snri"]
        with self.average.applied(self.model) if self.average is not None else nullcontext():
            if val_ds is not None:
                scores = validate(self.model, val_ds, limit=cfg.val_limit, should_stop=self._cut_short)
                if scores is None:
                    return
                rec.update(scores)
                if raw is not None:
                    rec["raw_si_snri"] = raw
                better = self.sched.validated(rec["si_snri"])
            else:
                better = not self.keep_best
            rec["lr"] = self.sched.lr(s.step)
            s.history.append(rec)
            with open(self.out / "log.jsonl", "a") as f:  # strict JSON: a non-finite figure is null, not NaN
                f.write(json.dumps({k: metrics.finite_or_none(v) for k, v in rec.items()}) + "\n")
            if better:
                self.export()
        s.pending_validation = None
        if not cfg.quiet:
            print(f"[validate] step {s.step}: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                           for k, v in rec.items()), file=sys.stderr, flush=True)

    def _cut_short(self) -> bool:
        if self.signal is not None and not self.cfg.quiet:
            print(f"validation of step {self.state.step} interrupted; it runs first on --resume", file=sys.stderr)
        return self.signal is not None

    def export(self) -> None:
        """OUT/best: the model folder of the weights in use (within `validate`, the average with --ema), with the
        run's history, options and schedule as its provenance (what --init with --continue-init reads back)."""
        cfg = self.cfg
        export_model_folder(self.out / "best", self.model, self.meta, name=cfg.name or self.out.resolve().name,
                            history=self.state.history, train_config=asdict(cfg),
                            seconds_per_step=self.seconds_per_step(), schedule=self.sched.state_dict())

    def checkpoint(self) -> None:
        """OUT/last.pt: everything an exact resume needs. `run` takes one every --ckpt-minutes, on a stop (a signal,
        --max-minutes) and at the end, `_batch` one before it stops for a bad file; rank 0 writes it (every rank
        holds the same weights)."""
        if self.rank != 0:
            return
        s = self.state
        save_checkpoint(self.ckpt_path, {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "schedule": self.sched.state_dict(),
            "rng": rng_state(), "step": s.step, "arch": self.meta["arch"], "arch_args": self.meta["arch_args"],
            "history": json.dumps(s.history), "config": json.dumps(saved_config(self.cfg)),
            "ema": self.average.state_dict() if self.average is not None else None,
            "pending_validation": s.pending_validation, "recent_losses": list(s.recent_losses), "facts": self.facts})

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        """Set up, restore, then step to the total: validate after each epoch (and at the end), checkpoint every
        --ckpt-minutes, on a stop and at the end. Ctrl-C and SIGTERM finish the step, save and return; the
        process's own handlers are back afterwards. Returns the summary `train` documents."""
        self.setup()
        self.restore()
        cfg, s = self.cfg, self.state
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model)
        if cfg.compile:
            self.net = torch.compile(self.net)  # same parameters: checkpoints and exports read `model`, not `net`
        self.model.train()
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        if self.rank == 0 and not cfg.quiet and sys.stderr.isatty():
            self.bar = progress_bar(self.total, s.step)
        self.t_start = last_ckpt = time.time()
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
        stop_now = False
        try:
            if s.pending_validation == s.step:  # cut short by a signal before the checkpoint: redo it, same weights
                self.validate()
                self.checkpoint()  # done (or cut short again): the checkpoint says which
            stop_now, = any_rank(self.world, s.pending_validation is not None)  # cut short again (rank 0 validates)
            while s.step < self.total and not stop_now:
                want_stop = self.step()
                if s.step % self.steps_per_epoch == 0 or s.step == self.total:
                    self.validate()  # a signal during it (rank 0) must stop every rank: decide again
                    want_stop, = any_rank(self.world, want_stop or self.signal is not None)
                if want_stop or time.time() - last_ckpt > cfg.ckpt_minutes * 60 or s.step == self.total:
                    self.checkpoint()
                    last_ckpt = time.time()
                if want_stop:
                    break
        finally:
            if self.bar is not None:
                self.bar[0].stop()
            for sig, handler in old.items():
                signal.signal(sig, handler)
        if self.world > 1:
            dist.barrier()
        return {"step": s.step, "total": self.total, "best": self.sched.best,
                "stopped": s.step < self.total or s.pending_validation is not None or stop_now,
                "export": str(self.out / "best"), "history": s.history, "signal": self.signal, "rank": self.rank}

    def _on_signal(self, signum, frame) -> None:
        self.signal = signum


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training: `Trainer(cfg).run()`. Returns a summary dict: step and total, best (validation
    SI-SNRi; -inf before any), stopped, export (the best/ folder), history, signal (SIGINT or SIGTERM when one
    stopped the run), rank (under torchrun rank 0 reports for the run)."""
    return Trainer(cfg).run()


__all__ = ["TrainConfig", "TrainError", "train", "validate", "batch_indices", "Schedule", "DataError", "format_eta",
           "Trainer", "RunState"]
