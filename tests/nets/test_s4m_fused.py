"""S4M's fused numba inference kernels (sepcli/nets/s4m_kernels.py, s4m_fused.py) against the plain PyTorch
modules they replace (fast paths off), float32, tolerances relative to the reference's peak."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sepcli.nets.fastconv as fastconv
import sepcli.nets.s4m_fused as fused
from sepcli.nets import build_network
from sepcli.nets import s4m_kernels as K
from sepcli.nets.s4m import LocalAttentionFusion, conv_gln


@pytest.fixture(autouse=True)
def fuse_at_once(monkeypatch):
    monkeypatch.setattr(fused, "FUSE_AFTER", 1)


def rel(got, want) -> float:
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    assert got.shape == want.shape
    return float((got - want).abs().max() / want.abs().max())


@pytest.fixture
def plain(monkeypatch):
    """Reference forward: PyTorch's own modules (every inference fast path off)."""
    def run(fn, *args):
        with monkeypatch.context() as m:
            m.setattr(fastconv, "FAST_INFERENCE", False)
            with torch.inference_mode():
                return fn(*args)
    return run


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial gLN gains and biases (they start as ones and zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 2 and p.shape[1] == 1 else 0.0))
    return module.eval()


def test_sigmoid_matches_torch_over_the_float_range():
    x = np.concatenate([np.linspace(-100, 100, 20001), [0.0, -87.5, 88.5, 1e-30, -1e-30]]).astype(np.float32)
    want = torch.sigmoid(torch.from_numpy(x)).numpy()
    assert np.abs(K.sigmoid_check(x) - want).max() < 3e-7


@pytest.mark.parametrize("kernel,stride", [(5, 1), (5, 2), (3, 1), (3, 2), (1, 1)])
@pytest.mark.parametrize("length", [1, 2, 4, 5, 6, 9, 501, 2003])
def test_conv_gln_equals_depthwise_conv_and_gln(plain, kernel, stride, length):
    c = 12
    m = randomise(conv_gln(c, c, kernel, stride=stride, groups=c), kernel + stride + length)
    x = torch.randn(1, c, length)
    want = plain(m, x)[0]
    conv, gln = m[0], m[1]
    out = np.empty(tuple(want.shape), np.float32)
    bias = conv.bias.detach().numpy()
    K.conv_gln(x[0].numpy(), conv.weight.detach().reshape(c, -1).numpy().copy(), bias, stride,
               gln.gamma.detach().view(-1).numpy().copy(), gln.beta.detach().view(-1).numpy().copy(), gln.eps, out)
    assert rel(out, want) < 2e-6


@pytest.mark.parametrize("slope", [0.25, -0.1])
def test_gln_leaky_equals_gln_then_prelu(plain, slope):
    c = 16
    m = randomise(conv_gln(c, c, 1, groups=1), 7)
    x = torch.randn(1, c, 333) * 3 + 1
    gln = m[1]
    want = plain(lambda v: F.prelu(gln(v), torch.tensor([slope])), x)[0]
    got = x[0].numpy().copy()
    K.gln_leaky_(got, gln.gamma.detach().view(-1).numpy().copy(), gln.beta.detach().view(-1).numpy().copy(),
                 gln.eps, slope)
    assert rel(got, want) < 2e-6


@pytest.mark.parametrize("kernel", [1, 5])
@pytest.mark.parametrize("n,n_g", [(2003, 1002), (1002, 501), (501, 251), (2003, 251), (1002, 251), (251, 251),
                                   (64, 16), (7, 3), (1, 1)])
def test_fusion_equals_local_attention_fusion(plain, kernel, n, n_g):
    c = 10
    m = randomise(LocalAttentionFusion(c, kernel), n + n_g + kernel)
    xl, xg = torch.randn(1, c, n), torch.randn(1, c, n_g) * 2
    want = plain(m, xl, xg)[0]
    got = fused._Fusion(m)(K, xl[0].numpy(), xg[0].numpy())
    assert rel(got, want) < 2e-6


