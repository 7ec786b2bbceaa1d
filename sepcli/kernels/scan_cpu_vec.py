"""Explicitly vectorised forward of the CPU selective scan for d_state n = 16 (float32).

scan_cpu's forward updates a block of W = 16 channels (one per vector lane) state by state, but written as numba
loops its states H[k, :] and its output sums OB[t, :] live in memory: LLVM cannot keep arrays that may alias in
registers, so every step loads and stores each state, and y += h·C[k] becomes a load-FMA-store chain through
memory across the 16 states (store-forwarding latency on the critical path). Its loops are also vectorised at
LLVM's preferred width, 256 bits on Intel server cores, i.e. half an AVX-512 register.

Here the time loop of one block is LLVM IR written with llvmlite inside a numba `@intrinsic` (generic IR: `<16 x
float>` vectors, `llvm.fma`, bitcasts and integer shifts; LLVM lowers them to one zmm register per vector on
AVX-512 and to two ymm registers on AVX2, where part of the states spill to the stack: slower, same results):
- the 16 states of the block's 16 channels are 16 vector SSA values (phi nodes) carried across time steps, so
  they stay in registers; the output sum of a step accumulates in registers (4 partial sums, a short FMA tree)
  and is stored once per step;
- per step: one vector load of dt and of dt·u (time-major [l, 16] rows prepared by scan_cpu's block setup), and
  per state a broadcast of B[t, k] and C[t, k] (variable) or a vector of the lanes' constant B[k], C[k];
- exp(dt·A) is 13 vector operations instead of the fallback's 15: clamp to [-87.3, 88.3] (two compare/selects
  that keep NaNs), n = round(x·log2 e) by one FMA with a "magic number" (1.5·2^23 + 127, which also leaves the
  biased exponent n + 127 in the low mantissa bits), r = x - n·ln 2 by ONE FMA (ln 2 rounded to float32: its
  error |n|·1.4e-9 stays below 2e-7 relative), e^r by a degree-5 polynomial (5 FMAs, Taylor-based, |r| <= ln2/2),
  times 2^n from the shifted bits. Its relative error is ~3e-7 (about 2-3 ulp) on [-87, 88], tested.

One state update is then 16 vector operations (13 for the exp including dt·A, (dt·u)·B, the state FMA, the
output FMA), which all go to the FMA/ALU ports: the kernel is throughput-bound, no longer latency-bound.

Other n and float64 use scan_cpu's numba loops (the fallback). Compiled with numba (`cache=True`): the IR is
generated once per variable/constant B, C combination and cached on disk with the rest of the kernel.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .scan_cpu import _FASTMATH, W, _sigmoid, _softplus

N = 16  # the state size this kernel is specialised for (SPMamba's and Mamba's default d_state)

_F = ir.FloatType()
_I32 = ir.IntType(32)
_V = ir.VectorType(_F, W)
_VI = ir.VectorType(_I32, W)


def _splat(x: float) -> ir.Constant:
    return ir.Constant(_V, [float(np.float32(x))] * W)


# exp constants (float32 values)
_EXP_LO = -87.33654  # exp(_EXP_LO) ~ 1.2e-38, the normal range's bottom (2^-126)
_EXP_HI = 88.3
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_MAGIC = 12583039.0  # 1.5 * 2**23 + 127
# e^r ~ 1 + r + r^2/2 + ... + r^5/120 on |r| <= ln2/2 (truncation error (ln2/2)^6/720 ~ 2.4e-6 absolute at the
# ends would be too large: the higher coefficients are adjusted below by a least-squares fit on the interval,
# which brings the relative error under 1.5e-7; see _fit_exp_poly).


def _fit_exp_poly() -> tuple[float, ...]:
    """Degree-5 coefficients of e^r on [-ln2/2, ln2/2], relative least squares on Chebyshev nodes, with c0 = c1 = 1
    kept exact (so that e^r -> 1 + r for small r). Computed once at import in float64 (a small lstsq)."""
    h = _LN2 / 2
    r = h * np.cos(np.pi * (np.arange(400) + 0.5) / 400)
    target = (np.exp(r) - 1.0 - r) / np.exp(r)
    basis = np.stack([r ** k / np.exp(r) for k in range(2, 6)], axis=1)
    c = np.linalg.lstsq(basis, target, rcond=None)[0]
    return (1.0, 1.0) + tuple(float(np.float32(v)) for v in c)


_EXP_C = _fit_exp_poly()


def _fma(builder, a, b, c):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V, [_V, _V, _V]), f"llvm.fma.v{W}f32")
    return builder.call(fn, [a, b, c])


def vexp_ir(builder, x):
    """Emit exp(x) for a <16 x float> value x (see the module docstring); no fast-math flags."""
    x = builder.select(builder.fcmp_ordered("<", x, _splat(_EXP_LO)), _splat(_EXP_LO), x)
    x = builder.select(builder.fcmp_ordered(">", x, _splat(_EXP_HI)), _splat(_EXP_HI), x)
    kf = _fma(builder, x, _splat(_LOG2E), _splat(_MAGIC))  # round(x log2e) + 127 + 1.5 * 2^23
    fk = builder.fsub(kf, _splat(_MAGIC))  # n, exactly
    r = _fma(builder, fk, _splat(-_LN2), x)
    c = _EXP_C
    p = _fma(builder, _splat(c[5]), r, _splat(c[4]))
    for ci in (c[3], c[2], c[1], c[0]):
        p = _fma(builder, p, r, _splat(ci))
    scale = builder.bitcast(builder.shl(builder.bitcast(kf, _VI), ir.Constant(_VI, [23] * W)), _V)  # 2^n
    return builder.fmul(p, scale)


_SQRT2 = 1.41421356
# Cephes logf polynomial: log(1 + f) = f - f^2/2 + f^3 P(f) for 1 + f in [sqrt(1/2), sqrt(2)]
_LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
          -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)


def vsoftplus_ir(builder, x):
    """Emit softplus(x) = max(x, 0) + log1p(exp(-|x|)) for a <16 x float> x (torch's threshold 20 is implied:
    above it the log1p term is below half an ulp of x). log1p(v), v in (0, 1]: log(u) of u = 1 + v by the Cephes
    polynomial, plus the rounding error of u: log1p(v) = log(u) + c/u, c = v - (u - 1) exact, with 1/u ~ 2 - u
    (c is below half an ulp of 1, so this error is below 1e-7 relative; no division)."""
    zero = _splat(0.0)
    one = _splat(1.0)
    ax = builder.bitcast(builder.and_(builder.bitcast(x, _VI), ir.Constant(_VI, [0x7FFFFFFF] * W)), _V)
    v = vexp_ir(builder, builder.fsub(zero, ax))
    u = builder.fadd(one, v)
    c = builder.fsub(v, builder.fsub(u, one))
    big = builder.fcmp_ordered(">", u, _splat(_SQRT2))
    m = builder.select(big, builder.fmul(u, _splat(0.5)), u)
    f = builder.fsub(m, one)
    z = builder.fmul(f, f)
    p = _splat(_LOG_P[0])
    for ci in _LOG_P[1:]:
        p = _fma(builder, p, f, _splat(ci))
    y = _fma(builder, _splat(-0.5), z, builder.fmul(builder.fmul(f, z), p))
    r = _fma(builder, builder.select(big, one, zero), _splat(_LN2), builder.fadd(f, y))
    r = _fma(builder, c, builder.fsub(_splat(2.0), u), r)
    return builder.fadd(builder.select(builder.fcmp_ordered(">", x, zero), x, zero), r)


def transpose_ir(builder, rows):
    """16 <16 x float> rows -> the 16 columns: four stages of two-source shuffles, each swapping one bit of the
    row index with the same bit of the lane index."""
    rows = list(rows)
    for bit in range(4):
        s = 1 << bit
        lo = ir.Constant(_VI, [(i & ~s) + (W if i & s else 0) for i in range(W)])
        hi = ir.Constant(_VI, [(i | s) + (W if i & s else 0) for i in range(W)])
        for a in range(W):
            if a & s:
                continue
            ra, rb = rows[a], rows[a + s]
            rows[a] = builder.shuffle_vector(ra, rb, lo)
            rows[a + s] = builder.shuffle_vector(ra, rb, hi)
    return rows


def _data(context, builder, aryty, val):
    return context.make_array(aryty)(context, builder, val).data


def _vptr(builder, fptr, idx):
    """Pointer to the <16 x float> starting at element idx of a float* (opaque or typed pointers)."""
    p = cgutils.gep(builder, fptr, idx)
    return builder.bitcast(p, _V.as_pointer())


def _vload(builder, fptr, idx):
    return builder.load(_vptr(builder, fptr, idx), typ=_V, align=4)


def _vstore(builder, v, fptr, idx):
    builder.store(v, _vptr(builder, fptr, idx), align=4)


def _broadcast(builder, fptr, idx):
    s = builder.load(cgutils.gep(builder, fptr, idx), typ=_F, align=4)
    v = builder.insert_element(ir.Constant(_V, ir.Undefined), s, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_V, ir.Undefined), ir.Constant(_VI, [0] * W))


_F32_2D = types.Array(types.float32, 2, "C")


def _make_scan(var_b: bool, var_c: bool):
    """Intrinsic scan16(DTT, DUT, AL, BX, CX, H, OB): run the block's time loop. DTT/DUT/OB [l, 16] (dt, dt·u, y),
    AL [16, 16] (A, state-major), H [16, 16] (states in/out), BX/CX [l, 16] variable rows B[t, k] (broadcast to the
    lanes) or [16, 16] constant per-lane values, all float32 C-contiguous."""

    @intrinsic
    def scan16(typingctx, DTT, DUT, AL, BX, CX, H, OB):
        args = (DTT, DUT, AL, BX, CX, H, OB)
        if any(a != _F32_2D for a in args):
            return None

        def codegen(context, builder, sig, llargs):
            i64 = ir.IntType(64)
            dtt, dut, al, bx, cx, hh, ob = (_data(context, builder, t, v) for t, v in zip(sig.args, llargs))
            nl = cgutils.unpack_tuple(builder, context.make_array(DTT)(context, builder, llargs[0]).shape, 2)[0]
            rows = [builder.mul(ir.Constant(i64, k), ir.Constant(i64, W)) for k in range(N)]
            h0 = [_vload(builder, hh, rows[k]) for k in range(N)]
            pre = builder.block
            loop = builder.append_basic_block("scan16.loop")
            body = builder.append_basic_block("scan16.body")
            done = builder.append_basic_block("scan16.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            t = builder.phi(i64)
            hs = [builder.phi(_V) for _ in range(N)]
            t.add_incoming(ir.Constant(i64, 0), pre)
            for k in range(N):
                hs[k].add_incoming(h0[k], pre)
            builder.cbranch(builder.icmp_signed("<", t, nl), body, done)
            builder.position_at_end(body)
            tw = builder.mul(t, ir.Constant(i64, W))
            dt = _vload(builder, dtt, tw)
            du = _vload(builder, dut, tw)
            acc = [None] * 4
            new = []
            for k in range(N):
                e = vexp_ir(builder, builder.fmul(dt, _vload(builder, al, rows[k])))
                kk = builder.add(tw, ir.Constant(i64, k))
                bk = _broadcast(builder, bx, kk) if var_b else _vload(builder, bx, rows[k])
                ck = _broadcast(builder, cx, kk) if var_c else _vload(builder, cx, rows[k])
                h = _fma(builder, e, hs[k], builder.fmul(du, bk))
                new.append(h)
                j = k % 4
                acc[j] = builder.fmul(h, ck) if acc[j] is None else _fma(builder, h, ck, acc[j])
            y = builder.fadd(builder.fadd(acc[0], acc[1]), builder.fadd(acc[2], acc[3]))
            _vstore(builder, y, ob, tw)
            tail = builder.block
            t.add_incoming(builder.add(t, ir.Constant(i64, 1)), tail)
            builder.branch(loop)
            for k in range(N):
                hs[k].add_incoming(new[k], tail)
            builder.position_at_end(done)
            for k in range(N):
                _vstore(builder, hs[k], hh, rows[k])
            return context.get_dummy_value()

        return types.none(*args), codegen

    return scan16


_scan_vv = _make_scan(True, True)
_scan_vc = _make_scan(True, False)
_scan_cv = _make_scan(False, True)
_scan_cc = _make_scan(False, False)


def _offset(context, builder, aryty, val, r, rty, c, cty):
    """Element offset of [r, c] in a C-contiguous 2-D array: (data pointer, r * shape[1] + c) as i64."""
    ary = context.make_array(aryty)(context, builder, val)
    ld = cgutils.unpack_tuple(builder, ary.shape, 2)[1]
    r = context.cast(builder, r, rty, types.int64)
    c = context.cast(builder, c, cty, types.int64)
    return ary.data, builder.add(builder.mul(r, ld), c)


@intrinsic
def _softplus_row16(typingctx, M, r, c):
    """M[r, c:c+16] = softplus(M[r, c:c+16]) (M float32, 2-D, C-contiguous)."""
    if M != _F32_2D or not isinstance(r, types.Integer) or not isinstance(c, types.Integer):
        return None

    def codegen(context, builder, sig, llargs):
        data, off = _offset(context, builder, M, llargs[0], llargs[1], sig.args[1], llargs[2], sig.args[2])
        _vstore(builder, vsoftplus_ir(builder, _vload(builder, data, off)), data, off)
        return context.get_dummy_value()

    return types.none(M, r, c), codegen


@intrinsic
def _transpose16(typingctx, S, sr, sc, Dm, dr, dc):
    """Dm[dr + i, dc + j] = S[sr + j, sc + i] for i, j < 16 (float32, 2-D, C-contiguous)."""
    if S != _F32_2D or Dm != _F32_2D or not all(isinstance(a, types.Integer) for a in (sr, sc, dr, dc)):
        return None

    def codegen(context, builder, sig, llargs):
        i64 = ir.IntType(64)
        sd, so = _offset(context, builder, S, llargs[0], llargs[1], sig.args[1], llargs[2], sig.args[2])
        dd, do = _offset(context, builder, Dm, llargs[3], llargs[4], sig.args[4], llargs[5], sig.args[5])
        sld = cgutils.unpack_tuple(builder, context.make_array(S)(context, builder, llargs[0]).shape, 2)[1]
        dld = cgutils.unpack_tuple(builder, context.make_array(Dm)(context, builder, llargs[3]).shape, 2)[1]
        rows = [_vload(builder, sd, builder.add(so, builder.mul(sld, ir.Constant(i64, j)))) for j in range(W)]
        for i, col in enumerate(transpose_ir(builder, rows)):
            _vstore(builder, col, dd, builder.add(do, builder.mul(dld, ir.Constant(i64, i))))
        return context.get_dummy_value()

    return types.none(S, sr, sc, Dm, dr, dc), codegen


@intrinsic
def _vexp16(typingctx, X, Y, i):
    """Y[i:i+16] = exp(X[i:i+16]) with the kernel's vector exp (test hook)."""
    arr = types.Array(types.float32, 1, "C")
    if X != arr or Y != arr or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, llargs):
        x, y = (_data(context, builder, arr, v) for v in llargs[:2])
        idx = context.cast(builder, llargs[2], sig.args[2], types.int64)
        _vstore(builder, vexp_ir(builder, _vload(builder, x, idx)), y, idx)
        return context.get_dummy_value()

    return types.none(X, Y, i), codegen


