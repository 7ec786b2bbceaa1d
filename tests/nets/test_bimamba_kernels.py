"""The bidirectional Mamba block's one-pass inference kernels (sepcli.nets.bimamba_kernels) against plain torch ops:
the RMS normalisation over channels of one time window of both directions (the forward's and the time-reversed
sequence's, channel-major), and the residual sums of such a window into the block's [S, 2D, L] output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sepcli.nets import bimamba_kernels as K

pytestmark = pytest.mark.skipif(not K.available(), reason="numba not installed")

# (S, D, L, w): w = L (one window, the grouped path's chunks) and w < L (windows of long sequences), S = 1..3
SHAPES = [(1, 1, 1, 1), (3, 7, 5, 5), (2, 16, 300, 300), (1, 128, 1243, 1243), (3, 7, 20, 3), (2, 16, 600, 257),
          (1, 64, 700, 256)]


def _starts(L: int, w: int) -> list[int]:
    return sorted({0, (L - w) // 2, L - w})


def _xn64(x: torch.Tensor, eps: float) -> torch.Tensor:
    # reference: x * rsqrt(mean(x^2 over channels) + eps) in float64
    return x.double() * torch.rsqrt(x.double().square().mean(1, keepdim=True) + eps)


def _windows(t: torch.Tensor, a: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[S, C, L] -> the forward's window [a, a + w) and the time-reversed sequence's, as [C, S, w]."""
    return t[..., a:a + w].transpose(0, 1), t.flip(-1)[..., a:a + w].transpose(0, 1)


