"""Running numba's parallel kernels from PyTorch code: one lock and one record of the process that started
numba's threads, shared by every module with parallel kernels (the CPU scan, Mamba's causal convolution, S4M's
fused block).

Why shared: numba's `workqueue` threading layer is not re-entrant, so two parallel kernels called from two Python
threads (two Separators in one program, `batch` with two models) must not overlap, whichever module they are in;
and GNU OpenMP is not fork-safe, so a process forked after *any* parallel kernel started OpenMP's threads must
run every kernel serially, not only those of the module that happened to start them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numba
import torch

_LOCK = threading.Lock()
_PAR_PID: int | None = None  # pid of the process that first ran a parallel kernel
_LAYER: str | None = None  # numba's threading layer, known after that first run


def fork_safe() -> bool:
    """False in a process forked from one whose parallel kernels started GNU OpenMP's threads."""
    return not (_PAR_PID is not None and os.getpid() != _PAR_PID and _LAYER in ("omp", None))


def plan() -> tuple[bool, int]:
    """(may a parallel kernel run here?, number of threads) for a call from this thread and process."""
    if not fork_safe():
        return False, 1  # stay serial
    nthreads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    return nthreads > 1, nthreads


@contextmanager
def parallel_threads(single: bool = False) -> Iterator[int]:
    """The number of numba threads to run one parallel kernel on inside the block (numba's thread count is set
    to it), or 0 where only a serial kernel may run. `single`: a parallel kernel may also run on one thread
    (for kernels without a serial twin). Parallel blocks of all modules are serialised where the threading layer
    needs it."""
    global _PAR_PID, _LAYER
    parallel, nthreads = plan()
    if not (parallel or (single and fork_safe())):
        yield 0
        return
    need_lock = _LAYER in (None, "workqueue")
    if need_lock:
        _LOCK.acquire()
    try:
        numba.set_num_threads(nthreads)
        yield nthreads
        if _LAYER is None:
            _PAR_PID = os.getpid()
            _LAYER = numba.threading_layer()
    finally:
        if need_lock:
            _LOCK.release()
