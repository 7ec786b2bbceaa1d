"""sepcli.kernels.threads: one fork guard and one lock for every module with numba parallel kernels (the CPU
scan, Mamba's causal convolution, S4M's fused block). A process forked after any of them started GNU OpenMP's
threads must run all of them serially (or on PyTorch's path), with the same results."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from sepcli.kernels import threads


def _pretend_forked_from_omp(monkeypatch):
    # the record a parent leaves after its first parallel kernel under GNU OpenMP, seen from another process
    monkeypatch.setattr(threads, "_PAR_PID", os.getpid() + 1)
    monkeypatch.setattr(threads, "_LAYER", "omp")


def test_forked_child_runs_no_parallel_kernel(monkeypatch):
    assert threads.fork_safe()
    _pretend_forked_from_omp(monkeypatch)
    assert not threads.fork_safe()
    assert threads.plan() == (False, 1)
    with threads.parallel_threads() as n:
        assert n == 0
    with threads.parallel_threads(single=True) as n:
        assert n == 0


def test_parallel_threads_follow_torch(monkeypatch):
    monkeypatch.setattr(threads, "_PAR_PID", None)
    monkeypatch.setattr(threads, "_LAYER", None)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with threads.parallel_threads() as n:
            assert n == 0  # one thread: the serial kernels
        with threads.parallel_threads(single=True) as n:
            assert n == 1  # kernels without a serial twin run on one numba thread
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("rows", [1, 2, 18])
def test_causal_conv_serial_in_forked_child_matches_the_formula(monkeypatch, rows):
    # reference: Mamba's depthwise conv1d (padding K - 1, cropped to L), then SiLU, in float64
    from sepcli.nets import causal_conv

    if not causal_conv.available():
        pytest.skip("numba missing")
    torch.manual_seed(3)
    conv = torch.nn.Conv1d(rows, rows, 4, groups=rows, padding=3).double()
    x = torch.randn(1, rows, 37)
    want = F.silu(conv(x.double())[..., :37])
    for forked in (False, True):
        if forked:
            _pretend_forked_from_omp(monkeypatch)
        out = torch.empty(1, rows, 37)
        causal_conv.conv_silu_rows_into(x, conv.weight.float(), conv.bias.float(), out)
        torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)


def test_s4m_fused_not_used_in_forked_child(monkeypatch):
    import sepcli.nets.s4m_fused as fused

    monkeypatch.setattr(fused, "FUSE_AFTER", 0)
    x = torch.zeros(1, 4, 8)
    with torch.inference_mode():  # the fused path runs only without autograd
        assert fused.usable(x)
        _pretend_forked_from_omp(monkeypatch)
        assert not fused.usable(x)


def test_bf16_pays_needs_a_real_true():
    from sepcli.nets.spmamba import SPMamba
    from sepcli.runtime import device

    # on the class the property is a (truthy) property object: not a yes
    assert device.bf16_pays(SPMamba) is False

    class Says:
        bf16_on_cpu_pays = True

    assert device.bf16_pays(Says()) is True
    assert device.bf16_pays(object()) is False
