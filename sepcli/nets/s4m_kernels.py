"""Fused numba kernels for S4M's inference on CPU (float32, one item [C, T] at a time).

Why: in one pass of S4M's shared block most of the time went to chains of elementwise PyTorch ops over the
full-length activations (256 x 2003 frames, 2 MB for a 4 s segment of the default model): depthwise
convolution, global layer norm (statistics, then normalise and affine), sigmoid, nearest upsampling (a copy),
multiply and add, each a separate pass at memory speed. Here each such chain is one call: the convolution of a
channel row is accumulated tap by tap in a row that stays in L1, its sums are taken on the way, the gLN
coefficients are reduced serially (C values), and a second parallel loop applies normalisation, gate and
upsampling (an index table) in place.

gLN (GroupNorm with one group): y = gamma_c (z - mean) / sqrt(var + eps) + beta_c over all (c, t) of the item;
mean and var come from per-channel float64 sums of z and z^2 (var = E[z^2] - mean^2), folded into one scale
and shift per channel. Results match the plain modules to float32 round-off (tests: tests/nets/test_s4m_fused.py).

Loops vectorise on any x86-64 (generic LLVM; AVX2 or AVX-512, whatever the host has). Compiled on first use
and cached on disk (`cache=True`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# the scan's float32 sigmoid: 1 / (1 + exp(-x)) with its branch-free Cephes expf (vectorisable; libm's expf is
# not), an overload compiled with its own flags, so the callers' reassociation cannot fold its rounding trick
from ..kernels.scan_cpu import _sigmoid

# reassociation lets LLVM vectorise the sums; contraction allows FMAs; no 'nnan'/'ninf' (NaNs propagate)
_FM = {"reassoc", "contract", "nsz"}
_F32 = np.float32


@njit(cache=True)
def sigmoid_check(x):
    """Test hook: the sigmoid these kernels use, over a 1-D float32 array."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _sigmoid(x[i])
    return out


@njit(cache=True, fastmath=_FM)
def _row_sums(r):
    """(sum, sum of squares) of a float32 row, accumulated in float64: a gLN's statistics."""
    s1 = 0.0
    s2 = 0.0
    for t in range(r.shape[0]):
        v = np.float64(r[t])
        s1 += v
        s2 += v * v
    return s1, s2