@pytest.mark.parametrize("n,length", [(2003, 251), (1002, 251), (501, 251), (251, 251), (10, 3), (8, 4)])
def test_pool_add_equals_adaptive_average_pooling(n, length):
    x = torch.randn(6, n)
    out = torch.randn(6, length)
    want = out + F.adaptive_avg_pool1d(x.unsqueeze(0), length)[0]
    start, end, _ = fused._tables(n, length)
    got = out.numpy().copy()
    K.pool_add(x.numpy(), start, end, got)
    assert rel(got, want) < 1e-6


def test_upsampling_index_is_interpolates_nearest():
    _, _, idx = fused._tables(2003, 251)
    src = torch.arange(251, dtype=torch.float32).view(1, 1, -1) * 3 + 1
    want = F.interpolate(src, size=2003, mode="nearest").view(-1)
    assert torch.equal(src.view(-1)[torch.from_numpy(idx.astype(np.int64))], want)


@pytest.mark.parametrize("length", [1, 37, 1234, 16000])
def test_s4m_fused_forward_equals_the_plain_modules(plain, monkeypatch, length):
    torch.manual_seed(4)
    net = randomise(build_network("s4m", dict(sample_rate=8000, bn_channels=8, hidden=12, num_blocks=3, depth=4)), 9)
    x = torch.randn(2, length)
    calls = []
    item = fused.BlockPlan._item
    monkeypatch.setattr(fused.BlockPlan, "_item", lambda self, v: calls.append(1) or item(self, v))
    with torch.inference_mode():
        got = net(x)
    assert calls, "the fused path did not run"
    want = plain(net, x)
    assert rel(got, want) < 1e-5


def test_fused_path_is_off_with_autograd_autocast_or_another_dtype():
    x = torch.zeros(1, 4, 10)
    net = build_network("s4m", dict(sample_rate=8000, bn_channels=8, hidden=12, num_blocks=2)).eval()
    with torch.inference_mode():
        assert fused.usable(x)
        assert not fused.usable(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fused.usable(x)
            assert torch.isfinite(net(torch.randn(1, 300))).all()
    assert not fused.usable(x)  # gradients on: training keeps PyTorch's modules


def test_short_inputs_stay_on_the_pytorch_path_without_importing_numba():
    """The first FUSE_AFTER - 1 forwards of a process do not load the kernels (a short file starts as fast as
    before); the next one does. In a fresh interpreter, so that nothing else imported numba."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "import sepcli.nets.s4m_fused as fu\n"
        "from sepcli.nets import build_network\n"
        "net = build_network('s4m', dict(sample_rate=8000, bn_channels=8, hidden=12, num_blocks=2)).eval()\n"
        "x = torch.randn(1, 800)\n"
        "with torch.inference_mode():\n"
        "    for _ in range(fu.FUSE_AFTER - 1):\n"
        "        net(x)\n"
        "    print('numba' in sys.modules, 'sepcli.nets.s4m_kernels' in sys.modules)\n"
        "    net(x)\n"
        "    print('sepcli.nets.s4m_kernels' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True"]


def test_shipped_model_fused_output_equals_the_plain_modules(plain, monkeypatch):
    """The shipped default model on 4 s of the example recording: the fused kernels (and the other fast paths)
    against PyTorch's plain modules, within float32 round-off accumulated over its 8 passes."""
    from pathlib import Path

    import soundfile as sf

    from sepcli.runtime.loader import load_model

    net = load_model("default").network.eval()
    wav, rate = sf.read(Path(__file__).resolve().parents[2] / "examples" / "mix.wav", dtype="float32")
    x = torch.from_numpy(wav[: 4 * rate]).unsqueeze(0)
    plans = []
    monkeypatch.setattr(fused, "BlockPlan", lambda b, cls=fused.BlockPlan: plans.append(cls(b)) or plans[-1])
    with torch.inference_mode():
        got = net(x)
    assert plans
    want = plain(net, x)
    snr = 10 * torch.log10(want.square().sum() / (got - want).square().sum())
    assert rel(got, want) < 1e-5 and snr > 100, (rel(got, want), float(snr))
