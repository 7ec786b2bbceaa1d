"""The reference scan against a dead-simple per-timestep, per-state loop written here (float64 numpy)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from sepcli.kernels.scan_ref import selective_scan_ref
from tests.scan_cases import LAYOUTS, make_inputs


def loop_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Textbook recurrence, one scalar at a time: returns (out, last_state) as float64 numpy arrays."""
    u, delta, A = (np.asarray(t, dtype=np.float64) for t in (u, delta, A))
    Bn, Cn = np.asarray(B, dtype=np.float64), np.asarray(C, dtype=np.float64)
    b, d, l = u.shape
    n = A.shape[1]

    def coef(M, bi, di, k, t):
        if M.ndim == 2:
            return M[di, k]
        if M.ndim == 3:
            return M[bi, k, t]
        return M[bi, di // (d // M.shape[1]), k, t]

    out = np.zeros((b, d, l))
    last = np.zeros((b, d, n))
    for bi in range(b):
        for di in range(d):
            x = [0.0] * n
            for t in range(l):
                dt = delta[bi, di, t] + (float(delta_bias[di]) if delta_bias is not None else 0.0)
                if delta_softplus and dt <= 20.0:
                    dt = math.log1p(math.exp(dt))
                y = 0.0
                for k in range(n):
                    x[k] = math.exp(dt * A[di, k]) * x[k] + dt * coef(Bn, bi, di, k, t) * u[bi, di, t]
                    y += x[k] * coef(Cn, bi, di, k, t)
                if D is not None:
                    y += float(D[di]) * u[bi, di, t]
                if z is not None:
                    zz = float(z[bi, di, t])
                    y *= zz / (1.0 + math.exp(-zz))
                out[bi, di, t] = y
            last[bi, di] = x
    return out, last


FLAGS = list(itertools.product([False, True], repeat=4))  # D, z, delta_bias, softplus


@pytest.mark.parametrize("L", [1, 7, 40])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("flags", FLAGS[::3] + [FLAGS[-1]])
def test_reference_matches_loop_float64(L, layout, flags):
    has_D, has_z, has_bias, sp = flags
    kw = make_inputs(2, 4, L, 3, *layout, has_D, has_z, has_bias, sp, seed=L, dtype=torch.float64)
    out, last = selective_scan_ref(**kw, return_last_state=True)
    want, want_last = loop_scan(**{k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    assert out.dtype == torch.float64 and out.shape == (2, 4, L) and last.shape == (2, 4, 3)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(last.numpy(), want_last, rtol=1e-10, atol=1e-12)


def test_reference_float32_close_to_loop():
    kw = make_inputs(1, 4, 300, 4, "g2", "var", seed=3)
    out, last = selective_scan_ref(**kw, return_last_state=True)
    want, want_last = loop_scan(**{k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    assert out.dtype == torch.float32 and last.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last.numpy(), want_last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_half_inputs_computed_in_float32(dtype):
    kw = make_inputs(1, 4, 50, 4, "var", "var", seed=5)
    half = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    out = selective_scan_ref(**half)
    assert out.dtype == dtype
    # same half-rounded inputs, computed in float64 by the loop: only the final rounding differs
    want, _ = loop_scan(**{k: (v.double().numpy() if isinstance(v, torch.Tensor) else v) for k, v in half.items()})
    eps = 1e-3 if dtype == torch.float16 else 8e-3
    np.testing.assert_allclose(out.double().numpy(), want, rtol=eps, atol=eps)


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"u": torch.zeros(2, 4)}, "u must be"),
        ({"delta": torch.zeros(2, 4, 5)}, "delta must"),
        ({"A": torch.zeros(3, 3)}, "A must be"),
        ({"B": torch.zeros(2, 3, 3, 7)}, "groups"),
        ({"C": torch.zeros(2, 5, 7)}, "state size"),
        ({"D": torch.zeros(3)}, "D must be"),
        ({"z": torch.zeros(2, 4, 6)}, "z must"),
        ({"delta_bias": torch.zeros(5)}, "delta_bias must"),
    ],
)
def test_reference_rejects_bad_shapes(bad, msg):
    kw = make_inputs(2, 4, 7, 3, "var", "var")
    kw.update(bad)
    with pytest.raises(ValueError, match=msg):
        selective_scan_ref(**kw)