@pytest.mark.parametrize("S,D,L,w", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_window_pair_equals_torch(S, D, L, w, dtype):
    torch.manual_seed(1)
    x = 3 * torch.randn(S, D, L)
    want = _xn64(x, 1e-5)
    whole = K.rms_norm_window_pair_into(x, 1e-5, 0, torch.empty(2, D, S, L, dtype=dtype))
    for a in _starts(L, w):
        out = torch.full((2, D, S, w), 7.0).to(dtype)
        assert K.rms_norm_window_pair_into(x, 1e-5, a, out) is out
        for got, ref in zip(out, _windows(want, a, w)):
            if dtype == torch.float32:
                torch.testing.assert_close(got.double(), ref, rtol=2e-6, atol=1e-6)
            else:  # float32 statistics may round the other way at a bf16 midpoint: at most one bf16 step apart
                cast = ref.float().to(dtype)
                step = 2.0 ** (torch.floor(torch.log2(ref.abs().clamp_min(1e-30))) - 7)
                assert ((got.double() - cast.double()).abs() <= step).all()
                assert (got == cast).float().mean() > 0.99
        # every value is the whole sequence's, whatever the window; the backward's window is the forward's values
        # at the mirrored times, bit for bit
        assert torch.equal(out, whole[..., a:a + w])
        assert torch.equal(out[1], whole[0].flip(-1)[..., a:a + w])


@pytest.mark.parametrize("S,D,L,w", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_window_pair_equals_add_and_flip_and_touches_only_its_windows(S, D, L, w, dtype):
    torch.manual_seed(2)
    x = torch.randn(S, D, L)
    for a in _starts(L, w):
        o = torch.randn(2, D, S, w).to(dtype)  # [direction, channel, sequence, window time]
        out = torch.full((S, 2 * D, L), 7.0)
        assert K.residual_window_pair_into(x, o, a, out) is out
        of, ob = o.float().transpose(1, 2)  # [S, D, w] each
        assert torch.equal(out[:, :D, a:a + w], x[..., a:a + w] + of)
        assert torch.equal(out[:, D:].flip(-1)[..., a:a + w], x.flip(-1)[..., a:a + w] + ob)
        if w == L:  # one window: the whole output, the backward half read time-reversed
            assert torch.equal(out[:, D:], x + ob.flip(-1))
        mask = torch.ones(S, 2 * D, L, dtype=torch.bool)
        mask[:, :D, a:a + w] = False
        mask[:, D:, L - a - w:L - a] = False
        assert torch.all(out[mask] == 7.0)


def test_bf16_rounding_equals_torch_cast_including_ties_and_specials():
    # the kernels' float32 -> bfloat16 rounding against torch's cast: exact midpoints (round half to even, both
    # parities), just below / above them, the largest finite float32 (rounds to inf), subnormals, inf and NaN
    from numba import njit

    @njit
    def rnd(a, out):
        for i in range(a.shape[0]):
            out[i] = K._bf16_bits(a[i])

    bits = [0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3F807FFF, 0x3F808001, 0xBF818000, 0x00008000, 0x00018000,
            0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0x00000000, 0x80000000]
    vals = torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)
    got = np.empty(len(bits), np.uint16)
    rnd(vals.numpy(), got)
    want = vals.to(torch.bfloat16)
    got_t = torch.from_numpy(got.view(np.int16)).view(torch.bfloat16)
    finite = ~torch.isnan(want)
    assert torch.equal(got_t[finite], want[finite])
    assert torch.isnan(got_t[~finite]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_and_inf_propagate_as_in_torch(dtype):
    # a NaN or inf input makes its time step's statistics NaN / inf: torch's formula gives NaN / 0 / NaN there
    # (x * rsqrt(inf) = x * 0, inf * 0 = NaN) and leaves the other time steps alone; the residual adds them as is
    torch.manual_seed(3)
    S, D, L = 2, 5, 9
    x = torch.randn(S, D, L)
    x[0, 1, 2] = float("nan")
    x[1, 3, 6] = float("inf")
    x[1, 0, 7] = float("-inf")
    want = _xn64(x, 1e-5)
    out = K.rms_norm_window_pair_into(x, 1e-5, 0, torch.empty(2, D, S, L, dtype=dtype))
    for got, ref in zip(out, _windows(want, 0, L)):
        torch.testing.assert_close(got.double(), ref.float().to(dtype).double(), rtol=2 ** -7, atol=1e-6,
                                   equal_nan=True)
    assert torch.isnan(out[0, :, 0, 2]).all() and torch.isnan(out[1, :, 0, L - 1 - 2]).all()
    assert torch.isfinite(out[0, :, 0, :2]).all() and torch.isfinite(out[0, :, 0, 3:]).all()
    nan = torch.full((1, 2, 3), float("nan"))
    assert torch.isnan(K.rms_norm_window_pair_into(nan, 1e-5, 0, torch.empty(2, 2, 1, 3, dtype=dtype))).all()
    o = torch.randn(2, D, S, L).to(dtype)
    o[0, 4, 1, 5] = float("nan")
    o[1, 2, 0, 1] = float("inf")
    res = K.residual_window_pair_into(x, o, 0, torch.empty(S, 2 * D, L))
    ref = torch.cat([x + o[0].float().transpose(0, 1), x + o[1].float().transpose(0, 1).flip(-1)], 1)
    torch.testing.assert_close(res, ref, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(res[1, 4, 5]) and res[0, D + 2, L - 1 - 1] == float("inf")


def test_bad_arguments_are_refused():
    x = torch.randn(2, 4, 10)
    with pytest.raises(ValueError):
        K.rms_norm_window_pair_into(x, 1e-5, 8, torch.empty(2, 4, 2, 3))  # past the end
    with pytest.raises(ValueError):
        K.rms_norm_window_pair_into(x, 1e-5, -1, torch.empty(2, 4, 2, 3))  # before the start
    with pytest.raises(ValueError):
        K.rms_norm_window_pair_into(x, 1e-5, 0, torch.empty(2, 2, 4, 3))  # [S, 2, D, w], not [2, D, S, w]
    with pytest.raises(ValueError):
        K.rms_norm_window_pair_into(x, 1e-5, 0, torch.empty(2, 4, 3, 2).transpose(2, 3))  # not contiguous
    with pytest.raises(TypeError):
        K.rms_norm_window_pair_into(x.double(), 1e-5, 0, torch.empty(2, 4, 2, 3))
    with pytest.raises(TypeError):
        K.rms_norm_window_pair_into(x, 1e-5, 0, torch.empty(2, 4, 2, 3, dtype=torch.float16))
    with pytest.raises(ValueError):
        K.residual_window_pair_into(x, torch.empty(2, 4, 1, 3), 0, torch.empty(2, 8, 10))  # o does not fit
    with pytest.raises(ValueError):
        K.residual_window_pair_into(x, torch.empty(2, 4, 2, 3), 0, torch.empty(2, 4, 10))  # out not [S, 2D, L]
    with pytest.raises(ValueError):
        K.residual_window_pair_into(x, torch.empty(2, 4, 2, 3), 0, torch.empty(2, 8, 10, dtype=torch.bfloat16))
