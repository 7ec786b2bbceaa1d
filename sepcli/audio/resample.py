"""Streaming resampling with soxr, with an exact output length.

`StreamResampler(in_rate, out_rate, channels)` wraps soxr.ResampleStream (high quality). `process()` returns
the output for each input block; `finish(total)` flushes the filter and pads or trims so that the stream has
produced exactly `total` samples (default round(n_in * out/in)). With `limit`, no call ever emits beyond that
many samples, so a caller that knows the final length (the input's frame count) never has to take samples back.
Equal rates pass through unchanged.
"""

from __future__ import annotations

import numpy as np
import soxr


def expected_length(n_in: int, in_rate: int, out_rate: int) -> int:
    """Output length of a resampled signal of n_in samples (what soxr produces for a whole signal)."""
    if in_rate == out_rate:
        return n_in
    return round(n_in * out_rate / in_rate)


class StreamResampler:
    def __init__(self, in_rate: int, out_rate: int, channels: int = 1, limit: int | None = None):
        self.in_rate, self.out_rate, self.channels = int(in_rate), int(out_rate), int(channels)
        self.n_in = 0
        self.n_out = 0
        self.limit = limit
        self._rs = None
        if self.in_rate != self.out_rate:
            self._rs = soxr.ResampleStream(self.in_rate, self.out_rate, self.channels, dtype="float32",
                                           quality="HQ")

    def _shape(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.channels == 1 and x.ndim == 2:
            x = x[:, 0]
        return np.ascontiguousarray(x)

    def _cap(self, y: np.ndarray) -> np.ndarray:
        if self.limit is not None and self.n_out + len(y) > self.limit:
            y = y[: max(0, self.limit - self.n_out)]
        self.n_out += len(y)
        return y

    def process(self, x: np.ndarray) -> np.ndarray:
        """x: [k] (mono) or [k, channels] -> resampled block of the same layout."""
        x = self._shape(x)
        self.n_in += len(x)
        if self._rs is None:
            return self._cap(x)
        return self._cap(self._rs.resample_chunk(x, last=False))

    def finish(self, total: int | None = None) -> np.ndarray:
        """Flush; returns the last block so that exactly `total` samples were produced in all."""
        if total is None:
            total = self.limit if self.limit is not None else expected_length(self.n_in, self.in_rate,
                                                                               self.out_rate)
        shape = (0,) if self.channels == 1 else (0, self.channels)
        tail = np.zeros(shape, np.float32)
        if self._rs is not None:
            tail = self._rs.resample_chunk(tail, last=True)
        tail = tail[: max(0, total - self.n_out)]
        missing = total - self.n_out - len(tail)
        if missing > 0:
            pad_shape = (missing,) if self.channels == 1 else (missing, self.channels)
            tail = np.concatenate([tail, np.zeros(pad_shape, np.float32)])
        self.n_out += len(tail)
        return tail
