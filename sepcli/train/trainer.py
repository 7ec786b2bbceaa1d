"""Training loop: PIT SI-SNR, Adam, clipping, warm-up + plateau-halving schedule, exact checkpoint/resume, DDP.

Resumability: every batch is a pure function of (seed, global step, rank) — dynamic mixtures are drawn with
rng(seed, index) and LibriMix folders are visited in a per-epoch permutation drawn from rng(seed, epoch) — so a
run resumed from a checkpoint (weights, Adam state, schedule state, step, torch RNG) continues exactly as a run
that never stopped. Under torchrun the global batch is split across ranks by index (each rank takes its own
slice of every step's indices: a distributed sampler without state), gradients are averaged by DDP (gloo on
CPU, nccl on CUDA), and rank 0 validates, checkpoints and exports.
"""

import hashlib
import json
import math
import signal
import sys
import time
from dataclasses import asdict
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



def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training. Returns a summary dict (steps, best validation, export folder; `signal` when
    SIGINT or SIGTERM stopped it)."""
    check_config(cfg)
    rank, world = join()
    torch.set_flush_denormal(True)
    governor = None
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    elif not omp_threads_fixed():
        governor = ThreadGovernor()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    ckpt_path = out / "last.pt"

    model, arch, arch_args, sr = network_for(cfg)
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
        state = load_checkpoint(ckpt_path)
        changed = changed_options(state.get("config"), cfg) + changed_facts(state.get("facts"), facts)
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
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                              "schedule": sched.state_dict(), "rng": rng_state(), "step": step,
                              "arch": arch, "arch_args": arch_args, "history": json.dumps(history),
                              "config": json.dumps(saved_config(cfg)),
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

    bar = progress_bar(total, step) if rank == 0 and not cfg.quiet and sys.stderr.isatty() else None
    t_start = last_ckpt = time.time()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.bf16 else _null()
    stop_now = False
    try:
        if pending["step"] == step:  # cut short by a signal before the checkpoint: redo it on the same weights
            do_validation()
            checkpoint()  # done (or cut short again): the checkpoint says which
        stop_now, = any_rank(world, pending["step"] is not None)  # cut short again (only rank 0 validates)
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
            if any_rank(world, bad is not None)[0]:  # one process: no collective
                # every rank stops before the step (its gradient all_reduce would wait for the rank that
                # stopped); rank 0 saves, and the others wait for the save before they say it is done
                checkpoint()  # the step has not started: --resume redoes it
                any_rank(world, True)
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
            step_loss, diverged, want_stop = step_summary(world, loss.item(), stop["flag"] or out_of_time)
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
                want_stop, = any_rank(world, want_stop or stop["flag"])
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


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


__all__ = ["TrainConfig", "TrainError", "train", "validate", "batch_indices", "Schedule", "DataError", "format_eta"]
