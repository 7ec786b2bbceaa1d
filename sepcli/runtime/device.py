"""Where and how a model runs: device choice, inference dtype, CPU threads.

- `select_device("auto"|"cpu"|"cuda"|"cuda:N")`: auto picks CUDA when available, else CPU; asking for CUDA
  without it is a ValueError.
- `inference_dtype(device)`: None (plain fp32) on CPU; bfloat16 on CUDA when supported, else float16. Used
  through `autocast(device, dtype)` so weights stay fp32 and numerically sensitive ops keep fp32.
- `configure(threads)`: torch.set_flush_denormal(True) (denormals slow small models 20-30x on x86 CPUs, see
  /work/shared/ANCHORS.md) and the intra-op thread count.
"""

from __future__ import annotations

import contextlib

import torch


def select_device(pref: str = "auto") -> torch.device:
    pref = (pref or "auto").lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref == "cpu":
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {pref}: CUDA is not available on this machine")
        return torch.device(pref)
    raise ValueError(f"unknown device {pref!r} (choose auto, cpu or cuda)")


def inference_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure(threads: int | None = None) -> None:
    torch.set_flush_denormal(True)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
