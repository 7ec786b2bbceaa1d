"""Keep freed memory in the process during separation instead of returning it to the kernel (glibc only).

Why: the networks allocate and free tensors of 0.1-32 MB at every layer. glibc's malloc serves those above its
mmap threshold (128 KB, raised dynamically to the size of the last freed mmapped block) with fresh mmaps, and
gives the top of its heap back to the kernel once more than twice that is free; either way the next tensor of
the same size starts on untouched pages, and the kernel zero-fills each 4 KB page on its first write (one page
fault each). Measured on the default S4M model (5-minute 16 kHz file, `sepcli separate`, 2 threads, Xeon with
AMX): 0.6-2.1 million minor page faults without this and 59 thousand with it; the same settings as the Makefile
exports for tests and benchmarks (MALLOC_MMAP_THRESHOLD_=32 MiB, MALLOC_TRIM_THRESHOLD_ beyond any heap).
Setting the trim threshold alone is worse than nothing: mallopt fixes the mmap threshold at its 128 KB default
then, and every tensor is mmapped (17 million faults, 2.5x slower).

The peak resident memory is unchanged (freed blocks are reused by the next segment's tensors of the same sizes),
and it still does not grow with the input's length (tests/separate/test_memory.py). Environment variables
(MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_) are read only when the process starts, so a library call has
to use mallopt. An environment that sets either variable is left as the user chose.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GiB, beyond any heap these networks build

_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they are set (now or before)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ \
            or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols (libc among them): no ldconfig run
    except (OSError, AttributeError):  # not glibc (musl has no mallopt parameters of this kind)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: setting the trim threshold alone would pin the mmap threshold at 128 KB
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
