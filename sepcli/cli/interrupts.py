"""Ctrl-C and SIGTERM during a command: turned into an exception so that every cleanup runs, then into the
exit code 128 + the signal's number with one line saying what was kept."""

from __future__ import annotations

import typer

from .output import _error


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM turned into an exception, so every `finally` (temporary files, locks) runs."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _interruptible:
    """While active (main thread only), SIGINT and SIGTERM raise Interrupted; further signals are ignored
    until the command has cleaned up (a second Ctrl-C must not cut the cleanup short). Restores the
    previous handlers on exit."""

    def __enter__(self):
        import signal
        import threading

        self._old = {}
        if threading.current_thread() is not threading.main_thread():
            return self

        def handler(signum, frame):
            for sig in self._old:
                signal.signal(sig, signal.SIG_IGN)
            raise Interrupted(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, h in self._old.items():
            signal.signal(sig, h)


def _interrupt_exit(exc: KeyboardInterrupt,
                    what: str = "finished outputs kept, unfinished ones removed (rerun to complete)") -> typer.Exit:
    import signal

    signum = getattr(exc, "signum", signal.SIGINT)
    _error(f"interrupted by {signal.Signals(signum).name}: {what}")
    return typer.Exit(128 + signum)
