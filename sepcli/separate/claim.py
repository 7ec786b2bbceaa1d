"""OutputClaim: one process at a time writes an input's outputs, and the next run cleans up after one that was
killed outright (SIGKILL, the OOM killer, power loss), which could not clean up itself."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import socket
import time
from pathlib import Path

from ..errors import FailedError


class Busy(FailedError):
    """Another live sepcli process holds the claim on an input's outputs (a failure of this file, exit 1)."""

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_after_dead_holder(journal: dict, outs: list[Path]) -> bool:
    """Remove what a process killed while writing these outputs left (its claim's journal): its temporary
    files, and, if it died while renaming the outputs into place, the ones it had renamed, unless all were
    (all speakers or none). Only names of this input's outputs and sepcli temporary files in their folders are
    touched, whatever the journal says. True if anything was removed."""
    folders = {os.path.abspath(p.parent) for p in outs}
    planned = {os.path.abspath(p) for p in outs}
    temps = [Path(t) for t in journal.get("temps", []) if isinstance(t, str)
             and os.path.dirname(t) in folders and fnmatch.fnmatch(os.path.basename(t), ".sepcli-*.part")]
    committing = [Path(c) for c in journal.get("committing", []) if isinstance(c, str) and c in planned]
    # a temporary file that still exists was not renamed yet (commit moves it, or links it and then removes it)
    finished = all(c.exists() for c in committing) and not any(t.exists() for t in temps)
    removed = False
    for f in temps + ([] if finished else committing):
        try:
            f.unlink()
            removed = True
        except FileNotFoundError:
            pass
    return removed


class OutputClaim:
    """An O_EXCL lock file claiming one input's outputs for this process (removed by release()).

    The lock `.sepcli-lock-<hash of the first output path>` lives in the output folder and holds
    "<pid> <host>", then a line of JSON, the journal (`record`): the temporary files being written and, while
    the outputs are being renamed into place, their final names. A lock left by a process that no longer runs
    on this host (killed with SIGKILL, power loss) is stale and taken over: the new holder removes what its
    journal says the dead one left (`recovered` tells whether anything was); a live lock raises Busy naming the
    holder."""

    STALE_EMPTY_S = 30.0  # a lock without content (holder died between create and write) after this long

    @staticmethod
    def lock_path(outs: list[Path]) -> Path:
        first = outs[0]
        digest = hashlib.sha1(os.path.abspath(first).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return first.parent / f".sepcli-lock-{digest}"

    def __init__(self, outs: list[Path]):
        first = outs[0]
        self.path = self.lock_path(outs)
        self._held = False
        self._journal: dict = {}
        self.recovered = False  # files left by a dead holder were removed
        left: dict = {}  # the journal of a dead holder whose lock is taken over
        first.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, host, journal = self._read()
                if self._stale(pid, host):
                    left = journal
                    try:
                        self.path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                holder = f"pid {pid} on {host}" if pid is not None else "unknown holder"
                raise Busy(f"another sepcli process is writing its outputs ({holder}; lock file "
                           f"{self.path})") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            self._held = True
            self.recovered = _clean_after_dead_holder(left, outs)  # only once the claim is ours
            return
        raise Busy(f"could not claim the lock file {self.path}")

    def _read(self) -> tuple[int | None, str | None, dict]:
        """The lock's holder (pid, host; None if unreadable) and journal ({} if none or unreadable)."""
        try:
            lines = self.path.read_text().split("\n")
        except OSError:
            return None, None, {}
        try:
            pid, host = lines[0].split()[:2]
            holder = (int(pid), host)
        except ValueError:
            holder = (None, None)
        try:
            journal = json.loads(lines[1])
        except (ValueError, IndexError):
            journal = {}
        return *holder, journal if isinstance(journal, dict) else {}

    def record(self, **entries: list[str]) -> None:
        """Add to the journal (absolute paths) and rewrite the lock with it in one atomic rename."""
        self._journal.update(entries)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(f"{os.getpid()} {socket.gethostname()}\n{json.dumps(self._journal)}\n")
        os.replace(tmp, self.path)

    def _stale(self, pid: int | None, host: str | None) -> bool:
        if pid is None:
            try:
                return time.time() - self.path.stat().st_mtime > self.STALE_EMPTY_S
            except OSError:
                return True  # vanished meanwhile: retry
        return host == socket.gethostname() and not _pid_alive(pid)

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