@njit(cache=True)
def vexp_check(x):
    """Test hook: the kernel's vector exp over a 1-D float32 array (padded to whole vectors)."""
    m = (x.shape[0] + W - 1) // W * W
    xp = np.zeros(m, np.float32)
    xp[:x.shape[0]] = x
    out = np.empty(m, np.float32)
    for i in range(0, m, W):
        _vexp16(xp, out, i)
    return out[:x.shape[0]]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _block_setup(b, d0, w, u, delta, A, Bv, Cv, bias, var_b, var_c, softplus, ch, AL, BL, CL, DTR, DTT, DUT):
    """scan_cpu._block_setup with vector softplus and 16x16 tile transposes; DTR [2W, lp], DTT/DUT [lp, W] with lp
    = l rounded up to 16 (the padding holds dt = dt·u = 0)."""
    nl = u.shape[2]
    lp = DTR.shape[1]
    for j in range(W):
        ch[j] = d0 + min(j, w - 1)  # spare lanes repeat the last channel; their results are dropped
    for k in range(N):
        for j in range(W):
            c = ch[j]
            AL[k, j] = A[c, k]
            BL[k, j] = Bv[0, c, 0, k] if not var_b else 0.0
            CL[k, j] = Cv[0, c, 0, k] if not var_c else 0.0
    for j in range(W):
        c = ch[j]
        bd = bias[c]
        for t in range(nl):
            DTR[j, t] = delta[b, c, t] + bd
        if softplus:
            for t in range(0, nl - W + 1, W):
                _softplus_row16(DTR, j, t)
            for t in range(nl - nl % W, nl):
                DTR[j, t] = _softplus(DTR[j, t])
        for t in range(nl, lp):
            DTR[j, t] = 0.0
        for t in range(nl):
            DTR[W + j, t] = DTR[j, t] * u[b, c, t]
        for t in range(nl, lp):
            DTR[W + j, t] = 0.0
    for t in range(0, lp, W):
        _transpose16(DTR, 0, t, DTT, t, 0)
        _transpose16(DTR, W, t, DUT, t, 0)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _fwd_blocks(i0, i1, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus,
                out, last):
    """scan_cpu._fwd_blocks with the vector time loop (float32, n = 16)."""
    nl = u.shape[2]
    lp = (nl + W - 1) // W * W
    fdt = u.dtype
    AL = np.empty((N, W), fdt)
    H = np.empty((N, W), fdt)
    BL = np.empty((N, W), fdt)
    CL = np.empty((N, W), fdt)
    ch = np.empty(W, np.int64)
    DTR = np.empty((2 * W, lp), fdt)
    DTT = np.empty((lp, W), fdt)
    DUT = np.empty((lp, W), fdt)
    OB = np.zeros((lp, W), fdt)
    OBR = DTR[:W]  # y, channel-major (DTR is free once DTT and DUT are laid out)
    for i in range(i0, i1):
        b = blk[i, 0]
        d0 = blk[i, 1]
        w = blk[i, 2]
        _block_setup(b, d0, w, u, delta, A, Bv, Cv, bias, var_b, var_c, softplus, ch, AL, BL, CL, DTR, DTT, DUT)
        H[:] = 0.0
        BX = Bv[b, d0 // dpg_b] if var_b else BL
        CX = Cv[b, d0 // dpg_c] if var_c else CL
        if var_b and var_c:
            _scan_vv(DTT[:nl], DUT[:nl], AL, BX, CX, H, OB)
        elif var_b:
            _scan_vc(DTT[:nl], DUT[:nl], AL, BX, CX, H, OB)
        elif var_c:
            _scan_cv(DTT[:nl], DUT[:nl], AL, BX, CX, H, OB)
        else:
            _scan_cc(DTT[:nl], DUT[:nl], AL, BX, CX, H, OB)
        for t in range(0, lp, W):
            _transpose16(OB, t, 0, OBR, 0, t)
        for j in range(w):  # D term and gate, vectorised over time
            c = d0 + j
            Dd = D[c]
            if has_z:
                for t in range(nl):
                    zt = z[b, c, t]
                    out[b, c, t] = (OBR[j, t] + Dd * u[b, c, t]) * (zt * _sigmoid(zt))
            else:
                for t in range(nl):
                    out[b, c, t] = OBR[j, t] + Dd * u[b, c, t]
            for k in range(N):
                last[b, c, k] = H[k, j]


@njit(cache=True, parallel=True)
def fwd_par(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last):
    nb = blk.shape[0]
    for c in prange(nchunks):
        _fwd_blocks(c * nb // nchunks, (c + 1) * nb // nchunks, blk, u, delta, A, Bv, Cv, D, z, bias,
                    var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last)


@njit(cache=True)
def fwd_ser(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last):
    _fwd_blocks(0, blk.shape[0], blk, u, delta, A, Bv, Cv, D, z, bias,
                var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last)
