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


def _cli_modules(args: list[str], modules: tuple[str, ...], cwd) -> tuple[int, dict]:
    """Run the `sepcli` entry point (sepcli.cli.console_main, as the console script does) in a fresh process; its exit
    code and, read at exit (an atexit handler), which of `modules` it imported plus its collector's state."""
    code = f"""
import atexit, gc, json, sys
def report():
    print(json.dumps({{"imported": sorted(m for m in {modules!r} if m in sys.modules),
                       "gc_enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}}))
atexit.register(report)
sys.argv = ["sepcli", *{args!r}]
from sepcli.cli import console_main
console_main()
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.stderr == ""  # -q: nothing, no leak warning of an extension at exit either
    return p.returncode, json.loads(p.stdout.strip().splitlines()[-1])


def test_listing_models_does_not_import_torch(tmp_path):
    """`sepcli models` reads the weights' safetensors headers (parameter counts) without torch: 2.3 s -> 0.3 s."""
    code, seen = _cli_modules(["models", "--json"], ("torch", "sepcli.runtime.loader"), tmp_path)
    assert code == 0 and seen["imported"] == []
    code, seen = _cli_modules(["models", "info", "default"], ("torch", "sepcli.runtime.loader"), tmp_path)
    assert code == 0 and seen["imported"] == []


def test_the_weights_summary_without_torch_counts_what_torch_loads():
    from safetensors.torch import load_file

    from sepcli.runtime.model_folder import weights_summary

    folder = ROOT / "models" / "s4m-tiny-16k"
    state = load_file(folder / "weights.safetensors")
    n, size = weights_summary(folder)
    assert n == sum(v.numel() for v in state.values()) and size == (folder / "weights.safetensors").stat().st_size


def test_separate_freezes_its_start_up_objects_and_keeps_collecting(tmp_path):
    """A `sepcli separate` process: the imports' and the model's objects are frozen (out of every later collection,
    the one at exit included) and the collector is on again for the work. Its option values are converted without
    pydantic (sepcli.cli.coercion)."""
    code, seen = _cli_modules(["separate", str(ROOT / "examples" / "mix.wav"), "-o", str(tmp_path), "-q",
                               "--threads", "1"], ("torch", "pydantic"), tmp_path)
    assert code == 0 and seen["imported"] == ["torch"]
    assert seen["gc_enabled"] and seen["frozen"] > 100_000  # torch alone leaves ~165,000 objects


def test_heavy_imports_pause_the_collector_and_freeze_only_in_the_sepcli_process(monkeypatch):
    import gc

    from sepcli.cli import startup_gc

    monkeypatch.setattr(startup_gc, "_OWN", False)  # (a test that called run() in this process set it)
    assert gc.isenabled()
    with startup_gc.heavy_imports():  # a program importing sepcli.cli (as this test run does): left alone
        assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    monkeypatch.setattr(startup_gc, "_OWN", True)
    try:
        before = []  # exists when the block ends: frozen (the collector's generations no longer hold it)
        assert any(o is before for o in gc.get_objects())
        with startup_gc.heavy_imports():
            assert not gc.isenabled()
        assert gc.isenabled() and gc.get_freeze_count() > 0
        assert not any(o is before for o in gc.get_objects())

        class Cycle:
            pass

        a, b = Cycle(), Cycle()  # made later: collected as usual
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2
        gc.disable()  # a caller's choice is kept
        with startup_gc.heavy_imports():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_no_extension_leak_warning_at_exit_when_triton_was_imported_in_the_block():
    """Triton's nanobind module reports its objects alive at exit on stderr ("nanobind: leaked ..."); imported inside a
    heavy_imports() block (an SPMamba `sepcli bench` did) they were frozen and reported. At exit they go back to the
    collector when Triton was imported."""
    code = ("from sepcli.cli import startup_gc\nstartup_gc.own_process()\nwith startup_gc.heavy_imports():\n"
            "    import triton, triton.language\n    from triton._C.libtriton import ir\n    ctx = ir.context()\n"
            "    ir.load_dialects(ctx)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "leaked" not in p.stderr, p.stderr[:300]
