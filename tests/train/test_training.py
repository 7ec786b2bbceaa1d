"""Training: the loss goes down, an interrupted run resumes to exactly the state of an uninterrupted one,
DDP under torchrun produces a loadable model folder, and the data recipe's split keeps persons apart."""

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from sepcli.train.data import LibriMixDataset
from sepcli.train.mixing import MixOptions, choose_persons, make_mixture, rng_for
from sepcli.train.speakers import Speaker, assign_splits, check_disjoint, load_pool, read_index, write_index
from sepcli import metrics
from sepcli.train import trainer
from sepcli.train.checkpoint import changed_facts
from sepcli.train.network import network_for
from sepcli.train.trainer import Schedule, TrainConfig, batch_indices, format_eta, train, train_step, validate
from tests.train.test_ema import reference_average as ema_reference

SR = 8000
TINY = {"sample_rate": SR, "bn_channels": 8, "hidden": 8, "num_blocks": 1, "depth": 2, "enc_kernel_ms": 2.0}


def voice(rng, f0, seconds):
    """A crude voiced signal: harmonics of a wandering pitch with a syllable envelope."""
    t = np.arange(int(seconds * SR)) / SR
    pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = np.clip(np.sin(2 * np.pi * rng.uniform(2, 4) * t + rng.uniform(0, 6)), 0, None)
    return (x * env).astype(np.float32)


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """Four 'persons' (low and high voices) with pools, split 3 train / 1 val."""
    d = tmp_path_factory.mktemp("pools")
    rng = np.random.default_rng(0)
    spk = []
    for i, f0 in enumerate([100, 120, 220, 260]):
        np.save(d / f"p{i}.npy", voice(rng, f0, 20).astype(np.float16))
        spk.append(Speaker(id=f"p{i}", person=f"p{i}", kind="real", split="val" if i == 3 else "train",
                           seconds=20.0))
    write_index(d, SR, spk)
    return d


@pytest.fixture(scope="module")
def librimix(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    rng = np.random.default_rng(1)
    for sub in ("mix", "s1", "s2"):
        (d / sub).mkdir()
    for i in range(6):
        a, b = voice(rng, 110, 1.0), voice(rng, 240, 1.0)
        sf.write(d / "s1" / f"{i}.wav", a * 0.3, SR, subtype="FLOAT")
        sf.write(d / "s2" / f"{i}.wav", b * 0.3, SR, subtype="FLOAT")
        sf.write(d / "mix" / f"{i}.wav", (a + b) * 0.3, SR, subtype="FLOAT")
    return d


def cfg(out, **kw):
    base = dict(out=out, arch="s4m-tiny-8k", arch_args=TINY, segment=0.5, batch_size=2, lr=3e-3,
                warmup=1, threads=1, quiet=True, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_the_loss(tmp_path, librimix):
    r = train(cfg(tmp_path / "run", data=librimix, steps=60, val_data=librimix))
    hist = [h for h in r["history"] if "si_snri" in h]
    assert hist[-1]["si_snri"] > hist[0]["si_snri"] + 1.0, hist
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    folder = Path(r["export"])
    conf = json.loads((folder / "config.json").read_text())
    assert conf["arch"] == "s4m" and conf["sample_rate"] == SR
    assert set(load_file(folder / "weights.safetensors")) == set(build_state_keys())
    card = (folder / "MODEL_CARD.md").read_text()  # the exported folder is a complete model folder
    assert f"step {conf['provenance']['step']}" in card and f"{conf['eval']['val_si_snri']:.2f} dB" in card
    assert "s4m-tiny-8k" in card and str(librimix) in card  # the configuration and the data it trained on
    # the optimiser is Adam (its two moment buffers per parameter) at the clipping norm
    ck = _weights(tmp_path / "run")
    assert ck["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert all({"exp_avg", "exp_avg_sq"} <= set(st) for st in ck["optimizer"]["state"].values())
    assert json.loads(ck["config"])["clip"] == 5.0


class _Fir(torch.nn.Module):
    """A two-output FIR filter of the mixture: a network whose loss gradient is easy to get and to make large."""

    def __init__(self, scale: float):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(1, 2, 9, padding=4)
        with torch.no_grad():
            self.conv.weight.mul_(scale)
            self.conv.bias.zero_()

    def forward(self, mix):
        return self.conv(mix.unsqueeze(1))


@pytest.mark.parametrize("scale", [1e-4, 10.0])
def test_train_step_clips_the_global_gradient_norm(scale):
    """With plain SGD (lr 1) the step moves the weights by exactly the clipped gradient: g * min(1, 5 / |g|)."""
    rng = np.random.default_rng(1)
    ref = torch.tensor(rng.standard_normal((2, 2, 400)), dtype=torch.float32)
    mix = ref.sum(1)
    net = _Fir(scale)
    params = [p.detach().clone() for p in net.parameters()]
    probe = _Fir(scale)  # the unclipped gradient, computed separately
    metrics.pit_loss(probe(mix), ref).backward()
    grads = [p.grad for p in probe.parameters()]
    norm = float(torch.sqrt(sum((g ** 2).sum() for g in grads)))
    train_step(net, torch.optim.SGD(net.parameters(), lr=1.0), mix, ref, clip=5.0)
    factor = min(1.0, 5.0 / norm)
    assert (norm > 50) if scale < 1 else (norm < 5)  # SI-SNR's gradient scales as 1/filter: clipped / not
    for before, after, g in zip(params, net.parameters(), grads):
        torch.testing.assert_close(before - after.detach(), g * factor, rtol=1e-4, atol=1e-7)


def test_schedule_warms_up_linearly_and_halves_after_patience_validations_without_a_new_best():
    s = Schedule(base=1e-3, warmup=10, patience=3)
    assert [s.lr(k) for k in (0, 4, 9, 500)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3])
    assert s.validated(2.0) and not s.validated(1.9) and not s.validated(2.0)  # equal is not a new best
    assert s.lr(500) == pytest.approx(1e-3)
    assert not s.validated(1.0)  # third miss in a row: halve
    assert s.lr(500) == pytest.approx(5e-4)
    assert not s.validated(1.5) and not s.validated(1.5) and s.validated(2.5)  # a new best resets the count
    assert not s.validated(0) and not s.validated(0) and s.lr(500) == pytest.approx(5e-4)
    assert not s.validated(0) and s.lr(500) == pytest.approx(2.5e-4)
    restored = Schedule(1e-3, 10, 3)
    restored.load_state_dict(s.state_dict())
    assert (restored.scale, restored.best, restored.bad, restored.lr(7)) == (s.scale, s.best, s.bad, s.lr(7))


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (44.6, "45s"), (59.6, "1m00s"), (725, "12m05s"),
                                          (3599.6, "1h00m"), (11220, "3h07m"), (151_200, "42h00m")])
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text


def test_progress_lines_show_step_loss_speed_and_eta(tmp_path, librimix, capsys):
    """Without a terminal (a log file, CI) training prints one line per `log_every` steps."""
    import re

    train(cfg(tmp_path / "run", data=librimix, steps=3, log_every=1, quiet=False))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"]
    pat = re.compile(r"step \d+/3 loss -?\d+\.\d{3} \d+\.\d{2} s/step ETA (\d+s|\d+m\d\ds|\d+h\d\dm)$")
    assert all(pat.match(ln) for ln in lines), lines
    assert lines[-1].endswith("ETA 0s")


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, librimix):
    """--compile changes how the step runs, not what it computes: same steps, same weights (float tolerance)."""
    runs = {}
    for mode in (False, True):
        r = train(cfg(tmp_path / f"run{int(mode)}", data=librimix, steps=3, compile=mode))
        assert r["step"] == 3
        runs[mode] = _weights(tmp_path / f"run{int(mode)}")["model"]
    eager, compiled = runs[False], runs[True]
    assert eager.keys() == compiled.keys()
    init = build_network_tiny().state_dict()
    moved = max((eager[k] - init[k]).abs().max().item() for k in eager)
    assert moved > 1e-3  # the runs trained
    worst = max((eager[k] - compiled[k]).abs().max().item() for k in eager)
    assert worst < 0.01 * moved, (worst, moved)


def build_network_tiny():
    from sepcli.nets import build_network

    torch.manual_seed(cfg(None).seed)  # the trainer seeds before building: the same initial weights
    return build_network("s4m", TINY)


def build_state_keys():
    from sepcli.nets import build_network

    return build_network("s4m", TINY).state_dict().keys()


def _weights(run):
    return torch.load(run / "last.pt", weights_only=True)


