"""The forward's base-2 exp (vector_exp2.vexp2_ir) against float64 numpy, on the generic path and (on hosts with
AVX-512) the vreduceps/vscalefps path: the polynomial's error, the whole exp(dt·A) = 2^(dt·(A·log2 e)) as the
time loop computes it, and the ends of the range (underflow, overflow, infinities, NaN)."""

from __future__ import annotations

import numpy as np
import pytest

from sepcli.kernels import vector_exp2

PATHS = [pytest.param(False, id="generic"),
         pytest.param(True, id="avx512", marks=pytest.mark.skipif(not vector_exp2.AVX512, reason="no AVX-512 F/DQ"))]
F32_ULP = 2.0 ** -23


@pytest.mark.parametrize("avx512", PATHS)
@pytest.mark.parametrize("low_only", [False, True])
def test_exp2_error_over_the_normal_range(avx512, low_only):
    hi = 0.0 if low_only else 126.9
    y = np.linspace(-124.9, hi, 2_000_001, dtype=np.float32)
    got = vector_exp2.vexp2_check(y, low_only, avx512).astype(np.float64)
    want = np.exp2(y.astype(np.float64))
    err = np.abs(got - want) / want
    print(f"exp2 ({'avx512' if avx512 else 'generic'}, low_only={low_only}): max relative error {err.max():.3g}")
    assert err.max() < 2.0 * F32_ULP  # ~1.5-1.6e-7 measured: the polynomial plus float32 rounding
    assert vector_exp2.vexp2_check(np.zeros(3, np.float32), low_only, avx512).tolist() == [1.0] * 3


@pytest.mark.parametrize("avx512", PATHS)
def test_exp_of_dt_times_a_as_the_time_loop_computes_it(avx512):
    """exp(dt·A) for dt·A from -2000 to +80: A2 = A·log2 e and y = dt·A2 are rounded to float32 as in the kernel;
    against np.exp of the float64 product. Where exp is a normal number the error is the polynomial's plus the
    argument's two roundings (|dt·A|·2^-23 at most); below, the result is tiny (generic: clamped at 2^-125)."""
    rng = np.random.default_rng(0)
    a = -np.exp(rng.uniform(-3.0, 3.0, 400_000)).astype(np.float32)  # A = -exp(A_log)
    a[::7] *= -1.0  # some growing states (A > 0)
    dt = np.exp(rng.uniform(-9.0, 4.7, a.shape[0])).astype(np.float32)
    a2 = a * np.float32(1.4426950408889634)
    got = vector_exp2.vexp2_check(dt * a2, False, avx512).astype(np.float64)
    x = dt.astype(np.float64) * a.astype(np.float64)
    keep = x < 80.0
    got, x = got[keep], x[keep]
    want = np.exp(x)
    normal = x > -86.0
    assert normal.sum() > 100_000 and (~normal).sum() > 1000 and x.min() < -1000
    rel = np.abs(got - want)[normal] / want[normal]
    bound = 2.0 * F32_ULP + 1.1 * F32_ULP * np.abs(x[normal])
    print(f"exp(dt·A): max relative error {rel.max():.3g} overall, {rel[np.abs(x[normal]) <= 1].max():.3g} for "
          f"|dt·A| <= 1; max error / bound {np.max(rel / bound):.3g}")
    assert np.all(rel <= bound)
    assert np.all(np.abs(got - want)[~normal] <= 2.4e-38) and np.all(got[~normal] >= 0.0)


def test_exp2_generic_path_clamps_and_passes_nan():
    y = np.array([-1e4, -200.0, -126.0, -125.5, 0.0, 127.5, 200.0, 1e4, np.inf, -np.inf, np.nan], np.float32)
    got = vector_exp2.vexp2_check(y, False, False)
    lo, hi = np.float32(2.0 ** -125), np.float32(2.0 ** 127)
    np.testing.assert_array_equal(got[:4], [lo] * 4)  # clamped at 2^-125 (normal), not garbage
    assert got[4] == 1.0
    np.testing.assert_array_equal(got[5:9], [hi] * 4)  # clamped at 2^127 (finite)
    assert got[9] == lo and np.isnan(got[10])
    low = vector_exp2.vexp2_check(y[[0, 1, 2, 3, 4, 9, 10]], True, False)  # only the low clamp (y <= 0)
    np.testing.assert_array_equal(low[[0, 1, 2, 3, 5]], [lo] * 5)
    assert low[4] == 1.0 and np.isnan(low[6])


@pytest.mark.skipif(not vector_exp2.AVX512, reason="no AVX-512 F/DQ")
def test_exp2_avx512_path_saturates_like_exp2():
    y = np.array([-1e4, -200.0, -150.5, -140.0, -126.0, 127.5, 128.0, 200.0, 1e4, np.inf, -np.inf, np.nan],
                 np.float32)
    got = vector_exp2.vexp2_check(y, False, True)
    assert got[0] == got[1] == got[2] == got[10] == 0.0  # below the denormals: 0, as exp2
    assert got[3] in (np.float32(2.0 ** -140), 0.0)  # a denormal, or 0 when denormals are flushed
    assert got[4] == np.float32(2.0 ** -126)
    np.testing.assert_allclose(got[5], 2.0 ** 127.5, rtol=2 * F32_ULP)
    assert np.all(np.isinf(got[6:10])) and np.all(got[6:10] > 0) and np.isnan(got[11])


@pytest.mark.parametrize("avx512", [False, True])
@pytest.mark.parametrize("low_only", [False, True])
def test_exp2_keeps_nans_with_any_payload(avx512, low_only):
    """NaN bit patterns other than numpy's (payload bits set, either sign, signalling) stay NaN: the generic
    path's exponent-bit addition would otherwise turn them into tiny finite numbers."""
    if avx512 and not vector_exp2.AVX512:
        pytest.skip("no AVX-512 F/DQ on this host")
    bits = np.array([0x7FC00000, 0x7FC00001, 0x7FC00005, 0xFFC00003, 0x7F800001, 0x7FFFFFFF], np.uint32)
    got = vector_exp2.vexp2_check(bits.view(np.float32), low_only=low_only, avx512=avx512)
    assert np.all(np.isnan(got)), got
