"""Export a trained network as a model folder: config.json + weights.safetensors (fp32) + MODEL_CARD.md."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..runtime.permissions import apply_default_modes


# marks the card export_model_folder writes itself (replaced at each export); a card without it is kept
AUTO_CARD = "<!-- written by sepcli train at export; replace this card by hand to keep your own -->"


def export_model_folder(folder: Path, model: torch.nn.Module, meta: dict, name: str, history: list | None = None,
                        train_config: dict | None = None, seconds_per_step: float | None = None,
                        segment: float = 4.0, overlap: float = 0.25, input_loudness: float | None = -25.0,
                        extra: dict | None = None, schedule: dict | None = None, step: int | None = None) -> Path:
    """Write the folder atomically (a sibling temp folder renamed over the old one). Returns the folder."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    params = sum(p.numel() for p in model.parameters())
    last = (history or [{}])[-1]
    best = max((h for h in history or [] if "si_snri" in h), key=lambda h: h["si_snri"], default=None)
    config = {
        "name": name,
        "arch": meta["arch"],
        "arch_args": meta["arch_args"],
        "sample_rate": int(meta["sample_rate"]),
        "n_src": int(meta.get("n_src", 2)),
        "segment": segment,
        "overlap": overlap,
        "input_loudness": input_loudness,
        "aliases": [],
        "description": f"{meta['arch']} network trained with sepcli train",
        "parameters": params,
        "provenance": {"exported": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                       "step": step if step is not None else last.get("step"),
                       "seconds_per_step": seconds_per_step,
                       "schedule": schedule, "history": history or [],
                       "train_config": train_config or {}},
        "eval": {"val_si_snri": best["si_snri"] if best else None, "val_step": best["step"] if best else None},
    }
    if extra:
        config.update(extra)

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / "weights.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        card = folder / "MODEL_CARD.md"
        if card.exists() and AUTO_CARD not in card.read_text(errors="replace"):  # a hand-written card is kept
            shutil.copy2(card, tmp / "MODEL_CARD.md")
        else:  # written anew at every export, so it never describes an older one
            (tmp / "MODEL_CARD.md").write_text(_card(name, config, params))

    replace_folder(folder, fill)
    return folder


def _card(name: str, config: dict, params: int) -> str:
    """The card of an exported folder: the network, its training data and its validation figure."""
    tc = config["provenance"]["train_config"]
    net = tc.get("arch") or (f"fine-tuned from {tc['init']}" if tc.get("init") else config["arch"])
    data = (f"LibriMix-style folder `{tc['data']}`" if tc.get("data")
            else f"dynamic mixtures of the speaker pools `{tc['pools']}`" if tc.get("pools") else "data not recorded")
    val = config["eval"]["val_si_snri"]
    on = f", `{tc['val_data']}`" if tc.get("val_data") else ""
    scored = (f"best validation SI-SNRi {val:.2f} dB (step {config['eval']['val_step']}{on})" if val is not None
              else "not validated (no --val-data)")
    return (f"# {name}\n{AUTO_CARD}\n\n{config['arch']} network ({net}), {params / 1e6:.2f} M parameters, "
            f"{config['sample_rate']} Hz, {config['n_src']} sources.\n\n"
            f"Trained with `sepcli train` on {data} to step {config['provenance']['step']}; {scored}.\n")


def replace_folder(folder: Path, fill: Callable[[Path], None]) -> None:
    """Give `folder` new content atomically: `fill(tmp)` writes it into a hidden sibling folder, which gets the
    default modes (mkdtemp's 0700 and save_file's 0600 would hide a model from other users) and is swapped in."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        fill(tmp)
        apply_default_modes(tmp)
        swap_in_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in_folder(new: Path, folder: Path) -> None:
    """Put the finished folder `new` (a sibling) in the place of `folder`, which may not exist yet. A failure or an
    interruption between the two renames puts the old folder back; a kill there leaves it as the hidden sibling
    `.NAME.old` (zoo listings skip dot-folders)."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    had = folder.exists()
    if had:
        os.replace(folder, old)
    try:
        os.replace(new, folder)
    except BaseException:
        if had:
            os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
