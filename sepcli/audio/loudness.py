"""ITU-R BS.1770-4 integrated loudness, measured in a streaming manner, and the output gain rules.

pyloudnorm.Meter needs the whole signal in memory. `StreamingLoudness` computes the same figure block by
block: the K-weighting uses pyloudnorm's own filter coefficients (pyloudnorm.iirfilter.IIRfilter with the
parameters of `Meter(filter_class="K-weighting")`: high shelf G=4 dB, Q=1/sqrt(2), fc=1500 Hz; high pass
Q=0.5, fc=38 Hz) run with scipy.signal.lfilter carrying the filter state across blocks; the gating follows
pyloudnorm.Meter.integrated_loudness exactly: 400 ms blocks every 100 ms, block j spans samples
[int(0.4*(0.25 j)*rate), int(0.4*(0.25 j + 1)*rate)), number of blocks round((T-0.4)/0.1)+1, absolute gate
-70 LUFS, relative gate -10 LU. Only one cumulative energy value per block boundary is kept (about 80 bytes per
second of audio), so memory is flat for any practical length. Mono signals only (what sepcli measures).
"""

from __future__ import annotations

import math

import numpy as np
from pyloudnorm.iirfilter import IIRfilter
from scipy.signal import lfilter, lfilter_zi

BLOCK_S = 0.400
STEP = 0.25  # 75 % overlap
ABS_GATE = -70.0
REL_GATE = -10.0
PEAK_CEILING_DB = -1.0


class StreamingLoudness:
    """Feed mono blocks with `update(x)`; `loudness()` gives the integrated loudness in LUFS (-inf if silent
    or shorter than one 400 ms block). Also tracks the sample peak (`peak`)."""

    def __init__(self, rate: int):
        self.rate = int(rate)
        shelf = IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, self.rate, "high_shelf")
        hp = IIRfilter(0.0, 0.5, 38.0, self.rate, "high_pass")
        self._filters = [(np.asarray(f.b, float), np.asarray(f.a, float)) for f in (shelf, hp)]
        # zero initial state (pyloudnorm's lfilter call starts from rest)
        self._zi = [np.zeros(len(lfilter_zi(b, a))) for b, a in self._filters]
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
        y = x
        for i, (b, a) in enumerate(self._filters):
            y, self._zi[i] = lfilter(b, a, y, zi=self._zi[i])
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