@pytest.mark.parametrize("source", ["pools", "librimix"])
def test_interrupt_and_resume_equals_straight_run(tmp_path, pools, librimix, source):
    data = {"pools": pools} if source == "pools" else {"data": librimix}
    straight = train(cfg(tmp_path / "a", steps=6, epoch_steps=3, **data))
    part = cfg(tmp_path / "b", steps=6, epoch_steps=3, **data)
    part.max_minutes = 0.0  # stops (with a checkpoint) right after the first step
    first = train(part)
    assert first["stopped"] and first["step"] == 1
    resumed = train(cfg(tmp_path / "b", steps=6, epoch_steps=3, resume=True, **data))
    assert straight["step"] == resumed["step"] == 6
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["schedule"] == b["schedule"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    # the logged training loss (a mean over recent steps) is the same as well: its window is checkpointed
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_and_resume_equals_straight_run(tmp_path, librimix, monkeypatch, signum):
    """Ctrl-C or SIGTERM during step 2 finishes that step, writes a checkpoint and returns; resuming then ends
    with the same weights as a run never interrupted, and the process's own signal handlers are back."""
    import signal

    from sepcli.train import trainer

    sig = getattr(signal, signum)
    straight = train(cfg(tmp_path / "a", data=librimix, steps=5, epoch_steps=3))
    real_step, calls = trainer.train_step, []

    def step_then_signal(*args, **kw):
        loss = real_step(*args, **kw)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), sig)
        return loss

    handler_before = signal.getsignal(sig)
    monkeypatch.setattr(trainer, "train_step", step_then_signal)
    first = train(cfg(tmp_path / "b", data=librimix, steps=5, epoch_steps=3))
    assert first["stopped"] and first["step"] == 2 and _weights(tmp_path / "b")["step"] == 2
    assert signal.getsignal(sig) is handler_before
    monkeypatch.setattr(trainer, "train_step", real_step)
    resumed = train(cfg(tmp_path / "b", data=librimix, steps=5, epoch_steps=3, resume=True))
    assert straight["step"] == resumed["step"] == 5
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_restores_the_lr_schedule(tmp_path, librimix, monkeypatch):
    """Validations after each epoch of 3 steps score 1.0, then 0.5, then 0.4 (scripted, so the schedule's course
    is known): with patience 1 the lr halves at steps 6 and 9. A run stopped by a signal at step 4 (after the
    first validation) and resumed must end with the same schedule and weights as the straight run; a resume
    that forgot the schedule would take step 6's 0.5 for a new best and keep the lr."""
    import signal

    from sepcli.train import trainer

    def scripted(scores):
        it = iter(scores)
        return lambda *a, **k: {"si_snri": next(it)}

    kw = dict(data=librimix, val_data=librimix, steps=9, patience=1)
    monkeypatch.setattr(trainer, "validate", scripted([1.0, 0.5, 0.4]))
    straight = train(cfg(tmp_path / "a", **kw))
    real_step, calls = trainer.train_step, []

    def step_then_signal(*args, **k):
        loss = real_step(*args, **k)
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(trainer, "validate", scripted([1.0]))
    monkeypatch.setattr(trainer, "train_step", step_then_signal)
    assert train(cfg(tmp_path / "b", **kw))["step"] == 4
    monkeypatch.setattr(trainer, "train_step", real_step)
    monkeypatch.setattr(trainer, "validate", scripted([0.5, 0.4]))
    resumed = train(cfg(tmp_path / "b", resume=True, **kw))
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a["schedule"]["scale"] == 0.25 and a["schedule"]["best"] == 1.0
    assert b["schedule"] == a["schedule"]
    assert [h["step"] for h in straight["history"]] == [3, 6, 9]
    assert [h["lr"] for h in resumed["history"]] == [h["lr"] for h in straight["history"]]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("minutes,saved_at", [(1e-9, [1, 2, 3]), (60.0, [3])])
def test_checkpoints_are_written_every_ckpt_minutes_and_at_the_end(tmp_path, librimix, monkeypatch, minutes,
                                                                    saved_at):
    """A checkpoint whenever `ckpt_minutes` have passed since the last one (every step when that is ~0), and
    always at the end."""
    from sepcli.train import trainer

    steps, real_save = [], trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint",
                        lambda path, state: (steps.append(state["step"]), real_save(path, state)))
    train(cfg(tmp_path / "run", data=librimix, steps=3, ckpt_minutes=minutes))
    assert steps == saved_at


def test_export_rewrites_its_own_card_and_keeps_a_hand_written_one(tmp_path):
    from sepcli.train.export import export_model_folder

    meta = {"arch": "s4m", "arch_args": TINY, "sample_rate": SR, "n_src": 2}
    folder, net = tmp_path / "best", build_network_tiny()

    def export(step):
        export_model_folder(folder, net, meta, name="m", history=[{"step": step, "si_snri": step / 10}])
        return (folder / "MODEL_CARD.md").read_text()

    assert "to step 3;" in export(3) and "0.30 dB" in export(3)
    assert "to step 7;" in export(7) and "to step 3;" not in export(7)  # its own card describes the new export
    (folder / "MODEL_CARD.md").write_text("# mine\nWritten by hand.\n")
    assert export(9) == "# mine\nWritten by hand.\n"


@pytest.mark.parametrize("umask,dir_mode,file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_exported_model_folder_has_the_modes_of_the_umask(tmp_path, umask, dir_mode, file_mode):
    import os

    from sepcli.train.export import export_model_folder

    meta = {"arch": "s4m", "arch_args": TINY, "sample_rate": SR, "n_src": 2}
    old = os.umask(umask)
    try:
        folder = export_model_folder(tmp_path / "best", build_network_tiny(), meta, name="m")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == dir_mode  # mkdtemp alone gave 0700, save_file 0600
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        n: file_mode for n in ("weights.safetensors", "config.json", "MODEL_CARD.md")}


def test_resume_with_lr_scale_sets_the_lr_from_there_on(tmp_path, librimix):
    """--lr-scale on resume: the schedule's scale is replaced (patience restarts) and the steps after it run at
    lr * scale; without it the saved scale is kept."""
    from sepcli.train.trainer import TrainError

    run = tmp_path / "run"
    train(cfg(run, data=librimix, steps=2, resume=True))
    train(cfg(run, data=librimix, steps=4, resume=True, lr_scale=0.25))
    ck = _weights(run)
    assert ck["step"] == 4 and ck["schedule"]["scale"] == 0.25 and ck["schedule"]["bad"] == 0
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-3 * 0.25)
    train(cfg(run, data=librimix, steps=5, resume=True))
    assert _weights(run)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-3 * 0.25)
    with pytest.raises(TrainError, match="lr-scale"):
        train(cfg(run, data=librimix, steps=6, resume=True, lr_scale=0.0))


def test_resume_refuses_another_network(tmp_path, librimix):
    train(cfg(tmp_path / "r", data=librimix, steps=1))
    other = cfg(tmp_path / "r", data=librimix, steps=2, resume=True, arch_args={**TINY, "hidden": 16})
    with pytest.raises(RuntimeError, match="another network"):
        train(other)


def test_batch_indices_split_ranks_without_overlap():
    seen = []
    for step in range(5):
        for rank in range(3):
            seen += batch_indices(step, rank, 3, 4, 60, seed=0, steps_per_epoch=5)
    assert sorted(seen) == list(range(60))  # one epoch: every item exactly once over all ranks
    dyn = [i for r in range(2) for i in batch_indices(7, r, 2, 3, None, 0, 10)]
    assert len(set(dyn)) == 6


def test_mixtures_are_deterministic_and_of_different_persons(pools):
    sr, spk, audio = load_pool(pools, "train")
    persons = [s.person for s in spk]
    opt = MixOptions(seconds=0.5, reverb_prob=0.5, noise_prob=0.5)
    for i in range(20):
        m1, s1, meta = make_mixture(rng_for(9, i), audio, persons, sr, opt)
        m2, s2, _ = make_mixture(rng_for(9, i), audio, persons, sr, opt)
        assert np.array_equal(m1, m2) and np.array_equal(s1, s2)
        assert len(set(meta["speakers"])) == 2
        assert s1.shape == (2, SR // 2) and np.abs(m1).max() <= 0.95 + 1e-6


def test_relative_gain_of_two_sources_is_uniform_within_plus_minus_gain_db(pools):
    """The level difference of the two returned sources (measured on the arrays, not the metadata) lies in
    -5..+5 dB and is uniform there (Kolmogorov-Smirnov against U(-5, 5)); with three sources any two differ by at
    most 5 dB. Per-source gains of +-5 dB centred afterwards would give differences up to +-10 dB."""
    from scipy.stats import kstest

    sr, spk, audio = load_pool(pools, "train")
    persons = [s.person for s in spk]
    level = lambda x: 20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))))  # noqa: E731
    diffs = []
    for i in range(400):
        _, s, meta = make_mixture(rng_for(4, i), audio, persons, sr, MixOptions(seconds=0.25, reverb_prob=0.3))
        diffs.append(level(s[0]) - level(s[1]))
        assert abs(diffs[-1] - (meta["gains_db"][0] - meta["gains_db"][1])) < 0.02
    diffs = np.array(diffs)
    assert np.abs(diffs).max() <= 5 + 1e-3
    assert kstest(diffs, "uniform", args=(-5, 10)).pvalue > 0.01
    for i in range(100):
        _, s, _ = make_mixture(rng_for(4, i), audio, persons, sr, MixOptions(seconds=0.25, n_src=3))
        lv = [level(x) for x in s]
        assert max(lv) - min(lv) <= 5 + 1e-3


def test_real_share_oversamples_real_persons(pools):
    sr, spk, audio = load_pool(pools, "train")
    persons = [s.person for s in spk]
    real = {"p0"}  # one 'real' person among three
    counts = {True: 0, False: 0}
    for share in (None, 0.8):
        n_real = 0
        for i in range(300):
            _, _, meta = make_mixture(rng_for(5, i), audio, persons, sr, MixOptions(seconds=0.25, real_share=share),
                                      real)
            assert len(set(meta["speakers"])) == 2
            n_real += "p0" in meta["speakers"]
        counts[share is None] = n_real / 300
    assert abs(counts[True] - 2 / 3) < 0.08  # uniform over 3 persons: p0 in 2/3 of the pairs
    assert counts[False] > 0.9  # 1 - 0.2^2 = 0.96



def test_mixed_share_sets_the_share_of_real_plus_synthetic_pairs(pools):
    """With mixed_share, pairs are real+synthetic at that rate and otherwise of one kind, real at real_share:
    counted over 1000 mixtures against those probabilities."""
    sr, _, audio = load_pool(pools, "train")
    persons = ["r1", "r2", "s1", "s2"]
    audio = [audio[0], audio[1], audio[0], audio[1]]
    kinds = {"rr": 0, "ss": 0, "mixed": 0}
    n = 1000
    for i in range(n):
        _, _, meta = make_mixture(rng_for(8, i), audio, persons, sr,
                                  MixOptions(seconds=0.25, real_share=0.7, mixed_share=0.1), {"r1", "r2"})
        a, b = meta["speakers"]
        assert a != b
        k = {a[0], b[0]}
        kinds["mixed" if k == {"r", "s"} else ("rr" if k == {"r"} else "ss")] += 1
    assert abs(kinds["mixed"] / n - 0.1) < 0.03
    assert abs(kinds["rr"] / n - 0.9 * 0.7) < 0.05 and abs(kinds["ss"] / n - 0.9 * 0.3) < 0.05

