"""The selective scan's initial state: a sequence scanned in consecutive pieces, each piece from the previous
piece's last state, equals one scan over the whole sequence (the reference, scan_ref, over the concatenation)."""

from __future__ import annotations

import pytest
import torch

from sepcli.kernels import ScanBackendError, selective_scan
from sepcli.kernels.scan_cpu import selective_scan_cpu
from sepcli.kernels.scan_ref import selective_scan_ref
from tests.scan_cases import make_inputs

torch.set_num_threads(2)


def _piece(kw: dict, t0: int, t1: int) -> dict:
    """The inputs of time steps [t0, t1) (variable B / C sliced along time, constant ones as they are)."""
    out = dict(kw)
    for k in ("u", "delta", "z"):
        if kw[k] is not None:
            out[k] = kw[k][..., t0:t1]
    for k in ("B", "C"):
        if kw[k].dim() > 2:
            out[k] = kw[k][..., t0:t1]
    return out


def _in_pieces(scan, kw: dict, cuts: list[int]):
    outs, h = [], None
    bounds = [0, *cuts, kw["u"].shape[-1]]
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        extra = {} if h is None else {"initial_state": h}
        y, h = scan(**_piece(kw, t0, t1), return_last_state=True, **extra)
        outs.append(y)
    return torch.cat(outs, -1), h


CASES = [  # (b, d, l, n, B layout, C layout, cuts)
    (2, 40, 77, 16, "g2", "g2", [1, 2, 5, 21, 40, 70]),  # the vector n = 16 kernel, pieces of 1..31 steps
    (1, 32, 1100, 16, "var", "var", [1030, 1099]),  # a piece longer than the kernel's time tile (1024 steps)
    (3, 17, 50, 16, "const", "var", [16, 33]),  # a partial channel block, constant B
    (2, 24, 45, 4, "var", "g2", [3, 4, 30]),  # n = 4: the generic numba loops
]


@pytest.mark.parametrize("case", CASES)
def test_cpu_scan_in_pieces_equals_reference_over_the_whole_sequence(case):
    b, d, l, n, bk, ck, cuts = case
    kw = make_inputs(b, d, l, n, bk, ck, seed=3)
    want, want_last = selective_scan_ref(**kw, return_last_state=True)
    got, last = _in_pieces(selective_scan_cpu, kw, cuts)
    torch.testing.assert_close(got, want, rtol=3e-5, atol=3e-5)
    torch.testing.assert_close(last, want_last, rtol=3e-5, atol=3e-5)
    # and through the dispatcher (the name the networks call)
    got2, last2 = _in_pieces(lambda **a: selective_scan(**a, backend="cpu"), kw, cuts)
    torch.testing.assert_close(got2, got, rtol=0, atol=0)
    torch.testing.assert_close(last2, last, rtol=0, atol=0)


def test_reference_scan_in_pieces_equals_one_call():
    kw = make_inputs(2, 6, 30, 5, "var", "const", seed=4)
    want, want_last = selective_scan_ref(**kw, return_last_state=True)
    got, last = _in_pieces(selective_scan_ref, kw, [7, 8, 19])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(last, want_last, rtol=1e-6, atol=1e-6)


def test_initial_state_enters_the_first_step_and_zero_state_changes_nothing():
    # h_1 = exp(dt A) h0 + dt B u: with u = 0 the output is the decayed initial state read through C alone
    kw = make_inputs(1, 16, 3, 16, "var", "var", has_D=False, has_z=False, seed=5)
    kw["u"] = torch.zeros_like(kw["u"])
    h0 = torch.randn(1, 16, 16)
    dt = torch.nn.functional.softplus(kw["delta"] + kw["delta_bias"][:, None])  # (1, d, l)
    decay = torch.exp(dt[0, :, 0, None] * kw["A"])  # (d, n)
    want0 = (decay * h0[0] * kw["C"][0, :, 0][None, :]).sum(-1)
    got = selective_scan_cpu(**kw, initial_state=h0)
    torch.testing.assert_close(got[0, :, 0], want0, rtol=1e-5, atol=1e-6)
    kw2 = make_inputs(2, 20, 9, 16, seed=6)
    torch.testing.assert_close(selective_scan_cpu(**kw2, initial_state=torch.zeros(2, 20, 16)),
                               selective_scan_cpu(**kw2), rtol=0, atol=0)


def test_initial_state_refused_where_unsupported(monkeypatch):
    import sepcli.kernels as kernels

    kw = make_inputs(1, 16, 5, 16, seed=7)
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan_cpu(**kw, initial_state=torch.zeros(1, 16, 8))
    grads = {k: (v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    with pytest.raises(NotImplementedError):
        selective_scan_cpu(**grads, initial_state=torch.zeros(1, 16, 16))
    monkeypatch.setattr(kernels, "_unavailable", lambda *a: None)  # as if mamba_ssm ran here: it takes no state
    with pytest.raises(ScanBackendError, match="initial_state"):
        selective_scan(**kw, initial_state=torch.zeros(1, 16, 16), backend="mamba_ssm")
