"""selective_scan dispatcher: backend choice, SEPCLI_SCAN override and errors."""

from __future__ import annotations

import pytest
import torch

from sepcli.kernels import ScanBackendError, available_backends, backend_for, selective_scan
from sepcli.kernels.scan_ref import selective_scan_ref
from tests.scan_cases import make_inputs


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
