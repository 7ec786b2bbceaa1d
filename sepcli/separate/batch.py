"""Batches: find the audio files under a folder, name their outputs so that none collide, split them into shards
(one per process or machine), and separate them with per-file error isolation and an optional JSON-lines
manifest."""

from __future__ import annotations

import fnmatch
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .options import UsageError, check_distinct_outputs
from .results import FileResult
from .separator import Separator

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc")


def find_inputs(root: str | os.PathLike, glob: str | None = None,
                exclude: str | os.PathLike | None = None) -> list[Path]:
    """Audio files under root (recursive), sorted; `glob` (e.g. "*.flac" or "a/**/*.wav") filters relative
    paths; files under `exclude` (the output folder) and hidden/temporary files are skipped."""
    root = Path(root)
    real_root = os.path.realpath(root)
    ex = os.path.realpath(exclude) if exclude is not None else None
    if ex is not None and not ex.startswith(real_root.rstrip(os.sep) + os.sep):
        ex = None  # only an output folder strictly inside the tree is excluded (not the root, not an ancestor)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):  # symbolic links to folders are not followed (no loops)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        d = Path(dirpath)
        real = os.path.realpath(d)
        if ex is not None and (real == ex or real.startswith(ex.rstrip(os.sep) + os.sep)):
            dirnames[:] = []
            continue
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            p = d / f
            rel = p.relative_to(root).as_posix()
            if glob:
                if not (fnmatch.fnmatch(rel, glob) or fnmatch.fnmatch(f, glob)):
                    continue
            elif p.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            found.append(p)
    return sorted(found)


def parse_shard(text: str | None, env: dict | None = None) -> tuple[int, int]:
    """(index, count) from "I/N" (0 <= I < N), else torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    env = os.environ if env is None else env
    if text:
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise UsageError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
        if n < 1 or not (0 <= i < n):
            raise UsageError(f"--shard {text}: need 0 <= I < N")
        return i, n
    if "WORLD_SIZE" in env and "RANK" in env:  # both set (as torchrun sets them): they must make sense
        try:
            i, n = int(env["RANK"]), int(env["WORLD_SIZE"])
        except ValueError:
            raise UsageError(f"RANK={env['RANK']} WORLD_SIZE={env['WORLD_SIZE']} in the environment: not integers "
                             "(torchrun sets them; or give --shard I/N)") from None
        if n >= 1 and 0 <= i < n:
            return i, n
        raise UsageError(f"RANK={i} WORLD_SIZE={n} in the environment: need 0 <= RANK < WORLD_SIZE (or give --shard)")
    return 0, 1


def shard_files(files: list[Path], index: int, count: int) -> list[Path]:
    """Every count-th file from `index`: the shards of 0..count-1 partition the (sorted) list."""
    return files[index::count]


def batch_stems(files: list[Path]) -> dict[Path, str]:
    """The output stem of each input: its file stem, or its full file name when several inputs in the same
    folder share a stem (a.wav and a.flac -> "a.wav", "a.flac"), so no input's outputs replace another's.
    Computed on the whole file list (before sharding), so every shard names alike."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    for f in files:
        groups.setdefault((f.parent, f.stem), []).append(f)
    return {f: (f.name if len(groups[(f.parent, f.stem)]) > 1 else f.stem) for f in files}


def separate_batch(sep: Separator, root: str | os.PathLike, out_dir: str | os.PathLike,
                   glob: str | None = None, jobs: int = 1, shard: tuple[int, int] = (0, 1),
                   manifest: str | os.PathLike | None = None,
                   on_result: Callable[[FileResult], None] | None = None,
                   on_plan: Callable[[list[Path]], None] | None = None) -> list[FileResult]:
    """Separate every audio file under root into the mirrored tree under out_dir.

    Inputs whose outputs all exist are `skipped` (a rerun resumes) unless options.overwrite; so are inputs
    another sepcli process is working on (flag `busy`, see OutputClaim). A bad file is an `error` result and
    the batch goes on. `jobs` files are decoded/encoded in parallel while the model runs one batch at a time.
    With `manifest`, one JSON line per input is appended (status, outputs, error).
    `on_plan` receives this shard's file list before work starts; `on_result` each result as it finishes.
    Inputs sharing a stem in one folder are named by their full file name (batch_stems). An output folder
    equal to root is a UsageError (outputs would become inputs of the next run). KeyboardInterrupt (and
    SystemExit from a signal handler) stops the batch: files in progress are abandoned without leaving
    anything, finished ones stay, and the exception propagates.
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder")
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if os.path.realpath(root) == os.path.realpath(out_dir):
        real = Path(os.path.realpath(root))
        sibling = real.parent / f"{real.name}-separated"
        raise UsageError(f"{out_dir}: the output folder is the input folder; outputs would be taken as inputs "
                         f"by the next run (choose a folder outside it, e.g. {sibling})")
    every = find_inputs(root, glob, exclude=out_dir)
    stems = batch_stems(every)
    check_distinct_outputs(sep, [(str(p), stems[p], out_dir / p.relative_to(root).parent) for p in every])
    files = shard_files(every, *shard)
    if on_plan is not None:
        on_plan(files)
    protect = set(every)
    lock = threading.Lock()
    stop = threading.Event()
    sep.reset_cancel()
    try:
        mf = open(manifest, "a", encoding="utf-8") if manifest else None  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"{manifest}: cannot append the manifest here ({exc.strerror or exc})") from None

    def one(p: Path) -> FileResult | None:
        if stop.is_set():
            return None
        try:
            rel = p.relative_to(root)
            folder = out_dir / rel.parent
            r = sep.separate_file(p, folder, stem=stems[p], protect=protect, resume=True)
            if r.status == "ok" and stems[p] != p.stem and any(q.exists() for q in sep.planned_outputs(p.stem, folder)):
                # named by its full name since another file of its stem arrived: the short-named outputs of an
                # earlier run are left as they are (they may be either file's); say so, as scripts glob them
                r.flags = sorted({*r.flags, "older_outputs_under_stem"})
        except UsageError as exc:  # a name this input cannot have (its stem); the options were checked before
            r = FileResult(input=str(p), status="error", error=f"{p}: {exc}")
        except Exception as exc:  # noqa: BLE001  (separate_file reports per-file problems itself)
            r = FileResult(input=str(p), status="error", error=f"{p}: unexpected error ({type(exc).__name__}: "
                                                               f"{' '.join(str(exc).split())[:300]})")
            r.exception = exc
        if stop.is_set():
            return None  # cancelled mid-way: not a result of this file
        with lock:
            if mf is not None:
                mf.write(json.dumps({"input": r.input, "status": r.status,
                                     "outputs": [i.path for i in r.outputs if i.path],
                                     "error": r.error, "flags": r.flags}) + "\n")
                mf.flush()
            if on_result is not None:
                on_result(r)
        return r

    try:
        if jobs == 1:
            results = [one(p) for p in files]
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(one, p) for p in files]
                try:
                    results = [f.result() for f in futures]
                except BaseException:
                    stop.set()  # queued files return at once; running ones stop at their next block
                    sep.cancel()
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        if mf is not None:
            mf.close()
    return [r for r in results if r is not None]

