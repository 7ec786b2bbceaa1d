"""The forward time loop's exp in base 2: exp(dt·A) = 2^(dt·A2) with A2 = A·log2 e premultiplied per block, so
the loop's product dt·A2 is the exp's only argument operation (scan_cpu_vec).

How: 2^f by a degree-5 polynomial (c0 = 1 exact so that 2^0 = 1; relative least squares on Chebyshev nodes,
fitted in float64 at import), times 2^n:
- on hosts with AVX-512 F and DQ (and numba compiling for the host): f = y - floor(y) by vreduceps and the
  scaling by vscalefps, 7 vector operations in all; vscalefps saturates like exp2 itself (0 below ~2^-149,
  denormals down there, inf above 2^128) and passes NaN, so no clamp;
- elsewhere (AVX2 laptops), generic IR: n = round(y) by adding and subtracting 1.5·2^23, f = y - n (exact), the
  polynomial, n << 23 added to the result's exponent bits and a select keeping a NaN y NaN (whatever its payload):
  12 operations, plus a clamp of y to [-125, 127] by compare/selects (NaN passes), only the low end (1 operation)
  when y <= 0 is known (A <= 0, dt >= 0).
Max relative error measured 1.5-1.6e-7 on both paths over the normal range (tests/kernels/test_vector_ir_exp2).
SEPCLI_VEC_GENERIC=1 forces the generic path (the forward's kernels then skip numba's disk cache).
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba.core import cgutils

from .vector_ir import _VI, V16, W, _splat, mapped_check, vfma

# 2^f on [-1/2, 1/2] (generic path: n = round(y)) and on [0, 1) (AVX-512 path: n = floor(y))


def _fit_exp2_poly(lo: float, hi: float) -> tuple[float, ...]:
    """Degree-5 coefficients of 2^f on [lo, hi] with c0 = 1, relative least squares on Chebyshev nodes (float64)."""
    f = (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (np.arange(600) + 0.5) / 600)
    p2 = np.exp2(f)
    basis = np.stack([f ** k / p2 for k in range(1, 6)], axis=1)
    c = np.linalg.lstsq(basis, (p2 - 1.0) / p2, rcond=None)[0]
    return (1.0,) + tuple(float(np.float32(v)) for v in c)


_EXP2_C_ROUND = _fit_exp2_poly(-0.5, 0.5)
_EXP2_C_FLOOR = _fit_exp2_poly(0.0, 1.0)
_EXP2_LO = -125.0  # generic path: 2^n stays a normal number for p >= 1/sqrt2 (exp2(-125) ~ 2.4e-38)
_EXP2_HI = 127.0  # p·2^127 < 2^128: the largest result ~2.4e38, finite
_MAGIC2 = 12582912.0  # 1.5 * 2**23: y + magic leaves round(y) in the low mantissa bits


def _host_avx512() -> bool:
    """True when numba compiles for this host (no NUMBA_CPU_NAME) and it has AVX-512 F and DQ (vscalefps,
    vreduceps). SEPCLI_VEC_GENERIC=1 forces the generic path (tests); the forward's kernels then skip numba's
    disk cache, so generic code never lands in (or is loaded from) the cache of the host's path."""
    from llvmlite import binding
    from numba.core import config

    if FORCE_GENERIC or config.CPU_NAME not in (None, "host"):
        return False
    if config.CPU_FEATURES:  # numba compiles for these features (e.g. a portable cache), not the host's
        feats = config.CPU_FEATURES.split(",")
        return "+avx512f" in feats and "+avx512dq" in feats
    feats = binding.get_host_cpu_features()
    return bool(feats.get("avx512f") and feats.get("avx512dq"))


FORCE_GENERIC = bool(os.environ.get("SEPCLI_VEC_GENERIC"))  # kernels built on it are then not disk-cached
AVX512 = _host_avx512()


def _x86_512(builder, name, args):
    ty = ir.FunctionType(V16, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, ty, f"llvm.x86.avx512.mask.{name}.ps.512"), args)


def vexp2_ir(builder, y, low_only=False, avx512=None):
    """Emit 2^y for a <16 x float> y, y = dt·A2. avx512 (default: AVX512, the host's): f = y - floor(y) by
    vreduceps, 2^f by the polynomial, times 2^floor(y) by vscalefps, which saturates correctly (0 below ~-149,
    denormals between -149 and -126, inf above 128) and passes NaN: 7 vector operations. Generic: clamp y
    to [-125, 127] (low_only: only the low end, enough when y <= 0, i.e. A <= 0 and dt >= 0), the magic-number
    rounding n = round(y) (1.5·2^23 added and subtracted), f = y - n exact, the polynomial, and 2^n added to
    the result's exponent bits, and a select that keeps a NaN y (any payload): 12-13 operations. NaN propagates on both
    paths."""
    avx512 = AVX512 if avx512 is None else avx512
    i32 = ir.IntType(32)
    if avx512:
        undef = ir.Constant(V16, ir.Undefined)
        mask, cur = ir.Constant(ir.IntType(16), -1), ir.Constant(i32, 4)
        f = _x86_512(builder, "reduce", [y, ir.Constant(i32, 9), undef, mask, cur])  # 9: round down, no #PE
        c = _EXP2_C_FLOOR
    else:
        y = builder.select(builder.fcmp_ordered("<", y, _splat(_EXP2_LO)), _splat(_EXP2_LO), y)
        if not low_only:
            y = builder.select(builder.fcmp_ordered(">", y, _splat(_EXP2_HI)), _splat(_EXP2_HI), y)
        kf = builder.fadd(y, _splat(_MAGIC2))
        f = builder.fsub(y, builder.fsub(kf, _splat(_MAGIC2)))
        c = _EXP2_C_ROUND
    p = vfma(builder, _splat(c[5]), f, _splat(c[4]))
    for ci in (c[3], c[2], c[1], c[0]):
        p = vfma(builder, p, f, _splat(ci))
    if avx512:
        return _x86_512(builder, "scalef", [p, y, ir.Constant(V16, ir.Undefined), mask, cur])
    sh = builder.shl(builder.bitcast(kf, _VI), ir.Constant(_VI, [23] * W))  # n << 23 (the magic's bits shift out)
    res = builder.bitcast(builder.add(builder.bitcast(p, _VI), sh), V16)
    # a NaN y with payload bits would add them into the exponent and come out finite: keep y where it is NaN
    return builder.select(builder.fcmp_unordered("uno", y, y), y, res)


def vexp2_check(x, low_only=False, avx512=None):
    """Test hook: vexp2_ir over a 1-D float32 array on the given path (default: the host's)."""
    av = AVX512 if avx512 is None else avx512
    return mapped_check(("exp2", low_only, av), lambda b, v: vexp2_ir(b, v, low_only, av), x)
