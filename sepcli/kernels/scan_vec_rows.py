"""The n = 16 vector forward's passes around its time loop (scan_cpu_vec), 16 channels x 16 time steps at a time,
in registers: read the 16 channels' rows of delta and u, transpose them to time-major vectors (one channel per
lane), and write the loop's inputs dt = softplus(delta + bias), dt·u and its output's start D·u; after the loop,
transpose y back to rows and write out = y·silu(z) straight into the output rows.

Why: the earlier passes went over scratch rows several times (delta + bias, softplus, dt·u, a copy of u for the
D term, two 16x16 transposes, then y's transpose, the D term and the gate through a staging row): with the time
loop at ~1.9 ns per (b, d, t) element (one hot block, Sapphire Rapids class, 1 core), they took ~2.3 ns more.
Here delta and u are read once, transposed in registers, and the per-lane bias and D are vectors (one add, one
multiply per 16 elements); the D term rides in the loop's output accumulator (OB[t] = D·u before the loop). The
softplus and silu keep vector_ir.vexp_ir (~4e-7): the base-2 exp's rounded argument y = x·log2 e would cost
|x|·1e-7 relative error (4e-6 in softplus at x = -80), to save ~8 of ~210 vector operations per 16 elements.

u, delta, z and out may each be float32 or bfloat16 (int16 arrays of its bits, numpy having no bfloat16): a
bfloat16 row is widened exactly in registers (bits << 16) and out is rounded to bfloat16 to nearest even in
registers, so bfloat16 callers need no cast pass over (b, d, l) tensors (measured: 21-35% of the forward's time
saved against .float() first on the issue's and SPMamba's shapes, benchmarks/bench_scan.py).

Each chunk prefetches the rows' cache line 2 chunks ahead (delta, u; z, and out for writing): the hardware
prefetchers restart at every 4 KB page of the 16-48 rows in flight; measured +15-20% on the issue's shape and
SPMamba's inter-frame shape (1 and 2 threads), less on the intra-frame one (rows of 122 steps).

Delta in low rank (the scan's delta_proj = (W, dt_low), tile_setup_fold / setup_fold_chunk): the setup computes
the 16 time-major vectors delta + bias itself, x[i] = bias + sum_{k<r} W[lanes, k] · dt_low[k, t + i], per k one
vector of the lanes' weights and 16 broadcast values of dt_low's row k: r FMAs per step and 16 channels (r = 8 for
SPMamba: 128 per 16 x 16 chunk, in place of delta's 16 row loads and 64-shuffle transpose), and the caller writes
no (b, d, l) delta tensor for this pass to read back (SPMamba's dt_proj GEMM, K = r, is memory-bound).

A row's last chunk that the row ends inside is shifted back to end at the row's end (recomputing some steps,
same values) or, when the tile is shorter than 16 steps, goes through zero-padded staging arrays: the chunk
functions never read or write past an array's end.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .vector_ir import (F32_2D, V16, W, _splat, array_data, counted_loop, transpose_ir, vbroadcast, vexp_ir, vfma,
                        vload, vsoftplus_ir, vstore)

F32_3D = types.Array(types.float32, 3, "C")
BF16_3D = types.Array(types.int16, 3, "C")  # bfloat16 rows, as their bit patterns (numpy has no bfloat16)
# rows of any layout ('C', or views with (b, d) strides of their own: channel-major, 'A' or 'F'), contiguous
# along l (stride 1 there: the caller checks)
ROWS = tuple(types.Array(dt, 3, lay) for dt in (types.float32, types.int16) for lay in ("C", "A", "F"))
I64_1D = types.Array(types.int64, 1, "C")
F32_1D = types.Array(types.float32, 1, "C")
_I64 = ir.IntType(64)
_I16V = ir.VectorType(ir.IntType(16), W)
_I32V = ir.VectorType(ir.IntType(32), W)


PREFETCH = 32  # elements ahead (2 chunks, 128 B of a float32 row) that the chunk functions prefetch


def _prefetch(builder, data, off, write=False):
    """Prefetch the cache line of element off + PREFETCH of a row (llvm.prefetch: never faults, past the end too)."""
    i32 = ir.IntType(32)
    ptr = builder.bitcast(cgutils.gep(builder, data, builder.add(off, ir.Constant(_I64, PREFETCH))),
                          ir.IntType(8).as_pointer())
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
                                        "llvm.prefetch.p0")
    builder.call(fn, [ptr, ir.Constant(i32, int(write)), ir.Constant(i32, 3), ir.Constant(i32, 1)])


def _load_row(builder, aryty, data, off):
    """16 consecutive values of a row as <16 x float>: float32, or bfloat16 widened (its bits << 16, exact)."""
    if aryty.dtype == types.float32:
        return vload(builder, data, off)
    p = builder.bitcast(cgutils.gep(builder, data, off), _I16V.as_pointer())
    bits = builder.zext(builder.load(p, typ=_I16V, align=2), _I32V)
    return builder.bitcast(builder.shl(bits, ir.Constant(_I32V, [16] * W)), V16)


def _store_row(builder, aryty, v, data, off):
    """Store <16 x float> into a row: float32, or rounded to bfloat16 to nearest even (NaN stays a quiet NaN), the
    rounding of torch's float32 -> bfloat16 conversion."""
    if aryty.dtype == types.float32:
        vstore(builder, v, data, off)
        return
    bits = builder.bitcast(v, _I32V)
    odd = builder.and_(builder.lshr(bits, ir.Constant(_I32V, [16] * W)), ir.Constant(_I32V, [1] * W))
    rounded = builder.lshr(builder.add(bits, builder.add(odd, ir.Constant(_I32V, [0x7FFF] * W))),
                           ir.Constant(_I32V, [16] * W))
    nan = builder.fcmp_unordered("uno", v, v)
    out = builder.trunc(builder.select(nan, ir.Constant(_I32V, [0x7FC0] * W), rounded), _I16V)
    builder.store(out, builder.bitcast(cgutils.gep(builder, data, off), _I16V.as_pointer()), align=2)


