"""Segment planning, crossfade windows and stitching, against plain references written here."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sepcli.audio.chunking import (
    SegmentStream,
    Stitcher,
    align_order,
    crossfade_windows,
    plan_segments,
    segment_geometry,
    solve_gains,
)


@pytest.mark.parametrize("ov", [1, 2, 7, 64, 1000])
def test_crossfade_windows_sum_to_one_and_are_monotone(ov):
    fade_out, fade_in = crossfade_windows(ov)
    assert fade_out.shape == fade_in.shape == (ov,)
    np.testing.assert_allclose(fade_out + fade_in, 1.0, atol=1e-6)
    assert np.all(np.diff(fade_in) >= 0) and np.all(np.diff(fade_out) <= 0)
    assert fade_in.min() >= 0 and fade_in.max() <= 1


def _weight_of_plan(n, length, ov):
    """Total weight every sample receives when each planned segment is a window: the crossfade's fade-in on
    its first ov samples (except the first segment) and fade-out on its last ov (except the last)."""
    fade_out, fade_in = crossfade_windows(ov)
    w = np.zeros(n)
    plan = plan_segments(n, length, ov)
    for i, (s, e) in enumerate(plan):
        seg = np.ones(e - s)
        if i > 0 and ov:
            seg[:ov] *= fade_in
        if i < len(plan) - 1 and ov:
            seg[-ov:] *= fade_out
        w[s:e] += seg
    return w, plan


@pytest.mark.parametrize("n,length,ov", [(1000, 100, 25), (1001, 100, 50), (999, 128, 0), (50, 100, 25),
                                         (100, 100, 25), (101, 100, 25), (176, 100, 25)])
def test_plan_covers_signal_and_weights_sum_to_one(n, length, ov):
    w, plan = _weight_of_plan(n, length, ov)
    np.testing.assert_allclose(w, 1.0, atol=1e-6)
    assert plan[0][0] == 0 and plan[-1][1] == n
    hop = length - ov
    for i, (s, e) in enumerate(plan):
        assert s == i * hop and e - s <= length
        if i < len(plan) - 1:
            assert e - s == length  # only the last one may be short
            assert plan[i + 1][0] + ov == e  # consecutive segments overlap by exactly ov


def test_segment_geometry():
    assert segment_geometry(8000, 2.0, 0.25) == (16000, 4000)
    assert segment_geometry(8000, 0, 0.25) == (0, 0)
    with pytest.raises(ValueError):
        segment_geometry(8000, 1.0, 0.6)


@pytest.mark.parametrize("n,length,ov,block", [(1000, 100, 25, 7), (1000, 100, 25, 333), (175, 100, 25, 1000),
                                               (100, 100, 25, 10), (50, 100, 25, 3), (1234, 0, 0, 100),
                                               (1000, 100, 0, 64)])
def test_segment_stream_matches_plan(n, length, ov, block):
    x = np.arange(n, dtype=np.float32)
    ss = SegmentStream(length, ov)
    got = []
    for i in range(0, n, block):
        got.extend(ss.push(x[i : i + block]))
    got.extend(ss.finish())
    plan = plan_segments(n, length, ov) if length else [(0, n)]
    assert [(s, s + len(seg)) for s, seg, _ in got] == plan
    for s, seg, _ in got:
        np.testing.assert_array_equal(seg, x[s : s + len(seg)])
    assert [last for *_, last in got] == [False] * (len(plan) - 1) + [True]


def test_solve_gains_recovers_known_gains(rng):
    src = rng.standard_normal((3, 500))
    true = np.array([0.5, -2.0, 3.0])
    mix = src.sum(0)
    g = solve_gains(src / true[:, None], mix, None)  # mixture term only
    np.testing.assert_allclose(g, true, rtol=1e-5)  # within the 1e-6 ridge shrinkage
    prev = src[:, :100]  # previous output on the overlap
    g2 = solve_gains(src / true[:, None], mix, prev)
    np.testing.assert_allclose(g2, true, rtol=1e-5)


def test_solve_gains_splits_identical_estimates_evenly(rng):
    """Two identical estimates (a segment the model failed on) share the mixture instead of getting huge
    gains of opposite signs."""
    c = rng.standard_normal(400)
    g = solve_gains(np.stack([c, c]), 2.0 * c, None)
    np.testing.assert_allclose(g, [1.0, 1.0], rtol=1e-2)


def test_align_order_finds_every_permutation(rng):
    prev = rng.standard_normal((3, 400))
    for perm in itertools.permutations(range(3)):
        cur = np.empty_like(prev)
        for i, p in enumerate(perm):
            cur[p] = prev[i] * rng.uniform(0.1, 10) + 0.01 * rng.standard_normal(400)
        assert align_order(prev, cur) == perm


def test_align_order_keeps_the_order_when_the_overlap_cannot_tell(rng):
    """A constant input through a band split: one source holds the offset, the other nothing; on the overlap their
    zero-mean parts are rounding noise, or (near a segment's edge) copies of each other with opposite signs, which
    SI-SNR scores alike. The order must not follow float32 rounding (it swapped in about half of these cases)."""
    ov = 1000
    for _ in range(100):
        noise = [(rng.standard_normal((2, ov)) * 3e-8).astype(np.float32) for _ in range(2)]
        prev, cur = (np.stack([np.full(ov, 0.5), np.zeros(ov)]).astype(np.float32) + n for n in noise)
        assert align_order(prev, cur) == (0, 1)
        edges = [np.zeros(ov, np.float32) for _ in range(2)]
        edges[0][-7:] = rng.uniform(0.05, 0.25, 7)  # the previous segment's end, the current one's start
        edges[1][:7] = rng.uniform(0.05, 0.25, 7)
        prev, cur = (np.stack([0.5 - e, e]).astype(np.float32) for e in edges)
        assert align_order(prev, cur) == (0, 1)
    silent = np.zeros((2, ov), np.float32)
    assert align_order(silent, silent) == (0, 1)
    # a real swap on top of the offset is still found
    speech = rng.standard_normal((2, ov)).astype(np.float32) * 0.1
    prev = speech + np.array([[0.5], [0.0]], np.float32)
    assert align_order(prev, prev[::-1].copy()) == (1, 0)


def test_align_order_many_sources_uses_assignment(rng):
    prev = rng.standard_normal((6, 300))
    perm = rng.permutation(6)
    cur = np.empty_like(prev)
    cur[perm] = prev * 2.0
    assert align_order(prev, cur) == tuple(int(p) for p in perm)


@pytest.mark.parametrize("n,length,ov", [(3000, 400, 100), (3001, 400, 200), (399, 400, 100), (400, 400, 100)])
def test_stitcher_undoes_order_and_gain(rng, n, length, ov):
    """Segments of true sources, shuffled and rescaled per segment, come back as the sources."""
    src = rng.standard_normal((2, n)).astype(np.float32)
    mix = src.sum(0)
    st = Stitcher(2, ov)
    out = []
    plan = plan_segments(n, length, ov)
    for i, (s, e) in enumerate(plan):
        perm = rng.permutation(2)
        g = rng.uniform(0.3, 3.0, 2)
        out.append(st.push(src[perm, s:e] * g[:, None], mix[s:e], i == len(plan) - 1))
    y = np.concatenate(out, axis=1)
    assert y.shape == (2, n)
    # the first segment fixes the output order; compare under that order
    if np.abs(y[0] - src[0]).max() > np.abs(y[0] - src[1]).max():
        y = y[::-1]
    np.testing.assert_allclose(y, src, atol=1e-4)


def _plain_gains(cur, mix, prev):
    """The stitcher's gain problem as one stacked least-squares system: one row per mixture sample (the sources
    should add up to the mixture) and, after the first segment, one row per overlap sample and source (each
    source should continue its previous output)."""
    n = cur.shape[0]
    rows, rhs = [cur.T.astype(np.float64)], [mix.astype(np.float64)]
    if prev is not None:
        o = prev.shape[1]
        for k in range(n):
            block = np.zeros((o, n))
            block[:, k] = cur[k, :o]
            rows.append(block)
            rhs.append(prev[k].astype(np.float64))
    return np.linalg.lstsq(np.vstack(rows), np.concatenate(rhs), rcond=None)[0]


@pytest.mark.parametrize("n,length,ov", [(3000, 400, 100), (3001, 400, 200), (2000, 300, 37)])
def test_stitcher_of_imperfect_estimates_equals_a_plain_overlap_add(rng, n, length, ov):
    """Estimates that disagree on the overlaps (each segment leaks a different share of the other speakers and
    its own noise), shuffled and rescaled per segment. Reference written plainly: undo the known shuffle, solve
    the gains as one stacked least-squares problem, and add every segment into place under the documented
    windows (sin^2 fade-in over the overlap, 1 - sin^2 fade-out)."""
    n_src = 3
    src = rng.standard_normal((n_src, n)).astype(np.float32)
    mix = src.sum(0)
    plan = plan_segments(n, length, ov)
    t = (np.arange(ov) + 0.5) / ov
    fade_in = np.sin(0.5 * np.pi * t) ** 2
    st, got, want, tail, first_perm = Stitcher(n_src, ov), [], np.zeros((n_src, n)), None, None
    disagree = 0.0
    for i, (s, e) in enumerate(plan):
        leak = rng.uniform(0.05, 0.25, (n_src, n_src)) * (1 - np.eye(n_src))
        est = (np.eye(n_src) + leak) @ src[:, s:e] + 0.05 * rng.standard_normal((n_src, e - s))
        perm = rng.permutation(n_src)
        g = rng.uniform(0.3, 3.0, n_src)
        got.append(st.push((est[perm] * g[:, None]).astype(np.float32), mix[s:e], i == len(plan) - 1))
        first_perm = perm if first_perm is None else first_perm
        # reference: the estimates in the first segment's order (the order the stitcher keeps), rescaled
        cur = (est * g[np.argsort(perm)][:, None])[first_perm]
        cur = cur * _plain_gains(cur, mix[s:e], tail)[:, None]
        if tail is not None:
            disagree = max(disagree, np.abs(cur[:, :ov] - tail).max())
        w = np.ones(e - s)
        if i > 0:
            w[:ov] = fade_in
        if i < len(plan) - 1:
            w[-ov:] = 1.0 - fade_in
        want[:, s:e] += cur * w
        tail = cur[:, -ov:]
    y = np.concatenate(got, axis=1)
    assert y.shape == (n_src, n)
    np.testing.assert_allclose(y, want, atol=2e-4)
    # the overlaps really disagree, so the windows and the continuation term both matter at this tolerance
    assert disagree > 0.05
