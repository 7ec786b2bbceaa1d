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

from tests.faultnets import slow_folder
from tests.testnets import synthetic_sources

pytestmark = pytest.mark.slow
SR = 8000
ROOT = Path(__file__).resolve().parent.parent


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
                              f"unfinished ones removed (rerun to complete)")
    assert temporaries(tmp_path) == [] and finished(out) == []  # nothing half written under any name
    assert src.read_bytes() == before


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
