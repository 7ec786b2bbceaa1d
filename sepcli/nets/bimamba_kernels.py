"""One-pass numba kernels around the bidirectional Mamba block's GEMMs, for inference (no autograd).

The fused inference path (sepcli.nets.bimamba) did these steps as several torch ops each, every one a pass over
[sequences, channels, length] plus its dispatch cost (measured on SPMamba-8k, 2 threads, bf16 autocast: the
norm's square / mean / rsqrt / multiply / cast and the flip of its output, and the residual's flip + mixed-dtype
add into a strided half of the output, together about 0.15 s per second of audio). The grouped path
(nets.bimamba_grouped) runs both directions side by side, channel-major, in time windows (a chunk of short
sequences is one window [0, L)); for one window of both directions (the forward's [a, a + w) and the time-reversed
sequence's, i.e. original time [L - a - w, L - a) reversed):

- `rms_norm_window_pair_into`: xn = x * rsqrt(mean over channels of x^2 + eps) (RMSNorm without its weight, which
  the fused path folds into in_proj) for x [S, D, L] float32, both directions' windows written channel-major
  [2, D, S, w] in float32 or bfloat16 (each direction's input to in_proj as one [D, S * w] matrix);
- `residual_window_pair_into`: the block's [S, 2D, L] output at those times, x + the forward direction's out_proj
  output and x + the backward direction's read time-reversed (o [2, D, S, w], float32 or bfloat16).

bfloat16 is written with the rounding of torch's float32 -> bfloat16 cast (round to nearest even; NaN stays
NaN), so the values equal the torch ops'. Work is split into (sequence, direction, time tile) blocks run on
numba's threads (as many as torch's): time tiles keep a tile's rows in the L1/L2 cache while the channels are
reduced. Plain LLVM vector code: it needs no AVX-512.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

try:  # numba is a dependency of the CPU scan; without it callers keep their torch path
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover
    numba = None

_FM = {"reassoc", "contract", "nsz"}  # as nets.causal_conv: NaN and inf propagate
TILE = 256  # time steps per block

if numba is not None:
    from ..kernels.threads import parallel_threads

    @njit(inline="always")
    def _bf16_bits(v):  # pragma: no cover - compiled
        # float32 -> bfloat16 bits, round to nearest even (torch's cast); a NaN keeps a (quiet) NaN pattern
        b = np.float32(v).view(np.uint32)
        r = (b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
        q = (b >> np.uint32(16)) | np.uint32(0x40)
        return np.uint16(q if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else r)

    @njit(inline="always")
    def _bf16_value(bits):  # pragma: no cover - compiled
        return np.uint32(np.uint32(bits) << np.uint32(16)).view(np.float32)

    @njit(inline="always", fastmath=_FM)
    def _inv_rms(x, s, lo, n, eps, acc):  # pragma: no cover - compiled
        # acc[t] = 1 / sqrt(mean over channels of x[s, c, lo + t]^2 + eps), t < n
        d = x.shape[1]
        for t in range(n):
            acc[t] = 0.0
        for c in range(d):
            xr = x[s, c, lo:lo + n]
            for t in range(n):
                acc[t] += xr[t] * xr[t]
        inv_d = np.float32(1.0) / np.float32(d)
        for t in range(n):
            acc[t] = np.float32(1.0) / np.sqrt(acc[t] * inv_d + eps)

    @njit(inline="always", fastmath=_FM)
    def _write_scaled(dst, xr, acc, n, bf16, reverse):  # pragma: no cover - compiled
        # dst[t] (reverse: dst[n - 1 - t]) = xr[t] * acc[t], as float32 or bfloat16 bits
        if reverse:
            if bf16:
                for t in range(n):
                    dst[n - 1 - t] = _bf16_bits(xr[t] * acc[t])
            else:
                for t in range(n):
                    dst[n - 1 - t] = xr[t] * acc[t]
        elif bf16:
            for t in range(n):
                dst[t] = _bf16_bits(xr[t] * acc[t])
        else:
            for t in range(n):
                dst[t] = xr[t] * acc[t]

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _norm_win_block(x, eps, out, bf16, s, p, a, t0, t1, acc):  # pragma: no cover - compiled
        # out [2, D, S, w]: positions t0..t1 of direction p's window, read from x's time a + t (p = 0) or
        # L - 1 - a - t (p = 1, the time-reversed sequence's window [a, a + w)): the source range [lo, lo + n)
        d, length = x.shape[1], x.shape[2]
        n = t1 - t0
        lo = a + t0 if p == 0 else length - a - t1
        _inv_rms(x, s, lo, n, eps, acc)
        for c in range(d):
            _write_scaled(out[p, c, s, t0:t1], x[s, c, lo:lo + n], acc, n, bf16, p != 0)

    @njit(cache=True, parallel=True, fastmath=_FM, error_model="numpy")
    def _norm_win(x, eps, out, bf16, a, n_tiles):  # pragma: no cover - compiled
        w = out.shape[3]
        for i in prange(x.shape[0] * 2 * n_tiles):
            s, p, j = i // (2 * n_tiles), (i // n_tiles) % 2, i % n_tiles
            t0 = j * w // n_tiles
            t1 = (j + 1) * w // n_tiles
            acc = np.empty(t1 - t0, np.float32)
            _norm_win_block(x, np.float32(eps), out, bf16, s, p, a, t0, t1, acc)

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _res_win_block(x, o, out, bf16, s, p, a, t0, t1):  # pragma: no cover - compiled
        # o [2, D, S, w] (window positions as in _norm_win_block) -> out[s, p * D + c] at the same source times
        d, length = x.shape[1], x.shape[2]
        n = t1 - t0
        lo = a + t0 if p == 0 else length - a - t1
        for c in range(d):
            xr, dst, orow = x[s, c, lo:lo + n], out[s, p * d + c, lo:lo + n], o[p, c, s, t0:t1]
            if p == 0:
                if bf16:
                    for t in range(n):
                        dst[t] = xr[t] + _bf16_value(orow[t])
                else:
                    for t in range(n):
                        dst[t] = xr[t] + orow[t]
            elif bf16:
                for t in range(n):
                    dst[t] = xr[t] + _bf16_value(orow[n - 1 - t])
            else:
                for t in range(n):
                    dst[t] = xr[t] + orow[n - 1 - t]

    @njit(cache=True, parallel=True, fastmath=_FM, error_model="numpy")
    def _res_win(x, o, out, bf16, a, n_tiles):  # pragma: no cover - compiled
        w = o.shape[3]
        for i in prange(x.shape[0] * 2 * n_tiles):
            s, p, j = i // (2 * n_tiles), (i // n_tiles) % 2, i % n_tiles
            _res_win_block(x, o, out, bf16, s, p, a, j * w // n_tiles, (j + 1) * w // n_tiles)


def available() -> bool:
    return numba is not None


def _np(t: Tensor) -> np.ndarray:
    """A float32 tensor as is, a bfloat16 one as its uint16 bits (same strides)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype != torch.float32:
        raise TypeError(f"expected float32 or bfloat16, got {t.dtype}")
    return t.numpy()


