"""Backward of the fused CPU selective scan (numba): a reverse-time scan with channels in vector lanes.

Gradients (g_h is the gradient of the state h, go the gradient of y = <h, C> through the silu(z) gate,
e[t] = exp(dt[t]·A), h[t] the state after step t, h[-1] = 0):

    g_h[t] = go[t]·C[t] + e[t+1]·g_h[t+1]
    dC[t] += go[t]·h[t];   dB[t] += g_h[t]·dt[t]·u[t];   du[t] = go[t]·D + dt[t]·Σ_k g_h[t]·B[t]
    ddt[t] = Σ_k g_h[t]·h[t-1]·e[t]·A + u[t]·Σ_k g_h[t]·B[t];   dA += g_h[t]·h[t-1]·e[t]·dt[t]
    ddelta = ddt·sigmoid(delta + bias) with softplus (ddt otherwise);   dbias = Σ_t ddelta;   dD = Σ_t go·u
    dz = dout·(y + D·u)·sigmoid(z)·(1 + z·(1 - sigmoid(z)));   go = dout·z·sigmoid(z)

As in mamba_ssm, the gradient of the returned last state is not propagated.

Design (why it is fast). The previous backward ran per channel row, scalar over the n states, with
read-modify-writes into memory accumulators per state and time step. A first 16-lane rewrite in plain numba
loops was no faster: its inner loops touch a dozen arrays, so LLVM's loop vectoriser (which would need runtime
alias checks between them, for a 16-iteration loop) leaves them scalar. Here:
- channels go in blocks of LW = 16, one channel per vector lane (a block never spans two B/C groups; spare
  lanes of a narrow block repeat a channel with a zero output gradient, so they add nothing);
- the per-step work is explicit `<16 x elem>` LLVM IR (numba intrinsics `_fwd_tile`, `_rev_tile`, in
  scan_cpu_bwd_ir with the row helpers, driven per segment by scan_cpu_bwd_seg), one call per time step and tile
  of 16 states (n is padded to a multiple of 16 with zero A, B, C): vector code by construction, the sums over
  states (y, Σ g_h·B, Σ g_h·h·e·A) in registers, and the sums over a group's channels (dB, dC of variable B/C)
  as one shuffle butterfly per tile (15 additions for 16 lane sums) added to per-thread accumulators once per
  time step and block. Generic IR: LLVM compiles it for the host's vector width (two AVX2 registers per vector
  on a laptop; nothing requires AVX-512);
- time goes in segments of SEG steps, every scratch array holds one segment (it stays in L2 at any length); the
  segments run from the last to the first, each from its start state: the segment's rows, its forward keeping the
  decays exp(dt·A) and states, and its reverse (no exp). The start states come from the autograd forward, which
  keeps them (scan_cpu_ckpt, float32 n = 16: they are states it computes anyway), else from a checkpoint pass
  that runs the forward once more (for n = 16 float32 the vectorised forward's time loop, scan_cpu_vec): on the
  issue's shape (b=1, d=512, l=4000) that pass was ~17% of the backward. Keeping every step's decays instead
  (4 MB per block at l = 4000) made long sequences slower. exp is vector_ir.vexp_ir (base e; float64: libm exp);
  the forward's checkpoints come from its base-2 exp (vector_exp2), about 1e-7 relative apart;
- for float32 n = 16 the segment's forward and reverse are whole time loops with the 16 states / state gradients
  in registers (scan_cpu_bwd16, ~25% faster than the tiles), with the next segment's rows prefetched between
  chunks of steps (scan_cpu_bwd_seg);
- the per-element passes go along contiguous channel rows, 16 values at a time (float32: vector_ir's softplus
  with its sigmoid from one exp, sigmoid of the gate, 16x16 transposes to and from the scan's time-major rows;
  as strided scalar loops they took ~45% of the backward; float64 keeps plain loops).
Extra memory per thread: O(SEG·n·LW) decays and states, O(l·n·LW / SEG) segment start states (the forward's
checkpoints: l·d·n / SEG values per batch row, 0.5 MB at the issue's shape).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from .scan_cpu import _as_np, _bc_grad, _blocks, _kernel_args, _prepare, _run, lane_params, threads_for_call
from .scan_cpu_bwd_ir import (LW, _rows_gate_grad, _rows_softplus_sigmoid, _to_rows,
                              _to_time_major)
from .scan_cpu_bwd_seg import _FM, _checkpoint_scan, _seg_scan
from .scan_cpu_ckpt import SEG

TS = 16  # states per tile of the lane/column sums (n is padded to a multiple of TS in the tiles)
# SEG: time steps per segment, its states and decays (2·SEG·n·LW values) and rows stay in L2; the autograd
# forward (scan_cpu_ckpt) keeps the state at each segment's start


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _block_rows(b, ch, w, t0, nl, u, delta, z, dout, bias, has_z, softplus, full, CM, DUR, DTT, DUT, GOT):
    """Steps t0..t0+nl-1 per lane j, along contiguous channel rows of CM [4·LW, ·]: CM[j] = dt, CM[LW + j] = go,
    CM[2LW + j] = sigmoid(delta + bias) (softplus'), CM[3LW + j] = sigmoid(z); DUR[j] = dt·u; then dt, dt·u and
    go time-major [nl, LW] for the scan (16x16 transposes). Without `full`, dt and dt·u only. (Rows are sliced
    first: an index t0 + t of unknown sign gets numba's negative-index fix-up, which stops LLVM's vectoriser.)"""
    for j in range(LW):
        c = ch[j]
        bd = bias[c]
        drow = delta[b, c, t0:t0 + nl]
        urow = u[b, c, t0:t0 + nl]
        dt = CM[j]
        for t in range(nl):
            dt[t] = drow[t] + bd
        if softplus:  # softplus and its derivative from one exp
            _rows_softplus_sigmoid(CM, j, 2 * LW + j, nl)
        dur = DUR[j]
        for t in range(nl):
            dur[t] = dt[t] * urow[t]
        if not full:
            continue
        go = CM[LW + j]
        orow = dout[b, c, t0:t0 + nl]
        if j >= w:  # a spare lane: zero output gradient, so it adds nothing to the shared sums
            for t in range(nl):
                go[t] = 0.0
        elif has_z:
            zrow = z[b, c, t0:t0 + nl]
            zs = CM[3 * LW + j]
            for t in range(nl):
                zs[t] = zrow[t]
                go[t] = orow[t]
            _rows_gate_grad(CM, 3 * LW + j, LW + j, nl)
        else:
            for t in range(nl):
                go[t] = orow[t]
    _to_time_major(CM, 0, DTT, nl)
    _to_time_major(DUR, 0, DUT, nl)
    if full:
        _to_time_major(CM, LW, GOT, nl)


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _block_outputs(b, ch, w, t0, nl, u, z, dout, D, has_z, softplus, CM, OR, du, ddelta, dz, dD_p, dbias_p, thr):
    """Per-channel outputs du, ddelta, dz of steps t0..t0+nl-1 and the sums dD, dbias, along rows: OR [3·LW, ·]
    holds y, Σ g_h·B and Σ g_h·h·e·A per lane (transposed from the scan's time-major rows); CM as _block_rows
    left it."""
    for j in range(w):
        c = ch[j]
        Dd = D[c]
        urow = u[b, c, t0:t0 + nl]
        durow = du[b, c, t0:t0 + nl]
        ddrow = ddelta[b, c, t0:t0 + nl]
        dt = CM[j]
        go = CM[LW + j]
        dua = OR[LW + j]
        ddt = OR[2 * LW + j]  # becomes ddelta's row
        for t in range(nl):
            ddt[t] = ddt[t] + urow[t] * dua[t]
            durow[t] = go[t] * Dd + dt[t] * dua[t]
        if softplus:
            sg = CM[2 * LW + j]
            for t in range(nl):
                ddt[t] = ddt[t] * sg[t]
        sb = ddt[0] * 0.0
        sd = sb
        for t in range(nl):
            ddrow[t] = ddt[t]
            sb += ddt[t]
            sd += go[t] * urow[t]
        if has_z:
            y = OR[j]
            zrow = z[b, c, t0:t0 + nl]
            orow = dout[b, c, t0:t0 + nl]
            dzrow = dz[b, c, t0:t0 + nl]
            sz = CM[3 * LW + j]
            for t in range(nl):
                dzrow[t] = orow[t] * (y[t] + Dd * urow[t]) * sz[t] * (1.0 + zrow[t] * (1.0 - sz[t]))
        dbias_p[thr, c] += sb
        dD_p[thr, c] += sd


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _bwd_blocks(thr, i0, i1, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus,
                dout, du, ddelta, dz, dA_p, dB_p, dC_p, dD_p, dbias_p, has_ck, HCK):
    """Backward of the channel blocks blk[i0:i1] (row b, first channel d0, width w) into thread slot thr.

    Time goes in segments of SEG steps and every scratch array holds one segment, so the working set stays in
    L2 whatever the length: a checkpoint pass runs the forward (states only) over all segments but the last and
    keeps each segment's start state; then, from the last segment to the first, the segment's rows are computed,
    its forward is run again from its start state (keeping its decays and states) and reversed. Keeping every
    step's decays instead (l·n·LW values, 4 MB per block at l = 4000) made long sequences bound by memory."""
    n = A.shape[1]
    nl = u.shape[2]
    fdt = u.dtype
    seg = min(nl, SEG)
    nseg = (nl + seg - 1) // seg
    sp = (seg + LW - 1) // LW * LW  # rows padded to whole 16x16 tiles (the padding is never read back)
    ch = np.empty(LW, np.int64)
    chn = np.empty(LW, np.int64)  # the next block's channels
    tl = (nseg - 1) * seg  # the last segment's first step
    AL = np.empty((n, LW), fdt)
    BL = np.zeros((n, LW), fdt)  # constant B / C per lane (zeros when variable)
    CL = np.zeros((n, LW), fdt)
    CM = np.zeros((4 * LW, sp), fdt)  # dt, go, softplus', sigmoid(z): channel-major rows
    DUR = np.zeros((LW, sp), fdt)  # dt·u rows
    OR = np.zeros((3 * LW, sp), fdt)  # y, Σ g_h·B, Σ g_h·h·e·A rows
    DTT = np.zeros((sp, LW), fdt)  # dt, time-major
    DUT = np.zeros((sp, LW), fdt)  # dt·u
    GOT = np.zeros((sp, LW), fdt)  # go
    Y = np.zeros((sp, LW), fdt)
    DUA = np.zeros((sp, LW), fdt)
    DDT = np.zeros((sp, LW), fdt)
    HC = np.empty((nseg, n, LW), fdt)  # state at each segment start
    HS = np.empty((seg + 1, n, LW), fdt)
    E = np.empty((seg, n, LW), fdt)  # exp(dt·A) of the segment's steps: the reverse needs no exp
    GH = np.empty((n, LW), fdt)
    DAL = np.empty((n, LW), fdt)
    DBc = np.empty((n, LW), fdt)
    DCc = np.empty((n, LW), fdt)
    DCx = np.empty((n, LW), fdt)  # scratch for the checkpoint pass's go·h (its go is stale)
    ZB = np.zeros((1, 1, 1, 1), fdt)  # a zero B / C for the tiles when B / C is constant
    dB = dB_p[thr]
    dC = dC_p[thr]
    for i in range(i0, i1):
        b = blk[i, 0]
        d0 = blk[i, 1]
        w = blk[i, 2]
        bb = b if var_b else 0
        gb = d0 // dpg_b if var_b else 0
        bc = b if var_c else 0
        gc = d0 // dpg_c if var_c else 0
        lane_params(d0, w, n, A, Bv, Cv, var_b, var_c, ch, AL, BL, CL)
        GH[:] = 0.0
        DAL[:] = 0.0
        DBc[:] = 0.0
        DCc[:] = 0.0
        HS[0] = 0.0
        if has_ck:  # the forward kept them (scan_cpu_ckpt)
            HC[:] = HCK[i]
        else:
            for s in range(nseg - 1):  # checkpoint pass: the start state of every segment
                t0 = s * seg
                HC[s] = HS[0]
                _block_rows(b, ch, w, t0, seg, u, delta, z, dout, bias, has_z, softplus, False, CM, DUR, DTT, DUT,
                            GOT)
                _checkpoint_scan(t0, seg, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E,
                                 Y, DCx, dC)
            HC[nseg - 1] = HS[0]
        for s in range(nseg - 1, -1, -1):  # reverse, segment by segment
            t0 = s * seg
            m = min(nl, t0 + seg) - t0
            HS[0] = HC[s]
            _block_rows(b, ch, w, t0, m, u, delta, z, dout, bias, has_z, softplus, True, CM, DUR, DTT, DUT, GOT)
            # rows to prefetch while the segment's loops run: the next segment's, or the next block's last one
            if s:
                pf = (b, ch, t0 - seg, seg, u, delta, z, dout, du, ddelta, dz, has_z)
            elif i + 1 < i1:
                for j in range(LW):
                    chn[j] = blk[i + 1, 1] + min(j, blk[i + 1, 2] - 1)
                pf = (blk[i + 1, 0], chn, tl, nl - tl, u, delta, z, dout, du, ddelta, dz, has_z)
            else:
                pf = (b, ch, -1, 0, u, delta, z, dout, du, ddelta, dz, has_z)
            _seg_scan(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DUA,
                      DDT, GH, DAL, DBc, DCc, dB, dC, pf)
            _to_rows(Y, OR, 0, m)
            _to_rows(DUA, OR, LW, m)
            _to_rows(DDT, OR, 2 * LW, m)
            _block_outputs(b, ch, w, t0, m, u, z, dout, D, has_z, softplus, CM, OR, du, ddelta, dz, dD_p, dbias_p,
                           thr)
        for j in range(w):
            c = ch[j]
            for k in range(n):
                dA_p[thr, c, k] += DAL[k, j]
                if not var_b:
                    dB[0, c, 0, k] += DBc[k, j]
                if not var_c:
                    dC[0, c, 0, k] += DCc[k, j]


@njit(cache=True, parallel=True)
def _bwd_par(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, dout,
             du, ddelta, dz, dA_p, dB_p, dC_p, dD_p, dbias_p, has_ck, HCK):
    nb = blk.shape[0]
    for c in prange(nchunks):
        _bwd_blocks(c, c * nb // nchunks, (c + 1) * nb // nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b,
                    var_c, dpg_b, dpg_c, has_z, softplus, dout, du, ddelta, dz, dA_p, dB_p, dC_p, dD_p, dbias_p,
                    has_ck, HCK)


@njit(cache=True)
def _bwd_ser(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, dout,
             du, ddelta, dz, dA_p, dB_p, dC_p, dD_p, dbias_p, has_ck, HCK):
    _bwd_blocks(0, 0, blk.shape[0], blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z,
                softplus, dout, du, ddelta, dz, dA_p, dB_p, dC_p, dD_p, dbias_p, has_ck, HCK)


def scan_backward(saved: tuple, delta_softplus: bool, dout: torch.Tensor, checkpoints=None) -> tuple:
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, delta_softplus) for SelectiveScanCPU.backward.
    checkpoints: the segment start states scan_cpu_ckpt.scan_forward_ckpt kept (None: a checkpoint pass finds
    them)."""
    u, delta, A, B, C, D, z, delta_bias = saved
    p = _prepare(u, delta, A, B, C, D, z, delta_bias)
    fdt = p["u"].dtype
    n = A.shape[1]
    if n % TS:  # whole tiles of states: zero A, B, C for the padding states, whose h and gradients stay 0
        for key in ("A", "Bv", "Cv"):
            x = p[key]
            p[key] = np.concatenate([x, np.zeros(x.shape[:-1] + (TS - n % TS,), fdt)], axis=-1)
    b, d, l = u.shape
    blk = _blocks(b, d, p, LW)
    nt = max(1, min(threads_for_call(), len(blk)))  # block chunks == per-chunk accumulators
    du = np.empty((b, d, l), fdt)
    ddelta = np.empty((b, d, l), fdt)
    dz = np.empty((b, d, l), fdt) if z is not None else np.empty((1, 1, 1), fdt)
    dA_p = np.zeros((nt,) + p["A"].shape, fdt)
    dB_p = np.zeros((nt,) + p["Bv"].shape, fdt)
    dC_p = np.zeros((nt,) + p["Cv"].shape, fdt)
    dD_p = np.zeros((nt, d), fdt)
    dbias_p = np.zeros((nt, d), fdt)
    if b * d * l:
        has_ck = checkpoints is not None
        hck = checkpoints if has_ck else np.zeros((1, 1, p["A"].shape[1], LW), fdt)
        args = _kernel_args(p, delta_softplus) + (_as_np(dout, p["cdt"]), du, ddelta, dz, dA_p, dB_p, dC_p, dD_p,
                                                  dbias_p, has_ck, hck)
        _run(_bwd_par, _bwd_ser, nt, blk, *args)
    else:
        du.fill(0)
        ddelta.fill(0)
        dz.fill(0)
    return (
        torch.from_numpy(du).to(u.dtype),
        torch.from_numpy(ddelta).to(delta.dtype),
        torch.from_numpy(dA_p[..., :n].sum(0)).to(A.dtype),
        _bc_grad(dB_p[..., :n], B),
        _bc_grad(dC_p[..., :n], C),
        torch.from_numpy(dD_p.sum(0)).to(D.dtype) if D is not None else None,
        torch.from_numpy(dz).to(z.dtype) if z is not None else None,
        torch.from_numpy(dbias_p.sum(0)).to(delta_bias.dtype) if delta_bias is not None else None,
        None,
    )