@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_person_power_draws_persons_by_their_seconds_of_speech(power):
    """Persons are drawn with probability ∝ seconds**power, two different ones per mixture: each person's share
    of 3000 mixtures matches the exact chance of being in a pair drawn that way without replacement."""
    rng = np.random.default_rng(0)
    seconds = {"a": 1.0, "b": 4.0, "c": 16.0, "d": 16.0}
    persons = ["a", "b", "c", "c", "d"]  # c has two entries of 8 s: its seconds are their sum
    lengths = [1.0, 4.0, 8.0, 8.0, 16.0]
    audio = [voice(rng, 150, s) for s in lengths]
    w = {p: s ** power for p, s in seconds.items()}
    total = sum(w.values())
    expect = {p: w[p] / total + sum(w[q] / total * w[p] / (total - w[q]) for q in w if q != p) for p in w}
    n = 3000
    counts = dict.fromkeys(w, 0)
    for i in range(n):
        _, _, meta = make_mixture(rng_for(4, i), audio, persons, SR, MixOptions(seconds=0.25, person_power=power))
        assert len(set(meta["speakers"])) == 2
        for p in meta["speakers"]:
            counts[p] += 1
    for p in w:
        assert abs(counts[p] / n - expect[p]) < 0.035, (p, counts[p] / n, expect[p])
    # with real_share the weights act within the chosen kind: real persons a, b, synthetic c
    gen = np.random.default_rng(5)
    weights = np.array([seconds[p] ** power for p in "abc"])
    draws = [choose_persons(gen, ["a", "b", "c"], {"a", "b"}, 1, 1.0, None, weights)[0] for _ in range(2000)]
    assert 2 not in draws and abs(draws.count(0) / 2000 - weights[0] / weights[:2].sum()) < 0.035
    # persons whose weights are all zero (empty pools) are drawn uniformly rather than failing
    zero = np.zeros(3)
    assert sorted(choose_persons(np.random.default_rng(1), ["a", "b", "c"], set(), 3, None, None, zero)) == [0, 1, 2]


def test_split_by_person_never_leaks():
    persons = ["allison", "june", "carlo", "mbrola-us1", "mbrola-us2"]
    split = assign_splits(persons, {"june": "test", "mbrola-us2": "val"})
    assert split == {"allison": "train", "june": "test", "carlo": "train", "mbrola-us1": "train",
                     "mbrola-us2": "val"}
    # one person with two speaker entries (Allison speaks two languages) cannot straddle splits
    ok = [Speaker("allison-en", "allison", "real", "train", 1.0),
          Speaker("allison-es", "allison", "real", "train", 1.0)]
    check_disjoint(ok)
    with pytest.raises(ValueError, match="allison"):
        check_disjoint([ok[0], Speaker("allison-es", "allison", "real", "test", 1.0)])


def test_recipe_split_holds_out_real_people(tmp_path):
    """The recipe's real sources, split by its HELD_OUT table: >= 2 real test people, no person in two splits,
    and the speaker index refuses a pool where one person straddles splits."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    jobs = make_data.real_jobs()
    if len(jobs) < 5:
        pytest.skip("the recipe's Debian speech packages are not installed here")
    persons = sorted({person for _, person, _ in jobs})
    split = assign_splits(persons, make_data.HELD_OUT)
    test_people = [p for p in persons if split[p] == "test"]
    assert len(test_people) >= 2, test_people
    speakers = [Speaker(sid, person, "real", split[person], 1.0) for sid, person, _ in jobs]
    write_index(tmp_path, 16000, speakers)  # raises if a person were in two splits
    allison = {s.split for s in speakers if s.person == "allison"}
    assert len([s for s in speakers if s.person == "allison"]) == 2 and len(allison) == 1


def test_recipe_fillets_takes_each_dubs_two_heroes_as_their_own_persons(tmp_path):
    """Fish Fillets: per dub (nl, cs) the small fish (-m-) and the big fish (-v-) are two persons; the Czech
    actors are other persons than the Dutch; side roles (other codes) and other languages are left out."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    names = {"nl": ["city-m-hi.ogg", "city-v-no.ogg", "city-hs-boss.ogg"],
             "cs": ["let-m-oko.ogg", "let-m-divna.ogg", "let-v-oko.ogg", "let-4-robot.ogg"],
             "de": ["let-m-oko.ogg"]}
    for lang, files in names.items():
        for name in files:
            level = name.split("-")[0]
            (tmp_path / level / lang).mkdir(parents=True, exist_ok=True)
            (tmp_path / level / lang / name).write_bytes(b"")
    jobs = make_data.fillets_jobs(str(tmp_path))
    assert [(sid, person, [Path(f).name for f in files]) for sid, person, files in jobs] == [
        ("fillets-small-fish", "fillets-small-fish", ["city-m-hi.ogg"]),
        ("fillets-big-fish", "fillets-big-fish", ["city-v-no.ogg"]),
        ("fillets-cs-small-fish", "fillets-cs-small-fish", ["let-m-divna.ogg", "let-m-oko.ogg"]),
        ("fillets-cs-big-fish", "fillets-cs-big-fish", ["let-v-oko.ogg"])]
    assert all(make_data.assign_splits([p for _, p, _ in jobs], make_data.HELD_OUT)[p] == "train"
               for _, p, _ in jobs)


def test_recipe_drascula_takes_each_releases_hero_and_decodes_raw_8_bit_speech(tmp_path):
    """Drascula: the numbered files (<n>.ALS) of the English and the Spanish release are the hero, one person per
    cast; letter-prefixed files (other characters, S = effects) and other folders are left out. An .ALS file is
    raw unsigned 8-bit PCM at 11025 Hz: 128 is silence."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    tone = np.round(128 + 100 * np.sin(2 * np.pi * 440 * np.arange(11025) / 11025)).astype(np.uint8)
    for lang, names in {"en": ["1.ALS", "12.ALS", "D3.ALS", "S1.ALS", "1.ALD"], "es": ["7.ALS", "VB2.ALS"],
                        "audio": ["track1.ogg"]}.items():
        (tmp_path / lang).mkdir()
        for name in names:
            tone.tofile(tmp_path / lang / name)
    jobs = make_data.drascula_jobs(str(tmp_path))
    assert [(sid, person, [Path(f).name for f in files]) for sid, person, files in jobs] == [
        ("drascula-en-hero", "drascula-en-hero", ["1.ALS", "12.ALS"]),
        ("drascula-es-hero", "drascula-es-hero", ["7.ALS"])]
    assert all(sid.startswith(make_data.NARROWBAND) for sid, _, _ in jobs)  # 11 kHz: not in seen_real
    x, rate = make_data.decode(jobs[0][2][0])
    assert rate == 11025 and x.dtype == np.float32
    np.testing.assert_allclose(x, (tone.astype(np.float32) - 128) / 128)
    assert abs(x.max() - 100 / 128) < 1 / 128 and abs(x.mean()) < 1e-3


def test_recipe_ktuberling_takes_folders_with_enough_wideband_speech(tmp_path, monkeypatch):
    """One person per language folder; 8 kHz files are left out and folders under the minimum are skipped."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    def wav(path, seconds, sr):
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.zeros(int(seconds * sr), np.float32), sr)

    for i in range(3):
        wav(tmp_path / "aa" / f"w{i}.wav", 20.0, 44100)  # 60 s wideband: taken
    wav(tmp_path / "aa" / "narrow.wav", 20.0, 8000)      # 8 kHz: left out
    wav(tmp_path / "bb" / "w.wav", 30.0, 22050)          # 30 s: too little
    for i in range(5):
        wav(tmp_path / "cc" / f"n{i}.wav", 20.0, 8000)   # 100 s, all narrowband: skipped
    (tmp_path / "aa.soundtheme").write_text("not a folder")
    monkeypatch.setattr(make_data, "KTUBERLING", str(tmp_path))
    jobs = make_data.ktuberling_jobs(min_seconds=45.0)
    assert [(sid, person, [Path(f).name for f in files]) for sid, person, files in jobs] == [
        ("ktuberling-aa", "ktuberling-aa", ["w0.wav", "w1.wav", "w2.wav"])]



def test_recipe_uqm_takes_one_speaker_per_race_from_the_archive(tmp_path):
    """The UQM voice pack is a zip: one training speaker per race folder, the machine voice `probe` and
    non-audio members left out, and members decode straight from the archive."""
    import zipfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    sr = 11025
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(sr) / sr)).astype(np.float32)
    archive = tmp_path / "voice.uqm"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("3dovoice/spathi/spathi-002.ogg", "3dovoice/spathi/spathi-001.ogg",
                     "3dovoice/probe/probe-001.ogg", "3dovoice/vux/vux-001.ogg"):
            f = tmp_path / "t.ogg"
            sf.write(f, tone, sr, format="OGG", subtype="VORBIS")
            z.write(f, name)
        z.writestr("3dovoice/spathi/spathi.ts", "subtitles")
        z.writestr("3dovoice/readme.ogg", "not a race")
    jobs = make_data.uqm_jobs(str(archive))
    assert [(sid, person, [f.split("::")[1] for f in files]) for sid, person, files in jobs] == [
        ("uqm-spathi", "uqm-spathi", ["3dovoice/spathi/spathi-001.ogg", "3dovoice/spathi/spathi-002.ogg"]),
        ("uqm-vux", "uqm-vux", ["3dovoice/vux/vux-001.ogg"])]
    assert all(assign_splits([p for _, p, _ in jobs], make_data.HELD_OUT)[p] == "train" for _, p, _ in jobs)
    x, rate = make_data.decode(jobs[1][2][0])
    assert rate == sr and abs(len(x) - sr) < 64
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * sr / len(x) - 440.0) < 2.0
    assert make_data.uqm_jobs(str(tmp_path / "absent.uqm")) == []



