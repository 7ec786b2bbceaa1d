"""Segment planning, crossfade windows, and stitching separated segments into consistent streams.

Segments of `length` samples start every `hop = length - overlap` samples (overlap <= length/2). Segment k is
needed while it reaches past the previous one (k = 0, or k*hop + overlap < n); the last one may be shorter.
`SegmentStream` cuts an incoming stream into these segments without knowing its total length in advance.

`Stitcher` receives each segment's separated sources [n_src, len] in order and:
1. aligns their order with the previous segment on the overlap (pairwise SI-SNR from sepcli.metrics, best
   assignment with metrics.best_permutation: every permutation up to 4 sources, Hungarian above);
2. corrects each source's gain by least squares: the source should continue the previous segment's output on
   the overlap, and the sources together should add up to the mixture over the segment
   (minimise sum_k |g_k c_k - p_k|^2 over the overlap + |sum_k g_k c_k - m|^2 over the segment);
3. crossfades the overlap with windows that sum to one (sin^2 fade-in, 1 - sin^2 fade-out) and emits the
   finished samples. Only one overlap's worth of samples is kept between segments.
With `raw_whole`, a segment that is the whole input (the first and the last at once) is emitted as given, without
step 2: nothing needs stitching, so the outputs are the network's own samples (`--loudness off`). The gain stays for
several segments (their scales must agree) and in the modes that want the speakers at their level in the mixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..metrics import best_permutation, pairwise_si_snr


def segment_geometry(rate: int, segment_s: float, overlap: float) -> tuple[int, int]:
    """(segment length, overlap length) in samples; segment_s <= 0 means one segment for the whole signal
    (returned as length 0)."""
    if not (0.0 <= overlap <= 0.5):
        raise ValueError(f"overlap must be between 0 and 0.5, got {overlap}")
    if segment_s <= 0:
        return 0, 0
    length = max(round(segment_s * rate), 16)
    ov = round(length * overlap)
    return length, min(ov, length // 2)


def plan_segments(n: int, length: int, ov: int) -> list[tuple[int, int]]:
    """[(start, stop)] of the segments covering n samples (the reference for SegmentStream)."""
    if length <= 0 or length >= n:
        return [(0, n)]
    hop = length - ov
    out = [(0, length)]
    k = 1
    while k * hop + ov < n:
        s = k * hop
        out.append((s, min(s + length, n)))
        k += 1
    return out


def crossfade_windows(ov: int) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) of length ov, float32, with fade_out + fade_in == 1 at every sample."""
    t = (np.arange(ov, dtype=np.float64) + 0.5) / max(ov, 1)
    fade_in = np.sin(0.5 * np.pi * t) ** 2
    return (1.0 - fade_in).astype(np.float32), fade_in.astype(np.float32)


class SegmentStream:
    """Cut a stream of blocks into planned segments. push(block) and finish() yield (start, samples, last)."""

    def __init__(self, length: int, ov: int):
        self.length, self.ov = length, ov
        self.hop = length - ov if length > 0 else 0
        self._buf: list[np.ndarray] = []
        self._buf_start = 0  # global index of the first buffered sample
        self._buf_len = 0
        self._k = 0  # next segment index

    def _concat(self) -> np.ndarray:
        if len(self._buf) > 1:
            self._buf = [np.concatenate(self._buf)]
        return self._buf[0] if self._buf else np.zeros(0, np.float32)

    def _take(self, start: int, stop: int) -> np.ndarray:
        buf = self._concat()
        return buf[start - self._buf_start : stop - self._buf_start].copy()

    def _drop_before(self, pos: int) -> None:
        buf = self._concat()
        cut = pos - self._buf_start
        if cut > 0:
            self._buf = [buf[cut:]]
            self._buf_start = pos
            self._buf_len -= cut

    def push(self, block: np.ndarray) -> Iterator[tuple[int, np.ndarray, bool]]:
        if len(block):
            self._buf.append(np.asarray(block, np.float32))
            self._buf_len += len(block)
        if self.length <= 0:
            return
        end = self._buf_start + self._buf_len
        # a segment is certainly not the last when samples exist beyond its end
        while self._k * self.hop + self.length < end:
            s = self._k * self.hop
            yield s, self._take(s, s + self.length), False
            self._k += 1
            self._drop_before(self._k * self.hop)

    def finish(self) -> Iterator[tuple[int, np.ndarray, bool]]:
        n = self._buf_start + self._buf_len
        if self.length <= 0:
            yield 0, self._take(0, n), True
            return
        while True:
            s = self._k * self.hop
            if self._k > 0 and s + self.ov >= n:
                return
            stop = min(s + self.length, n)
            yield s, self._take(s, stop), stop >= n
            self._k += 1
            if stop >= n:
                return


