"""The bidirectional Mamba block's one-pass inference kernels (sepcli.nets.bimamba_kernels) against plain torch ops:
the RMS normalisation over channels (and its time-reversed copy) and the residual sum into one half of the output."""

from __future__ import annotations

import pytest
import torch

from sepcli.nets import bimamba_kernels as K

pytestmark = pytest.mark.skipif(not K.available(), reason="numba not installed")


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 5), (2, 16, 300), (1, 128, 1243)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_pair_equals_torch(shape, dtype):
    # reference: x * rsqrt(mean(x^2 over channels) + eps) in float64, then torch's cast to the output dtype
    torch.manual_seed(1)
    x = 3 * torch.randn(shape)
    want = x.double() * torch.rsqrt(x.double().square().mean(1, keepdim=True) + 1e-5)
    pair = torch.empty((shape[0], 2) + shape[1:], dtype=dtype)
    K.rms_norm_pair_into(x, 1e-5, pair)
    xn, xr = pair[:, 0], pair[:, 1]
    if dtype == torch.float32:
        torch.testing.assert_close(xn.double(), want, rtol=2e-6, atol=1e-6)
    else:  # float32 statistics may round the other way at a bf16 midpoint: at most one bf16 step apart
        ref = want.float().to(dtype)
        step = 2.0 ** (torch.floor(torch.log2(want.abs().clamp_min(1e-30))) - 7)
        assert ((xn.double() - ref.double()).abs() <= step).all()
        assert (xn == ref).float().mean() > 0.99
    assert torch.equal(xr, xn.flip(2))
    alone = torch.empty(shape, dtype=dtype)
    assert torch.equal(K.rms_norm_pair_into(x, 1e-5, alone), xn)


def test_bf16_rounding_equals_torch_cast_including_ties_and_specials():
    # the kernels' float32 -> bfloat16 rounding against torch's cast: exact midpoints (round half to even, both
    # parities), just below / above them, the largest finite float32 (rounds to inf), subnormals, inf and NaN
    import numpy as np
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
    nan = torch.full((1, 2, 3), float("nan"))
    out = torch.empty(nan.shape, dtype=torch.bfloat16)
    assert torch.isnan(K.rms_norm_pair_into(nan, 1e-5, out)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [1, 5, 301, 1000])
def test_residual_pair_equals_add_and_flip(dtype, length):
    torch.manual_seed(2)
    S, D = 3, 5
    x = torch.randn(S, D, length)
    o = torch.randn(S, 2 * D, length).to(dtype)
    out = torch.full((S, 2 * D, length), 7.0)
    K.residual_pair_into(x, o, out)
    assert torch.equal(out[:, :D], x + o[:, :D].float())
    assert torch.equal(out[:, D:], x + o[:, D:].flip(2).float())


def test_bad_arguments_are_refused():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError):
        K.residual_pair_into(x, torch.empty(2, 6, 4), torch.empty(2, 4, 4))  # does not fit
    with pytest.raises(ValueError):
        K.rms_norm_pair_into(x, 1e-5, torch.empty(2, 4, 3).transpose(1, 2))  # not contiguous
    with pytest.raises(TypeError):
        K.rms_norm_pair_into(x.double(), 1e-5, torch.empty(2, 3, 4))


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 5), (4, 16, 122), (2, 128, 301)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_pair_channel_major_is_the_pair_layout_permuted(shape, dtype):
    # channel-major [2, D, S, L]: the same rows as the [S, 2, D, L] layout (checked above against torch), bit for bit
    torch.manual_seed(3)
    x = 3 * torch.randn(shape)
    S, D, L = shape
    pair = K.rms_norm_pair_into(x, 1e-5, torch.empty(S, 2, D, L, dtype=dtype))
    cm = K.rms_norm_pair_into(x, 1e-5, torch.full((2, D, S, L), 7.0).to(dtype), channel_major=True)
    assert torch.equal(cm, pair.permute(1, 2, 0, 3))
    want = x.double() * torch.rsqrt(x.double().square().mean(1, keepdim=True) + 1e-5)
    torch.testing.assert_close(cm[0].permute(1, 0, 2).double(), want, rtol=2.0 ** -7, atol=1e-6)
    assert torch.equal(cm[1], cm[0].flip(2))
    one = K.rms_norm_pair_into(x, 1e-5, torch.empty(1, D, S, L, dtype=dtype), channel_major=True)
    assert torch.equal(one[0], cm[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [1, 5, 122, 301])
def test_residual_pair_channel_major_equals_add_and_flip(dtype, length):
    torch.manual_seed(4)
    S, D = 3, 5
    x = torch.randn(S, D, length)
    o = torch.randn(2, D, S, length).to(dtype)  # [direction, channel, sequence, time]
    out = torch.full((S, 2 * D, length), 7.0)
    K.residual_pair_into(x, o, out, channel_major=True)
    assert torch.equal(out[:, :D], x + o[0].permute(1, 0, 2).float())
    assert torch.equal(out[:, D:], x + o[1].permute(1, 0, 2).flip(2).float())


def test_channel_major_bad_arguments_are_refused():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError):
        K.rms_norm_pair_into(x, 1e-5, torch.empty(2, 2, 3, 4), channel_major=True)  # [S, 2, D, L], not [2, D, S, L]
    with pytest.raises(ValueError):
        K.residual_pair_into(x, torch.empty(2, 6, 4), torch.empty(2, 6, 4), channel_major=True)
