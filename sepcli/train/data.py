"""Training data: LibriMix-style folders and dynamic mixing from speaker pools.

LibriMix layout: `mix/`, `s1/`, `s2/` (, `s3/`...) with identical file names; `metadata.csv` optional.
Items are (mix [T], sources [n_src, T]) float32 tensors at the dataset's sample rate.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch.utils.data import Dataset

from ..audio.io import riff_declared_frames, sf_message
from ..errors import UsageError
from ..metrics import SILENT_RATIO, zero_mean_energy
from .mixing import MixOptions, make_mixture, rng_for
from .speakers import load_pool

AUDIO_EXT = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


class DataError(UsageError, ValueError):
    """A training/evaluation data folder that cannot be used (message names the folder and the problem)."""


def librimix_items(folder: Path, missing_ok: bool = False) -> tuple[list[Path], list[list[Path]]]:
    """(mixture paths, per-mixture source paths) of a LibriMix-style folder, sorted by name. A mixture without
    its source files is a DataError, unless `missing_ok` (eval names it and scores the others)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    mix_dir = folder / "mix"
    if not mix_dir.is_dir():
        # LibriMix proper has mix_clean/ (the sources' own mixture: its separation task), mix_both/ (with noise),
        # mix_single/: take mix_clean, else the only one there is; several others are ambiguous
        cands = sorted(p for p in folder.glob("mix*") if p.is_dir())
        if not cands:
            raise DataError(f"{folder}: no mix/ folder (expected LibriMix layout: mix/, s1/, s2/)")
        clean = [p for p in cands if p.name == "mix_clean"]
        if not clean and len(cands) > 1:
            raise DataError(f"{folder}: several mixture folders ({', '.join(p.name + '/' for p in cands)}); keep "
                            "the one to use as mix/ (a symbolic link will do)")
        mix_dir = (clean or cands)[0]
    # s1/, s2/, ... only: WHAMR's s1_reverb/ and the like are other targets, not more speakers
    src_dirs = sorted((p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"s[0-9]+", p.name)),
                      key=lambda p: int(p.name[1:]))
    if len(src_dirs) < 2:
        raise DataError(f"{folder}: expected source folders s1/, s2/ beside {mix_dir.name}/")
    mixes = sorted(p for p in mix_dir.iterdir() if p.suffix.lower() in AUDIO_EXT)
    if not mixes:
        raise DataError(f"{mix_dir}: no audio files")
    sources = []
    for m in mixes:
        srcs = [d / m.name for d in src_dirs]
        missing = [str(s) for s in srcs if not s.exists()]
        if missing and not missing_ok:
            raise DataError(f"{m}: missing source file(s) {', '.join(missing[:3])}")
        sources.append(srcs)
    return mixes, sources


def check_lengths(mixes: list[Path], sources: list[list[Path]]) -> dict:
    """From the file headers (fast): every mixture holds samples, every source lasts at least as long as its
    mixture, every file decodes.
    Returns {"longest": the longest mixture in seconds, "other_rate": the first source whose rate differs from
    its mixture's (it is resampled; LibriMix folders have one rate), or None, "rates": the mixtures' rates}."""
    longest, other_rate, rates = 0.0, None, set()
    for m, srcs in zip(mixes, sources):
        info = _info(m)
        rates.add(int(info.samplerate))
        if info.frames == 0:
            raise DataError(f"{m}: holds no samples")
        need = info.frames / info.samplerate
        longest = max(longest, need)
        for p in srcs:
            si = _info(p)
            if si.frames / si.samplerate < need - 1.0 / info.samplerate:
                raise DataError(f"{m}: source {p} is shorter than the mixture ({si.frames / si.samplerate:.3f} "
                                f"against {need:.3f} s)")
            if other_rate is None and si.samplerate != info.samplerate:
                other_rate = f"{p} is at {si.samplerate} Hz, its mixture at {info.samplerate} Hz"
    return {"longest": longest, "other_rate": other_rate, "rates": sorted(rates)}


