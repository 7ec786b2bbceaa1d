"""SIGINT and SIGTERM during `separate` and `batch` (a real `sepcli` subprocess with a slow test model, see
tests/faultnets.py): only complete outputs remain (no temporary files, spools or locks), the exit code is 130
(SIGINT) or 143 (SIGTERM) with one line on stderr, and rerunning `batch` completes the rest without redoing
finished files (their mtimes do not change)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import sepcli.audio.io as audio_io
from sepcli.pipeline import SeparationOptions, Separator
from tests.faultnets import slow_folder
from tests.testnets import bandsplit_folder, synthetic_sources

pytestmark = pytest.mark.slow
SR = 8000
ROOT = Path(__file__).resolve().parents[2]


def start(*args) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HOME=tempfile.gettempdir())
    return subprocess.Popen([sys.executable, "-m", "tests.faultnets", *[str(a) for a in args]], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pred, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"sepcli ended before the signal: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for sepcli to start writing")
        time.sleep(0.02)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".sepcli") or p.name.endswith(".part")]


def finished(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.wav") if not p.name.startswith("."))


def check_complete(outputs: list[Path], frames: int) -> None:
    for p in outputs:
        y, sr = sf.read(p)
        assert sr == SR and len(y) == frames and np.isfinite(y).all(), p


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    return slow_folder(tmp_path_factory.mktemp("slow") / "slow", sample_rate=SR, segment=0.25, delay=0.15)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_separate_interrupted_leaves_nothing_partial(tmp_path, slow_model, sig):
    src = tmp_path / "talk.wav"
    sf.write(src, synthetic_sources(3 * SR, SR).sum(0), SR)
    before = src.read_bytes()
    out = tmp_path / "out"
    proc = start("separate", src, "-o", out, "-m", slow_model)
    wait_for(lambda: out.is_dir() and any(p.name.endswith(".part") for p in out.iterdir()), proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert stderr.strip() == (f"sepcli: error: interrupted by {signal.Signals(sig).name}: finished outputs kept, "
                              f"unfinished ones removed (give the unfinished inputs again; `sepcli batch` skips "
                              f"finished files)")
    assert temporaries(tmp_path) == [] and not out.exists()  # nothing half written, not even the folder it made
    assert src.read_bytes() == before


def test_batch_reports_a_bad_file_when_it_fails_not_at_the_end(tmp_path, slow_model):
    """A long batch stopped by Ctrl-C has already said which file was bad (it used to keep the errors for the
    summary, which an interruption never reaches)."""
    root = tmp_path / "in"
    root.mkdir()
    (root / "a_bad.wav").write_bytes(b"not audio" * 100)
    for k in range(3):
        sf.write(root / f"f{k}.wav", synthetic_sources(SR, SR, seed=k).sum(0), SR)
    out = tmp_path / "out"
    proc = start("batch", root, "-o", out, "-m", slow_model)
    wait_for(lambda: out.is_dir() and any(p.name.endswith(".part") for p in out.iterdir()), proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    lines = stderr.strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 2, stderr
    assert lines[0].startswith(f"sepcli: error: {root / 'a_bad.wav'}: cannot decode audio")
    assert lines[1].startswith("sepcli: error: interrupted by SIGINT")


@pytest.mark.parametrize("sig,jobs", [(signal.SIGINT, 1), (signal.SIGTERM, 2)])
def test_batch_interrupted_then_resumed(tmp_path, slow_model, sig, jobs):
    root = tmp_path / "in"
    root.mkdir()
    n = 4
    for k in range(n):
        sf.write(root / f"f{k}.wav", synthetic_sources(SR, SR, seed=k).sum(0), SR)
    out = tmp_path / "out"
    proc = start("batch", root, "-o", out, "-m", slow_model, "--jobs", jobs)
    # signal once the first file is complete and another one is in progress
    wait_for(lambda: len(finished(out)) >= 2 and any(p.name.startswith(".sepcli-lock") for p in out.iterdir()),
             proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr and f"interrupted by {signal.Signals(sig).name}" in stderr
    assert temporaries(tmp_path) == []
    done = finished(out)
    assert 2 <= len(done) < 2 * n and len(done) % 2 == 0  # whole inputs only: both speakers or none
    check_complete(done, SR)
    mtimes = {p: p.stat().st_mtime_ns for p in done}
    if jobs == 1:  # rerun: completes the rest, redoes nothing
        proc = start("batch", root, "-o", out, "-m", slow_model, "--json")
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr


        status = {Path(r["input"]).name: r["status"] for r in json.loads(stdout)["results"]}
        assert sum(s == "skipped" for s in status.values()) == len(done) // 2
        assert sum(s == "ok" for s in status.values()) == n - len(done) // 2
        assert len(finished(out)) == 2 * n and temporaries(tmp_path) == []
        check_complete(finished(out), SR)
        assert {p: p.stat().st_mtime_ns for p in done} == mtimes


# ---------------------------------------------------------------------- SIGKILL (no handler can run)
KILLER = """
import os, signal, sys
from pathlib import Path
import sepcli.audio.io as io_mod
from sepcli.pipeline import Separator
from tests.testnets import register_test_archs

register_test_archs()
where, src, out, model = sys.argv[1:5]
real_commit, real_write = io_mod.AtomicWriter.commit, io_mod.AtomicWriter.write

