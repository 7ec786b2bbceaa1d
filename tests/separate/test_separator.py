"""The Separator end to end with a test double that returns the true sources of a synthetic mixture in a
random order and with a random gain (and sign) per segment: correct alignment, gain correction and crossfades
give back the sources (SI-SNR > 40 dB); plus rates, lengths, formats, loudness and output-safety rules."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import soxr
import torch

from sepcli.audio.chunking import plan_segments, segment_geometry
from sepcli.metrics import separation_scores, si_snr
from sepcli.pipeline import Separator, UsageError
from tests.testnets import OracleSeparator, synthetic_sources

SR = 8000


def _mixture_file(tmp_path, sources, rate=SR, name="mix.wav", subtype="FLOAT", fmt=None):
    p = tmp_path / name
    sf.write(p, sources.sum(0), rate, subtype=subtype, format=fmt)
    return p


def _read_outputs(result):
    return np.stack([sf.read(o.path, dtype="float32")[0] for o in result.outputs])


def _scores(est, ref):
    return separation_scores(est, ref, ref.sum(0), with_sdr=False)["si_snr"]


@pytest.mark.parametrize("seconds,segment,overlap,batch", [
    (3.3, 1.0, 0.25, 1),      # several segments, last one short
    (2.05, 0.5, 0.5, 2),      # maximal overlap, batches of 2 (with a short last segment in a batch)
    (4.0, 0.8, 0.1, 3),       # small overlap
    (2.0 + 123 / SR, 0.6, 0.3, 1),  # a length that is not a multiple of the hop
    (0.6, 1.0, 0.25, 1),      # shorter than one segment
    (1.0, 1.0, 0.25, 1),      # exactly one segment
    (1.75, 1.0, 0.25, 1),     # one segment plus exactly the overlap (no third piece)
    (2.5, 0.0, 0.25, 1),      # --segment 0: one pass over the whole input
])
def test_outputs_match_true_sources(tmp_path, seconds, segment, overlap, batch):
    n = round(seconds * SR)
    src = synthetic_sources(n, SR, seed=int(seconds * 100))
    double = OracleSeparator(src, SR, seed=7)
    sep = Separator(double, segment=segment, overlap=overlap, batch_size=batch, loudness="off", subtype="FLOAT")
    res = sep.separate_file(_mixture_file(tmp_path, src), tmp_path / "out")
    assert res.status == "ok", res.error
    est = _read_outputs(res)
    assert est.shape == src.shape
    assert np.all(_scores(est, src) > 40), _scores(est, src)
    # the double really saw the planned segments (each found at its offset)
    length, ov = segment_geometry(SR, segment, overlap)
    plan = plan_segments(n, length, ov) if length else [(0, n)]
    assert double.offsets == [s for s, _ in plan]


def test_three_speakers_and_input_normalisation(tmp_path):
    n = int(3.1 * SR)
    src = synthetic_sources(n, SR, n_src=3, seed=3)
    double = OracleSeparator(src, SR, segment=0.7, overlap=0.3, seed=1, input_loudness=-30.0)
    sep = Separator(double, loudness="off", subtype="FLOAT")
    res = sep.separate_file(_mixture_file(tmp_path, src), tmp_path / "out")
    assert res.status == "ok", res.error
    assert np.all(_scores(_read_outputs(res), src) > 40)


def test_separate_array_returns_sources(rng):
    src = synthetic_sources(int(2.2 * SR), SR, seed=11)
    y = Separator(OracleSeparator(src, SR, segment=0.5), loudness="off").separate_array(src.sum(0), SR)
    assert y.shape == src.shape and y.dtype == np.float32
    assert np.all(_scores(y, src) > 40)


def test_44k_stereo_in_gives_44k_outputs_of_exact_length(tmp_path):
    rate = 44100
    n = int(2.3 * rate) + 17
    src = synthetic_sources(n, rate, seed=5)
    # the model runs at 8 kHz: the double holds the sources as the pipeline will see them there
    src_model = np.stack([soxr.resample(s, rate, SR, quality="HQ") for s in src])
    stereo = np.stack([1.2 * src.sum(0), 0.8 * src.sum(0)], axis=1)  # downmix (mean) = the mixture
    p = tmp_path / "stereo.wav"
    sf.write(p, stereo, rate, subtype="FLOAT")
    res = Separator(OracleSeparator(src_model, SR, segment=1.0), loudness="off", subtype="FLOAT").separate_file(
        p, tmp_path / "out")
    assert res.status == "ok", res.error
    for o in res.outputs:
        info = sf.info(o.path)
        assert info.samplerate == rate and info.frames == n and info.channels == 1
    # band-limited references: what an 8 kHz model can return
    ref = np.stack([soxr.resample(s, SR, rate, quality="HQ")[:n] for s in src_model])
    assert np.all(_scores(_read_outputs(res), ref) > 25)


@pytest.mark.parametrize("ext,fmt,sub", [("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"),
                                         ("ogg", "OGG", "VORBIS"), ("opus", "OGG", "OPUS"),
                                         ("mp3", "MP3", "MPEG_LAYER_III"), ("aiff", "AIFF", "PCM_24")])
def test_each_input_format(tmp_path, ext, fmt, sub):
    rate = 48000 if sub == "OPUS" else SR
    n = int(1.5 * rate)
    src = synthetic_sources(n, rate, seed=2)
    p = tmp_path / f"in.{ext}"
    sf.write(p, src.sum(0), rate, format=fmt, subtype=sub)
    # the double works on what was actually decoded (lossy codecs change the mixture)
    decoded = sf.read(p, dtype="float32")[0]
    held = src if sub in ("PCM_16", "PCM_24") else np.stack([decoded * 0.5, decoded * 0.5 + 1e-3 * src[0]])
    if rate != SR:
        held = np.stack([soxr.resample(h, rate, SR, quality="HQ") for h in held])
    res = Separator(OracleSeparator(held, SR, segment=0.5), loudness="off").separate_file(p, tmp_path / "o")
    assert res.status == "ok", res.error
    assert res.input_rate == rate
    for o in res.outputs:
        assert sf.info(o.path).frames == len(decoded) and sf.info(o.path).samplerate == rate
    if sub in ("PCM_16", "PCM_24"):
        assert np.all(_scores(_read_outputs(res), src) > 35)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_each_output_format(tmp_path, fmt):
    src = synthetic_sources(int(1.2 * SR), SR, seed=4)
    res = Separator(OracleSeparator(src, SR, segment=0.5), format=fmt).separate_file(
        _mixture_file(tmp_path, src), tmp_path / "o")
    assert res.status == "ok", res.error
    for k, o in enumerate(res.outputs, 1):
        assert o.path.endswith(f"mix_spk{k}.{fmt}")
        info = sf.info(o.path)
        assert info.format == {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}[fmt]
        assert info.samplerate == SR and info.frames == len(src[0])
        assert o.frames == len(src[0])


def test_loudness_target_each_output_at_target_without_clipping(tmp_path):
    n = int(3 * SR)
    src = synthetic_sources(n, SR, seed=8)
    src[1] *= 0.05  # a much quieter talker
    res = Separator(OracleSeparator(src, SR, segment=1.0), loudness="-23").separate_file(
        _mixture_file(tmp_path, src), tmp_path / "o")
    assert res.status == "ok", res.error
    meter = pyloudnorm.Meter(SR)
    for o in res.outputs:
        y = sf.read(o.path)[0]
        assert meter.integrated_loudness(y) == pytest.approx(-23.0, abs=0.5)
        assert np.abs(y).max() <= 10 ** (-1 / 20) + 1 / 32768
        assert o.loudness_lufs == pytest.approx(-23.0, abs=0.5)


def test_loudness_target_that_would_clip_is_limited_and_flagged(tmp_path):
    n = int(3 * SR)
    src = synthetic_sources(n, SR, seed=9) * 0.05
    src[0, SR : SR + 5] = 0.9  # a click: high peak, little loudness
    res = Separator(OracleSeparator(src, SR, segment=1.0), loudness=-10).separate_file(
        _mixture_file(tmp_path, src), tmp_path / "o")
    assert res.status == "ok", res.error
    y = sf.read(res.outputs[0].path)[0]
    assert np.abs(y).max() <= 10 ** (-1 / 20) + 1 / 32768
    assert "peak_limited" in res.outputs[0].flags
    assert pyloudnorm.Meter(SR).integrated_loudness(y) < -10.5  # below target rather than clipped


def test_match_outputs_sum_to_input(tmp_path):
    src = synthetic_sources(int(3.4 * SR), SR, seed=10)
    p = _mixture_file(tmp_path, src, subtype="PCM_16")
    res = Separator(OracleSeparator(src, SR, segment=0.7), loudness="match").separate_file(p, tmp_path / "o")
    assert res.status == "ok", res.error
    total = _read_outputs(res).sum(0)
    x = sf.read(p, dtype="float32")[0]
    err_db = 10 * np.log10(np.sum(x**2) / np.sum((total - x) ** 2))
    assert err_db >= 30, err_db
    assert all(o.gain_db == 0.0 for o in res.outputs)


def test_match_lowers_all_speakers_together_instead_of_clipping(tmp_path):
    src = synthetic_sources(int(2 * SR), SR, seed=12)
    src[1] = -src[0] * 0.999 + 0.01 * src[1]  # two talkers that cancel: quiet mix, loud sources
    src[:, 4000:4010] *= 40
    res = Separator(OracleSeparator(src, SR, segment=0.5), loudness="match").separate_file(
        _mixture_file(tmp_path, src), tmp_path / "o")
    assert res.status == "ok", res.error
    est = _read_outputs(res)
    assert np.abs(est).max() <= 1.0
    assert all("scaled_to_avoid_clipping" in o.flags for o in res.outputs)
    assert res.outputs[0].gain_db == res.outputs[1].gain_db < 0


@pytest.mark.parametrize("fmt", ["ogg", "mp3"])
def test_match_keeps_lossy_outputs_below_full_scale_when_decoded(tmp_path, fmt):
    # lossy decoders overshoot the encoded peak by a few percent: scaled to 0 dBFS, such a file decodes above 1.0
    src = synthetic_sources(int(2 * SR), SR, seed=12)
    src *= 1.5 / np.abs(src).max()  # a hot float input: its speakers pass full scale
    res = Separator(OracleSeparator(src, SR, segment=0.5), loudness="match", format=fmt).separate_file(
        _mixture_file(tmp_path, src), tmp_path / "o")
    assert res.status == "ok", res.error
    assert all("scaled_to_avoid_clipping" in o.flags for o in res.outputs)
    assert max(o.peak_dbfs for o in res.outputs) == pytest.approx(-1.0, abs=0.01)  # the -1 dBFS ceiling
    assert np.abs(_read_outputs(res)).max() <= 1.0


def test_silent_speaker_flagged_and_dropped(tmp_path):
    src = synthetic_sources(int(2 * SR), SR, seed=13)
    src[1] = 0.0
    p = _mixture_file(tmp_path, src)
    res = Separator(OracleSeparator(src, SR, segment=0.5)).separate_file(p, tmp_path / "a")
    assert res.status == "ok"
    assert "silent" in res.outputs[1].flags and "silent" not in res.outputs[0].flags
    res = Separator(OracleSeparator(src, SR, segment=0.5), drop_silent=True).separate_file(p, tmp_path / "b")
    assert [o.written for o in res.outputs] == [True, False]
    assert sorted(f.name for f in (tmp_path / "b").iterdir()) == ["mix_spk1.wav"]


@pytest.mark.parametrize("seconds", [0.05, 0.3])
def test_short_speech_is_not_flagged_silent_and_short_silence_is(tmp_path, seconds):
    # under 400 ms BS.1770 loudness is undefined; silence is still told apart by the ungated level
    src = synthetic_sources(int(seconds * SR), SR, seed=21)
    src[1] = 0.0
    p = _mixture_file(tmp_path, src)
    res = Separator(OracleSeparator(src, SR, segment=0.5), drop_silent=True).separate_file(p, tmp_path / "a")
    assert res.status == "ok", res.error
    assert ["silent" in o.flags for o in res.outputs] == [False, True]
    assert [o.written for o in res.outputs] == [True, False]
    assert res.outputs[0].loudness_lufs is None  # still no loudness figure under 400 ms


def test_overwrite_with_drop_silent_removes_the_dropped_speakers_old_output(tmp_path):
    src = synthetic_sources(int(2 * SR), SR, seed=22)
    p = _mixture_file(tmp_path, src)
    out = tmp_path / "o"
    assert Separator(OracleSeparator(src, SR, segment=0.5)).separate_file(p, out).status == "ok"
    assert (out / "mix_spk2.wav").exists()
    quiet = src.copy()
    quiet[1] = 0.0  # the same input now holds one talker
    p = _mixture_file(tmp_path, quiet)
    res = Separator(OracleSeparator(quiet, SR, segment=0.5), drop_silent=True, overwrite=True).separate_file(p, out)
    assert [o.written for o in res.outputs] == [True, False]
    assert sorted(f.name for f in out.iterdir()) == ["mix_spk1.wav"]  # no stale spk2 from the old content
    # without --overwrite nothing is replaced, so nothing is removed either
    res = Separator(OracleSeparator(quiet, SR, segment=0.5), drop_silent=True).separate_file(p, out)
    assert res.status == "error" and (out / "mix_spk1.wav").exists()


def test_refuses_to_overwrite_outputs_and_inputs(tmp_path):
    src = synthetic_sources(SR, SR, seed=14)
    p = _mixture_file(tmp_path, src)
    out = tmp_path / "o"
    sep = Separator(OracleSeparator(src, SR, segment=0.5))
    assert sep.separate_file(p, out).status == "ok"
    before = (out / "mix_spk1.wav").read_bytes()
    r = sep.separate_file(p, out)
    assert r.status == "error" and "exists" in r.error and "--overwrite" in r.error
    assert (out / "mix_spk1.wav").read_bytes() == before
    assert Separator(OracleSeparator(src, SR, segment=0.5), overwrite=True).separate_file(p, out).status == "ok"
    # an output name that is the input itself is refused even with --overwrite
    inp = tmp_path / "x_spk1.wav"
    sf.write(inp, src.sum(0), SR)
    sep2 = Separator(OracleSeparator(src, SR, segment=0.5), overwrite=True)
    r = sep2.separate_file(inp, tmp_path, stem="x")
    assert r.status == "error" and "overwrite an input" in r.error
    assert sf.info(inp).frames == SR


@pytest.mark.parametrize("template", ["../{stem}_{k}.{ext}", "/tmp/{stem}_{k}.{ext}", "{stem}.{ext}",
                                      "{stem}_{speaker}.{ext}", "a/../../{k}.wav",
                                      "{k:.0s}.wav"])
def test_bad_name_templates_are_usage_errors(template):
    src = synthetic_sources(SR, SR)
    with pytest.raises(UsageError):
        Separator(OracleSeparator(src, SR), name=template)


def test_bad_input_is_an_error_result_and_leaves_no_output(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....garbage")
    src = synthetic_sources(SR, SR)
    r = Separator(OracleSeparator(src, SR)).separate_file(bad, tmp_path / "o")
    assert r.status == "error" and r.error.startswith(str(bad)) and "\n" not in r.error
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_model_rate_and_fixed_rate_outputs(tmp_path):
    rate = 16000
    src16 = synthetic_sources(int(1.3 * rate) + 3, rate, seed=15)
    src8 = np.stack([soxr.resample(s, rate, SR, quality="HQ") for s in src16])
    p = tmp_path / "m.wav"
    sf.write(p, src16.sum(0), rate, subtype="FLOAT")
    r = Separator(OracleSeparator(src8, SR, segment=0.5), sample_rate="model").separate_file(p, tmp_path / "a")
    assert {sf.info(o.path).samplerate for o in r.outputs} == {SR}
    assert sf.info(r.outputs[0].path).frames == len(src8[0])
    r = Separator(OracleSeparator(src8, SR, segment=0.5), sample_rate=22050).separate_file(p, tmp_path / "b")
    assert sf.info(r.outputs[0].path).samplerate == 22050
    assert sf.info(r.outputs[0].path).frames == round(len(src16[0]) * 22050 / rate)


def test_si_snr_of_double_without_alignment_is_poor(tmp_path):
    """Sanity check of the test itself: naive concatenation of the double's segments is far from the sources."""
    src = synthetic_sources(int(3 * SR), SR, seed=16)
    double = OracleSeparator(src, SR, seed=7)
    pieces = [double(torch.from_numpy(src.sum(0)[s : s + SR][None]))[0].numpy() for s in range(0, 3 * SR, SR)]
    naive = np.concatenate(pieces, axis=1)
    assert np.min(_scores(naive, src)) < 10
    assert float(si_snr(torch.from_numpy(src[0]), torch.from_numpy(src[0]))) > 60