def test_recipe_tuxpaint_and_hedgewars_sources(tmp_path):
    """Tux Paint: one person per description language with enough wideband speech (outline variants and 8 kHz
    files left out); Hedgewars: one entry per voice pack, the processed Robot pack left out."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    def wav(path, seconds, sr):
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.zeros(int(seconds * sr), np.float32), sr, format="OGG", subtype="VORBIS")

    stamps = tmp_path / "stamps"
    for i in range(3):
        wav(stamps / "animals" / f"cat{i}_desc_fr.ogg", 2.0, 44100)
        wav(stamps / "food" / "fruit" / f"apple{i}_desc_pt_BR.ogg", 2.0, 44100)
    wav(stamps / "animals" / "cat_outline_desc_fr.ogg", 2.0, 44100)  # outline variant: not taken
    wav(stamps / "animals" / "dog_desc_fr.ogg", 2.0, 8000)           # narrowband: not taken
    wav(stamps / "animals" / "dog_desc_da.ogg", 1.0, 44100)          # too little speech in Danish
    wav(stamps / "animals" / "dog.ogg", 2.0, 44100)                  # a sound effect
    jobs = make_data.tuxpaint_jobs(str(stamps), min_seconds=5.0)
    assert [(sid, person, sorted(Path(f).name for f in files)) for sid, person, files in jobs] == [
        ("tuxpaint-fr", "tuxpaint-fr", ["cat0_desc_fr.ogg", "cat1_desc_fr.ogg", "cat2_desc_fr.ogg"]),
        ("tuxpaint-pt_BR", "tuxpaint-pt_BR", ["apple0_desc_pt_BR.ogg", "apple1_desc_pt_BR.ogg",
                                              "apple2_desc_pt_BR.ogg"])]

    voices = tmp_path / "voices"
    for pack in ("Pirate", "Robot", "Default_es"):
        wav(voices / pack / "Boom.ogg", 1.0, 44100)
        wav(voices / pack / "Ooops.ogg", 1.0, 48000)
    (voices / "Empty").mkdir()
    jobs = make_data.hedgewars_jobs(str(voices))
    assert [(sid, [Path(f).name for f in files]) for sid, _, files in jobs] == [
        ("hedgewars-default_es", ["Boom.ogg", "Ooops.ogg"]), ("hedgewars-pirate", ["Boom.ogg", "Ooops.ogg"])]
    persons = [p for _, p, _ in make_data.tuxpaint_jobs(str(stamps), min_seconds=5.0) + jobs]
    assert set(assign_splits(persons, make_data.HELD_OUT).values()) == {"train"}


def test_recipe_session_13_sources_kajongg_nexuiz_warzone(tmp_path):
    """Kajongg: one entry per named reader and language, a reader's two languages one person, the unnamed English
    male2 folder left out. Nexuiz and Warzone 2100: entries from members of their zip archives (narrator, team
    commands, male announcer; the message announcer), grunts, sub-folders and other members left out, members
    decoded from the archive; Warzone's 11 kHz speech counts as narrowband. A missing archive gives no files."""
    import zipfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    sr = 11025
    tone = (0.5 * np.sin(2 * np.pi * 300.0 * np.arange(sr) / sr)).astype(np.float32)
    ogg = tmp_path / "t.ogg"
    sf.write(ogg, tone, sr, format="OGG", subtype="VORBIS")
    voices = tmp_path / "voices"
    for folder in ("female1", "male2", "de/female1", "de/male2"):
        (voices / folder).mkdir(parents=True)
        for name in ("b1.ogg", "b2.ogg"):
            (voices / folder / name).write_bytes(ogg.read_bytes())
        (voices / folder / "COPYRIGHT").write_text("GPL")
    jobs = make_data.kajongg_jobs(voices)
    assert [(sid, person, [Path(f).relative_to(voices).as_posix() for f in files]) for sid, person, files in jobs
            if files] == [
        ("kajongg-petra-en", "kajongg-petra", ["female1/b1.ogg", "female1/b2.ogg"]),
        ("kajongg-petra-de", "kajongg-petra", ["de/female1/b1.ogg", "de/female1/b2.ogg"]),
        ("kajongg-klaus-de", "kajongg-klaus", ["de/male2/b1.ogg", "de/male2/b2.ogg"])]

    pk3 = tmp_path / "data.pk3"
    with zipfile.ZipFile(pk3, "w") as z:
        for name in ("sound/tutorial/t02.ogg", "sound/tutorial/t01.ogg", "sound/player/marine/coms/yes.ogg",
                     "sound/player/fricka/coms/no.ogg", "sound/player/soldier/coms/ideas/x.ogg",
                     "sound/player/marine/player/pain.ogg", "sound/announcer/male/03kills.ogg",
                     "sound/announcer/robotic/03kills.ogg"):
            z.write(ogg, name)
        z.writestr("sound/tutorial/", "")
    jobs = make_data.nexuiz_jobs(pk3)
    assert [(sid, person, [f.split("::")[1] for f in files]) for sid, person, files in jobs] == [
        ("nexuiz-tutorial", "nexuiz-tutorial", ["sound/tutorial/t01.ogg", "sound/tutorial/t02.ogg"]),
        ("nexuiz-coms", "nexuiz-coms", ["sound/player/fricka/coms/no.ogg", "sound/player/marine/coms/yes.ogg"]),
        ("nexuiz-announcer", "nexuiz-announcer", ["sound/announcer/male/03kills.ogg"])]
    x, rate = make_data.decode(jobs[0][2][0])
    assert rate == sr and abs(len(x) - sr) < 64
    assert abs(np.argmax(np.abs(np.fft.rfft(x))) * sr / len(x) - 300.0) < 2.0

    wz = tmp_path / "base.wz"
    with zipfile.ZipFile(wz, "w") as z:
        for name in ("audio/memressp/research/rescomp.ogg", "audio/memressp/power/pwrlow.ogg",
                     "audio/taunts/taunt1/t.ogg", "audio/sfx/boom.ogg"):
            z.write(ogg, name)
    jobs = make_data.warzone_jobs(wz)
    assert [(sid, [f.split("::")[1] for f in files]) for sid, _, files in jobs] == [
        ("warzone-announcer", ["audio/memressp/power/pwrlow.ogg", "audio/memressp/research/rescomp.ogg"])]
    assert jobs[0][0].startswith(make_data.NARROWBAND)
    assert make_data.nexuiz_jobs(tmp_path / "absent.pk3")[0][2] == [] == make_data.warzone_jobs(tmp_path / "no")[0][2]
    persons = [p for _, p, _ in make_data.kajongg_jobs(voices) + make_data.nexuiz_jobs(pk3) + jobs]
    assert set(assign_splits(persons, make_data.HELD_OUT).values()) == {"train"}


def test_recipe_fotaq_reads_the_queen_resource_table(tmp_path):
    """A QTBL resource file written here byte by byte (FLAC members, so decoding is exact): Joe's lines form one
    speaker, the other character's lines one per conversation file, unattributed lines are left out, and each
    member decodes to the samples that were stored."""
    import io
    import struct

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    sr = 11025
    rng = np.random.default_rng(3)
    members = {}
    for name in ("020006J1.SB", "020006P1.SB", "020007P2.SB", "05001EP1.SB", "0500011.SB", "020006S1.SB",
                 "ROOM1.PCX"):
        buf = io.BytesIO()
        x = np.round(rng.uniform(-0.5, 0.5, 800) * 32767) / 32768
        sf.write(buf, x, sr, format="FLAC", subtype="PCM_16")
        members[name] = (x, buf.getvalue())

    def queen_file(path, codec, entries):
        table, blob = b"", b""
        header_len = 15 + 21 * len(entries)
        for name, data in entries.items():
            table += name.encode().ljust(12, b"\0") + b"\x01" + struct.pack(">II", header_len + len(blob), len(data))
            blob += data
        path.write_bytes(b"QTBL" + b"CEM10\0" + b"\0\0" + bytes([codec]) + struct.pack(">H", len(entries)) + table
                         + blob)
        return str(path)

    archive = queen_file(tmp_path / "queen.1c", 3, {k: v[1] for k, v in members.items()})
    jobs = make_data.fotaq_jobs(archive)
    assert [(sid, [f.split("::")[1] for f in files]) for sid, _, files in jobs] == [
        ("fotaq-02", ["020006P1.SB", "020007P2.SB"]), ("fotaq-05", ["05001EP1.SB"]),
        ("fotaq-joe", ["020006J1.SB"])]
    for name in ("020007P2.SB", "05001EP1.SB"):
        x, rate = make_data.decode(f"{archive}::{name}")
        assert rate == sr
        np.testing.assert_allclose(x, members[name][0], atol=1e-6)
    assert make_data.fotaq_jobs(str(tmp_path / "absent.1c")) == []

    # the shipped game stores MP3 (codec byte 1): a 440 Hz tone comes back as a 440 Hz tone of the right length
    buf = io.BytesIO()
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(sr) / sr)
    sf.write(buf, tone, sr, format="MP3")
    mp3 = queen_file(tmp_path / "mp3.1c", 1, {"03SSSSJ1.SB": buf.getvalue()})
    assert [sid for sid, _, _ in make_data.fotaq_jobs(mp3)] == ["fotaq-joe"]  # line codes beyond hex count
    x, rate = make_data.decode(f"{mp3}::03SSSSJ1.SB")
    assert rate == sr and x.dtype == np.float32 and abs(len(x) - sr) < 0.1 * sr
    assert abs(np.argmax(np.abs(np.fft.rfft(x))) * sr / len(x) - 440.0) < 3.0 and 0.3 < np.abs(x).max() < 0.7
    bad = tmp_path / "bad.1c"
    bad.write_bytes(b"NOPE" + bytes(11))
    with pytest.raises(ValueError, match="not a compressed queen"):
        make_data.queen_table(str(bad))


