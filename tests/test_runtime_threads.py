"""The CLI's default thread count: PyTorch's default lowered to the idle CPUs, measured from /proc/stat."""

import os

import pytest

from sepcli.runtime import device
from sepcli.runtime.device import idle_cpus, threads_for_idle_cpus


def stat(*cpus):
    """/proc/stat text: an aggregate line, then one line per CPU given as (user, idle, iowait, guest)."""
    lines = ["cpu  1 2 3 4 5 6 7 8 9 10"]
    for i, (user, idle, iowait, guest) in enumerate(cpus):
        # user nice system idle iowait irq softirq steal guest guest_nice
        lines.append(f"cpu{i} {user} 0 10 {idle} {iowait} 0 0 0 {guest} 0")
    return "\n".join(lines + ["intr 1 2 3", "ctxt 99"]) + "\n"


def readings(*texts):
    it = iter(texts)
    return lambda: next(it)


def test_idle_cpus_is_the_idle_share_of_the_elapsed_jiffies_times_the_cpus():
    # cpu0: 100 jiffies elapse, 25 idle + 5 iowait; cpu1: 100 elapse, 90 idle. Guest time is inside user time.
    before = stat((1000, 500, 0, 300), (2000, 700, 0, 0))
    after = stat((1070, 525, 5, 350), (2010, 790, 0, 0))
    got = idle_cpus(0, readings(before, after), cpus={0, 1})
    assert got == pytest.approx(2 * (30 + 90) / 200)


def test_idle_cpus_counts_only_this_process_cpus():
    before = stat((1000, 500, 0, 0), (2000, 700, 0, 0))
    after = stat((1100, 500, 0, 0), (2000, 800, 0, 0))  # cpu0 fully busy, cpu1 fully idle
    assert idle_cpus(0, readings(before, after), cpus={1}) == pytest.approx(1.0)
    assert idle_cpus(0, readings(before, after), cpus={0}) == pytest.approx(0.0)


@pytest.mark.parametrize("after", [stat((1000, 500, 0, 0)),  # no time elapsed
                                   "cpu  1 2 3 4\n"])        # no per-CPU lines
def test_idle_cpus_is_none_when_it_cannot_be_measured(after):
    assert idle_cpus(0, readings(stat((1000, 500, 0, 0)), after), cpus={0}) is None


def test_idle_cpus_on_this_machine_is_within_its_cpus():
    got = idle_cpus(0.05)
    if os.path.exists("/proc/stat"):
        assert got is not None and 0.0 <= got <= len(os.sched_getaffinity(0)) + 1e-9
    else:
        assert got is None


@pytest.mark.parametrize("idle,want", [(0.0, 1), (0.4, 1), (1.4, 1), (1.6, 2), (2.7, 3), (7.0, 4), (None, 4)])
def test_threads_follow_the_idle_cpus_up_to_the_default(monkeypatch, idle, want):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "DEFAULT_THREADS", 4)
    assert threads_for_idle_cpus(lambda: idle) == want


def test_an_explicit_omp_num_threads_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setattr(device, "DEFAULT_THREADS", 4)
    assert threads_for_idle_cpus(lambda: 0.0) == 4
