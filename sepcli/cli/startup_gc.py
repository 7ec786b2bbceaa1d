"""Python's cyclic garbage collector in a `sepcli` process: paused while the heavy modules are imported, and told
to leave alone what exists at exit.

Why: importing torch creates about 165,000 objects, none of them garbage, that live until the process ends. The
collector does not know that: on an AVX2 EPYC its passes during `import torch` took 0.12 s (2 full collections
among 360), and the interpreter's finalisation, which collects again while it tears the modules down, took 0.3 s
more after a plain `import torch` (0.41 s from the end of the script to the end of the process, 0.13 s with
everything frozen first). Every `sepcli separate` from a shell script paid both.

- `heavy_imports()`: a block that imports (and builds the model): the collector is paused inside it, and what
  exists after it is frozen (gc.freeze: moved to the permanent generation, which no later collection traverses;
  Python's documented way to keep long-lived start-up objects out of the collector's work). Objects made later
  are collected as usual, so a long batch run keeps freeing its cycles.
- `own_process()`: run() calls it once; from then on heavy_imports() acts, and everything that still exists when
  the atexit handlers run is frozen last, so the finalisation does not traverse it. Cycles alive at exit are then
  freed with the process, not by the collector: Python does not promise to run __del__ for objects still alive at
  exit anyway ("It is not guaranteed that __del__() methods are called for objects that still exist when the
  interpreter exits", the data model's reference), and every sepcli output is closed and renamed before exit.

A program that imports sepcli.cli (the tests' CliRunner) never calls own_process(): its collector is left as it
is, so nothing of that program is frozen.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager

_OWN = False  # set by own_process(): this process is the `sepcli` command


def own_process() -> None:
    """This process is the `sepcli` command (called once by run()): heavy_imports() acts, and what exists at exit is
    frozen after the other atexit handlers (registered first, it runs last)."""
    global _OWN
    if not _OWN:
        _OWN = True
        atexit.register(gc.freeze)


def owned() -> bool:
    return _OWN


@contextmanager
def heavy_imports() -> Iterator[None]:
    """Collector paused inside the block and what exists after it frozen (only in the `sepcli` process, and only
    when the collector was enabled: a caller's gc.disable() is kept)."""
    if not _OWN or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
