"""selective_scan dispatcher: backend choice, SEPCLI_SCAN override and errors, bidirectional helper."""

from __future__ import annotations

import pytest
import torch

from sepcli.kernels import (
    ScanBackendError,
    available_backends,
    backend_for,
    selective_scan,
    selective_scan_bidirectional,
)
from sepcli.kernels.scan_ref import selective_scan_ref
from tests.scan_cases import TENSOR_KEYS, grad_inputs, make_inputs


def test_cpu_tensors_use_cpu_kernel(monkeypatch):
    monkeypatch.delenv("SEPCLI_SCAN", raising=False)
    assert backend_for(torch.zeros(1)) == "cpu"
    assert {"ref", "cpu"} <= set(available_backends("cpu"))
    assert "mamba_ssm" not in available_backends("cpu")


@pytest.mark.parametrize("name", ["ref", "cpu"])
def test_forced_backend_runs_and_matches(monkeypatch, name):
    monkeypatch.setenv("SEPCLI_SCAN", name)
    kw = make_inputs(2, 4, 50, 6, "g2", "var", seed=1)
    assert backend_for(kw["u"]) == name
    out, last = selective_scan(**kw, return_last_state=True)
    ref, ref_last = selective_scan_ref(**kw, return_last_state=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, ref_last, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, msg", [("mamba_ssm", "needs CUDA"), ("bogus", "unknown scan backend")])
def test_forced_unavailable_backend_is_a_clear_error(monkeypatch, name, msg):
    monkeypatch.setenv("SEPCLI_SCAN", name)
    kw = make_inputs(1, 2, 5, 3)
    with pytest.raises(ScanBackendError, match=msg) as info:
        selective_scan(**kw)
    assert "\n" not in str(info.value) and "SEPCLI_SCAN" in str(info.value)


def test_explicit_backend_argument(monkeypatch):
    monkeypatch.delenv("SEPCLI_SCAN", raising=False)
    kw = make_inputs(1, 2, 5, 3)
    torch.testing.assert_close(selective_scan(**kw, backend="ref"), selective_scan(**kw, backend="cpu"),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ScanBackendError):
        selective_scan(**kw, backend="mamba_ssm")


def _flip_time(kw):
    out = dict(kw)
    for k in ("u", "delta", "z"):
        if kw[k] is not None:
            out[k] = kw[k].flip(-1)
    for k in ("B", "C"):
        if kw[k].dim() > 2:
            out[k] = kw[k].flip(-1)
    return out


@pytest.mark.parametrize("layout, flags", [(("var", "g2"), (True, True, True, True)),
                                           (("const", "const"), (False, False, False, False))])
def test_bidirectional_equals_two_scans(layout, flags):
    sp = flags[-1]
    fwd = make_inputs(2, 4, 40, 5, *layout, *flags, seed=1)
    bwd = make_inputs(2, 4, 40, 5, *layout, *flags, seed=2)
    strip = lambda kw: {k: kw[k] for k in TENSOR_KEYS}
    a_f, a_b = grad_inputs(strip(fwd)), grad_inputs(strip(bwd))
    out_f, out_b = selective_scan_bidirectional(a_f, a_b, delta_softplus=sp)
    r_f, r_b = grad_inputs(strip(fwd)), grad_inputs(strip(bwd))
    ref_f = selective_scan_ref(**r_f, delta_softplus=sp)
    ref_b = selective_scan_ref(**_flip_time(r_b), delta_softplus=sp).flip(-1)
    torch.testing.assert_close(out_f, ref_f, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_b, ref_b, rtol=1e-4, atol=1e-4)
    (out_f.sum() + (out_b * 2).sum()).backward()
    (ref_f.sum() + (ref_b * 2).sum()).backward()
    for key in TENSOR_KEYS:
        if r_f[key] is not None:
            torch.testing.assert_close(a_f[key].grad, r_f[key].grad, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(a_b[key].grad, r_b[key].grad, rtol=1e-4, atol=1e-4)


def test_bidirectional_rejects_mismatched_optionals():
    fwd = {k: v for k, v in make_inputs(1, 2, 5, 3, seed=1).items() if k in TENSOR_KEYS}
    bwd = dict(fwd, D=None)
    with pytest.raises(ValueError, match="D must be given for both"):
        selective_scan_bidirectional(fwd, bwd)


def test_cuda_choice_without_mamba_ssm(monkeypatch):
    # No GPU here, but the choice for a CUDA device is pure logic: mamba_ssm if importable, else Triton.
    import importlib.util

    from sepcli.kernels import backend_for_device

    monkeypatch.delenv("SEPCLI_SCAN", raising=False)
    has_mamba = importlib.util.find_spec("mamba_ssm") is not None
    has_triton = importlib.util.find_spec("triton") is not None
    want = "mamba_ssm" if has_mamba else ("triton" if has_triton else "ref")
    assert backend_for_device("cuda") == want
    monkeypatch.setenv("SEPCLI_SCAN", "cpu")
    with pytest.raises(ScanBackendError, match="needs CPU tensors"):
        backend_for_device("cuda")
