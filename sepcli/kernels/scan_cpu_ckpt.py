"""Forward of the CPU scan for autograd (float32, n = 16) that also keeps the backward's checkpoints: the state
of every channel block at the start of each backward time segment (every SEG steps).

Why: the backward runs in segments of SEG steps from the last to the first, each from its start state. Without
checkpoints it first runs the forward's time loop once more over the whole sequence to find those states (the
"checkpoint pass": dt = softplus(delta + bias), dt·u and the scan, ~17% of the backward on the issue's shape
b=1, d=512, l=4000). The forward computes these states anyway: storing them costs one [16, 16] copy per block
and segment (l/SEG·n values per channel, 0.5 MB at the issue's shape), like mamba_ssm's CUDA forward, which
saves its chunk states for the backward.

How: scan_cpu_vec's block loop (the same row setup, time loop and output pass, imported from there) with time
tiles of SEG steps (the backward's segment length) instead of its own TT, storing the carried state at each
tile's start. Other dtypes and n keep scan_cpu.scan_forward and no checkpoints (the backward then runs its
checkpoint pass).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from .scan_cpu import _FASTMATH, W, _blocks, _kernel_args, _prepare, _run, lane_params, scan_forward, threads_for_call
from .scan_cpu_vec import N, _scan_cc, _scan_cv, _scan_vc, _scan_vv, _tile_setup
from .vector_ir import gate_row16, transpose16

SEG = 256  # time steps per backward segment (scan_cpu_bwd.SEG is this value)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _fwd_blocks_ck(i0, i1, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus,
                   out, last, HCK):
    """scan_cpu_vec._fwd_blocks in tiles of SEG steps, HCK[i, s] = the state of block i before tile s."""
    nl = u.shape[2]
    tp = min(SEG, (nl + W - 1) // W * W)
    fdt = u.dtype
    AL = np.empty((N, W), fdt)
    H = np.empty((N, W), fdt)
    BL = np.empty((N, W), fdt)
    CL = np.empty((N, W), fdt)
    ch = np.empty(W, np.int64)
    DTR = np.zeros((2 * W, tp), fdt)
    DTT = np.zeros((tp, W), fdt)
    DUT = np.zeros((tp, W), fdt)
    OB = np.zeros((tp, W), fdt)
    OBR = DTR[:W]
    UR = np.zeros((W, tp), fdt)
    ZR = np.zeros((2, tp), fdt)
    for i in range(i0, i1):
        b = blk[i, 0]
        d0 = blk[i, 1]
        w = blk[i, 2]
        lane_params(d0, w, N, A, Bv, Cv, var_b, var_c, ch, AL, BL, CL)
        H[:] = 0.0
        BR = Bv[b, d0 // dpg_b] if var_b else BL
        CR = Cv[b, d0 // dpg_c] if var_c else CL
        for t0 in range(0, nl, SEG):
            HCK[i, t0 // SEG] = H
            m = min(SEG, nl - t0)
            mp = (m + W - 1) // W * W
            _tile_setup(b, t0, m, ch, u, delta, bias, softplus, DTR, DTT, DUT, UR)
            BX = BR[t0:t0 + m] if var_b else BL
            CX = CR[t0:t0 + m] if var_c else CL
            if var_b and var_c:
                _scan_vv(DTT[:m], DUT[:m], AL, BX, CX, H, OB)
            elif var_b:
                _scan_vc(DTT[:m], DUT[:m], AL, BX, CX, H, OB)
            elif var_c:
                _scan_cv(DTT[:m], DUT[:m], AL, BX, CX, H, OB)
            else:
                _scan_cc(DTT[:m], DUT[:m], AL, BX, CX, H, OB)
            for t in range(0, mp, W):
                transpose16(OB, t, 0, OBR, 0, t)
            for j in range(w):  # D term and gate, along the channel's row
                c = d0 + j
                Dd = D[c]
                orow = out[b, c, t0:t0 + m]
                if has_z:
                    zrow = z[b, c, t0:t0 + m]
                    for t in range(m):
                        ZR[0, t] = zrow[t]
                        ZR[1, t] = OBR[j, t] + Dd * UR[j, t]
                    for t in range(0, mp, W):
                        gate_row16(ZR, t)
                    for t in range(m):
                        orow[t] = ZR[1, t]
                else:
                    for t in range(m):
                        orow[t] = OBR[j, t] + Dd * UR[j, t]
        for j in range(w):
            for k in range(N):
                last[b, d0 + j, k] = H[k, j]


@njit(cache=True, parallel=True)
def _ck_par(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last,
            HCK):
    nb = blk.shape[0]
    for c in prange(nchunks):
        _fwd_blocks_ck(c * nb // nchunks, (c + 1) * nb // nchunks, blk, u, delta, A, Bv, Cv, D, z, bias,
                       var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last, HCK)


@njit(cache=True)
def _ck_ser(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last,
            HCK):
    _fwd_blocks_ck(0, blk.shape[0], blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z,
                   softplus, out, last, HCK)


def scan_forward_ckpt(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """scan_cpu.scan_forward plus the backward's checkpoints: (out, last_state, checkpoints or None).

    checkpoints: float32 [blocks, segments, 16, 16], the state (state-major, one channel per lane) of each channel
    block of scan_cpu._blocks at the start of each SEG-step segment; None where the backward finds them itself
    (float64, n != 16, empty input) or where it needs none (one segment: l <= SEG, the first state is 0)."""
    b, d, l = u.shape
    if u.dtype == torch.float64 or A.shape[1] != N or not b * d * l or l <= SEG:
        out, last = scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        return out, last, None
    p = _prepare(u, delta, A, B, C, D, z, delta_bias)
    out = np.empty((b, d, l), p["u"].dtype)
    last = np.zeros((b, d, N), p["u"].dtype)
    blk = _blocks(b, d, p)
    hck = np.empty((len(blk), (l + SEG - 1) // SEG, N, W), p["u"].dtype)
    _run(_ck_par, _ck_ser, min(threads_for_call(), len(blk)), blk, *_kernel_args(p, delta_softplus), out, last, hck)
    return torch.from_numpy(out).to(u.dtype), torch.from_numpy(last), hck
