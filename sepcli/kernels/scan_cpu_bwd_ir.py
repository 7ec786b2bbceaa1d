"""The per-step LLVM IR and the row helpers of the CPU scan's backward (scan_cpu_bwd holds its driver and loops).

Why a module of its own: these are the code generators (numba `@intrinsic`s emitting explicit `<16 x elem>` IR)
and the dtype-dispatching `@overload`s the backward's loops call, one per time step and tile of 16 states or per
channel row; scan_cpu_bwd's docstring explains the design they serve.
- `_fwd_tile`, `_rev_tile`: a forward / reverse step of 16 states for LW = 16 channels in vector lanes, the sums
  over states in registers, the sums over a group's channels by one shuffle butterfly (`_lane_sum_vec`);
- the row helpers (`_rows_softplus_sigmoid`, `_rows_gate_grad`, `_to_time_major`, `_to_rows`): float32 rows go
  16 values at a time through vector_ir's intrinsics, float64 (gradcheck) keeps plain loops.
Generic IR only: LLVM compiles it for the host's vector width (nothing requires AVX-512).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir as llvm_ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .scan_cpu import _exp, _log1p_unit32, _sigmoid, _softplus
from .vector_ir import sigmoid_gate_grad_row16, softplus_sigmoid_row16, transpose16, vexp_ir

LW = 16  # channels per block, one per vector lane
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)


def _lane_sum_vec(builder, vs):
    """The 16 lane sums of 16 <16 x elem> vectors, as one vector: a butterfly of shuffles, 15 additions. Pairs are
    combined as soon as they exist (few vectors live at once: no spills with AVX2's 16 registers)."""
    i32 = llvm_ir.IntType(32)
    stack = []  # (level, vector): at level L a vector holds 2**L rows' partial sums, 16 >> L lanes per row
    for v in vs:
        lev = 0
        while stack and stack[-1][0] == lev:
            a = stack.pop()[1]
            h = 8 >> lev
            lo = [blk * 2 * h + i for blk in range(8 // h) for i in range(h)]
            ma = llvm_ir.Constant(llvm_ir.VectorType(i32, 16), lo + [16 + x for x in lo])
            mb = llvm_ir.Constant(llvm_ir.VectorType(i32, 16), [x + h for x in lo] + [16 + x + h for x in lo])
            v = builder.fadd(builder.shuffle_vector(a, v, ma), builder.shuffle_vector(a, v, mb))
            lev += 1
        stack.append((lev, v))
    return stack[0][1]


class _Vec:
    """Emits <16 x elem> IR: loads/stores at flat offsets of C-contiguous numba arrays, arithmetic, our exp."""

    def __init__(self, context, builder, sig, args):
        self.c, self.b = context, builder
        self.ety = context.get_value_type(sig.args[0].dtype)
        self.vty = llvm_ir.VectorType(self.ety, 16)
        self.f32 = sig.args[0].dtype == types.float32
        self.sig, self.args = sig, args

    def ptr(self, i, off):
        arr = self.c.make_array(self.sig.args[i])(self.c, self.b, self.args[i])
        return self.b.bitcast(self.b.gep(arr.data, [off], source_etype=self.ety), self.vty.as_pointer())

    def load(self, i, off):
        return self.b.load(self.ptr(i, off), align=1, typ=self.vty)

    def store(self, v, i, off):
        self.b.store(v, self.ptr(i, off), align=1)

    def scalar(self, i, off):
        arr = self.c.make_array(self.sig.args[i])(self.c, self.b, self.args[i])
        return self.b.load(self.b.gep(arr.data, [off], source_etype=self.ety), typ=self.ety)

    def off(self, base, k, stride=None):
        """base + k·stride (stride an IR integer; LW when None)."""
        st = llvm_ir.Constant(base.type, LW) if stride is None else stride
        return self.b.add(base, self.b.mul(st, llvm_ir.Constant(base.type, k)))

    def splat(self, x):
        if not isinstance(x, llvm_ir.Value):
            x = llvm_ir.Constant(self.ety, x)
        v = self.b.insert_element(llvm_ir.Constant(self.vty, None), x, llvm_ir.Constant(llvm_ir.IntType(32), 0))
        return self.b.shuffle_vector(v, v, llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(32), 16), None))

    def mul(self, x, y):
        return self.b.fmul(x, y)

    def add(self, x, y):
        return self.b.fadd(x, y)

    def intr(self, name, *xs):
        """Call the LLVM vector intrinsic llvm.<name>.v16f32 / .v16f64 (elementwise)."""
        fnty = llvm_ir.FunctionType(self.vty, [self.vty] * len(xs))
        sfx = "v16f32" if self.f32 else "v16f64"
        return self.b.call(cgutils.get_or_insert_function(self.b.module, fnty, f"llvm.{name}.{sfx}"), list(xs))

    def fma(self, x, y, z):
        return self.intr("fma", x, y, z)

    def exp(self, x):
        """vector_ir.vexp_ir (the vectorised forward's exp) for float32; llvm.exp (libm) for float64."""
        return vexp_ir(self.b, x) if self.f32 else self.intr("exp", x)


def _step_sig(sig_args, n_arrays):
    arrs, ints = sig_args[:n_arrays], sig_args[n_arrays:]
    ok = all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == arrs[0].dtype for a in arrs)
    ok = ok and arrs[0].dtype in (types.float32, types.float64) and all(
        isinstance(x, (types.Integer, types.Float, types.Boolean)) for x in ints)
    return types.void(*sig_args) if ok else None