RIDGE = 1e-6


def solve_gains(cur: np.ndarray, mix: np.ndarray, prev_tail: np.ndarray | None) -> np.ndarray:
    """Least-squares gains g [n] for sources cur [n, L]: minimise
    sum_k |g_k cur_k[:O] - prev_k|^2 + |sum_k g_k cur_k - mix|^2 (O = prev_tail length; no first term without
    a previous segment)."""
    c = cur.astype(np.float64)
    m = mix.astype(np.float64)
    a = c @ c.T
    b = c @ m
    if prev_tail is not None and prev_tail.shape[1] > 0:
        o = prev_tail.shape[1]
        co = c[:, :o]
        p = prev_tail.astype(np.float64)
        a = a + np.diag((co * co).sum(1))
        b = b + (co * p).sum(1)
    # Ridge proportional to each source's own energy: negligible shrinkage (1e-6) for separated sources, and for
    # identical estimates (a segment the model failed on) an even split instead of a singular system.
    d = np.diag(a).copy()
    ridge = RIDGE * d + 1e-12 * (d.mean() + 1e-12)
    return np.linalg.solve(a + np.diag(ridge), b)


# The order is kept unless the overlap shows that another order continues the previous segment better:
# - CONTENT_FLOOR: sources whose zero-mean energy is below this share of their energy (silence, a constant offset,
#   rounding noise) carry nothing SI-SNR can match; it would follow the noise;
# - TIE_DB: orders whose summed SI-SNR differ by less than this are a tie, e.g. two estimates that are scaled
#   copies of each other on the overlap (SI-SNR ignores the scale and the sign), decided otherwise by rounding.
CONTENT_FLOOR = 1e-8
TIE_DB = 1e-3


def align_order(prev_tail: np.ndarray, cur_head: np.ndarray) -> tuple[int, ...]:
    """Order of cur's sources that best continues prev: returns perm with cur[perm[i]] matching prev[i]; the
    identity when the overlap cannot tell the orders apart (see CONTENT_FLOOR and TIE_DB)."""
    prev, cur = prev_tail.astype(np.float64), cur_head.astype(np.float64)
    keep = tuple(range(prev.shape[0]))
    for x in (prev, cur):
        z = x - x.mean(axis=-1, keepdims=True)
        if not (z * z).sum() > CONTENT_FLOOR * (x * x).sum():
            return keep
    score = pairwise_si_snr(torch.from_numpy(prev)[None], torch.from_numpy(cur)[None])[0].numpy()
    perm = best_permutation(score)
    gain = sum(score[i, perm[i]] - score[i, i] for i in range(len(perm)))
    return perm if gain > TIE_DB else keep


class Stitcher:
    """Assemble separated segments into continuous source streams (see module docstring).

    push(sources [n, len], mix [len], last) returns the finished samples [n, k] (k may be 0). With `raw_whole`, a
    first segment that is also the last (the whole input) comes back unchanged (gain 1, the order kept).
    """

    def __init__(self, n_src: int, ov: int, raw_whole: bool = False):
        self.n_src, self.ov, self.raw_whole = n_src, ov, raw_whole
        self.fade_out, self.fade_in = crossfade_windows(ov)
        self._tail: np.ndarray | None = None  # previous segment's last ov samples, aligned and gain-corrected
        self.perms: list[tuple[int, ...]] = []
        self.gains: list[np.ndarray] = []

    def push(self, sources: np.ndarray, mix: np.ndarray, last: bool) -> np.ndarray:
        cur = np.asarray(sources, dtype=np.float32)
        first = self._tail is None
        ov = 0 if first else min(self.ov, cur.shape[1])
        if not first and ov > 0:
            perm = align_order(self._tail[:, :ov], cur[:, :ov])
            cur = cur[list(perm)]
        else:
            perm = tuple(range(self.n_src))
        if first and last and self.raw_whole:
            g = np.ones(self.n_src)
        else:
            g = solve_gains(cur, mix, None if first else self._tail[:, :ov])
            cur = (cur * g[:, None]).astype(np.float32)
        self.perms.append(perm)
        self.gains.append(g)
        parts = []
        if ov > 0:
            parts.append(self._tail[:, :ov] * self.fade_out[:ov] + cur[:, :ov] * self.fade_in[:ov])
        if last:
            parts.append(cur[:, ov:])
            self._tail = None
        else:
            keep = self.ov
            parts.append(cur[:, ov : cur.shape[1] - keep])
            self._tail = cur[:, cur.shape[1] - keep :]
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.n_src, 0), np.float32)
