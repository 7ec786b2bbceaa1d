"""Streaming resampling: identical to soxr's one-shot resampling, exact lengths, caps."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from sepcli.audio.resample import StreamResampler, expected_length


@pytest.mark.parametrize("rin,rout", [(44100, 16000), (16000, 44100), (48000, 8000), (8000, 8000)])
def test_stream_matches_one_shot(rng, rin, rout):
    x = rng.standard_normal(50001).astype(np.float32) * 0.1
    rs = StreamResampler(rin, rout)
    parts = [rs.process(x[i : i + 3000]) for i in range(0, len(x), 3000)]
    parts.append(rs.finish())
    y = np.concatenate(parts)
    ref = x if rin == rout else soxr.resample(x, rin, rout, quality="HQ")
    assert len(y) == expected_length(len(x), rin, rout) == len(ref)
    np.testing.assert_allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize("total", [36281, 36282, 36300])
def test_finish_gives_exact_total_and_limit_caps(rng, total):
    x = rng.standard_normal((100003, 2)).astype(np.float32)
    rs = StreamResampler(44100, 16000, channels=2, limit=total)
    n = sum(len(rs.process(x[i : i + 4096])) for i in range(0, len(x), 4096))
    assert n <= total
    tail = rs.finish()
    assert tail.shape[1] == 2
    assert n + len(tail) == total


def test_round_trip_length_is_exact(rng):
    x = rng.standard_normal(44101).astype(np.float32)
    down = StreamResampler(44100, 8000)
    mid = np.concatenate([down.process(x), down.finish()])
    up = StreamResampler(8000, 44100, limit=len(x))
    back = np.concatenate([up.process(mid), up.finish(len(x))])
    assert len(back) == len(x)
