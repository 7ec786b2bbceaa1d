"""The scan backward's segment loops for d_state n = 16, float32: whole-segment time loops in LLVM IR with the
16 states (forward) or the 16 state gradients (reverse) carried in vector registers.

Why: scan_cpu_bwd's generic path calls one tile intrinsic per time step (`_fwd_tile`, `_rev_tile`), so its loop
carried values (the states h, the state gradients g_h) and its constant-B/C operands go through memory every step,
and the constant/variable B and C choice is made per state at run time (a zero vector added to a broadcast). Here,
as in the vectorised forward (scan_cpu_vec's time loop), one intrinsic runs the segment's whole time loop: the 16
states or gradients are phi nodes (registers), variable B/C are broadcasts and constant B/C vectors of the lanes,
chosen when the IR is generated (one variant per constant/variable B and C). Measured on the issue's shape
(b=1, d=512, l=4000, n=16; Sapphire Rapids class, 1 thread), see scan_cpu_bwd's docstring for the figures.

Same arithmetic as the tiles (same formulas, same exp: vector_ir.vexp_ir), in a different summation order of
the per-state sums; generic IR (`<16 x float>`): LLVM compiles it for the host's vector width.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .scan_cpu_bwd_ir import _lane_sum_vec
from .vector_ir import array_data, counted_loop, vbroadcast, vexp_ir, vfma, vload, vstore

N = 16  # states (this module's loops are specialised for n = 16)
LW = 16  # lanes (channels) per vector
_I64 = ir.IntType(64)


def _c(x: int) -> ir.Constant:
    return ir.Constant(_I64, x)


def _sig(arrays, m):
    ok = all(isinstance(a, types.Array) and a.dtype == types.float32 and a.layout == "C" for a in arrays)
    return types.void(*arrays, m) if ok and isinstance(m, types.Integer) else None


def _bc(builder, ptr, var, tw, k):
    """B[t, k] or C[t, k] for the 16 lanes: a broadcast of row t's value k (variable) or the lanes' constants."""
    return vbroadcast(builder, ptr, builder.add(tw, _c(k))) if var else vload(builder, ptr, _c(k * LW))


def _make_fwd(var_b: bool, var_c: bool):
    """fwd16(DTT, DUT, GOT, AL, BX, CX, HS, E, Y, DCX, m): steps t = 0..m-1 of a segment from the state HS[0]:
    E[t] = exp(dt·A), HS[t + 1] = h[t] (HS [m + 1, 16, 16], E [m, 16, 16]), Y[t] = y[t]; go·h summed over the
    lanes into DCX[t] (variable C: the segment's rows of dC, [m, 16]) or per lane into DCX[k] (constant C).
    DTT, DUT, GOT [>= m, 16] time-major dt, dt·u, go; AL [16, 16] A state-major; BX, CX [m, 16] variable rows
    or [16, 16] the lanes' constants."""

    @intrinsic
    def fwd16(typingctx, DTT, DUT, GOT, AL, BX, CX, HS, E, Y, DCX, m):
        arrays = (DTT, DUT, GOT, AL, BX, CX, HS, E, Y, DCX)

        def codegen(context, builder, sig, args):
            dtt, dut, got, al, bx, cx, hs, ee, yy, dcx = (array_data(context, builder, t, v)
                                                          for t, v in zip(sig.args[:10], args[:10]))
            mm = context.cast(builder, args[10], sig.args[10], types.int64)
            rows = [_c(k * LW) for k in range(N)]

            def body(t, h):
                tw = builder.mul(t, _c(LW))
                ts = builder.mul(t, _c(N * LW))
                dt, du, go = vload(builder, dtt, tw), vload(builder, dut, tw), vload(builder, got, tw)
                acc = [None] * 4
                new, tcs = [], []
                for k in range(N):
                    e = vexp_ir(builder, builder.fmul(dt, vload(builder, al, rows[k])))
                    hk = vfma(builder, e, h[k], builder.fmul(du, _bc(builder, bx, var_b, tw, k)))
                    ok = builder.add(ts, rows[k])
                    vstore(builder, e, ee, ok)
                    vstore(builder, hk, hs, builder.add(ok, _c(N * LW)))
                    ck = _bc(builder, cx, var_c, tw, k)
                    j = k % 4
                    acc[j] = builder.fmul(hk, ck) if acc[j] is None else vfma(builder, hk, ck, acc[j])
                    tcs.append(builder.fmul(go, hk))
                    new.append(hk)
                vstore(builder, builder.fadd(builder.fadd(acc[0], acc[1]), builder.fadd(acc[2], acc[3])), yy, tw)
                if var_c:
                    vstore(builder, builder.fadd(vload(builder, dcx, tw), _lane_sum_vec(builder, tcs)), dcx, tw)
                else:
                    for k in range(N):
                        vstore(builder, builder.fadd(vload(builder, dcx, rows[k]), tcs[k]), dcx, rows[k])
                return new

            counted_loop(builder, mm, [vload(builder, hs, rows[k]) for k in range(N)], body, "seg16")
            return context.get_dummy_value()

        return _sig(arrays, m), codegen

    return fwd16


def _make_rev(var_b: bool, var_c: bool):
    """rev16(GOT, DTT, DUT, AL, BX, CX, HS, E, GH, DUA, DDT, DAL, DBX, m): steps t = m-1..0 of a segment (HS, E
    as fwd16 left them), the state gradient GH [16, 16] carried in and out: DUA[t] = Σ_k g_h·B, DDT[t] =
    Σ_k g_h·h[t-1]·e·A, DAL[k] += g_h·h[t-1]·e·dt; g_h·dt·u summed over the lanes into DBX[t] (variable B: the
    segment's rows of dB) or per lane into DBX[k] (constant B)."""

    @intrinsic
    def rev16(typingctx, GOT, DTT, DUT, AL, BX, CX, HS, E, GH, DUA, DDT, DAL, DBX, m):
        arrays = (GOT, DTT, DUT, AL, BX, CX, HS, E, GH, DUA, DDT, DAL, DBX)

        def codegen(context, builder, sig, args):
            got, dtt, dut, al, bx, cx, hs, ee, gh, dua_p, ddt_p, dal, dbx = (
                array_data(context, builder, t, v) for t, v in zip(sig.args[:13], args[:13]))
            mm = context.cast(builder, args[13], sig.args[13], types.int64)
            rows = [_c(k * LW) for k in range(N)]

            def body(i, g):
                t = builder.sub(builder.sub(mm, _c(1)), i)
                tw = builder.mul(t, _c(LW))
                ts = builder.mul(t, _c(N * LW))
                go, dt, du = vload(builder, got, tw), vload(builder, dtt, tw), vload(builder, dut, tw)
                dua, ddt = [None, None], [None, None]
                new, tbs = [], []
                for k in range(N):
                    ghk = vfma(builder, go, _bc(builder, cx, var_c, tw, k), g[k])
                    ok = builder.add(ts, rows[k])
                    e = vload(builder, ee, ok)
                    da = builder.fmul(builder.fmul(ghk, vload(builder, hs, ok)), e)
                    bk = _bc(builder, bx, var_b, tw, k)
                    ak = vload(builder, al, rows[k])
                    j = k % 2
                    dua[j] = builder.fmul(ghk, bk) if dua[j] is None else vfma(builder, ghk, bk, dua[j])
                    ddt[j] = builder.fmul(da, ak) if ddt[j] is None else vfma(builder, da, ak, ddt[j])
                    vstore(builder, vfma(builder, da, dt, vload(builder, dal, rows[k])), dal, rows[k])
                    tbs.append(builder.fmul(ghk, du))
                    new.append(builder.fmul(ghk, e))
                vstore(builder, builder.fadd(dua[0], dua[1]), dua_p, tw)
                vstore(builder, builder.fadd(ddt[0], ddt[1]), ddt_p, tw)
                if var_b:
                    vstore(builder, builder.fadd(vload(builder, dbx, tw), _lane_sum_vec(builder, tbs)), dbx, tw)
                else:
                    for k in range(N):
                        vstore(builder, builder.fadd(vload(builder, dbx, rows[k]), tbs[k]), dbx, rows[k])
                return new

            out = counted_loop(builder, mm, [vload(builder, gh, rows[k]) for k in range(N)], body, "seg16")
            for k in range(N):
                vstore(builder, out[k], gh, rows[k])
            return context.get_dummy_value()

        return _sig(arrays, m), codegen

    return rev16


# one variant per (variable B, variable C)
fwd16_vv, fwd16_vc, fwd16_cv, fwd16_cc = (_make_fwd(vb, vc) for vb, vc in ((1, 1), (1, 0), (0, 1), (0, 0)))
rev16_vv, rev16_vc, rev16_cv, rev16_cc = (_make_rev(vb, vc) for vb, vc in ((1, 1), (1, 0), (0, 1), (0, 0)))


def _make_prefetch(write: bool):
    @intrinsic
    def prefetch(typingctx, X, off):
        """Prefetch into L2 (LLVM's llvm.prefetch, locality 2) the cache line of X.flat[off], for writing when
        `write`. A hint: it never faults and changes no value."""
        if not (isinstance(X, types.Array) and X.layout == "C" and isinstance(off, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            i32 = ir.IntType(32)
            o = context.cast(builder, args[1], sig.args[1], types.int64)
            p = builder.gep(array_data(context, builder, sig.args[0], args[0]), [o])
            fnty = ir.FunctionType(ir.VoidType(), [p.type, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            builder.call(fn, [p, ir.Constant(i32, int(write)), ir.Constant(i32, 2), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.void(X, off), codegen

    return prefetch


prefetch_r = _make_prefetch(False)
prefetch_w = _make_prefetch(True)


@njit(cache=True, error_model="numpy")
def fwd16(var_b, var_c, DTT, DUT, GOT, AL, BX, CX, HS, E, Y, DCX, m):
    """fwd16 of the (variable B, variable C) variant."""
    if var_b and var_c:
        fwd16_vv(DTT, DUT, GOT, AL, BX, CX, HS, E, Y, DCX, m)
    elif var_b:
        fwd16_vc(DTT, DUT, GOT, AL, BX, CX, HS, E, Y, DCX, m)
    elif var_c:
        fwd16_cv(DTT, DUT, GOT, AL, BX, CX, HS, E, Y, DCX, m)
    else:
        fwd16_cc(DTT, DUT, GOT, AL, BX, CX, HS, E, Y, DCX, m)


@njit(cache=True, error_model="numpy")
def rev16(var_b, var_c, GOT, DTT, DUT, AL, BX, CX, HS, E, GH, DUA, DDT, DAL, DBX, m):
    """rev16 of the (variable B, variable C) variant."""
    if var_b and var_c:
        rev16_vv(GOT, DTT, DUT, AL, BX, CX, HS, E, GH, DUA, DDT, DAL, DBX, m)
    elif var_b:
        rev16_vc(GOT, DTT, DUT, AL, BX, CX, HS, E, GH, DUA, DDT, DAL, DBX, m)
    elif var_c:
        rev16_cv(GOT, DTT, DUT, AL, BX, CX, HS, E, GH, DUA, DDT, DAL, DBX, m)
    else:
        rev16_cc(GOT, DTT, DUT, AL, BX, CX, HS, E, GH, DUA, DDT, DAL, DBX, m)


@njit(cache=True, error_model="numpy")
def prefetch_rows(pf, part, nparts):
    """Prefetch the part-th of nparts shares (by channel) of the next segment's rows: u, delta, dout, z read and
    du, ddelta, dz written by the row passes. pf = (b, ch, t0, m, u, delta, z, dout, du, ddelta, dz, has_z); the
    arrays are C-contiguous (b, d, l)."""
    b, ch, t0, m, u, delta, z, dout, du, ddelta, dz, has_z = pf
    nl = u.shape[2]
    for j in range(part * LW // nparts, (part + 1) * LW // nparts):
        o = (b * u.shape[1] + ch[j]) * nl + t0
        for t in range(0, m, 16):
            prefetch_r(u, o + t)
            prefetch_r(delta, o + t)
            prefetch_r(dout, o + t)
            prefetch_w(du, o + t)
            prefetch_w(ddelta, o + t)
            if has_z:
                prefetch_r(z, o + t)
                prefetch_w(dz, o + t)