@intrinsic
def _fwd_tile(typingctx, E, HS, DTT, AL, DUT, BL, CL, GOT, Y, Bs, Cs, dC, DCc, ok0, ot, oe0, on, ob, oc, sb, sc,
              odc, var_c):
    """_fwd_step for the 16 states k0..k0+15 of a tile at once (ok0 = k0·LW, oe0 = (tt·n + k0)·LW): Y[t] += y's
    share in registers; B[k], C[k] scalars at Bs.flat[ob + k·sb], Cs.flat[oc + k·sc] (stride 0: a zero); dC: the
    16 lane sums of go·h added to dC.flat[odc:odc+16] (var_c), else go·h added per lane to DCc[k]."""

    def codegen(context, builder, sig, args):
        v = _Vec(context, builder, sig, args)
        ok0, ot, oe0, on, ob, oc, sb, sc, odc, var_c = args[13:]
        dtt, dtu, go = v.load(2, ot), v.load(4, ot), v.load(7, ot)
        ys = [v.load(8, ot), v.splat(0.0)]
        tcs = []
        for k in range(16):
            okk, oek = v.off(ok0, k), v.off(oe0, k)
            bv = v.add(v.splat(v.scalar(9, v.off(ob, k, sb))), v.load(5, okk))
            cv = v.add(v.splat(v.scalar(10, v.off(oc, k, sc))), v.load(6, okk))
            e = v.exp(v.mul(dtt, v.load(3, okk)))
            h = v.fma(e, v.load(1, oek), v.mul(dtu, bv))
            v.store(e, 0, oek)
            v.store(h, 1, builder.add(oek, on))
            ys[k % 2] = v.fma(h, cv, ys[k % 2])
            tcs.append(v.mul(go, h))
        v.store(v.add(ys[0], ys[1]), 8, ot)
        with builder.if_else(var_c) as (then, other):
            with then:
                v.store(v.add(v.load(11, odc), _lane_sum_vec(builder, tcs)), 11, odc)
            with other:
                for k in range(16):
                    v.store(v.add(v.load(12, v.off(ok0, k)), tcs[k]), 12, v.off(ok0, k))
        return context.get_dummy_value()

    return _step_sig((E, HS, DTT, AL, DUT, BL, CL, GOT, Y, Bs, Cs, dC, DCc, ok0, ot, oe0, on, ob, oc, sb, sc,
                      odc, var_c), 13), codegen


@intrinsic
def _rev_tile(typingctx, GH, GOT, E, HS, AL, DTT, DUT, BL, CL, DUA, DDT, DAL, Bs, Cs, dB, DBc, ok0, ot, oe0, ob,
              oc, sb, sc, odb, var_b):
    """_rev_step for the 16 states of a tile at once: DUA[t], DDT[t] accumulated in registers, dB's 16 lane sums
    added to dB.flat[odb:odb+16] (var_b), else g_h·dt·u added per lane to DBc[k]."""

    def codegen(context, builder, sig, args):
        v = _Vec(context, builder, sig, args)
        ok0, ot, oe0, ob, oc, sb, sc, odb, var_b = args[16:]
        go, dtt, dtu = v.load(1, ot), v.load(5, ot), v.load(6, ot)
        dua = [v.load(9, ot), v.splat(0.0)]
        ddt = [v.load(10, ot), v.splat(0.0)]
        tbs = []
        for k in range(16):
            okk, oek = v.off(ok0, k), v.off(oe0, k)
            bv = v.add(v.splat(v.scalar(12, v.off(ob, k, sb))), v.load(7, okk))
            cv = v.add(v.splat(v.scalar(13, v.off(oc, k, sc))), v.load(8, okk))
            e = v.load(2, oek)
            ghk = v.fma(go, cv, v.load(0, okk))
            da = v.mul(v.mul(ghk, v.load(3, oek)), e)
            dua[k % 2] = v.fma(ghk, bv, dua[k % 2])
            ddt[k % 2] = v.fma(da, v.load(4, okk), ddt[k % 2])
            v.store(v.fma(da, dtt, v.load(11, okk)), 11, okk)
            v.store(v.mul(ghk, e), 0, okk)
            tbs.append(v.mul(ghk, dtu))
        v.store(v.add(dua[0], dua[1]), 9, ot)
        v.store(v.add(ddt[0], ddt[1]), 10, ot)
        with builder.if_else(var_b) as (then, other):
            with then:
                v.store(v.add(v.load(14, odb), _lane_sum_vec(builder, tbs)), 14, odb)
            with other:
                for k in range(16):
                    v.store(v.add(v.load(15, v.off(ok0, k)), tbs[k]), 15, v.off(ok0, k))
        return context.get_dummy_value()

    return _step_sig((GH, GOT, E, HS, AL, DTT, DUT, BL, CL, DUA, DDT, DAL, Bs, Cs, dB, DBc, ok0, ot, oe0, ob, oc,
                      sb, sc, odb, var_b), 16), codegen


