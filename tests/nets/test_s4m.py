"""S4M network: sizes against the paper, shapes for any length, determinism, gradients."""

import pytest
import torch

from sepcli.nets import build_network, named_config, s4m_fused


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,paper", [("s4m-8k", 3.6e6), ("s4m-16k", 3.6e6),
                                        ("s4m-tiny-8k", 1.8e6), ("s4m-tiny-16k", 1.8e6)])
def test_parameter_counts_within_5_percent_of_paper(name, paper):
    arch, args, sr = named_config(name)
    model = build_network(arch, args)
    assert abs(n_params(model) - paper) / paper < 0.05, n_params(model)
    assert model.sample_rate == sr


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_network("s4m", dict(sample_rate=8000, bn_channels=16, hidden=24, num_blocks=2, depth=3)).eval()


@pytest.mark.parametrize("length", [1, 2, 7, 31, 160, 1001])
def test_any_length_round_trips(small, length):
    with torch.no_grad():
        out = small(torch.randn(3, length))
    assert out.shape == (3, 2, length)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("fused", [False, True])
def test_batch_items_are_independent_and_deterministic(small, monkeypatch, fused):
    # both inference paths, each pinned (the fused kernels otherwise start at the process's FUSE_AFTER-th forward)
    monkeypatch.setattr(s4m_fused, "ENABLED", fused)
    monkeypatch.setattr(s4m_fused, "FUSE_AFTER", 1)
    x = torch.randn(2, 800)
    with torch.no_grad():
        both = small(x)
        one = small(x[1:])
        again = small(x)
    assert torch.allclose(both[1:], one, atol=1e-5)
    assert torch.equal(both, again)


def test_silence_gives_finite_output(small):
    with torch.no_grad():
        out = small(torch.zeros(1, 400))
    assert torch.isfinite(out).all()


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = build_network("s4m", dict(sample_rate=8000, bn_channels=8, hidden=8, num_blocks=2, depth=2))
    m(torch.randn(2, 200)).square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


# The CPU fast paths (sepcli/nets/s4m.py upsample_nearest / pool_to, s4.shared_kernels) against the plain
# formulation they replace: PyTorch's own interpolate / adaptive pooling, and the S4 kernel recomputed per pass.

@pytest.mark.parametrize("n,length", [(1, 1), (1, 8), (3, 6), (5, 20), (251, 2008), (251, 502), (7, 21),
                                      (5, 15), (251, 2003), (501, 1002), (1002, 2003), (4, 7), (6, 5)])
def test_upsample_nearest_equals_interpolate(n, length):
    from sepcli.nets.s4m import upsample_nearest

    x = torch.randn(2, 3, n, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, length, dtype=torch.float64)
    got = upsample_nearest(x, length)
    (gx,) = torch.autograd.grad(got, x, g)
    want = torch.nn.functional.interpolate(x, size=length, mode="nearest")
    (wx,) = torch.autograd.grad(want, x, g)
    assert torch.equal(got, want)
    assert torch.allclose(gx, wx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,length", [(8, 1), (2008, 251), (502, 251), (251, 251), (2003, 251), (1002, 251),
                                      (7, 3), (5, 7)])
def test_pool_to_equals_adaptive_average_pooling(n, length):
    from sepcli.nets.s4m import pool_to

    x = torch.randn(2, 3, n, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, length, dtype=torch.float64)
    got = pool_to(x, length)
    (gx,) = torch.autograd.grad(got, x, g)
    want = torch.nn.functional.adaptive_avg_pool1d(x, length)
    (wx,) = torch.autograd.grad(want, x, g)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(gx, wx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,length", [(2003, 251), (1002, 251), (501, 251), (2003, 1002), (37, 5), (100, 3),
                                      (7, 2), (16000, 2003), (5, 7), (8, 1)])
@pytest.mark.parametrize("batch", [1, 3])
def test_inference_pool_to_equals_adaptive_average_pooling(n, length, batch):
    """In inference the non-divisible lengths go through _banded_pool (batched products over row blocks)."""
    from sepcli.nets.s4m import pool_to

    torch.manual_seed(n + length)
    x = torch.randn(batch, 3, n, dtype=torch.float64)
    with torch.inference_mode():
        got = pool_to(x, length)
        again = pool_to(x[:, :, :].clone(), length)  # the cached plan
    want = torch.nn.functional.adaptive_avg_pool1d(x, length)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(got, again)
    x32 = x.float()
    with torch.inference_mode():
        got32 = pool_to(x32, length)
    assert torch.allclose(got32, torch.nn.functional.adaptive_avg_pool1d(x32, length), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("length", [1000, 1280])  # 128 frames, divisible by 8 (every fast path); 163 (fallbacks)
def test_training_forward_and_gradients_equal_the_plain_formulation(monkeypatch, length):
    import contextlib

    import sepcli.nets.s4m as s4m

    torch.manual_seed(3)
    net = build_network("s4m", dict(sample_rate=8000, bn_channels=8, hidden=12, num_blocks=3, depth=4)).double()
    frames = net.encoder(torch.zeros(1, 1, -(-length // net.stride) * net.stride, dtype=torch.float64)).shape[-1]
    assert (frames % 8 == 0) == (length == 1000)
    x = torch.randn(2, length, dtype=torch.float64)

    def run():
        net.zero_grad()
        out = net(x)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}

    out, grads = run()
    monkeypatch.setattr(s4m, "upsample_nearest", lambda t, n: torch.nn.functional.interpolate(t, size=n))
    monkeypatch.setattr(s4m, "pool_to", torch.nn.functional.adaptive_avg_pool1d)
    monkeypatch.setattr(s4m, "shared_kernels", lambda m: contextlib.nullcontext())
    ref_out, ref_grads = run()
    assert torch.allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    for n, g in ref_grads.items():
        assert torch.allclose(grads[n], g, rtol=1e-8, atol=1e-12), n


def test_the_shared_block_computes_its_s4_kernel_once_per_forward():
    torch.manual_seed(4)
    net = build_network("s4m", dict(sample_rate=8000, bn_channels=8, hidden=8, num_blocks=4, depth=2)).train()
    calls = []
    net.block.s4.layer.kernel.register_forward_hook(lambda *a: calls.append(1))
    net(torch.randn(1, 400)).sum().backward()
    assert len(calls) == 1  # 4 passes, one kernel
    assert net.block.s4.layer._memo is None  # nothing of this pass's graph is kept after it
    net(torch.randn(1, 400)).sum().backward()
    assert len(calls) == 2  # each forward computes it afresh (the parameters may have changed in between)


def test_named_configurations_table_is_a_full_mapping_before_first_use():
    """`CONFIGS` is gathered from the network modules on first use, whichever mapping method comes first."""
    from sepcli.nets import configs, s4m, spmamba

    fresh = configs._Lazy()
    want = {**s4m.CONFIGS, **spmamba.CONFIGS}
    assert len(fresh) == len(want) > 0 and bool(configs._Lazy())
    assert configs._Lazy().get("s4m-small-16k") == want["s4m-small-16k"]
    assert dict(configs._Lazy().items()) == want and list(configs._Lazy().values()) == list(want.values())
