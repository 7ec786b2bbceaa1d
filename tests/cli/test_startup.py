"""Cold start: `sepcli separate` with the default model must not import what it does not use. Importing
scipy.signal (through pyloudnorm) cost 0.66 s, and building a network on the meta device imported torch._dynamo
and sympy (1.5 s); the wall time itself is a `make bench` row (benchmarks/bench_startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyloudnorm.iirfilter

from sepcli.audio.loudness import k_weighting_biquads

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("scipy", "pyloudnorm", "torch._dynamo", "sympy", "numba", "rich")


def test_separating_with_the_default_model_imports_nothing_heavy(tmp_path):
    code = f"""
import json, sys
from sepcli.pipeline import Separator
sep = Separator("default", threads=1)
res = sep.separate_file({str(ROOT / 'examples' / 'mix.wav')!r}, {str(tmp_path)!r})
assert res.status == "ok", res.error
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == []


def test_k_weighting_coefficients_are_pyloudnorms():
    for rate in (8000, 16000, 44100, 48000):
        ours = k_weighting_biquads(rate)
        theirs = [pyloudnorm.iirfilter.IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, rate, "high_shelf"),
                  pyloudnorm.iirfilter.IIRfilter(0.0, 0.5, 38.0, rate, "high_pass")]
        for (b, a), f in zip(ours, theirs):
            assert np.array_equal(b, f.b) and np.array_equal(a, f.a)


def test_k_weighting_fir_equals_the_recursive_filters():
    from scipy.signal import lfilter

    from sepcli.audio.loudness import _StreamFIR

    rate = 16000
    x = np.random.default_rng(0).standard_normal(3 * rate + 17)
    (b1, a1), (b2, a2) = k_weighting_biquads(rate)
    want = lfilter(b2, a2, lfilter(b1, a1, x))
    fir = _StreamFIR(rate)
    got = np.concatenate([fir(x[i : i + n]) for i, n in ((0, 1), (1, 50), (51, 20000), (20051, len(x)))])
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()


def test_idle_cpus_uses_the_start_up_sample_without_sleeping(monkeypatch):
    """After the CLI's start-up sample (runtime.early) the idle-CPU measurement spans the start-up instead of
    sleeping 0.1 s; this process's own CPU time in it is not counted as another process's."""
    import os
    import time as _time

    from sepcli.runtime import device, early

    monkeypatch.setattr(early, "START", None)
    early.record()
    if early.START is None:  # no /proc/stat here: nothing to measure, the default applies
        return
    t0, cpu0, text = early.START
    monkeypatch.setattr(early, "START", (t0 - 0.5, cpu0, text))  # as if the start-up had taken 0.5 s
    _time.sleep(0.05)  # the kernel's CPU counters tick every 10 ms: let them move

    def no_sleep(_):
        raise AssertionError("idle_cpus slept although a start-up sample was there")

    monkeypatch.setattr(device.time, "sleep", no_sleep)
    free = device.idle_cpus()
    assert free is not None and 0.0 <= free <= len(os.sched_getaffinity(0))
    slept = []
    monkeypatch.setattr(early, "START", (_time.monotonic(), _time.process_time(), text))  # too recent
    monkeypatch.setattr(device.time, "sleep", slept.append)
    device.idle_cpus()
    assert slept == [0.1]  # then it measures over its own 0.1 s, as before
