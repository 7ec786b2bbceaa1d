"""Backward of the fused CPU scan (scan_cpu_bwd) against autograd through the plain reference, in float64.

Covers what the design introduces: channel blocks of 16 lanes (tails, groups), state tiles of 16 (n padded),
time segments (l above the segment length), constant/variable B and C, optional D/z/bias/softplus, l = 1,
non-contiguous inputs, float64 inputs, and several threads agreeing with one thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sepcli.kernels import scan_cpu_bwd, scan_cpu_ckpt
from sepcli.kernels.scan_cpu import _blocks, _prepare, scan_forward, selective_scan_cpu
from sepcli.kernels.scan_ref import selective_scan_ref
from tests.scan_cases import TENSOR_KEYS, grad_inputs, make_inputs


def _grads(fn, kw, g):
    a = grad_inputs(kw)
    (fn(**a) * g).sum().backward()
    return {k: a[k].grad for k in TENSOR_KEYS if a[k] is not None}


def _check_grads(kw, rtol=2e-4, atol=1e-4):
    """float32 kernel gradients vs float64 autograd through the reference (same inputs, cast up)."""
    g = torch.randn(kw["u"].shape, generator=torch.Generator().manual_seed(3), dtype=kw["u"].dtype)
    got = _grads(selective_scan_cpu, kw, g)
    kw64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    want = _grads(selective_scan_ref, kw64, g.double())
    assert set(got) == set(want)
    for key, w in want.items():
        assert got[key].dtype == kw[key].dtype and got[key].shape == kw[key].shape
        scale = w.abs().max().clamp_min(1.0)
        torch.testing.assert_close(got[key].double() / scale, w / scale, rtol=rtol, atol=atol,
                                   msg=lambda m, key=key: f"grad {key}: {m}")
    return got


@pytest.mark.parametrize("n", [16, 5, 17, 32])
@pytest.mark.parametrize("d,layout", [(16, ("var", "var")), (20, ("g2", "var")), (38, ("g2", "g2")),
                                      (33, ("const", "g1")), (7, ("var", "const"))])
def test_bwd_blocks_tiles_and_layouts(n, d, layout):
    """Channel counts with block tails and groups of 10/19 channels, n below/above/at a tile of 16 states."""
    _check_grads(make_inputs(2, d, 23, n, *layout, seed=n + d))


@pytest.mark.parametrize("flags", [(False, False, False, False), (True, False, False, False),
                                   (False, True, False, True), (False, False, True, False),
                                   (True, True, True, True)])
@pytest.mark.parametrize("layout", [("const", "const"), ("var", "g2")])
def test_bwd_optional_inputs(flags, layout):
    """With and without D, z, delta_bias and softplus (their gradients are None when absent)."""
    _check_grads(make_inputs(2, 18, 17, 16, *layout, *flags, seed=sum(flags) + 5))


@pytest.mark.parametrize("layout", [("var", "var"), ("const", "const"), ("g2", "const")])
def test_bwd_single_step(layout):
    _check_grads(make_inputs(3, 18, 1, 16, *layout, seed=4))


@pytest.mark.parametrize("L", [scan_cpu_bwd.SEG, scan_cpu_bwd.SEG + 1, 2 * scan_cpu_bwd.SEG + 37])
def test_bwd_time_segments(L):
    """One segment exactly, one step over, and three segments (start states from the checkpoint pass)."""
    _check_grads(make_inputs(1, 18, L, 16, "g2", "var", seed=L), rtol=5e-4, atol=2e-4)


@pytest.mark.parametrize("n,layout", [(16, ("const", "const")), (16, ("var", "const")), (16, ("const", "g2")),
                                      (20, ("g2", "var"))])
def test_bwd_checkpoint_pass_layouts(n, layout):
    """Three segments with the n = 16 checkpoint pass (the vectorised forward's time loop, one variant per
    constant/variable B and C) and with the generic one (n = 20: padded tiles)."""
    _check_grads(make_inputs(1, 18, 2 * scan_cpu_bwd.SEG + 5, n, *layout, seed=n), rtol=5e-4, atol=2e-4)


def test_bwd_float64_segments_match_reference_tightly():
    kw = make_inputs(1, 6, scan_cpu_bwd.SEG + 9, 5, "g2", "var", seed=2, dtype=torch.float64)
    g = torch.randn(kw["u"].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got, want = _grads(selective_scan_cpu, kw, g), _grads(selective_scan_ref, kw, g)
    for key, w in want.items():
        torch.testing.assert_close(got[key], w, rtol=1e-9, atol=1e-11, msg=lambda m, key=key: f"grad {key}: {m}")


def test_bwd_noncontiguous_inputs_as_spmamba_passes_them():
    g = torch.Generator().manual_seed(6)
    b, d, l, n = 2, 40, 29, 16
    kw = make_inputs(b, d, l, n, "g2", "g2", seed=6)
    for key in ("u", "delta", "z"):
        kw[key] = kw[key].transpose(1, 2).contiguous().transpose(1, 2)
    dbl = torch.randn(b, 2, 8 + 2 * n, l, generator=g)
    kw["B"], kw["C"] = dbl[:, :, 8:8 + n], dbl[:, :, 8 + n:]
    assert not kw["B"].is_contiguous() and not kw["u"].is_contiguous()
    _check_grads(kw)


@pytest.mark.parametrize("n,layout", [(16, ("g2", "var")), (5, ("const", "g2")), (20, ("var", "const"))])
def test_bwd_float64_matches_reference_tightly(n, layout):
    kw = make_inputs(2, 22, 40, n, *layout, seed=n, dtype=torch.float64)
    g = torch.randn(kw["u"].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got, want = _grads(selective_scan_cpu, kw, g), _grads(selective_scan_ref, kw, g)
    for key, w in want.items():
        assert got[key].dtype == torch.float64
        torch.testing.assert_close(got[key], w, rtol=1e-9, atol=1e-11, msg=lambda m, key=key: f"grad {key}: {m}")


@pytest.mark.parametrize("layout", [("g2", "g2"), ("const", "var")])
def test_bwd_threads_agree_with_one_thread(layout):
    """Per-thread accumulators of the shared B/C gradients, summed: the same result as one thread."""
    kw = make_inputs(3, 40, 300, 16, *layout, seed=8)
    g = torch.randn(kw["u"].shape, generator=torch.Generator().manual_seed(3))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _grads(selective_scan_cpu, kw, g)
        torch.set_num_threads(2)
        two = _grads(selective_scan_cpu, kw, g)
    finally:
        torch.set_num_threads(old)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


def test_bwd_empty_length():
    kw = grad_inputs(make_inputs(1, 4, 0, 16, "var", "var", seed=1))
    selective_scan_cpu(**kw).sum().backward()
    assert kw["u"].grad.shape == (1, 4, 0) and float(kw["A"].grad.abs().sum()) == 0.0


# --- the autograd forward's checkpoints (scan_cpu_ckpt) and the backward's own checkpoint pass ---------------


@pytest.mark.parametrize("layout", [("var", "var"), ("g2", "const"), ("const", "g2"), ("const", "const")])
def test_forward_checkpoints_are_the_states_at_segment_starts(layout):
    """scan_forward_ckpt: the same output and last state as scan_forward, bit for bit, and checkpoint s of each
    channel block equal to the last state of a scan over the first s·SEG steps (an independent forward call)."""
    seg = scan_cpu_ckpt.SEG
    d, L = 36, 2 * seg + 45  # groups of 18 channels (a block of 16 and a tail of 2); three segments, the last short
    kw = make_inputs(2, d, L, 16, *layout, seed=11)
    out, last, ck = scan_cpu_ckpt.scan_forward_ckpt(**kw)
    out0, last0 = scan_forward(**kw)
    assert torch.equal(out, out0) and torch.equal(last, last0)
    assert ck.shape[1:] == (3, 16, 16)
    assert scan_cpu_ckpt.scan_forward_ckpt(**make_inputs(1, 16, seg, 16, seed=1))[2] is None  # one segment: none
    p = _prepare(*(kw[k] for k in TENSOR_KEYS))
    blk = _blocks(2, d, p)
    assert ck.shape[0] == len(blk)
    for s in range(3):
        if s:
            part = {k: (v[..., :s * seg] if isinstance(v, torch.Tensor) and v.dim() >= 3 and v.shape[-1] == L
                        else v) for k, v in kw.items()}
            want = scan_forward(**part)[1].numpy()  # (b, d, n)
        else:
            want = np.zeros((2, d, 16), np.float32)
        for i, (b, d0, w) in enumerate(blk):
            np.testing.assert_allclose(ck[i, s, :, :w].T, want[b, d0:d0 + w], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("n,layout", [(16, ("var", "var")), (16, ("g2", "const")), (16, ("const", "g2")),
                                      (16, ("const", "const"))])
def test_bwd_with_and_without_forward_checkpoints(n, layout):
    """The backward from the forward's checkpoints and with its own checkpoint pass (scan_backward called without
    them): the same gradients, both against the reference (three segments, the last one short)."""
    kw = make_inputs(1, 22, 2 * scan_cpu_bwd.SEG + 19, n, *layout, seed=n + 7)
    got = _check_grads(kw, rtol=5e-4, atol=2e-4)  # through SelectiveScanCPU: the forward's checkpoints
    a = {k: kw[k] for k in TENSOR_KEYS}
    dout = torch.randn(kw["u"].shape, generator=torch.Generator().manual_seed(3))
    own = scan_cpu_bwd.scan_backward(tuple(a.values()), True, dout)
    _, _, ck = scan_cpu_ckpt.scan_forward_ckpt(**kw)
    kept = scan_cpu_bwd.scan_backward(tuple(a.values()), True, dout, ck)
    for key, x, y in zip(TENSOR_KEYS, own, kept):
        torch.testing.assert_close(y, x, rtol=2e-5, atol=2e-5, msg=lambda m, key=key: f"grad {key}: {m}")
    assert set(got) == set(TENSOR_KEYS)