def _i64(context, builder, val, ty):
    return context.cast(builder, val, ty, types.int64)


def _row_offsets(context, builder, aryty, val, b, chans, t):
    """Data pointer and the element offsets of [b, c, t] for each channel c in chans (i64 values), from the array's
    (b, d) strides (any layout whose rows are contiguous along l: stride 1 there, which callers check)."""
    ary = context.make_array(aryty)(context, builder, val)
    sb, sd, _ = cgutils.unpack_tuple(builder, ary.strides, 3)
    shift = ir.Constant(_I64, {4: 2, 2: 1}[context.get_abi_sizeof(context.get_data_type(aryty.dtype))])
    sb = builder.ashr(sb, shift)  # bytes -> elements (strides are whole elements)
    sd = builder.ashr(sd, shift)
    base = builder.add(builder.mul(b, sb), t)
    return ary.data, [builder.add(base, builder.mul(c, sd)) for c in chans]


def _make_setup(softplus: bool):
    @intrinsic
    def setup_chunk(typingctx, delta, u, b, ch, t, P, DTT, DUT, OB, tt):
        """Steps t..t+15 of the channels ch[0..15] of row b: DTT[tt + i] = dt (softplus(delta + P[0]) or
        delta + P[0]), DUT[tt + i] = dt·u, OB[tt + i] = P[1]·u (P[0] bias, P[1] D per lane)."""
        if (delta not in ROWS or u not in ROWS or ch != I64_1D or any(a != F32_2D for a in (P, DTT, DUT, OB))
                or not all(isinstance(a, types.Integer) for a in (b, t, tt))):
            return None

        def codegen(context, builder, sig, llargs):
            a = dict(zip(("delta", "u", "b", "ch", "t", "P", "DTT", "DUT", "OB", "tt"), llargs))
            ty = dict(zip(("delta", "u", "b", "ch", "t", "P", "DTT", "DUT", "OB", "tt"), sig.args))
            bi = _i64(context, builder, a["b"], ty["b"])
            ti = _i64(context, builder, a["t"], ty["t"])
            chd = array_data(context, builder, I64_1D, a["ch"])
            chans = [builder.load(cgutils.gep(builder, chd, j)) for j in range(W)]
            dd, doff = _row_offsets(context, builder, ty["delta"], a["delta"], bi, chans, ti)
            ud, uoff = _row_offsets(context, builder, ty["u"], a["u"], bi, chans, ti)
            for o in doff:
                _prefetch(builder, dd, o)
            for o in uoff:
                _prefetch(builder, ud, o)
            dcol = transpose_ir(builder, [_load_row(builder, ty["delta"], dd, o) for o in doff])
            ucol = transpose_ir(builder, [_load_row(builder, ty["u"], ud, o) for o in uoff])
            pd = array_data(context, builder, F32_2D, a["P"])
            bias = vload(builder, pd, ir.Constant(_I64, 0))
            _store_setup(context, builder, a, ty, [builder.fadd(x, bias) for x in dcol], ucol, softplus)
            return context.get_dummy_value()

        return types.none(delta, u, b, ch, t, P, DTT, DUT, OB, tt), codegen

    return setup_chunk


