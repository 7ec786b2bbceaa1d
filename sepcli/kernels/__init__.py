"""Selective-scan kernels behind one entry point with mamba_ssm's `selective_scan_fn` contract.

    selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False) -> out (b, d, l)  |  (out, last_state (b, d, n))

plus two extensions: initial_state (b, d, n) and delta_proj = (W (d, r), dt_low (b, g, r, l)) with delta None
(delta in low rank, Mamba's dt_proj without its bias: "ref" and "cpu" take it, the CPU kernel computing it in its
row setup; for the other backends delta is computed here by torch first).

Backends (`backend_for(tensor)` names the one that would run):
- CUDA tensors: "mamba_ssm" (its CUDA kernel, when `mamba_ssm` imports), else "triton" (ours, when triton
  imports), else "ref".
- CPU tensors: "cpu" (fused numba kernel), else "ref" if numba is unavailable.
- `SEPCLI_SCAN=ref|cpu|triton|mamba_ssm` forces a backend; an unavailable forced backend raises
  `ScanBackendError` with a one-line reason. "triton" on CPU tensors needs `TRITON_INTERPRET=1` (tests).
All backends compute in float32 (float64 inputs in float64 on "ref"/"cpu") and return `out` in u's dtype.
"""

from __future__ import annotations

import importlib
import os
from functools import cache

import torch
from torch import Tensor

from ..errors import FailedError

from .scan_ref import check_delta_proj, low_rank_delta, selective_scan_ref

BACKENDS = ("ref", "cpu", "triton", "mamba_ssm")
INITIAL_STATE_BACKENDS = ("ref", "cpu")  # those taking selective_scan's initial_state
DELTA_PROJ_BACKENDS = ("ref", "cpu")  # those taking delta_proj (the others get delta computed by torch first)
ENV_VAR = "SEPCLI_SCAN"

__all__ = [
    "BACKENDS",
    "backend_for_device",
    "ScanBackendError",
    "available_backends",
    "backend_for",
    "selective_scan",
    "selective_scan_ref",
]


class ScanBackendError(FailedError, RuntimeError):
    """A requested scan backend cannot run here (not installed, or wrong device)."""


@cache
def _import_error(module: str) -> str | None:
    """None when `module` imports, else the one-line reason (imports are attempted once, lazily)."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001  (ImportError, or a broken CUDA extension raising anything)
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


_MODULES = {
    "cpu": "sepcli.kernels.scan_cpu",
    "triton": "sepcli.kernels.scan_triton",
    "mamba_ssm": "mamba_ssm.ops.selective_scan_interface",
}


def _unavailable(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot run on `device`, or None if it can."""
    if backend == "ref":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"the 'cpu' scan backend needs CPU tensors, got {device.type}"
        return _import_error(_MODULES["cpu"])
    if backend == "mamba_ssm":
        if device.type != "cuda":
            return f"the 'mamba_ssm' scan backend needs CUDA tensors, got {device.type}"
        return _import_error(_MODULES["mamba_ssm"])
    if backend == "triton":
        err = _import_error(_MODULES["triton"])
        if err:
            return err
        if device.type == "cpu" and not importlib.import_module(_MODULES["triton"]).INTERPRETED:
            return "the 'triton' scan backend on CPU tensors needs TRITON_INTERPRET=1 set before import"
        if device.type not in ("cpu", "cuda"):
            return f"the 'triton' scan backend needs CUDA tensors, got {device.type}"
        return None
    return f"unknown scan backend {backend!r} (known: {', '.join(BACKENDS)})"


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on `device` in this environment."""
    dev = torch.device(device)
    return [b for b in BACKENDS if _unavailable(b, dev) is None]


def backend_for(tensor: Tensor) -> str:
    """Name of the backend `selective_scan` would use for inputs living where `tensor` lives."""
    return backend_for_device(tensor.device)


def backend_for_device(device: torch.device | str) -> str:
    """Name of the backend `selective_scan` would use on `device` (SEPCLI_SCAN honoured)."""
    dev = torch.device(device)
    forced = os.environ.get(ENV_VAR, "").strip()
    if forced:
        why = _unavailable(forced, dev)
        if why:
            raise ScanBackendError(f"{ENV_VAR}={forced}: {why}")
        return forced
    order = ("mamba_ssm", "triton", "ref") if dev.type == "cuda" else ("cpu", "ref")
    for name in order:
        if _unavailable(name, dev) is None:
            return name
    return "ref"


def _fn(backend: str):
    if backend == "ref":
        return selective_scan_ref
    if backend == "cpu":
        return importlib.import_module(_MODULES["cpu"]).selective_scan_cpu
    if backend == "triton":
        return importlib.import_module(_MODULES["triton"]).selective_scan_triton
    return importlib.import_module(_MODULES["mamba_ssm"]).selective_scan_fn


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, backend: str | None = None,
                   initial_state: Tensor | None = None, delta_proj: tuple[Tensor, Tensor] | None = None):
    """Selective scan with mamba_ssm's `selective_scan_fn` semantics, on the best available backend.

    u, delta, z: (b, d, l); A: (d, n) real; B, C: (d, n), (b, n, l) or (b, g, n, l) with g dividing d;
    D, delta_bias: (d,). Returns out (b, d, l) in u's dtype, plus last_state (b, d, n) when asked
    (its gradient is not propagated, as in mamba_ssm). out is contiguous, except from the CPU kernel without
    gradients when u is channel-major (exactly a permuted contiguous [d, b, l] tensor, as SPMamba's grouped path
    passes): then out has u's layout, so that caller reads it without a copy (`.contiguous()` where needed).
    `backend` overrides the choice (and SEPCLI_SCAN). initial_state (b, d, n): the state before the first step
    (default zeros; "ref" and "cpu" only, "cpu" without gradients), so that a sequence can be scanned in
    consecutive pieces (each from the last state of the one before). delta_proj = (W (d, r), dt_low (b, g, r, l))
    with delta None: delta[b, c, t] = sum_k W[c, k] · dt_low[b, c // (d / g), k, t] (g groups of channels as B and
    C; dt_low may be a strided view, rows contiguous in time), computed by the CPU kernel's n = 16 vector forward
    in its row setup instead of a (b, d, l) delta tensor; torch computes delta first for the backends that do not
    take it (DELTA_PROJ_BACKENDS).
    """
    if backend is None:
        backend = backend_for(u)
    else:
        why = _unavailable(backend, u.device)
        if why:
            raise ScanBackendError(f"scan backend {backend}: {why}")
    extra = {}
    if delta_proj is not None or delta is None:
        check_delta_proj(u, delta, delta_proj)
        if backend in DELTA_PROJ_BACKENDS:
            extra["delta_proj"] = delta_proj
        else:
            cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
            delta = low_rank_delta(*delta_proj, cdt)
    if initial_state is not None:
        if backend not in INITIAL_STATE_BACKENDS:
            raise ScanBackendError(f"scan backend {backend}: no initial_state")
        extra["initial_state"] = initial_state
    return _fn(backend)(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, **extra)

