"""Write failures (disk full) and concurrent processes.

- Disk full, simulated (the writer raises OSError(ENOSPC) mid-stream, in the direct path and in the loudness
  spool path) and, where the tests may mount a small tmpfs, real: one clear line, no partial file, the input
  unchanged (hash before/after), the rest of a batch still processed.
- All speakers or none: a failure while renaming the second output removes the first.
- Claims: a live process's lock makes an input busy (skipped in batch, an error in separate), a dead
  process's lock is taken over; a name created by someone else meanwhile is never replaced.
- Two `sepcli batch` processes on the same folder and output at once: every input done exactly once, every
  output decodes with the right length, no temporary file remains.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import sepcli.audio.io as io_mod
from sepcli.pipeline import Busy, OutputClaim, Separator
from tests.faultnets import run_cli, slow_folder
from tests.testnets import synthetic_sources

SR = 8000
ROOT = Path(__file__).resolve().parents[2]


run = run_cli


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".sepcli") or p.name.endswith(".part")]


def _inputs(root: Path, n: int, seconds: float = 1.0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        p = root / f"f{k}.wav"
        sf.write(p, synthetic_sources(int(seconds * SR), SR, seed=k).sum(0), SR)
        out.append(p)
    return out


# ---------------------------------------------------------------------- disk full
@pytest.mark.parametrize("loudness", ["off", "match"])
def test_disk_full_mid_stream_simulated(tmp_path, model, monkeypatch, loudness):
    files = _inputs(tmp_path / "in", 3, seconds=2.0)
    hashes = {p: sha(p) for p in files}
    calls = {"n": 0}
    real_write = sf.SoundFile.write
    real_spool = io_mod.FloatSpool.write

    def full(self, *a, **k):  # the 3rd block written (inputs go in sorted order: f0's) finds the disk full
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return (real_write if isinstance(self, sf.SoundFile) else real_spool)(self, *a, **k)

    if loudness == "off":
        monkeypatch.setattr(sf.SoundFile, "write", full)
    else:
        monkeypatch.setattr(io_mod.FloatSpool, "write", full)
    out = tmp_path / "out"
    r = run("batch", tmp_path / "in", "-o", out, "-m", model, "--loudness", loudness, "--segment", "0.25")
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith(f"sepcli: error: {files[0]}: ") and "no space left on device" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["f1_spk1.wav", "f1_spk2.wav", "f2_spk1.wav", "f2_spk2.wav"]
    assert leftovers(tmp_path) == []
    assert {p: sha(p) for p in files} == hashes
    for p in out.iterdir():
        assert sf.info(p).frames == 2 * SR


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    folder.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                       check=False)
    return p.returncode == 0


@pytest.mark.parametrize("loudness", ["off", "match"])
def test_disk_full_real_tmpfs(tmp_path, model, loudness):
    src = _inputs(tmp_path / "in", 1, seconds=20.0)[0]  # outputs 2 x 320 kB (PCM_16), spools 2 x 640 kB
    before = sha(src)
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "400k"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission); "
                    "test_disk_full_mid_stream_simulated covers the path")
    try:
        r = run("separate", src, "-o", small, "-m", model, "--loudness", loudness)
        assert r.exit_code == 1 and "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"sepcli: error: {src}: "), lines
        assert "no space left on device" in lines[0].lower(), lines
        assert list(small.iterdir()) == []  # no partial output, no temporary file
        assert sha(src) == before
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_failure_between_renames_leaves_no_output(tmp_path, model, monkeypatch):
    """The second output's rename fails after the first succeeded: the first is removed (all or none)."""
    src = _inputs(tmp_path / "in", 1)[0]
    real_link = os.link

    def link(a, b, *x, **k):
        if str(b).endswith("_spk2.wav"):
            raise OSError(errno.EIO, "Input/output error")
        return real_link(a, b, *x, **k)

    monkeypatch.setattr(os, "link", link)
    res = Separator(model).separate_file(src, tmp_path / "out")
    assert res.status == "error" and "input/output error" in res.error and res.error.startswith(str(src))
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------- claims
def test_claims_busy_and_stale(tmp_path, model):
    src = _inputs(tmp_path / "in", 1)[0]
    out = tmp_path / "out"
    sep = Separator(model)
    outs = sep.planned_outputs("f0", out)
    claim = OutputClaim(outs)  # this (live) process holds it
    with pytest.raises(Busy):
        OutputClaim(outs)
    res = sep.separate_file(src, out)
    assert res.status == "error" and "another sepcli process" in res.error and f"pid {os.getpid()}" in res.error
    res = sep.separate_file(src, out, resume=True)
    assert res.status == "skipped" and res.flags == ["busy"]
    r = run("batch", tmp_path / "in", "-o", out, "-m", model, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["results"][0]["flags"] == ["busy"]
    assert sorted(p.name for p in out.iterdir()) == [claim.path.name]
    claim.release()
    # a lock left by a process that died (SIGKILL) is stale: taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim.path.write_text(f"{dead.pid} {__import__('socket').gethostname()}\n")
    res = sep.separate_file(src, out)
    assert res.status == "ok", res.error
    assert sorted(p.name for p in out.iterdir()) == ["f0_spk1.wav", "f0_spk2.wav"]


def test_a_stale_locks_journal_only_ever_removes_this_inputs_outputs_and_temporaries(tmp_path, model):
    """The journal in a dead holder's lock is read from disk (anyone could have written it): only this input's
    planned outputs and sepcli temporary files in the output folder may be removed, never other files."""
    src = _inputs(tmp_path / "in", 1)[0]
    out = tmp_path / "out"
    out.mkdir()
    sep = Separator(model)
    outs = sep.planned_outputs("f0", out)
    victims = [tmp_path / "elsewhere.part", out / "notes.txt", out / "other_spk1.wav", tmp_path / "f0_spk1.wav",
               out / ".sepcli-1234.part.keep"]
    for v in victims:
        v.write_bytes(b"keep me")
    ours = out / ".sepcli-0123456789ab.part"
    ours.write_bytes(b"left by the dead process")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    journal = {"temps": [str(v) for v in victims] + [str(ours)], "committing": [str(v) for v in victims]}
    OutputClaim.lock_path(outs).write_text(f"{dead.pid} {__import__('socket').gethostname()}\n"
                                           f"{json.dumps(journal)}\n")
    res = sep.separate_file(src, out)
    assert res.status == "ok" and res.flags == ["recovered_interrupted_run"], (res.error, res.flags)
    assert all(v.read_bytes() == b"keep me" for v in victims) and not ours.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(["f0_spk1.wav", "f0_spk2.wav", "notes.txt",
                                                            "other_spk1.wav", ".sepcli-1234.part.keep"])


def test_commit_never_replaces_a_file_created_meanwhile(tmp_path):
    dest = tmp_path / "o.wav"
    w = io_mod.AtomicWriter(dest, SR, "wav")
    w.write(np.zeros(100, np.float32))
    dest.write_bytes(b"someone else's file")
    with pytest.raises(io_mod.AudioError, match="exists"):
        w.commit(overwrite=False)
    w.abort()
    assert dest.read_bytes() == b"someone else's file" and sorted(tmp_path.iterdir()) == [dest]


# ---------------------------------------------------------------------- two processes at once
@pytest.mark.slow
def test_two_batch_processes_same_folder(tmp_path):
    model = slow_folder(tmp_path / "slow", sample_rate=SR, segment=0.25, delay=0.03)
    files = _inputs(tmp_path / "in", 8)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HOME=tempfile.gettempdir())
    procs = [subprocess.Popen([sys.executable, "-m", "tests.faultnets", "batch", str(tmp_path / "in"), "-o",
                               str(out), "-m", str(model), "--json", "--jobs", str(j + 1)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for j in range(2)]
    docs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, stderr
        docs.append(json.loads(stdout))
    done = {}
    for d in docs:
        for r in d["results"]:
            assert r["status"] in ("ok", "skipped"), r
            if r["status"] == "ok":
                done[r["input"]] = done.get(r["input"], 0) + 1
    assert done == {str(f): 1 for f in files}  # each input separated by exactly one of the two processes
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"f{k}_spk{s}.wav" for k in range(8) for s in (1, 2))  # no duplicates, no temps
    for p in out.iterdir():
        y, sr = sf.read(p)
        assert sr == SR and len(y) == SR and np.isfinite(y).all()


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_stdin_copy_interrupted_leaves_nothing(tmp_path, exc):
    class Stream:
        def __init__(self):
            self.n = 0

        def read(self, size=-1):
            self.n += 1
            if self.n == 3:
                raise exc
            return b"\0" * 1000

    with pytest.raises((KeyboardInterrupt, io_mod.AudioError)) as info:
        io_mod.spool_stdin(tmp_path, stream=Stream())
    if isinstance(exc, OSError):
        assert str(info.value) == "-: cannot store stdin (no space left on device)"
    assert list(tmp_path.iterdir()) == []
