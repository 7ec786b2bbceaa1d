"""Writing the imported model folder: config.json (arch, arch_args, provenance) and weights.safetensors, built
in a temporary sibling and renamed into place when complete, an existing model replaced only on request and
only once the new one is whole."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import torch

from ..errors import one_line
from .permissions import apply_default_modes
from .spmamba_errors import CheckpointError

DEFAULT_SEGMENT = 4.0
DEFAULT_OVERLAP = 0.25

def model_config(name: str, args: dict, sr: int, ck_label: str, provenance: dict) -> dict:
    """config.json of the imported model; `provenance`: what the import knows of its sources."""
    return {
        "name": name,
        "arch": "spmamba",
        "arch_args": args,
        "sample_rate": sr,
        "n_src": int(args.get("n_srcs", 2)),
        "segment": DEFAULT_SEGMENT,
        "overlap": DEFAULT_OVERLAP,
        "input_loudness": None,
        "aliases": [],
        "description": f"SPMamba imported from an official checkpoint ({PurePosixPath(ck_label).name}), {sr} Hz.",
        "provenance": provenance,
        "eval": {},
    }


def out_dir_problem(out_dir: Path, replace: bool) -> str | None:
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        return f"{out_dir}: already exists and is not a folder"
    if out_dir.is_dir() and not replace and any(out_dir.iterdir()):
        return f"{out_dir}: already exists and is not an empty folder"
    return None


def install(tensors: dict[str, torch.Tensor], cfg: dict, out_dir: Path, replace: bool) -> None:
    """Write the model folder in a temporary sibling, then rename it into place (replacing an existing folder
    only when `replace`, and only once the new one is complete). Nothing is left behind on failure."""
    from safetensors.torch import save_file

    try:  # the store's folder may not be creatable (SEPCLI_HOME a file, read-only): one line, not a traceback
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise CheckpointError(f"{out_dir}: cannot write ({exc.strerror or exc})") from None
    old = None
    try:
        save_file(tensors, str(tmp / "weights.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        apply_default_modes(tmp)  # mkdtemp made it 0700, save_file 0600: readable by others as umask allows
        problem = out_dir_problem(out_dir, replace)
        if problem:
            raise CheckpointError(problem)
        try:
            if out_dir.is_dir():
                if any(out_dir.iterdir()):  # replace: move the old one aside (a dot name: never listed), then swap
                    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
                    os.replace(out_dir, old / "model")
                else:
                    out_dir.rmdir()
            os.replace(tmp, out_dir)
        except BaseException as exc:  # an OSError, or Ctrl-C / SIGTERM between the two renames
            if old is not None and (old / "model").is_dir() and not out_dir.exists():
                os.replace(old / "model", out_dir)  # put the previous model back (the finally deletes `old`)
            if not isinstance(exc, OSError):
                raise
            if out_dir.exists() and old is None:  # another import of the same name finished first
                raise CheckpointError(f"{out_dir}: already exists (installed meanwhile by another process)") \
                    from None
            raise CheckpointError(f"{out_dir}: cannot install ({exc.strerror or exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{out_dir}: cannot write ({exc.strerror or exc})") from None
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors reports a full disk as its own error type
        raise CheckpointError(f"{out_dir}: cannot write ({type(exc).__name__}: {one_line(exc, 200)})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
