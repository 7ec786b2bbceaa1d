"""Where and how a model runs: device choice, inference dtype, CPU threads.

- `select_device("auto"|"cpu"|"cuda"|"cuda:N")`: auto picks CUDA when available, else CPU; asking for CUDA
  without it is a ValueError.
- `inference_dtype(device)`: None (plain fp32) on CPU; bfloat16 on CUDA when supported, else float16. Used
  through `autocast(device, dtype)` so weights stay fp32 and numerically sensitive ops keep fp32.
- `configure(threads)`: torch.set_flush_denormal(True) (denormals slow small models 20-30x on x86 CPUs, see
  /work/shared/ANCHORS.md) and the intra-op thread count.
- `DEFAULT_THREADS`: PyTorch's default thread count capped at a container's cgroup CPU quota (`cgroup_cpu_limit`).
- `threads_for_idle_cpus()`: the thread count the CLI uses when --threads is not given: DEFAULT_THREADS, less
  the CPUs that other processes keep busy. PyTorch's OpenMP threads spin at their barriers, so a process with as
  many threads as cores next to a busy one runs several times slower than with fewer threads (10 s of audio on
  this 2-core machine beside a 2-thread training run: 16.6 s with 2 threads, 4.1 s with 1).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_cpu_limit(v2: Path = CGROUP_V2_CPU_MAX, v1: Path = CGROUP_V1_CPU) -> int | None:
    """The CPUs a container's cgroup CPU quota grants, rounded up (`docker run --cpus 2.5` gives 3); None with
    no quota or no cgroup. OpenMP, and so PyTorch, sizes its thread pool by the host's cores and ignores the
    quota: 32 spinning threads throttled to 2 CPUs run many times slower than 2 threads. Reads cgroup v2's
    cpu.max ("QUOTA PERIOD" or "max PERIOD") or v1's cpu.cfs_quota_us / cpu.cfs_period_us (-1 is no quota), at
    the cgroup root a container sees."""
    quota = period = None
    text = _read_or_none(v2)
    if text is not None:
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            quota, period = parts
    else:
        q, p = _read_or_none(v1 / "cpu.cfs_quota_us"), _read_or_none(v1 / "cpu.cfs_period_us")
        if q is not None and p is not None:
            quota, period = q.strip(), p.strip()
    try:
        quota_us, period_us = int(quota), int(period)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return max(1, -(-quota_us // period_us))


def default_threads(torch_default: int, limit: int | None, omp_fixed: bool) -> int:
    """PyTorch's own thread count (its cores, or OMP_NUM_THREADS), capped at a cgroup CPU quota unless the user
    fixed it with OMP_NUM_THREADS."""
    return torch_default if omp_fixed or limit is None else max(1, min(torch_default, limit))


def omp_threads_fixed() -> bool:
    """Whether the user fixed the thread count through OMP_NUM_THREADS (torchrun does too): then it is kept."""
    return "OMP_NUM_THREADS" in os.environ


# read before anything here changes PyTorch's count
DEFAULT_THREADS = default_threads(torch.get_num_threads(), cgroup_cpu_limit(), omp_threads_fixed())


def select_device(pref: str = "auto") -> torch.device:
    pref = (pref or "auto").lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref == "cpu":
        return torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {pref}: CUDA is not available on this machine")
        return torch.device(pref)
    raise ValueError(f"unknown device {pref!r} (choose auto, cpu or cuda)")


def inference_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure(threads: int | None = None) -> None:
    torch.set_flush_denormal(True)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


PROC_STAT = Path("/proc/stat")


def _affinity() -> set[int]:
    """The CPUs this process may run on; empty where that is unknown (not Linux): nothing to measure."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return set()


def _cpu_times(stat_text: str, cpus: set[int]) -> tuple[int, int] | None:
    """(idle, total) jiffies of the given CPUs from /proc/stat text; idle counts iowait, total leaves out guest
    time (already in user and nice). None if a CPU is missing."""
    idle = total = 0
    found = set()
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        f = [int(v) for v in rest.split()[:8]]
        idle += f[3] + f[4]
        total += sum(f)
        found.add(int(name[3:]))
    return (idle, total) if found == cpus else None


