"""The end of the `sepcli` process, without the C++ library teardown that only frees memory.

Why: once torch is imported, ending the process took about 0.1 s after Python's own finalisation (with the start-up
objects frozen, startup_gc.py): a perf profile of that interval is libtorch's static destructors unregistering
thousands of operator kernels from its dispatcher, and the C allocator freeing (AVX2 EPYC, 2 vCPUs; calling the
C library's exit() from Python, which skips Python's finalisation but runs those destructors, took as long). Every
`sepcli separate` from a shell script paid it, for nothing the process leaves behind.

What `leave(code)` does, in the `sepcli` process only (console_main, not run(): a program or test calling run()
gets SystemExit as before), when torch was imported and it is safe:
  1. only when this is the only Python thread (no worker left for Python's exit to wait for);
  2. what Python's finalisation would do that outlives the process: the atexit handlers (weakref.finalize's
     cleanups, logging's flush and close, ...) run, then sys.stdout and sys.stderr (and the
     original ones, if replaced) are flushed;
  3. then only when no regular file other than stdout/stderr is open for writing (/proc/self/fd and its fdinfo:
     a file object with unwritten data, a SoundFile or a temporary file not closed yet all hold such a
     descriptor): the C library's stdio buffers are flushed (fflush(NULL)) and os._exit(code) ends the process
     with the same exit status; skipped are the module teardown and the collection of objects still
     alive (Python does not promise their __del__ at exit), the C atexit handlers and the C++ static destructors.
Where a condition does not hold or a step fails (an EPIPE when flushing stdout to a closed pipe, ...), the process
ends through sys.exit(code) as before: Python's own handling of that case, which then has no atexit handler left
to run twice (Python clears them once run). Also the ordinary exit: under a tracer or profiler (sys.gettrace() or
sys.getprofile() set: `python -m cProfile -m sepcli ...` writes its report after the command returns), and with
the environment variable SEPCLI_FAST_EXIT=0 (e.g. for tools that report from C atexit handlers or C++
destructors: gcov, sanitizers, valgrind).

Limits: only regular files count as "open for writing" (a pipe or socket other than stdout/stderr, e.g. one a
harness leaves open, does not stop the fast exit: sepcli writes no data to such descriptors itself), and the
thread-shutdown hooks (threading._register_atexit) are not run, which is moot with no other thread alive.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import stat
import sys
import threading
from typing import NoReturn

_STD_FDS = (1, 2)


def _writable_regular_files() -> list[str] | None:
    """The descriptors (other than stdout/stderr) of regular files open for writing; None where that cannot be
    known for certain (no /proc, or a descriptor whose mode or flags cannot be read): then nothing may be assumed."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    found = []
    for name in fds:
        fd = int(name)
        if fd in _STD_FDS:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError as e:
            if e.errno == errno.EBADF:  # closed meanwhile (listdir's own descriptor): not open
                continue
            return None
        if flags & os.O_ACCMODE != os.O_RDONLY:
            found.append(name)
    return found


def _only_thread() -> bool:
    """No other Python thread: nothing for Python's exit to wait for."""
    return threading.active_count() == 1 and threading.current_thread() is threading.main_thread()


def _flush_c_stdio() -> None:
    import ctypes

    ctypes.CDLL(None).fflush(None)


def leave(code: int) -> NoReturn:
    """End the process with exit status `code` (see the module)."""
    if (isinstance(code, int) and 0 <= code <= 255 and "torch" in sys.modules and _only_thread()
            and sys.gettrace() is None and sys.getprofile() is None
            and os.environ.get("SEPCLI_FAST_EXIT", "1") != "0"):
        try:
            atexit._run_exitfuncs()  # (the callbacks of Python's own finalisation, in its order; then cleared)
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                if stream is not None:
                    stream.flush()
            if _writable_regular_files() == []:  # (after the handlers, which may close some: logging's)
                _flush_c_stdio()
                os._exit(code)
        except Exception:  # noqa: BLE001 - the ordinary exit below says what went wrong, as before
            pass
    sys.exit(code)