class _DelayFlips(torch.nn.Module):
    """A small real network (random S4M, shift-variant through its strided encoder) that also puts its sources in
    the other order whenever the input starts with an exact zero, as a delayed (zero-padded) input does: the
    passes of --shifts must be put back in order before they are averaged."""

    sample_rate, n_src = SR, 2

    def __init__(self):
        super().__init__()
        from sepcli.nets import build_network

        torch.manual_seed(5)
        self.net = build_network("s4m", {"sample_rate": SR, "bn_channels": 8, "hidden": 8, "num_blocks": 1,
                                         "depth": 2, "enc_kernel_ms": 2.0})
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        y = self.net(x)
        return y.flip(1) if bool((x[:, 0] == 0).all()) else y


@pytest.mark.parametrize("shifts", [1, 3])
def test_shifts_average_the_delayed_passes_in_the_first_passes_order(shifts):
    net = _DelayFlips()
    x = synthetic_sources(SR, SR, seed=4).sum(0)[None].astype(np.float32) + 0.01  # never starts at an exact zero
    sep = Separator(net, shifts=shifts, loudness="off")
    from sepcli.pipeline import _Timer

    got = sep._forward(x, _Timer())
    # reference, plainly: pass k delays the input by k * 0.5 ms (4 samples at 8 kHz), drops the delay from the
    # output, and is flipped back (this network flips delayed inputs); then the mean
    with torch.inference_mode():
        passes = []
        for k in range(shifts):
            d = 4 * k
            y = net.net(torch.from_numpy(np.pad(x, ((0, 0), (d, 0)))))[0, :, d:].numpy()
            passes.append(y)
    want = np.mean(passes, axis=0)
    assert got.shape == (1, 2, SR)
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)
    assert [c[1] for c in net.calls] == [SR + 4 * k for k in range(shifts)]
    if shifts > 1:  # the passes differ (else the test would show nothing)
        assert np.abs(passes[1] - passes[0]).max() > 1e-3