def _sample(read: Callable[[], str], cpus: set[int]) -> tuple[int, int] | None:
    """_cpu_times of one reading; None when there is nothing to read."""
    if not cpus:
        return None
    try:
        return _cpu_times(read(), cpus)
    except (OSError, ValueError):
        return None


def _idle_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The idle share of the jiffies between two samples; None when it cannot be told."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def _threads_for(free_cpus: float, most: int) -> int:
    return max(1, min(most, round(free_cpus)))


def idle_cpus(interval: float = 0.1, read: Callable[[], str] | None = None,
              cpus: set[int] | None = None) -> float | None:
    """How many of this process's CPUs were idle over `interval` seconds (Linux /proc/stat); None when that
    cannot be measured (another system, no change in the counters)."""
    cpus = cpus if cpus is not None else _affinity()
    read = read or PROC_STAT.read_text
    before = _sample(read, cpus)
    time.sleep(interval)
    share = _idle_share(before, _sample(read, cpus))
    return None if share is None else len(cpus) * share


def threads_for_idle_cpus(measure: Callable[[], float | None] | None = None) -> int:
    """PyTorch's default thread count, lowered to the CPUs idle right now (`measure`, default idle_cpus; at least
    1). An explicit OMP_NUM_THREADS is the user's choice and is kept, as is the default where idleness cannot be
    measured."""
    if omp_threads_fixed():
        return DEFAULT_THREADS
    free = (measure or idle_cpus)()
    return DEFAULT_THREADS if free is None else _threads_for(free, DEFAULT_THREADS)


class ThreadGovernor:
    """Keeps a long CPU job's thread count at the CPUs that other processes leave to it (`sepcli train` without
    --threads). PyTorch's threads spin at every barrier, so a 2-thread training step beside one busy process took
    3.8 s on this 2-core machine against about 1.5 s with 1 thread; the other process slowed down as badly.

    `poll()`, called between steps, measures every `every` seconds of wall time how many CPUs the other processes
    kept busy since the last measurement: the busy share of this process's CPUs (/proc/stat) times their number,
    less this process's own CPU time per second of wall time. It then sets round(CPUs - others) threads, at least 1
    and at most `most` (PyTorch's default). Where /proc/stat cannot be read it does nothing.
    """

    def __init__(self, most: int | None = None, every: float = 30.0, read: Callable[[], str] | None = None,
                 cpus: set[int] | None = None, clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time,
                 set_threads: Callable[[int], None] = torch.set_num_threads):
        self.most = most or DEFAULT_THREADS
        self.every = every
        self.threads = self.most
        self.others: float | None = None  # CPUs the other processes kept busy in the last interval
        self._read = read or PROC_STAT.read_text
        self.cpus = cpus if cpus is not None else _affinity()
        self._clock, self._cpu_clock, self._set = clock, cpu_clock, set_threads
        self._set(self.threads)
        self._last = self._now()

    def _now(self) -> tuple[float, float, tuple[int, int] | None]:
        return self._clock(), self._cpu_clock(), _sample(self._read, self.cpus)

    def poll(self) -> int | None:
        """Measure if `every` seconds have passed; the new thread count if it changed, else None."""
        if self._clock() - self._last[0] < self.every:
            return None
        (t0, c0, s0), (t1, c1, s1) = self._last, self._now()
        self._last = (t1, c1, s1)
        share = _idle_share(s0, s1)
        if share is None or t1 <= t0:
            return None
        n = len(self.cpus)
        self.others = max(0.0, n * (1.0 - share) - (c1 - c0) / (t1 - t0))
        want = _threads_for(n - self.others, self.most)
        if want == self.threads:
            return None
        self._set(want)
        self.threads = want
        return want
