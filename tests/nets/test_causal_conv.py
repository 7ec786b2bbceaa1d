"""Causal depthwise conv1d + SiLU of the Mamba blocks against Mamba's own conv1d (padding K - 1, cropped to L)
then SiLU: the numba one-pass kernel (sepcli.nets.causal_conv) and the torch path (mamba.causal_depthwise_conv_silu)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(1)


@pytest.mark.parametrize("length", [1, 2, 3, 4, 9, 50, 300])
@pytest.mark.parametrize("k", [4, 3])
def test_numba_conv_silu_equals_mamba_conv1d_in_fp32_and_bf16(length, k):
    # the one-pass kernel of the fused inference path against Mamba's own conv1d (depthwise, padding K - 1, cropped
    # to L) then torch's SiLU, in float64; a bf16 input is read as its exact float32 value
    from sepcli.nets import causal_conv

    if not causal_conv.available():
        pytest.skip("numba not installed")
    torch.manual_seed(8)
    conv = torch.nn.Conv1d(6, 6, k, groups=6, padding=k - 1).double()
    for dtype in (torch.float32, torch.bfloat16):
        x = (4 * torch.randn(3, 6, length)).to(dtype)
        want = F.silu(conv(x.double())[..., :length])
        out = torch.empty(3, 6, length)
        causal_conv.conv_silu_rows_into(x, conv.weight.float(), conv.bias.float(), out)
        torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)
        causal_conv.conv_silu_rows_into(x, conv.weight.float(), None, out)
        want0 = F.silu(F.conv1d(x.double(), conv.weight, None, padding=k - 1, groups=6)[..., :length])
        torch.testing.assert_close(out.double(), want0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("length", [1, 2, 3, 4, 9, 50])
def test_causal_depthwise_conv_silu_equals_mamba_conv1d(length):
    # reference: Mamba's own conv1d (depthwise, padding d_conv - 1, cropped to L), then SiLU; with and without grad
    from sepcli.nets.mamba import causal_depthwise_conv_silu

    torch.manual_seed(7)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(3, 6, length, requires_grad=True)
    want = torch.nn.functional.silu(conv(x)[..., :length])
    got = causal_depthwise_conv_silu(x, conv.weight, conv.bias)
    torch.testing.assert_close(got, want)
    g_want = torch.autograd.grad(want.square().sum(), [x, conv.weight, conv.bias])
    g_got = torch.autograd.grad(got.square().sum(), [x, conv.weight, conv.bias])
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(causal_depthwise_conv_silu(x, conv.weight, None),
                                   torch.nn.functional.silu(conv(x)[..., :length] - conv.bias[:, None]))


@pytest.mark.parametrize("length", [1, 3, 4, 50, 122])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_numba_conv_silu_channel_major_rows(length, dtype):
    # x and out [C, S, L] (channel c's sequences at x[c]), as the grouped Mamba path lays them out: against
    # Mamba's conv1d + SiLU on the [S, C, L] transpose, in float64
    from sepcli.nets import causal_conv

    if not causal_conv.available():
        pytest.skip("numba not installed")
    torch.manual_seed(9)
    C, S, k = 6, 5, 4
    conv = torch.nn.Conv1d(C, C, k, groups=C, padding=k - 1).double()
    x = (4 * torch.randn(C, S, length)).to(dtype)
    want = F.silu(conv(x.permute(1, 0, 2).double())[..., :length]).permute(1, 0, 2)
    out = torch.full((C, S, length), 7.0)
    causal_conv.conv_silu_rows_into(x, conv.weight.float(), conv.bias.float(), out, channel_major=True)
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)
