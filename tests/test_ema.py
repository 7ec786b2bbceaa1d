"""The moving average of the weights (`sepcli train --ema`): its update against the formula written plainly, and in
training: it averages the weights of every step, validation and the best/ export use it, the raw weights are still
what trains and is logged beside it, and an interrupted run resumes to the same average."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from sepcli.train import trainer
from sepcli.train.data import LibriMixDataset
from sepcli.train.ema import WeightAverage
from sepcli.train.trainer import TrainConfig, train, validate

SR = 8000
TINY = {"sample_rate": SR, "bn_channels": 8, "hidden": 8, "num_blocks": 1, "depth": 2, "enc_kernel_ms": 2.0}


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


@pytest.fixture(scope="module")
def librimix(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    rng = np.random.default_rng(3)
    for sub in ("mix", "s1", "s2"):
        (d / sub).mkdir()
    t = np.arange(SR) / SR
    for i in range(4):
        a = np.sin(2 * np.pi * rng.uniform(100, 140) * t) * np.clip(np.sin(2 * np.pi * 3 * t + i), 0, None)
        b = np.sign(np.sin(2 * np.pi * rng.uniform(230, 270) * t)) * np.clip(np.cos(2 * np.pi * 2 * t + i), 0, None)
        sf.write(d / "s1" / f"{i}.wav", 0.3 * a, SR, subtype="FLOAT")
        sf.write(d / "s2" / f"{i}.wav", 0.2 * b, SR, subtype="FLOAT")
        sf.write(d / "mix" / f"{i}.wav", 0.3 * a + 0.2 * b, SR, subtype="FLOAT")
    return d


def cfg(out, data, **kw):
    base = dict(out=out, arch="s4m-tiny-8k", arch_args=dict(TINY), data=data, val_data=data, segment=0.5,
                batch_size=2, lr=3e-3, warmup=1, ckpt_minutes=60, quiet=True, seed=0, ema=0.8)
    base.update(kw)
    return TrainConfig(**base)


def test_training_validates_and_exports_the_average_of_every_steps_weights(tmp_path, librimix, monkeypatch):
    snaps = []
    real_step = trainer.train_step

    def recording_step(net, *args, **kw):
        if not snaps:  # the weights the average starts from
            snaps.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        loss = real_step(net, *args, **kw)
        snaps.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        return loss

    monkeypatch.setattr(trainer, "train_step", recording_step)
    out = train(cfg(tmp_path / "run", librimix, steps=6, epoch_steps=6))
    assert out["step"] == 6 and len(snaps) == 7
    ref = reference_average(snaps, 0.8)
    exported = load_file(tmp_path / "run" / "best" / "weights.safetensors")
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for k, v in ref.items():
        torch.testing.assert_close(exported[k].double(), v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ckpt["ema"]["shadow"][k].double(), v, rtol=1e-5, atol=1e-6)
        assert torch.equal(ckpt["model"][k], snaps[-1][k])  # training keeps stepping the raw weights
    assert not all(torch.equal(exported[k], snaps[-1][k]) for k in exported)

    # the log's score is the average's, and the raw weights' score is beside it
    rec = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    from sepcli.nets import build_network

    net = build_network(ckpt["arch"], ckpt["arch_args"])
    ds = LibriMixDataset(librimix, SR)
    net.load_state_dict(exported)
    assert rec["si_snri"] == pytest.approx(validate(net, ds)["si_snri"], abs=1e-4)
    net.load_state_dict(ckpt["model"])
    assert rec["raw_si_snri"] == pytest.approx(validate(net, ds)["si_snri"], abs=1e-4)
    assert rec["si_snri"] != pytest.approx(rec["raw_si_snri"], abs=1e-6)


def test_interrupt_and_resume_keeps_the_same_average(tmp_path, librimix):
    straight = train(cfg(tmp_path / "a", librimix, steps=5, epoch_steps=3))
    part = cfg(tmp_path / "b", librimix, steps=5, epoch_steps=3)
    part.max_minutes = 0.0  # stops with a checkpoint after the first step
    assert train(part)["step"] == 1
    resumed = train(cfg(tmp_path / "b", librimix, steps=5, epoch_steps=3, resume=True))
    assert straight["step"] == resumed["step"] == 5
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["ema"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["ema"]
    assert a["updates"] == b["updates"] == 5
    assert all(torch.equal(a["shadow"][k], b["shadow"][k]) for k in a["shadow"])


def test_resuming_a_run_without_an_average_starts_it_from_the_checkpoints_weights(tmp_path, librimix):
    train(cfg(tmp_path / "r", librimix, steps=2, epoch_steps=2, ema=None))
    before = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert before["ema"] is None
    part = cfg(tmp_path / "r", librimix, steps=3, epoch_steps=5, resume=True)
    train(part)
    after = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    # one update at decay min(0.8, 1/10) = 0.1 from the resumed weights w2 towards the new w3
    for k, w2 in before["model"].items():
        torch.testing.assert_close(after["ema"]["shadow"][k], 0.1 * w2 + 0.9 * after["model"][k])
