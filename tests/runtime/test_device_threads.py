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


class FakeMachine:
    """Two CPUs with a wall clock, this process's CPU clock and /proc/stat counters (100 jiffies per second)."""

    def __init__(self):
        self.t, self.cpu, self.idle, self.total, self.readable = 0.0, 0.0, 0, 0, True
        self.set_calls = []

    def run(self, seconds, own_cpus, other_cpus):
        """`seconds` pass with this process using `own_cpus` CPUs and the others `other_cpus` (of 2)."""
        self.t += seconds
        self.cpu += own_cpus * seconds
        self.total += int(2 * 100 * seconds)
        self.idle += int(round((2 - own_cpus - other_cpus) * 100 * seconds))

    def stat(self):
        if not self.readable:
            raise OSError("no /proc/stat")
        # split over the two CPU lines; only the sums matter
        i0, t0 = self.idle // 2, self.total // 2
        return stat((t0 - i0, i0, 0, 0), (self.total - t0 - (self.idle - i0), self.idle - i0, 0, 0))

    def governor(self, most=2, every=30.0):
        return device.ThreadGovernor(most=most, every=every, read=self.stat, cpus={0, 1}, clock=lambda: self.t,
                                     cpu_clock=lambda: self.cpu, set_threads=self.set_calls.append)


def test_governor_follows_the_cpus_other_processes_leave():
    m = FakeMachine()
    g = m.governor()
    assert m.set_calls == [2] and g.threads == 2
    m.run(10, own_cpus=2, other_cpus=0)
    assert g.poll() is None and m.set_calls == [2]  # not yet `every` seconds
    m.run(25, own_cpus=1.1, other_cpus=0.9)  # another job takes most of a CPU (our spinning threads get the rest)
    assert g.poll() == 1 and m.set_calls == [2, 1]
    # over the 35 s: 10 s alone on 2 CPUs, 25 s beside 0.9 CPUs -> others 22.5 CPU-s / 35 s
    assert g.others == pytest.approx(22.5 / 35, abs=1e-3)
    m.run(30, own_cpus=1, other_cpus=1)
    assert g.poll() is None and g.threads == 1 and g.others == pytest.approx(1.0)
    m.run(30, own_cpus=1, other_cpus=0)  # the other job ended: back to 2
    assert g.poll() == 2 and m.set_calls == [2, 1, 2] and g.others == pytest.approx(0.0)
    m.run(30, own_cpus=2, other_cpus=0)  # our own use never counts against us
    assert g.poll() is None and g.threads == 2


def test_governor_keeps_its_count_where_nothing_can_be_measured():
    m = FakeMachine()
    m.readable = False
    g = m.governor(most=2)
    m.run(60, own_cpus=1, other_cpus=1)
    assert g.poll() is None and m.set_calls == [2]
    m.readable = True
    m.run(60, own_cpus=1, other_cpus=1)
    assert g.poll() is None  # the first readable sample has nothing to compare with
    m.run(60, own_cpus=1, other_cpus=1)
    assert g.poll() == 1


def test_governor_never_goes_below_one_or_above_its_most():
    m = FakeMachine()
    g = m.governor(most=1)
    m.run(30, own_cpus=1, other_cpus=0)
    assert g.poll() is None and g.threads == 1  # 2 CPUs idle enough, but at most 1
    g = m.governor(most=2)
    m.run(30, own_cpus=0.2, other_cpus=1.8)
    assert g.poll() == 1 and g.others == pytest.approx(1.8)


def test_training_without_threads_is_governed_and_with_threads_is_not(tmp_path, monkeypatch, capsys):
    from sepcli.train import trainer
    from tests.train.test_training import cfg as train_cfg

    made = []

    class Fake:
        cpus = {0, 1}

        def __init__(self):
            made.append(self)
            self.threads, self.others, self.polls = 2, None, 0

        def poll(self):
            self.polls += 1
            if self.polls == 2:
                self.threads, self.others = 1, 1.2
                return 1
            return None

    monkeypatch.setattr(trainer, "ThreadGovernor", Fake)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    data = tmp_path / "lm"
    _librimix(data)
    trainer.train(train_cfg(tmp_path / "a", data=data, steps=3, threads=None, quiet=False))
    assert len(made) == 1 and made[0].polls == 3
    assert "threads: 1 (other processes kept 1.2 of 2 CPUs busy)" in capsys.readouterr().err
    trainer.train(train_cfg(tmp_path / "b", data=data, steps=3, threads=1))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    trainer.train(train_cfg(tmp_path / "c", data=data, steps=3, threads=None))
    assert len(made) == 1  # an explicit count (option or OMP_NUM_THREADS) is kept


def _librimix(d):
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(1)
    for sub in ("mix", "s1", "s2"):
        (d / sub).mkdir(parents=True)
    for i in range(2):
        a, b = rng.standard_normal(4000) * 0.1, rng.standard_normal(4000) * 0.1
        for sub, x in (("s1", a), ("s2", b), ("mix", a + b)):
            sf.write(d / sub / f"{i}.wav", x, 8000, subtype="FLOAT")


def cgroup(tmp_path, v2=None, quota=None, period=None):
    """A fake cgroup tree: v2's cpu.max holding `v2`, or v1's cpu/cpu.cfs_quota_us and cpu.cfs_period_us."""
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    v1 = tmp_path / "cpu"
    if quota is not None:
        v1.mkdir()
        (v1 / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (v1 / "cpu.cfs_period_us").write_text(f"{period}\n")
    return dict(v2=tmp_path / "cpu.max", v1=v1)


@pytest.mark.parametrize("text,want", [("200000 100000", 2),  # docker --cpus 2
                                       ("250000 100000", 3),  # --cpus 2.5: the partial CPU still needs a thread
                                       ("50000 100000", 1),
                                       ("max 100000", None),  # no quota
                                       ("garbage", None)])
def test_cgroup_v2_quota_is_read_as_cpus_rounded_up(tmp_path, text, want):
    assert device.cgroup_cpu_limit(**cgroup(tmp_path, v2=text)) == want


@pytest.mark.parametrize("quota,period,want", [(300000, 100000, 3), (-1, 100000, None), (150000, 100000, 2)])
def test_cgroup_v1_quota_is_read_when_there_is_no_v2(tmp_path, quota, period, want):
    assert device.cgroup_cpu_limit(**cgroup(tmp_path, quota=quota, period=period)) == want


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert device.cgroup_cpu_limit(**cgroup(tmp_path)) is None


@pytest.mark.parametrize("torch_default,limit,fixed,want", [(32, 2, False, 2),    # a quota caps the host's cores
                                                            (2, 8, False, 2),     # a loose quota changes nothing
                                                            (32, None, False, 32),
                                                            (32, 2, True, 32)])   # OMP_NUM_THREADS is the user's
def test_default_threads_are_capped_by_the_quota_unless_omp_fixed_them(torch_default, limit, fixed, want):
    assert device.default_threads(torch_default, limit, fixed) == want
