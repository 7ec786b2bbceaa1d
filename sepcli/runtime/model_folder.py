"""A model folder read without importing torch: its config.json checked as data (`read_config`,
`validate_config`), the weights file it names (`locate`), the weights' parameter count and size
(`weights_summary`), and the one-line error for a weights.safetensors that cannot be read
(`unreadable_safetensors`). runtime.loader builds and loads the network from these.

`sepcli models` and `sepcli models info` list models from their safetensors headers: opened with safetensors'
numpy framework, which parses and checks the same header as the torch one (the shapes are what is read), so the
listing no longer imports torch (2.3 s -> 0.3 s for `sepcli models` on an AVX2 EPYC). A .pt/.pth weights file has
no header to read: it is loaded as `separate` would load it (runtime.loader, torch.load(weights_only=True)).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import ModelError, one_line


def _err(path: Path, msg: str) -> ModelError:
    return ModelError(f"{path}: {msg}")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_config(cfg: Any, path: Path) -> dict:
    """Check config.json's content; returns it with defaults filled. Raises ModelError."""
    if not isinstance(cfg, dict):
        raise _err(path, "must hold a JSON object")
    out = dict(cfg)
    if not isinstance(out.get("arch"), str) or not out["arch"]:
        raise _err(path, "'arch' must be a non-empty string")
    args = out.get("arch_args", {})
    if not isinstance(args, dict):
        raise _err(path, "'arch_args' must be an object")
    out["arch_args"] = args
    sr = out.get("sample_rate")
    if not isinstance(sr, int) or isinstance(sr, bool) or not (1000 <= sr <= 192000):
        raise _err(path, f"'sample_rate' must be an integer in Hz (1000-192000), got {sr!r}")
    n = out.get("n_src")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise _err(path, f"'n_src' must be a positive integer, got {n!r}")
    seg = out.setdefault("segment", 4.0)
    if not _num(seg) or seg < 0:
        raise _err(path, f"'segment' must be a number of seconds >= 0, got {seg!r}")
    ov = out.setdefault("overlap", 0.25)
    if not _num(ov) or not (0 <= ov <= 0.5):
        raise _err(path, f"'overlap' must be a fraction between 0 and 0.5, got {ov!r}")
    il = out.setdefault("input_loudness", None)
    if il is not None and not _num(il):
        raise _err(path, f"'input_loudness' must be a number (LUFS) or null, got {il!r}")
    al = out.setdefault("aliases", [])
    if not isinstance(al, list) or not all(isinstance(a, str) for a in al):
        raise _err(path, "'aliases' must be a list of strings")
    out.setdefault("name", path.parent.name)
    if not isinstance(out["name"], str):
        raise _err(path, "'name' must be a string")
    ev = out.setdefault("eval", {})
    if not isinstance(ev, dict):
        raise _err(path, "'eval' must be an object")
    return out


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        text = path.read_text()
    except OSError as exc:
        raise _err(path, f"cannot read ({exc.strerror or exc})") from None
    try:
        cfg = json.loads(text)  # data only: JSON has no code, and nothing in it is evaluated or imported
    except ValueError as exc:
        raise _err(path, f"invalid JSON ({exc})") from None
    except RecursionError:
        raise _err(path, "invalid JSON (nested too deeply)") from None
    return validate_config(cfg, path)


def locate(target: Path) -> tuple[Path, Path]:
    """(folder with config.json, weights file)."""
    if target.is_dir():
        w = target / "weights.safetensors"
        if not w.is_file():
            raise _err(target, "model folder has no weights.safetensors (folders load safetensors only)")
        return target, w
    return target.parent, target


LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def unreadable_safetensors(path: Path, exc: BaseException) -> ModelError:
    """`<file>: not a readable safetensors file (why)`; a Git LFS pointer left by a clone without LFS is named."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError:
        head = b""
    if head == LFS_POINTER:
        why = "a Git LFS pointer, not the weights: fetch them with `git lfs pull`"
    elif isinstance(exc, OSError):
        why = exc.strerror or one_line(exc, 200)
    else:
        why = one_line(exc, 200)
    return _err(path, f"not a readable safetensors file ({why})")


def weights_summary(target: Path) -> tuple[int, int]:
    """(parameter count, weights file size in bytes) of a model folder's weights.safetensors (read from its header
    without loading) or of a weights file given directly (a .pt/.pth is loaded as `separate` would load it).

    (0, 0) when a folder has no weights.safetensors; ModelError when the weights cannot be read."""
    target = Path(target)
    w = target / "weights.safetensors" if target.is_dir() else target
    if not w.is_file():
        return 0, 0
    if w.suffix != ".safetensors":
        from .loader import read_state_dict  # torch.load(weights_only=True): refuses what separate refuses

        state = read_state_dict(w)
        return sum(v.numel() for v in state.values()), w.stat().st_size
    from safetensors import safe_open

    n = 0
    try:
        with safe_open(str(w), framework="numpy") as f:  # the header only; "pt" would import torch
            for k in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                n += math.prod(f.get_slice(k).get_shape())
        size = w.stat().st_size
    except Exception as exc:  # noqa: BLE001 (SafetensorError, OSError, ...)
        raise unreadable_safetensors(w, exc) from None
    return n, size
