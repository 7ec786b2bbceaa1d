"""Block reading (downmix, channel choice, every input format), atomic writing, clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from sepcli.audio.io import (
    ArrayInput,
    AtomicWriter,
    AudioError,
    AudioInput,
    FloatSpool,
    check_output_format,
    spool_stdin,
)

IN_FORMATS = [("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_24"), ("ogg", "OGG", "VORBIS"),
              ("opus", "OGG", "OPUS"), ("mp3", "MP3", "MPEG_LAYER_III"), ("aiff", "AIFF", "PCM_16")]


def _tone(n, rate, f=440.0):
    return (0.3 * np.sin(2 * np.pi * f * np.arange(n) / rate)).astype(np.float32)


@pytest.mark.parametrize("ext,fmt,sub", IN_FORMATS)
def test_reads_every_input_format(tmp_path, ext, fmt, sub):
    rate = 48000 if sub == "OPUS" else 16000
    # a noise-like signal: libmpg123 decodes some pure-tone MP3 frames differently depending on read sizes
    x = (0.1 * np.random.default_rng(0).standard_normal(rate)).astype(np.float32)
    p = tmp_path / f"a.{ext}"
    sf.write(p, x, rate, format=fmt, subtype=sub)
    with AudioInput(p) as a:
        y = np.concatenate(list(a.blocks(1000)))
        assert a.rate == rate and a.frames == len(y) == len(x)
    lossy = sub in ("VORBIS", "OPUS", "MPEG_LAYER_III")
    # lossless formats decode to the samples (within quantisation); lossy ones keep the tone's energy
    if lossy:
        assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=0.1)
    else:
        np.testing.assert_allclose(y, x, atol=1e-4)


def test_downmix_and_channel_choice(tmp_path, rng):
    x = rng.uniform(-0.5, 0.5, (3000, 3)).astype(np.float32)
    p = tmp_path / "multi.wav"
    sf.write(p, x, 8000, subtype="FLOAT")
    with AudioInput(p) as a:
        np.testing.assert_allclose(np.concatenate(list(a.blocks(700))), x.mean(1), atol=1e-7)
        # blocks() rewinds: a second pass gives the same samples
        np.testing.assert_allclose(np.concatenate(list(a.blocks(700))), x.mean(1), atol=1e-7)
    with AudioInput(p, channel=2) as a:
        np.testing.assert_array_equal(np.concatenate(list(a.blocks(1000))), x[:, 1])
    with pytest.raises(AudioError, match="channel 4"):
        AudioInput(p, channel=4)
    ai = ArrayInput(x, 8000, channel=3)
    np.testing.assert_array_equal(np.concatenate(list(ai.blocks(999))), x[:, 2])


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "notaudio.wav"
    bad.write_text("hello, I am text")
    with pytest.raises(AudioError) as e:
        AudioInput(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(AudioError, match="no such file"):
        AudioInput(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no audio"):
        AudioInput(empty)
    low = tmp_path / "low.wav"
    sf.write(low, np.zeros(100, np.float32), 4000)
    with pytest.raises(AudioError, match="outside"):
        AudioInput(low)


@pytest.mark.parametrize("fmt,subtype", [("wav", "PCM_16"), ("wav", "FLOAT"), ("flac", "PCM_24"),
                                         ("ogg", None), ("mp3", None)])
def test_atomic_writer_formats(tmp_path, fmt, subtype):
    x = _tone(16000, 16000)
    dest = tmp_path / f"o.{fmt}"
    w = AtomicWriter(dest, 16000, fmt, subtype)
    for i in range(0, len(x), 5000):
        w.write(x[i : i + 5000])
        assert not dest.exists()  # only the temporary file exists until commit
    w.commit()
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]
    info = sf.info(dest)
    assert info.samplerate == 16000 and info.frames == len(x)
    assert info.format == {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}[fmt]


def test_atomic_writer_abort_leaves_nothing_and_clips(tmp_path):
    dest = tmp_path / "o.wav"
    with pytest.raises(RuntimeError), AtomicWriter(dest, 8000, "wav") as w:
        w.write(np.ones(100, np.float32))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    w = AtomicWriter(dest, 8000, "wav", "PCM_16")
    w.write(np.array([0.5, 1.5, -2.0], np.float32))
    w.commit()
    assert w.clipped == 2
    assert np.abs(sf.read(dest)[0]).max() <= 1.0


def test_check_output_format():
    assert check_output_format("wav", None, 16000) == "PCM_16"
    assert check_output_format("ogg", None, 16000) == "VORBIS"
    with pytest.raises(ValueError):
        check_output_format("flac", "FLOAT", 16000)
    with pytest.raises(ValueError):
        check_output_format("mp3", None, 96000)
    with pytest.raises(ValueError):
        check_output_format("aac", None, 16000)


def test_float_spool_and_stdin(tmp_path, rng):
    s = FloatSpool(tmp_path)
    x = rng.standard_normal(10000).astype(np.float32)
    s.write(x[:3000])
    s.write(x[3000:])
    np.testing.assert_array_equal(np.concatenate(list(s.blocks(999))), x)
    s.close()
    assert list(tmp_path.iterdir()) == []
    import io

    src = tmp_path / "a.flac"
    sf.write(src, x * 0.1, 8000)
    p = spool_stdin(tmp_path, stream=io.BytesIO(src.read_bytes()))
    with AudioInput(p) as a:
        assert a.frames == len(x) and a.format == "FLAC"
    with pytest.raises(AudioError, match="empty"):
        spool_stdin(tmp_path, stream=io.BytesIO(b""))


@pytest.mark.parametrize("fmt,sub,ext", [("WAV", "GSM610", "wav"), ("AU", "G721_32", "au"), ("WAV", "NMS_ADPCM_16",
                                                                                            "wav")])
def test_codecs_libsndfile_cannot_seek_in_are_read_twice(tmp_path, fmt, sub, ext):
    """GSM 6.10, G.721 and NMS-ADPCM (telephony, call-centre recordings): libsndfile refuses to seek in them, and
    the pipeline reads an input twice (loudness, then separation)."""
    if sub not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile has no {sub}")
    p = tmp_path / f"a.{ext}"
    sf.write(p, (0.2 * np.random.default_rng(1).standard_normal(16037)).astype(np.float32), 8000, format=fmt,
             subtype=sub)
    want, _ = sf.read(p, dtype="float32")  # soundfile's own single pass, no seek
    with AudioInput(p) as a:
        for _ in range(2):
            np.testing.assert_array_equal(np.concatenate(list(a.blocks(1000))), want)
            assert a.decoded == len(want)


def test_truncated_file_decodes_fewer_frames_than_its_header_says(tmp_path):
    p = tmp_path / "full.mp3"
    sf.write(p, (0.2 * np.random.default_rng(0).standard_normal(3 * 44100)).astype(np.float32), 44100)
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with AudioInput(cut) as a:
        n = len(np.concatenate(list(a.blocks())))
        assert a.decoded == n == len(sf.read(cut)[0]) and n < 0.6 * a.frames  # the header keeps the full length


def test_array_input_refuses_a_channels_first_array():
    x = np.zeros((2, 32000), np.float32)  # [channels, T], e.g. torchaudio's layout
    with pytest.raises(AudioError, match=r"more channels than samples: pass \[T, channels\]"):
        ArrayInput(x, 16000)
    assert ArrayInput(x.T, 16000).channels == 2
    assert ArrayInput(np.zeros((1, 2), np.float32), 16000).frames == 1  # one stereo sample is still audio


def test_every_pass_reads_the_file_that_was_opened(tmp_path):
    """The pipeline reads an input twice (loudness, then separation): a file put at its path in between (a sync
    tool, an editor saving) is not read by the second pass, which would separate audio the first never measured."""
    p = tmp_path / "a.wav"
    x = _tone(8000, 8000)
    sf.write(p, x, 8000, subtype="FLOAT")
    other = tmp_path / "b.wav"
    sf.write(other, np.zeros((48000, 2), np.float32), 16000, subtype="FLOAT")
    with AudioInput(p) as a:
        first = np.concatenate(list(a.blocks(1000)))
        os.replace(other, p)
        np.testing.assert_array_equal(np.concatenate(list(a.blocks(1000))), first)
        assert a.decoded == a.frames == 8000
    np.testing.assert_array_equal(first, x)


def test_decoder_errors_name_the_file_not_a_descriptor(tmp_path):
    p = tmp_path / "text.wav"
    p.write_text("not audio at all " * 10)
    with pytest.raises(AudioError) as e:
        AudioInput(p)
    assert str(e.value).startswith(f"{p}: cannot decode audio (") and "opening" not in str(e.value), str(e.value)
