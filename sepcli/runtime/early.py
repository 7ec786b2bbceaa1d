"""A /proc/stat sample taken when the CLI starts, before it imports torch (this module imports nothing heavy).

runtime.device.idle_cpus() measures the CPUs other processes leave idle over an interval of 0.1 s. With this
sample it measures over the start-up instead (importing torch and loading the model take over a second),
discounting this process's own CPU time in that interval, and does not sleep: 0.1 s off every cold start.
"""

from __future__ import annotations

import time

START: tuple[float, float, str] | None = None  # (monotonic time, this process's CPU time, /proc/stat text)


def record() -> None:
    """Take the start-up sample (once; nothing where /proc/stat cannot be read)."""
    global START
    if START is not None:
        return
    try:
        with open("/proc/stat", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return
    START = (time.monotonic(), time.process_time(), text)