def _tiles(length: int) -> int:
    return max(1, -(-length // TILE))


def _window_shapes(x: Tensor, a: int, t: Tensor, name: str) -> int:
    """The window length w of a [2, D, S, w] tensor t for x [S, D, L] starting at a (checked)."""
    if x.dtype != torch.float32 or x.dim() != 3:
        raise TypeError(f"x must be float32 [S, D, L], got {x.dtype} {tuple(x.shape)}")
    S, D, L = x.shape
    if t.dim() != 4 or t.shape[:3] != (2, D, S) or not 0 <= a <= a + t.shape[3] <= L:
        raise ValueError(f"{name} must be [2, D, S, w] with {a} + w <= L for x {tuple(x.shape)}, "
                         f"got {tuple(t.shape)}")
    if not (x.is_contiguous() and t.is_contiguous()):
        raise ValueError(f"x and {name} must be contiguous")
    return t.shape[3]


def rms_norm_window_pair_into(x: Tensor, eps: float, a: int, out: Tensor) -> Tensor:
    """The window [a, a + w) of both directions' normalised inputs, channel-major: out[0, c, s, t] = xn[s, c, a + t]
    and out[1, c, s, t] = xn[s, c, L - 1 - a - t] (the window [a, a + w) of the time-reversed sequence), where
    xn = x * rsqrt(mean(x^2 over dim 1) + eps) (statistics in float32), for x float32 [S, D, L] and out
    [2, D, S, w] (float32 or bfloat16), both contiguous. Returns out."""
    if numba is None:
        raise RuntimeError("numba is not available")
    w = _window_shapes(x, a, out, "out")
    if out.numel() == 0:
        return out
    xa, oa = _np(x), _np(out)
    bf16 = out.dtype == torch.bfloat16
    with parallel_threads() as threads:
        if threads:
            _norm_win(xa, eps, oa, bf16, a, _tiles(w))
        else:
            acc = np.empty(w, np.float32)
            for s in range(x.shape[0]):
                for p in range(2):
                    _norm_win_block(xa, np.float32(eps), oa, bf16, s, p, a, 0, w, acc)
    return out


def residual_window_pair_into(x: Tensor, o: Tensor, a: int, out: Tensor) -> Tensor:
    """The block's output at both directions' window [a, a + w): out[s, c, a + t] = x[s, c, a + t] + o[0, c, s, t]
    and out[s, D + c, L - 1 - a - t] = x[s, c, L - 1 - a - t] + o[1, c, s, t], for x float32 [S, D, L], o float32
    or bfloat16 [2, D, S, w] (windows laid out as rms_norm_window_pair_into's), out float32 [S, 2D, L], all
    contiguous; the rest of out is not touched. Returns out."""
    if numba is None:
        raise RuntimeError("numba is not available")
    w = _window_shapes(x, a, o, "o")
    S, D, L = x.shape
    if out.dtype != torch.float32 or out.shape != (S, 2 * D, L) or not out.is_contiguous():
        raise ValueError(f"out must be float32 contiguous [S, 2D, L] for x {tuple(x.shape)}, got {out.dtype} "
                         f"{tuple(out.shape)}")
    if o.numel() == 0:
        return out
    xa, oa, outa = _np(x), _np(o), _np(out)
    bf16 = o.dtype == torch.bfloat16
    with parallel_threads() as threads:
        if threads:
            _res_win(xa, oa, outa, bf16, a, _tiles(w))
        else:
            for s in range(S):
                for p in range(2):
                    _res_win_block(xa, oa, outa, bf16, s, p, a, 0, w)
    return out
