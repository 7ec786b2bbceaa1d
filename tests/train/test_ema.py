"""The moving average of the weights (`sepcli train --ema`): its update against the formula written plainly. In
training (tests/train/test_training.py): it averages every step's weights, validation and the best/ export use it,
the raw weights still train and are logged beside it, and an interrupted run resumes to the same average."""

import pytest
import torch

from sepcli.train.ema import WeightAverage

def reference_average(snapshots, decay):
    """s <- d*s + (1-d)*w for each later snapshot w, d = min(decay, (1+n)/(10+n)) at the n-th update (n from 0)."""
    avg = {k: v.double().clone() for k, v in snapshots[0].items()}
    for n, w in enumerate(snapshots[1:]):
        d = min(decay, (1 + n) / (10 + n))
        avg = {k: d * avg[k] + (1 - d) * w[k].double() for k in avg}
    return avg


class WithCounter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def test_update_follows_the_formula_and_copies_integer_buffers():
    torch.manual_seed(0)
    m = WithCounter()
    avg = WeightAverage(m, 0.9)
    snaps = [{k: v.clone() for k, v in m.state_dict().items() if v.is_floating_point()}]
    for _ in range(120):  # the ramp (1+n)/(10+n) reaches 0.9 at n = 80: both regimes
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
            m.count += 1
        avg.update(m)
        snaps.append({k: v.clone() for k, v in m.state_dict().items() if v.is_floating_point()})
    ref = reference_average(snaps, 0.9)
    for k, v in ref.items():
        torch.testing.assert_close(avg.shadow[k].double(), v, rtol=1e-5, atol=1e-6)
    assert int(avg.shadow["count"]) == 120 and avg.updates == 120


def test_decay_caps_the_ramp():
    m = torch.nn.Linear(2, 2)
    avg = WeightAverage(m, 0.99)
    seen = []
    for _ in range(1000):
        seen.append(avg.current_decay())
        avg.update(m)
    assert seen[0] == pytest.approx(0.1) and seen[8] == pytest.approx(0.5)
    assert max(seen) == 0.99 and seen.index(0.99) == 890  # (1+n)/(10+n) >= 0.99 from n = 890 on


def test_applied_swaps_the_average_in_and_always_restores_the_weights():
    torch.manual_seed(1)
    m = torch.nn.Linear(4, 4)
    avg = WeightAverage(m, 0.5)
    with torch.no_grad():
        m.weight.add_(1.0)
    own = m.weight.detach().clone()
    with avg.applied(m):
        assert torch.equal(m.weight, avg.shadow["weight"]) and not torch.equal(m.weight, own)
    assert torch.equal(m.weight, own)
    with pytest.raises(RuntimeError), avg.applied(m):
        raise RuntimeError("validation failed")
    assert torch.equal(m.weight, own)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match="between 0 and 1"):
        WeightAverage(torch.nn.Linear(1, 1), decay)


def test_a_checkpoint_of_another_network_is_refused():
    avg = WeightAverage(torch.nn.Linear(2, 2), 0.9)
    other = WeightAverage(torch.nn.Linear(2, 2, bias=False), 0.9)
    with pytest.raises(ValueError, match="another network"):
        avg.load_state_dict(other.state_dict())
