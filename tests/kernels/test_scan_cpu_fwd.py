"""The explicitly vectorised forward (n = 16, float32) against the reference scan and the numba fallback: its exp,
softplus and tile transposes, channel tails, groups, short and padded lengths, flags, layouts, strides, extremes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from numba import njit

from sepcli.kernels import scan_cpu, scan_cpu_vec, vector_ir
from sepcli.kernels.scan_cpu import selective_scan_cpu
from sepcli.kernels.scan_ref import selective_scan_ref
from tests.kernels.test_scan_cpu import ATOL, RTOL, _check, spmamba_like_views
from tests.scan_cases import LAYOUTS, make_inputs

# --- the vector building blocks ------------------------------------------------------------------------------


def test_vector_exp_error_over_dense_range():
    x = np.linspace(-87.0, 88.0, 1_000_001, dtype=np.float32)
    got = vector_ir.vexp_check(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    err = np.abs(got - want) / want
    print(f"vector exp: max relative error {err.max():.3g} on [-87, 88] (float32 ulp 1.19e-7); "
          f"{err[np.abs(x) <= 10].max():.3g} on [-10, 10]")
    assert err.max() < 5e-7  # ~4 ulp; the scan's dt·A product itself is rounded to 0.5 ulp of its argument
    assert err[np.abs(x) <= 10].max() < 3e-7


def test_vector_exp_extremes():
    got = vector_ir.vexp_check(np.array([-1e4, -200.0, -87.5, 0.0, 88.5, 200.0, 1e4, np.nan, np.inf, -np.inf],
                                           np.float32))
    assert got[3] == 1.0
    assert 0.0 < got[0] < 2e-38 and got[0] == got[1] == got[2] == got[9]  # clamped at 2**-126-ish, not garbage
    assert 1e38 < got[4] < np.finfo(np.float32).max and got[4] == got[5] == got[6] == got[8]
    assert np.isnan(got[7])


def test_vector_softplus_matches_torch():
    x = np.concatenate([np.linspace(-80.0, 40.0, 200_001), [0.0, 19.999, 20.0, 20.001, 1e4, -1e4]]).astype(np.float32)
    got = vector_ir.vsoftplus_check(x).astype(np.float64)
    want = torch.nn.functional.softplus(torch.from_numpy(x).double()).numpy()
    normal = want > 2e-38  # below, exp(-|x|) is clamped near 2**-126 (as the fallback's)
    rel = np.abs(got - want)[normal] / want[normal]
    print(f"vector softplus: max relative error {rel.max():.3g}")
    assert rel.max() < 5e-7
    assert np.all(np.abs(got - want)[~normal] < 2e-38)
    above = np.linspace(20.0, 1e4, 10_001).astype(np.float32)  # torch returns x itself above its threshold
    np.testing.assert_array_equal(vector_ir.vsoftplus_check(above), above)
    ends = vector_ir.vsoftplus_check(np.array([-np.inf, np.inf, np.nan], np.float32))
    assert 0.0 <= ends[0] < 2e-38 and ends[1] == np.inf and np.isnan(ends[2])


@njit
def _tile_transpose(S, sr, sc, Dm, dr, dc):
    vector_ir.transpose16(S, sr, sc, Dm, dr, dc)


def test_tile_transpose_moves_every_element():
    S = np.arange(40 * 50, dtype=np.float32).reshape(40, 50)
    Dm = np.full((30, 37), -1.0, np.float32)
    _tile_transpose(S, 3, 7, Dm, 5, 11)
    want = np.full_like(Dm, -1.0)
    want[5:21, 11:27] = S[3:19, 7:23].T
    np.testing.assert_array_equal(Dm, want)


# --- the forward against the reference -----------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=4)))  # D, z, delta_bias, softplus
def test_n16_matches_reference_all_flags_and_layouts(layout, flags):
    _check(make_inputs(2, 32, 45, 16, *layout, *flags, seed=3 + sum(flags)))


@pytest.mark.parametrize("L", [1, 2, 15, 16, 17, 31, 33, 300])
def test_n16_lengths_around_the_vector_padding(L):
    _check(make_inputs(2, 16, L, 16, "var", "var", seed=L))


@pytest.mark.parametrize("d,layout", [(1, ("var", "var")), (5, ("const", "var")), (20, ("g2", "var")),
                                      (38, ("g2", "g2")), (33, ("var", "const")), (48, ("g1", "g2")),
                                      (54, ("g2", "const"))])
def test_n16_channel_tails_and_groups(d, layout):
    """d not a multiple of 16, groups of 10/19/27 channels (a block never spans two groups), one channel."""
    _check(make_inputs(2, d, 23, 16, *layout, seed=d))


def test_n16_long_sequence_spmamba_like():
    _check(make_inputs(1, 64, 2000, 16, "g2", "g2", seed=21))


def test_n16_strided_inputs_as_spmamba_passes_them():
    """SPMamba's views (u/delta/z transposed, B and C sliced from one projection), and A and D strided."""
    kw = spmamba_like_views(2, 48, 37, 16)
    kw["A"] = torch.cat([kw["A"], kw["A"]], dim=1)[:, ::2]
    kw["D"] = torch.stack([kw["D"], kw["D"]], dim=1)[:, 0]
    assert not kw["B"].is_contiguous() and not kw["A"].is_contiguous() and not kw["D"].is_contiguous()
    _check(kw)