def test_recipe_mbrola_rendering_is_deterministic(tmp_path):
    """An MBROLA database that lacks diphones of the text (Spanish es2 reading English warns on every sentence)
    renders identically every time: espeak-ng's one-step call dropped audio at random on exactly this case."""
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    if not (shutil.which("espeak-ng") and shutil.which("mbrola") and Path("/usr/share/mbrola/es2/es2").exists()):
        pytest.skip("espeak-ng, mbrola and mbrola-es2 are not installed here")
    text = ("This module provides a portable way of using operating system dependent functionality. "
            "Return a new view of the dictionary's keys, sorted by their position in the original order.")
    runs = [make_data.render_mbrola("mb-es2", 170, 40, text, str(tmp_path / f"{i}.wav")) for i in range(4)]
    assert len(runs[0]) > make_data.POOL_SR * 3 and np.abs(runs[0]).max() > 0.05
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])

def test_recipe_text_does_not_depend_on_the_interpreter(monkeypatch):
    """The synthetic voices read the committed sentences.txt, not docstrings of the running Python (which changed
    between patch releases and made every synthetic pool differ on another machine)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    lines = make_data.SENTENCES.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 1000 and lines == sorted(set(lines))
    assert all(5 <= len(s.split()) <= 25 and re.fullmatch(r"[A-Za-z ,;:'\-.()!?]+", s) for s in lines)
    before = make_data.sentences()
    monkeypatch.setattr(json, "__doc__", "A sentence that a different Python release might carry here.")
    assert "A sentence that a different Python release might carry here." in make_data.docstring_sentences()
    assert make_data.sentences() == before == lines


def test_recipe_pools_only_rebuilds_the_named_speakers(tmp_path, monkeypatch):
    """`--only PREFIX` renders just those speakers and keeps every other pool file and index entry."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    sr = 16000
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", 0.3 * rng.standard_normal(3 * sr).astype(np.float32), sr)
    jobs = [("old-a", "person-a", [str(tmp_path / "a.wav")]), ("new-b", "person-b", [str(tmp_path / "b.wav")])]
    monkeypatch.setattr(make_data, "real_jobs", lambda unpacked: list(jobs))
    monkeypatch.setattr(make_data, "synth_jobs", lambda: [])
    monkeypatch.setattr(make_data, "sentences", lambda: ["One two three four five."])
    out = tmp_path / "data"
    make_data.build_pools(out, n_sentences=1, jobs_n=1)
    before_a = (out / "pools" / "old-a.npy").read_bytes()
    sf.write(tmp_path / "b.wav", 0.3 * rng.standard_normal(5 * sr).astype(np.float32), sr)  # b changes
    sf.write(tmp_path / "a.wav", np.zeros(3 * sr, np.float32), sr)  # a would change too, if it were rebuilt
    make_data.build_pools(out, n_sentences=1, jobs_n=1, only="nothing-,new-")
    index = json.loads((out / "pools" / "speakers.json").read_text())["speakers"]
    assert sorted(index) == ["new-b", "old-a"]
    assert (out / "pools" / "old-a.npy").read_bytes() == before_a and index["old-a"]["seconds"] > 2.5
    assert index["new-b"]["seconds"] > 4.5
    with pytest.raises(SystemExit, match="nothing"):
        make_data.build_pools(out, n_sentences=1, jobs_n=1, only="nothing")

    # `missing` (the update stage): only a source added to the recipe since the index was written is built
    sf.write(tmp_path / "c.wav", 0.3 * rng.standard_normal(4 * sr).astype(np.float32), sr)
    jobs.append(("added-c", "person-c", [str(tmp_path / "c.wav")]))
    before_b = (out / "pools" / "new-b.npy").read_bytes()
    make_data.build_pools(out, n_sentences=1, jobs_n=1, missing=True)
    index = json.loads((out / "pools" / "speakers.json").read_text())["speakers"]
    assert sorted(index) == ["added-c", "new-b", "old-a"] and 3.5 < index["added-c"]["seconds"] < 4.5
    assert (out / "pools" / "old-a.npy").read_bytes() == before_a
    assert (out / "pools" / "new-b.npy").read_bytes() == before_b
    # a speaker with too little audio is recorded as skipped, and not tried again by the next update
    sf.write(tmp_path / "d.wav", 0.3 * rng.standard_normal(sr // 2).astype(np.float32), sr)
    jobs.append(("short-d", "person-d", [str(tmp_path / "d.wav")]))
    make_data.build_pools(out, n_sentences=1, jobs_n=1, missing=True)
    data = json.loads((out / "pools" / "speakers.json").read_text())
    assert sorted(data["speakers"]) == ["added-c", "new-b", "old-a"] and data["skipped"] == ["short-d"]
    mtime = (out / "pools" / "speakers.json").stat().st_mtime_ns
    make_data.build_pools(out, n_sentences=1, jobs_n=1, missing=True)  # nothing missing: nothing written
    assert (out / "pools" / "speakers.json").stat().st_mtime_ns == mtime
    assert not list((out / "pools").glob(".*.part"))

    # voice variants (kind "variant", not made by these jobs): an update keeps them with their source; rebuilding
    # their speaker with --only drops them with it (they were made from the old pool)
    sr_i, spk = read_index(out / "pools")
    for base in ("old-a", "new-b"):
        for vid in (f"{base}.v", f"{base}.v2"):
            np.save(out / "pools" / f"{vid}.npy", np.zeros(3 * sr, np.float16))
            spk.append(Speaker(vid, f"person-{base[-1]}", "variant", "train", 3.0, f"{base}: formants x1.1"))
    write_index(out / "pools", sr_i, spk, ["short-d"])
    jobs.append(("later-e", "person-e", [str(tmp_path / "c.wav")]))
    make_data.build_pools(out, n_sentences=1, jobs_n=1, missing=True)
    index = json.loads((out / "pools" / "speakers.json").read_text())["speakers"]
    assert index["old-a.v"]["source"] == "old-a: formants x1.1" and index["old-a.v"]["kind"] == "variant"
    assert "later-e" in index and "new-b.v" in index
    make_data.build_pools(out, n_sentences=1, jobs_n=1, only="new-")
    index = json.loads((out / "pools" / "speakers.json").read_text())["speakers"]
    assert "new-b.v" not in index and "new-b.v2" not in index and "new-b" in index
    assert "old-a.v" in index and "old-a.v2" in index

def test_recipe_validation_set_holds_same_kind_pairs_and_update_follows_held_out(tmp_path, monkeypatch):
    """Validation mixtures pair real with real and synthetic with synthetic, alternating, every pair in turn;
    a changed HELD_OUT re-splits the pools and marks the built sets stale, and rebuilding them leaves the test
    sets of unchanged people identical sample for sample. The seen sets hold training people of one kind."""
    import csv
    import itertools

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    out = tmp_path / "data"
    (out / "pools").mkdir(parents=True)
    rng = np.random.default_rng(0)
    people = ({f"r{i}": "real" for i in range(6)} | {f"s{i}": "synthetic" for i in range(6)}
              | {"r6": "real", "r7": "real", "uqm-x": "real", "s6": "synthetic", "s7": "synthetic"})
    held_out = {"r0": "val", "r1": "val", "r2": "val", "s0": "val", "s1": "val", "s2": "val", "s3": "val",
                "r4": "test", "r5": "test", "s4": "test", "s5": "test"}
    speakers = []
    for j, (p, kind) in enumerate(people.items()):
        np.save(out / "pools" / f"{p}.npy", voice(rng, 100 + 20 * j, 6.0).astype(np.float16))
        speakers.append(Speaker(p, p, kind, held_out.get(p, "train"), 6.0))
    write_index(out / "pools", SR, speakers)
    monkeypatch.setattr(make_data, "HELD_OUT", held_out)
    make_data.build_sets(out, SR, n=24, seconds=1.0)
    with open(out / "8k" / "val" / "metadata.csv") as f:
        pairs = [(r["speaker_1"], r["speaker_2"]) for r in csv.DictReader(f)]
    one_real = [Speaker(p, p, k, "val", 6.0) for p, k in (("r0", "real"), ("s0", "synthetic"), ("s1", "synthetic"))]
    assert make_data.same_kind_pairs(one_real) == [("s0", "s1")]  # a kind with one person has no pairs
    with pytest.raises(SystemExit, match="two persons of one kind"):
        make_data.same_kind_pairs(one_real[:2])
    kinds = [{people[a], people[b]} for a, b in pairs]
    assert kinds == [{"real"}, {"synthetic"}] * 12  # same kind only, alternating from the first mixture
    real_pairs = {frozenset(p) for p in itertools.combinations(["r0", "r1", "r2"], 2)}
    synth_pairs = {frozenset(p) for p in itertools.combinations(["s0", "s1", "s2", "s3"], 2)}
    assert {frozenset(p) for p in pairs[0::2]} == real_pairs and {frozenset(p) for p in pairs[1::2]} == synth_pairs
    assert make_data.stale_sets(out) == []
    assert make_data.unbuilt_rates(out, [16000, SR]) == [16000]  # `--stage update` builds those

    def speakers_of(name):
        with open(out / "8k" / name / "metadata.csv") as f:
            rows = list(csv.DictReader(f))
        assert all(r["speaker_1"] != r["speaker_2"] for r in rows) and len(rows) == 24
        return {r[k] for r in rows for k in ("speaker_1", "speaker_2")}

    # the seen sets: training people only, one kind, the 11 kHz sources (uqm-x) left out of seen_real
    assert speakers_of("seen_real") == {"r3", "r6", "r7"}
    assert speakers_of("seen_synth") == {"s6", "s7"}

    def samples_of_test_real():  # samples (float WAV headers carry a write time)
        return {f.name: sf.read(f)[0].tobytes() for f in sorted((out / "8k" / "test_real" / "mix").iterdir())}

    before = samples_of_test_real()

    # r2 leaves validation for training: the index follows, the sets are stale, and the rebuilt validation
    # no longer holds r2 while the test sets (their people unchanged) are the same bytes
    # r3 (training, with a voice variant) moves to validation: its variant, made for training only, goes
    sr_i, spk = read_index(out / "pools")
    np.save(out / "pools" / "r3.v.npy", np.zeros(SR, np.float16))
    write_index(out / "pools", sr_i, [*spk, Speaker("r3.v", "r3", "variant", "train", 1.0, "r3: formants x1.1")])
    monkeypatch.setitem(held_out, "r2", "train")
    monkeypatch.setitem(held_out, "r3", "val")
    make_data.resplit(out)
    index = json.loads((out / "pools" / "speakers.json").read_text())["speakers"]
    assert index["r2"]["split"] == "train" and index["r3"]["split"] == "val"
    assert "r3.v" not in index and not (out / "pools" / "r3.v.npy").exists()
    monkeypatch.setitem(held_out, "r3", "train")  # back to the table the rest of this test was written for
    make_data.resplit(out)
    assert make_data.stale_sets(out) == [(SR, 24, 1.0)]
    make_data.build_sets(out, SR, n=24, seconds=1.0)
    assert make_data.stale_sets(out) == []
    readme = json.loads((out / "8k" / "README.json").read_text())
    (out / "8k" / "README.json").write_text(json.dumps({k: v for k, v in readme.items() if k != "version"}))
    assert make_data.stale_sets(out) == [(SR, 24, 1.0)]  # sets from before the version was recorded are stale
    (out / "8k" / "README.json").write_text(json.dumps(readme))
    with open(out / "8k" / "val" / "metadata.csv") as f:
        assert "r2" not in {r[k] for r in csv.DictReader(f) for k in ("speaker_1", "speaker_2")}
    assert samples_of_test_real() == before

    # a new training person in the pools (a source added to the recipe, HELD_OUT unchanged) makes the sets stale,
    # and the rebuilt seen_real draws them; a voice variant (training only) does not
    sr_i, spk = read_index(out / "pools")
    np.save(out / "pools" / "r3.v.npy", np.zeros(SR, np.float16))
    write_index(out / "pools", sr_i, [*spk, Speaker("r3.v", "r3", "variant", "train", 1.0, "r3: formants x1.1")])
    assert make_data.stale_sets(out) == []
    np.save(out / "pools" / "r8.npy", voice(rng, 500, 6.0).astype(np.float16))
    write_index(out / "pools", sr_i, [*read_index(out / "pools")[1], Speaker("r8", "r8", "real", "train", 6.0)])
    assert make_data.stale_sets(out) == [(SR, 24, 1.0)]
    make_data.build_sets(out, SR, n=24, seconds=1.0)
    assert make_data.stale_sets(out) == [] and "r8" in speakers_of("seen_real")
    assert samples_of_test_real() == before


@pytest.mark.slow
def test_ddp_two_processes_train_and_export(tmp_path, librimix):
    script = tmp_path / "ddp.py"
    script.write_text(
        "import json, sys\nfrom pathlib import Path\nfrom sepcli.train.trainer import TrainConfig, train\n"
        f"r = train(TrainConfig(out=Path({str(tmp_path / 'run')!r}), arch='s4m-tiny-8k', arch_args={TINY!r},"
        f" data=Path({str(librimix)!r}), segment=0.5, batch_size=1, steps=3, threads=1, quiet=True))\n"
        "print(json.dumps({'step': r['step']}))\n")
    def torchrun(port: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", str(port), str(script)], capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)

    proc = torchrun(29517)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = tmp_path / "run" / "best"
    conf = json.loads((folder / "config.json").read_text())
    from sepcli.runtime.loader import load_model

    loaded = load_model(folder)
    with torch.no_grad():
        out = loaded.network(torch.zeros(1, 800))
    assert conf["provenance"]["step"] == 3
    assert out.shape == (1, 2, 800)
    # a validation a signal cut short runs first on resume, on rank 0 only; the other rank must not wait for
    # it in another collective (it hung before)
    ckpt = tmp_path / "run" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    # the logged loss is the whole step's (both ranks' halves), as one process with the same global batch logs it
    single = train(TrainConfig(out=tmp_path / "single", arch="s4m-tiny-8k", arch_args=TINY, data=librimix,
                               segment=0.5, batch_size=2, steps=3, threads=1, quiet=True))
    assert single["step"] == 3
    np.testing.assert_allclose(state["recent_losses"], _weights(tmp_path / "single")["recent_losses"], rtol=1e-4)
    state["pending_validation"] = 3
    torch.save(state, ckpt)
    resumed = f"steps=4, resume=True, val_data=Path({str(librimix)!r}),"
    script.write_text(script.read_text().replace("steps=3,", resumed))
    proc = torchrun(29518)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log][-2:] == [3, 4] and all("si_snri" in r for r in log[-2:])
    # a bad file drawn by rank 1 alone: both ranks stop before the step, rank 0 saves the run at that step (rank
    # 1 cannot save), and rank 1 names the file
    data = _librimix_copy(librimix, tmp_path / "data")
    drawn = batch_indices(1, 1, 2, 1, 6, 0, 3)[0]  # rank 1's item at step 1 (epochs of 3 steps, 2 ranks)
    assert all(drawn not in batch_indices(s, r, 2, 1, 6, 0, 3) for s, r in ((0, 0), (0, 1), (1, 0)))
    bad = data / "s1" / sorted(p.name for p in (data / "s1").iterdir())[drawn]
    x, _ = sf.read(bad, dtype="float32")
    x[5] = np.nan
    sf.write(bad, x, SR, subtype="FLOAT")
    script.write_text(script.read_text().replace(resumed, "steps=3,").replace(str(librimix), str(data))
                      .replace(str(tmp_path / "run"), str(tmp_path / "bad")))
    proc = torchrun(29519)
    assert proc.returncode != 0
    assert f"{bad}: holds non-finite samples" in proc.stderr and "the run is saved at step 1" in proc.stderr
    assert torch.load(tmp_path / "bad" / "last.pt", weights_only=True)["step"] == 1


def test_continue_from_exported_weights_keeps_step_and_schedule(tmp_path, librimix):
    first = train(cfg(tmp_path / "a", data=librimix, steps=4, epoch_steps=2, val_data=librimix))
    cont = train(TrainConfig(out=tmp_path / "b", init=first["export"], continue_init=True, data=librimix,
                             val_data=librimix, segment=0.5, batch_size=2, steps=6, epoch_steps=2, threads=1,
                             quiet=True, warmup=5))
    assert cont["step"] == 6 and not cont["stopped"]
    steps = [h["step"] for h in cont["history"]]
    assert steps == [3, 4, 6]  # epochs of 3 steps, the end of the first run, then step 6: no restart
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert state["schedule"]["warmup_from"] == 4


def test_a_changed_validation_set_restarts_the_best_score(tmp_path, librimix):
    """The best score (and the patience count) belong to the validation set they were measured on: resuming
    against the same set written again (new files, new header times) keeps them, against a changed set starts
    them again; the lr scale is kept."""
    import shutil
    import time

    same, changed = tmp_path / "same", tmp_path / "changed"
    shutil.copytree(librimix, changed)
    time.sleep(1.1)  # float WAV headers carry the write time, to the second
    for f in librimix.rglob("*.wav"):
        x, sr = sf.read(f, dtype="float32")
        (same / f.parent.name).mkdir(parents=True, exist_ok=True)
        sf.write(same / f.parent.name / f.name, x, sr, subtype="FLOAT")
    assert (same / "mix" / "0.wav").read_bytes() != (librimix / "mix" / "0.wav").read_bytes()
    x, sr = sf.read(changed / "mix" / "0.wav", dtype="float32")
    sf.write(changed / "mix" / "0.wav", 0.5 * x, sr, subtype="FLOAT")
    ckpt = tmp_path / "run" / "last.pt"
    train(cfg(tmp_path / "run", data=librimix, steps=2, val_data=librimix))

    def set_schedule(**kw):  # a best score no tiny run reaches, so a kept one is told from a new one
        state = torch.load(ckpt, weights_only=True)
        state["schedule"].update(kw)
        for k in [k for k, v in kw.items() if v is None]:
            state["schedule"].pop(k)
        torch.save(state, ckpt)

    def resume(val, steps):
        r = train(cfg(tmp_path / "run", data=librimix, steps=steps, val_data=val, resume=True))
        return r["history"][-1], torch.load(ckpt, weights_only=True)["schedule"]

    fingerprint = LibriMixDataset(librimix, SR).fingerprint()
    assert torch.load(ckpt, weights_only=True)["schedule"]["val_id"] == fingerprint
    set_schedule(best=99.0, bad=1, scale=0.5)
    last, sched = resume(same, 3)  # the same samples: the same set
    assert last["step"] == 3 and (sched["best"], sched["bad"], sched["scale"]) == (99.0, 2, 0.5)
    last, sched = resume(changed, 6)  # validated at step 6: only the new set's score counts
    assert last["step"] == 6 and sched["best"] == pytest.approx(last["si_snri"]) and sched["bad"] == 0
    assert sched["val_id"] == LibriMixDataset(changed, SR).fingerprint() != fingerprint and sched["scale"] == 0.5
    # a checkpoint from before validation sets were recorded: its best is of an unknown set, so it restarts
    set_schedule(best=99.0, val_id=None)
    last, sched = resume(changed, 9)
    assert sched["best"] == pytest.approx(last["si_snri"]) and sched["best"] < 99.0


def test_init_from_model_folder_fine_tunes(tmp_path, librimix):
    first = train(cfg(tmp_path / "a", data=librimix, steps=2))
    again = train(TrainConfig(out=tmp_path / "b", init=first["export"], data=librimix, segment=0.5, batch_size=2,
                              steps=1, threads=1, quiet=True))
    conf = json.loads((Path(again["export"]) / "config.json").read_text())
    assert conf["arch_args"] == TINY


# --ema: the moving average of the weights (sepcli/train/ema.py; its update alone: tests/train/test_ema.py)
def ema_cfg(out, data, **kw):
    return cfg(out, data=data, val_data=data, ema=kw.pop("ema", 0.8), ckpt_minutes=60, **kw)


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
    out = train(ema_cfg(tmp_path / "run", librimix, steps=6, epoch_steps=6))
    assert out["step"] == 6 and len(snaps) == 7
    ref = ema_reference(snaps, 0.8)
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
    straight = train(ema_cfg(tmp_path / "a", librimix, steps=5, epoch_steps=3))
    part = ema_cfg(tmp_path / "b", librimix, steps=5, epoch_steps=3)
    part.max_minutes = 0.0  # stops with a checkpoint after the first step
    assert train(part)["step"] == 1
    resumed = train(ema_cfg(tmp_path / "b", librimix, steps=5, epoch_steps=3, resume=True))
    assert straight["step"] == resumed["step"] == 5
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["ema"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["ema"]
    assert a["updates"] == b["updates"] == 5
    assert all(torch.equal(a["shadow"][k], b["shadow"][k]) for k in a["shadow"])


def test_resuming_a_run_without_an_average_starts_it_from_the_checkpoints_weights(tmp_path, librimix):
    train(ema_cfg(tmp_path / "r", librimix, steps=2, epoch_steps=2, ema=None))
    before = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert before["ema"] is None
    part = ema_cfg(tmp_path / "r", librimix, steps=3, epoch_steps=5, resume=True)
    train(part)
    after = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    # one update at decay min(0.8, 1/10) = 0.1 from the resumed weights w2 towards the new w3
    for k, w2 in before["model"].items():
        torch.testing.assert_close(after["ema"]["shadow"][k], 0.1 * w2 + 0.9 * after["model"][k])


# ---------------------------------------------------------------------- review of session 18
def test_validation_scores_each_mixture_on_its_whole_length(tmp_path):
    """Mixtures of different lengths: the batched validation equals the mean of each file scored alone."""
    from sepcli.train.data import LibriMixDataset

    rng = np.random.default_rng(5)
    d = tmp_path / "v"
    for sub in ("mix", "s1", "s2"):
        (d / sub).mkdir(parents=True)
    for i, seconds in enumerate([1.0, 0.3, 1.0, 0.7, 1.0]):
        a, b = voice(rng, 110, seconds) * 0.3, voice(rng, 240, seconds) * 0.3
        for sub, x in (("s1", a), ("s2", b), ("mix", a + b)):
            sf.write(d / sub / f"{i}.wav", x, SR, subtype="FLOAT")
    net = network_for(cfg(tmp_path / "r"))[0].eval()
    ds = LibriMixDataset(d, SR)
    alone = []
    with torch.no_grad():
        for j in range(len(ds)):
            mix, ref = ds[j]
            assert mix.shape[-1] == ref.shape[-1]  # whole files
            score, _ = metrics.pit_si_snr(net(mix[None]), ref[None])
            alone.append(float(score - metrics.si_snr(mix[None, None].expand(1, 2, -1), ref[None]).mean(-1)))
    got = validate(net, ds, batch=4)
    assert got["n"] == 5 and got["si_snri"] == pytest.approx(np.mean(alone), abs=1e-4)


def test_resuming_without_validation_keeps_the_validated_best(tmp_path, librimix, capsys):
    out = tmp_path / "r"
    first = train(cfg(out, data=librimix, val_data=librimix, steps=3, epoch_steps=3))
    best = (out / "best" / "weights.safetensors").read_bytes()
    card = json.loads((out / "best" / "config.json").read_text())
    resumed = train(cfg(out, data=librimix, steps=6, epoch_steps=3, resume=True))
    assert resumed["step"] == 6 and resumed["best"] == first["best"]
    assert (out / "best" / "weights.safetensors").read_bytes() == best  # not the unscored latest weights
    assert json.loads((out / "best" / "config.json").read_text()) == card
    assert "keeps the run's validated best" in capsys.readouterr().err
    fresh = train(cfg(tmp_path / "n", data=librimix, steps=3, epoch_steps=3))  # never validated: latest exported
    assert fresh["step"] == 3 and (tmp_path / "n" / "best" / "weights.safetensors").is_file()


def test_a_diverged_run_stops_without_saving_its_nan_weights(tmp_path, librimix, monkeypatch):
    out = tmp_path / "r"
    train(cfg(out, data=librimix, steps=2, epoch_steps=10))
    saved = (out / "last.pt").read_bytes()
    real_step, calls = trainer.train_step, []

    def nan_at_step_4(net, *args, **kw):
        loss = real_step(net, *args, **kw)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                for p in net.parameters():
                    p.fill_(float("nan"))
            return torch.tensor(float("nan"))
        return loss

    monkeypatch.setattr(trainer, "train_step", nan_at_step_4)
    with pytest.raises(trainer.TrainDiverged, match="diverged at step 4: the loss is not finite"):
        train(cfg(out, data=librimix, val_data=librimix, steps=8, epoch_steps=2, resume=True))
    # the checkpoint of step 2 and the best of step 3's validation stay; nothing of step 4's NaN was written
    assert (out / "last.pt").read_bytes() == saved
    from safetensors.torch import load_file

    best = load_file(out / "best" / "weights.safetensors")
    assert all(torch.isfinite(v).all() for v in best.values())
    assert json.loads((out / "best" / "config.json").read_text())["eval"]["val_step"] == 3
    for line in (out / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_a_signal_during_validation_stops_at_once_and_resume_validates_first(tmp_path, librimix, monkeypatch):
    import signal

    out = tmp_path / "r"
    straight = train(cfg(tmp_path / "a", data=librimix, val_data=librimix, steps=4, epoch_steps=2))
    real_validate, calls = trainer.validate, []

    def signal_inside(model, ds, *args, **kw):
        calls.append(1)
        if len(calls) == 2:  # the second validation (step 4, the last one): Ctrl-C arrives while it runs
            os.kill(os.getpid(), signal.SIGINT)
        return real_validate(model, ds, *args, **kw)

    monkeypatch.setattr(trainer, "validate", signal_inside)
    first = train(cfg(out, data=librimix, val_data=librimix, steps=4, epoch_steps=2))
    assert first["step"] == 4 and first["stopped"] and first["signal"] == signal.SIGINT
    assert len(first["history"]) == 1 and _weights(out)["pending_validation"] == 4
    monkeypatch.setattr(trainer, "validate", real_validate)
    resumed = train(cfg(out, data=librimix, val_data=librimix, steps=4, epoch_steps=2, resume=True))
    assert not resumed["stopped"] and [h["step"] for h in resumed["history"]] == [3, 4]  # an epoch: 6 items / 2
    assert resumed["history"][1]["si_snri"] == pytest.approx(straight["history"][1]["si_snri"], abs=1e-5)
    assert _weights(out)["pending_validation"] is None


def test_a_nan_loss_at_a_validation_step_exports_nothing(tmp_path, librimix, monkeypatch):
    """No --val-data: the latest weights would be exported at each epoch's end; a NaN there must not be."""
    real_step, calls = trainer.train_step, []

    def nan_at_step_3(net, *args, **kw):
        calls.append(1)
        if len(calls) == 3:  # the last step of the first epoch (6 mixtures, 2 per step)
            with torch.no_grad():
                for p in net.parameters():
                    p.fill_(float("nan"))
            return torch.tensor(float("nan"))
        return real_step(net, *args, **kw)

    monkeypatch.setattr(trainer, "train_step", nan_at_step_3)
    with pytest.raises(trainer.TrainDiverged, match="step 3: .*no checkpoint was written before it"):
        train(cfg(tmp_path / "r", data=librimix, steps=6))
    assert not (tmp_path / "r" / "best").exists() and not (tmp_path / "r" / "log.jsonl").exists()


def test_a_run_continued_from_init_without_validation_exports_its_weights(tmp_path, librimix):
    train(cfg(tmp_path / "a", data=librimix, val_data=librimix, steps=3))
    c = cfg(tmp_path / "b", data=librimix, steps=6, init=str(tmp_path / "a" / "best"), continue_init=True)
    c.arch = None
    train(c)
    assert (tmp_path / "b" / "best" / "weights.safetensors").is_file()


def test_saved_options_of_older_runs_and_other_working_directories(tmp_path, librimix, monkeypatch):
    from sepcli.train.checkpoint import saved_options

    monkeypatch.chdir(librimix.parent)
    train(cfg(tmp_path / "r", data=Path(librimix.name), steps=1))  # a relative --data
    monkeypatch.chdir(tmp_path)
    assert saved_options(tmp_path / "r", set())["data"] == librimix  # absolute in the checkpoint
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    old = json.loads(state["config"])
    old.update(sample_rate=0, steps=5, epochs=2)  # what the previous version accepted
    state["config"] = json.dumps(old)
    torch.save(state, tmp_path / "r" / "last.pt")
    got = saved_options(tmp_path / "r", set())
    assert got["sample_rate"] is None and got["steps"] == 5 and got["epochs"] is None
    assert saved_options(tmp_path / "r", {"epochs"}).get("steps") is None  # giving one of a pair replaces both


def test_resumed_config_takes_the_runs_options_where_the_command_line_gives_none(tmp_path, librimix):
    """What `sepcli train -o RUN --resume` does with the options: the run's own where none is given again, the
    given one where it is, and nothing without --resume."""
    from sepcli.train.checkpoint import resumed_config

    run = tmp_path / "r"
    train(cfg(run, data=librimix, steps=1, segment=0.25))
    bare = TrainConfig(out=run, resume=True, steps=2)
    got = resumed_config(bare, {"out", "resume", "steps"})
    assert (got.arch, got.data, got.segment, got.batch_size, got.lr, got.steps) == ("s4m-tiny-8k", librimix, 0.25, 2,
                                                                                   3e-3, 2)
    assert resumed_config(replace(bare, segment=0.5), {"steps", "segment"}).segment == 0.5  # given again: it wins
    assert resumed_config(replace(bare, resume=False), {"steps"}) == replace(bare, resume=False)


def test_a_checkpoint_that_cannot_be_written_names_the_problem(tmp_path, monkeypatch):
    def refuse(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                           "Permission denied")

    monkeypatch.setattr(trainer.torch, "save", refuse)
    with pytest.raises(OSError, match=r"^cannot write the checkpoint \(Permission denied\)$"):
        trainer.save_checkpoint(tmp_path / "last.pt", {})
    assert list(tmp_path.iterdir()) == []


def test_init_with_arch_args_that_keep_the_weights_builds_them(tmp_path, librimix):
    """--init with an override such as num_blocks (passes of S4M's shared block): the same weights in a network
    built with it (it was silently ignored); an override that changes the weights is refused."""
    from sepcli.runtime.loader import load_model
    from sepcli.train.trainer import TrainError

    first = train(cfg(tmp_path / "a", data=librimix, steps=1, arch_args={**TINY, "num_blocks": 2}))
    base = TrainConfig(out=tmp_path / "b", init=first["export"], data=librimix)
    net, _, args, _ = network_for(replace(base, arch_args={"num_blocks": 3}))
    assert args["num_blocks"] == 3 and net.num_blocks == 3
    want = load_model(first["export"]).network.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in net.state_dict().items()) and net.state_dict().keys() == want.keys()
    x = torch.randn(1, SR // 2)
    with torch.no_grad():  # three passes of the block compute something else than two
        assert not torch.allclose(net(x), load_model(first["export"]).network(x))
    assert network_for(replace(base, arch_args={"num_blocks": 2}))[2]["num_blocks"] == 2  # as saved: no rebuild
    with pytest.raises(TrainError, match="change the network's weights"):
        network_for(replace(base, arch_args={"hidden": 16}))
    with pytest.raises(TrainError, match="is a 8000 Hz model"):  # same shapes, another rate: refused
        network_for(replace(base, arch_args={"sample_rate": 16000}))
    with pytest.raises(TrainError, match="do not fit arch 's4m'"):
        network_for(replace(base, arch_args={"bogus": 1}))


def _librimix_copy(src: Path, dest: Path, n: int | None = None) -> Path:
    """The first n items (all by default) of a LibriMix folder, copied."""
    names = sorted(p.name for p in (src / "mix").iterdir())[:n]
    for sub in ("mix", "s1", "s2"):
        (dest / sub).mkdir(parents=True)
        for name in names:
            (dest / sub / name).write_bytes((src / sub / name).read_bytes())
    return dest


@pytest.mark.parametrize("damage", ["empty", "nan"])
def test_a_bad_validation_file_is_named_before_the_run_starts(tmp_path, librimix, damage):
    val = _librimix_copy(librimix, tmp_path / "val")
    bad = val / "s2" / "4.wav"
    if damage == "empty":
        for sub in ("mix", "s1", "s2"):
            sf.write(val / sub / "4.wav", np.zeros(0, np.float32), SR, subtype="FLOAT")
        bad = val / "mix" / "4.wav"
    else:
        x, _ = sf.read(bad, dtype="float32")
        x[100] = np.nan
        sf.write(bad, x, SR, subtype="FLOAT")
    with pytest.raises(trainer.DataError, match=re.escape(str(bad))):
        train(cfg(tmp_path / "run", data=librimix, val_data=val, steps=3))
    assert not (tmp_path / "run").exists()  # nothing trained, no run folder left behind


def test_a_bad_training_file_is_named_and_the_run_is_kept_at_that_step(tmp_path, librimix):
    data = _librimix_copy(librimix, tmp_path / "data")
    x, _ = sf.read(data / "s1" / "2.wav", dtype="float32")
    x[5] = np.inf
    sf.write(data / "s1" / "2.wav", x, SR, subtype="FLOAT")
    with pytest.raises(trainer.DataError, match=re.escape(str(data / "s1" / "2.wav")) + ".*non-finite.*--resume"):
        train(cfg(tmp_path / "run", data=data, steps=9))
    ck = _weights(tmp_path / "run")
    # the checkpoint is the run just before the step that drew the file (epoch order: batch_indices)
    drew = [s for s in range(9) if 2 in batch_indices(s, 0, 1, 2, 6, 3, 3)][0]
    assert ck["step"] == drew


def test_validation_leaves_out_mixtures_with_a_silent_source(tmp_path, librimix):
    """As `sepcli eval` does: a silent source's SI-SNR is only the epsilon's and would swing the mean."""
    full = _librimix_copy(librimix, tmp_path / "full")
    sf.write(full / "s2" / "5.wav", np.zeros(SR, np.float32), SR, subtype="FLOAT")
    rest = _librimix_copy(librimix, tmp_path / "rest", n=5)
    from sepcli.nets import build_network

    torch.manual_seed(0)
    net = build_network("s4m", TINY)
    got, want = validate(net, LibriMixDataset(full, SR)), validate(net, LibriMixDataset(rest, SR))
    assert got["n"] == want["n"] == 5
    assert got["si_snri"] == pytest.approx(want["si_snri"], abs=1e-9)
    ds = LibriMixDataset(full, SR)
    ds.fingerprint()
    assert ds.scorable == 5  # the up-front pass counts as validation does
    # a set in which no mixture can be scored is named before the run starts, not at the first validation
    for name in sorted(p.name for p in (full / "s2").iterdir()):
        sf.write(full / "s2" / name, np.zeros(SR, np.float32), SR, subtype="FLOAT")
    with pytest.raises(trainer.DataError, match=re.escape(str(full)) + ": no validation mixture can be scored"):
        train(cfg(tmp_path / "run", data=librimix, val_data=full, steps=3))
    assert not (tmp_path / "run").exists()


def test_the_up_front_count_of_scorable_mixtures_reads_files_as_validation_does(tmp_path, librimix):
    """A source at twice the mixture's rate, silent for the mixture's first half and speaking after: cut to the
    mixture's length at the mixture's rate it would look silent; validation resamples it first and scores it."""
    d = _librimix_copy(librimix, tmp_path / "d", n=1)
    name = sorted(p.name for p in (d / "s2").iterdir())[0]
    x, _ = sf.read(d / "s2" / name, dtype="float32")
    up = np.repeat(x, 2)  # at 2 * SR, as long in seconds as the mixture
    up[: len(up) // 2] = 0
    sf.write(d / "s2" / name, up, 2 * SR, subtype="FLOAT")
    ds = LibriMixDataset(d, SR)
    ds.fingerprint()
    from sepcli.nets import build_network

    net = build_network("s4m", TINY)
    assert ds.scorable == validate(net, ds)["n"] == 1


def test_resume_without_a_checkpoint_does_not_start_over_a_run(tmp_path, librimix):
    run = tmp_path / "run"
    train(cfg(run, data=librimix, val_data=librimix, steps=3))
    (run / "last.pt").unlink()
    best = (run / "best" / "weights.safetensors").read_bytes()
    with pytest.raises(trainer.TrainError, match="no checkpoint \\(last.pt\\) to resume"):
        train(cfg(run, data=librimix, val_data=librimix, steps=6, resume=True))
    assert (run / "best" / "weights.safetensors").read_bytes() == best
    # an empty or new folder still starts a run with --resume (as scripts that always pass it expect)
    assert train(cfg(tmp_path / "new", data=librimix, steps=1, resume=True))["step"] == 1


def test_resume_with_fewer_steps_than_done_is_refused(tmp_path, librimix):
    run = tmp_path / "run"
    train(cfg(run, data=librimix, steps=4))
    with pytest.raises(trainer.TrainError, match="at step 4, past the 2 steps"):
        train(cfg(run, data=librimix, steps=2, resume=True))
    assert train(cfg(run, data=librimix, steps=4, resume=True))["step"] == 4  # equal: done, nothing to do


def test_resume_warns_when_the_data_folder_or_the_processes_changed(tmp_path, librimix, capsys):
    data = _librimix_copy(librimix, tmp_path / "data")
    train(cfg(tmp_path / "run", data=data, steps=2))
    for sub in ("mix", "s1", "s2"):
        (data / sub / "5.wav").unlink()
    capsys.readouterr()
    train(cfg(tmp_path / "run", data=data, steps=3, resume=True))
    assert "changed options (data folder's mixtures 6 -> 5)" in capsys.readouterr().err
    for sub in ("mix", "s1", "s2"):  # as many mixtures again, but another file
        (data / sub / "4.wav").rename(data / sub / "9.wav")
    train(cfg(tmp_path / "run", data=data, steps=4, resume=True))
    assert "data folder's mixtures: same number, other files" in capsys.readouterr().err
    train(cfg(tmp_path / "run", data=data, steps=5, resume=True))
    assert "changed options" not in capsys.readouterr().err  # unchanged since the last resume: quiet
    saved = {"world": 2, "batch_per_step": 4, "data_items": 5, "data_names": "x"}
    now = dict(saved, world=1, batch_per_step=2)
    assert changed_facts(saved, now) == ["processes 2 -> 1 (mixtures per step 4 -> 2)"]
    assert changed_facts(None, now) == []  # a checkpoint from before these were kept
