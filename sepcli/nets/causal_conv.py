"""Mamba's depthwise causal convolution + SiLU in one pass over the data, for inference (numba).

    out[s, c, t] = silu(bias[c] + sum_k weight[c, k] * x[s, c, t + k - (K - 1)]),  zeros before t = 0

x may be float32 or bfloat16 (read as its 16 bits and widened in registers): under bf16 autocast the in_proj
output is bf16 and this replaces its cast to fp32, the K shifted multiply-add passes and the SiLU pass (six
passes over [sequences, d_inner, L] in fp32) with one read of x and one write of `out` (float32).

Each row (one sequence, one channel) is finished while it is in the L1 cache: the K taps as multiply-adds over
the row, then the SiLU as x * sigmoid(x) with the CPU scan's float32 sigmoid (a branch-free Cephes expf, relative
error about 1e-7 like float32's own rounding), so that LLVM vectorises every loop (numba's np.exp would call libm
once per element where SVML is absent). The row blocks run on numba's threads,
as many as torch's thread count. Plain LLVM vector code: it needs no AVX-512.
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

# reassociation (vectorised sums), contraction (FMAs), no signed zeros; not 'nnan'/'ninf': NaN and inf propagate
# to the output, where the pipeline refuses them, as in the project's other kernels
_FM = {"reassoc", "contract", "nsz"}

if numba is not None:
    from ..kernels.scan_cpu import _sigmoid  # float32: Cephes expf, vectorisable (an overload with its own flags)
    from ..kernels.threads import parallel_threads

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _row(xr, wc, bc, o, prev, has_prev):  # pragma: no cover - compiled
        # every index is written as t + constant with t >= 0 (numba's negative-index wraparound check on
        # x[t - j] kept LLVM from vectorising the shifted multiply-adds)
        k = wc.shape[0]
        n = xr.shape[0]
        if k == 4 and n >= 4:  # Mamba's d_conv: the four taps in one pass
            w0, w1, w2, w3 = wc[0], wc[1], wc[2], wc[3]
            o[0] = bc + w3 * xr[0]
            o[1] = bc + w3 * xr[1] + w2 * xr[0]
            o[2] = bc + w3 * xr[2] + w2 * xr[1] + w1 * xr[0]
            for t in range(n - 3):
                o[t + 3] = bc + w0 * xr[t] + w1 * xr[t + 1] + w2 * xr[t + 2] + w3 * xr[t + 3]
        else:
            wl = wc[k - 1]
            for t in range(n):
                o[t] = bc + wl * xr[t]
            for j in range(1, min(k, n)):
                wj = wc[k - 1 - j]
                for t in range(n - j):
                    o[t + j] += wj * xr[t]
        if has_prev:
            _halo(xr, wc, o, prev)
        for t in range(n):
            o[t] = o[t] * _sigmoid(o[t])

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _halo(xr, wc, o, prev):  # pragma: no cover - compiled
        # prev [K - 1]: the row's K - 1 inputs before this piece (prev[K - 2] the latest), in place of the zero
        # padding: o[t] += sum over the taps j < K - 1 - t of wc[j] * prev[t + j]; then prev becomes the last
        # K - 1 inputs of prev followed by this piece (a piece may be shorter than K - 1)
        m = wc.shape[0] - 1
        n = xr.shape[0]
        for t in range(min(m, n)):
            acc = np.float32(0.0)
            for j in range(m - t):
                acc += wc[j] * prev[t + j]
            o[t] += acc
        if n >= m:
            for i in range(m):
                prev[i] = xr[n - m + i]
        else:
            for i in range(m - n):
                prev[i] = prev[i + n]
            for i in range(n):
                prev[m - n + i] = xr[i]

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _rows_f32(x, w, b, out, inner, r0, r1, state, has_prev):  # pragma: no cover - compiled
        # row r is channel (r // inner) % n_ch: inner 1 for [S, C, L], S for channel-major [C, S, L];
        # has_prev: state [rows, K - 1] holds each row's previous inputs (updated); else zeros before t = 0 and
        # state is a placeholder [1, K - 1]
        n_ch = w.shape[0]
        for r in range(r0, r1):
            c = (r // inner) % n_ch
            _row(x[r], w[c], b[c], out[r], state[r if has_prev else 0], has_prev)

    @njit(cache=True, fastmath=_FM, error_model="numpy")
    def _rows_bf16(x, w, b, out, inner, r0, r1, state, has_prev):  # pragma: no cover - compiled
        # x: the bf16 values' bits as uint16; a bf16 is the top half of the float32 with the same value
        n_ch, n = w.shape[0], x.shape[1]
        wide = np.empty(n, np.uint32)
        xf = wide.view(np.float32)
        for r in range(r0, r1):
            c = (r // inner) % n_ch
            xr = x[r]
            for t in range(n):
                wide[t] = np.uint32(xr[t]) << np.uint32(16)
            _row(xf, w[c], b[c], out[r], state[r if has_prev else 0], has_prev)

    @njit(cache=True, parallel=True)
    def _par_f32(x, w, b, out, inner, n_blocks, state, has_prev):  # pragma: no cover - compiled
        rows = x.shape[0]
        for i in prange(n_blocks):
            _rows_f32(x, w, b, out, inner, i * rows // n_blocks, (i + 1) * rows // n_blocks, state, has_prev)

    @njit(cache=True, parallel=True)
    def _par_bf16(x, w, b, out, inner, n_blocks, state, has_prev):  # pragma: no cover - compiled
        rows = x.shape[0]
        for i in prange(n_blocks):
            _rows_bf16(x, w, b, out, inner, i * rows // n_blocks, (i + 1) * rows // n_blocks, state, has_prev)


def available() -> bool:
    return numba is not None


def conv_silu_rows_into(x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor,
                        channel_major: bool = False, state: Tensor | None = None) -> Tensor:
    """out = silu(causal depthwise conv(x)) for x [S, C, L] (float32 or bfloat16, contiguous), weight [C, 1, K]
    or [C, K], bias [C] or None; out float32 [S, C, L] contiguous. channel_major: x and out [C, S, L] (channel
    c's rows at x[c]). state: None (zeros before t = 0), or float32 x.shape[:-1] + (K - 1,) contiguous, each
    row's K - 1 inputs before x[..., 0] (the latest last), used in place of the zeros and then replaced by the
    row's last K - 1 inputs (of state followed by x): a long row can go through in consecutive pieces. No
    autograd."""
    if numba is None:
        raise RuntimeError("numba is not available")
    if x.dtype not in (torch.float32, torch.bfloat16) or out.dtype != torch.float32:
        raise TypeError(f"x must be float32 or bfloat16 and out float32, got {x.dtype} and {out.dtype}")
    if not (x.is_contiguous() and out.is_contiguous()) or out.shape != x.shape:
        raise ValueError("x and out must be contiguous and of the same shape")
    n_ch, length = (x.shape[0] if channel_major else x.shape[-2]), x.shape[-1]
    if channel_major and x.dim() != 3:
        raise ValueError("a channel-major x must be [C, S, L]")
    inner = max(1, x.shape[1]) if channel_major else 1
    w = weight.detach().reshape(n_ch, -1).float().contiguous().numpy()
    b = np.zeros(n_ch, np.float32) if bias is None else bias.detach().float().contiguous().numpy()
    rows = x.numel() // length if length else 0
    halo = w.shape[1] - 1
    if state is not None:
        if state.dtype != torch.float32 or not state.is_contiguous() or state.shape != (*x.shape[:-1], halo):
            raise ValueError(f"state must be float32 contiguous {(*x.shape[:-1], halo)}, got {state.dtype} "
                             f"{tuple(state.shape)}")
        st = state.view(rows, halo).numpy() if rows else None
    else:
        st = np.zeros((1, halo), np.float32)
    if rows == 0:
        return out
    has_prev = state is not None
    xs = (x.view(torch.int16) if x.dtype == torch.bfloat16 else x).reshape(rows, length).numpy()
    if x.dtype == torch.bfloat16:
        xs = xs.view(np.uint16)
    o = out.view(rows, length).numpy()
    serial = _rows_bf16 if x.dtype == torch.bfloat16 else _rows_f32
    if rows < 2:
        serial(xs, w, b, o, inner, 0, rows, st, has_prev)
        return out
    with parallel_threads() as threads:  # one lock and fork guard with the scan's kernels
        if threads:
            (_par_bf16 if x.dtype == torch.bfloat16 else _par_f32)(xs, w, b, o, inner, min(rows, 4 * threads), st,
                                                                   has_prev)
        else:
            serial(xs, w, b, o, inner, 0, rows, st, has_prev)
    return out
