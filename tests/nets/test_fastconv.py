"""The inference fast paths of S4M / S4D's convolutions (sepcli/nets/fastconv.py) against PyTorch's own
convolutions (the plain formulation), and a whole S4M forward with and without them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sepcli.nets.fastconv as fastconv
from sepcli.nets import build_network
from sepcli.nets.fastconv import ConvTranspose1d, DepthwiseConv1d, PointwiseConv1d, PReLU


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_equals_conv1d(batch, bias):
    torch.manual_seed(0)
    m = PointwiseConv1d(6, 10, bias=bias).double()
    x = torch.randn(batch, 6, 37, dtype=torch.float64)
    with torch.no_grad():
        got = m(x)
    want = F.conv1d(x, m.weight, m.bias)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,length", [(5, 1, 37), (5, 1, 1), (3, 1, 8), (5, 2, 37), (1, 1, 9)])
@pytest.mark.parametrize("batch", [1, 2])
def test_depthwise_equals_conv1d(kernel, stride, length, batch):
    torch.manual_seed(1)
    m = DepthwiseConv1d(7, kernel, stride=stride).double()
    x = torch.randn(batch, 7, length, dtype=torch.float64)
    with torch.no_grad():
        got = m(x)
    want = F.conv1d(x, m.weight, m.bias, stride=stride, padding=(kernel - 1) // 2, groups=7)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("inplace", [False, True])
def test_prelu_equals_pytorch_prelu(inplace):
    torch.manual_seed(4)
    m = PReLU(inplace=inplace)
    with torch.no_grad():
        m.weight.fill_(-0.37)
    x = torch.randn(2, 5, 40)
    x[0, 0, :3] = torch.tensor([0.0, -0.0, float("-inf")])
    want = F.prelu(x, m.weight)
    with torch.inference_mode():
        got = m(x.clone())
    assert torch.equal(got, want)


@pytest.mark.parametrize("c_in,c_out,kernel,stride,padding,frames,bias",
                         [(65, 1, 128, 32, 96, 203, False), (6, 3, 8, 2, 0, 17, True), (5, 2, 12, 4, 5, 1, True),
                          (4, 1, 4, 4, 0, 9, False)])
@pytest.mark.parametrize("batch", [1, 3])
def test_transposed_conv_equals_conv_transpose1d(c_in, c_out, kernel, stride, padding, frames, bias, batch):
    torch.manual_seed(5)
    m = ConvTranspose1d(c_in, c_out, kernel, stride=stride, padding=padding, bias=bias).double()
    x = torch.randn(batch, c_in, frames, dtype=torch.float64)
    with torch.inference_mode():
        got = m(x)
    want = F.conv_transpose1d(x, m.weight, m.bias, stride=stride, padding=padding)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_s4m_inference_equals_the_plain_convolutions(monkeypatch):
    torch.manual_seed(2)
    net = build_network("s4m", dict(sample_rate=8000, bn_channels=8, hidden=12, num_blocks=3, depth=4)).double()
    net.eval()
    x = torch.randn(2, 1234, dtype=torch.float64)
    with torch.inference_mode():
        fast = net(x)
        monkeypatch.setattr(fastconv, "FAST_INFERENCE", False)
        plain = net(x)
    assert torch.allclose(fast, plain, rtol=1e-10, atol=1e-12)


def test_training_keeps_pytorch_convolutions(monkeypatch):
    """With autograd on, the fast paths stay off: the forward is PyTorch's convolution's, bit for bit."""
    torch.manual_seed(3)
    m = DepthwiseConv1d(4, 5).double()
    x = torch.randn(1, 4, 50, dtype=torch.float64, requires_grad=True)
    assert torch.equal(m(x), F.conv1d(x, m.weight, m.bias, padding=2, groups=4))


def test_shipped_model_output_unchanged_by_the_fast_paths(monkeypatch):
    """The shipped default model on the example recording (one 4 s segment, as `separate` runs it): every fast
    path on against PyTorch's plain modules, float32, within float32 round-off accumulated over its 8 passes."""
    from pathlib import Path

    import soundfile as sf

    from sepcli.runtime.loader import load_model

    net = load_model("default").network.eval()
    wav, rate = sf.read(Path(__file__).resolve().parents[2] / "examples" / "mix.wav", dtype="float32")
    assert rate == net.sample_rate
    x = torch.from_numpy(wav[: 4 * rate]).unsqueeze(0)
    with torch.inference_mode():
        fast = net(x)
        monkeypatch.setattr(fastconv, "FAST_INFERENCE", False)
        plain = net(x)
    err = (fast - plain).abs().max() / plain.abs().max()
    snr = 10 * torch.log10(plain.square().sum() / (fast - plain).square().sum())
    assert err < 1e-5 and snr > 100, (float(err), float(snr))
