"""Raw outputs: with `--loudness off`, an input separated in one pass (`--segment 0`, or an input no longer than
one segment) is written as the network's own samples, which is how the authors' numbers are reproduced; the
stitcher's least-squares gain stays wherever it serves (several segments, `match`, LUFS targets).

References are independent of the pipeline: the official-style SPMamba computation (MambaBlock.fused = False,
the plain selective scan SEPCLI_SCAN=ref) on the network the checkpoint was saved from, and for the other
networks their forward called directly on the samples of the input file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from sepcli.audio.chunking import Stitcher, plan_segments, solve_gains
from sepcli.cli import app
from sepcli.pipeline import Separator
from tests.runtime.test_spmamba_import import official_model, save_best_model, small_yml
from tests.testnets import OracleSeparator, synthetic_sources

runner = CliRunner()
SR = 8000


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _read(paths) -> np.ndarray:
    out = []
    for p in paths:
        y, _ = sf.read(p, dtype="float32")
        assert sf.info(p).subtype == "FLOAT"
        out.append(y)
    return np.stack(out)


def _assert_within_peak(got: np.ndarray, want: np.ndarray, share: float = 1e-4):
    """|got - want| <= share * peak of the reference, at every sample (the issue's acceptance rule)."""
    assert got.shape == want.shape
    err, peak = float(np.abs(got - want).max()), float(np.abs(want).max())
    assert peak > 0 and err <= share * peak, f"max error {err:.3g} = {err / peak:.3g} of the peak {peak:.3g}"


def _official_forward(model: torch.nn.Module, x: np.ndarray, monkeypatch) -> np.ndarray:
    """The official computation: every MambaBlock through its plain Block composition, the plain scan."""
    for mod in model.modules():
        if hasattr(mod, "fused"):
            mod.fused = False
    with monkeypatch.context() as m, torch.inference_mode():
        m.setenv("SEPCLI_SCAN", "ref")
        return model(torch.from_numpy(x)[None])[0].numpy()


@pytest.fixture(scope="module")
def spmamba(tmp_path_factory):
    """A small random SPMamba in the official checkpoint format, imported through the CLI; the model's segment
    set to 1 s so that a 1.5 s input is several segments unless --segment 0."""
    d = tmp_path_factory.mktemp("spmamba")
    (d / "conf.yml").write_text(small_yml())
    model = official_model(small_yml(), seed=3)
    save_best_model(model, d / "best_model.pth")
    folder = d / "imported"
    r = run("models", "import-spmamba", "--config", d / "conf.yml", "--checkpoint", d / "best_model.pth",
            "--out", folder)
    assert r.exit_code == 0, r.output
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "segment": 1.0}))
    return model, folder


@pytest.mark.parametrize("seconds,segment", [(1.5, ["--segment", "0"]),  # several segments but for --segment 0
                                             (0.8, [])])  # fits in the model's one segment
def test_official_spmamba_through_the_cli_writes_the_networks_own_samples(tmp_path, spmamba, monkeypatch,
                                                                          seconds, segment):
    model, folder = spmamba
    x = synthetic_sources(round(seconds * SR), SR, seed=8).sum(0)
    sf.write(tmp_path / "mix.wav", x, SR, subtype="FLOAT")
    r = run("separate", tmp_path / "mix.wav", "-o", tmp_path / "out", "-m", folder, *segment, "--loudness", "off",
            "--subtype", "FLOAT", "--sample-rate", "model", "--json", "-q",
            "--precision", "fp32")  # the official fp32 computation (auto is bf16 for SPMamba on a CPU with AMX)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"][0]
    got = _read([o["path"] for o in res["outputs"]])
    want = _official_forward(model, x, monkeypatch)
    _assert_within_peak(got, want)
    assert [o["gain_db"] for o in res["outputs"]] == [0.0, 0.0] and res["flags"] == []


