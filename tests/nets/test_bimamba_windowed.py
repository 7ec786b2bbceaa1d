"""SPMamba's bidirectional Mamba layer over sequences longer than a chunk: the grouped path in time windows
(nets.bimamba_grouped.windowed_inference, the conv's and the scan's states carried across windows) against the
plain official-style path (MambaBlock.forward_plain) and the unwindowed grouped path (one window, no state
carried). The window kernels (nets.bimamba_kernels) are tested in test_bimamba_kernels.py."""

from __future__ import annotations

import pytest
import torch

from sepcli.kernels import selective_scan_ref
from sepcli.nets import bimamba, bimamba_grouped, bimamba_kernels
from sepcli.nets.bimamba import MambaBlock
from sepcli.nets.mamba import Workspace, selective_scan, workspace
from tests.testnets import perturbed_mamba_block, plain_channels_first

torch.set_num_threads(2)
pytestmark = pytest.mark.skipif(not bimamba_kernels.available(), reason="numba not installed")


def _block(d: int, seed: int, biases: bool) -> MambaBlock:
    return perturbed_mamba_block(d, seed, biases=biases)


_plain = plain_channels_first


@pytest.mark.parametrize("S,L,chunk,window_min", [
    (1, 37, 8, 256),  # one sequence, windows of 8 steps (5 windows of 7-8)
    (1, 50, 2, 256),  # windows of 2 steps: shorter than the conv's K = 4
    (3, 41, 8, 1),  # 3 sequences per window: windows of 2 steps
    (3, 23, 5, 2),  # groups of 2 + 1 sequences, windows of 2 steps
    (2, 29, 3, 256),  # one sequence per group, windows of 3 steps
    (1, 1100, 600, 256),  # 2 windows of 550 steps: longer than a 16-step chunk of the scan, partial chunks
])
@pytest.mark.parametrize("biases", [False, True])
def test_windowed_equals_plain_and_unwindowed(S, L, chunk, window_min, biases, monkeypatch):
    mb = _block(16, S * 1000 + L, biases)
    calls = []
    real = bimamba_grouped.windowed_inference
    monkeypatch.setattr(bimamba_grouped, "windowed_inference", lambda *a: calls.append((a[0].shape, a[5])) or real(*a))
    monkeypatch.setattr(bimamba, "WINDOW_MIN", window_min)
    x = torch.randn(S, 16, L)
    with torch.no_grad():
        want = _plain(mb, x)
        mb.chunk_tokens = 10**9
        whole = mb.forward_channels_first(x)  # the grouped path, one call
        assert not calls
        mb.chunk_tokens = chunk
        with workspace():
            got = mb.forward_channels_first(x)
    assert calls, "the windowed path did not run"
    group = max(1, min(S, chunk // window_min))
    assert [c[0][0] for c in calls] == [min(group, S - i) for i in range(0, S, group)]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, whole, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("window", [1, 3, 4, 7, 16, 33])
def test_windowed_inference_direct_any_window(window):
    # S > 1 sequences, lengths that are not multiples of the window, windows shorter than K; a workspace whose
    # buffers are reused by every window
    mb = _block(24, window, True)
    x = torch.randn(3, 24, 35)
    with torch.no_grad():
        weights = mb._fused_weights(x)
        assert bimamba_grouped.applies_windowed(x, weights)
        out = torch.full((3, 48, 35), float("nan"))
        bimamba_grouped.windowed_inference(x, weights, out, Workspace(), selective_scan, window)
        torch.testing.assert_close(out, _plain(mb, x), rtol=1e-4, atol=1e-4)


def test_windowed_bf16_gemms_equal_unwindowed_under_autocast(monkeypatch):
    # under bf16 autocast the projections run in bf16: windowed and unwindowed grouped paths round the same
    # products, the plain path under the same autocast agrees to bf16 rounding
    mb = _block(16, 5, True)
    x = torch.randn(2, 16, 45)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = _plain(mb, x).float()
        mb.chunk_tokens = 10**9
        whole = mb.forward_channels_first(x)
        mb.chunk_tokens = 8
        monkeypatch.setattr(bimamba, "WINDOW_MIN", 4)
        with workspace():
            got = mb.forward_channels_first(x)
    assert got.dtype == torch.float32
    scale = want.abs().max()
    assert (got - whole).abs().max() / scale < 1e-2
    assert (got - want).abs().max() / scale < 2e-2


def test_windowed_on_the_reference_scan(monkeypatch):
    # SEPCLI_SCAN=ref: the reference scan takes the initial state too (out contiguous, copied to channel-major)
    mb = _block(16, 6, False)
    x = torch.randn(2, 16, 19)
    monkeypatch.setenv("SEPCLI_SCAN", "ref")
    monkeypatch.setattr(bimamba, "WINDOW_MIN", 1)
    with torch.no_grad():
        assert bimamba_grouped.applies_windowed(x, mb._fused_weights(x))
        mb.chunk_tokens = 6
        got = mb.forward_channels_first(x)
        want = _plain(mb, x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("S,L,window", [(1, 37, None), (1, 122, 10**6), (3, 13, 13)])
def test_one_window_asks_the_scan_for_no_state(S, L, window):
    # grouped_inference (window None) or window >= L: one window, nothing carried, so a scan backend without
    # initial_state / return_last_state (only "ref" and "cpu" take a state) runs it; the result is the plain path's
    mb = _block(16, S * 100 + L, True)
    x = torch.randn(S, 16, L)
    calls = []

    def stateless_scan(*args, **kwargs):
        calls.append(sorted(kwargs))
        assert "initial_state" not in kwargs and not kwargs.get("return_last_state")
        return selective_scan_ref(*args, **kwargs)  # out contiguous: copied back to channel-major

    with torch.no_grad():
        weights = mb._fused_weights(x)
        out = torch.full((S, 32, L), float("nan"))
        if window is None:
            bimamba_grouped.grouped_inference(x, weights, out, Workspace(), stateless_scan)
        else:
            bimamba_grouped.windowed_inference(x, weights, out, Workspace(), stateless_scan, window)
        want = _plain(mb, x)
    assert len(calls) == 1
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_windowed_off_keeps_the_per_direction_path(monkeypatch):
    mb = _block(16, 7, False)
    monkeypatch.setattr(bimamba, "WINDOWED", False)
    monkeypatch.setattr(bimamba_grouped, "windowed_inference", None)  # would fail if called
    x = torch.randn(1, 16, 30)
    with torch.no_grad():
        mb.chunk_tokens = 8
        torch.testing.assert_close(mb.forward_channels_first(x), _plain(mb, x), rtol=1e-4, atol=1e-4)