def _store_setup(context, builder, a, ty, xs, ucol, softplus):
    """The setup's writes for the 16 steps from row tt: DTT = dt (softplus(x) or x, x = delta + bias per step,
    time-major vectors xs), DUT = dt·u, OB = D·u (ucol: u, time-major; D is P[1])."""
    dlan = vload(builder, array_data(context, builder, F32_2D, a["P"]), ir.Constant(_I64, W))
    row0 = builder.mul(_i64(context, builder, a["tt"], ty["tt"]), ir.Constant(_I64, W))
    outs = [array_data(context, builder, F32_2D, a[k]) for k in ("DTT", "DUT", "OB")]
    for i in range(W):
        dt = vsoftplus_ir(builder, xs[i]) if softplus else xs[i]
        r = builder.add(row0, ir.Constant(_I64, i * W))
        vstore(builder, dt, outs[0], r)
        vstore(builder, builder.fmul(dt, ucol[i]), outs[1], r)
        vstore(builder, builder.fmul(dlan, ucol[i]), outs[2], r)


_FOLD_ARGS = ("L", "loff", "lsk", "r", "u", "b", "ch", "t", "P", "WL", "DTT", "DUT", "OB", "tt")


def _make_setup_fold(softplus: bool):
    @intrinsic
    def setup_fold_chunk(typingctx, L, loff, lsk, r, u, b, ch, t, P, WL, DTT, DUT, OB, tt):
        """setup_chunk with delta in low rank: delta + bias of steps t..t+15 computed here as time-major vectors,
        x[i] = P[0] + sum_{k<r} WL[k] · L[loff + k·lsk + t + i] (WL [r, 16]: the lanes' rows of dt_proj's weight,
        a vector per k; L the flat float32 storage of the rows dt_low[k, :] of the block's (b, g), broadcast one
        value at a time): r FMAs per step, no delta rows and no transpose of them."""
        ints = (loff, lsk, r, b, t, tt)
        if (L != F32_1D or u not in ROWS or ch != I64_1D or any(a != F32_2D for a in (P, WL, DTT, DUT, OB))
                or not all(isinstance(a, types.Integer) for a in ints)):
            return None

        def codegen(context, builder, sig, llargs):
            a = dict(zip(_FOLD_ARGS, llargs))
            ty = dict(zip(_FOLD_ARGS, sig.args))
            bi = _i64(context, builder, a["b"], ty["b"])
            ti = _i64(context, builder, a["t"], ty["t"])
            chd = array_data(context, builder, I64_1D, a["ch"])
            chans = [builder.load(cgutils.gep(builder, chd, j)) for j in range(W)]
            ud, uoff = _row_offsets(context, builder, ty["u"], a["u"], bi, chans, ti)
            for o in uoff:
                _prefetch(builder, ud, o)
            ucol = transpose_ir(builder, [_load_row(builder, ty["u"], ud, o) for o in uoff])
            ld = array_data(context, builder, F32_1D, a["L"])
            wl = array_data(context, builder, F32_2D, a["WL"])
            base = builder.add(_i64(context, builder, a["loff"], ty["loff"]), ti)
            lsk_ = _i64(context, builder, a["lsk"], ty["lsk"])
            bias = vload(builder, array_data(context, builder, F32_2D, a["P"]), ir.Constant(_I64, 0))

            def term(k, xs):  # + W[:, k] · dt_low[k, t + i] for the 16 steps
                kb = builder.add(base, builder.mul(k, lsk_))
                _prefetch(builder, ld, kb)
                wk = vload(builder, wl, builder.mul(k, ir.Constant(_I64, W)))
                return [vfma(builder, wk, vbroadcast(builder, ld, builder.add(kb, ir.Constant(_I64, i))), xs[i])
                        for i in range(W)]

            xs = counted_loop(builder, _i64(context, builder, a["r"], ty["r"]), [bias] * W, term, "lowrank")
            _store_setup(context, builder, a, ty, xs, ucol, softplus)
            return context.get_dummy_value()

        return types.none(*(L, loff, lsk, r, u, b, ch, t, P, WL, DTT, DUT, OB, tt)), codegen

    return setup_fold_chunk


