"""Fused numba CPU scan against the reference: outputs, last states, gradients, gradcheck, threads, fork."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import threading

import numpy as np
import pytest
import torch

from sepcli.kernels import scan_cpu
from sepcli.kernels.scan_cpu import selective_scan_cpu
from sepcli.kernels.scan_ref import selective_scan_ref
from tests.scan_cases import LAYOUTS, TENSOR_KEYS, grad_inputs, make_inputs

# mamba_ssm's own fp32 tolerances are rtol=6e-4, atol=2e-3; ours are tighter.
RTOL, ATOL = 1e-4, 1e-4
FLAGS = list(itertools.product([False, True], repeat=4))  # D, z, delta_bias, softplus


def _check(kw, rtol=RTOL, atol=ATOL):
    out, last = selective_scan_cpu(**kw, return_last_state=True)
    ref, ref_last = selective_scan_ref(**kw, return_last_state=True)
    assert out.dtype == ref.dtype and out.shape == ref.shape and last.shape == ref_last.shape
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(last, ref_last, rtol=rtol, atol=atol)


@pytest.mark.parametrize("L", [1, 7, 128])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("flags", FLAGS)
def test_cpu_matches_reference_grid(L, layout, flags):
    _check(make_inputs(2, 4, L, 5, *layout, *flags, seed=L + 31 * sum(flags)))


@pytest.mark.parametrize("layout", [("var", "var"), ("g2", "const"), ("const", "g1")])
@pytest.mark.parametrize("flags", [(True, True, True, True), (False, False, False, False), (True, False, True, False)])
def test_cpu_matches_reference_L1000(layout, flags):
    _check(make_inputs(2, 4, 1000, 16, *layout, *flags, seed=7))


@pytest.mark.parametrize("layout", [("var", "var"), ("g2", "g2")])
def test_cpu_matches_reference_L4096(layout):
    _check(make_inputs(1, 4, 4096, 16, *layout, True, True, True, True, seed=11))


def test_cpu_state_size_not_power_of_two_and_large_batch():
    _check(make_inputs(3, 6, 50, 7, "g2", "var", seed=2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d, n", [(4, 8), (16, 16)])  # (16, 16): the vectorised n = 16 forward (scan_cpu_vec)
def test_cpu_half_inputs(dtype, d, n):
    kw = make_inputs(2, d, 64, n, "var", "var", seed=4)
    half = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    out = selective_scan_cpu(**half)
    ref = selective_scan_ref(**half)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)


def test_cpu_exp_accuracy():
    x = np.linspace(-87.0, 88.0, 100_001, dtype=np.float32)
    got = scan_cpu._vexp_check(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 2.5e-7  # ~2 ulp of float32


def test_cpu_softplus_and_sigmoid_accuracy():
    x = np.concatenate([np.linspace(-80.0, 40.0, 100_001), [0.0, 19.999, 20.0, 20.001]]).astype(np.float32)
    got = scan_cpu._softplus_check(x).astype(np.float64)
    want = torch.nn.functional.softplus(torch.from_numpy(x).double()).numpy()
    assert np.max(np.abs(got - want) / want) < 5e-7
    np.testing.assert_allclose(scan_cpu._softplus_check(x.astype(np.float64)), want, rtol=1e-14, atol=0)
    above = np.linspace(20.0, 1e4, 10_001).astype(np.float32)  # torch returns x itself above its threshold
    np.testing.assert_array_equal(scan_cpu._softplus_check(above), above)
    for dtype in (np.float32, np.float64):
        got = scan_cpu._softplus_check(np.array([-np.inf, np.inf], dtype))  # float32 exp stops near 2**-126
        np.testing.assert_allclose(got, [0.0, np.inf], rtol=0, atol=2e-38)


def _grad_compare(kw, rtol=2e-4, atol=1e-4):
    a, r = grad_inputs(kw), grad_inputs(kw)
    out = selective_scan_cpu(**a)
    ref = selective_scan_ref(**r)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * g).sum().backward()
    (ref * g).sum().backward()
    for key in TENSOR_KEYS:
        if a[key] is None:
            continue
        scale = r[key].grad.abs().max().clamp_min(1.0)
        torch.testing.assert_close(a[key].grad / scale, r[key].grad / scale, rtol=rtol, atol=atol,
                                   msg=lambda m, key=key: f"grad {key}: {m}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("flags", [(True, True, True, True), (False, False, False, False), (True, True, False, True),
                                   (False, True, True, False)])
def test_cpu_gradients_match_reference(layout, flags):
    _grad_compare(make_inputs(2, 4, 37, 5, *layout, *flags, seed=9))


def test_cpu_gradients_long_sequence():
    _grad_compare(make_inputs(1, 4, 1000, 16, "g2", "var", seed=12))


def test_cpu_gradcheck_float64():
    for layout, flags in [(("g2", "var"), (True, True, True, True)), (("const", "g2"), (False, False, False, False))]:
        kw = make_inputs(1, 2, 5, 3, *layout, *flags, seed=13, dtype=torch.float64)
        keys = [k for k in TENSOR_KEYS if kw[k] is not None]
        sp = kw["delta_softplus"]

        def f(*xs, keys=keys, sp=sp):
            return selective_scan_cpu(**dict(zip(keys, xs)), delta_softplus=sp)

        assert torch.autograd.gradcheck(f, tuple(kw[k].requires_grad_(True) for k in keys))


def test_cpu_last_state_has_no_grad_and_no_graph_when_not_needed():
    kw = make_inputs(1, 2, 9, 3, seed=1)
    out, last = selective_scan_cpu(**kw, return_last_state=True)
    assert not out.requires_grad and not last.requires_grad
    a = grad_inputs(kw)
    out, last = selective_scan_cpu(**a, return_last_state=True)
    assert out.requires_grad and not last.requires_grad


def test_cpu_concurrent_threads_agree():
    kws = [make_inputs(1, 8, 200, 16, seed=s) for s in range(4)]
    want = [selective_scan_ref(**kw) for kw in kws]
    got: list = [None] * 4
    errors: list = []

    def work(i):
        try:
            for _ in range(3):
                got[i] = selective_scan_cpu(**kws[i])
        except Exception as exc:  # noqa: BLE001  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL)


def _child(q):
    kw = make_inputs(1, 8, 100, 16, seed=3)
    q.put(float((selective_scan_cpu(**kw) - selective_scan_ref(**kw)).abs().max()))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_cpu_works_in_forked_child_after_parent_used_it():
    kw = make_inputs(1, 8, 100, 16, seed=3)
    selective_scan_cpu(**kw)  # parent starts its threads first
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(timeout=60)
    if p.is_alive():  # pragma: no cover
        p.kill()
        pytest.fail("forked child hung in the CPU scan")
    assert p.exitcode == 0
    assert q.get(timeout=5) < 1e-4


def test_cpu_threads_follow_torch():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert scan_cpu.threads_for_call() == 1
    finally:
        torch.set_num_threads(old)


def test_cpu_rejects_bad_shapes():
    kw = make_inputs(2, 4, 7, 3)
    kw["B"] = torch.zeros(2, 3, 3, 7)
    with pytest.raises(ValueError, match="groups"):
        selective_scan_cpu(**kw)


# --- the forward's channel blocks (W channels per vector lane block; tails, groups, layouts) -------------------


@pytest.mark.parametrize("d,layout", [(38, ("g2", "g2")), (33, ("var", "const")), (50, ("const", "var")),
                                      (20, ("g2", "var")), (1, ("var", "var"))])
@pytest.mark.parametrize("L,n", [(1, 16), (5, 1), (70, 17)])
def test_cpu_channel_blocks_with_tails_match_reference(d, layout, L, n):
    """Channel counts not divisible by the block width, groups of 19 channels (blocks must not span two groups),
    one channel, one step, d_state 1 and 17."""
    _check(make_inputs(2, d, L, n, *layout, seed=d + L + n))


@pytest.mark.parametrize("d,groups", [(1024, 2), (38, 2), (96, 3), (48, 1), (7, 7)])
def test_cpu_blocks_cover_each_channel_once_within_a_group(d, groups):
    p = {"var_b": True, "var_c": True, "dpg_b": d // groups, "dpg_c": d // groups}
    blk = scan_cpu._blocks(2, d, p)
    for b in range(2):
        rows = blk[blk[:, 0] == b]
        chans = np.concatenate([np.arange(d0, d0 + w) for _, d0, w in rows])
        np.testing.assert_array_equal(np.sort(chans), np.arange(d))
        assert np.all(rows[:, 2] >= 1) and np.all(rows[:, 2] <= scan_cpu.W)
        assert np.all(rows[:, 1] // (d // groups) == (rows[:, 1] + rows[:, 2] - 1) // (d // groups))


def spmamba_like_views(b: int, d: int, l: int, n: int, seed: int = 5) -> dict:
    """Inputs as SPMamba passes them: u/delta/z as transposed views, B and C sliced out of one projection
    tensor."""
    g = torch.Generator().manual_seed(seed)
    kw = make_inputs(b, d, l, n, "g2", "g2", seed=seed)
    for key in ("u", "delta", "z"):
        kw[key] = kw[key].transpose(1, 2).contiguous().transpose(1, 2)
        assert not kw[key].is_contiguous()
    dbl = torch.randn(b, 2, 8 + 2 * n, l, generator=g)
    kw["B"], kw["C"] = dbl[:, :, 8:8 + n], dbl[:, :, 8 + n:]
    assert not kw["B"].is_contiguous()
    return kw


def test_cpu_noncontiguous_inputs_as_spmamba_passes_them():
    _check(spmamba_like_views(2, 40, 33, 16))


def test_cpu_float64_forward_with_tails():
    """n = 16 in float64 takes the exact (libm exp) loops, not the float32 vector kernel."""
    kw = make_inputs(2, 21, 40, 16, "g1", "var", seed=8, dtype=torch.float64)
    out, last = selective_scan_cpu(**kw, return_last_state=True)
    ref, ref_last = selective_scan_ref(**kw, return_last_state=True)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-12)


def test_cpu_inner_loop_exp_accuracy_and_range():
    x = np.linspace(-87.0, 88.0, 100_001, dtype=np.float32)
    got = scan_cpu._vexp_check(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 2.5e-7  # ~2 ulp of float32, as the other exp
    ext = scan_cpu._vexp_check(np.array([-1e4, -200.0, 0.0, 200.0, 1e4], np.float32))
    assert np.all(np.isfinite(ext)) and ext[2] == 1.0
    assert 0.0 < ext[0] < 2e-38 and ext[0] == ext[1]  # clamped at the bottom of the normal range, not garbage
    assert ext[3] > 1e38 and ext[3] == ext[4]
    np.testing.assert_allclose(scan_cpu._vexp_check(x[::97].astype(np.float64)),
                               np.exp(x[::97].astype(np.float64)), rtol=1e-15)
