"""A time segment's scans in the CPU scan's backward (scan_cpu_bwd drives them): the segment's forward from its
start state (keeping decays and states) and its reverse, and the checkpoint pass's forward (states only).

Why a module of its own: it dispatches between two implementations of the same step formulas (scan_cpu_bwd's
docstring): the generic one, one tile intrinsic call per time step and 16 states (scan_cpu_bwd_ir: any n, float32
and float64), and for float32 with n = 16 whole-segment loops with the states / state gradients in registers
(scan_cpu_bwd16), run in chunks of CH steps with a share of the next rows prefetched into L2 after each chunk: the
row passes around the loops read and write channel rows of 1 KB spread over separate pages, which the hardware
prefetchers do not fetch ahead, so they waited on memory (issue shape, 2 threads: 1.56 -> 1.96 G updates/s with
the prefetches). The checkpoint pass (used when the forward kept no checkpoints) runs scan_cpu_vec's base-e time loops
(_scan_vv etc., vector_ir.vexp_ir) for n = 16 float32, not the forward's base-2 loop.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from .scan_cpu_bwd16 import fwd16, prefetch_rows, rev16
from .scan_cpu_bwd_ir import LW, _fwd_tile, _rev_tile
from .scan_cpu_vec import _scan_cc, _scan_cv, _scan_vc, _scan_vv

_FM = {"reassoc", "contract", "nsz"}  # as the forward: no 'nnan'/'ninf' (infinities and NaNs propagate)
CH = 32  # time steps per chunk of the n = 16 segment loops (the next segment's rows are prefetched between chunks)
TS = 16  # states per tile (n is padded to a multiple of TS for the tiles)


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _seg_forward(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DCc, dC,
                 dc_sum):
    """Steps t0..t0+m-1 (segment-local rows t = 0..m-1 of DTT, DUT, GOT, Y) from HS[0]: HS[t+1] states, E decays,
    Y[t] = y; dC (go·h) summed over lanes into dC[bc, gc, t0 + t] (dc_sum: variable C) or per lane into DCc.
    n is a multiple of TS (padded)."""
    Bs = Bv if var_b else ZB
    Cs = Cv if var_c else ZB
    for t in range(m):
        for q in range(n // TS):
            ob = ((bb * Bv.shape[1] + gb) * Bv.shape[2] + t0 + t) * n + q * TS if var_b else 0
            oc = ((bc * Cv.shape[1] + gc) * Cv.shape[2] + t0 + t) * n + q * TS if var_c else 0
            _fwd_tile(E, HS, DTT, AL, DUT, BL, CL, GOT, Y, Bs, Cs, dC, DCc, q * TS * LW, t * LW,
                      (t * n + q * TS) * LW, n * LW, ob, oc, 1 if var_b else 0, 1 if var_c else 0, oc, dc_sum)


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _seg_reverse(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, GH, DAL,
                 DUA, DDT, DBc, dB):
    """Reverse steps t0+m-1..t0 (segment-local rows as _seg_forward): GH (gradient of the state) carried in and
    out; DUA[t] += Σ_k g_h·B, DDT[t] += Σ_k g_h·h[t-1]·e·A, DAL += Σ_t g_h·h[t-1]·e·dt; dB summed over lanes
    (variable B) or per lane."""
    Bs = Bv if var_b else ZB
    Cs = Cv if var_c else ZB
    for t in range(m - 1, -1, -1):
        for q in range(n // TS):
            ob = ((bb * Bv.shape[1] + gb) * Bv.shape[2] + t0 + t) * n + q * TS if var_b else 0
            oc = ((bc * Cv.shape[1] + gc) * Cv.shape[2] + t0 + t) * n + q * TS if var_c else 0
            _rev_tile(GH, GOT, E, HS, AL, DTT, DUT, BL, CL, DUA, DDT, DAL, Bs, Cs, dB, DBc, q * TS * LW, t * LW,
                      (t * n + q * TS) * LW, ob, oc, 1 if var_b else 0, 1 if var_c else 0, ob, var_b)


def _seg_scan(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DUA, DDT, GH,
              DAL, DBc, DCc, dB, dC, pf):  # pragma: no cover - replaced by the numba overload below
    """A segment's forward from HS[0] (keeping decays and states) and its reverse: Y, DUA, DDT rows, GH carried."""
    raise NotImplementedError


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _seg_generic(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DUA, DDT,
                 GH, DAL, DBc, DCc, dB, dC):
    Y[:] = 0.0
    DUA[:] = 0.0
    DDT[:] = 0.0
    _seg_forward(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DCc, dC,
                 var_c)
    _seg_reverse(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, GH, DAL, DUA,
                 DDT, DBc, dB)