class _CyclesWhenDelayed(torch.nn.Module):
    """Three sources: the input under three slow carriers of different frequencies (distinct sources that a
    0.5 ms delay barely changes), put in a 3-cycle of their order whenever the input starts with an exact zero,
    as a delayed pass's does. A 3-cycle is not its own inverse: undoing it the wrong way is seen."""

    sample_rate, n_src = SR, 3

    def plain(self, x):
        t = torch.arange(x.shape[-1], dtype=x.dtype) / SR
        return torch.stack([x * torch.sin(2 * np.pi * f * t + p) for f, p in ((2.0, 0.3), (3.5, 1.1), (5.5, 2.0))],
                           dim=1)

    def forward(self, x):
        y = self.plain(x)
        return y[:, [1, 2, 0]] if bool((x[:, 0] == 0).all()) else y


def test_shifts_put_three_sources_back_in_order():
    net = _CyclesWhenDelayed()
    x = synthetic_sources(SR, SR, seed=6).sum(0)[None].astype(np.float32) + 0.01
    from sepcli.pipeline import _Timer

    got = Separator(net, shifts=3, loudness="off")._forward(x, _Timer())
    with torch.inference_mode():  # reference: every pass in the plain order, its delay dropped, then the mean
        want = np.mean([net.plain(torch.from_numpy(np.pad(x, ((0, 0), (4 * k, 0)))))[0, :, 4 * k:].numpy()
                        for k in range(3)], axis=0)
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)


