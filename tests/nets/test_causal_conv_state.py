"""The depthwise causal conv + SiLU kernel (sepcli.nets.causal_conv) with a carried state: a row split into
consecutive pieces, each piece from the previous one's last K - 1 inputs, equals Mamba's conv1d (padding K - 1,
cropped) over the whole row, including pieces shorter than K - 1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sepcli.nets import causal_conv

torch.set_num_threads(2)
pytestmark = pytest.mark.skipif(not causal_conv.available(), reason="numba not installed")


@pytest.mark.parametrize("k", [4, 3, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channel_major", [False, True])
def test_conv_in_pieces_with_state_equals_conv1d_over_the_row(k, dtype, channel_major):
    torch.manual_seed(3)
    S, C, L = 3, 6, 61
    conv = torch.nn.Conv1d(C, C, k, groups=C, padding=k - 1).double()
    x = (2 * torch.randn(S, C, L)).to(dtype)
    want = F.silu(conv(x.double())[..., :L])  # [S, C, L]
    xs = x.transpose(0, 1).contiguous() if channel_major else x
    state = torch.zeros(*xs.shape[:-1], k - 1)
    pieces = []
    bounds = [0, 1, 2, 4, 5, 9, 30, 31, 60, L]  # pieces of 1, 2 (< K - 1), 4, 21 ... steps
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        out = torch.empty(*xs.shape[:-1], t1 - t0)
        causal_conv.conv_silu_rows_into(xs[..., t0:t1].contiguous(), conv.weight.float(), conv.bias.float(), out,
                                        channel_major=channel_major, state=state)
        pieces.append(out)
    got = torch.cat(pieces, -1)
    if channel_major:
        got = got.transpose(0, 1)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    # the state is the row's last K - 1 inputs
    torch.testing.assert_close(state, xs[..., L - (k - 1):].float(), rtol=0, atol=0)


def test_nonzero_state_replaces_the_zero_padding():
    # out[t] = silu(b + sum_j w[j] x_ext[t + j]) with x_ext = state followed by the row (Mamba's conv1d over the
    # concatenation, its outputs for the row's steps)
    torch.manual_seed(4)
    conv = torch.nn.Conv1d(5, 5, 4, groups=5, padding=3).double()
    prev, x = torch.randn(2, 5, 3), torch.randn(2, 5, 7)
    ext = torch.cat([prev, x], -1)
    want = F.silu(conv(ext.double())[..., :10])[..., 3:]
    out = torch.empty(2, 5, 7)
    state = prev.clone()
    causal_conv.conv_silu_rows_into(x, conv.weight.float(), conv.bias.float(), out, state=state)
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)


def test_bad_state_is_refused():
    x, w = torch.randn(2, 5, 7), torch.randn(5, 1, 4)
    with pytest.raises(ValueError, match="state"):
        causal_conv.conv_silu_rows_into(x, w, None, torch.empty(2, 5, 7), state=torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="state"):
        causal_conv.conv_silu_rows_into(x, w, None, torch.empty(2, 5, 7), state=torch.zeros(2, 5, 3).double())
