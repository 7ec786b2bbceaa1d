"""S4M network: sizes against the paper, shapes for any length, determinism, gradients."""

import pytest
import torch

from sepcli.nets import build_network, named_config


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


def test_batch_items_are_independent_and_deterministic(small):
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
