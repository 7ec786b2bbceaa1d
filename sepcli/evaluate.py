"""`sepcli eval`: score a model on a LibriMix-style folder through the same pipeline as `separate`.

For each mixture: Separator.separate_array (the path `separate` and `batch` use: resampling, loudness,
segmenting, alignment), then SI-SNR (zero-mean, scale-invariant) and BSS-eval SDR of the permutation-matched
outputs, and their improvements over the unprocessed mixture. Results: mean and median over files, a per-file
CSV, and a per speaker-pair breakdown when metadata.csv names the speakers.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import FailedError, one_line
from .metrics import finite_or_none, separation_scores, silent_reference
from .train.data import DataError, librimix_items, read_mono


class NothingScored(FailedError, ValueError):
    """No mixture could be scored; `failed` lists each ({"file", "error"}), str() the first (and how many more)."""

    def __init__(self, failed: list[dict], summary: dict | None = None):
        self.failed, self.summary = failed, summary  # summary: what evaluate() returns, with n = 0
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        super().__init__(failed[0]["error"] + more)


def _speaker_pairs(folder: Path) -> dict[str, str]:
    """mixture file stem -> 'spkA+spkB' (sorted) from metadata.csv, if it has speaker columns."""
    meta = folder / "metadata.csv"
    if not meta.is_file():
        return {}
    out = {}
    with open(meta, newline="") as f:
        for row in csv.DictReader(f):
            spk = sorted(v for k, v in row.items() if k and k.startswith("speaker_") and v)
            stem = Path(row.get("mixture_path") or row.get("mixture_ID", "")).stem
            if spk and stem:
                out[stem] = "+".join(spk)
    return out


def _stats(values: list[float | None]) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": None, "median": None}
    return {"n": int(v.size), "mean": round(float(v.mean()), 3), "median": round(float(np.median(v)), 3)}


def _read_item(mix_path: Path, src_paths: list[Path]) -> tuple[np.ndarray, np.ndarray, int]:
    """The mixture and its references at the mixture's rate; ValueError (without the path) on unusable data."""
    missing = [str(p) for p in src_paths if not p.exists()]
    if missing:
        raise ValueError(f"missing source file(s) {', '.join(missing[:3])}")
    mix, sr = read_mono(mix_path, None)  # DataError naming the file: no samples, NaN or Inf, does not decode
    refs = []
    for p in src_paths:
        ref = read_mono(p, sr)[0]
        if len(ref) < len(mix):
            raise ValueError(f"reference {p} is shorter than the mixture ({len(ref)} < {len(mix)} samples at "
                             f"{sr} Hz)")
        refs.append(ref[: len(mix)])
    return mix, np.stack(refs), sr


class _CsvFile:
    """The per-file CSV, written to a temporary file beside its target and renamed when complete: an unwritable
    path fails before any scoring, and a failed run leaves no partial CSV."""

    def __init__(self, path: str | Path):
        import tempfile

        self.path = Path(path)
        if self.path.is_dir():
            raise DataError(f"{self.path}: --csv names a folder, not a file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            raise DataError(f"{self.path}: cannot write the CSV here ({exc.strerror or exc})") from None
        # surrogateescape: a file name that is not UTF-8 is written as its own bytes, as the file system has it
        self.f = os.fdopen(fd, "w", newline="", encoding="utf-8", errors="surrogateescape")

    def commit(self, rows: list[dict]) -> None:
        with self.f:
            w = csv.DictWriter(self.f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


def evaluate(separator, data_dir: str | Path, csv_path: str | Path | None = None, with_sdr: bool = True,
             limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Score `separator` (a pipeline.Separator) on every mixture of `data_dir`. Returns a summary dict. A mixture
    that cannot be scored is listed under "failed" ({"file", "error"}, the error naming it) and left out of the
    figures, as `batch` goes past a bad file; when none can be scored, a ValueError with the first error."""
    data_dir = Path(data_dir)
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    mixes, sources = librimix_items(data_dir, missing_ok=True)
    n_src = separator.model.n_src
    if len(sources[0]) != n_src:  # every mixture would fail after its separation
        raise DataError(f"{data_dir}: {len(sources[0])} source folders (s1/ ...) but the model separates {n_src} "
                        "speakers")
    if limit:
        mixes, sources = mixes[:limit], sources[:limit]
    pairs = _speaker_pairs(data_dir)
    out = _CsvFile(csv_path) if csv_path else None
    rows, failed = [], []
    try:
        for i, (mix_path, src_paths) in enumerate(zip(mixes, sources)):
            if progress:
                progress(i, len(mixes))
            try:
                mix, refs, sr = _read_item(mix_path, src_paths)
                est = separator.separate_array(mix, sr)  # [n_src, T] at the input's rate and length
                if est.shape[0] != refs.shape[0]:
                    raise ValueError(f"model gives {est.shape[0]} outputs, folder has {refs.shape[0]} sources")
                with np.errstate(divide="ignore", invalid="ignore"):  # a silent reference: SDR -inf, reported
                    s = separation_scores(est[:, : refs.shape[1]], refs, mix[: refs.shape[1]], with_sdr=with_sdr)
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 (named: which file, what problem)
                msg = one_line(exc)
                failed.append({"file": str(mix_path), "error": msg if str(mix_path) in msg else f"{mix_path}: {msg}"})
                continue
            # degenerate files (a silent reference: SDR -inf, SI-SNR only its epsilon) are kept as missing, so the
            # CSV and the JSON stay valid; the means skip them and say how many they cover
            undefined = silent_reference(refs, mix)
            row = {"file": mix_path.name, "pair": pairs.get(mix_path.stem, ""),
                   "si_snr": None if undefined else finite_or_none(float(np.mean(s["si_snr"]))),
                   "si_snri": None if undefined else finite_or_none(float(np.mean(s["si_snri"])))}
            if with_sdr:
                row.update(sdr=finite_or_none(float(np.mean(s["sdr"]))),
                           sdri=finite_or_none(float(np.mean(s["sdri"]))))
            rows.append(row)
        if progress:
            progress(len(mixes), len(mixes))
        if not rows:
            raise NothingScored(failed, _summary(data_dir, rows, failed, with_sdr))
        if out is not None:
            out.commit(rows)
    except BaseException:
        if out is not None:
            out.abort()
        raise
    return _summary(data_dir, rows, failed, with_sdr)


def _summary(data_dir: Path, rows: list[dict], failed: list[dict], with_sdr: bool) -> dict:
    keys = ["si_snr", "si_snri"] + (["sdr", "sdri"] if with_sdr else [])
    summary = {"data": str(data_dir), "n": len(rows), **{k: _stats([r[k] for r in rows]) for k in keys}}
    by_pair: dict[str, list] = {}
    for r in rows:
        if r["pair"]:
            by_pair.setdefault(r["pair"], []).append(r)
    if by_pair:
        summary["pairs"] = {p: {"n": len(rs), **{k: _stats([r[k] for r in rs]) for k in keys}}
                            for p, rs in sorted(by_pair.items())}
    summary["failed"] = failed
    summary["files"] = rows
    return summary
