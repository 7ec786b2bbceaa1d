"""The selective scan with delta in low rank (delta_proj = (W (d, r), dt_low (b, g, r, l)), delta None): the CPU
kernel's n = 16 vector forward computes delta = W @ dt_low per group of channels in its row setup. Checked
against scan_ref given delta computed by torch (einsum, float64), over the strided layouts the grouped Mamba path
passes (dt_low a view of x_proj's channel-major output, u / z channel-major), g = 1 and 2, row lengths around
the kernel's 16-step chunks, bfloat16 u / z, the optional D / z / bias / softplus, and a sequence scanned in pieces
with the state carried; plus the dispatcher and the fallbacks (other n, float64, autograd)."""

from __future__ import annotations

import itertools

import pytest
import torch

from sepcli import kernels
from sepcli.kernels import scan_cpu_vec, selective_scan
from sepcli.kernels.scan_cpu import selective_scan_cpu
from sepcli.kernels.scan_ref import selective_scan_ref
from tests.kernels.test_scan_cpu import ATOL, RTOL
from tests.kernels.test_scan_cpu_strided import VIEWS
from tests.scan_cases import make_inputs

torch.set_num_threads(2)
R = 8  # SPMamba's dt_rank


def _contiguous(low):
    return low.contiguous()


def _x_proj_slice(low):
    """dt_low as the first r rows of a (b, g, r + 2n, l) projection output (a (g) stride of (r + 2n)·l)."""
    b, g, r, l = low.shape
    buf = torch.full((b, g, r + 32, l), float("nan"))
    buf[:, :, :r] = low
    return buf[:, :, :r]


def _channel_major_dbl(low):
    """As nets.bimamba_grouped passes it: x_proj's output [g, r + 2n, b, l] seen as (b, g, r + 2n, l), rows :r."""
    b, g, r, l = low.shape
    buf = torch.full((g, r + 32, b, l), float("nan"))
    buf[:, :r] = low.permute(1, 2, 0, 3)
    return buf.permute(2, 0, 1, 3)[:, :, :r]


def _padded(low, pad=3):
    b, g, r, l = low.shape
    buf = torch.full((b, g, r, l + pad), float("nan"))
    buf[..., :l] = low
    return buf[..., :l]


LOW_VIEWS = {"contiguous": _contiguous, "x_proj_slice": _x_proj_slice, "channel_major": _channel_major_dbl,
             "padded": _padded}


def _lowrank(kw, g, seed, r=R):
    """kw with delta replaced by delta_proj = (W, dt_low) of about the same spread (dt = softplus(delta + bias))."""
    b, d, l = kw["u"].shape
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(d, r, generator=gen) / r ** 0.5
    low = 0.5 * torch.randn(b, g, r, l, generator=gen) - (0.4 if kw["delta_softplus"] else 0.0)
    if not kw["delta_softplus"]:  # keep dt = delta + bias > 0 mostly small: W >= 0, dt_low in [0, 0.1)
        W = W.abs()
        low = 0.1 * torch.rand(b, g, r, l, generator=gen)
    return {**kw, "delta": None, "delta_proj": (W, low)}