class _NegatesWhenDelayed(_CyclesWhenDelayed):
    """As _CyclesWhenDelayed, and a delayed pass also returns its second source negated (SI-SNR, which trains
    these networks, cannot tell a source from its negation)."""

    def forward(self, x):
        y = super().forward(x)
        return y * torch.tensor([1.0, -1.0, 1.0])[:, None] if bool((x[:, 0] == 0).all()) else y


def test_shifts_put_negated_sources_back_before_the_mean():
    net = _NegatesWhenDelayed()
    x = synthetic_sources(SR, SR, seed=6).sum(0)[None].astype(np.float32) + 0.01
    from sepcli.pipeline import _Timer

    got = Separator(net, shifts=3, loudness="off")._forward(x, _Timer())
    with torch.inference_mode():  # reference: every pass in the plain order and sign, its delay dropped, the mean
        want = np.mean([net.plain(torch.from_numpy(np.pad(x, ((0, 0), (4 * k, 0)))))[0, :, 4 * k:].numpy()
                        for k in range(3)], axis=0)
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shifts", [0, 17])
def test_shifts_out_of_range_is_a_usage_error(shifts):
    with pytest.raises(UsageError, match="--shifts must be between 1 and 16"):
        Separator(OracleSeparator(synthetic_sources(SR, SR), SR), shifts=shifts)