@njit(cache=True, fastmath=_FM)
def _dw_row(xr, w, bias, stride, row):
    """row[t] = bias + sum_k w[k] x[t * stride + k - p] (zero padding p = (K - 1) // 2); returns (sum, sum sq).

    Loops index slices from 0: an index numba cannot prove non-negative gets a wrap-around select, which kept
    LLVM from vectorising (4x slower)."""
    n, k_taps, n_out = xr.shape[0], w.shape[0], row.shape[0]
    p = (k_taps - 1) // 2
    if stride == 1 and k_taps == 5 and n > 4:  # S4M's k5 convolutions: interior frames in one pass
        w0, w1, w2, w3, w4 = w[0], w[1], w[2], w[3], w[4]
        x0, x1, x2, x3, x4 = xr[0:n - 4], xr[1:n - 3], xr[2:n - 2], xr[3:n - 1], xr[4:n]
        ri = row[2:n - 2]
        for i in range(n - 4):
            ri[i] = bias + w0 * x0[i] + w1 * x1[i] + w2 * x2[i] + w3 * x3[i] + w4 * x4[i]
        row[0] = bias + w2 * xr[0] + w3 * xr[1] + w4 * xr[2]
        row[1] = bias + w1 * xr[0] + w2 * xr[1] + w3 * xr[2] + w4 * xr[3]
        row[n - 2] = bias + w0 * xr[n - 4] + w1 * xr[n - 3] + w2 * xr[n - 2] + w3 * xr[n - 1]
        row[n - 1] = bias + w0 * xr[n - 3] + w1 * xr[n - 2] + w2 * xr[n - 1]
    else:
        for t in range(n_out):
            row[t] = bias
        for k in range(k_taps):
            wk, off = w[k], k - p
            lo = max(0, (-off + stride - 1) // stride)
            hi = min(n_out, (n - 1 - off) // stride + 1)
            if hi <= lo:
                continue
            rs = row[lo:hi]
            xs = xr[lo * stride + off:(hi - 1) * stride + off + 1:stride]
            for i in range(hi - lo):
                rs[i] += wk * xs[i]
    return _row_sums(row)


@njit(cache=True)
def _gln_coeffs(s1, s2, scale, gamma, beta, count, eps, a, b):
    """Per-channel a, b with gamma (scale z - mean) / sqrt(var + eps) + beta = a z + b, from the per-channel
    sums s1, s2 of z' = scale z (scale: a depthwise 1x1 weight folded in, else ones)."""
    c_n = s1.shape[0]
    t1 = 0.0
    t2 = 0.0
    for c in range(c_n):
        t1 += s1[c]
        t2 += s2[c]
    mean = t1 / count
    var = max(t2 / count - mean * mean, 0.0)
    inv = 1.0 / np.sqrt(var + eps)
    for c in range(c_n):
        g = gamma[c] * inv
        a[c] = g * scale[c]
        b[c] = beta[c] - g * mean


@njit(cache=True, parallel=True, fastmath=_FM)
def conv_gln(x, w, bias, stride, gamma, beta, eps, out):
    """out = gLN(depthwise conv(x)) for x [C, T], w [C, K], out [C, T_out]."""
    c_n, n_out = out.shape
    s1 = np.empty(c_n)
    s2 = np.empty(c_n)
    for c in prange(c_n):
        s1[c], s2[c] = _dw_row(x[c], w[c], bias[c], stride, out[c])
    a = np.empty(c_n)
    b = np.empty(c_n)
    _gln_coeffs(s1, s2, np.ones(c_n), gamma, beta, c_n * n_out, eps, a, b)
    for c in prange(c_n):
        ac, bc = _F32(a[c]), _F32(b[c])
        row = out[c]
        for t in range(n_out):
            row[t] = ac * row[t] + bc


@njit(cache=True, parallel=True, fastmath=_FM)
def gln_leaky_(x, gamma, beta, eps, slope):
    """x = leaky_relu(gLN(x), slope) in place, x [C, T]."""
    c_n, n = x.shape
    s1 = np.empty(c_n)
    s2 = np.empty(c_n)
    for c in prange(c_n):
        s1[c], s2[c] = _row_sums(x[c])
    a = np.empty(c_n)
    b = np.empty(c_n)
    _gln_coeffs(s1, s2, np.ones(c_n), gamma, beta, c_n * n, eps, a, b)
    sl = _F32(slope)
    for c in prange(c_n):
        ac, bc = _F32(a[c]), _F32(b[c])
        r = x[c]
        for t in range(n):
            v = ac * r[t] + bc
            r[t] = v if v > 0 else v * sl


@njit(cache=True, parallel=True, fastmath=_FM)
def fusion(xl, wl, gl, bl, xg, wg, gg, bg, we, ge, be, idx, eps, gate, emb, out):
    """S4M's local-attention fusion, out = gLN_l(dw_l(xl)) * sigmoid(gLN_g(dw_g(xg)))[idx] + gLN_e(dw_e(xg))[idx].

    xl [C, T] local features, xg [C, Tg] global ones; w* [C, K] depthwise weights without bias (K = 1: a
    per-channel scale, folded into the gLN coefficients without a pass), g*/b* the gLN gains and biases; idx [T]
    the nearest-upsampling source frame of each local frame; gate, emb [C, Tg] scratch; out [C, T]."""
    c_n, n = out.shape
    n_g = gate.shape[1]
    k_l = wl.shape[1]
    zero = _F32(0.0)
    sl1 = np.empty(c_n)
    sl2 = np.empty(c_n)
    sg1 = np.empty(c_n)
    sg2 = np.empty(c_n)
    se1 = np.empty(c_n)
    se2 = np.empty(c_n)
    for c in prange(c_n):
        if k_l == 1:  # statistics of x; the scale goes into the coefficients
            a1, a2 = _row_sums(xl[c])
            w = np.float64(wl[c, 0])
            sl1[c] = w * a1
            sl2[c] = w * w * a2
        else:
            sl1[c], sl2[c] = _dw_row(xl[c], wl[c], zero, 1, out[c])
        sg1[c], sg2[c] = _dw_row(xg[c], wg[c], zero, 1, gate[c])
        se1[c], se2[c] = _dw_row(xg[c], we[c], zero, 1, emb[c])
    al = np.empty(c_n)
    bl_ = np.empty(c_n)
    ag = np.empty(c_n)
    bg_ = np.empty(c_n)
    ae = np.empty(c_n)
    be_ = np.empty(c_n)
    if k_l == 1:
        scale = np.empty(c_n)
        for c in range(c_n):
            scale[c] = wl[c, 0]
    else:
        scale = np.ones(c_n)
    _gln_coeffs(sl1, sl2, scale, gl, bl, c_n * n, eps, al, bl_)
    _gln_coeffs(sg1, sg2, np.ones(c_n), gg, bg, c_n * n_g, eps, ag, bg_)
    _gln_coeffs(se1, se2, np.ones(c_n), ge, be, c_n * n_g, eps, ae, be_)
    for c in prange(c_n):
        g_r = gate[c]
        e_r = emb[c]
        a_g, b_g, a_e, b_e = _F32(ag[c]), _F32(bg_[c]), _F32(ae[c]), _F32(be_[c])
        for j in range(n_g):
            g_r[j] = _sigmoid(a_g * g_r[j] + b_g)
            e_r[j] = a_e * e_r[j] + b_e
        a_l, b_l = _F32(al[c]), _F32(bl_[c])
        o = out[c]
        src = xl[c] if k_l == 1 else o
        for t in range(n):
            j = idx[t]  # unsigned: no wrap-around select, a vector gather
            o[t] = (a_l * src[t] + b_l) * g_r[j] + e_r[j]


@njit(cache=True, parallel=True, fastmath=_FM)
def pool_add(x, start, end, out):
    """out += adaptive average pooling of x [C, T] to out's length (windows [start[i], end[i]))."""
    c_n, n_out = out.shape
    for c in prange(c_n):
        r = x[c]
        o = out[c]
        for i in range(n_out):
            s = _F32(0.0)
            for t in range(start[i], end[i]):
                s += r[t]
            o[i] += s / _F32(end[i] - start[i])