def test_n16_extreme_decays_underflow_and_growth():
    """dt·A from about -2000 (exp underflows: the state restarts from dt·u·B) up to +2 (a state grows), z up to
    +-150 (silu saturates)."""
    kw = make_inputs(1, 32, 40, 16, "var", "var", seed=9)
    g = torch.Generator().manual_seed(9)
    kw["delta"] = torch.randn(1, 32, 40, generator=g) * 60.0  # softplus: dt from ~0 to ~200
    kw["A"] = torch.empty(32, 16).uniform_(-10.0, -0.1, generator=g)
    kw["A"][:, 0] = 0.0  # exp(0) = 1: a pure accumulator
    kw["A"][:, 1] = 0.01  # a growing state (by up to e^2 per step, e^10 in all: no overflow in the reference)
    kw["z"] = torch.randn(1, 32, 40, generator=g) * 50.0
    dt = torch.nn.functional.softplus(kw["delta"] + kw["delta_bias"][:, None])
    prod = dt[..., None] * kw["A"][None, :, None, :]
    assert prod.min() < -1000 and prod.max() > 1.0 and kw["z"].abs().max() > 100
    out, last = selective_scan_cpu(**kw, return_last_state=True)
    ref, ref_last = selective_scan_ref(**kw, return_last_state=True)
    scale = ref.abs().max()
    torch.testing.assert_close(out / scale, ref / scale, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last / ref_last.abs().max(), ref_last / ref_last.abs().max(), rtol=RTOL, atol=ATOL)


def test_n16_nan_in_delta_propagates_to_its_channel_only():
    kw = make_inputs(1, 32, 20, 16, "var", "var", seed=4)
    kw["delta"][0, 3, 7] = float("nan")
    out = selective_scan_cpu(**kw)
    assert torch.isnan(out[0, 3, 7:]).all() and not torch.isnan(out[0, 3, :7]).any()
    assert not torch.isnan(out[0, [c for c in range(32) if c != 3]]).any()


@pytest.mark.parametrize("L", [1030, 1040, 1050, 2048 + 17])
def test_n16_lengths_around_the_time_tiles(L):
    """A last tile of 6 steps (staged), of 16, of 26 (its last chunk shifted back), several tiles."""
    _check(make_inputs(1, 20, L, 16, "g2", "var", seed=L))


def test_n16_no_softplus_negative_dt_and_growing_states():
    """delta_softplus off with dt < 0 and A > 0 in places: dt·A > 0, the exp's general (two-sided) path."""
    kw = make_inputs(2, 24, 70, 16, "var", "g2", softplus=False, seed=12)
    kw["delta"] = kw["delta"] - 0.3  # dt in [-0.29, 0.21]
    kw["A"][::3, ::2] = 0.5
    assert (kw["delta"] + kw["delta_bias"][:, None] < 0).any()
    _check(kw)


_GENERIC_CHILD = """
import torch
from sepcli.kernels import scan_cpu_vec, vector_exp2
assert not vector_exp2.AVX512
import tests.kernels.test_scan_cpu_fwd as t
from tests.scan_cases import make_inputs
for layout in t.LAYOUTS:
    t._check(make_inputs(2, 40, 45, 16, *layout, seed=3))
asm = scan_cpu_vec._fwd_blocks.inspect_asm(scan_cpu_vec._fwd_blocks.signatures[0])
assert "ymm" in asm and "zmm" not in asm  # AVX2 code: each 16-lane vector in two ymm registers
t._check(make_inputs(1, 20, 1050, 16, "g2", "var", seed=5))
t.test_n16_no_softplus_negative_dt_and_growing_states()
t.test_n16_extreme_decays_underflow_and_growth()
t.test_n16_nan_in_delta_propagates_to_its_channel_only()
print("generic ok")
"""