setup_sp = _make_setup(True)
setup_lin = _make_setup(False)
fold_sp = _make_setup_fold(True)
fold_lin = _make_setup_fold(False)


def _make_output(has_z: bool):
    @intrinsic
    def output_chunk(typingctx, OB, tt, z, out, b, d0, w, t):
        """out[b, d0 + j, t:t+16] = y_j (·silu(z[b, d0 + j, t:t+16])) for j < w, y_j = column j of OB[tt:tt+16]."""
        if (OB != F32_2D or z not in ROWS or out not in ROWS
                or not all(isinstance(a, types.Integer) for a in (tt, b, d0, w, t))):
            return None

        def codegen(context, builder, sig, llargs):
            ob, tt_, z_, out_, b_, d0_, w_, t_ = llargs
            obd = array_data(context, builder, F32_2D, ob)
            row0 = builder.mul(_i64(context, builder, tt_, sig.args[1]), ir.Constant(_I64, W))
            ys = transpose_ir(builder, [vload(builder, obd, builder.add(row0, ir.Constant(_I64, i * W)))
                                        for i in range(W)])
            bi = _i64(context, builder, b_, sig.args[4])
            d0i = _i64(context, builder, d0_, sig.args[5])
            wi = _i64(context, builder, w_, sig.args[6])
            ti = _i64(context, builder, t_, sig.args[7])
            chans = [builder.add(d0i, ir.Constant(_I64, j)) for j in range(W)]
            od, ooff = _row_offsets(context, builder, sig.args[3], out_, bi, chans, ti)
            zd, zoff = _row_offsets(context, builder, sig.args[2], z_, bi, chans, ti)
            for j in range(W):
                with cgutils.if_likely(builder, builder.icmp_signed("<", ir.Constant(_I64, j), wi)):
                    y = ys[j]
                    _prefetch(builder, od, ooff[j], write=True)
                    if has_z:
                        _prefetch(builder, zd, zoff[j])
                        zv = _load_row(builder, sig.args[2], zd, zoff[j])
                        e = vexp_ir(builder, builder.fsub(_splat(0.0), zv))
                        y = builder.fmul(y, builder.fdiv(zv, builder.fadd(_splat(1.0), e)))
                    _store_row(builder, sig.args[3], y, od, ooff[j])
            return context.get_dummy_value()

        return types.none(OB, tt, z, out, b, d0, w, t), codegen

    return output_chunk


output_gate = _make_output(True)
output_plain = _make_output(False)


