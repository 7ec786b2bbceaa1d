"""Fused CPU selective scan (numba), with a fused reverse-time backward for autograd.

For float32 (and float16/bfloat16 inputs) with d_state n = 16, scan_forward runs the explicitly vectorised
forward of scan_cpu_vec (states in registers, base-2 exp, fused row passes: ~3.2-4x this module's forward loops
of git 4eb3200); other n and float64 run the forward described below. In the vectorised forward without
autograd (scan_forward; autograd's scan_cpu_ckpt still casts them to float32), bfloat16 u,
delta and z are not cast here: the kernel reads their bits (int16 arrays) and widens them in its row pass, and
writes a bfloat16 out directly (rounded to nearest even, as torch's conversion); B and C go through their
transposed copy in float32. Delta may come in low rank (delta_proj = (W, dt_low), delta None: Mamba's dt_proj
folded into the scan): the vectorised forward computes it in its row setup from dt_low read in place (float32,
rows contiguous in time); the other paths and autograd compute delta with torch first.

Same contract as `scan_ref.selective_scan_ref` (mamba_ssm's selective_scan semantics), but:
- no `(b, d, l, n)` intermediate. Forward: channels go in blocks of W = 16 (one channel per vector lane; a
  block never spans two B/C groups, the last block of a group may be narrower, its spare lanes repeat a
  channel and are dropped). Per time step and state k, one vector operation updates the 16 channels' states
  (h = exp(dt·A)·h + (dt·u)·B[k]) and output sums (y += h·C[k]), with B[k], C[k] broadcast: no horizontal sum
  per step, and 16 independent recurrences in flight per state. dt = softplus(delta + bias) and dt·u are
  computed along contiguous channel rows, then laid out time-major per block [l, W]; y goes back per channel
  with the D term and the silu(z) gate (vectorised over time). Extra memory: O(threads·l·W) scratch, the last
  state, and for variable B/C one `(b, g, l, n)` transposed copy of B and C (the size of the inputs);
- blocks run in parallel over numba's threads (as many as `torch.get_num_threads()`);
- exp(dt·A) uses a vectorisable float32 exp (Cephes expf: Cody-Waite range reduction + degree-6 polynomial,
  ~1 ulp; arguments are clamped to [-87.3, 88.3], so exp underflows to ~1e-38 rather than 0 and overflows
  to ~2e38 rather than inf; rounding and the biased exponent from one "magic number" addition, one Horner
  chain of FMAs).
  softplus uses a branch-free log1p (Cephes logf polynomial). Float64 inputs use libm (that path exists for
  `torch.autograd.gradcheck`).
- functions are compiled on first use and cached on disk (numba `cache=True`): one specialisation per dtype
  (float32, float64); absent D / z / delta_bias and constant/variable B, C are runtime flags.

Backward: `scan_cpu_bwd` (a reverse-time scan over channel blocks, gradient formulas and design in its docstring).

Process/thread safety: numba's `omp` layer is thread-safe but not fork-safe, `workqueue` is fork-safe but not
thread-safe. Calls are serialised under a lock when the layer is `workqueue`; in a process forked after the
parent ran a parallel kernel, a serial (single-thread, no threading layer) variant runs instead (`threads`: one
lock and one record for every module with parallel kernels).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from llvmlite import ir as llvm_ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload
from torch import Tensor

from .scan_ref import check_delta_proj, check_shapes, low_rank_delta
from .threads import parallel_threads, plan

# Reassociation lets LLVM vectorise the n-term dot products; contraction allows FMAs. No 'nnan'/'ninf'/'afn':
# infinities and NaNs propagate, and our exp below is compiled without any fast-math flag.
_FASTMATH = {"reassoc", "contract", "nsz"}

# Cephes expf constants (float32 globals, so numba folds them as float32).
_F32 = np.float32
_EXP_LO = _F32(-87.33654)
_EXP_HI = _F32(88.3)
_LOG2E = _F32(1.44269504088896341)
_HALF = _F32(0.5)
_LN2_HI = _F32(0.693359375)
_LN2_LO = _F32(-2.12194440e-4)
_P0 = _F32(1.9875691500e-4)
_P1 = _F32(1.3981999507e-3)
_P2 = _F32(8.3334519073e-3)
_P3 = _F32(4.1665795894e-2)
_P4 = _F32(1.6666665459e-1)
_P5 = _F32(5.0000001201e-1)
_ONE = _F32(1.0)


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (a bitcast, no conversion)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width != 32:
            v = builder.trunc(v, llvm_ir.IntType(32))
        return builder.bitcast(v, llvm_ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _bits_of_f32(typingctx, x):
    """The 32 bits of a float32 as an int32 (a bitcast, no conversion)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.IntType(32))

    return types.int32(x), codegen


