"""The released tensors mapped onto sepcli's SPMamba: the Lightning prefix and DDP's `module.` removed, the
Mamba layers renamed, then checked against the network the config describes (frequency bins first, so the
conf.yml of another release is one clear line, then every key and shape)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .loader import state_dict_mismatch, without_ddp_prefix
from .spmamba_errors import CheckpointError

PREFIX = "audio_model."  # a Lightning .ckpt's prefix of the network's tensors
# frequency bins of the official releases -> (n_fft, sample rate): JusperLee/SPMamba configs (32 ms windows)
RELEASE_BINS = {129: (256, 8000), 257: (512, 16000)}
_SHOW = 5  # problems listed in an error

def official_key(key: str) -> str:
    """Our name for a tensor of the released checkpoint: the Mamba blocks' `layers` / `backward_layers` are
    `forward_blocks` / `backward_blocks` (other keys are unchanged)."""
    parts = key.split(".")
    return ".".join({"layers": "forward_blocks", "backward_layers": "backward_blocks"}.get(p, p) for p in parts)


def our_state_dict(sd: dict, where: str, released: bool) -> tuple[dict[str, torch.Tensor], str, bool]:
    """(the network's tensors in our key naming, the format's name, whether keys were renamed) from a checkpoint's
    state_dict; `released`: the checkpoint says model_name or infos (best_model.pth). Messages name `where`."""
    if any(isinstance(k, str) and k.startswith(PREFIX) for k in sd):
        fmt = "lightning"
        sd = {k[len(PREFIX):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(PREFIX)}
    else:
        fmt = "best_model" if released else "state_dict"
        sd = without_ddp_prefix(sd)
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{where}: state_dict entries that are not tensors: {', '.join(bad[:_SHOW])}")
    renamed = {official_key(k): v for k, v in sd.items()}
    if len(renamed) != len(sd):
        raise CheckpointError(f"{where}: holds Mamba layers under both namings (.layers. and .forward_blocks.)")
    return renamed, fmt, any(official_key(k) != k for k in sd)


def _frequency_bins(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(bins the config gives, bins the weights have) from a LayerNormalization4DCF gamma [1, C, 1, F] present in
    both, or None when there is none to compare."""
    for k, v in expected.items():
        if re.search(r"\.attn_\w+\.\d+\.gamma$", k) and v.dim() == 4 and k in got and got[k].dim() == 4:
            return int(v.shape[3]), int(got[k].shape[3])
    return None


def check_sample_rate(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], args: dict, sr: int,
                      conf: str, ck: str) -> list[str]:
    """CheckpointError when the weights have another number of frequency bins than conf.yml's n_fft gives (a
    conf.yml of another release); notes (one line each) when they fit but the rate is not the official one for
    that n_fft."""
    bins = _frequency_bins(expected, got)
    if bins is None:
        return []
    cfg_bins, w_bins = bins
    n_fft = args.get("n_fft")
    if cfg_bins != w_bins:
        known = RELEASE_BINS.get(w_bins)
        what = (f"a {known[1]} Hz model ({w_bins} frequency bins, n_fft {known[0]})" if known
                else f"{w_bins} frequency bins (n_fft {2 * (w_bins - 1)})")
        raise CheckpointError(f"{ck}: the weights are {what} but {conf} says {sr} Hz with n_fft {n_fft} "
                              f"({cfg_bins} bins): give the conf.yml released with this checkpoint")
    known = RELEASE_BINS.get(w_bins)
    if known and sr != known[1] and sr in {r for _, r in RELEASE_BINS.values()}:
        return [f"{conf} says {sr} Hz, but n_fft {known[0]} ({w_bins} frequency bins) is the official "
                f"{known[1]} Hz setting: check the sample rate"]
    return []


def match_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], checkpoint: Path | str) -> None:
    """Raise CheckpointError listing the first wrongly shaped, missing and unexpected keys, if any."""
    problem = state_dict_mismatch(expected, got, show=_SHOW, names=("checkpoint", "config"))
    if problem:
        raise CheckpointError(f"{checkpoint}: does not match the SPMamba described by the config: {problem}")
