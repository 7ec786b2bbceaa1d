"""ITU-R BS.1770-4 integrated loudness, measured in a streaming manner, and the output gain rules.

pyloudnorm.Meter needs the whole signal in memory. `StreamingLoudness` computes the same figure block by
block. The K-weighting is pyloudnorm's (the parameters of `Meter(filter_class="K-weighting")`: an RBJ-cookbook
high shelf G=4 dB, Q=1/sqrt(2), fc=1500 Hz, then a high pass Q=0.5, fc=38 Hz; `k_weighting_biquads` computes
the same coefficients, bit for bit, with the same float64 expressions). pyloudnorm runs them with
scipy.signal.lfilter from rest; here their cascade's impulse response, run until its state has decayed below
1e-22 of its peak (3,350 taps at 16 kHz), is applied as an FIR filter (direct for short blocks, FFT
overlap-save for long ones) with the last taps-1 input samples carried across blocks: the same output within
about 1e-13 of its peak, without importing scipy.signal (0.6 s of every start-up). The gating follows
pyloudnorm.Meter.integrated_loudness exactly: 400 ms blocks every 100 ms, block j spans samples
[int(0.4*(0.25 j)*rate), int(0.4*(0.25 j + 1)*rate)), number of blocks round((T-0.4)/0.1)+1, absolute gate
-70 LUFS, relative gate -10 LU. Only one cumulative energy value per block boundary is kept (about 80 bytes per
second of audio), so memory is flat for any practical length. Mono signals only (what sepcli measures).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

BLOCK_S = 0.400
STEP = 0.25  # 75 % overlap
ABS_GATE = -70.0
REL_GATE = -10.0
PEAK_CEILING_DB = -1.0
DECAYED = 1e-22  # the impulse response is cut where the cascade's state is below this fraction of its peak
FFT_SIZE_PER_TAP = 4  # overlap-save FFT length: the next power of two >= 4 x taps (3 x taps new samples each)


def k_weighting_biquads(rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(b, a) of the two K-weighting biquads at `rate`, normalised by a0 (RBJ's "Cookbook formulae for audio
    equalizer biquad filter coefficients", high shelf and high pass, as pyloudnorm's IIRfilter evaluates them)."""
    out = []
    for kind, gain_db, q, fc in (("high_shelf", 4.0, 1 / np.sqrt(2), 1500.0), ("high_pass", 0.0, 0.5, 38.0)):
        big_a = 10 ** (gain_db / 40.0)
        w0 = 2.0 * np.pi * (fc / rate)
        alpha = np.sin(w0) / (2.0 * q)
        cos, root = np.cos(w0), np.sqrt(big_a)
        if kind == "high_shelf":
            b = [big_a * ((big_a + 1) + (big_a - 1) * cos + 2 * root * alpha),
                 -2 * big_a * ((big_a - 1) + (big_a + 1) * cos),
                 big_a * ((big_a + 1) + (big_a - 1) * cos - 2 * root * alpha)]
            a = [(big_a + 1) - (big_a - 1) * cos + 2 * root * alpha,
                 2 * ((big_a - 1) - (big_a + 1) * cos),
                 (big_a + 1) - (big_a - 1) * cos - 2 * root * alpha]
        else:
            b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
            a = [1 + alpha, -2 * cos, 1 - alpha]
        out.append((np.array(b) / a[0], np.array(a) / a[0]))
    return out


@lru_cache(maxsize=8)
def k_weighting_fir(rate: int) -> tuple[np.ndarray, int, np.ndarray]:
    """(h, n_fft, rfft(h, n_fft)): the K-weighting cascade's impulse response from rest, run sample by sample
    (direct form I) until every biquad's last inputs and outputs are below DECAYED times the response's peak."""
    sections = k_weighting_biquads(rate)
    states = [[0.0, 0.0, 0.0, 0.0] for _ in sections]  # x[n-1], x[n-2], y[n-1], y[n-2]
    h: list[float] = []
    peak = 0.0
    while True:
        v = 1.0 if not h else 0.0
        for (b, a), st in zip(sections, states):
            y = b[0] * v + b[1] * st[0] + b[2] * st[1] - a[1] * st[2] - a[2] * st[3]
            st[1], st[0], st[3], st[2] = st[0], v, st[2], y
            v = y
        h.append(float(v))
        peak = max(peak, abs(v))
        if len(h) > 4 and all(max(map(abs, st)) < DECAYED * peak for st in states):
            break
    taps = np.array(h)
    n_fft = 1 << (FFT_SIZE_PER_TAP * len(taps) - 1).bit_length()
    return taps, n_fft, np.fft.rfft(taps, n_fft)


