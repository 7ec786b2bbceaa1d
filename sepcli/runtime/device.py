"""Where and how a model runs: device choice, inference dtype, CPU threads.

- `select_device("auto"|"cpu"|"cuda"|"cuda:N")`: auto picks CUDA when available, else CPU; asking for CUDA
  without it is a ValueError.
- `inference_dtype(device)`: None (plain fp32) on CPU; bfloat16 on CUDA when supported, else float16. Used
  through `autocast(device, dtype)` so weights stay fp32 and numerically sensitive ops keep fp32.
- `resolve_precision(precision, device, pays)`: the autocast dtype of `--precision auto|fp32|bf16` (a
  `Precision`: dtype, name, reason). `auto` is the CUDA dtype on a GPU; on a CPU bf16 only where the CPU has native
  bf16 (`cpu_features()`: AMX or AVX512-BF16) and the network is faster under bf16 autocast (its
  `bf16_on_cpu_pays` is True: a class attribute, or a property that looks at the CPU), else fp32. `bf16` on a
  CPU without native bf16 runs emulated (correct, slower), with a note in the reports.
- `configure(threads)`: torch.set_flush_denormal(True) (denormals slow small models 20-30x on x86 CPUs) and the
  intra-op thread count.
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
from dataclasses import dataclass
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


PRECISIONS = ("auto", "fp32", "bf16")
CPUINFO = Path("/proc/cpuinfo")

# `auto` picks bf16 on a CPU only for a network whose class says bf16 autocast is faster there than fp32
# (`bf16_on_cpu_pays = True`, or a property that looks at the CPU; set by the network's author from measurements),
# default False. SPMamba's is True where the CPU has AMX. S4M is not faster: its time goes to depthwise
# convolutions, norms and elementwise ops, which bf16 does not speed up and autocast's casts slow down
# (`python -m benchmarks.bench_nets --precision-only` measures both precisions).
PAYS_ATTRIBUTE = "bf16_on_cpu_pays"


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None  # the autocast dtype; None = plain fp32
    name: str  # "fp32", "bf16" or "fp16"
    reason: str  # why (shown in reports)


def _cpu_flags(cpuinfo: str | None) -> set[str]:
    """The first processor's flags from /proc/cpuinfo text (empty when unknown)."""
    for line in (cpuinfo or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _cpu_model(cpuinfo: str | None) -> str:
    for line in (cpuinfo or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def _torch_check(name: str) -> bool | None:
    """torch.cpu's own CPUID check `name` (private API, present in torch 2.x); None where it does not exist."""
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else None
    except Exception:  # noqa: BLE001
        return None


def cpu_features(cpuinfo: str | None = None) -> dict:
    """The CPU's model name and its native bf16 support: AMX (`amx_bf16`) and AVX512-BF16 (`avx512_bf16`), from
    /proc/cpuinfo's flags, or where that cannot be read from torch.cpu's CPUID checks. `native_bf16` when either
    is present. `torch_capability` is the SIMD level PyTorch's CPU kernels were dispatched to."""
    if cpuinfo is None:
        cpuinfo = _read_or_none(CPUINFO)
    flags = _cpu_flags(cpuinfo)
    if flags:
        amx, avx = "amx_bf16" in flags, "avx512_bf16" in flags
    else:
        amx = bool(_torch_check("_is_amx_tile_supported"))
        avx = bool(_torch_check("_is_avx512_bf16_supported"))
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        capability = "unknown"
    return {"model": _cpu_model(cpuinfo), "amx_bf16": amx, "avx512_bf16": avx, "native_bf16": amx or avx,
            "torch_capability": capability}


def bf16_pays(network: object) -> bool:
    """Whether `network` (an instance) says bf16 autocast is faster than fp32 on this CPU with native bf16
    (PAYS_ATTRIBUTE). Only a real bool counts: on a class, a property is a truthy property object."""
    return getattr(network, PAYS_ATTRIBUTE, False) is True


def resolve_precision(precision: str, device: torch.device, pays: bool = False, label: str = "this network",
                      native_bf16: bool | None = None) -> Precision:
    """The autocast precision for `--precision` on `device` for a network (`pays`: bf16_pays(network), `label`:
    its name in the reason). ValueError for an unknown value, or bf16 on a GPU without bf16."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return Precision(None, "fp32", "requested")
    if device.type == "cuda":
        if precision == "bf16":
            if not torch.cuda.is_bf16_supported():
                raise ValueError("--precision bf16: this GPU does not support bfloat16 (use auto or fp32)")
            return Precision(torch.bfloat16, "bf16", "requested")
        dtype = inference_dtype(device)
        return Precision(dtype, "bf16" if dtype == torch.bfloat16 else "fp16", "auto: GPU autocast")
    if device.type != "cpu":
        return Precision(None, "fp32", f"auto: no autocast on {device.type}")
    native = cpu_features()["native_bf16"] if native_bf16 is None else native_bf16
    if precision == "bf16":
        if native:
            return Precision(torch.bfloat16, "bf16", "requested")
        return Precision(torch.bfloat16, "bf16", "requested; this CPU has no native bf16 (AMX or AVX512-BF16), "
                                                 "so it is emulated and slower than fp32")
    if not native:
        return Precision(None, "fp32", "auto: this CPU has no native bf16 (AMX or AVX512-BF16)")
    if not pays:
        return Precision(None, "fp32", f"auto: {label} is not faster in bf16 on a CPU")
    return Precision(torch.bfloat16, "bf16", "auto: native bf16 on this CPU")


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


def _idle_since_start(cpus: set[int], interval: float) -> float | None:
    """The CPUs other processes left idle since runtime.early's start-up sample (this process's own CPU time in
    that interval is not theirs); None without a sample, or when less than `interval` has passed."""
    from . import early

    if early.START is None or not cpus:
        return None
    t0, cpu0, text0 = early.START
    wall = time.monotonic() - t0
    if wall < interval:
        return None
    before = _sample(lambda: text0, cpus)
    share = _idle_share(before, _sample(PROC_STAT.read_text, cpus))
    if share is None:
        return None
    others = max(0.0, len(cpus) * (1.0 - share) - (time.process_time() - cpu0) / wall)
    return max(0.0, len(cpus) - others)


def idle_cpus(interval: float = 0.1, read: Callable[[], str] | None = None,
              cpus: set[int] | None = None) -> float | None:
    """How many of this process's CPUs were idle over `interval` seconds (Linux /proc/stat); None when that
    cannot be measured (another system, no change in the counters). Without an explicit `read`, the interval
    since the CLI's start-up sample (runtime.early) is used instead when it is at least `interval` long, less
    this process's own CPU time, without waiting."""
    cpus = cpus if cpus is not None else _affinity()
    if read is None:
        since_start = _idle_since_start(cpus, interval)
        if since_start is not None:
            return since_start
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
