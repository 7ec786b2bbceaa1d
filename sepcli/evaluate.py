"""`sepcli eval`: score a model on a LibriMix-style folder through the same pipeline as `separate`.

For each mixture: Separator.separate_array (the path `separate` and `batch` use: resampling, loudness,
segmenting, alignment), then SI-SNR (zero-mean, scale-invariant) and BSS-eval SDR of the permutation-matched
outputs, and their improvements over the unprocessed mixture. Results: mean and median over files, a per-file
CSV, and a per speaker-pair breakdown when metadata.csv names the speakers.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .metrics import separation_scores
from .train.data import librimix_items, read_mono


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


def _stats(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "median": None}
    return {"mean": round(float(v.mean()), 3), "median": round(float(np.median(v)), 3)}


def evaluate(separator, data_dir: str | Path, csv_path: str | Path | None = None, with_sdr: bool = True,
             limit: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Score `separator` (a pipeline.Separator) on every mixture of `data_dir`. Returns a summary dict."""
    data_dir = Path(data_dir)
    mixes, sources = librimix_items(data_dir)
    if limit:
        mixes, sources = mixes[:limit], sources[:limit]
    pairs = _speaker_pairs(data_dir)
    rows = []
    for i, (mix_path, src_paths) in enumerate(zip(mixes, sources)):
        mix, sr = read_mono(mix_path, None)
        refs = np.stack([read_mono(p, sr)[0][: len(mix)] for p in src_paths])
        est = separator.separate_array(mix, sr)  # [n_src, T] at the input's rate and length
        if est.shape[0] != refs.shape[0]:
            raise ValueError(f"{mix_path}: model gives {est.shape[0]} outputs, folder has {refs.shape[0]} sources")
        s = separation_scores(est[:, : refs.shape[1]], refs, mix[: refs.shape[1]], with_sdr=with_sdr)
        row = {"file": mix_path.name, "pair": pairs.get(mix_path.stem, ""),
               "si_snr": float(np.mean(s["si_snr"])), "si_snri": float(np.mean(s["si_snri"]))}
        if with_sdr:
            row.update(sdr=float(np.mean(s["sdr"])), sdri=float(np.mean(s["sdri"])))
        rows.append(row)
        if progress:
            progress(i + 1, len(mixes))
    if csv_path:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    keys = ["si_snr", "si_snri"] + (["sdr", "sdri"] if with_sdr else [])
    summary = {"data": str(data_dir), "n": len(rows), **{k: _stats([r[k] for r in rows]) for k in keys}}
    by_pair: dict[str, list] = {}
    for r in rows:
        if r["pair"]:
            by_pair.setdefault(r["pair"], []).append(r)
    if by_pair:
        summary["pairs"] = {p: {"n": len(rs), **{k: _stats([r[k] for r in rs]) for k in keys}}
                            for p, rs in sorted(by_pair.items())}
    summary["files"] = rows
    return summary
