"""Explicitly vectorised forward of the CPU selective scan for d_state n = 16 (float32).

Why: scan_cpu's forward updates a block of W = 16 channels (one per vector lane) state by state, but written as
numba loops its states H[k, :] and output sums OB[t, :] live in memory (LLVM cannot keep arrays that may alias in
registers): every step loads and stores each state, and y += h·C[k] is a load-FMA-store chain through memory
across the 16 states. Its loops are also vectorised at LLVM's preferred width, 256 bits on Intel server cores.
With the time loop explicit (below) it is bound by its vector operations per update, most of them the exp, and
the passes around it (softplus, layout changes, the gate) cost as much again unless fused (scan_vec_rows).

How: the time loop of one block is LLVM IR written with llvmlite inside numba `@intrinsic`s (`<16 x float>`
vectors, `llvm.fma`, shuffles, bitcasts, integer shifts), which LLVM lowers to one zmm register per vector with
AVX-512 and to two ymm registers with AVX2 (there some states spill to the stack: slower, same results).
- the 16 states of the block's channels are 16 vector SSA values (phi nodes) carried across time steps, so they
  stay in registers; a step's output sum accumulates in 4 registers (the first starts from D·u) and is stored
  once per step;
- per step: one vector load of dt and of dt·u (time-major [l, 16]) and per state a broadcast of B[t, k] and
  C[t, k] (variable) or a vector of the lanes' constant B[k], C[k];
- exp(dt·A) = 2^(dt·A2) with A2 = A·log2 e premultiplied per block, so the product dt·A2 is the exp's only
  argument operation (vector_exp2.vexp2_ir). With AVX-512 (F, DQ) on the host: vreduceps, 5 polynomial FMAs and
  vscalefps, 7 operations that saturate correctly with no clamp; generic IR elsewhere (AVX2): magic-number
  rounding, the polynomial, 2^n added to the exponent bits and a NaN select, 12 operations plus a one-sided clamp
  when every A of the block is <= 0 and dt = softplus(.) >= 0 (mamba's case, decided per block) or 13 with both.
  A state update costs 11 vector operations (AVX-512) with (dt·u)·B, the state FMA and the output FMA, against
  17 with the 13-operation exp of vector_ir.vexp_ir (_scan_vv etc., still used by the backward's checkpoint pass).
  Accuracy: the polynomial ~1.6e-7 relative (tested against float64); A2 and dt·A2 add two float32 roundings of
  the argument, |dt·A|·1.2e-7 relative at most (the old exp had one: |dt·A|·6e-8), i.e. 2e-7 for |dt·A| <= 1
  and growing only where exp(dt·A) is tiny (tested).
- block setup and output (scan_vec_rows): delta and u read once and transposed in registers, dt, dt·u and D·u
  written time-major; after the loop y goes back to rows in registers and out = y·silu(z) is written directly.
  With delta in low rank (fold_par / fold_ser, the `lowr` argument) the setup computes delta from dt_low instead
  of reading delta's rows.

Measured (Sapphire Rapids class, 2 vCPUs, 1 core, one block of 16 channels x 4000 steps in cache): the time loop
~1.85 ns per (b, d, t) element (8.7 G state updates/s; 2.55 ns with the 13-operation exp), the whole block
~3.0-3.2 ns (was ~4.9). On the issue's shape (1, 512, 4000, 16) and SPMamba's, against git 4eb3200's kernel in
the same run: see benchmarks/bench_scan.py.

Other n and float64 keep scan_cpu's numba loops (the fallback); scan_cpu.scan_forward dispatches. Compiled by
numba with `cache=True`: the IR is generated once per variable/constant B, C combination (and clamp variant on
the generic path) and cached on disk with the rest of the kernel (numba's cache is keyed on the host CPU and its
features, so an AVX-512 build is never loaded on an AVX2 machine).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .scan_cpu import W, lane_params
from .scan_vec_rows import tile_output, tile_setup, tile_setup_fold
from .vector_exp2 import AVX512, FORCE_GENERIC, vexp2_ir
from .vector_ir import F32_2D, array_data, counted_loop, vbroadcast, vexp_ir, vfma, vload, vstore

N = 16  # the state size this kernel is specialised for (SPMamba's and Mamba's default d_state)


def _make_scan(var_b: bool, var_c: bool, base2: bool = False, low_only: bool = False):
    """Intrinsic scan16(DTT, DUT, AL, BX, CX, H, OB): run the block's time loop. DTT/DUT/OB [l, 16] (dt, dt·u, y),
    AL [16, 16] (A, state-major; base2: A·log2 e, the exp is vexp2_ir's, low_only: all A <= 0 and dt >= 0),
    H [16, 16] (states in/out), BX/CX [l, 16] variable rows B[t, k] (broadcast to the lanes) or [16, 16] constant
    per-lane values, all float32 C-contiguous."""

    @intrinsic
    def scan16(typingctx, DTT, DUT, AL, BX, CX, H, OB):
        args = (DTT, DUT, AL, BX, CX, H, OB)
        if any(a != F32_2D for a in args):
            return None

        def codegen(context, builder, sig, llargs):
            i64 = ir.IntType(64)
            dtt, dut, al, bx, cx, hh, ob = (array_data(context, builder, t, v) for t, v in zip(sig.args, llargs))
            nl = cgutils.unpack_tuple(builder, context.make_array(DTT)(context, builder, llargs[0]).shape, 2)[0]
            rows = [builder.mul(ir.Constant(i64, k), ir.Constant(i64, W)) for k in range(N)]
            h0 = [vload(builder, hh, rows[k]) for k in range(N)]

            def step(t, hs):
                tw = builder.mul(t, ir.Constant(i64, W))
                dt = vload(builder, dtt, tw)
                du = vload(builder, dut, tw)
                acc = [None] * 4
                new = []
                for k in range(N):
                    x = builder.fmul(dt, vload(builder, al, rows[k]))
                    e = vexp2_ir(builder, x, low_only) if base2 else vexp_ir(builder, x)
                    kk = builder.add(tw, ir.Constant(i64, k))
                    bk = vbroadcast(builder, bx, kk) if var_b else vload(builder, bx, rows[k])
                    ck = vbroadcast(builder, cx, kk) if var_c else vload(builder, cx, rows[k])
                    h = vfma(builder, e, hs[k], builder.fmul(du, bk))
                    new.append(h)
                    j = k % 4
                    if acc[j] is None:  # base2 (the forward): y starts from OB[t] = D·u, written by the setup
                        acc[j] = (vfma(builder, h, ck, vload(builder, ob, tw)) if base2 and j == 0
                                  else builder.fmul(h, ck))
                    else:
                        acc[j] = vfma(builder, h, ck, acc[j])
                y = builder.fadd(builder.fadd(acc[0], acc[1]), builder.fadd(acc[2], acc[3]))
                vstore(builder, y, ob, tw)
                return new

            hs = counted_loop(builder, nl, h0, step, "scan16")
            for k in range(N):
                vstore(builder, hs[k], hh, rows[k])
            return context.get_dummy_value()

        return types.none(*args), codegen

    return scan16


_scan_vv = _make_scan(True, True)
_scan_vc = _make_scan(True, False)
_scan_cv = _make_scan(False, True)
_scan_cc = _make_scan(False, False)
# the forward's: exp in base 2 (A premultiplied by log2 e per block); the generic path's low-only clamp variants
# (y = dt·A2 <= 0) save one operation per update; on AVX-512 both are the same code
_SCAN2 = {(vb, vc, lo): _make_scan(vb, vc, True, lo) for vb in (True, False) for vc in (True, False)
          for lo in ((False,) if AVX512 else (False, True))}
_s2_vv, _s2_vc, _s2_cv, _s2_cc = (_SCAN2[(vb, vc, False)] for vb, vc in ((1, 1), (1, 0), (0, 1), (0, 0)))
_s2_vv_lo, _s2_vc_lo, _s2_cv_lo, _s2_cc_lo = (_SCAN2[(vb, vc, not AVX512)] for vb, vc in ((1, 1), (1, 0), (0, 1),
                                                                                           (0, 0)))


LOG2E = np.float32(1.4426950408889634)
_CACHE = not FORCE_GENERIC  # generic code forced by SEPCLI_VEC_GENERIC must not enter the host path's cache
TT = 1024  # time steps per tile: a tile's scratch rows (~400 KB) stay in L2 whatever the sequence length


@njit(cache=_CACHE, error_model="numpy")
def _fwd_blocks(i0, i1, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus,
                out, last, tt, HCK, lowr):
    """scan_cpu._fwd_blocks with the vector time loop (float32, n = 16), in time tiles of TT steps: the states
    carry over from tile to tile, so the scratch is O(TT·W) and stays in cache (with whole-sequence rows, a block
    of 16 channels x 4000 steps needed ~2 MB of scratch, the size of a core's L2).

    tt: the tile length (TT, or the backward's segment length when it keeps checkpoints); HCK: empty, or
    [blocks, tiles, N, W] receiving each block's state at the start of each tile (scan_cpu_ckpt). `last`
    (b, d, n) holds the start state on entry (zeros, or an initial state) and the last state on return.

    lowr = (WM, L, loffs, lsk, dpg_l): delta in low rank when WM [d, r] has r > 0 columns (else `delta` is read):
    delta[b, c, t] = sum_k WM[c, k] · dt_low[b, c // dpg_l, k, t], with dt_low's row k of (b, g) at
    L[loffs[b, g] + k·lsk:] (L: flat float32 storage, rows contiguous in time); see scan_vec_rows.setup_fold_chunk."""
    nl = u.shape[2]
    WM, L, loffs, lsk, dpg_l = lowr
    r = WM.shape[1]
    WL = np.empty((max(r, 1), W), np.float32)  # the lanes' dt_proj weights, one vector per k
    SL = np.zeros(max(r, 1) * W, np.float32)  # staging of dt_low's last, partial 16-step chunk
    keep = HCK.shape[0] > 0
    tp = min(tt, (nl + W - 1) // W * W)
    fdt = np.float32  # u, delta, z, out: float32 or bfloat16 bits (int16); the rest float32
    AL = np.empty((N, W), fdt)
    H = np.empty((N, W), fdt)
    BL = np.empty((N, W), fdt)
    CL = np.empty((N, W), fdt)
    P = np.empty((2, W), fdt)  # the lanes' delta bias and D
    ch = np.empty(W, np.int64)
    DTT = np.zeros((tp, W), fdt)
    DUT = np.zeros((tp, W), fdt)
    OB = np.zeros((tp, W), fdt)
    SD = np.zeros((1, W, W), delta.dtype)  # staging of a row's last, partial 16-step chunk
    SU = np.zeros((1, W, W), u.dtype)
    SZ = np.zeros((1, W, W), z.dtype)
    SO = np.zeros((1, W, W), out.dtype)
    ident = np.arange(W)
    for i in range(i0, i1):
        b = blk[i, 0]
        d0 = blk[i, 1]
        w = blk[i, 2]
        lane_params(d0, w, N, A, Bv, Cv, var_b, var_c, ch, AL, BL, CL)
        low = softplus  # y = dt·A2 <= 0 in every step: only the exp's low clamp is needed (generic path)
        for k in range(N):
            for j in range(W):
                low = low and AL[k, j] <= 0.0
                AL[k, j] *= LOG2E
        for j in range(W):
            P[0, j] = bias[ch[j]]
            P[1, j] = D[ch[j]]
        for k in range(N):  # the start state: `last` holds it on entry (zeros, or the caller's initial state)
            for j in range(W):
                H[k, j] = last[b, ch[j], k]
        for k in range(r):
            for j in range(W):
                WL[k, j] = WM[ch[j], k]
        loff = loffs[b, d0 // dpg_l] if r else 0
        BR = Bv[b, d0 // dpg_b] if var_b else BL
        CR = Cv[b, d0 // dpg_c] if var_c else CL
        for t0 in range(0, nl, tt):
            if keep:
                HCK[i, t0 // tt] = H
            m = min(tt, nl - t0)
            if r:
                tile_setup_fold(b, t0, m, ch, u, L, loff, lsk, r, softplus, P, WL, DTT, DUT, OB, SL, SU, ident)
            else:
                tile_setup(b, t0, m, ch, u, delta, softplus, P, DTT, DUT, OB, SD, SU, ident)
            BX = BR[t0:t0 + m] if var_b else BL
            CX = CR[t0:t0 + m] if var_c else CL
            if var_b and var_c:
                if low:
                    _s2_vv_lo(DTT[:m], DUT[:m], AL, BX, CX, H, OB)
                else:
                    _s2_vv(DTT[:m], DUT[:m], AL, BX, CX, H, OB)
            elif var_b:
                if low:
                    _s2_vc_lo(DTT[:m], DUT[:m], AL, BX, CX, H, OB)
                else:
                    _s2_vc(DTT[:m], DUT[:m], AL, BX, CX, H, OB)
            elif var_c:
                if low:
                    _s2_cv_lo(DTT[:m], DUT[:m], AL, BX, CX, H, OB)
                else:
                    _s2_cv(DTT[:m], DUT[:m], AL, BX, CX, H, OB)
            elif low:
                _s2_cc_lo(DTT[:m], DUT[:m], AL, BX, CX, H, OB)
            else:
                _s2_cc(DTT[:m], DUT[:m], AL, BX, CX, H, OB)
            tile_output(b, d0, w, t0, m, OB, z, has_z, out, SZ, SO)
        for j in range(w):
            for k in range(N):
                last[b, d0 + j, k] = H[k, j]


@njit(cache=_CACHE)
def no_lowr():
    """_fwd_blocks' `lowr` argument without a low-rank delta (the kernel reads delta's rows)."""
    return (np.zeros((0, 0), np.float32), np.zeros(1, np.float32), np.zeros((1, 1), np.int64), np.int64(0),
            np.int64(1))


@njit(cache=_CACHE)
def fwd_par(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last):
    ck_par(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last,
           TT, np.zeros((0, 1, N, W), np.float32), no_lowr())


@njit(cache=_CACHE)
def fwd_ser(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last):
    ck_ser(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last,
           TT, np.zeros((0, 1, N, W), np.float32), no_lowr())


@njit(cache=_CACHE)
def fold_par(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last,
             lowr):
    """fwd_par with delta in low rank (lowr: see _fwd_blocks; `delta` is not read)."""
    ck_par(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last,
           TT, np.zeros((0, 1, N, W), np.float32), lowr)


@njit(cache=_CACHE)
def fold_ser(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last,
             lowr):
    ck_ser(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last,
           TT, np.zeros((0, 1, N, W), np.float32), lowr)


@njit(cache=_CACHE, parallel=True)
def ck_par(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last,
           tt, HCK, lowr):
    """fwd_par in tiles of tt steps, keeping each tile's start state in HCK (see _fwd_blocks)."""
    nb = blk.shape[0]
    for c in prange(nchunks):
        _fwd_blocks(c * nb // nchunks, (c + 1) * nb // nchunks, blk, u, delta, A, Bv, Cv, D, z, bias,
                    var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last, tt, HCK, lowr)


@njit(cache=_CACHE)
def ck_ser(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last,
           tt, HCK, lowr):
    _fwd_blocks(0, blk.shape[0], blk, u, delta, A, Bv, Cv, D, z, bias,
                var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last, tt, HCK, lowr)
