"""S4D layer: the FFT convolution equals stepping the discretised state-space recurrence sample by sample."""

import torch

from sepcli.nets.s4 import S4D


def recurrence(layer: S4D, u: torch.Tensor) -> torch.Tensor:
    """Plain per-sample recurrence: h_t = dA h_{t-1} + dB u_t, y_t = 2 Re(C h_t) (causal channel), and the
    same run backwards in time and shifted by one sample (anticausal channel: y_t += sum_{m>=1} K'[m-1] u_{t+m})."""
    k = layer.kernel
    dt = torch.exp(k.log_dt.double())
    a = torch.complex(-torch.exp(k.log_a_real.double()), k.a_imag.double())
    da = torch.exp(a * dt[:, None])
    db = (da - 1) / a
    c = torch.view_as_complex(k.c.double().contiguous())  # [2, H, N2]
    b, h, length = u.shape
    u = u.double()
    y = torch.zeros(b, h, length, dtype=torch.float64)
    state = torch.zeros(b, h, da.shape[1], dtype=torch.complex128)
    for t in range(length):
        state = da * state + db * u[:, :, t, None]
        y[:, :, t] += 2 * (c[0] * state).sum(-1).real
    state = torch.zeros_like(state)
    for t in range(length - 1, -1, -1):
        y[:, :, t] += 2 * (c[1] * state).sum(-1).real  # state holds u_{t+1..}: strictly anticausal
        state = da * state + db * u[:, :, t, None]
    return y


def test_fft_convolution_matches_recurrence():
    torch.manual_seed(0)
    layer = S4D(d_model=6, d_state=8, bidirectional=True)
    u = torch.randn(2, 6, 150)
    got = layer.conv(u).double()
    want = recurrence(layer, u)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_causal_only_layer_ignores_the_future():
    torch.manual_seed(1)
    layer = S4D(d_model=4, d_state=8, bidirectional=False)
    u = torch.randn(1, 4, 64)
    u2 = u.clone()
    u2[..., 40:] = torch.randn(1, 4, 24)
    assert torch.allclose(layer.conv(u)[..., :40], layer.conv(u2)[..., :40], atol=1e-5)


def test_kernel_cached_in_inference_and_invalidated_on_change():
    torch.manual_seed(2)
    layer = S4D(d_model=4, d_state=8).eval()
    u = torch.randn(1, 4, 32)
    with torch.no_grad():
        first = layer(u)
        assert len(layer._cache) == 1
        cached = next(iter(layer._cache.values()))[1]
        again = layer(u)
        assert next(iter(layer._cache.values()))[1] is cached  # reused, not recomputed
        assert torch.equal(first, again)
        layer.kernel.log_dt.add_(0.5)  # a parameter change must not serve a stale kernel
        changed = layer(u)
    assert not torch.allclose(first, changed)
    fresh = S4D(d_model=4, d_state=8)
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(u), changed, atol=1e-6)
    layer.train()
    assert not layer._cache


def test_layer_built_in_inference_mode_runs_and_sees_in_place_changes():
    """Inference tensors have no version counter: a layer built inside torch.inference_mode must still run (it
    raised "Inference tensors do not track version counter"), equal a normally built layer with the same weights,
    and not serve a stale kernel after an in-place parameter change."""
    torch.manual_seed(3)
    ref = S4D(d_model=4, d_state=8).eval()
    u = torch.randn(1, 4, 32)
    with torch.inference_mode():
        layer = S4D(d_model=4, d_state=8).eval()
        layer.load_state_dict(ref.state_dict())
        first, again = layer(u), layer(u)
        layer.kernel.log_dt.add_(0.5)
        changed = layer(u)
    with torch.no_grad():
        want = ref(u)
        ref.kernel.log_dt.add_(0.5)
        want_changed = ref(u)
    assert torch.allclose(first, want, atol=1e-6) and torch.equal(first, again)
    assert torch.allclose(changed, want_changed, atol=1e-6) and not torch.allclose(first, changed)