class _StreamFIR:
    """An FIR filter applied block by block from rest: each block's outputs are those of the whole signal."""

    def __init__(self, rate: int):
        self.h, self.n_fft, self.spectrum = k_weighting_fir(rate)
        self.hist = np.zeros(len(self.h) - 1)  # the last taps-1 inputs (zeros: from rest)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        taps, n = len(self.h), len(x)
        buf = np.concatenate([self.hist, x])
        self.hist = buf[n:].copy()
        if n * taps <= 1 << 20:  # short block: direct convolution is cheaper than an FFT
            return np.convolve(buf, self.h, mode="valid")
        step = self.n_fft - taps + 1  # new outputs per FFT (overlap-save)
        out = np.empty(n)
        for i in range(0, n, step):
            seg = buf[i : i + step + taps - 1]
            y = np.fft.irfft(np.fft.rfft(seg, self.n_fft) * self.spectrum, self.n_fft)
            out[i : i + len(seg) - taps + 1] = y[taps - 1 : len(seg)]
        return out


class StreamingLoudness:
    """Feed mono blocks with `update(x)`; `loudness()` gives the integrated loudness in LUFS (-inf if silent
    or shorter than one 400 ms block). Also tracks the sample peak (`peak`)."""

    def __init__(self, rate: int):
        self.rate = int(rate)
        self._filter = _StreamFIR(self.rate)  # K-weighting from rest, as pyloudnorm's lfilter calls
        self.n = 0  # samples seen
        self._energy = 0.0  # cumulative sum of squares of the K-weighted signal
        self._lo: list[float] = []  # cumulative energy before the start of block j
        self._hi: list[float] = []  # cumulative energy before the end of block j
        self.peak = 0.0

    def _bounds(self, j: int) -> tuple[int, int]:
        # the same float expressions as pyloudnorm, so the integer bounds agree exactly
        lo = int(BLOCK_S * (j * STEP) * self.rate)
        hi = int(BLOCK_S * (j * STEP + 1) * self.rate)
        return lo, hi

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0:
            return
        self.peak = max(self.peak, float(np.max(np.abs(x))))
        y = self._filter(x)
        cum = self._energy + np.concatenate([[0.0], np.cumsum(y * y)])  # cum[k] = energy before sample n+k
        start, end = self.n, self.n + len(x)
        # record the cumulative energy at every block boundary reached so far (two monotone pointers)
        for store, side in ((self._lo, 0), (self._hi, 1)):
            while True:
                b = self._bounds(len(store))[side]
                if b > end:
                    break
                store.append(float(cum[b - start]))
        self._energy = float(cum[-1])
        self.n = end

    def loudness(self) -> float:
        if self.n < BLOCK_S * self.rate:
            return -math.inf
        t = self.n / self.rate
        n_blocks = int(np.round((t - BLOCK_S) / (BLOCK_S * STEP))) + 1
        size = BLOCK_S * self.rate
        z = np.empty(n_blocks)
        for j in range(n_blocks):
            # boundaries past the end of the signal count the energy up to the end (pyloudnorm's slicing)
            e_lo = self._lo[j] if j < len(self._lo) else self._energy
            e_hi = self._hi[j] if j < len(self._hi) else self._energy
            z[j] = max(e_hi - e_lo, 0.0) / size
        with np.errstate(divide="ignore"):
            lj = -0.691 + 10 * np.log10(z)
        keep = lj >= ABS_GATE
        if not keep.any():
            return -math.inf
        rel = -0.691 + 10 * np.log10(z[keep].mean()) + REL_GATE
        keep = (lj > rel) & (lj > ABS_GATE)
        if not keep.any():
            return -math.inf
        return float(-0.691 + 10 * np.log10(z[keep].mean()))

    def level(self) -> float:
        """A loudness-like level for telling silence from sound at any length: the integrated loudness when the
        signal holds a 400 ms block, else the ungated K-weighted mean square in the same units (-0.691 + 10 log10
        of the mean square); -inf when nothing was seen or it is below the absolute gate (-70)."""
        if self.n >= BLOCK_S * self.rate:
            return self.loudness()
        if self.n == 0 or self._energy <= 0.0:
            return -math.inf
        lvl = -0.691 + 10 * math.log10(self._energy / self.n)
        return lvl if lvl >= ABS_GATE else -math.inf


def integrated_loudness(x: np.ndarray, rate: int) -> float:
    """Integrated loudness of a whole mono signal (convenience over StreamingLoudness)."""
    m = StreamingLoudness(rate)
    m.update(x)
    return m.loudness()


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def gain_to_db(g: float) -> float:
    return 20.0 * math.log10(g) if g > 0 else -math.inf


def target_gain(loudness: float, peak: float, target_lufs: float,
                ceiling_db: float = PEAK_CEILING_DB) -> tuple[float, bool]:
    """Gain that brings a signal of `loudness` LUFS to `target_lufs`, reduced so that `peak * gain` stays at or
    below `ceiling_db` dBFS. Returns (gain, limited) where `limited` says the peak rule lowered the gain.
    A silent signal (-inf LUFS) gets gain 1."""
    if not math.isfinite(loudness) or peak <= 0:
        return 1.0, False
    g = db_to_gain(target_lufs - loudness)
    ceiling = db_to_gain(ceiling_db) * (1 - 1e-4)  # margin for float32 rounding and 16-bit quantisation
    if peak * g > ceiling:
        return ceiling / peak, True
    return g, False
