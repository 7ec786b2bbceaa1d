"""The n = 16 vector forward on u / delta / z (and out) with their own (b, d) strides: rows contiguous along l are
read in place (no contiguous copy), e.g. channel-major [d, b, l] tensors seen as (b, d, l), row-padded buffers or
a channel slice of a larger projection; checked against scan_ref.selective_scan_ref."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sepcli.kernels import scan_cpu_vec
from sepcli.kernels.scan_cpu import selective_scan_cpu
from sepcli.kernels.scan_ref import selective_scan_ref
from tests.kernels.test_scan_cpu import ATOL, RTOL
from tests.scan_cases import make_inputs


def _channel_major(t):
    """The same values as (b, d, l), stored [d, b, l]."""
    return t.permute(1, 0, 2).contiguous().permute(1, 0, 2)


def _padded_rows(t, pad=5):
    """The same values in rows of a wider buffer (row stride l + pad)."""
    b, d, l = t.shape
    buf = torch.full((b, d, l + pad), float("nan"), dtype=t.dtype)
    buf[..., :l] = t
    return buf[..., :l]


def _channel_slice(t):
    """The same values as the second half of a [b, 2d, l] tensor (like z in in_proj's output)."""
    b, d, l = t.shape
    buf = torch.full((b, 2 * d, l), float("nan"), dtype=t.dtype)
    buf[:, d:] = t
    return buf[:, d:]


def _grouped_channel_major(t):
    """As the grouped Mamba path lays out u: [2, d/2, b, l] (direction, channel, sequence, time) seen as (b, d, l)."""
    b, d, l = t.shape
    return t.view(b, 2, d // 2, l).permute(1, 2, 0, 3).contiguous().view(d, b, l).permute(1, 0, 2)


VIEWS = {"channel_major": _channel_major, "padded_rows": _padded_rows, "channel_slice": _channel_slice,
         "grouped": _grouped_channel_major}


def _spy(monkeypatch):
    seen = []
    real_ser, real_par = scan_cpu_vec.fwd_ser, scan_cpu_vec.fwd_par

    def wrap(real):
        def spy(*a):
            seen.append(a)
            return real(*a)
        return spy

    monkeypatch.setattr(scan_cpu_vec, "fwd_ser", wrap(real_ser))
    monkeypatch.setattr(scan_cpu_vec, "fwd_par", wrap(real_par))
    return seen


def _run(kw, view, dtype, monkeypatch):
    rows = {k: kw[k] for k in ("u", "delta", "z") if kw[k] is not None}
    strided = {k: view(v.to(dtype)) for k, v in rows.items()}
    for k, v in strided.items():
        assert v.stride(2) == 1 and (not v.is_contiguous() or v.shape[0] == 1), k
    seen = _spy(monkeypatch)
    out, last = selective_scan_cpu(**{**kw, **strided}, return_last_state=True)
    assert len(seen) == 1
    a = seen[0]
    for t, arr in ((strided["u"], a[2]), (strided["delta"], a[3])):  # passed in place, not as a copy
        assert arr.ctypes.data == t.data_ptr() and arr.strides[:2] == tuple(s * t.element_size()
                                                                              for s in t.stride()[:2])
    if "z" in strided:
        assert a[8].ctypes.data == strided["z"].data_ptr()
    up = {**kw, **{k: v.float() for k, v in strided.items()}}
    ref, ref_last = selective_scan_ref(**up, return_last_state=True)
    return out, last, ref, ref_last, strided


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("b,d,l", [(3, 32, 1), (3, 32, 5), (2, 48, 15), (2, 32, 16), (4, 32, 122), (2, 32, 494),
                                   (1, 32, 45), (2, 20, 37)])
def test_strided_float32_rows_match_reference(view, b, d, l, monkeypatch):
    kw = make_inputs(b, d, l, 16, "g2", "g2", seed=b * 1000 + d + l)
    out, last, ref, ref_last, strided = _run(kw, VIEWS[view], torch.float32, monkeypatch)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last, ref_last, rtol=RTOL, atol=ATOL)
    if view in ("channel_major", "grouped") and b > 1:  # out in u's layout
        assert out.permute(1, 0, 2).is_contiguous()
    else:
        assert out.is_contiguous()


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=4)))  # D, z, delta_bias, softplus
@pytest.mark.parametrize("view", ["grouped", "padded_rows"])
def test_strided_rows_all_flags(flags, view, monkeypatch):
    kw = make_inputs(3, 32, 29, 16, "var", "g2", *flags, seed=17 + sum(flags))
    out, last, ref, ref_last, _ = _run(kw, VIEWS[view], torch.float32, monkeypatch)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last, ref_last, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("view", ["channel_major", "grouped", "channel_slice"])
@pytest.mark.parametrize("l", [7, 122, 494])
@pytest.mark.parametrize("has_z", [False, True])
def test_strided_bfloat16_rows_match_reference(view, l, has_z, monkeypatch):
    """bfloat16 rows read in place (their bits); out bfloat16, in u's layout; against the reference on the same
    values upcast (out rounded to bfloat16) and bit for bit against the float32 kernel on them."""
    kw = make_inputs(2, 32, l, 16, "g2", "g2", has_z=has_z, seed=l)
    out, last, ref, ref_last, strided = _run(kw, VIEWS[view], torch.bfloat16, monkeypatch)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2.0 ** -8, atol=ATOL)
    torch.testing.assert_close(last, ref_last, rtol=RTOL, atol=ATOL)
    dense = {**kw, **{k: v.float().contiguous() for k, v in strided.items()}}
    assert torch.equal(out, selective_scan_cpu(**dense).to(torch.bfloat16))


def test_grouped_layout_as_the_mamba_block_passes_it(monkeypatch):
    """u, delta, z channel-major [2, d_inner, S, L] and B, C sliced from x_proj's channel-major output
    [2, r + 2n, S, L] (groups = directions), as nets.bimamba_grouped's channel-major path calls the scan."""
    S, di, L, r, n = 3, 24, 122, 8, 16
    g = torch.Generator().manual_seed(3)
    kw = make_inputs(S, 2 * di, L, n, "g2", "g2", seed=3)
    dbl = torch.randn(2, r + 2 * n, S, L, generator=g)
    kw["B"] = dbl[:, r:r + n].permute(2, 0, 1, 3)
    kw["C"] = dbl[:, r + n:].permute(2, 0, 1, 3)
    out, last, ref, ref_last, _ = _run(kw, _grouped_channel_major, torch.float32, monkeypatch)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last, ref_last, rtol=RTOL, atol=ATOL)
    assert out.permute(1, 0, 2).is_contiguous()


def test_rows_with_a_time_stride_are_still_copied():
    """Rows that are not contiguous along l (transposed views) go through a contiguous copy, as before."""
    kw = make_inputs(2, 32, 40, 16, "var", "var", seed=4)
    kw["u"] = kw["u"].transpose(1, 2).contiguous().transpose(1, 2)
    assert kw["u"].stride(2) != 1
    out, last = selective_scan_cpu(**kw, return_last_state=True)
    ref, ref_last = selective_scan_ref(**kw, return_last_state=True)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    assert out.is_contiguous()
    assert np.isfinite(last.numpy()).all()