def _softplus_and_sigmoid(x):  # pragma: no cover - replaced by the numba overload below
    """(softplus(x), sigmoid(x)) = (softplus, its derivative), as scan_cpu's _softplus and _sigmoid."""
    raise NotImplementedError


@overload(_softplus_and_sigmoid, jit_options={"fastmath": False, "error_model": "numpy"})
def _ol_softplus_and_sigmoid(x):
    if x == types.float32:

        def impl32(x):  # one exp for both (float32: scan_cpu's branch-free log1p)
            e = _exp(-abs(x))
            r = _F1 / (_F1 + e)
            return max(x, _F0) + _log1p_unit32(e), (r if x >= _F0 else e * r)

        return impl32
    if x == types.float64:

        def impl64(x):
            return _softplus(x), _sigmoid(x)

        return impl64
    return None


# Row helpers: float32 rows go 16 values at a time through vector_ir's intrinsics (the vectorised forward's softplus,
# 16x16 transposes); float64 (gradcheck) keeps plain loops. Rows are padded to whole vectors (sp columns in
# _bwd_blocks' scratch): the float32 helpers run up to m rounded up to 16.


def _rows_softplus_sigmoid(M, r, r2, m):  # pragma: no cover - replaced by the numba overload below
    """M[r, :m] = softplus(x), M[r2, :m] = sigmoid(x) (its derivative) of x = M[r, :m]."""
    raise NotImplementedError


@overload(_rows_softplus_sigmoid, jit_options={"fastmath": False, "error_model": "numpy"})
def _ol_rows_softplus_sigmoid(M, r, r2, m):
    if M.dtype == types.float32:

        def impl32(M, r, r2, m):
            for t in range(0, m, LW):
                softplus_sigmoid_row16(M, r, r2, t)

        return impl32

    def impl64(M, r, r2, m):
        for t in range(m):
            M[r, t], M[r2, t] = _softplus_and_sigmoid(M[r, t])

    return impl64


def _rows_gate_grad(M, rz, rg, m):  # pragma: no cover - replaced by the numba overload below
    """s = sigmoid(M[rz, :m]) of z = M[rz, :m]: M[rz, :m] = s, M[rg, :m] *= z·s."""
    raise NotImplementedError


@overload(_rows_gate_grad, jit_options={"fastmath": False, "error_model": "numpy"})
def _ol_rows_gate_grad(M, rz, rg, m):
    if M.dtype == types.float32:

        def impl32(M, rz, rg, m):
            for t in range(0, m, LW):
                sigmoid_gate_grad_row16(M, rz, rg, t)

        return impl32

    def impl64(M, rz, rg, m):
        for t in range(m):
            zt = M[rz, t]
            sz = _sigmoid(zt)
            M[rz, t] = sz
            M[rg, t] = M[rg, t] * (zt * sz)

    return impl64


def _to_time_major(S, r0, Dm, m):  # pragma: no cover - replaced by the numba overload below
    """Dm[t, j] = S[r0 + j, t] for j < LW, t < m (whole 16x16 tiles: S has >= m columns rounded up to 16)."""
    raise NotImplementedError


@overload(_to_time_major)
def _ol_to_time_major(S, r0, Dm, m):
    if S.dtype == types.float32:

        def impl32(S, r0, Dm, m):
            for t in range(0, m, LW):
                transpose16(S, r0, t, Dm, t, 0)

        return impl32

    def impl64(S, r0, Dm, m):
        for t in range(m):
            for j in range(LW):
                Dm[t, j] = S[r0 + j, t]

    return impl64


def _to_rows(Sm, Dm, r0, m):  # pragma: no cover - replaced by the numba overload below
    """Dm[r0 + j, t] = Sm[t, j] for j < LW, t < m (whole tiles, as _to_time_major)."""
    raise NotImplementedError


@overload(_to_rows)
def _ol_to_rows(Sm, Dm, r0, m):
    if Sm.dtype == types.float32:

        def impl32(Sm, Dm, r0, m):
            for t in range(0, m, LW):
                transpose16(Sm, t, 0, Dm, r0, t)

        return impl32

    def impl64(Sm, Dm, r0, m):
        for t in range(m):
            for j in range(LW):
                Dm[r0 + j, t] = Sm[t, j]

    return impl64
