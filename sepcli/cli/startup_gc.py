"""Python's cyclic garbage collector in a `sepcli` process: paused while the heavy modules are imported and the
model is built, and kept off those objects afterwards.

Why: importing torch creates about 165,000 objects, none of them garbage, that live until the process ends. The
collector does not know that: on an AVX2 EPYC its passes during `import torch` took 0.12 s (2 full collections
among 360), and the interpreter's finalisation, which collects again while it tears the modules down, took 0.3 s
more (0.41 s from the end of a script that imported torch to the end of its process; 0.13 s with those objects
frozen). Every `sepcli separate` from a shell script paid both.

`heavy_imports()` is the block that imports them (and builds the model): the collector is paused inside it, and
what exists after it is frozen (gc.freeze: moved to the permanent generation, which no later collection
traverses, the one at exit included; Python's documented way to keep long-lived start-up objects out of the
collector's work). Objects made later are collected as usual, so a long batch run keeps freeing its cycles.
Frozen objects are freed at exit by reference counting as before; cycles among them are not (Python does not
promise __del__ for objects alive at exit anyway), so nothing that needs a finaliser to run belongs in the block:
an extension whose import leaves cycles its own leak check counts (Triton's nanobind module) would warn at exit,
so when Triton was imported the frozen objects are unfrozen at exit (own_process).
Freezing everything at exit as well measured no faster (2.29 s against 2.34 s, within the noise) and would freeze
such cycles, so it is not done.

Only the `sepcli` process itself: run() calls `own_process()`. A program that imports sepcli.cli (the tests'
CliRunner) never does, and its collector is left as it is.
"""

from __future__ import annotations

import atexit
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_OWN = False  # set by own_process(): this process is the `sepcli` command


def own_process() -> None:
    """This process is the `sepcli` command (run() calls it): heavy_imports() acts from now on. At exit, frozen
    objects go back to the collector when Triton was imported (see _unfreeze_for_leak_checks)."""
    global _OWN
    if not _OWN:
        atexit.register(_unfreeze_for_leak_checks)
    _OWN = True


def _unfreeze_for_leak_checks() -> None:
    """Triton's nanobind module counts its objects still alive at exit and prints "nanobind: leaked ..." to stderr:
    an SPMamba run (`sepcli bench -m <spmamba import>` measured) imported it inside a heavy_imports() block, and its
    frozen cycles were reported. Where it was imported, the exit's collection sees every object again, as without
    the freeze (the 0.3 s that costs matters only for short runs of the default model, which never import it)."""
    if any(name == "triton" or name.startswith("triton.") for name in sys.modules):
        gc.unfreeze()


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
