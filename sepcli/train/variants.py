"""Voice variants: a real person's speech with formants and pitch moved apart, as a further voice to train on.

Speed perturbation (mixing.py) moves tempo, pitch and formants together by one factor. A variant moves them
independently, the way a different speaker differs: formants (vocal-tract length) by one ratio, the pitch median by
another, tempo unchanged. It uses Praat's "Change gender" (PSOLA resynthesis; Boersma & Weenink, Praat manual,
"Sound: Change gender...") through praat-parselmouth. Each person gets one variant, pushed across towards the
other end of the pitch range (a low voice up, a high voice down), which makes a voice far from every original.
An optional second variant moves it less far the other way (a low voice lower, a high voice higher), a neighbour
of the same pitch class; it measured no better than one (VARIANTS_PER_PERSON).

A variant keeps its person's name, so it is in that person's split (never in two splits) and is never mixed with
its own original; pools mark it with kind "variant", and training uses variants only when asked (`--variants`).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

PITCH_FLOOR, PITCH_CEILING = 75.0, 600.0
LOW_VOICE_HZ = 165.0  # pitch median below this: shifted up, else down


@dataclass(frozen=True)
class VariantShift:
    formant_ratio: float
    pitch_ratio: float


def _parselmouth():
    try:
        import parselmouth
        from parselmouth.praat import call
    except ImportError as e:  # pragma: no cover - the dev extra installs it
        raise RuntimeError("voice variants need praat-parselmouth (pip install praat-parselmouth)") from e
    return parselmouth, call


def _seed_praat(seed: int) -> None:
    """Seed Praat's process-wide random generator. "Change gender" draws random numbers in its resynthesis, so
    without a seed the same call gave samples up to 1.0 apart run to run (session 10: one person's variant built
    twice on one machine); seeded, it repeats exactly. Praat scripting function, Praat 6.1.28 and later."""
    from parselmouth.praat import run

    run(f"random_initializeWithSeedUnsafelyButPredictably({int(seed)})")


def _seed_praat_unpredictably() -> None:
    """Give Praat's generator back its own unpredictable state, for other Praat work in the same process."""
    from parselmouth.praat import run

    run("random_initializeSafelyAndUnpredictably()")


def pitch_median(x: np.ndarray, sr: int, seconds: float = 120.0) -> float:
    """Median f0 (Hz) of the voiced frames in the first `seconds`; nan if none is voiced."""
    parselmouth, call = _parselmouth()
    snd = parselmouth.Sound(np.asarray(x[: int(seconds * sr)], np.float64), sampling_frequency=sr)
    pitch = snd.to_pitch(pitch_floor=PITCH_FLOOR, pitch_ceiling=PITCH_CEILING)
    return float(call(pitch, "Get quantile", 0, 0, 0.5, "Hertz"))


# the recipe's count. Session 8 A/B (3,550 steps per arm, 1 thread each): two variants against one, full validation
# +0.01 +- 0.08 dB, held-out real people -0.15 +- 0.08 dB: no gain, so one (make_data --variants-per-person).
VARIANTS_PER_PERSON = 1


def variant_id(sid: str, n: int) -> str:
    """Pool id of speaker entry `sid`'s n-th variant: "<sid>.v", "<sid>.v2", ..."""
    return f"{sid}.v" if n == 1 else f"{sid}.v{n}"


_VARIANT_SUFFIX = re.compile(r"\.v(\d*)$")


def variant_source(vid: str) -> str:
    """The speaker entry a variant id was made from ("a-en.v2" -> "a-en"); other ids unchanged."""
    return _VARIANT_SUFFIX.sub("", vid)


def variant_number(vid: str) -> int:
    """n of a variant id ("a-en.v" -> 1, "a-en.v2" -> 2)."""
    m = _VARIANT_SUFFIX.search(vid)
    if not m:
        raise ValueError(f"{vid}: not a variant id")
    return int(m.group(1) or 1)


# (n, low voice) -> (formant ratio range, pitch ratio range)
_SHIFT_RANGES = {
    (1, True): ((1.12, 1.20), (1.5, 1.8)), (1, False): ((0.83, 0.90), (0.55, 0.70)),
    (2, True): ((0.88, 0.93), (0.72, 0.85)), (2, False): ((1.07, 1.12), (1.15, 1.30)),
}


def choose_shift(person: str, median_hz: float, n: int = 1) -> VariantShift:
    """The person's n-th variant, deterministic in the name (the new median kept within 85-300 Hz).
    n=1 crosses over: a low voice gets formants x1.12-1.20 and pitch x1.5-1.8, a high voice formants x0.83-0.90
    and pitch x0.55-0.70. n=2 moves less far the other way: a low voice formants x0.88-0.93 and pitch x0.72-0.85,
    a high voice formants x1.07-1.12 and pitch x1.15-1.30."""
    if (n, True) not in _SHIFT_RANGES:
        raise ValueError(f"variant {n}: only 1 and 2 are defined")
    rng = np.random.default_rng(zlib.crc32(person.encode() if n == 1 else f"{person}#{n}".encode()))
    formant_range, pitch_range = _SHIFT_RANGES[n, bool(median_hz < LOW_VOICE_HZ)]
    formant, pitch = rng.uniform(*formant_range), rng.uniform(*pitch_range)
    pitch = float(np.clip(median_hz * pitch, 85.0, 300.0) / median_hz)
    return VariantShift(round(float(formant), 3), round(pitch, 3))


def make_variant(x: np.ndarray, sr: int, shift: VariantShift, median_hz: float,
                 block_seconds: float = 60.0) -> np.ndarray:
    """`x` resynthesised with formants x`shift.formant_ratio` and the pitch median moved to
    `median_hz * shift.pitch_ratio`, same length and rate. Done in blocks (each converted to float64 on its own),
    so a memory-mapped float16 pool is never copied whole. Deterministic: Praat's random generator is seeded
    from the block's position and the shift, so a block's output does not depend on what ran before it."""
    parselmouth, call = _parselmouth()
    out = np.zeros(len(x), np.float32)
    block = int(block_seconds * sr)
    for start in range(0, len(x), block):
        part = np.asarray(x[start: start + block], np.float64)
        if len(part) < sr // 10:  # too short to analyse: left silent rather than unshifted
            continue
        snd = parselmouth.Sound(part, sampling_frequency=sr)
        _seed_praat(zlib.crc32(f"{start}:{shift.formant_ratio}:{shift.pitch_ratio}:{median_hz:.3f}".encode()))
        new = call(snd, "Change gender", PITCH_FLOOR, PITCH_CEILING, shift.formant_ratio,
                   median_hz * shift.pitch_ratio, 1.0, 1.0)
        y = new.values[0]
        if new.sampling_frequency != sr:  # Change gender keeps the rate; guard against a Praat change
            raise RuntimeError(f"Change gender returned {new.sampling_frequency} Hz, expected {sr}")
        n = min(len(y), len(part))
        out[start: start + n] = y[:n]
    _seed_praat_unpredictably()
    peak = np.abs(out).max(initial=0.0)
    if peak > 0.99:
        out *= 0.99 / peak
    return out