def commit(self, overwrite=True):
    p = real_commit(self, overwrite)
    if where == p.name.split("_")[-1]:  # "spk1.wav": between the renames; "spk2.wav": after both
        os.kill(os.getpid(), signal.SIGKILL)
    return p

def write(self, block):
    written = real_write(self, block)
    if where == "writing":
        os.kill(os.getpid(), signal.SIGKILL)
    return written

io_mod.AtomicWriter.commit, io_mod.AtomicWriter.write = commit, write
Separator(Path(model), loudness=sys.argv[5]).separate_file(src, out)
"""


def killed_run(tmp_path: Path, model: Path, where: str, loudness: str = "match") -> tuple[Path, Path]:
    src = tmp_path / "in" / "f0.wav"
    src.parent.mkdir(parents=True)
    sf.write(src, synthetic_sources(2 * SR, SR, seed=1).sum(0), SR)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HOME=tempfile.gettempdir())
    p = subprocess.run([sys.executable, "-c", KILLER, where, str(src), str(out), str(model), loudness], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    return src, out


@pytest.fixture(scope="module")
def quick_model(tmp_path_factory):
    return bandsplit_folder(tmp_path_factory.mktemp("m") / "bandsplit", sample_rate=SR, segment=0.5)


@pytest.mark.parametrize("loudness,resume", [("match", True), ("off", False)])
def test_sigkill_between_the_renames_then_rerun_gives_all_speakers(tmp_path, quick_model, loudness, resume):
    """Killed after the first speaker was renamed: one output, a temporary file and a lock remain. A rerun
    (`batch`'s resume, or `separate` without --overwrite) removes that lone speaker and the temporary file and
    separates the input again: both speakers, complete, summing to the input (the test model splits the input
    into a low band and its complement)."""
    src, out = killed_run(tmp_path, quick_model, "spk1.wav", loudness)
    assert [p.name for p in finished(out)] == ["f0_spk1.wav"] and temporaries(out)
    res = Separator(quick_model, loudness=loudness).separate_file(src, out, resume=resume)
    assert res.status == "ok" and "recovered_interrupted_run" in res.flags, res.error
    outs = finished(out)
    assert [p.name for p in outs] == ["f0_spk1.wav", "f0_spk2.wav"] and temporaries(out) == []
    x, _ = sf.read(src)
    ys = [sf.read(p)[0] for p in outs]
    assert all(len(y) == len(x) for y in ys)
    if loudness == "off":
        np.testing.assert_allclose(ys[0] + ys[1], x, atol=2e-3)


def test_sigkill_after_both_renames_keeps_the_finished_outputs(tmp_path, quick_model):
    """Killed after the last rename, before the lock was removed: the input is finished, so a `batch` rerun
    skips it and keeps its outputs untouched (same bytes), removing only the lock."""
    src, out = killed_run(tmp_path, quick_model, "spk2.wav")
    before = {p.name: p.read_bytes() for p in finished(out)}
    assert sorted(before) == ["f0_spk1.wav", "f0_spk2.wav"]
    res = Separator(quick_model).separate_file(src, out, resume=True)
    assert res.status == "skipped" and {p.name: p.read_bytes() for p in finished(out)} == before
    assert temporaries(out) == []


def test_sigkill_while_writing_leaves_temporaries_that_a_rerun_removes(tmp_path, quick_model):
    src, out = killed_run(tmp_path, quick_model, "writing", "off")
    assert finished(out) == [] and any(p.name.endswith(".part") for p in temporaries(out))
    res = Separator(quick_model, loudness="off").separate_file(src, out)
    assert res.status == "ok" and res.flags == ["recovered_interrupted_run"], (res.error, res.flags)
    assert len(finished(out)) == 2 and temporaries(out) == []


@pytest.mark.parametrize("loudness", ["off", "match"])  # off: straight into the outputs; match: spools first
def test_a_signal_while_temporary_files_are_created_leaves_none(tmp_path, monkeypatch, loudness):
    """SIGINT lands right after a temporary file (an output's or a spool's) is created, before its owner holds
    it: the handler's exception must still find the file in the cleanup lists (it leaked on the old code)."""
    model = bandsplit_folder(tmp_path / "m", sample_rate=SR, segment=0.5)
    src = tmp_path / "in.wav"
    sf.write(src, synthetic_sources(SR, SR, seed=1).sum(0), SR)
    out = tmp_path / "out"
    created = []

    def signalled(make):
        def wrapper(*args, **kwargs):
            made = make(*args, **kwargs)
            name = os.fsdecode(args[0]) if args and isinstance(args[0], (str, bytes, os.PathLike)) else ""
            if name.endswith(".part"):  # a temporary file, not the input being opened
                created.append(name)
                os.kill(os.getpid(), signal.SIGINT)
            return made
        return wrapper

    monkeypatch.setattr(audio_io.os, "open", signalled(os.open))
    monkeypatch.setattr(audio_io.sf, "SoundFile", signalled(sf.SoundFile))

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, interrupt)
    try:
        sep = Separator(str(model), SeparationOptions(loudness=loudness))
        with pytest.raises(KeyboardInterrupt):
            sep.separate_file(src, out)
    finally:
        signal.signal(signal.SIGINT, old)
    assert created  # the signal did come while a temporary file was being made
    assert temporaries(tmp_path) == [] and finished(out) == []