@njit(cache=True, error_model="numpy")
def tile_setup(b, t0, m, ch, u, delta, softplus, P, DTT, DUT, OB, SD, SU, IDENT):
    """Steps t0..t0+m-1 of the block's lanes (channels ch) into DTT, DUT, OB (see setup_chunk). A last chunk that
    the rows end inside is shifted back to end at the row's end when the tile holds 16 steps before it (it
    recomputes some rows, same values), else it goes through the zero-padded staging arrays SD, SU [1, 16, 16]."""
    nl = u.shape[2]
    for t in range(t0, t0 + m, W):
        src_d, src_u, bb, cc, tc = delta, u, b, ch, t
        if t + W > nl and nl - W >= t0:  # the last chunk, shifted back to end at nl: rows before t again, equal
            t = nl - W
            tc = t
        elif t + W > nl:
            n = nl - t
            SD[:] = 0
            SU[:] = 0
            for j in range(W):
                for i in range(n):
                    SD[0, j, i] = delta[b, ch[j], t + i]
                    SU[0, j, i] = u[b, ch[j], t + i]
            src_d, src_u, bb, cc, tc = SD, SU, 0, IDENT, 0
        if softplus:
            setup_sp(src_d, src_u, bb, cc, tc, P, DTT, DUT, OB, t - t0)
        else:
            setup_lin(src_d, src_u, bb, cc, tc, P, DTT, DUT, OB, t - t0)


@njit(cache=True, error_model="numpy")
def tile_setup_fold(b, t0, m, ch, u, L, loff, lsk, r, softplus, P, WL, DTT, DUT, OB, SL, SU, IDENT):
    """tile_setup with delta in low rank (setup_fold_chunk): dt_low's rows k < r of the block at L[loff + k·lsk:]
    (flat float32 storage, contiguous in time), WL [r, 16] the lanes' dt_proj weights; a last chunk as in
    tile_setup (shifted back, or through the zero-padded staging arrays SL [r·16] and SU [1, 16, 16])."""
    nl = u.shape[2]
    for t in range(t0, t0 + m, W):
        src_l, lo, ls, src_u, bb, cc, tc = L, loff, lsk, u, b, ch, t
        if t + W > nl and nl - W >= t0:  # the last chunk, shifted back to end at nl: rows before t again, equal
            t = nl - W
            tc = t
        elif t + W > nl:
            n = nl - t
            SL[:] = 0
            SU[:] = 0
            for k in range(r):
                for i in range(n):
                    SL[k * W + i] = L[loff + k * lsk + t + i]
            for j in range(W):
                for i in range(n):
                    SU[0, j, i] = u[b, ch[j], t + i]
            src_l, lo, ls, src_u, bb, cc, tc = SL, 0, W, SU, 0, IDENT, 0
        if softplus:
            fold_sp(src_l, lo, ls, r, src_u, bb, cc, tc, P, WL, DTT, DUT, OB, t - t0)
        else:
            fold_lin(src_l, lo, ls, r, src_u, bb, cc, tc, P, WL, DTT, DUT, OB, t - t0)


@njit(cache=True, error_model="numpy")
def tile_output(b, d0, w, t0, m, OB, z, has_z, out, SZ, SO):
    """y of steps t0..t0+m-1 (OB, time-major) into out's rows, gated by silu(z) if has_z; a last chunk that the
    rows end inside as in tile_setup (shifted back, or through the staging arrays SZ, SO [1, 16, 16])."""
    nl = out.shape[2]
    for t in range(t0, t0 + m, W):
        if t + W > nl and nl - W >= t0:  # the last chunk, shifted back to end at nl (rewrites equal values)
            t = nl - W
        if t + W > nl:
            n = nl - t
            SZ[:] = 0
            if has_z:
                for j in range(w):
                    for i in range(n):
                        SZ[0, j, i] = z[b, d0 + j, t + i]
                output_gate(OB, t - t0, SZ, SO, 0, 0, w, 0)
            else:
                output_plain(OB, t - t0, SZ, SO, 0, 0, w, 0)
            for j in range(w):
                for i in range(n):
                    out[b, d0 + j, t + i] = SO[0, j, i]
        elif has_z:
            output_gate(OB, t - t0, z, out, b, d0, w, t)
        else:
            output_plain(OB, t - t0, z, out, b, d0, w, t)

