"""Two-(or more-)speaker mixtures made on the fly from speaker pools, deterministic given (seed, index).

Augmentations, each optional and drawn per source: speed perturbation (resampling by a factor: tempo, pitch and
formants move together, which makes new voices out of each person), spectral tilt (first-order filter), synthetic
reverberation (exponentially decaying noise with a random RT60, direct path kept; the reverberant sources are the
targets), relative gain between speakers, additive noise on the mixture only, and the overall level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve, lfilter


@dataclass
class MixOptions:
    n_src: int = 2
    seconds: float = 2.0
    gain_db: float = 5.0            # level of one source relative to another, within [-gain_db, +gain_db]:
    #                                 uniform for two sources (as wsj0-2mix's 0..5 dB with a random sign)
    speed: float = 0.15             # speed factor in [1-speed, 1+speed] (0 = off)
    speed_prob: float = 0.7
    tilt_prob: float = 0.3
    reverb_prob: float = 0.0
    noise_prob: float = 0.0
    level_db: tuple = (-33.0, -17.0)  # mixture RMS in dBFS
    min_active: float = 0.5         # a crop must have at least this share of frames with speech
    real_share: float | None = None  # chance each source is a real recorded person (None: persons uniformly)
    mixed_share: float | None = None  # 2 sources with real_share: chance of a real+synthetic pair; otherwise both
    #                                   sources are of one kind, real with probability real_share
    person_power: float = 0.0       # persons (within a kind) drawn with probability ∝ seconds**person_power:
    #                                 0 uniformly, 1 by amount of audio, 0.5 in between (many short pools of
    #                                 one source, e.g. a game's cast, then weigh less than a few long readers)


def rng_for(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _active_share(x: np.ndarray, sr: int) -> float:
    hop = max(1, sr // 50)
    n = len(x) // hop
    if n == 0:
        return 0.0
    e = (x[: n * hop].reshape(n, hop).astype(np.float32) ** 2).mean(1)
    peak = e.max()
    return float((e > peak * 1e-3).mean()) if peak > 0 else 0.0


def crop(rng: np.random.Generator, pool: np.ndarray, length: int, sr: int, min_active: float) -> np.ndarray:
    """A random crop of `length` samples with speech in it (zero-padded if the pool is shorter)."""
    if len(pool) <= length:
        out = np.zeros(length, np.float32)
        start = rng.integers(0, length - len(pool) + 1)
        out[start: start + len(pool)] = pool
        return out
    best, best_share = None, -1.0
    for _ in range(6):
        start = int(rng.integers(0, len(pool) - length + 1))
        seg = np.asarray(pool[start: start + length], dtype=np.float32)
        share = _active_share(seg, sr)
        if share >= min_active:
            return seg
        if share > best_share:
            best, best_share = seg, share
    return best


def speed_perturb(x: np.ndarray, factor: float, length: int) -> np.ndarray:
    """Resample by `factor` (>1 = faster, higher) with linear interpolation; return `length` samples."""
    pos = np.arange(length) * factor
    pos = pos[pos <= len(x) - 1]
    out = np.zeros(length, np.float32)
    out[: len(pos)] = np.interp(pos, np.arange(len(x)), x)
    return out


def synthetic_rir(rng: np.random.Generator, sr: int) -> np.ndarray:
    rt60 = rng.uniform(0.15, 0.6)
    n = int(sr * rt60)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # 60 dB decay at rt60
    tail[: int(0.002 * sr)] = 0.0
    rir = tail * rng.uniform(0.1, 0.5) / (np.sqrt((tail**2).sum()) + 1e-9)
    rir[0] = 1.0
    return rir.astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def choose_persons(rng: np.random.Generator, names: list[str], real: set[str], n: int,
                   real_share: float | None, mixed_share: float | None = None,
                   weights: np.ndarray | None = None) -> list[int]:
    """n different indices into `names`: uniformly, or each a real person with probability `real_share`; with
    `mixed_share` (two sources) a real+synthetic pair with that probability, else a same-kind pair (both real
    with probability `real_share`). A kind with too few persons falls back to any other person. `weights`
    (one per name) makes every draw among the candidates proportional to them instead of uniform."""

    def pick(cands: list[int]) -> int:
        w = None if weights is None else weights[cands]
        if w is None or not w.sum() > 0:  # all-zero weights (empty pools): uniformly
            return int(cands[int(rng.integers(0, len(cands)))])
        return int(cands[int(rng.choice(len(cands), p=w / w.sum()))])

    if real_share is None or not real or len(real) == len(names):
        if weights is None:
            return [int(i) for i in rng.choice(len(names), size=n, replace=False)]
        out: list[int] = []
        for _ in range(n):
            out.append(pick([i for i in range(len(names)) if i not in out]))
        return out
    if mixed_share is not None and n == 2:
        if rng.random() < mixed_share:
            kinds = [True, False] if rng.random() < 0.5 else [False, True]
        else:
            kinds = [rng.random() < real_share] * 2
    else:
        kinds = [None] * n
    out = []
    for kind in kinds:
        want_real = rng.random() < real_share if kind is None else kind
        cands = [i for i, p in enumerate(names) if (p in real) == want_real and i not in out]
        if not cands:
            cands = [i for i in range(len(names)) if i not in out]
        out.append(pick(cands))
    return out


def _relative_gains(rng: np.random.Generator, n: int, gain_db: float) -> np.ndarray:
    """Per-source gains in dB, centred on 0, any two of which differ by at most `gain_db`."""
    if n == 2:
        rel = rng.uniform(-gain_db, gain_db)  # source 1 relative to source 2, uniform
        return np.array([rel / 2, -rel / 2])
    gains = rng.uniform(-gain_db / 2, gain_db / 2, size=n)
    return gains - gains.mean()


def make_mixture(rng: np.random.Generator, pools: list[np.ndarray], persons: list[str], sr: int,
                 opt: MixOptions, real: set[str] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw n_src different persons and mix them. Returns (mix [T], sources [n_src, T], metadata).

    `real` names the real recorded persons (for `opt.real_share`)."""
    length = int(round(opt.seconds * sr))
    by_person: dict[str, list[int]] = {}
    for i, p in enumerate(persons):
        by_person.setdefault(p, []).append(i)
    names = sorted(by_person)
    weights = None
    if opt.person_power:
        seconds = np.array([sum(len(pools[i]) for i in by_person[p]) / sr for p in names])
        weights = seconds ** opt.person_power
    chosen_persons = choose_persons(rng, names, real or set(), opt.n_src, opt.real_share, opt.mixed_share,
                                    weights)
    srcs, meta = [], {"speakers": [], "gains_db": [], "speed": [], "reverb": []}
    gains = _relative_gains(rng, opt.n_src, opt.gain_db)
    for k, pi in enumerate(chosen_persons):
        idxs = by_person[names[pi]]
        si = idxs[int(rng.integers(0, len(idxs)))]
        factor = 1.0
        if opt.speed > 0 and rng.random() < opt.speed_prob:
            factor = float(rng.uniform(1 - opt.speed, 1 + opt.speed))
        raw = crop(rng, pools[si], int(np.ceil(length * factor)) + 2, sr, opt.min_active)
        x = speed_perturb(raw, factor, length) if factor != 1.0 else raw[:length].astype(np.float32)
        if rng.random() < opt.tilt_prob:
            x = lfilter([1.0, -rng.uniform(-0.6, 0.6)], [1.0], x).astype(np.float32)
        reverb = rng.random() < opt.reverb_prob
        if reverb:
            x = fftconvolve(x, synthetic_rir(rng, sr))[:length].astype(np.float32)
        x = x / _rms(x) * 10 ** (gains[k] / 20)
        srcs.append(x)
        meta["speakers"].append(names[pi])
        meta["gains_db"].append(round(float(gains[k]), 2))
        meta["speed"].append(round(factor, 3))
        meta["reverb"].append(bool(reverb))
    sources = np.stack(srcs)
    mix = sources.sum(0)
    if rng.random() < opt.noise_prob:
        snr = rng.uniform(15, 40)
        noise = rng.standard_normal(length).astype(np.float32)
        if rng.random() < 0.5:  # pink-ish
            noise = lfilter([1.0], [1.0, -0.95], noise).astype(np.float32)
        mix = mix + noise / _rms(noise) * _rms(mix) * 10 ** (-snr / 20)
    level = 10 ** (rng.uniform(*opt.level_db) / 20) / _rms(mix)
    peak = np.abs(mix).max() * level
    if peak > 0.95:
        level *= 0.95 / peak
    return (mix * level).astype(np.float32), (sources * level).astype(np.float32), meta