@overload(_seg_scan, jit_options={"fastmath": _FM, "error_model": "numpy"})
def _ol_seg_scan(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DUA, DDT, GH,
                 DAL, DBc, DCc, dB, dC, pf):
    generic = _seg_generic
    if Bv.dtype != types.float32:

        def impl64(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DUA, DDT,
                   GH, DAL, DBc, DCc, dB, dC, pf):
            generic(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DUA, DDT,
                    GH, DAL, DBc, DCc, dB, dC)

        return impl64

    def impl32(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DUA, DDT, GH,
               DAL, DBc, DCc, dB, dC, pf):
        if n != 16:
            generic(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DUA, DDT,
                    GH, DAL, DBc, DCc, dB, dC)
            return
        # n = 16: whole-segment loops with the states / state gradients in registers (scan_cpu_bwd16), run in
        # chunks of CH steps with a share of the next segment's rows prefetched after each chunk
        BX = Bv[bb, gb][t0:t0 + m] if var_b else BL
        CX = Cv[bc, gc][t0:t0 + m] if var_c else CL
        DBX = dB[bb, gb][t0:t0 + m] if var_b else DBc
        DCX = dC[bc, gc][t0:t0 + m] if var_c else DCc
        nq = (m + CH - 1) // CH
        for qi in range(nq):
            q = qi * CH
            mq = min(CH, m - q)
            fwd16(var_b, var_c, DTT[q:], DUT[q:], GOT[q:], AL, BX[q:] if var_b else BX, CX[q:] if var_c else CX,
                  HS[q:], E[q:], Y[q:], DCX[q:] if var_c else DCX, mq)
            if pf[2] >= 0:
                prefetch_rows(pf, qi, 2 * nq)
        for qi in range(nq - 1, -1, -1):
            q = qi * CH
            mq = min(CH, m - q)
            rev16(var_b, var_c, GOT[q:], DTT[q:], DUT[q:], AL, BX[q:] if var_b else BX, CX[q:] if var_c else CX,
                  HS[q:], E[q:], GH, DUA[q:], DDT[q:], DAL, DBX[q:] if var_b else DBX, mq)
            if pf[2] >= 0:
                prefetch_rows(pf, 2 * nq - 1 - qi, 2 * nq)

    return impl32


def _checkpoint_scan(t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DCx,
                     dC):  # pragma: no cover - replaced by the numba overload below
    """Advance the state HS[0] over steps t0..t0+m-1 (nothing else is kept)."""
    raise NotImplementedError


@njit(cache=True, fastmath=_FM, error_model="numpy")
def _checkpoint_generic(t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DCx, dC):
    ZB = np.zeros((1, 1, 1, 1), Bv.dtype)
    _seg_forward(ZB, t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DCx, dC,
                 False)  # go·h goes to the scratch DCx
    HS[0] = HS[m]


@overload(_checkpoint_scan, jit_options={"fastmath": _FM, "error_model": "numpy"})
def _ol_checkpoint_scan(t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DCx, dC):
    generic = _checkpoint_generic
    if Bv.dtype != types.float32:

        def impl64(t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DCx, dC):
            generic(t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DCx, dC)

        return impl64

    def impl32(t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DCx, dC):
        if n != 16:
            generic(t0, m, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, GOT, HS, E, Y, DCx, dC)
            return
        # n = 16: the vectorised forward's time loop (states in registers, ~2x cheaper than _fwd_tile)
        H = HS[0]
        BX = Bv[bb, gb][t0:t0 + m] if var_b else BL
        CX = Cv[bc, gc][t0:t0 + m] if var_c else CL
        if var_b and var_c:
            _scan_vv(DTT[:m], DUT[:m], AL, BX, CX, H, Y)
        elif var_b:
            _scan_vc(DTT[:m], DUT[:m], AL, BX, CX, H, Y)
        elif var_c:
            _scan_cv(DTT[:m], DUT[:m], AL, BX, CX, H, Y)
        else:
            _scan_cc(DTT[:m], DUT[:m], AL, BX, CX, H, Y)

    return impl32
