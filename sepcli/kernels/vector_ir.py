"""LLVM IR for 16-lane float32 vectors, emitted inside numba `@intrinsic`s: exp, softplus, 16x16 transposes, and
the small intrinsics of the vectorised scan's block setup and gate (scan_cpu_vec). Generic IR only (`<16 x float>`,
`llvm.fma`, shuffles, bitcasts, integer shifts): LLVM lowers a vector to one zmm register with AVX-512 and to two
ymm registers with AVX2; nothing requires AVX-512.

exp (13 vector operations; scan_cpu's vectorisable `_exp` takes 15): clamp to [-87.3, 88.3] by two compare/selects
(NaN passes through), n + 127 = round(x·log2 e) + 127 by one FMA with a "magic number" 1.5·2^23 + 127 (it leaves
n + 127 in the low mantissa bits), r = x - n·ln2 by ONE FMA (ln2 rounded to float32: its error |n|·1.4e-9 stays
below 2e-7 relative), e^r by a degree-5 polynomial (5 FMAs; coefficients fitted in float64 at import, c0 = c1 = 1),
times 2^n from the shifted bits. Max relative error ~4e-7 (about 3 ulp) on [-87, 88], tested; underflow gives
~1.2e-38 and overflow ~2.2e38, as scan_cpu's exp. Compiled without fast-math flags (the magic-number rounding
must not be reassociated away).

exp2 (the forward's time loop): vector_exp2.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

W = 16  # lanes per vector (scan_cpu.W: one channel per lane)

_F = ir.FloatType()
_I32 = ir.IntType(32)
V16 = ir.VectorType(_F, W)
_VI = ir.VectorType(_I32, W)


def _splat(x: float) -> ir.Constant:
    return ir.Constant(V16, [float(np.float32(x))] * W)


# exp constants (float32 values)
_EXP_LO = -87.33654  # exp(_EXP_LO) ~ 1.2e-38, the normal range's bottom (2^-126)
_EXP_HI = 88.3
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_MAGIC = 12583039.0  # 1.5 * 2**23 + 127
# e^r on |r| <= ln2/2 by a degree-5 polynomial: Taylor's coefficients would leave ~2e-6 at the ends of the
# interval; a least-squares fit (relative, Chebyshev nodes) brings the polynomial's own error near 1e-7.


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


def vfma(builder, a, b, c):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(V16, [V16, V16, V16]), f"llvm.fma.v{W}f32")
    return builder.call(fn, [a, b, c])


def vexp_ir(builder, x):
    """Emit exp(x) for a <16 x float> value x (see the module docstring); no fast-math flags."""
    x = builder.select(builder.fcmp_ordered("<", x, _splat(_EXP_LO)), _splat(_EXP_LO), x)
    x = builder.select(builder.fcmp_ordered(">", x, _splat(_EXP_HI)), _splat(_EXP_HI), x)
    kf = vfma(builder, x, _splat(_LOG2E), _splat(_MAGIC))  # round(x log2e) + 127 + 1.5 * 2^23
    fk = builder.fsub(kf, _splat(_MAGIC))  # n, exactly
    r = vfma(builder, fk, _splat(-_LN2), x)
    c = _EXP_C
    p = vfma(builder, _splat(c[5]), r, _splat(c[4]))
    for ci in (c[3], c[2], c[1], c[0]):
        p = vfma(builder, p, r, _splat(ci))
    scale = builder.bitcast(builder.shl(builder.bitcast(kf, _VI), ir.Constant(_VI, [23] * W)), V16)  # 2^n
    return builder.fmul(p, scale)


_SQRT2 = 1.41421356
# Cephes logf polynomial: log(1 + f) = f - f^2/2 + f^3 P(f) for 1 + f in [sqrt(1/2), sqrt(2)]
_LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
          -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)


def vsoftplus_ir(builder, x, with_sigmoid=False):
    """Emit softplus(x) = max(x, 0) + log1p(exp(-|x|)) for a <16 x float> x (torch's threshold 20 is implied:
    above it the log1p term is below half an ulp of x). log1p(v), v in (0, 1]: log(u) of u = 1 + v by the Cephes
    polynomial, plus the rounding error of u: log1p(v) = log(u) + c/u, c = v - (u - 1) exact, with 1/u ~ 2 - u
    (c is below half an ulp of 1, so this error is below 1e-7 relative; no division). with_sigmoid: also
    sigmoid(x) (softplus' derivative) from the same exp, (1 if x > 0 else v) / u: returns (softplus, sigmoid)."""
    zero = _splat(0.0)
    one = _splat(1.0)
    ax = builder.bitcast(builder.and_(builder.bitcast(x, _VI), ir.Constant(_VI, [0x7FFFFFFF] * W)), V16)
    v = vexp_ir(builder, builder.fsub(zero, ax))
    u = builder.fadd(one, v)
    c = builder.fsub(v, builder.fsub(u, one))
    big = builder.fcmp_ordered(">", u, _splat(_SQRT2))
    m = builder.select(big, builder.fmul(u, _splat(0.5)), u)
    f = builder.fsub(m, one)
    z = builder.fmul(f, f)
    p = _splat(_LOG_P[0])
    for ci in _LOG_P[1:]:
        p = vfma(builder, p, f, _splat(ci))
    y = vfma(builder, _splat(-0.5), z, builder.fmul(builder.fmul(f, z), p))
    r = vfma(builder, builder.select(big, one, zero), _splat(_LN2), builder.fadd(f, y))
    r = vfma(builder, c, builder.fsub(_splat(2.0), u), r)
    pos = builder.fcmp_ordered(">", x, zero)
    sp = builder.fadd(builder.select(pos, x, zero), r)
    if not with_sigmoid:
        return sp
    return sp, builder.fdiv(builder.select(pos, one, v), u)


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


def counted_loop(builder, m, init, body, name="loop"):
    """Emit `for i in range(m)` (i64) carrying the SSA values `init` in phi nodes, so they stay in registers:
    body(i, values) -> new values. Returns the values after the loop."""
    i64 = ir.IntType(64)
    pre = builder.block
    head = builder.append_basic_block(f"{name}.head")
    blk = builder.append_basic_block(f"{name}.body")
    done = builder.append_basic_block(f"{name}.done")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(i64)
    i.add_incoming(ir.Constant(i64, 0), pre)
    phis = [builder.phi(v.type) for v in init]
    for p, v in zip(phis, init):
        p.add_incoming(v, pre)
    builder.cbranch(builder.icmp_signed("<", i, m), blk, done)
    builder.position_at_end(blk)
    new = body(i, phis)
    tail = builder.block
    i.add_incoming(builder.add(i, ir.Constant(i64, 1)), tail)
    for p, v in zip(phis, new):
        p.add_incoming(v, tail)
    builder.branch(head)
    builder.position_at_end(done)
    return phis


def array_data(context, builder, aryty, val):
    return context.make_array(aryty)(context, builder, val).data


def _vptr(builder, fptr, idx):
    """Pointer to the <16 x float> starting at element idx of a float* (opaque or typed pointers)."""
    p = cgutils.gep(builder, fptr, idx)
    return builder.bitcast(p, V16.as_pointer())


def vload(builder, fptr, idx):
    return builder.load(_vptr(builder, fptr, idx), typ=V16, align=4)


def vstore(builder, v, fptr, idx):
    builder.store(v, _vptr(builder, fptr, idx), align=4)


def vbroadcast(builder, fptr, idx):
    s = builder.load(cgutils.gep(builder, fptr, idx), typ=_F, align=4)
    v = builder.insert_element(ir.Constant(V16, ir.Undefined), s, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(V16, ir.Undefined), ir.Constant(_VI, [0] * W))


F32_2D = types.Array(types.float32, 2, "C")


def _offset(context, builder, aryty, val, r, rty, c, cty):
    """Element offset of [r, c] in a C-contiguous 2-D array: (data pointer, r * shape[1] + c) as i64."""
    ary = context.make_array(aryty)(context, builder, val)
    ld = cgutils.unpack_tuple(builder, ary.shape, 2)[1]
    r = context.cast(builder, r, rty, types.int64)
    c = context.cast(builder, c, cty, types.int64)
    return ary.data, builder.add(builder.mul(r, ld), c)


@intrinsic
def softplus_row16(typingctx, M, r, c):
    """M[r, c:c+16] = softplus(M[r, c:c+16]) (M float32, 2-D, C-contiguous)."""
    if M != F32_2D or not isinstance(r, types.Integer) or not isinstance(c, types.Integer):
        return None

    def codegen(context, builder, sig, llargs):
        data, off = _offset(context, builder, M, llargs[0], llargs[1], sig.args[1], llargs[2], sig.args[2])
        vstore(builder, vsoftplus_ir(builder, vload(builder, data, off)), data, off)
        return context.get_dummy_value()

    return types.none(M, r, c), codegen


@intrinsic
def softplus_sigmoid_row16(typingctx, M, r, r2, c):
    """M[r, c:c+16] = softplus(x), M[r2, c:c+16] = sigmoid(x) of x = M[r, c:c+16] (float32, 2-D, C-contiguous)."""
    if M != F32_2D or not all(isinstance(a, types.Integer) for a in (r, r2, c)):
        return None

    def codegen(context, builder, sig, llargs):
        data, off = _offset(context, builder, M, llargs[0], llargs[1], sig.args[1], llargs[3], sig.args[3])
        off2 = _offset(context, builder, M, llargs[0], llargs[2], sig.args[2], llargs[3], sig.args[3])[1]
        sp, sg = vsoftplus_ir(builder, vload(builder, data, off), with_sigmoid=True)
        vstore(builder, sp, data, off)
        vstore(builder, sg, data, off2)
        return context.get_dummy_value()

    return types.none(M, r, r2, c), codegen


@intrinsic
def sigmoid_gate_grad_row16(typingctx, M, rz, rg, c):
    """With z = M[rz, c:c+16], s = sigmoid(z): M[rz, c:c+16] = s and M[rg, c:c+16] *= z·s (the gradient through the
    silu(z) gate, from dout in row rg); float32, 2-D, C-contiguous."""
    if M != F32_2D or not all(isinstance(a, types.Integer) for a in (rz, rg, c)):
        return None

    def codegen(context, builder, sig, llargs):
        data, off = _offset(context, builder, M, llargs[0], llargs[1], sig.args[1], llargs[3], sig.args[3])
        offg = _offset(context, builder, M, llargs[0], llargs[2], sig.args[2], llargs[3], sig.args[3])[1]
        zv = vload(builder, data, off)
        sv = builder.fdiv(_splat(1.0), builder.fadd(_splat(1.0), vexp_ir(builder, builder.fsub(_splat(0.0), zv))))
        vstore(builder, sv, data, off)
        vstore(builder, builder.fmul(vload(builder, data, offg), builder.fmul(zv, sv)), data, offg)
        return context.get_dummy_value()

    return types.none(M, rz, rg, c), codegen


@intrinsic
def gate_row16(typingctx, M, c):
    """M[1, c:c+16] *= silu(M[0, c:c+16]) = z / (1 + exp(-z)) (M float32 [2, lp], C-contiguous)."""
    if M != F32_2D or not isinstance(c, types.Integer):
        return None

    def codegen(context, builder, sig, llargs):
        i64 = ir.IntType(64)
        data, off = _offset(context, builder, M, llargs[0], ir.Constant(i64, 0), types.int64, llargs[1], sig.args[1])
        off1 = _offset(context, builder, M, llargs[0], ir.Constant(i64, 1), types.int64, llargs[1], sig.args[1])[1]
        zv = vload(builder, data, off)
        e = vexp_ir(builder, builder.fsub(_splat(0.0), zv))
        silu = builder.fdiv(zv, builder.fadd(_splat(1.0), e))
        vstore(builder, builder.fmul(vload(builder, data, off1), silu), data, off1)
        return context.get_dummy_value()

    return types.none(M, c), codegen


@intrinsic
def transpose16(typingctx, S, sr, sc, Dm, dr, dc):
    """Dm[dr + i, dc + j] = S[sr + j, sc + i] for i, j < 16 (float32, 2-D, C-contiguous)."""
    if S != F32_2D or Dm != F32_2D or not all(isinstance(a, types.Integer) for a in (sr, sc, dr, dc)):
        return None

    def codegen(context, builder, sig, llargs):
        i64 = ir.IntType(64)
        sd, so = _offset(context, builder, S, llargs[0], llargs[1], sig.args[1], llargs[2], sig.args[2])
        dd, do = _offset(context, builder, Dm, llargs[3], llargs[4], sig.args[4], llargs[5], sig.args[5])
        sld = cgutils.unpack_tuple(builder, context.make_array(S)(context, builder, llargs[0]).shape, 2)[1]
        dld = cgutils.unpack_tuple(builder, context.make_array(Dm)(context, builder, llargs[3]).shape, 2)[1]
        rows = [vload(builder, sd, builder.add(so, builder.mul(sld, ir.Constant(i64, j)))) for j in range(W)]
        for i, col in enumerate(transpose_ir(builder, rows)):
            vstore(builder, col, dd, builder.add(do, builder.mul(dld, ir.Constant(i64, i))))
        return context.get_dummy_value()

    return types.none(S, sr, sc, Dm, dr, dc), codegen


@njit(cache=True)
def vsoftplus_check(x):
    """Test hook: the setup's vector softplus over a 1-D float32 array (padded to whole vectors)."""
    m = (x.shape[0] + W - 1) // W * W
    xp = np.zeros((1, m), np.float32)
    xp[0, :x.shape[0]] = x
    for i in range(0, m, W):
        softplus_row16(xp, 0, i)
    return xp[0, :x.shape[0]].copy()


_HOOKS: dict = {}


def _map_check(emit):
    """A jitted function mapping a 1-D float32 array through emit(builder, <16 x float>) 16 lanes at a time
    (padded to whole vectors); not cached: test hooks compile variants (e.g. vector_exp2's two paths) side by side."""

    @intrinsic
    def hook(typingctx, xs, ys, i):
        arr = types.Array(types.float32, 1, "C")
        if xs != arr or ys != arr or not isinstance(i, types.Integer):
            return None

        def codegen(context, builder, sig, llargs):
            x, y = (array_data(context, builder, arr, v) for v in llargs[:2])
            idx = context.cast(builder, llargs[2], sig.args[2], types.int64)
            vstore(builder, emit(builder, vload(builder, x, idx)), y, idx)
            return context.get_dummy_value()

        return types.none(xs, ys, i), codegen

    @njit
    def check(x):
        m = (x.shape[0] + W - 1) // W * W
        xp = np.zeros(m, np.float32)
        xp[:x.shape[0]] = x
        out = np.empty(m, np.float32)
        for i in range(0, m, W):
            hook(xp, out, i)
        return out[:x.shape[0]]

    return check


def mapped_check(key, emit, x):
    """Test hook: emit (a vector IR function) over a 1-D float32 array; one compiled function per key."""
    if key not in _HOOKS:
        _HOOKS[key] = _map_check(emit)
    return _HOOKS[key](np.ascontiguousarray(x, np.float32))


def vexp_check(x):
    """Test hook: the kernel's vector exp over a 1-D float32 array (padded to whole vectors)."""
    return mapped_check("exp", vexp_ir, x)