def test_default_s4m_through_the_cli_writes_the_networks_own_samples_of_the_input_as_given(tmp_path):
    """The shipped default model normalises its input to -25 LUFS before the network in the other modes; the
    raw outputs are the network's output for the file's samples as they are (a quiet input here, -45 LUFS)."""
    from sepcli.runtime.loader import load_model

    rate = 16000
    x = synthetic_sources(round(1.3 * rate), rate, seed=9).sum(0) * np.float32(0.05)
    sf.write(tmp_path / "mix.wav", x, rate, subtype="FLOAT")
    r = run("separate", tmp_path / "mix.wav", "-o", tmp_path / "out", "--segment", "0", "--loudness", "off",
            "--subtype", "FLOAT", "--sample-rate", "model", "--json", "-q")
    assert r.exit_code == 0, r.output
    got = _read([o["path"] for o in json.loads(r.stdout)["results"][0]["outputs"]])
    net = load_model("default").network.eval()
    assert load_model("default").input_loudness is not None  # the case this test is about
    with torch.inference_mode():
        want = net(torch.from_numpy(x)[None])[0].numpy()
    _assert_within_peak(got, want)


class _FixedGains(OracleSeparator):
    """The true sources of the stretch it is given, scaled by fixed gains (one negative): the raw output is
    that, the stitcher's gain brings each source back to its level in the mixture."""

    gains = np.array([0.29, -0.022], np.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.numpy()
        out = np.zeros((xb.shape[0], self.n_src, xb.shape[1]), np.float32)
        for b in range(xb.shape[0]):
            off = self.locate(xb[b])
            self.offsets.append(off)
            out[b] = self.sources[:, off : off + xb.shape[1]] * self.gains[:, None]
        return torch.from_numpy(out)


def test_one_pass_is_raw_only_with_loudness_off(tmp_path):
    src = synthetic_sources(round(1.6 * SR), SR, seed=12)
    mix = src.sum(0)
    raw = src * _FixedGains.gains[:, None]
    # --loudness off in one pass: the network's samples, sign and scale included
    for seg in (0.0, 2.0):
        got = Separator(_FixedGains(src, SR, segment=seg), loudness="off").separate_array(mix, SR)
        np.testing.assert_array_equal(got, raw)
    # several segments: the gains that make every segment continue the previous one and add up to the mixture
    got = Separator(_FixedGains(src, SR, segment=0.5), loudness="off").separate_array(mix, SR)
    np.testing.assert_allclose(got, src, atol=1e-4)
    # match in one pass: each speaker at its level in the mixture (the outputs add up to it)
    got = Separator(_FixedGains(src, SR, segment=0.0), loudness="match").separate_array(mix, SR)
    np.testing.assert_allclose(got, src, atol=1e-4)
    # a LUFS target in one pass: the same gain first (sign restored), then the loudness gain
    got = Separator(_FixedGains(src, SR, segment=0.0), loudness=-23.0).separate_array(mix, SR)
    for k in range(2):
        scale = float(got[k] @ src[k] / (src[k] @ src[k]))
        assert scale > 0
        np.testing.assert_allclose(got[k], scale * src[k], atol=1e-4 * np.abs(got[k]).max())
    # and in files: the raw outputs report no gain
    sf.write(tmp_path / "mix.wav", mix, SR, subtype="FLOAT")
    res = Separator(_FixedGains(src, SR, segment=0.0), loudness="off", subtype="FLOAT").separate_file(
        tmp_path / "mix.wav", tmp_path / "o")
    assert res.status == "ok", res.error
    np.testing.assert_array_equal(_read([o.path for o in res.outputs]), raw)
    assert [o.gain_db for o in res.outputs] == [0.0, 0.0]


class _Loudness:
    """Not scale-equivariant (each output sample scales with the input's RMS), so the level the network is fed
    shows in its output; it asks for its input at -25 LUFS in the other modes."""

    sample_rate, n_src, input_loudness = SR, 2, -25.0

    def __init__(self, segment: float):
        self.segment = segment

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x * x.pow(2).mean(dim=1, keepdim=True).sqrt() * 3.0
        return torch.stack([a, x - a], dim=1)


@pytest.mark.parametrize("segment", [0.0, 3.0])
def test_raw_outputs_are_of_the_input_as_given_not_normalised(segment):
    x = synthetic_sources(2 * SR, SR, seed=13).sum(0) * np.float32(0.1)
    net = _Loudness(segment)
    with torch.inference_mode():
        want = net(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_array_equal(Separator(net, loudness="off").separate_array(x, SR), want)


def test_raw_outputs_with_shifts_are_the_mean_of_the_passes():
    x = synthetic_sources(400, SR, seed=14).sum(0)  # short: the delay's zeros change the RMS noticeably
    net = _Loudness(0.0)
    with torch.inference_mode():  # pass k: the input delayed by k * 0.5 ms (4 samples at 8 kHz), delay dropped
        passes = [net(torch.from_numpy(np.pad(x, (4 * k, 0)))[None])[0, :, 4 * k:].numpy() for k in range(3)]
    got = Separator(net, loudness="off", shifts=3).separate_array(x, SR)
    np.testing.assert_allclose(got, np.mean(passes, axis=0), rtol=1e-5, atol=1e-7)
    assert np.abs(passes[1] - passes[0]).max() > 1e-4  # the passes differ: the mean is not one pass


@pytest.mark.parametrize("n,length,ov", [(1000, 0, 0), (399, 400, 100), (400, 400, 100)])
def test_stitcher_passes_a_whole_input_segment_through_when_asked(rng, n, length, ov):
    est = rng.standard_normal((2, n)).astype(np.float32) * np.array([[0.3], [-2.0]], np.float32)
    mix = rng.standard_normal(n).astype(np.float32)
    assert plan_segments(n, length, ov) == [(0, n)]
    np.testing.assert_array_equal(Stitcher(2, ov, raw_whole=True).push(est, mix, True), est)
    gained = Stitcher(2, ov).push(est, mix, True)  # without raw_whole: the least-squares gain, as before
    np.testing.assert_allclose(gained, est * solve_gains(est, mix, None)[:, None], rtol=1e-6)


def test_stitcher_with_raw_whole_still_gains_several_segments(rng):
    n, length, ov = 3000, 400, 100
    src = rng.standard_normal((2, n)).astype(np.float32)
    mix = src.sum(0)
    plan = plan_segments(n, length, ov)
    outs = {True: [], False: []}
    for raw in (True, False):
        st = Stitcher(2, ov, raw_whole=raw)
        for i, (s, e) in enumerate(plan):
            outs[raw].append(st.push(src[:, s:e] * np.array([[0.5], [-3.0]], np.float32), mix[s:e],
                                     i == len(plan) - 1))
    np.testing.assert_array_equal(np.concatenate(outs[True], 1), np.concatenate(outs[False], 1))
    np.testing.assert_allclose(np.concatenate(outs[True], 1), src, atol=1e-4)


class _Loud:
    """Two outputs beyond full scale: 3 x and -2 x."""

    sample_rate, n_src, segment = SR, 2, 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([3.0 * x, -2.0 * x], dim=1)


def test_raw_outputs_of_one_channel_and_beyond_full_scale(tmp_path):
    """--channel N feeds that channel's samples; raw outputs are never lowered: a FLOAT file keeps them, a
    PCM file clips them and says so (flag `clipped`)."""
    left = synthetic_sources(SR, SR, seed=15).sum(0)
    right = left[::-1].copy() * np.float32(2.0)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), SR, subtype="FLOAT")
    want = np.stack([3.0 * right, -2.0 * right])
    assert np.abs(want).max() > 1
    res = Separator(_Loud(), loudness="off", channel=2, subtype="FLOAT").separate_file(tmp_path / "stereo.wav",
                                                                                      tmp_path / "f")
    assert res.status == "ok" and res.flags == [], (res.error, res.flags)
    np.testing.assert_array_equal(_read([o.path for o in res.outputs]), want)
    res = Separator(_Loud(), loudness="off", channel=2).separate_file(tmp_path / "stereo.wav", tmp_path / "p")
    assert res.status == "ok" and res.flags == ["clipped"], (res.error, res.flags)
    got = np.stack([sf.read(o.path, dtype="float32")[0] for o in res.outputs])
    np.testing.assert_allclose(got, np.clip(want, -1, 1), atol=1 / 2**15)