_MAGIC = _F32(12583039.0)  # 1.5 * 2**23 + 127: adding it rounds to an integer n and leaves n + 127 in the low bits


def _exp(x):  # pragma: no cover - replaced by the numba overload below
    """exp(x): float32 -> our vectorisable expf; float64 -> libm exp."""
    raise NotImplementedError


@overload(_exp, jit_options={"fastmath": {"contract"}, "error_model": "numpy"})
def _ol_exp(x):
    # Cephes expf: clamp, Cody-Waite range reduction, degree-6 polynomial, in 15 vector operations: the rounding
    # to the nearest integer n and the biased exponent n + 127 come from one addition of _MAGIC (no floor, no
    # float->int conversion), and the polynomial 1 + r + r^2 P(r) is one Horner chain of 7 FMAs.
    if x == types.float32:

        def impl32(x):
            xx = min(max(x, _EXP_LO), _EXP_HI)
            kf = xx * _LOG2E + _MAGIC  # n + 127 in the low mantissa bits (|n| <= 127)
            fk = kf - _MAGIC  # n, exactly (no reassociation in this function)
            r = xx - fk * _LN2_HI
            r = r - fk * _LN2_LO
            p = ((((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * r + _ONE) * r + _ONE
            return p * _f32_from_bits(_bits_of_f32(kf) << 23)  # p * 2**n

        return impl32
    if x == types.float64:

        def impl64(x):
            return math.exp(x)

        return impl64
    return None


@njit(cache=True)
def _vexp_check(x):
    """Test hook: our exp over a 1-D array (float32 or float64)."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _exp(x[i])
    return out


# Cephes logf polynomial, for log(m) with m in [sqrt(1/2), sqrt(2)].
_L0 = _F32(7.0376836292e-2)
_L1 = _F32(-1.1514610310e-1)
_L2 = _F32(1.1676998740e-1)
_L3 = _F32(-1.2420140846e-1)
_L4 = _F32(1.4249322787e-1)
_L5 = _F32(-1.6668057665e-1)
_L6 = _F32(2.0000714765e-1)
_L7 = _F32(-2.4999993993e-1)
_L8 = _F32(3.3333331174e-1)
_SQRT2 = _F32(1.41421356)
_ZERO = _F32(0.0)


@njit(cache=True, fastmath=False, error_model="numpy")
def _log1p_unit32(v):
    """log1p(v) for float32 v in [0, 1], vectorisable: log(u) of u = 1 + v in [1, 2] by the Cephes polynomial,
    then Goldberg's correction log1p(v) = log(u) * v / (u - 1) (exact to a few ulp; v where u rounds to 1)."""
    # Branch-free (selects as arithmetic on 0/1 flags) so that LLVM vectorises the loops calling it.
    uu = _ONE + v
    e = np.float32(uu > _SQRT2)  # 1: u in (sqrt2, 2], log u = log(u/2) + ln2
    m = uu * (_ONE - _HALF * e)
    f = m - _ONE
    zz = f * f
    p = (((((((_L0 * f + _L1) * f + _L2) * f + _L3) * f + _L4) * f + _L5) * f + _L6) * f + _L7) * f + _L8
    y = f * zz * p + e * _LN2_LO - _HALF * zz
    r = f + y + e * _LN2_HI
    den = uu - _ONE
    isz = np.float32(den == _ZERO)  # u rounded to 1: log1p(v) = v (and r = 0)
    return r * (v / (den + isz)) + isz * v


def _softplus(x):  # pragma: no cover - replaced by the numba overload below
    """torch's softplus (beta 1, threshold 20): x if x > 20 else log1p(exp(x))."""
    raise NotImplementedError


@overload(_softplus, jit_options={"fastmath": False, "error_model": "numpy"})
def _ol_softplus(x):
    if x == types.float32:

        def impl32(x):
            # max(x, 0) + log1p(exp(-|x|)): above torch's threshold of 20, log1p(exp(-x)) < 2.1e-9 is below half an
            # ulp of x, so the sum is x exactly, as torch returns; -inf gives 0 and +inf gives inf (a 0/1 blend
            # with x, as before, made both NaN).
            return max(x, _ZERO) + _log1p_unit32(_exp(-abs(x)))

        return impl32
    if x == types.float64:

        def impl64(x):
            return x if x > 20.0 else math.log1p(math.exp(x))

        return impl64
    return None


def _sigmoid(x):  # pragma: no cover - replaced by the numba overload below
    raise NotImplementedError


@overload(_sigmoid, jit_options={"fastmath": False, "error_model": "numpy"})
def _ol_sigmoid(x):
    if x == types.float32:

        def impl32(x):
            return _ONE / (_ONE + _exp(-x))

        return impl32
    if x == types.float64:

        def impl64(x):
            return 1.0 / (1.0 + math.exp(-x))

        return impl64
    return None


@njit(cache=True)
def _softplus_check(x):
    """Test hook: our softplus over a 1-D array."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _softplus(x[i])
    return out


W = 16  # channels processed together, one per vector lane (a 16-lane AVX-512 register for float32)


@njit(cache=True, error_model="numpy")
def lane_params(d0, w, n, A, Bv, Cv, var_b, var_c, ch, AL, BL, CL):
    """The channel of each vector lane of a block of w channels from d0 (spare lanes repeat the last channel; their
    results are dropped), and the lanes' A and constant B, C, state-major [n, lanes] (0 where B or C varies).
    Shared by the forward kernels and the backward."""
    for j in range(ch.shape[0]):
        ch[j] = d0 + min(j, w - 1)
    for k in range(n):
        for j in range(ch.shape[0]):
            c = ch[j]
            AL[k, j] = A[c, k]
            BL[k, j] = Bv[0, c, 0, k] if not var_b else 0.0
            CL[k, j] = Cv[0, c, 0, k] if not var_c else 0.0


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _block_setup(b, d0, w, n, u, delta, A, Bv, Cv, bias, var_b, var_c, softplus, ch, AL, BL, CL, DTR, DTT, DUT):
    """Per-block inputs, lane-major: channel of each lane, A/constant B/C [n, W], dt and dt*u [l, W]."""
    nl = u.shape[2]
    lane_params(d0, w, n, A, Bv, Cv, var_b, var_c, ch, AL, BL, CL)
    for j in range(W):  # dt: vectorised over time along contiguous rows
        c = ch[j]
        bd = bias[c]
        if softplus:
            for t in range(nl):
                DTR[j, t] = _softplus(delta[b, c, t] + bd)
        else:
            for t in range(nl):
                DTR[j, t] = delta[b, c, t] + bd
        for t in range(nl):
            DTR[W + j, t] = DTR[j, t] * u[b, c, t]
    for t in range(nl):  # to lane-major (a gather per time step)
        for j in range(W):
            DTT[t, j] = DTR[j, t]
        for j in range(W):
            DUT[t, j] = DTR[W + j, t]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _scan_steps(t0, t1, n, bb, gb, bc, gc, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, H, OB):
    """Steps t0..t1-1 of a block: H [n, W] updated in place, OB[t, lanes] = y_t."""
    for t in range(t0, t1):
        for j in range(W):
            OB[t, j] = 0.0
    if var_b and var_c:
        for t in range(t0, t1):
            for k in range(n):
                bk = Bv[bb, gb, t, k]
                ck = Cv[bc, gc, t, k]
                for j in range(W):
                    hh = _exp(DTT[t, j] * AL[k, j]) * H[k, j] + DUT[t, j] * bk
                    H[k, j] = hh
                    OB[t, j] += hh * ck
    elif var_b:
        for t in range(t0, t1):
            for k in range(n):
                bk = Bv[bb, gb, t, k]
                for j in range(W):
                    hh = _exp(DTT[t, j] * AL[k, j]) * H[k, j] + DUT[t, j] * bk
                    H[k, j] = hh
                    OB[t, j] += hh * CL[k, j]
    elif var_c:
        for t in range(t0, t1):
            for k in range(n):
                ck = Cv[bc, gc, t, k]
                for j in range(W):
                    hh = _exp(DTT[t, j] * AL[k, j]) * H[k, j] + DUT[t, j] * BL[k, j]
                    H[k, j] = hh
                    OB[t, j] += hh * ck
    else:
        for t in range(t0, t1):
            for k in range(n):
                for j in range(W):
                    hh = _exp(DTT[t, j] * AL[k, j]) * H[k, j] + DUT[t, j] * BL[k, j]
                    H[k, j] = hh
                    OB[t, j] += hh * CL[k, j]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _fwd_blocks(i0, i1, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus,
                out, last):
    """Forward of the channel blocks blk[i0:i1] (row b, first channel d0, width w <= W). `last` (b, d, n) holds
    the start state on entry (zeros, or an initial state) and the last state on return."""
    n = A.shape[1]
    nl = u.shape[2]
    fdt = u.dtype
    AL = np.empty((n, W), fdt)  # A of the block's channels, state-major
    H = np.empty((n, W), fdt)  # states
    BL = np.empty((n, W), fdt)  # constant B / C of the block's channels (unused when variable)
    CL = np.empty((n, W), fdt)
    ch = np.empty(W, np.int64)
    DTR = np.empty((2 * W, nl), fdt)  # dt and dt*u, channel-major
    DTT = np.empty((nl, W), fdt)  # dt, time-major
    DUT = np.empty((nl, W), fdt)  # dt * u
    OB = np.empty((nl, W), fdt)  # y
    for i in range(i0, i1):
        b = blk[i, 0]
        d0 = blk[i, 1]
        w = blk[i, 2]
        _block_setup(b, d0, w, n, u, delta, A, Bv, Cv, bias, var_b, var_c, softplus, ch, AL, BL, CL, DTR, DTT,
                     DUT)
        for k in range(n):  # the start state: `last` holds it on entry (zeros, or the caller's initial state)
            for j in range(W):
                H[k, j] = last[b, ch[j], k]
        _scan_steps(0, nl, n, b if var_b else 0, d0 // dpg_b if var_b else 0, b if var_c else 0,
                    d0 // dpg_c if var_c else 0, Bv, Cv, var_b, var_c, AL, BL, CL, DTT, DUT, H, OB)
        for j in range(w):  # D term and gate, vectorised over time
            c = d0 + j
            Dd = D[c]
            if has_z:
                for t in range(nl):
                    zt = z[b, c, t]
                    out[b, c, t] = (OB[t, j] + Dd * u[b, c, t]) * (zt * _sigmoid(zt))
            else:
                for t in range(nl):
                    out[b, c, t] = OB[t, j] + Dd * u[b, c, t]
            for k in range(n):
                last[b, c, k] = H[k, j]


@njit(cache=True, parallel=True)
def _fwd_par(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last):
    nb = blk.shape[0]
    for c in prange(nchunks):
        _fwd_blocks(c * nb // nchunks, (c + 1) * nb // nchunks, blk, u, delta, A, Bv, Cv, D, z, bias,
                    var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last)


@njit(cache=True)
def _fwd_ser(nchunks, blk, u, delta, A, Bv, Cv, D, z, bias, var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last):
    _fwd_blocks(0, blk.shape[0], blk, u, delta, A, Bv, Cv, D, z, bias,
                var_b, var_c, dpg_b, dpg_c, has_z, softplus, out, last)


# ---------------------------------------------------------------------------------------------------------
# Threading: how many threads, and whether the parallel variant may run here.

def _run(par_fn, ser_fn, nchunks: int, *args) -> None:
    """Run `par_fn(nchunks, *args)` on numba's threads, or `ser_fn(1, *args)` where parallel is unsafe."""
    if nchunks < 2:
        ser_fn(1, *args)
        return
    with parallel_threads() as nthreads:
        if nthreads:
            par_fn(nchunks, *args)
        else:
            ser_fn(1, *args)


def threads_for_call() -> int:
    """Threads the next call from this thread would use (for reports)."""
    return plan()[1]


# ---------------------------------------------------------------------------------------------------------
# torch <-> numba plumbing


def _as_np(t: Tensor, dtype: torch.dtype) -> np.ndarray:
    return t.detach().to(dtype).contiguous().numpy()


def _bc_layout(M: Tensor, cdt: torch.dtype, dim: int) -> tuple[np.ndarray, bool, int]:
    """B or C -> (4-D array, variable?, channels per group). Constant (d, n) -> (1, d, 1, n);
    variable (b, n, l) / (b, g, n, l) -> (b, g, l, n) so the n states of a time step are contiguous."""
    if M.dim() == 2:
        return _as_np(M, cdt).reshape(1, M.shape[0], 1, M.shape[1]), False, 1
    M4 = M[:, None] if M.dim() == 3 else M
    return _as_np(M4.transpose(-1, -2), cdt), True, dim // M4.shape[1]


def _bc_grad(g: np.ndarray, M: Tensor) -> Tensor:
    """Per-thread accumulators (T, *layout) -> gradient in M's own shape and dtype."""
    gt = torch.from_numpy(g.sum(axis=0))
    if M.dim() == 2:
        return gt.reshape(M.shape).to(M.dtype)
    gt = gt.transpose(-1, -2)
    return gt.reshape(M.shape).to(M.dtype)


def _rows_np(t: Tensor, cdt: torch.dtype, keep_bf16: bool, keep_strides: bool = False) -> np.ndarray:
    """A (b, d, l) tensor as an array: in cdt, or (keep_bf16, bfloat16 t) its bits as int16; C-contiguous, or
    (keep_strides) a view with t's own (b, d) strides when its rows are already contiguous (stride 1 along l)
    and its dtype needs no cast."""
    t = t.detach()
    keep = keep_bf16 and t.dtype == torch.bfloat16
    if keep_strides and (t.dtype == cdt or keep) and (t.stride(2) == 1 or t.shape[2] <= 1):
        return t.view(torch.int16).numpy() if keep else t.numpy()
    if keep:
        return t.contiguous().view(torch.int16).numpy()
    return _as_np(t, cdt)


def _prepare(u, delta, A, B, C, D, z, delta_bias, keep_bf16=False, keep_strides=False):
    """The kernels' arrays. keep_bf16 (the n = 16 vector forward): bfloat16 u, delta, z stay bfloat16 (as int16
    bits), read and widened in the kernel's row pass instead of a cast pass here. keep_strides (the same
    forward): u, delta, z whose rows are contiguous are passed as views with their own (b, d) strides (the
    kernel's row passes compute each row's offset from the strides) instead of contiguous copies. delta None
    (delta in low rank, read by the kernel from lowr_arrays'): u's array stands in for it."""
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    dim = u.shape[1]
    Bv, var_b, dpg_b = _bc_layout(B, cdt, dim)
    Cv, var_c, dpg_c = _bc_layout(C, cdt, dim)
    u_np = _rows_np(u, cdt, keep_bf16, keep_strides)
    zeros = np.zeros(dim, dtype=np.float64 if cdt == torch.float64 else np.float32)
    return {
        "cdt": cdt,
        "u": u_np,
        "delta": u_np if delta is None else _rows_np(delta, cdt, keep_bf16, keep_strides),  # None: in low rank
        "A": _as_np(A, cdt),
        "Bv": Bv,
        "Cv": Cv,
        "D": _as_np(D, cdt) if D is not None else zeros,
        "z": _rows_np(z, cdt, keep_bf16, keep_strides) if z is not None else u_np,
        "bias": _as_np(delta_bias, cdt) if delta_bias is not None else zeros,
        "var_b": var_b,
        "var_c": var_c,
        "dpg_b": dpg_b,
        "dpg_c": dpg_c,
        "has_z": z is not None,
    }


def _blocks(b: int, d: int, p: dict, width: int = W) -> np.ndarray:
    """(row b, first channel, width) of each block of <= `width` channels; a block never spans two B or C
    groups."""
    seg = d
    if p["var_b"]:
        seg = math.gcd(seg, p["dpg_b"])
    if p["var_c"]:
        seg = math.gcd(seg, p["dpg_c"])
    if p.get("dpg_l"):
        seg = math.gcd(seg, p["dpg_l"])
    starts = np.arange(0, d, seg)
    d0 = (starts[:, None] + np.arange(0, seg, width)[None, :]).ravel()
    w = np.minimum(width, (d0 // seg + 1) * seg - d0)
    nb = d0.shape[0]
    out = np.empty((b * nb, 3), np.int64)
    out[:, 0] = np.repeat(np.arange(b), nb)
    out[:, 1] = np.tile(d0, b)
    out[:, 2] = np.tile(w, b)
    return out


def _kernel_args(p: dict, softplus: bool) -> tuple:
    return (p["u"], p["delta"], p["A"], p["Bv"], p["Cv"], p["D"], p["z"], p["bias"], p["var_b"], p["var_c"],
            p["dpg_b"], p["dpg_c"], p["has_z"], bool(softplus))


def lowr_arrays(W: Tensor, dt_low: Tensor) -> tuple:
    """The vector forward's `lowr` argument (scan_cpu_vec._fwd_blocks) for delta_proj = (W (d, r), dt_low
    (b, g, r, l)): (W float32 [d, r] C-contiguous, the flat float32 storage L that dt_low's rows are in, the element
    offset in L of each (b, g)'s row 0, the element stride between rows k, channels per group). dt_low is read in
    place when float32 with rows contiguous in time (any (b, g, k) strides), else copied once."""
    low = dt_low.detach()
    if low.dtype != torch.float32 or (low.stride(3) != 1 and low.shape[3] > 1):
        low = low.float().contiguous()
    b, g, r, l = low.shape
    span = 1 + sum((n - 1) * st for n, st in zip(low.shape, low.stride()))  # elements from [0, 0, 0, 0] to the last
    flat = torch.as_strided(low, (span,), (1,)).numpy()
    sb, sg, sk, _ = low.stride()
    offs = (np.arange(b, dtype=np.int64)[:, None] * sb + np.arange(g, dtype=np.int64)[None, :] * sg)
    return (np.ascontiguousarray(W.detach().float().numpy()), flat, np.ascontiguousarray(offs), np.int64(sk),
            np.int64(W.shape[0] // g))


def scan_forward(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
                 delta_proj=None):
    """Forward only (no autograd graph): returns (out in u's dtype, last_state (b, d, n) in compute dtype).
    initial_state (b, d, n): the state before the first step (default zeros), so that a sequence can be scanned
    in consecutive pieces, each from the previous piece's last state. delta_proj = (W (d, r), dt_low (b, g, r, l))
    with delta None: delta in low rank (scan_ref's formula), computed by the n = 16 vector forward in its row setup
    (r FMAs per step and 16 channels, dt_low read in place: no delta tensor), by torch first on the other paths.

    The n = 16 vector forward reads u, delta and z in place whatever their (b, d) strides when their rows are
    contiguous (float32 or bfloat16); for a channel-major u (exactly a permuted contiguous [d, b, l] tensor, b > 1)
    out is channel-major too (out.permute(1, 0, 2) contiguous), else out is contiguous."""
    vec = u.dtype != torch.float64 and A.shape[1] == 16  # the explicitly vectorised time loop (n = 16, float32)
    if delta_proj is not None and not vec:
        delta, delta_proj = low_rank_delta(*delta_proj, torch.float32 if u.dtype != torch.float64 else u.dtype), None
    p = _prepare(u, delta, A, B, C, D, z, delta_bias, keep_bf16=vec, keep_strides=vec)
    b, d, l = u.shape
    lowr = None if delta_proj is None or not b * d * l else lowr_arrays(*delta_proj)
    if lowr is not None:
        p["dpg_l"] = int(lowr[4])
    ndt = np.float64 if p["cdt"] == torch.float64 else np.float32
    bf16_out = vec and u.dtype == torch.bfloat16  # written as bfloat16 bits by the kernel's output pass
    odt = np.int16 if bf16_out else ndt
    if vec and b > 1 and tuple(u.stride()) == (l, b * l, 1):
        out = np.empty((d, b, l), odt).transpose(1, 0, 2)  # channel-major u: out in the same layout
    else:
        out = np.empty((b, d, l), odt)
    if initial_state is None:
        last = np.zeros((b, d, A.shape[1]), ndt)
    else:  # the kernels start from `last` and overwrite it with the last state
        if tuple(initial_state.shape) != (b, d, A.shape[1]):
            raise ValueError(f"initial_state must be (b, d, n) = {(b, d, A.shape[1])}, "
                             f"got {tuple(initial_state.shape)}")
        last = np.array(initial_state.detach().to(p["cdt"]).numpy(), dtype=ndt, order="C", copy=True)
    if b * d * l:
        blk = _blocks(b, d, p)
        par, ser = _fwd_par, _fwd_ser
        extra = ()
        if vec and lowr is not None:
            from .scan_cpu_vec import fold_par as par, fold_ser as ser
            extra = (lowr,)
        elif vec:
            from .scan_cpu_vec import fwd_par as par, fwd_ser as ser
        _run(par, ser, min(threads_for_call(), len(blk)), blk, *_kernel_args(p, delta_softplus), out, last, *extra)
    res = torch.from_numpy(out)
    return (res.view(torch.bfloat16) if bf16_out else res.to(u.dtype)), torch.from_numpy(last)


class SelectiveScanCPU(torch.autograd.Function):
    """Autograd wrapper: fused forward, fused reverse-time backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        from .scan_cpu_ckpt import scan_forward_ckpt  # scan_forward + the backward's segment start states

        out, last, ctx.checkpoints = scan_forward_ckpt(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx, dout, _dlast):
        from .scan_cpu_bwd import scan_backward  # the backward kernel's module (it imports this one)

        return scan_backward(ctx.saved_tensors, ctx.delta_softplus, dout, ctx.checkpoints)


def selective_scan_cpu(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False, initial_state: Tensor | None = None,
                       delta_proj: tuple[Tensor, Tensor] | None = None):
    """Fused CPU selective scan with mamba_ssm's selective_scan_fn contract (see scan_ref); initial_state
    (b, d, n), the state before the first step, only without gradients. delta_proj = (W (d, r), dt_low
    (b, g, r, l)) in place of delta (None): delta in low rank, folded into the n = 16 vector forward's row setup
    (scan_forward); with gradients delta is computed by torch first (and differentiated through)."""
    check_delta_proj(u, delta, delta_proj)
    check_shapes(u, u if delta is None else delta, A, B, C, D, z, delta_bias)
    lr = () if delta_proj is None else tuple(delta_proj)
    if any(t is not None and t.device.type != "cpu"
           for t in (u, delta, A, B, C, D, z, delta_bias, initial_state, *lr)):
        raise ValueError("selective_scan_cpu needs CPU tensors")
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, *lr) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        if initial_state is not None:
            raise NotImplementedError("the CPU scan takes an initial state only without gradients")
        if delta_proj is not None:
            delta = low_rank_delta(*delta_proj, torch.float64 if u.dtype == torch.float64 else torch.float32)
        out, last = SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    else:
        out, last = scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, delta_proj)
    return (out, last) if return_last_state else out