def test_n16_generic_exp_path_on_avx2_matches_reference(tmp_path):
    """The forward compiled as for an AVX2 laptop (numba targeting Haswell: no AVX-512, so the generic exp and
    ymm registers; its own numba cache), in a child process, against the reference: layouts, tiles, two-sided
    and low-only clamps, underflow and growth, NaN."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(tmp_path),
               PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-c", _GENERIC_CHILD], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "generic ok" in proc.stdout


_BF16_KEYS = ("u", "delta", "z", "B", "C")


def _bf16(kw, keys=_BF16_KEYS):
    return {k: (v.to(torch.bfloat16) if k in keys and isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


@pytest.mark.parametrize("L", [5, 45, 1030])
@pytest.mark.parametrize("layout", [("var", "var"), ("g2", "g2"), ("const", "g2")])
def test_n16_bfloat16_inputs_against_the_reference(L, layout):
    """bfloat16 u, delta, z, B, C: against scan_ref fed the same values upcast to float32 (out rounded to
    bfloat16: half an ulp, 2^-9 relative), and bit for bit against the float32 kernel on the upcast values
    followed by torch's float32 -> bfloat16 rounding."""
    h = _bf16(make_inputs(2, 40, L, 16, *layout, seed=L))
    up = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in h.items()}
    out, last = selective_scan_cpu(**h, return_last_state=True)
    ref, ref_last = selective_scan_ref(**up, return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, rtol=2.0 ** -8, atol=ATOL)
    torch.testing.assert_close(last, ref_last, rtol=RTOL, atol=ATOL)
    assert torch.equal(out, selective_scan_cpu(**up).to(torch.bfloat16))


def test_n16_bfloat16_mixed_with_float32_nan_and_no_cast_pass(monkeypatch):
    """Any of u, delta, z may be bfloat16 (here u and z; delta float32); the kernel gets their bfloat16 bits
    (int16), not a float32 copy; a NaN in z stays NaN in the bfloat16 output."""
    kw = make_inputs(1, 32, 50, 16, "var", "var", seed=7)
    h = _bf16(kw, ("u", "z"))
    h["z"][0, 5, 9] = float("nan")
    seen = []
    real = scan_cpu_vec.fwd_ser

    def spy(*a):
        seen.append((a[2].dtype, a[3].dtype, a[8].dtype, a[-2].dtype))
        return real(*a)

    monkeypatch.setattr(scan_cpu_vec, "fwd_ser", spy)
    monkeypatch.setattr(scan_cpu_vec, "fwd_par", spy)
    out = selective_scan_cpu(**h)
    assert seen == [(np.int16, np.float32, np.int16, np.int16)]  # u, delta, z, out
    up = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in h.items()}
    want = selective_scan_cpu(**up).to(torch.bfloat16)
    assert torch.isnan(out[0, 5, 9]) and torch.isnan(want[0, 5, 9])
    assert torch.equal(out.isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(want))


# --- dispatch: which kernel runs, and the fallbacks ----------------------------------------------------------


def _forward_with(fwd_ser, kw):
    p = scan_cpu._prepare(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"], kw["z"], kw["delta_bias"])
    b, d, l = kw["u"].shape
    out = np.empty((b, d, l), p["u"].dtype)
    last = np.zeros((b, d, kw["A"].shape[1]), p["u"].dtype)
    fwd_ser(1, scan_cpu._blocks(b, d, p), *scan_cpu._kernel_args(p, kw["delta_softplus"]), out, last)
    return out, last


def test_vector_kernel_agrees_with_the_numba_fallback():
    kw = make_inputs(2, 40, 77, 16, "g2", "var", seed=6)
    vec = _forward_with(scan_cpu_vec.fwd_ser, kw)
    loop = _forward_with(scan_cpu._fwd_ser, kw)
    for a, b in zip(vec, loop):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_dispatch_uses_the_vector_kernel_for_float32_n16_only(monkeypatch):
    calls = []
    real = scan_cpu_vec.fwd_ser

    def spy(*a):
        calls.append(a[0])
        return real(*a)

    monkeypatch.setattr(scan_cpu_vec, "fwd_ser", spy)
    monkeypatch.setattr(scan_cpu_vec, "fwd_par", spy)
    _check(make_inputs(1, 16, 9, 16, seed=1))
    assert len(calls) == 1
    _check(make_inputs(1, 16, 9, 15, seed=1))
    _check(make_inputs(1, 16, 9, 17, seed=1))
    _check(make_inputs(1, 16, 9, 32, seed=1))
    assert len(calls) == 1  # other n: the numba loops


@pytest.mark.parametrize("n", [1, 8, 15, 17, 32])
def test_other_state_sizes_use_the_fallback_and_match(n):
    _check(make_inputs(2, 20, 30, n, "g2", "var", seed=n))


def test_n16_threads_agree_with_one_thread():
    kw = make_inputs(3, 64, 50, 16, "g2", "g2", seed=10)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = selective_scan_cpu(**kw)
        torch.set_num_threads(max(2, old))
        many = selective_scan_cpu(**kw)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(one, many, rtol=0, atol=0)