def _reference(kw):
    """scan_ref in float64 on delta = einsum(W, dt_low) computed by torch."""
    W, low = kw["delta_proj"]
    b, d, l = kw["u"].shape
    g = low.shape[1]
    delta = torch.einsum("gcr,bgrl->bgcl", W.double().view(g, d // g, -1), low.double()).reshape(b, d, l)
    up = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items() if k != "delta_proj"}
    out, last = selective_scan_ref(**{**up, "delta": delta}, return_last_state=True)
    return out.float(), last.float()


def _spy(monkeypatch):
    seen = []
    for name in ("fold_ser", "fold_par"):
        real = getattr(scan_cpu_vec, name)

        def spy(*a, real=real):
            seen.append(a)
            return real(*a)

        monkeypatch.setattr(scan_cpu_vec, name, spy)
    return seen


def _check(kw, monkeypatch=None, rtol=RTOL, atol=ATOL):
    seen = _spy(monkeypatch) if monkeypatch is not None else None
    out, last = selective_scan_cpu(**kw, return_last_state=True)
    ref, ref_last = _reference(kw)
    torch.testing.assert_close(out.float(), ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(last, ref_last, rtol=RTOL, atol=ATOL)
    if seen is not None:  # the folded kernel ran, dt_low read in place (its [0, 0, 0, 0] starts the flat storage)
        assert len(seen) == 1
        low = kw["delta_proj"][1]
        assert seen[0][-1][1].ctypes.data == low.data_ptr()
        assert seen[0][3] is seen[0][2]  # no delta rows: u's array stands in
    return out, last


@pytest.mark.parametrize("low_view", list(LOW_VIEWS))
@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("l", [1, 7, 16, 17, 122, 494])
def test_folded_delta_matches_reference_over_lengths_and_layouts(low_view, g, l, monkeypatch):
    kw = _lowrank(make_inputs(2, 48, l, 16, "g2", "g2", seed=l + g), g, seed=l * 10 + g)
    kw["delta_proj"] = (kw["delta_proj"][0], LOW_VIEWS[low_view](kw["delta_proj"][1]))
    _check(kw, monkeypatch)


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("l", [5, 17, 122])
def test_folded_delta_with_strided_u_and_z(view, l, monkeypatch):
    kw = _lowrank(make_inputs(3, 32, l, 16, "g2", "g2", seed=l), 2, seed=l + 1)
    kw["u"], kw["z"] = VIEWS[view](kw["u"]), VIEWS[view](kw["z"])
    kw["delta_proj"] = (kw["delta_proj"][0], _channel_major_dbl(kw["delta_proj"][1]))
    out, _ = _check(kw, monkeypatch)
    if view in ("channel_major", "grouped"):  # out in u's layout, as without the fold
        assert out.permute(1, 0, 2).is_contiguous()


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=4)))  # D, z, delta_bias, softplus
def test_folded_delta_all_flags(flags, monkeypatch):
    kw = _lowrank(make_inputs(2, 40, 29, 16, "var", "g2", *flags, seed=5 + sum(flags)), 2, seed=sum(flags))
    _check(kw, monkeypatch)


@pytest.mark.parametrize("bc,g", [(("const", "const"), 2), (("g1", "g2"), 1), (("g2", "const"), 2),
                                  (("var", "var"), 2)])
def test_folded_delta_groups_independent_of_b_and_c(bc, g, monkeypatch):
    # dt_low's groups need not be B's / C's: a block never spans a group of any of them (d = 40: 20 per group)
    _check(_lowrank(make_inputs(2, 40, 45, 16, *bc, seed=9), g, seed=9), monkeypatch)


@pytest.mark.parametrize("l", [7, 122, 494])
@pytest.mark.parametrize("has_z", [False, True])
def test_folded_delta_bfloat16_u_and_z(l, has_z, monkeypatch):
    """bfloat16 u and z (channel-major, as the grouped path): out bfloat16, against the float64 reference (out
    rounded to bfloat16) and bit for bit against the folded float32 kernel on the same values upcast."""
    kw = _lowrank(make_inputs(2, 32, l, 16, "g2", "g2", has_z=has_z, seed=l), 2, seed=l)
    h = dict(kw)
    h["u"] = VIEWS["grouped"](kw["u"].bfloat16())
    if has_z:
        h["z"] = VIEWS["grouped"](kw["z"].bfloat16())
    h["delta_proj"] = (kw["delta_proj"][0], _channel_major_dbl(kw["delta_proj"][1]))
    up = {**h, "u": h["u"].float(), "z": None if not has_z else h["z"].float()}
    out, _ = _check(h, monkeypatch, rtol=2.0 ** -8)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, selective_scan_cpu(**up).to(torch.bfloat16))