def _info(path: Path):
    try:
        return sf.info(os.fsencode(path))
    except RuntimeError as exc:  # soundfile.LibsndfileError
        raise DataError(f"{path}: cannot decode audio ({sf_message(exc, path)})") from None


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """The samples [T, channels] float32 and rate of a data file; DataError naming it when it does not decode,
    holds no samples, is a WAV cut short, or holds NaN or infinite samples (they would poison the loss or the
    scores)."""
    try:
        x, sr = sf.read(os.fsencode(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.SoundFileError) as exc:  # soundfile.LibsndfileError: opening, or mid-file (lost sync)
        raise DataError(f"{path}: cannot decode audio ({sf_message(exc, path)})") from None
    if x.shape[0] == 0:
        raise DataError(f"{path}: holds no samples")
    with open(os.fsencode(path), "rb") as fh:
        declared = riff_declared_frames(fh.fileno())
    if declared is not None and declared > x.shape[0]:  # libsndfile reads a cut WAV as a shorter one
        raise DataError(f"{path}: cut short (holds {x.shape[0]} of the {declared} frames its header declares)")
    if not np.isfinite(x).all():
        raise DataError(f"{path}: holds non-finite samples (NaN or Inf)")
    return x, sr


def read_mono(path: Path, sample_rate: int | None) -> tuple[np.ndarray, int]:
    """A data file downmixed to mono, resampled to `sample_rate` when given (read_audio's checks)."""
    return mono_at(*read_audio(path), sample_rate)


def mono_at(x: np.ndarray, sr: int, sample_rate: int | None) -> tuple[np.ndarray, int]:
    """Samples [T, channels] downmixed to mono and resampled to `sample_rate` when given."""
    x = x.mean(1)
    if sample_rate and sr != sample_rate:
        x = soxr.resample(x, sr, sample_rate).astype(np.float32)
        sr = sample_rate
    return x, sr


class LibriMixDataset(Dataset):
    """Fixed mixtures from a LibriMix folder; `segment` seconds crops (random, seeded per item) or whole files."""

    def __init__(self, folder: Path, sample_rate: int, segment: float | None = None, seed: int = 0):
        self.folder = Path(folder)
        self.mixes, self.sources = librimix_items(folder)
        self.summary = check_lengths(self.mixes, self.sources)
        self.sample_rate = sample_rate
        self.segment = segment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.mixes)

    def fingerprint(self, limit: int | None = None) -> str:
        """A digest of the first `limit` items' names and decoded samples (mixture and sources; file headers,
        which carry write times, do not count): tells a resumed run whether it validates on the set its best
        score was measured on (a set rebuilt identically gives the same digest). The same pass counts, in
        `scorable`, the mixtures validation scores: as `validate` reads them (mono, at the dataset's rate,
        sources cut to the mixture's length), those without a silent source (metrics.silent_reference)."""
        n = len(self) if limit is None else min(limit, len(self))
        h = hashlib.sha256(f"{n} {self.sample_rate}".encode())
        lengths, mix_energy, silent = [], [], [False] * n
        for j, path in enumerate(self.mixes[:n] + [p for srcs in self.sources[:n] for p in srcs]):
            x, sr = read_audio(path)
            h.update(os.fsencode(Path(path).name) + b"\0" + str(sr).encode() + x.tobytes())
            m, _ = mono_at(x, sr, self.sample_rate)
            if j < n:
                lengths.append(len(m))
                mix_energy.append(zero_mean_energy(m))
            else:
                i = (j - n) // len(self.sources[0])
                silent[i] |= zero_mean_energy(m[: lengths[i]]) <= SILENT_RATIO * mix_energy[i]
        self.scorable = silent.count(False)
        return h.hexdigest()[:16]

    def __getitem__(self, i: int):
        mix, _ = read_mono(self.mixes[i], self.sample_rate)
        srcs = np.stack([read_mono(p, self.sample_rate)[0][: len(mix)] for p in self.sources[i]])
        if self.segment:
            n = int(self.segment * self.sample_rate)
            if len(mix) > n:
                start = int(rng_for(self.seed + self.epoch, i).integers(0, len(mix) - n + 1))
                mix, srcs = mix[start: start + n], srcs[:, start: start + n]
            elif len(mix) < n:
                mix = np.pad(mix, (0, n - len(mix)))
                srcs = np.pad(srcs, ((0, 0), (0, n - srcs.shape[1])))
        return torch.from_numpy(np.ascontiguousarray(mix)), torch.from_numpy(np.ascontiguousarray(srcs))


class DynamicMixDataset(Dataset):
    """Endless-style dataset: item i is a fresh mixture drawn with rng(seed, i) from a split's speaker pools."""

    def __init__(self, pools: Path, sample_rate: int, options: MixOptions, split: str = "train",
                 length: int = 10**9, seed: int = 0, variants: bool = False):
        if not (Path(pools) / "speakers.json").is_file():
            raise DataError(f"{pools}: not a speaker-pool folder (no speakers.json; recipes/make_data.py makes one)")
        kinds = ("real", "synthetic", "variant") if variants else ("real", "synthetic")
        sr_pool, speakers, audio = load_pool(Path(pools), split, kinds)
        if variants and not any(s.kind == "variant" for s in speakers):
            raise DataError(f"{pools}: no voice variants in split {split!r} (recipes/make_data.py --stage variants)")
        if len({s.person for s in speakers}) < options.n_src:
            raise DataError(f"{pools}: split {split!r} has fewer than {options.n_src} persons")
        if sr_pool != sample_rate:
            audio = [soxr.resample(np.asarray(a, np.float32), sr_pool, sample_rate).astype(np.float16)
                     for a in audio]
        self.audio = audio
        self.persons = [s.person for s in speakers]
        self.real = {s.person for s in speakers if s.kind == "real"}
        self.speakers = speakers
        self.sample_rate = sample_rate
        self.options = options
        self.length = length
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        mix, srcs, _ = make_mixture(rng_for(self.seed, i), self.audio, self.persons, self.sample_rate,
                                    self.options, self.real)
        return torch.from_numpy(mix), torch.from_numpy(srcs)
