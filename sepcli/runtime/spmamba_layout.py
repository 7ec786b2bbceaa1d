"""Where conf.yml and the checkpoint are in a release: what a SOURCE is (a release zip, a folder, a checkpoint
file), its files listed (a folder walked a few levels deep), and the one checkpoint and config chosen."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath

from .spmamba_errors import CheckpointError, ConfigError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
CONFIG_SUFFIXES = (".yml", ".yaml")
_WALK_DEPTH = 4  # folders below a source folder searched for conf.yml and checkpoints
_WALK_FILES = 10_000

def _posix(name: str) -> str:
    return name.replace("\\", "/").strip("/")


def base_name(name: str) -> str:
    return PurePosixPath(_posix(name)).name


def _parent(name: str) -> str:
    parent = str(PurePosixPath(_posix(name)).parent)
    return "" if parent == "." else parent


def _junk(name: str) -> bool:
    """macOS archivers' companions (`__MACOSX/`, `._best_model.pth`) and other hidden files."""
    parts = _posix(name).split("/")
    return "__MACOSX" in parts or any(p.startswith(".") for p in parts)


def choose(names: list[str], where: str, want_config: bool) -> tuple[str, str | None, list[str]]:
    """(checkpoint, conf.yml or None, notes) among the file names of an archive or folder.

    The checkpoint: best_model.pth first, then another .pth/.pt, then a Lightning .ckpt; the shallowest first
    among equals. The config: conf.yml before another .yml/.yaml, in the checkpoint's folder or the nearest folder
    above it first. With several candidates, a note says which one was taken."""
    files = [n for n in names if not _junk(n)]
    cks = [n for n in files if base_name(n).lower().endswith(CHECKPOINT_SUFFIXES)]
    if not cks:
        raise CheckpointError(f"{where}: no checkpoint in it (best_model.pth, a .pth or a Lightning .ckpt)")
    cks.sort(key=lambda n: (base_name(n) != "best_model.pth", base_name(n).lower().endswith(".ckpt"),
                            _posix(n).count("/"), n))
    ck, notes = cks[0], []
    if len(cks) > 1:
        others = ", ".join(cks[1:4]) + (", ..." if len(cks) > 4 else "")
        notes.append(f"{where} holds {len(cks)} checkpoints: took {ck} (not {others})")
    if not want_config:
        return ck, None, notes
    ymls = [n for n in files if base_name(n).lower().endswith(CONFIG_SUFFIXES)]
    if not ymls:
        raise ConfigError(f"{where}: no conf.yml in it; give the training config with --config")
    ck_dir = _parent(ck)

    def rank(n: str) -> tuple:
        d = _parent(n)
        above = d == "" or ck_dir == d or ck_dir.startswith(d + "/")
        return (base_name(n) != "conf.yml", not above, -len(d) if above else _posix(n).count("/"), n)

    ymls.sort(key=rank)
    if len(ymls) > 1:
        notes.append(f"{where} holds {len(ymls)} YAML files: took {ymls[0]} as the training config")
    return ck, ymls[0], notes


def source_kind(source: Path) -> str:
    """'folder', 'archive' or 'checkpoint'. A PyTorch checkpoint is itself a zip (its members end in data.pkl):
    a .pth/.pt/.ckpt, or a zip holding data.pkl and no YAML, is a checkpoint."""
    if source.is_dir():
        return "folder"
    suffix = source.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix == ".zip":
        return "archive"
    try:
        if zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as zf:
                names = zf.namelist()
            if any(base_name(n) == "data.pkl" for n in names) and not any(
                    base_name(n).lower().endswith(CONFIG_SUFFIXES) for n in names):
                return "checkpoint"
            return "archive"
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        pass
    return "checkpoint"


def is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def walk(folder: Path) -> list[str]:
    """Relative names of the files under `folder` (symbolic links to folders not followed), a few levels deep."""
    out: list[str] = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        if len(rel.parts) >= _WALK_DEPTH:
            dirs[:] = []
        dirs.sort()
        out.extend((rel / f).as_posix() for f in sorted(files))
        if len(out) > _WALK_FILES:
            raise CheckpointError(f"{folder}: more than {_WALK_FILES} files; give the checkpoint file and --config")
    return out