@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("cuts", [[1, 2, 5, 21, 40, 70], [16, 33, 100, 400], [250]])
def test_folded_delta_in_pieces_with_initial_state(g, cuts):
    """A sequence in consecutive pieces (dt_low, u, z, B, C sliced along time, views of the whole), each from the
    last state of the one before, against the reference over the whole sequence."""
    l = 494
    kw = _lowrank(make_inputs(2, 48, l, 16, "g2", "g2", seed=g), g, seed=g)
    kw["delta_proj"] = (kw["delta_proj"][0], _channel_major_dbl(kw["delta_proj"][1]))
    outs, h = [], None
    bounds = [0, *cuts, l]
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        piece = {**kw, "u": kw["u"][..., t0:t1], "z": kw["z"][..., t0:t1], "B": kw["B"][..., t0:t1],
                 "C": kw["C"][..., t0:t1], "delta_proj": (kw["delta_proj"][0], kw["delta_proj"][1][..., t0:t1])}
        y, h = selective_scan_cpu(**piece, return_last_state=True, initial_state=h)
        outs.append(y)
    ref, ref_last = _reference(kw)
    torch.testing.assert_close(torch.cat(outs, -1), ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(h, ref_last, rtol=RTOL, atol=ATOL)


def test_folded_delta_on_two_threads_many_blocks(monkeypatch):
    # SPMamba's intra-frame shape in small: several sequences x 2 x d_inner channels, the parallel kernel
    kw = _lowrank(make_inputs(6, 128, 122, 16, "g2", "g2", seed=4), 2, seed=4)
    kw["u"], kw["z"] = VIEWS["grouped"](kw["u"]), VIEWS["grouped"](kw["z"])
    kw["delta_proj"] = (kw["delta_proj"][0], _channel_major_dbl(kw["delta_proj"][1]))
    _check(kw, monkeypatch)


@pytest.mark.parametrize("n,dtype", [(8, torch.float32), (17, torch.float32), (16, torch.float64)])
def test_other_paths_compute_delta_first(n, dtype):
    kw = _lowrank(make_inputs(2, 24, 33, n, "g2", "var", seed=n, dtype=dtype), 2, seed=n)
    kw["delta_proj"] = tuple(t.to(dtype) for t in kw["delta_proj"])
    out, last = selective_scan_cpu(**kw, return_last_state=True)
    ref, ref_last = _reference(kw)
    torch.testing.assert_close(out.float(), ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last.float(), ref_last, rtol=RTOL, atol=ATOL)


def test_gradients_flow_through_the_low_rank_factors():
    kw = _lowrank(make_inputs(1, 32, 40, 16, "g2", "g2", seed=2), 2, seed=2)
    grads = []
    for scan in (selective_scan_cpu, selective_scan_ref):
        W, low = (t.detach().clone().requires_grad_(True) for t in kw["delta_proj"])
        u = kw["u"].detach().clone().requires_grad_(True)
        out = scan(**{**kw, "u": u, "delta_proj": (W, low)})
        out.square().sum().backward()
        grads.append((W.grad, low.grad, u.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", ["ref", "cpu"])
def test_dispatcher_passes_delta_proj(backend):
    kw = _lowrank(make_inputs(2, 32, 20, 16, "g2", "g2", seed=1), 2, seed=1)
    out, last = selective_scan(**kw, return_last_state=True, backend=backend)
    ref, ref_last = _reference(kw)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last, ref_last, rtol=RTOL, atol=ATOL)


def test_dispatcher_computes_delta_for_other_backends(monkeypatch):
    # a backend without delta_proj (triton, mamba_ssm) gets delta = W @ dt_low per group, computed by torch
    kw = _lowrank(make_inputs(2, 32, 20, 16, "g2", "g2", seed=3), 2, seed=3)
    got = {}

    def fake(u, delta, *rest):
        got["delta"] = delta
        return selective_scan_ref(u, delta, *rest)

    monkeypatch.setattr(kernels, "_unavailable", lambda backend, device: None)
    monkeypatch.setattr(kernels, "_fn", lambda backend: fake)
    out = selective_scan(**kw, backend="triton")
    W, low = kw["delta_proj"]
    want = torch.einsum("gcr,bgrl->bgcl", W.view(2, 16, R), low).reshape(2, 32, 20)
    torch.testing.assert_close(got["delta"], want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, _reference(kw)[0], rtol=RTOL, atol=ATOL)


def test_delta_and_delta_proj_checked():
    kw = _lowrank(make_inputs(1, 32, 10, 16, seed=0), 2, seed=0)
    W, low = kw["delta_proj"]
    for scan in (selective_scan_cpu, selective_scan_ref, selective_scan):
        with pytest.raises(ValueError, match="either delta or delta_proj"):
            scan(**{**kw, "delta_proj": None})
        with pytest.raises(ValueError, match="either delta or delta_proj"):
            scan(**{**kw, "delta": kw["u"]})
        with pytest.raises(ValueError, match="dt_low must be"):
            scan(**{**kw, "delta_proj": (W, low[:, :, :4])})
        with pytest.raises(ValueError, match="dt_low must be"):
            scan(**{**kw, "delta_proj": (W, low[:, :1].expand(1, 3, R, 10))})  # 3 groups do not divide 32 channels
        with pytest.raises(ValueError, match="W must be"):
            scan(**{**kw, "delta_proj": (W[:16], low)})