class _WholeRowGain:
    """A non-causal double: each output sample depends on the whole row the model is given (its RMS), as in a
    real network; a segment zero-padded to a longer one in its batch comes out different."""

    sample_rate, n_src = SR, 2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x * x.pow(2).mean(dim=1, keepdim=True).sqrt() * 3.0
        return torch.stack([a, x - a], dim=1)


def test_output_does_not_depend_on_batch_size():
    """3.3 s in 1 s segments: the last segment is short; batched with full ones it must not be padded."""
    x = synthetic_sources(round(3.3 * SR), SR, seed=3).sum(0)
    want = Separator(_WholeRowGain(), segment=1.0, batch_size=1, loudness="off").separate_array(x, SR)
    for batch in (2, 3, 8):
        got = Separator(_WholeRowGain(), segment=1.0, batch_size=batch, loudness="off").separate_array(x, SR)
        np.testing.assert_array_equal(got, want)
        got = Separator(_WholeRowGain(), segment=1.0, batch_size=batch, loudness="off", shifts=2).separate_array(x, SR)
        np.testing.assert_array_equal(got, Separator(_WholeRowGain(), segment=1.0, loudness="off",
                                                     shifts=2).separate_array(x, SR))


class _QuietSecond:
    sample_rate, n_src = SR, 2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        r = 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))  # a faint residual, about
        return torch.stack([x - r, r], dim=1)  # 40 LU below speaker 1; the two add up to the mixture (gains 1)


