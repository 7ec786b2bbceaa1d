"""One-pass numba kernels around the bidirectional Mamba block's GEMMs, for inference (no autograd).

The fused inference path (sepcli.nets.bimamba) did these steps as several torch ops each, every one a pass over
[sequences, channels, length] plus its dispatch cost (measured on SPMamba-8k, 2 threads, bf16 autocast: the
norm's square / mean / rsqrt / multiply / cast and the flip of its output, and the residual's flip + mixed-dtype
add into a strided half of the output, together about 0.15 s per second of audio):

- `rms_norm_pair_into`: xn = x * rsqrt(mean over channels of x^2 + eps) (RMSNorm without its weight, which the
  fused path folds into in_proj) for x [S, D, L] float32, written in float32 or bfloat16, optionally with its
  time-reversed copy for the backward direction in the same pass;
- `residual_into`: out[:, c0:c0 + D] = x + o (o float32 or bfloat16, optionally read time-reversed): one half of
  the block's [S, 2D, L] output.

bfloat16 is written with the rounding of torch's float32 -> bfloat16 cast (round to nearest even; NaN stays
NaN), so the values equal the torch ops'. Work is split into (sequence, time tile) blocks run on numba's
threads (as many as torch's): time tiles keep a tile's rows in the L1/L2 cache while the channels are reduced.
Plain LLVM vector code: it needs no AVX-512.
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

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _norm_block(x, eps, xn, xnr, bf16, pair, s, t0, t1, acc):  # pragma: no cover - compiled
        d, length = x.shape[1], x.shape[2]
        n = t1 - t0
        for t in range(n):
            acc[t] = 0.0
        for c in range(d):
            xr = x[s, c, t0:t1]
            for t in range(n):
                acc[t] += xr[t] * xr[t]
        inv_d = np.float32(1.0) / np.float32(d)
        for t in range(n):
            acc[t] = np.float32(1.0) / np.sqrt(acc[t] * inv_d + eps)
        for c in range(d):
            xr = x[s, c, t0:t1]
            if bf16:
                dst = xn[s, c, t0:t1]
                for t in range(n):
                    dst[t] = _bf16_bits(xr[t] * acc[t])
                if pair:
                    dstr = xnr[s, c, length - t1:length - t0]
                    for t in range(n):
                        dstr[n - 1 - t] = _bf16_bits(xr[t] * acc[t])
            else:
                dstf = xn[s, c, t0:t1]
                for t in range(n):
                    dstf[t] = xr[t] * acc[t]
                if pair:
                    dstfr = xnr[s, c, length - t1:length - t0]
                    for t in range(n):
                        dstfr[n - 1 - t] = xr[t] * acc[t]

    @njit(cache=True, parallel=True, fastmath=_FM, error_model="numpy")
    def _norm(x, eps, xn, xnr, bf16, pair, n_tiles):  # pragma: no cover - compiled
        length = x.shape[2]
        for i in prange(x.shape[0] * n_tiles):
            s, j = i // n_tiles, i % n_tiles
            t0 = j * length // n_tiles
            t1 = (j + 1) * length // n_tiles
            acc = np.empty(t1 - t0, np.float32)
            _norm_block(x, np.float32(eps), xn, xnr, bf16, pair, s, t0, t1, acc)

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _res_block(x, o, out, c0, bf16, reverse, s, t0, t1):  # pragma: no cover - compiled
        length = x.shape[2]
        for c in range(x.shape[1]):
            xr, orow, dst = x[s, c], o[s, c], out[s, c0 + c]
            if reverse:
                if bf16:
                    for t in range(t0, t1):
                        dst[t] = xr[t] + _bf16_value(orow[length - 1 - t])
                else:
                    for t in range(t0, t1):
                        dst[t] = xr[t] + orow[length - 1 - t]
            elif bf16:
                for t in range(t0, t1):
                    dst[t] = xr[t] + _bf16_value(orow[t])
            else:
                for t in range(t0, t1):
                    dst[t] = xr[t] + orow[t]

    @njit(cache=True, parallel=True, fastmath=_FM, error_model="numpy")
    def _res(x, o, out, c0, bf16, reverse, n_tiles):  # pragma: no cover - compiled
        length = x.shape[2]
        for i in prange(x.shape[0] * n_tiles):
            s, j = i // n_tiles, i % n_tiles
            _res_block(x, o, out, c0, bf16, reverse, s, j * length // n_tiles, (j + 1) * length // n_tiles)


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


def rms_norm_pair_into(x: Tensor, eps: float, xn: Tensor, xnr: Tensor | None = None) -> Tensor:
    """xn = x * rsqrt(mean(x^2 over dim 1) + eps) for x float32 [S, D, L] (statistics in float32), written into xn
    (float32 or bfloat16, x's shape); with `xnr` (same dtype and shape) also its time-reversed copy,
    xnr[..., t] = xn[..., L - 1 - t]. Returns xn."""
    if numba is None:
        raise RuntimeError("numba is not available")
    if x.dtype != torch.float32 or x.dim() != 3:
        raise TypeError(f"x must be float32 [S, D, L], got {x.dtype} {tuple(x.shape)}")
    for t in (x, xn, xnr):
        if t is not None and (t.shape != x.shape or t.dtype != (x if t is x else xn).dtype or not t.is_contiguous()):
            raise ValueError("x, xn and xnr must be contiguous, of one shape, xn and xnr of one dtype")
    if x.numel() == 0:
        return xn
    pair = xnr is not None
    xa, xna = _np(x), _np(xn)
    xra = _np(xnr) if pair else xna
    with parallel_threads() as threads:  # one lock and fork guard with the scan's kernels
        if threads:
            _norm(xa, eps, xna, xra, xn.dtype == torch.bfloat16, pair, _tiles(x.shape[2]))
        else:
            acc = np.empty(x.shape[2], np.float32)
            for s in range(x.shape[0]):
                _norm_block(xa, np.float32(eps), xna, xra, xn.dtype == torch.bfloat16, pair, s, 0, x.shape[2],
                            acc)
    return xn


def residual_into(x: Tensor, o: Tensor, out: Tensor, c0: int = 0, reverse: bool = False) -> Tensor:
    """out[:, c0:c0 + D] = x + o (o read time-reversed with `reverse`: x[..., t] + o[..., L - 1 - t]) for x float32
    [S, D, L], o float32 or bfloat16 [S, D, L] (its values widened exactly) and out float32 [S, C, L] with
    C >= c0 + D (e.g. the block's [S, 2D, L] output, one half at a time), all contiguous. Returns out."""
    if numba is None:
        raise RuntimeError("numba is not available")
    if x.dtype != torch.float32 or out.dtype != torch.float32 or x.dim() != 3 or out.dim() != 3:
        raise TypeError("x and out must be float32 [S, D, L] and [S, C, L]")
    S, D, L = x.shape
    if o.shape != x.shape or out.shape[0] != S or out.shape[2] != L or not 0 <= c0 <= out.shape[1] - D:
        raise ValueError(f"shapes do not fit: x {tuple(x.shape)}, o {tuple(o.shape)}, out {tuple(out.shape)}, c0 {c0}")
    if not (x.is_contiguous() and o.is_contiguous() and out.is_contiguous()):
        raise ValueError("x, o and out must be contiguous")
    if x.numel() == 0:
        return out
    xa, oa, outa = _np(x), _np(o), _np(out)
    bf16 = o.dtype == torch.bfloat16
    with parallel_threads() as threads:
        if threads:
            _res(xa, oa, outa, c0, bf16, reverse, _tiles(L))
        else:
            for s in range(S):
                _res_block(xa, oa, outa, c0, bf16, reverse, s, 0, L)
    return out
