"""A run's checkpoint (OUT/last.pt): writing it atomically, reading it without unpickling code, and what
`--resume` makes of it: the options the run was started with (taken again when the command line does not give
them) and the options and facts that changed since (a warning: the run goes on, but is no longer the run it
started as)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..errors import one_line
from .config import TrainConfig, TrainError


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` to `path` through a temporary file and a rename: a run killed while writing keeps its
    previous checkpoint whole. A refusal of torch's writer becomes an OSError of one line."""
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(state, tmp)
    except RuntimeError as exc:  # torch's C++ writer: "open file failed with strerror: Permission denied", ...
        tmp.unlink(missing_ok=True)
        why = str(exc).rsplit("strerror:", 1)[-1].strip() if "strerror:" in str(exc) else one_line(str(exc))
        raise OSError(f"cannot write the checkpoint ({why})") from None
    os.replace(tmp, path)


def rng_state() -> dict:
    """The random state a resumed run continues from: torch's global generator (whatever the network draws while
    training). The batches need none: they are functions of (seed, step, rank)."""
    return {"torch": torch.get_rng_state()}


def load_checkpoint(path: Path) -> dict:
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
    saved = json.loads(load_checkpoint(ckpt).get("config") or "{}")
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


def resumed_config(cfg: TrainConfig, given: set[str]) -> TrainConfig:
    """`cfg` completed, with --resume, by the options its run was started with wherever the command line did not
    give them again (`given`: the TrainConfig fields it gave), so that `sepcli train -o RUN --resume` alone
    continues RUN as it was started; an option given again wins (and `changed_options` names it when it changes
    the run). Without --resume, or before the run's first checkpoint, `cfg` as it is."""
    if not cfg.resume:
        return cfg
    return replace(cfg, **saved_options(cfg.out, given))


# options whose change on --resume makes it no longer the same run (--lr-scale is the way to change the rate; the
# network itself is compared with the checkpoint's)
RUN_OPTIONS = ("data", "pools", "sample_rate", "segment", "batch_size", "lr", "reverb_prob",
               "noise_prob", "real_share", "mixed_share", "person_power", "variants", "ema")


def changed_options(saved_json: str | None, cfg: TrainConfig) -> list[str]:
    """'batch_size 4 -> 2' for each RUN_OPTIONS entry that differs from the checkpoint's saved configuration."""
    try:
        saved = json.loads(saved_json) if saved_json else {}
    except ValueError:
        return []
    saved, now = _absolute_folders(saved), saved_config(cfg)  # older checkpoints kept folders as given
    return [f"{k} {saved[k]} -> {now[k]}" for k in RUN_OPTIONS if k in saved and saved[k] != now.get(k)]


def changed_facts(saved: dict | None, now: dict) -> list[str]:
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


def saved_config(cfg: TrainConfig) -> dict:
    """The run's configuration as its checkpoint keeps it: JSON, folders absolute (so `--resume` from another
    working directory finds them, and a folder given relative or absolute compares equal)."""
    return _absolute_folders(json.loads(json.dumps(asdict(cfg), default=str)))


def _absolute_folders(d: dict) -> dict:
    for k in ("data", "pools", "val_data", "init"):
        if d.get(k) and (k != "init" or Path(d[k]).exists()):  # init may be a zoo name
            d[k] = os.path.abspath(d[k])
    return d