def test_separate_array_does_not_amplify_a_silent_output_to_the_target(tmp_path):
    """As for files: an output 30 LU or more below the loudest keeps its level (gain 1, flag silent in files)."""
    x = synthetic_sources(2 * SR, SR, seed=5).sum(0)
    # its level in the mix: `match` (`off` in one segment is the network's samples, before the stitcher's gain)
    level = Separator(_QuietSecond(), loudness="match").separate_array(x, SR)
    got = Separator(_QuietSecond(), loudness=-23.0).separate_array(x, SR)
    np.testing.assert_array_equal(got[1], level[1])
    assert pyloudnorm.Meter(SR).integrated_loudness(got[0].astype(np.float64)) == pytest.approx(-23.0, abs=0.05)
    res = Separator(_QuietSecond(), loudness=-23.0).separate_file(_mixture_file(tmp_path, x[None]), tmp_path / "o")
    assert res.outputs[1].gain_db == 0.0 and "silent" in res.outputs[1].flags  # the file rule it now shares


def test_truncated_input_is_separated_as_far_as_it_decodes_and_flagged(tmp_path):
    p = tmp_path / "full.mp3"
    sf.write(p, synthetic_sources(3 * 44100, 44100, seed=6).sum(0), 44100)
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    decoded = len(sf.read(cut)[0])
    res = Separator(OracleSeparator(synthetic_sources(SR, SR), SR), loudness="off").separate_file(cut, tmp_path / "o")
    assert res.status == "ok" and "truncated_input" in res.flags, (res.error, res.flags)
    assert res.duration == pytest.approx(decoded / 44100) and [o.frames for o in res.outputs] == [decoded] * 2
    res = Separator(OracleSeparator(synthetic_sources(SR, SR), SR), loudness="off").separate_file(p, tmp_path / "f")
    assert res.status == "ok" and "truncated_input" not in res.flags


