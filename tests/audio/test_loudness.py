"""Streaming BS.1770 loudness against pyloudnorm.Meter on whole signals, and the output gain rules."""

from __future__ import annotations

import math

import numpy as np
import pyloudnorm
import pytest

from sepcli.audio.loudness import StreamingLoudness, db_to_gain, integrated_loudness, target_gain


def _speechlike(rng, n, rate):
    # noise bursts with pauses and a wide level range, so both gates matter; a strong component below 100 Hz
    # (integrated white noise, high-passed at a few Hz) so the K-weighting's 38 Hz high-pass matters too
    env = np.repeat(rng.choice([0.0, 0.01, 0.1, 0.5], size=n // (rate // 10) + 1), rate // 10)[:n]
    low = np.cumsum(rng.standard_normal(n))
    low -= np.interp(np.arange(n), np.arange(0, n, rate // 8), low[:: rate // 8])  # less its slow drift
    low *= 3.0 / (np.std(low) + 1e-12)
    return (rng.standard_normal(n) + low) * env


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("seconds", [0.4, 1.37, 6.0])
def test_streaming_equals_pyloudnorm(rng, rate, seconds):
    x = _speechlike(rng, int(seconds * rate), rate)
    ref = pyloudnorm.Meter(rate).integrated_loudness(x)
    for block in (1, 997, 4096, len(x)):
        if block == 1 and len(x) > 20000:
            continue
        m = StreamingLoudness(rate)
        for i in range(0, len(x), block):
            m.update(x[i : i + block])
        got = m.loudness()
        if math.isinf(ref):
            assert math.isinf(got)
        else:
            assert abs(got - ref) < 1e-6, (block, got, ref)  # the same filters and gates, exactly
    assert m.peak == pytest.approx(np.abs(x).max())


def test_sine_reference_level():
    # BS.1770: a 0 dBFS 997 Hz sine in one channel reads -3.01 LUFS (K-weighting ~ +0.0 dB near 1 kHz)
    rate = 48000
    t = np.arange(5 * rate) / rate
    x = np.sin(2 * np.pi * 997 * t)
    assert integrated_loudness(x, rate) == pytest.approx(-3.01, abs=0.05)


def test_silence_and_short_signals_are_minus_inf():
    assert integrated_loudness(np.zeros(16000), 16000) == -math.inf
    assert integrated_loudness(np.ones(100) * 0.1, 16000) == -math.inf  # shorter than one 400 ms block


def test_level_of_short_signals_is_the_ungated_k_weighted_mean_square():
    rate = 48000
    t = np.arange(int(0.2 * rate)) / rate
    m = StreamingLoudness(rate)
    m.update(np.sin(2 * np.pi * 997 * t))  # 200 ms of a 0 dBFS 997 Hz sine: about -3.01, as in 5 s of it
    assert m.loudness() == -math.inf and m.level() == pytest.approx(-3.01, abs=0.1)
    quiet = StreamingLoudness(rate)
    quiet.update(1e-5 * np.sin(2 * np.pi * 997 * t))  # -103 LUFS-like: below the absolute gate
    assert quiet.level() == -math.inf
    assert StreamingLoudness(rate).level() == -math.inf
    long = StreamingLoudness(rate)
    long.update(np.sin(2 * np.pi * 997 * np.arange(2 * rate) / rate))
    assert long.level() == long.loudness()


def test_target_gain_reaches_target_without_peak_problem(rng):
    x = 0.01 * rng.standard_normal(32000)
    lufs = integrated_loudness(x, 16000)
    g, limited = target_gain(lufs, np.abs(x).max(), -23.0)
    assert not limited
    assert integrated_loudness(x * g, 16000) == pytest.approx(-23.0, abs=0.01)


def test_target_gain_limits_peaks():
    x = np.zeros(32000)
    x[::4000] = 0.5  # sparse clicks: quiet by loudness, loud by peak
    x += 1e-3 * np.sin(np.arange(32000))
    lufs = integrated_loudness(x, 16000)
    g, limited = target_gain(lufs, 0.5, -10.0)
    assert limited
    assert 0.5 * g <= db_to_gain(-1.0)
    assert target_gain(-math.inf, 0.0, -23.0) == (1.0, False)
