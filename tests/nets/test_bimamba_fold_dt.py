"""SPMamba's grouped Mamba path with dt_proj folded into the scan (nets.bimamba_grouped.FOLD_DT: the scan gets
delta_proj = (dt_proj's weight, x_proj's first r rows) instead of a delta tensor) against the same path with the
dt_proj GEMM and against the plain official-style path (MambaBlock.forward_plain): whole chunks and time windows,
the CPU and the reference scan, fp32 and bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from sepcli.nets import bimamba, bimamba_grouped, bimamba_kernels
from sepcli.nets.bimamba import MambaBlock
from sepcli.nets.mamba import workspace
from tests.testnets import perturbed_mamba_block, plain_channels_first

torch.set_num_threads(2)
pytestmark = pytest.mark.skipif(not bimamba_kernels.available(), reason="numba not installed")


def _block(d: int, seed: int) -> MambaBlock:
    return perturbed_mamba_block(d, seed, random_d=True)


_plain = plain_channels_first


def _spied_scan(monkeypatch):
    """Record, per scan call of the grouped path, whether it got delta_proj (and no delta)."""
    seen = []
    real = bimamba.selective_scan

    def scan(u, delta, *a, **kw):
        seen.append((delta is None, kw.get("delta_proj") is not None))
        return real(u, delta, *a, **kw)

    monkeypatch.setattr(bimamba, "selective_scan", scan)
    return seen


def _run_both(mb, x, chunk, monkeypatch, autocast=False):
    seen = _spied_scan(monkeypatch)
    outs = {}
    for fold in (True, False):
        monkeypatch.setattr(bimamba_grouped, "FOLD_DT", fold)
        seen.clear()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
        with torch.no_grad(), ctx, workspace():
            mb.chunk_tokens = chunk
            outs[fold] = mb.forward_channels_first(x).float()
        assert seen and all(s == (fold, fold) for s in seen), seen
    return outs


@pytest.mark.parametrize("S,L,chunk", [(7, 13, 40), (3, 122, 3 * 122), (4, 17, 10**9)])
def test_grouped_fold_equals_gemm_path_and_plain(S, L, chunk, monkeypatch):
    mb = _block(24, S * 100 + L)
    x = torch.randn(S, 24, L)
    outs = _run_both(mb, x, chunk, monkeypatch)
    torch.testing.assert_close(outs[True], outs[False], rtol=2e-5, atol=2e-5)
    with torch.no_grad():
        torch.testing.assert_close(outs[True], _plain(mb, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("S,L,chunk,window_min", [(1, 37, 8, 256), (3, 41, 8, 1), (1, 1100, 600, 256)])
def test_windowed_fold_equals_gemm_path_and_plain(S, L, chunk, window_min, monkeypatch):
    # time windows with the scan's state carried (initial_state) and windows shorter than a 16-step chunk
    calls = []
    real = bimamba_grouped.windowed_inference
    monkeypatch.setattr(bimamba_grouped, "windowed_inference", lambda *a: calls.append(a[5]) or real(*a))
    monkeypatch.setattr(bimamba, "WINDOW_MIN", window_min)
    mb = _block(16, S * 1000 + L)
    x = torch.randn(S, 16, L)
    outs = _run_both(mb, x, chunk, monkeypatch)
    assert calls, "the windowed path did not run"
    torch.testing.assert_close(outs[True], outs[False], rtol=2e-5, atol=2e-5)
    with torch.no_grad():
        torch.testing.assert_close(outs[True], _plain(mb, x), rtol=1e-4, atol=1e-4)


def test_fold_on_the_reference_scan(monkeypatch):
    monkeypatch.setenv("SEPCLI_SCAN", "ref")
    monkeypatch.setattr(bimamba, "WINDOW_MIN", 1)
    mb = _block(16, 6)
    x = torch.randn(2, 16, 19)
    outs = _run_both(mb, x, 6, monkeypatch)  # windowed (sequences longer than the chunk)
    torch.testing.assert_close(outs[True], outs[False], rtol=2e-5, atol=2e-5)
    with torch.no_grad():
        torch.testing.assert_close(outs[True], _plain(mb, x), rtol=1e-4, atol=1e-4)


def test_fold_under_bf16_autocast(monkeypatch):
    # bf16 GEMMs, bf16 z into the scan when SCAN_Z_DTYPE is None: the fold changes only where delta is computed
    monkeypatch.setattr(bimamba_grouped, "SCAN_Z_DTYPE", None)
    mb = _block(16, 8)
    x = torch.randn(5, 16, 30)
    outs = _run_both(mb, x, 60, monkeypatch, autocast=True)
    scale = outs[False].abs().max()
    assert (outs[True] - outs[False]).abs().max() / scale < 1e-2