def frames_in_small_reads(path) -> int:
    """How many frames libsndfile decodes from the start, read one at a time, before it fails or ends."""
    n = 0
    with sf.SoundFile(path) as f:
        try:
            while len(d := f.read(1)):
                n += len(d)
        except RuntimeError:
            pass
    return n


@pytest.mark.parametrize("fmt,container,seconds", [("wav", "WAV", 3), ("wav", "WAVEX", 3), ("flac", "FLAC", 12)])
def test_a_cut_wav_or_flac_is_separated_as_far_as_it_decodes_and_flagged(tmp_path, fmt, container, seconds):
    """libsndfile reports a cut WAV's length as what the file holds (the header's declared size is read here
    from the RIFF data chunk, also in a WAVE_FORMAT_EXTENSIBLE file), and a cut FLAC fails mid-read ("lost
    sync"): both keep what decodes, flagged."""
    p = tmp_path / f"full.{fmt}"
    sf.write(p, synthetic_sources(seconds * SR, SR, seed=6).sum(0), SR, format=container)
    assert sf.info(p).format == container
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    decoded = frames_in_small_reads(cut)
    assert 0.3 * seconds * SR < decoded < 0.7 * seconds * SR
    sep = Separator(OracleSeparator(synthetic_sources(SR, SR), SR), loudness="off")
    res = sep.separate_file(cut, tmp_path / "o")
    assert res.status == "ok" and "truncated_input" in res.flags, (res.error, res.flags)
    assert res.duration == pytest.approx(decoded / SR) and [o.frames for o in res.outputs] == [decoded] * 2
    res = sep.separate_file(p, tmp_path / "f")
    assert res.status == "ok" and "truncated_input" not in res.flags


@pytest.mark.parametrize("placeholder,subtype", [(0xFFFFFFFF, "PCM_16"), (0x7FFFF000, "PCM_16"),
                                                 (0x7FFFF000 // 3 * 3, "PCM_24")])
def test_a_wav_whose_size_fields_are_streaming_placeholders_is_not_called_cut(tmp_path, placeholder, subtype):
    """A WAV written to a pipe carries 0xFFFFFFFF as its data size, or SoX's 0x7FFFF000 rounded down to whole
    frames (3 bytes in 24-bit mono): not a declared length."""
    import struct

    p = tmp_path / "stream.wav"
    sf.write(p, synthetic_sources(SR, SR, seed=2).sum(0), SR, subtype=subtype)
    raw = bytearray(p.read_bytes())
    at = raw.index(b"data") + 4
    raw[at:at + 4] = struct.pack("<I", placeholder)
    p.write_bytes(bytes(raw))
    res = Separator(OracleSeparator(synthetic_sources(SR, SR), SR), loudness="off").separate_file(p, tmp_path / "o")
    assert res.status == "ok" and "truncated_input" not in res.flags, (res.error, res.flags)
    assert [o.frames for o in res.outputs] == [SR] * 2


@pytest.mark.parametrize("rate_option", ["model", 8000])
def test_input_with_no_sample_at_the_output_rate_is_an_error(tmp_path, rate_option):
    """One sample at 48 kHz is no sample at 8 kHz: an error naming the file, not an empty output file."""
    p = tmp_path / "blip.wav"
    sf.write(p, np.array([0.3]), 48000)
    sep = Separator(OracleSeparator(synthetic_sources(SR, SR), SR), sample_rate=rate_option)
    res = sep.separate_file(p, tmp_path / "o")
    assert res.status == "error" and res.error == f"{p}: too short: 1 sample(s) at 48000 Hz are no sample at the " \
                                                  "output rate of 8000 Hz"
    assert not (tmp_path / "o").exists()  # refused from the header, before any output folder
    from sepcli.audio.io import AudioError

    with pytest.raises(AudioError, match="too short"):
        sep.separate_array(np.array([0.3], np.float32), 48000)
