"""sepcli.cli.process_exit: the `sepcli` process ends without the libraries' teardown only where nothing is lost (its
exit status, the atexit handlers, stdout and the C library's buffered output, every file), and through sys.exit
otherwise. Each case runs in a fresh process; `torch` there is a stand-in module (the condition is only that it
was imported), so these do not pay its import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PRELUDE = """
import atexit, ctypes, sys, types
sys.modules.setdefault("torch", types.ModuleType("torch"))
from sepcli.cli import process_exit

class Teardown:  # says so if the interpreter's module teardown ran (the ordinary exit)
    def __del__(self):
        sys.stderr.write("teardown ran\\n")
keep = Teardown()

def at_exit():
    with open(sys.argv[1] + "/atexit", "w") as f:
        f.write("ran")
atexit.register(at_exit)
sys.stdout.write("python buffered, ")  # no newline, stdout a pipe: still in Python's buffer
ctypes.CDLL(None).printf(b"C buffered")  # in the C library's stdio buffer
"""


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # (it unbuffers C's stdout too)
    return subprocess.run([sys.executable, "-c", PRELUDE + body, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)


def test_leave_skips_the_teardown_and_keeps_the_status_the_handlers_and_the_buffered_output(tmp_path):
    p = _run(tmp_path, "process_exit.leave(3)\n")
    assert p.returncode == 3
    assert p.stdout == "python buffered, C buffered"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert "teardown ran" not in p.stderr and p.stderr == ""


def test_a_file_still_open_for_writing_means_the_ordinary_exit(tmp_path):
    """A file object with unwritten data (here never closed): its data reaches the file at the ordinary exit."""
    p = _run(tmp_path, "f = open(sys.argv[1] + '/data', 'w')\nf.write('kept')\nprocess_exit.leave(4)\n")
    assert p.returncode == 4
    assert (tmp_path / "data").read_text() == "kept"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert "teardown ran" in p.stderr  # the ordinary way out
    assert "python buffered, " in p.stdout


def test_another_thread_alive_means_the_ordinary_exit(tmp_path):
    """A thread still working when the command returns is waited for, as Python's exit does."""
    body = """
import threading, time
def late():
    time.sleep(0.3)
    with open(sys.argv[1] + "/late", "w") as f:
        f.write("done")
threading.Thread(target=late).start()
process_exit.leave(0)
"""
    p = _run(tmp_path, body)
    assert p.returncode == 0
    assert (tmp_path / "late").read_text() == "done"
    assert "teardown ran" in p.stderr


def test_without_torch_the_ordinary_exit(tmp_path):
    p = _run(tmp_path, "del sys.modules['torch']\nprocess_exit.leave(0)\n")
    assert p.returncode == 0 and "teardown ran" in p.stderr


def test_under_a_profiler_or_when_turned_off_the_ordinary_exit(tmp_path):
    """A profiler wrapping the command (python -m cProfile -m sepcli) reports after it returns; SEPCLI_FAST_EXIT=0
    turns the fast exit off (tools reporting from C atexit handlers or destructors)."""
    ordinary = "try:\n    process_exit.leave({})\nexcept SystemExit:\n    sys.stderr.write('sys.exit\\n')\n    raise\n"
    p = _run(tmp_path, "sys.setprofile(lambda *a: None)\n" + ordinary.format(5))
    assert p.returncode == 5 and "sys.exit" in p.stderr
    p = _run(tmp_path, "import os\nos.environ['SEPCLI_FAST_EXIT'] = '0'\n" + ordinary.format(6))
    assert p.returncode == 6 and "sys.exit" in p.stderr and "teardown ran" in p.stderr
    p = _run(tmp_path, ordinary.format(7))  # (the marker's own check: the fast exit raises nothing)
    assert p.returncode == 7 and "sys.exit" not in p.stderr
    assert (tmp_path / "atexit").read_text() == "ran"


def test_a_descriptor_whose_flags_cannot_be_read_means_the_ordinary_exit(tmp_path, monkeypatch):
    """Not knowing is not 'nothing open': a refused flags query (not a closed descriptor) gives None."""
    import errno
    import fcntl

    from sepcli.cli import process_exit

    if process_exit._writable_regular_files() is None:
        return
    real = fcntl.fcntl

    def refused(fd, cmd, *args):
        if cmd == fcntl.F_GETFL:
            raise PermissionError(errno.EACCES, "refused")
        return real(fd, cmd, *args)

    with open(tmp_path / "w", "wb"):
        monkeypatch.setattr(process_exit.fcntl, "fcntl", refused)
        assert process_exit._writable_regular_files() is None


def test_the_writable_files_check_sees_an_open_file(tmp_path):
    from sepcli.cli.process_exit import _writable_regular_files

    before = _writable_regular_files()
    if before is None:  # no /proc here: nothing assumed, the ordinary exit always
        return
    with open(tmp_path / "w", "wb") as f:
        assert len(_writable_regular_files()) == len(before) + 1
        with open(tmp_path / "w", "rb"):  # a file open for reading only does not count
            assert len(_writable_regular_files()) == len(before) + 1
    assert f.closed and _writable_regular_files() == before


def test_run_raises_system_exit_for_a_program_calling_it(monkeypatch):
    """Only console_main (the `sepcli` script, python -m sepcli) leaves the process that way."""
    import pytest

    from sepcli import cli

    monkeypatch.setattr(sys, "argv", ["sepcli", "--version"])
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    assert exit_.value.code == 0
